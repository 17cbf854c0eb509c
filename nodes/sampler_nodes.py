"""PSLD sampling nodes: the all-in-one PSLD_Sampler, and PSLD_Guider + PSLD_PosteriorSampler for
SamplerCustomAdvanced. Thin: the work is in comfy_bridge.py (models) and bridge_sampler.py (the sampler)."""
from __future__ import annotations

import math

import comfy.samplers
from comfy_api.latest import io

from .bridge_sampler import PSLDRun, psld_sampler, run_psld
from .comfy_bridge import MEMORY_MODES, PSLDGuider
from .errors import PSLDInputError
from .loss_nodes import LossSocket
from .loss_settings import LossSettings, resolve_loss
from .measurement import measurement_from_image
from .operator_nodes import OPERATOR_TOOLTIP, LinearOperatorSocket, checked_spec

CATEGORY = "image/restoration/PSLD"
SEED_MAX = 0xFFFFFFFFFFFFFFFF
STEPS_MAX = 10000
CFG_MAX = 100.0

TIP = {
    "model": "The diffusion model (SD 1.x, SD 2.x or SDXL; flow models such as SD3 and Flux are not supported). "
             "It is not modified, and its weights are used as they are (never copied).",
    "vae": "The VAE of the same checkpoint. PSLD decodes and re-encodes through it at every step (with gradients); "
           "it is not modified.",
    "positive": "Prompt conditioning. The paper used an empty prompt; describing the image can help.",
    "negative": "Negative prompt conditioning (only used when cfg is not 1).",
    "cfg": "Classifier-free guidance scale. 1 = the positive prompt only, at half the cost. The reference code used "
           "7.5 with empty prompts, which gives the same result as 1.",
    "operator": OPERATOR_TOOLTIP + " The output image has its width x height.",
    "measurement": "The measurement y: PSLD_Degrade's output, or your degraded image in the operator's measurement "
                   "space (the small image for super-resolution). One image is shared by every sample of a batch.",
    "loss": "Optional PSLD objective from PSLD_GluingLoss. Not connected: the reference weights for the "
            "operator's task (omega 1, gamma 0.1; box inpainting 0.1 / 0.01).",
    "eta": "DDIM stochasticity: 0 = deterministic DDIM (reference), 1 = fully stochastic (DDPM-like).",
    "seed": "Seed of the initial noise (and of the DDIM noise when eta > 0). Same seed, same result.",
    "steps": "Number of denoising steps, each with a gradient through UNet, decoder and encoder. The paper uses "
             "1000 (its weights were tuned for that); 50-200 is a practical range.",
    "scheduler": "Noise schedule. ddim_uniform reproduces the reference code's DDIM timesteps.",
    "memory": "How a gradient step uses memory. fast: stores every activation of UNet, decoder and encoder for the "
              "backward pass. low: stores only block inputs and recomputes the rest in the backward pass (the same "
              "result up to float rounding; less memory, slower). auto: fast when ComfyUI reports enough free "
              "memory for it, else low (the log says which). Weights are never copied in any mode.",
}


def _unique_id(cls) -> str | None:
    hidden = getattr(cls, "hidden", None)
    return getattr(hidden, "unique_id", None) if hidden is not None else None


def _checked_number(node_id: str, name: str, value, low: float, high: float, fix: str, integer=False):
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not (math.isfinite(value) and low <= value <= high):
        raise PSLDInputError(node_id, name, f"{name}={value!r} is not allowed.", fix)
    return value


def _checked_conditioning(node_id: str, name: str, value) -> list:
    if not isinstance(value, list) or not value:
        raise PSLDInputError(node_id, name, f"expected a CONDITIONING, got {type(value).__name__}.",
                             "connect the output of a CLIPTextEncode (an empty prompt is fine).")
    return value


def _checked_loss(node_id: str, loss) -> LossSettings | None:
    if loss is not None and not isinstance(loss, LossSettings):
        raise PSLDInputError(node_id, "loss", f"expected a PSLD loss, got {type(loss).__name__}.",
                             "connect the loss output of PSLD_GluingLoss, or leave the input empty.")
    return loss


def _checked_eta(node_id: str, eta) -> float:
    return float(_checked_number(node_id, "eta", eta, 0.0, 1.0, "use a value in [0, 1] (0 = deterministic DDIM)."))


def make_run(node_id: str, operator, measurement, loss, eta, unique_id) -> PSLDRun:
    """Check the operator, measurement, loss and eta inputs and bundle them (before any model work)."""
    spec = checked_spec(operator, node_id)
    psld_loss, spec = resolve_loss(_checked_loss(node_id, loss), spec)
    y = measurement_from_image(measurement, spec, node_id=node_id, input_name="measurement")
    return PSLDRun(spec=spec, y=y, loss=psld_loss, eta=_checked_eta(node_id, eta), node_id=node_id,
                   unique_id=unique_id)


def make_guider(node_id: str, model, vae, positive, negative, cfg, memory="auto") -> PSLDGuider:
    _checked_number(node_id, "cfg", cfg, 0.0, CFG_MAX, f"use a guidance scale in [0, {CFG_MAX:g}] (1 = no CFG).")
    positive = _checked_conditioning(node_id, "positive", positive)
    negative = _checked_conditioning(node_id, "negative", negative)
    guider = PSLDGuider(model, vae, node_id=node_id, memory=memory)
    guider.set_conds(positive, negative)
    guider.set_cfg(float(cfg))
    return guider


class PSLDSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PSLD_Sampler",
            display_name="PSLD Sampler",
            category=CATEGORY,
            description=("Restores an image from a degraded measurement with PSLD (Rout et al., NeurIPS 2023): DDIM "
                         "sampling on your own model, with a gradient step at every step that pulls the decoded "
                         "image towards the measurement and keeps the latent on the autoencoder's manifold. "
                         "All-in-one: for the composable version use PSLD_Guider + PSLD_PosteriorSampler with "
                         "SamplerCustomAdvanced."),
            inputs=[
                io.Model.Input("model", tooltip=TIP["model"]),
                io.Vae.Input("vae", tooltip=TIP["vae"]),
                io.Conditioning.Input("positive", tooltip=TIP["positive"]),
                io.Conditioning.Input("negative", tooltip=TIP["negative"]),
                LinearOperatorSocket.Input("operator", tooltip=TIP["operator"]),
                io.Image.Input("measurement", tooltip=TIP["measurement"]),
                LossSocket.Input("loss", optional=True, tooltip=TIP["loss"]),
                io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                             tooltip=TIP["seed"]),
                io.Int.Input("steps", default=50, min=1, max=STEPS_MAX, tooltip=TIP["steps"]),
                io.Float.Input("cfg", default=1.0, min=0.0, max=CFG_MAX, step=0.1, round=0.01,
                               tooltip=TIP["cfg"]),
                io.Float.Input("eta", default=0.0, min=0.0, max=1.0, step=0.01, tooltip=TIP["eta"]),
                io.Combo.Input("scheduler", options=list(comfy.samplers.SCHEDULER_NAMES), default="ddim_uniform",
                               tooltip=TIP["scheduler"]),
                io.Combo.Input("memory", options=list(MEMORY_MODES), default="auto", optional=True,
                               tooltip=TIP["memory"]),
            ],
            outputs=[
                io.Latent.Output(display_name="latent",
                                 tooltip="The restored latent (decode it with any VAE node, or refine it)."),
                io.Image.Output(display_name="image",
                                tooltip="The restored image, decoded with your VAE exactly as VAEDecode does."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, *, model, vae, positive, negative, operator, measurement, seed, steps, cfg, eta, scheduler,
                memory="auto", loss=None) -> io.NodeOutput:
        node_id = "PSLD_Sampler"
        run = make_run(node_id, operator, measurement, loss, eta, _unique_id(cls))
        _checked_number(node_id, "seed", seed, 0, SEED_MAX, "use an integer seed >= 0.", integer=True)
        _checked_number(node_id, "steps", steps, 1, STEPS_MAX, f"use 1 to {STEPS_MAX} steps (paper: 1000).",
                        integer=True)
        if scheduler not in comfy.samplers.SCHEDULER_NAMES:
            raise PSLDInputError(node_id, "scheduler", f"scheduler={scheduler!r} is unknown.",
                                 "choose one of " + ", ".join(comfy.samplers.SCHEDULER_NAMES) + ".")
        guider = make_guider(node_id, model, vae, positive, negative, cfg, memory)
        samples = run_psld(guider, run, seed=seed, steps=steps, scheduler=scheduler)
        images = vae.decode(samples)  # the user's VAE, as VAEDecode: no gradient needed for the output
        if images.ndim == 5:
            images = images.reshape(-1, *images.shape[-3:])
        return io.NodeOutput({"samples": samples}, images)


class PSLDGuiderNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PSLD_Guider",
            display_name="PSLD Guider",
            category=CATEGORY,
            description=("CFG guider for PSLD: holds clones of your MODEL and VAE ready for gradients (the originals "
                         "are not modified) for PSLD_PosteriorSampler. Connect to SamplerCustomAdvanced's guider "
                         "input, with a ddim_uniform BasicScheduler and an empty latent of the operator's size."),
            inputs=[
                io.Model.Input("model", tooltip=TIP["model"]),
                io.Vae.Input("vae", tooltip=TIP["vae"]),
                io.Conditioning.Input("positive", tooltip=TIP["positive"]),
                io.Conditioning.Input("negative", tooltip=TIP["negative"]),
                io.Float.Input("cfg", default=1.0, min=0.0, max=CFG_MAX, step=0.1, round=0.01,
                               tooltip=TIP["cfg"]),
                io.Combo.Input("memory", options=list(MEMORY_MODES), default="auto", optional=True,
                               tooltip=TIP["memory"]),
            ],
            outputs=[
                io.Guider.Output(display_name="guider",
                                 tooltip="CFG guider with the VAE attached; only PSLD_PosteriorSampler needs it, "
                                         "other samplers run with it as with CFGGuider."),
            ],
        )

    @classmethod
    def execute(cls, *, model, vae, positive, negative, cfg, memory="auto") -> io.NodeOutput:
        return io.NodeOutput(make_guider("PSLD_Guider", model, vae, positive, negative, cfg, memory))


class PSLDPosteriorSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PSLD_PosteriorSampler",
            display_name="PSLD Posterior Sampler",
            category=CATEGORY,
            description=("PSLD posterior sampling (Rout et al., NeurIPS 2023) as a SAMPLER for "
                         "SamplerCustomAdvanced: DDIM plus a gradient step per step towards the measurement. Needs "
                         "PSLD_Guider as the guider; the latent must have the operator's image size."),
            inputs=[
                LinearOperatorSocket.Input("operator", tooltip=TIP["operator"]),
                io.Image.Input("measurement", tooltip=TIP["measurement"]),
                LossSocket.Input("loss", optional=True, tooltip=TIP["loss"]),
                io.Float.Input("eta", default=0.0, min=0.0, max=1.0, step=0.01, tooltip=TIP["eta"]),
            ],
            outputs=[
                io.Sampler.Output(display_name="sampler",
                                  tooltip="The PSLD sampler, for SamplerCustomAdvanced's sampler input (with "
                                          "PSLD_Guider and a ddim_uniform BasicScheduler)."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, *, operator, measurement, eta, loss=None) -> io.NodeOutput:
        run = make_run("PSLD_PosteriorSampler", operator, measurement, loss, eta, _unique_id(cls))
        return io.NodeOutput(psld_sampler(run))


NODES = [PSLDSampler, PSLDGuiderNode, PSLDPosteriorSampler]
