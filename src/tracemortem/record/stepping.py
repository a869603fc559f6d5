"""Where the Recorder learns that an optimizer is about to apply gradients, and that it did.

One `OptimizerTap` per optimizer. It finds the torch optimizer behind framework wrappers
(accelerate's `AcceleratedOptimizer`, Lightning's `LightningOptimizer`: anything reachable
through `.optimizer` / `._optimizer`) and hooks its step. When the step is given a closure
(`optimizer.step(closure)`, as Lightning does), the closure runs forward and backward *inside*
the step, after the pre-step hook: the tap then wraps the closure and reports the gradients when
it returns, so they are the ones the update uses. An object with a `step()` that is not a
hookable torch optimizer gets its `step` wrapped on the instance, undone on close.
See docs/recorder.md, "Stepping styles".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .gradstats import GradBatch, GradStats

_WRAPPER_ATTRIBUTES = ("optimizer", "_optimizer")


def _looks_like_optimizer(obj: Any) -> bool:
    return obj is not None and callable(_attribute(obj, "step")) and _attribute(obj, "param_groups") is not None


def _hookable(obj: Any) -> bool:
    # A subclass that never ran Optimizer.__init__ (AcceleratedOptimizer) has no hook registry.
    return isinstance(obj, torch.optim.Optimizer) and "_optimizer_step_pre_hooks" in vars(obj)


def _attribute(obj: Any, name: str) -> Any:
    try:
        return getattr(obj, name, None)
    except Exception:  # a property of someone's wrapper that raises
        return None


def unwrap(obj: Any) -> Any:
    """The innermost hookable torch optimizer inside `obj` (or `obj` itself), else None."""
    chain, seen = [obj], {id(obj)}
    while True:
        inner = next(
            (
                value
                for value in (_attribute(chain[-1], name) for name in _WRAPPER_ATTRIBUTES)
                if _looks_like_optimizer(value)
            ),
            None,
        )
        if inner is None or id(inner) in seen:
            break
        chain.append(inner)
        seen.add(id(inner))
    return next((o for o in reversed(chain) if _hookable(o)), None)


class MethodPatch:
    """`obj.name` wrapped on the instance only; `undo()` puts back what was there."""

    def __init__(self, obj: Any, name: str, around: Callable[..., Any]):
        self.obj, self.name = obj, name
        self._had_own = name in getattr(obj, "__dict__", {})
        self._previous = obj.__dict__.get(name) if self._had_own else None
        original = getattr(obj, name)

        def patched(*args: Any, **kwargs: Any) -> Any:
            return around(original, args, kwargs)

        self._patched = patched
        setattr(obj, name, patched)

    def undo(self) -> None:
        if self.obj.__dict__.get(self.name) is not self._patched:
            return  # someone wrapped it again since: leave theirs in place
        if self._had_own:
            setattr(self.obj, self.name, self._previous)
        else:
            delattr(self.obj, self.name)


class OptimizerTap:
    """The step hooks of one optimizer. `on_ready(tap)` runs when the gradients the update will
    use are complete, `on_applied(tap)` right after the update; both must not raise."""

    def __init__(
        self,
        source: Any,
        on_ready: Callable[[OptimizerTap], None],
        on_applied: Callable[[OptimizerTap], None],
    ):
        self.source = source
        self.optimizer = unwrap(source)
        self._on_ready, self._on_applied = on_ready, on_applied
        self.stats: GradStats | None = None
        self.pending: GradBatch | None = None
        self.applied = False
        self.attempted = False
        self._measured = False
        self._handles: list[Any] = []
        self._patch: MethodPatch | None = None
        self.signature: tuple[int, ...] = ()

    @property
    def hooked(self) -> str:
        """How the step is observed: `hooks` (torch step hooks) or `patched-step`."""
        return "hooks" if self.optimizer is not None else "patched-step"

    def install(self) -> None:
        if self.optimizer is not None:
            self._handles = [
                self.optimizer.register_step_pre_hook(self._pre_hook),
                self.optimizer.register_step_post_hook(self._post_hook),
            ]
        else:
            self._patch = MethodPatch(self.source, "step", self._around_step)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._patch is not None:
            self._patch.undo()
            self._patch = None

    def param_groups(self) -> list[dict[str, Any]]:
        groups = _attribute(self.optimizer if self.optimizer is not None else self.source, "param_groups")
        return [g for g in groups if isinstance(g, dict)] if isinstance(groups, list) else []

    def current_signature(self) -> tuple[int, ...]:
        """Changes when param groups are added or their parameter lists change length."""
        return tuple(len(g.get("params", ())) for g in self.param_groups())

    def reset(self) -> None:
        self.pending, self.applied, self.attempted = None, False, False

    # --- hooks ----------------------------------------------------------------------------

    def _pre_hook(self, _opt: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self._before(args, kwargs, closure_at=1)  # args[0] is the optimizer itself

    def _post_hook(self, _opt: Any, _args: Any, _kwargs: Any) -> None:
        self._after()

    def _around_step(self, call: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        changed = self._before(args, kwargs, closure_at=0)
        if changed is not None:
            args, kwargs = changed
        out = call(*args, **kwargs)
        self._after()
        return out

    def _before(self, args: tuple[Any, ...], kwargs: dict[str, Any], closure_at: int) -> Any:
        """Report the gradients now, or, when the step was given a closure, once it has run."""
        self.attempted = True
        self._measured = False
        try:
            in_kwargs = kwargs.get("closure") is not None
            closure = kwargs.get("closure") if in_kwargs else (args[closure_at] if len(args) > closure_at else None)
            if not callable(closure):
                self._ready()
                return None
            wrapped = self._wrap(closure)
            if in_kwargs:
                return args, {**kwargs, "closure": wrapped}
            return (*args[:closure_at], wrapped, *args[closure_at + 1 :]), kwargs
        except Exception:
            return None

    def _wrap(self, closure: Callable[[], Any]) -> Callable[[], Any]:
        def closure_then_report() -> Any:
            result = closure()
            self._ready()  # the first evaluation: later ones (LBFGS) see partly updated weights
            return result

        return closure_then_report

    def _ready(self) -> None:
        if not self._measured:
            self._measured = True
            self._on_ready(self)

    def _after(self) -> None:
        self.applied = True
        self._on_applied(self)


class ScalerWatch:
    """Notes that `scaler.step(optimizer)` was called: when the update then never happens, the
    GradScaler skipped it (an overflow), which is different from a loop that did not step."""

    def __init__(self, scaler: Any):
        self.called = False
        self._patch = MethodPatch(scaler, "step", self._around) if callable(getattr(scaler, "step", None)) else None

    def _around(self, call: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.called = True
        return call(*args, **kwargs)

    def undo(self) -> None:
        if self._patch is not None:
            self._patch.undo()
