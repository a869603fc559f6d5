"""A finding's evidence rendered for people: each value in its unit with a few significant
figures, short lists written out, lists of records (such as the leading parameters) as small
tables (docs/report.md, "Evidence")."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..detect.ranks import rank_runs
from ..findings import Finding
from .common import Table, fmt_seconds

MAX_LIST = 8  # items of a list written out; the rest are counted
MAX_ROWS = 10  # rows of an evidence table

_DURATION_SUFFIXES = {"_s": 1.0, "_ms": 1e-3, "_us": 1e-6, "_ns": 1e-9}


@dataclass(frozen=True)
class EvidenceItem:
    label: str
    text: str = ""  # a value written out, or "" when `table` holds it
    table: Table | None = None


def number(value: float | int) -> str:
    """4 significant figures, scientific notation outside 1e-3 … 1e6, no thousands separators
    (they would collide with the commas between list items)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and abs(value) < 1_000_000:
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Inf" if value > 0 else "-Inf"
    magnitude = abs(value)
    if magnitude != 0 and (magnitude >= 1e6 or magnitude < 1e-3):
        mantissa, exponent = f"{value:.3e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:.4g}"


def _unit_of(key: str) -> tuple[str, float] | None:
    for suffix, scale in _DURATION_SUFFIXES.items():
        if key.endswith(suffix):
            return "duration", scale
    if key.endswith("bytes"):
        return "bytes", 1.0
    if key.endswith(("share", "fraction")):
        return "share", 1.0
    return None


def _bytes(value: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.0f} B"


def value_text(key: str, value: Any) -> str:
    """One evidence value as text, in the unit its key names (`_s`, `_us`, `_bytes`, `share`)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        unit = _unit_of(key)
        if unit is not None and math.isfinite(value):
            kind, scale = unit
            if kind == "duration":
                return fmt_seconds(value * scale)
            if kind == "bytes":
                return _bytes(value)
            return f"{value * 100:.3g}%"
        return number(value)
    if isinstance(value, str):
        return {"nan": "NaN", "inf": "Inf", "-inf": "-Inf"}.get(value, value)
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "—"}[value]
    if isinstance(value, dict):
        return "; ".join(f"{label(str(k))} {value_text(str(k), v)}" for k, v in sorted(value.items(), key=str))
    if key == "ranks" and isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return rank_runs(value)  # 1,024 merged ranks read as `0–511, 513–1023`
    if isinstance(value, (list, tuple)):
        shown = ", ".join(value_text(key, v) for v in value[:MAX_LIST])
        return shown + (f" … ({len(value) - MAX_LIST} more)" if len(value) > MAX_LIST else "") if shown else "—"
    return str(value)


def label(key: str) -> str:
    """`first_nonfinite_step` → `first nonfinite step`; unit suffixes go (the value carries them)."""
    for suffix in _DURATION_SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            key = key[: -len(suffix)]
            break
    return key.replace("_", " ").strip()


def _records_table(rows: list[dict[str, Any]]) -> Table:
    columns: list[str] = []
    for row in rows:
        columns += [str(k) for k in row if str(k) not in columns]
    cells = [[value_text(c, row.get(c)) for c in columns] for row in rows[:MAX_ROWS]]
    numeric = [all(isinstance(row.get(c), (int, float)) for row in rows if row.get(c) is not None) for c in columns]
    return Table([label(c) for c in columns], cells, numeric)


def evidence_items(finding: Finding) -> list[EvidenceItem]:
    """Plain values first (in key order), then the tables."""
    plain, tables = [], []
    for key, value in sorted(finding.evidence.items()):
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            tables.append(EvidenceItem(label(key), table=_records_table(value)))
        else:
            plain.append(EvidenceItem(label(key), value_text(key, value)))
    return plain + tables


def _row_text(table: Table, row: list[str]) -> str:
    rest = ", ".join(f"{h} {c}" for h, c in zip(table.headers[1:], row[1:]))
    return f"{row[0]} ({rest})" if rest else row[0]


def brief(items: list[EvidenceItem], limit: int = 6) -> str:
    """The evidence on one line (Markdown ticket bodies, the terminal): the first `limit` items,
    a table as its first three rows."""
    parts = []
    # a table (the leading parameters, say) is usually the point of the evidence: it goes first
    items = [i for i in items if i.table is not None][:1] + [i for i in items if i.table is None]
    for item in items[:limit]:
        if item.table is not None:
            rows = "; ".join(_row_text(item.table, row) for row in item.table.rows[:3])
            more = len(item.table.rows) - 3
            parts.append(f"{item.label}: {rows}" + (f"; … ({more} more)" if more > 0 else ""))
        else:
            parts.append(f"{item.label} {item.text}")
    if len(items) > limit:
        parts.append(f"… ({len(items) - limit} more in the HTML or JSON report)")
    return " · ".join(parts)
