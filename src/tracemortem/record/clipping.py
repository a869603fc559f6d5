"""Gradient clipping, seen without user code: while a Recorder is live, torch's clipping
(`torch.nn.utils.clip_grad_norm_`, and the frameworks' wrappers, which end in it) reports the
norm it measured and its cap to every live Recorder whose parameters it clipped.

The patched function is torch's `clip_grads_with_norm_`, which `clip_grad_norm_` calls by its
module-level name and which receives both the total norm and `max_norm`, so even a
`from torch.nn.utils import clip_grad_norm_` done before the Recorder existed is seen; torch
versions without it get `clip_grad_norm_` itself patched. The original is restored when the last
Recorder closes. See docs/recorder.md, "Gradient clipping".
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.utils as nn_utils
import torch.nn.utils.clip_grad as clip_grad

# listener(parameters, total_norm, max_norm); must not raise
Listener = Callable[[list[torch.Tensor], Any, float], None]

_lock = threading.Lock()
_listeners: list[Listener] = []
_installed: list[tuple[Any, str, Any, Any]] = []  # (module, name, original, patched)


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


def _as_list(parameters: Any) -> list[torch.Tensor]:
    return [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)


def _notify(parameters: list[torch.Tensor], total_norm: Any, max_norm: Any) -> None:
    for listener in list(_listeners):
        try:
            listener(parameters, total_norm, float(max_norm))
        except Exception:
            pass


def _with_norm_patch(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def clip_grads_with_norm_(*args: Any, **kwargs: Any) -> Any:
        if not _listeners:
            return original(*args, **kwargs)
        params = _as_list(_arg(args, kwargs, 0, "parameters"))
        args, kwargs = _replace_first(args, kwargs, params)
        out = original(*args, **kwargs)
        _notify(params, _arg(args, kwargs, 2, "total_norm"), _arg(args, kwargs, 1, "max_norm"))
        return out

    return clip_grads_with_norm_


def _norm_patch(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def clip_grad_norm_(*args: Any, **kwargs: Any) -> Any:
        if not _listeners:
            return original(*args, **kwargs)
        params = _as_list(_arg(args, kwargs, 0, "parameters"))
        args, kwargs = _replace_first(args, kwargs, params)
        total = original(*args, **kwargs)
        _notify(params, total, _arg(args, kwargs, 1, "max_norm"))
        return total

    return clip_grad_norm_


def _replace_first(
    args: tuple[Any, ...], kwargs: dict[str, Any], params: list[torch.Tensor]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The parameters as a list: a generator can be read only once, by us or by torch."""
    if args:
        return (params, *args[1:]), kwargs
    return args, {**kwargs, "parameters": params}


def _targets() -> list[tuple[Any, str, Callable[[Callable[..., Any]], Callable[..., Any]] | None]]:
    if hasattr(clip_grad, "_clip_grads_with_norm_"):
        return [(clip_grad, "_clip_grads_with_norm_", _with_norm_patch), (nn_utils, "clip_grads_with_norm_", None)]
    return [(clip_grad, "clip_grad_norm_", _norm_patch), (nn_utils, "clip_grad_norm_", None)]


def _install() -> None:
    patched = None
    for module, name, make in _targets():
        original = getattr(module, name, None)
        if original is None:
            continue
        if make is not None:
            patched = make(original)
        elif patched is None or original is not _installed[0][2]:
            continue  # the public alias is patched only where it is the same function
        setattr(module, name, patched)
        _installed.append((module, name, original, patched))


def attach(listener: Listener) -> None:
    with _lock:
        if not _installed:
            _install()
        _listeners.append(listener)


def detach(listener: Listener) -> None:
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)
        if _listeners:
            return
        for module, name, original, patched in _installed:
            if getattr(module, name, None) is patched:  # never undo someone else's later patch
                setattr(module, name, original)
        _installed.clear()
