"""The body of `tracemortem replay` (cli.py stays thin): check torch is there, replay, write
origin.json, print what was found (docs/replay.md)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import click

from ..errors import ConfigError, InputError


def run_replay(
    run: str, model_spec: str, loss_spec: str | None, rank: int | None, device: str | None, output: str | None
) -> int:
    if importlib.util.find_spec("torch") is None:
        raise ConfigError("replay needs torch: pip install 'tracemortem[record]'")
    from ..detect.health_origin import origin_finding
    from ..load.origin import clean_origin
    from .offline import replay_run

    try:
        origin, written = replay_run(
            Path(run), model_spec, loss_spec, rank, device, Path(output) if output is not None else None
        )
    except OSError as exc:
        raise InputError(f"cannot write origin.json: {type(exc).__name__}: {exc}") from None
    finding = origin_finding(clean_origin(origin), origin.get("rank"))
    click.echo(f"{finding.title}\n{finding.message}\nsuggestion: {finding.suggestion}")
    click.echo(f"tracemortem: wrote {written}", err=True)
    return 0
