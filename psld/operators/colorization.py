"""Colorization (beyond the paper): A x = mean over channels, a 1-channel grey measurement."""
from __future__ import annotations

import dataclasses

from .base import OperatorBase, check_int


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Colorization(OperatorBase):
    """A x = (1/C) Σ_c x_c. The reference has no colorization, so both projections use A^+ = repeat over channels
    (A A^T = 1/C, hence A^+ = C A^T): the gluing image is x - mean_c(x) + y."""

    channels: int = 3

    def __post_init__(self):
        super().__post_init__()
        check_int("channels", self.channels)

    def _check_image_size(self, shape, name):
        if shape[1] != self.channels:
            raise ValueError(f"{name} has {shape[1]} channels: for Colorization(channels={self.channels}), {name} "
                             f"must have {self.channels} channels.")

    def _check_measurement_for_adjoint(self, y):
        if y.shape[1] != 1:
            raise ValueError(f"y has {y.shape[1]} channels: a colorization measurement y must have 1 channel.")

    def _measurement_shape(self, shape):
        return (shape[0], 1, *shape[2:])

    def _forward(self, x):
        return x.mean(dim=1, keepdim=True)  # A x = (1/C) Σ_c x_c

    def _adjoint(self, y):
        return y.expand(-1, self.channels, -1, -1) / self.channels  # A^T y = (1/C) [y, ..., y]

    def _transpose(self, y, x):
        return self._pseudo_inverse(y, x)

    def _pseudo_inverse(self, r, x):
        return r.expand(-1, self.channels, -1, -1).clone()  # A^+ r = [r, ..., r]

    def _describe(self):
        return f"Colorization ({self.channels} channels -> grey)"
