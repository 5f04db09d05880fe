from .base import Signals, criterion


@criterion("weight", when="end")
def weight_magnitude(s: Signals) -> float:
    """Mean squared weight over the unit's parameters."""
    return float(sum((w.float() ** 2).sum() for w in s.weights) / s.numel)
