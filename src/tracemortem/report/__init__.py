"""Reports: one small class per document format, each rendering a jinja2 template from the
top-level templates/ package, all behind the `Reporter` protocol and chosen from `REPORTERS`.
`render(analysis, fmt)` is the short way in; `tracemortem ops` uses `render_ops_table`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from .html import HtmlReport
from .jsonout import JsonReport
from .markdown import MarkdownReport
from .terminal import TextSummary, render_ops_table

if TYPE_CHECKING:
    from ..analysis import Analysis

__all__ = ["REPORTERS", "Reporter", "render", "render_ops_table"]


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
