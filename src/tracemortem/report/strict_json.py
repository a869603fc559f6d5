"""Strict JSON for every JSON document the CLI writes: no `NaN` or `Infinity` tokens, which
`json.loads` accepts but JSON (RFC 8259) and most other parsers refuse (docs/report.md).

A non-finite number is written as `null`, and the document's top-level `non_finite` object says
which value it was, by JSON Pointer (`{"/findings/0/evidence/norm": "nan"}`).
"""

from __future__ import annotations

import json
import math
from typing import Any


def _finite(value: Any, pointer: str, found: dict[str, str]) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        found[pointer] = str(value)
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v, f"{pointer}/{_escape(str(k))}", found) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v, f"{pointer}/{i}", found) for i, v in enumerate(value)]
    return value


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")  # RFC 6901


def dumps(document: dict[str, Any], indent: int) -> str:
    """`document` as strict, sorted JSON text with a trailing newline."""
    found: dict[str, str] = {}
    clean = _finite(document, "", found)
    if found:
        clean["non_finite"] = found
    return json.dumps(clean, sort_keys=True, indent=indent, allow_nan=False, default=str) + "\n"
