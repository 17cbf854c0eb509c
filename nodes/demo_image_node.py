"""PSLD_DemoImage: one of the 16 bundled Fashion-MNIST test images (models/psld_demo_fmnist32_examples.png, made by
tools/make_demo_examples.py) as a 32 x 32 IMAGE, so the demo workflows need no download and no input file.

Strip positions 0..9 are the first test image of each class in class order (T-shirt/top, Trouser, Pullover, Dress,
Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot); 10..15 the second test image of T-shirt/top, Pullover, Coat, Shirt,
Bag and Ankle boot. Fashion-MNIST: Zalando Research, MIT licence.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import comfy.model_management
import numpy as np
import torch
from comfy_api.latest import io

from .errors import PSLDInputError

EXAMPLES = Path(__file__).resolve().parents[1] / "models" / "psld_demo_fmnist32_examples.png"
SIDE = 32
COUNT = 16
NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
         "T-shirt/top 2", "Pullover 2", "Coat 2", "Shirt 2", "Bag 2", "Ankle boot 2")


@lru_cache(maxsize=1)
def example_strip(path: Path = EXAMPLES) -> np.ndarray:
    """The strip as float32 [32, 16 * 32] in [0, 1] (read once; callers copy what they use)."""
    from PIL import Image

    with Image.open(path) as picture:
        strip = np.asarray(picture.convert("L"), dtype=np.float32) / 255.0
    if strip.shape != (SIDE, SIDE * COUNT):
        raise RuntimeError(f"{path}: expected a {SIDE * COUNT}x{SIDE} strip, found {strip.shape[1]}x{strip.shape[0]}; "
                           "regenerate it with tools/make_demo_examples.py")
    return strip


def demo_image(index: int) -> torch.Tensor:
    """Example `index` as a ComfyUI IMAGE [1, 32, 32, 3] (the gray value on R, G and B), a new tensor."""
    tile = example_strip()[:, index * SIDE:(index + 1) * SIDE]
    image = torch.from_numpy(np.repeat(tile[None, :, :, None], 3, axis=-1))
    return image.to(comfy.model_management.intermediate_device())


class PSLDDemoImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PSLD_DemoImage",
            display_name="PSLD Demo Image",
            category="image/restoration/PSLD/demo",
            description=("One of 16 bundled Fashion-MNIST test images (never trained on), 32 x 32 gray, for the "
                         "demo model: a clean image to degrade and restore without loading a file. "
                         "Fashion-MNIST by Zalando Research, MIT licence."),
            inputs=[
                io.Int.Input("index", default=0, min=0, max=COUNT - 1,
                             tooltip="Which image: " + ", ".join(f"{i} {n}" for i, n in enumerate(NAMES)) + "."),
            ],
            outputs=[
                io.Image.Output(display_name="image",
                                tooltip="The image as IMAGE [1, 32, 32, 3] in 0..1, the same gray on R, G and B."),
            ],
        )

    @classmethod
    def execute(cls, *, index) -> io.NodeOutput:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < COUNT:
            raise PSLDInputError("PSLD_DemoImage", "index", f"index={index!r} is not one of the {COUNT} images.",
                                 f"use an integer from 0 to {COUNT - 1}.")
        return io.NodeOutput(demo_image(index))


NODES = [PSLDDemoImage]
