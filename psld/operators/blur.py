"""Blur operators: Gaussian and random motion kernels on the shared reflect-pad correlation (convolution.py)."""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from .base import check_float, check_int
from .convolution import KernelBlur
from .motion_kernel import motion_kernel


def _reflect(index: torch.Tensor, n: int) -> torch.Tensor:
    """Half-sample symmetric index (scipy.ndimage 'reflect'): d c b a | a b c d | d c b a."""
    index = index % (2 * n)
    return torch.where(index < n, index, 2 * n - 1 - index)


def gaussian_kernel(kernel_size: int, sigma: float, truncate: float = 4.0) -> Tensor:
    """Gaussian filter of a centred k x k delta, as scipy.ndimage.gaussian_filter: weights ∝ exp(-t²/2σ²) on
    |t| <= int(truncate σ + 0.5), normalised, 'reflect' boundary, separable; float64, sums to 1."""
    kernel_size = check_int("kernel_size", kernel_size, odd=True)
    sigma = check_float("sigma", sigma)
    radius = int(truncate * sigma + 0.5)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (taps / sigma) ** 2)
    weights = weights / weights.sum()  # g(t) = exp(-t²/2σ²) / Σ exp(-t²/2σ²)
    centre = kernel_size // 2
    # 1-D filtered delta: out[i] = Σ_t g(t) [reflect(i + t) == centre]
    hits = _reflect(torch.arange(kernel_size)[:, None] + taps.long()[None, :], kernel_size) == centre
    profile = (hits * weights[None, :]).sum(dim=1)
    return profile[:, None] * profile[None, :]  # separable: K = g g^T


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class GaussianBlur(KernelBlur):
    """A x = k_σ ⋆ reflect_pad(x); the reference uses (61, 3.0) at 256 px and (121, 3.0) at 512 px."""

    kernel_size: int
    sigma: float

    def _make_kernel(self):
        return gaussian_kernel(self.kernel_size, self.sigma)

    def _describe(self):
        return f"Gaussian blur {self.kernel_size} px, sigma {self.sigma:g}"


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class MotionBlur(KernelBlur):
    """A x = k_motion ⋆ reflect_pad(x), with the random-trajectory kernel drawn from numpy Generator(seed).
    The reference uses (61, 0.5) at 256 px and (121, 0.5) at 512 px."""

    kernel_size: int
    intensity: float = 0.5
    seed: int = 0

    def _make_kernel(self):
        size = check_int("kernel_size", self.kernel_size, odd=True)
        intensity = check_float("intensity", self.intensity, maximum=1.0, include_minimum=True)
        seed = check_int("seed", self.seed, minimum=0)
        return torch.from_numpy(motion_kernel(size, intensity, seed))

    def _describe(self):
        return f"Motion blur {self.kernel_size} px, intensity {self.intensity:g}, seed {self.seed}"
