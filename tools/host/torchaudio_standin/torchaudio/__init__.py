"""Import-time stand-in for torchaudio on the CPU test host (ComfyUI 0.30.0), installed by tools/host/build_host.sh.

No torchaudio release matches torch 2.13.0 (PyPI's newest, 2.11.0, pins torch 2.11 and its compiled library does
not load beside 2.13). ComfyUI 0.30.0 imports torchaudio while starting (comfy/sd.py -> the LTX audio VAE) but
calls it only inside audio models, which the tests never run. This package makes the imports succeed
(``import torchaudio``, ``import torchaudio.functional as F``, ``from torchaudio.transforms import MelScale``);
anything actually used raises RuntimeError saying torchaudio is not installed.
"""
from ._unavailable import unavailable_attribute

__version__ = "0.0.0+stand-in"
STAND_IN = True

from . import functional, transforms  # noqa: E402,F401


def __getattr__(name):
    return unavailable_attribute("torchaudio", name)
