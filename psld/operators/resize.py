"""Separable resize matrices for super-resolution, built in float64 from the maths (MATLAB imresize conventions).

A 1-D downscaling by an integer `scale` is a matrix W of shape [n // scale, n]; a 2-D image is resized as
W_h x W_w^T. Matrices are cached per (size, scale, mode) in float64 on the CPU and, cast, per (device, dtype);
they are built outside inference mode so that autograd may save them even when first asked for inside
torch.inference_mode().
"""
from __future__ import annotations

import functools
import math

import torch

RESIZE_MODES = ("bicubic", "area")


def keys_cubic(t: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys cubic: (a+2)|t|^3 - (a+3)|t|^2 + 1 on |t|<=1; a|t|^3 - 5a|t|^2 + 8a|t| - 4a on 1<|t|<2; 0 beyond."""
    t = t.abs()
    inner = (a + 2) * t**3 - (a + 3) * t**2 + 1
    outer = a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return torch.where(t <= 1, inner, torch.where(t < 2, outer, torch.zeros_like(t)))


def mirror_index(index: torch.Tensor, n: int) -> torch.Tensor:
    """Symmetric boundary (edge repeated): ... 1 0 | 0 1 ... n-1 | n-1 n-2 ..., i.e. period 2n."""
    index = index % (2 * n)
    return torch.where(index < n, index, 2 * n - 1 - index)


@functools.lru_cache(maxsize=32)
@torch.inference_mode(False)
def bicubic_matrix(n: int, scale: int) -> torch.Tensor:
    """Antialiased bicubic downscaling by 1/scale: W[j, i] = Σ over taps t mirrored onto i of s k(s (u_j - t)),
    each row normalised to sum 1."""
    s = 1.0 / scale
    out = torch.arange(1, n // scale + 1, dtype=torch.float64)  # 1-based output positions
    u = out / s + 0.5 * (1 - 1 / s)  # input coordinate of output pixel j (1-based): u = j/s + (1 - 1/s)/2
    width = 4.0 / s  # Keys support 4, stretched by the scale (antialiasing)
    left = torch.floor(u - width / 2)
    taps = left[:, None] + torch.arange(math.ceil(width) + 2, dtype=torch.float64)[None, :]
    weights = s * keys_cubic(s * (u[:, None] - taps))  # k_s(t) = s k(s t)
    weights = weights / weights.sum(dim=1, keepdim=True)  # normalise each output pixel to sum 1
    index = mirror_index(taps.long() - 1, n)
    matrix = torch.zeros(n // scale, n, dtype=torch.float64)
    return matrix.scatter_add_(1, index, weights)


@functools.lru_cache(maxsize=32)
@torch.inference_mode(False)
def area_matrix(n: int, scale: int) -> torch.Tensor:
    """Box average: W[j, i] = 1/scale for i in [j scale, (j+1) scale)."""
    rows = torch.arange(n, dtype=torch.long) // scale
    return torch.zeros(n // scale, n, dtype=torch.float64).index_put_(
        (rows, torch.arange(n)), torch.full((n,), 1.0 / scale, dtype=torch.float64))


def resize_matrix(n: int, scale: int, mode: str) -> torch.Tensor:
    """The float64 CPU matrix W of shape [n // scale, n] (do not modify it: it is cached)."""
    return bicubic_matrix(n, scale) if mode == "bicubic" else area_matrix(n, scale)


@functools.lru_cache(maxsize=32)
@torch.inference_mode(False)
def resize_pinv(n: int, scale: int, mode: str) -> torch.Tensor:
    """W^+ (Moore-Penrose), float64 on the CPU, shape [n, n // scale]."""
    return torch.linalg.pinv(resize_matrix(n, scale, mode))


@functools.lru_cache(maxsize=64)
def resize_matrix_on(n: int, scale: int, mode: str, pinv: bool, device: torch.device,
                     dtype: torch.dtype) -> torch.Tensor:
    """W (or W^+) cast to (device, dtype), as a normal tensor that autograd may save; cached per key."""
    matrix = resize_pinv(n, scale, mode) if pinv else resize_matrix(n, scale, mode)
    with torch.inference_mode(False), torch.no_grad():
        return matrix.to(device=device, dtype=dtype)
