"""scripts/make_patches.py: deterministic patches, from the images they name, split by image."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("skimage")

from rqvae.trainer import data  # noqa: E402
from rqvae.trainer.config import DataConfig  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_patches.py"


@pytest.fixture(scope="module")
def make_patches():
    spec = importlib.util.spec_from_file_location("make_patches", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(out: Path, seed: int) -> dict[str, np.ndarray]:
    subprocess.run([sys.executable, str(SCRIPT), "--size", "8", "--count", "300",
                    "--heldout-count", "40", "--seed", str(seed), "--out", str(out)],
                   check=True, capture_output=True)
    with np.load(out) as arrays:
        return {key: arrays[key] for key in arrays.files}


def test_same_seed_same_patches_and_rqvae_reads_them(tmp_path):
    first, again, other = (_run(tmp_path / f"{name}.npz", seed)
                           for name, seed in [("a", 3), ("b", 3), ("c", 4)])
    assert sorted(first) == ["heldout", "train"]
    assert first["train"].shape == (300, 8, 8) and first["heldout"].shape == (40, 8, 8)
    assert first["train"].dtype == first["heldout"].dtype == np.uint8
    for key in first:
        assert first[key].tobytes() == again[key].tobytes()
        assert first[key].tobytes() != other[key].tobytes()
    dataset = data.load(DataConfig(dataset=f"npz:{tmp_path / 'a.npz'}"))
    assert dataset.image_shape == (8, 8, 1) and dataset.kind == data.IMAGES
    assert dataset.train.shape == (300, 64) and dataset.heldout.shape == (40, 64)


@pytest.mark.parametrize("size", [8, 16])
def test_each_patch_is_cut_from_the_image_it_names_and_held_out_images_differ(make_patches,
                                                                               size):
    train, heldout, train_sources, heldout_sources = make_patches.make_patches(
        size, count=50, heldout_count=7, seed=0)
    assert train.shape == (50, size, size) and heldout.shape == (7, size, size)
    train_names = {name for name, _, _ in train_sources}
    heldout_names = {name for name, _, _ in heldout_sources}
    assert train_names == set(make_patches.TRAIN_IMAGES)  # every image gives its share
    assert heldout_names == set(make_patches.HELDOUT_IMAGES)
    assert not train_names & heldout_names
    images = {name: make_patches.gray_image(name) for name in train_names | heldout_names}
    for patches, sources in [(train, train_sources), (heldout, heldout_sources)]:
        for patch, (name, row, col) in zip(patches, sources):
            np.testing.assert_array_equal(patch, images[name][row:row + size, col:col + size])


def test_colour_patches_are_rgb_cuts_of_the_colour_images_and_rqvae_reads_them(make_patches,
                                                                                tmp_path):
    train, heldout, train_sources, _ = make_patches.make_patches(8, count=30, heldout_count=4,
                                                                 seed=0, colour=True)
    assert train.shape == (30, 8, 8, 3) and heldout.shape == (4, 8, 8, 3)
    assert {name for name, _, _ in train_sources} == set(make_patches.COLOUR_TRAIN_IMAGES)
    name, row, col = train_sources[0]
    np.testing.assert_array_equal(train[0],
                                  make_patches.colour_image(name)[row:row + 8, col:col + 8])
    assert (train[..., 0] != train[..., 1]).any()  # colour, not gray copied to three channels
    np.savez(tmp_path / "colour.npz", train=train, heldout=heldout)
    dataset = data.load(DataConfig(dataset=f"npz:{tmp_path / 'colour.npz'}"))
    assert dataset.image_shape == (8, 8, 3) and dataset.train.shape == (30, 192)
