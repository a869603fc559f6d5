"""Plain-text output for `tracemortem summary` and `tracemortem ops`: aligned columns, colour
only when the CLI asks for it (a terminal without NO_COLOR); every name goes through
`sanitize.terminal_text`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..sanitize import terminal_text
from .common import SEVERITY_LABEL, Table, environment
from .evidence import brief, evidence_items
from .facts import ops_table, run_facts, severity_counts
from .verdict import report_verdict

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
            verdict=report_verdict(analysis),
            facts=run_facts(analysis.run),
            counts=severity_counts(analysis.findings),
            label=SEVERITY_LABEL,
            findings=[(f, brief(evidence_items(f), limit=8)) for f in analysis.findings],
        )


_SEVERITY_COLOURS = {"ERROR": "red", "WARNING": "yellow", "INFO": "blue"}


def colourize(text: str) -> str:
    """The text summary with its severity words coloured and the verdict in bold, for a terminal
    (the CLI decides: only on a TTY and never when NO_COLOR is set, see https://no-color.org)."""
    import click

    lines = text.split("\n")
    if len(lines) > 1 and lines[1]:
        lines[1] = click.style(lines[1], bold=True)
    for i, line in enumerate(lines):
        word = line.split(" ", 1)[0]
        if word in _SEVERITY_COLOURS:
            lines[i] = click.style(word, fg=_SEVERITY_COLOURS[word], bold=True) + line[len(word) :]
    return "\n".join(lines)


def use_colour(is_tty: bool, environ: Mapping[str, str]) -> bool:
    return is_tty and not environ.get("NO_COLOR") and environ.get("TERM") != "dumb"


NO_OPS = "No profiler trace with op timings was found."


def ops_tables(analysis: Analysis, top: int) -> list[tuple[str, Table]]:
    """The op and kernel tables `tracemortem ops` prints, whichever the trace has."""
    found = [("Top ops", ops_table(analysis.ops, top)), ("Top GPU kernels", ops_table(analysis.kernels, top))]
    return [(title, table) for title, table in found if table]


def render_ops_table(analysis: Analysis, top: int = 20) -> str:
    sections = ["\n".join([title] + columns(table)) for title, table in ops_tables(analysis, top)]
    return "\n\n".join(sections) + "\n" if sections else NO_OPS + "\n"
