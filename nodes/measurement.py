"""How a measurement y travels in a ComfyUI IMAGE, and back.

A measurement y (NCHW, [-1, 1] units as in the paper) is stored as IMAGE = (y + 1) / 2 in [B, h, w, 3] layout:
- same size as the operator's image for inpainting, blur, colorization and denoising; the small image for
  super-resolution (h = H / scale, w = W / scale);
- a 1-channel measurement (colorization) is repeated into 3 equal channels, so it shows and saves as grey;
- NOT clamped: measurement noise may take values slightly outside 0..1 (Preview/Save clip them for display only).

`measurement_from_image` reverses this for the sampler. It also accepts a plain photo as the measurement: a small
photo for super-resolution, a colour photo for colorization (it is turned grey by the operator itself). For
inpainting the hole of y is used as given, so a photo must go through PSLD_Degrade first (sigma_y 0 is fine).
"""
from __future__ import annotations

import torch

from .errors import PSLDInputError
from .operator_factory import OperatorSpec


def measurement_to_image(y: torch.Tensor) -> torch.Tensor:
    """NCHW measurement in [-1, 1] units -> ComfyUI IMAGE [B, h, w, 3] (unclamped; a new tensor)."""
    if y.shape[1] == 1:
        y = y.expand(-1, 3, -1, -1)
    return ((y + 1.0) / 2.0).movedim(1, -1).contiguous()


def measurement_from_image(image: torch.Tensor, spec: OperatorSpec, *, node_id: str,
                           input_name: str = "measurement") -> torch.Tensor:
    """ComfyUI IMAGE -> NCHW measurement y in [-1, 1] units, shaped spec.measurement_shape(batch).

    Raises PSLDInputError (naming node_id and input_name) when the image cannot be this operator's measurement.
    The image is not modified; the result is a new tensor on the image's device and dtype.
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or not image.is_floating_point():
        raise PSLDInputError(node_id, input_name, f"expected a ComfyUI IMAGE [batch, height, width, channels], got "
                             f"{type(image).__name__} {tuple(getattr(image, 'shape', ()))}.",
                             "connect the measurement output of PSLD_Degrade, or an IMAGE.")
    batch, height, width, channels = image.shape
    expected = spec.measurement_shape(batch)
    if channels not in (1, 3):
        raise PSLDInputError(node_id, input_name, f"the image has {channels} channels.",
                             "use an RGB image (drop the alpha channel, e.g. load it without alpha).")
    if (height, width) != tuple(expected[-2:]):
        raise PSLDInputError(node_id, input_name,
                             f"the image is {width}x{height} but the operator ({spec.describe()}) expects a "
                             f"{expected[-1]}x{expected[-2]} measurement.", _size_fix(spec, expected, height, width))
    if not bool(torch.isfinite(image).all()):
        raise PSLDInputError(node_id, input_name, "the image contains NaN or Inf.", "use a finite image.")
    y = image.movedim(-1, 1) * 2.0 - 1.0  # [0, 1] -> [-1, 1], NCHW, a new tensor
    if y.shape[1] == expected[1]:
        return y
    if expected[1] == 1:  # grey measurement given as RGB: the operator makes it grey (exact for equal channels)
        return spec.operator.forward(y)
    return y.expand(-1, expected[1], -1, -1).clone()  # grey image as an RGB measurement


def _size_fix(spec: OperatorSpec, expected: tuple[int, ...], height: int, width: int) -> str:
    """Resize the measurement, or size the operator for it (an SR measurement is scale times smaller)."""
    factor_h, factor_w = spec.height // expected[-2], spec.width // expected[-1]
    return (f"resize the measurement to {expected[-1]}x{expected[-2]} (e.g. with an image-scale node), or set the "
            f"operator's width={width * factor_w} and height={height * factor_h} to match it.")
