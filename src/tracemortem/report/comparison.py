"""Text, Markdown, JSON and HTML for `tracemortem diff` (the comparison dict from `tracemortem.compare`)."""

from __future__ import annotations

from typing import Any

from markupsafe import Markup

from ..sanitize import terminal_text
from ..version import __version__
from .common import Table, asset, environment, fmt_seconds, md_escape
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


def _sections(result: dict[str, Any]) -> list[tuple[str, Table]]:
    """(title, table) for each non-empty part of the comparison, in reading order."""
    sections = []
    for title, key in (("Ops (self CPU time per step)", "ops"), ("GPU kernels (time per step)", "kernels")):
        if result[key]:
            sections.append((title, _change_table(result[key])))
    for title, key in (("New findings", "new_findings"), ("Resolved findings", "resolved_findings")):
        if result[key]:
            rows = [list(_finding_line(f)) for f in result[key]]
            sections.append((title, Table(["severity", "rule", "subject", "title"], rows, [False] * 4)))
    return sections


def render_text(result: dict[str, Any]) -> str:
    lines = [
        f"Baseline:  {terminal_text(result['baseline'])}",
        f"Candidate: {terminal_text(result['candidate'])}",
        _step_line(result["step_time_s"]),
    ]
    for title, table in _sections(result):
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
    for title, table in _sections(result):
        lines += ["", f"### {title}", ""] + _md_table(table)
    return "\n".join(lines) + "\n"


def render_html(result: dict[str, Any]) -> str:
    """One self-contained page (the report's stylesheet, no script)."""
    template = environment(autoescape=True).get_template("diff.html.j2")
    return template.render(
        version=__version__,
        result=result,
        step_line=_step_line(result["step_time_s"]),
        sections=_sections(result),
        css=Markup(asset("report.css")),
    )


def render_diff(result: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return dumps(result, indent=1)
    if fmt == "md":
        return render_markdown(result)
    if fmt == "html":
        return render_html(result)
    return render_text(result)
