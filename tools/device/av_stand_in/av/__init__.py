"""Stand-in for PyAV (av) on the GPU device machine, which has no PyAV and too little transfer room for its wheel.

ComfyUI 0.30 imports av at start-up (comfy_api.latest's video types: `import av`, `from av.container import
InputContainer`, `from av.subtitles.stream import SubtitleStream`, `from av.video.reformatter import ColorRange`)
but only calls it inside video and audio nodes, which bench/gpu_psld.py never runs. Any use raises, so a run that
reached video code would fail loudly. tools/gpu_check.sh stages this folder; the CPU smoke check runs with it
ahead of the host's real PyAV.
"""
import sys
import types


class _Unavailable(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def unavailable(*args, **kwargs):
            raise RuntimeError(f"{self.__name__}.{name}: PyAV is not installed on this machine (stand-in)")

        unavailable.__qualname__ = f"{self.__name__}.{name}"
        return unavailable


for _name in ("av.container", "av.subtitles", "av.subtitles.stream", "av.video", "av.video.reformatter"):
    sys.modules[_name] = _Unavailable(_name)
container, subtitles, video = (sys.modules[f"av.{n}"] for n in ("container", "subtitles", "video"))
subtitles.stream = sys.modules["av.subtitles.stream"]
video.reformatter = sys.modules["av.video.reformatter"]
__version__ = "0+stand-in"


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(_Unavailable("av"), name)
