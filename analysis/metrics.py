"""Task metrics: accuracy, binary F1 of class 1, and Matthews correlation (MCC) — how each is computed, once.

The arithmetic is ``score_margins``: from per-class counts (``Margins``: right answers, samples and answers of each
class), so a sweep of thousands of exit settings of any class count stays small. ``score`` reads confusion matrices
and ``compute_metric`` labels and predictions through the same code, so training's per-exit metrics and every curve
and table agree to the last bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import CurveError, DataError

METRICS = ("accuracy", "f1", "mcc")


# ---------------------------------------------------------------------------------------------------------
# Scores from confusion matrices and their margins
# ---------------------------------------------------------------------------------------------------------


def confusion_counts(labels: np.ndarray, answers: np.ndarray, num_labels: int) -> np.ndarray:
    """Confusion counts [true, predicted] of every column of ``answers``: (N,), (N, S) -> (S, K, K).

    O(S·K²) memory: for scores use ``margins``, which holds what every metric reads in O(S·K).
    """
    k2 = num_labels * num_labels
    settings = answers.shape[1]
    cell = labels[:, None].astype(np.int64) * num_labels + answers  # (N, S)
    keys = (np.arange(settings) * k2 + cell).ravel()
    return np.bincount(keys, minlength=settings * k2).reshape(settings, num_labels, num_labels)


@dataclass(frozen=True)
class Margins:
    """What accuracy, F1 and MCC read from S confusion matrices, per class: the right answers (the diagonal),
    the samples of the class (row sums) and the answers naming it (column sums). O(S·K) memory where the
    matrices take O(S·K²) — 0.2 GB per setting for 5,000 classes — so a sweep of any class count stays small."""

    right: np.ndarray  # (S, K) float64
    true: np.ndarray  # (S, K)
    answered: np.ndarray  # (S, K)

    @classmethod
    def of_confusion(cls, confusion: np.ndarray) -> Margins:
        """From confusion counts (S, K, K) indexed [true, predicted]."""
        c = np.asarray(confusion, dtype=np.float64)
        return cls(np.diagonal(c, axis1=1, axis2=2), c.sum(2), c.sum(1))


def margins(labels: np.ndarray, answers: np.ndarray, num_labels: int) -> Margins:
    """``Margins`` of every column of ``answers``: labels (N,) or (N, S), answers (N, S) -> (S, K) each."""
    answers = np.asarray(answers, dtype=np.int64)
    labels = np.broadcast_to(np.asarray(labels, dtype=np.int64).reshape(len(answers), -1), answers.shape)
    settings = answers.shape[1]
    offset = np.arange(settings) * num_labels  # one block of K counters per setting

    def count(values: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        flat = np.bincount((values + offset).ravel(), weights, minlength=settings * num_labels)
        return flat.reshape(settings, num_labels).astype(np.float64)

    return Margins(count(labels, (answers == labels).ravel().astype(np.float64)), count(labels), count(answers))


def score(metric: str, confusion: np.ndarray) -> np.ndarray:
    """A task metric from confusion matrices, as ``compute_metric`` computes it from labels.

    Parameters
    ----------
    metric : {"accuracy", "f1", "mcc"}
        Accuracy; binary F1 of class 1 (0.0 when undefined); Matthews correlation (0.0 when undefined).
    confusion : array (S, K, K) or (K, K)
        Counts indexed [true label, predicted label].

    Returns
    -------
    ndarray (S,) float64, or a float for a single (K, K) matrix.
    """
    c = np.asarray(confusion)
    single = c.ndim == 2
    out = score_margins(metric, Margins.of_confusion(c[None] if single else c))
    return float(out[0]) if single else out


def score_margins(metric: str, m: Margins) -> np.ndarray:
    """``score`` from ``Margins``: (S,) float64."""
    n = m.true.sum(1)
    correct = m.right.sum(1)
    true_sum, pred_sum = m.true, m.answered  # (S, K) each
    if metric == "accuracy":
        return correct / n
    if metric == "f1":
        tp = m.right[:, 1]
        denom = true_sum[:, 1] + pred_sum[:, 1]  # 2 tp + fp + fn
        return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    if metric == "mcc":
        cov_tp = correct * n - (true_sum * pred_sum).sum(1)
        cov_pp = n * n - (pred_sum * pred_sum).sum(1)
        cov_tt = n * n - (true_sum * true_sum).sum(1)
        denom = cov_tt * cov_pp
        return np.divide(cov_tp, np.sqrt(denom, where=denom > 0, out=np.ones_like(denom)),
                         out=np.zeros_like(denom), where=denom > 0)
    raise CurveError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")


# ---------------------------------------------------------------------------------------------------------
# Scores from labels and predictions
# ---------------------------------------------------------------------------------------------------------


def compute_metric(metric: str, labels: Sequence[int], preds: Sequence[int]) -> float:
    """Score predictions with a task metric.

    Parameters
    ----------
    metric : {"accuracy", "f1", "mcc"}
        Accuracy; binary F1 of the positive class 1; or Matthews correlation coefficient.
    labels, preds : sequence of int
        Gold and predicted class ids (0..K-1), of equal non-zero length.

    Returns
    -------
    float
        The score (F1 is 0.0 when class 1 is never predicted nor present; MCC is 0.0 when undefined).

    Raises
    ------
    DataError
        For an unknown metric, inputs of different or zero length, or negative ids.
    """
    if metric not in METRICS:
        raise DataError(f"compute_metric: unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    y_true, y_pred = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise DataError(f"compute_metric: labels {y_true.shape} and preds {y_pred.shape} must be 1-D of equal length")
    if len(y_true) == 0:
        raise DataError("compute_metric: no labels to score")
    if min(y_true.min(), y_pred.min()) < 0:
        raise DataError("compute_metric: labels and preds must be class ids 0..K-1 (a -1 label has no class)")
    num_labels = max(int(y_true.max()), int(y_pred.max()), 1) + 1  # at least 2: F1 reads class 1
    return float(score_margins(metric, margins(y_true, y_pred[:, None], num_labels))[0])
