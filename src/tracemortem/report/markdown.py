"""A Markdown body for a ticket (at most `MAX_LINES` lines): the verdict, the run facts, each
finding with its message, key evidence and what to try, then the top ops. Every name goes
through the `md` filter (no `|`, no markup)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .common import environment
from .evidence import brief, evidence_items
from .facts import ops_table, run_facts, severity_counts
from .trace_links import finding_range, step_range
from .verdict import report_verdict

if TYPE_CHECKING:
    from ..analysis import Analysis

MAX_LINES = 80
MAX_FINDINGS = 8
MAX_OPS = 5
# Facts a ticket needs; the rest are in the HTML report.
_TICKET_FACTS = {"Path", "Input", "Status", "World size", "Steps", "PyTorch", "CUDA", "Devices", "GPU"}


class MarkdownReport:
    suffix = ".md"

    def render(self, analysis: Analysis) -> str:
        findings = analysis.findings
        template = environment(autoescape=False).get_template("report.md.j2")
        shown = findings[:MAX_FINDINGS]
        return template.render(
            verdict=report_verdict(analysis),
            facts=[(k, v) for k, v in run_facts(analysis.run) if k in _TICKET_FACTS],
            counts=severity_counts(findings),
            timelines=[(t.why, t.step, step_range(analysis, t.rank, t.step)) for t in analysis.timelines],
            findings=[(f, brief(evidence_items(f)), finding_range(analysis, f)) for f in shown],
            more=len(findings) - len(shown),
            ops=ops_table(analysis.ops, MAX_OPS),
            kernels=ops_table(analysis.kernels, MAX_OPS) if len(shown) <= 6 else ops_table(analysis.kernels, 0),
        )
