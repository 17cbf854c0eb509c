"""Shared fixtures: the real ComfyUI host in-process (`comfy`), tiny generated checkpoints (`tiny_models`), and a
real ComfyUI server over HTTP (`comfy_server`, `comfy_url`, `comfy_client`).

The host is chosen with PSLD_COMFY_HOST=current|floor (ComfyUI 0.30.0 or 0.3.75, built by `make host`).
Tests under tests/psld use none of these and need only torch.
"""
from __future__ import annotations

import asyncio
import logging
import sys

import pytest

from helpers.comfy_client import ComfyClient
from helpers.comfy_server import ComfyServer
from helpers.hosts import MODELS, REPO, host_prefix, selected_host
from helpers.tiny_models import ensure_tiny_models

PACK_NODE = "PSLD_LinearOperator"  # present once the pack registered its nodes


def pytest_report_header(config):
    return f"comfyui-psld: PSLD_COMFY_HOST={selected_host()}"


@pytest.fixture(scope="session")
def tiny_models() -> dict:
    """Tiny random SD1.5-shaped checkpoint (+ standalone VAE), generated once; names and paths."""
    return ensure_tiny_models()


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_models) -> str:
    """File name of the tiny checkpoint, as CheckpointLoaderSimple takes it."""
    return tiny_models["checkpoint"]


@pytest.fixture(scope="session")
def comfy(tiny_models, tmp_path_factory):
    """The real ComfyUI, imported in this process with our pack loaded by ComfyUI's own custom-node loader.

    Returns ComfyUI's `nodes` module (NODE_CLASS_MAPPINGS holds our node classes). Tests call nodes the way
    ComfyUI's executor does: inside torch.inference_mode().
    """
    prefix = host_prefix()
    sys.path.insert(0, str(prefix / "ComfyUI"))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before comfy.model_management is imported: no CUDA on CI
    comfy.cli_args.args.disable_api_nodes = True
    comfy.cli_args.args.use_pytorch_cross_attention = True
    import folder_paths

    folder_paths.add_model_folder_path("custom_nodes", str(prefix / "custom_nodes_link"))
    folder_paths.add_model_folder_path("checkpoints", str(MODELS / "checkpoints"))
    folder_paths.add_model_folder_path("vae", str(MODELS / "vae"))
    state = tmp_path_factory.mktemp("comfy-inprocess")
    for name, setter in (("output", folder_paths.set_output_directory), ("temp", folder_paths.set_temp_directory),
                         ("input", folder_paths.set_input_directory)):
        (state / name).mkdir()
        setter(str(state / name))
    import nodes

    # ComfyUI only logs a custom node that fails to import; keep its log lines to report the real traceback.
    log = _CapturedLog()
    logging.getLogger().addHandler(log)
    try:
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    finally:
        logging.getLogger().removeHandler(log)
    if PACK_NODE not in nodes.NODE_CLASS_MAPPINGS:
        pytest.fail(f"comfyui-psld did not register {PACK_NODE} in ComfyUI ({selected_host()}):\n{log.text()}")
    return nodes


class _CapturedLog(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(self.format(record))

    def text(self):
        return "\n".join(self.lines[-40:])


@pytest.fixture(scope="session")
def comfy_server(tiny_models, tmp_path_factory):
    """A real `main.py --cpu --disable-api-nodes` server on a free 127.0.0.1 port, with our pack and the tiny models."""
    server = ComfyServer(tmp_path_factory.mktemp("comfy-state"))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def comfy_url(comfy_server) -> str:
    return comfy_server.url


@pytest.fixture(scope="session")
def comfy_client(comfy_server) -> ComfyClient:
    return ComfyClient(comfy_server.url)


@pytest.fixture(scope="session")
def repo_root():
    return REPO
