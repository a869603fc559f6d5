"""`tracemortem diff` on real GPU traces: a slower candidate is named as such, op by op."""

import json
import subprocess
import sys

import pytest

from trace_helpers import REAL_TRACES

CONTROL, TEST = REAL_TRACES / "diff_control_a100", REAL_TRACES / "diff_test_v100"

pytestmark = pytest.mark.skipif(not CONTROL.is_dir() or not TEST.is_dir(), reason="shared/real_traces not present")


def _diff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracemortem.cli", "diff", *args], capture_output=True, text=True)


def test_slower_candidate_is_reported_with_the_ops_that_grew():
    result = _diff(str(CONTROL), str(TEST), "--format", "json", "--top", "5")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["step_time_s"]["ratio"] > 1.2
    ops = report["ops"]
    assert ops and all(row["delta_us"] > 0 for row in ops)
    assert [row["delta_us"] for row in ops] == sorted((row["delta_us"] for row in ops), reverse=True)
    assert ops[0]["name"] == "cudaMemcpyAsync"
    assert any(row["name"].startswith("Memcpy DtoD") for row in report["kernels"])


def test_a_trace_against_itself_has_no_changes():
    result = _diff(str(CONTROL), str(CONTROL), "--format", "json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["step_time_s"]["ratio"] == 1.0
    assert report["ops"] == [] and report["kernels"] == []
    assert report["new_findings"] == [] and report["resolved_findings"] == []


def test_text_and_markdown_name_the_change():
    text = _diff(str(CONTROL), str(TEST)).stdout
    assert "Median step time" in text and "cudaMemcpyAsync" in text
    markdown = _diff(str(CONTROL), str(TEST), "--format", "md").stdout
    assert markdown.startswith("## tracemortem diff") and "| cudaMemcpyAsync |" in markdown


def test_unreadable_candidate_is_exit_3():
    result = _diff(str(CONTROL), "/nonexistent/trace.json")
    assert result.returncode == 3 and "Traceback" not in result.stderr
