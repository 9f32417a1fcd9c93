"""The one results-table writer: a list of row dicts → `<name>.csv` and `<name>.md` from the same rows."""

from __future__ import annotations

import csv
import math
import os


def _cell(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    return "" if value is None else str(value)


def markdown(rows: list[dict], columns: list[str] | None = None) -> str:
    """A Markdown table of `rows` (columns: the given ones, or every key in first-seen order)."""
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write(rows: list[dict], out: str, name: str, columns: list[str] | None = None, *, preamble: str = "",
          markdown_text: str | None = None) -> tuple[str, str]:
    """Write `<out>/<name>.csv` (every column) and `<out>/<name>.md` (`markdown_text`, or the table of `columns`
    after `preamble`); returns (md path, csv path)."""
    os.makedirs(out, exist_ok=True)
    fields = list(dict.fromkeys([*(columns or []), *(k for r in rows for k in r)]))
    csv_path = os.path.join(out, f"{name}.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    md_path = os.path.join(out, f"{name}.md")
    with open(md_path, "w") as f:
        f.write(markdown_text if markdown_text is not None else preamble + markdown(rows, columns))
    return md_path, csv_path


def read_csv(filename: str) -> list[dict]:
    """Rows of a CSV written by `write`, numbers parsed back."""

    def number(text: str):
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return text

    with open(filename, newline="") as f:
        return [{k: number(v) for k, v in r.items()} for r in csv.DictReader(f)]
