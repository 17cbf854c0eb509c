"""Inpainting: A x = m ⊙ x with a binary mask m (1 = observed, 0 = missing), broadcast over channels."""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from .base import OperatorBase, describe_tensor


def _checked_mask(mask) -> Tensor:
    """A float32 copy of a [1 or B, 1, H, W] mask whose values are 0 or 1 (within 1e-3)."""
    if not isinstance(mask, Tensor) or mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask is {describe_tensor(mask)}: mask must be a tensor of shape [1 or B, 1, H, W] "
                         f"(1 = observed, 0 = missing), shared by all channels.")
    with torch.inference_mode(False), torch.no_grad():
        values = mask.detach().to(dtype=torch.float32).clone()
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"mask ({describe_tensor(mask)}) contains NaN or Inf: mask must hold only 0 and 1.")
    bad = ((values - values.round()).abs() > 1e-3) | (values < -1e-3) | (values > 1 + 1e-3)
    if bool(bad.any()):
        raise ValueError(f"mask contains {float(values[bad][0]):.4g}: mask must hold only 0 (missing) and "
                         f"1 (observed); threshold a soft mask first, e.g. (mask > 0.5).float().")
    with torch.inference_mode(False), torch.no_grad():
        return values.round()


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Inpainting(OperatorBase):
    """A x = m ⊙ x. paper: T = identity (reference code); exact: A^+ = m ⊙. Both give m ⊙ y + (1 - m) ⊙ x
    when y is zero where m = 0; with noise added after masking, paper mode keeps y's noise in the hole, as the
    reference does."""

    mask: Tensor = dataclasses.field(repr=False)

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "mask", _checked_mask(self.mask))

    def _check_image_size(self, shape, name):
        batch, _, height, width = shape
        m_batch, _, m_height, m_width = self.mask.shape
        if (height, width) != (m_height, m_width):
            raise ValueError(f"{name} has shape {shape}: its height and width must match the mask "
                             f"({m_height}x{m_width}).")
        if m_batch not in (1, batch):
            raise ValueError(f"{name} has batch size {batch}, but the mask has batch size {m_batch}: the mask "
                             f"batch must be 1 or equal the image batch.")

    def _check_measurement_for_adjoint(self, y):
        self._check_image_size(tuple(y.shape), "y")

    def _m(self, like: Tensor) -> Tensor:
        return self._on("mask", self.mask, like.device, like.dtype)

    def _forward(self, x):
        return x * self._m(x)  # A x = m ⊙ x

    def _adjoint(self, y):
        return y * self._m(y)  # A^T y = m ⊙ y

    def _transpose(self, y, x):
        return y.clone()  # reference "transpose": identity

    def _pseudo_inverse(self, r, x):
        return r * self._m(r)  # A^+ r = m ⊙ r (A is an orthogonal projector)

    def _describe(self):
        observed = 100.0 * float(self.mask.mean())
        return f"Inpainting {self.mask.shape[-2]}x{self.mask.shape[-1]}, {observed:.1f}% observed"
