"""Tables that fit the console (`print_table`), and how a value shows in a cell (`fmt`).

Rich shrinks a table wider than the console by cutting cells ("0.…"), also numbers. Here every
column is as wide as its widest cell; only text columns (names, settings) may wrap, down to
MIN_TEXT_WIDTH; a table still too wide is printed in parts that each repeat the key column, so at
any console width no value is cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

MIN_TEXT_WIDTH = 12


@dataclass(frozen=True)
class Col:
    header: str  # may hold "\n": a header of two short lines
    justify: str = "right"
    text: bool = False  # holds text that may wrap; numbers never do


def cell_width(cell) -> int:
    plain = cell.plain if isinstance(cell, Text) else str(cell)
    return max(map(cell_len, plain.split("\n")))


def table_width(widths: Sequence[int]) -> int:
    return sum(widths) + 3 * len(widths) + 1  # padding of 1 each side, a border between and around


def _fit_text(widths: list[int], cols: Sequence[Col], width: int) -> list[int]:
    """The widths with text columns narrowed, widest first, so that the table fits; if it cannot
    fit, with only a long text column narrowed (to a third of the console), for parts each
    showing it."""
    narrowed = list(widths)
    while (excess := table_width(narrowed) - width) > 0:
        narrowable = [i for i, col in enumerate(cols) if col.text and narrowed[i] > MIN_TEXT_WIDTH]
        if not narrowable:
            break
        widest = max(narrowable, key=narrowed.__getitem__)
        narrowed[widest] = max(MIN_TEXT_WIDTH, narrowed[widest] - excess)
    if table_width(narrowed) <= width:
        return narrowed
    cap = max(MIN_TEXT_WIDTH, width // 3)
    return [min(w, cap) if col.text else w for w, col in zip(widths, cols)]


def _parts(widths: list[int], width: int) -> list[list[int]]:
    """Column indices of each part: the key column (0), then as many of the others as fit."""
    parts = [[0]]
    for i in range(1, len(widths)):
        if len(parts[-1]) > 1 and table_width([widths[c] for c in parts[-1] + [i]]) > width:
            parts.append([0])
        parts[-1].append(i)
    return parts


def print_table(console: Console, title: str, cols: Sequence[Col], rows: list[list],
                legend: str = "") -> None:
    """Prints the rows (cells: str or Text) under a title, as one table or as parts that fit the
    console, then the legend; no number is ever cut."""
    rows = [[c if isinstance(c, Text) else Text(str(c)) for c in row] for row in rows]
    widths = [max(cell_width(col.header), *(cell_width(row[i]) for row in rows), 1)
              for i, col in enumerate(cols)]
    widths = _fit_text(widths, cols, console.width)
    parts = _parts(widths, console.width)
    for n, part in enumerate(parts):
        console.print(Text(title + (f" (part {n + 1} of {len(parts)})" if len(parts) > 1 else ""),
                           style="bold"))
        table = Table()
        for i in part:
            table.add_column(cols[i].header, justify=cols[i].justify, width=widths[i],
                             no_wrap=not cols[i].text, overflow="fold")
        for row in rows:
            table.add_row(*(row[i] for i in part))
        console.print(table)
    if legend:
        console.print(Text(legend, style="dim"))


def fmt(value) -> str:
    """A value as a cell shows it: numbers to 4 significant digits, None as "-"."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return str(value)
