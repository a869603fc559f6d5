"""Callbacks that attach a Recorder to a training framework with one line.

`tracemortem.integrations.lightning` (PyTorch Lightning) and `tracemortem.integrations.transformers`
(the Hugging Face `Trainer`) each import only the framework they serve; `import tracemortem`
imports neither. See docs/integrations.md.
"""
