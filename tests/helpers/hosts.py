"""Where the real ComfyUI hosts built by `make host` live, and which one this test run uses."""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOST_PREFIXES = {"current": REPO / ".comfyui", "floor": REPO / ".comfyui-floor"}
ARTIFACTS = Path(os.environ.get("PSLD_ARTIFACTS", REPO / ".artifacts"))
MODELS = ARTIFACTS / "models"


def selected_host() -> str:
    """PSLD_COMFY_HOST = current (ComfyUI 0.30.0, default) or floor (ComfyUI 0.3.75)."""
    host = os.environ.get("PSLD_COMFY_HOST", "current")
    if host not in HOST_PREFIXES:
        raise ValueError(f"PSLD_COMFY_HOST={host!r}: allowed values are {sorted(HOST_PREFIXES)}")
    return host


def host_prefix(host: str | None = None) -> Path:
    prefix = HOST_PREFIXES[host or selected_host()]
    if not (prefix / "ComfyUI" / "main.py").exists() or not (prefix / "venv" / "bin" / "python").exists():
        raise RuntimeError(f"ComfyUI host '{host or selected_host()}' is not built at {prefix}: run `make host`")
    return prefix
