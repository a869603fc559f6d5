"""The JSON document (docs/report.md): `analysis.to_dict()`, sorted, indented, strict JSON (a NaN or
infinite number is `null`, named in the top-level `non_finite`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..analysis import Analysis

from .strict_json import dumps


class JsonReport:
    suffix = ".json"

    def render(self, analysis: Analysis) -> str:
        return dumps(analysis.to_dict(), indent=2)
