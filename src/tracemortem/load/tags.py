"""Which logged tag (TensorBoard tag, Trainer log key, CSV column) feeds which steps column.

Defaults cover the names the common stacks and tutorials write; `[tool.tracemortem.tags]`
replaces the candidates of any column (docs/inputs.md). Matching ignores case.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

# Steps columns the health rules read, each with the tags that mean it, best first.
DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "loss": (
        "loss",
        "train/loss",
        "train_loss",
        "loss/train",
        "train/loss_step",
        "train_loss_step",
        "training_loss",
        "training/loss",
        "loss/training",
        "train/total_loss",
        "total_loss",
    ),
    "lr": ("lr", "learning_rate", "train/learning_rate", "train/lr", "lr/train", "learning-rate", "optim/lr"),
    "grad_norm": (
        "grad_norm",
        "train/grad_norm",
        "grad_norm/total",
        "grad_2.0_norm_total",
        "gradient_norm",
        "train/gradient_norm",
        "grad_norm/train",
        "global_grad_norm",
        "grads/norm",
        "grad/norm",
    ),
    "scale": ("scale", "loss_scale", "train/loss_scale", "grad_scale"),
}
# Per-parameter gradients and weights: `{name}` is the parameter name.
DEFAULT_PARAM_GRAD = (
    "grad/{name}",
    "grads/{name}",
    "gradient/{name}",
    "gradients/{name}",
    "{name}.grad",
    "{name}/grad",
    "{name}_grad",
    "grad_2.0_norm/{name}",
    "grad_norm/{name}",
)
DEFAULT_PARAM_WEIGHT = ("weight/{name}", "weights/{name}", "param/{name}", "params/{name}", "parameters/{name}")

# When no candidate is logged, a tag with one of these words is taken (and the report says so).
_FALLBACK_WORDS = {"loss": ({"loss"},), "lr": ({"lr"}, {"learning", "rate"})}
_NOT_TRAINING = {"val", "valid", "validation", "eval", "test", "epoch", "avg", "mean"}
_LIGHTNING_LR = re.compile(r"^lr-[^/]+$", re.IGNORECASE)  # Lightning's LearningRateMonitor: lr-Adam, lr-SGD
_WORD_SPLIT = re.compile(r"[/._\-\s]+")


def _pattern(template: str) -> re.Pattern[str]:
    if template.count("{name}") != 1:
        raise ConfigError(f"tags: parameter pattern {template!r} must contain {{name}} exactly once")
    head, tail = template.split("{name}")
    return re.compile(f"^{re.escape(head)}(?P<name>.+?){re.escape(tail)}$", re.IGNORECASE)


def _strings(key: str, value: Any) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
        raise ConfigError(f"tags.{key}: expected a tag name or a list of tag names, got {value!r}")
    return tuple(values)


@dataclass(frozen=True)
class Chosen:
    """Tags chosen for the steps columns, and what the report should say about the choice."""

    columns: dict[str, str]  # steps column → tag
    guessed: dict[str, str]  # the subset taken by the fallback word match


@dataclass(frozen=True)
class TagMap:
    columns: dict[str, tuple[str, ...]]
    param_grad: tuple[re.Pattern[str], ...]
    param_weight: tuple[re.Pattern[str], ...]

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> TagMap:
        given = dict((options or {}).get("tags") or {})
        columns = dict(DEFAULT_COLUMNS)
        grad: tuple[str, ...] = DEFAULT_PARAM_GRAD
        weight: tuple[str, ...] = DEFAULT_PARAM_WEIGHT
        for key, value in given.items():
            if key == "param_grad":
                grad = _strings(key, value)
            elif key == "param_weight":
                weight = _strings(key, value)
            elif key in columns:
                columns[key] = _strings(key, value)
            else:
                known = ", ".join([*DEFAULT_COLUMNS, "param_grad", "param_weight"])
                raise ConfigError(f"tags: unknown key {key!r} (known: {known}); see docs/inputs.md")
        return cls(columns, tuple(_pattern(t) for t in grad), tuple(_pattern(t) for t in weight))

    def choose(self, tags: Iterable[str]) -> Chosen:
        by_lower: dict[str, str] = {}
        for tag in sorted(tags):
            by_lower.setdefault(tag.lower(), tag)
        columns: dict[str, str] = {}
        guessed: dict[str, str] = {}
        for column, candidates in self.columns.items():
            found = next((by_lower[c.lower()] for c in candidates if c.lower() in by_lower), None)
            defaults = candidates == DEFAULT_COLUMNS.get(column)
            if found is None and defaults and column == "lr":
                found = next((t for t in by_lower.values() if _LIGHTNING_LR.match(t)), None)
            if found is None and defaults:
                found = _fallback(column, by_lower.values(), set(columns.values()))
                if found is not None:
                    guessed[column] = found
            if found is not None:
                columns[column] = found
        return Chosen(columns, guessed)

    def parameter(self, tag: str) -> tuple[str, str] | None:
        """("grad" | "weight", parameter name) when `tag` is a per-parameter series."""
        for kind, patterns in (("grad", self.param_grad), ("weight", self.param_weight)):
            for pattern in patterns:
                match = pattern.match(tag)
                if match:
                    return kind, match.group("name")
        return None


def _fallback(column: str, tags: Iterable[str], taken: set[str]) -> str | None:
    """The shortest training-looking tag with the column's word in it, if any."""
    words = _FALLBACK_WORDS.get(column)
    if words is None:
        return None
    fits = []
    for tag in tags:
        parts = set(_WORD_SPLIT.split(tag.lower()))
        if tag not in taken and any(w <= parts for w in words) and not parts & _NOT_TRAINING:
            fits.append(tag)
    return min(fits, key=lambda t: (len(t), t)) if fits else None
