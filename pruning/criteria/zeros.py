from .base import Signals, criterion


@criterion("zeros", when="end")
def share_nonzero(s: Signals) -> float:
    """1 - the share of weights exactly zero: a unit made mostly of zeros matters less."""
    return 1.0 - float(sum((w == 0).sum() for w in s.weights) / s.numel)
