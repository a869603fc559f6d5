"""Training-health findings from the recorder's steps and grads tables (docs/findings-health.md).

`detect(run, config)` is the entry point. The rules live in `health_numeric` (non-finite
values, AMP overflows) and `health_magnitude` (exploding/vanishing gradients, dead/unused
parameters, update ratios, loss spikes, with the early-divergence tests of `health_growth`),
`health_zero` (all-zero gradients) and `health_clipping` (gradient clipping); importing them
here declares their thresholds.
"""

from __future__ import annotations

from ..findings import Finding
from ..load.run import RunData
from ..thresholds import Thresholds
from . import attempts
from . import health_activations as activations
from . import health_clipping as clipping
from . import health_magnitude as magnitude
from . import health_numeric as numeric
from .health_origin import nonfinite_origin
from .health_series import compute
from .health_zero import zero_gradient

RULES = (
    numeric.nonfinite_gradient,
    numeric.nonfinite_loss,
    numeric.amp_overflow,
    magnitude.exploding_gradient,
    magnitude.vanishing_gradient,
    magnitude.dead_and_unused,
    magnitude.update_ratio,
    magnitude.loss_spike,
    attempts.run_resumed,
    zero_gradient,
    clipping.grad_clipping,
    nonfinite_origin,
    activations.dead_activation,
    activations.saturated_activation,
    activations.activation_growth,
)


def detect(run: RunData, config: Thresholds) -> list[Finding]:
    if run.steps.is_empty() and not run.grads.collect_schema().names():
        return []
    series = compute(run)
    findings: list[Finding] = []
    for rule in RULES:
        findings += rule(run, series, config)
    return findings
