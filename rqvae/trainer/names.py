"""Short names of settings: the tags of automatic run names (`hybrid-lw0.1-codes1024-...`) and
the headers of the report's settings table, one vocabulary for both."""

from __future__ import annotations

import re

from rqvae.trainer import config
from rqvae.trainer.compat import MOVED

# Settings that never tag a run name: where it is written, and how it is logged.
UNTAGGED = ("run.", "data.data_dir")
MAX_TAGS = 4


def short_name(key: str) -> str:
    """The short name of a dotted key (its declaration's, else its last part), or of a flat key
    of earlier versions (compat.MOVED)."""
    key = MOVED.get(key, key)
    declared = config.declarations().get(key)
    return (declared and declared.short) or key.rsplit(".", 1)[-1]


def _tag_value(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "x".join(_tag_value(v) for v in value)
    text = str(value).rsplit("/", 1)[-1].rsplit(".", 1)[0]  # npz:/data/x.npz -> x
    return text.rsplit(":", 1)[-1]


def run_name(stem: str, changed: dict, max_tags: int | None = MAX_TAGS) -> str:
    """`stem` (the config's name) and a tag per setting the command line changed, in the order
    given ({dotted key: value}); at most `max_tags` tags, each [A-Za-z0-9.+-] only."""
    tags = [f"{short_name(key)}{_tag_value(value)}" for key, value in changed.items()
            if not key.startswith(UNTAGGED)][:max_tags]
    return "-".join(re.sub(r"[^A-Za-z0-9.+-]", "", part) for part in (stem, *tags) if part)
