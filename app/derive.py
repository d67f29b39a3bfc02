"""Derived quantities the pages show, as pure functions of a trace and a policy (no Streamlit here).

Everything the app displays can be recomputed from Python with these and ``analysis``:

    from analysis.trace import load_trace
    from analysis.policies import ExitPolicy, decide_exits
    from app.derive import taxonomy
    trace = load_trace("pretrained/bbc-minilm-l6/trace-test")
    taxonomy(trace, decide_exits(trace.wide, ExitPolicy("de3", tau=0.02)))
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.policies import POLICIES, ExitDecision, ExitPolicy
from analysis.signals import edr

# ---------------------------------------------------------------------------------------------------------
# Threshold grids for the sliders: "nice" numbers, evenly spaced on a log scale (signals span 1e-4..1)
# ---------------------------------------------------------------------------------------------------------

_MANTISSAS = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)
LOG_GRID = tuple([0.0] + [round(m * 10.0 ** e, 6) for e in range(-4, 0) for m in _MANTISSAS] + [1.0])
# max-probability exits when max_prob > τ, so its interesting range is just below 1
MAXPROB_GRID = tuple(sorted({round(1.0 - g, 6) for g in LOG_GRID}))
LAMBDA_GRID = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 64.0)
THRESHOLD_POLICIES = ("de3", "dr", "entropy", "maxprob", "pcee")
PATIENCE_POLICIES = ("pabee", "pcee")
DEFAULT_TAUS = {"de3": 0.02, "dr": 0.1, "entropy": 0.01, "maxprob": 0.99, "pcee": 0.02}

# which quantity each threshold policy compares with τ, and in which direction
SIGNAL_OF_POLICY = {"de3": "edr", "dr": "dr", "entropy": "entropy", "pcee": "entropy", "maxprob": "max_prob"}
SIGNAL_LABELS = {"entropy": "entropy", "dr": "DR", "edr": "EDR", "max_prob": "max-probability"}


def tau_grid(policy_name: str, current: float | None = None) -> list[float]:
    """Slider options for τ of a policy, with ``current`` inserted when it is off the grid (a shared URL)."""
    grid = set(MAXPROB_GRID if policy_name == "maxprob" else LOG_GRID)
    if current is not None and math.isfinite(current):
        grid.add(float(current))
    return sorted(grid)


def lambda_grid(current: float | None = None) -> list[float]:
    grid = set(LAMBDA_GRID)
    if current is not None and math.isfinite(current) and current >= 0:
        grid.add(float(current))
    return sorted(grid)


def nearest(options, value: float) -> float:
    """The option closest to ``value``."""
    options = list(options)
    return options[int(np.argmin([abs(o - value) for o in options]))]


# ---------------------------------------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------------------------------------


def signals(trace, lambda_: float) -> dict[str, np.ndarray]:
    """(N, L) arrays: entropy, DR, EDR(λ) and max-probability."""
    ent, dr = np.asarray(trace.wide["entropy"]), np.asarray(trace.wide["dr"])
    return {"entropy": ent, "dr": dr, "edr": edr(dr, ent, lambda_), "max_prob": np.asarray(trace.wide["max_prob"])}


def policy_signal(trace, policy: ExitPolicy) -> tuple[str, np.ndarray] | None:
    """(signal name, (N, L) values) that ``policy``'s τ is compared with, or None for pabee, static, oracle."""
    name = SIGNAL_OF_POLICY.get(policy.name)
    if name is None:
        return None
    return name, signals(trace, policy.lambda_)[name]


def exit_test_text(policy: ExitPolicy) -> str:
    """The policy's exit test in words, e.g. "EDR(λ=1) < τ=0.02"."""
    p = policy
    return {
        "de3": f"EDR(λ={p.lambda_:g}) < τ={p.tau:g}",
        "dr": f"DR < τ={p.tau:g}",
        "entropy": f"entropy < τ={p.tau:g}",
        "maxprob": f"max-probability > τ={p.tau:g}",
        "pcee": f"entropy < τ={p.tau:g} at {p.patience} layer(s) in a row",
        "pabee": f"prediction unchanged {p.patience} time(s) in a row",
        "static": f"layer = {p.layer}",
        "oracle": "the prediction is correct (needs the label: an upper bound)",
    }[p.name]


def no_early_exit_hint(trace, policy: ExitPolicy) -> str:
    """Why nobody leaves before the last layer, and what to change."""
    L = trace.num_layers
    sig = policy_signal(trace, policy)
    if sig is None:
        if policy.name == "pabee":
            return f"patience {policy.patience} needs {policy.patience + 1} layers < {L}; lower the patience"
        if policy.name == "static":
            return f"the static exit layer is {policy.layer}; pick a layer below {L}"
        return "no sample is correct at any layer before the last"
    name, values = sig
    early = values[:, :-1]
    if policy.name == "maxprob":
        return (f"the largest max-probability at layers < {L} is {np.nanmax(early):.6g}; "
                f"lower τ below it to let someone exit")
    return (f"the smallest {SIGNAL_LABELS[name]} at layers < {L} is {np.nanmin(early):.6g}; "
            f"raise τ above it to let someone exit")


# ---------------------------------------------------------------------------------------------------------
# Error taxonomy under a policy
# ---------------------------------------------------------------------------------------------------------

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


def taxonomy(trace, decision: ExitDecision, policy: ExitPolicy | None = None) -> pd.DataFrame:
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
    # length of the run of right answers ending at each layer, then at the exit layer
    run = np.zeros_like(correct, dtype=np.int32)
    acc = np.zeros(n, dtype=np.int32)
    for m in range(L):
        acc = np.where(correct[:, m], acc + 1, 0)
        run[:, m] = acc
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
        sig = policy_signal(trace, policy)
        if sig is not None:
            out["signal_at_exit"] = sig[1][rows, e - 1]
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
    return np.bincount(np.asarray(labels, dtype=np.int64) * num_labels + np.asarray(preds, dtype=np.int64),
                       minlength=num_labels * num_labels).reshape(num_labels, num_labels)


# ---------------------------------------------------------------------------------------------------------
# Comparing policies at a matched speed-up
# ---------------------------------------------------------------------------------------------------------


def policy_from_row(row) -> ExitPolicy:
    """The ExitPolicy of one ``curves.sweep`` row."""
    kw = {}
    for col, key, cast in (("tau", "tau", float), ("lambda_", "lambda_", float), ("patience", "patience", int),
                           ("layer", "layer", int)):
        value = row[col]
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            kw[key] = cast(value)
    return ExitPolicy(row["policy"], **kw)


def matched_settings(curves: pd.DataFrame, speedup: float, *, lambda_: float | None = None,
                     patience: int | None = None) -> dict[str, tuple[ExitPolicy, pd.Series]]:
    """For every policy in ``curves``: the setting with the best metric among those at least as fast as
    ``speedup`` (ties: the faster one); the fastest setting when none is. DE3 at ``lambda_`` and PCEE at
    ``patience`` when those are given and present."""
    out = {}
    for name in POLICIES:
        rows = curves[curves["policy"] == name]
        if name == "de3" and lambda_ is not None:
            same = rows[np.isclose(rows["lambda_"], lambda_)]
            rows = same if len(same) else rows
        if name == "pcee" and patience is not None:
            same = rows[rows["patience"] == patience]
            rows = same if len(same) else rows
        if rows.empty:
            continue
        fast = rows[rows["speedup"] >= speedup * (1 - 1e-9)]
        if fast.empty:
            best = rows.sort_values(["speedup", "metric"], ascending=False).iloc[0]
        else:
            best = fast.sort_values(["metric", "speedup"], ascending=False).iloc[0]
        out[name] = (policy_from_row(best), best)
    return out


def sample_exits(trace, sample: int, policies: dict[str, ExitPolicy]) -> pd.DataFrame:
    """Where each policy would let one sample exit, what it would answer and whether that is right."""
    from analysis.policies import decide_exits

    sub = {k: np.asarray(trace.wide[k])[sample:sample + 1] for k in ("pred", "entropy", "dr", "max_prob", "correct")}
    rows = []
    label = int(trace.labels[sample])
    for name, p in policies.items():
        d = decide_exits(sub, p)
        rows.append({"policy": name, "setting": p.describe(), "exit_layer": int(d.exit_layer[0]),
                     "pred": int(d.pred[0]), "correct": bool(d.pred[0] == label)})
    return pd.DataFrame(rows)


def search_samples(samples: pd.DataFrame, query: str, limit: int = 200) -> pd.DataFrame:
    """Samples whose text (or text pair) contains every word of ``query`` (case-insensitive)."""
    words = [w for w in query.lower().split() if w]
    if not words:
        return samples.head(0)
    text = samples["text"].str.lower()
    if "text_pair" in samples:
        text = text + " " + samples["text_pair"].fillna("").str.lower()
    hit = np.ones(len(samples), dtype=bool)
    for w in words:
        hit &= text.str.contains(w, regex=False).to_numpy()
    return samples[hit].head(limit)


# ---------------------------------------------------------------------------------------------------------
# Formatting a task metric
# ---------------------------------------------------------------------------------------------------------

METRIC_NAMES = {"accuracy": "accuracy", "f1": "F1", "mcc": "MCC"}


def metric_name(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric)


def metric_title(metric: str) -> str:
    """Axis title of a metric drawn ×100: a percentage for accuracy and F1, MCC ×100 otherwise."""
    return f"{metric_name(metric)} (×100)" if metric == "mcc" else f"{metric_name(metric)} (%)"


def fmt_metric(value: float, metric: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.3f}" if metric == "mcc" else f"{100 * value:.1f}%"


def projection_config(trace, method: str = "umap"):
    """The default map settings for a trace: its model's prototype distance as the map metric."""
    from analysis.projection import ProjectionConfig, metric_for_distance

    distance = trace.meta.get("model", {}).get("distance", "euclidean")
    return ProjectionConfig(method=method if method in ("umap", "pca") else "umap", metric=metric_for_distance(distance))
