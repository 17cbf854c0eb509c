"""PSLD on the paper's ground: the linear model x0 = S z0 with an exact Gaussian denoiser (psld/linear_model.py).

Everything here has a closed-form answer (the truth, or the Gaussian posterior), so these tests check the sampler's
mathematics, not a picture. Settings (chosen, documented in docs/paper-map.md):

- n = 64 pixels, k = 8 latent dimensions (16 for the underdetermined case), A with i.i.d. N(0, 1/m) entries (so
  E[A^T A] = I), SD1.5 discrete schedule with DDIM-uniform sigmas, eta = 0, float64.
- Identifiable cases: squared norms (the paper's text and its analysis) with omega = gamma = 0.4. The plain norm of
  the reference code takes steps of constant length omega, which do not shrink as the residual vanishes, so it
  hovers at an error floor set by omega instead of converging. 0.4 is below the stability limit: omega = gamma =
  0.6 diverges at 1000 steps in this model.
- Underdetermined case: plain norms, omega = gamma = 0.1, 100 steps (see that test for why).
"""
import math

import pytest
import torch

from psld.ddim import ddim_uniform_sigmas
from psld.linear_model import LinearLatentModel, MatrixOperator, as_vector, relative_error
from psld.losses import PSLDLoss
from psld.sampling import sample_psld

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/psld/conftest.py


def identifiable_problem(seed=0, n=64, k=8, m=32, batch=16, sigma_y=0.0):
    g = torch.Generator().manual_seed(seed)
    model = LinearLatentModel.random(n, k, generator=g)
    matrix = torch.randn(m, n, generator=g, dtype=torch.float64) / math.sqrt(m)
    operator = MatrixOperator(matrix=matrix)
    z0 = model.sample_latents(batch, generator=g)
    y = operator.forward(model.decode(z0))
    if sigma_y > 0:
        y = y + sigma_y * torch.randn(y.shape, generator=g, dtype=torch.float64)
    return model, operator, z0, y, g


def psld(model, operator, y, steps, loss, encode=None, seed=1):
    sigmas = ddim_uniform_sigmas(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(y.shape[0], 1, model.k, 1, generator=g, dtype=torch.float64) * float(sigmas[0])
    return sample_psld(model.denoise, x, sigmas, operator=operator, y=y, decode=model.decode,
                       encode=encode or model.encode, loss=loss)


# ---------------------------------------------------------------- a. noiseless, identifiable: exact recovery

def test_noiseless_identifiable_recovery_improves_with_steps_and_reaches_1e_3():
    """m = 32 >= k = 8 measurements of n = 64 pixels (A alone is not invertible; A S is). Measured worst relative
    error over 16 samples: 5.7e-3 (50 steps), 1.3e-3 (200), 2.9e-4 (1000)."""
    model, operator, z0, y, _ = identifiable_problem()
    loss = PSLDLoss(omega=0.4, gamma=0.4, squared=True)
    errors = [float(relative_error(psld(model, operator, y, steps, loss), z0).max()) for steps in (50, 200, 1000)]
    print("worst relative error at 50/200/1000 steps:", [f"{e:.2e}" for e in errors])
    assert errors[1] < 0.5 * errors[0] and errors[2] < 0.5 * errors[1]
    assert errors[2] < 1e-3


def test_plain_norms_stall_at_a_floor_set_by_omega():
    """Why the identifiable tests use squared norms: the reference's plain norm steps by omega J^T r / ||r||, a
    length that does not shrink as r -> 0. Measured at omega = gamma = 0.05: median error 1.6e-2 at 200 steps,
    2.1e-2 at 1000 (worst 5.0e-2), where the squared norm reaches 2.9e-4."""
    model, operator, z0, y, _ = identifiable_problem()
    loss = PSLDLoss(omega=0.05, gamma=0.05)
    medians = [float(relative_error(psld(model, operator, y, steps, loss), z0).median()) for steps in (200, 1000)]
    assert medians[1] > 0.5 * medians[0] and medians[1] > 5e-3


# ---------------------------------------------------------------- b. underdetermined, noisy: the posterior

def test_underdetermined_sample_mean_is_the_posterior_mean_and_residuals_sit_at_the_noise_level():
    """k = 16 latent dimensions, m = 8 noisy measurements (sigma_y = 0.1): z0 | y is Gaussian with known mean mu
    and covariance Sigma. 4000 PSLD samples of the same y, batched.

    Tolerance for the mean: 3 standard errors of a Monte Carlo mean, 3 sqrt(tr Sigma / N) = 0.135 (9% of ||mu|| =
    1.52). That is all this test can resolve: PSLD, like DPS, is not an exact posterior sampler (its likelihood
    ignores Cov[z0 | x_t]), so a bias smaller than that is not excluded. Measured: ||mean - mu|| = 0.06 here; over 5
    seeds with N = 2000, 0.06-0.11 against a standard error of 0.064.

    Residual: an exact posterior sample has E||y - A S z||^2 = ||y - A S mu||^2 + tr(A S Sigma S^T A^T) (about
    sigma_y^2 m). With plain norms the guidance step has constant length omega, so where the residual settles is
    set by omega and the step count, not by sigma_y: omega = gamma = 0.1 with 100 steps puts it at 1.13-1.17x the
    exact value over 5 seeds (omega 0.05 under-fits at 1.6-3.9x, 0.2 overshoots at 2.2-2.4x; squared norms over-fit
    the noise, 0.4-0.9x). So this checks that PSLD neither ignores nor over-fits the measurement at these settings,
    not that it calibrates itself to sigma_y.
    """
    n, k, m, sigma_y, samples = 64, 16, 8, 0.1, 4000
    g = torch.Generator().manual_seed(0)
    model = LinearLatentModel.random(n, k, generator=g)
    matrix = torch.randn(m, n, generator=g, dtype=torch.float64) / math.sqrt(m)
    operator = MatrixOperator(matrix=matrix)
    z_true = model.sample_latents(1, generator=g)
    y = operator.forward(model.decode(z_true)) + sigma_y * torch.randn(1, 1, m, 1, generator=g, dtype=torch.float64)
    mu, cov = model.posterior(matrix, y, sigma_y)

    z = psld(model, operator, y.expand(samples, -1, -1, -1), 100, PSLDLoss(omega=0.1, gamma=0.1))

    standard_error = math.sqrt(float(torch.trace(cov)) / samples)
    mean_error = float((z.mean(0, keepdim=True) - mu).norm())
    b = matrix @ model.basis
    exact_residual = math.sqrt(float(((as_vector(y) - as_vector(mu) @ b.T) ** 2).sum() + torch.trace(b @ cov @ b.T)))
    residuals = as_vector(operator.forward(model.decode(z)) - y).norm(dim=1)
    rms_residual = float((residuals ** 2).mean().sqrt())
    spread = float(torch.trace(torch.cov(as_vector(z).T)))
    print(f"||mean - mu|| = {mean_error:.3f} (3 s.e. = {3 * standard_error:.3f}, ||mu|| = {float(mu.norm()):.2f}); "
          f"rms residual {rms_residual:.3f} vs exact posterior {exact_residual:.3f} "
          f"(sigma_y sqrt(m) = {sigma_y * math.sqrt(m):.3f}); tr cov {spread:.2f} vs {float(torch.trace(cov)):.2f}")
    assert mean_error < 3 * standard_error
    assert 0.8 < rms_residual / exact_residual < 1.5
    assert abs(spread / float(torch.trace(cov)) - 1) < 0.15  # samples spread like the posterior, not collapsed


# ---------------------------------------------------------------- c. an encoder that does not invert the decoder

VARIANTS = ("PSLD", "GML-DPS", "LDPS")


def encoder_study(sigma_y, encoders, steps=200):
    """Median relative error to the truth, measurement residual and latent norm ratio per (encoder, variant)."""
    model, operator, z0, y, g = identifiable_problem(sigma_y=sigma_y)
    results = {}
    for name, make in encoders.items():
        encode = make(model, g)
        for variant in VARIANTS:
            z = psld(model, operator, y, steps, PSLDLoss(omega=0.4, gamma=0.4, squared=True, variant=variant),
                     encode=encode)
            image = model.decode(z)
            off_subspace = as_vector(image - model.decode(model.encode(image))).norm(dim=1)
            results[name, variant] = dict(
                z=z, error=float(relative_error(z, z0).median()),
                residual=float(relative_error(operator.forward(image), y).median()),
                norm=float((as_vector(z).norm(dim=1) / as_vector(z0).norm(dim=1)).median()),
                off_subspace=float((off_subspace / as_vector(image).norm(dim=1)).max()))
    for (name, variant), r in results.items():
        print(f"sigma_y={sigma_y} {name:9s} {variant:8s} error {r['error']:.2e} residual {r['residual']:.2e} "
              f"norm {r['norm']:.3f}")
    return results


ENCODERS = {
    "exact": lambda model, g: model.encode,
    "leak 2": lambda model, g: model.leaky_encoder(2.0, generator=g),
    "gain +0.1": lambda model, g: model.gain_encoder(0.1),
    "gain -0.1": lambda model, g: model.gain_encoder(-0.1),
}


def test_encoder_errors_noiseless():
    """Noiseless identifiable problem (m = 32, k = 8, n = 64), 200 steps; median over 16 samples.

    Measured relative errors to the truth:
        encoder      PSLD     GML-DPS  LDPS
        exact        8.6e-4   1.3e-3   1.3e-3
        leak 2       9.2e-4   1.3e-3   1.3e-3
        gain +0.1    3.8e-2   1.1e-2   1.3e-3
        gain -0.1    4.6e-2   1.1e-2   1.3e-3
    - Decoded samples never leave the data subspace range(S): D maps every latent into it (checked, <= 1e-13). An
      encoder error shows up as a wrong point inside the subspace: error to the truth and to the measurements.
    - A leak of the orthogonal complement, E = S^T + 2 G (I - S S^T): GML-DPS cannot see it (E(D(z)) = z exactly,
      so it equals LDPS), and PSLD sees it only through (I - S S^T) A^+ (y - A D(z0_hat)), which vanishes as the
      measurements are met: little effect without noise (9.2e-4 vs 8.6e-4; ratio 0.92-1.21 over 4 seeds).
    - A gain error E = (1 + g) S^T biases both gluing variants and PSLD most: LDPS < GML-DPS < PSLD. GML-DPS pulls
      z0_hat toward 0 (|g| ||z0_hat||, sample norm 0.99 for either sign); PSLD pulls it along the gain (norm 1.04 for
      g = +0.1, 0.96 for g = -0.1). LDPS never runs the encoder. Same ordering and norm signs on 4 seeds
      (GML-DPS/LDPS >= 6.5x, PSLD/GML-DPS >= 2.9x), so those are asserted; the leak ratio only as "< 2x".
    """
    r = encoder_study(0.0, ENCODERS)
    assert max(v["off_subspace"] for v in r.values()) < 1e-12
    for name in ENCODERS:  # GML-DPS == LDPS whenever E(D(z)) = z, i.e. for the exact and the leaky encoder
        if not name.startswith("gain"):
            torch.testing.assert_close(r[name, "GML-DPS"]["z"], r[name, "LDPS"]["z"], rtol=1e-9, atol=1e-12)
    assert r["leak 2", "PSLD"]["error"] < 2 * r["exact", "PSLD"]["error"]
    for name in ("gain +0.1", "gain -0.1"):
        ldps, gml, psld_ = (r[name, v]["error"] for v in VARIANTS[::-1])
        assert 3 * ldps < gml and 2 * gml < psld_
        assert r[name, "GML-DPS"]["residual"] < r[name, "PSLD"]["residual"]
        assert r[name, "GML-DPS"]["norm"] < 1.0
    assert r["gain +0.1", "PSLD"]["norm"] > 1.0 > r["gain -0.1", "PSLD"]["norm"]
    assert r["exact", "PSLD"]["error"] < r["exact", "LDPS"]["error"]  # exact gluing helps here


def test_encoder_leak_with_noisy_measurements():
    """sigma_y = 0.05: the residual no longer vanishes, so the leak reaches PSLD's gluing target. Its effect is small
    and depends on the draw: median error with leak 2 / exact encoder = 1.25 here (6.5e-2 vs 5.2e-2), 1.42, 1.14 and
    0.99 for seeds 1-3. Only what holds on every seed is asserted: the error stays within 2x, and GML-DPS is LDPS."""
    r = encoder_study(0.05, {k: ENCODERS[k] for k in ("exact", "leak 2")})
    assert r["leak 2", "PSLD"]["error"] < 2 * r["exact", "PSLD"]["error"]
    torch.testing.assert_close(r["leak 2", "GML-DPS"]["z"], r["leak 2", "LDPS"]["z"], rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- the model itself

def test_linear_model_pieces_are_what_they_claim():
    g = torch.Generator().manual_seed(0)
    model = LinearLatentModel.random(12, 3, generator=g)
    torch.testing.assert_close(model.basis.T @ model.basis, torch.eye(3, dtype=torch.float64))
    z = model.sample_latents(5, generator=g)
    torch.testing.assert_close(model.encode(model.decode(z)), z)
    # Tweedie for N(0, I): E[z0 | z0 + sigma eps] = x / (1 + sigma^2); check by regression on many draws
    z0 = torch.randn(200000, 1, 1, 1, generator=g, dtype=torch.float64)
    x = z0 + 2.0 * torch.randn(z0.shape, generator=g, dtype=torch.float64)
    slope = float((z0 * x).mean() / (x * x).mean())
    assert slope == pytest.approx(float(model.denoise(torch.ones(1, 1, 1, 1, dtype=torch.float64), 2.0)), abs=5e-3)
    # posterior: for sigma_y -> 0 and m >= k the mean is the truth
    matrix = torch.randn(6, 12, generator=g, dtype=torch.float64)
    y = MatrixOperator(matrix=matrix).forward(model.decode(z))
    mean, cov = model.posterior(matrix, y, 0.0)
    torch.testing.assert_close(mean, z)
    assert float(cov.abs().max()) < 1e-10
    with pytest.raises(ValueError, match="image_shape"):
        MatrixOperator(matrix=matrix, image_shape=(3, 2, 3))
