"""The bundled demo prior (models/psld_demo_fmnist32.safetensors) as real ComfyUI MODEL, VAE and CONDITIONING.

The file (format "psld-demo-prior/1", written by tools/train_demo_prior.py) is a small latent diffusion model on
Fashion-MNIST 32 x 32, built from ComfyUI's own classes:

    model.diffusion_model.*    openaimodel UNetModel, its constructor arguments in metadata "unet_config";
                               eps prediction on SD's discrete schedule (ComfyUI's default sampling settings)
    first_stage_model.*        AutoencoderKL, metadata "vae_ddconfig" + "vae_embed_dim", downscale 4
                               (32 x 32 x 3 image <-> 4 x 8 x 8 latent), latents scaled by "latent_scale_factor"
    conditioning.class_tokens  [classes + 1, context_dim]: one cross-attention token per class, row "null_class"
                               is "any" (the unconditional token, what the UNet was trained on with class dropout)

Loading mirrors comfy.sd.load_state_dict_guess_config on each host (unet dtype, manual cast, load and offload devices
from comfy.model_management, the host's core patcher class), so KSampler, VAEEncode / VAEDecode, SetLatentNoiseMask
and the PSLD nodes treat the result like an SD checkpoint. Only safetensors is read (safe_open, metadata parsed with
json); every problem with the file is a PSLDInputError naming PSLD_DemoModelLoader, the file and the fix.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import json
from pathlib import Path

import torch

import comfy.latent_formats
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.supported_models_base

from .errors import PSLDInputError

NODE_ID = "PSLD_DemoModelLoader"
FILE_INPUT = "weights"  # the input named in errors about the file (the node has no path widget: it is fixed)
FORMAT = "psld-demo-prior/1"
DEMO_WEIGHTS = Path(__file__).resolve().parents[1] / "models" / "psld_demo_fmnist32.safetensors"
ANY = "any"
# Fashion-MNIST's classes, the subjects offered while the file is missing (so saved workflows still validate and the
# node can say which file is missing); the file's own "classes" metadata wins when it is there.
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TOKENS_KEY = "conditioning.class_tokens"
REQUIRED_METADATA = ("format", "unet_config", "vae_ddconfig", "vae_embed_dim", "latent_scale_factor",
                     "downscale_ratio", "classes", "null_class", "prediction", "schedule")
PREDICTION = "eps"
SCHEDULE = "sd-discrete-scaled-linear"
HOW_TO_GET = ("reinstall comfyui-psld (the file ships in its models/ folder), or train and export it with "
              "tools/train_demo_prior.py from the git repository (--stage all, then --stage export).")


# ---------------------------------------------------------------------------------------------- the file

def _file_error(path: Path, problem: str, fix: str = HOW_TO_GET) -> PSLDInputError:
    return PSLDInputError(NODE_ID, FILE_INPUT, f"the demo prior {path} {problem}", fix)


def _stat_key(path: Path) -> tuple[str, int, int]:
    """(resolved path, mtime, size): a replaced file (interim -> trained) is read again."""
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


def file_fingerprint(path: Path = DEMO_WEIGHTS) -> str:
    """Changes when the file is replaced or removed (the node's fingerprint: ComfyUI then runs it again)."""
    try:
        return repr(_stat_key(Path(path)))
    except OSError:
        return f"missing {path}"


def _read_metadata(path: Path) -> dict[str, str]:
    """The file's safetensors metadata (the header only; no tensor is read)."""
    from safetensors import safe_open

    if not path.is_file():
        raise _file_error(path, "is missing.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata()
    except Exception as error:  # safetensors raises its own error types for a damaged header
        raise _file_error(path, f"is not a readable safetensors file ({type(error).__name__}: {error}).") from error
    return dict(metadata or {})


@dataclasses.dataclass(frozen=True)
class DemoPriorInfo:
    """What the metadata of a psld-demo-prior/1 file says (parsed and checked)."""

    unet_config: dict
    vae_ddconfig: dict
    vae_embed_dim: int
    latent_scale_factor: float
    downscale_ratio: int
    image_size: int
    classes: tuple[str, ...]
    null_class: int
    training: dict


def _json(path: Path, metadata: dict, key: str, kind: type):
    try:
        value = json.loads(metadata[key])
    except (json.JSONDecodeError, TypeError) as error:
        raise _file_error(path, f"has metadata {key!r} that is not valid JSON ({error}).") from error
    if not isinstance(value, kind):
        raise _file_error(path, f"has metadata {key!r} of type {type(value).__name__}, expected {kind.__name__}.")
    return value


def _number(path: Path, metadata: dict, key: str, kind: type, default=None):
    text = metadata.get(key, default)
    try:
        value = kind(text)
    except (TypeError, ValueError) as error:
        raise _file_error(path, f"has metadata {key}={text!r}, expected a number.") from error
    if not value > 0:
        raise _file_error(path, f"has metadata {key}={text!r}, expected a positive number.")
    return value


def parse_metadata(path: Path, metadata: dict[str, str]) -> DemoPriorInfo:
    """Check the format tag and parse the configs (PSLDInputError naming the file and the fix otherwise)."""
    found = metadata.get("format")
    if found != FORMAT:
        raise _file_error(path, f"has format {found!r}, but {NODE_ID} reads only {FORMAT!r} files (a "
                          f"checkpoint of another kind belongs in a core loader such as Load Checkpoint).",
                          f"put the demo prior back at {DEMO_WEIGHTS} ({HOW_TO_GET})")
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise _file_error(path, f"lacks the metadata {', '.join(missing)} of format {FORMAT!r}.")
    for key, expected in (("prediction", PREDICTION), ("schedule", SCHEDULE)):
        if metadata[key] != expected:
            raise _file_error(path, f"has {key}={metadata[key]!r}; this loader supports only {expected!r}.")
    classes = _json(path, metadata, "classes", list)
    if not classes or not all(isinstance(name, str) and name and name != ANY for name in classes):
        raise _file_error(path, f"has metadata classes={classes!r}, expected a list of class names.")
    null_class = int(_number(path, metadata, "null_class", float))
    if null_class != len(classes):
        raise _file_error(path, f"has null_class={null_class}, expected {len(classes)} (the row after the classes).")
    return DemoPriorInfo(
        unet_config=_json(path, metadata, "unet_config", dict),
        vae_ddconfig=_json(path, metadata, "vae_ddconfig", dict),
        vae_embed_dim=int(_number(path, metadata, "vae_embed_dim", float)),
        latent_scale_factor=_number(path, metadata, "latent_scale_factor", float),
        downscale_ratio=int(_number(path, metadata, "downscale_ratio", float)),
        image_size=int(_number(path, metadata, "image_size", float, default="32")),
        classes=tuple(classes),
        null_class=null_class,
        training=_json(path, metadata, "training", dict) if "training" in metadata else {},
    )


@functools.lru_cache(maxsize=4)
def _info_cached(key: tuple[str, int, int]) -> DemoPriorInfo:
    path = Path(key[0])
    return parse_metadata(path, _read_metadata(path))


def read_info(path: Path = DEMO_WEIGHTS) -> DemoPriorInfo:
    """The parsed metadata of a demo prior file (header only, cached per file version)."""
    path = Path(path)
    if not path.is_file():
        raise _file_error(path, "is missing.")
    return _info_cached(_stat_key(path))


def subject_options(path: Path = DEMO_WEIGHTS) -> list[str]:
    """["any", *classes] for the node's combo: the file's classes, Fashion-MNIST's when the file is unusable."""
    try:
        classes = read_info(path).classes
    except PSLDInputError:
        classes = FASHION_MNIST_CLASSES
    return [ANY, *classes]


# ---------------------------------------------------------------------------------------------- ComfyUI objects

class DemoLatentFormat(comfy.latent_formats.LatentFormat):
    """4-channel latents of the demo VAE, scaled like SD's (z * scale_factor), 4x smaller than the image.

    No latent_rgb_factors: ComfyUI shows no fast latent preview for this model (previews are optional)."""

    latent_channels = 4
    spacial_downscale_ratio = 4  # ComfyUI 0.30 sizes EmptyLatentImage latents by it (0.3.75 has no such attribute)

    def __init__(self, scale_factor: float):
        self.scale_factor = scale_factor


class DemoPriorConfig(comfy.supported_models_base.BASE):
    """Model config of the demo prior: the file's UNet config as is, eps prediction, SD's discrete schedule.

    sampling_settings {} = ModelSamplingDiscrete's defaults (scaled linear betas 0.00085..0.012, 1000 steps),
    the schedule the prior was trained on. No text encoder: the conditioning is a learned class token."""

    unet_extra_config = {}  # BASE would force num_head_channels 64; the file's config is complete
    sampling_settings = {}
    latent_format = comfy.latent_formats.LatentFormat  # replaced per file in __init__
    supported_inference_dtypes = [torch.float16, torch.bfloat16, torch.float32]

    def __init__(self, unet_config: dict, latent_scale_factor: float):
        super().__init__(unet_config)
        self.latent_format = DemoLatentFormat(latent_scale_factor)


def _set_inference_dtype(config, dtype, manual_cast_dtype, device) -> None:
    # ComfyUI 0.30 takes the load device, 0.3.75 does not
    if "device" in inspect.signature(config.set_inference_dtype).parameters:
        config.set_inference_dtype(dtype, manual_cast_dtype, device=device)
    else:
        config.set_inference_dtype(dtype, manual_cast_dtype)


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:
        raise _file_error(path, f"has tensors that cannot be read ({type(error).__name__}: {error}).") from error


def _check_weights(path: Path, part: str, expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> None:
    """The file's weights for `part` must be exactly the module's parameters and buffers, with the same shapes."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if tuple(expected[k].shape) != tuple(found[k].shape))
    if missing or extra or wrong:
        details = "; ".join(f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                            for label, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong))
                            if keys)
        raise _file_error(path, f"has {part} weights that do not match its own config ({details}).")


def _without_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}


def _core_patcher_class(disable_dynamic: bool):
    """The patcher class the host's checkpoint loader would use (ModelPatcherDynamic under ComfyUI 0.30's dynamic
    VRAM, ModelPatcher otherwise)."""
    if disable_dynamic:
        return comfy.model_patcher.ModelPatcher
    return getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)


def _is_dynamic(patcher) -> bool:
    """ComfyUI 0.30's dynamic-VRAM patcher (ComfyUI 0.3.75 patchers have no is_dynamic)."""
    is_dynamic = getattr(patcher, "is_dynamic", None)
    return bool(is_dynamic()) if is_dynamic is not None else False


def _build_unet(path: Path, info: DemoPriorInfo, tensors: dict[str, torch.Tensor], disable_dynamic: bool):
    """ModelPatcher over an EPS BaseModel with the file's UNet, as load_state_dict_guess_config builds one."""
    mm = comfy.model_management
    unet_sd = _without_prefix(tensors, UNET_PREFIX)
    if not unet_sd:
        raise _file_error(path, f"has no {UNET_PREFIX}* weights.")
    config = DemoPriorConfig(info.unet_config, info.latent_scale_factor)
    parameters = sum(value.numel() for value in unet_sd.values())
    weight_dtype = next(iter(unet_sd.values())).dtype
    load_device = mm.get_torch_device()
    unet_dtype = mm.unet_dtype(model_params=parameters, supported_dtypes=list(config.supported_inference_dtypes),
                               weight_dtype=weight_dtype)
    manual_cast_dtype = mm.unet_manual_cast(unet_dtype, load_device, config.supported_inference_dtypes)
    _set_inference_dtype(config, unet_dtype, manual_cast_dtype, load_device)
    initial_device = mm.unet_inital_load_device(parameters, unet_dtype)
    try:
        model = config.get_model(unet_sd, "", device=initial_device)
    except (TypeError, ValueError, KeyError, AssertionError, RuntimeError) as error:
        raise _file_error(path, f"has a unet_config that ComfyUI's UNetModel does not accept ({error}).") from error
    _check_weights(path, "UNet", model.diffusion_model.state_dict(), unet_sd)
    patcher = _core_patcher_class(disable_dynamic)(model, load_device=load_device,
                                                   offload_device=mm.unet_offload_device())
    dynamic = _is_dynamic(patcher)
    if "assign" in inspect.signature(model.load_model_weights).parameters:  # ComfyUI 0.30
        model.load_model_weights(unet_sd, "", assign=dynamic)
    else:
        model.load_model_weights(unet_sd, "")
    if not dynamic and not mm.is_device_cpu(initial_device):
        mm.load_models_gpu([patcher], force_full_load=True)  # as the 0.3.75 loader does for a model built on the GPU
    return patcher


def _build_vae(path: Path, info: DemoPriorInfo, tensors: dict[str, torch.Tensor]):
    """comfy.sd.VAE over the file's AutoencoderKL (config path), with the demo's downscale ratio."""
    vae_sd = _without_prefix(tensors, VAE_PREFIX)
    if not vae_sd:
        raise _file_error(path, f"has no {VAE_PREFIX}* weights.")
    config = {"params": {"ddconfig": dict(info.vae_ddconfig), "embed_dim": info.vae_embed_dim}}
    try:
        vae = comfy.sd.VAE(sd=vae_sd, config=config)
    except (TypeError, ValueError, KeyError, AssertionError, RuntimeError) as error:
        raise _file_error(path, f"has VAE weights or a vae_ddconfig that ComfyUI's AutoencoderKL does not accept "
                          f"({error}).") from error
    _check_weights(path, "VAE", vae.first_stage_model.state_dict(), vae_sd)
    latent_channels = int(info.vae_ddconfig.get("z_channels", 0))
    if latent_channels != DemoLatentFormat.latent_channels or info.vae_embed_dim != latent_channels:
        raise _file_error(path, f"has a VAE with {latent_channels} latent channels (embed_dim {info.vae_embed_dim}); "
                          f"the demo format has {DemoLatentFormat.latent_channels}.")
    # comfy.sd.VAE assumes SD's factor 8 for the config path. The rest fits: 4 channels, image in/out processing,
    # cropping to the ratio, working dtypes; its memory estimates (SD's AutoencoderKL: 8x, 128 channels) are far above
    # this VAE's needs, which can only make ComfyUI split batches or free memory sooner than needed
    vae.downscale_ratio = info.downscale_ratio
    vae.upscale_ratio = info.downscale_ratio
    vae.latent_channels = latent_channels
    return vae


@dataclasses.dataclass(frozen=True, eq=False)
class DemoPrior:
    """The loaded demo prior. ComfyUI objects are shared by every caller (cached): never modify them; clone the
    patcher (`model.clone()`) before patching, as every ComfyUI node does.

    model           ComfyUI ModelPatcher over an EPS BaseModel (the file's UNet, SD's discrete schedule)
    vae             comfy.sd.VAE, downscale 4: IMAGE [B, 32, 32, 3] <-> latent [B, 4, 8, 8]
    classes         the class names (the subjects besides "any")
    conditioning()  CONDITIONING for a subject
    """

    path: Path
    model: object
    vae: object
    class_names: tuple[str, ...]
    class_tokens: torch.Tensor  # [len(classes) + 1, context_dim], float32, CPU; row null_class = "any"
    null_class: int
    image_size: int
    downscale_ratio: int
    training: dict

    @property
    def classes(self) -> list[str]:
        return list(self.class_names)

    @property
    def subjects(self) -> list[str]:
        return [ANY, *self.class_names]

    def token_index(self, subject: str) -> int:
        if subject == ANY:
            return self.null_class
        if subject in self.class_names:
            return self.class_names.index(subject)
        raise PSLDInputError(NODE_ID, "subject", f"subject={subject!r} is not a class of the demo prior.",
                             f"choose one of {', '.join(self.subjects)}.")

    def conditioning(self, subject: str = ANY) -> list:
        """CONDITIONING [[token [1, 1, context_dim], {}]] for `subject` ("any" = unconditional), a new tensor on
        ComfyUI's intermediate device and dtype, as CLIPTextEncode gives."""
        token = self.class_tokens[self.token_index(subject)].reshape(1, 1, -1)
        dtype = getattr(comfy.model_management, "intermediate_dtype", lambda: torch.float32)()
        token = token.to(device=comfy.model_management.intermediate_device(), dtype=dtype, copy=True)
        return [[token, {}]]


def _read_prior(path: Path) -> tuple[DemoPriorInfo, dict[str, torch.Tensor]]:
    """The file's parsed metadata and its tensors (read under inference mode, as ComfyUI's executor runs loaders, so
    the result is the same whoever loads it first), the class tokens' shape checked."""
    info = parse_metadata(path, _read_metadata(path))
    with torch.inference_mode():
        tensors = _read_tensors(path)
    tokens = tensors.get(TOKENS_KEY)
    context_dim = info.unet_config.get("context_dim")
    if tokens is None or tuple(tokens.shape) != (len(info.classes) + 1, context_dim):
        shape = None if tokens is None else tuple(tokens.shape)
        raise _file_error(path, f"has {TOKENS_KEY} of shape {shape}, expected "
                          f"({len(info.classes) + 1}, {context_dim}) (one token per class plus 'any').")
    return info, tensors


def _load(path: Path, disable_dynamic: bool = False) -> DemoPrior:
    """Build every object from the file (no cache), under inference mode."""
    info, tensors = _read_prior(path)
    with torch.inference_mode():
        model = _build_unet(path, info, tensors, disable_dynamic)
        vae = _build_vae(path, info, tensors)
        tokens = tensors[TOKENS_KEY].to(dtype=torch.float32, copy=True)
    return DemoPrior(path=path, model=model, vae=vae, class_names=info.classes, class_tokens=tokens,
                     null_class=info.null_class, image_size=info.image_size, downscale_ratio=info.downscale_ratio,
                     training=info.training)


def _reload_unet_patcher(path: str, disable_dynamic: bool = False):
    """cached_patcher_init factory: a fresh UNet patcher from the file, the VAE not built (ComfyUI 0.30 calls it to
    make the plain, non-dynamic copy that PSLD's gradients need, and for multi-GPU copies)."""
    info, tensors = _read_prior(Path(path))
    with torch.inference_mode():
        return _build_unet(Path(path), info, tensors, disable_dynamic)


def _reload_vae_patcher(path: str, disable_dynamic: bool = False):
    """cached_patcher_init factory of the VAE patcher (as comfy.sd.load_vae_patcher for VAELoader), the UNet not
    built. The VAE patcher has no dynamic variant here: disable_dynamic changes nothing, as in _load."""
    info, tensors = _read_prior(Path(path))
    with torch.inference_mode():
        return _build_vae(Path(path), info, tensors).patcher


@functools.lru_cache(maxsize=2)
def _load_cached(key: tuple[str, int, int]) -> DemoPrior:
    prior = _load(Path(key[0]))
    prior.model.cached_patcher_init = (_reload_unet_patcher, (key[0],))
    prior.vae.patcher.cached_patcher_init = (_reload_vae_patcher, (key[0],))
    return prior


def load_demo_prior(path: Path = DEMO_WEIGHTS) -> DemoPrior:
    """The demo prior in `path`, loaded once per file version (a replaced file is loaded again).

    PSLDInputError naming PSLD_DemoModelLoader, the file and the fix when the file is missing, not safetensors,
    of another format, or inconsistent with its own metadata. The file is only read."""
    path = Path(path)
    if not path.is_file():
        raise _file_error(path, "is missing.")
    return _load_cached(_stat_key(path))
