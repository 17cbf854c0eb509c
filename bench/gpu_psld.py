"""GPU check and benchmark of PSLD inside ComfyUI: one prepared script, self-checking (exit status 1 on a failure).

For each start-up mode of ComfyUI, in a fresh process (start-up flags decide the model patcher class):

    dynamic    ComfyUI's default flags: on NVIDIA with torch >= 2.8 and comfy-aimdo, ComfyUI 0.30 loads models as
               ModelPatcherDynamic (dynamic VRAM), whose weights autograd cannot use: the bridge must switch to the
               non-dynamic delegate
    legacy     --disable-dynamic-vram

it loads a real-size SD1.5 checkpoint (random weights, UNet 860M + KL VAE, stored fp16; built once with ComfyUI's
classes, see bench/comfy_step.py) through comfy.sd.load_checkpoint_guess_config, as CheckpointLoaderSimple does,
runs everything inside torch.inference_mode() as ComfyUI's executor does, and checks / measures at --size px
(default 512, latent 64 x 64) with --cfg (default 7.5, both CFG branches, as the reference code):

    patchers   whether the user's MODEL / VAE patchers are dynamic, and that PSLD's copies are not
    gradient   the PSLD objective's gradient w.r.t. z_t at one noise level, taken inside guider.sample (through
               UNet, decoder, encoder): finite and non-zero
    ksampler   seconds per step (median callback interval; comfy.sample.sample, sampler ddim, ddim_uniform) and
               peak VRAM (max_memory_allocated growth over the run)
    psld       the same for PSLD_Sampler's path (PSLDGuider + PSLD SAMPLER, box inpainting, reference weights);
               the sample must be finite
    untouched  a KSampler run before and after PSLD gives bit-identical latents

and prints one table row per mode plus the PSLD / KSampler ratios of that mode.

--smoke: the tests' tiny checkpoint at 64 px and 2 steps; runs on CPU (the `dynamic` mode then is legacy too, which
the report says), so the script itself is checked without a GPU:
    .comfyui/venv/bin/python bench/gpu_psld.py --smoke

On a GPU machine it needs: a ComfyUI tree (--comfy, default .comfyui/ComfyUI), a Python with CUDA torch and
ComfyUI's requirements (for 0.30 with dynamic VRAM also comfy-aimdo and comfy-kitchen), and about 4 GB of disk for
the random checkpoint (.artifacts/bench/):
    python bench/gpu_psld.py [--steps 10] [--size 512] [--modes dynamic,legacy]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_step  # noqa: E402  (shared: ComfyUI boot, checkpoints, the two timed methods, peak memory)

REPO = comfy_step.REPO
MODE_FLAGS = {"dynamic": [], "legacy": ["--disable-dynamic-vram"]}


def gradient_probe(runner, pack) -> dict:
    """psld_gradient at the second ddim_uniform noise level, inside guider.sample (under inference mode)."""
    import torch
    import comfy.sample
    import comfy.samplers

    sampling_module, sampler_nodes = pack("psld.sampling"), pack("nodes.sampler_nodes")
    run = sampler_nodes.make_run("PSLD_Sampler", runner.spec, runner.measurement, None, 0.0, None)
    guider = sampler_nodes.make_guider("PSLD_Sampler", runner.model, runner.vae, runner.positive, runner.negative,
                                       runner.cfg)
    found = {}

    def probe(model, x, sigmas, extra_args=None, callback=None, disable=None):
        sigma = sigmas[1] * x.new_ones(x.shape[0])
        y = run.y.to(device=x.device, dtype=x.dtype)
        grad, _, total, residuals = sampling_module.psld_gradient(
            lambda z, s: model(z, s, **extra_args), x, sigma, loss=run.loss, operator=run.spec.operator, y=y,
            decode=guider.vae.decode, encode=guider.vae.encode)
        found.update(norm=float(grad.float().norm()), finite=bool(torch.isfinite(grad).all()),
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


def worker(args) -> dict:
    comfy_root = Path(args.comfy).resolve()
    known = (comfy_root / "comfy" / "cli_args.py").read_text()
    flags = [f for f in MODE_FLAGS[args.mode] if f in known]  # ComfyUI < 0.30 has no dynamic VRAM and no flag
    flags += ["--cpu"] if args.cpu else []
    if not args.smoke:
        flags.append("--fp16-unet")
    nodes = comfy_step.boot(comfy_root, flags)  # before torch is imported, as main.py expects (CUDA allocator)
    import torch
    import comfy.model_management
    model, vae = comfy_step.load(comfy_step.checkpoint_for("tiny" if args.smoke else "sd15", comfy_root))
    runner = comfy_step.Runner(nodes, model, vae, args.size, args.cfg, args.steps)
    import comfyui_version
    report = {"mode": args.mode, "flags": flags, "comfyui": comfyui_version.__version__,
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "unet_dtype": str(model.model_dtype()), "vae_dtype": str(vae.vae_dtype), "size": args.size,
              "steps": args.steps, "cfg": args.cfg, "model_dynamic": _dynamic(model),
              "vae_dynamic": _dynamic(vae.patcher)}
    pack = lambda name: comfy_step.pack(nodes, name)  # noqa: E731

    _, before = runner.ksampler(seed=1)
    report.update({f"gradient_{k}": v for k, v in gradient_probe(runner, pack).items()})

    runner.ksampler()  # warm-up, then the measured runs (time and peak memory in one run each)
    runner.psld()
    measured = {}
    for name in ("ksampler", "psld"):
        result = {}
        peak, method = comfy_step.peak_memory_mib(lambda: result.update(run=getattr(runner, name)()))
        intervals, latent = result["run"]
        measured[name] = latent
        report[f"{name}_step_s"] = statistics.median(intervals) if intervals else float("nan")
        report[f"{name}_peak_mib"] = peak
        report["memory_method"] = method
    report["psld_finite"] = bool(torch.isfinite(measured["psld"]).all())
    _, after = runner.ksampler(seed=1)
    report["ksampler_untouched"] = bool(torch.equal(before, after))
    report["checks"] = checks(report, cuda=comfy.model_management.get_torch_device().type == "cuda")
    return report


def checks(report: dict, cuda: bool) -> dict:
    """name -> (passed, detail)."""
    out = {
        "gradient finite and non-zero": (report["gradient_finite"] and report["gradient_norm"] > 0,
                                         f"norm {report['gradient_norm']:.4g}"),
        "PSLD copies are not dynamic": (not report["gradient_guider_unet_dynamic"]
                                        and not report["gradient_guider_vae_dynamic"], ""),
        "PSLD sample finite": (report["psld_finite"], ""),
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfy", default=str(REPO / ".comfyui" / "ComfyUI"), help="ComfyUI root folder")
    parser.add_argument("--modes", default="dynamic,legacy", help="comma-separated: dynamic, legacy")
    parser.add_argument("--size", type=int, default=None, help="image side in px (default 512; --smoke 64)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default 10; --smoke 2)")
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--smoke", action="store_true", help="tiny checkpoint, 64 px, 2 steps; CPU is fine")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=sorted(MODE_FLAGS), help=argparse.SUPPRESS)
    parser.add_argument("--cpu", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.size = args.size or (64 if args.smoke else 512)
    args.steps = args.steps or (2 if args.smoke else 10)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    failed = 0
    print(f"gpu_psld: {'SMOKE (tiny checkpoint) ' if args.smoke else ''}{args.size} px, {args.steps} steps, "
          f"cfg {args.cfg}, ComfyUI {args.comfy}")
    print(f"{'mode':8} {'device':24} {'unet':14} {'vae':14} {'dyn':4} {'ks s/step':>9} {'psld s/step':>11} "
          f"{'ratio':>6} {'ks MiB':>8} {'psld MiB':>9} {'mem x':>6} {'|grad|':>9}")
    for mode in args.modes.split(","):
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--mode", mode, "--comfy", args.comfy,
                   "--size", str(args.size), "--steps", str(args.steps), "--cfg", str(args.cfg)]
        if args.smoke:
            command.append("--smoke")
        if not comfy_step._has_cuda():
            command.append("--cpu")
        answer = subprocess.run(command, capture_output=True, text=True)
        if answer.returncode != 0:
            failed += 1
            print(f"{mode:8} FAILED (exit {answer.returncode})\n{answer.stderr[-4000:]}")
            continue
        r = json.loads(answer.stdout.strip().splitlines()[-1])
        print(f"{mode:8} {r['device'][:24]:24} {r['unet_dtype']:14} {r['vae_dtype']:14} "
              f"{'yes' if r['model_dynamic'] else 'no':4} {r['ksampler_step_s']:9.4f} {r['psld_step_s']:11.4f} "
              f"{r['psld_step_s'] / r['ksampler_step_s']:6.1f} {r['ksampler_peak_mib']:8.0f} "
              f"{r['psld_peak_mib']:9.0f} {r['psld_peak_mib'] / max(r['ksampler_peak_mib'], 1e-9):6.1f} "
              f"{r['gradient_norm']:9.3g}")
        print(f"         ComfyUI {r['comfyui']}, flags {r['flags']}, memory: {r['memory_method']}")
        for name, (passed, detail) in r["checks"].items():
            failed += not passed
            print(f"         [{'ok' if passed else 'FAIL'}] {name}{': ' + detail if detail else ''}")
    print("all checks passed" if not failed else f"{failed} check(s) failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
