"""`rqvae plot`: PNGs of a run's loss curves, code use, reconstructions and codebooks.

Needs the optional `plot` extra (matplotlib). Curves come from metrics.jsonl alone; the pictures
of codes and reconstructions load the run's newest checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rqvae import runlog
from rqvae.config import ConfigError

LOSS_TERMS = runlog.LOSS_TERMS


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install 'rqvae[plot]'") from None
    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    return plt


def loss_curves(run_dirs: list[Path], out: Path, log_scale: bool) -> Path:
    """One panel per loss term; several runs are overlaid for comparison."""
    plt = _pyplot()
    runs = {Path(d).name: [r for r in runlog.read(d) if r["kind"] == "train"] for d in run_dirs}
    terms = [t for t in LOSS_TERMS
             if t != "wasserstein" or any(r.get(t) for records in runs.values() for r in records)]
    fig, axes = plt.subplots(1, len(terms), figsize=(4 * len(terms), 3.2), squeeze=False)
    for ax, term in zip(axes[0], terms):
        for name, records in runs.items():
            ax.plot([r["step"] for r in records], [r[term] for r in records], label=name)
        ax.set_title(term)
        ax.set_xlabel("step")
        if log_scale:
            ax.set_yscale("log")
    axes[0][-1].legend(fontsize="small")
    return _save(fig, out / "losses.png")


def code_use(codes_NxL: np.ndarray, num_codes: int, out: Path) -> Path:
    """Per level, how many training images pick each code, sorted; dead codes marked in red."""
    plt = _pyplot()
    levels = codes_NxL.shape[1]
    fig, axes = plt.subplots(1, levels, figsize=(5 * levels, 3.2), squeeze=False)
    for level, ax in enumerate(axes[0]):
        counts = np.sort(np.bincount(codes_NxL[:, level], minlength=num_codes))[::-1]
        dead = counts == 0
        ax.bar(np.arange(num_codes), counts, color=np.where(dead, "tab:red", "tab:blue"), width=1.0)
        ax.set_title(f"level {level + 1}: {int(dead.sum())} of {num_codes} codes dead")
        ax.set_xlabel("codes, by use")
        ax.set_ylabel("training images")
    return _save(fig, out / "code_use.png")


def reconstructions(originals_NxP, recons_NxP, image_shape, out: Path, count: int = 10) -> Path:
    """Held-out images (top row) beside their reconstructions (bottom row)."""
    plt = _pyplot()
    count = min(count, len(originals_NxP))
    fig, axes = plt.subplots(2, count, figsize=(1.2 * count, 2.6), squeeze=False)
    for column in range(count):
        for row, images in enumerate((originals_NxP, recons_NxP)):
            image = np.clip(images[column].reshape(image_shape), 0, 1)
            ax = axes[row][column]
            ax.imshow(image[..., 0] if image_shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_ylabel("held out")
    axes[1][0].set_ylabel("recon")
    return _save(fig, out / "reconstructions.png")


def codebooks(codebook_LxKxD, level_inputs_LxNxD, codes_NxL, out: Path) -> Path:
    """Each level's codes over the points it quantized, in 2-D (PCA of the points past 2-D).

    Dead codes (picked by no training image) are hollow circles.
    """
    plt = _pyplot()
    levels = codebook_LxKxD.shape[0]
    fig, axes = plt.subplots(1, levels, figsize=(5 * levels, 4.5), squeeze=False)
    for level, ax in enumerate(axes[0]):
        points, codes = level_inputs_LxNxD[level], codebook_LxKxD[level]
        points_2d, codes_2d = _project(points, codes)
        used = np.bincount(codes_NxL[:, level], minlength=len(codes)) > 0
        ax.scatter(*points_2d.T, s=3, c="0.75", label="level inputs")
        ax.scatter(*codes_2d[used].T, s=25, c="tab:blue", label="codes")
        ax.scatter(*codes_2d[~used].T, s=40, facecolors="none", edgecolors="tab:red",
                   label=f"dead codes ({int((~used).sum())})")
        ax.set_title(f"level {level + 1}" + (" (PCA)" if points.shape[1] > 2 else ""))
        ax.legend(fontsize="small", loc="best")
    return _save(fig, out / "codebooks.png")


def _project(points_NxD, codes_KxD):
    if points_NxD.shape[1] <= 2:
        pad = lambda a: np.pad(a, ((0, 0), (0, 2 - a.shape[1])))  # noqa: E731
        return pad(points_NxD), pad(codes_KxD)
    mean = points_NxD.mean(0)
    _, _, components = np.linalg.svd(points_NxD - mean, full_matrices=False)
    return (points_NxD - mean) @ components[:2].T, (codes_KxD - mean) @ components[:2].T


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    fig.clf()
    return path
