"""The `tracemortem` command: a thin click layer over `analyze()` and the reporters.

Exit codes (README, docs/robustness.md): 0 fine; 1 findings at or above --fail-on; 2 bad usage; 3 unreadable
input; 4 internal error. Only the requested document goes to stdout; warnings and progress go
to stderr, one line per problem, and `--debug` shows tracebacks.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .allocator import return_freed_pages
from .config import Config
from .errors import ConfigError, InputError, TracemortemError
from .findings import SEVERITIES, at_or_above
from .limits import MAX_REPORT_BYTES
from .progress import Progress, finish, silent, terminal_progress
from .sanitize import terminal_text
from .version import __version__

FORMATS = ("html", "md", "json")  # the documents `report` writes (see report.REPORTERS)


def _one_line(text: object) -> str:
    """A message for stderr: it quotes paths and names from the input, so secrets are redacted
    and control, escape and bidi characters shown escaped (docs/robustness.md)."""
    from .report.redact import redact_secrets

    return terminal_text(redact_secrets(str(text).strip()))


def _verbosity() -> int:
    """-1 with `-q` (errors only), 1 with `-v` (progress lines even when stderr is not a terminal), else 0."""
    ctx = click.get_current_context(silent=True)
    params = ctx.find_root().params if ctx is not None else {}
    return -1 if params.get("quiet") else 1 if params.get("verbose") else 0


def _progress() -> Progress:
    if _verbosity() < 0:
        return silent
    if _verbosity() > 0 and not sys.stderr.isatty():
        return lambda message: click.echo(f"tracemortem: {message}", err=True)
    return terminal_progress()


def _run(debug: bool, body: Callable[[], int]) -> None:
    """Run a command body, mapping every failure to one stderr line and an exit code."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code = body()
        for warning in caught if _verbosity() >= 0 else ():
            click.echo(f"tracemortem: warning: {_one_line(warning.message)}", err=True)
    except click.exceptions.Exit:
        raise
    except click.ClickException:
        raise
    except TracemortemError as exc:
        if debug:
            raise
        click.echo(f"tracemortem: error: {_one_line(exc)}", err=True)
        code = exc.exit_code
    except KeyboardInterrupt:
        click.echo("tracemortem: interrupted", err=True)
        code = 130
    except BrokenPipeError:
        code = 0
    except MemoryError:
        click.echo("tracemortem: internal error: out of memory", err=True)
        code = 4
    except Exception as exc:  # the one place an unexpected error becomes a clean exit
        if debug:
            raise
        click.echo(
            f"tracemortem: internal error: {type(exc).__name__}: {_one_line(exc)} (run with --debug for the traceback)",
            err=True,
        )
        code = 4
    sys.exit(code)


def _load_config(sets: tuple[str, ...]) -> Config:
    from .config import OPTIONS

    config = Config.load(Path.cwd(), sets)
    for key in config.unknown_options() if _verbosity() >= 0 else ():
        click.echo(
            f"tracemortem: warning: unknown config key '{_one_line(key)}' ignored (known: {', '.join(OPTIONS)}, "
            "and [rule] tables of thresholds)",
            err=True,
        )
    return config


def _analyze(path: str, config: Config, redact: bool, scale: dict[str, Any] | None = None):
    from .analysis import analyze
    from .report.redact import redact_analysis
    from .scale import engine_from_options

    options = scale or {}
    engine = engine_from_options(options.get("engine", "local"), options.get("jobs"), options.get("address"))
    progress = _progress()
    try:
        # Status lines name input files: shown like every other stderr line.
        analysis = analyze(path, config, progress=lambda message: progress(_one_line(message)), engine=engine)
    finally:
        finish(progress)
        engine.close()
    return redact_analysis(analysis, pseudonymize=redact)


def _fail_code(analysis, fail_on: str) -> int:
    if fail_on == "never":
        return 0
    return 1 if at_or_above(analysis.findings, fail_on) else 0


def _option(config: Config, name: str, given: Any, default: Any) -> Any:
    """Command-line value, else the config file's, else the built-in default."""
    if given is not None:
        return given
    return config.options.get(name, default)


common = [
    click.option(
        "--set",
        "sets",
        multiple=True,
        metavar="RULE.PARAM=VALUE",
        help="Override a threshold (repeatable); see docs/thresholds.md.",
    ),
    click.option(
        "--redact",
        is_flag=True,
        help="Also replace usernames, hostnames and home paths with stable pseudonyms (secrets are always redacted).",
    ),
    click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors."),
]


def _with(options: list[Any]) -> Any:
    """A decorator that applies `options` in the order they are listed."""

    def apply(func: Any) -> Any:
        for decorator in reversed(options):
            func = decorator(func)
        return func

    return apply


with_common = _with(common)


scale_options = [
    click.option(
        "--jobs",
        type=click.IntRange(min=1),
        default=None,
        help="Ranks analysed at once, each in its own process (default: the number of cores); docs/scale.md.",
    ),
    click.option(
        "--engine",
        type=click.Choice(("local", "ray")),
        default="local",
        show_default=True,
        help="Where the per-rank work runs: here, or as Ray tasks (pip install 'tracemortem[ray]').",
    ),
    click.option("--address", default=None, help="With --engine ray: the Ray cluster to use ('auto', or host:port)."),
]


with_scale = _with(scale_options)  # --jobs, --engine, --address


def _scale(jobs: int | None, engine: str, address: str | None) -> dict[str, Any]:
    return {"jobs": jobs, "engine": engine, "address": address}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tracemortem")
@click.option(
    "-q", "--quiet", is_flag=True, help="Print only errors on stderr (no progress, warnings or summary line)."
)
@click.option("-v", "--verbose", is_flag=True, help="Print progress on stderr even when it is not a terminal.")
def main(quiet: bool, verbose: bool) -> None:
    """Post-mortem analysis of PyTorch training runs.

    PATH is a run directory written by tracemortem.Recorder, one rank directory, one
    torch.profiler chrome trace (.json / .json.gz), a directory of traces, or a TensorBoard,
    Hugging Face Trainer or Lightning CSV log (docs/inputs.md).
    """
    return_freed_pages()


@main.command()
@click.argument("path", type=click.Path(path_type=str))
@click.option(
    "-o",
    "--output",
    type=str,
    default=None,
    help="Output file; '-' for stdout. Default: tracemortem-report.<ext> in the current directory.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="Document format (default: html, or from the output file's extension).",
)
@click.option(
    "--fail-on",
    type=click.Choice(SEVERITIES[:2] + ("never",)),
    default=None,
    help="Exit 1 when a finding at or above this severity exists (default: error).",
)
@with_common
@with_scale
def report(
    path: str,
    output: str | None,
    fmt: str | None,
    fail_on: str | None,
    sets,
    redact: bool,
    debug: bool,
    jobs: int | None,
    engine: str,
    address: str | None,
) -> None:
    """Render the report (HTML, Markdown or JSON) for PATH."""

    def body() -> int:
        from .report import REPORTERS

        config = _load_config(sets)
        chosen = fmt or _format_from_name(output) or _option(config, "format", None, "html")
        if chosen not in FORMATS:
            raise ConfigError(f"unknown format {chosen!r} (choose from {', '.join(FORMATS)})")
        threshold = _option(config, "fail-on", fail_on, "error")
        if threshold not in ("error", "warning", "never"):
            raise ConfigError(f"fail-on must be error, warning or never, not {threshold!r}")
        reporter = REPORTERS[chosen]
        target = output or f"tracemortem-report{reporter.suffix}"
        if target != "-":
            _refuse_overwriting_input(Path(target), Path(path))
        analysis = _analyze(path, config, redact, _scale(jobs, engine, address))
        document = reporter.render(analysis).encode("utf-8")
        if len(document) > MAX_REPORT_BYTES.value():
            raise InputError(
                f"the {chosen} report would be {len(document)} bytes, over the {MAX_REPORT_BYTES.value()}-byte "
                f"limit ({MAX_REPORT_BYTES.env}); try --format md"
            )
        if target == "-":
            click.echo(document, nl=False)
        else:
            _write_report(Path(target), document)
            if _verbosity() >= 0:
                click.echo(f"tracemortem: wrote {_one_line(target)} ({_counts(analysis)})", err=True)
        return _fail_code(analysis, threshold)

    _run(debug, body)


def _refuse_overwriting_input(target: Path, source: Path) -> None:
    """-o must not name the input, or an existing file inside an input directory."""
    try:
        target, source = target.resolve(), source.resolve()
    except (OSError, RuntimeError):  # a link loop: the write below reports it
        return
    if target == source or (target.exists() and source.is_dir() and source in target.parents):
        raise ConfigError(f"{target}: refusing to overwrite the input with the report; choose another -o")


def _write_report(target: Path, document: bytes) -> None:
    """Atomically: a failed write leaves no partial file (nor a half-replaced earlier report)."""
    from .format import write_bytes_atomic

    if not target.parent.is_dir():  # a typo in the folder is a usage error, not a folder to create
        raise ConfigError(f"{target}: cannot write the report (no such folder: {target.parent})")
    try:
        write_bytes_atomic(target, document)
    except OSError as exc:  # no such folder, no permission, a read-only or full disk
        raise ConfigError(f"{target}: cannot write the report ({exc.strerror or exc})") from None


def _format_from_name(output: str | None) -> str | None:
    if not output or output == "-":
        return None
    suffix = Path(output).suffix.lower().lstrip(".")
    return {"html": "html", "htm": "html", "md": "md", "markdown": "md", "json": "json"}.get(suffix)


def _counts(analysis) -> str:
    parts = [f"{sum(f.severity == s for f in analysis.findings)} {s}" for s in SEVERITIES]
    return ", ".join(parts)


@main.command()
@click.argument("path", type=click.Path(path_type=str))
@click.option(
    "--fail-on",
    type=click.Choice(SEVERITIES[:2] + ("never",)),
    default=None,
    help="Exit 1 when a finding at or above this severity exists (default: never).",
)
@click.option("--format", "fmt", type=click.Choice(("text", "md", "json")), default="text", show_default=True)
@with_common
@with_scale
def summary(
    path: str,
    fail_on: str | None,
    fmt: str,
    sets,
    redact: bool,
    debug: bool,
    jobs: int | None,
    engine: str,
    address: str | None,
) -> None:
    """Print the findings for PATH in the terminal."""

    def body() -> int:
        from .report import render
        from .report.terminal import colourize, use_colour

        config = _load_config(sets)
        analysis = _analyze(path, config, redact, _scale(jobs, engine, address))
        document = render(analysis, fmt)
        if fmt == "text" and use_colour(sys.stdout.isatty(), os.environ):
            document = colourize(document)
        click.echo(document, nl=False)
        return _fail_code(analysis, _option(config, "fail-on", fail_on, "never"))

    _run(debug, body)


@main.command()
@click.argument("path", type=click.Path(path_type=str))
@click.option(
    "--top", type=click.IntRange(min=1), default=20, show_default=True, help="How many ops and kernels to list."
)
@click.option("--format", "fmt", type=click.Choice(("text", "md", "json")), default="text", show_default=True)
@with_common
@with_scale
def ops(
    path: str,
    top: int,
    fmt: str,
    sets,
    redact: bool,
    debug: bool,
    jobs: int | None,
    engine: str,
    address: str | None,
) -> None:
    """Print the top ops and GPU kernels of PATH's profiler traces."""

    def body() -> int:
        from .report import render_ops

        analysis = _analyze(path, _load_config(sets), redact, _scale(jobs, engine, address))
        click.echo(render_ops(analysis, top, fmt), nl=False)
        return 0

    _run(debug, body)


@main.command()
@click.argument("baseline", type=click.Path(path_type=str))
@click.argument("candidate", type=click.Path(path_type=str))
@click.option("--format", "fmt", type=click.Choice(("text", "md", "json", "html")), default="text", show_default=True)
@click.option(
    "--top", type=click.IntRange(min=1), default=10, show_default=True, help="How many ops and kernels to list."
)
@click.option(
    "--fail-on",
    type=click.Choice(SEVERITIES[:2] + ("never",)),
    default="never",
    show_default=True,
    help="Exit 1 when the candidate has a new finding at or above this severity.",
)
@with_common
def diff(baseline: str, candidate: str, fmt: str, top: int, fail_on: str, sets, redact: bool, debug: bool) -> None:
    """Compare two runs or traces: what got slower, which findings are new."""

    def body() -> int:
        from .compare import compare
        from .findings import SEVERITY_RANK
        from .report.comparison import render_diff

        config = _load_config(sets)
        result = compare(_analyze(baseline, config, redact), _analyze(candidate, config, redact), top)
        click.echo(render_diff(result, fmt), nl=False)
        if fail_on == "never":
            return 0
        worst = SEVERITY_RANK[fail_on]
        return 1 if any(SEVERITY_RANK[f["severity"]] <= worst for f in result["new_findings"]) else 0

    _run(debug, body)


@main.command()
@click.argument("run", type=click.Path(path_type=str))
@click.option(
    "--model",
    "model_spec",
    required=True,
    metavar="MODULE:FACTORY",
    help="Builds the model: a .py path or a module name on sys.path, then a function taking no arguments.",
)
@click.option(
    "--loss",
    "loss_spec",
    default=None,
    metavar="MODULE:FUNCTION",
    help="fn(model, batch) -> loss. Default: the model's output if scalar, else its .loss.",
)
@click.option("--rank", type=click.IntRange(min=0), default=None, help="Rank whose snapshot to replay.")
@click.option("--device", type=click.Choice(("cpu", "cuda")), default=None, help="Default: where it was recorded.")
@click.option("-o", "--output", default=None, help="Write origin.json here instead of into the snapshot folder.")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def replay(
    run: str,
    model_spec: str,
    loss_spec: str | None,
    rank: int | None,
    device: str | None,
    output: str | None,
    debug: bool,
) -> None:
    """Re-run RUN's failing step from its snapshot and name the module and op where the first
    NaN/Inf was born (runs the code named by --model and --loss; see docs/replay.md)."""

    def body() -> int:
        from .replay.command import run_replay

        return run_replay(run, model_spec, loss_spec, rank, device, output)

    _run(debug, body)


if __name__ == "__main__":  # pragma: no cover
    main()
