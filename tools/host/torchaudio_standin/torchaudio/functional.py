"""Stand-in for torchaudio.functional: every name imports, every use raises RuntimeError."""
from ._unavailable import unavailable_attribute


def __getattr__(name):
    return unavailable_attribute("torchaudio.functional", name)
