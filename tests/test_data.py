import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rqvae.trainer import data, prepare
from rqvae.trainer.config import DataConfig
from rqvae.trainer.errors import ConfigError, UserError


def test_digits_are_split_deterministically_and_scaled(digits):
    assert digits.train.shape[1] == 64 and digits.image_shape == (8, 8, 1)
    assert digits.kind == data.IMAGES
    assert len(digits.train) + len(digits.heldout) == 1797
    assert len(digits.heldout) == round(0.2 * 1797)
    assert digits.train.dtype == np.float32
    assert digits.train.min() == 0.0 and digits.train.max() == 1.0
    again = data.load(DataConfig())
    np.testing.assert_array_equal(again.train, digits.train)
    # No held-out image is also a training image (the digits hold a few exact duplicates).
    train_rows = {row.tobytes() for row in digits.train}
    assert sum(row.tobytes() in train_rows for row in digits.heldout) < 5


def test_digits_match_scikit_learn(digits):
    from sklearn.datasets import load_digits

    all_images = np.concatenate([digits.train, digits.heldout])
    reference = load_digits().data.astype(np.float32) / 16.0
    assert sorted(map(bytes, all_images)) == sorted(map(bytes, reference))


def test_split_seed_changes_the_split(digits):
    other = data.load(DataConfig(split_seed=1))
    assert not np.array_equal(other.heldout, digits.heldout)


def test_unknown_dataset_lists_valid_forms():
    with pytest.raises(ConfigError, match="unknown data set 'cifar'.*digits.*tfds:<name>.*npz"):
        data.load(DataConfig(dataset="cifar"))


TFDS_SCRIPT = """
import sys
import tensorflow_datasets as tfds
from rqvae.trainer import data
from rqvae.trainer.config import DataConfig
with tfds.testing.mock_data(num_examples=12):
    mnist = data.load(DataConfig(dataset="tfds:mnist"))
    cifar = data.load(DataConfig(dataset="tfds:cifar10"))
assert mnist.train.shape == (12, 784) and mnist.image_shape == (28, 28, 1), mnist.train.shape
assert cifar.train.shape == (12, 3072) and cifar.image_shape == (32, 32, 3), cifar.train.shape
for ds in (mnist, cifar):
    assert ds.heldout.shape == ds.train.shape and ds.train.dtype.name == "float32"
    assert 0.0 <= ds.train.min() and ds.train.max() <= 1.0 and ds.train.std() > 0.1
assert "tensorflow" not in sys.modules, "tensorflow was imported"
"""


def test_tfds_reads_mnist_and_cifar_shapes_without_tensorflow():
    subprocess.run([sys.executable, "-c", TFDS_SCRIPT], check=True)


def test_unprepared_tfds_data_set_says_how_to_prepare(tmp_path):
    with pytest.raises(UserError, match=r"not prepared \(as ArrayRecord\) in .*"
                                        r"pip install -e '.\[prepare\]' && rqvae data prepare tfds:mnist"):
        data.load(DataConfig(dataset="tfds:mnist", data_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="unknown tfds data set 'no_such_set'"):
        data.load(DataConfig(dataset="tfds:no_such_set", data_dir=str(tmp_path)))


def _save(path, **arrays):
    np.savez(path, **arrays)
    return DataConfig(dataset=f"npz:{path}")


def test_npz_uint8_nhw_with_a_held_out_split_of_its_own(tmp_path):
    rng = np.random.default_rng(0)
    train, heldout = (rng.integers(0, 256, (n, 6, 5), dtype=np.uint8) for n in (40, 7))
    ds = data.load(_save(tmp_path / "x.npz", train=train, heldout=heldout))
    assert ds.image_shape == (6, 5, 1) and ds.train.shape == (40, 30) and len(ds.heldout) == 7
    assert ds.kind == data.IMAGES
    np.testing.assert_allclose(ds.train, train.reshape(40, -1) / 255.0, rtol=1e-6)


def test_npz_float_nhwc_without_held_out_is_split(tmp_path):
    train = np.random.default_rng(0).random((50, 4, 4, 3), dtype=np.float32)
    ds = data.load(_save(tmp_path / "x.npz", train=train))
    assert ds.image_shape == (4, 4, 3) and len(ds.train) == 40 and len(ds.heldout) == 10


def test_npz_vectors_keep_their_values_and_are_one_pixel_high(tmp_path):
    # Embeddings are arbitrary reals: negative and above 1 must pass through unscaled.
    train = np.random.default_rng(0).normal(0, 3, (30, 7))
    heldout = np.random.default_rng(1).normal(0, 3, (5, 7)).astype(np.float16)
    ds = data.load(_save(tmp_path / "v.npz", train=train, heldout=heldout))
    assert ds.kind == data.VECTORS and ds.image_shape == (1, 7, 1)
    assert ds.train.dtype == np.float32 and ds.train.shape == (30, 7)
    np.testing.assert_allclose(ds.train, train, rtol=1e-6)
    np.testing.assert_allclose(ds.heldout, heldout.astype(np.float32))
    split = data.load(_save(tmp_path / "w.npz", train=train))
    assert split.kind == data.VECTORS and (len(split.train), len(split.heldout)) == (24, 6)
    assert {row.tobytes() for row in split.train} | {row.tobytes() for row in split.heldout} \
        == {row.tobytes() for row in train.astype(np.float32)}


def _nan_pixels():
    images = np.full((4, 3, 3), 0.5)
    images[0, 0, :] = np.nan
    images[1, 1, 1] = np.inf
    return images


@pytest.mark.parametrize("arrays, message", [
    ({"images": np.zeros((4, 3, 3), np.uint8)}, "has no array 'train'.*images"),
    ({"train": np.zeros(4, np.float32)}, r"has shape \(4,\); images must be .* vectors \(N, D\)"),
    ({"train": np.zeros((4, 3, 3, 5), np.uint8)}, "C in 1, 3, 4"),
    ({"train": np.zeros((4, 3, 3, 2, 1), np.uint8)}, r"has shape \(4, 3, 3, 2, 1\)"),
    ({"train": np.zeros((0, 3, 3), np.uint8)}, r"is empty \(shape \(0, 3, 3\)\)"),
    ({"train": np.zeros((0, 5), np.float32)}, r"is empty"),
    ({"train": np.zeros((4, 3, 3), np.int64)}, "dtype int64; images must be uint8"),
    ({"train": np.zeros((4, 3, 3), bool)}, "dtype bool"),
    ({"train": np.zeros((4, 9), np.int64)}, r"vectors and must be float.*astype\(np.float32\)"),
    ({"train": np.zeros((4, 9), np.uint8)}, r"dtype uint8: \(N, D\) arrays are vectors"),
    ({"train": np.full((4, 3, 3), 255.0)}, r"float pixels must be in \[0, 1\], got \[255, 255\]"),
    ({"train": _nan_pixels()}, r"has 3 NaN and 1 inf pixels"),
    ({"train": np.array([[1.0, -np.inf], [np.nan, 2.0]])}, r"has 1 NaN and 1 inf values"),
    ({"train": np.zeros((4, 3, 3), np.uint8), "heldout": np.zeros((2, 4, 4), np.uint8)},
     r"'heldout' examples are \(4, 4\), 'train' examples \(3, 3\)"),
    ({"train": np.zeros((4, 6)), "heldout": np.zeros((2, 1, 6))}, "one example shape"),
])
def test_bad_npz_gets_one_clear_line(tmp_path, arrays, message):
    with pytest.raises(UserError, match=message) as raised:
        data.load(_save(tmp_path / "bad.npz", **arrays))
    assert "\n" not in str(raised.value)


def test_missing_npy_and_pickled_npz_are_refused(tmp_path):
    with pytest.raises(UserError, match="not found"):
        data.load(DataConfig(dataset=f"npz:{tmp_path}/none.npz"))
    np.save(tmp_path / "x.npy", np.zeros((4, 3, 3), np.uint8))
    with pytest.raises(UserError, match=r"holds one array \(4, 3, 3\) \(an .npy file\), not an "
                                        r"\.npz archive; save it with np.savez"):
        data.load(DataConfig(dataset=f"npz:{tmp_path}/x.npy"))
    np.savez(tmp_path / "obj.npz", train=np.array([{"a": 1}], dtype=object))
    with pytest.raises(UserError, match="not an .npz archive of plain arrays"):
        data.load(DataConfig(dataset=f"npz:{tmp_path}/obj.npz"))
    for name, content in [("text.npz", b"a,b\n1,2\n"), ("empty.npz", b""),
                          ("cut.npz", (tmp_path / "obj.npz").read_bytes()[:60])]:
        (tmp_path / name).write_bytes(content)
        # Never numpy's advice to pass allow_pickle, which a user of rqvae cannot.
        with pytest.raises(UserError, match=r"not a(n| readable) \.npz archive") as err:
            data.load(DataConfig(dataset=f"npz:{tmp_path / name}"))
        assert "allow_pickle" not in str(err.value), name


# -- data prepare -------------------------------------------------------------------------------


class FakeBuilder:
    """Stands in for a tfds builder (preparing needs TensorFlow): downloads from `urls` into the
    folders tfds uses, then fails with `error` (None: succeeds)."""

    def __init__(self, root, urls, error=None):
        self.data_dir_root, self.url_infos, self.error = str(root), dict.fromkeys(urls), error
        self.data_dir = str(root / "fake" / "1.0.0")
        self.started = False

    def is_prepared(self):
        return False

    def download_and_prepare(self, download_dir):
        self.started = True
        (download_dir / "fake.zip.tmp.5e1f").mkdir(parents=True)
        (download_dir / "fake.zip.tmp.5e1f" / "fake.zip").write_bytes(b"partial")
        incomplete = Path(self.data_dir).parent / "incomplete.8c2a" / "1.0.0"
        incomplete.mkdir(parents=True)
        (incomplete / "fake-train.array_record-00000-of-00001").write_bytes(b"partial")
        if self.error is not None:
            raise self.error
        incomplete.rename(self.data_dir)


@pytest.fixture
def fake_tfds(monkeypatch):
    """tfds.builder returns the FakeBuilder that the test put in `builders` (or raises it)."""
    import tensorflow_datasets as tfds

    def builder(name, data_dir, file_format):
        if isinstance(builders[name], Exception):
            raise builders[name]
        return builders[name]

    builders = {}
    monkeypatch.setattr(prepare, "_has_tensorflow", lambda: True)
    monkeypatch.setattr(tfds, "builder", builder)
    for variable in ("no_proxy", "NO_PROXY"):  # connect directly, whatever proxy CI sets
        monkeypatch.setenv(variable, "*")
    return builders


def _tree(root):
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


def test_prepare_without_network_fails_at_once_in_one_line_and_writes_nothing(tmp_path,
                                                                              fake_tfds):
    root = tmp_path / "tfds"
    # .invalid never resolves (RFC 2606): the real connectivity check runs, offline or not.
    fake_tfds["fake"] = builder = FakeBuilder(root, ["https://tfds-host.invalid/fake.zip"])
    started = time.monotonic()
    with pytest.raises(UserError, match=r"^no network: cannot reach tfds-host.invalid:443 \(.*\), "
                                        r"and tfds:fake downloads from it") as raised:
        prepare.prepare("tfds:fake", root)
    assert time.monotonic() - started < 10, "tfds's own retries take minutes"
    assert "\n" not in str(raised.value) and not builder.started
    assert not root.exists()


@pytest.mark.parametrize("error, raised", [(ConnectionError("connection reset\n  more"), UserError),
                                           (KeyboardInterrupt(), KeyboardInterrupt)])
def test_a_failed_prepare_removes_what_it_wrote_and_keeps_the_rest(tmp_path, fake_tfds,
                                                                    monkeypatch, error, raised):
    root = tmp_path / "tfds"
    (root / "downloads" / "extracted" / "other.zip").mkdir(parents=True)
    (root / "downloads" / "other.zip").write_bytes(b"kept")
    (root / "fake" / "0.9.0").mkdir(parents=True)  # an older version prepared before
    before = _tree(root)
    monkeypatch.setattr(prepare, "_connection_problem", lambda host, port: "")
    fake_tfds["fake"] = FakeBuilder(root, ["https://example.org/fake.zip"], error)
    with pytest.raises(raised) as caught:
        prepare.prepare("tfds:fake", root)
    if raised is UserError:
        assert str(caught.value) == (f"preparing tfds:fake failed (ConnectionError: connection "
                                     f"reset); nothing of it was kept in {root}")
    assert _tree(root) == before


def test_a_failed_prepare_removes_the_data_dir_it_created(tmp_path, fake_tfds, monkeypatch):
    monkeypatch.setattr(prepare, "_connection_problem", lambda host, port: "")
    fake_tfds["fake"] = FakeBuilder(tmp_path / "new" / "tfds", ["https://example.org/fake.zip"],
                                    ConnectionError("connection reset"))
    with pytest.raises(UserError, match="nothing of it was kept"):
        prepare.prepare("tfds:fake", tmp_path / "new" / "tfds")
    assert list(tmp_path.iterdir()) == []


def test_prepare_returns_the_prepared_folder(tmp_path, fake_tfds, monkeypatch):
    monkeypatch.setattr(prepare, "_connection_problem", lambda host, port: "")
    fake_tfds["fake"] = FakeBuilder(tmp_path, ["https://example.org/fake.zip"])
    folder = prepare.prepare("tfds:fake", tmp_path)
    assert folder == tmp_path / "fake" / "1.0.0" and folder.is_dir()


def test_prepare_names_a_module_tfds_lacks(fake_tfds):
    # tensorflow-datasets 4.9.10 imports importlib_resources late without declaring it.
    fake_tfds["mnist"] = ModuleNotFoundError("no module", name="importlib_resources")
    with pytest.raises(UserError, match="needs the module 'importlib_resources'; pip install"):
        prepare.prepare("tfds:mnist", None)


def test_prepare_names_what_is_missing():
    with pytest.raises(ConfigError, match="only tfds data sets are prepared; got 'digits'"):
        prepare.prepare("digits", None)
    if importlib.util.find_spec("tensorflow") is None:
        with pytest.raises(UserError, match=r"needs TensorFlow .*pip install -e '.\[prepare\]'"):
            prepare.prepare("tfds:mnist", None)


# -- every source trains end to end through the CLI ---------------------------------------------

SHORT_TOML = """
steps = 6
batch_size = 8
[loss]
lambda_wasserstein = 0.5
[model]
architecture = "{architecture}"
encoder_hidden = [16]
conv_channels = [4, 8]
latent_dim = 4
num_codes = 8
[run]
log_every = 3
eval_every = 6
checkpoint_every = 6
"""


@pytest.mark.parametrize("dataset, architecture, image_shape", [  # (tfds:mnist takes the
    ("tfds:cifar10", "conv", [32, 32, 3]),                        # path cifar10 takes)
    ("npz", "conv", [6, 10, 1]),
    ("vectors", "mlp", [1, 12, 1]),
])
def test_each_source_trains_through_the_cli(tmp_path, dataset, architecture, image_shape):
    import tomllib

    import tensorflow_datasets as tfds
    from typer.testing import CliRunner

    from rqvae.cli import app
    from rqvae.trainer import runlog

    config = tmp_path / "short.toml"
    config.write_text(SHORT_TOML.format(architecture=architecture))
    if dataset == "npz":
        images = np.random.default_rng(0).integers(0, 256, (30, 6, 10), dtype=np.uint8)
        np.savez(tmp_path / "mine.npz", train=images)
        dataset = f"npz:{tmp_path / 'mine.npz'}"
    if dataset == "vectors":
        np.savez(tmp_path / "vectors.npz", train=np.random.default_rng(0).normal(0, 2, (30, 12)))
        dataset = f"npz:{tmp_path / 'vectors.npz'}"
    args = ["train", "-c", str(config), "--dataset", dataset, "--run-dir", str(tmp_path / "run")]
    with tfds.testing.mock_data(num_examples=24):
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = tomllib.loads((tmp_path / "run" / "config.toml").read_text())
    assert saved["model"]["image_shape"] == image_shape and saved["data"]["dataset"] == dataset
    records = runlog.read(tmp_path / "run")
    assert [r["step"] for r in records if r["kind"] == "train"] == [3, 6]
    assert records[-1]["kind"] == "end" and records[-2]["kind"] == "eval"
    assert np.isfinite(records[-2]["heldout_recon"])
    assert saved["model"]["data_kind"] == ("vectors" if image_shape[0] == 1 else "images")
