"""Let the PyPI torchvision 0.28.0 wheel import beside a CPU-only torch 2.13.0 (test hosts only).

PyPI's torchvision 0.28.0 is built against CUDA torch: its compiled extension cannot load beside the CPU build,
so no ``torchvision::*`` operator gets registered. ``torchvision/_meta_registrations.py`` still registers fake
(meta) kernels for ``torchvision::nms`` and ``torchvision::qnms`` at import time, which fails with
"operator torchvision::nms does not exist" and makes ``import torchvision`` (and so ComfyUI's start-up) fail.

This module declares those two operator schemas, without kernels, just before torchvision is first imported.
The pure-Python parts of torchvision (transforms, models) then work; the compiled operators still raise when
called. Installed by tools/host/build_host.sh as a module plus a one-line ``.pth`` file that calls
``install()``, so nothing is imported at interpreter start-up until something imports torchvision.
"""
import importlib.abc
import sys

# The operators torchvision/_meta_registrations.py registers fake kernels for unconditionally.
SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # the torch.library.Library holding the schemas; must stay alive


def declare_missing_schemas():
    """Declare the torchvision operator schemas that no compiled extension has registered."""
    global _library
    import torch

    missing = [schema for schema in SCHEMAS if not _operator_exists(torch, schema.split("(", 1)[0])]
    if not missing:
        return
    _library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in missing:
        _library.define(schema)


def _operator_exists(torch, name):
    try:
        getattr(torch.ops.torchvision, name).default
    except (AttributeError, RuntimeError):
        return False
    return True


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    """Runs declare_missing_schemas() once, on the first `import torchvision`, then steps aside."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)
        try:
            declare_missing_schemas()
        except Exception as error:  # a broken shim must not break the interpreter; torchvision reports its own error
            print(f"torchvision_cpu_shim: could not declare operator schemas: {error!r}", file=sys.stderr)
        return None  # the regular finders import the real package


def install():
    if not any(isinstance(finder, _BeforeTorchvision) for finder in sys.meta_path):
        sys.meta_path.insert(0, _BeforeTorchvision())
