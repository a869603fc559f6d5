"""Event categories of torch.profiler chrome traces across Kineto versions (docs/traces.md),
shared by the loader and by the note on activity it does not read."""

from __future__ import annotations

# Categories across Kineto versions (docs/traces.md).
GPU_KINDS = {
    "kernel": "kernel",
    "Kernel": "kernel",
    "gpu_memcpy": "memcpy",
    "Memcpy": "memcpy",
    "gpu_memset": "memset",
    "Memset": "memset",
}
GPU_CATS = frozenset(GPU_KINDS) | {"gpu_user_annotation", "cuda_sync", "xpu_sync"}
RUNTIME_CATS = frozenset(
    {
        "cuda_runtime",
        "cuda_driver",
        "Runtime",
        "xpu_runtime",
        "xpu_driver",
        "privateuse1_runtime",
        "privateuse1_driver",
        "mtia_runtime",
    }
)
OP_CATS = frozenset({"cpu_op", "Operator"})
