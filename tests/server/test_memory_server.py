"""Running out of memory inside a PSLD step, over HTTP: the server process gets a data-size limit (RLIMIT_DATA, as
`prlimit --data` sets it) a little above what it uses, a 512 px PSLD prompt that needs more fails with the pack's
message (node, size, mode, estimate, fix), and with the limit lifted the same server runs the next prompt."""
from __future__ import annotations

import contextlib
import copy
import resource

import pytest

import workflow_runs as wr
from helpers.comfy_client import PromptFailed

pytestmark = pytest.mark.server

HEADROOM = 256 * 2**20  # bytes the server may still allocate: far below a 512 px gradient step in fast mode
BIG = 512


def data_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmData not in /proc/<pid>/status")


@contextlib.contextmanager
def data_limit(pid: int, limit: int):
    before = resource.prlimit(pid, resource.RLIMIT_DATA)
    resource.prlimit(pid, resource.RLIMIT_DATA, (limit, before[1]))
    try:
        yield
    finally:
        resource.prlimit(pid, resource.RLIMIT_DATA, before)


def box_inpainting(checkpoint: str, photos: dict, *, size: int, memory: str) -> dict:
    prompt = wr.for_cpu(wr.load_api("PSLD_box_inpainting"), checkpoint=checkpoint, images=photos, size=size, steps=1)
    photo = wr.only(prompt, "LoadImage")
    prompt["960"] = {"class_type": "ImageScale", "inputs": {"image": [photo, 0], "upscale_method": "bilinear",
                                                            "width": size, "height": size, "crop": "disabled"}}
    prompt[wr.only(prompt, "PSLD_Degrade")]["inputs"]["image"] = ["960", 0]
    prompt[wr.only(prompt, "PSLD_Sampler")]["inputs"]["memory"] = memory
    return prompt


def test_out_of_memory_names_node_size_mode_and_fix_and_the_server_serves_on(comfy_server, comfy_client,
                                                                             tiny_checkpoint):
    photos = wr.upload_test_photos(comfy_client)
    good = box_inpainting(tiny_checkpoint, photos, size=wr.SIZE, memory="fast")
    assert comfy_client.run(good).status.get("status_str") == "success"  # models loaded, heap warm
    pid = comfy_server.process.pid
    with data_limit(pid, data_bytes(pid) + HEADROOM):
        with pytest.raises(PromptFailed) as failure:
            comfy_client.run(box_inpainting(tiny_checkpoint, photos, size=BIG, memory="fast"))
    error = failure.value.data
    message = error["exception_message"]
    assert error["node_type"] == "PSLD_Sampler", error
    assert message.startswith("PSLD_Sampler: input 'memory': PSLD ran out of memory at 512x512 px"), message
    assert "'fast' memory mode" in message and "MiB free now" in message, message
    assert "Fix: set memory to low on PSLD_Sampler" in message, message
    result = comfy_client.run(copy.deepcopy(good))
    assert result.status.get("status_str") == "success", result.status
    assert wr.output_image(comfy_client, result, wr.only(good, "SaveImage")).shape == (wr.SIZE, wr.SIZE, 3)
