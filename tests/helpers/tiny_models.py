"""Tiny random-weight SD1.5-shaped checkpoints, generated once per machine by tools/make_tiny_models.py."""
import subprocess
import sys

from .hosts import MODELS, REPO, host_prefix

CHECKPOINT = "psld_tiny_sd15.safetensors"
STANDALONE_VAE = "psld_tiny_taesd.safetensors"


def ensure_tiny_models() -> dict:
    """Generate (or reuse) the tiny models; returns their names and paths."""
    prefix = host_prefix()
    subprocess.run([str(prefix / "venv" / "bin" / "python"), str(REPO / "tools" / "make_tiny_models.py"),
                    "--comfy", str(prefix / "ComfyUI"), "--out", str(MODELS)],
                   check=True, stdout=sys.stderr)
    return {"checkpoint": CHECKPOINT, "checkpoint_path": MODELS / "checkpoints" / CHECKPOINT,
            "vae": STANDALONE_VAE, "vae_path": MODELS / "vae" / STANDALONE_VAE}
