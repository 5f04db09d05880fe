from .base import Signals, criterion


@criterion("gradient", when="step")
def gradient_magnitude(s: Signals) -> float:
    """Mean |dL/dw|."""
    return float(sum(g.float().abs().sum() for g in s.grads) / s.numel)
