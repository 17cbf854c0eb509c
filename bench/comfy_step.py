"""A PSLD step against a plain KSampler step on the same ComfyUI model, through ComfyUI's own sampling code.

Models (random weights, seeded; built with ComfyUI's classes, saved as a checkpoint and loaded back by
comfy.sd.load_checkpoint_guess_config, as CheckpointLoaderSimple does; cached under .artifacts/bench/):

    tiny   the tests' tiny SD1.5 checkpoint (tools/make_tiny_models.py: one-level UNet, TAESD VAE)
    sd15   the real SD1.5 layout: UNet 860M parameters (320 channels, mult 1-2-4-4) and the KL VAE (84M)
    sdxl   the real SDXL layout: UNet 2.6B parameters (320 channels, mult 1-2-4, transformer depth 2 / 10, context
           2048, pooled-text ADM) and the same KL VAE layout; detected by ComfyUI as SDXL

What runs, in one process, on the same model, conditionings (random [1, 77, 768] text embeddings, positive and
negative), cfg, image size (--size, default 64 px) and ddim_uniform sigmas:

    ksampler  comfy.sample.sample, sampler 'ddim' (what the KSampler node calls): one CFG-batched UNet pass per step
    psld      PSLDGuider + the PSLD SAMPLER through CFGGuider.sample (what PSLD_Sampler calls), box inpainting with
              its reference weights (omega 0.1, gamma 0.01; the weights do not change the cost): UNet, decoder and
              encoder forward and backward per step, in each memory mode of --psld-memory (fast: every activation
              stored; low: block activations recomputed in the backward pass), one row each; `jf` in that list
              adds PSLD with PSLD_GluingLoss gradient = jacobian-free (UNet forward only; fast mode), same weights

Time per step: the sampler callback's timestamps; the median over every step-to-step interval (the first step, which
also loads the models, is not an interval) of --repeats runs after one warm-up run of each, the two methods
alternating so that load from other processes hits both alike. ratio = psld / ksampler.

Peak memory (CPU): each method runs in a fresh subprocess that loads the model and does one warm-up run, returns
freed heap to the OS (glibc malloc_trim), resets the kernel's peak-RSS mark (writes 5 to /proc/self/clear_refs),
runs once more and reads VmHWM: peak resident memory during that run minus the resident memory before it (page
granularity; includes PSLD's per-forward private weight copies and the autograd graph). CUDA: peak of
torch.cuda.max_memory_allocated() over the run minus the allocation before it, in the same way.

--no-warmup skips the warm-up runs (for the slowest layouts on a CPU, where one run takes many minutes): the first
run's model load then falls into the first step, which is not an interval, and into the peak (on a CPU the
weights are resident already, so it adds little).

Usage (a host built by `make host`):
    .comfyui/venv/bin/python bench/comfy_step.py [--models tiny,sd15,sdxl] [--steps 4] [--repeats 3] [--size 64]
                                                 [--psld-memory fast,low,jf] [--no-warmup]
    .comfyui-floor/venv/bin/python bench/comfy_step.py --comfy .comfyui-floor/ComfyUI
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".artifacts" / "bench"
SD15_UNET = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2, 2],
                 channel_mult=[1, 2, 4, 4], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_middle=1,
                 transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], num_heads=8, num_head_channels=-1,
                 context_dim=768, use_spatial_transformer=True, use_linear_in_transformer=False, legacy=False,
                 adm_in_channels=None, use_checkpoint=False)
SDXL_UNET = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2],
                 channel_mult=[1, 2, 4], transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_middle=10,
                 transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], num_heads=-1, num_head_channels=64,
                 context_dim=2048, use_spatial_transformer=True, use_linear_in_transformer=True, legacy=False,
                 adm_in_channels=2816, num_classes="sequential", use_checkpoint=False, use_temporal_attention=False,
                 use_temporal_resblock=False)
SD15_VAE = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
                num_res_blocks=2, attn_resolutions=[], dropout=0.0)
CONTEXT = {"tiny": 768, "sd15": 768, "sdxl": 2048}
POOLED = {"sdxl": 1280}  # SDXL's ADM input: the pooled text embedding (plus sizes, which ComfyUI adds)


# ------------------------------------------------------------------------------------------------ ComfyUI in-process

def boot(comfy_root: Path, comfy_args: list[str]):
    """Import ComfyUI from comfy_root as main.py starts it (its start-up decides dynamic VRAM, device, attention),
    then load this pack with ComfyUI's own custom-node loader. Returns ComfyUI's `nodes` module."""
    sys.path.insert(0, str(comfy_root))
    os.chdir(comfy_root)
    sys.argv = [str(comfy_root / "main.py"), *comfy_args]
    import main  # noqa: F401  (ComfyUI's start-up: argument parsing, logging, dynamic VRAM on 0.30)
    import nodes
    if not asyncio.run(nodes.load_custom_node(str(REPO))):
        raise RuntimeError(f"ComfyUI could not load the pack at {REPO}")
    return nodes


def pack(nodes, name: str):
    """A module of the pack, as ComfyUI loaded it."""
    import importlib
    root = nodes.NODE_CLASS_MAPPINGS["PSLD_Sampler"].__module__.rsplit(".nodes.", 1)[0]
    return importlib.import_module(f"{root}.{name}")


# ------------------------------------------------------------------------------------------------ models

def seeded_init_(module, seed: int):
    """tools/make_tiny_models.py's deterministic initialisation (imported here, after the boot: it imports torch)."""
    sys.path.insert(0, str(REPO / "tools"))
    from make_tiny_models import seeded_init_ as initialise
    return initialise(module, seed)


def sd15_checkpoint(comfy_root: Path, seed: int = 0) -> Path:
    """Real-size SD1.5 UNet + KL VAE, random weights, fp16, as a checkpoint ComfyUI detects as SD15 (no CLIP)."""
    return real_layout_checkpoint("sd15", SD15_UNET, seed)


def sdxl_checkpoint(comfy_root: Path, seed: int = 0) -> Path:
    """Real-size SDXL UNet + KL VAE, random weights, fp16, as a checkpoint ComfyUI detects as SDXL (no CLIP)."""
    return real_layout_checkpoint("sdxl", SDXL_UNET, seed)


def real_layout_checkpoint(name: str, unet_config: dict, seed: int) -> Path:
    path = CACHE / f"random_{name}_unet_kl_{seed}.safetensors"
    if path.exists():
        return path
    import torch
    from safetensors.torch import save_file
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    state = {}
    unet = seeded_init_(UNetModel(dtype=torch.float32, **unet_config), seed)
    state.update({f"model.diffusion_model.{k}": v.half() for k, v in unet.state_dict().items()})
    del unet
    vae = seeded_init_(AutoencoderKL(ddconfig=SD15_VAE, embed_dim=4), seed + 1)
    state.update({f"first_stage_model.{k}": v.half() for k, v in vae.state_dict().items()})
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    save_file({k: v.contiguous() for k, v in state.items()}, str(partial), metadata={"note": "random weights"})
    partial.rename(path)
    return path


def tiny_checkpoint(comfy_root: Path) -> Path:
    out = REPO / ".artifacts" / "models"
    subprocess.run([sys.executable, str(REPO / "tools" / "make_tiny_models.py"), "--comfy", str(comfy_root),
                    "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
    return out / "checkpoints" / "psld_tiny_sd15.safetensors"


def checkpoint_for(model_name: str, comfy_root: Path) -> Path:
    return {"tiny": tiny_checkpoint, "sd15": sd15_checkpoint, "sdxl": sdxl_checkpoint}[model_name](comfy_root)


def load(path: Path):
    """(MODEL, VAE) as CheckpointLoaderSimple loads them (inside inference mode, as ComfyUI runs nodes)."""
    import torch
    import comfy.sd
    with torch.inference_mode():
        model, _, vae = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=False)[:3]
    return model, vae


def conditionings(model_name: str, seed: int = 0):
    """Random text embeddings of the layout's context width (positive) and zeros (negative), with SDXL's pooled
    embedding where the layout has one."""
    import torch
    with torch.inference_mode():
        generator = torch.Generator().manual_seed(seed)
        width = CONTEXT[model_name]
        extra = ({"pooled_output": torch.randn(1, POOLED[model_name], generator=generator)}
                 if model_name in POOLED else {})
        positive = [[torch.randn(1, 77, width, generator=generator), extra]]
        negative = [[torch.zeros(1, 77, width), {k: torch.zeros_like(v) for k, v in extra.items()}]]
    return positive, negative


def problem(nodes, size: int):
    """(OperatorSpec, measurement IMAGE): centred box inpainting of the bundled photo at size x size."""
    import numpy as np
    import torch
    from PIL import Image
    photo = Image.open(REPO / "tests" / "data" / "astronaut_512.png").convert("RGB").resize((size, size))
    image = torch.from_numpy(np.array(photo, dtype=np.float32) / 255.0)[None]
    classes = nodes.NODE_CLASS_MAPPINGS
    with torch.inference_mode():
        spec = classes["PSLD_LinearOperator"].execute(
            task="box_inpaint", width=size, height=size, seed=0, projection="paper", box_size=0,
            box_placement="centred", drop_fraction=0.0, sr_scale="4", sr_mode="bicubic", kernel_size=0,
            blur_sigma=3.0, motion_intensity=0.5).result[0]
        measurement = classes["PSLD_Degrade"].execute(image=image, operator=spec, sigma_y=0.05, seed=0).result[0]
    return spec, measurement


# ------------------------------------------------------------------------------------------------ the two methods

class Runner:
    """Runs a plain KSampler or a PSLD sampling on one loaded model; returns the per-step callback times."""

    def __init__(self, nodes, model, vae, size: int, cfg: float, steps: int, model_name: str = "sd15"):
        import torch
        self.nodes, self.model, self.vae, self.cfg, self.steps = nodes, model, vae, cfg, steps
        self.positive, self.negative = conditionings(model_name)
        self.spec, self.measurement = problem(nodes, size)
        self.latent = torch.zeros(1, 4, size // 8, size // 8)

    def method(self, name: str):
        """'ksampler', 'psld-<memory mode>' or 'psld-jf' (Jacobian-free, fast mode) as a callable of the seed."""
        if name == "ksampler":
            return self.ksampler
        if name == "psld-jf":
            return lambda seed=0: self.psld(seed, "fast", jacobian_free=True)
        return lambda seed=0: self.psld(seed, name.split("-", 1)[1])

    def _timed(self, run):
        import torch
        import comfy.model_management
        device = comfy.model_management.get_torch_device()
        stamps = []

        def callback(*_):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            stamps.append(time.perf_counter())

        with torch.inference_mode():
            result = run(callback)
        return [b - a for a, b in zip(stamps, stamps[1:])], result

    def ksampler(self, seed: int = 0):
        import comfy.sample
        noise = comfy.sample.prepare_noise(self.latent, seed)
        return self._timed(lambda callback: comfy.sample.sample(
            self.model, noise, self.steps, self.cfg, "ddim", "ddim_uniform", self.positive, self.negative,
            self.latent, callback=lambda step, x0, x, total: callback(), disable_pbar=True, seed=seed))

    def psld(self, seed: int = 0, memory: str = "auto", jacobian_free: bool = False):
        import torch
        import comfy.sample
        import comfy.samplers
        sampler_nodes, bridge_sampler = (pack(self.nodes, m) for m in ("nodes.sampler_nodes", "nodes.bridge_sampler"))
        run = sampler_nodes.make_run("PSLD_Sampler", self.spec, self.measurement, None, 0.0, None)
        if jacobian_free:  # the same reference weights, through PSLD_GluingLoss with gradient = jacobian-free
            reference = run.loss
            with torch.inference_mode():
                loss = self.nodes.NODE_CLASS_MAPPINGS["PSLD_GluingLoss"].execute(
                    omega=reference.omega, gamma=reference.gamma, variant=reference.variant,
                    norm="squared" if reference.squared else "norm", projection="operator",
                    fresh_noise=reference.fresh_measurement_noise,
                    detach_gluing_target=reference.detach_gluing_target, gradient="jacobian-free").result[0]
            run = sampler_nodes.make_run("PSLD_Sampler", self.spec, self.measurement, loss, 0.0, None)
        guider = sampler_nodes.make_guider("PSLD_Sampler", self.model, self.vae, self.positive, self.negative,
                                           self.cfg, memory)
        sampling = guider.model_patcher.get_model_object("model_sampling")
        sigmas = comfy.samplers.calculate_sigmas(sampling, "ddim_uniform", self.steps).cpu()
        noise = comfy.sample.prepare_noise(self.latent, seed)
        return self._timed(lambda callback: guider.sample(
            noise, self.latent, bridge_sampler.psld_sampler(run), sigmas,
            callback=lambda step, x0, x, total: callback(), disable_pbar=True, seed=seed))


# ------------------------------------------------------------------------------------------------ peak memory

def _trim_heap() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_mib(run) -> tuple[float, str]:
    """Peak memory growth during run() in MiB, and the method used."""
    import torch
    import comfy.model_management
    device = comfy.model_management.get_torch_device()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20, "cuda max_memory_allocated"
    _trim_heap()
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # reset VmHWM to the current RSS
        method = "VmHWM after clear_refs"
    except OSError:
        method = "VmHWM (not resettable: upper bound)"
    before = _status_kib("VmRSS")
    run()
    return (_status_kib("VmHWM") - before) / 1024, method


# ------------------------------------------------------------------------------------------------ workers and report

def methods(args) -> list[str]:
    return ["ksampler"] + [f"psld-{mode}" for mode in args.psld_memory.split(",")]


def worker(args) -> dict:
    nodes = boot(Path(args.comfy).resolve(), args.comfy_args)  # before torch is imported, as main.py expects
    import torch
    model, vae = load(checkpoint_for(args.model, Path(args.comfy).resolve()))
    runner = Runner(nodes, model, vae, args.size, args.cfg, args.steps, args.model)
    import comfy.model_management
    info = {"model": args.model, "device": str(comfy.model_management.get_torch_device()),
            "threads": torch.get_num_threads(), "unet_dtype": str(model.model_dtype()),
            "vae_dtype": str(vae.vae_dtype), "size": args.size, "steps": args.steps, "cfg": args.cfg}
    if args.memory:  # one method, warm-up then the measured run
        method = runner.method(args.memory)
        if not args.no_warmup:
            method()
        info["peak_mib"], info["memory_method"] = peak_memory_mib(method)
        info["method"] = args.memory
        return info
    names = methods(args)
    times = {name: [] for name in names}
    if not args.no_warmup:
        for name in names:
            runner.method(name)()
    for _ in range(args.repeats):
        for name in names:
            intervals, result = runner.method(name)()
            times[name] += intervals
            if not bool(torch.isfinite(result).all()):
                raise RuntimeError(f"{name} produced non-finite latents")
    info["step_s"] = {k: statistics.median(v) for k, v in times.items()}
    info["step_s_min"] = {k: min(v) for k, v in times.items()}
    return info


def run_worker(args, model: str, memory: str | None = None) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--model", model, "--comfy", args.comfy,
               "--size", str(args.size), "--steps", str(args.steps), "--repeats", str(args.repeats),
               "--cfg", str(args.cfg), "--psld-memory", args.psld_memory]
    if memory:
        command += ["--memory", memory]
    if args.no_warmup:
        command += ["--no-warmup"]
    if args.comfy_args:
        command += ["--", *args.comfy_args]
    answer = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(answer.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfy", default=str(REPO / ".comfyui" / "ComfyUI"), help="ComfyUI root of a built host")
    parser.add_argument("--models", default="tiny,sd15", help="comma-separated: tiny, sd15, sdxl")
    parser.add_argument("--size", type=int, default=64, help="image side in px (a multiple of 8)")
    parser.add_argument("--steps", type=int, default=4, help="sampler steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each method")
    parser.add_argument("--cfg", type=float, default=7.5, help="CFG scale (not 1: both branches run, as in the "
                                                               "reference code)")
    parser.add_argument("--psld-memory", default="fast,low",
                        help="comma-separated memory modes of PSLD to measure (fast, low, auto), and jf for the "
                             "Jacobian-free gradient")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--no-timing", action="store_true", help="skip the timing subprocess")
    parser.add_argument("--no-warmup", action="store_true", help="no warm-up runs (see above)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--memory", help=argparse.SUPPRESS)  # the method whose peak a worker measures
    parser.add_argument("comfy_args", nargs="*", help="arguments for ComfyUI after --, e.g. -- --cpu")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    if not args.comfy_args:
        args.comfy_args = ["--cpu"] if not _has_cuda() else []
    print(f"comfy_step: ComfyUI {args.comfy} args {args.comfy_args}; {args.size} px, {args.steps} steps, "
          f"cfg {args.cfg}, {args.repeats} timed runs{', no warm-up' if args.no_warmup else ''}")
    print(f"{'model':6} {'device':8} {'unet':14} {'method':12} {'s/step':>9} {'ratio':>6} {'ratio(min)':>10} "
          f"{'peak MiB':>9} {'mem ratio':>9}")
    for model in args.models.split(","):
        timing = None if args.no_timing else run_worker(args, model)
        peaks = {} if args.no_memory else {m: run_worker(args, model, m)["peak_mib"] for m in methods(args)}
        for name in methods(args):
            step = timing["step_s"][name] if timing else math.nan
            ratio = step / timing["step_s"]["ksampler"] if timing else math.nan
            ratio_min = timing["step_s_min"][name] / timing["step_s_min"]["ksampler"] if timing else math.nan
            peak = peaks.get(name, math.nan)
            print(f"{model:6} {(timing or {}).get('device', '-'):8} {(timing or {}).get('unet_dtype', '-'):14} "
                  f"{name:12} {step:9.3f} {ratio:6.1f} {ratio_min:10.1f} {peak:9.0f} "
                  f"{peak / max(peaks.get('ksampler', math.nan), 1e-9):9.1f}")
        if peaks:
            print(f"       memory: {'VmHWM' if not _has_cuda() else 'cuda max_memory_allocated'} growth over one run")
    return 0


def _has_cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    sys.exit(main())
