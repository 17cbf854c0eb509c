"""A picture of what an operator does, at the operator's image size, as a ComfyUI IMAGE [1, H, W, 3]:

- inpainting: the mask, white = hole (ComfyUI's mask convention), black = observed;
- blur: the kernel's non-zero part, enlarged (nearest) and scaled so its peak is white, centred on black;
- super-resolution, colorization, denoising: a test pattern, left half as given, right half after the operator
  (brought back to the image size by the operator's projection: nearest upsampling for SR in paper mode).
"""
from __future__ import annotations

import torch

from ..psld.operators import Inpainting, KernelBlur
from .operator_factory import OperatorSpec
from .tensors import nchw_to_image

_CELLS = (1, 2, 4, 8, 16, 32)  # checkerboard cell sizes, one horizontal band each


def checker_bands(height: int, width: int) -> torch.Tensor:
    """Grey checkerboards, finest at the top, in [-1, 1]: fine bands vanish under strong downscaling."""
    rows = torch.arange(height)[:, None]
    cols = torch.arange(width)[None, :]
    cell = torch.tensor(_CELLS)[(rows * len(_CELLS)) // height]  # band of each row
    checker = ((rows // cell + cols // cell) % 2).float() * 1.6 - 0.8
    return checker.expand(1, 3, height, width).clone()


def colour_bands(height: int, width: int) -> torch.Tensor:
    """A hue sweep from left to right, darker towards the bottom, in [-1, 1]: colorization keeps only its grey."""
    hue = torch.linspace(0.0, 1.0, width)[None, :]
    shade = torch.linspace(1.0, 0.3, height)[:, None]
    channels = [((hue - offset) * 6.0).remainder(6.0) for offset in (0.0, 1 / 3, 2 / 3)]
    rgb = torch.stack([(c - 3.0).abs().sub(1.0).clamp(0.0, 1.0) for c in channels])  # HSV hue -> RGB
    return (rgb * shade * 2.0 - 1.0).unsqueeze(0)


def _side_by_side(spec: OperatorSpec, pattern: torch.Tensor) -> torch.Tensor:
    """Left half: the pattern; right half: the operator's effect on it, at the image size."""
    with torch.inference_mode(False), torch.no_grad():
        degraded = spec.operator.project(torch.zeros_like(pattern), spec.operator.forward(pattern))
    half = spec.width // 2
    return torch.cat([pattern[..., :half], degraded[..., half:]], dim=-1)


def _kernel_picture(spec: OperatorSpec, kernel: torch.Tensor) -> torch.Tensor:
    """The kernel's non-zero square (weights above 1e-3 of the peak), enlarged to fill most of the picture."""
    visible = (kernel > 1e-3 * kernel.max()).nonzero()
    centre = kernel.shape[-1] // 2
    radius = min(centre, int((visible - centre).abs().max()) + 1)
    crop = kernel[centre - radius:centre + radius + 1, centre - radius:centre + radius + 1]
    zoom = max(1, (9 * min(spec.height, spec.width)) // (10 * crop.shape[-1]))
    big = (crop / crop.max()).float().repeat_interleave(zoom, 0).repeat_interleave(zoom, 1)
    canvas = torch.zeros(spec.height, spec.width)
    top, left = (spec.height - big.shape[0]) // 2, (spec.width - big.shape[1]) // 2
    canvas[top:top + big.shape[0], left:left + big.shape[1]] = big
    return canvas.expand(1, 3, -1, -1) * 2.0 - 1.0


def operator_preview(spec: OperatorSpec) -> torch.Tensor:
    """ComfyUI IMAGE [1, H, W, 3] in [0, 1] showing what spec.operator does (a new CPU float32 tensor)."""
    operator = spec.operator
    if isinstance(operator, Inpainting):
        hole = 1.0 - operator.mask[:1].float().cpu()
        picture = hole.expand(1, 3, -1, -1) * 2.0 - 1.0
    elif isinstance(operator, KernelBlur):
        picture = _kernel_picture(spec, operator.kernel.cpu())
    elif spec.task == "colorize":
        picture = _side_by_side(spec, colour_bands(spec.height, spec.width))
    else:
        picture = _side_by_side(spec, checker_bands(spec.height, spec.width))
    return nchw_to_image(picture).contiguous()
