"""Named, documented thresholds and how users override them.

Every detection rule declares its thresholds with `threshold(...)` at import time. A user
overrides them with `--set rule.param=value` or in `[tool.tracemortem.<rule>]` of
pyproject.toml / `[<rule>]` of tracemortem.toml. `docs/thresholds.md` lists them all
(`python scripts/gen_threshold_docs.py` regenerates it; a test keeps it in step).
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, published as tomli
    import tomli as tomllib

from .errors import ConfigError
from .thresholds import Threshold, declared

# Tables of the config file that hold settings rather than a rule's thresholds (docs/inputs.md).
OPTION_TABLES = ("tags",)

# Modules that declare thresholds; imported before any lookup so the registry is complete.
RULE_MODULES = (
    "tracemortem.detect.health",
    "tracemortem.detect.perf",
)


def all_thresholds() -> dict[str, Threshold]:
    for module in RULE_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:  # a rule family not built yet
            if exc.name != module:
                raise
    return dict(sorted(declared().items()))


def _coerce(spec: Threshold, value: Any) -> Any:
    kind = type(spec.default)
    if isinstance(value, str) and kind is not str:
        text = value.strip().lower()
        try:
            if kind is bool:
                if text in ("1", "true", "yes", "on"):
                    return True
                if text in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            value = float(text)
        except ValueError:
            raise ConfigError(f"{spec.name}: expected {kind.__name__}, got {value!r}") from None
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"{spec.name}: expected true/false, got {value!r}")
    if kind in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"{spec.name}: expected a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{spec.name}: expected a finite number, got {value!r}")
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ConfigError(f"{spec.name}: expected an integer, got {value!r}")
    if kind in (int, float) and not spec.low <= value <= spec.high:
        raise ConfigError(f"{spec.name}: {value!r} is out of range (from {spec.low:g} to {spec.high:g})")
    return kind(value)


# Top-level keys a config file may set besides the `[rule]` threshold tables (the CLI's defaults).
OPTIONS = ("fail-on", "format")


class Config:
    """Threshold values (defaults + overrides) and the CLI-level options from config files."""

    def __init__(self, overrides: dict[str, Any] | None = None, options: dict[str, Any] | None = None):
        known = all_thresholds()
        self._values: dict[str, Any] = {}
        for name, value in (overrides or {}).items():
            spec = known.get(name)
            if spec is None:
                hint = ", ".join(n for n in known if n.split(".")[0] == name.split(".")[0])
                raise ConfigError(
                    f"unknown threshold {name!r}"
                    + (f" (known for this rule: {hint})" if hint else "")
                    + "; see docs/thresholds.md"
                )
            self._values[name] = _coerce(spec, value)
        self.options = dict(options or {})

    def __getitem__(self, spec: Threshold | str) -> Any:
        name = spec if isinstance(spec, str) else spec.name
        if name in self._values:
            return self._values[name]
        known = declared().get(name) or all_thresholds().get(name)
        if known is None:
            raise KeyError(name)
        return known.default

    def overridden(self) -> dict[str, Any]:
        return dict(self._values)

    def unknown_options(self) -> list[str]:
        """Top-level config keys that mean nothing here (a typo, say): the CLI warns about them."""
        return sorted(k for k in self.options if k not in OPTIONS)

    @classmethod
    def load(cls, start: Path | None = None, sets: list[str] | tuple[str, ...] = ()) -> Config:
        """Defaults ← config file found from `start` upwards ← `--set` pairs."""
        file_values, options = _read_config_file(find_config_file(start or Path.cwd()))
        for pair in sets:
            name, sep, value = pair.partition("=")
            if not sep or not name.strip():
                raise ConfigError(f"--set expects rule.param=value, got {pair!r}")
            table, dot, key = name.strip().partition(".")
            if table in OPTION_TABLES and dot:  # --set tags.loss=objective
                options[table] = {**(options.get(table) or {}), key: value.strip()}
            else:
                file_values[name.strip()] = value.strip()
        return cls(file_values, options)


def find_config_file(start: Path) -> Path | None:
    """The nearest tracemortem.toml, or pyproject.toml with a [tool.tracemortem] table."""
    here = start.resolve()
    for folder in (here, *here.parents):
        own = folder / "tracemortem.toml"
        if own.is_file():
            return own
        project = folder / "pyproject.toml"
        if project.is_file() and "tool.tracemortem" in project.read_text(errors="replace"):
            return project
    return None


def _read_config_file(path: Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    if path is None:
        return {}, {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    if path.name == "pyproject.toml":
        data = data.get("tool", {}).get("tracemortem", {})
    values: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key not in OPTION_TABLES:
            for param, v in value.items():
                values[f"{key}.{param}"] = v
        else:
            options[key] = value
    return values, options
