"""Error taxonomy of an early-exit run: every sample falls in exactly one bucket under a policy.

    efficient  right at the exit, and no earlier run of right answers reached it
    wasted     right at the exit, and already right at every layer from some m < exit on (wasted = exit - m)
    premature  wrong at an exit e < L, right at the last layer: it left too early
    missed     wrong at the exit and at the last layer, right somewhere: a layer that knew was passed by
    hopeless   wrong at every layer: no policy could have answered it

Pure functions of a trace and an ``ExitDecision``; the app's "Misclassified early exits" page shows them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .metrics import confusion_counts
from .policies import ExitDecision, ExitPolicy, run_lengths, threshold_signal


BUCKETS = ("efficient", "wasted", "premature", "missed", "hopeless")
BUCKET_LABELS = {
    "efficient": "right, no layer wasted",
    "wasted": "right, but kept going (wasted layers)",
    "premature": "premature exit (wrong at exit, right at the last layer)",
    "missed": "missed chance (wrong at exit and at the last layer, right somewhere)",
    "hopeless": "hopeless (wrong at every layer)",
}
BUCKET_DEFINITIONS = {
    "efficient": "The exit answer is right and the layer before the exit was wrong (or the exit is layer 1): "
                 "no earlier layer could have given a right answer that stayed right until the exit.",
    "wasted": "The exit answer is right, and the prediction was already right at every layer from some m < exit "
              "layer on. Wasted layers = exit layer − m (the smallest such m): computed although the answer "
              "had already settled.",
    "premature": "The exit layer e < L answers wrong, but the last layer L would have been right: "
                 "the sample left too early.",
    "missed": "Wrong at the exit and wrong at the last layer, but right at some layer in between (or before): "
              "a layer that knew the answer was passed by.",
    "hopeless": "Wrong at every layer: no exit policy could have answered it right.",
}


def error_buckets(trace, decision: ExitDecision, policy: ExitPolicy | None = None) -> pd.DataFrame:
    """One row per sample: where it left, whether it was right, and its bucket (see ``BUCKET_DEFINITIONS``).

    Columns: sample_id, label, pred (exit answer), exit_layer, correct, bucket, settled_from (first layer of
    the run of right answers ending at the exit; NaN when the exit is wrong), wasted_layers, first_correct
    (first layer with a right answer; NaN if none), last_correct (right at layer L), signal_at_exit (the
    policy's τ-compared value at the exit layer, when it has one), confidence_at_exit (max-probability).
    """
    correct = np.asarray(trace.wide["correct"], dtype=bool)  # (N, L)
    n, L = correct.shape
    rows = np.arange(n)
    e = np.asarray(decision.exit_layer)  # 1-based
    right = correct[rows, e - 1]
    run = run_lengths(correct)  # (N, L) right answers in a row, ending at each layer
    run_at_exit = run[rows, e - 1]
    settled_from = np.where(right, e - run_at_exit + 1, np.nan)
    wasted = np.where(right, run_at_exit - 1, 0)
    any_right = correct.any(1)
    first_correct = np.where(any_right, correct.argmax(1) + 1, np.nan)
    last_right = correct[:, -1]

    bucket = np.where(right, np.where(wasted > 0, "wasted", "efficient"),
                      np.where(~any_right, "hopeless",
                               np.where((e < L) & last_right, "premature", "missed")))
    out = pd.DataFrame({
        "sample_id": trace.samples["sample_id"].to_numpy(),
        "label": trace.labels,
        "pred": decision.pred,
        "exit_layer": e,
        "correct": right,
        "bucket": bucket,
        "settled_from": settled_from,
        "wasted_layers": wasted,
        "first_correct": first_correct,
        "last_correct": last_right,
        "confidence_at_exit": np.asarray(trace.wide["max_prob"])[rows, e - 1],
    })
    if policy is not None:
        values = threshold_signal(trace.wide, policy)
        if values is not None:
            out["signal_at_exit"] = values[rows, e - 1]
    return out


def bucket_counts(tax: pd.DataFrame) -> pd.DataFrame:
    counts = tax["bucket"].value_counts().reindex(BUCKETS, fill_value=0)
    return pd.DataFrame({"bucket": BUCKETS, "label": [BUCKET_LABELS[b] for b in BUCKETS],
                         "count": counts.to_numpy(), "share": counts.to_numpy() / max(len(tax), 1)})


def ranked(tax: pd.DataFrame, bucket: str) -> pd.DataFrame:
    """The samples of one bucket, most instructive first.

    premature / missed: most confident wrong exits first (highest max-probability at the exit);
    wasted: most wasted layers first; hopeless: most confident wrong final answers first;
    efficient: earliest exits first.
    """
    part = tax[tax["bucket"] == bucket]
    if bucket in ("premature", "missed", "hopeless"):
        return part.sort_values(["confidence_at_exit", "sample_id"], ascending=[False, True])
    if bucket == "wasted":
        return part.sort_values(["wasted_layers", "sample_id"], ascending=[False, True])
    return part.sort_values(["exit_layer", "sample_id"])


def confusion(labels: np.ndarray, preds: np.ndarray, num_labels: int) -> np.ndarray:
    """(K, K) counts [true, predicted]."""
    answers = np.asarray(preds, dtype=np.int64)[:, None]
    return confusion_counts(np.asarray(labels, dtype=np.int64), answers, num_labels)[0]
