"""`rqvae plot`'s pictures from a synthetic run directory and arrays: no training, no JAX."""

import json
import os

import numpy as np
import pytest
from matplotlib.colors import to_rgba

from rqvae.reports import plot
from rqvae.trainer import config
from rqvae.trainer.errors import UserError

STEPS = range(50, 1001, 50)
EVAL_STEPS = (500, 1000)


def _write_run(run_dir, lambda_wasserstein=0.0):
    """A run directory as `rqvae train` leaves it, minus checkpoints."""
    run_dir.mkdir(parents=True)
    cfg = config.replace(config.TrainerConfig(), {"loss.lambda_wasserstein": lambda_wasserstein})
    (run_dir / "config.toml").write_text(config.dumps(cfg))
    records = []
    for step in STEPS:
        loss = 1.0 / step
        records.append({"kind": "train", "step": step, "time": step / 10, "total": 3 * loss,
                        "recon": loss, "commit": loss, "codebook": loss,
                        "wasserstein": 2 * loss if lambda_wasserstein else 0.0,
                        "batch_used": [60, 50], "batch_perplexity": [40.0, 30.0],
                        "window_dead": [2, 5], "sinkhorn_marginal_error": [0.0, 0.0]})
        if step in EVAL_STEPS:
            records.append({"kind": "eval", "step": step, "time": step / 10,
                            "heldout_recon": 1.5 * loss, "heldout_psnr": 20.0,
                            "train_used": [62, 55], "train_dead": [2, 9],
                            "train_perplexity": [50.0, 40.0], "heldout_used": [60, 50],
                            "heldout_perplexity": [45.0, 35.0]})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


@pytest.fixture
def run_dir(tmp_path):
    return _write_run(tmp_path / "hybrid-20261123-101500", lambda_wasserstein=0.5)


def _figure_title(fig):
    return " ".join(text.get_text() for text in fig.texts)  # the suptitle is a figure text


def _visible_axes(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def test_loss_panels_are_labelled_and_titled_with_the_run(run_dir):
    fig = plot.losses_figure([run_dir])
    axes = _visible_axes(fig)
    assert [ax.get_title() for ax in axes] == list(plot.runlog.LOSS_TERMS)
    for ax in axes:
        assert ax.get_xlabel() == "step"
        assert ax.get_ylabel() == plot.LOSS_LABELS[ax.get_title()]
    assert "hybrid-20261123-101500" in _figure_title(fig)


def test_the_wasserstein_panel_follows_the_config(tmp_path):
    fig = plot.losses_figure([_write_run(tmp_path / "traditional", lambda_wasserstein=0.0)])
    assert "wasserstein" not in [ax.get_title() for ax in _visible_axes(fig)]


def test_heldout_recon_is_drawn_on_the_recon_panel(run_dir):
    fig = plot.losses_figure([run_dir])
    recon = next(ax for ax in fig.axes if ax.get_title() == "recon")
    heldout = [line for line in recon.get_lines() if line.get_linestyle() == "--"]
    assert len(heldout) == 1
    assert list(heldout[0].get_xdata()) == list(EVAL_STEPS)
    assert list(heldout[0].get_ydata()) == pytest.approx([1.5 / s for s in EVAL_STEPS])


def test_the_legend_is_one_for_the_figure_and_outside_every_panel(run_dir, tmp_path):
    other = _write_run(tmp_path / "traditional-20261123-101500")
    fig = plot.losses_figure([run_dir, other])
    assert all(ax.get_legend() is None for ax in fig.axes)
    (legend,) = fig.legends
    labels = [text.get_text() for text in legend.get_texts()]
    assert labels[:2] == [run_dir.name, other.name]
    assert "held-out split (eval records)" in labels
    fig.canvas.draw()  # lay out, then compare where things landed
    legend_box = legend.get_window_extent()
    for ax in _visible_axes(fig):
        assert not legend_box.overlaps(ax.get_window_extent()), ax.get_title()


def test_loss_curves_writes_the_png_and_leaves_no_temporary_file(run_dir, tmp_path):
    out = tmp_path / "plots"
    out.mkdir()
    path = plot.loss_curves([run_dir], out, log_scale=True)
    assert path == out / plot.LOSSES_PNG
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(out) == [plot.LOSSES_PNG]


def test_a_failed_plot_leaves_no_partial_png_and_the_old_one_whole(run_dir, tmp_path,
                                                                     monkeypatch):
    out = tmp_path / "plots"
    out.mkdir()
    (out / plot.LOSSES_PNG).write_bytes(b"old plot")

    def fail(self, file, **kwargs):
        file.write(b"\x89PNG half")
        raise RuntimeError("disk full")

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", fail)
    with pytest.raises(RuntimeError):
        plot.loss_curves([run_dir], out, log_scale=False)
    assert os.listdir(out) == [plot.LOSSES_PNG]
    assert (out / plot.LOSSES_PNG).read_bytes() == b"old plot"


def _codes(rng, num_codes, used_per_level):
    return np.stack([rng.integers(0, used, 3000) for used in used_per_level], axis=1)


def test_dead_codes_are_marked_and_counted():
    codes = _codes(np.random.default_rng(0), 64, (58, 64))  # level 1: 6 dead, level 2: none
    fig = plot.code_use_figure(codes, 64, run_name="hybrid")
    with_dead, without = fig.axes[:2]
    assert with_dead.get_title() == "level 1: 6 of 64 codes dead"
    assert without.get_title() == "level 2: 0 of 64 codes dead"
    (ticks,) = with_dead.collections
    assert sorted(ticks.get_offsets()[:, 0]) == list(range(58, 64))
    assert to_rgba(ticks.get_edgecolor()[0]) == to_rgba(plot.DEAD_COLOR)
    bands = [p for p in with_dead.patches if p.get_facecolor()[:3] == to_rgba(plot.DEAD_COLOR)[:3]]
    assert len(bands) == 1 and bands[0].get_window_extent().width > 10  # pixels
    assert len(without.collections) == 0 and not any(
        p.get_facecolor()[:3] == to_rgba(plot.DEAD_COLOR)[:3] for p in without.patches)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "dead codes (picked by no training image)"]
    assert with_dead.get_xlabel() and with_dead.get_ylabel()
    assert "hybrid" in _figure_title(fig)


def test_codebook_axes_name_the_projection():
    rng = np.random.default_rng(0)
    codes = _codes(rng, 16, (12, 16))
    fig = plot.codebooks_figure(rng.normal(size=(2, 16, 5)), rng.normal(size=(2, 3000, 5)), codes)
    assert [ax.get_xlabel() for ax in fig.axes] == ["PC 1 of level 1 inputs",
                                                    "PC 1 of level 2 inputs"]
    assert fig.axes[1].get_ylabel() == "PC 2 of level 2 inputs"
    assert fig.axes[0].get_title() == "level 1: 4 of 16 codes dead"
    fig = plot.codebooks_figure(rng.normal(size=(1, 16, 2)), rng.normal(size=(1, 300, 2)),
                                codes[:300, :1])
    assert fig.axes[0].get_xlabel() == "latent dim 1"


def test_the_codebooks_count_dead_codes_over_the_whole_split_as_the_report_does():
    # Code 15 is picked by one point outside the sample drawn: alive, as report counts it.
    rng = np.random.default_rng(0)
    codes = np.concatenate([_codes(rng, 16, (15, 15)), np.full((1, 2), 15)])
    fig = plot.codebooks_figure(rng.normal(size=(2, 16, 5)), rng.normal(size=(2, 300, 5)), codes,
                                points="training-image positions")
    assert [ax.get_title() for ax in fig.axes[:2]] == ["level 1: 0 of 16 codes dead",
                                                       "level 2: 0 of 16 codes dead"]
    assert "level inputs (training-image positions, a sample)" in [
        t.get_text() for t in fig.legends[0].get_texts()]
    fig = plot.code_use_figure(codes, 16, points="training-image positions")
    assert fig.axes[0].get_ylabel() == "training-image positions picking the code"


def test_vector_runs_name_their_error_per_value_and_seeds_of_a_setting_share_a_colour(tmp_path):
    runs = [_write_run(tmp_path / f"s{seed}", lambda_wasserstein=0.5) for seed in (0, 1)]
    runs.append(_write_run(tmp_path / "plain"))
    for run_dir, seed in zip(runs, (0, 1, 0)):  # vectors; seeds 0 and 1 of one setting
        cfg = config.load(run_dir / "config.toml")
        cfg = config.replace(cfg, {"seed": seed, "model.data_kind": "vectors",
                                   "model.image_shape": [1, 64, 1]})
        (run_dir / "config.toml").write_text(config.dumps(cfg))
    fig = plot.losses_figure(runs)
    recon = next(ax for ax in fig.axes if ax.get_title() == "recon")
    assert recon.get_ylabel() == "MSE per vector value"
    colours = [line.get_color() for line in recon.get_lines() if line.get_linestyle() == "-"]
    assert colours[0] == colours[1] != colours[2]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert len([label for label in legend if "lw" in label]) == 2  # one entry a setting
    dead = plot.dead_codes_figure(runs)
    lines = [line for line in dead.axes[0].get_lines() if line.get_linestyle() == "-"]
    assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color()


def test_checkpoint_pictures_write_their_pngs(tmp_path):
    rng = np.random.default_rng(0)
    codes = _codes(rng, 16, (12, 16))
    images = rng.random((10, 64))
    written = [
        plot.code_use(codes, 16, tmp_path),
        plot.reconstructions(images, images * 0.9, (8, 8, 1), tmp_path),
        plot.codebooks(rng.normal(size=(2, 16, 5)), rng.normal(size=(2, 3000, 5)), codes, tmp_path),
    ]
    assert [p.name for p in written] == [plot.CODE_USE_PNG, plot.RECONSTRUCTIONS_PNG,
                                         plot.CODEBOOKS_PNG]
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in written)


# -- check_out --------------------------------------------------------------------------------


def test_check_out_accepts_a_new_or_empty_folder(tmp_path):
    plot.check_out(tmp_path / "new" / "plots", force=False)
    plot.check_out(tmp_path, force=False)
    assert os.listdir(tmp_path) == []  # creates nothing


def test_check_out_rejects_a_file(tmp_path):
    (tmp_path / "plots").write_text("")
    with pytest.raises(UserError, match="is a file.*choose another --out"):
        plot.check_out(tmp_path / "plots", force=True)


def test_check_out_rejects_a_parent_that_is_a_file(tmp_path):
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(UserError, match="notes.txt is a file; choose another --out"):
        plot.check_out(tmp_path / "notes.txt" / "plots", force=False)


def test_check_out_rejects_a_parent_that_is_not_writable(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    # Root may write anywhere, so the permission check is made to answer as for a normal user.
    monkeypatch.setattr(plot.os, "access",
                        lambda path, mode: False if path == locked else real_access(path, mode))
    with pytest.raises(UserError, match="locked is not writable; choose another --out"):
        plot.check_out(locked / "plots", force=False)


def test_check_out_refuses_to_overwrite_pngs_unless_forced(tmp_path):
    (tmp_path / plot.CODE_USE_PNG).write_bytes(b"")
    with pytest.raises(UserError, match="already holds code_use.png; pass --force"):
        plot.check_out(tmp_path, force=False)
    plot.check_out(tmp_path, force=True)
    # Several runs write only losses.png, so another run's code_use.png is not in the way.
    plot.check_out(tmp_path, force=False, names=plot.png_names(2))


def test_dead_codes_of_several_runs_side_by_side_per_level(tmp_path):
    runs = [_write_run(tmp_path / "a"), _write_run(tmp_path / "b", lambda_wasserstein=0.5)]
    fig = plot.dead_codes_figure(runs)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["level 1", "level 2"]
    for level, ax in enumerate(axes):
        lines = ax.get_lines()
        assert len(lines) == 4  # per run: the window's counts and the full passes'
        train = [r for r in plot.runlog.read(runs[0]) if r["kind"] == "train"]
        assert list(lines[0].get_ydata()) == [r["window_dead"][level] for r in train]
        evals = [r for r in plot.runlog.read(runs[0]) if r["kind"] == "eval"]
        assert list(lines[1].get_ydata()) == [r["train_dead"][level] for r in evals]


def test_a_grid_run_shows_each_image_beside_its_level_1_code_map():
    rng = np.random.default_rng(0)
    images, recons = rng.uniform(size=(4, 64)), rng.uniform(size=(4, 64))
    maps = rng.integers(0, 16, size=(4, 4, 4))
    fig = plot.reconstructions_figure(images, recons, (8, 8, 1), count=4, code_maps_NxHxW=maps,
                                      num_codes=16)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 13 and [axes[i].get_ylabel() for i in (0, 4, 8)] == [
        "held out", "level-1 codes", "recon"]
    np.testing.assert_array_equal(axes[5].get_images()[0].get_array(), maps[1])
    # The maps' legend: one colour scale over every code, so a colour is one code in every map.
    assert axes[12].get_ylabel() == "code index"
    assert {axes[i].get_images()[0].get_clim() for i in range(4, 8)} == {(0, 15)}


def test_three_levels_show_the_reconstruction_of_each_partial_sum():
    rng = np.random.default_rng(0)
    images, levels = rng.uniform(size=(4, 64)), rng.uniform(size=(3, 4, 64))
    fig = plot.reconstructions_figure(images, levels[-1], (8, 8, 1), count=4,
                                      level_recons_LxNxP=levels)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [axes[i].get_ylabel() for i in (0, 4, 8, 12)] == ["held out", "level 1",
                                                              "levels 1-2", "recon"]
    np.testing.assert_allclose(axes[6].get_images()[0].get_array(),
                               levels[0][2].reshape(8, 8))
    np.testing.assert_allclose(axes[13].get_images()[0].get_array(),
                               levels[2][1].reshape(8, 8))


def test_plot_takes_a_sweeps_folder_or_its_glob(tmp_path):
    from typer.testing import CliRunner

    from rqvae.cli import app

    sweep = tmp_path / "sw"
    for name in ("lw0-seed0", "lw0.5-seed0"):
        _write_run(sweep / name)
    (sweep / "logs").mkdir()
    (sweep / "sweep.json").write_text("{}")
    for i, paths in enumerate([[sweep], sorted(sweep.iterdir())]):  # runs/sw, runs/sw/*
        out = tmp_path / f"plots{i}"
        result = CliRunner().invoke(app, ["plot", *map(str, paths), "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert sorted(p.name for p in out.iterdir()) == ["dead_codes.png", "losses.png"]
