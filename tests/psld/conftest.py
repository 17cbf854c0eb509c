"""Pure-torch tests of psld/: put the repository root on sys.path so that `import psld` works without ComfyUI."""
import sys
from pathlib import Path

import pytest
import torch

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture
def one_thread():
    """One intra-op thread for a module of small tensors (use: pytestmark = pytest.mark.usefixtures("one_thread")):
    with several threads a busy machine spends its time synchronising them (the underdetermined linear-model test
    takes 0.9 s on one thread and 19 s on two while other jobs run)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
