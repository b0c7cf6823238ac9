"""Image patches for `rqvae train --dataset npz:...`, cut from the sample images that
scikit-image ships inside its wheel (no download; pip install scikit-image).

    python scripts/make_patches.py --size 8 --out patches8.npz [--count 100000]
        [--heldout-count 10000] [--seed 0] [--colour]

Writes `np.savez(out, train=uint8 (count, size, size), heldout=uint8 (heldout_count, size,
size))`: gray levels, or with --colour RGB patches (count, size, size, 3) of the colour
photographs (COLOUR_TRAIN_IMAGES, COLOUR_HELDOUT_IMAGES). Training patches come from
TRAIN_IMAGES, held-out ones from HELDOUT_IMAGES, so held-out
numbers measure how the model does on images it never saw; the split is fixed, so held-out
numbers of runs with different --seed compare. Each image gives the same share of patches (a
large image would otherwise outweigh the small ones), at uniformly drawn positions, so
overlapping and flat patches (sky, background) occur as they do in the images. The same --seed
gives the same arrays; the script prints their sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np

# Photographs, textures, text and microscopy; every one is a file inside the scikit-image wheel.
TRAIN_IMAGES = ("astronaut", "brick", "camera", "cell", "chelsea", "clock", "coins", "grass",
                "immunohistochemistry", "moon", "rocket", "text")
# One of each kind again: a photograph, a texture, a page of text.
HELDOUT_IMAGES = ("coffee", "gravel", "page")
# Every colour image of the wheel: photographs, microscopy, a telescope's and an eye's images,
# a colour wheel; held out, two photographs.
COLOUR_TRAIN_IMAGES = ("astronaut", "chelsea", "colorwheel", "hubble_deep_field",
                       "immunohistochemistry", "retina")
COLOUR_HELDOUT_IMAGES = ("coffee", "rocket")


def gray_image(name: str) -> np.ndarray:
    """A scikit-image sample image as 2-D uint8 gray levels."""
    import skimage.color
    import skimage.data

    image = getattr(skimage.data, name)()
    if image.ndim == 3:  # RGB: luminance, as rgb2gray weighs the channels
        return np.round(skimage.color.rgb2gray(image) * 255).astype(np.uint8)
    return image


def colour_image(name: str) -> np.ndarray:
    """A scikit-image sample colour image as (H, W, 3) uint8 RGB."""
    import skimage.data

    return getattr(skimage.data, name)()[..., :3]


def cut_patches(images: dict[str, np.ndarray], count: int, size: int,
                rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[str, int, int]]]:
    """`count` size x size patches, an equal share from each image (the first ones get the
    remainder), shuffled; and where each came from: (image name, top row, left column)."""
    shares = np.full(len(images), count // len(images))
    shares[: count % len(images)] += 1
    patches, sources = [], []
    offsets = np.arange(size)
    for (name, image), share in zip(images.items(), shares):
        rows = rng.integers(0, image.shape[0] - size + 1, share)
        cols = rng.integers(0, image.shape[1] - size + 1, share)
        patches.append(image[rows[:, None, None] + offsets[:, None],
                             cols[:, None, None] + offsets[None, :]])  # (share, size, size[, 3])
        sources += [(name, int(row), int(col)) for row, col in zip(rows, cols)]
    order = rng.permutation(count)
    return np.concatenate(patches)[order], [sources[i] for i in order]


def make_patches(size: int, count: int, heldout_count: int, seed: int, colour: bool = False):
    """(train, heldout, train_sources, heldout_sources); see `cut_patches`."""
    rng = np.random.default_rng(seed)
    read, train_names, heldout_names = ((colour_image, COLOUR_TRAIN_IMAGES,
                                         COLOUR_HELDOUT_IMAGES) if colour else
                                        (gray_image, TRAIN_IMAGES, HELDOUT_IMAGES))
    train, train_sources = cut_patches({name: read(name) for name in train_names}, count, size,
                                       rng)
    heldout, heldout_sources = cut_patches({name: read(name) for name in heldout_names},
                                           heldout_count, size, rng)
    return train, heldout, train_sources, heldout_sources


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, choices=(8, 16, 32), required=True,
                        help="patch side in pixels")
    parser.add_argument("--out", type=Path, required=True, help="the .npz to write")
    parser.add_argument("--count", type=int, default=100_000, help="training patches")
    parser.add_argument("--heldout-count", type=int, default=10_000, help="held-out patches")
    parser.add_argument("--seed", type=int, default=0, help="chooses the patch positions")
    parser.add_argument("--colour", action="store_true",
                        help="RGB patches of the colour images instead of gray levels")
    args = parser.parse_args()
    if min(args.count, args.heldout_count) < 1:
        parser.error("--count and --heldout-count must be at least 1")
    started = time.perf_counter()
    train, heldout, _, _ = make_patches(args.size, args.count, args.heldout_count, args.seed,
                                        args.colour)
    np.savez(args.out, train=train, heldout=heldout)
    digest = hashlib.sha256(train.tobytes() + heldout.tobytes()).hexdigest()
    print(f"train images:   {', '.join(COLOUR_TRAIN_IMAGES if args.colour else TRAIN_IMAGES)}")
    print(f"heldout images: "
          f"{', '.join(COLOUR_HELDOUT_IMAGES if args.colour else HELDOUT_IMAGES)}")
    print(f"wrote {args.out}: train {train.shape}, heldout {heldout.shape} uint8, "
          f"{args.out.stat().st_size / 2**20:.1f} MiB, in {time.perf_counter() - started:.1f} s")
    print(f"sha256 of the arrays: {digest}")


if __name__ == "__main__":
    main()
