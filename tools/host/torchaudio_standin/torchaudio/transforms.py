"""Stand-in for torchaudio.transforms: every name imports, every use raises RuntimeError."""
from ._unavailable import unavailable_attribute


def __getattr__(name):
    return unavailable_attribute("torchaudio.transforms", name)
