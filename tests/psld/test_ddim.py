"""Sigma-space DDIM against the alpha-bar-space formulas it is derived from (psld/ddim.py)."""
import math

import numpy as np
import pytest
import torch

from psld.ddim import (alpha_bar_from_sigma, ddim_noise_levels, ddim_step, ddim_uniform_sigmas,
                       discrete_alpha_bars, reference_gradient_scale, sigma_from_alpha_bar, sigma_space_from_vp,
                       vp_from_sigma_space)


def sd15_alpha_bars_numpy():
    """The SD1.5 schedule computed independently: betas linear in sqrt(beta), running product of 1 - beta."""
    betas = np.linspace(np.sqrt(0.00085), np.sqrt(0.012), 1000) ** 2
    out, running = [], 1.0
    for beta in betas:
        running *= 1.0 - beta
        out.append(running)
    return np.array(out)


def test_sd15_schedule_matches_an_independent_computation():
    np.testing.assert_allclose(discrete_alpha_bars().numpy(), sd15_alpha_bars_numpy(), rtol=1e-12)


@pytest.mark.parametrize("steps", [1, 4, 7, 10, 50, 1000])
def test_ddim_uniform_sigmas_sit_on_the_uniform_ddim_timesteps(steps):
    abar = sd15_alpha_bars_numpy()
    stride = 1000 // steps
    timesteps = list(range(1, 1000, stride))  # CompVis make_ddim_timesteps("uniform") and ComfyUI ddim_uniform
    expected = [math.sqrt((1 - abar[t]) / abar[t]) for t in reversed(timesteps)] + [0.0]
    sigmas = ddim_uniform_sigmas(steps)
    assert sigmas.dtype == torch.float64
    np.testing.assert_allclose(sigmas.numpy(), expected, rtol=1e-12)
    if steps == 4:  # the values ComfyUI prints for BasicScheduler(ddim_uniform, 4) on SD1.5
        np.testing.assert_allclose(sigmas.numpy(), [4.1167, 1.6237, 0.6984, 0.0413, 0.0], atol=6e-5)


def test_sigma_and_alpha_bar_round_trip():
    for sigma in (0.0292, 0.5, 1.0, 14.6146):
        assert alpha_bar_from_sigma(sigma) == pytest.approx(1 / (1 + sigma ** 2), rel=1e-15)
        assert sigma_from_alpha_bar(alpha_bar_from_sigma(sigma)) == pytest.approx(sigma, rel=1e-12)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    z = vp_from_sigma_space(x, 2.0)
    torch.testing.assert_close(z, x * math.sqrt(alpha_bar_from_sigma(2.0)), rtol=1e-14, atol=0)
    torch.testing.assert_close(sigma_space_from_vp(z, 2.0), x, rtol=1e-14, atol=0)
    with pytest.raises(ValueError, match="alpha_bar"):
        sigma_from_alpha_bar(0.0)


def reference_ddim(z_t, eps, ab_t, ab_prev, eta, xi):
    """CompVis DDIM (Song et al. 2021, eq. 12) in VP space, written from the formula."""
    z0 = (z_t - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
    s_t = eta * math.sqrt((1 - ab_prev) / (1 - ab_t)) * math.sqrt(1 - ab_t / ab_prev)
    return math.sqrt(ab_prev) * z0 + math.sqrt(1 - ab_prev - s_t ** 2) * eps + s_t * xi


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("sigma, sigma_next", [(14.6146, 9.7), (1.2, 0.5), (0.3, 0.0), (2.0, 2.0)])
def test_sigma_space_ddim_step_equals_the_alpha_bar_space_step(eta, sigma, sigma_next):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 5, 5, generator=g, dtype=torch.float64) * math.sqrt(1 + sigma ** 2)
    denoised = torch.randn(2, 4, 5, 5, generator=g, dtype=torch.float64)
    xi = torch.randn(2, 4, 5, 5, generator=g, dtype=torch.float64)
    ab_t, ab_prev = alpha_bar_from_sigma(sigma), alpha_bar_from_sigma(sigma_next)
    z_t = x * math.sqrt(ab_t)
    eps = (x - denoised) / sigma  # the eps the denoiser implies
    expected = reference_ddim(z_t, eps, ab_t, ab_prev, eta, xi) / math.sqrt(ab_prev)
    sigma_up = ddim_noise_levels(sigma, sigma_next, eta)[1]
    got = ddim_step(x, denoised, sigma, sigma_next, eta, xi if sigma_up > 0 else None)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_ddim_step_needs_noise_only_when_it_adds_noise():
    x = torch.ones(1, 1, 2, 2)
    with pytest.raises(ValueError, match="noise is None"):
        ddim_step(x, x * 0, 1.0, 0.5, eta=0.5)
    assert ddim_step(x, x * 0, 1.0, 0.0, eta=1.0).abs().max() == 0  # last step: no noise, the denoised latent
    with pytest.raises(ValueError, match="eta=1.5"):
        ddim_noise_levels(1.0, 0.5, 1.5)
    with pytest.raises(ValueError, match="sigma_next"):
        ddim_noise_levels(0.5, 1.0, 0.0)


def test_eta_one_is_k_diffusion_ancestral_noise():
    sigma, sigma_next = 3.0, 1.0
    down, up = ddim_noise_levels(sigma, sigma_next, 1.0)
    # k-diffusion get_ancestral_step: sigma_up = sqrt(s1^2 (s0^2 - s1^2) / s0^2), sigma_down = sqrt(s1^2 - up^2)
    expected_up = math.sqrt(sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2)
    assert up == pytest.approx(expected_up, rel=1e-14)
    assert down == pytest.approx(math.sqrt(sigma_next ** 2 - expected_up ** 2), rel=1e-14)


def test_gradient_scale_is_the_chain_rule_between_the_two_parameterisations():
    """x_next = x' - s grad_x L must equal (z' - grad_{z_t} L) / sqrt(abar_prev) for any L."""
    sigma, sigma_next = 3.0, 1.5
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, dtype=torch.float64, generator=g)
    w = torch.randn(3, 4, dtype=torch.float64, generator=g)

    def objective_of_z(z_t):  # any smooth function of the VP latent
        return (torch.sin(z_t * w) ** 2).sum() + z_t.norm()

    z_t = (x / math.sqrt(1 + sigma ** 2)).requires_grad_(True)
    (grad_z,) = torch.autograd.grad(objective_of_z(z_t), z_t)
    x_leaf = x.clone().requires_grad_(True)
    (grad_x,) = torch.autograd.grad(objective_of_z(x_leaf / math.sqrt(1 + sigma ** 2)), x_leaf)
    step_vp = grad_z * math.sqrt(1 + sigma_next ** 2)  # grad_{z_t} L / sqrt(abar_prev)
    torch.testing.assert_close(reference_gradient_scale(sigma, sigma_next) * grad_x, step_vp, rtol=1e-13, atol=0)


@pytest.mark.parametrize("bad", [0, 2.5, "4", True])
def test_ddim_uniform_sigmas_refuses_bad_steps(bad):
    with pytest.raises(ValueError, match="steps"):
        ddim_uniform_sigmas(bad)
