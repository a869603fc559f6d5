"""Replay of the failing step (docs/replay.md): rebuild the pre-update state from the anomaly
snapshot (or copy it in-process), re-run the step with per-op forward checks and autograd's
anomaly mode, and write `origin.json`: where the first non-finite value was born.

Needs torch, imported lazily by the modules below; `import tracemortem.replay` alone does not.
"""
