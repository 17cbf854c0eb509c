"""sample_psld (psld/sampling.py): parity with the reference's alpha-bar-space step, and the sampler's contract."""
import math

import pytest
import torch
from torch import nn

from psld.ddim import ddim_step, ddim_uniform_sigmas
from psld.linear_model import LinearLatentModel, MatrixOperator, orthonormal_columns
from psld.losses import PSLDLoss
from psld.operators import Inpainting
from psld.sampling import PSLDDivergenceError, psld_gradient, sample_psld

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/psld/conftest.py

LATENT_C, IMAGE_C, SIZE = 2, 3, 8  # latent [B, 2, 4, 4] -> image [B, 3, 8, 8]


class TinyEps(nn.Module):
    """eps_theta(z_t, abar): a small conv net conditioned on log(abar)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(LATENT_C, 8, 3, padding=1)
        self.time = nn.Linear(1, 8)
        self.conv2 = nn.Conv2d(8, LATENT_C, 3, padding=1)

    def forward(self, z_t, abar):
        t = self.time(torch.log(abar).reshape(-1, 1))[:, :, None, None]
        return self.conv2(torch.tanh(self.conv1(z_t) + t))


def make_nets(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)  # nn.Module initialisation only
    eps = TinyEps()
    decoder = nn.Sequential(nn.ConvTranspose2d(LATENT_C, IMAGE_C, 2, stride=2), nn.Tanh())
    encoder = nn.Sequential(nn.Conv2d(IMAGE_C, 8, 2, stride=2), nn.Tanh(), nn.Conv2d(8, LATENT_C, 1))
    for net in (eps, decoder, encoder):
        net.to(dtype).requires_grad_(False)
    return eps, decoder, encoder


def sigma_space_denoiser(eps):
    """denoise(x, sigma) = x - sigma eps(x / sqrt(1 + sigma^2), abar): what ComfyUI's model wrapper computes."""
    def denoise(x, sigma):
        s = sigma.to(x.dtype).reshape(-1, 1, 1, 1)
        abar = 1.0 / (1.0 + s * s)
        return x - s * eps(x * abar.sqrt(), abar.reshape(-1))
    return denoise


def make_measurement(decoder, batch=1, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    n = IMAGE_C * SIZE * SIZE
    operator = MatrixOperator(matrix=orthonormal_columns(n, 100, g).T.to(dtype), image_shape=(IMAGE_C, SIZE, SIZE))
    # A A^T = I, so A^+ = A^T and the exact projection is the paper's A^T y + (I - A^T A) x
    z_true = torch.randn(batch, LATENT_C, SIZE // 2, SIZE // 2, generator=g, dtype=dtype)
    y = operator.forward(decoder(z_true)) + 0.05 * torch.randn(batch, 1, 100, 1, generator=g, dtype=dtype)
    return operator, y


# ---------------------------------------------------------------- the reference step, from psld-algorithm.md section 2

def reference_psld_step(eps, decoder, encoder, operator, y, z_t, ab_t, ab_prev, eta, xi, omega, gamma):
    """One step of the reference code (p_sample_ddim, general branch), in alpha-bar space, batch of one."""
    z_t = z_t.detach().clone().requires_grad_(True)                                   # fresh leaf
    eps_hat = eps(z_t, torch.full((z_t.shape[0],), ab_t, dtype=z_t.dtype))
    z0_hat = (z_t - math.sqrt(1 - ab_t) * eps_hat) / math.sqrt(ab_t)                   # Tweedie
    s_t = eta * math.sqrt((1 - ab_prev) / (1 - ab_t)) * math.sqrt(1 - ab_t / ab_prev)
    z_prime = math.sqrt(ab_prev) * z0_hat + math.sqrt(1 - ab_prev - s_t ** 2) * eps_hat + s_t * xi   # DDIM
    x0_hat = decoder(z0_hat)
    l_meas = torch.linalg.norm(operator.forward(x0_hat) - y)                           # ||A x0 - y||
    x_glue = operator.adjoint(y) + (x0_hat - operator.adjoint(operator.forward(x0_hat)))
    l_glue = torch.linalg.norm(encoder(x_glue) - z0_hat)                               # ||E(x_glue) - z0||
    error = gamma * l_glue + omega * l_meas
    (g,) = torch.autograd.grad(error, inputs=z_t)
    return (z_prime - g).detach()                                                      # z_{t-1} = z' - g


def sd15_alpha_bars():
    """Computed here from the schedule's definition, independently of psld.ddim."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("ending", ["comfyui", "compvis"])
def test_sigma_space_sampler_equals_the_reference_alpha_bar_step(eta, ending):
    """Same eps-model, decoder, encoder, operator and DDIM noise: the trajectories agree step by step.

    ComfyUI's ddim_uniform ends with sigma = 0 (abar_prev = 1 on the last step); the CompVis/PSLD code ends at
    abar[0] (sigma 0.0292). Both endings are run: the sampler takes whatever sigmas it is given.
    """
    steps = 10
    eps, decoder, encoder = make_nets()
    operator, y = make_measurement(decoder)
    abar = sd15_alpha_bars()
    timesteps = list(range(1, 1000, 1000 // steps))[::-1]  # uniform DDIM timesteps, descending
    alpha_bars = [float(abar[t]) for t in timesteps] + [1.0 if ending == "comfyui" else float(abar[0])]
    sigmas = ddim_uniform_sigmas(steps)
    if ending == "compvis":
        sigmas[-1] = math.sqrt((1 - abar[0]) / abar[0])
    g = torch.Generator().manual_seed(7)
    x0 = torch.randn(1, LATENT_C, SIZE // 2, SIZE // 2, generator=g, dtype=torch.float64) * float(sigmas[0])
    noises = [torch.randn(x0.shape, generator=g, dtype=torch.float64) for _ in range(steps)]

    # reference, alpha-bar space
    z = x0 * math.sqrt(alpha_bars[0])  # z_T = x / sqrt(1 + sigma^2)
    reference = [z]
    for i in range(steps):
        z = reference_psld_step(eps, decoder, encoder, operator, y, z, alpha_bars[i], alpha_bars[i + 1], eta,
                                noises[i], omega=1.0, gamma=0.1)
        reference.append(z)

    # ours, sigma space
    trajectory, used = [], iter(noises)
    out = sample_psld(sigma_space_denoiser(eps), x0, sigmas, operator=operator, y=y, decode=decoder,
                      encode=encoder, omega=1.0, gamma=0.1, eta=eta, noise_sampler=lambda s, s_next: next(used),
                      callback=lambda i, x, denoised, residuals: trajectory.append(x))
    trajectory.append(out)

    assert len(trajectory) == steps + 1
    for i, (x, z) in enumerate(zip(trajectory, reference)):
        torch.testing.assert_close(x, z / math.sqrt(alpha_bars[i]), rtol=1e-9, atol=1e-9,
                                   msg=lambda m, i=i: f"step {i}: {m}")
    # the guidance actually moved the sample: without it the result is different
    plain = sample_psld(sigma_space_denoiser(eps), x0, sigmas, operator=operator, y=y, decode=decoder,
                        encode=encoder, omega=0.0, gamma=0.0, eta=eta, noise_sampler=lambda s, s_next: noises[0])
    assert (plain - out).abs().max() > 1e-2


def run(batch=1, steps=5, **overrides):
    eps, decoder, encoder = make_nets()
    operator, y = make_measurement(decoder, batch=batch)
    g = torch.Generator().manual_seed(3)
    sigmas = ddim_uniform_sigmas(steps)
    x = torch.randn(batch, LATENT_C, SIZE // 2, SIZE // 2, generator=g, dtype=torch.float64) * float(sigmas[0])
    kwargs = dict(operator=operator, y=y, decode=decoder, encode=encoder)
    kwargs.update(overrides)
    return sample_psld(sigma_space_denoiser(eps), x, sigmas, **kwargs), (eps, decoder, encoder, operator, y, x,
                                                                         sigmas)


def test_batch_items_are_sampled_independently():
    together, (eps, decoder, encoder, operator, y, x, sigmas) = run(batch=3)
    for b in range(3):
        alone = sample_psld(sigma_space_denoiser(eps), x[b:b + 1], sigmas, operator=operator, y=y[b:b + 1],
                            decode=decoder, encode=encoder)
        torch.testing.assert_close(together[b:b + 1], alone, rtol=1e-10, atol=1e-12)


class Counting:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args):
        self.calls += 1
        return self.fn(*args)


@pytest.mark.parametrize("loss, encoder_calls", [
    (PSLDLoss(), 5), (PSLDLoss(variant="GML-DPS"), 5), (PSLDLoss(variant="LDPS"), 0), (PSLDLoss(gamma=0.0), 0),
])
def test_one_decode_per_step_and_no_unused_encoder_pass(loss, encoder_calls):
    eps, decoder, encoder = make_nets()
    operator, y = make_measurement(decoder)
    denoise, decode, encode = Counting(sigma_space_denoiser(eps)), Counting(decoder), Counting(encoder)
    sigmas = ddim_uniform_sigmas(5)
    x = torch.randn(1, LATENT_C, 4, 4, dtype=torch.float64) * float(sigmas[0])
    sample_psld(denoise, x, sigmas, operator=operator, y=y, decode=decode, encode=encode, loss=loss)
    assert (denoise.calls, decode.calls, encode.calls) == (5, 5, encoder_calls)


def test_zero_weights_are_plain_ddim_without_decoder_or_backward():
    eps, decoder, encoder = make_nets()
    operator, y = make_measurement(decoder)
    decode = Counting(decoder)
    sigmas = ddim_uniform_sigmas(5)
    x = torch.randn(1, LATENT_C, 4, 4, dtype=torch.float64) * float(sigmas[0])
    out = sample_psld(sigma_space_denoiser(eps), x, sigmas, operator=operator, y=y, decode=decode, encode=encoder,
                      omega=0.0, gamma=0.0)
    assert decode.calls == 0
    expected = x
    for s, s_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        denoised = sigma_space_denoiser(eps)(expected, torch.tensor([s], dtype=torch.float64))
        expected = ddim_step(expected, denoised, s, s_next)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_callback_and_interrupt_run_once_per_step():
    seen = []

    def callback(i, x, denoised, residuals):
        seen.append((i, tuple(x.shape), tuple(denoised.shape), sorted(residuals),
                     tuple(residuals["measurement"].shape)))
    run(batch=2, callback=callback)
    assert [s[0] for s in seen] == list(range(5))
    assert all(s[1:] == ((2, 2, 4, 4), (2, 2, 4, 4), ["gluing", "measurement"], (2,)) for s in seen)

    class Stop(Exception):
        pass
    ticks = []

    def check_interrupt():
        ticks.append(1)
        if len(ticks) == 3:
            raise Stop
    steps_done = []
    with pytest.raises(Stop):
        run(check_interrupt=check_interrupt, callback=lambda i, *a: steps_done.append(i))
    assert steps_done == [0, 1]  # interrupted before the third step's work


def test_guidance_brings_the_sample_closer_to_the_measurement():
    def final_residual(**weights):
        out, (eps, decoder, encoder, operator, y, x, sigmas) = run(batch=2, steps=25, **weights)
        return (operator.forward(decoder(out)) - y).flatten(1).norm(dim=1)
    guided, unguided = final_residual(), final_residual(omega=0.0, gamma=0.0)
    assert bool((guided < 0.8 * unguided).all()), (guided, unguided)


def test_jacobian_free_guidance_brings_the_sample_closer_without_differentiating_the_denoiser():
    eps, decoder, encoder = make_nets()
    denoiser_grad_modes = []

    def denoise(x, sigma):
        denoiser_grad_modes.append(torch.is_grad_enabled())
        return sigma_space_denoiser(eps)(x, sigma)

    def final_residual(loss):
        out, (_, decoder, _, operator, y, _, _) = run(batch=2, steps=25, loss=loss)
        return (operator.forward(decoder(out)) - y).flatten(1).norm(dim=1)

    # omega 10: this random toy denoiser's Jacobian is near the identity, far from the Gaussian-prior one the
    # Jacobian-free gradient assumes, so its steps are short here
    free = PSLDLoss(omega=10.0, gamma=1.0, jacobian_free=True)
    assert bool((final_residual(free) < 0.8 * final_residual(PSLDLoss(omega=0.0, gamma=0.0))).all())
    operator, y = make_measurement(decoder)
    x = torch.randn(1, LATENT_C, SIZE // 2, SIZE // 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    psld_gradient(denoise, x, torch.tensor([2.0], dtype=torch.float64), loss=free, operator=operator, y=y,
                  decode=decoder, encode=encoder)
    assert denoiser_grad_modes == [False]


def test_jacobian_free_gradient_is_the_full_one_for_the_gaussian_prior_denoiser():
    """The denoiser of a unit Gaussian latent prior, z0 = x / (1 + sigma^2) (the paper's linear model), has exactly
    the Jacobian the Jacobian-free gradient assumes: both gradients agree, per batch item at its own sigma."""
    _, decoder, encoder = make_nets()
    operator, y = make_measurement(decoder, batch=2)
    x = torch.randn(2, LATENT_C, SIZE // 2, SIZE // 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    sigma = torch.tensor([1.5, 7.0], dtype=torch.float64)

    def gaussian_denoiser(z, s):
        return z / (1 + s.reshape(-1, 1, 1, 1) ** 2)

    grads = [psld_gradient(gaussian_denoiser, x, sigma, loss=PSLDLoss(jacobian_free=free), operator=operator, y=y,
                           decode=decoder, encode=encoder)[0] for free in (False, True)]
    assert torch.allclose(grads[0], grads[1], rtol=1e-12, atol=1e-14) and grads[0].norm() > 0


def test_divergence_names_the_step_and_weights():
    eps, decoder, encoder = make_nets()
    operator, y = make_measurement(decoder)
    base = sigma_space_denoiser(eps)
    sigmas = ddim_uniform_sigmas(5)

    def denoise_breaking_at_step_3(x, sigma):
        out = base(x, sigma)
        return out * float("nan") if float(sigma[0]) < float(sigmas[1]) else out
    x = torch.randn(1, LATENT_C, 4, 4, dtype=torch.float64) * float(sigmas[0])
    with pytest.raises(PSLDDivergenceError) as info:
        sample_psld(denoise_breaking_at_step_3, x, sigmas, operator=operator, y=y, decode=decoder, encode=encoder,
                    omega=0.5, gamma=0.05)
    message = str(info.value)
    assert isinstance(info.value, FloatingPointError)
    assert "step 3 of 5" in message and "objective" in message
    assert "omega=0.5" in message and "gamma=0.05" in message and "Lower omega and gamma" in message

    with pytest.raises(PSLDDivergenceError, match="step 1 of 5"):  # float32 overflow from a huge weight
        sample_psld(lambda x_, s: base(x_.double(), s).float(), x.float(), sigmas.float(), operator=operator,
                    y=y.float(), decode=lambda z: decoder(z.double()).float(),
                    encode=lambda im: encoder(im.double()).float(), omega=3e38)


def test_inference_mode_caller_with_inference_mode_operator_and_measurement():
    """ComfyUI builds operator, measurement and latent under inference mode and samples under it too."""
    eps, decoder, encoder = make_nets()
    sigmas = ddim_uniform_sigmas(4)
    g = torch.Generator().manual_seed(5)
    mask = (torch.rand(1, 1, SIZE, SIZE, generator=g) > 0.5).float()
    truth = torch.rand(2, IMAGE_C, SIZE, SIZE, generator=g, dtype=torch.float64) * 2 - 1
    x_plain = torch.randn(2, LATENT_C, 4, 4, generator=g, dtype=torch.float64) * float(sigmas[0])
    matrix = torch.randn(50, IMAGE_C * SIZE * SIZE, generator=g, dtype=torch.float64) / 10

    def sample(operator, y, x):
        return sample_psld(sigma_space_denoiser(eps), x, sigmas, operator=operator, y=y, decode=decoder,
                           encode=encoder, eta=0.5, generator=11)

    for make_operator in (lambda: Inpainting(mask=mask.clone()), lambda: MatrixOperator(matrix=matrix.clone())):
        expected = sample(make_operator(), make_operator().forward(truth), x_plain)
        with torch.inference_mode():
            operator = make_operator()
            y = operator.forward(truth.clone())
            x = x_plain.clone()
            assert y.is_inference() and x.is_inference()
            out = sample(operator, y, x)
        assert out.is_inference() and not out.requires_grad
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_user_operator_holding_inference_tensors_is_used_by_reference():
    """A user operator whose constant was made under inference mode (as anything a ComfyUI node makes) works, and
    gives what the same operator with a plain constant gives; a write into that constant is refused."""
    eps, decoder, encoder = make_nets()
    plain = torch.rand(1, IMAGE_C, SIZE, SIZE, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        frozen = plain.clone()

    class Weighting:
        def __init__(self, weights, write=False):
            self.weights, self.write = weights, write

        def forward(self, x):
            if self.write:
                self.weights.mul_(2.0)
            return x * self.weights

        def adjoint(self, y):
            return y * self.weights

        def project(self, x, y):
            return x + (y - self.forward(x))

    def run(operator):
        x = torch.randn(1, LATENT_C, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
        return sample_psld(sigma_space_denoiser(eps), x, ddim_uniform_sigmas(2), operator=operator,
                           y=torch.zeros(1, IMAGE_C, SIZE, SIZE, dtype=torch.float64), decode=decoder,
                           encode=encoder)

    assert torch.allclose(run(Weighting(frozen)), run(Weighting(plain)), rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError, match="mul_ would write into a model weight or a tensor made under"):
        run(Weighting(frozen, write=True))
    assert torch.equal(frozen, plain)


def test_inputs_are_not_mutated_and_the_result_is_detached():
    eps, decoder, encoder = make_nets()
    operator, y = make_measurement(decoder)
    sigmas = ddim_uniform_sigmas(3)
    x = torch.randn(1, LATENT_C, 4, 4, dtype=torch.float64).requires_grad_(True)
    before = (x.detach().clone(), y.clone(), sigmas.clone())
    out = sample_psld(sigma_space_denoiser(eps), x, sigmas, operator=operator, y=y, decode=decoder, encode=encoder)
    assert torch.equal(x.detach(), before[0]) and torch.equal(y, before[1]) and torch.equal(sigmas, before[2])
    assert not out.requires_grad and out.grad_fn is None
    latents = []
    sample_psld(sigma_space_denoiser(eps), x, sigmas, operator=operator, y=y, decode=decoder, encode=encoder,
                callback=lambda i, x_i, d, r: latents.append(x_i))
    assert all(not t.requires_grad for t in latents)  # no graph is carried from step to step


def test_a_denoiser_answering_in_another_dtype_does_not_change_the_latent_dtype():
    eps, decoder, encoder = make_nets()
    operator, y = make_measurement(decoder)
    base = sigma_space_denoiser(eps)
    x = torch.randn(1, LATENT_C, 4, 4, dtype=torch.float64).float()
    out = sample_psld(lambda x_, s: base(x_.double(), s), x, ddim_uniform_sigmas(3), operator=operator,
                      y=y.float(), decode=lambda z: decoder(z.double()).float(),
                      encode=lambda im: encoder(im.double()).float())
    assert out.dtype == torch.float32


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 0.05)])
def test_works_in_the_dtype_of_x(dtype, tolerance):
    """The same linear-model run in float64 and in `dtype`: same dtype out, and the same answer to its precision."""
    g = torch.Generator().manual_seed(0)
    model64 = LinearLatentModel.random(16, 4, generator=g)
    matrix = torch.randn(8, 16, generator=g, dtype=torch.float64) / 8 ** 0.5
    z = model64.sample_latents(2, generator=g)
    sigmas = ddim_uniform_sigmas(50).to(torch.float32)
    x = torch.randn(2, 1, 4, 1, generator=g, dtype=torch.float64) * float(sigmas[0])
    outs = {}
    for t in (torch.float64, dtype):
        model, operator = LinearLatentModel(basis=model64.basis.to(t)), MatrixOperator(matrix=matrix.to(t))
        y = operator.forward(model.decode(z.to(t)))
        outs[t] = sample_psld(model.denoise, x.to(t), sigmas, operator=operator, y=y, decode=model.decode,
                              encode=model.encode, loss=PSLDLoss(omega=0.3, gamma=0.3, squared=True))
    out = outs[dtype]
    assert out.dtype == dtype and bool(torch.isfinite(out).all())
    assert float((outs[torch.float64] - z).norm() / z.norm()) < 0.06  # the run does recover z (50 steps)
    assert float((out.double() - outs[torch.float64]).norm() / z.norm()) < tolerance


def test_loss_wins_over_keywords_and_eta_noise_comes_from_the_generator():
    a, _ = run(omega=5.0, gamma=3.0, loss=PSLDLoss(omega=1.0, gamma=0.1))
    b, _ = run()
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    c, _ = run(eta=1.0, generator=1)
    d, _ = run(eta=1.0, generator=torch.Generator().manual_seed(1))
    e, _ = run(eta=1.0, generator=2)
    torch.testing.assert_close(c, d, rtol=0, atol=0)
    assert (c - e).abs().max() > 1e-3


@pytest.mark.parametrize("overrides, pattern", [
    (dict(sigmas=torch.tensor([1.0, 2.0, 0.0])), "non-increasing"),
    (dict(sigmas=torch.tensor([[1.0, 0.0]])), "1-D"),
    (dict(sigmas=torch.tensor([1.0, 0.0, 0.0])), "> 0 except"),
    (dict(eta=2.0), r"eta=2\.0"),
    (dict(y=torch.zeros(3, 1, 100, 1, dtype=torch.float64)), "batch size"),
    (dict(loss=dict(omega=1.0)), "loss must be"),
    (dict(operator=object()), "operator must provide"),
    (dict(generator=-1, eta=1.0), "generator=-1"),
    (dict(decode="vae"), "decode"),
])
def test_bad_arguments_are_refused_with_a_reason(overrides, pattern):
    eps, decoder, encoder = make_nets()
    operator, y = make_measurement(decoder)
    kwargs = dict(operator=operator, y=y, decode=decoder, encode=encoder)
    sigmas = overrides.pop("sigmas", ddim_uniform_sigmas(2))
    kwargs.update(overrides)
    with pytest.raises(ValueError, match=pattern):
        sample_psld(sigma_space_denoiser(eps), torch.zeros(1, LATENT_C, 4, 4, dtype=torch.float64), sigmas,
                    **kwargs)


def test_a_decoder_without_gradient_is_reported():
    eps, decoder, encoder = make_nets()
    operator, y = make_measurement(decoder)

    def decode_without_grad(z):  # what ComfyUI's tiled VAE fallback does
        with torch.no_grad():
            return decoder(z)
    with pytest.raises(ValueError, match="gradient path to x"):
        sample_psld(sigma_space_denoiser(eps), torch.zeros(1, LATENT_C, 4, 4, dtype=torch.float64),
                    ddim_uniform_sigmas(2), operator=operator, y=y, decode=decode_without_grad, encode=None,
                    loss=PSLDLoss(variant="LDPS"))
