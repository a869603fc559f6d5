"""Reports: one small class per document format, each rendering a jinja2 template from the
top-level templates/ package, all behind the `Reporter` protocol and chosen from `REPORTERS`.
`render(analysis, fmt)` is the short way in; `tracemortem ops` uses `render_ops(analysis, top, fmt)`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from .common import md_escape
from .facts import top_rows
from .html import HtmlReport
from .jsonout import JsonReport
from .markdown import MarkdownReport
from .strict_json import dumps
from .terminal import NO_OPS, TextSummary, ops_tables, render_ops_table

if TYPE_CHECKING:
    from ..analysis import Analysis

__all__ = ["REPORTERS", "Reporter", "render", "render_ops", "render_ops_table"]


class Reporter(Protocol):
    """A document made from an `Analysis`: `suffix` names the file it is saved as by default."""

    suffix: str

    def render(self, analysis: Analysis) -> str: ...


REPORTERS: dict[str, Reporter] = {
    "html": HtmlReport(),
    "md": MarkdownReport(),
    "json": JsonReport(),
    "text": TextSummary(),
}
FORMATS = tuple(REPORTERS)


def render(analysis: Analysis, fmt: str) -> str:
    reporter = REPORTERS.get(fmt)
    if reporter is None:
        raise ValueError(f"unknown report format {fmt!r} (choose from {', '.join(FORMATS)})")
    return reporter.render(analysis)


OPS_FORMATS = ("text", "md", "json")


def render_ops(analysis: Analysis, top: int, fmt: str) -> str:
    """`tracemortem ops` as text (aligned columns), Markdown tables or JSON (`{"ops": [...],
    "kernels": [...]}`: the top rows of the timing stage's frames, units in the column names)."""
    if fmt == "text":
        return render_ops_table(analysis, top)
    if fmt == "json":
        document = {"ops": top_rows(analysis.ops, top), "kernels": top_rows(analysis.kernels, top)}
        return dumps(document, indent=2)
    tables = ops_tables(analysis, top)
    if fmt != "md":
        raise ValueError(f"unknown ops format {fmt!r} (choose from {', '.join(OPS_FORMATS)})")
    if not tables:
        return NO_OPS + "\n"
    sections = []
    for title, t in tables:
        lines = [f"### {title}", "", "| " + " | ".join(md_escape(h) for h in t.headers) + " |"]
        lines.append("|" + "|".join("---:" if n else "---" for n in t.numeric) + "|")
        lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in t.rows]
        sections.append("\n".join(lines))
    return "\n\n".join(sections) + "\n"
