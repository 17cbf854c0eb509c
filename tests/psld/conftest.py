"""Pure-torch tests of psld/: put the repository root on sys.path so that `import psld` works without ComfyUI."""
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
