"""A trained run from Python and the shell: `rqvae.load_run`, `encode --dataset`, `decode` and
semantic IDs, on digits (a trained run), a grid model and vectors."""

import dataclasses

import jax
import numpy as np
import pytest
from typer.testing import CliRunner

import rqvae
from rqvae.cli import app
from rqvae.trainer import config, data
from rqvae.trainer.config import ModelConfig, TrainerConfig
from rqvae.trainer.errors import UserError
from rqvae.trainer.model import RQVAE
from rqvae.trainer.trained import TrainedRun, semantic_ids

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """30 steps of the tiny config on the digits, and the digits' held-out split."""
    from tests.conftest import TINY_TOML

    root = tmp_path_factory.mktemp("trained")
    (root / "tiny.toml").write_text(TINY_TOML)
    result = runner.invoke(app, ["train", "-c", str(root / "tiny.toml"), "--run-dir",
                                 str(root / "run"), "-q"])
    assert result.exit_code == 0, result.output
    return root, rqvae.load_run(root / "run"), data.load(config.DataConfig())


def _untrained(model: ModelConfig) -> TrainedRun:
    cfg = dataclasses.replace(TrainerConfig(), model=model)
    params = RQVAE(model).init(jax.random.key(0), np.zeros((1, model.input_dim), np.float32))
    return TrainedRun(cfg, params, 0, "untrained")


def test_load_run_encodes_and_decodes_as_the_model_reconstructs(trained):
    _, run, digits = trained
    assert run.step == 30 and run.code_shape == (2,)
    images = digits.heldout[:50].reshape(-1, 8, 8)  # (N, H, W) floats, as a user holds them
    codes = run.encode(images)
    assert codes.shape == (50, 2) and codes.dtype == np.int32
    assert codes.max() < run.config.model.num_codes
    recons = run.decode(codes)
    model_recon, _ = RQVAE(run.config.model).apply(run.params, digits.heldout[:50])
    assert recons.shape == (50, 8, 8, 1) and 0 <= recons.min() and recons.max() <= 1
    np.testing.assert_allclose(recons.reshape(50, -1), model_recon, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(run.encode((images * 255).round().astype(np.uint8)[:5]),
                                  run.encode(np.round(images[:5] * 255) / 255))
    with pytest.raises(UserError, match=r"are images of shape \(16, 16\); .* takes images shaped "
                                        r"\(N, 8, 8, 1\)"):
        run.encode(np.zeros((3, 16, 16), np.uint8))
    with pytest.raises(UserError, match="indices in \\[0, 99\\]; this run's codebooks have 8"):
        run.decode(np.array([[0, 99]]))
    with pytest.raises(UserError, match=r"have shape \(4, 3\); this run's are \(N, 2\)"):
        run.decode(np.zeros((4, 3), np.int32))


def test_encode_any_npz_and_decode_codes_from_the_shell(trained):
    root, run, digits = trained
    images = (digits.heldout.reshape(-1, 8, 8) * 255).round().astype(np.uint8)
    np.savez(root / "mine.npz", train=images[::-1], heldout=images[:7])
    out = root / "codes.npy"
    result = runner.invoke(app, ["encode", str(root / "run"), "--dataset",
                                 f"npz:{root / 'mine.npz'}", "--out", str(out)])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.load(out), run.encode(images[::-1]))  # in the file's order
    decoded = runner.invoke(app, ["decode", str(root / "run"), str(out), "--out",
                                  str(root / "recon.npy")])
    assert decoded.exit_code == 0, decoded.output
    np.testing.assert_allclose(np.load(root / "recon.npy"), run.decode(np.load(out)))
    np.save(root / "bad.npy", np.full((3, 2), 8))
    refused = runner.invoke(app, ["decode", str(root / "run"), str(root / "bad.npy"), "--out",
                                  str(root / "r2.npy")])
    assert refused.exit_code == 2 and "this run's codebooks have 8 codes" in refused.output
    assert not (root / "r2.npy").exists()
    missing = runner.invoke(app, ["encode", str(root / "run"), "--dataset",
                                  f"npz:{root / 'mine.npz'}", "--split", "heldout", "--out",
                                  str(root / "h.npy")])
    assert missing.exit_code == 0 and np.load(root / "h.npy").shape == (7, 2)


def test_semantic_ids_are_unique_and_encode_reports_the_collisions(trained):
    root, run, _ = trained
    codes = np.array([[3, 1], [0, 2], [3, 1], [3, 1], [0, 2], [5, 5]])
    ids, collisions = semantic_ids(codes)
    np.testing.assert_array_equal(ids[:, :2], codes)
    assert ids[:, 2].tolist() == [0, 0, 1, 2, 1, 0]  # each tuple's examples in their order
    assert len(np.unique(ids, axis=0)) == len(ids)
    assert collisions == {"examples": 6, "tuples_unique": 3, "tuples_shared": 5,
                          "tuples_largest_group": 3}
    result = runner.invoke(app, ["encode", str(root / "run"), "--ids", "--out",
                                 str(root / "ids.npy")])
    assert result.exit_code == 0, result.output
    written = np.load(root / "ids.npy")
    expected, counted = semantic_ids(run.encode(run.split(None, "train")))
    np.testing.assert_array_equal(written, expected)
    assert (f"collisions: {counted['tuples_shared']} of {len(written)} examples share their "
            f"code tuple") in " ".join(result.output.split())
    # The run's own eval logged the same collisions over the training split.
    report = runner.invoke(app, ["report", str(root / "run")])
    assert f"{counted['tuples_shared']} training examples share theirs" in " ".join(
        report.output.split())


def test_a_grid_runs_codes_are_maps_and_vectors_decode_to_vectors():
    grid = _untrained(ModelConfig(image_shape=(16, 16, 3), architecture="conv", latent="grid",
                                  conv_channels=(4, 8), latent_dim=5, num_codes=8))
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), np.uint8)
    codes = grid.encode(images)
    assert codes.shape == (3, 4, 4, 2) == (3, *grid.code_shape)
    assert grid.decode(codes).shape == (3, 16, 16, 3)
    vectors = _untrained(ModelConfig(image_shape=(1, 12, 1), data_kind="vectors",
                                     encoder_hidden=(16,), latent_dim=4, num_codes=8))
    x = np.random.default_rng(1).normal(size=(5, 12)).astype(np.float32)
    recons = vectors.decode(vectors.encode(x))
    assert recons.shape == (5, 12) and recons.min() < 0  # any reals: no sigmoid
