"""The Python values of polars aggregates, typed by the column they come from.

polars types `Series.min()`, `.max()`, `.median()` and their kin as any Python literal (a str,
a date, a list, ...); which one comes back depends on the column's dtype. The loader gives every
table a fixed schema (docs/format.md), so the rules know their columns are integers or floats:
these functions say so to the type checker and fail loudly should that ever be untrue.
"""

from __future__ import annotations


def _not_a(kind: str, value: object) -> TypeError:
    return TypeError(f"expected {kind} from a numeric column, got {type(value).__name__}")


def optional_int(value: object) -> int | None:
    """An integer column's aggregate: null when the column was empty or all null."""
    if value is None or isinstance(value, int):
        return value
    raise _not_a("an integer or null", value)


def optional_float(value: object) -> float | None:
    """A numeric column's aggregate as a number (an integer column's is kept as the int it is)."""
    if value is None or isinstance(value, (int, float)):
        return value
    raise _not_a("a number or null", value)


def as_int(value: object) -> int:
    """An integer column's aggregate that cannot be null (the column had a value)."""
    if isinstance(value, int):
        return value
    raise _not_a("an integer", value)


def as_float(value: object) -> float:
    """A numeric column's aggregate that cannot be null (the column had a value)."""
    if isinstance(value, (int, float)):
        return value
    raise _not_a("a number", value)
