"""Plain-text tables for the CLI's reports (the probes): a title line, then rows of
left-aligned columns. Written here because the stdlib has none and two lines of
padding do not call for a dependency."""

from __future__ import annotations

from typing import Sequence


def columns(title: str, rows: Sequence[tuple[str, Sequence[str]]]) -> str:
    """`title`, then each row as its label and its cells, every column as wide as its widest."""
    w0 = max(len(label) for label, _ in rows)
    widths = [max(len(cells[i]) for _, cells in rows) for i in range(len(rows[0][1]))]
    lines = [title]
    lines += [
        "  ".join([label.ljust(w0), *(c.ljust(w) for c, w in zip(cells, widths))]).rstrip() for label, cells in rows
    ]
    return "\n".join(lines)
