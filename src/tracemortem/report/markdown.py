"""A Markdown summary short enough for a ticket body (under ~60 lines): run facts, the
findings table, the top ops. Every name goes through the `md` filter (no `|`, no markup)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .common import environment
from .facts import ops_table, run_facts, severity_counts

if TYPE_CHECKING:
    from ..analysis import Analysis

MAX_FINDINGS = 25
MAX_OPS = 10


class MarkdownReport:
    suffix = ".md"

    def render(self, analysis: Analysis) -> str:
        findings = analysis.findings
        template = environment(autoescape=False).get_template("report.md.j2")
        return template.render(
            facts=run_facts(analysis.run),
            counts=severity_counts(findings),
            findings=findings[:MAX_FINDINGS],
            more=max(0, len(findings) - MAX_FINDINGS),
            ops=ops_table(analysis.ops, MAX_OPS),
            kernels=ops_table(analysis.kernels, 5),
        )
