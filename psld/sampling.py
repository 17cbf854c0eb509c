"""sample_psld: DDIM in sigma space plus the PSLD gradient step, shaped like a k-diffusion sampler.

One step i, from sigma = sigmas[i] to sigma_next = sigmas[i + 1] (x = z0 + sigma eps):

    z0_hat  = denoise(x, sigma)                                  Tweedie estimate (with grad w.r.t. x)
    L       = psld_objective(z0_hat, D(z0_hat))                  psld/losses.py, one decode for both terms
    x'      = DDIM_eta(x, z0_hat, sigma, sigma_next)             psld/ddim.py (no grad)
    x_next  = x' - sqrt(1 + sigma^2) sqrt(1 + sigma_next^2) grad_x L

The factor turns grad_x L into the reference's VP-space step z_{t-1} = z' - grad_{z_t} L (psld/ddim.py,
`reference_gradient_scale`), so with the SD1.5 discrete schedule and DDIM-uniform sigmas this is the reference
algorithm (tests/psld/test_sampling.py shows it step by step). The caller chooses the sigmas, so any scheduler
drives it. The last step (sigma_next = 0) gives z0_hat minus the gradient step, as the reference's last step does.

Jacobian-free gradient (PSLDLoss.jacobian_free, beyond the paper; in the spirit of manifold-preserving guided
diffusion, He et al., ICLR 2024): grad_x L = (d z0_hat / d x)^T grad_z0 L with the denoiser's Jacobian replaced by
that of the denoiser of a unit Gaussian latent prior, z0_hat = x / (1 + sigma^2):

    grad_x L ~ grad_z0 L / (1 + sigma^2)

The denoiser then runs forward only; decoder and encoder are still differentiated. Where the denoiser is that
Gaussian one (the paper's linear model) the two gradients are equal, so the step reduces to the reference step
there; the full step x_next = x' - sqrt((1 + sigma_next^2) / (1 + sigma^2)) grad_z0 L then moves x by at most
grad_z0 L, as MPGD's step on z0_hat does. (Taking the Jacobian as the identity instead, eps held fixed, would scale
the step by up to 1 + sigma^2 at high noise: measured on box inpainting, its best omega fell below the tuning grid.)

ComfyUI calls samplers inside torch.inference_mode(); gradients need it off. The sampler therefore opens
`torch.inference_mode(False)`, `torch.enable_grad()` and psld.memory.weights_by_reference() around the gradient
computation only: x becomes a fresh leaf, and every inference tensor or parameter the denoiser, decoder, encoder
or operator uses (weights, conditionings, y) enters autograd by reference, never copied. The DDIM update stays in
the caller's mode.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .ddim import ddim_noise_levels, ddim_step, reference_gradient_scale
from .losses import PSLDLoss, psld_objective
from .memory import weights_by_reference

Denoiser = Callable[[Tensor, Tensor], Tensor]


class PSLDDivergenceError(FloatingPointError):
    """The PSLD objective, its gradient or the latent became NaN or Inf."""


def _check_sigmas(sigmas) -> list[float]:
    if not isinstance(sigmas, Tensor) or sigmas.ndim != 1 or sigmas.numel() < 2 or not sigmas.is_floating_point():
        raise ValueError(f"sigmas is {_describe(sigmas)}: sigmas must be a 1-D float tensor with at least 2 values "
                         f"(descending noise levels, usually ending in 0).")
    values = [float(s) for s in sigmas.detach().cpu().tolist()]
    ok = all(math.isfinite(s) for s in values) and all(s > 0 for s in values[:-1]) and values[-1] >= 0
    ok = ok and all(b <= a for a, b in zip(values, values[1:]))
    if not ok:
        raise ValueError(f"sigmas={values!r} is not allowed: sigmas must be finite, non-increasing, > 0 except "
                         f"the last, which may be 0.")
    return values


def _describe(t) -> str:
    if isinstance(t, Tensor):
        return f"a tensor of shape {tuple(t.shape)} and dtype {t.dtype}"
    return f"a {type(t).__name__}"


def _check_inputs(denoise, x, operator, y, decode, encode, eta, noise_sampler, callback, check_interrupt):
    for name, fn in (("denoise", denoise), ("decode", decode), ("noise_sampler", noise_sampler),
                     ("callback", callback), ("check_interrupt", check_interrupt), ("encode", encode)):
        if fn is not None and not callable(fn):
            raise ValueError(f"{name} is {_describe(fn)}: {name} must be callable (or None where optional).")
    if denoise is None or decode is None:
        raise ValueError("denoise and decode are required: denoise(x, sigma) -> z0_hat and decode(z) -> image.")
    if not isinstance(x, Tensor) or x.ndim < 2 or not x.is_floating_point():
        raise ValueError(f"x is {_describe(x)}: x must be a floating-point latent [B, ...] in sigma space.")
    if not isinstance(y, Tensor) or y.ndim < 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y is {_describe(y)}: y must be a tensor whose batch size equals x's ({x.shape[0]}).")
    if y.device != x.device:
        raise ValueError(f"y is on {y.device} but x is on {x.device}: y must be on the same device as x.")
    if not (hasattr(operator, "forward") and hasattr(operator, "project")):
        raise ValueError(f"operator is {_describe(operator)}: operator must provide forward(x) and project(x, y) "
                         f"(the LinearOperator protocol of psld.operators).")
    ok = isinstance(eta, (int, float)) and not isinstance(eta, bool) and 0.0 <= eta <= 1.0
    if not ok:
        raise ValueError(f"eta={eta!r} is not allowed: eta must be a number in [0, 1] (0 = deterministic DDIM).")


def _standard_normal(shape, like: Tensor, generator: torch.Generator) -> Tensor:
    noise = torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype)
    return noise.to(like.device)


def _generator_for(generator, device) -> torch.Generator:
    """The given Generator, a new one seeded with the given int, or seed 0 (never the global RNG)."""
    if isinstance(generator, torch.Generator):
        return generator
    if generator is None:
        generator = 0
    if not isinstance(generator, int) or isinstance(generator, bool) or generator < 0:
        raise ValueError(f"generator={generator!r} is not allowed: generator must be a torch.Generator, "
                         f"an integer seed >= 0, or None (seed 0).")
    return torch.Generator(device=device).manual_seed(generator)


def _divergence(step: int, steps: int, sigma: float, loss: PSLDLoss, what: str) -> PSLDDivergenceError:
    return PSLDDivergenceError(
        f"PSLD diverged at step {step + 1} of {steps} (sigma={sigma:.4g}): the {what} is NaN or Inf with "
        f"omega={loss.omega:g}, gamma={loss.gluing_weight:g} ({loss.variant}). Lower omega and gamma (halve them, "
        f"or use the reference weights of psld.reference_loss), or use more steps.")


def gaussian_prior_gradient(grad_z0: Tensor, sigma: Tensor) -> Tensor:
    """grad_x L ~ grad_z0 L / (1 + sigma^2): the Jacobian of the unit-Gaussian-prior denoiser (module docstring)."""
    s = sigma.to(grad_z0.dtype).reshape(-1, *([1] * (grad_z0.ndim - 1)))
    return grad_z0 / (1 + s * s)


def psld_gradient(denoise: Denoiser, x: Tensor, sigma: Tensor, *, loss: PSLDLoss, operator, y: Tensor,
                  decode: Callable[[Tensor], Tensor], encode, generator=None
                  ) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
    """grad_x L with L = psld_objective(denoise(x, sigma)); returns (grad, z0_hat, objective, residuals), detached.

    Runs in its own autograd region (inference mode off, grad on, weights by reference) on a clone of x, so it
    works when the caller is inside torch.inference_mode(), as ComfyUI's samplers are, and never copies a weight.
    With loss.jacobian_free the denoiser runs without gradients and grad is grad_z0 L (module docstring).
    """
    with torch.inference_mode(False), torch.enable_grad(), weights_by_reference():
        leaf = x.detach().clone().requires_grad_(True)  # a fresh leaf; never x itself (the caller's tensor)
        if loss.jacobian_free:
            with torch.no_grad():
                leaf = denoise(leaf, sigma).detach().requires_grad_(True)
            z0_hat = leaf
        else:
            z0_hat = denoise(leaf, sigma)
        image_hat = decode(z0_hat)
        objective, residuals = psld_objective(loss, operator, y, z0_hat, image_hat, encode, generator=generator)
        if not objective.requires_grad:
            raise ValueError("denoise, decode or encode returned a tensor without a gradient path to x: they must "
                             "be differentiable (no torch.no_grad / inference_mode or tiled decode inside).")
        (grad,) = torch.autograd.grad(objective, leaf)
        if loss.jacobian_free:
            grad = gaussian_prior_gradient(grad, sigma)
    return grad.detach(), z0_hat.detach(), objective.detach(), residuals


def sample_psld(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, operator, y: Tensor,
                decode: Callable[[Tensor], Tensor], encode: Callable[[Tensor], Tensor] | None,
                omega: float = 1.0, gamma: float = 0.1, loss: PSLDLoss | None = None, eta: float = 0.0,
                noise_sampler: Callable | None = None, callback: Callable | None = None,
                check_interrupt: Callable[[], None] | None = None, generator=None) -> Tensor:
    """PSLD posterior sampling (Rout et al. 2023) from the noisy latent x over the noise levels `sigmas`.

    denoise(x, sigma[B]) -> z0_hat; decode(z) -> image in [-1, 1]; encode(image) -> z (may be None for LDPS or
    gamma=0); operator: psld.operators.LinearOperator; y: the measurement, batch size as x. `loss` (a PSLDLoss)
    overrides omega and gamma. eta > 0 draws DDIM noise from noise_sampler(sigma, sigma_next) (a standard normal
    shaped like x) or else from `generator` (a torch.Generator or int seed; None = seed 0), which also draws the
    loss's fresh measurement noise. callback(i, x, denoised, residuals) runs once per step with the step's input
    latent, its z0_hat and the per-sample residual norms; check_interrupt() runs before each step and may raise.
    Returns the final latent (a plain tensor, detached, x's dtype). Raises PSLDDivergenceError on NaN/Inf.
    """
    loss = loss if loss is not None else PSLDLoss(omega=omega, gamma=gamma)
    if not isinstance(loss, PSLDLoss):
        raise ValueError(f"loss is {_describe(loss)}: loss must be a psld.PSLDLoss or None.")
    _check_inputs(denoise, x, operator, y, decode, encode, eta, noise_sampler, callback, check_interrupt)
    values = _check_sigmas(sigmas)
    steps = len(values) - 1
    sigma_dtype = sigmas.dtype
    needs_random = loss.fresh_measurement_noise > 0 or (eta > 0 and noise_sampler is None)
    rng = _generator_for(generator, x.device) if needs_random else None
    batch, dtype = x.shape[0], x.dtype
    x = x.detach()  # the update below must never build a graph across steps

    for i in range(steps):
        if check_interrupt is not None:
            check_interrupt()
        sigma, sigma_next = values[i], values[i + 1]
        sigma_in = torch.full((batch,), sigma, device=x.device, dtype=sigma_dtype)
        if loss.needs_gradient:
            grad, denoised, objective, residuals = psld_gradient(
                denoise, x, sigma_in, loss=loss, operator=operator, y=y, decode=decode, encode=encode,
                generator=rng)
        else:  # omega = gamma = 0: plain DDIM, no decoder, encoder or backward
            with torch.no_grad():
                denoised = denoise(x, sigma_in).detach()
            grad, objective, residuals = None, None, {}
        if callback is not None:
            callback(i, x, denoised, residuals)

        noise = None
        if ddim_noise_levels(sigma, sigma_next, eta)[1] > 0:
            noise = (noise_sampler(sigmas[i], sigmas[i + 1]) if noise_sampler is not None
                     else _standard_normal(x.shape, x, rng))
        x_next = ddim_step(x, denoised, sigma, sigma_next, eta, noise)  # DDIM(eta) in sigma space
        if grad is not None:
            x_next = x_next - reference_gradient_scale(sigma, sigma_next) * grad  # z_{t-1} = z' - grad_{z_t} L
        x_next = x_next.to(dtype)  # a denoiser may answer in another dtype; the latent keeps x's
        if not bool(torch.isfinite(x_next).all()):
            what = "latent"
            if objective is not None and not bool(torch.isfinite(objective)):
                what = "objective"
            elif grad is not None and not bool(torch.isfinite(grad).all()):
                what = "gradient"
            raise _divergence(i, steps, sigma, loss, what)
        x = x_next
    return x
