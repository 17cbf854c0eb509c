"""The bridge between ComfyUI's MODEL / VAE and psld/: gradients through the user's own models, never touching them.

ComfyUI runs every node under torch.inference_mode(), so the weights of a loaded MODEL or VAE are inference tensors
that autograd cannot save for the backward pass. The recipe (docs/architecture.md, "Bridge"):

1. Dynamic VRAM (ComfyUI >= 0.30 on NVIDIA): weights are views into memory that is refilled layer by layer, and
   small layers get no weight functions at all. Such a patcher is swapped for its non-dynamic delegate first.
2. A clone of the patcher (the user's patcher is never changed) with a weight wrapper `w -> w.clone()` on every
   weight and bias of a comfy.ops layer. A weight function makes comfy.ops copy the weight on every forward; the
   copy is made where the gradient region runs (outside inference mode), so autograd can keep it.
3. Parameters that no comfy.ops layer owns (TAESD's vae_scale / vae_shift) get no wrapper; decode/encode pass
   private copies of them through torch.func.functional_call.
4. Upstream tensors that reach the UNet (conditionings, control) are cloned inside the gradient region by an
   APPLY_MODEL wrapper on the clone; attention backends without a backward pass (sage, flash) are replaced by
   PyTorch attention through transformer_options["optimized_attention_override"] while gradients are on.
5. Models are loaded with comfy.model_management.load_models_gpu (through the guider's prepare_sampling), never
   patch_model; the VAE clone rides along as an additional model of the UNet clone.
6. The VAE in the gradient path is its first_stage_model.decode / encode with the model's latent format, never
   VAE.decode / VAE.encode (those clamp, change device, and fall back to tiled code under inference mode).
"""
from __future__ import annotations

import torch

import comfy.model_management
import comfy.model_sampling
import comfy.patcher_extension
import comfy.samplers
from comfy.ldm.modules import attention as comfy_attention

from .errors import PSLDInputError

PSLD_KEY = "psld"
UNET_PREFIX = "diffusion_model."
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


# ---------------------------------------------------------------------------------------------- grad-enabled clones

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


def _private_copy(weight: torch.Tensor) -> torch.Tensor:
    """Weight wrapper: a private copy, born where the forward runs (outside inference mode in the gradient region).

    Detached: PSLD needs gradients with respect to the latent only, so autograd must not keep layer inputs for
    weight gradients (loaded parameters may have requires_grad set)."""
    return weight.detach().clone()


def cast_weight_keys(module: torch.nn.Module, prefix: str = "") -> list[str]:
    """Keys "<module>.weight" / "<module>.bias" of every parameter owned by a comfy.ops layer (the ones that
    ModelPatcher weight wrappers reach), restricted to names starting with `prefix`."""
    keys = []
    for name, sub in module.named_modules():
        if not hasattr(sub, "weight_function"):
            continue
        for param_name, param in sub.named_parameters(recurse=False):
            key = f"{name}.{param_name}" if name else param_name
            if param_name in ("weight", "bias") and param is not None and key.startswith(prefix):
                keys.append(key)
    return keys


def raw_parameter_names(module: torch.nn.Module) -> list[str]:
    """Parameters no comfy.ops layer owns (weight wrappers never see them), e.g. TAESD's vae_scale."""
    names = []
    for name, sub in module.named_modules():
        for param_name, _ in sub.named_parameters(recurse=False):
            if not (hasattr(sub, "weight_function") and param_name in ("weight", "bias")):
                names.append(f"{name}.{param_name}" if name else param_name)
    return names


def grad_enabled_clone(patcher, prefix: str = ""):
    """patcher.clone() with the private-copy weight wrapper on every comfy.ops weight and bias under `prefix`."""
    clone = patcher.clone()
    for key in cast_weight_keys(clone.model, prefix):
        clone.add_weight_wrapper(key, _private_copy)
    return clone


# ---------------------------------------------------------------------------------------------- UNet call wrappers

def _gradients_on() -> bool:
    return torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


def clone_inference_tensors(value):
    """A copy of value in which every inference tensor (nested in dicts, lists, tuples) is cloned."""
    if isinstance(value, torch.Tensor):
        return value.clone() if value.is_inference() else value
    if isinstance(value, dict):
        return {k: clone_inference_tensors(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clone_inference_tensors(v) for v in value]
    if isinstance(value, tuple):
        return tuple(clone_inference_tensors(v) for v in value)
    return value


def grad_safe_apply_model(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={},
                          **kwargs):
    """APPLY_MODEL wrapper: inside a gradient region, clone the inference tensors that upstream nodes made."""
    if _gradients_on():
        t, c_concat, c_crossattn, control = map(clone_inference_tensors, (t, c_concat, c_crossattn, control))
        kwargs = clone_inference_tensors(kwargs)
    return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)


def make_attention_override(previous=None):
    """optimized_attention_override: while gradients are on, attention functions without a backward pass (sage,
    flash, anything unknown) are replaced by PyTorch's scaled-dot-product attention; `previous` (an override that
    was already set) still runs."""
    def override(func, *args, **kwargs):
        if _gradients_on() and getattr(func, "__name__", "") not in DIFFERENTIABLE_ATTENTION:
            func = comfy_attention.attention_pytorch
        if previous is not None:
            return previous(func, *args, **kwargs)
        return func(*args, **kwargs)
    override.psld = True
    return override


def install_gradient_hooks(clone) -> None:
    """Put the APPLY_MODEL wrapper and the attention override on a (grad-enabled) UNet clone."""
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, PSLD_KEY, grad_safe_apply_model)
    options = clone.model_options.setdefault("transformer_options", {})
    previous = options.get("optimized_attention_override")
    if not getattr(previous, "psld", False):
        options["optimized_attention_override"] = make_attention_override(previous)


# ---------------------------------------------------------------------------------------------- differentiable VAE

class _MethodCall(torch.nn.Module):
    """Calls one method of a module as forward, so torch.func.functional_call can substitute its parameters."""

    def __init__(self, module: torch.nn.Module, method: str):
        super().__init__()
        self.module = module
        self.method = method

    def forward(self, x):
        return getattr(self.module, self.method)(x)


class DifferentiableVAE:
    """decode(z) / encode(image) through the VAE's first_stage_model, differentiable, on a grad-enabled clone.

    z is a latent in the sampler's model space (the UNet's latent format); images are NCHW in [-1, 1], not clamped.
    Inputs go to the VAE's load device and dtype (vae.vae_dtype), outputs come back on the input's device and dtype.
    """

    def __init__(self, vae, latent_format, node_id: str, input_name: str = "vae"):
        if getattr(vae, "first_stage_model", None) is None or not hasattr(vae, "patcher"):
            raise PSLDInputError(node_id, input_name, f"expected a ComfyUI VAE with weights, got "
                                 f"{type(vae).__name__}.", "connect the VAE output of a checkpoint or VAE loader.")
        if getattr(vae, "latent_dim", 2) != 2:
            raise PSLDInputError(node_id, input_name, "this VAE is for video or audio latents.",
                                 "use the image VAE of an SD 1.x, SD 2.x or SDXL checkpoint.")
        self.patcher = grad_enabled_clone(non_dynamic(vae.patcher, node_id, input_name))
        self.dtype = vae.vae_dtype
        self.downscale_ratio = int(vae.spacial_compression_encode())
        self.latent_channels = int(vae.latent_channels)
        self.latent_format = latent_format
        self._raw = raw_parameter_names(self.module)
        self._calls = {m: _MethodCall(self.module, m) for m in ("decode", "encode")}

    @property
    def module(self) -> torch.nn.Module:
        """The first_stage_model in use (the delegate's model under dynamic VRAM)."""
        return self.patcher.model

    @property
    def device(self) -> torch.device:
        return self.patcher.load_device

    def _run(self, method: str, x: torch.Tensor) -> torch.Tensor:
        if not self._raw or not _gradients_on():
            return getattr(self.module, method)(x)
        params = dict(self.module.named_parameters())
        copies = {f"module.{n}": params[n].detach().clone() for n in self._raw}  # plain tensors, not inference
        return torch.func.functional_call(self._calls[method], copies, (x,))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Model-space latent -> image in [-1, 1] (no clamp): first_stage_model.decode(process_out(z))."""
        latent = self.latent_format.process_out(z)
        image = self._run("decode", latent.to(device=self.device, dtype=self.dtype))
        return image.to(device=z.device, dtype=z.dtype)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Image in [-1, 1] -> model-space latent: process_in(first_stage_model.encode(image)) (posterior mode)."""
        latent = self._run("encode", image.to(device=self.device, dtype=self.dtype))
        return self.latent_format.process_in(latent.to(device=image.device, dtype=image.dtype))


# ---------------------------------------------------------------------------------------------- the guider

class PSLDGuider(comfy.samplers.CFGGuider):
    """A CFGGuider over grad-enabled clones of the user's MODEL and VAE; carries the differentiable VAE.

    The UNet clone is what the guider samples with; the VAE clone is attached to it with set_additional_models, so
    ComfyUI's prepare_sampling loads both together (load_models_gpu). Calling the guider (as every sampler does)
    gives the CFG-combined denoised latent x0, differentiable with respect to x inside a gradient region.
    """

    def __init__(self, model, vae, *, node_id: str):
        check_model(model, node_id)
        unet = grad_enabled_clone(non_dynamic(model, node_id, "model"), UNET_PREFIX)
        install_gradient_hooks(unet)
        latent_format = unet.get_model_object("latent_format")
        self.vae = DifferentiableVAE(vae, latent_format, node_id)
        if self.vae.latent_channels != latent_format.latent_channels:
            raise PSLDInputError(node_id, "vae", f"the VAE makes {self.vae.latent_channels}-channel latents but the "
                                 f"model ({type(model.model).__name__}) works on {latent_format.latent_channels} "
                                 f"channels.", "use the VAE that belongs to this checkpoint.")
        unet.set_additional_models(PSLD_KEY, [self.vae.patcher])
        super().__init__(unet)
        self.node_id = node_id

    def latent_shape(self, batch: int, height: int, width: int, node_id: str, input_name: str) -> tuple[int, ...]:
        """[B, C, H / r, W / r] for an image of height x width (r = the VAE's downscale ratio), or PSLDInputError."""
        ratio = self.vae.downscale_ratio
        if height % ratio or width % ratio:
            raise PSLDInputError(node_id, input_name, f"the operator acts on {width}x{height} images, which the "
                                 f"VAE (downscale {ratio}) cannot map to a latent.",
                                 f"use an operator width and height that are multiples of {ratio}.")
        channels = self.model_patcher.get_model_object("latent_format").latent_channels
        return (batch, channels, height // ratio, width // ratio)
