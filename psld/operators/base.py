"""What every linear operator shares: the LinearOperator protocol, argument checks and the projection modes.

A concrete operator subclasses `OperatorBase` and fills in `_forward` (A x), `_adjoint` (A^T y), `_transpose`
(the PSLD reference code's pseudo-transpose T, used by `projection="paper"`) and `_pseudo_inverse` (A^+, used by
`projection="exact"`), plus `_check_image_size` and `measurement_shape`. The public methods check their arguments and
then call those.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

Projection = Literal["paper", "exact"]
PROJECTIONS = ("paper", "exact")


@runtime_checkable
class LinearOperator(Protocol):
    """What the sampler accepts: a linear A on NCHW images in [-1, 1]. Users may bring their own."""

    def forward(self, x: Tensor) -> Tensor:
        """A x."""
        ...

    def adjoint(self, y: Tensor) -> Tensor:
        """A^T y, the true adjoint: <A x, y> = <x, A^T y>."""
        ...

    def project(self, x: Tensor, y: Tensor) -> Tensor:
        """An image that agrees with y on what A observes and with x elsewhere (the gluing image)."""
        ...


# ---------------------------------------------------------------- argument checks (ValueError naming the argument)

def check_int(name: str, value, *, minimum: int = 1, odd: bool = False) -> int:
    """An integer >= minimum (and odd when asked); bools and floats are refused."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if not is_int or value < minimum or (odd and value % 2 == 0):
        allowed = f"an {'odd ' if odd else ''}integer >= {minimum}"
        raise ValueError(f"{name}={value!r} is not allowed: {name} must be {allowed}.")
    return value


def check_float(name: str, value, *, minimum: float = 0.0, maximum: float = math.inf,
                include_minimum: bool = False) -> float:
    """A finite real number in (minimum, maximum] (or [minimum, maximum] with include_minimum)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value >= minimum if include_minimum else value > minimum) and value <= maximum
    if not ok:
        low = "[" if include_minimum else "("
        high = f"{maximum}]" if math.isfinite(maximum) else "inf)"
        raise ValueError(f"{name}={value!r} is not allowed: {name} must be a finite number in {low}{minimum}, {high}.")
    return float(value)


def check_projection(value) -> str:
    """'paper' (the reference code's pseudo-transpose) or 'exact' (the pseudo-inverse)."""
    if value not in PROJECTIONS:
        raise ValueError(f"projection={value!r} is not allowed: projection must be one of {PROJECTIONS}.")
    return value


def describe_tensor(t) -> str:
    """Short text for a tensor in an error message (never its values)."""
    if not isinstance(t, Tensor):
        return f"a {type(t).__name__}"
    return f"a tensor of shape {tuple(t.shape)} and dtype {t.dtype}"


def check_nchw(name: str, t) -> Tensor:
    """A 4-D floating tensor without NaN or Inf."""
    if not isinstance(t, Tensor) or t.ndim != 4 or not t.is_floating_point():
        raise ValueError(f"{name} is {describe_tensor(t)}: {name} must be a floating-point NCHW tensor "
                         f"[batch, channels, height, width].")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} ({describe_tensor(t)}) contains NaN or Inf: {name} must be finite.")
    return t


def as_generator(generator, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator from a Generator, an int seed, or None (= seed 0). Never the global RNG."""
    if isinstance(generator, torch.Generator):
        return generator
    if generator is None:
        generator = 0
    check_int("generator", generator, minimum=0)
    return torch.Generator(device=device).manual_seed(generator)


def constant_on(tensor: Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
    """`tensor` on (device, dtype), as a normal (non-inference) tensor that autograd may save."""
    with torch.inference_mode(False), torch.no_grad():
        return tensor.detach().to(device=device, dtype=dtype)


# ---------------------------------------------------------------- the shared operator class

@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class OperatorBase:
    """Immutable linear operator with checked forward / adjoint / project. Subclasses are frozen dataclasses."""

    projection: Projection = "paper"
    _cast_cache: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        check_projection(self.projection)

    # ---- public API
    def forward(self, x: Tensor) -> Tensor:
        """y = A x."""
        return self._forward(self.validate_image(x, "x"))

    def adjoint(self, y: Tensor) -> Tensor:
        """A^T y (true adjoint)."""
        y = check_nchw("y", y)
        self._check_measurement_for_adjoint(y)
        return self._adjoint(y)

    def project(self, x: Tensor, y: Tensor) -> Tensor:
        """Gluing image: paper: T y + (x - T A x); exact: x + A^+ (y - A x)."""
        x = self.validate_image(x, "x")
        y = self._validate_measurement(y, x)
        if self.projection == "paper":
            return self._transpose(y, x) + (x - self._transpose(self._forward(x), x))  # T y + (x - T A x)
        return x + self._pseudo_inverse(y - self._forward(x), x)  # x + A^+ (y - A x)

    def with_projection(self, mode: Projection):
        """The same operator with another projection mode (a new object)."""
        return dataclasses.replace(self, projection=check_projection(mode))

    def validate_image(self, x: Tensor, name: str = "x") -> Tensor:
        """x itself when it is a finite NCHW float image of a size this operator accepts; else ValueError."""
        x = check_nchw(name, x)
        self._check_image_size(tuple(x.shape), name)
        return x

    def measurement_shape(self, image_shape) -> tuple[int, ...]:
        """Shape of A x for an image of shape [B, C, H, W]."""
        shape = tuple(int(s) for s in image_shape)
        if len(shape) != 4:
            raise ValueError(f"image_shape={tuple(image_shape)!r} is not allowed: it must be [B, C, H, W].")
        self._check_image_size(shape, "image_shape")
        return self._measurement_shape(shape)

    def describe(self, image_shape=None) -> str:
        """Short human text, e.g. 'SR x4 (bicubic), 512x512 -> 128x128'; sizes are width x height, as in ComfyUI."""
        text = self._describe()
        if image_shape is not None:
            shape = tuple(image_shape)
            out = self.measurement_shape(shape)
            text += f", {shape[-1]}x{shape[-2]} -> {out[-1]}x{out[-2]}"
        return text + (" [exact projection]" if self.projection == "exact" else "")

    # ---- helpers for subclasses
    def _on(self, key: str, tensor: Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Operator constant `tensor` cast to (device, dtype), cached per (key, device, dtype)."""
        cache_key = (key, device, dtype)
        cached = self._cast_cache.get(cache_key)
        if cached is None:
            cached = constant_on(tensor, device, dtype)
            self._cast_cache[cache_key] = cached
        return cached

    def _validate_measurement(self, y: Tensor, x: Tensor) -> Tensor:
        y = check_nchw("y", y)
        expected = self._measurement_shape(tuple(x.shape))
        if tuple(y.shape) != expected:
            raise ValueError(f"y has shape {tuple(y.shape)}: for an image x of shape {tuple(x.shape)} this operator "
                             f"({self._describe()}) measures y of shape {expected}; y must have that shape.")
        if y.device != x.device:
            raise ValueError(f"y is on {y.device} but x is on {x.device}: y must be on the same device as x.")
        return y.to(dtype=x.dtype)

    def _check_measurement_for_adjoint(self, y: Tensor) -> None:
        """Override when a measurement has constraints of its own (size, channels)."""

    def _check_image_size(self, shape: tuple[int, ...], name: str) -> None:
        """Override to refuse image shapes [B, C, H, W] this operator cannot handle."""

    # ---- to implement
    def _forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _adjoint(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def _transpose(self, y: Tensor, x: Tensor) -> Tensor:
        """The reference code's T (maps a measurement to image space); x gives the image shape."""
        raise NotImplementedError

    def _pseudo_inverse(self, r: Tensor, x: Tensor) -> Tensor:
        """A^+ r (maps a measurement to image space); x gives the image shape."""
        raise NotImplementedError

    def _measurement_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape

    def _describe(self) -> str:
        return type(self).__name__
