"""Random-number states: restore those a snapshot saved (rng.pt), or keep the training job's
own untouched while an in-process replay runs."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Python, numpy, torch CPU and CUDA generators are as they were when the block ends."""
    python = random.getstate()
    numpy_state = _numpy_state()
    # Only devices already in use: touching another GPU's generator would create a context there.
    initialized = torch.cuda.is_initialized()
    devices = [torch.cuda.current_device()] if initialized else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python)
            if numpy_state is not None:
                import numpy as np

                np.random.set_state(numpy_state)


def _numpy_state() -> Any:
    try:
        import numpy as np
    except ImportError:
        return None
    return np.random.get_state()


def restore(states: Any, device: torch.device) -> list[str]:
    """Set the generators from a snapshot's rng.pt (untrusted: each entry checked); returns
    notes on the entries that could not be restored."""
    notes: list[str] = []
    if not isinstance(states, dict):
        return ["rng.pt is not a dict: random states not restored"]
    setters = {
        "python": lambda s: random.setstate(_python_state(s)),
        "torch_cpu": lambda s: torch.set_rng_state(_byte_tensor(s)),
        "numpy": _set_numpy,
    }
    if device.type == "cuda":
        setters["torch_cuda"] = lambda s: torch.cuda.set_rng_state_all([_byte_tensor(t) for t in s])
    for key, setter in setters.items():
        if key not in states:
            continue
        try:
            setter(states[key])
        except Exception as exc:
            notes.append(f"{key} random state not restored ({type(exc).__name__})")
    return notes


def _python_state(state: Any) -> tuple[Any, ...]:
    version, internal, gauss = state
    return (int(version), tuple(int(x) for x in internal), None if gauss is None else float(gauss))


def _byte_tensor(state: Any) -> torch.Tensor:
    if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8:
        raise TypeError("not a uint8 tensor")
    return state


def _set_numpy(state: Any) -> None:
    import numpy as np

    keys = state["keys"]
    if not isinstance(keys, torch.Tensor):
        raise TypeError("keys is not a tensor")
    np.random.set_state(
        (
            str(state["bit_generator"]),
            keys.numpy().astype(np.uint32),
            int(state["pos"]),
            int(state["has_gauss"]),
            float(state["cached_gaussian"]),
        )
    )
