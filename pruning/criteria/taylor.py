from .base import Signals, criterion


@criterion("taylor", when="step")
def first_order_taylor(s: Signals) -> float:
    """Mean |w * dL/dw|: the first-order estimate of the loss change if the weight were zeroed."""
    return float(sum((w.float() * g.float()).abs().sum() for w, g in zip(s.weights, s.grads, strict=True)) / s.numel)
