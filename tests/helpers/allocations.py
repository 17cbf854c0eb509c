"""Count what a computation allocates and what autograd keeps, to prove that weights are used by reference.

AllocationRecorder (a TorchDispatchMode) records the shape and size of every tensor an ATen operation returns, in
the forward and the backward pass alike (the backward of CPU tensors runs on the calling thread, under the mode).
SavedTensorBytes (saved_tensors_hooks) records every tensor autograd saves for the backward pass and whether its
memory belongs to one of the given weights.
"""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def _memory_of(value) -> int | None:
    if isinstance(value, torch.Tensor):
        return value.untyped_storage().data_ptr()
    if isinstance(value, torch.UntypedStorage):
        return value.data_ptr()
    return None


class AllocationRecorder(TorchDispatchMode):
    """shapes: the shapes of all tensors that ATen operations returned in new memory while the mode was open
    (views, aliases and in-place results, whose memory is an input's, are not allocations)."""

    def __init__(self):
        super().__init__()
        self.shapes: set[tuple[int, ...]] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {_memory_of(v) for v in tree_leaves((args, kwargs))}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and _memory_of(t) not in inputs:
                self.shapes.add(tuple(t.shape))
        return out


def weight_shapes(modules) -> set[tuple[int, ...]]:
    """Shapes of the matrices and kernels (2 or more dimensions) of these modules' parameters."""
    return {tuple(p.shape) for m in modules for p in m.parameters() if p.ndim >= 2}


class SavedTensorBytes:
    """Context manager: total bytes of the tensors autograd saves, and how many share memory with `weights`."""

    def __init__(self, weights):
        self.weight_pointers = {w.untyped_storage().data_ptr() for w in weights}
        self.total = 0
        self.by_reference = 0  # saved tensors whose memory is one of the weights

    def _pack(self, t: torch.Tensor):
        self.total += t.numel() * t.element_size()
        if t.untyped_storage().data_ptr() in self.weight_pointers:
            self.by_reference += 1
        return t

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        return self._hooks.__exit__(*exc)
