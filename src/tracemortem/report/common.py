"""What every reporter shares: the jinja2 environments, stable number formatting, safe
embedding of data for JavaScript, and the table model the HTML, Markdown and terminal
reporters all print from."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import polars as pl

from .. import templates
from ..sanitize import terminal_text

TEMPLATE_DIR = Path(templates.__file__).parent

SEVERITY_LABEL = {"error": "Error", "warning": "Warning", "info": "Info"}


@cache
def environment(autoescape: bool) -> jinja2.Environment:
    """HTML templates escape everything by default; Markdown and terminal templates escape
    with their own filters (`md`, `term`) because HTML entities mean nothing there."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=fmt_number, dur=fmt_seconds, md=md_escape, term=terminal_text, pct=fmt_share)
    return env


def asset(name: str) -> str:
    return (TEMPLATE_DIR / name).read_text(encoding="utf-8")


# --- numbers -----------------------------------------------------------------------------


def fmt_number(value: Any) -> str:
    """Stable, short: integers with thousands separators, floats to 4 significant digits."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Inf" if value > 0 else "-Inf"
        if value == int(value) and abs(value) < 1e15:
            return f"{int(value):,}"
        return f"{value:.4g}"
    return str(value)


def fmt_share(share: Any) -> str:
    """A fraction as a percentage: `12.3%`, `<0.01%` for a tiny but non-zero share, `—` for none."""
    if not isinstance(share, (int, float)) or isinstance(share, bool) or not math.isfinite(share):
        return "—"
    if 0 < share < 1e-4:
        return "<0.01%"
    return f"{share * 100:.3g}%"


def fmt_seconds(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not math.isfinite(seconds):
        return fmt_number(seconds)
    magnitude = abs(seconds)
    if magnitude >= 1 or magnitude == 0:
        return f"{seconds:.3g} s"
    if magnitude >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


# Column-name suffix → seconds per unit, for frames whose time columns carry their unit.
_TIME_UNITS = {"_s": 1.0, "_ms": 1e-3, "_us": 1e-6, "_ns": 1e-9}


def time_unit(column: str) -> float | None:
    for suffix, scale in _TIME_UNITS.items():
        if column.endswith(suffix):
            return scale
    return None


def key_time_column(frame: pl.DataFrame) -> str | None:
    """The column a statistics frame ranks by: self time, else total time, else any time."""
    timed = [c for c in frame.columns if frame.schema[c].is_numeric() and time_unit(c)]
    for word in ("self", "total", ""):
        for column in timed:
            if word in column:
                return column
    return None


def fmt_cell(column: str, value: Any) -> str:
    scale = time_unit(column)
    if scale is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        return fmt_seconds(value * scale)
    return fmt_number(value)


def round_sig(value: float | None, digits: int = 5) -> float | None:
    """Chart data only needs a few significant digits; rounding keeps the JSON small and stable."""
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


# --- escaping ----------------------------------------------------------------------------

_JSON_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_JSON_UNSAFE_RE = re.compile("[<>&\u2028\u2029]")


def script_json(data: Any) -> str:
    """JSON that can sit inside <script type="application/json"> whatever strings it holds:
    without `<` no `</script>` or `<!--` can end the block early. Sorted and compact, so the same
    data gives the same bytes."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return _JSON_UNSAFE_RE.sub(lambda m: _JSON_UNSAFE[m.group()], text)


# Inside a table cell only these can start markup; `-`, `#`, `+` matter only at a line start.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")
# What a renderer such as GitHub's turns into a live link, a ping or a cross-reference even when
# escaped: URLs, `www.` hosts, e-mail addresses and `@mentions`, `#123` references. Such text is
# shown inside a code span, where none of them applies.
_MD_LINKISH = re.compile(r"@|://|\bwww\.|#\d|\b(?i:mailto|javascript|data|vbscript):")


def md_escape(text: Any) -> str:
    """One Markdown table cell: no line breaks, no `|`, no markup, no raw HTML, no links, no
    mentions, no control or bidi characters."""
    flat = terminal_text(" ".join(str(text).split()))
    if _MD_LINKISH.search(flat):
        fence = "`" * (max(map(len, re.findall("`+", flat)), default=0) + 1)
        cell = flat.replace("|", "\\|")  # a GFM table cell ends at `|` even inside a code span
        return f"{fence} {cell} {fence}"
    flat = flat.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", flat)


# --- tables ------------------------------------------------------------------------------


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    numeric: list[bool]  # right-align these columns

    def __bool__(self) -> bool:
        return bool(self.rows)


def column_label(column: str) -> str:
    """`cpu_self_us` → `cpu self`: the unit is in every cell already."""
    if time_unit(column):
        column = column.rsplit("_", 1)[0]
    return column.replace("_", " ")


def frame_table(frame: pl.DataFrame, top: int) -> Table:
    """The first `top` rows of a statistics frame, every cell formatted by its column's unit."""
    columns = [c for c in frame.columns if frame.schema[c] != pl.Null]
    numeric = [frame.schema[c].is_numeric() for c in columns]
    rows = [[fmt_cell(c, row[c]) for c in columns] for row in frame.head(top).iter_rows(named=True)]
    return Table([column_label(c) for c in columns], rows, numeric)
