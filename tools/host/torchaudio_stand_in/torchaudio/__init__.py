"""Stand-in for torchaudio on the CPU test host (no torchaudio build matches torch 2.13).

ComfyUI 0.30 imports torchaudio at start-up but only calls it inside audio models, which the PSLD tests
never load. Any attribute use raises, so a test that reached audio code would fail loudly.
"""
import sys
import types


class _Unavailable(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def unavailable(*args, **kwargs):
            raise RuntimeError(f"{self.__name__}.{name}: torchaudio is not installed on this test host")

        return unavailable


functional = _Unavailable("torchaudio.functional")
transforms = _Unavailable("torchaudio.transforms")
sys.modules[functional.__name__] = functional
sys.modules[transforms.__name__] = transforms


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(_Unavailable("torchaudio"), name)
