"""Regenerate docs/thresholds.md from the threshold registry (every rule's named defaults)."""

from __future__ import annotations

import sys
from pathlib import Path

from tracemortem.config import all_thresholds

DOC = Path(__file__).resolve().parents[1] / "docs" / "thresholds.md"

HEADER = """# Thresholds

Every detection threshold is a named default. Override one for a single run with
`--set rule.param=value` (repeatable), or for a project in `pyproject.toml`:

```toml
[tool.tracemortem]
fail-on = "warning"          # default for `report --fail-on`

[tool.tracemortem.exploding-gradient]
sigma = 8.0
```

or in a `tracemortem.toml` with the same tables at top level (`[exploding-gradient]`). The
nearest such file from the current directory upwards is used. Unknown names, and values outside
a threshold's valid range, are refused (exit 2).

This page is generated from the code (`python scripts/gen_threshold_docs.py`); a test keeps it
in step.

| threshold | default | valid | meaning | source of the default |
|---|---|---|---|---|
"""


def render() -> str:
    rows = []
    for spec in all_thresholds().values():
        doc = spec.doc.replace("|", "\\|")
        source = spec.source.replace("|", "\\|")
        valid = f"{spec.low:g} – {spec.high:g}" if isinstance(spec.default, (int, float)) else ""
        rows.append(f"| `{spec.name}` | `{spec.default!r}` | {valid} | {doc} | {source} |")
    return HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if DOC.exists() and DOC.read_text() == text else 1)
    DOC.write_text(text)
    print(f"wrote {DOC}")
