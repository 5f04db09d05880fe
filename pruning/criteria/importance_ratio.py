from .base import Signals, criterion

EPS = 1e-12


@criterion("importance_ratio", when="forward")
def importance_ratio(s: Signals) -> float:
    """Light-PEFT's module importance: mean over real tokens of ||delta h|| / ||h||, how much the unit moves the
    hidden state it is added to."""
    ratio = s.delta.float().norm(dim=-1) / (s.base.float().norm(dim=-1) + EPS)
    return float(ratio.mean())
