import subprocess
import sys

import numpy as np
import pytest

from rqvae import data
from rqvae.config import ConfigError, DataConfig


def test_digits_are_split_deterministically_and_scaled(digits):
    assert digits.train.shape[1] == 64 and digits.image_shape == (8, 8)
    assert len(digits.train) + len(digits.heldout) == 1797
    assert len(digits.heldout) == round(0.2 * 1797)
    assert digits.train.dtype == np.float32
    assert digits.train.min() == 0.0 and digits.train.max() == 1.0
    again = data.load(DataConfig())
    np.testing.assert_array_equal(again.train, digits.train)
    # No held-out image is also a training image (the digits hold a few exact duplicates).
    train_rows = {row.tobytes() for row in digits.train}
    assert sum(row.tobytes() in train_rows for row in digits.heldout) < 5


def test_split_seed_changes_the_split(digits):
    other = data.load(DataConfig(split_seed=1))
    assert not np.array_equal(other.heldout, digits.heldout)


def test_unknown_dataset_lists_valid_forms():
    with pytest.raises(ConfigError, match="unknown data set 'cifar'.*digits.*tfds:<name>"):
        data.load(DataConfig(dataset="cifar"))


def test_tfds_reads_through_data_source_without_tensorflow():
    script = """
import sys
import tensorflow_datasets as tfds
from rqvae import data
from rqvae.config import DataConfig
with tfds.testing.mock_data(num_examples=12):
    ds = data.load(DataConfig(dataset="tfds:mnist"))
assert ds.train.shape == (12, 784) and ds.image_shape == (28, 28), ds.train.shape
assert 0.0 <= ds.train.min() and ds.train.max() <= 1.0
assert "tensorflow" not in sys.modules
"""
    subprocess.run([sys.executable, "-c", script], check=True)
