"""The analyzer on an interpreter without `tomllib` (Python 3.10): the package falls back to tomli.

CI also runs the torch-free part of the suite on a real Python 3.10 where one is installed; this
test keeps the fallback honest on every interpreter by hiding `tomllib` from a fresh process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parents[1] / "sample_traces"

# Runs before anything imports tomllib: a finder that refuses it, as a 3.10 interpreter would.
_WITHOUT_TOMLLIB = """
import sys
class _NoTomllib:
    def find_spec(self, name, path=None, target=None):
        if name == "tomllib":
            raise ModuleNotFoundError("No module named 'tomllib'", name="tomllib")
        return None
sys.meta_path.insert(0, _NoTomllib())
sys.modules.pop("tomllib", None)
from tracemortem.cli import main
sys.argv = ["tracemortem", *sys.argv[1:]]
main()
"""


def _summary_without_tomllib(cwd: Path) -> subprocess.CompletedProcess[str]:
    """`tracemortem summary` on the healthy sample, from `cwd` (where its config file lies)."""
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_TOMLLIB, "summary", str(SAMPLES / "healthy")],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
        timeout=300,
    )


def test_summary_works_where_tomllib_is_missing(tmp_path: Path) -> None:
    pytest.importorskip("tomli")
    (tmp_path / "tracemortem.toml").write_text("[loss-spike]\nwindow = 64\n")  # the parser really runs
    proc = _summary_without_tomllib(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "run directory" in proc.stdout


def test_a_bad_config_file_is_still_a_usage_error_without_tomllib(tmp_path: Path) -> None:
    pytest.importorskip("tomli")
    (tmp_path / "tracemortem.toml").write_text("[loss-spike\n")
    proc = _summary_without_tomllib(tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("tracemortem: error: cannot read") and "Traceback" not in proc.stderr
