"""`rqvae plot`: PNGs of a run's loss curves, code use, reconstructions and codebooks.

Needs the optional `plot` extra (matplotlib); no JAX. Curves come from metrics.jsonl (and
config.toml) alone; the pictures of codes and reconstructions take arrays the CLI computes from
the run's newest checkpoint (`checkpoint_pictures`). Each `*_figure` function builds a matplotlib Figure; the function of the same
name without the suffix writes it as a PNG into the --out folder.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rqvae.trainer import config as config_lib
from rqvae.trainer import runlog
from rqvae.trainer.errors import UserError
from rqvae.trainer.rundir import CONFIG_FILE, check_writable, write_atomically

LOSSES_PNG = "losses.png"
CODE_USE_PNG = "code_use.png"
RECONSTRUCTIONS_PNG = "reconstructions.png"
CODEBOOKS_PNG = "codebooks.png"
DEAD_CODES_PNG = "dead_codes.png"
PNG_NAMES = (LOSSES_PNG, CODE_USE_PNG, RECONSTRUCTIONS_PNG, CODEBOOKS_PNG)

# What each loss term measures, as its panel's y label (losses.py defines the terms). Short, so
# a label fits beside its panel.
LOSS_LABELS = {
    "total": "weighted sum of the terms",
    "recon": "MSE per pixel (pixels in [0, 1])",  # vectors: RECON_LABEL_VECTORS
    # Their form depends on codebook_loss (per level or on the sum of the codes): per element.
    "commit": "commitment loss, mean per latent element",
    "codebook": "codebook loss, mean per latent element",
    "wasserstein": "Sinkhorn OT cost, weighted sum of levels",
}
RECON_LABEL_VECTORS = "MSE per vector value"
HELDOUT_STYLE = {"linestyle": "--", "marker": "o", "markersize": 3}
DPI = 110
DEAD_COLOR = "tab:red"


def png_names(run_count: int) -> tuple[str, ...]:
    """The PNGs `rqvae plot` writes: all four for one run; for several, the loss curves and the
    dead codes of each level over time, side by side."""
    return PNG_NAMES if run_count == 1 else (LOSSES_PNG, DEAD_CODES_PNG)


def check_out(out: Path, force: bool, names: Sequence[str] = PNG_NAMES) -> None:
    """Raises UserError unless `out` can take the PNGs `names`: a folder that exists or can be
    created and written, holding none of them unless `force`. Creates and writes nothing, so it
    runs before any work."""
    out = Path(out)
    check_writable(out, "--out")
    taken = [name for name in names if os.path.exists(out / name)]
    if taken and not force:
        raise UserError(f"--out {out} already holds {', '.join(taken)}; pass --force to overwrite "
                        f"or choose another --out")


def _new_figure(**kwargs):
    """A Figure not registered with pyplot: nothing global to close, no display needed."""
    try:
        import matplotlib  # first: a missing package fails here, before any submodule loads
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("plots need matplotlib: pip install 'rqvae[plot]'") from None
    return Figure(layout="constrained", **kwargs)


def _save(fig, path: Path) -> Path:
    """Writes the PNG atomically: a failed plot leaves no partial PNG, and an old PNG of that
    name stays whole until the new one is complete."""
    write_atomically(path, lambda file: fig.savefig(file, format="png", dpi=DPI))
    return path


def _title(fig, what: str, run_names: Sequence[str]) -> None:
    names = ", ".join(run_names)
    fig.suptitle(textwrap.fill(f"{what}: {names}" if names else what, width=110))


# -- loss curves ------------------------------------------------------------------------------


def _wasserstein_on(run_dirs: Sequence[Path], train_records: list[list[dict]]) -> bool:
    """Whether any run trains with the Wasserstein term: its config says so now, or its log holds
    a nonzero value (a run resumed with the term turned off, or one without a config)."""
    for run_dir, records in zip(run_dirs, train_records):
        config_path = Path(run_dir) / CONFIG_FILE
        if config_path.is_file() and config_lib.load_saved(config_path).loss.lambda_wasserstein > 0:
            return True
        if any(r.get("wasserstein") for r in records):
            return True
    return False


def losses_figure(run_dirs: Sequence[Path], log_scale: bool = False):
    """One panel per loss term, runs overlaid by colour; the held-out recon of eval records
    (dashed, with markers) overlaid on the train recon, which measures the same MSE per pixel."""
    names = [Path(d).resolve().name for d in run_dirs]  # also for "." or a trailing slash
    records = [runlog.read(d) for d in run_dirs]
    train = [[r for r in rs if r["kind"] == "train"] for rs in records]
    evals = [[r for r in rs if r["kind"] == "eval" and "heldout_recon" in r] for rs in records]
    terms = [t for t in runlog.LOSS_TERMS if t != "wasserstein" or _wasserstein_on(run_dirs, train)]
    columns = 2 if len(terms) == 4 else min(3, len(terms))  # 4 terms: 2 x 2, 5: 2 x 3
    rows = math.ceil(len(terms) / columns)
    fig = _new_figure(figsize=(4.6 * columns, 3.4 * rows + 0.6))
    axes = list(fig.subplots(rows, columns, squeeze=False).flat)
    labels = _setting_labels(run_dirs, names)
    palette = {label: f"C{k % 10}" for k, label in enumerate(dict.fromkeys(labels))}
    colors = [palette[label] for label in labels]
    vectors = _data_kinds(run_dirs) == {"vectors"}
    for ax, term in zip(axes, terms):
        for color, run_train in zip(colors, train):
            ax.plot([r["step"] for r in run_train], [r[term] for r in run_train], color=color)
        if term == "recon":
            for color, run_evals in zip(colors, evals):
                ax.plot([r["step"] for r in run_evals], [r["heldout_recon"] for r in run_evals],
                        color=color, **HELDOUT_STYLE)
        label = RECON_LABEL_VECTORS if term == "recon" and vectors else LOSS_LABELS.get(term, term)
        ax.set(xlabel="step", ylabel=label, title=term)
        if log_scale:
            ax.set_yscale("log")
    for ax in axes[len(terms):]:  # the grid's spare panels
        ax.set_visible(False)
    shown = list(palette) if len(names) > 1 else []
    _losses_legend(fig, shown, list(palette.values()), any(evals))
    _title(fig, "loss curves", names)
    return fig


def _setting_labels(run_dirs: Sequence[Path], names: list[str]) -> list[str]:
    """Each run's label for its colour: the settings its group shares (runs that differ only in
    their seed share a colour, as `report` groups them), or its name where no two runs share."""
    from rqvae.reports.groups import group_runs
    from rqvae.reports.runs import load_run

    try:
        runs = [load_run(d) for d in run_dirs]
    except UserError:  # a run without train records: colours by run
        return names
    label_of = {run.path: label for label, members in group_runs(runs).items()
                for run in members}
    if len(set(label_of.values())) == len(runs):
        return names
    return [label_of.get(run.path, name) for run, name in zip(runs, names)]


def _data_kinds(run_dirs: Sequence[Path]) -> set[str]:
    """The runs' data kinds ("images", "vectors") as their configs say."""
    kinds = set()
    for run_dir in run_dirs:
        config_path = Path(run_dir) / CONFIG_FILE
        if config_path.is_file():
            kinds.add(config_lib.load_saved(config_path).model.data_kind)
    return kinds


def _losses_legend(fig, names, colors, heldout: bool) -> None:
    """Under the panels, where it covers no data: colour names the run (of several), line style
    the split the curve measures."""
    from matplotlib.lines import Line2D

    entries = {name: Line2D([], [], color=color) for name, color in zip(names, colors)}
    split_color = "0.2" if names else colors[0]
    entries["train batches"] = Line2D([], [], color=split_color)
    if heldout:
        entries["held-out split (eval records)"] = Line2D([], [], color=split_color,
                                                          **HELDOUT_STYLE)
    fig.legend(entries.values(), entries.keys(), loc="outside lower center",
               ncols=min(len(entries), 4), fontsize="small")


def _shared_legend(fig) -> None:
    """One legend under the panels, where it covers no data; each label once."""
    labelled = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            labelled.setdefault(label, handle)
    if labelled:
        fig.legend(labelled.values(), labelled.keys(), loc="outside lower center",
                   ncols=min(len(labelled), 4), fontsize="small")


def loss_curves(run_dirs: Sequence[Path], out: Path, log_scale: bool = False) -> Path:
    return _save(losses_figure(run_dirs, log_scale), Path(out) / LOSSES_PNG)


def dead_codes_figure(run_dirs: Sequence[Path]):
    """One panel per level: codes dead over the last run.dead_window steps (train records) and
    codes no training image picks (eval records, markers), against step; a colour per setting
    (the seeds of one setting share it, as `report` groups them), else per run."""
    names = [Path(d).resolve().name for d in run_dirs]
    records = [runlog.read(d) for d in run_dirs]
    levels = max((len(r.get("window_dead") or []) for rs in records for r in rs), default=0)
    fig = _new_figure(figsize=(4.6 * max(levels, 1), 3.6))
    axes = fig.subplots(1, max(levels, 1), squeeze=False)[0]
    labels = _setting_labels(run_dirs, names)
    palette = {label: f"C{k % 10}" for k, label in enumerate(dict.fromkeys(labels))}
    for name, run_records in zip(labels, records):
        color = palette[name]
        for level, ax in enumerate(axes[:levels]):
            train = [r for r in run_records if r["kind"] == "train"
                     and len(r.get("window_dead") or []) > level]
            evals = [r for r in run_records if r["kind"] == "eval"
                     and len(r.get("train_dead") or []) > level]
            ax.plot([r["step"] for r in train], [r["window_dead"][level] for r in train],
                    color=color, label=name)
            ax.plot([r["step"] for r in evals], [r["train_dead"][level] for r in evals],
                    color=color, **HELDOUT_STYLE, label=f"{name}, full pass")
    for level, ax in enumerate(axes[:levels]):
        ax.set(xlabel="step", ylabel="dead codes", title=f"level {level + 1}")
    _shared_legend(fig)
    _title(fig, "dead codes (lines: last window; markers: full pass at evals)", names)
    return fig


def dead_codes(run_dirs: Sequence[Path], out: Path) -> Path:
    return _save(dead_codes_figure(run_dirs), Path(out) / DEAD_CODES_PNG)


# -- pictures from a checkpoint ---------------------------------------------------------------


def code_use_figure(codes_NxL: np.ndarray, num_codes: int, run_name: str = "",
                    points: str = "training images"):
    """Per level, how many of the `points` (training images, or their grid positions) pick each
    code, codes sorted by use.

    Dead codes have zero height, so a bar cannot show them: sorted last, they get a red band over
    their range and a red tick each on the axis (a tick stays visible where one code among
    thousands is narrower than a pixel); the panel title counts them.
    """
    levels = codes_NxL.shape[1]
    fig = _new_figure(figsize=(5 * levels, 3.8))
    for level, ax in enumerate(fig.subplots(1, levels, squeeze=False)[0]):
        counts = np.sort(np.bincount(codes_NxL[:, level], minlength=num_codes))[::-1]
        dead = int((counts == 0).sum())
        ax.bar(np.arange(num_codes), counts, width=1.0, color="tab:blue")
        if dead:
            _mark_dead(ax, np.arange(num_codes - dead, num_codes))
        ax.set(title=f"level {level + 1}: {dead} of {num_codes} codes dead",
               xlabel="codes, sorted by use", ylabel=f"{points} picking the code",
               xlim=(-0.5, num_codes - 0.5))
    _shared_legend(fig)
    _title(fig, "code use", [run_name] if run_name else [])
    return fig


def _mark_dead(ax, dead_codes: np.ndarray) -> None:
    ax.axvspan(dead_codes[0] - 0.5, dead_codes[-1] + 0.5, color=DEAD_COLOR, alpha=0.2, lw=0)
    # x in data, y in axes units: the ticks sit on the bottom spine whatever the counts.
    ax.scatter(dead_codes, np.zeros(len(dead_codes)), marker="|", s=80, color=DEAD_COLOR,
               transform=ax.get_xaxis_transform(), clip_on=False,
               label="dead codes (picked by no training image)")


def code_use(codes_NxL: np.ndarray, num_codes: int, out: Path, run_name: str = "",
             points: str = "training images") -> Path:
    return _save(code_use_figure(codes_NxL, num_codes, run_name, points),
                 Path(out) / CODE_USE_PNG)


CODE_MAP_ROW = "level-1 codes"


def reconstructions_figure(originals_NxP, recons_NxP, image_shape, count: int = 10,
                           run_name: str = "", code_maps_NxHxW=None, level_recons_LxNxP=None,
                           num_codes: int | None = None):
    """Held-out images (top row) above their reconstructions (bottom row); for a grid latent,
    their level-1 code maps between (a colour per code); with `level_recons_LxNxP` (the
    reconstruction from the first l levels' codes, l = 1 .. L), a row for each level before the
    last, labelled by the levels it sums ("level 1", "levels 1-2", ...)."""
    count = min(count, len(originals_NxP))
    rows = [("held out", originals_NxP)]
    if code_maps_NxHxW is not None:
        rows.append((CODE_MAP_ROW, code_maps_NxHxW))
    if level_recons_LxNxP is not None:
        rows += [("level 1" if level == 0 else f"levels 1-{level + 1}", recons)
                 for level, recons in enumerate(level_recons_LxNxP[:-1])]
    rows.append(("recon", recons_NxP))
    fig = _new_figure(figsize=(1.2 * count, 1.5 * len(rows)))
    axes = fig.subplots(len(rows), count, squeeze=False)
    top_code = (num_codes - 1 if num_codes else
                int(np.max(code_maps_NxHxW)) if code_maps_NxHxW is not None else 0)
    for column in range(count):
        for row, (label, images) in enumerate(rows):
            ax = axes[row][column]
            if label == CODE_MAP_ROW:  # one colour scale for every map, so colours compare
                code_map = ax.imshow(images[column], cmap="nipy_spectral",
                                     interpolation="nearest", vmin=0, vmax=top_code)
            else:
                image = np.clip(images[column].reshape(image_shape), 0, 1)
                ax.imshow(image[..., 0] if image_shape[-1] == 1 else image, cmap="gray",
                          vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
    for row, (label, _) in enumerate(rows):
        axes[row][0].set_ylabel(label)
    if code_maps_NxHxW is not None:
        row = [label for label, _ in rows].index(CODE_MAP_ROW)
        fig.colorbar(code_map, ax=list(axes[row]), label="code index", fraction=0.02, pad=0.01)
    _title(fig, "held-out reconstructions", [run_name] if run_name else [])
    return fig


def reconstructions(originals_NxP, recons_NxP, image_shape, out: Path, count: int = 10,
                    run_name: str = "", code_maps_NxHxW=None, level_recons_LxNxP=None,
                    num_codes: int | None = None) -> Path:
    fig = reconstructions_figure(originals_NxP, recons_NxP, image_shape, count, run_name,
                                 code_maps_NxHxW, level_recons_LxNxP, num_codes)
    return _save(fig, Path(out) / RECONSTRUCTIONS_PNG)


def codebooks_figure(codebook_LxKxD, level_inputs_LxNxD, codes_NxL, run_name: str = "",
                     points: str = "training images"):
    """Each level's codes over a sample of the points it quantized (`level_inputs_LxNxD`), in
    2-D: the first two principal components of the level's inputs when the latent has more than
    two dimensions.

    Dead codes, picked by none of `codes_NxL` (the codes of the whole training split, as
    `report` counts them), are hollow red circles.
    """
    levels = codebook_LxKxD.shape[0]
    fig = _new_figure(figsize=(5 * levels, 5.0))
    for level, ax in enumerate(fig.subplots(1, levels, squeeze=False)[0]):
        inputs, codes = level_inputs_LxNxD[level], codebook_LxKxD[level]
        points_2d, codes_2d = _project(inputs, codes)
        used = np.bincount(codes_NxL[:, level], minlength=len(codes)) > 0
        ax.scatter(*points_2d.T, s=3, c="0.75", label=f"level inputs ({points}, a sample)")
        ax.scatter(*codes_2d[used].T, s=25, c="tab:blue", label="codes in use")
        ax.scatter(*codes_2d[~used].T, s=40, facecolors="none", edgecolors=DEAD_COLOR,
                   label="dead codes")
        x_label, y_label = _axis_labels(inputs.shape[1], level)
        ax.set(title=f"level {level + 1}: {int((~used).sum())} of {len(codes)} codes dead",
               xlabel=x_label, ylabel=y_label)
    _shared_legend(fig)
    _title(fig, "codebooks", [run_name] if run_name else [])
    return fig


def _axis_labels(latent_dim: int, level: int) -> tuple[str, str]:
    if latent_dim > 2:
        return (f"PC 1 of level {level + 1} inputs", f"PC 2 of level {level + 1} inputs")
    return ("latent dim 1", "latent dim 2" if latent_dim == 2 else "(1-D latent)")


def codebooks(codebook_LxKxD, level_inputs_LxNxD, codes_NxL, out: Path,
              run_name: str = "", points: str = "training images") -> Path:
    fig = codebooks_figure(codebook_LxKxD, level_inputs_LxNxD, codes_NxL, run_name, points)
    return _save(fig, Path(out) / CODEBOOKS_PNG)


def _project(points_NxD, codes_KxD):
    """Both sets in the plane of the points' first two principal components (or padded to 2-D)."""
    if points_NxD.shape[1] <= 2:
        pad = lambda a: np.pad(a, ((0, 0), (0, 2 - a.shape[1])))  # noqa: E731
        return pad(points_NxD), pad(codes_KxD)
    mean = points_NxD.mean(0)
    _, _, components = np.linalg.svd(points_NxD - mean, full_matrices=False)
    return (points_NxD - mean) @ components[:2].T, (codes_KxD - mean) @ components[:2].T


def checkpoint_pictures(out: Path, *, codes_NxL, heldout_NxP, heldout_codes_NxL,
                        level_recons_LxNxP, codebook_LxKxD, level_inputs_LxNxD, num_codes: int,
                        image_shape, grid: bool, run_name: str = "") -> list[Path]:
    """The pictures of a checkpoint, from arrays the CLI computes with the run's model
    (`rqvae.trainer.trained.TrainedRun`): code use (`codes_NxL`, the training split's codes;
    a grid's are (N, H', W', L)), the held-out examples `heldout_NxP` above their codes' level-1
    maps (a grid's) and their reconstructions level by level, and the codebooks beside their
    level inputs."""
    code_maps = heldout_codes_NxL[..., 0] if grid else None
    codes_NxL = codes_NxL.reshape(-1, codes_NxL.shape[-1])  # a grid's positions are points
    points = "training-image positions" if grid else "training images"
    return [
        code_use(codes_NxL, num_codes, out, run_name=run_name, points=points),
        reconstructions(heldout_NxP, level_recons_LxNxP[-1], image_shape, out, run_name=run_name,
                        code_maps_NxHxW=code_maps, level_recons_LxNxP=level_recons_LxNxP,
                        num_codes=num_codes),
        codebooks(codebook_LxKxD, level_inputs_LxNxD, codes_NxL, out, run_name=run_name,
                  points=points),
    ]
