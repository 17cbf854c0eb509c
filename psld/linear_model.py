"""The linear model of the paper's analysis, in closed form, for proofs and benchmarks.

Data lie on a k-dimensional subspace of R^n: x0 = S z0 with z0 ~ N(0, I_k) and S (n x k) with orthonormal columns.
The autoencoder is D(z) = S z and E(x) = S^T x, and the latent diffusion prior is exact: for x = z0 + sigma eps,
E[z0 | x] = x / (1 + sigma^2) (Tweedie for a standard normal prior). With y = A x0 + sigma_y n the posterior of z0 is
Gaussian and known exactly (`posterior`), so a sampler can be checked against the truth.

Vectors are NCHW tensors so the sampler and the losses run unchanged: a latent is [B, 1, k, 1], an image [B, 1, n, 1].
`MatrixOperator` is a dense A satisfying the LinearOperator protocol with the exact pseudo-inverse projection.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor


def _non_inference(t: Tensor) -> Tensor:
    """A normal (non-inference) copy that autograd may save, made whatever the caller's mode."""
    with torch.inference_mode(False), torch.no_grad():
        return t.detach().clone()


def orthonormal_columns(n: int, k: int, generator: torch.Generator, dtype=torch.float64) -> Tensor:
    """A random n x k matrix with orthonormal columns (QR of a Gaussian matrix)."""
    if not (isinstance(n, int) and isinstance(k, int) and 1 <= k <= n):
        raise ValueError(f"n={n!r}, k={k!r} is not allowed: they must be integers with 1 <= k <= n.")
    q, r = torch.linalg.qr(torch.randn(n, k, generator=generator, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).to(dtype)


def as_vector(t: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, C*H*W]."""
    return t.reshape(t.shape[0], -1)


def as_column_image(v: Tensor) -> Tensor:
    """[B, n] -> [B, 1, n, 1]."""
    return v.reshape(v.shape[0], 1, v.shape[1], 1)


@dataclasses.dataclass(frozen=True, eq=False)
class MatrixOperator:
    """A x for a dense m x n matrix acting on flattened images; project(x, y) = x + A^+ (y - A x) (exact).

    The pseudo-inverse is computed once in float64 (documented exception to "work in the input's dtype": an SVD in
    float32 loses the small singular values). Constants are cast to each input's device/dtype and cached as normal
    tensors, so the operator works when it was built, or is used, under torch.inference_mode().
    """

    matrix: Tensor
    image_shape: tuple[int, int, int] | None = None  # (C, H, W) of images; None = column images [1, n, 1]
    _pinv: Tensor = dataclasses.field(init=False, repr=False)
    _cache: dict = dataclasses.field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        m = self.matrix
        if not isinstance(m, Tensor) or m.ndim != 2 or not m.is_floating_point():
            raise ValueError(f"matrix is {type(m).__name__ if not isinstance(m, Tensor) else tuple(m.shape)}: "
                             f"matrix must be a 2-D floating tensor (m measurements x n pixels).")
        shape = (1, m.shape[1], 1) if self.image_shape is None else tuple(self.image_shape)
        if len(shape) != 3 or math.prod(shape) != m.shape[1]:
            raise ValueError(f"image_shape={self.image_shape!r} is not allowed: it must be (C, H, W) with "
                             f"C*H*W = {m.shape[1]}, the number of columns of matrix.")
        object.__setattr__(self, "image_shape", tuple(int(v) for v in shape))
        matrix = _non_inference(m)
        object.__setattr__(self, "matrix", matrix)
        with torch.inference_mode(False), torch.no_grad():
            object.__setattr__(self, "_pinv", torch.linalg.pinv(matrix.to(torch.float64)))

    def _const(self, name: str, like: Tensor) -> Tensor:
        key = (name, like.device, like.dtype)
        if key not in self._cache:
            source = self.matrix if name == "A" else self._pinv
            with torch.inference_mode(False), torch.no_grad():
                self._cache[key] = source.to(device=like.device, dtype=like.dtype)
        return self._cache[key]

    def _check(self, x: Tensor, size: int, name: str, role: str) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim < 2 or x[0].numel() != size:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} has shape {shape}: {name} must be a batch of {role} with {size} entries each.")
        return as_vector(x)

    def forward(self, x: Tensor) -> Tensor:
        """A x, as [B, 1, m, 1]."""
        v = self._check(x, self.matrix.shape[1], "x", "images")
        return as_column_image(v @ self._const("A", v).T)

    def adjoint(self, y: Tensor) -> Tensor:
        """A^T y, as [B, *image_shape]."""
        v = self._check(y, self.matrix.shape[0], "y", "measurements")
        return (v @ self._const("A", v)).reshape(v.shape[0], *self.image_shape)

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        """A^+ y, as [B, *image_shape]."""
        v = self._check(y, self.matrix.shape[0], "y", "measurements")
        return (v @ self._const("A+", v).T).reshape(v.shape[0], *self.image_shape)

    def project(self, x: Tensor, y: Tensor) -> Tensor:
        """x + A^+ (y - A x): agrees with y where A observes, with x on the null space of A."""
        return x + self.pseudo_inverse(y - self.forward(x)).reshape(x.shape)

    def measurement_shape(self, image_shape) -> tuple[int, ...]:
        return (int(image_shape[0]), 1, int(self.matrix.shape[0]), 1)

    def describe(self, image_shape=None) -> str:
        return f"dense {self.matrix.shape[0]}x{self.matrix.shape[1]} matrix"


def _sigma_column(sigma, like: Tensor) -> Tensor:
    """sigma (a number, 0-d or [B] tensor) shaped to broadcast over [B, ...]."""
    s = torch.as_tensor(sigma, device=like.device, dtype=like.dtype)
    return s.reshape(-1, *([1] * (like.ndim - 1))) if s.ndim else s


@dataclasses.dataclass(frozen=True, eq=False)
class LinearLatentModel:
    """x0 = S z0, z0 ~ N(0, I_k); D(z) = S z; E(x) = S^T x; exact denoiser E[z0 | z0 + sigma eps] = x / (1 + sigma^2).
    """

    basis: Tensor  # S, n x k, orthonormal columns

    @classmethod
    def random(cls, n: int, k: int, *, generator: torch.Generator, dtype=torch.float64) -> "LinearLatentModel":
        return cls(basis=orthonormal_columns(n, k, generator, dtype))

    def __post_init__(self):
        object.__setattr__(self, "basis", _non_inference(self.basis))

    @property
    def n(self) -> int:
        return self.basis.shape[0]

    @property
    def k(self) -> int:
        return self.basis.shape[1]

    def _s(self, like: Tensor) -> Tensor:
        return self.basis.to(device=like.device, dtype=like.dtype)

    def decode(self, z: Tensor) -> Tensor:
        """D(z) = S z: [B, 1, k, 1] -> [B, 1, n, 1]."""
        return as_column_image(as_vector(z) @ self._s(z).T)

    def encode(self, x: Tensor) -> Tensor:
        """E(x) = S^T x: [B, 1, n, 1] -> [B, 1, k, 1]."""
        return as_column_image(as_vector(x) @ self._s(x))

    def denoise(self, x: Tensor, sigma) -> Tensor:
        """E[z0 | x] = x / (1 + sigma^2) for the N(0, I) prior."""
        s = _sigma_column(sigma, x)
        return x / (1.0 + s * s)

    def sample_latents(self, batch: int, *, generator: torch.Generator) -> Tensor:
        """z0 ~ N(0, I_k) as [B, 1, k, 1] (float64, CPU)."""
        return torch.randn(batch, 1, self.k, 1, generator=generator, dtype=self.basis.dtype)

    def posterior(self, matrix: Tensor, y: Tensor, sigma_y: float) -> tuple[Tensor, Tensor]:
        """(mean [B, 1, k, 1], covariance k x k) of z0 | y for y = A S z0 + sigma_y n, in float64.

        With B = A S: mean = B^T (B B^T + sigma_y^2 I)^-1 y, cov = I - B^T (B B^T + sigma_y^2 I)^-1 B. For sigma_y = 0
        the pseudo-inverse form is used (mean = B^+ y, cov = I - B^+ B).
        """
        b = matrix.to(torch.float64) @ self.basis.to(torch.float64)
        yv = as_vector(y).to(torch.float64)
        eye_k = torch.eye(self.k, dtype=torch.float64)
        if sigma_y > 0:
            gram = b @ b.T + sigma_y ** 2 * torch.eye(b.shape[0], dtype=torch.float64)
            gain = b.T @ torch.linalg.inv(gram)  # B^T (B B^T + sigma_y^2 I)^-1
        else:
            gain = torch.linalg.pinv(b)
        mean = yv @ gain.T
        return as_column_image(mean), eye_k - gain @ b

    def leaky_encoder(self, size: float, *, generator: torch.Generator):
        """E(x) = S^T x + size G (I - S S^T) x, G with orthonormal rows: leaks the orthogonal complement."""
        s = self.basis.to(torch.float64)
        complement = torch.eye(self.n, dtype=torch.float64) - s @ s.T
        g = orthonormal_columns(self.n, self.k, generator).T
        matrix = s.T + size * g @ complement
        return _matrix_encoder(matrix)

    def gain_encoder(self, gain: float):
        """E(x) = (1 + gain) S^T x: a scale error of the encoder."""
        return _matrix_encoder((1.0 + gain) * self.basis.to(torch.float64).T)


def _matrix_encoder(matrix: Tensor):
    matrix = _non_inference(matrix)

    def encode(x: Tensor) -> Tensor:
        return as_column_image(as_vector(x) @ matrix.to(device=x.device, dtype=x.dtype).T)
    return encode


def relative_error(estimate: Tensor, truth: Tensor) -> Tensor:
    """||estimate_b - truth_b|| / ||truth_b|| per batch item."""
    diff = torch.linalg.vector_norm(as_vector(estimate - truth), dim=1)
    return diff / torch.linalg.vector_norm(as_vector(truth), dim=1).clamp_min(torch.finfo(truth.dtype).tiny)


def noise_level(sigma_y: float, measurements: int) -> float:
    """sigma_y sqrt(m): the expected norm of the measurement noise (and of a posterior sample's residual)."""
    return sigma_y * math.sqrt(measurements)
