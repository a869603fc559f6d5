"""The HTML report on a phone, in dark mode, on paper and from the keyboard, and its charts'
controls (log toggle, timeline hover and zoom), in Debian's Chromium via Playwright."""

from __future__ import annotations

from pathlib import Path

import pytest

from report_helpers import Visit, make_analysis
from trace_helpers import REAL_TRACES
from tracemortem import analyze, report

pytestmark = pytest.mark.browser

SAMPLES = Path(__file__).resolve().parents[1] / "sample_traces"
REAL_GPU = REAL_TRACES / "nccl_a100"


@pytest.fixture(scope="module")
def sample_report(tmp_path_factory) -> Path:
    """The exploding sample: a real CPU run with a profiler trace, so it has a timeline too."""
    path = tmp_path_factory.mktemp("layout") / "exploding.html"
    path.write_text(report.render(analyze(SAMPLES / "exploding"), "html"), encoding="utf-8")
    return path


def _width(visit: Visit) -> int:
    return visit.page.evaluate("Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)")


def test_a_phone_wide_screen_never_scrolls_sideways(browser, sample_report, tmp_path):
    wide_names = make_analysis(names=["encoder.layers.11.self_attention.query_key_value.weight" * 3, "b", "c"])
    other = tmp_path / "long-names.html"
    other.write_text(report.render(wide_names, "html"), encoding="utf-8")
    for path in (sample_report, other):
        visit = Visit(browser, path, width=390)
        try:
            assert _width(visit) <= 390, path.name
            assert visit.page.locator("#verdict").is_visible()
        finally:
            visit.close()


def test_dark_mode_changes_the_page(browser, sample_report):
    colours = {}
    for scheme in ("light", "dark"):
        visit = Visit(browser, sample_report, color_scheme=scheme)
        try:
            colours[scheme] = visit.page.evaluate(
                "[getComputedStyle(document.body).backgroundColor, getComputedStyle(document.body).color,"
                " getComputedStyle(document.querySelector('.chart')).backgroundColor]"
            )
        finally:
            visit.close()
    assert all(a != b for a, b in zip(colours["light"], colours["dark"])), colours


def test_printing_keeps_each_chart_on_one_page(browser, sample_report):
    visit = Visit(browser, sample_report)
    try:
        page = visit.page
        page.emulate_media(media="print")
        rules = page.evaluate(
            "[...document.querySelectorAll('.chart, .finding')].map(e => getComputedStyle(e).breakInside)"
        )
        assert rules and set(rules) == {"avoid"}
        assert page.evaluate("getComputedStyle(document.querySelector('.toc')).display") == "none"
        assert len(page.pdf(format="A4")) > 10_000  # it prints
    finally:
        visit.close()


def test_navigation_and_chart_controls_are_reachable_by_keyboard(browser, sample_report):
    visit = Visit(browser, sample_report)
    try:
        page = visit.page
        page.keyboard.press("Tab")
        first = page.evaluate("document.activeElement.getAttribute('href')")
        assert first == "#run"
        # Tab through the contents until the Findings link, then follow it.
        for _ in range(20):
            if page.evaluate("document.activeElement.getAttribute('href')") == "#findings":
                break
            page.keyboard.press("Tab")
        page.keyboard.press("Enter")
        assert page.evaluate("location.hash") == "#findings"
        # The loss chart's log toggle is a real button: focus it and press Space.
        toggle = page.locator("#chart-loss .tm-toolbar button", has_text="Log scale")
        toggle.focus()
        page.keyboard.press("Space")
        assert toggle.get_attribute("aria-pressed") == "true"
        ticks = page.locator("#chart-loss .ytick text").all_text_contents()
        assert ticks and all(t.startswith("1e") or t in ("1", "10", "100", "0.1", "0.01", "1000") for t in ticks), ticks
    finally:
        visit.close()


def test_the_timeline_shows_names_on_hover_and_zooms(browser, sample_report):
    visit = Visit(browser, sample_report)
    try:
        page = visit.page
        chart = page.locator("#chart-timeline-slowest")
        assert chart.count() == 1
        # linked from the verdict, with the trace range beside it
        assert page.locator("#verdict a[href='#chart-timeline-slowest']").count() == 1
        assert "ProfilerStep#" in chart.locator(".trace-range").inner_text()
        bar = chart.locator(".events rect").first
        bar.hover()
        tip = page.locator(".tm-tip")
        assert tip.is_visible() and " ms, from " in tip.inner_text()
        before = chart.locator(".xtick text").all_text_contents()
        box = chart.locator(".overlay").bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + 5)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + 5, steps=4)
        page.mouse.up()
        zoomed = chart.locator(".xtick text").all_text_contents()
        assert zoomed != before
        chart.get_by_role("button", name="Reset zoom").click()
        assert chart.locator(".xtick text").all_text_contents() == before
    finally:
        visit.close()


@pytest.mark.skipif(not REAL_GPU.exists(), reason="shared/real_traces not present")
def test_a_gpu_trace_report_has_cpu_and_gpu_lanes(browser, tmp_path):
    path = tmp_path / "gpu.html"
    path.write_text(report.render(analyze(REAL_GPU), "html"), encoding="utf-8")
    visit = Visit(browser, path, width=390)
    try:
        page = visit.page
        lanes = page.locator("#chart-timeline-slowest .ytick title").all_text_contents()
        assert any(lane.startswith("CPU thread") for lane in lanes) and any(
            lane.startswith("GPU stream") for lane in lanes
        )
        assert _width(visit) <= 390
        assert visit.page_errors == []
    finally:
        visit.close()
