"""The bundled sample runs (the README's main command) say what each of them is about."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parents[1] / "sample_traces"


def _json_report(sample: str) -> tuple[int, dict]:
    result = subprocess.run(
        [sys.executable, "-m", "tracemortem.cli", "report", str(SAMPLES / sample), "--format", "json", "-o", "-"],
        capture_output=True,
        text=True,
    )
    assert "Traceback" not in result.stderr
    return result.returncode, json.loads(result.stdout)


def _rules(report: dict, *severities: str) -> set[str]:
    return {f["rule"] for f in report["findings"] if f["severity"] in severities}


def test_healthy_sample_has_no_warning_and_has_profiler_timings():
    code, report = _json_report("healthy")
    assert code == 0
    assert _rules(report, "error", "warning") == set()
    assert report["run"]["ranks"][0]["steps"] > 0


def test_exploding_sample_finds_the_explosion_then_the_first_nonfinite_step():
    code, report = _json_report("exploding")
    assert code == 1  # errors present, default --fail-on error
    by_rule = {f["rule"]: f for f in report["findings"]}
    assert {"exploding-gradient", "nonfinite-gradient"} <= _rules(report, "error")
    assert by_rule["exploding-gradient"]["step"] < by_rule["nonfinite-gradient"]["step"]
    assert "snapshot" in by_rule["nonfinite-gradient"]["evidence"]


def test_vanishing_sample_names_the_first_layers():
    _, report = _json_report("vanishing")
    vanishing = [f for f in report["findings"] if f["rule"] == "vanishing-gradient"]
    assert vanishing and vanishing[0]["severity"] in ("error", "warning")
    assert vanishing[0]["subject"].startswith("0.")
    # Nothing else: in particular the first step's start-up time is not a slow step.
    assert _rules(report, "error", "warning") == {"vanishing-gradient"}


@pytest.mark.parametrize("sample", ["healthy", "exploding", "vanishing"])
def test_sample_html_report_is_self_contained_and_small(tmp_path, sample):
    target = tmp_path / "report.html"
    result = subprocess.run(
        [sys.executable, "-m", "tracemortem.cli", "report", str(SAMPLES / sample), "-o", str(target)],
        capture_output=True,
        text=True,
    )
    assert result.returncode in (0, 1), result.stderr
    html = target.read_text()
    assert target.stat().st_size <= 1_500_000
    # Everything inline: no external script or stylesheet (the browser tests prove no request is made).
    assert "<script src=" not in html and '<link rel="stylesheet"' not in html
