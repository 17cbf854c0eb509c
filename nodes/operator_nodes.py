"""PSLD_LinearOperator (task -> operator A) and PSLD_Degrade (image -> measurement y = A x + noise)."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..psld.operators import RESIZE_MODES, add_measurement_noise
from .errors import PSLDInputError
from .measurement import measurement_to_image
from .operator_factory import (
    BOX_PLACEMENTS,
    PROJECTIONS,
    SIZE_MAX,
    SIZE_MIN,
    SIZE_MULTIPLE,
    SR_SCALES,
    TASKS,
    OperatorSpec,
    build_operator,
    kernel_size_problem,
    size_problem,
)
from .operator_preview import operator_preview
from .tensors import image_to_nchw, nchw_to_image

CATEGORY = "image/restoration/PSLD"
SEED_MAX = 0xFFFFFFFFFFFFFFFF
# The frontend gives every INT widget named "seed" a "control after generate" widget, randomize by default: that would
# redraw the box, mask or kernel and the measurement noise after every run. These seeds define the problem, so they
# start fixed (ComfyUI 0.30's frontend honours the string; 0.3.75's always starts at randomize).
KEEP_SEED = "fixed"
LinearOperatorSocket = io.Custom("PSLD_LINEAR_OPERATOR")

OPERATOR_TOOLTIP = ("The linear operator A (which pixels are seen, how the image is blurred or downscaled), with the "
                    "task and the image size it acts on.")


class PSLDLinearOperator(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PSLD_LinearOperator",
            display_name="PSLD Linear Operator",
            category=CATEGORY,
            description=("Builds the degradation A of a linear inverse problem (inpainting, super-resolution, "
                         "deblurring, colorization, denoising) for PSLD (Rout et al., NeurIPS 2023). Settings of "
                         "other tasks are ignored; 0 means the reference code's value."),
            inputs=[
                io.Combo.Input("task", options=list(TASKS), default="box_inpaint",
                               tooltip="What happened to the image: box_inpaint (a missing square), random_inpaint "
                                       "(missing pixels), mask_inpaint (your MASK), super_resolution, "
                                       "gaussian_deblur, motion_deblur, colorize (grey image), denoise."),
                io.Int.Input("width", default=512, min=SIZE_MIN, max=SIZE_MAX, step=SIZE_MULTIPLE,
                             tooltip="Width of the image the operator acts on, a multiple of 8 (SD 1.5: 512)."),
                io.Int.Input("height", default=512, min=SIZE_MIN, max=SIZE_MAX, step=SIZE_MULTIPLE,
                             tooltip="Height of the image the operator acts on, a multiple of 8 (SD 1.5: 512)."),
                io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=KEEP_SEED,
                             tooltip="Draws the random box position, the random-inpainting pixels and the motion "
                                     "kernel. Same seed, same operator."),
                io.Combo.Input("projection", options=list(PROJECTIONS), default="paper",
                               tooltip="How the gluing image is built: paper = the reference code's "
                                       "pseudo-transpose (nearest upsampling for SR, identity for blur); exact = "
                                       "the pseudo-inverse (true projection)."),
                io.Int.Input("box_size", default=0, min=0, max=SIZE_MAX,
                             tooltip="box_inpaint: side of the missing square in pixels; 0 = half of each image "
                                     "side (reference: 256 at 512)."),
                io.Combo.Input("box_placement", options=list(BOX_PLACEMENTS), default="random",
                               tooltip="box_inpaint: random position 16 px from the border (reference code; less "
                                       "on small images) or centred (paper text)."),
                io.Float.Input("drop_fraction", default=0.0, min=0.0, max=0.99, step=0.01,
                               tooltip="random_inpaint: fraction of pixels removed; 0 = drawn from U(0.3, 0.7) "
                                       "with the seed (reference code)."),
                io.Combo.Input("sr_scale", options=list(SR_SCALES), default="4",
                               tooltip="super_resolution: downscaling factor (reference: 4, 512 -> 128)."),
                io.Combo.Input("sr_mode", options=list(RESIZE_MODES), default="bicubic",
                               tooltip="super_resolution: bicubic = antialiased MATLAB-style bicubic (reference); "
                                       "area = average of each scale x scale block."),
                io.Int.Input("kernel_size", default=0, min=0, max=SIZE_MAX - 1,
                             tooltip="gaussian_deblur / motion_deblur: odd kernel size in pixels; 0 = the "
                                     "reference size for this image (61 at 256, 121 at 512)."),
                io.Float.Input("blur_sigma", default=3.0, min=0.1, max=100.0, step=0.1,
                               tooltip="gaussian_deblur: standard deviation of the Gaussian in pixels "
                                       "(reference: 3.0)."),
                io.Float.Input("motion_intensity", default=0.5, min=0.0, max=1.0, step=0.05,
                               tooltip="motion_deblur: how shaky the random camera path is, 0..1 "
                                       "(reference: 0.5)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="mask_inpaint only: the region to fill, 1 (white) = hole, as LoadImage's "
                                      "alpha mask or the mask editor gives it; values >= 0.5 count as hole. Must "
                                      "be one mask of size width x height."),
            ],
            outputs=[
                LinearOperatorSocket.Output(display_name="operator", tooltip=OPERATOR_TOOLTIP),
                io.Image.Output(display_name="preview",
                                tooltip="What the operator does: the mask (white = hole), the blur kernel "
                                        "enlarged, or a test pattern before (left) and after (right)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, width=None, height=None, kernel_size=None):
        # Declaring these skips ComfyUI's own min/max checks for them, so size_problem checks the range too.
        problem = size_problem(height, width) or kernel_size_problem(kernel_size, height, width)
        return True if problem is None else f"{problem[1]} Fix: {problem[2]}"

    @classmethod
    def execute(cls, *, task, width, height, seed, projection, box_size, box_placement, drop_fraction, sr_scale,
                sr_mode, kernel_size, blur_sigma, motion_intensity, mask=None) -> io.NodeOutput:
        spec = build_operator(task, width=width, height=height, seed=seed, projection=projection,
                              box_size=box_size, box_placement=box_placement, drop_fraction=drop_fraction,
                              sr_scale=sr_scale, sr_mode=sr_mode, kernel_size=kernel_size, blur_sigma=blur_sigma,
                              motion_intensity=motion_intensity, mask=mask)
        return io.NodeOutput(spec, operator_preview(spec))


def checked_spec(operator, node_id: str, input_name: str = "operator") -> OperatorSpec:
    """The OperatorSpec on a PSLD_LINEAR_OPERATOR socket, or PSLDInputError."""
    if not isinstance(operator, OperatorSpec):
        raise PSLDInputError(node_id, input_name, f"expected a PSLD operator, got {type(operator).__name__}.",
                             "connect the operator output of PSLD_LinearOperator.")
    return operator


class PSLDDegrade(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PSLD_Degrade",
            display_name="PSLD Degrade",
            category=CATEGORY,
            description=("Makes the measurement y = A x + sigma_y n of an image x (n standard Gaussian), as in the "
                         "PSLD experiments. Feed y to the PSLD sampler; compare its result with x."),
            inputs=[
                io.Image.Input("image", tooltip="The clean image x, of the operator's width x height. "
                                                "Not modified."),
                LinearOperatorSocket.Input("operator", tooltip=OPERATOR_TOOLTIP),
                io.Float.Input("sigma_y", default=0.05, min=0.0, max=1.0, step=0.005,
                               tooltip="Measurement noise standard deviation in [-1, 1] image units, i.e. half "
                                       "of it in 0..1 units (reference: 0.05). 0 = noiseless."),
                io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=KEEP_SEED,
                             tooltip="Seed of the measurement noise; batch item i always gets the same noise "
                                     "for a given seed, whatever the batch size."),
            ],
            outputs=[
                io.Image.Output(display_name="measurement",
                                tooltip="The measurement y as an IMAGE: the small image for super_resolution, "
                                        "grey (3 equal channels) for colorize, the image size otherwise. Values "
                                        "may leave 0..1 slightly because of the noise."),
                io.Image.Output(display_name="preview",
                                tooltip="y shown at the image size through the operator's projection (e.g. the "
                                        "SR measurement upsampled), to compare with the input image."),
            ],
        )

    @classmethod
    def execute(cls, *, image, operator, sigma_y, seed) -> io.NodeOutput:
        node_id = "PSLD_Degrade"
        spec = checked_spec(operator, node_id)
        x = _checked_image(image, spec, node_id)
        if not 0.0 <= sigma_y <= 1.0:
            raise PSLDInputError(node_id, "sigma_y", f"sigma_y={sigma_y} is not allowed.",
                                 "use a noise level in [0, 1] (reference: 0.05).")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise PSLDInputError(node_id, "seed", f"seed={seed!r} is not allowed.", "use an integer >= 0.")
        # At least float32: IMAGEs may be float16 (--fp16-intermediates), and half-precision convolutions on the
        # CPU are both slow and coarse. The outputs come back in the image's dtype.
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        clean = spec.operator.forward(x)
        generator = torch.Generator(device="cpu").manual_seed(seed)  # CPU draws: same noise on every device
        y = torch.cat([add_measurement_noise(clean[i:i + 1], sigma_y, generator=generator)
                       for i in range(clean.shape[0])])  # item i: i-th draw of one seeded stream
        preview = nchw_to_image(spec.operator.project(torch.zeros_like(x), y))
        return io.NodeOutput(measurement_to_image(y).to(image.dtype), preview.to(image.dtype))


def _checked_image(image, spec: OperatorSpec, node_id: str) -> torch.Tensor:
    """The IMAGE as NCHW [-1, 1] (a new tensor), or PSLDInputError naming the sizes and the fix."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or not image.is_floating_point():
        raise PSLDInputError(node_id, "image", f"expected a ComfyUI IMAGE [batch, height, width, channels], got "
                             f"{type(image).__name__} {tuple(getattr(image, 'shape', ()))}.", "connect an IMAGE.")
    _, height, width, channels = image.shape
    if channels != spec.channels:
        raise PSLDInputError(node_id, "image", f"the image has {channels} channels; the operator needs "
                             f"{spec.channels} (RGB).", "convert the image to RGB (drop the alpha channel).")
    if (height, width) != (spec.height, spec.width):
        raise PSLDInputError(node_id, "image", f"the image is {width}x{height} but the operator acts on "
                             f"{spec.width}x{spec.height}.",
                             f"resize the image to {spec.width}x{spec.height}, or set the operator's width={width} "
                             f"and height={height}.")
    if not bool(torch.isfinite(image).all()):
        raise PSLDInputError(node_id, "image", "the image contains NaN or Inf.", "use a finite image.")
    return image_to_nchw(image)


NODES = [PSLDLinearOperator, PSLDDegrade]
