"""The analyzer side must import and run without torch (docs/architecture.md)."""

import subprocess
import sys

BLOCK_TORCH = "import sys; sys.modules['torch'] = None\n"


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + code], capture_output=True, text=True)


def test_analyzer_modules_import_without_torch():
    result = _python(
        "import tracemortem, tracemortem.analysis, tracemortem.cli, tracemortem.format\n"
        "import tracemortem.load.traces, tracemortem.load.run, tracemortem.timing\n"
        "import tracemortem.detect.health, tracemortem.detect.perf, tracemortem.report\n"
        "print(tracemortem.__version__, tracemortem.analyze.__name__)"
    )
    assert result.returncode == 0, result.stderr
    assert "analyze" in result.stdout


def test_recorder_import_needs_torch_and_says_so():
    result = _python("import tracemortem\ntracemortem.Recorder")
    assert result.returncode != 0
    assert "torch" in result.stderr
