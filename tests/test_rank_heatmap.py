"""The report at 1,024 ranks: rank × step heatmaps of step time and GPU idle share with the
stragglers flagged and named, every rank kept in the JSON, the HTML within 10 MB, and the
heatmaps drawn by the report's own script in real Chromium without console errors. The
Analysis is built from per-rank timing frames, the report stage's true input."""

from __future__ import annotations

import base64
import json
from dataclasses import replace

import pytest

from rank_helpers import timing_of
from report_helpers import Visit, make_analysis
from tracemortem import report
from tracemortem.config import Config
from tracemortem.detect import perf
from tracemortem.detect.ranks import merge_across_ranks
from tracemortem.report import charts
from tracemortem.run_facts import RunFacts

RANKS, STEPS, STRAGGLERS = 1024, 300, (100, 700)
pytestmark = pytest.mark.slow  # building and rendering 1,024 ranks takes tens of seconds on 2 cores
MAX_HTML_BYTES = 10 * 10**6


@pytest.fixture(scope="module")
def analysis():
    timing = timing_of(RANKS, stragglers=STRAGGLERS, steps_per_rank=STEPS)
    findings = merge_across_ranks(perf.detect(timing, None, Config()))
    facts = {
        "path": "synthetic",
        "kind": "traces",
        "world_size": RANKS,
        "steps": timing.step_span(),
        "ranks": timing.ranks,
    }
    return replace(
        make_analysis(n_params=6, n_steps=STEPS),
        findings=findings,
        run=RunFacts.from_dict(facts),
        step_times=timing.steps,
    )


def test_rank_heatmaps_hold_every_rank_and_step(analysis):
    shown = {c.id: c for c in charts.build(analysis) if c.figure is not None}
    steps, idle = shown["chart-rank-steps"], shown["chart-rank-idle"]
    for chart in (steps, idle):
        figure = chart.figure
        assert len(figure["y"]) == RANKS and figure["x"] == list(range(1, STEPS + 1))
        assert len(base64.b64decode(figure["bytes"])) == RANKS * STEPS
        assert figure["bad_rows"] == list(STRAGGLERS)  # stragglers flagged on their rows
    assert "Stragglers (flagged left of their rows): ranks 100, 700." in steps.explain
    # A straggler's row is brighter than a normal rank's on the same steps.
    cells = base64.b64decode(steps.figure["bytes"])
    row = lambda r: sorted(cells[r * STEPS : (r + 1) * STEPS])[STEPS // 2]  # noqa: E731
    assert row(100) > row(0) and row(700) > row(1)


def test_json_keeps_every_rank_and_one_finding_per_cause(analysis):
    document = json.loads(report.render(analysis, "json"))
    assert [r["rank"] for r in document["run"]["ranks"]] == list(range(RANKS))
    idle = [f for f in document["findings"] if f["rule"] == "gpu-idle"]
    assert len(idle) == 1 and idle[0]["rank"] is None and len(idle[0]["evidence"]["ranks"]) == RANKS
    [straggler] = [f for f in document["findings"] if f["rule"] == "straggler-rank"]
    assert straggler["evidence"]["ranks"] == list(STRAGGLERS)


def test_html_at_1024_ranks_stays_small(analysis):
    html = report.render(analysis, "html")
    assert len(html.encode()) <= MAX_HTML_BYTES
    assert "ranks 100, 700" in html
    assert "<dd>0–1023</dd>" in html  # the idle finding's ranks, as one run


@pytest.mark.browser
def test_rank_heatmaps_draw_in_chromium(browser, tmp_path, analysis):
    path = tmp_path / "ranks.html"
    path.write_text(report.render(analysis, "html"), encoding="utf-8")
    visit = Visit(browser, path)
    try:
        page = visit.page
        assert visit.blocked == [] and visit.page_errors == []
        assert [m for m in visit.console if m[0] in ("error", "warning")] == []
        for chart_id in ("chart-rank-steps", "chart-rank-idle"):
            plot = page.locator(f"[data-figure={chart_id}]")
            assert plot.get_attribute("data-grid") == f"{RANKS}x{STEPS}"
            assert plot.locator("canvas").count() == 1 and plot.locator("svg.tm-chart").count() == 1
            assert plot.locator(".bad-rows rect").count() == len(STRAGGLERS)
        # The canvas holds colour, not a blank: a painted pixel in the middle of the grid.
        painted = page.evaluate(
            """() => { const c = document.querySelector('[data-figure=chart-rank-steps] canvas');
                       const d = c.getContext('2d').getImageData(c.width / 2, c.height / 2, 1, 1).data;
                       return d[3]; }"""
        )
        assert painted == 255
    finally:
        visit.context.close()
