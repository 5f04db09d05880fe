from .base import Signals, criterion


@criterion("activation", when="forward")
def activation_magnitude(s: Signals) -> float:
    """Mean |output| of the unit over real tokens."""
    return float(s.delta.float().abs().mean())
