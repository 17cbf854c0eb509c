"""Measurement noise: y_n = y + σ_y n, n ~ N(0, I), from an explicit generator (never the global RNG)."""
from __future__ import annotations

import torch
from torch import Tensor

from .base import as_generator, check_float, describe_tensor


def add_measurement_noise(y: Tensor, sigma_y: float, *, generator=None) -> Tensor:
    """y + σ_y n with n ~ N(0, I) drawn from `generator` (a torch.Generator, an int seed, or None = seed 0).

    The noise is drawn in float32 (float64 for float64 y) on the generator's device, then moved to y's device and
    dtype, so one seed gives the same noise whatever y's precision. The reference code uses σ_y = 0.05.
    """
    if not isinstance(y, Tensor) or not y.is_floating_point():
        raise ValueError(f"y is {describe_tensor(y)}: y must be a floating-point tensor.")
    sigma_y = check_float("sigma_y", sigma_y, include_minimum=True)
    gen = as_generator(generator)
    dtype = torch.float64 if y.dtype == torch.float64 else torch.float32
    noise = torch.randn(y.shape, generator=gen, device=gen.device, dtype=dtype)
    return y + sigma_y * noise.to(device=y.device, dtype=y.dtype)  # y_n = y + σ_y n
