"""Linear operators A of the PSLD experiments on NCHW images in [-1, 1]: forward A x, true adjoint A^T y and the
gluing projection, plus the reference masks, kernels and measurement noise."""
from .base import PROJECTIONS, LinearOperator, OperatorBase, Projection
from .blur import GaussianBlur, MotionBlur, gaussian_kernel
from .colorization import Colorization
from .convolution import KernelBlur
from .identity import Identity
from .inpainting import Inpainting
from .masks import box_mask, random_mask
from .motion_kernel import motion_kernel
from .noise import add_measurement_noise
from .resize import RESIZE_MODES, resize_matrix
from .super_resolution import SuperResolution

__all__ = [
    "LinearOperator", "OperatorBase", "KernelBlur", "Projection", "PROJECTIONS",
    "Inpainting", "SuperResolution", "GaussianBlur", "MotionBlur", "Colorization", "Identity",
    "box_mask", "random_mask", "gaussian_kernel", "motion_kernel", "resize_matrix", "RESIZE_MODES",
    "add_measurement_noise",
]
