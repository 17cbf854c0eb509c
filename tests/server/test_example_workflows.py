"""Every example workflow runs on a real `main.py --cpu` server and restores a measurement-consistent image.

For each workflow the API form (tests/server/workflows/, the frontend's own export of example_workflows/<name>.json)
is made CPU-sized by workflow_runs.for_cpu (test checkpoint, SIZE px, STEPS steps, uploaded photos), POSTed to
/prompt and followed over /ws to its end. The result must have the operator's size, be finite, and fit the
measurement: ||A x_hat - y|| below MAX_RESIDUAL_RATIO times the same figure for the unguided sample of the same
seed, i.e. the same graph with a PSLD_GluingLoss of omega = gamma = 0 (plain DDIM from the same noise, scheduler and
steps). The fast checks without a server pin what the workflows must show (one per task, the SR measurement is a
small photo, the mask comes from LoadImage, one workflow uses SamplerCustomAdvanced) and that each API file is the
API form of its UI file; the template browser must list them.

The demo-model workflows (example_workflows/api/PSLD_demo_*.json: the bundled prior and images, 32 px, 50 steps) run
as they are, through tools/demo.py's own code (the one `make demo` runs), and must show PSLD and the branch without
it, and PSLD must fit the measurement better where that branch does not fit it by construction.
"""
from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest
from PIL import Image

import workflow_runs as wr

sys.path.append(str(wr.REPO / "tools"))
import demo  # noqa: E402  (tools/demo.py: runs the demo workflows for `make demo`)

pytestmark = pytest.mark.server

TASKS = {"box_inpaint", "mask_inpaint", "random_inpaint", "super_resolution", "gaussian_deblur", "motion_deblur"}
NOTES = {"MarkdownNote", "Note"}  # frontend-only nodes: not in the API form
UI_ONLY_WIDGETS = {"upload"}  # LoadImage's upload button
# Measured with STEPS = 8 at SIZE = 96 on the structured checkpoint (same on ComfyUI 0.30.0 and 0.3.75): guided /
# unguided = 0.86 box (reference weights omega 0.1, gamma 0.01), 0.76 Gaussian, 0.70 mask, 0.74 motion, 0.75 random,
# 0.70 SR x4. The tiny random checkpoint gives 0.95-1.0 (its decoder cannot represent the photo).
MAX_RESIDUAL_RATIO = 0.9


def api_forms() -> dict[str, dict]:
    return {name: wr.load_api(name) for name in wr.NAMES}


def nodes_of(api: dict, class_type: str) -> list[str]:
    return [node_id for node_id, node in api.items() if node["class_type"] == class_type]


# -- without a server ------------------------------------------------------------------------------------------

def test_one_example_workflow_per_task_with_thumbnail():
    ui_names = sorted(p.stem for p in wr.UI_DIR.glob("*.json"))
    assert ui_names == sorted(wr.NAMES + wr.DEMO_NAMES), ("every example workflow needs its API form in "
                                                          "tests/server/workflows/ (demo: example_workflows/api/)")
    tasks = {}
    for name, api in api_forms().items():
        (operator,) = nodes_of(api, "PSLD_LinearOperator")
        tasks[api[operator]["inputs"]["task"]] = name
        assert api[operator]["inputs"]["width"] == api[operator]["inputs"]["height"] == 512, name
        assert [api[i]["inputs"]["ckpt_name"] for i in nodes_of(api, "CheckpointLoaderSimple")] == [
            "v1-5-pruned-emaonly.safetensors"], name
        thumbnail = wr.UI_DIR / f"{name}.jpg"
        data = thumbnail.read_bytes()
        assert len(data) < 40_000, f"{thumbnail.name} is {len(data)} bytes"
        with Image.open(io.BytesIO(data)) as picture:
            assert picture.format == "JPEG" and picture.size == (256, 256), (picture.format, picture.size)
    assert set(tasks) == TASKS, f"tasks covered: {tasks}"


def test_workflows_show_the_intended_graphs():
    apis = api_forms()
    by_task = {api[nodes_of(api, "PSLD_LinearOperator")[0]]["inputs"]["task"]: api for api in apis.values()}
    # super-resolution: the small photo itself is the measurement (no PSLD_Degrade)
    sr = by_task["super_resolution"]
    (sampler,) = nodes_of(sr, "PSLD_Sampler")
    source = sr[sampler]["inputs"]["measurement"]
    assert sr[source[0]]["class_type"] == "LoadImage" and not nodes_of(sr, "PSLD_Degrade")
    assert sr[source[0]]["inputs"]["image"] == wr.SMALL_PHOTO
    # mask inpainting: the operator's mask is LoadImage's MASK output (the user's own mask)
    mask = by_task["mask_inpaint"]
    (operator,) = nodes_of(mask, "PSLD_LinearOperator")
    link = mask[operator]["inputs"]["mask"]
    assert mask[link[0]]["class_type"] == "LoadImage" and link[1] == 1
    # at least one workflow runs PSLD inside core SamplerCustomAdvanced (PSLD_Guider + PSLD_PosteriorSampler)
    composable = [name for name, api in apis.items() if nodes_of(api, "SamplerCustomAdvanced")]
    assert composable, "no workflow uses SamplerCustomAdvanced"
    for name in composable:
        api = apis[name]
        (run,) = nodes_of(api, "SamplerCustomAdvanced")
        wiring = {key: api[value[0]]["class_type"] for key, value in api[run]["inputs"].items()}
        assert wiring == {"noise": "RandomNoise", "guider": "PSLD_Guider", "sampler": "PSLD_PosteriorSampler",
                          "sigmas": "BasicScheduler", "latent_image": "EmptyLatentImage"}, (name, wiring)
        assert api[nodes_of(api, "BasicScheduler")[0]]["inputs"]["scheduler"] == "ddim_uniform"
    # every workflow saves its result and previews its measurement
    for name, api in apis.items():
        assert len(nodes_of(api, "SaveImage")) == 1, name
        if name != "PSLD_super_resolution_x4":
            (degrade,) = nodes_of(api, "PSLD_Degrade")
            previews = [api[i]["inputs"]["images"] for i in nodes_of(api, "PreviewImage")]
            assert [degrade, 0] in previews, name


def is_subsequence(values: list, sequence: list) -> bool:
    remaining = iter(sequence)
    return all(any(value == item for item in remaining) for value in values)


@pytest.mark.parametrize("name", wr.NAMES + wr.DEMO_NAMES)
def test_api_form_is_the_ui_workflow(name):
    """The API file holds the UI file's nodes, links and widget values (the UI adds notes, seed controls, upload
    buttons)."""
    ui = json.loads((wr.UI_DIR / f"{name}.json").read_text())
    api = wr.load_api(name)
    nodes = {str(node["id"]): node for node in ui["nodes"] if node["type"] not in NOTES}
    assert {i: n["type"] for i, n in nodes.items()} == {i: n["class_type"] for i, n in api.items()}
    for node_id, node in nodes.items():  # the UI stores a title only where it differs from the display name
        assert node.get("title", api[node_id]["_meta"]["title"]) == api[node_id]["_meta"]["title"], node_id
    for link_id, source, slot, target, target_slot, _type in ui["links"]:
        input_name = nodes[str(target)]["inputs"][target_slot]["name"]
        assert api[str(target)]["inputs"][input_name] == [str(source), slot], (link_id, input_name)
    for node_id, node in nodes.items():
        linked = {slot["name"] for slot in node.get("inputs", []) if slot.get("link") is not None}
        widgets = [slot["widget"]["name"] for slot in node.get("inputs", []) if "widget" in slot]
        inputs = api[node_id]["inputs"]
        links_in_api = {k for k, v in inputs.items() if isinstance(v, list)}
        assert links_in_api == linked, (node_id, links_in_api, linked)
        assert set(inputs) - linked == set(widgets) - linked - UI_ONLY_WIDGETS, (node_id, sorted(inputs), widgets)
        values = [inputs[w] for w in widgets if w in inputs and w not in linked]
        assert is_subsequence(values, node.get("widgets_values") or []), (node_id, values, node["widgets_values"])


# -- on the server ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def structured_checkpoint(tiny_models) -> str:
    return wr.ensure_structured_checkpoint(tiny_models)


@pytest.fixture(scope="module")
def photos(comfy_client) -> dict[str, str]:
    return wr.upload_test_photos(comfy_client)


def test_template_browser_lists_the_workflows(comfy_client):
    listing = comfy_client.get_json("/workflow_templates")
    modules = [module for module, names in listing.items() if set(wr.NAMES) <= set(names)]
    assert len(modules) == 1, f"/workflow_templates: {listing}"
    (module,) = modules
    assert sorted(listing[module]) == sorted(wr.NAMES + wr.DEMO_NAMES)  # the API forms in api/ are not listed
    for name in wr.NAMES + wr.DEMO_NAMES:
        served = json.loads(comfy_client.get_bytes(f"/api/workflow_templates/{module}/{name}.json"))
        assert served == json.loads((wr.UI_DIR / f"{name}.json").read_text())
        thumbnail = comfy_client.get_bytes(f"/api/workflow_templates/{module}/{name}.jpg")
        assert thumbnail == (wr.UI_DIR / f"{name}.jpg").read_bytes()


@pytest.mark.parametrize("name", wr.NAMES)
def test_example_workflow_restores_a_measurement_consistent_image(name, comfy_client, structured_checkpoint, photos):
    api = wr.with_probes(wr.for_cpu(wr.load_api(name), checkpoint=structured_checkpoint, images=photos))
    guided = comfy_client.run(api)
    assert guided.status.get("status_str") == "success", guided.status

    result = wr.output_image(comfy_client, guided, wr.only(api, "SaveImage"))
    assert result.shape == (wr.SIZE, wr.SIZE, 3), "the result has the operator's size (SR: 4x the measurement)"
    # finite: the probe PSLD_Degrade refuses NaN/Inf images, and every reported residual is a number
    assert np.isfinite(result).all() and result.std() > 0.01, result.std()
    steps = guided.custom_events("psld.progress")
    assert steps, "the sampler reported no step"
    for event in steps:
        for name_, values in event["values"].items():
            assert all(v is not None for v in values), (name_, event)

    unguided = comfy_client.run(wr.unguided(api))
    assert unguided.status.get("status_str") == "success", unguided.status
    residual, baseline = (wr.measurement_residual(comfy_client, run) for run in (guided, unguided))
    assert residual < MAX_RESIDUAL_RATIO * baseline, (
        f"{name}: ||A x_hat - y|| = {residual:.2f} guided vs {baseline:.2f} unguided (ratio {residual / baseline:.3f})")


def test_mask_inpainting_uses_the_users_mask(comfy_client, structured_checkpoint, photos):
    """The hole of y is exactly the transparent region of the uploaded photo (LoadImage's MASK = 1 - alpha)."""
    api = wr.for_cpu(wr.load_api("PSLD_mask_inpainting"), checkpoint=structured_checkpoint, images=photos)
    run = comfy_client.run(wr.measurement_only(api))  # LoadImage -> operator (its MASK) -> PSLD_Degrade -> y
    y = wr.output_image(comfy_client, run, wr.PROBE_Y_VIEW)
    with Image.open(io.BytesIO(wr.photos_for_tests()[wr.HOLE_PHOTO])) as uploaded:
        rgba = np.asarray(uploaded, dtype=np.float32) / 255.0
    hole = rgba[..., 3] < 0.5
    assert 0.05 < hole.mean() < 0.5
    assert np.abs(y[hole] - 0.5).max() <= 1 / 255 + 1e-6, "y is 0 (mid grey) in the hole (sigma_y = 0)"
    assert np.abs(y[~hole] - rgba[~hole][:, :3]).max() <= 1 / 255 + 1e-6, "y is the photo outside the hole"


# -- the demo-model workflows ----------------------------------------------------------------------------------

DEMO_TASKS = {"box_inpaint", "random_inpaint", "super_resolution", "gaussian_deblur", "motion_deblur"}
# Where the branch without PSLD fits y by construction, its residual is no yardstick: latent inpainting keeps the
# encoded y outside the hole, and a bicubic upscale of y is nearly consistent with a bicubic downscale. Elsewhere PSLD
# must beat it. Measured on the interim demo weights (both hosts alike): PSLD / without PSLD = 0.44 random inpainting,
# 0.66 Gaussian, 0.60 motion deblur (box 1.39, SR 3.98).
RESIDUAL_MUST_BEAT = {"random_inpaint", "gaussian_deblur", "motion_deblur"}


def upstream(api: dict, link: list) -> dict:
    return api[link[0]]


def test_demo_workflows_show_psld_and_the_branch_without_it():
    assert wr.DEMO_NAMES, "no demo workflow in example_workflows/api/"
    tasks = set()
    for name in wr.DEMO_NAMES:
        api = wr.load_api(name)
        kinds = {node["class_type"] for node in api.values()}
        assert {"PSLD_DemoModelLoader", "PSLD_DemoImage"} <= kinds, name
        assert not kinds & {"LoadImage", "CheckpointLoaderSimple"}, f"{name} needs a file: {kinds}"
        operator = api[wr.only(api, "PSLD_LinearOperator")]["inputs"]
        tasks.add(operator["task"])
        assert operator["width"] == operator["height"] == 32, name
        sampler = api[wr.only(api, "PSLD_Sampler")]["inputs"]
        assert (sampler["steps"], sampler["cfg"]) == (50, 1.0), name
        degrade = upstream(api, sampler["measurement"])
        assert degrade["class_type"] == "PSLD_Degrade" and degrade["inputs"]["sigma_y"] == 0.05, name
        assert upstream(api, degrade["inputs"]["image"])["class_type"] == "PSLD_DemoImage", name
        saves = demo.panel_nodes(api)  # one SaveImage per panel, named by its filename prefix
        assert api[saves["truth"]]["inputs"]["images"] == degrade["inputs"]["image"], name
        assert api[saves["measurement"]]["inputs"]["images"] == sampler["measurement"], name
        assert upstream(api, api[saves["psld"]]["inputs"]["images"])["class_type"] == "PSLD_Sampler", name
        without = upstream(api, api[saves["without_psld"]]["inputs"]["images"])
        if operator["task"] == "super_resolution":  # upscale y bicubic x4
            assert without["class_type"] == "ImageScaleBy", name
            assert without["inputs"]["image"] == sampler["measurement"], name
            assert (without["inputs"]["upscale_method"], without["inputs"]["scale_by"]) == ("bicubic", 4.0), name
            continue
        assert without["class_type"] == "VAEDecode", name
        ksampler = upstream(api, without["inputs"]["samples"])["inputs"]
        assert (ksampler["steps"], ksampler["cfg"], ksampler["seed"]) == (50, 1.0, sampler["seed"]), name
        latent = upstream(api, ksampler["latent_image"])
        if operator["task"].endswith("_inpaint"):  # latent inpainting with the operator's own mask
            assert latent["class_type"] == "SetLatentNoiseMask" and ksampler["denoise"] == 1.0, name
            mask = upstream(api, latent["inputs"]["mask"])
            assert mask["class_type"] == "ImageToMask", name
            assert mask["inputs"]["image"] == [sampler["operator"][0], 1], "the operator's preview is its mask"
            latent = upstream(api, latent["inputs"]["samples"])
        else:  # img2img
            assert ksampler["denoise"] == 0.5, name
        assert latent["class_type"] == "VAEEncode" and latent["inputs"]["pixels"] == sampler["measurement"], name
        with Image.open(wr.UI_DIR / f"{name}.jpg") as picture:
            assert picture.format == "JPEG" and picture.size == (256, 256), name
    assert tasks == DEMO_TASKS, tasks


@pytest.mark.parametrize("name", wr.DEMO_NAMES)
def test_demo_workflow_runs_and_psld_fits_the_measurement(name, comfy_client):
    entry = demo.run_workflow(comfy_client, name)  # the workflow as shipped, plus read-only residual probes
    task, images, metrics = entry["task"], entry["images"], entry["metrics"]
    side = 8 if task == "super_resolution" else 32
    assert images["measurement"].shape == (side, side, 3), images["measurement"].shape
    for panel in ("truth", "psld", "without_psld"):
        assert images[panel].shape == (32, 32, 3), (panel, images[panel].shape)
        assert np.isfinite(images[panel]).all() and images[panel].std() > 0.02, panel
    # the probe is right: y - A x of the truth is the measurement noise, RMS sigma_y = 0.05 (8-bit readout)
    assert abs(metrics["truth"]["residual_rms"] - 0.05) < 0.005, metrics["truth"]
    psld, without = metrics["psld"]["residual_rms"], metrics["without_psld"]["residual_rms"]
    assert np.isfinite([psld, without]).all() and psld < 1.0, metrics
    if task in RESIDUAL_MUST_BEAT:
        assert psld < without, f"{name}: RMS ||A x - y|| {psld:.4f} with PSLD vs {without:.4f} without"
