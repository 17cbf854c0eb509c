"""PSLD_DemoImage on the real ComfyUI host (in-process, registered by ComfyUI's own loader): every index gives the
bundled strip's 32 x 32 tile as a gray IMAGE, and a wrong index gets an error naming the node and the input."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

STRIP = Path(__file__).resolve().parents[2] / "models" / "psld_demo_fmnist32_examples.png"


@pytest.fixture(scope="module")
def demo_image(comfy):
    return comfy.NODE_CLASS_MAPPINGS["PSLD_DemoImage"]


@pytest.fixture(scope="module")
def strip() -> np.ndarray:
    with Image.open(STRIP) as picture:
        assert picture.size == (16 * 32, 32) and picture.mode == "L", (picture.size, picture.mode)
        return np.asarray(picture, dtype=np.float32) / 255.0


def run(node, **inputs):
    with torch.inference_mode():
        return node.execute(**inputs).result


@pytest.mark.parametrize("index", range(16))
def test_each_index_is_its_tile_of_the_strip_in_gray(demo_image, strip, index):
    (image,) = run(demo_image, index=index)
    assert isinstance(image, torch.Tensor) and image.dtype == torch.float32
    assert tuple(image.shape) == (1, 32, 32, 3)
    pixels = image[0].cpu().numpy()
    assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2])
    np.testing.assert_array_equal(pixels[..., 0], strip[:, 32 * index:32 * (index + 1)])
    assert pixels.std() > 0.1, "a garment on a dark background, not a blank tile"
    assert pixels[0].max() < 0.02 and pixels[-1].max() < 0.02, "28 px images padded with background rows"


def test_the_sixteen_images_differ(demo_image):
    images = [run(demo_image, index=i)[0][0, ..., 0] for i in range(16)]
    for i in range(16):
        for j in range(i):
            assert (images[i] - images[j]).abs().mean() > 0.02, (i, j)


def test_output_is_a_new_tensor_each_call(demo_image):
    (first,) = run(demo_image, index=3)
    with torch.inference_mode():
        first.zero_()  # a downstream node that wrote into its input must not change the next run's image
    (second,) = run(demo_image, index=3)
    assert second.max() > 0.5


@pytest.mark.parametrize("index", [16, -1, 1.5, True, "2"])
def test_bad_index_names_node_input_and_fix(demo_image, comfy, index):
    import importlib

    root = demo_image.__module__.rsplit(".nodes.", 1)[0]
    error_type = importlib.import_module(f"{root}.nodes.errors").PSLDInputError
    with pytest.raises(error_type) as caught:
        run(demo_image, index=index)
    message = str(caught.value)
    assert message.startswith("PSLD_DemoImage: input 'index'") and "0 to 15" in message, message
