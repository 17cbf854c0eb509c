"""Random motion-blur kernel: a random camera-shake trajectory drawn on a canvas, blurred, resized and normalised.

Follows the construction used by PSLD/DPS (the `motionblur` package of L. Borodenko) as described in its maths:
a path of random steps on a 2k x 2k canvas, centred on its centre of mass, randomly rotated, drawn as a line,
Gaussian-blurred, Lanczos-resized to k x k and normalised to sum 1. Every random number comes from
numpy.random.default_rng(seed), so a seed gives one kernel on every machine (not the reference's global-RNG kernels).
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

_EPS = 0.1  # keeps step lengths and the angle range positive at intensity 1 or 0


def _step_lengths(rng: np.random.Generator, diagonal: float, intensity: float) -> np.ndarray:
    """Steps β(1, 30) (1 - I + ε) diag long until the path reaches L = 0.75 diag (U(0,1) + U(0, I^2))."""
    total = 0.75 * diagonal * (rng.uniform() + rng.uniform(0, intensity**2))
    steps: list[float] = []
    while sum(steps) < total:
        step = rng.beta(1, 30) * (1 - intensity + _EPS) * diagonal
        steps.append(min(step, total - sum(steps)))  # the last step ends exactly at L
    return np.asarray(steps)


def _step_angles(rng: np.random.Generator, count: int, intensity: float) -> np.ndarray:
    """First angle U(-θ, θ) with θ ~ U(0, Iπ); then triangular(0, Iθ, θ + ε) magnitudes whose sign flips with
    probability j ~ β(2, 20) (jitter) and otherwise follows the previous angle."""
    max_angle = rng.uniform(0, intensity * math.pi)
    jitter = rng.beta(2, 20)
    angles = [rng.uniform(-max_angle, max_angle)] if count else []
    while len(angles) < count:
        angle = rng.triangular(0, intensity * max_angle, max_angle + _EPS)
        previous_sign = np.sign(angles[-1])
        angles.append(-previous_sign * angle if rng.uniform() < jitter else previous_sign * angle)
    return np.asarray(angles)


def motion_kernel(size: int, intensity: float, seed: int) -> np.ndarray:
    """A size x size float64 kernel, non-negative, summing to 1; intensity in [0, 1] sets the shake strength."""
    rng = np.random.default_rng(seed)
    canvas = 2 * size
    diagonal = math.hypot(canvas, canvas)
    steps = _step_lengths(rng, diagonal, intensity)
    angles = _step_angles(rng, len(steps), intensity)
    path = np.concatenate([[0j], np.cumsum(steps * np.exp(1j * angles))])  # z_n = sum_{i<=n} s_i e^{iφ_i}
    path = (path - path.mean()) * np.exp(1j * rng.uniform(0, math.pi))  # centre of mass to 0, rotate by U(0, π)
    path = path + (canvas / 2) * (1 + 1j)
    image = Image.new("L", (canvas, canvas))
    width = max(1, int(diagonal / 150))  # at least 1 px: PIL draws nothing at width 0 (kernels under 53 px)
    ImageDraw.Draw(image).line([(p.real, p.imag) for p in path], fill=255, width=width)
    image = image.filter(ImageFilter.GaussianBlur(radius=int(0.01 * diagonal)))
    kernel = np.asarray(image.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float64)
    if kernel.sum() <= 0:  # a path too short to leave a trace after resizing: no motion
        kernel = np.zeros((size, size))
        kernel[size // 2, size // 2] = 1.0
    return kernel / kernel.sum()  # normalise to sum 1
