"""Fixtures shared by several test files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trace_helpers import record_cpu_trace

CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium driven by Playwright. Skips when either is missing, unless
    TRACEMORTEM_REQUIRE_BROWSER=1 (CI), where a missing browser must fail, not pass silently."""
    required = os.environ.get("TRACEMORTEM_REQUIRE_BROWSER") == "1"
    missing = None
    if not os.path.exists(CHROMIUM):
        missing = f"needs Debian chromium at {CHROMIUM} (apt-get install -y chromium)"
    else:
        try:
            from playwright import sync_api
        except ImportError:
            missing = "needs playwright (pip install playwright)"
    if missing:
        if required:
            pytest.fail(f"TRACEMORTEM_REQUIRE_BROWSER=1 but the browser is unavailable: {missing}")
        pytest.skip(missing)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="session")
def cpu_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real torch.profiler trace of a small CPU training loop (skips without torch)."""
    return record_cpu_trace(tmp_path_factory.mktemp("cpu") / "trace.json")
