"""The HTML report in a real browser (Debian's Chromium via Playwright): opens from file://
with every network request blocked, draws every chart without console errors, never runs
script from the data, and reads with JavaScript off."""

from __future__ import annotations

from pathlib import Path

import pytest

from report_helpers import HOSTILE, Visit, make_analysis
from tracemortem import report

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

# The `browser` fixture (tests/conftest.py) skips without Chromium, or fails under
# TRACEMORTEM_REQUIRE_BROWSER=1.
pytestmark = pytest.mark.browser


def _write(tmp_path: Path, analysis, name: str) -> Path:
    path = tmp_path / name
    path.write_text(report.render(analysis, "html"), encoding="utf-8")
    return path


def test_report_renders_offline_with_every_chart(browser, tmp_path):
    path = _write(tmp_path, make_analysis(n_params=12, n_steps=300, ranks=2), "report.html")
    visit = Visit(browser, path)
    try:
        page = visit.page
        assert visit.blocked == []
        assert [m for m in visit.console if m[0] in ("error", "warning")] == []
        assert visit.page_errors == []
        charts = page.locator("[data-figure]")
        shown = [charts.nth(i).get_attribute("data-figure") for i in range(charts.count())]
        assert shown == [
            "chart-loss",
            "chart-grad-norm",
            "chart-grad-heatmap",
            "chart-update-ratio",
            "chart-step-time",
            "chart-breakdown",
            "chart-ops",
            "chart-kernels",
            "chart-ranks",
        ]
        assert "GPU memory" in page.locator("#not-shown").inner_text()  # a CPU run: omitted with a note
        for i in range(charts.count()):
            assert charts.nth(i).locator("svg.tm-chart").count() >= 1, charts.nth(i).get_attribute("data-figure")
        # The heatmap decoded its bytes into a parameter × step grid.
        assert page.locator("[data-figure=chart-grad-heatmap]").get_attribute("data-grid") == "12x300"
        # A finding's link leads to the chart that shows it.
        page.locator("#findings a[href='#chart-grad-norm']").first.click()
        assert page.evaluate("location.hash") == "#chart-grad-norm"
        # Drawing finished and said so (how long it took is a benchmark's business, not a test's).
        assert page.evaluate("performance.getEntriesByName('tracemortem:draw-end').length") == 1
        ARTIFACTS.mkdir(exist_ok=True)
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    finally:
        visit.close()


def test_names_from_the_data_never_run_as_script(browser, tmp_path):
    names = [f"{HOSTILE}.{i}" for i in range(4)]
    analysis = make_analysis(names=names, op_names=[HOSTILE, "aten::mm"])
    path = _write(tmp_path, analysis, "hostile.html")
    html = path.read_text(encoding="utf-8")
    assert "<img src=x" not in html and "</script><img" not in html
    visit = Visit(browser, path)
    try:
        page = visit.page
        visit.settle()  # let any injected handler (onerror, onload, a timer) run
        assert page.evaluate("window.__pwned") is None
        assert not any("PWNED" in text for _, text in visit.console)
        assert visit.page_errors == [] and visit.blocked == []
        assert page.locator("img").count() == 0
        # Shown as text, exactly: in the findings, the tables and the chart labels.
        assert HOSTILE in page.locator("#findings").inner_text()
        assert HOSTILE in page.locator("#ops").inner_text()
        labels = page.locator("#chart-ops .ytick text").all_text_contents()
        assert any(label.startswith("</script><img src=x onerror=") for label in labels), labels
        assert "{{ 7*7 }}" in page.locator("#findings").inner_text()
    finally:
        visit.close()


def test_findings_and_tables_read_without_javascript(browser, tmp_path):
    path = _write(tmp_path, make_analysis(), "nojs.html")
    visit = Visit(browser, path, javascript=False)
    try:
        page = visit.page
        assert visit.blocked == []
        findings = page.locator("#findings li.finding")
        assert findings.count() == 5
        assert findings.first.is_visible()
        assert "nonfinite-gradient" in findings.first.inner_text()
        assert page.locator("#ops table").is_visible()
        assert "aten::mm" in page.locator("#ops table").inner_text()
        assert page.get_by_text("Charts need JavaScript").is_visible()
        assert page.locator("svg.tm-chart").count() == 0
    finally:
        visit.close()


def test_a_recorded_run_with_hostile_parameter_names(browser, tmp_path):
    pytest.importorskip("torch")
    from report_helpers import HOSTILE_MODULE, recorded_analysis

    analysis = recorded_analysis(tmp_path / "run")
    path = _write(tmp_path, analysis, "recorded.html")
    assert "<img src=x" not in path.read_text(encoding="utf-8")
    visit = Visit(browser, path)
    try:
        page = visit.page
        assert visit.blocked == [] and visit.page_errors == []
        assert [m for m in visit.console if m[0] in ("error", "warning")] == []
        assert page.evaluate("window.__pwned") is None and page.locator("img").count() == 0
        # A long label is shortened to fit; its full name is the label's hover title.
        labels = page.locator("#chart-grad-heatmap .ytick title").all_text_contents()
        assert f"{HOSTILE_MODULE}.weight" in labels and "embed.weight" in labels
        assert page.locator("#findings code.rule").all_text_contents()[:2] == ["nonfinite-gradient", "nonfinite-loss"]
    finally:
        visit.close()
