"""The presets that ship with the package (`configs/` in the checkout): found by name from any
directory, and listed with their purpose, the first line of each file's header."""

from __future__ import annotations

import importlib.resources
from pathlib import Path


def _folder() -> Path:
    return Path(str(importlib.resources.files("rqvae.presets")))


def find(name: str) -> Path | None:
    """The preset called `name` ("hybrid" or "hybrid.toml"), or None when there is none."""
    if "/" in name or name.startswith("."):
        return None
    path = _folder() / (name if name.endswith(".toml") else f"{name}.toml")
    return path if path.is_file() else None


def listing() -> list[tuple[str, str]]:
    """(name, purpose) of every preset, by name."""
    found = []
    for path in sorted(_folder().glob("*.toml")):
        header = path.read_text().splitlines()[0] if path.read_text() else ""
        found.append((path.stem, header.lstrip("# ").strip()))
    return found
