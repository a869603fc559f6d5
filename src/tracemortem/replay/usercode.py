"""The one place tracemortem runs user code: the model factory and loss function the user names
on the command line (docs/replay.md, "Whose code runs"). Nothing is imported implicitly, and
nothing from inside the run directory, which is untrusted input."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from .. import format as fmt
from ..errors import ConfigError


def resolve(spec: str, option: str, run_root: Path) -> Any:
    """`MODULE:NAME` to the named object. MODULE is a path to a .py file (it contains a "/" or
    ends in ".py") or a dotted module name imported from sys.path (PYTHONPATH); a module that
    resolves to a file inside the run directory is refused."""
    module_part, sep, name = spec.rpartition(":")
    if not sep or not module_part or not name:
        raise ConfigError(f"{option} expects MODULE:NAME (a module name or a .py path, then a name), got {spec!r}")
    module = _load_file(module_part, option) if _is_path(module_part) else _import(module_part, option, run_root)
    target: Any = module
    for part in name.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"{option}: {module_part} has no attribute {name!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"{option}: {spec} is not callable")
    return target


def _is_path(text: str) -> bool:
    return text.endswith(".py") or "/" in text or "\\" in text


def _load_file(text: str, option: str) -> Any:
    path = Path(text).expanduser()
    if not path.is_file():
        raise ConfigError(f"{option}: no such file {text!r}")
    name = f"tracemortem_user_{path.stem}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{option}: cannot load {text!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and typing look their module up here
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ConfigError(f"{option}: importing {text} failed: {type(exc).__name__}: {exc}") from None
    return module


def _import(name: str, option: str, run_root: Path) -> Any:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"{option}: cannot import {name}: {exc}") from None
    if spec is None:
        raise ConfigError(f"{option}: no module named {name!r} on sys.path (set PYTHONPATH, or give a .py path)")
    if spec.origin and Path(spec.origin).exists() and fmt.is_inside(run_root, Path(spec.origin)):
        raise ConfigError(f"{option}: refusing to import {name} from inside the run directory ({spec.origin})")
    try:
        return importlib.import_module(name)
    except Exception as exc:
        raise ConfigError(f"{option}: importing {name} failed: {type(exc).__name__}: {exc}") from None
