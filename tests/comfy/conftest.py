"""Fixtures for the PSLD sampling tests (test_bridge, test_sampler_nodes, test_model_families).

Everything runs on the real ComfyUI host loaded in-process by tests/conftest.py's `comfy` fixture: the tiny random
SD1.5 checkpoint is loaded by ComfyUI's own CheckpointLoaderSimple, prompts by CLIPTextEncode, and every node call
happens inside torch.inference_mode(), as ComfyUI's executor runs nodes.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch

SIZE = 64  # image side in px (latent 8 x 8): the smallest operator size
OPERATOR_DEFAULTS = dict(width=SIZE, height=SIZE, seed=0, projection="paper", box_size=0, box_placement="centred",
                         drop_fraction=0.0, sr_scale="4", sr_mode="bicubic", kernel_size=0, blur_sigma=3.0,
                         motion_intensity=0.5)
LOSS_DEFAULTS = dict(omega=1.0, gamma=0.1, variant="PSLD", norm="norm", projection="operator", fresh_noise=0.0,
                     detach_gluing_target=False, gradient="full")
PHOTO = Path(__file__).resolve().parents[1] / "data" / "astronaut_128.png"


def run_node(node_class, **inputs) -> tuple:
    """Run a V1 or V3 node as ComfyUI's executor does (inside torch.inference_mode()); its outputs as a tuple."""
    with torch.inference_mode():
        if hasattr(node_class, "GET_SCHEMA"):  # V3: classmethod execute -> io.NodeOutput
            return tuple(node_class.execute(**inputs).result)
        output = getattr(node_class(), node_class.FUNCTION)(**inputs)
        return tuple(output["result"] if isinstance(output, dict) else output)


def probe_in_sampler(guider, probe, *, latent_shape=(1, 4, SIZE // 8, SIZE // 8), sigma_index=1, steps=4, seed=0):
    """Run `probe(model, x, sigma, extra_args)` inside guider.sample (called under inference mode, as
    SamplerCustomAdvanced calls it) at the sigma_index-th ddim_uniform noise level; returns the probe's result.
    `model` is what every ComfyUI sampler function gets: model(x, sigma, **extra_args) is the CFG-combined x0."""
    import comfy.samplers

    found = {}

    def sampler_function(model, x, sigmas, extra_args=None, callback=None, disable=None):
        found["result"] = probe(model, x, sigmas[sigma_index] * x.new_ones(x.shape[0]), extra_args)
        return x

    with torch.inference_mode():
        latent = torch.zeros(latent_shape)
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
        sampling = guider.model_patcher.get_model_object("model_sampling")
        sigmas = comfy.samplers.calculate_sigmas(sampling, "ddim_uniform", steps)
        guider.sample(noise, latent, comfy.samplers.KSAMPLER(sampler_function), sigmas, seed=seed)
    return found["result"]


@pytest.fixture(scope="session")
def node_classes(comfy) -> dict:
    return comfy.NODE_CLASS_MAPPINGS


@pytest.fixture(scope="session")
def pack_module(node_classes):
    """Import a module of the pack as ComfyUI loaded it (the same module objects the registered nodes use)."""
    root = node_classes["PSLD_Sampler"].__module__.rsplit(".nodes.", 1)[0]
    return lambda name: importlib.import_module(f"{root}.{name}")


@pytest.fixture(scope="session")
def input_error(pack_module):
    return pack_module("nodes.errors").PSLDInputError


@pytest.fixture(scope="session")
def sd15(node_classes, tiny_checkpoint):
    """(MODEL, CLIP, VAE) of the tiny checkpoint, loaded by CheckpointLoaderSimple."""
    return run_node(node_classes["CheckpointLoaderSimple"], ckpt_name=tiny_checkpoint)[:3]


@pytest.fixture(scope="session")
def prompts(node_classes, sd15):
    """(positive, negative) CONDITIONING from CLIPTextEncode."""
    encode = node_classes["CLIPTextEncode"]
    positive = run_node(encode, clip=sd15[1], text="a photo of an astronaut")[0]
    negative = run_node(encode, clip=sd15[1], text="")[0]
    return positive, negative


@pytest.fixture(scope="session")
def photo():
    """The bundled test photo at SIZE x SIZE as a ComfyUI IMAGE [1, H, W, 3] in [0, 1]."""
    from PIL import Image
    picture = Image.open(PHOTO).convert("RGB").resize((SIZE, SIZE), Image.BICUBIC)
    return torch.from_numpy(np.array(picture, dtype=np.float32) / 255.0)[None]


@pytest.fixture(scope="session")
def make_operator(node_classes):
    def make(task="box_inpaint", mask=None, **settings):
        return run_node(node_classes["PSLD_LinearOperator"], task=task, mask=mask,
                        **{**OPERATOR_DEFAULTS, **settings})[0]
    return make


@pytest.fixture(scope="session")
def degrade(node_classes):
    def make(image, operator, sigma_y=0.0, seed=0):
        return run_node(node_classes["PSLD_Degrade"], image=image, operator=operator, sigma_y=sigma_y, seed=seed)[0]
    return make


@pytest.fixture(scope="session")
def make_loss(node_classes):
    def make(**settings):
        return run_node(node_classes["PSLD_GluingLoss"], **{**LOSS_DEFAULTS, **settings})[0]
    return make


@pytest.fixture(scope="session")
def psld_sample(node_classes, sd15, prompts):
    """Run PSLD_Sampler on the tiny checkpoint; returns (LATENT, IMAGE)."""
    def sample(operator, measurement, *, loss=None, seed=0, steps=2, cfg=1.0, eta=0.0, scheduler="ddim_uniform",
               model=None, vae=None, positive=None, negative=None, memory="auto"):
        inputs = dict(model=model or sd15[0], vae=vae or sd15[2], positive=positive or prompts[0],
                      negative=negative or prompts[1], operator=operator, measurement=measurement, seed=seed,
                      steps=steps, cfg=cfg, eta=eta, scheduler=scheduler, memory=memory)
        if loss is not None:
            inputs["loss"] = loss
        return run_node(node_classes["PSLD_Sampler"], **inputs)
    return sample
