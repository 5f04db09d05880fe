from .base import Signals, criterion

THRESHOLD = 1e-6  # as in PrunePEFT's released code


@criterion("threshold", when="end")
def share_above_threshold(s: Signals) -> float:
    """1 - the share of weights with |w| < 1e-6."""
    return 1.0 - float(sum((w.abs() < THRESHOLD).sum() for w in s.weights) / s.numel)
