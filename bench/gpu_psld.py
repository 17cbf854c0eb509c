"""GPU check and benchmark of PSLD inside ComfyUI: one prepared script, self-checking (exit status 1 on a failure).

For each model of --models (default sd15) and each start-up mode of ComfyUI, in a fresh process (start-up flags
decide the model patcher class):

    dynamic    ComfyUI's default flags: on NVIDIA with torch >= 2.8 and comfy-aimdo, ComfyUI 0.30 loads models as
               ModelPatcherDynamic (dynamic VRAM), whose weights autograd cannot use: the bridge must switch to the
               non-dynamic delegate
    legacy     --disable-dynamic-vram

it loads a real-size checkpoint of the model's layout (random weights, stored fp16; built once with ComfyUI's
classes, see bench/comfy_step.py: sd15 = UNet 860M + KL VAE, at 512 px; sdxl = UNet 2.6B + KL VAE, at 1024 px)
through comfy.sd.load_checkpoint_guess_config, as CheckpointLoaderSimple does, runs everything inside
torch.inference_mode() as ComfyUI's executor does, and checks / measures at --size px (default: the model's size)
with --cfg (default 7.5, both CFG branches, as the reference code):

    patchers   whether the user's MODEL / VAE patchers are dynamic, and that PSLD's copies are not
    gradient   the PSLD objective's gradient w.r.t. z_t at one noise level, taken inside guider.sample through the
               sampler's own gradient path (UNet, decoder, encoder; memory 'auto'): finite and non-zero
    methods    seconds per step (median callback interval, after a 2-step warm-up run of each method) and peak
               memory (comfy_step.peak_memory_mib: CUDA max_memory_allocated growth over the run) of
                   ksampler    comfy.sample.sample, sampler ddim, ddim_uniform (what KSampler runs)
                   psld-fast   PSLD_Sampler's path (PSLDGuider + PSLD SAMPLER, box inpainting, reference weights),
                               memory 'fast' (every activation stored)
                   psld-low    the same, memory 'low' (block activations recomputed in the backward pass)
                   psld-jf     the same with PSLD_GluingLoss gradient='jacobian-free' (reference weights, built
                               through the node), memory 'fast'
               every PSLD sample must be finite; a method that runs out of memory is reported as OOM, not failed
    fast=low   psld-fast and psld-low give the same sample up to float rounding: max |fast - low| below 1e-2 of
               max |fast| (fp16 UNet; the two modes run the same arithmetic, only recomputed)
    untouched  a KSampler run before and after the PSLD runs gives bit-identical latents

and prints one table row per model, mode and method (ratios against KSampler of that model and mode), each worker's
setup line and its checks.

--smoke: the tests' tiny checkpoint (--models tiny) at 64 px and 2 steps; runs on CPU (the `dynamic` mode then is
legacy too, which the report says), so the script itself is checked without a GPU, on either host:
    .comfyui/venv/bin/python bench/gpu_psld.py --smoke
    .comfyui-floor/venv/bin/python bench/gpu_psld.py --smoke --comfy .comfyui-floor/ComfyUI

On a GPU machine it needs: a ComfyUI tree (--comfy, default .comfyui/ComfyUI), a Python with CUDA torch and
ComfyUI's requirements (for 0.30 with dynamic VRAM also comfy-aimdo), and disk for the random checkpoints
(.artifacts/bench/: about 2 GB for sd15, 5 GB for sdxl). `make gpu-check` (tools/gpu_check.sh) stages all of it
for the device machine and prints the call:
    python bench/gpu_psld.py [--models sd15,sdxl] [--steps 10] [--size PX] [--modes dynamic,legacy]
                             [--worker-log DIR] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_step  # noqa: E402  (shared: ComfyUI boot, checkpoints, KSampler / PSLD runner, peak memory)

REPO = comfy_step.REPO
MODE_FLAGS = {"dynamic": [], "legacy": ["--disable-dynamic-vram"]}
DEFAULT_SIZE = {"tiny": 64, "sd15": 512, "sdxl": 1024}
METHODS = ("ksampler", "psld-fast", "psld-low", "psld-jf")
WARMUP_STEPS = 2  # the first step loads the models, the second runs every kernel once
SAME_SAMPLE_TOLERANCE = 1e-2  # fast vs low: max |difference| / max |fast latent|


# ------------------------------------------------------------------------------------------------ worker

def gradient_probe(runner, pack) -> dict:
    """psld_gradient at the second ddim_uniform noise level, inside guider.sample (under inference mode), through
    the gradient path the PSLD sampler uses (memory 'auto')."""
    import torch
    import comfy.sample
    import comfy.samplers

    sampling_module, sampler_nodes = pack("psld.sampling"), pack("nodes.sampler_nodes")
    bridge_sampler = pack("nodes.bridge_sampler")
    run = sampler_nodes.make_run("PSLD_Sampler", runner.spec, runner.measurement, None, 0.0, None)
    guider = sampler_nodes.make_guider("PSLD_Sampler", runner.model, runner.vae, runner.positive, runner.negative,
                                       runner.cfg)
    found = {}

    def probe(model, x, sigmas, extra_args=None, callback=None, disable=None):
        memory = guider.choose_memory_mode(x)
        denoise, decode, encode = bridge_sampler.gradient_path(model, guider, dict(extra_args or {}),
                                                               low_memory=memory == "low")
        sigma = sigmas[1] * x.new_ones(x.shape[0])
        y = run.y.to(device=x.device, dtype=x.dtype)
        grad, _, total, residuals = sampling_module.psld_gradient(
            denoise, x, sigma, loss=run.loss, operator=run.spec.operator, y=y, decode=decode, encode=encode)
        found.update(norm=float(grad.float().norm()), finite=bool(torch.isfinite(grad).all()), memory=memory,
                     objective=float(total), residuals={k: float(v.sum()) for k, v in residuals.items()})
        return x

    sampling = guider.model_patcher.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, "ddim_uniform", 4).cpu()
    with torch.inference_mode():
        guider.sample(comfy.sample.prepare_noise(runner.latent, 0), runner.latent, comfy.samplers.KSAMPLER(probe),
                      sigmas, seed=0)
    found["guider_unet_dynamic"] = _dynamic(guider.model_patcher)
    found["guider_vae_dynamic"] = _dynamic(guider.vae.patcher)
    return found


def _dynamic(patcher) -> bool:
    is_dynamic = getattr(patcher, "is_dynamic", None)
    return bool(is_dynamic()) if is_dynamic is not None else False


def method_runs(runner) -> dict:
    """name -> a callable returning (step intervals, latent), all with seed 0."""
    return {"ksampler": lambda: runner.ksampler(seed=0),
            "psld-fast": lambda: runner.psld(seed=0, memory="fast"),
            "psld-low": lambda: runner.psld(seed=0, memory="low"),
            "psld-jf": lambda: runner.psld(seed=0, memory="fast", jacobian_free=True)}


def out_of_memory(error: BaseException, pack) -> bool:
    """torch's OOM, or the pack's PSLDInputError that replaces it (input 'memory')."""
    return getattr(error, "input_name", None) == "memory" or pack("nodes.bridge_sampler").is_out_of_memory(error)


def warm_up(runner, runs: dict, pack) -> None:
    steps, runner.steps = runner.steps, WARMUP_STEPS
    try:
        for run in runs.values():
            try:
                run()
            except Exception as error:  # the measured run reports it
                if not out_of_memory(error, pack):
                    raise
    finally:
        runner.steps = steps


def measure(run, pack) -> tuple[dict, object]:
    """(step time, peak memory, finite) of one run, or {"oom": message}; and its latent (None after an OOM)."""
    import torch
    import comfy.model_management
    result = {}
    try:
        peak, method = comfy_step.peak_memory_mib(lambda: result.update(run=run()))
    except Exception as error:
        if not out_of_memory(error, pack):
            raise
        comfy.model_management.soft_empty_cache()
        return {"oom": str(error).splitlines()[0][:300]}, None
    intervals, latent = result["run"]
    latent = latent.detach().float().cpu()
    return {"step_s": statistics.median(intervals) if intervals else math.nan, "peak_mib": peak,
            "memory_method": method, "finite": bool(torch.isfinite(latent).all())}, latent


def relative_difference(a, b) -> float:
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


def startup_flags(comfy_root: Path, args) -> list[str]:
    known = (comfy_root / "comfy" / "cli_args.py").read_text()
    flags = [f for f in MODE_FLAGS[args.mode] if f in known]  # ComfyUI < 0.30 has no dynamic VRAM and no flag
    flags += ["--cpu"] if args.cpu else []
    flags += ["--fp16-unet"] if args.model != "tiny" else []
    return flags


def worker(args) -> dict:
    comfy_root = Path(args.comfy).resolve()
    flags = startup_flags(comfy_root, args)
    nodes = comfy_step.boot(comfy_root, flags)  # before torch is imported, as main.py expects (CUDA allocator)
    import torch
    import comfy.model_management
    import comfyui_version
    model, vae = comfy_step.load(comfy_step.checkpoint_for(args.model, comfy_root))
    runner = comfy_step.Runner(nodes, model, vae, args.size, args.cfg, args.steps, model_name=args.model)
    report = {"model": args.model, "mode": args.mode, "flags": flags, "comfyui": comfyui_version.__version__,
              "torch": torch.__version__,
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "unet_dtype": str(model.model_dtype()), "vae_dtype": str(vae.vae_dtype), "size": args.size,
              "steps": args.steps, "cfg": args.cfg, "model_dynamic": _dynamic(model),
              "vae_dynamic": _dynamic(vae.patcher)}
    pack = lambda name: comfy_step.pack(nodes, name)  # noqa: E731

    _, before = runner.ksampler(seed=1)
    report.update({f"gradient_{k}": v for k, v in gradient_probe(runner, pack).items()})
    runs = method_runs(runner)
    warm_up(runner, runs, pack)
    latents = {}
    for name, run in runs.items():
        report[name], latents[name] = measure(run, pack)
    if latents["psld-fast"] is not None and latents["psld-low"] is not None:
        report["fast_low_difference"] = relative_difference(latents["psld-fast"], latents["psld-low"])
    _, after = runner.ksampler(seed=1)
    report["ksampler_untouched"] = bool(torch.equal(before, after))
    report["checks"] = checks(report, cuda=comfy.model_management.get_torch_device().type == "cuda")
    return report


def checks(report: dict, cuda: bool) -> dict:
    """name -> [passed, detail]."""
    psld = [m for m in METHODS if m != "ksampler" and "oom" not in report[m]]
    difference = report.get("fast_low_difference")
    out = {
        "gradient finite and non-zero": (report["gradient_finite"] and report["gradient_norm"] > 0,
                                         f"norm {report['gradient_norm']:.4g}, memory {report['gradient_memory']}"),
        "PSLD copies are not dynamic": (not report["gradient_guider_unet_dynamic"]
                                        and not report["gradient_guider_vae_dynamic"], ""),
        "PSLD samples finite": (all(report[m]["finite"] for m in psld), ", ".join(psld) + " ran"),
        "fast and low give the same sample": (
            difference is None or difference < SAME_SAMPLE_TOLERANCE,
            f"max |fast - low| / max |fast| = {difference:.2e} (tolerance {SAME_SAMPLE_TOLERANCE:g}: float rounding)"
            if difference is not None else "not compared: a mode ran out of memory"),
        "KSampler bit-identical after PSLD": (report["ksampler_untouched"], ""),
    }
    if report["mode"] == "dynamic" and cuda:
        out["dynamic VRAM active (the path under test)"] = (
            report["model_dynamic"], "the user's MODEL is ModelPatcherDynamic" if report["model_dynamic"] else
            "ComfyUI did not enable dynamic VRAM (comfy-aimdo missing, torch < 2.8, or ComfyUI < 0.30): this mode "
            "did not cover the dynamic path")
    if report["mode"] == "legacy":
        out["legacy patchers"] = (not report["model_dynamic"], "")
    return {k: [bool(v[0]), v[1]] for k, v in out.items()}


# ------------------------------------------------------------------------------------------------ parent

def worker_command(args, model: str, mode: str) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--model", model, "--mode", mode,
               "--comfy", args.comfy, "--size", str(args.size or DEFAULT_SIZE[model]), "--steps", str(args.steps),
               "--cfg", str(args.cfg)]
    return command + (["--cpu"] if not comfy_step._has_cuda() else [])


def run_worker(args, model: str, mode: str) -> tuple[dict | None, str]:
    """(report, error text): the worker's report, or None and the end of its stderr."""
    command = worker_command(args, model, mode)
    if args.worker_log:
        log = Path(args.worker_log) / f"gpu_psld-{model}-{mode}.log"
        with open(log, "w") as stderr:
            answer = subprocess.run(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
        where, stderr_tail = f", stderr in {log}", log.read_text()[-4000:]
    else:
        answer = subprocess.run(command, capture_output=True, text=True)
        where, stderr_tail = "", answer.stderr[-4000:]
    if answer.returncode != 0:
        return None, f"exit {answer.returncode}{where}; its end:\n{stderr_tail}"
    return json.loads(answer.stdout.strip().splitlines()[-1]), ""


HEADER = (f"{'model':6} {'mode':8} {'method':10} {'s/step':>9} {'x ks':>6} {'peak MiB':>9} {'x ks':>6}")


def table_rows(r: dict) -> list[str]:
    base = r["ksampler"]
    rows = []
    for name in METHODS:
        m = r[name]
        if "oom" in m:
            rows.append(f"{r['model']:6} {r['mode']:8} {name:10} {'OOM':>9}   {m['oom'][:90]}")
            continue
        rows.append(f"{r['model']:6} {r['mode']:8} {name:10} {m['step_s']:9.4f} "
                    f"{m['step_s'] / base.get('step_s', math.nan):6.1f} {m['peak_mib']:9.0f} "
                    f"{m['peak_mib'] / max(base.get('peak_mib', math.nan), 1e-9):6.1f}")
    return rows


def setup_line(r: dict) -> str:
    memory = next((r[m]["memory_method"] for m in METHODS if "memory_method" in r[m]), "-")
    return (f"{'':16}{r['device']}, torch {r['torch']}, ComfyUI {r['comfyui']}, flags {r['flags']}, "
            f"{r['size']} px, unet {r['unet_dtype']}, vae {r['vae_dtype']}, MODEL dynamic "
            f"{'yes' if r['model_dynamic'] else 'no'}, |grad| {r['gradient_norm']:.3g}, memory: {memory}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfy", default=str(REPO / ".comfyui" / "ComfyUI"), help="ComfyUI root folder")
    parser.add_argument("--models", default=None, help="comma-separated: sd15, sdxl, tiny (default sd15; --smoke "
                                                       "tiny)")
    parser.add_argument("--modes", default="dynamic,legacy", help="comma-separated: dynamic, legacy")
    parser.add_argument("--size", type=int, default=None, help="image side in px for every model (default: sd15 "
                                                               "512, sdxl 1024, tiny 64)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default 10; --smoke 2)")
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--smoke", action="store_true", help="tiny checkpoint, 64 px, 2 steps; CPU is fine")
    parser.add_argument("--worker-log", help="folder for each worker's stderr (ComfyUI's log), one file each")
    parser.add_argument("--json", help="file for every worker's report, rewritten after each worker")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=sorted(DEFAULT_SIZE), help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=sorted(MODE_FLAGS), help=argparse.SUPPRESS)
    parser.add_argument("--cpu", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.models = args.models or ("tiny" if args.smoke else "sd15")
    args.steps = args.steps or (2 if args.smoke else 10)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    for model in args.models.split(","):
        if model not in DEFAULT_SIZE:
            parser.error(f"unknown model {model!r} (allowed: {', '.join(DEFAULT_SIZE)})")

    failed, reports = 0, []
    sizes = ", ".join(f"{m} {args.size or DEFAULT_SIZE[m]} px" for m in args.models.split(","))
    print(f"gpu_psld: {'SMOKE (tiny checkpoint) ' if args.smoke else ''}{sizes}; {args.steps} steps, cfg {args.cfg}, "
          f"ComfyUI {args.comfy}; x ks = ratio to KSampler of the same model and mode")
    print(HEADER)
    for model in args.models.split(","):
        for mode in args.modes.split(","):
            report, error = run_worker(args, model, mode)
            if report is None:
                failed += 1
                print(f"{model:6} {mode:8} FAILED: {error}")
                continue
            reports.append(report)
            if args.json:
                Path(args.json).write_text(json.dumps(reports, indent=1))
            print("\n".join(table_rows(report)))
            print(setup_line(report))
            for name, (passed, detail) in report["checks"].items():
                failed += not passed
                print(f"{'':16}[{'ok' if passed else 'FAIL'}] {name}{': ' + detail if detail else ''}")
    print("all checks passed" if not failed else f"{failed} check(s) failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
