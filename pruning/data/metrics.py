"""Evaluation metrics in plain numpy: accuracy, binary F1, Matthews correlation, Pearson and Spearman.

Degenerate inputs score 0.0 instead of NaN (a constant prediction carries no signal), so a search can always
compare two candidates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np


def compute_metrics(metric_names: Sequence[str], predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Score predictions (class indices, or floats for regression) against labels: {"f1": .., "accuracy": ..}."""
    predictions = np.asarray(predictions).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError("no predictions to score")
    unknown = [name for name in metric_names if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; known: {', '.join(METRICS)}")
    return {name: float(METRICS[name](predictions, labels)) for name in metric_names}


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predictions == labels))


def f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Binary F1 of class 1: 2TP / (2TP + FP + FN); 0.0 when there is no true positive (avoids 0/0)."""
    predicted, actual = predictions == 1, labels == 1
    true_positives = int(np.sum(predicted & actual))
    if true_positives == 0:
        return 0.0
    return 2 * true_positives / int(predicted.sum() + actual.sum())


def mcc(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation (Gorodkin's multiclass form; the usual formula for two classes). 0.0 if undefined."""
    classes, codes = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    truth, predicted = codes[: len(labels)], codes[len(labels):]
    true_counts = np.bincount(truth, minlength=len(classes)).astype(np.float64)
    predicted_counts = np.bincount(predicted, minlength=len(classes)).astype(np.float64)
    n, correct = float(len(labels)), float(np.sum(truth == predicted))
    covariance = correct * n - predicted_counts @ true_counts
    denominator = math.sqrt((n * n - predicted_counts @ predicted_counts) * (n * n - true_counts @ true_counts))
    return covariance / denominator if denominator > 0 else 0.0


def pearson(predictions: np.ndarray, labels: np.ndarray) -> float:
    x, y = predictions.astype(np.float64), labels.astype(np.float64)
    # Test constancy directly: x - x.mean() of [0.1, 0.1, 0.1] is not exactly zero.
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    dx, dy = x - x.mean(), y - y.mean()
    r = float(dx @ dy) / math.sqrt(float(dx @ dx) * float(dy @ dy))
    return min(1.0, max(-1.0, r))


def spearman(predictions: np.ndarray, labels: np.ndarray) -> float:
    return pearson(average_ranks(predictions), average_ranks(labels))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span ([10, 20, 20, 30] -> [1, 2.5, 2.5, 4])."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last_rank = np.cumsum(counts)  # rank of each distinct value's last occurrence
    return (last_rank - (counts - 1) / 2)[inverse.reshape(-1)]


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy, "f1": f1, "mcc": mcc, "pearson": pearson, "spearman": spearman,
}

# A completion task's metrics, computed from the model by completion.completion_metrics rather than from class
# predictions: the mean loss per completion token, its exponential, and (when the completions are short answers)
# the exact match of the greedy completion. Every other metric is better higher.
COMPLETION_METRICS = ("exact_match", "loss", "perplexity")
LOWER_IS_BETTER = frozenset({"loss", "perplexity"})


BOOTSTRAP_DRAWS = 200


def drop_standard_error(name: str, labels: np.ndarray, reference: np.ndarray, predictions: np.ndarray,
                        draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> float:
    """The standard error of metric_drop(reference's score, predictions' score) on these examples: the spread of
    the drop over paired bootstrap resamples (both sets of predictions scored on the same resampled examples, so
    the examples both get right or wrong cancel). A drop within it is not told apart from noise."""
    labels, reference, predictions = (np.asarray(a).reshape(-1) for a in (labels, reference, predictions))
    rng = np.random.default_rng(seed)
    score = METRICS[name]
    drops = []
    for _ in range(draws):
        rows = rng.integers(0, len(labels), len(labels))
        drops.append(metric_drop(name, score(reference[rows], labels[rows]), score(predictions[rows], labels[rows])))
    return float(np.std(drops, ddof=1))


def ratio_standard_error(differences: np.ndarray, counts: np.ndarray) -> float:
    """The standard error of sum(differences) / sum(counts), the mean difference per scored item of two losses
    summed per example (the delta method's, for a ratio of sums over examples drawn at random; with one item an
    example, the standard error of the mean difference). Infinite with fewer than two examples."""
    differences, counts = np.asarray(differences, dtype=float), np.asarray(counts, dtype=float)
    n = len(differences)
    if n < 2 or counts.sum() <= 0:
        return math.inf
    ratio = differences.sum() / counts.sum()
    residuals = differences - ratio * counts
    return float(math.sqrt((residuals ** 2).sum() / (n * (n - 1))) / counts.mean())


def metric_drop(name: str, reference: float, value: float) -> float:
    """How much worse `value` is than `reference`, in points: x 100 of a metric in [0, 1] or [-1, 1] (accuracy,
    F1, MCC, correlations, exact match); for a loss or perplexity, percent of the reference. Negative: better."""
    if name in LOWER_IS_BETTER:
        return 100 * (value - reference) / max(abs(reference), 1e-12)
    return 100 * (reference - value)
