"""`summary`, `ops` and `diff` speak the same formats as `report`, and `diff --fail-on` gates
CI on new findings; run as a user would, on the bundled sample runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[1] / "sample_traces"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tracemortem.cli", *args], capture_output=True, text=True)


def test_summary_in_each_format():
    text = _cli("summary", str(SAMPLES / "exploding"))
    assert text.returncode == 0 and text.stdout.splitlines()[1].startswith("Gradients exploded at step 92")
    md = _cli("summary", str(SAMPLES / "exploding"), "--format", "md")
    assert md.stdout.startswith("## tracemortem report") and "- What to try: " in md.stdout
    doc = json.loads(_cli("summary", str(SAMPLES / "exploding"), "--format", "json").stdout)
    assert doc["findings"][0]["rule"] == "exploding-gradient"


def test_ops_in_each_format():
    run = str(SAMPLES / "exploding")
    text = _cli("ops", run, "--top", "2").stdout
    md = _cli("ops", run, "--top", "2", "--format", "md").stdout
    doc = json.loads(_cli("ops", run, "--top", "2", "--format", "json").stdout)
    assert len(doc["ops"]) == 2 and doc["kernels"] == []
    first = doc["ops"][0]
    assert first["self_ns"] >= doc["ops"][1]["self_ns"]  # longest first, raw numbers with their unit
    assert first["name"] in text and md.startswith("### Top ops") and md.count("\n| ") == 3


def test_diff_fails_on_new_errors_only_when_asked():
    healthy, exploding = str(SAMPLES / "healthy"), str(SAMPLES / "exploding")
    assert _cli("diff", healthy, exploding).returncode == 0
    gated = _cli("diff", healthy, exploding, "--fail-on", "error", "--format", "json")
    assert gated.returncode == 1 and any(f["severity"] == "error" for f in json.loads(gated.stdout)["new_findings"])
    assert _cli("diff", exploding, exploding, "--fail-on", "warning").returncode == 0  # nothing new


def test_colour_only_on_a_terminal_without_no_color():
    from tracemortem.report.terminal import colourize, use_colour

    assert use_colour(True, {}) and not use_colour(False, {})
    assert not use_colour(True, {"NO_COLOR": "1"}) and not use_colour(True, {"TERM": "dumb"})
    text = "tracemortem summary\nGradients exploded.\n\nERROR   exploding-gradient  step 92\n        an ERROR inside\n"
    coloured = colourize(text)
    assert "\x1b[31m\x1b[1mERROR\x1b[0m   exploding-gradient" in coloured and "an ERROR inside" in coloured
    assert "\x1b[1mGradients exploded.\x1b[0m" in coloured
    # piped (not a terminal): no escape codes at all
    assert "\x1b" not in _cli("summary", str(SAMPLES / "exploding")).stdout


def test_an_unknown_config_key_is_warned_about(tmp_path):
    (tmp_path / "tracemortem.toml").write_text('formt = "md"\nfail-on = "never"\n')
    result = subprocess.run(
        [sys.executable, "-m", "tracemortem.cli", "summary", str(SAMPLES / "healthy")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0
    assert "unknown config key 'formt'" in result.stderr and "fail-on" not in result.stderr.split("(known")[0]


def test_diff_as_a_self_contained_html_page():
    result = _cli("diff", str(SAMPLES / "healthy"), str(SAMPLES / "exploding"), "--format", "html")
    page = result.stdout
    assert result.returncode == 0 and page.startswith("<!DOCTYPE html>")
    assert "<h2>New findings</h2>" in page and "exploding-gradient" in page
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org", "")


def test_quiet_prints_nothing_but_the_document_and_verbose_says_what_it_does(tmp_path):
    out = str(tmp_path / "r.md")
    quiet = _cli("-q", "report", str(SAMPLES / "healthy"), "-o", out)
    assert quiet.returncode == 0 and quiet.stderr == "" and Path(out).read_text().startswith("## tracemortem report")
    normal = _cli("report", str(SAMPLES / "healthy"), "-o", out)
    assert normal.stderr.startswith("tracemortem: wrote ")
    verbose = _cli("-v", "report", str(SAMPLES / "healthy"), "-o", out)
    assert "tracemortem: reading rank 0" in verbose.stderr and "tracemortem: wrote " in verbose.stderr
    assert "\x1b" not in verbose.stderr and "\r" not in verbose.stderr  # a log file, not a terminal
