"""Placeholders for every torchaudio name: importing them works, using them raises."""

MESSAGE = ("{name} is not available: this ComfyUI test host has only an import-time stand-in for torchaudio "
           "(no torchaudio build matches torch 2.13.0)")


def unavailable_attribute(module, name):
    """Return a placeholder for module.name; dunder names stay missing so introspection behaves normally."""
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    qualified = f"{module}.{name}"

    class Unavailable:
        def __init__(self, *args, **kwargs):
            raise RuntimeError(MESSAGE.format(name=qualified))

        def __init_subclass__(cls, **kwargs):
            raise RuntimeError(MESSAGE.format(name=qualified))

    Unavailable.__name__ = Unavailable.__qualname__ = name
    Unavailable.__module__ = module
    return Unavailable
