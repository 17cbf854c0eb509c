"""How much a PSLD step costs beyond the passes it cannot avoid.

A PSLD step must run the denoiser, the decoder and the encoder forward and backward (the gradient is taken w.r.t.
the noisy latent through all three). This script times, in one run and on the same device and dtype:

    denoiser fwd+bwd, decoder fwd+bwd, encoder fwd+bwd   (each alone: input gradient only, weights frozen)
    operator A: forward + project, fwd+bwd               (needed too, but part of the problem, not of PSLD)
    one PSLD step                                        (sample_psld over N steps, divided by N)
    one plain DDIM step                                  (sample_psld with omega = gamma = 0: denoiser forward only)

    chain: denoiser -> decoder -> encoder in one graph, fwd+bwd (what any full-gradient method must run)

and prints  ratio = PSLD step / (denoiser + decoder + encoder)  (the figure to hold close to 1.0) from the medians,
r.min = the same from the fastest call of each (less sensitive to other processes on a shared machine), ratio+A =
with the operator's own fwd+bwd added to the denominator, and /chain = PSLD step / chain. Times in ms (median):
per call for the passes, per sampler step for ddim and psld.

Models: the paper's linear model (psld/linear_model.py; 64x64 one-channel images, latent 256, dense A) and small
random conv nets (4-channel latent at 1/--factor of a 3x64x64 image, a conv eps-denoiser with time input, conv
decoder/encoder) with each image operator of psld.operators. Random weights: only the cost matters here.

Timing: median of --repeats runs after --warmup runs, torch.cuda.synchronize() around each on CUDA.
Peak memory: on CUDA, torch.cuda.max_memory_allocated() minus the memory allocated before the work (reset per
measurement, after a warm-up call). On CPU, tracemalloc does not see torch's allocations, so each measurement runs
in a fresh subprocess that builds the same models and inputs, does the work once (warm-up: operator caches and
other one-time allocations), returns freed heap to the OS (glibc malloc_trim), resets the peak-RSS mark (writing
5 to /proc/self/clear_refs) and reads the peak resident memory (VmHWM, the figure getrusage reports as ru_maxrss)
around a second call: peak growth over the resident memory before it. Where /proc cannot be reset it falls back
to plain ru_maxrss deltas, which the import-time peak can hide. Approximate (page granularity, allocator caching):
compare CPU rows with each other, not with CUDA numbers. "chain" is the denoiser -> decoder -> encoder graph held
at once and back-propagated: the memory any full-gradient method needs.

Usage: python bench/psld_overhead.py [--device cuda|cpu] [--dtype float32|float16|bfloat16] [--steps 10]
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from psld.ddim import ddim_uniform_sigmas  # noqa: E402
from psld.linear_model import LinearLatentModel, MatrixOperator  # noqa: E402
from psld.losses import PSLDLoss  # noqa: E402
from psld.operators import GaussianBlur, Inpainting, SuperResolution, box_mask  # noqa: E402
from psld.sampling import sample_psld  # noqa: E402

IMAGE = 64  # image side


# ---------------------------------------------------------------- small random conv models

class ConvDenoiser(nn.Module):
    """eps(z_t, log sigma): conv stack with a time embedding; wrapped to sigma space like ComfyUI's model."""

    def __init__(self, channels=4, width=96, depth=4):
        super().__init__()
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.time = nn.Linear(1, width)
        self.blocks = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(depth))
        self.out = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x, sigma):
        s = sigma.to(x.dtype).reshape(-1, 1, 1, 1)
        h = self.inp(x / torch.sqrt(1 + s * s)) + self.time(torch.log(s).reshape(-1, 1))[:, :, None, None]
        for block in self.blocks:
            h = h + block(torch.nn.functional.silu(h))
        return x - s * self.out(torch.nn.functional.silu(h))  # z0_hat = x - sigma eps


def conv_decoder(channels, factor, width=64):
    layers = [nn.Conv2d(channels, width, 3, padding=1)]
    for _ in range(int(math.log2(factor))):
        layers += [nn.SiLU(), nn.Upsample(scale_factor=2), nn.Conv2d(width, width, 3, padding=1)]
    layers += [nn.SiLU(), nn.Conv2d(width, 3, 3, padding=1), nn.Tanh()]
    return nn.Sequential(*layers)


def conv_encoder(channels, factor, width=64):
    layers = [nn.Conv2d(3, width, 3, padding=1)]
    for _ in range(int(math.log2(factor))):
        layers += [nn.SiLU(), nn.Conv2d(width, width, 3, stride=2, padding=1)]
    layers += [nn.SiLU(), nn.Conv2d(width, channels, 3, padding=1)]
    return nn.Sequential(*layers)


def build(setup: str, operator_name: str, device, dtype, batch: int, factor: int):
    """(denoise, decode, encode, operator, y, x, latent_shape, image_shape) for a setup, seeded."""
    torch.manual_seed(0)  # weight initialisation
    g = torch.Generator().manual_seed(0)
    if setup == "linear":
        model = LinearLatentModel.random(IMAGE * IMAGE, 256, generator=g, dtype=torch.float64)
        model = LinearLatentModel(basis=model.basis.to(device=device, dtype=dtype))
        matrix = torch.randn(IMAGE * IMAGE // 2, IMAGE * IMAGE, generator=g) / math.sqrt(IMAGE * IMAGE // 2)
        operator = MatrixOperator(matrix=matrix.to(device=device, dtype=dtype))
        latent, image = (batch, 1, 256, 1), (batch, 1, IMAGE * IMAGE, 1)
        denoise, decode, encode = model.denoise, model.decode, model.encode
    else:
        latent, image = (batch, 4, IMAGE // factor, IMAGE // factor), (batch, 3, IMAGE, IMAGE)
        nets = [ConvDenoiser(), conv_decoder(4, factor), conv_encoder(4, factor)]
        denoise, decode, encode = (net.to(device=device, dtype=dtype).requires_grad_(False) for net in nets)
        if operator_name == "inpaint":
            operator = Inpainting(mask=box_mask(IMAGE, IMAGE, box_size=IMAGE // 2, centred=True))
        elif operator_name == "sr4":
            operator = SuperResolution(scale=4)
        elif operator_name == "blur":
            operator = GaussianBlur(kernel_size=15, sigma=3.0)
        else:
            raise ValueError(f"operator={operator_name!r} is not allowed: use inpaint, sr4 or blur.")
    truth = (torch.rand(image, generator=g) * 2 - 1).to(device=device, dtype=dtype)
    y = operator.forward(truth)
    x = (torch.randn(latent, generator=g) * 14.6).to(device=device, dtype=dtype)
    return denoise, decode, encode, operator, y, x, latent, image


# ---------------------------------------------------------------- the measured pieces of work

def work_items(built, device, dtype, steps):
    """name -> zero-argument callable doing that work once."""
    denoise, decode, encode, operator, y, x, latent, image = built
    sigmas = ddim_uniform_sigmas(steps).to(torch.float32)
    sigma = torch.full((latent[0],), 3.0, device=device, dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    z = (torch.randn(latent, generator=g)).to(device=device, dtype=dtype)
    img = (torch.rand(image, generator=g) * 2 - 1).to(device=device, dtype=dtype)
    v_lat, v_img = torch.randn_like(z), torch.randn_like(img)

    def fwd_bwd(fn, inp, cotangent):
        leaf = inp.clone().requires_grad_(True)
        torch.autograd.grad(fn(leaf), leaf, cotangent)

    def operator_pass():  # what the loss does with A: forward on x_hat and the gluing projection, fwd + bwd
        leaf = img.clone().requires_grad_(True)
        out = operator.forward(leaf).sum() + (operator.project(leaf, y) * v_img).sum()
        torch.autograd.grad(out, leaf)

    def chain():  # denoiser -> decoder -> encoder in one graph, back to x
        leaf = x.clone().requires_grad_(True)
        z0 = denoise(leaf, sigma)
        torch.autograd.grad((encode(decode(z0)) * v_lat).sum() + (z0 * v_lat).sum(), leaf)

    def psld(loss):
        return lambda: sample_psld(denoise, x, sigmas, operator=operator, y=y, decode=decode, encode=encode,
                                   loss=loss)

    return {
        "denoiser": lambda: fwd_bwd(lambda t: denoise(t, sigma), x, v_lat),
        "decoder": lambda: fwd_bwd(decode, z, v_img),
        "encoder": lambda: fwd_bwd(encode, img, v_lat),
        "operator": operator_pass,
        "chain": chain,
        "psld": psld(PSLDLoss()),
        "ddim": psld(PSLDLoss(omega=0.0, gamma=0.0)),
    }


PER_STEP = ("psld", "ddim")  # these run `steps` sampler steps per call


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def call_times(fns: dict, device, warmup, repeats) -> dict:
    """Seconds per call of each function (a list per name), timed round-robin so load changes hit all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def peak_memory_cuda(fn, device):
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20


def peak_memory_cpu(args, setup, operator_name, item):
    """Run one item once in a fresh process; its growth of ru_maxrss in MiB."""
    cmd = [sys.executable, __file__, "--device", "cpu", "--dtype", args.dtype, "--batch", str(args.batch),
           "--factor", str(args.factor), "--threads", str(args.threads), "--_probe", f"{setup}:{operator_name}:{item}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["mib"]


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def probe(args):
    """Child process: peak resident memory growth of one call of one item, in MiB (printed as JSON)."""
    setup, operator_name, item = args._probe.split(":")
    dtype = getattr(torch, args.dtype)
    fn = work_items(build(setup, operator_name, "cpu", dtype, args.batch, args.factor), "cpu", dtype, 1)[item]
    fn()  # warm-up: one-time allocations (operator caches, kernels) are not per-step memory
    gc.collect()
    try:  # hand freed heap back to the OS, so the measured run cannot hide in memory the warm-up left behind
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:  # reset the high-water mark (Linux >= 4.0) so earlier peaks (imports, warm-up) do not hide this one
        Path("/proc/self/clear_refs").write_text("5")
        before, method = _status_kib("VmRSS"), "VmHWM"
    except OSError:
        before, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"
    fn()
    after = _status_kib("VmHWM") if method == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mib": (after - before) / 1024, "method": method}))


# ---------------------------------------------------------------- main

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--factor", type=int, default=4, choices=(4, 8), help="latent downscaling of the conv nets")
    parser.add_argument("--steps", type=int, default=10, help="sampler steps per timed PSLD call")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory columns")
    parser.add_argument("--setups", default="linear,conv:inpaint,conv:sr4,conv:blur")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--_probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._probe:
        return probe(args)
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"dtype {args.dtype}, batch {args.batch}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"image 3x{IMAGE}x{IMAGE}, conv latent 4x{IMAGE // args.factor}x{IMAGE // args.factor}; "
          f"median of {args.repeats} after {args.warmup} warm-up; PSLD timed over {args.steps} steps")
    header = (f"{'setup':14s} {'den':>8s} {'dec':>8s} {'enc':>8s} {'A':>8s} {'chain':>8s} {'ddim':>8s} {'psld':>8s} "
              f"{'ratio':>6s} {'r.min':>6s} {'ratio+A':>7s} {'/chain':>6s}")
    if not args.no_memory:
        header += f"   {'mem MiB: chain':>14s} {'psld':>6s} {'psld/chain':>10s}"
    print(header)
    for entry in args.setups.split(","):
        setup, _, operator_name = entry.partition(":")
        items = work_items(build(setup, operator_name, device, dtype, args.batch, args.factor), device, dtype,
                           args.steps)
        names = ("denoiser", "decoder", "encoder", "operator", "chain", "ddim", "psld")
        times = call_times({name: items[name] for name in names}, device, args.warmup, args.repeats)
        ms, best = {}, {}
        for name, ts in times.items():
            per = 1000 / (args.steps if name in PER_STEP else 1)
            ms[name], best[name] = per * statistics.median(ts), per * min(ts)
        passes = ms["denoiser"] + ms["decoder"] + ms["encoder"]
        best_passes = best["denoiser"] + best["decoder"] + best["encoder"]
        line = (f"{entry:14s} {ms['denoiser']:8.3f} {ms['decoder']:8.3f} {ms['encoder']:8.3f} {ms['operator']:8.3f} "
                f"{ms['chain']:8.3f} {ms['ddim']:8.3f} {ms['psld']:8.3f} {ms['psld'] / passes:6.2f} "
                f"{best['psld'] / best_passes:6.2f} {ms['psld'] / (passes + ms['operator']):7.2f} "
                f"{ms['psld'] / ms['chain']:6.2f}")
        if not args.no_memory:
            if device.type == "cuda":  # the timing runs above were the warm-up
                mem = {name: peak_memory_cuda(items[name], device) for name in ("chain", "psld")}
            else:
                mem = {name: peak_memory_cpu(args, setup, operator_name, name) for name in ("chain", "psld")}
            ratio = f"{mem['psld'] / mem['chain']:10.2f}" if mem["chain"] >= 1.0 else f"{'(< 1 MiB)':>10s}"
            line += f"   {mem['chain']:14.1f} {mem['psld']:6.1f} {ratio}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
