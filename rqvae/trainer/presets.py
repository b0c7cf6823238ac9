"""The presets that ship with the package (`configs/` in the checkout): found by name from any
directory, listed with their purpose (the first line of each file's header), and printed."""

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


def text(name: str) -> str | None:
    """The preset called `name` as a TOML file to start from, or None when there is none; the
    default preset (a header only, every key falling back to its default) comes with every
    setting at its default and its meaning, from the settings' declarations."""
    from rqvae.trainer import config

    path = find(name)
    if path is None:
        return None
    body = path.read_text()
    return body + "\n" + config.defaults_toml() if path.stem == "default" else body
