"""Identity (beyond the paper): A = I, pure denoising of y."""
from __future__ import annotations

import dataclasses

from .base import OperatorBase


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Identity(OperatorBase):
    """A x = x; both projections return y (up to rounding), still connected to x for autograd (A^+ = T = I)."""

    def _forward(self, x):
        return x.clone()  # A x = x

    def _adjoint(self, y):
        return y.clone()  # A^T y = y

    def _transpose(self, y, x):
        return y.clone()  # T = I

    def _pseudo_inverse(self, r, x):
        return r.clone()  # A^+ = I

    def _describe(self):
        return "Identity (denoising)"
