"""Bad input to an example workflow, over HTTP: the prompt fails with an execution_error whose message names the
node, the input and the fix, and the server keeps serving (the corrected prompt then runs)."""
from __future__ import annotations

import copy

import pytest

import workflow_runs as wr
from helpers.comfy_client import PromptFailed

pytestmark = pytest.mark.server

QUICK_STEPS = 2  # these prompts check errors, not image quality


@pytest.fixture(scope="module")
def photos(comfy_client) -> dict[str, str]:
    return wr.upload_test_photos(comfy_client)


def cpu_workflow(name: str, checkpoint: str, photos: dict) -> dict:
    return wr.for_cpu(wr.load_api(name), checkpoint=checkpoint, images=photos, steps=QUICK_STEPS)


def failure_of(client, prompt: dict) -> dict:
    with pytest.raises(PromptFailed) as failure:
        client.run(prompt)
    return failure.value.data


def assert_serves(client, prompt: dict) -> None:
    result = client.run(prompt)
    assert result.status.get("status_str") == "success", result.status
    image = wr.output_image(client, result, wr.only(prompt, "SaveImage"))
    assert image.shape == (wr.SIZE, wr.SIZE, 3)


@pytest.mark.parametrize("name", ["PSLD_super_resolution_x4", "PSLD_gaussian_deblur"])
def test_wrong_size_measurement_names_node_input_and_fix(name, comfy_client, tiny_checkpoint, photos):
    good = cpu_workflow(name, tiny_checkpoint, photos)
    sampler = wr.only(good, wr.SAMPLERS)
    # a photo of the wrong size as the measurement: the full-size photo for SR (which wants a 4x smaller one), the
    # small photo for the blur (whose measurement has the image size)
    wrong = wr.PHOTO if name == "PSLD_super_resolution_x4" else wr.SMALL_PHOTO
    bad = copy.deepcopy(good)
    bad["950"] = {"class_type": "LoadImage", "inputs": {"image": photos[wrong]}}
    bad[sampler]["inputs"]["measurement"] = ["950", 0]
    error = failure_of(comfy_client, bad)
    node_type = bad[sampler]["class_type"]
    assert error["node_id"] == sampler and error["node_type"] == node_type, error
    message = error["exception_message"]
    assert message.startswith(f"{node_type}: input 'measurement':"), message
    assert "Fix:" in message and "resize the measurement" in message, message
    given = wr.SIZE if name == "PSLD_super_resolution_x4" else wr.SIZE // wr.SR_FACTOR
    expected = wr.SIZE // wr.SR_FACTOR if name == "PSLD_super_resolution_x4" else wr.SIZE
    assert f"{given}x{given}" in message and f"{expected}x{expected}" in message, message
    assert_serves(comfy_client, good)


def test_photo_without_alpha_as_mask_names_the_mask_input(comfy_client, tiny_checkpoint, photos):
    good = cpu_workflow("PSLD_mask_inpainting", tiny_checkpoint, photos)
    bad = copy.deepcopy(good)
    bad[wr.only(bad, "LoadImage")]["inputs"]["image"] = photos[wr.PHOTO]  # RGB: LoadImage gives an empty 64x64 mask
    error = failure_of(comfy_client, bad)
    operator = wr.only(bad, "PSLD_LinearOperator")
    assert error["node_id"] == operator and error["node_type"] == "PSLD_LinearOperator", error
    message = error["exception_message"]
    assert message.startswith("PSLD_LinearOperator: input 'mask':"), message
    assert "64x64" in message and "mask editor" in message.lower() and "Fix:" in message, message
    assert "width=64" not in message, message  # resizing the operator to the placeholder would not help
    assert_serves(comfy_client, good)


def test_out_of_range_widget_is_refused_before_running(comfy_client, tiny_checkpoint, photos):
    """A width that is not a multiple of 8 is caught by validation (HTTP 400 naming the node and input)."""
    from helpers.comfy_client import PromptRejected

    bad = cpu_workflow("PSLD_box_inpainting", tiny_checkpoint, photos)
    operator = wr.only(bad, "PSLD_LinearOperator")
    bad[operator]["inputs"]["width"] = wr.SIZE + 4
    with pytest.raises(PromptRejected) as rejected:
        comfy_client.run(bad)
    assert rejected.value.status == 400
    errors = rejected.value.body["node_errors"][operator]["errors"]
    assert errors[0]["type"] == "custom_validation_failed", errors
    assert "width" in errors[0]["details"] and "multiple of 8" in errors[0]["details"], errors
    assert comfy_client.get_json("/queue") == {"queue_running": [], "queue_pending": []}
