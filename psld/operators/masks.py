"""Inpainting masks of the PSLD / DPS experiments (1 = observed, 0 = missing), drawn from an explicit generator.

Both return a float32 mask of shape [1, 1, height, width] on the generator's device. `generator` is a
torch.Generator, an int seed, or None (= seed 0); the global RNG is never used.
"""
from __future__ import annotations

import math

import torch

from .base import as_generator, check_float, check_int


def _pair(name: str, value) -> tuple[int, int]:
    """An int or an (int, int) pair, each >= 1."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return check_int(f"{name}[0]", value[0]), check_int(f"{name}[1]", value[1])
    if isinstance(value, (tuple, list)):
        raise ValueError(f"{name}={value!r} is not allowed: {name} must be an int or a (height, width) pair.")
    size = check_int(name, value)
    return size, size


def box_mask(height: int, width: int, *, box_size=None, centred: bool = False, margin: int = 16,
             generator=None) -> torch.Tensor:
    """Mask with one missing box; default box = half of each side (128 px at 256, 256 px at 512).

    centred=False (reference code): top-left t ~ U{margin, ..., height - margin - box_h - 1}, likewise for the left.
    centred=True (paper text): the box sits in the middle.
    """
    height, width = check_int("height", height), check_int("width", width)
    box_h, box_w = (height // 2, width // 2) if box_size is None else _pair("box_size", box_size)
    margin = check_int("margin", margin, minimum=0)
    gen = None if centred else as_generator(generator)
    corners = []
    for side, box, axis in ((height, box_h, "height"), (width, box_w, "width")):
        if centred:
            if box > side:
                raise ValueError(f"box_size={box_size!r} is not allowed: the box ({box} px) must fit in the image "
                                 f"{axis} ({side} px).")
            corners.append((side - box) // 2)  # centred: t = (S - h) // 2
            continue
        high = side - margin - box  # t ~ U{margin, ..., S - margin - h - 1}
        if high <= margin:
            raise ValueError(f"box_size={box_size!r} with margin={margin} is not allowed for an image {axis} of "
                             f"{side} px: the box ({box} px) plus twice the margin must be less than the {axis}.")
        corners.append(int(torch.randint(margin, high, (1,), generator=gen, device=gen.device).item()))
    device = gen.device if gen is not None else "cpu"
    mask = torch.ones(1, 1, height, width, device=device)
    top, left = corners
    mask[..., top:top + box_h, left:left + box_w] = 0.0
    return mask


def random_mask(height: int, width: int, *, p=None, generator=None) -> torch.Tensor:
    """Mask with exactly floor(p * height * width) missing pixels, drawn without replacement, shared by all channels.

    p is the dropped fraction; when None, p ~ U(0.3, 0.7) (reference code) is drawn from the same generator.
    """
    height, width = check_int("height", height), check_int("width", width)
    gen = as_generator(generator)
    if p is None:
        p = 0.3 + 0.4 * float(torch.rand((), generator=gen, device=gen.device, dtype=torch.float64))  # p ~ U(0.3, 0.7)
    p = check_float("p", p, minimum=0.0, maximum=1.0, include_minimum=True)
    n_drop = math.floor(p * height * width)  # |dropped| = floor(p H W)
    dropped = torch.randperm(height * width, generator=gen, device=gen.device)[:n_drop]
    mask = torch.ones(height * width, device=gen.device)
    mask[dropped] = 0.0
    return mask.view(1, 1, height, width)
