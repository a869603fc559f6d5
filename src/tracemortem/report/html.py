"""The single-file HTML report (docs/report.md): findings and tables rendered on the server so they
read with JavaScript off; charts drawn by the report's own small script (templates/report.js)
from one JSON block."""

from __future__ import annotations

from typing import TYPE_CHECKING

from markupsafe import Markup

from ..version import __version__
from . import charts as charts_mod
from .common import SEVERITY_LABEL, asset, environment, script_json
from .evidence import evidence_items
from .facts import ops_table, rank_table, recorder_settings, run_facts, severity_counts
from .modules import module_tree
from .trace_links import finding_range
from .verdict import report_verdict

if TYPE_CHECKING:
    from ..analysis import Analysis


class HtmlReport:
    suffix = ".html"

    def render(self, analysis: Analysis) -> str:
        charts = charts_mod.build(analysis)
        modules = module_tree(analysis)
        shown = {c.id for c in charts if c.figure is not None}
        findings = [
            {
                "f": f,
                "anchor": f"finding-{i + 1}",
                "chart": charts_mod.RULE_CHART.get(f.rule) if charts_mod.RULE_CHART.get(f.rule) in shown else None,
                "evidence": evidence_items(f),
                "trace": finding_range(analysis, f),
                "module": modules.anchors.get(f.subject) if f.subject else None,
            }
            for i, f in enumerate(analysis.findings)
        ]
        payload = {c.id: c.figure for c in charts if c.figure is not None}
        template = environment(autoescape=True).get_template("report.html.j2")
        return template.render(
            version=__version__,
            run=analysis.run,
            verdict=report_verdict(analysis),
            facts=run_facts(analysis.run),
            settings=recorder_settings(analysis.run),
            counts=severity_counts(analysis.findings),
            severity_label=SEVERITY_LABEL,
            findings=findings,
            charts=[c for c in charts if c.figure is not None],
            timelines=[c for c in charts if c.figure is not None and c.figure.get("kind") == "timeline"],
            missing=[c for c in charts if c.figure is None],
            ops=ops_table(analysis.ops),
            kernels=ops_table(analysis.kernels),
            ranks=rank_table(analysis.run),
            modules=modules,
            css=Markup(asset("report.css")),
            # Trusted code from this package; `</script` never occurs in it.
            script=Markup(asset("report.js")),
            data=Markup(script_json(payload)),
        )
