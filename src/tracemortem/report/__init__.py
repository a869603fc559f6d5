"""Reports: `render(analysis, fmt)` for fmt html, md, json or text, and `render_ops_table`
for `tracemortem ops`. One small module per format, each rendering a jinja2 template from the
top-level templates/ package."""

from __future__ import annotations

from typing import Any

FORMATS = ("html", "md", "json", "text")


def render(analysis: Any, fmt: str) -> str:
    if fmt == "html":
        from .html import render as html

        return html(analysis)
    if fmt == "md":
        from .markdown import render as md

        return md(analysis)
    if fmt == "json":
        from .jsonout import render as js

        return js(analysis)
    if fmt == "text":
        from .terminal import render as text

        return text(analysis)
    raise ValueError(f"unknown report format {fmt!r} (choose from {', '.join(FORMATS)})")


def render_ops_table(analysis: Any, top: int = 20) -> str:
    from .terminal import render_ops_table as table

    return table(analysis, top)
