"""Super-resolution: A x = W_h x W_w^T, an antialiased bicubic (or box) downscaling by an integer factor."""
from __future__ import annotations

import dataclasses

from torch import Tensor

from .base import OperatorBase, check_int
from .resize import RESIZE_MODES, resize_matrix_on


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class SuperResolution(OperatorBase):
    """Downscaling by `scale` with MATLAB-style antialiased bicubic (Keys a = -0.5) or box averaging ('area').

    paper: T = nearest-neighbour upsampling by `scale` (reference code). exact: A^+ = W_h^+ . W_w^+^T, from the
    float64 pseudo-inverses of the 1-D matrices.
    """

    scale: int
    mode: str = "bicubic"

    def __post_init__(self):
        super().__post_init__()
        check_int("scale", self.scale)
        if self.mode not in RESIZE_MODES:
            raise ValueError(f"mode={self.mode!r} is not allowed: mode must be one of {RESIZE_MODES}.")

    def _check_image_size(self, shape, name):
        height, width = shape[-2:]
        if height % self.scale or width % self.scale:
            raise ValueError(f"{name} has size {height}x{width}: with scale={self.scale} the height and width must "
                             f"be multiples of {self.scale}.")

    def _matrices(self, like: Tensor, height: int, width: int, pinv: bool = False) -> tuple[Tensor, Tensor]:
        args = (self.scale, self.mode, pinv, like.device, like.dtype)
        return resize_matrix_on(height, *args), resize_matrix_on(width, *args)

    def _measurement_shape(self, shape):
        return (*shape[:2], shape[2] // self.scale, shape[3] // self.scale)

    def _forward(self, x):
        w_h, w_w = self._matrices(x, x.shape[-2], x.shape[-1])
        return w_h @ x @ w_w.T  # A x = W_h x W_w^T

    def _adjoint(self, y):
        w_h, w_w = self._matrices(y, y.shape[-2] * self.scale, y.shape[-1] * self.scale)
        return w_h.T @ y @ w_w  # A^T y = W_h^T y W_w

    def _transpose(self, y, x):
        return y.repeat_interleave(self.scale, dim=-2).repeat_interleave(self.scale, dim=-1)  # T = nearest up

    def _pseudo_inverse(self, r, x):
        p_h, p_w = self._matrices(r, x.shape[-2], x.shape[-1], pinv=True)
        return p_h @ r @ p_w.T  # A^+ r = W_h^+ r (W_w^+)^T

    def _describe(self):
        return f"SR x{self.scale} ({self.mode})"
