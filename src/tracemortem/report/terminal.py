"""Plain-text output for `tracemortem summary` and `tracemortem ops`: aligned columns, no
colour codes (click strips nothing we do not emit); every name goes through `sanitize.terminal_text`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..sanitize import terminal_text
from .common import SEVERITY_LABEL, Table, environment
from .facts import evidence, ops_table, run_facts, severity_counts

if TYPE_CHECKING:
    from ..analysis import Analysis

NAME_WIDTH = 70


def columns(table: Table) -> list[str]:
    """The table as aligned text lines; long names cut to NAME_WIDTH."""
    cells = [[terminal_text(c) for c in row] for row in table.rows]
    cells = [[c if len(c) <= NAME_WIDTH else c[: NAME_WIDTH - 1] + "…" for c in row] for row in cells]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(table.headers)]

    def line(row: list[str]) -> str:
        parts = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, table.numeric)]
        return "  ".join(parts).rstrip()

    return [line(table.headers), "  ".join("-" * w for w in widths)] + [line(row) for row in cells]


class TextSummary:
    """The findings for a terminal (`tracemortem summary`)."""

    suffix = ".txt"

    def render(self, analysis: Analysis) -> str:
        template = environment(autoescape=False).get_template("summary.txt.j2")
        return template.render(
            facts=run_facts(analysis.run),
            counts=severity_counts(analysis.findings),
            label=SEVERITY_LABEL,
            findings=[(f, evidence(f)) for f in analysis.findings],
        )


def render_ops_table(analysis: Analysis, top: int = 20) -> str:
    sections = []
    for title, frame in (("Top ops", analysis.ops), ("Top GPU kernels", analysis.kernels)):
        table = ops_table(frame, top)
        if table:
            sections.append("\n".join([title] + columns(table)))
    if not sections:
        return "No profiler trace with op timings was found.\n"
    return "\n\n".join(sections) + "\n"
