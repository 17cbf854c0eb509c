"""Image quality metrics of the benchmark, per image: PSNR, SSIM and the measurement residual.

Images are NCHW float tensors; PSNR and SSIM compare an estimate x with a reference of the same shape, in units where
the full range is `data_range` (1 for images in [0, 1]; 2 for the [-1, 1] images of psld/). Results are `[B]` tensors
in float32 or wider, on the inputs' device.

SSIM follows Wang, Bovik, Sheikh and Simoncelli (IEEE TIP 2004): local means, variances and covariance under an 11 x 11
Gaussian window with sigma 1.5 (normalised weights), C1 = (0.01 L)^2, C2 = (0.03 L)^2, the map averaged over the
positions where the window lies wholly inside the image and over the channels. This is scikit-image's
`structural_similarity(x, ref, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=L)`
(the settings its documentation gives for matching Wang et al.); skimage's plain gaussian_weights=True default also
rescales the covariances by N / (N - 1), N = 121. Images smaller than 11 px get the largest odd window that fits.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .operators.base import check_float, describe_tensor

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _check_pair(x, ref) -> tuple[Tensor, Tensor]:
    """Two floating NCHW tensors of one shape, finite; compared in float32 or wider."""
    for name, t in (("x", x), ("ref", ref)):
        if not isinstance(t, Tensor) or t.ndim != 4 or not t.is_floating_point():
            raise ValueError(f"{name} is {describe_tensor(t)}: {name} must be a floating-point NCHW tensor "
                             f"[batch, channels, height, width].")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} ({describe_tensor(t)}) contains NaN or Inf: {name} must be finite.")
    if x.shape != ref.shape:
        raise ValueError(f"x has shape {tuple(x.shape)} but ref has shape {tuple(ref.shape)}: x must have the shape "
                         f"of ref.")
    dtype = torch.promote_types(torch.promote_types(x.dtype, ref.dtype), torch.float32)
    return x.to(dtype), ref.to(device=x.device, dtype=dtype)


def mse(x: Tensor, ref: Tensor) -> Tensor:
    """Mean squared error per image: MSE_b = mean((x_b - ref_b)^2)."""
    x, ref = _check_pair(x, ref)
    return (x - ref).pow(2).flatten(1).mean(1)  # MSE = (1/n) Σ (x - ref)^2


def psnr(x: Tensor, ref: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB per image: PSNR = 10 log10(L^2 / MSE); +inf where x equals ref."""
    data_range = check_float("data_range", data_range)
    return 10.0 * torch.log10(data_range ** 2 / mse(x, ref))  # PSNR = 10 log10(L² / MSE)


def gaussian_window(size: int, sigma: float, *, device=None, dtype=torch.float32) -> Tensor:
    """Normalised 1-D Gaussian weights w_t ∝ exp(-t² / 2σ²), t = -(size // 2) .. size // 2."""
    taps = torch.arange(size, device=device, dtype=torch.float64) - size // 2
    weights = torch.exp(-0.5 * (taps / sigma) ** 2)
    return (weights / weights.sum()).to(dtype)  # w_t = exp(-t²/2σ²) / Σ exp(-t²/2σ²)


def ssim_window_size(height: int, width: int, window: int = SSIM_WINDOW) -> int:
    """The window side used for an image: `window`, or the largest odd size that fits in a smaller image."""
    side = min(window, height, width)
    return side if side % 2 else side - 1


def _local_mean(t: Tensor, weights: Tensor) -> Tensor:
    """Gaussian-weighted local mean over every fully inside window position ('valid' separable filtering)."""
    channels = t.shape[1]
    size = weights.numel()
    t = F.conv2d(t, weights.view(1, 1, size, 1).expand(channels, 1, size, 1), groups=channels)
    return F.conv2d(t, weights.view(1, 1, 1, size).expand(channels, 1, 1, size), groups=channels)


def ssim(x: Tensor, ref: Tensor, data_range: float = 1.0) -> Tensor:
    """Mean structural similarity per image (Wang et al. 2004; see the module docstring); 1 where x equals ref.

    SSIM(a, b) = (2 μa μb + C1)(2 σab + C2) / ((μa² + μb² + C1)(σa² + σb² + C2)), averaged over positions and
    channels.
    """
    data_range = check_float("data_range", data_range)
    x, ref = _check_pair(x, ref)
    size = ssim_window_size(x.shape[-2], x.shape[-1])
    weights = gaussian_window(size, SSIM_SIGMA, device=x.device, dtype=x.dtype)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mu_x, mu_r = _local_mean(x, weights), _local_mean(ref, weights)
    var_x = _local_mean(x * x, weights) - mu_x ** 2  # σa² = E[a²] - μa²
    var_r = _local_mean(ref * ref, weights) - mu_r ** 2
    cov = _local_mean(x * ref, weights) - mu_x * mu_r  # σab = E[ab] - μa μb
    luminance = (2 * mu_x * mu_r + c1) / (mu_x ** 2 + mu_r ** 2 + c1)
    structure = (2 * cov + c2) / (var_x + var_r + c2)
    return (luminance * structure).flatten(1).mean(1)


def measurement_rmse(operator, x: Tensor, y: Tensor) -> Tensor:
    """Root-mean-square measurement residual per image: ||A x_b - y_b|| / sqrt(m), m = entries of y_b."""
    if not isinstance(y, Tensor) or y.ndim < 1 or not y.is_floating_point():
        raise ValueError(f"y is {describe_tensor(y)}: y must be a floating-point measurement tensor [batch, ...].")
    prediction = operator.forward(x)
    if prediction.shape != y.shape:
        raise ValueError(f"y has shape {tuple(y.shape)}, but the operator maps x of shape {tuple(x.shape)} to shape "
                         f"{tuple(prediction.shape)}: y must have that shape.")
    dtype = torch.promote_types(prediction.dtype, torch.float32)
    residual = (prediction.to(dtype) - y.to(device=prediction.device, dtype=dtype)).flatten(1)
    return torch.linalg.vector_norm(residual, dim=1) / math.sqrt(residual.shape[1])  # ||A x - y|| / sqrt(m)
