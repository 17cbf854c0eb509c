"""Pure-torch PSLD (Rout et al., NeurIPS 2023, arXiv 2307.00619): operators, losses and the sampler.

Never imports comfy.
"""
from .ddim import (alpha_bar_from_sigma, ddim_noise_levels, ddim_step, ddim_uniform_sigmas, discrete_alpha_bars,
                   reference_gradient_scale, sigma_from_alpha_bar)
from .linear_model import LinearLatentModel, MatrixOperator
from .losses import TASKS, VARIANTS, PSLDLoss, gluing_residual, measurement_residual, psld_objective, reference_loss
from .operators import (Colorization, GaussianBlur, Identity, Inpainting, LinearOperator, MotionBlur,
                        SuperResolution, add_measurement_noise, box_mask, random_mask)
from .sampling import PSLDDivergenceError, psld_gradient, sample_psld

__all__ = [
    # operators (psld.operators)
    "LinearOperator", "Inpainting", "SuperResolution", "GaussianBlur", "MotionBlur", "Colorization", "Identity",
    "box_mask", "random_mask", "add_measurement_noise",
    # objective (psld.losses)
    "PSLDLoss", "VARIANTS", "TASKS", "reference_loss", "measurement_residual", "gluing_residual", "psld_objective",
    # sampler (psld.sampling, psld.ddim)
    "sample_psld", "psld_gradient", "PSLDDivergenceError",
    "ddim_step", "ddim_noise_levels", "reference_gradient_scale", "alpha_bar_from_sigma", "sigma_from_alpha_bar",
    "discrete_alpha_bars", "ddim_uniform_sigmas",
    # the paper's linear model (psld.linear_model)
    "LinearLatentModel", "MatrixOperator",
]
