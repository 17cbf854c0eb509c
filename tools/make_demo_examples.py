#!/usr/bin/env python3
"""Write the demo's example images, models/psld_demo_fmnist32_examples.png: a horizontal strip of 16 Fashion-MNIST
TEST-split images (t10k, never trained on), 32 x 32 each (the 28 x 28 images padded with background, exactly as
tools/train_demo_prior.load_split does), 8-bit gray, 512 x 32 pixels. PSLD_DemoImage serves them by index.

Which images (INDICES below, positions in the t10k files):
    strip 0..9    the first test image of each class, in class order (T-shirt/top, Trouser, Pullover, Dress, Coat,
                  Sandal, Shirt, Sneaker, Bag, Ankle boot)
    strip 10..15  the second test image of T-shirt/top, Pullover, Coat, Shirt, Bag and Ankle boot

Fashion-MNIST: Zalando Research, MIT licence (Debian package dataset-fashion-mnist).

    python tools/make_demo_examples.py                 # --data /usr/share/datasets/fashion-mnist
    python tools/make_demo_examples.py --data .devcarry/fmnist --check   # compare with the committed strip
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

from train_demo_prior import CLASSES, load_split  # noqa: E402  (the padding the prior was trained with)

STRIP = REPO / "models" / "psld_demo_fmnist32_examples.png"
FIRST_OF_CLASSES = list(range(10))
SECOND_OF_CLASSES = [0, 2, 4, 6, 8, 9]


def choose_indices(labels: np.ndarray) -> list[int]:
    """Positions in the test split: the first image of each class, then the second image of SECOND_OF_CLASSES."""
    first = [int(np.flatnonzero(labels == c)[0]) for c in FIRST_OF_CLASSES]
    second = [int(np.flatnonzero(labels == c)[1]) for c in SECOND_OF_CLASSES]
    return first + second


def make_strip(data: Path) -> tuple[np.ndarray, list[int], list[str]]:
    """The strip as uint8 [32, 16 * 32], the test-split positions used, and their class names."""
    images, labels = load_split(data, "test")
    labels = labels.numpy()
    indices = choose_indices(labels)
    tiles = [np.rint(images[i, 0].numpy() * 255.0).astype(np.uint8) for i in indices]
    return np.concatenate(tiles, axis=1), indices, [CLASSES[labels[i]] for i in indices]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"),
                        help="folder with t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz")
    parser.add_argument("--out", type=Path, default=STRIP)
    parser.add_argument("--check", action="store_true", help="only compare with the existing file")
    args = parser.parse_args()
    from PIL import Image

    strip, indices, names = make_strip(args.data)
    for position, (index, name) in enumerate(zip(indices, names)):
        print(f"strip {position:2d}: t10k[{index}] {name}")
    if args.check:
        same = np.array_equal(np.asarray(Image.open(args.out).convert("L")), strip)
        print(f"{args.out}: {'same pixels' if same else 'DIFFERENT pixels'}")
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(strip, mode="L").save(args.out, optimize=True)
    print(f"{args.out}: {strip.shape[1]}x{strip.shape[0]}, {args.out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
