"""The bridge between ComfyUI's MODEL / VAE and psld/: gradients through the user's own models, never touching them.

ComfyUI runs every node under torch.inference_mode(), so the weights of a loaded MODEL or VAE (and the
conditionings upstream nodes made) are inference tensors that autograd cannot save for the backward pass. The
recipe (docs/architecture.md, "Bridge"):

1. Dynamic VRAM (ComfyUI >= 0.30 on NVIDIA): weights are views into memory that is refilled layer by layer, so a
   weight held by reference until the backward pass could hold another layer's data by then. Such a patcher is
   swapped for its non-dynamic delegate first.
2. Weights by reference: psld.sampling opens psld.memory.weights_by_reference() around each gradient step, so every
   inference tensor or parameter an operation receives enters autograd as a plain alias of the same memory. No
   weight is copied and no weight gradient is computed; LoRA and other patches are baked into the weights the
   layers run with, so the patched weight is what the gradient sees. Layers that ComfyUI casts per forward
   (manual cast, e.g. fp8 stored weights, or partially loaded models) hand autograd their cast copy, which lives
   until the backward pass in `fast` memory mode and only while its block is recomputed in `low` mode.
3. Memory modes: `low` recomputes the activations of the UNet's and the VAE's blocks in the backward pass instead
   of storing them (psld.memory.checkpointed_forwards over `checkpoint_blocks`); `fast` stores them; `auto`
   picks from ComfyUI's own memory estimates and the free memory it reports (`choose_memory_mode`).
4. Attention backends without a backward pass (sage, flash) are replaced by PyTorch attention through
   transformer_options["optimized_attention_override"] while gradients are on, on a clone of the user's patcher.
5. Models are loaded with comfy.model_management.load_models_gpu (through the guider's prepare_sampling), never
   patch_model; the VAE clone rides along as an additional model of the UNet clone.
6. The VAE in the gradient path is its first_stage_model.decode / encode with the model's latent format, never
   VAE.decode / VAE.encode (those clamp, change device, and fall back to tiled code under inference mode).
"""
from __future__ import annotations

import logging

import torch

import comfy.model_management
import comfy.model_sampling
import comfy.samplers
from comfy.ldm.modules import attention as comfy_attention

from ..psld.memory import checkpointed_forwards, gradients_on
from .errors import PSLDInputError

PSLD_KEY = "psld"
SUPPORTED_FAMILIES = "SD 1.x, SD 2.x (including v-prediction) and SDXL"
FLOW_MODEL_TYPES = ("FLOW", "FLUX", "FLOW_COSMOS", "IMG_TO_IMG_FLOW")
# Attention functions of comfy.ldm.modules.attention that have a backward pass (both hosts define these names).
DIFFERENTIABLE_ATTENTION = ("attention_basic", "attention_split", "attention_sub_quad", "attention_pytorch",
                            "attention_xformers")


# ---------------------------------------------------------------------------------------------- model type check

def _flow_sampling_classes() -> tuple[type, ...]:
    names = ("CONST", "COSMOS_RFLOW", "ModelSamplingDiscreteFlow", "ModelSamplingFlux")
    return tuple(getattr(comfy.model_sampling, n) for n in names if hasattr(comfy.model_sampling, n))


def _vp_exclusions() -> tuple[type, ...]:
    names = ("EDM", "X0", "ModelSamplingDiscreteEDM", "StableCascadeSampling")
    return tuple(getattr(comfy.model_sampling, n) for n in names if hasattr(comfy.model_sampling, n))


def model_type_name(patcher) -> str:
    model_type = getattr(getattr(patcher, "model", None), "model_type", None)
    return getattr(model_type, "name", str(model_type))


def check_model(patcher, node_id: str, input_name: str = "model") -> None:
    """PSLDInputError unless the MODEL is a variance-preserving discrete diffusion model (EPS or V_PREDICTION).

    Checks the model_sampling object actually in use (model-sampling patch nodes can replace it) and the model's
    own model_type; flow-matching models (SD3, Flux, ...) get their own message.
    """
    if not hasattr(patcher, "get_model_object") or not hasattr(patcher, "model"):
        raise PSLDInputError(node_id, input_name, f"expected a ComfyUI MODEL, got {type(patcher).__name__}.",
                             "connect the MODEL output of a checkpoint loader.")
    sampling = patcher.get_model_object("model_sampling")
    family = type(patcher.model).__name__
    type_name = model_type_name(patcher)
    if isinstance(sampling, _flow_sampling_classes()) or type_name in FLOW_MODEL_TYPES:
        raise PSLDInputError(node_id, input_name,
                             f"the model is a flow-matching model ({family}, {type_name}): flow models (SD3, Flux) "
                             f"are not supported yet. PSLD needs a variance-preserving diffusion model "
                             f"({SUPPORTED_FAMILIES}).",
                             "load an SD 1.5, SD 2.x or SDXL checkpoint (the paper used SD 1.5), and remove any "
                             "ModelSampling node that switches it to flow sampling.")
    vp = (isinstance(sampling, comfy.model_sampling.ModelSamplingDiscrete)
          and isinstance(sampling, comfy.model_sampling.EPS) and not isinstance(sampling, _vp_exclusions()))
    if not vp or type_name not in ("EPS", "V_PREDICTION"):
        raise PSLDInputError(node_id, input_name,
                             f"the model ({family}) uses {type(sampling).__name__} with model type {type_name}; "
                             f"PSLD supports discrete variance-preserving models with eps or v prediction "
                             f"({SUPPORTED_FAMILIES}).",
                             "load an SD 1.5, SD 2.x or SDXL checkpoint, without a ModelSampling node that changes "
                             "its prediction type to edm, lcm or x0.")


# ---------------------------------------------------------------------------------------------- dynamic VRAM

def non_dynamic(patcher, node_id: str, input_name: str):
    """The patcher itself, or its non-dynamic delegate when ComfyUI's dynamic VRAM manages it (ComfyUI >= 0.30)."""
    is_dynamic = getattr(patcher, "is_dynamic", None)
    if is_dynamic is None or not is_dynamic():
        return patcher
    try:
        return patcher.get_non_dynamic_delegate()
    except RuntimeError as error:  # raised when the patcher was not made by a core loader (no cached_patcher_init)
        raise PSLDInputError(node_id, input_name,
                             f"this {input_name} is managed by ComfyUI's dynamic VRAM, whose weights cannot take "
                             f"part in a gradient, and no plain copy of it can be made ({error}).",
                             "start ComfyUI with --disable-dynamic-vram, or load the model with the core "
                             "checkpoint / UNet / VAE loader nodes.") from error


# ---------------------------------------------------------------------------------------------- attention

def make_attention_override(previous=None):
    """optimized_attention_override: while gradients are on, attention functions without a backward pass (sage,
    flash, anything unknown) are replaced by PyTorch's scaled-dot-product attention; `previous` (an override that
    was already set) still runs."""
    def override(func, *args, **kwargs):
        if gradients_on() and getattr(func, "__name__", "") not in DIFFERENTIABLE_ATTENTION:
            func = comfy_attention.attention_pytorch
        if previous is not None:
            return previous(func, *args, **kwargs)
        return func(*args, **kwargs)
    override.psld = True
    return override


def install_attention_override(clone) -> None:
    """Put the attention override on a UNet clone (keeping an override that was already set)."""
    options = clone.model_options.setdefault("transformer_options", {})
    previous = options.get("optimized_attention_override")
    if not getattr(previous, "psld", False):
        options["optimized_attention_override"] = make_attention_override(previous)


# ---------------------------------------------------------------------------------------------- memory modes

MEMORY_MODES = ("auto", "fast", "low")
# The blocks whose activations `low` mode recomputes: "<last part of the module path>.<class name>" of ComfyUI's
# UNet blocks (openaimodel, attention), KL-VAE blocks (diffusionmodules.model) and TAESD blocks.
CHECKPOINT_BLOCKS = frozenset({"openaimodel.ResBlock", "attention.SpatialTransformer", "openaimodel.Upsample",
                               "openaimodel.Downsample", "model.ResnetBlock", "model.AttnBlock", "model.Upsample",
                               "model.Downsample", "taesd.Block"})
# What a gradient step stores beyond the loaded models, per mode, in units of ComfyUI's own per-element sizes:
# the UNet part per latent pixel x batch x dtype size x the model's memory_usage_factor (ComfyUI's relative cost
# of a family), the VAE part per byte of ComfyUI's decode + encode estimate (vae.memory_used_decode / _encode).
# Measured with bench/comfy_step.py on the SD1.5 layout (docs/benchmarks.md, "Memory modes"); `auto` uses them.
STORED_BYTES = {"fast": {"unet": 125_000, "vae": 3.2}, "low": {"unet": 45_000, "vae": 1.7}}


def block_kind(module: torch.nn.Module) -> str:
    return f"{type(module).__module__.rsplit('.', 1)[-1]}.{type(module).__name__}"


def checkpoint_blocks(root: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules under root whose activations `low` mode recomputes (CHECKPOINT_BLOCKS)."""
    return [m for m in root.modules() if block_kind(m) in CHECKPOINT_BLOCKS]


# ---------------------------------------------------------------------------------------------- differentiable VAE

class DifferentiableVAE:
    """decode(z) / encode(image) through the VAE's first_stage_model, differentiable, on a clone of its patcher.

    z is a latent in the sampler's model space (the UNet's latent format); images are NCHW in [-1, 1], not clamped.
    Inputs go to the VAE's load device and dtype (vae.vae_dtype), outputs come back on the input's device and dtype.
    low_memory=True recomputes the VAE blocks' activations in the backward pass instead of storing them.
    """

    def __init__(self, vae, latent_format, node_id: str, input_name: str = "vae"):
        if getattr(vae, "first_stage_model", None) is None or not hasattr(vae, "patcher"):
            raise PSLDInputError(node_id, input_name, f"expected a ComfyUI VAE with weights, got "
                                 f"{type(vae).__name__}.", "connect the VAE output of a checkpoint or VAE loader.")
        if getattr(vae, "latent_dim", 2) != 2:
            raise PSLDInputError(node_id, input_name, "this VAE is for video or audio latents.",
                                 "use the image VAE of an SD 1.x, SD 2.x or SDXL checkpoint.")
        self.patcher = non_dynamic(vae.patcher, node_id, input_name).clone()
        self.vae = vae
        self.dtype = vae.vae_dtype
        self.downscale_ratio = int(vae.spacial_compression_encode())
        self.latent_channels = int(vae.latent_channels)
        self.latent_format = latent_format

    @property
    def module(self) -> torch.nn.Module:
        """The first_stage_model in use (the delegate's model under dynamic VRAM)."""
        return self.patcher.model

    @property
    def device(self) -> torch.device:
        return self.patcher.load_device

    def _run(self, method: str, x: torch.Tensor, low_memory: bool) -> torch.Tensor:
        with checkpointed_forwards(checkpoint_blocks(self.module) if low_memory else ()):
            return getattr(self.module, method)(x)

    def decode(self, z: torch.Tensor, low_memory: bool = False) -> torch.Tensor:
        """Model-space latent -> image in [-1, 1] (no clamp): first_stage_model.decode(process_out(z))."""
        latent = self.latent_format.process_out(z)
        image = self._run("decode", latent.to(device=self.device, dtype=self.dtype), low_memory)
        return image.to(device=z.device, dtype=z.dtype)

    def encode(self, image: torch.Tensor, low_memory: bool = False) -> torch.Tensor:
        """Image in [-1, 1] -> model-space latent: process_in(first_stage_model.encode(image)) (posterior mode)."""
        latent = self._run("encode", image.to(device=self.device, dtype=self.dtype), low_memory)
        return self.latent_format.process_in(latent.to(device=image.device, dtype=image.dtype))

    def inference_bytes(self, latent_shape: tuple[int, ...]) -> int:
        """ComfyUI's estimate of a decode plus an encode of this latent batch (no gradients; ComfyUI's estimates
        are per image)."""
        ratio = self.downscale_ratio
        image_shape = (1, 3, latent_shape[2] * ratio, latent_shape[3] * ratio)
        per_image = (self.vae.memory_used_decode((1, *latent_shape[1:]), self.dtype)
                     + self.vae.memory_used_encode(image_shape, self.dtype))
        return int(latent_shape[0] * per_image)


# ---------------------------------------------------------------------------------------------- the guider

class PSLDGuider(comfy.samplers.CFGGuider):
    """A CFGGuider over clones of the user's MODEL and VAE; carries the differentiable VAE and the memory mode.

    The UNet clone is what the guider samples with; the VAE clone is attached to it with set_additional_models, so
    ComfyUI's prepare_sampling loads both together (load_models_gpu). Calling the guider (as every sampler does)
    gives the CFG-combined denoised latent x0, differentiable with respect to x inside a gradient region.
    """

    def __init__(self, model, vae, *, node_id: str, memory: str = "auto"):
        check_model(model, node_id)
        if memory not in MEMORY_MODES:
            raise PSLDInputError(node_id, "memory", f"memory={memory!r} is unknown.",
                                 "choose " + ", ".join(MEMORY_MODES) + " (auto picks from the free memory).")
        unet = non_dynamic(model, node_id, "model").clone()
        install_attention_override(unet)
        latent_format = unet.get_model_object("latent_format")
        self.vae = DifferentiableVAE(vae, latent_format, node_id)
        if self.vae.latent_channels != latent_format.latent_channels:
            raise PSLDInputError(node_id, "vae", f"the VAE makes {self.vae.latent_channels}-channel latents but the "
                                 f"model ({type(model.model).__name__}) works on {latent_format.latent_channels} "
                                 f"channels.", "use the VAE that belongs to this checkpoint.")
        unet.set_additional_models(PSLD_KEY, [self.vae.patcher])
        super().__init__(unet)
        self.node_id = node_id
        self.memory = memory

    def latent_shape(self, batch: int, height: int, width: int, node_id: str, input_name: str) -> tuple[int, ...]:
        """[B, C, H / r, W / r] for an image of height x width (r = the VAE's downscale ratio), or PSLDInputError."""
        ratio = self.vae.downscale_ratio
        if height % ratio or width % ratio:
            raise PSLDInputError(node_id, input_name, f"the operator acts on {width}x{height} images, which the "
                                 f"VAE (downscale {ratio}) cannot map to a latent.",
                                 f"use an operator width and height that are multiples of {ratio}.")
        channels = self.model_patcher.get_model_object("latent_format").latent_channels
        return (batch, channels, height // ratio, width // ratio)

    def unet_blocks(self) -> list[torch.nn.Module]:
        """The UNet blocks `low` mode recomputes (of the model as loaded for this run)."""
        return checkpoint_blocks(self.model_patcher.model.diffusion_model)

    def choose_memory_mode(self, x: torch.Tensor, unet_backward: bool = True) -> str:
        """The guider's memory mode, with `auto` resolved for the latent x: `fast` when the free memory ComfyUI
        reports on the model's device holds what fast mode stores (estimated_bytes), else `low`. Says what it
        picked in the log."""
        if self.memory != "auto":
            return self.memory
        needed = self.estimated_bytes(x, "fast", unet_backward)
        free = comfy.model_management.get_free_memory(self.model_patcher.load_device)
        mode = "fast" if needed < free else "low"
        logging.info("%s: memory 'auto' chose '%s' for a %s latent: fast mode needs about %.0f MiB, %.0f MiB free.",
                     self.node_id, mode, "x".join(map(str, x.shape)), needed / 2**20, free / 2**20)
        return mode

    def estimated_bytes(self, x: torch.Tensor, mode: str, unet_backward: bool = True) -> int:
        """Memory a gradient step stores in this mode beyond the loaded models (an estimate, see STORED_BYTES);
        without the UNet backward (Jacobian-free gradient) only the VAE part."""
        model = self.model_patcher.model
        dtype = getattr(model, "manual_cast_dtype", None) or model.get_dtype()
        batch = x.shape[0] * (2 if self.cfg != 1.0 else 1)
        unet = batch * x.shape[2] * x.shape[3] * comfy.model_management.dtype_size(dtype) * model.memory_usage_factor
        unet *= unet_backward
        per = STORED_BYTES[mode]
        return int(per["unet"] * unet + per["vae"] * self.vae.inference_bytes(tuple(x.shape)))
