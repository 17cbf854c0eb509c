"""DDIM in sigma space, and the sigma <-> alpha-bar conversions that tie it to the reference's alpha-bar-space DDIM.

Notation. The reference (CompVis DDIM, the PSLD code) works with the variance-preserving latent
z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps. ComfyUI and k-diffusion work in sigma space, x = z_0 + sigma eps.
The two describe the same point when

    abar = 1 / (1 + sigma^2),        z_t = x / sqrt(1 + sigma^2) = sqrt(abar) x.

The DDIM step with stochasticity eta (Song et al. 2021, eq. 12),

    z' = sqrt(abar_prev) z0_hat + sqrt(1 - abar_prev - s_t^2) eps_hat + s_t xi,
    s_t = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev),

divided by sqrt(abar_prev) becomes, in sigma space (eps_hat = (x - z0_hat) / sigma),

    x' = z0_hat + sigma_down eps_hat + sigma_up xi,
    sigma_up = eta sigma_next sqrt(sigma^2 - sigma_next^2) / sigma,   sigma_down = sqrt(sigma_next^2 - sigma_up^2),

which is exactly k-diffusion's ancestral step: DDIM(eta) and Euler-ancestral(eta) are the same update.
All scalar arithmetic here is on Python floats (double precision); tensors keep their dtype and device.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def alpha_bar_from_sigma(sigma: float) -> float:
    """abar = 1 / (1 + sigma^2)."""
    return 1.0 / (1.0 + sigma * sigma)


def sigma_from_alpha_bar(alpha_bar: float) -> float:
    """sigma = sqrt((1 - abar) / abar)."""
    if not 0.0 < alpha_bar <= 1.0:
        raise ValueError(f"alpha_bar={alpha_bar!r} is not allowed: alpha_bar must be in (0, 1].")
    return math.sqrt((1.0 - alpha_bar) / alpha_bar)


def vp_from_sigma_space(x: Tensor, sigma: float) -> Tensor:
    """z_t = x / sqrt(1 + sigma^2)."""
    return x / math.sqrt(1.0 + sigma * sigma)


def sigma_space_from_vp(z: Tensor, sigma: float) -> Tensor:
    """x = z_t sqrt(1 + sigma^2)."""
    return z * math.sqrt(1.0 + sigma * sigma)


def ddim_noise_levels(sigma: float, sigma_next: float, eta: float = 0.0) -> tuple[float, float]:
    """(sigma_down, sigma_up) of a DDIM(eta) step from sigma to sigma_next (module docstring)."""
    if not (sigma > 0.0 and 0.0 <= sigma_next <= sigma):
        raise ValueError(f"sigma={sigma!r}, sigma_next={sigma_next!r} is not allowed: a DDIM step needs "
                         f"sigma > 0 and 0 <= sigma_next <= sigma.")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta={eta!r} is not allowed: eta must be in [0, 1] (0 = deterministic DDIM).")
    # sigma_up = eta sigma_next sqrt(sigma^2 - sigma_next^2) / sigma
    sigma_up = eta * sigma_next * math.sqrt(max(sigma * sigma - sigma_next * sigma_next, 0.0)) / sigma
    sigma_up = min(sigma_up, sigma_next)
    # sigma_down = sqrt(sigma_next^2 - sigma_up^2)
    sigma_down = math.sqrt(max(sigma_next * sigma_next - sigma_up * sigma_up, 0.0))
    return sigma_down, sigma_up


def ddim_step(x: Tensor, denoised: Tensor, sigma: float, sigma_next: float, eta: float = 0.0,
              noise: Tensor | None = None) -> Tensor:
    """x' = z0_hat + sigma_down (x - z0_hat) / sigma + sigma_up xi   (DDIM(eta) in sigma space).

    `noise` is the standard normal xi; it is needed (and used) only when sigma_up > 0.
    """
    sigma_down, sigma_up = ddim_noise_levels(sigma, sigma_next, eta)
    x_next = denoised + (sigma_down / sigma) * (x - denoised)  # z0_hat + sigma_down eps_hat
    if sigma_up > 0.0:
        if noise is None:
            raise ValueError(f"noise is None: a DDIM step with eta={eta} from sigma={sigma:.6g} to "
                             f"sigma_next={sigma_next:.6g} needs a standard normal tensor shaped like x.")
        x_next = x_next + sigma_up * noise
    return x_next


def reference_gradient_scale(sigma: float, sigma_next: float) -> float:
    """sqrt(1 + sigma^2) sqrt(1 + sigma_next^2): grad_{z_t} L / sqrt(abar_prev) expressed through grad_x L.

    The reference subtracts grad_{z_t} L from the VP latent: z_{t-1} = z' - grad_{z_t} L. With
    z_t = x / sqrt(1 + sigma^2) the chain rule gives grad_{z_t} L = sqrt(1 + sigma^2) grad_x L, and mapping z_{t-1} back
    to sigma space divides by sqrt(abar_prev) = 1 / sqrt(1 + sigma_next^2). So
    x_next = x' - sqrt(1 + sigma^2) sqrt(1 + sigma_next^2) grad_x L.
    """
    return math.sqrt(1.0 + sigma * sigma) * math.sqrt(1.0 + sigma_next * sigma_next)


# ---------------------------------------------------------------- discrete VP schedules (SD1.5) for tests and benches

def discrete_alpha_bars(beta_start: float = 0.00085, beta_end: float = 0.012, timesteps: int = 1000) -> Tensor:
    """abar_t = prod_{s<=t} (1 - beta_s), betas linear in sqrt from beta_start to beta_end (SD1.5), float64."""
    if not (isinstance(timesteps, int) and timesteps >= 2):
        raise ValueError(f"timesteps={timesteps!r} is not allowed: timesteps must be an integer >= 2.")
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(f"beta_start={beta_start!r}, beta_end={beta_end!r} is not allowed: "
                         f"they must satisfy 0 < beta_start <= beta_end < 1.")
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def ddim_uniform_sigmas(steps: int, alpha_bars: Tensor | None = None) -> Tensor:
    """Descending sigmas at the uniform DDIM timesteps t = 1, 1 + c, 1 + 2c, ... (c = T // steps), then a final 0.

    The same timesteps as CompVis `make_ddim_timesteps(uniform)` and ComfyUI's `ddim_uniform` scheduler; float64.
    """
    if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1):
        raise ValueError(f"steps={steps!r} is not allowed: steps must be an integer >= 1.")
    alpha_bars = discrete_alpha_bars() if alpha_bars is None else alpha_bars.to(torch.float64)
    sigmas = ((1.0 - alpha_bars) / alpha_bars).sqrt()
    stride = max(len(sigmas) // steps, 1)
    timesteps = torch.arange(1, len(sigmas), stride)
    return torch.cat([sigmas[timesteps].flip(0), sigmas.new_zeros(1)])
