"""Text, Markdown and JSON for `tracemortem diff` (the comparison dict from `tracemortem.compare`)."""

from __future__ import annotations

from typing import Any

from ..sanitize import terminal_text
from .common import Table, fmt_seconds, md_escape
from .strict_json import dumps
from .terminal import columns

_CHANGE_HEADERS = ["name", "baseline / step", "candidate / step", "change", "ratio"]


def _change_table(rows: list[dict[str, Any]]) -> Table:
    cells = [
        [
            row["name"],
            fmt_seconds(row["baseline_us"] / 1e6),
            fmt_seconds(row["candidate_us"] / 1e6),
            ("+" if row["delta_us"] > 0 else "-") + fmt_seconds(abs(row["delta_us"]) / 1e6),
            f"{row['ratio']:.2f}×" if row["ratio"] is not None else "new",
        ]
        for row in rows
    ]
    return Table(_CHANGE_HEADERS, cells, [False, True, True, True, True])


def _step_line(step: dict[str, Any]) -> str:
    if step["baseline"] is None or step["candidate"] is None:
        return "Median step time: not available for both inputs"
    ratio = f" ({step['ratio']:.2f}×)" if step["ratio"] is not None else ""
    return f"Median step time: {fmt_seconds(step['baseline'])} → {fmt_seconds(step['candidate'])}{ratio}"


def _finding_line(finding: dict[str, Any]) -> tuple[str, str, str, str]:
    return (finding["severity"], finding["rule"], finding["subject"] or "", finding["title"])


def render_text(result: dict[str, Any]) -> str:
    lines = [
        f"Baseline:  {terminal_text(result['baseline'])}",
        f"Candidate: {terminal_text(result['candidate'])}",
        _step_line(result["step_time_s"]),
    ]
    for title, key in (("Ops (self CPU time per step)", "ops"), ("GPU kernels (time per step)", "kernels")):
        if result[key]:
            lines += ["", title] + columns(_change_table(result[key]))
    for title, key in (("New findings", "new_findings"), ("Resolved findings", "resolved_findings")):
        if result[key]:
            table = Table(
                ["severity", "rule", "subject", "title"], [list(_finding_line(f)) for f in result[key]], [False] * 4
            )
            lines += ["", title] + columns(table)
    return "\n".join(lines) + "\n"


def _md_table(table: Table) -> list[str]:
    out = ["| " + " | ".join(table.headers) + " |", "|" + "|".join("---:" if n else "---" for n in table.numeric) + "|"]
    return out + ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in table.rows]


def render_markdown(result: dict[str, Any]) -> str:
    lines = [
        "## tracemortem diff",
        "",
        f"- Baseline: {md_escape(result['baseline'])}",
        f"- Candidate: {md_escape(result['candidate'])}",
        f"- {_step_line(result['step_time_s'])}",
    ]
    for title, key in (("Ops (self CPU time per step)", "ops"), ("GPU kernels (time per step)", "kernels")):
        if result[key]:
            lines += ["", f"### {title}", ""] + _md_table(_change_table(result[key]))
    for title, key in (("New findings", "new_findings"), ("Resolved findings", "resolved_findings")):
        if result[key]:
            table = Table(
                ["severity", "rule", "subject", "title"], [list(_finding_line(f)) for f in result[key]], [False] * 4
            )
            lines += ["", f"### {title}", ""] + _md_table(table)
    return "\n".join(lines) + "\n"


def render_diff(result: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return dumps(result, indent=1)
    if fmt == "md":
        return render_markdown(result)
    return render_text(result)
