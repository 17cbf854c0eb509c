#!/usr/bin/env python3
"""Train the pack's demo prior: a small latent diffusion model on Fashion-MNIST (padded to 32 x 32), built from
ComfyUI's own classes so that it flows through the PSLD nodes exactly like a Stable Diffusion checkpoint.

    VAE   comfy.ldm.models.autoencoder.AutoencoderKL, f = 4, 4 latent channels (32 x 32 x 3 -> 4 x 8 x 8);
          loss L1 + a small KL, the gray image repeated on R, G and B so that any ComfyUI IMAGE goes in
    UNet  comfy.ldm.modules.diffusionmodules.openaimodel.UNetModel (SD1.5 layout, small config), epsilon
          prediction on the SD discrete schedule (scaled-linear betas 0.00085..0.012, 1000 steps), cross-attention
          on a learned class token (11 tokens: the 10 classes and "any"; 10 % of the steps train "any", so CFG works)

Resumable and seeded: every stage keeps its weights, Adam state and step in --work (safetensors, no pickle) and
continues where it stopped, so a CPU run can be split into chunks (--max-minutes per call). Logs go to
--work/log.jsonl (losses, held-out VAE PSNR, held-out diffusion loss).

    python tools/train_demo_prior.py --comfy .comfyui/ComfyUI --data /usr/share/datasets/fashion-mnist \\
        --work .artifacts/demo_prior --stage all --max-minutes 60      # repeat until it says 'done'
    python tools/train_demo_prior.py ... --stage export --export models/psld_demo_fmnist32.safetensors

Data: Debian package dataset-fashion-mnist (`apt-get install dataset-fashion-mnist`, MIT licence). The last
--holdout training images are never trained on: they are the validation split (bench/quality.py tunes on them).
Never run in CI.
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

FORMAT = "psld-demo-prior/1"
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
NULL_CLASS = len(CLASSES)  # the "any" token: unconditional
CONTEXT_DIM = 64
IMAGE_SIZE = 32

VAE_DDCONFIG = dict(double_z=True, z_channels=4, resolution=IMAGE_SIZE, in_channels=3, out_ch=3, ch=32,
                    ch_mult=[1, 2, 4], num_res_blocks=1, attn_resolutions=[], dropout=0.0)
VAE_EMBED_DIM = 4
# SD1.5's UNet layout at a small size: 3 levels on the 8 x 8 latent (8, 4, 2), attention on the lower two
# (ComfyUI's GroupNorm(32) needs channel counts that are multiples of 32)
UNET_CONFIG = dict(
    image_size=IMAGE_SIZE // 4, in_channels=4, out_channels=4, model_channels=32, channel_mult=[1, 2, 3],
    num_res_blocks=[2, 2, 2], transformer_depth=[0, 0, 1, 1, 1, 1], transformer_depth_output=[1, 1, 1, 1, 1, 1, 0, 0, 0],
    transformer_depth_middle=1, use_spatial_transformer=True, legacy=False, context_dim=CONTEXT_DIM,
    num_heads=-1, num_head_channels=32, use_linear_in_transformer=True, adm_in_channels=None,
    use_temporal_attention=False, use_temporal_resblock=False, use_checkpoint=False,
)
KL_WEIGHT = 1e-6
FIT_WARMUP, FIT_AFTER = 20, 100  # --fit: steps not timed (start-up), then steps timed
CLASS_DROPOUT = 0.1


# ------------------------------------------------------------------------------------------------------ data

def read_idx(path: Path, offset: int) -> np.ndarray:
    """An idx(.gz) file of the MNIST family as a flat uint8 array (offset 16 for images, 8 for labels)."""
    return np.frombuffer(gzip.open(path).read(), np.uint8, offset=offset)


def load_split(data: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float [N, 1, 32, 32] in [0, 1] (28 x 28 padded with background) and labels [N]."""
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(data / f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28)
    labels = read_idx(data / f"{prefix}-labels-idx1-ubyte.gz", 8)
    images = torch.from_numpy(images.astype(np.float32) / 255.0)
    return F.pad(images, (2, 2, 2, 2)), torch.from_numpy(labels.astype(np.int64))


def to_model_range(gray: torch.Tensor) -> torch.Tensor:
    """[N, 1, H, W] in [0, 1] -> [N, 3, H, W] in [-1, 1], as ComfyUI's VAE.process_input gives it."""
    return gray.expand(-1, 3, -1, -1) * 2.0 - 1.0


# ------------------------------------------------------------------------------------------------------ networks

def import_comfy(comfy_root: Path, device: torch.device):
    sys.path.insert(0, str(comfy_root.resolve()))
    import comfy.cli_args

    if device.type == "cpu":
        comfy.cli_args.args.cpu = True  # before anything imports comfy.model_management
    import comfy.ops  # noqa: F401


def reset_parameters_(module: torch.nn.Module) -> torch.nn.Module:
    """ComfyUI's layers skip weight initialisation (they expect a checkpoint): apply torch's default init."""
    bases = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear, torch.nn.GroupNorm,
             torch.nn.LayerNorm, torch.nn.Embedding)
    for layer in module.modules():
        for base in bases:
            if isinstance(layer, base):
                base.reset_parameters(layer)
                break
    return module


def build_vae(device):
    from comfy.ldm.models.autoencoder import AutoencoderKL

    vae = AutoencoderKL(ddconfig=VAE_DDCONFIG, embed_dim=VAE_EMBED_DIM)
    return reset_parameters_(vae).to(device)


def build_unet(device):
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet = reset_parameters_(UNetModel(**UNET_CONFIG, dtype=torch.float32, operations=comfy.ops.disable_weight_init))
    torch.nn.init.zeros_(unet.out[-1].weight)  # start by predicting zero noise
    torch.nn.init.zeros_(unet.out[-1].bias)
    return unet.to(device)


class ClassTokens(torch.nn.Module):
    """The conditioning: one learned context token per class plus the "any" token, [N, 1, CONTEXT_DIM]."""

    def __init__(self):
        super().__init__()
        self.embeddings = torch.nn.Parameter(torch.randn(len(CLASSES) + 1, CONTEXT_DIM))

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embeddings[labels].unsqueeze(1)


# ------------------------------------------------------------------------------------------------------ losses

def vae_posterior(vae, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and log-variance of q(z | x)."""
    mean, logvar = vae.quant_conv(vae.encoder(x)).chunk(2, dim=1)
    return mean, logvar.clamp(-30.0, 20.0)


def vae_decode(vae, z: torch.Tensor) -> torch.Tensor:
    return vae.decoder(vae.post_quant_conv(z))


def vae_loss(vae, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """L1 reconstruction of a posterior sample + KL(q(z|x) || N(0, I)) per image, weighted by KL_WEIGHT."""
    mean, logvar = vae_posterior(vae, x)
    z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
    l1 = (vae_decode(vae, z) - x).abs().mean()
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1).mean()
    return l1 + KL_WEIGHT * kl, {"l1": l1.item(), "kl": kl.item()}


def discrete_alpha_bars(device) -> torch.Tensor:
    """SD's discrete schedule: betas = linspace(sqrt(0.00085), sqrt(0.012), 1000)^2, alpha_bar_t = prod(1 - beta)."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0).float().to(device)


def diffusion_loss(unet, tokens, z0, labels, alpha_bars, generator=None) -> torch.Tensor:
    """E ||eps - eps_theta(sqrt(a_t) z0 + sqrt(1 - a_t) eps, t, c)||^2 (epsilon prediction)."""
    t = torch.randint(0, len(alpha_bars), (z0.shape[0],), device=z0.device, generator=generator)
    eps = torch.randn(z0.shape, device=z0.device, generator=generator)
    a = alpha_bars[t].view(-1, 1, 1, 1)
    z_t = a.sqrt() * z0 + (1 - a).sqrt() * eps
    return F.mse_loss(unet(z_t, timesteps=t.float(), context=tokens(labels)), eps)


# ------------------------------------------------------------------------------------------------------ state on disk

def save_state(path: Path, modules: dict, optimizer, step: int, extra: dict) -> None:
    """Weights, Adam moments and the step, as one safetensors file (written aside, then renamed)."""
    from safetensors.torch import save_file

    tensors = {f"{name}.{k}": v.detach().cpu().contiguous() for name, m in modules.items()
               for k, v in m.state_dict().items()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, param in enumerate(params):
        for key, value in optimizer.state.get(param, {}).items():
            tensors[f"adam.{index}.{key}"] = value.detach().cpu().contiguous()
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"step": str(step), "extra": json.dumps(extra)})
    tmp.replace(path)


def load_state(path: Path, modules: dict, optimizer) -> tuple[int, dict]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    for name, m in modules.items():
        m.load_state_dict({k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")})
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, param in enumerate(params):
        state = {key.split(".", 2)[2]: v.to(param.device) for key, v in tensors.items()
                 if key.startswith(f"adam.{index}.")}
        if state:
            optimizer.state[param] = state
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return int(meta["step"]), json.loads(meta["extra"])


def log(work: Path, record: dict) -> None:
    record = {"time": round(time.time(), 1), **record}
    print(json.dumps(record), flush=True)
    with open(work / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


class StepBudget:
    """--fit bookkeeping of one stage: times the steps after FIT_WARMUP, and FIT_AFTER steps later lowers the stage's
    total (kept in `extra`, so a resumed run keeps it) so that the stage ends by the deadline."""

    def __init__(self, args, stage: str, step: int, extra: dict, deadline: float):
        self.args, self.stage, self.extra, self.deadline = args, stage, extra, deadline
        self.first_timed, self.timer = step + FIT_WARMUP, time.time()

    def total(self, step: int, total: int) -> int:
        """The stage's total steps as of this step."""
        if step == self.first_timed + FIT_AFTER and self.args.fit:
            total = self.extra["total"] = fitted_total(step, total, self.timer, self.first_timed, self.deadline)
            log(self.args.work, {"stage": self.stage, "fitted_total": total})
        if step == self.first_timed:
            self.timer = time.time()
        return total


def fitted_total(step: int, total: int, started: float, first_step: int, budget_end: float) -> int:
    """--fit: after a few timed steps, lower the stage's total so that it (and its lr schedule) ends by budget_end."""
    per_step = (time.time() - started) / max(1, step - first_step)
    return min(total, step + int((budget_end - time.time()) / per_step))


def cosine_lr(step: int, total: int, peak: float, warmup: int = 200) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup)))))


# ------------------------------------------------------------------------------------------------------ stages

@torch.no_grad()
def vae_psnr(vae, images: torch.Tensor, batch: int = 500) -> float:
    """Mean PSNR (dB, range [0, 1]) of decode(posterior mean) against the image."""
    vae.eval()
    scores = []
    for chunk in images.split(batch):
        x = to_model_range(chunk)
        rec = ((vae_decode(vae, vae_posterior(vae, x)[0]) + 1) / 2).clamp(0, 1).mean(1, keepdim=True)
        mse = (rec - chunk).pow(2).flatten(1).mean(1).clamp_min(1e-10)
        scores.append(10 * torch.log10(1.0 / mse))
    vae.train()
    return torch.cat(scores).mean().item()


def train_vae(args, data, device, deadline) -> bool:
    train, val = data["train"], data["val"]
    vae = build_vae(device)
    optimizer = torch.optim.Adam(vae.parameters(), lr=args.vae_lr)
    path = args.work / "vae.safetensors"
    step, extra = load_state(path, {"vae": vae}, optimizer) if path.exists() else (0, {})
    budget = StepBudget(args, "vae", step, extra, deadline)
    generator = torch.Generator(device="cpu").manual_seed(args.seed + step)
    torch.manual_seed(args.seed + step)
    total = extra.get("total", args.vae_steps)
    extra.setdefault("batch", args.batch)
    vae.train()
    while step < total and time.time() < deadline:
        total = budget.total(step, total)
        index = torch.randint(0, len(train), (args.batch,), generator=generator)
        x = to_model_range(train[index].to(device))
        if step % 2:
            x = x.flip(-1)
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, total, args.vae_lr)
        loss, parts = vae_loss(vae, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if step % args.log_every == 0 or step == total:
            extra["val_psnr"] = vae_psnr(vae, val.to(device))  # in place: the StepBudget writes its total here
            log(args.work, {"stage": "vae", "step": step, "loss": loss.item(), **parts, **extra})
        if step % args.save_every == 0:
            save_state(path, {"vae": vae}, optimizer, step, extra)
    save_state(path, {"vae": vae}, optimizer, step, extra)
    return step >= total


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    vae.eval()
    return torch.cat([vae_posterior(vae, to_model_range(chunk))[0] for chunk in images.split(batch)])


def latent_cache(args, data, device) -> dict:
    """Posterior means of the training images, scaled to unit standard deviation (SD's scale_factor)."""
    path = args.work / "latents.safetensors"
    from safetensors.torch import load_file, save_file

    if path.exists():
        return load_file(str(path), device=str(device))
    vae = build_vae(device)
    load_state(args.work / "vae.safetensors", {"vae": vae}, torch.optim.Adam(vae.parameters()))
    train = data["train"].to(device)
    z = encode_latents(vae, train)
    scale = 1.0 / z.std()
    cache = {"train": (z * scale).contiguous(), "labels": data["train_labels"].to(device),
             "val": (encode_latents(vae, data["val"].to(device)) * scale).contiguous(),
             "val_labels": data["val_labels"].to(device), "scale": scale.reshape(1)}
    save_file({k: v.cpu() for k, v in cache.items()}, str(path))
    return cache


@torch.no_grad()
def held_out_diffusion_loss(unet, tokens, latents, labels, alpha_bars) -> float:
    unet.eval()
    generator = torch.Generator(device=latents.device).manual_seed(0)
    loss = diffusion_loss(unet, tokens, latents, torch.full_like(labels, NULL_CLASS), alpha_bars, generator)
    unet.train()
    return loss.item()


def train_unet(args, data, device, deadline) -> bool:
    cache = latent_cache(args, data, device)
    unet, tokens = build_unet(device), ClassTokens().to(device)
    ema_unet, ema_tokens = build_unet(device), ClassTokens().to(device)
    ema_unet.load_state_dict(unet.state_dict())
    ema_tokens.load_state_dict(tokens.state_dict())
    modules = {"unet": unet, "tokens": tokens, "ema_unet": ema_unet, "ema_tokens": ema_tokens}
    params = list(unet.parameters()) + list(tokens.parameters())
    optimizer = torch.optim.Adam(params, lr=args.unet_lr)
    path = args.work / "unet.safetensors"
    step, extra = load_state(path, modules, optimizer) if path.exists() else (0, {})
    budget = StepBudget(args, "unet", step, extra, deadline)
    total = extra.get("total", args.unet_steps)
    extra.setdefault("batch", args.unet_batch)
    ema_params = list(ema_unet.parameters()) + list(ema_tokens.parameters())
    alpha_bars = discrete_alpha_bars(device)
    generator = torch.Generator(device="cpu").manual_seed(args.seed + 1 + step)
    torch.manual_seed(args.seed + 1 + step)
    train, labels = cache["train"], cache["labels"]
    unet.train()
    while step < total and time.time() < deadline:
        total = budget.total(step, total)
        index = torch.randint(0, len(train), (args.unet_batch,), generator=generator).to(device)
        drop = (torch.rand(args.unet_batch, generator=generator) < CLASS_DROPOUT).to(device)
        y = torch.where(drop, torch.full_like(labels[index], NULL_CLASS), labels[index])
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, total, args.unet_lr)
        loss = diffusion_loss(unet, tokens, train[index], y, alpha_bars)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        step += 1
        if step % args.log_every == 0 or step == total:
            extra["val_loss_ema"] = held_out_diffusion_loss(ema_unet, ema_tokens, cache["val"], cache["val_labels"],
                                                            alpha_bars)  # in place, as for the VAE
            log(args.work, {"stage": "unet", "step": step, "loss": loss.item(), **extra})
        if step % args.save_every == 0:
            save_state(path, modules, optimizer, step, extra)
    save_state(path, modules, optimizer, step, extra)
    return step >= total


# ------------------------------------------------------------------------------------------------------ export

@torch.no_grad()
def sample_grid(unet, tokens, vae, scale: float, device, path: Path, steps: int = 50, cfg: float = 2.0) -> None:
    """One row per class (and a last row unconditional), DDIM (eta 0) with CFG: a picture for the model card."""
    from PIL import Image

    alpha_bars = discrete_alpha_bars(device)
    timesteps = torch.linspace(999, 0, steps, device=device).round().long()
    labels = torch.arange(NULL_CLASS + 1, device=device).repeat_interleave(8)
    z = torch.randn((len(labels), 4, 8, 8), device=device, generator=torch.Generator(device=device).manual_seed(7))
    unet.eval()
    for i, t in enumerate(timesteps):
        a = alpha_bars[t]
        tt = t.float().expand(len(z))
        eps_c = unet(z, timesteps=tt, context=tokens(labels))
        eps_u = unet(z, timesteps=tt, context=tokens(torch.full_like(labels, NULL_CLASS)))
        eps = eps_u + cfg * (eps_c - eps_u) * (labels != NULL_CLASS).view(-1, 1, 1, 1) + (eps_c - eps_u) * (labels == NULL_CLASS).view(-1, 1, 1, 1)
        x0 = (z - (1 - a).sqrt() * eps) / a.sqrt()
        a_next = alpha_bars[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.tensor(1.0, device=device)
        z = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    images = ((vae_decode(vae, z / scale) + 1) / 2).clamp(0, 1).mean(1)
    grid = images.reshape(NULL_CLASS + 1, 8, 32, 32).permute(0, 2, 1, 3).reshape((NULL_CLASS + 1) * 32, 8 * 32)
    Image.fromarray((grid.cpu().numpy() * 255).round().astype(np.uint8)).resize((8 * 64, (NULL_CLASS + 1) * 64),
                                                                               Image.NEAREST).save(path)


def export(args, data, device) -> None:
    """One self-describing safetensors file, fp16: ComfyUI key names plus the class tokens, configs in metadata."""
    from safetensors.torch import save_file

    vae = build_vae(device)
    vae_step, vae_extra = load_state(args.work / "vae.safetensors", {"vae": vae}, torch.optim.Adam(vae.parameters()))
    unet, tokens = build_unet(device), ClassTokens().to(device)
    dummy = {"unet": build_unet(device), "tokens": ClassTokens().to(device), "ema_unet": unet, "ema_tokens": tokens}
    params = list(dummy["unet"].parameters()) + list(dummy["tokens"].parameters())
    unet_step, unet_extra = load_state(args.work / "unet.safetensors", dummy, torch.optim.Adam(params))
    cache = latent_cache(args, data, device)
    scale = float(cache["scale"].item())
    vae.eval()
    unet.eval()
    test_psnr = vae_psnr(vae, data["test"].to(device))
    records = [json.loads(line) for line in open(args.work / "log.jsonl")]
    card = {
        "data": "Fashion-MNIST (Debian dataset-fashion-mnist, MIT), 28x28 padded to 32x32, gray repeated on RGB",
        "train_images": len(data["train"]), "validation_images": len(data["val"]),
        "vae_steps": vae_step, "vae_batch": vae_extra.get("batch"), "unet_steps": unet_step,
        "unet_batch": unet_extra.get("batch"), "vae_lr": args.vae_lr, "unet_lr": args.unet_lr, "ema": args.ema,
        "vae_val_psnr": vae_extra.get("val_psnr"), "vae_test_psnr": test_psnr,
        "unet_val_loss_ema": unet_extra.get("val_loss_ema"),
        "last_losses": {s: next((r["loss"] for r in reversed(records) if r["stage"] == s), None) for s in ("vae", "unet")},
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "seed": args.seed,
    }
    tensors = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    tensors.update({f"first_stage_model.{k}": v for k, v in vae.state_dict().items()})
    tensors["conditioning.class_tokens"] = tokens.embeddings
    tensors = {k: v.detach().to(torch.float16).cpu().contiguous() for k, v in tensors.items()}
    metadata = {"format": FORMAT, "unet_config": json.dumps(UNET_CONFIG), "vae_ddconfig": json.dumps(VAE_DDCONFIG),
                "vae_embed_dim": str(VAE_EMBED_DIM), "latent_scale_factor": repr(scale),
                "downscale_ratio": "4", "image_size": str(IMAGE_SIZE), "classes": json.dumps(CLASSES),
                "null_class": str(NULL_CLASS), "prediction": "eps", "schedule": "sd-discrete-scaled-linear",
                "training": json.dumps(card)}
    args.export.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.export), metadata=metadata)
    sample_grid(unet, tokens, vae, scale, device, args.export.with_name(args.export.stem + "_samples.png"))
    (args.export.with_name(args.export.stem + "_training.json")).write_text(json.dumps(card, indent=1) + "\n")
    print(json.dumps({"exported": str(args.export), "MiB": round(args.export.stat().st_size / 2**20, 2), **card}))


# ------------------------------------------------------------------------------------------------------ main

def load_data(path: Path, holdout: int) -> dict:
    train, train_labels = load_split(path, "train")
    test, test_labels = load_split(path, "test")
    return {"train": train[:-holdout], "train_labels": train_labels[:-holdout], "val": train[-holdout:],
            "val_labels": train_labels[-holdout:], "test": test, "test_labels": test_labels}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfy", type=Path, default=Path(".comfyui/ComfyUI"), help="ComfyUI root (its classes)")
    parser.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--work", type=Path, default=Path(".artifacts/demo_prior"), help="resumable state and log")
    parser.add_argument("--stage", choices=["vae", "unet", "all", "export"], default="all")
    parser.add_argument("--export", type=Path, default=Path("models/psld_demo_fmnist32.safetensors"))
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, ...")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--holdout", type=int, default=1000, help="last training images kept out (validation)")
    parser.add_argument("--batch", type=int, default=64, help="VAE batch")
    parser.add_argument("--unet-batch", type=int, default=64)
    parser.add_argument("--vae-steps", type=int, default=20000)
    parser.add_argument("--unet-steps", type=int, default=40000)
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--unet-lr", type=float, default=3e-4)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--max-minutes", type=float, default=math.inf, help="stop (resumably) after this long")
    parser.add_argument("--vae-max-minutes", type=float, default=math.inf, help="time cap for the VAE stage")
    parser.add_argument("--fit", action="store_true",
                        help="lower each stage's step count so that its lr schedule ends inside its time cap")
    parser.add_argument("--log-every", type=int, default=500)
    parser.add_argument("--save-every", type=int, default=2000)
    args = parser.parse_args(argv)

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)
    args.work.mkdir(parents=True, exist_ok=True)
    import_comfy(args.comfy, device)
    data = load_data(args.data, args.holdout)
    started = time.time()
    deadline = started + args.max_minutes * 60
    if args.stage == "export":
        export(args, data, device)
        return 0
    done = True
    if args.stage in ("vae", "all"):
        done = train_vae(args, data, device, min(deadline, started + args.vae_max_minutes * 60))
        if not done and args.vae_max_minutes == math.inf:
            print("not done: run again to continue")
            return 0
    if args.stage in ("unet", "all"):
        done = train_unet(args, data, device, deadline)
    print("done" if done else "not done: run again to continue")
    return 0


if __name__ == "__main__":
    sys.exit(main())
