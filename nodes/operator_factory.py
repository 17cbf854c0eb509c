"""Task name -> psld operator, and the OperatorSpec payload of the PSLD_LINEAR_OPERATOR socket.

Used by PSLD_LinearOperator and reusable by any node that needs an operator for a named task. Every wrong setting
raises PSLDInputError naming the node, the input and the fix (the node id is a parameter so other nodes can reuse
this). No comfy imports here: the node file owns the schema.
"""
from __future__ import annotations

import dataclasses

import torch

from ..psld.operators import (
    RESIZE_MODES,
    Colorization,
    GaussianBlur,
    Identity,
    Inpainting,
    LinearOperator,
    MotionBlur,
    SuperResolution,
    box_mask,
    random_mask,
)
from .errors import PSLDInputError

NODE_ID = "PSLD_LinearOperator"

# Stable machine ids (saved in workflows: never rename).
TASKS = ("box_inpaint", "random_inpaint", "mask_inpaint", "super_resolution", "gaussian_deblur", "motion_deblur",
         "colorize", "denoise")
INPAINT_TASKS = ("box_inpaint", "random_inpaint", "mask_inpaint")
BLUR_TASKS = ("gaussian_deblur", "motion_deblur")
BOX_PLACEMENTS = ("random", "centred")  # reference code / paper text
SR_SCALES = ("2", "4", "8")
PROJECTIONS = ("paper", "exact")

# The image goes through a VAE: SD's has an 8x smaller latent, the demo prior's (PSLD_DemoModelLoader) a 4x smaller
# one on 32 x 32 images. Multiples of 8 suit both; the sampler checks the size against the VAE's own ratio.
SIZE_MIN, SIZE_MAX, SIZE_MULTIPLE = 32, 4096, 8
BOX_MARGIN = 16  # reference: random boxes keep 16 px from the border (less on images too small for it: box_margin)
MASK_THRESHOLD = 0.5  # a ComfyUI mask value >= 0.5 marks a hole pixel


@dataclasses.dataclass(frozen=True)
class OperatorSpec:
    """The PSLD_LINEAR_OPERATOR payload: a psld operator plus what downstream nodes need to use it.

    task      one of TASKS (picks psld.losses.reference_loss(task)); "custom" for operators built elsewhere
    operator  a psld.operators LinearOperator (immutable; acts on NCHW images in [-1, 1])
    height, width, channels  the image it acts on (the sampler sizes the latent from these)
    """

    task: str
    operator: LinearOperator
    height: int
    width: int
    channels: int = 3

    def image_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        """NCHW shape of the images this operator acts on."""
        return (batch, self.channels, self.height, self.width)

    def measurement_shape(self, batch: int = 1) -> tuple[int, ...]:
        """NCHW shape of y = A x for a batch of `batch` images."""
        return tuple(self.operator.measurement_shape(self.image_shape(batch)))

    def describe(self) -> str:
        """Short human text, e.g. 'SR x4 (bicubic), 512x512 -> 128x128'."""
        return self.operator.describe(self.image_shape())

    def with_projection(self, mode: str) -> "OperatorSpec":
        """The same spec with the operator's projection mode replaced (a new object)."""
        return dataclasses.replace(self, operator=self.operator.with_projection(mode))


def reference_kernel_size(height: int, width: int) -> int:
    """Blur kernel size the reference uses for this image size: 61 at 256 px, 121 at 512 px, scaled linearly
    with the shorter side (k = 2 round(30 s / 256) + 1, always odd)."""
    side = min(height, width)
    return 2 * int(30 * side / 256 + 0.5) + 1


def size_problem(height, width) -> tuple[str, str, str] | None:
    """(input, problem, fix) when width/height are not usable, else None. Shared by validate_inputs and execute."""
    for name, value in (("width", width), ("height", height)):
        if value is None:  # linked input: checked at run time
            continue
        if not SIZE_MIN <= value <= SIZE_MAX or value % SIZE_MULTIPLE:
            return (name, f"{name}={value} is not allowed.",
                    f"use a multiple of {SIZE_MULTIPLE} between {SIZE_MIN} and {SIZE_MAX} (the image goes through "
                    f"a VAE whose latent is 8x smaller, 4x for the demo model).")
    return None


def kernel_size_problem(kernel_size, height=None, width=None) -> tuple[str, str, str] | None:
    """(input, problem, fix) for a kernel size that is not 0 (= reference) or an odd number below the image side."""
    if kernel_size is None or kernel_size == 0:
        return None
    if kernel_size < 0 or kernel_size % 2 == 0:
        return ("kernel_size", f"kernel_size={kernel_size} is not allowed.",
                "use an odd number (the kernel needs a centre pixel), or 0 for the reference size "
                "(61 px at 256, 121 px at 512).")
    if height is not None and width is not None and kernel_size > min(height, width):
        return ("kernel_size", f"kernel_size={kernel_size} is larger than the image ({width}x{height}).",
                f"use an odd size up to {min(height, width) - (1 - min(height, width) % 2)}, or 0 for the "
                f"reference size ({reference_kernel_size(height, width)} px here).")
    return None


def _raise(node_id: str, problem: tuple[str, str, str] | None) -> None:
    if problem is not None:
        raise PSLDInputError(node_id, *problem)


def observed_mask_from_comfy(mask: torch.Tensor, height: int, width: int, *, node_id: str = NODE_ID,
                             input_name: str = "mask") -> torch.Tensor:
    """ComfyUI MASK ([H, W] or [1, H, W], 1 = hole, soft values allowed) -> binary PSLD mask [1, 1, H, W] with
    1 = observed. Pixels with mask >= 0.5 are holes. The given mask is not modified."""
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3) or not mask.is_floating_point():
        raise PSLDInputError(node_id, input_name, f"expected a ComfyUI MASK [batch, height, width], got "
                             f"{type(mask).__name__} {tuple(getattr(mask, 'shape', ()))}.",
                             "connect a MASK output (LoadImage's mask or the mask editor).")
    if mask.ndim == 3 and mask.shape[0] != 1:
        raise PSLDInputError(node_id, input_name, f"the mask batch has {mask.shape[0]} masks; one mask is used "
                             "for the whole image batch.", "pass a single mask (e.g. pick one with a batch-select "
                             "node).")
    mask_h, mask_w = mask.shape[-2:]
    if (mask_h, mask_w) != (height, width):
        if (mask_h, mask_w) == (64, 64) and not bool(mask.any()):  # LoadImage's placeholder for an image without alpha
            raise PSLDInputError(node_id, input_name, f"the mask is an empty 64x64 mask, which LoadImage gives when "
                                 f"the image has no alpha channel; the operator acts on {width}x{height}.",
                                 "paint the hole in the mask editor (right-click the LoadImage node, Open in "
                                 "MaskEditor), or load a PNG whose transparent pixels mark the hole.")
        raise PSLDInputError(node_id, input_name, f"the mask is {mask_w}x{mask_h} (width x height) but the "
                             f"operator acts on {width}x{height}.",
                             f"set width={mask_w} and height={mask_h} on this node, or resize the mask to "
                             f"{width}x{height}.")
    if not bool(torch.isfinite(mask).all()):
        raise PSLDInputError(node_id, input_name, "the mask contains NaN or Inf.", "use a mask with values in 0..1.")
    hole = mask.reshape(1, 1, height, width) >= MASK_THRESHOLD
    n_hole = int(hole.sum())
    if n_hole == 0:
        raise PSLDInputError(node_id, input_name, "the mask marks no pixel as a hole (all values < 0.5).",
                             "paint the region to fill (white in the mask editor), or use another task.")
    if n_hole == height * width:
        raise PSLDInputError(node_id, input_name, "the mask marks every pixel as a hole, so nothing is observed.",
                             "keep part of the image unmasked.")
    with torch.inference_mode(False), torch.no_grad():
        return (~hole).to(device="cpu", dtype=torch.float32)  # observed = 1 - hole


def build_operator(task: str, *, width: int, height: int, seed: int = 0, projection: str = "paper",
                   box_size: int = 0, box_placement: str = "random", drop_fraction: float = 0.0,
                   sr_scale: str | int = "4", sr_mode: str = "bicubic", kernel_size: int = 0,
                   blur_sigma: float = 3.0, motion_intensity: float = 0.5, mask: torch.Tensor | None = None,
                   node_id: str = NODE_ID) -> OperatorSpec:
    """The operator for `task` on width x height images, as an OperatorSpec. Settings of other tasks are ignored;
    `mask` (a ComfyUI MASK, 1 = hole) is required for mask_inpaint and refused for the other tasks."""
    if task not in TASKS:
        raise PSLDInputError(node_id, "task", f"task={task!r} is unknown.", f"choose one of {', '.join(TASKS)}.")
    _raise(node_id, size_problem(height, width))
    if projection not in PROJECTIONS:
        raise PSLDInputError(node_id, "projection", f"projection={projection!r} is unknown.",
                             "choose 'paper' (reference code) or 'exact' (pseudo-inverse).")
    if mask is not None and task != "mask_inpaint":
        raise PSLDInputError(node_id, "mask", f"a mask is connected but the task is {task!r}.",
                             "set task to mask_inpaint, or disconnect the mask.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise PSLDInputError(node_id, "seed", f"seed={seed!r} is not allowed.", "use an integer >= 0.")

    if task == "box_inpaint":
        operator = Inpainting(mask=_box(node_id, height, width, box_size, box_placement, seed), projection=projection)
    elif task == "random_inpaint":
        if not 0.0 <= drop_fraction < 1.0:
            raise PSLDInputError(node_id, "drop_fraction", f"drop_fraction={drop_fraction} is not allowed.",
                                 "use a fraction in [0, 1) of pixels to drop, or 0 for the reference U(0.3, 0.7).")
        p = None if drop_fraction == 0.0 else float(drop_fraction)
        operator = Inpainting(mask=random_mask(height, width, p=p, generator=seed), projection=projection)
    elif task == "mask_inpaint":
        if mask is None:
            raise PSLDInputError(node_id, "mask", "task mask_inpaint needs a mask, but none is connected.",
                                 "connect a MASK (LoadImage's mask output or the mask editor; white = hole).")
        operator = Inpainting(mask=observed_mask_from_comfy(mask, height, width, node_id=node_id),
                              projection=projection)
    elif task == "super_resolution":
        if str(sr_scale) not in SR_SCALES:
            raise PSLDInputError(node_id, "sr_scale", f"sr_scale={sr_scale!r} is not allowed.",
                                 f"choose one of {', '.join(SR_SCALES)}.")
        if sr_mode not in RESIZE_MODES:
            raise PSLDInputError(node_id, "sr_mode", f"sr_mode={sr_mode!r} is unknown.",
                                 f"choose one of {', '.join(RESIZE_MODES)}.")
        operator = SuperResolution(scale=int(sr_scale), mode=sr_mode, projection=projection)
    elif task in BLUR_TASKS:
        _raise(node_id, kernel_size_problem(kernel_size, height, width))
        size = kernel_size or reference_kernel_size(height, width)
        if task == "gaussian_deblur":
            if not blur_sigma > 0.0:
                raise PSLDInputError(node_id, "blur_sigma", f"blur_sigma={blur_sigma} is not allowed.",
                                     "use a positive width in pixels (reference: 3.0).")
            operator = GaussianBlur(kernel_size=size, sigma=float(blur_sigma), projection=projection)
        else:
            if not 0.0 <= motion_intensity <= 1.0:
                raise PSLDInputError(node_id, "motion_intensity", f"motion_intensity={motion_intensity} is not "
                                     "allowed.", "use a value in [0, 1] (reference: 0.5).")
            operator = MotionBlur(kernel_size=size, intensity=float(motion_intensity), seed=seed,
                                  projection=projection)
    elif task == "colorize":
        operator = Colorization(projection=projection)
    else:  # denoise
        operator = Identity(projection=projection)
    return OperatorSpec(task=task, operator=operator, height=height, width=width)


def box_margin(free: int) -> int:
    """Margin of a random box, given the free pixels (image side minus box side, the smaller over both axes).

    The reference's 16 px where the image leaves room for it on both sides; else a quarter of the free pixels, so
    that small images (the demo prior's 32 px) still get a random box. Boxes that fit with 16 px keep their draw.
    """
    return BOX_MARGIN if free > 2 * BOX_MARGIN else max(free // 4, 0)


def _box(node_id: str, height: int, width: int, box_size: int, placement: str, seed: int) -> torch.Tensor:
    """Box-inpainting mask (1 = observed); box_size 0 = half of each side (the reference's 256 px at 512)."""
    if placement not in BOX_PLACEMENTS:
        raise PSLDInputError(node_id, "box_placement", f"box_placement={placement!r} is unknown.",
                             "choose 'random' (reference code) or 'centred' (paper text).")
    if box_size < 0:
        raise PSLDInputError(node_id, "box_size", f"box_size={box_size} is not allowed.",
                             "use a positive size in pixels, or 0 for half of the image side.")
    centred = placement == "centred"
    box_h, box_w = (height // 2, width // 2) if box_size == 0 else (box_size, box_size)
    free = min(height - box_h, width - box_w)
    if free < (0 if centred else 1):
        room = "fit in the image" if centred else "leave at least 1 px free for random placement"
        limit = min(height, width) - (0 if centred else 1)
        raise PSLDInputError(node_id, "box_size", f"a {box_w}x{box_h} box is too large for a {width}x{height} "
                             f"image (the box must {room}).",
                             f"use a box_size of at most {limit}" + ("" if centred else ", or centred placement")
                             + ".")
    margin = 0 if centred else box_margin(free)
    return box_mask(height, width, box_size=box_size or None, centred=centred, margin=margin, generator=seed)
