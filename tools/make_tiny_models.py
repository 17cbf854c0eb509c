#!/usr/bin/env python3
"""Write tiny random-weight checkpoints that a real ComfyUI loads as Stable Diffusion 1.5.

Generated at test time (a few seconds) and never committed. Weights are random but seeded, so every run and
every machine gets the same files. The networks are built with ComfyUI's own classes, so the key names are
exactly what ComfyUI's loaders expect.

    python tools/make_tiny_models.py --comfy .comfyui/ComfyUI --out .artifacts/models

writes  checkpoints/psld_tiny_sd15.safetensors   smallest UNet still detected as SD15 + full-size CLIP-L
                                                 (its shape is fixed) + a TAESD-layout VAE
        vae/psld_tiny_taesd.safetensors          the same VAE alone (VAELoader)
"""
import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import torch

CHECKPOINT = "psld_tiny_sd15.safetensors"
STANDALONE_VAE = "psld_tiny_taesd.safetensors"
SD15_LATENT_SCALE = 0.18215

# The smallest UNet that ComfyUI's model detection still maps to SD15: one level, one ResBlock plus one
# SpatialTransformer (needed to detect context_dim 768), no middle block, two output ResBlocks.
TINY_SD15_UNET = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320, num_heads=8, num_head_channels=-1,
    context_dim=768, use_spatial_transformer=True, legacy=False, use_linear_in_transformer=False,
    adm_in_channels=None, use_checkpoint=False, channel_mult=[1], num_res_blocks=[1], transformer_depth=[1],
    transformer_depth_output=[0, 0], transformer_depth_middle=-2,
)


def seeded_init_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fill every parameter deterministically (ComfyUI's ops leave uninitialised memory)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim <= 1:
                param.fill_(0.0 if name.endswith(("bias", "vae_shift")) else 1.0)
            elif "embedding" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
            else:  # uniform with variance 1/fan_in keeps activations of order one through the stack
                bound = math.sqrt(3.0 / param[0].numel())
                param.copy_((torch.rand(param.shape, generator=generator) * 2 - 1) * bound)
    return module


def unet_state(seed: int) -> dict:
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet = seeded_init_(UNetModel(dtype=torch.float32, **TINY_SD15_UNET), seed)
    return {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}


def clip_state(seed: int) -> dict:
    import comfy.sd1_clip

    clip = seeded_init_(comfy.sd1_clip.SD1ClipModel(device="cpu", dtype=torch.float32), seed + 1)
    return {k.replace("clip_l.", "cond_stage_model.", 1): v for k, v in clip.state_dict().items()
            if not k.endswith(("text_projection.weight", "logit_scale"))}


def taesd_state(seed: int) -> dict:
    import comfy.taesd.taesd

    taesd = seeded_init_(comfy.taesd.taesd.TAESD(latent_channels=4), seed + 2)
    with torch.no_grad():
        taesd.vae_scale.fill_(SD15_LATENT_SCALE)
        taesd.vae_shift.fill_(0.0)
    return taesd.state_dict()


def as_storage(state: dict, dtype: torch.dtype) -> dict:
    return {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous() for k, v in state.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfy", required=True, help="ComfyUI root folder (its comfy package builds the networks)")
    parser.add_argument("--out", required=True, help="models folder to write checkpoints/ and vae/ into")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)

    out = Path(args.out)
    stamp = out / "psld_tiny_models.json"
    recipe = {"seed": args.seed, "unet": TINY_SD15_UNET, "generator": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()}
    files = [out / "checkpoints" / CHECKPOINT, out / "vae" / STANDALONE_VAE]
    if stamp.exists() and json.loads(stamp.read_text()) == recipe and all(f.exists() for f in files):
        print(f"tiny models up to date in {out}")
        return 0

    sys.path.insert(0, str(Path(args.comfy).resolve()))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before anything imports comfy.model_management
    from safetensors.torch import save_file

    started = time.time()
    vae = as_storage(taesd_state(args.seed), torch.float16)
    checkpoint = {**as_storage(unet_state(args.seed), torch.float16), **as_storage(clip_state(args.seed), torch.float16),
                  **{f"first_stage_model.{k}": v for k, v in vae.items()}}
    for path, state in ((files[0], checkpoint), (files[1], vae)):
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(path), metadata={"note": f"random weights for tests, seed {args.seed}"})
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    stamp.write_text(json.dumps(recipe))
    print(f"tiny models written in {time.time() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
