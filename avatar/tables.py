"""Rows of measurements as aligned text tables: the one formatter of every printed table (render timings,
`avatar eval`, `avatar bench`, the benchmark scripts). rich lays the columns out (wide characters too); the
numbers are rounded here, once."""

from __future__ import annotations

import io
import math

from rich.box import Box
from rich.console import Console
from rich.table import Table
from rich.text import Text

# a rule under the header and nothing else, in ASCII (a log or a non-UTF-8 terminal shows it as it is)
HEADER_RULE = Box("    \n    \n -- \n    \n    \n    \n    \n    \n", ascii=True)


def format_number(value: float) -> str:
    """4 significant digits, whole numbers from 1000 on, powers of ten outside 0.001 .. 1e6."""
    if not math.isfinite(value) or value == 0:
        return f"{value:g}"
    if abs(value) < 1e-3 or abs(value) >= 1e6:
        return f"{value:.3g}"
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def format_cell(value) -> str:
    """A table cell: numbers rounded (format_number), "-" for no value, a dict as key=value pairs."""
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={format_cell(v)}" for k, v in value.items())
    if isinstance(value, float):
        return format_number(value)
    return str(value)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_table(rows: list[dict], title: str | None = None) -> str:
    """Rows of differing keys as one table, a column per key in order of appearance ("-" where a row has no
    value); numeric columns are right-aligned. Never wrapped or cut, whatever the terminal's width."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    table = Table(box=HEADER_RULE, pad_edge=False, show_edge=False)
    for column in columns:
        values = [row[column] for row in rows if row.get(column) is not None]
        numeric = all(map(_is_number, values))
        table.add_column(Text(column), justify="right" if numeric else "left", no_wrap=True)
    for row in rows:
        table.add_row(*(Text(format_cell(row.get(column))) for column in columns))
    out = io.StringIO()
    Console(file=out, width=100_000, color_system=None, highlight=False, emoji=False).print(table)
    lines = [line.rstrip() for line in out.getvalue().splitlines() if line.strip()]
    return "\n".join(([title] if title else []) + lines)  # the title on its own line: rich would wrap it
