"""Memory of a gradient step, in pure torch: weights by reference, and recomputation instead of stored activations.

PSLD needs grad_x of an objective through a denoiser, a decoder and an encoder whose weights it must neither copy nor
train. Two tools, both independent of any particular model:

weights_by_reference()
    A torch function mode. Every tensor an operation receives that autograd could not or should not keep as it is
    (an inference tensor, made under torch.inference_mode(), or an nn.Parameter) is handed to the operation as a
    plain alias of the same memory: no copy, no requires_grad. Autograd keeps that alias for the backward pass, so
    a layer's input gradient uses the weight by reference and no weight gradient is ever computed. An operation
    that would write into such a tensor (add_, copy_, __setitem__, ... on it) raises before it runs: the user's
    weights can never be changed through an alias (torch itself writes into an inference tensor, then raises).
    One kind of tensor is copied instead: a grad-free view into a larger buffer, such as the cast buffer in which
    ComfyUI assembles the weights of a partially loaded model layer by layer (the next layer overwrites it, so
    autograd must not keep the view). Weights that stay resident are never copied.

checkpointed_forwards(modules)
    While the context is open, each given module's forward runs under torch.utils.checkpoint (non-reentrant)
    whenever gradients are on: its activations are not stored but recomputed, inside weights_by_reference(),
    when the backward pass reaches it. Outside gradient regions the module runs as always. The modules are
    restored exactly when the context closes (the instance attribute `forward` it sets is deleted).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import torch
from torch.overrides import TorchFunctionMode


def plain_alias(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor (not an inference tensor, not a Parameter, no grad) that shares t's memory: no copy."""
    alias = torch.empty(0, dtype=t.dtype, device=t.device)
    return alias.set_(t.untyped_storage(), t.storage_offset(), t.size(), t.stride())


def _needs_alias(value) -> bool:
    """A plain tensor or Parameter that is an inference tensor, or any plain Parameter. Tensor subclasses (quantized
    weights and the like) keep their own type: an alias of their storage would not be the tensor they represent."""
    if type(value) is torch.nn.Parameter:
        return True
    return type(value) is torch.Tensor and value.is_inference()


def _in_a_shared_buffer(value) -> bool:
    """A plain grad-free tensor whose memory is part of a larger buffer (module docstring: cast buffers)."""
    return (type(value) is torch.Tensor and not value.requires_grad
            and value.untyped_storage().nbytes() > value.numel() * value.element_size())


def _by_reference(value):
    if _needs_alias(value):
        return plain_alias(value)
    return value.clone() if _in_a_shared_buffer(value) else value


def _writes_first_argument(func) -> bool:
    """In-place operations (add_, copy_, __setitem__, __iadd__, ...): their first argument is written to."""
    name = getattr(func, "__name__", "")
    if name.startswith("__") and name.endswith("__"):
        return name == "__setitem__" or name.startswith("__i")
    return name.endswith("_")


class WeightsByReference(TorchFunctionMode):
    """The torch function mode of weights_by_reference() (see the module docstring)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = {k: v if k == "out" else _by_reference(v) for k, v in (kwargs or {}).items()}
        if args and _writes_first_argument(func):
            if _needs_alias(args[0]):  # torch itself writes into an inference tensor first and raises after
                raise RuntimeError(
                    f"{getattr(func, '__name__', func)} would write into a model weight or a tensor made under "
                    f"torch.inference_mode() during a gradient step; the weight is left unchanged. Compute a new "
                    f"tensor instead of writing into it.")
            args = (args[0], *map(_by_reference, args[1:]))
        else:
            args = tuple(map(_by_reference, args))
        return func(*args, **kwargs)


def _mode_active() -> bool:
    stack = getattr(torch.overrides, "_get_current_function_mode_stack", lambda: [])()
    return any(isinstance(mode, WeightsByReference) for mode in stack)


def weights_by_reference():
    """Context manager: inference tensors and parameters enter autograd by reference (see the module docstring).
    Opening it where it is already open adds nothing (no second mode on the stack)."""
    return contextlib.nullcontext() if _mode_active() else WeightsByReference()


def gradients_on() -> bool:
    """Inside a gradient region: grad mode on and inference mode off."""
    return torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


def _checkpointed(forward: Callable) -> Callable:
    def run_by_reference(*args, **kwargs):  # also what the backward pass recomputes, outside any open mode
        with weights_by_reference():
            return forward(*args, **kwargs)

    def checkpointed_forward(*args, **kwargs):
        if not gradients_on():
            return forward(*args, **kwargs)
        return torch.utils.checkpoint.checkpoint(run_by_reference, *args, use_reentrant=False, **kwargs)
    return checkpointed_forward


@contextlib.contextmanager
def checkpointed_forwards(modules: Iterable[torch.nn.Module]):
    """Recompute these modules' activations in the backward pass instead of storing them (module docstring).
    A module that already has an instance-level forward (someone else's patch) is left as it is."""
    patched = []
    try:
        for module in modules:
            if "forward" in vars(module):
                continue
            module.forward = _checkpointed(module.forward)
            patched.append(module)
        yield patched
    finally:
        for module in patched:
            del module.forward
