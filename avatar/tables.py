"""Rows of measurements as aligned text tables: the one formatter of every printed table."""

from __future__ import annotations


def format_table(rows: list[dict]) -> str:
    """Rows of differing keys as one aligned text table (a blank where a row has no value)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))

    def cell(v) -> str:
        if isinstance(v, dict):
            return ", ".join(f"{k}={cell(x)}" for k, x in v.items())
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return "" if v is None else str(v)

    table = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in table]
    return "\n".join(lines)
