"""Start and stop a real ComfyUI server (main.py of a host built by `make host`) on 127.0.0.1."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from .hosts import ARTIFACTS, host_prefix, selected_host

# A pack that fails to import is only logged by ComfyUI; these lines turn that into a test failure.
IMPORT_FAILURE = re.compile(r"(Cannot import .*comfyui-psld|IMPORT FAILED.*comfyui-psld)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ComfyServer:
    """One server process; `url`, `log_path`, `stop()`. The pack is loaded through --extra-model-paths-config."""

    def __init__(self, state_dir: Path, port: int | None = None, extra_args: tuple = ()):
        self.host = selected_host()
        prefix = host_prefix(self.host)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state_dir = state_dir
        for name in ("output", "temp", "input", "user"):
            (state_dir / name).mkdir(parents=True, exist_ok=True)
        logs = ARTIFACTS / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.log_path = logs / f"server-{self.host}-{self.port}.log"
        command = [str(prefix / "venv" / "bin" / "python"), "main.py", "--cpu", "--listen", "127.0.0.1",
                   "--port", str(self.port), "--disable-auto-launch", "--disable-api-nodes",
                   "--use-pytorch-cross-attention", "--preview-method", "none",
                   "--extra-model-paths-config", str(prefix / "extra_model_paths.yaml"),
                   "--output-directory", str(state_dir / "output"), "--temp-directory", str(state_dir / "temp"),
                   "--input-directory", str(state_dir / "input"), "--user-directory", str(state_dir / "user"),
                   "--database-url", "sqlite:///:memory:", *extra_args]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, cwd=prefix / "ComfyUI", stdout=self._log, stderr=subprocess.STDOUT,
                                        env=env, start_new_session=True)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI ({self.host}) exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/object_info/PrimitiveNode", timeout=5):
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise TimeoutError(f"ComfyUI ({self.host}) did not answer within {timeout} s:\n{self.log_tail()}")
        failures = IMPORT_FAILURE.findall(self.log_path.read_text(errors="replace"))
        if failures:
            raise RuntimeError(f"comfyui-psld failed to import in ComfyUI ({self.host}):\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
