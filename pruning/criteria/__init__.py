"""Importance criteria, one file each, registered by name in CRITERIA (see base.py for the interface)."""

from . import activation, gradient, importance_ratio, taylor, threshold, weight, zeros  # noqa: F401  (register)
from .base import CRITERIA, Criterion, Signals, criterion

__all__ = ["CRITERIA", "Criterion", "Signals", "criterion"]
