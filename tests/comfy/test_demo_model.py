"""PSLD_DemoModelLoader and nodes/demo_model.py on the real ComfyUI host (in-process, pack loaded by ComfyUI's own
loader, nodes run under torch.inference_mode()): the bundled demo prior comes out as a ComfyUI ModelPatcher / VAE /
CONDITIONING that core KSampler, VAEEncode, VAEDecode, SetLatentNoiseMask and the PSLD nodes use like an SD
checkpoint's; a missing or foreign file gets an error naming the node, the file and the fix.

The weights file (models/psld_demo_fmnist32.safetensors, made by tools/train_demo_prior.py) is committed with the
pack: a checkout without it fails here.
"""
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import run_node

NODE_ID = "PSLD_DemoModelLoader"
SIDE, LATENT = 32, 8  # demo images and latents


@pytest.fixture(scope="module")
def N(node_classes):
    return node_classes


@pytest.fixture(scope="module")
def demo(pack_module):
    return pack_module("nodes.demo_model")


@pytest.fixture(scope="module")
def weights(demo) -> Path:
    path = Path(demo.DEMO_WEIGHTS)
    assert path.is_file(), f"{path} is missing: it ships with the pack (tools/train_demo_prior.py --stage export)"
    return path


@pytest.fixture(scope="module")
def file_tensors(weights):
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata()


@pytest.fixture(scope="module")
def loaded(N, weights):
    """(model, vae, positive, negative) of the node with subject 'any'."""
    return run_node(N[NODE_ID], subject="any")


@pytest.fixture(scope="module")
def garments(N):
    """The 16 bundled Fashion-MNIST test images (never trained on) as one IMAGE batch [16, 32, 32, 3]."""
    return torch.cat([run_node(N["PSLD_DemoImage"], index=i)[0] for i in range(16)])


def encode(N, vae, image):
    return run_node(N["VAEEncode"], vae=vae, pixels=image)[0]


def decode(N, vae, latent):
    return run_node(N["VAEDecode"], vae=vae, samples=latent)[0]


def ksample(N, model, positive, negative, latent, *, seed=0, cfg=2.0, steps=3, denoise=1.0):
    return run_node(N["KSampler"], model=model, seed=seed, steps=steps, cfg=cfg, sampler_name="euler",
                    scheduler="normal", positive=positive, negative=negative, latent_image=latent,
                    denoise=denoise)[0]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------ schema

def test_schema_subjects_come_from_the_file_and_every_socket_is_explained(N, comfy, demo, file_tensors):
    cls = N[NODE_ID]
    schema = cls.GET_SCHEMA()
    assert schema.category == "image/restoration/PSLD/demo"
    assert comfy.NODE_DISPLAY_NAME_MAPPINGS[NODE_ID] == "PSLD Demo Model Loader"
    assert "32x32" in schema.description and "Fashion-MNIST" in schema.description
    (name, spec), = cls.INPUT_TYPES()["required"].items()
    options = list(spec[1].get("options") or spec[0])  # ("COMBO", {"options"}) on 0.30, ([...], {...}) on 0.3.75
    assert name == "subject" and spec[1]["default"] == "any" and "cfg 1.0" in spec[1]["tooltip"]
    assert options == ["any", *json.loads(file_tensors[1]["classes"])]
    assert [o.get_io_type() for o in schema.outputs] == ["MODEL", "VAE", "CONDITIONING", "CONDITIONING"]
    assert [o.display_name for o in schema.outputs] == ["model", "vae", "positive", "negative"]
    assert all(o.tooltip for o in schema.outputs)


def test_subjects_without_the_file_are_fashion_mnist_s(demo, tmp_path):
    """The schema must load when the weights are missing (the node then says which file is missing)."""
    assert demo.subject_options(tmp_path / "absent.safetensors") == ["any", *demo.FASHION_MNIST_CLASSES]


# ------------------------------------------------------------------------------------------------ what it loads

def test_model_is_an_eps_base_model_with_the_file_s_unet(loaded, file_tensors, pack_module):
    import comfy.model_base
    import comfy.model_patcher
    import comfy.model_sampling
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    model = loaded[0]
    tensors, metadata = file_tensors
    assert isinstance(model, comfy.model_patcher.ModelPatcher)
    assert type(model.model) is comfy.model_base.BaseModel and model.model.model_type.name == "EPS"
    sampling = model.get_model_object("model_sampling")
    assert isinstance(sampling, comfy.model_sampling.ModelSamplingDiscrete)
    assert isinstance(sampling, comfy.model_sampling.EPS)
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2  # SD's discrete schedule
    expected_sigmas = ((1 - torch.cumprod(1 - betas, 0)) / torch.cumprod(1 - betas, 0)) ** 0.5
    torch.testing.assert_close(sampling.sigmas.double(), expected_sigmas, rtol=1e-4, atol=1e-6)
    latent_format = model.get_model_object("latent_format")
    assert latent_format.scale_factor == float(metadata["latent_scale_factor"]) and latent_format.latent_channels == 4
    unet = model.model.diffusion_model
    assert isinstance(unet, UNetModel)
    state = unet.state_dict()
    unet_keys = {k[len("model.diffusion_model."):] for k in tensors if k.startswith("model.diffusion_model.")}
    assert set(state) == unet_keys
    for key in unet_keys:
        assert torch.equal(state[key].cpu(), tensors["model.diffusion_model." + key].to(state[key].dtype)), key
    pack_module("nodes.comfy_bridge").check_model(model, "test")  # what the PSLD nodes accept


def test_vae_is_comfy_s_vae_with_the_file_s_autoencoder_at_ratio_4(loaded, file_tensors):
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    vae = loaded[1]
    tensors, metadata = file_tensors
    assert isinstance(vae, comfy.sd.VAE) and isinstance(vae.first_stage_model, AutoencoderKL)
    assert vae.spacial_compression_encode() == vae.spacial_compression_decode() == int(metadata["downscale_ratio"])
    assert vae.latent_channels == 4 and vae.latent_dim == 2 and vae.output_channels == 3
    state = vae.first_stage_model.state_dict()
    vae_keys = {k[len("first_stage_model."):] for k in tensors if k.startswith("first_stage_model.")}
    assert set(state) == vae_keys
    for key in vae_keys:
        assert torch.equal(state[key].cpu(), tensors["first_stage_model." + key].to(state[key].dtype)), key


def test_conditionings_are_the_class_tokens(N, loaded, file_tensors, weights):
    tokens = file_tensors[0]["conditioning.class_tokens"].float()
    classes = json.loads(file_tensors[1]["classes"])
    null = int(file_tensors[1]["null_class"])
    positive, negative = loaded[2:]
    for conditioning in (positive, negative):
        assert isinstance(conditioning, list) and len(conditioning) == 1 and conditioning[0][1] == {}
        assert conditioning[0][0].shape == (1, 1, tokens.shape[1])
    assert torch.equal(positive[0][0][0, 0], tokens[null]) and torch.equal(negative[0][0][0, 0], tokens[null])
    trouser = run_node(N[NODE_ID], subject="Trouser")
    assert torch.equal(trouser[2][0][0][0, 0], tokens[classes.index("Trouser")])
    assert torch.equal(trouser[3][0][0][0, 0], tokens[null])  # negative is always "any"


# ------------------------------------------------------------------------------------------------ core nodes

def test_vae_encode_decode_round_trip_keeps_each_garment(N, loaded, garments):
    """VAEEncode: 32x32x3 -> 4x8x8; VAEDecode: back to 32x32x3. The reconstructions beat the best constant images by
    far and each is much nearer its own garment than the others on average (the interim file, trained 117 VAE steps:
    mse ratio 0.25, worst own/others ratio 0.61, 14 of 16 nearest their own garment; a trained VAE does better)."""
    vae = loaded[1]
    latent = encode(N, vae, garments)
    assert latent["samples"].shape == (16, 4, LATENT, LATENT) and torch.isfinite(latent["samples"]).all()
    rebuilt = decode(N, vae, latent)
    assert rebuilt.shape == (16, SIDE, SIDE, 3) and torch.isfinite(rebuilt).all()
    gray, truth = rebuilt.mean(-1), garments[..., 0]
    mse = (gray - truth).pow(2).mean((1, 2))
    constant = truth.var((1, 2), unbiased=False)  # mse of the best constant image (each garment's mean)
    assert float(mse.mean() / constant.mean()) < 0.4
    cross = (gray[:, None] - truth[None]).pow(2).mean((2, 3))  # [reconstruction, garment]
    others = (cross.sum(1) - cross.diag()) / 15
    assert (cross.diag() < 0.7 * others).all(), (cross.diag() / others).tolist()
    assert int((cross.argmin(1) == torch.arange(16)).sum()) >= 12  # same-class lookalikes may swap
    assert torch.equal(decode(N, vae, encode(N, vae, garments)), rebuilt)  # deterministic


def test_ksampler_with_the_loader_s_conditionings(N, loaded):
    """Core KSampler at cfg 2 (the standard CFG path): a finite 1x4x8x8 latent, the same for the same seed, and the
    subject matters (its token is the positive prompt)."""
    model, _, positive, negative = loaded
    latent = {"samples": torch.zeros(1, 4, LATENT, LATENT)}
    first = ksample(N, model, positive, negative, latent, seed=1)["samples"]
    assert first.shape == (1, 4, LATENT, LATENT) and torch.isfinite(first).all()
    assert torch.equal(ksample(N, model, positive, negative, latent, seed=1)["samples"], first)
    _, _, bag, anything = run_node(N[NODE_ID], subject="Bag")
    assert not torch.allclose(ksample(N, model, bag, anything, latent, seed=1)["samples"], first)


def test_empty_latent_image_gives_the_demo_latent_at_the_size_each_host_needs(N, loaded):
    """ComfyUI 0.30 resizes an empty latent to the model's latent_format.spacial_downscale_ratio (4 here), so 32 px
    gives the demo's 8x8 latent; older hosts (0.3.75) size EmptyLatentImage for 8x VAEs (32 px -> 4x4), so 64 px is
    what gives it there (the help page's advice)."""
    import comfy.latent_formats

    model, vae, positive, negative = loaded
    rescales = hasattr(comfy.latent_formats.LatentFormat, "spacial_downscale_ratio")
    if not rescales:
        small = run_node(N["EmptyLatentImage"], width=SIDE, height=SIDE, batch_size=1)[0]
        assert small["samples"].shape == (1, 4, SIDE // 8, SIDE // 8)
    side = SIDE if rescales else 2 * SIDE
    empty = run_node(N["EmptyLatentImage"], width=side, height=side, batch_size=1)[0]
    samples = ksample(N, model, positive, negative, empty, cfg=1.0, steps=2)
    assert samples["samples"].shape == (1, 4, LATENT, LATENT)
    assert decode(N, vae, samples).shape == (1, SIDE, SIDE, 3)


def test_set_latent_noise_mask_inpaints_only_the_hole(N, loaded, garments):
    """VAEEncode + SetLatentNoiseMask + KSampler: the latent outside the hole stays the encoded one."""
    model, vae, positive, negative = loaded
    latent = encode(N, vae, garments[1:2])
    mask = torch.zeros(1, SIDE, SIDE)
    mask[:, 8:24, 8:24] = 1.0  # latent cells 2..5 (whole 4 px cells)
    masked = run_node(N["SetLatentNoiseMask"], samples=latent, mask=mask)[0]
    out = ksample(N, model, positive, negative, masked, cfg=1.0, steps=3)["samples"]
    hole = torch.zeros(1, 1, LATENT, LATENT, dtype=torch.bool)
    hole[..., 2:6, 2:6] = True
    kept = (~hole).expand_as(out)
    torch.testing.assert_close(out[kept], latent["samples"][kept], rtol=1e-5, atol=1e-5)
    assert (out - latent["samples"])[hole.expand_as(out)].abs().max() > 1e-2


# ------------------------------------------------------------------------------------------------ PSLD nodes

def test_psld_sampler_restores_a_32_px_box_inpainting(N, loaded, garments):
    model, vae, positive, negative = loaded
    operator = run_node(N["PSLD_LinearOperator"], task="box_inpaint", width=SIDE, height=SIDE, seed=0,
                        projection="paper", box_size=12, box_placement="centred", drop_fraction=0.0, sr_scale="4",
                        sr_mode="bicubic", kernel_size=0, blur_sigma=3.0, motion_intensity=0.5, mask=None)[0]
    measurement = run_node(N["PSLD_Degrade"], image=garments[3:4], operator=operator, sigma_y=0.0, seed=0)[0]
    latent, image = run_node(N["PSLD_Sampler"], model=model, vae=vae, positive=positive, negative=negative,
                             operator=operator, measurement=measurement, seed=0, steps=2, cfg=1.0, eta=0.0,
                             scheduler="ddim_uniform")
    assert latent["samples"].shape == (1, 4, LATENT, LATENT) and torch.isfinite(latent["samples"]).all()
    assert image.shape == (1, SIDE, SIDE, 3) and torch.isfinite(image).all()


def test_operator_sizes_are_checked_against_the_demo_vae_s_own_ratio(loaded, pack_module, input_error):
    """The guider sizes latents by the VAE's ratio: 32 px = 8x8 for the demo (ratio 4), 36 px = 9x9, and 34 px is
    refused naming multiples of 4 (SD's VAE asks for multiples of 8: test_bridge.py)."""
    bridge = pack_module("nodes.comfy_bridge")
    model, vae, _, _ = loaded
    with torch.inference_mode():
        guider = bridge.PSLDGuider(model, vae, node_id="PSLD_Sampler")
    assert guider.latent_shape(2, SIDE, SIDE, "PSLD_Sampler", "operator") == (2, 4, LATENT, LATENT)
    assert guider.latent_shape(1, 36, 36, "PSLD_Sampler", "operator") == (1, 4, 9, 9)
    with pytest.raises(input_error, match="PSLD_Sampler: input 'operator'.*34x34.*multiples of 4"):
        guider.latent_shape(1, 34, 34, "PSLD_Sampler", "operator")


def test_operator_node_accepts_32_px_and_refuses_smaller(N, input_error):
    spec = run_node(N["PSLD_LinearOperator"], task="super_resolution", width=SIDE, height=SIDE, seed=0,
                    projection="paper", box_size=0, box_placement="centred", drop_fraction=0.0, sr_scale="4",
                    sr_mode="bicubic", kernel_size=0, blur_sigma=3.0, motion_intensity=0.5, mask=None)[0]
    assert (spec.width, spec.height) == (SIDE, SIDE) and spec.measurement_shape() == (1, 3, 8, 8)
    assert N["PSLD_LinearOperator"].INPUT_TYPES()["required"]["width"][1]["min"] == 32
    with pytest.raises(input_error) as caught:
        run_node(N["PSLD_LinearOperator"], task="denoise", width=24, height=SIDE, seed=0, projection="paper",
                 box_size=0, box_placement="centred", drop_fraction=0.0, sr_scale="4", sr_mode="bicubic",
                 kernel_size=0, blur_sigma=3.0, motion_intensity=0.5, mask=None)
    assert "width=24" in str(caught.value) and "between 32 and 4096" in str(caught.value)


# ------------------------------------------------------------------------------------------------ cache, isolation

def test_outputs_of_one_run_do_not_leak_into_the_next(N, demo, weights):
    import comfy.lora  # noqa: F401  (ModelPatcher.add_patches' keys)

    first = run_node(N[NODE_ID], subject="Coat")
    second = run_node(N[NODE_ID], subject="Coat")
    assert first[0] is not second[0] and first[0].model is second[0].model  # clones of one loaded model
    key = next(k for k in first[0].model_state_dict() if k.endswith(".weight"))
    first[0].add_patches({key: (torch.zeros_like(first[0].model_state_dict()[key]),)}, 1.0)
    assert first[0].patches and not second[0].patches and not demo.load_demo_prior(weights).model.patches
    with torch.inference_mode():
        first[2][0][0].zero_()
    assert run_node(N[NODE_ID], subject="Coat")[2][0][0].abs().sum() > 0
    assert demo.load_demo_prior(weights) is demo.load_demo_prior(weights)  # loaded once per file version


def test_patchers_can_be_rebuilt_from_the_file_as_core_loaders_allow(demo, weights):
    """cached_patcher_init, as the core loaders set it: ComfyUI 0.30 calls it for the plain copy of a dynamic-VRAM
    patcher (what PSLD's gradients need: comfy_bridge.non_dynamic) and for multi-GPU copies. Checked through
    ModelPatcher.clone(force_deepcopy=True) where the host has it, else by calling the factories."""
    import inspect

    import comfy.model_patcher

    prior = demo.load_demo_prior(weights)
    for patcher in (prior.model, prior.vae.patcher):
        factory, args = patcher.cached_patcher_init
        if "force_deepcopy" in inspect.signature(patcher.clone).parameters:  # ComfyUI 0.30
            with torch.inference_mode():
                fresh = patcher.clone(force_deepcopy=True)
        else:
            fresh = factory(*args, disable_dynamic=True)
        assert type(fresh) is comfy.model_patcher.ModelPatcher and fresh.model is not patcher.model
        assert type(fresh.model) is type(patcher.model)
        ours, theirs = patcher.model.state_dict(), fresh.model.state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_loading_only_reads_the_file_and_a_replaced_file_is_read_again(demo, weights, tmp_path):
    copy = tmp_path / "copy.safetensors"
    shutil.copy2(weights, copy)
    before = (sha256(weights), os.stat(weights).st_mtime_ns, os.stat(weights).st_mode)
    prior = demo.load_demo_prior(copy)  # a path not cached yet: really reads it
    assert sha256(copy) == sha256(weights) and os.stat(copy).st_mtime_ns == os.stat(weights).st_mtime_ns
    assert (sha256(weights), os.stat(weights).st_mtime_ns, os.stat(weights).st_mode) == before
    assert demo.load_demo_prior(copy) is prior
    os.utime(copy, ns=(os.stat(copy).st_atime_ns, os.stat(copy).st_mtime_ns + 10**9))  # "replaced"
    assert demo.load_demo_prior(copy) is not prior


# ------------------------------------------------------------------------------------------------ file errors

def _write(path: Path, metadata: dict, tensors: dict | None = None) -> Path:
    from safetensors.torch import save_file

    save_file(tensors or {"x": torch.zeros(2)}, str(path), metadata=metadata)
    return path


def _message(demo, input_error, path) -> str:
    with pytest.raises(input_error) as caught:
        demo.load_demo_prior(path)
    message = str(caught.value)
    assert message.startswith(f"{NODE_ID}: input 'weights': the demo prior {path}") and " Fix: " in message
    return message


def test_missing_file_names_the_file_and_how_to_get_it(demo, input_error, tmp_path):
    message = _message(demo, input_error, tmp_path / "psld_demo_fmnist32.safetensors")
    assert "is missing" in message and "reinstall comfyui-psld" in message and "train_demo_prior.py" in message


def test_file_of_another_format_is_refused(demo, input_error, tmp_path):
    path = _write(tmp_path / "other.safetensors", {"format": "some-checkpoint/2"})
    message = _message(demo, input_error, path)
    assert "'some-checkpoint/2'" in message and "'psld-demo-prior/1'" in message
    untagged = _message(demo, input_error, _write(tmp_path / "untagged.safetensors", {}))
    assert "format None" in untagged


def test_file_that_is_not_safetensors_is_refused(demo, input_error, tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header at all")
    assert "not a readable safetensors file" in _message(demo, input_error, path)


def test_demo_file_with_missing_metadata_or_weights_is_refused(demo, input_error, tmp_path, file_tensors):
    tensors, metadata = file_tensors
    lacking = {k: v for k, v in metadata.items() if k != "unet_config"}
    assert "lacks the metadata unet_config" in _message(demo, input_error,
                                                        _write(tmp_path / "a.safetensors", lacking))
    bad_json = {**metadata, "classes": "[not json"}
    assert "'classes' that is not valid JSON" in _message(demo, input_error,
                                                         _write(tmp_path / "b.safetensors", bad_json))
    no_unet = {k: v for k, v in tensors.items() if not k.startswith("model.diffusion_model.")}
    assert "has no model.diffusion_model.* weights" in _message(
        demo, input_error, _write(tmp_path / "c.safetensors", metadata, no_unet))
    short_unet = {k: v for k, v in tensors.items() if not k.endswith("out.2.bias")}
    assert "UNet weights that do not match its own config (missing: out.2.bias)" in _message(
        demo, input_error, _write(tmp_path / "d.safetensors", metadata, short_unet))
    eps_only = {**metadata, "prediction": "v"}
    assert "prediction='v'" in _message(demo, input_error, _write(tmp_path / "e.safetensors", eps_only, tensors))


def test_unknown_subject_names_the_input_and_the_choices(demo, weights, input_error):
    with pytest.raises(input_error) as caught:
        demo.load_demo_prior(weights).conditioning("Hat")
    message = str(caught.value)
    assert message.startswith(f"{NODE_ID}: input 'subject': subject='Hat'") and "any, T-shirt/top" in message
