"""The example workflows' API forms (tests/server/workflows/, written by tools/make_workflows.py) made runnable on a
CPU test server, the test checkpoint they run on, and the measurement check the server tests apply to the results.

The only changes to a workflow are the ones a CPU run needs, all in `for_cpu`: the tiny test checkpoint instead of
the SD 1.5 file name, SIZE x SIZE images instead of 512 x 512, STEPS steps, and the test's uploaded photos in the
LoadImage nodes. `with_probes` adds nodes that only read: A x_hat (PSLD_Degrade with sigma_y 0 on the result, which
also refuses a NaN/Inf image) and the measurement y, both as PreviewImage outputs. `unguided` gives the fair
comparison: the same graph, seed, noise, scheduler and steps with the PSLD objective switched off (a PSLD_GluingLoss
with omega = gamma = 0, which the sampler runs as plain DDIM).
"""
from __future__ import annotations

import copy
import io
import json
import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
API_DIR = REPO / "tests" / "server" / "workflows"
UI_DIR = REPO / "example_workflows"
NAMES = sorted(p.stem for p in API_DIR.glob("*.json"))
DEMO_API_DIR = UI_DIR / "api"  # the demo-model workflows (run as they are; `make demo` reads them there too)
DEMO_NAMES = sorted(p.stem for p in DEMO_API_DIR.glob("*.json"))

SIZE = 96  # image side on CPU (12x12 latent); 64 would not fit the default half-side box with its 16 px margins
STEPS = 8
SR_FACTOR = 4  # the super-resolution workflow's sr_scale
SAMPLERS = ("PSLD_Sampler", "PSLD_PosteriorSampler")
PROBE_AX, PROBE_AX_VIEW, PROBE_Y_VIEW, UNGUIDED_LOSS = "901", "902", "903", "904"

# LoadImage file names used by the workflows -> what the test uploads in their place
PHOTO, SMALL_PHOTO, HOLE_PHOTO = "astronaut_512.png", "astronaut_128.png", "astronaut_512_hole.png"


# -- the test checkpoint -----------------------------------------------------------------------------------------
#
# The tiny random checkpoint (tests/helpers/tiny_models.py) cannot show measurement consistency: its random TAESD
# decoder cannot represent a photo (300 Adam steps on the latent still leave 66-72 % of the residual ||D(z) - y||),
# and its random UNet's noise predictions push the latent far into the decoder's saturated range. The example
# workflows therefore run on a derived checkpoint with the same layout, the same CLIP and structured weights that
# make PSLD's task well posed at tiny scale:
#   UNet: eps(x) = each latent channel of the input standardised over the image (mean 0, std 1), a Gaussian-prior-like
#         denoiser (x0 = x - sigma * eps shrinks the input towards its mean at high noise and keeps it at low noise)
#   VAE:  "pixel blocks": decode = nearest x8 upsampling of RGB = 0.5 + GAIN * (latent channels 0-2), encode = its
#         inverse on the top-left pixel of every 8x8 block.
# Every layer still runs (zero weights included), through ComfyUI's own loader, model classes and samplers.

STRUCTURED_CHECKPOINT = "psld_tiny_sd15_structured.safetensors"
STRUCTURED_VERSION = "1"
GAIN = 0.25  # image units (0..1) per latent unit, in the decoder's linear range for latents of order one
UNET_PREFIX, VAE_PREFIX = "model.diffusion_model.", "first_stage_model.taesd_"
CHANNELS, LATENT_CHANNELS, HALF = 320, 4, 40  # UNet width; 80 UNet channels per latent channel: 40 x (+z), 40 x (-z)


def _identity_taps(out_channels: int, in_channels: int, pairs) -> np.ndarray:
    """A 3x3 conv weight whose centre taps are `pairs` = [(out, in, value)], zero elsewhere."""
    weight = np.zeros((out_channels, in_channels, 3, 3), dtype=np.float32)
    for out, source, value in pairs:
        weight[out, source, 1, 1] = value
    return weight


def structured_unet_tensor(name: str, shape: tuple) -> np.ndarray | None:
    """Weights of the standardising UNet; None keeps the random tensor (its branch is switched off)."""
    plus = [(c, c * 2 * HALF + j) for c in range(LATENT_CHANNELS) for j in range(HALF)]
    minus = [(c, c * 2 * HALF + HALF + j) for c in range(LATENT_CHANNELS) for j in range(HALF)]
    if name == "input_blocks.0.0.weight":  # latent channel c -> 40 channels of +z_c and 40 of -z_c
        return _identity_taps(CHANNELS, LATENT_CHANNELS,
                              [(u, c, 1.0) for c, u in plus] + [(u, c, -1.0) for c, u in minus])
    if name == "out.2.weight":  # GroupNorm makes each group of 10 equal channels a standardised +z_c or -z_c;
        # mean over the pairs of SiLU(n) - SiLU(-n) = n gives eps_c = standardised z_c
        return _identity_taps(LATENT_CHANNELS, CHANNELS, [(c, u, 1 / HALF) for c, u in plus]
                              + [(c, u, -1 / HALF) for c, u in minus])
    if name == "out.0.weight":  # the output GroupNorm: plain standardisation
        return np.ones(shape, dtype=np.float32)
    if name.endswith("skip_connection.weight"):  # output blocks: mean of the two concatenated (equal) inputs
        weight = np.zeros(shape, dtype=np.float32)
        for i in range(CHANNELS):
            weight[i, i, 0, 0] = weight[i, CHANNELS + i, 0, 0] = 0.5
        return weight
    if name in ("input_blocks.0.0.bias", "out.0.bias", "out.2.bias") or name.endswith(
            ("out_layers.3.weight", "out_layers.3.bias", "proj_out.weight", "proj_out.bias", "skip_connection.bias")):
        return np.zeros(shape, dtype=np.float32)  # residual branches off: every block passes its input through
    return None


def structured_vae_tensor(name: str, shape: tuple) -> np.ndarray:
    """Weights of the pixel-block TAESD (keys below first_stage_model.taesd_)."""
    part, rest = name.split(".", 1)
    index, key = rest.split(".", 1)
    zero = np.zeros(shape, dtype=np.float32)
    if key.startswith("conv."):  # a Block's residual branch: off, so Block = ReLU(x) = x on its >= 0 input
        return zero
    if key == "bias":
        if part == "decoder" and shape == (3,):
            return zero + 0.5  # RGB 0..1 around mid grey
        if part == "encoder" and shape == (64,) and index == "0":
            bias = zero.copy()
            bias[:3], bias[3:6] = -0.5, 0.5  # centre the RGB input (0..1) on mid grey before the +/- split
            return bias
        return zero
    if shape[:2] == (64, 64):  # plain 3x3 conv (after an upsampling, or with stride 2): pass through
        return _identity_taps(64, 64, [(c, c, 1.0) for c in range(64)])
    if part == "decoder" and shape[1] == LATENT_CHANNELS:  # latent -> (+z, -z) so the ReLUs keep the sign
        return _identity_taps(64, LATENT_CHANNELS, [(c, c, 1.0) for c in range(LATENT_CHANNELS)]
                              + [(c + LATENT_CHANNELS, c, -1.0) for c in range(LATENT_CHANNELS)])
    if part == "decoder" and shape[0] == 3:  # (+z, -z) -> RGB = GAIN * z_0..2
        return _identity_taps(3, 64, [(k, k, GAIN) for k in range(3)] + [(k, k + LATENT_CHANNELS, -GAIN)
                                                                          for k in range(3)])
    if part == "encoder" and shape[1] == 3:  # RGB - 0.5 -> (+, -)
        return _identity_taps(64, 3, [(k, k, 1.0) for k in range(3)] + [(k + 3, k, -1.0) for k in range(3)])
    if part == "encoder" and shape[0] == LATENT_CHANNELS:  # (+, -) -> z_0..2 = (RGB - 0.5) / GAIN, z_3 = 0
        return _identity_taps(LATENT_CHANNELS, 64, [(k, k, 1 / GAIN) for k in range(3)]
                              + [(k, k + 3, -1 / GAIN) for k in range(3)])
    raise ValueError(f"unexpected TAESD tensor {name} {shape}")


def ensure_structured_checkpoint(tiny_models: dict) -> str:
    """Write (once) the structured checkpoint next to the tiny one; returns its name for CheckpointLoaderSimple."""
    import torch
    from safetensors.torch import load_file, save_file

    source = Path(tiny_models["checkpoint_path"])
    target = source.with_name(STRUCTURED_CHECKPOINT)
    stamp = f"{STRUCTURED_VERSION}:{source.stat().st_size}:{int(source.stat().st_mtime)}"
    if target.exists():
        from safetensors import safe_open

        with safe_open(str(target), "pt") as existing:
            if (existing.metadata() or {}).get("psld_structured") == stamp:
                return STRUCTURED_CHECKPOINT
    tensors = load_file(str(source))
    for key, tensor in tensors.items():
        value = None
        if key.startswith(UNET_PREFIX):
            value = structured_unet_tensor(key[len(UNET_PREFIX):], tuple(tensor.shape))
        elif key.startswith(VAE_PREFIX):
            value = structured_vae_tensor(key[len(VAE_PREFIX):], tuple(tensor.shape))
        if value is not None:
            tensors[key] = torch.from_numpy(value).to(tensor.dtype)
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    save_file(tensors, str(partial), metadata={"psld_structured": stamp})
    partial.replace(target)  # atomic: the current and floor test runs share the models folder
    return STRUCTURED_CHECKPOINT


def load_api(name: str) -> dict:
    return json.loads(((DEMO_API_DIR if name in DEMO_NAMES else API_DIR) / f"{name}.json").read_text())


def only(api: dict, class_types) -> str:
    """Id of the single node of one of these types (the tests rely on the workflows having exactly one)."""
    class_types = (class_types,) if isinstance(class_types, str) else tuple(class_types)
    found = [i for i, node in api.items() if node["class_type"] in class_types]
    assert len(found) == 1, f"expected one {class_types} node, found {found}"
    return found[0]


# -- test photos ------------------------------------------------------------------------------------------------

def png_bytes(picture) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def photos_for_tests(size: int = SIZE) -> dict[str, bytes]:
    """The bundled photo at size (RGB), at size / 4 (the SR measurement), and at size as RGBA with a transparent
    ellipse (LoadImage's MASK = 1 - alpha marks it as the hole), keyed by the workflow file names they replace."""
    from PIL import Image, ImageDraw

    photo = Image.open(REPO / "tests" / "data" / "astronaut_512.png").convert("RGB")
    photo = photo.resize((size, size), Image.Resampling.LANCZOS)
    small = Image.open(REPO / "tests" / "data" / "astronaut_128.png").convert("RGB")
    small = small.resize((size // SR_FACTOR, size // SR_FACTOR), Image.Resampling.LANCZOS)
    alpha = Image.new("L", (size, size), 255)
    ImageDraw.Draw(alpha).ellipse([0.30 * size, 0.12 * size, 0.72 * size, 0.50 * size], fill=0)
    holed = photo.copy()
    holed.putalpha(alpha)
    return {PHOTO: png_bytes(photo), SMALL_PHOTO: png_bytes(small), HOLE_PHOTO: png_bytes(holed)}


def upload_test_photos(client) -> dict[str, str]:
    """Upload the test photos; returns workflow file name -> uploaded name."""
    return {name: client.upload_image(data, f"psld_test_{SIZE}_{name}") for name, data in photos_for_tests().items()}


# -- workflow edits ----------------------------------------------------------------------------------------------

def for_cpu(api: dict, *, checkpoint: str, images: dict[str, str], size: int = SIZE, steps: int = STEPS) -> dict:
    """The workflow with only what a CPU test run needs changed (a new dict)."""
    api = copy.deepcopy(api)
    for node in api.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = checkpoint
        elif kind in ("PSLD_LinearOperator", "EmptyLatentImage"):
            inputs["width"] = inputs["height"] = size
        elif kind in ("PSLD_Sampler", "BasicScheduler"):
            inputs["steps"] = steps
        elif kind == "LoadImage":
            inputs["image"] = images[inputs["image"]]
    return api


def with_probes(api: dict) -> dict:
    """Add read-only outputs: A x_hat (PSLD_Degrade, sigma_y 0, of the saved result) and the measurement y."""
    api = copy.deepcopy(api)
    operator = only(api, "PSLD_LinearOperator")
    sampler = only(api, SAMPLERS)
    result = api[only(api, "SaveImage")]["inputs"]["images"]
    api[PROBE_AX] = {"class_type": "PSLD_Degrade",
                     "inputs": {"image": result, "operator": [operator, 0], "sigma_y": 0.0, "seed": 0}}
    api[PROBE_AX_VIEW] = {"class_type": "PreviewImage", "inputs": {"images": [PROBE_AX, 0]}}
    api[PROBE_Y_VIEW] = {"class_type": "PreviewImage", "inputs": {"images": api[sampler]["inputs"]["measurement"]}}
    return api


def measurement_only(api: dict) -> dict:
    """Only the part of the workflow that makes the sampler's measurement y, with y as a PreviewImage output."""
    measurement = api[only(api, SAMPLERS)]["inputs"]["measurement"]
    needed, todo = set(), [measurement[0]]
    while todo:
        node_id = todo.pop()
        if node_id not in needed:
            needed.add(node_id)
            todo += [value[0] for value in api[node_id]["inputs"].values() if isinstance(value, list)]
    part = {node_id: copy.deepcopy(api[node_id]) for node_id in needed}
    part[PROBE_Y_VIEW] = {"class_type": "PreviewImage", "inputs": {"images": measurement}}
    return part


def unguided(api: dict) -> dict:
    """The same graph with the PSLD objective off: the sampler's loss is a PSLD_GluingLoss with omega = gamma = 0
    (an existing loss node is switched off; otherwise one is added with its other settings at their defaults)."""
    api = copy.deepcopy(api)
    sampler = api[only(api, SAMPLERS)]
    if "loss" in sampler["inputs"]:
        loss = api[sampler["inputs"]["loss"][0]]["inputs"]
    else:
        loss = {"variant": "PSLD", "norm": "norm", "projection": "operator", "fresh_noise": 0.0,
                "detach_gluing_target": False}
        api[UNGUIDED_LOSS] = {"class_type": "PSLD_GluingLoss", "inputs": loss}
        sampler["inputs"]["loss"] = [UNGUIDED_LOSS, 0]
    loss["omega"] = loss["gamma"] = 0.0
    return api


# -- results -----------------------------------------------------------------------------------------------------

def output_image(client, result, node_id: str) -> np.ndarray:
    assert node_id in result.outputs, (f"node {node_id} gave no output (ComfyUI skips an output whose inputs failed "
                                       f"validation); outputs: {sorted(result.outputs)}")
    images = result.outputs[node_id]["images"]
    assert len(images) == 1, images
    return client.image(images[0])


def measurement_residual(client, result) -> float:
    """||A x_hat - y|| (l2 over all pixels, in 0..1 image units) from the probe outputs of a run."""
    ax = output_image(client, result, PROBE_AX_VIEW).astype(np.float64)
    y = output_image(client, result, PROBE_Y_VIEW).astype(np.float64)
    assert ax.shape == y.shape, (ax.shape, y.shape)
    return float(np.linalg.norm(ax - y))
