"""The PSLD SAMPLER: psld.sampling.sample_psld as a k-diffusion-style sampler function for ComfyUI's KSAMPLER.

ComfyUI's CFGGuider.sample (what SamplerCustomAdvanced and PSLD_Sampler both call) loads the models, prepares the
conditionings and calls `sampler.sample(guider, sigmas, extra_args, callback, noise, latent, ...)`; KSAMPLER turns
that into `fn(model, x, sigmas, extra_args=, callback=, disable=, **extra_options)`, where `model` is ComfyUI's
KSamplerX0Inpaint and `model.inner_model` the guider. The function here finds the PSLDGuider there (it carries the
differentiable VAE), checks the latent against the operator, and runs sample_psld with
    denoise(x, sigma) = model(x, sigma, **extra_args)    (CFG-combined x0, any EPS / V_PREDICTION model)
    decode / encode   = the guider's DifferentiableVAE.
Both the all-in-one PSLD_Sampler and the composable PSLD_Guider + PSLD_PosteriorSampler path run through this code.
"""
from __future__ import annotations

import dataclasses

import torch

import comfy.k_diffusion.sampling
import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview

from ..psld.losses import PSLDLoss
from ..psld.memory import checkpointed_forwards
from ..psld.sampling import PSLDDivergenceError, sample_psld
from .comfy_bridge import PSLDGuider
from .errors import PSLDInputError
from .operator_factory import OperatorSpec
from .progress import report_step


@dataclasses.dataclass(frozen=True)
class PSLDRun:
    """What a PSLD SAMPLER carries (immutable: ComfyUI caches it and may reuse it in later runs).

    spec      the operator (with the loss's projection applied) and the image size it acts on
    y         the measurement, NCHW in [-1, 1], batch 1 (shared by every sample) or the latent's batch size
    loss      the PSLD objective's weights and options
    eta       DDIM stochasticity (0 = deterministic)
    node_id   the node the user wired (named in errors); unique_id: its id in the graph (progress events)
    """

    spec: OperatorSpec
    y: torch.Tensor
    loss: PSLDLoss
    eta: float
    node_id: str
    unique_id: str | None = None


def _guider_of(model, run: PSLDRun) -> PSLDGuider:
    guider = getattr(model, "inner_model", None)
    if not isinstance(guider, PSLDGuider):
        raise PSLDInputError(run.node_id, "guider", f"the sampler runs with a {type(guider).__name__}, which has no "
                             f"VAE and no gradient-ready model, so PSLD cannot run.",
                             "connect a PSLD_Guider (not CFGGuider / BasicGuider) to the guider input of "
                             "SamplerCustomAdvanced, or use the all-in-one PSLD_Sampler.")
    return guider


def checked_latent(x: torch.Tensor, guider: PSLDGuider, run: PSLDRun) -> None:
    """PSLDInputError unless the latent fits the operator's image size and the measurement's batch."""
    spec = run.spec
    expected = guider.latent_shape(x.shape[0], spec.height, spec.width, run.node_id, "operator")
    if tuple(x.shape[-2:]) != tuple(expected[-2:]):
        ratio = guider.vae.downscale_ratio
        raise PSLDInputError(run.node_id, "operator",
                             f"the latent is {x.shape[-1]}x{x.shape[-2]} ({x.shape[-1] * ratio}x"
                             f"{x.shape[-2] * ratio} px) but the operator acts on {spec.width}x{spec.height} px.",
                             f"set the latent (e.g. EmptyLatentImage) to width {spec.width} and height "
                             f"{spec.height}, or build the operator for {x.shape[-1] * ratio}x"
                             f"{x.shape[-2] * ratio}.")
    check_batch(run.y.shape[0], x.shape[0], run.node_id)


def check_batch(measurement_batch: int, latent_batch: int, node_id: str) -> None:
    if measurement_batch not in (1, latent_batch):
        raise PSLDInputError(node_id, "measurement", f"the measurement batch has {measurement_batch} images but "
                             f"the latent batch has {latent_batch}.",
                             f"use one measurement (shared by every sample) or set the latent batch size to "
                             f"{measurement_batch}.")


def gradient_path(model, guider: PSLDGuider, extra_args: dict, *, low_memory: bool):
    """(denoise, decode, encode) for psld/: the CFG-combined denoiser ComfyUI hands a sampler function, and the
    guider's differentiable VAE; low_memory recomputes the UNet's and the VAE's block activations in the backward
    pass instead of storing them."""
    unet_blocks = guider.unet_blocks() if low_memory else ()

    def denoise(z, sigma):
        with checkpointed_forwards(unet_blocks):
            return model(z, sigma, **extra_args)

    def decode(z):
        return guider.vae.decode(z, low_memory=low_memory)

    def encode(image):
        return guider.vae.encode(image, low_memory=low_memory)
    return denoise, decode, encode


def sample_psld_comfy(model, x, sigmas, extra_args=None, callback=None, disable=None, *, psld_run: PSLDRun):
    """KSAMPLER sampler function (k-diffusion signature): PSLD from x over `sigmas` with the guider's models."""
    run = psld_run
    guider = _guider_of(model, run)
    checked_latent(x, guider, run)
    extra_args = dict(extra_args or {})
    seed = extra_args.get("seed")
    y = run.y.to(device=x.device, dtype=x.dtype).expand(x.shape[0], *run.y.shape[1:])
    steps = len(sigmas) - 1

    memory = guider.choose_memory_mode(x, unet_backward=not run.loss.jacobian_free)
    denoise, decode, encode = gradient_path(model, guider, extra_args, low_memory=memory == "low")

    def on_step(i, x_i, denoised, residuals):
        if callback is not None:
            callback({"i": i, "denoised": denoised, "x": x_i, "sigma": sigmas[i], "sigma_hat": sigmas[i]})
        report_step(run.unique_id, i, steps, residuals)

    noise_sampler = comfy.k_diffusion.sampling.default_noise_sampler(x, seed=seed) if run.eta > 0 else None
    try:
        return sample_psld(denoise, x, sigmas, operator=run.spec.operator, y=y, decode=decode, encode=encode,
                           loss=run.loss, eta=run.eta, noise_sampler=noise_sampler, callback=on_step,
                           check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted,
                           generator=int(seed or 0))
    except PSLDDivergenceError as error:
        raise PSLDInputError(run.node_id, "loss", str(error),
                             "lower omega and gamma on PSLD_GluingLoss (halve them, or start from the reference "
                             "weights), or use more steps.") from error
    except RuntimeError as error:  # torch's OutOfMemoryError classes are RuntimeErrors
        if not is_out_of_memory(error):
            raise
        raise out_of_memory_error(guider, run, x, memory, error) from None


def is_out_of_memory(error: BaseException) -> bool:
    """A CUDA / other accelerator OOM, or the CPU allocator's failure (a RuntimeError with its own text)."""
    text = str(error)
    return (type(error).__name__ == "OutOfMemoryError" or "out of memory" in text.lower()
            or "can't allocate memory" in text)


def out_of_memory_error(guider: PSLDGuider, run: PSLDRun, x: torch.Tensor, memory: str,
                        error: BaseException) -> PSLDInputError:
    """The pack's message for a PSLD step that ran out of memory (after freeing what ComfyUI can free)."""
    comfy.model_management.soft_empty_cache()
    free = comfy.model_management.get_free_memory(guider.model_patcher.load_device) / 2**20
    needed = guider.estimated_bytes(x, memory, unet_backward=not run.loss.jacobian_free) / 2**20
    where = guider.node_id
    fix = ("set memory to low on " + where + " (it recomputes activations instead of storing them), or "
           if memory != "low" else "")
    return PSLDInputError(where, "memory",
                          f"PSLD ran out of memory at {run.spec.width}x{run.spec.height} px with a batch of "
                          f"{x.shape[0]} in '{memory}' memory mode (a gradient step stores about {needed:.0f} MiB "
                          f"beyond the loaded models; {free:.0f} MiB free now). The models stay loaded and the next "
                          f"prompt runs. Allocator: {str(error).splitlines()[0][:200]}",
                          fix + "use a smaller image or batch, or cfg 1 (half the UNet memory).")


def psld_sampler(run: PSLDRun) -> comfy.samplers.KSAMPLER:
    """The SAMPLER object (a core KSAMPLER), usable by SamplerCustomAdvanced with a PSLD_Guider."""
    return comfy.samplers.KSAMPLER(sample_psld_comfy, extra_options={"psld_run": run})


def run_psld(guider: PSLDGuider, run: PSLDRun, *, seed: int, steps: int, scheduler: str) -> torch.Tensor:
    """The all-in-one path: an empty latent sized from the operator, seeded noise (comfy.sample.prepare_noise),
    `scheduler` sigmas, progress bar and latent previews, then guider.sample as SamplerCustomAdvanced does.
    Returns the sampled latent (the VAE's latent space, on ComfyUI's intermediate device)."""
    shape = guider.latent_shape(run.y.shape[0], run.spec.height, run.spec.width, run.node_id, "operator")
    device = comfy.model_management.intermediate_device()
    latent = torch.zeros(shape, device=device)  # what EmptyLatentImage makes
    sampling = guider.model_patcher.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, scheduler, steps).cpu()
    noise = comfy.sample.prepare_noise(latent, seed)
    callback = latent_preview.prepare_callback(guider.model_patcher, steps)
    samples = guider.sample(noise, latent, psld_sampler(run), sigmas, callback=callback,
                            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    return samples.to(device)
