"""The single-file HTML report (DESIGN §7): findings and tables rendered on the server so they
read with JavaScript off; charts drawn by the inlined plotly.js from one JSON block."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from markupsafe import Markup

from .. import __version__
from . import charts as charts_mod
from .common import SEVERITY_LABEL, asset, environment, script_json
from .facts import evidence, ops_table, rank_table, recorder_settings, run_facts, severity_counts

if TYPE_CHECKING:
    from ..analysis import Analysis


@lru_cache(maxsize=1)
def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    script: str = get_plotlyjs()  # plotly ships no type information
    return script


class HtmlReport:
    suffix = ".html"

    def render(self, analysis: Analysis) -> str:
        charts = charts_mod.build(analysis)
        shown = {c.id for c in charts if c.figure is not None}
        findings = [
            {
                "f": f,
                "anchor": f"finding-{i + 1}",
                "chart": charts_mod.RULE_CHART.get(f.rule) if charts_mod.RULE_CHART.get(f.rule) in shown else None,
                "evidence": evidence(f),
            }
            for i, f in enumerate(analysis.findings)
        ]
        payload = {c.id: c.figure for c in charts if c.figure is not None}
        template = environment(autoescape=True).get_template("report.html.j2")
        return template.render(
            version=__version__,
            run=analysis.run,
            facts=run_facts(analysis.run),
            settings=recorder_settings(analysis.run),
            counts=severity_counts(analysis.findings),
            severity_label=SEVERITY_LABEL,
            findings=findings,
            charts=[c for c in charts if c.figure is not None],
            missing=[c for c in charts if c.figure is None],
            ops=ops_table(analysis.ops),
            kernels=ops_table(analysis.kernels),
            ranks=rank_table(analysis.run),
            css=Markup(asset("report.css")),
            # Both are trusted code from this package; `<` never occurs in a way that ends the block.
            script=Markup(asset("report.js")),
            plotly_js=Markup(_plotly_js()),
            data=Markup(script_json(payload)),
        )
