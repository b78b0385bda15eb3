"""Prediction feedback: a bounded, exponentially weighted observed/predicted ratio per engine."""

from __future__ import annotations

from gateway.scheduler.config import SchedulerConfig

MIN_PREDICTED_S = 1e-3
"""Below this a prediction is noise (the time-scale-0 test workers predict 0): no update."""


def corrected(factor: float, observed_s: float, predicted_s: float, c: SchedulerConfig) -> float:
    """The next correction factor after one observation."""
    if predicted_s < MIN_PREDICTED_S or observed_s < 0:
        return factor
    ratio = min(max(observed_s / predicted_s, c.feedback_min), c.feedback_max)
    w = c.feedback_weight
    return min(max((1 - w) * factor + w * ratio, c.feedback_min), c.feedback_max)
