"""Conversions between ComfyUI's tensor layouts and the NCHW [-1, 1] layout of psld/."""
import torch


def image_to_nchw(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE [B, H, W, C] in [0, 1] -> NCHW in [-1, 1] (a new tensor; the input is not touched)."""
    return image.movedim(-1, 1) * 2.0 - 1.0


def nchw_to_image(x: torch.Tensor) -> torch.Tensor:
    """NCHW in [-1, 1] -> ComfyUI IMAGE [B, H, W, C] in [0, 1], clamped (a new tensor)."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1)


def comfy_mask_to_observed(mask: torch.Tensor) -> torch.Tensor:
    """ComfyUI MASK [B, H, W] or [H, W] with 1 = hole -> PSLD mask [B, 1, H, W] with 1 = observed."""
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    return (1.0 - mask).unsqueeze(1)
