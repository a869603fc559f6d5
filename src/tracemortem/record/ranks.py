"""Which rank this process is, and how many there are (docs/recorder.md)."""

from __future__ import annotations

import os


def discover_rank() -> tuple[int, int]:
    """torch.distributed when initialised, else RANK / WORLD_SIZE env vars, else (0, 1)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except Exception:  # a broken distributed setup must not stop recording
        pass
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 0, 1
    if world < 1 or not 0 <= rank < world:
        return 0, 1
    return rank, world
