"""Budgets for what one input may make the analyzer do (docs/robustness.md, "Budgets").

Each limit has a default that leaves room for the largest real runs and an environment variable
that overrides it (a service that opens strangers' files may want stricter ones; tests lower
them). Going over a limit gives an `input-error` finding (the excess is skipped) or, where
nothing useful would remain, a one-line error; never a crash or an unbounded allocation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class Limit:
    env: str  # the environment variable that overrides the default
    default: int
    doc: str

    def value(self) -> int:
        """The limit in force, read at call time."""
        text = os.environ.get(self.env, "").strip()
        if not text:
            return self.default
        if not text.isdigit() or int(text) < 1:
            raise ConfigError(f"{self.env} must be a positive whole number, not {text!r}")
        return int(text)


LIMITS: dict[str, Limit] = {}


def limit(env: str, default: int, doc: str) -> Limit:
    LIMITS[env] = Limit(env, default, doc)
    return LIMITS[env]


# The biggest real traces reported are ~10 GB per rank; 16 GiB leaves room while stopping a bomb.
MAX_TRACE_BYTES = limit(
    "TRACEMORTEM_MAX_TRACE_BYTES", 16 * 2**30, "bytes of one trace file, uncompressed (a gzip stops inflating there)"
)
# Real traces inflate 9-30:1 (shared/real_traces); deflate can reach ~1032:1. Checked once 32 MiB
# are inflated, so a small file of any ratio is still read.
MAX_GZIP_RATIO = limit(
    "TRACEMORTEM_MAX_GZIP_RATIO",
    100,
    "uncompressed bytes per compressed byte of a gzip trace, judged past 32 MiB inflated",
)
MAX_JSON_BYTES = limit(
    "TRACEMORTEM_MAX_JSON_BYTES",
    64 * 2**20,
    "bytes of one JSON document of a run directory (manifest, meta.json, info.json)",
)
# A recorder chunk holds flush_every steps × parameters rows: 10⁶ for 10,000 parameters × 100 steps.
MAX_CHUNK_ROWS = limit(
    "TRACEMORTEM_MAX_CHUNK_ROWS",
    10_000_000,
    "rows of one Parquet chunk, read from its footer before any data (a run-length-encoded chunk "
    "of a few KB can hold 10⁸ rows)",
)
# The steps table is held in memory whole, and the report's charts read it: 4.9·10⁶ rows took
# 1.7 GB at peak for the HTML report, so 2·10⁶ (far more steps than runs record) keeps well under 2 GB.
MAX_STEPS_ROWS = limit(
    "TRACEMORTEM_MAX_STEPS_ROWS", 2_000_000, "rows of the steps table over all ranks; later chunks are skipped"
)
# The HTML report's charts need up to ~60 bytes per gradient row at peak (the update-ratio median
# holds every value): 2.5·10⁷ rows keep it under 2 GB. Raise it where memory allows.
MAX_GRADS_ROWS = limit(
    "TRACEMORTEM_MAX_GRADS_ROWS",
    25_000_000,
    "rows of the gradient table over all ranks (2,500 parameters × 10,000 steps); later chunks are skipped",
)
# Activation statistics: one row per (recorded step, module), read whole like the steps table.
MAX_ACTS_ROWS = limit(
    "TRACEMORTEM_MAX_ACTS_ROWS",
    10_000_000,
    "rows of the activation-statistics table over all ranks; later chunks are skipped",
)
MAX_PARAMETERS = limit(
    "TRACEMORTEM_MAX_PARAMETERS",
    200_000,
    "parameters named by one meta.json (the largest mixture-of-experts models have ~50,000); the rest are ignored",
)
MAX_FINDINGS_PER_RULE = limit(
    "TRACEMORTEM_MAX_FINDINGS_PER_RULE",
    50,
    "findings listed per rule, the most severe and earliest first; the rest are counted in one finding",
)
MAX_REPORT_BYTES = limit(
    "TRACEMORTEM_MAX_REPORT_BYTES", 256 * 2**20, "bytes of one written report; a larger one is refused (exit 3)"
)
