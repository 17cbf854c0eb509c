"""Restoration quality of PSLD on the bundled demo prior (Fashion-MNIST 32 x 32), against its latent baselines, pixel
baselines and what a ComfyUI user would do without the pack: PSNR, SSIM, measurement residual and time per image.

Runs in-process on a ComfyUI host (booted as bench/comfy_step.py boots it) through the real nodes, inside
torch.inference_mode() as ComfyUI's executor runs them:

    PSLD, GML-DPS, LDPS   PSLD_LinearOperator -> PSLD_Degrade -> PSLD_GluingLoss(variant) -> PSLD_Sampler
    PSLD Jacobian-free    the same with PSLD_GluingLoss gradient = jacobian-free (no UNet backward; tuned as PSLD)
                          (the demo prior from nodes.demo_model.load_demo_prior, conditioning "any" = unconditional,
                          cfg 1, eta 0, ddim_uniform; a batch of images is one IMAGE batch, one seed per batch)
    A^T y, A^+ y, TV-LS   psld/baselines.py on the same measurement (TV-LS: Chambolle-Pock, [-1, 1] box)
    KSampler mask         inpainting only: VAEEncode(measurement) -> SetLatentNoiseMask(hole) -> KSampler (ddim,
                          ddim_uniform, same steps, cfg 1, denoise 1.0) -> VAEDecode, nothing pasted back;
                          "+ paste" composites the measurement's known pixels over it (ImageCompositeMasked), as
                          careful inpainting workflows do

Tasks at 32 x 32 (sigma_y = 0.05 in [-1, 1] units, as in every PSLD/DPS config; operator seed 0):

    box_inpaint        centred 16 x 16 box: the paper's 128 box at 256 px (half of each side), placed as the paper
                       text says (the reference code places it randomly)
    random_inpaint     70 % of the pixels dropped (one mask): the top of the reference code's U(0.3, 0.7) range and
                       ReSample's setting; fixed so that every image gets the same difficulty
    super_resolution   x4, antialiased bicubic (32 -> 8), as the reference
    gaussian_deblur    sigma 1.5 px, kernel 13 (its whole truncate-4 support). PSLD-SD blurs with sigma 3 at 512 px
                       images nearest-upsampled from 256, i.e. 1.5 source pixels; the reference's own scaling to 32 px
                       (sigma 3 x 32 / 256 = 0.375 px) would leave almost nothing to restore. Blurred, noiseless
                       test images score about 17.8 dB
    motion_deblur      kernel 9 (61 x 32 / 256 rounded to odd: the pack's own reference size at 32 px; the kernel
                       path scales with the kernel size), intensity 0.5 (reference), seed 0: about 17.6 dB blurred,
                       the same difficulty as the Gaussian blur

Images: the first --images of Fashion-MNIST's test split (t10k), 28 x 28 padded to 32 x 32, gray on RGB. Tuning
(--tune) uses the first --tune-images of the validation split (the last 1000 training images, which the demo prior
never trained on) and picks, by mean PSNR, PSLD's omega (gamma = omega / 10, the reference ratio) then its gamma,
the step weight omega of GML-DPS (gamma = omega / 10) and LDPS, and TV-LS's lambda; the grids and the winners are
written out. --no-tune uses the reference weights of psld.losses.reference_loss (tuned for 1000 steps at 512 px)
and lambda 0.02. The steps sweep runs PSLD with box inpainting's weights on the first --sweep-images test images.

Metrics on images in [0, 1] (data range 1): PSNR and SSIM (psld/metrics.py; Wang et al. 2004 Gaussian window),
mean +- sample standard deviation over the images; residual = ||A x_hat - y|| / sqrt(m) in [-1, 1] units (a
perfect restoration scores about sigma_y = 0.05, since y holds that noise); s/img = wall time of the method on a
batch divided by the batch size (sampling, decoding and the method's node calls, not the degradation).

Usage (from the repository root; a host built by `make host`, Fashion-MNIST from `apt-get install
dataset-fashion-mnist` or any folder with its idx .gz files):
    .comfyui/venv/bin/python bench/quality.py [--images 100] [--steps 50] [--tasks all] [--methods all]
        [--sweep-steps 25,50,100,250,1000] [--sweep-images 20] [--tune | --no-tune] [--out .artifacts/quality]
    .comfyui/venv/bin/python bench/quality.py --quick     # smoke run: 2 bundled images, 3 steps, tiny grids
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from comfy_step import boot, pack  # noqa: E402  (ComfyUI start-up as main.py does it, the pack's modules)

SIZE = 32
SIGMA_Y = 0.05
OPERATOR_SEED = 0
DEGRADE_SEED = {"test": 1, "validation": 2}  # measurement noise: image i of a split gets draw i of this seed
SAMPLER_SEED = 0  # initial noise of batch k: seed SAMPLER_SEED + k
DATA_DIRS = (Path("/usr/share/datasets/fashion-mnist"), REPO / ".devcarry" / "fmnist")
VALIDATION = 1000  # the last training images: the demo prior's held-out split

OPERATOR_DEFAULTS = dict(width=SIZE, height=SIZE, seed=OPERATOR_SEED, projection="paper", box_size=0,
                         box_placement="random", drop_fraction=0.0, sr_scale="4", sr_mode="bicubic", kernel_size=0,
                         blur_sigma=3.0, motion_intensity=0.5)
TASKS = {
    "box_inpaint": dict(task="box_inpaint", box_size=16, box_placement="centred"),
    "random_inpaint": dict(task="random_inpaint", drop_fraction=0.7),
    "super_resolution": dict(task="super_resolution", sr_scale="4", sr_mode="bicubic"),
    "gaussian_deblur": dict(task="gaussian_deblur", kernel_size=13, blur_sigma=1.5),
    "motion_deblur": dict(task="motion_deblur", kernel_size=9, motion_intensity=0.5),
}
INPAINT_TASKS = ("box_inpaint", "random_inpaint")
# method id -> PSLD_GluingLoss variant; psld-jf is PSLD with the Jacobian-free gradient (PSLD_GluingLoss gradient)
LATENT_METHODS = {"psld": "PSLD", "psld-jf": "PSLD", "gml-dps": "GML-DPS", "ldps": "LDPS"}
JACOBIAN_FREE = ("psld-jf",)
METHODS = ("psld", "psld-jf", "gml-dps", "ldps", "adjoint", "pinv", "tv", "ksampler-mask")
LABELS = {"psld": "PSLD", "psld-jf": "PSLD Jacobian-free", "gml-dps": "GML-DPS", "ldps": "LDPS", "adjoint": "A^T y", "pinv": "A^+ y", "tv": "TV-LS",
          "ksampler-mask": "KSampler + noise mask", "ksampler-mask-paste": "KSampler + noise mask + paste"}

OMEGA_GRID = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
GAMMA_RATIOS = (0.0, 0.03, 0.1, 0.3, 1.0, 3.0)  # PSLD stage 2: gamma = ratio x the best omega (0.1 = stage 1)
TV_GRID = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)  # down to 0.0005: at 0.005 TV-LS sat on the edge
TV_DEFAULT = 0.02
QUICK_DEFAULTS = dict(images=2, steps=3, batch=2, tune_images=2, tune_steps=2, sweep_steps="2,4", sweep_images=2,
                      tv_iterations=50)
QUICK_GRIDS = dict(omega=(0.1, 1.0), gamma_ratios=(0.0, 0.1), tv=(0.01, 0.05))
GAMMA_RATIO = 0.1  # the reference's gamma / omega for every task
EXAMPLES = 8  # images shown per task in quality_<task>.png


# ------------------------------------------------------------------------------------------------ nodes

def load_core_extra(nodes, comfy_root: Path, name: str) -> None:
    """Register one of ComfyUI's comfy_extras node files, as its start-up does for all of them."""
    import asyncio
    if not asyncio.run(nodes.load_custom_node(str(comfy_root / "comfy_extras" / name), module_parent="comfy_extras")):
        raise RuntimeError(f"ComfyUI could not load comfy_extras/{name}")


def run_node(node_class, **inputs) -> tuple:
    """A V1 or V3 node run as ComfyUI's executor runs it (inside torch.inference_mode()); its outputs as a tuple."""
    import torch
    with torch.inference_mode():
        if hasattr(node_class, "GET_SCHEMA"):  # V3
            return tuple(node_class.execute(**inputs).result)
        output = getattr(node_class(), node_class.FUNCTION)(**inputs)
        return tuple(output["result"] if isinstance(output, dict) else output)


class Bench:
    """The loaded host, demo prior and metrics; runs every method on one batch."""

    def __init__(self, nodes, args):
        import torch
        self.torch = torch
        self.nodes = nodes
        self.N = nodes.NODE_CLASS_MAPPINGS
        self.args = args
        self.prior = pack(nodes, "nodes.demo_model").load_demo_prior()
        self.any = self.prior.conditioning("any")
        self.baselines = pack(nodes, "psld.baselines")
        self.metrics = pack(nodes, "psld.metrics")
        self.losses = pack(nodes, "psld.losses")
        self.input_error = pack(nodes, "nodes.errors").PSLDInputError
        self.examples = {}  # name -> the first EXAMPLES restored images of the last run (for the picture)

    # ---- problems
    def operator(self, task: str):
        return run_node(self.N["PSLD_LinearOperator"], **{**OPERATOR_DEFAULTS, **TASKS[task]})[0]

    def degrade(self, images, spec, seed: int):
        """The measurement IMAGE of every image at once (image i gets the i-th noise draw of `seed`)."""
        return run_node(self.N["PSLD_Degrade"], image=images, operator=spec, sigma_y=SIGMA_Y, seed=seed)[0]

    def preview(self, spec, measurement):
        """The measurement at the image size, as PSLD_Degrade's preview shows it (the operator's projection of
        the zero image: the masked image, the upsampled SR image, the blurred image)."""
        torch = self.torch
        with torch.inference_mode():
            y = self.y_of(measurement).to(torch.float32)
            x = spec.operator.project(torch.zeros(spec.image_shape(y.shape[0])), y)
            return ((x.clamp(-1.0, 1.0) + 1.0) / 2.0).movedim(1, -1)

    def y_of(self, measurement):
        """Measurement IMAGE -> y, NCHW in [-1, 1] (as the sampler reads it)."""
        return measurement.movedim(-1, 1) * 2.0 - 1.0

    # ---- methods: each returns restored IMAGEs [B, H, W, 3] in [0, 1]
    def latent_method(self, method, spec, measurement, params, steps, seed):
        loss = run_node(self.N["PSLD_GluingLoss"], omega=float(params["omega"]), gamma=float(params["gamma"]),
                        variant=LATENT_METHODS[method], norm="norm", projection="operator", fresh_noise=0.0,
                        detach_gluing_target=False,
                        gradient="jacobian-free" if method in JACOBIAN_FREE else "full")[0]
        return run_node(self.N["PSLD_Sampler"], model=self.prior.model, vae=self.prior.vae, positive=self.any,
                        negative=self.any, operator=spec, measurement=measurement, loss=loss, seed=seed,
                        steps=steps, cfg=1.0, eta=0.0, scheduler="ddim_uniform")[1]

    def pixel_method(self, method, spec, measurement, params):
        torch = self.torch
        y = self.y_of(measurement).to(torch.float32)
        with torch.inference_mode():
            if method == "adjoint":
                x = self.baselines.adjoint_estimate(spec.operator, y)
            elif method == "pinv":
                x = self.baselines.pseudo_inverse_estimate(spec.operator, y)
            else:
                x = self.baselines.tv_least_squares(spec.operator, y, weight=float(params["lambda"]),
                                                    iterations=self.args.tv_iterations)
        return ((x.clamp(-1.0, 1.0) + 1.0) / 2.0).movedim(1, -1)

    def ksampler_mask(self, spec, measurement, steps, seed):
        """(raw, pasted): what a ComfyUI user does for inpainting without the pack."""
        torch = self.torch
        photo = measurement.clamp(0.0, 1.0)  # a photo with a hole, as a user would load it
        observed = spec.operator.mask[:, 0].to(photo)  # [1, H, W], 1 = observed
        latent = run_node(self.N["VAEEncode"], vae=self.prior.vae, pixels=photo)[0]
        latent = run_node(self.N["SetLatentNoiseMask"], samples=latent, mask=1.0 - observed)[0]  # 1 = repaint
        latent = run_node(self.N["KSampler"], model=self.prior.model, seed=seed, steps=steps, cfg=1.0,
                          sampler_name="ddim", scheduler="ddim_uniform", positive=self.any, negative=self.any,
                          latent_image=latent, denoise=1.0)[0]
        raw = run_node(self.N["VAEDecode"], vae=self.prior.vae, samples=latent)[0]
        pasted = run_node(self.N["ImageCompositeMasked"], destination=raw, source=photo, x=0, y=0,
                          resize_source=False, mask=observed)[0]
        with torch.inference_mode():
            return raw.reshape(-1, *raw.shape[-3:]), pasted.reshape(-1, *pasted.shape[-3:])

    # ---- scoring
    def score(self, spec, measurement, restored, truth) -> dict:
        torch, metrics = self.torch, self.metrics
        with torch.inference_mode():
            x = restored.movedim(-1, 1).to(torch.float32)
            ref = truth.movedim(-1, 1).to(torch.float32)
            return {"psnr": metrics.psnr(x, ref, data_range=1.0).tolist(),
                    "ssim": metrics.ssim(x, ref, data_range=1.0).tolist(),
                    "residual": metrics.measurement_rmse(spec.operator, x * 2.0 - 1.0,
                                                         self.y_of(measurement).to(torch.float32)).tolist()}

    def run(self, method, task, spec, images, measurement, params, steps, label) -> dict:
        """Scores of `method` on all images, in batches of --batch; a dict of per-image lists and timings.
        ksampler-mask returns {"ksampler-mask": ..., "ksampler-mask-paste": ...}."""
        batch = self.args.batch
        outputs: dict[str, dict] = {}
        self.examples = {}
        seconds = 0.0
        for k, start in enumerate(range(0, images.shape[0], batch)):
            chunk = slice(start, start + batch)
            truth, y = images[chunk], measurement[chunk]
            began = time.perf_counter()
            if method in LATENT_METHODS:
                results = {method: self.latent_method(method, spec, y, params, steps, SAMPLER_SEED + k)}
            elif method == "ksampler-mask":
                raw, pasted = self.ksampler_mask(spec, y, steps, SAMPLER_SEED + k)
                results = {method: raw, "ksampler-mask-paste": pasted}
            else:
                results = {method: self.pixel_method(method, spec, y, params)}
            seconds += time.perf_counter() - began
            for name, restored in results.items():
                if start < EXAMPLES:
                    self.examples[name] = restored[:EXAMPLES - start].cpu()
                scores = self.score(spec, y, restored, truth)
                entry = outputs.setdefault(name, {"psnr": [], "ssim": [], "residual": []})
                for key, values in scores.items():
                    entry[key] += values
            done = min(start + batch, images.shape[0])
            print(f"  {label}: {done}/{images.shape[0]} images, {seconds / done:.2f} s/img, PSNR so far "
                  f"{mean(outputs[method]['psnr']):.2f}", flush=True)
        for entry in outputs.values():
            entry["seconds_per_image"] = seconds / images.shape[0]
            entry["params"] = dict(params)
        return outputs


# ------------------------------------------------------------------------------------------------ statistics

def mean(values) -> float:
    return sum(values) / len(values) if values else math.nan


def std(values) -> float:
    if len(values) < 2:
        return 0.0
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))  # sample standard deviation


def paired_difference(a: list, b: list) -> tuple[float, float]:
    """Mean of a_i - b_i over the same images and its standard error (sample std / sqrt(n))."""
    differences = [x - y for x, y in zip(a, b, strict=True)]
    return mean(differences), std(differences) / math.sqrt(len(differences))


def summary(entry: dict) -> dict:
    return {"psnr_mean": mean(entry["psnr"]), "psnr_std": std(entry["psnr"]), "ssim_mean": mean(entry["ssim"]),
            "ssim_std": std(entry["ssim"]), "residual_mean": mean(entry["residual"]),
            "residual_std": std(entry["residual"]), "seconds_per_image": entry["seconds_per_image"],
            "params": entry["params"], "images": len(entry["psnr"]), "per_image": {
                k: [round(v, 5) for v in entry[k]] for k in ("psnr", "ssim", "residual")}}


# ------------------------------------------------------------------------------------------------ data

def find_data(path: str | None) -> Path | None:
    candidates = [Path(path)] if path else list(DATA_DIRS)
    for candidate in candidates:
        if (candidate / "t10k-images-idx3-ubyte.gz").is_file():
            return candidate
    return None


def as_image(gray):
    """[N, 1, H, W] in [0, 1] -> ComfyUI IMAGE [N, H, W, 3]."""
    return gray.expand(-1, 3, -1, -1).movedim(1, -1).contiguous()


def load_images(args, bench: Bench):
    """(test IMAGE, validation IMAGE, description): Fashion-MNIST splits, or the bundled strip for --quick."""
    import torch
    if args.quick:
        strip = torch.cat([run_node(bench.N["PSLD_DemoImage"], index=i)[0] for i in range(16)]).cpu()
        test = strip[:args.images]
        validation = strip[8:8 + args.tune_images]
        return test, validation, ("--quick: the bundled PSLD_DemoImage strip (Fashion-MNIST test images), test = "
                                  f"strip 0..{args.images - 1}, tuning = strip 8..{8 + args.tune_images - 1}: "
                                  "a smoke run, not a measurement")
    data = find_data(args.data)
    if data is None:
        raise SystemExit("bench/quality.py: Fashion-MNIST not found (looked in "
                         f"{args.data or ', '.join(map(str, DATA_DIRS))}). Install it with `apt-get install "
                         "dataset-fashion-mnist`, pass --data DIR (a folder with the idx .gz files), or use --quick.")
    sys.path.insert(0, str(REPO / "tools"))
    from train_demo_prior import load_split  # the padding the prior was trained with
    test, _ = load_split(data, "test")
    train, _ = load_split(data, "train")
    validation = train[-VALIDATION:][:args.tune_images]
    description = (f"Fashion-MNIST from {data}: test = t10k images 0..{args.images - 1}; tuning = training images "
                   f"{len(train) - VALIDATION}..{len(train) - VALIDATION + args.tune_images - 1} (the validation "
                   "split, never trained on)")
    return as_image(test[:args.images]), as_image(validation), description


# ------------------------------------------------------------------------------------------------ tuning

def reference_params(bench: Bench, task: str, method: str) -> dict:
    omega, gamma = bench.losses.REFERENCE_WEIGHTS[task]
    if method in ("psld", "psld-jf"):
        return {"omega": omega, "gamma": gamma}
    if method == "gml-dps":
        return {"omega": omega, "gamma": round(GAMMA_RATIO * omega, 12)}
    if method == "ldps":
        return {"omega": omega, "gamma": 0.0}
    if method == "tv":
        return {"lambda": TV_DEFAULT}
    return {}


def tune(bench: Bench, task: str, spec, images, measurement, methods, grids) -> dict:
    """Grid search by mean PSNR on the tuning images; returns {method: {grid, scores, winner, at_edge}}."""
    steps = bench.args.tune_steps or bench.args.steps
    out = {}

    def evaluate(method, params):
        label = f"tune {task} {LABELS[method]} {params}"
        try:
            entry = bench.run(method, task, spec, images, measurement, params, steps, label)[method]
        except bench.input_error as error:  # the sampler's PSLDDivergenceError, re-raised on input 'loss'
            if error.input_name != "loss":
                raise
            print(f"  {label}: diverged ({error.problem})", flush=True)
            return {"params": params, "psnr": -math.inf, "ssim": -math.inf, "diverged": True}
        return {"params": params, "psnr": mean(entry["psnr"]), "ssim": mean(entry["ssim"])}

    def best(scores):
        return max(scores, key=lambda s: s["psnr"] if not math.isnan(s["psnr"]) else -math.inf)

    for method in methods:
        if method in LATENT_METHODS:
            ratio = 0.0 if method == "ldps" else GAMMA_RATIO
            scores = [evaluate(method, {"omega": w, "gamma": round(ratio * w, 12)}) for w in grids["omega"]]
            winner = best(scores)
            at_edge = winner["params"]["omega"] in (min(grids["omega"]), max(grids["omega"]))
            grid = {"omega": list(grids["omega"]), "gamma": f"{ratio:g} x omega"}
            if method in ("psld", "psld-jf"):  # stage 2: gamma at the best omega
                omega = winner["params"]["omega"]
                for r in grids["gamma_ratios"]:
                    if r != GAMMA_RATIO:
                        scores.append(evaluate(method, {"omega": omega, "gamma": round(r * omega, 12)}))
                winner = best(scores)
                ratio = winner["params"]["gamma"] / omega
                at_edge = at_edge or math.isclose(ratio, max(grids["gamma_ratios"]))  # (ratio 0 is a true end)
                grid["gamma_stage2"] = f"{list(grids['gamma_ratios'])} x best omega"
            out[method] = {"grid": grid, "scores": scores, "winner": winner["params"], "at_edge": at_edge}
        elif method == "tv":
            scores = [evaluate(method, {"lambda": lam}) for lam in grids["tv"]]
            winner = best(scores)
            out[method] = {"grid": {"lambda": list(grids["tv"])}, "scores": scores, "winner": winner["params"],
                           "at_edge": winner["params"]["lambda"] in (min(grids["tv"]), max(grids["tv"]))}
        if method in out:
            edge = " (AT THE EDGE OF THE GRID)" if out[method]["at_edge"] else ""
            print(f"tuned {task} {LABELS[method]}: {out[method]['winner']}{edge}", flush=True)
    return out


# ------------------------------------------------------------------------------------------------ report

def machine_info(bench: Bench) -> dict:
    import torch
    import comfy.model_management
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    version = "unknown"
    version_file = Path(bench.args.comfy) / "comfyui_version.py"
    if version_file.is_file():
        for line in version_file.read_text().splitlines():
            if line.startswith("__version__"):
                version = line.split("=", 1)[1].strip().strip("\"'")
    device = comfy.model_management.get_torch_device()
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "comfyui": version, "python": platform.python_version(),
            "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "unet_dtype": str(bench.prior.model.model_dtype()), "vae_dtype": str(bench.prior.vae.vae_dtype)}


def prior_info(bench: Bench) -> dict:
    import hashlib
    path = Path(bench.prior.path)
    training = bench.prior.training or {}
    return {"file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "unet_steps": training.get("unet_steps"), "vae_steps": training.get("vae_steps"),
            "vae_test_psnr": training.get("vae_test_psnr")}


def save_picture(path: Path, rows: list[tuple[str, object]]) -> None:
    """One row per (label, IMAGE [K, H, W, 3]) side by side, enlarged 3x (nearest), the label left of each row."""
    import numpy as np
    from PIL import Image, ImageDraw
    scale, label_width = 3, 200
    count = max(images.shape[0] for _, images in rows)
    height, width = rows[0][1].shape[1] * scale, rows[0][1].shape[2] * scale
    canvas = Image.new("RGB", (label_width + count * width, len(rows) * height), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (label, images) in enumerate(rows):
        draw.text((4, r * height + height // 2 - 6), label, fill="black")
        pixels = (images.clamp(0, 1).float().numpy() * 255).round().astype(np.uint8)
        for k in range(pixels.shape[0]):
            tile = Image.fromarray(pixels[k]).resize((width, height), Image.NEAREST)
            canvas.paste(tile, (label_width + k * width, r * height))
    canvas.save(path)


def params_text(params: dict) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in params.items()) if params else "-"


def command_lines(report: dict) -> list[str]:
    """The command, or the commands of the parts that bench/quality_merge.py joined."""
    if not report.get("parts"):
        return [f"Command: `{report['command']}`"]
    return ["Commands (one configuration run in parts, joined by bench/quality_merge.py):", "", "```",
            *(part["command"] for part in report["parts"]), "```"]


def paired_lines(results: dict) -> list[str]:
    """PSLD's PSNR minus each other method's on the same images: mean ± standard error (the spread between images,
    the ± of the main table, cancels in a paired difference)."""
    rows = []
    for task, methods in results.items():
        if "psld" not in methods:
            continue
        psld = methods["psld"]["per_image"]["psnr"]
        cells = []
        for method, r in methods.items():
            if method != "psld":
                difference, error = paired_difference(psld, r["per_image"]["psnr"])
                cells.append(f"{LABELS[method]} {difference:+.2f} ± {error:.2f}")
        rows.append(f"| {task} | " + "; ".join(cells) + " |")
    if not rows:
        return []
    return ["", "## PSLD minus each method, paired over the same images (PSNR dB, mean ± standard error)", "",
            "| task | PSLD - method |", "|---|---|", *rows]


def markdown(report: dict) -> str:
    m, c, p = report["machine"], report["config"], report["prior"]
    lines = [
        "# PSLD on the demo prior: restoration quality",
        "",
        *command_lines(report),
        "",
        f"Machine: {m['cpu']} ({m['cpu_count']} CPUs, {m['torch_threads']} torch threads), device {m['device']}"
        + (f" ({m['gpu']})" if m["gpu"] else "") + f"; torch {m['torch']}, ComfyUI {m['comfyui']}, "
        f"Python {m['python']}; UNet {m['unet_dtype']}, VAE {m['vae_dtype']}.",
        "",
        f"Demo prior: `{Path(p['file']).name}` sha256 {p['sha256'][:16]}..., UNet steps {p['unet_steps']}, "
        f"VAE steps {p['vae_steps']}, VAE test PSNR {p['vae_test_psnr']}.",
        "",
        f"Images: {c['images_description']}. {c['steps']} sampler steps (ddim_uniform, eta 0, cfg 1), batches of "
        f"{c['batch']}, sigma_y {SIGMA_Y}. Weights: "
        + ("tuned on the validation split (below)." if c["tune"] else "the reference weights (no tuning).")
        + f" TV-LS: {c['tv_iterations']} Chambolle-Pock iterations.",
        "",
        "PSNR (dB) and SSIM on [0, 1] images, mean ± sample std over the images; residual = ||A x - y|| / sqrt(m) "
        f"in [-1, 1] units (about {SIGMA_Y} for a perfect restoration); s/img = wall time per image.",
        "",
        "| task | method | weights | PSNR | SSIM | residual | s/img |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, methods in report["results"].items():
        for method, r in methods.items():
            lines.append(f"| {task} | {LABELS[method]} | {params_text(r['params'])} | {r['psnr_mean']:.2f} ± "
                         f"{r['psnr_std']:.2f} | {r['ssim_mean']:.3f} ± {r['ssim_std']:.3f} | "
                         f"{r['residual_mean']:.4f} | {r['seconds_per_image']:.3f} |")
    lines += ["", "Operators: " + "; ".join(f"{t}: {d}" for t, d in report["operators"].items()) + "."]
    lines += paired_lines(report["results"])
    if report["tuning"]:
        lines += ["", "## Tuning (mean PSNR on the tuning images)", "",
                  "| task | method | grid | winner | scores (params: PSNR) |", "|---|---|---|---|---|"]
        for task, methods in report["tuning"].items():
            for method, t in methods.items():
                grid = "; ".join(f"{k} {v}" for k, v in t["grid"].items())
                scores = "; ".join(f"{params_text(s['params'])}: "
                                   + ("diverged" if s.get("diverged") else f"{s['psnr']:.2f}") for s in t["scores"])
                edge = " (grid edge)" if t["at_edge"] else ""
                lines.append(f"| {task} | {LABELS[method]} | {grid} | {params_text(t['winner'])}{edge} | {scores} |")
    if report["sweep"]:
        s = report["sweep"]
        lines += ["", f"## PSLD steps sweep: box_inpaint, {s['images']} test images, weights "
                  f"{params_text(s['params'])} (fixed for every step count)", "",
                  "| steps | PSNR | SSIM | residual | s/img |", "|---|---|---|---|---|"]
        for row in s["rows"]:
            lines.append(f"| {row['steps']} | {row['psnr_mean']:.2f} ± {row['psnr_std']:.2f} | {row['ssim_mean']:.3f} "
                         f"± {row['ssim_std']:.3f} | {row['residual_mean']:.4f} | {row['seconds_per_image']:.3f} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ main

def parse_list(text: str, allowed, name: str) -> list:
    if text == "all":
        return list(allowed)
    chosen = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in chosen if t not in allowed]
    if unknown or not chosen:
        raise SystemExit(f"bench/quality.py: --{name} {text!r}: unknown {unknown}; choose from {', '.join(allowed)} "
                         "(comma-separated) or all.")
    return chosen


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring as written, and each option's default."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--comfy", default=str(REPO / ".comfyui" / "ComfyUI"), help="ComfyUI root of a built host")
    parser.add_argument("--data", help="folder with Fashion-MNIST's idx .gz files (default: "
                        + ", ".join(map(str, DATA_DIRS)) + ")")
    parser.add_argument("--images", type=int, default=100, help="test images (first of t10k)")
    parser.add_argument("--steps", type=int, default=50, help="sampler steps (latent methods and KSampler)")
    parser.add_argument("--batch", type=int, default=20, help="images per sampler call")
    parser.add_argument("--tasks", default="all", help="comma-separated: " + ", ".join(TASKS))
    parser.add_argument("--methods", default="all", help="comma-separated: " + ", ".join(METHODS))
    parser.add_argument("--tune", action=argparse.BooleanOptionalAction, default=True,
                        help="tune the weights on the validation split (--no-tune: reference weights)")
    parser.add_argument("--tune-images", type=int, default=16, help="validation images used for tuning")
    parser.add_argument("--tune-steps", type=int, default=0, help="sampler steps while tuning (0 = --steps)")
    parser.add_argument("--sweep-steps", default="25,50,100,250,1000",
                        help="PSLD step counts on box inpainting ('' = no sweep)")
    parser.add_argument("--sweep-images", type=int, default=20, help="test images of the steps sweep")
    parser.add_argument("--tv-iterations", type=int, default=500, help="Chambolle-Pock iterations of TV-LS")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--out", default=str(REPO / ".artifacts" / "quality"), help="folder for quality.md/.json")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run for the tests: 2 bundled images, 3 steps, 2-point grids, sweep 2,4 steps "
                        "(explicit options still win)")
    parser.add_argument("comfy_args", nargs="*", help="arguments for ComfyUI after --, e.g. -- --cpu")
    if parser.parse_known_args(argv)[0].quick:  # smaller defaults; options given explicitly still win
        parser.set_defaults(**QUICK_DEFAULTS)
    args = parser.parse_args(argv)
    args.task_list = parse_list(args.tasks, TASKS, "tasks")
    args.method_list = parse_list(args.methods, METHODS, "methods")
    args.sweep_list = [int(s) for s in args.sweep_steps.split(",") if s.strip()]
    for name in ("images", "steps", "batch", "tune_images", "sweep_images", "tv_iterations"):
        if getattr(args, name) < 1:
            raise SystemExit(f"bench/quality.py: --{name.replace('_', '-')} must be at least 1.")
    if args.quick and (args.images > 8 or args.tune_images > 8):
        raise SystemExit("bench/quality.py: --quick uses at most 8 bundled images for each split.")
    args.out = str(Path(args.out).resolve())  # boot() changes the working directory
    args.comfy = str(Path(args.comfy).resolve())
    if args.data:
        args.data = str(Path(args.data).resolve())
    return args


def main(argv=None) -> int:
    command = shlex.join([_python_shown(), "bench/quality.py", *(sys.argv[1:] if argv is None else argv)])
    args = parse_args(argv)
    comfy_args = args.comfy_args or ([] if _has_nvidia_gpu() else ["--cpu"])
    nodes = boot(Path(args.comfy), comfy_args)  # before torch is imported, as main.py expects
    load_core_extra(nodes, Path(args.comfy), "nodes_mask.py")  # ImageCompositeMasked (the paste-back)
    import torch
    import comfy.utils
    comfy.utils.PROGRESS_BAR_ENABLED = False  # the script prints its own progress
    if args.threads:
        torch.set_num_threads(args.threads)
    bench = Bench(nodes, args)
    report = {"command": command, "machine": machine_info(bench), "prior": prior_info(bench), "operators": {},
              "tuning": {}, "results": {}, "sweep": None}
    test, validation, description = load_images(args, bench)
    report["config"] = {"images": test.shape[0], "images_description": description, "steps": args.steps,
                        "batch": args.batch, "tasks": args.task_list, "methods": args.method_list,
                        "tune": args.tune, "tune_images": validation.shape[0] if args.tune else 0,
                        "tune_steps": (args.tune_steps or args.steps) if args.tune else None,
                        "tv_iterations": args.tv_iterations, "sigma_y": SIGMA_Y, "quick": args.quick,
                        "grids": QUICK_GRIDS if args.quick else {"omega": OMEGA_GRID, "gamma_ratios": GAMMA_RATIOS,
                                                                 "tv": TV_GRID}}
    m = report["machine"]
    print(f"quality: {command}\n  {m['cpu']}, {m['torch_threads']} threads, torch {m['torch']}, ComfyUI "
          f"{m['comfyui']}, device {m['device']}\n  {description}", flush=True)
    grids = report["config"]["grids"]
    started = time.perf_counter()
    for task in args.task_list:
        spec = bench.operator(task)
        report["operators"][task] = spec.describe()
        print(f"{task}: {spec.describe()}", flush=True)
        methods = [m for m in args.method_list if m != "ksampler-mask" or task in INPAINT_TASKS]
        chosen = {method: reference_params(bench, task, method) for method in methods}
        if args.tune:
            y_val = bench.degrade(validation, spec, DEGRADE_SEED["validation"])
            tuned = tune(bench, task, spec, validation, y_val, methods, grids)
            report["tuning"][task] = tuned
            chosen.update({method: t["winner"] for method, t in tuned.items()})
        measurement = bench.degrade(test, spec, DEGRADE_SEED["test"])
        report["results"][task] = {}
        shown = test[:EXAMPLES]
        picture = [("clean", shown), ("measurement y", bench.preview(spec, measurement[:EXAMPLES]))]
        for method in methods:
            outputs = bench.run(method, task, spec, test, measurement, chosen[method], args.steps,
                                f"{task} {LABELS[method]}")
            for name, entry in outputs.items():
                report["results"][task][name] = summary(entry)
                picture.append((LABELS[name], bench.examples[name]))
        Path(args.out).mkdir(parents=True, exist_ok=True)
        save_picture(Path(args.out) / f"quality_{task}.png", picture)
        write(report, args.out)  # partial results survive an interrupted run
    if args.sweep_list and "psld" in args.method_list:
        spec = bench.operator("box_inpaint")
        images = test[:args.sweep_images]
        measurement = bench.degrade(images, spec, DEGRADE_SEED["test"])
        params = (report["tuning"].get("box_inpaint", {}).get("psld", {}).get("winner")
                  or reference_params(bench, "box_inpaint", "psld"))
        rows = []
        for steps in args.sweep_list:
            entry = bench.run("psld", "box_inpaint", spec, images, measurement, params, steps,
                              f"sweep {steps} steps")["psld"]
            rows.append({"steps": steps, **{k: v for k, v in summary(entry).items() if k != "params"}})
        report["sweep"] = {"images": images.shape[0], "params": params, "rows": rows}
    report["total_seconds"] = time.perf_counter() - started
    paths = write(report, args.out)
    print(markdown(report))
    print(f"quality: wrote {paths[0]} and {paths[1]} ({report['total_seconds']:.0f} s)")
    return 0


def write(report: dict, out: str) -> tuple[Path, Path]:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / "quality.json", folder / "quality.md"
    json_path.write_text(json.dumps(report, indent=1, default=float) + "\n")
    if report.get("config"):
        md_path.write_text(markdown(report))
    return json_path, md_path


def _has_nvidia_gpu() -> bool:
    """Whether an NVIDIA driver is loaded (checked without importing torch, which must come after the boot)."""
    return Path("/proc/driver/nvidia/version").exists()


def _python_shown() -> str:
    """The interpreter as the user would type it (relative to the repository when it lives there)."""
    python = Path(sys.executable)
    try:
        return str(python.absolute().relative_to(REPO))
    except ValueError:
        return str(python)


if __name__ == "__main__":
    sys.exit(main())
