"""The CLI as a user runs it, for the hostile-input suites: in-process through click's runner on
the real `main`, or as `python -m tracemortem.cli` where the exact stderr matters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner

from tracemortem.cli import main


def _refuse(constant: str) -> None:
    raise ValueError(f"not JSON: {constant}")


def strict_json(text: str) -> dict:
    """Parse as RFC 8259 JSON: Python's json would accept NaN, Infinity and -Infinity."""
    return json.loads(text, parse_constant=_refuse)


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def doc(self) -> dict:
        return strict_json(self.stdout)

    def rules(self) -> list[str]:
        return [f["rule"] for f in self.doc["findings"]]

    def notes(self, rule: str) -> list[dict]:
        return [f for f in self.doc["findings"] if f["rule"] == rule]


def cli(*args: str, env: dict[str, str] | None = None, process: bool = False) -> Outcome:
    """Run the CLI in-process (click's runner: an exception escaping it is kept, not printed) or,
    with `process`, as `python -m tracemortem.cli`, where stderr is exactly what a user sees."""
    if process:
        proc = subprocess.run(
            [sys.executable, "-m", "tracemortem.cli", *args],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, **(env or {})},
            timeout=600,  # a hang guard only
        )
        out = Outcome(proc.returncode, proc.stdout, proc.stderr)
    else:
        result = CliRunner().invoke(main, list(args), env=env)
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        out = Outcome(result.exit_code, result.stdout, result.stderr)
    # The contract for every input: one clear line per problem, no traceback, no Rust panic.
    assert "Traceback" not in out.stderr and "panicked" not in out.stderr, out.stderr
    assert len(out.stderr.splitlines()) <= 4, out.stderr
    assert out.code != 4, out.stderr  # internal error: a bug, whatever the input
    return out


def report(path: Path, *extra: str, env: dict[str, str] | None = None, process: bool = False) -> Outcome:
    out = cli("report", str(path), "--format", "json", "-o", "-", *extra, env=env, process=process)
    if out.code in (0, 1):
        assert out.doc["tool"] == "tracemortem"
    else:
        assert out.stdout == ""  # only the requested document goes to stdout, and there is none
    return out
