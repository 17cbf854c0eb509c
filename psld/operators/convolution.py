"""Depthwise blur with reflect padding: forward, true adjoint and a Tikhonov FFT pseudo-inverse, shared by all blurs.

A x = k ⋆ pad(x): cross-correlation of every channel with the same odd k x k kernel after reflect padding by r = k // 2
(PyTorch 'reflect': the edge pixel is not repeated). Kernels are cropped to their non-zero support first, which gives
the same A with less work (the 121 px Gaussian of the reference has only 25 x 25 non-zero taps).
On the CPU, float16 images are convolved in float32 and the result cast back: PyTorch's CPU float16 convolution
(torch 2.13) was seen to take minutes on a 70 x 70 image where float32 and bfloat16 take milliseconds.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import OperatorBase, check_float


def crop_to_support(kernel: Tensor) -> Tensor:
    """The smallest centred odd square of `kernel` holding all its non-zero taps (same correlation, fewer taps)."""
    centre = kernel.shape[-1] // 2
    rows, cols = torch.nonzero(kernel, as_tuple=True)
    if rows.numel() == 0:
        return kernel[centre:centre + 1, centre:centre + 1]
    radius = int(torch.max((rows - centre).abs().max(), (cols - centre).abs().max()))
    return kernel[centre - radius:centre + radius + 1, centre - radius:centre + radius + 1]


def convolution_dtype(t: Tensor) -> torch.dtype:
    """The dtype a convolution of t runs in: float32 for float16 on the CPU, else t's own dtype."""
    return torch.float32 if t.device.type == "cpu" and t.dtype == torch.float16 else t.dtype


def _depthwise(kernel: Tensor, channels: int) -> Tensor:
    return kernel.expand(channels, 1, *kernel.shape[-2:])


def correlate(x: Tensor, kernel: Tensor) -> Tensor:
    """A x = k ⋆ reflect_pad(x), per channel."""
    radius = kernel.shape[-1] // 2
    work = x.to(convolution_dtype(x))
    padded = F.pad(work, (radius,) * 4, mode="reflect") if radius else work
    return F.conv2d(padded, _depthwise(kernel.to(work.dtype), x.shape[1]), groups=x.shape[1]).to(x.dtype)


def _fold_reflect(g: Tensor, radius: int, dim: int) -> Tensor:
    """Adjoint of 1-D reflect padding along dim: padded row i < r came from row r - i, row n + r + j from n - 2 - j."""
    n = g.shape[dim] - 2 * radius
    core = g.narrow(dim, radius, n)
    before = g.narrow(dim, 0, radius).flip(dim)  # rows 1..r
    after = g.narrow(dim, n + radius, radius).flip(dim)  # rows n-1-r..n-2
    pad_before = [0, 0] * (g.ndim - 1 - dim)
    return (core + F.pad(before, pad_before + [1, n - 1 - radius])
            + F.pad(after, pad_before + [n - 1 - radius, 1]))


def correlate_adjoint(y: Tensor, kernel: Tensor) -> Tensor:
    """A^T y = pad^T (k ⋆^T y): transposed convolution, then the padded border folded back."""
    radius = kernel.shape[-1] // 2
    work = y.to(convolution_dtype(y))
    g = F.conv_transpose2d(work, _depthwise(kernel.to(work.dtype), y.shape[1]), groups=y.shape[1])
    return (_fold_reflect(_fold_reflect(g, radius, 2), radius, 3) if radius else g).to(y.dtype)


def _mirror_extend(x: Tensor, dim: int) -> Tensor:
    """Whole-sample mirror extension to period 2n - 2: x_0 .. x_{n-1} x_{n-2} .. x_1 (what reflect padding sees)."""
    n = x.shape[dim]
    return torch.cat([x, x.narrow(dim, 1, n - 2).flip(dim)], dim) if n > 2 else x


def fft_deconvolve(r: Tensor, kernel: Tensor, regularization: float) -> Tensor:
    """Tikhonov deconvolution on the mirror-periodic image: d = F^-1[ G F(E r) / (|G|^2 + λ) ], cropped back.

    G is the DFT of the kernel placed around the origin, so that A = crop . circular-correlation . E. For symmetric
    kernels (Gaussian) this is exactly (A^T A + λ)^-1 A^T on the mirror-symmetric images that reflect padding sees;
    for asymmetric kernels (motion) it is exact in the interior and approximate within the kernel radius of the
    border. Computed in float32 or wider (FFTs are not available in every half precision).
    """
    height, width = r.shape[-2:]
    work = r.to(torch.promote_types(r.dtype, torch.float32))
    extended = _mirror_extend(_mirror_extend(work, 2), 3)
    size_h, size_w = extended.shape[-2:]
    k, radius = kernel.shape[-1], kernel.shape[-1] // 2
    kernel = kernel.to(device=r.device, dtype=work.dtype)
    offsets_h = (torch.arange(k, device=r.device) - radius) % size_h
    offsets_w = (torch.arange(k, device=r.device) - radius) % size_w
    placed = torch.zeros(size_h, size_w, device=r.device, dtype=work.dtype).index_put_(
        (offsets_h[:, None].expand(k, k), offsets_w[None, :].expand(k, k)), kernel, accumulate=True)
    spectrum = torch.fft.rfft2(placed)
    filtered = torch.fft.rfft2(extended) * spectrum / (spectrum.abs() ** 2 + regularization)
    return torch.fft.irfft2(filtered, s=(size_h, size_w))[..., :height, :width].to(r.dtype)


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class KernelBlur(OperatorBase):
    """Shared machinery of GaussianBlur and MotionBlur. Subclasses set `kernel` (float64, k x k) in __post_init__.

    paper: T = identity (reference code), so the gluing image is x + (y - A x).
    exact: x + A^+_λ (y - A x) with the Tikhonov FFT deconvolution above. λ = `regularization` trades data
    agreement against noise gain: per frequency, for r = A d the misfit |A A^+_λ r - r| is λ|G|/(|G|^2 + λ) |d|
    <= sqrt(λ)/2 |d| (tiny where |G|^2 >> λ), while noise in y is amplified at most 1 / (2 sqrt(λ)).
    """

    regularization: float = 1e-3
    kernel: Tensor = dataclasses.field(init=False, repr=False)
    _support: Tensor = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        super().__post_init__()
        check_float("regularization", self.regularization)
        with torch.inference_mode(False), torch.no_grad():
            object.__setattr__(self, "kernel", self._make_kernel())
            object.__setattr__(self, "_support", crop_to_support(self.kernel).clone())

    def _make_kernel(self) -> Tensor:
        raise NotImplementedError

    @property
    def support_radius(self) -> int:
        """Radius of the non-zero part of the kernel: images must be larger than this in both directions."""
        return self._support.shape[-1] // 2

    def _check_image_size(self, shape, name):
        height, width = shape[-2:]
        if min(height, width) <= self.support_radius:
            raise ValueError(f"{name} has size {height}x{width}: this blur reaches {self.support_radius} px, so the "
                             f"height and width must both exceed {self.support_radius}.")

    def _check_measurement_for_adjoint(self, y):
        self._check_image_size(tuple(y.shape), "y")

    def _kernel_for(self, t: Tensor) -> Tensor:
        return self._on("kernel", self._support, t.device, convolution_dtype(t))

    def _forward(self, x):
        return correlate(x, self._kernel_for(x))  # A x = k ⋆ pad(x)

    def _adjoint(self, y):
        return correlate_adjoint(y, self._kernel_for(y))  # A^T y = pad^T (k ⋆^T y)

    def _transpose(self, y, x):
        return y.clone()  # reference "transpose": identity

    def _pseudo_inverse(self, r, x):
        return fft_deconvolve(r, self._support, self.regularization)  # A^+_λ r
