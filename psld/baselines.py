"""Pixel-space baselines for linear inverse problems y = A x + n: what the PSLD comparisons measure a prior against.

    adjoint_estimate          x = A^T y                  (inpainting: the masked image, hole = 0, i.e. mid grey)
    pseudo_inverse_estimate   x = A^+ y                  (minimum-norm least squares; blur: Tikhonov-regularised)
    tv_least_squares          x = argmin_{x in [-1, 1]} 0.5 ||A x - y||^2 + lambda TV(x)

Images are NCHW in [-1, 1] as everywhere in psld/. Every function uses only the operator's public methods, so it
works for every LinearOperator (forward + adjoint); the pseudo-inverse uses the operator's exact projection when it
has one (`with_projection("exact")`) and conjugate gradients on the normal equations otherwise.

TV is isotropic and per channel, with forward differences and a zero difference across the last row / column
(Neumann boundary): TV(x) = sum_{c,i,j} sqrt((x_{c,i+1,j} - x_{c,i,j})^2 + (x_{c,i,j+1} - x_{c,i,j})^2). It is
minimised exactly (no smoothing) by the primal-dual method of Chambolle and Pock (J. Math. Imaging Vis. 2011,
Algorithm 1, theta = 1) on K = (A, grad), with the box [-1, 1] as the primal constraint, for a fixed number of
iterations; it needs ||K||, which is estimated by power iteration on A^T A.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .operators.base import as_generator, check_float, check_int, describe_tensor

GRADIENT_NORM_SQUARED = 8.0  # ||grad||^2 <= 8 for 2-D forward differences (Chambolle 2004)


def _check_measurement(y) -> Tensor:
    if not isinstance(y, Tensor) or y.ndim != 4 or not y.is_floating_point():
        raise ValueError(f"y is {describe_tensor(y)}: y must be a floating-point NCHW measurement tensor.")
    if not bool(torch.isfinite(y).all()):
        raise ValueError(f"y ({describe_tensor(y)}) contains NaN or Inf: y must be finite.")
    return y


def _check_operator(operator) -> None:
    for method in ("forward", "adjoint"):
        if not callable(getattr(operator, method, None)):
            raise ValueError(f"operator is a {type(operator).__name__} without a {method}() method: operator must be "
                             f"a linear operator with forward (A x) and adjoint (A^T y), e.g. from psld.operators.")


def adjoint_estimate(operator, y: Tensor) -> Tensor:
    """x = A^T y."""
    _check_operator(operator)
    return operator.adjoint(_check_measurement(y))  # x = A^T y


def conjugate_gradient_pseudo_inverse(operator, y: Tensor, *, iterations: int = 100) -> Tensor:
    """x = A^+ y as the minimum-norm least-squares solution: CGLS (CG on A^T A x = A^T y) started at x = 0."""
    _check_operator(operator)
    y = _check_measurement(y)
    iterations = check_int("iterations", iterations)
    x = torch.zeros_like(operator.adjoint(y))
    r = y.clone()  # r = y - A x
    s = operator.adjoint(r)  # s = A^T r
    p = s.clone()
    gamma = _dot(s, s)
    for _ in range(iterations):
        q = operator.forward(p)
        alpha = gamma / _dot(q, q).clamp_min(torch.finfo(gamma.dtype).tiny)
        x = x + alpha * p
        r = r - alpha * q
        s = operator.adjoint(r)
        gamma_next = _dot(s, s)
        p = s + (gamma_next / gamma.clamp_min(torch.finfo(gamma.dtype).tiny)) * p
        gamma = gamma_next
    return x  # x -> A^+ y (x stays in the row space of A)


def pseudo_inverse_estimate(operator, y: Tensor, *, iterations: int = 100) -> Tensor:
    """x = A^+ y: the operator's exact projection of the zero image (0 + A^+ (y - A 0)) when it has one, else CGLS."""
    _check_operator(operator)
    y = _check_measurement(y)
    if callable(getattr(operator, "with_projection", None)):
        exact = operator.with_projection("exact")
        zero = torch.zeros_like(exact.adjoint(y))
        return exact.project(zero, y)  # x = 0 + A^+ (y - A 0) = A^+ y
    return conjugate_gradient_pseudo_inverse(operator, y, iterations=iterations)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """<a_b, b_b> per batch item, shaped [B, 1, 1, 1] for broadcasting."""
    return (a * b).flatten(1).sum(1).view(-1, *([1] * (a.ndim - 1)))


def image_gradient(x: Tensor) -> Tensor:
    """grad x = (D_h x, D_v x) stacked on a new dim 1: forward differences, 0 across the last row / column."""
    dh = torch.zeros_like(x)
    dv = torch.zeros_like(x)
    dh[..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]  # (D_h x)_{i,j} = x_{i,j+1} - x_{i,j}
    dv[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]  # (D_v x)_{i,j} = x_{i+1,j} - x_{i,j}
    return torch.stack((dh, dv), dim=1)


def image_divergence(p: Tensor) -> Tensor:
    """div p = -grad^T p (the negative adjoint of image_gradient)."""
    ph, pv = p[:, 0], p[:, 1]
    div = torch.zeros_like(ph)
    div[..., :, :-1] += ph[..., :, :-1]  # -D_h^T p_h
    div[..., :, 1:] -= ph[..., :, :-1]
    div[..., :-1, :] += pv[..., :-1, :]  # -D_v^T p_v
    div[..., 1:, :] -= pv[..., :-1, :]
    return div


def total_variation(x: Tensor) -> Tensor:
    """TV(x)_b = sum_{c,i,j} |(grad x_b)_{c,i,j}|_2 per batch item (isotropic, per channel)."""
    g = image_gradient(x)
    return torch.linalg.vector_norm(g, dim=1).flatten(1).sum(1)  # Σ sqrt((D_h x)² + (D_v x)²)


def tv_least_squares_objective(operator, x: Tensor, y: Tensor, weight: float) -> Tensor:
    """0.5 ||A x_b - y_b||^2 + lambda TV(x_b) per batch item."""
    residual = (operator.forward(x) - y).flatten(1)
    return 0.5 * residual.pow(2).sum(1) + weight * total_variation(x)  # 0.5 ||A x - y||² + λ TV(x)


def operator_norm(operator, image: Tensor, *, iterations: int = 30, generator=None) -> float:
    """||A||_2 (largest singular value), by power iteration on A^T A from a seeded random image like `image`."""
    iterations = check_int("iterations", iterations)
    gen = as_generator(generator)
    v = torch.randn(image.shape, generator=gen, device=gen.device, dtype=torch.float32).to(image)
    estimate = 0.0
    for _ in range(iterations):
        v = v / torch.linalg.vector_norm(v).clamp_min(1e-30)
        w = operator.adjoint(operator.forward(v))  # w = A^T A v
        estimate = float(torch.linalg.vector_norm(w))
        v = w
    return math.sqrt(estimate)  # ||A|| = sqrt(λ_max(A^T A))


def tv_least_squares(operator, y: Tensor, *, weight: float, iterations: int = 300, initial: Tensor | None = None,
                     norm_iterations: int = 30, generator=None) -> Tensor:
    """x = argmin_{x in [-1,1]} 0.5 ||A x - y||^2 + lambda TV(x), lambda = `weight`, by `iterations` Chambolle-Pock
    steps (module docstring). Starts from `initial` (default: the clamped A^T y); returns a new tensor in [-1, 1].

    The dual variables are q (for A x, prox of (0.5 ||. - y||^2)^*) and p (for grad x, projection onto the pointwise
    lambda-ball); tau = sigma = 0.99 / ||K||, ||K||^2 = ||A||^2 + 8. The random start of the norm estimate comes
    from `generator` (a torch.Generator, an int seed, or None = seed 0).
    """
    _check_operator(operator)
    y = _check_measurement(y)
    weight = check_float("weight", weight, include_minimum=True)
    iterations = check_int("iterations", iterations)
    start = adjoint_estimate(operator, y).clamp(-1.0, 1.0)
    if initial is not None:
        if not isinstance(initial, Tensor) or initial.shape != start.shape:
            raise ValueError(f"initial is {describe_tensor(initial)}: initial must be an image of shape "
                             f"{tuple(start.shape)} (the shape of A^T y).")
        start = initial.to(start).clamp(-1.0, 1.0)
    norm_k = math.sqrt(operator_norm(operator, start, iterations=norm_iterations, generator=generator) ** 2
                       + GRADIENT_NORM_SQUARED)
    tau = sigma = 0.99 / norm_k  # tau sigma ||K||² < 1
    x = start.clone()
    x_bar = x.clone()
    q = torch.zeros_like(y)
    p = torch.zeros_like(image_gradient(x))
    for _ in range(iterations):
        q = (q + sigma * (operator.forward(x_bar) - y)) / (1.0 + sigma)  # prox of σ F1*, F1 = 0.5 ||. - y||²
        p = p + sigma * image_gradient(x_bar)
        p = p / (torch.linalg.vector_norm(p, dim=1, keepdim=True) / max(weight, 1e-30)).clamp_min(1.0)  # |p| <= λ
        x_next = (x - tau * (operator.adjoint(q) - image_divergence(p))).clamp(-1.0, 1.0)  # x - τ K^T (q, p), box
        x_bar = 2.0 * x_next - x  # over-relaxation, θ = 1
        x = x_next
    return x.clamp(-1.0, 1.0)
