"""The JSON document of DESIGN §6: `analysis.to_dict()`, sorted, indented, and valid JSON even
when a number is NaN or infinite (written as the strings "nan", "inf", "-inf")."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..analysis import Analysis


def finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


class JsonReport:
    suffix = ".json"

    def render(self, analysis: Analysis) -> str:
        document = finite(analysis.to_dict())
        return json.dumps(document, sort_keys=True, indent=2, allow_nan=False, default=str) + "\n"
