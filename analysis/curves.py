"""Metric vs speed-up of every exit policy (spec §5–§7), as pure functions of a trace.

Definitions (spec §6), used everywhere in this module:

    speed-up        L / mean exit layer  (= L·N / Σ_i i·N_i, N_i samples leave at layer i)
    saved fraction  1 − mean exit layer / L  (what some papers print and call "speed-up")
    FLOPs ratio     early-exit FLOPs / full-model FLOPs, summed over the samples (``cost.CostModel``)
    frontier        F(s) = the best metric among a policy's settings whose speed-up is ≥ s
    AUC             (1 / (s_max − 1)) ∫_1^s_max F(s) ds: the frontier's mean metric over speed-ups 1..s_max
                    (default s_max = 3); NaN when the policy cannot reach s_max
    oracle          every sample at its first correct layer, a sample no layer gets right at layer 1 (spec §5)
    oracle frontier keeping the k solvable samples with the smallest first-correct layers c_(1) ≤ … ≤ c_(k):
                    accuracy k/N at mean exit layer (c_(1)+…+c_(k) + (N−k))/N, k = S..0 — the best accuracy any
                    exit assignment can have at each speed-up (accuracy only; for F1/MCC just the oracle point)

Matched comparisons carry their statistics (``matched_vs_baseline``): each policy against DeeBERT's entropy at
the same target, with a paired-bootstrap interval of the difference and the gap in right answers.

A trace without labels (``meta["labelled"]`` False: label −1, ``correct`` all False) still has speed-ups,
saved fractions, mean exit layers and FLOPs; its metric is NaN, and whatever needs labels (the oracle, the
oracle frontier, λ choice, ``compare``, the bootstrap) refuses it with a ``CurveError``.

How the sweep is fast and still exact. For a threshold policy the test at layer m is ``signal_m < τ``
(max-probability: ``−max_prob_m < −τ``; PCEE: the largest entropy of the last ``patience`` layers ``< τ``).
A sample has left by layer m iff the *running minimum* of its signal up to m is below τ, so with the
thresholds sorted, the settings at which a sample leaves at layer e form one contiguous range. Adding +1 at
the range's start and −1 at its end (``np.bincount``) and a cumulative sum over thresholds gives, for every
threshold at once, the confusion matrix's margins (``Margins``: O(K) per setting, never O(K²)), the exit counts
and the FLOPs — O(N·L) work instead of O(N·L·T).
Thresholds are compared in the signal's dtype, exactly as ``numpy`` does in ``policies.exit_mask``; the tests
check every row against ``decide_exits``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DE3Error
from .io import atomic_file, check_output, claim_output
from .policies import (
    POLICIES,
    POLICY_LABELS,
    ExitPolicy,
    decide_exits,
    exit_mask,
    first_exit,
)
from .signals import edr
from .validate import POLICY, RUN, flag, flag_list

DEFAULT_LAMBDAS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
DEFAULT_SPEEDUPS = (1.5, 2.0, 3.0)
DEFAULT_MAX_SPEEDUP = 3.0
N_QUANTILES = 100
PCEE_PATIENCES = (1, 2, 3)
THRESHOLD_POLICIES = ("de3", "dr", "entropy", "maxprob", "pcee")
CURVE_COLUMNS = ("policy", "label", "tau", "lambda_", "patience", "layer",
                 "speedup", "saved_fraction", "metric", "mean_exit_layer", "flops_ratio")
_TOL = 1e-9  # relative slack when asking whether a speed-up reaches a target (12/6 must count as 2x)


class CurveError(DE3Error, ValueError):
    """Curves or a comparison were asked for something the data cannot give (unknown λ, bad speed-ups...)."""


def _labelled(trace) -> bool:
    """Whether the trace has labels (``Trace.labelled``; ``meta["labelled"]``, True when absent)."""
    return bool(getattr(trace, "labelled", trace.meta.get("labelled", True)))


def _require_labels(trace, what: str) -> None:
    if not _labelled(trace):
        raise CurveError(f"{_trace_name(trace)} has no labels: {what} needs labelled data; trace a labelled split")


# ---------------------------------------------------------------------------------------------------------
# Scores from confusion matrices
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
    """A task metric from confusion matrices, as ``data.compute_metric`` computes it from labels.

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
    raise CurveError(f"unknown metric {metric!r}; choose one of accuracy, f1, mcc")


# ---------------------------------------------------------------------------------------------------------
# Evaluating policies
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    """What every evaluation of one trace reads, gathered once."""

    metric: str
    labels: np.ndarray  # (N,) int64
    pred: np.ndarray  # (N, L) int64
    right: np.ndarray  # (N, L) float64: 1.0 where the layer's answer is the label
    cost: np.ndarray  # (N, L) FLOPs of sample n when it leaves at layer e
    full_flops: float  # the full model's FLOPs over all samples
    num_labels: int
    labelled: bool  # False: labels are placeholders (0) and every metric is NaN

    @classmethod
    def of(cls, trace) -> _Context:
        labelled = _labelled(trace)
        labels = np.asarray(trace.labels, dtype=np.int64) if labelled else np.zeros(trace.num_samples, dtype=np.int64)
        pred = np.asarray(trace.wide["pred"], dtype=np.int64)
        k, num_layers = trace.num_labels, trace.num_layers
        layers = np.arange(1, num_layers + 1)[:, None]  # (L, 1) broadcasts against (N,) token counts
        cost = trace.cost.early_exit(layers, trace.n_tokens).T  # (N, L)
        return cls(trace.metric, labels, pred, (pred == labels[:, None]).astype(np.float64), np.ascontiguousarray(cost),
                   float(trace.cost.full(trace.n_tokens).sum()), k, labelled)

    @property
    def shape(self) -> tuple[int, int]:
        return self.pred.shape


@dataclass(frozen=True)
class _Totals:
    """Sums over samples for S settings."""

    right: np.ndarray  # (S, K) right answers per true class (``Margins.right``)
    answered: np.ndarray  # (S, K) answers per class (``Margins.answered``)
    counts: np.ndarray  # (S, L) samples leaving at each layer
    flops: np.ndarray  # (S,)


def _exit_totals(ctx: _Context, exit_layer: np.ndarray) -> _Totals:
    """Totals from explicit exit layers (N, S), 1-based."""
    num_layers = ctx.shape[1]
    settings = exit_layer.shape[1]
    e0 = exit_layer.astype(np.int64) - 1  # (N, S)
    m = margins(ctx.labels, np.take_along_axis(ctx.pred, e0, axis=1), ctx.num_labels)
    counts = np.bincount((np.arange(settings) * num_layers + e0).ravel(), minlength=settings * num_layers)
    flops = np.take_along_axis(ctx.cost, e0, axis=1).sum(0)
    return _Totals(m.right, m.answered, counts.reshape(settings, num_layers), flops)


def _threshold_totals(ctx: _Context, runmin: np.ndarray, taus: np.ndarray) -> _Totals:
    """Totals for every threshold at once, from the running minimum (N, L-1) of an exit signal.

    ``taus`` are sorted, unique and of ``runmin``'s dtype. Sample n leaves by layer m at threshold j iff
    runmin[n, m] < taus[j], i.e. iff j >= searchsorted(taus, runmin[n, m], "right").
    """
    n, num_layers = ctx.shape
    t = len(taus)
    bounds = np.empty((n, num_layers + 1), dtype=np.int64)  # (N, L+1), non-increasing along a row
    bounds[:, 0] = t
    bounds[:, 1:num_layers] = np.searchsorted(taus, runmin, side="right")
    bounds[:, num_layers] = 0
    lo, hi = bounds[:, 1:], bounds[:, :-1]  # (N, L): the sample leaves at layer e for thresholds lo..hi-1
    keep = lo < hi
    lo, hi = lo[keep], hi[keep]
    layer0 = np.broadcast_to(np.arange(num_layers), (n, num_layers))[keep]
    label = np.broadcast_to(ctx.labels[:, None], (n, num_layers))[keep]
    answer, right, cost = ctx.pred[keep], ctx.right[keep], ctx.cost[keep]

    def spread(start: np.ndarray, stop: np.ndarray, width: int, weights=None) -> np.ndarray:
        """+w at each range's start, -w at its end, summed over thresholds: (T, width)."""
        size = (t + 1) * width
        delta = np.bincount(start, weights, minlength=size) - np.bincount(stop, weights, minlength=size)
        return np.cumsum(delta.reshape(t + 1, width), axis=0)[:t]

    k = ctx.num_labels  # (T, K) margins, never (T, K, K) confusion matrices: memory O(T·K) for any K
    counts = spread(lo * num_layers + layer0, hi * num_layers + layer0, num_layers)
    right_answers = spread(lo * k + label, hi * k + label, k, right)
    answered = spread(lo * k + answer, hi * k + answer, k)
    flops = spread(lo, hi, 1, cost)[:, 0]
    return _Totals(right_answers, answered, counts, flops)


def _summaries(ctx: _Context, totals: _Totals) -> dict[str, np.ndarray]:
    """The curve columns (S,) from totals."""
    n, num_layers = ctx.shape
    mean_exit = (totals.counts @ np.arange(1, num_layers + 1)) / n
    return {
        "speedup": num_layers / mean_exit,
        "saved_fraction": 1.0 - mean_exit / num_layers,
        "metric": _metric(ctx, totals) if ctx.labelled else np.full(len(mean_exit), np.nan),
        "mean_exit_layer": mean_exit,
        "flops_ratio": totals.flops / ctx.full_flops,
    }


def _metric(ctx: _Context, totals: _Totals) -> np.ndarray:
    """The metric of S settings from their totals (every setting answers each sample once: the class counts
    are the labels')."""
    true = np.broadcast_to(np.bincount(ctx.labels, minlength=ctx.num_labels).astype(np.float64), totals.right.shape)
    return score_margins(ctx.metric, Margins(totals.right, true, np.asarray(totals.answered, dtype=np.float64)))


def evaluate_policy(trace, policy: ExitPolicy) -> dict:
    """Speed-up, metric and cost of one policy setting on a trace.

    Parameters
    ----------
    trace : Trace
    policy : ExitPolicy

    Returns
    -------
    dict
        ``speedup`` (L / mean exit layer), ``saved_fraction`` (1 − mean exit layer / L), ``metric`` (the
        trace's task metric of the exit answers; NaN for a trace without labels), ``mean_exit_layer``,
        ``flops_ratio`` (early-exit over full-model FLOPs) and ``exit_counts`` (list: samples leaving at layers 1..L).
    """
    if policy.name == "oracle":
        _require_labels(trace, "the oracle")
    decision = decide_exits(trace.wide, policy)
    num_layers = trace.num_layers
    mean_exit = float(decision.exit_layer.mean())
    metric = math.nan
    if _labelled(trace):
        m = margins(np.asarray(trace.labels, dtype=np.int64), decision.pred[:, None], trace.num_labels)
        metric = float(score_margins(trace.metric, m)[0])
    return {
        "speedup": num_layers / mean_exit,
        "saved_fraction": 1.0 - mean_exit / num_layers,
        "metric": metric,
        "mean_exit_layer": mean_exit,
        "flops_ratio": trace.cost.ratio(decision.exit_layer, trace.n_tokens),
        "exit_counts": np.bincount(decision.exit_layer - 1, minlength=num_layers).tolist(),
    }


def per_layer_metric(trace) -> pd.DataFrame:
    """Each exit's metric if every sample answered there: columns ``layer``, ``speedup`` (L / layer), ``metric``
    (NaN for a trace without labels)."""
    ctx = _Context.of(trace)
    num_layers = ctx.shape[1]
    layers = np.arange(1, num_layers + 1)
    metric = (score_margins(ctx.metric, margins(ctx.labels, ctx.pred, ctx.num_labels)) if ctx.labelled
              else np.full(num_layers, np.nan))
    return pd.DataFrame({"layer": layers, "speedup": num_layers / layers, "metric": metric})


# ---------------------------------------------------------------------------------------------------------
# Grids and the sweep
# ---------------------------------------------------------------------------------------------------------


def _exit_signal(wide, name: str, lambda_: float, patience: int) -> np.ndarray:
    """The (N, L) signal whose test is ``signal < τ'`` (τ' = −τ for maxprob), as ``exit_mask`` decides it."""
    if name == "de3":
        return edr(np.asarray(wide["dr"]), np.asarray(wide["entropy"]), lambda_)
    if name in ("dr", "entropy"):
        return np.asarray(wide[name])
    if name == "maxprob":
        return -np.asarray(wide["max_prob"])  # max_prob > τ  <=>  −max_prob < −τ (negation is exact)
    if name == "pcee":  # entropy < τ for `patience` layers in a row  <=>  their largest entropy < τ
        ent = np.asarray(wide["entropy"])
        window = ent.copy()
        for shift in range(1, patience):
            window[:, shift:] = np.maximum(window[:, shift:], ent[:, :-shift])
        window[:, : patience - 1] = np.inf  # fewer than `patience` layers so far: never
        return window
    raise CurveError(f"{name} is not a threshold policy")


def _running_min(signal: np.ndarray) -> np.ndarray:
    """Running minimum over the layers that may exit early: (N, L) -> (N, L-1). NaN never passes a test."""
    return np.fmin.accumulate(signal[:, :-1], axis=1)


def _signal_taus(name: str, taus: Sequence[float], dtype) -> np.ndarray:
    """Policy thresholds as compared with the signal: in its dtype, negated for maxprob."""
    sign = -1.0 if name == "maxprob" else 1.0
    return (sign * np.asarray(taus, dtype=np.float64)).astype(dtype)


def _threshold_grid(trace, name: str, *, lambda_: float = 1.0, patience: int = 2,
                    n_quantiles: int = N_QUANTILES) -> list[ExitPolicy]:
    """Thresholds from the data: quantiles of the running-minimum signal at layers < L, plus "exit no one"
    (0; max-probability 1) and "exit everyone at layer 1" (+inf; max-probability −inf).

    The mean exit layer is 1 + (1/N)·#{(n, m < L): runmin[n, m] >= τ}, so quantiles of the running minimum
    space the settings evenly in mean exit layer.
    """
    signal = _exit_signal(trace.wide, name, lambda_, patience)
    values = _running_min(signal)
    values = values[np.isfinite(values)].astype(np.float64)
    natural_none = -1.0 if name == "maxprob" else 0.0  # every signal is >= 0 (max-probability: -max_prob >= -1)
    nobody = min(natural_none, values.min()) if values.size else natural_none
    quantiles = np.quantile(values, np.linspace(0.0, 1.0, n_quantiles)) if values.size else np.empty(0)
    grid = np.unique(np.concatenate([[nobody], quantiles, [np.inf]]).astype(signal.dtype))
    sign = -1.0 if name == "maxprob" else 1.0
    kwargs = {"lambda_": lambda_} if name == "de3" else {"patience": patience} if name == "pcee" else {}
    return [ExitPolicy(name, tau=sign * float(t), **kwargs) for t in grid]


def default_grid(trace, *, lambdas: Sequence[float] = DEFAULT_LAMBDAS, n_quantiles: int = N_QUANTILES,
                 pcee_patiences: Sequence[int] = PCEE_PATIENCES) -> list[ExitPolicy]:
    """Every policy's parameter sweep on ``trace``.

    Parameters
    ----------
    trace : Trace
    lambdas : EDR weights for DE3-BERT, each swept over its own thresholds.
    n_quantiles : thresholds per threshold sweep (quantiles of the running-minimum signal; see
        ``_threshold_grid``), plus the two that exit no one early and everyone at layer 1.
    pcee_patiences : PCEE patience values, each swept over thresholds.

    Returns
    -------
    list of ExitPolicy
        de3 (per λ), dr, entropy, maxprob: thresholds; pabee: patience 1..L-1; pcee: patience × thresholds;
        static: layers 1..L; oracle once (not for a trace without labels: it needs them).
    """
    num_layers = trace.num_layers
    grid: list[ExitPolicy] = []
    for lam in lambdas:
        grid += _threshold_grid(trace, "de3", lambda_=float(lam), n_quantiles=n_quantiles)
    for name in ("dr", "entropy", "maxprob"):
        grid += _threshold_grid(trace, name, n_quantiles=n_quantiles)
    grid += [ExitPolicy("pabee", patience=t) for t in range(1, num_layers)]
    for t in pcee_patiences:
        grid += _threshold_grid(trace, "pcee", patience=int(t), n_quantiles=n_quantiles)
    grid += [ExitPolicy("static", layer=k) for k in range(1, num_layers + 1)]
    if _labelled(trace):
        grid.append(ExitPolicy("oracle"))
    return grid


def _vectorisable(policy: ExitPolicy) -> bool:
    """Threshold policies whose τ numpy compares in the signal's dtype (a Python number, not NaN)."""
    return (policy.name in THRESHOLD_POLICIES and type(policy.tau) in (float, int)
            and not math.isnan(policy.tau))


def sweep(trace, policies: Sequence[ExitPolicy] | None = None) -> pd.DataFrame:
    """Evaluate many policy settings on a trace at once.

    Parameters
    ----------
    trace : Trace
    policies : settings to evaluate; default ``default_grid(trace)``.

    Returns
    -------
    DataFrame
        One row per setting, in the given order, with ``CURVE_COLUMNS``: ``policy``, ``label``, the
        parameters ``tau``, ``lambda_``, ``patience``, ``layer`` (NaN where the policy does not use one), and
        ``speedup``, ``saved_fraction``, ``metric``, ``mean_exit_layer``, ``flops_ratio`` as in
        ``evaluate_policy`` (``metric`` NaN for a trace without labels).
    """
    policies = default_grid(trace) if policies is None else list(policies)
    if any(p.name == "oracle" for p in policies):
        _require_labels(trace, "the oracle")
    ctx = _Context.of(trace)
    stats = {c: np.full(len(policies), np.nan) for c in CURVE_COLUMNS[6:]}

    def put(indices: list[int], summary: dict[str, np.ndarray], rows: np.ndarray) -> None:
        for col, values in summary.items():
            stats[col][indices] = values[rows]

    groups: dict[tuple, list[int]] = {}
    direct: list[int] = []
    for i, p in enumerate(policies):
        if _vectorisable(p):
            key = (p.name, p.lambda_ if p.name == "de3" else 0.0, p.patience if p.name == "pcee" else 1)
            groups.setdefault(key, []).append(i)
        else:
            direct.append(i)
    for (name, lam, patience), indices in groups.items():
        signal = _exit_signal(trace.wide, name, lam, patience)  # (N, L)
        taus = _signal_taus(name, [policies[i].tau for i in indices], signal.dtype)
        unique, inverse = np.unique(taus, return_inverse=True)
        put(indices, _summaries(ctx, _threshold_totals(ctx, _running_min(signal), unique)), inverse.ravel())
    if direct:
        exits = np.stack([first_exit(exit_mask(policies[i], trace.wide)) for i in direct], axis=1)  # (N, S)
        put(direct, _summaries(ctx, _exit_totals(ctx, exits)), np.arange(len(direct)))

    params = {k: [_param(p, k) for p in policies] for k in ("tau", "lambda_", "patience", "layer")}
    frame = pd.DataFrame({"policy": [p.name for p in policies], "label": [p.label for p in policies],
                          **{k: np.asarray(v, dtype=np.float64) for k, v in params.items()}, **stats})
    return frame[list(CURVE_COLUMNS)]


def _param(policy: ExitPolicy, name: str) -> float:
    """A policy's parameter as a float, NaN when the policy does not use it."""
    return float(policy.params().get(name, np.nan))


# ---------------------------------------------------------------------------------------------------------
# Frontiers, matched speed-ups, AUC
# ---------------------------------------------------------------------------------------------------------


def frontier(curve_df: pd.DataFrame, policy: str, lambda_: float | None = None) -> pd.DataFrame:
    """The upper envelope of one policy's curve: the best metric at a speed-up ≥ s.

    Parameters
    ----------
    curve_df : a ``sweep`` result.
    policy : policy name; every setting of it is pooled (PCEE: all patience values and thresholds).
    lambda_ : for ``de3``, which λ (required when the curves hold more than one).

    Returns
    -------
    DataFrame
        ``speedup`` (ascending, unique) and ``metric``: F(s) for s in (previous speed-up, this speed-up] is
        the row's metric; non-increasing. Beyond the last speed-up the policy cannot go.
    """
    rows = curve_df[curve_df["policy"] == policy]
    if policy == "de3":
        lams = np.unique(rows["lambda_"].to_numpy(dtype=np.float64))
        if lambda_ is None and len(lams) > 1:
            raise CurveError(f"the curves hold DE3-BERT at several λ ({', '.join(f'{v:g}' for v in lams)}); pick one")
        if lambda_ is not None:
            rows = rows[np.isclose(rows["lambda_"].to_numpy(dtype=np.float64), lambda_, rtol=1e-12, atol=0.0)]
    if rows.empty:
        what = f"{policy} with λ={lambda_:g}" if policy == "de3" and lambda_ is not None else policy
        raise CurveError(f"the curves have no rows for {what}; sweep it first")
    return upper_envelope(rows)


def upper_envelope(points: pd.DataFrame) -> pd.DataFrame:
    """F(s) = the best ``metric`` among ``points`` whose ``speedup`` is ≥ s, as ``frontier`` returns it:
    ``speedup`` ascending and unique, ``metric`` non-increasing (e.g. of an ``oracle_frontier``)."""
    best = points.groupby("speedup")["metric"].max().sort_index()  # one point per speed-up
    envelope = best[::-1].cummax()[::-1]  # best over every point at this speed-up or beyond
    return pd.DataFrame({"speedup": envelope.index.to_numpy(dtype=np.float64),
                         "metric": envelope.to_numpy(dtype=np.float64)})


def oracle_frontier(trace) -> pd.DataFrame:
    """The oracle frontier (spec §5): the best accuracy any exit assignment can have at each speed-up.

    The oracle point (every sample at its first correct layer c_i, the S solvable samples right, the others
    at layer 1) is the best accuracy at the fewest layers. Beyond it, the best is to give up solvable samples,
    latest first-correct layer first (each is worth one): keeping the k with the smallest c_(1) ≤ … ≤ c_(k)
    gives accuracy k/N at mean exit layer (c_(1)+…+c_(k) + (N−k))/N. No exit policy's point lies above it.

    Parameters
    ----------
    trace : Trace with labels.

    Returns
    -------
    DataFrame
        ``speedup`` (L / mean exit layer, ascending), ``metric``, ``mean_exit_layer``, ``k`` (solvable samples
        kept), one row per k = S..0. For the metric ``accuracy`` it is an upper bound (``attrs["bound"]``
        True). For F1 or MCC it is not a bound in this form: then only the oracle point (k = S, its own
        metric), ``attrs["bound"]`` False — show it as a reference point.
    """
    _require_labels(trace, "the oracle frontier")
    correct = np.asarray(trace.wide["correct"], dtype=bool)  # (N, L)
    n, num_layers = correct.shape
    solvable = correct.any(axis=1)
    first = np.sort(correct.argmax(axis=1)[solvable] + 1).astype(np.int64)  # c_(1) <= ... <= c_(S)
    k = np.arange(len(first), -1, -1)  # S..0
    layers_used = np.concatenate([[0], np.cumsum(first)])[k] + (n - k)  # integer sum of exit layers
    bound = trace.metric == "accuracy"
    if not bound:  # the oracle point only, with the trace's own metric
        k, layers_used = k[:1], layers_used[:1]
    mean_exit = layers_used / n
    metric = k / n if bound else np.array([evaluate_policy(trace, ExitPolicy("oracle"))["metric"]])
    out = pd.DataFrame({"speedup": num_layers / mean_exit, "metric": metric.astype(np.float64),
                        "mean_exit_layer": mean_exit, "k": k})
    out.attrs.update(bound=bound, metric=trace.metric)
    return out


def best_metric_at(front: pd.DataFrame, speedup: float) -> float:
    """F(s) of a ``frontier``: the best metric at a speed-up ≥ ``speedup``; NaN if the policy never gets there."""
    reach = front["speedup"].to_numpy() >= speedup * (1 - _TOL)
    return float(front["metric"].to_numpy()[reach].max()) if reach.any() else math.nan


def best_setting_at(curve_df: pd.DataFrame, policy: str, speedup: float, lambda_: float | None = None) -> ExitPolicy | None:
    """The setting behind ``best_metric_at``: among ``policy``'s rows with speed-up ≥ ``speedup``, the one with
    the best metric (ties: the faster one). None if the policy never gets there."""
    rows = curve_df[curve_df["policy"] == policy]
    if policy == "de3" and lambda_ is not None:
        rows = rows[np.isclose(rows["lambda_"].to_numpy(dtype=np.float64), lambda_, rtol=1e-12, atol=0.0)]
    rows = rows[rows["speedup"].to_numpy() >= speedup * (1 - _TOL)]
    if rows.empty:
        return None
    return policy_from_row(rows.sort_values(["metric", "speedup"], ascending=False).iloc[0])


def policy_from_row(row) -> ExitPolicy:
    """The ``ExitPolicy`` of one ``sweep`` row (parameters a policy does not use are NaN there)."""
    kwargs = {}
    for key, cast in (("tau", float), ("lambda_", float), ("patience", int), ("layer", int)):
        value = row[key]
        if value is not None and not pd.isna(value):
            kwargs[key] = cast(value)
    return ExitPolicy(row["policy"], **kwargs)


def frontier_auc(front: pd.DataFrame, max_speedup: float = DEFAULT_MAX_SPEEDUP) -> float:
    """Area under the frontier between speed-up 1 and ``max_speedup``, divided by the range.

    That is the frontier's mean metric over speed-ups 1..max_speedup (same units as the metric). NaN when
    the policy's largest speed-up is below ``max_speedup``.
    """
    s, m = front["speedup"].to_numpy(), front["metric"].to_numpy()
    if max_speedup <= 1:
        raise CurveError(f"max speed-up must be > 1, got {max_speedup:g}")
    if len(s) == 0 or s[-1] < max_speedup * (1 - _TOL):
        return math.nan
    left = np.clip(np.concatenate([[1.0], s[:-1]]), 1.0, max_speedup)  # segment j covers (s_{j-1}, s_j]
    right = np.clip(s, 1.0, max_speedup)
    return float((m * np.maximum(right - left, 0.0)).sum() / (max_speedup - 1.0))


def _speedup_column(s: float) -> str:
    return f"{s:g}x"


def _check_speedups(speedups: Sequence[float], max_speedup: float) -> tuple[float, ...]:
    """Target speed-ups and the AUC's upper end, checked against their declarations (``validate.RUN``)."""
    speedups = tuple(speedups)
    if not speedups:
        raise CurveError("no target speed-ups given; pass at least one, e.g. 1.5, 2, 3")
    for s in speedups:
        RUN["speedup"].check(s, "each of the speed-ups", CurveError)
    RUN["max_speedup"].check(max_speedup, "max speed-up", CurveError)
    return tuple(float(s) for s in speedups)


def matched_table(curves: pd.DataFrame, speedups: Sequence[float] = DEFAULT_SPEEDUPS, *, lambda_: float = 1.0,
                  max_speedup: float = DEFAULT_MAX_SPEEDUP, oracle_front: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every policy's best metric at matched speed-ups, and its AUC.

    Parameters
    ----------
    curves : a ``sweep`` result.
    speedups : targets; a policy's value at s is its best metric at a speed-up ≥ s (``best_metric_at``).
    lambda_ : the λ of the DE3-BERT row (choose it on validation data: ``choose_lambda``).
    max_speedup : upper end of the AUC range 1..max_speedup (``frontier_auc``).
    oracle_front : the trace's ``oracle_frontier``; when given, the oracle row is read off it (value at s = the
        best frontier accuracy at a speed-up ≥ s) and its note says whether it is an upper bound or, for F1/MCC,
        a reference point. Without it the oracle row is the oracle's one point in ``curves``.

    Returns
    -------
    DataFrame
        One row per policy present, in ``POLICIES`` order: ``policy``, ``label``, ``lambda_``, one column
        per target (``"1.5x"``...; NaN when unreachable), ``auc``, ``max_speedup`` (the policy's largest),
        ``note`` (why a value is missing, else empty).
    """
    speedups = _check_speedups(speedups, max_speedup)
    present = set(curves["policy"])
    rows = []
    names = [p for p in POLICIES if p in present or (p == "oracle" and oracle_front is not None)]
    for name in names:
        if name == "oracle" and oracle_front is not None:
            front = upper_envelope(oracle_front)
        else:
            front = frontier(curves, name, lambda_ if name == "de3" else None)
        top = float(front["speedup"].max())
        needed = max(max(speedups), max_speedup)
        note = "" if top >= needed * (1 - _TOL) else f"reaches {top:.2f}x at most"
        if name == "oracle" and oracle_front is not None:
            kind = "frontier: upper bound" if oracle_front.attrs.get("bound") else "reference point, not a bound"
            note = "; ".join(v for v in (f"{kind} (uses labels)", note) if v)
        rows.append({"policy": name, "label": POLICY_LABELS[name],
                     "lambda_": float(lambda_) if name == "de3" else math.nan,
                     **{_speedup_column(s): best_metric_at(front, s) for s in speedups},
                     "auc": frontier_auc(front, max_speedup), "max_speedup": top, "note": note})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------
# Choosing λ and comparing policies
# ---------------------------------------------------------------------------------------------------------


def _trace_name(trace) -> str:
    return str(trace.folder) if getattr(trace, "folder", None) is not None else "in-memory trace"


def choose_lambda(val_trace, lambdas: Sequence[float] = DEFAULT_LAMBDAS, *,
                  max_speedup: float = DEFAULT_MAX_SPEEDUP, n_quantiles: int = N_QUANTILES) -> float:
    """The EDR weight λ whose DE3-BERT frontier has the best AUC on a **validation** trace.

    Parameters
    ----------
    val_trace : Trace of the validation split (a trace whose meta says ``split: test`` is refused, so that λ is
        never tuned on the data it is reported on).
    lambdas : candidates; ties go to the first.
    max_speedup : AUC range 1..max_speedup.

    Returns
    -------
    float
    """
    _require_labels(val_trace, "choosing λ")
    if val_trace.meta.get("split") == "test":
        raise CurveError(f"{_trace_name(val_trace)} is a trace of the test split; choose λ on a validation trace")
    if not lambdas:
        raise CurveError("no λ candidates given")
    policies = [p for lam in lambdas for p in _threshold_grid(val_trace, "de3", lambda_=float(lam), n_quantiles=n_quantiles)]
    curves = sweep(val_trace, policies)
    aucs = [frontier_auc(frontier(curves, "de3", float(lam)), max_speedup) for lam in lambdas]
    if all(math.isnan(a) for a in aucs):
        raise CurveError(f"DE3-BERT never reaches {max_speedup:g}x on the validation trace; lower the max speed-up")
    return float(lambdas[int(np.nanargmax(aucs))])


@dataclass(frozen=True)
class Comparison:
    """Every policy at matched speed-ups on a test trace, with per-layer metrics, the oracle and its frontier,
    and each policy against the baseline (paired bootstrap)."""

    table: pd.DataFrame  # matched_table (its oracle row read off the oracle frontier)
    per_layer: pd.DataFrame  # per_layer_metric
    oracle: dict  # evaluate_policy of the oracle
    lambda_: float
    lambda_note: str  # where λ came from
    metric: str
    speedups: tuple[float, ...]
    max_speedup: float
    source: str
    num_samples: int
    num_layers: int
    curves: pd.DataFrame = field(repr=False, default=None)
    oracle_front: pd.DataFrame = field(repr=False, default=None)  # oracle_frontier
    vs_baseline: pd.DataFrame = field(repr=False, default=None)  # matched_vs_baseline
    baseline: str = "entropy"
    n_boot: int = 1000

    def format(self) -> str:
        """The paper-style plain-text report: table, AUC definition, each policy against the baseline with its
        bootstrap interval, per-layer metric, oracle."""
        m = self.metric
        head = ["policy", *(_speedup_column(s) for s in self.speedups), f"AUC 1-{self.max_speedup:g}x", "note"]
        rows = []
        for r in self.table.to_dict("records"):
            rows.append([_row_name(r), *(_pct(r[_speedup_column(s)]) for s in self.speedups), _pct(r["auc"]), r["note"]])
        layers = [[str(r["layer"]), f"{r['speedup']:.2f}x", _pct(r["metric"])] for r in self.per_layer.to_dict("records")]
        o = self.oracle
        bound = self.oracle_front is not None and bool(self.oracle_front.attrs.get("bound"))
        lines = [
            f"{m} (x100) at matched speed-up: {self.source}, {self.num_samples} samples, {self.num_layers} layers",
            self.lambda_note,
            "",
            _text_table(head, rows, left=(0, len(head) - 1)),
            "",
            f"value at s = best {m} among a policy's settings with speed-up >= s; speed-up = L / mean exit layer;",
            f"AUC = mean {m} of that frontier over speed-ups 1-{self.max_speedup:g}x ('-' = unreachable).",
        ]
        if self.vs_baseline is not None and len(self.vs_baseline):
            lines += ["", *format_vs_baseline(self.vs_baseline, self.speedups, metric=m, lambda_=self.lambda_)]
        lines += [
            "",
            f"per-layer {m} (x100), every sample answered by that exit:",
            _text_table(["layer", "speed-up", m], layers, left=()),
            "",
            "oracle (uses labels; each sample at its first correct layer, one that no layer gets right at layer 1):",
            f"{m} {_pct(o['metric'])} at {o['speedup']:.2f}x (mean exit layer {o['mean_exit_layer']:.2f}).",
            (f"The table's oracle row is its frontier: the best {m} any exit assignment can have at a speed-up >= s\n"
             "(giving up the samples that are right latest first), an upper bound no policy can cross." if bound
             else f"For {m} it is a reference point, not a bound: the table's oracle row is that one point."),
        ]
        return "\n".join(lines)


def _row_name(record: dict) -> str:
    return record["label"] + (f", λ={record['lambda_']:g}" if record["policy"] == "de3" else "")


def _pct(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def _text_table(head: list[str], rows: list[list[str]], *, left: Sequence[int] = (0,)) -> str:
    """Plain-text table: columns padded to a common width; columns in ``left`` left-aligned, the rest right."""
    cells = [head, *rows]
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(head))]
    lines = []
    for r in cells:
        padded = [str(c).ljust(w) if i in left else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def compare(test_trace, val_trace=None, speedups: Sequence[float] = DEFAULT_SPEEDUPS, *,
            max_speedup: float = DEFAULT_MAX_SPEEDUP, lambdas: Sequence[float] = DEFAULT_LAMBDAS,
            baseline: str = "entropy", n_boot: int = 1000, seed: int = 0) -> Comparison:
    """Compare every policy on ``test_trace`` at matched speed-ups (spec §7).

    Parameters
    ----------
    test_trace : Trace the numbers are reported on (with labels).
    val_trace : Trace of the validation split of the same model, to choose λ (``choose_lambda``). Without it
        λ = 1.0, and the report says so.
    speedups : targets of the matched table.
    max_speedup : AUC range 1..max_speedup.
    lambdas : λ candidates for ``choose_lambda``.
    baseline, n_boot, seed : of ``matched_vs_baseline`` (every policy against DeeBERT's entropy by default).

    Returns
    -------
    Comparison
        ``table`` (``matched_table``, its oracle row from ``oracle_frontier``), ``per_layer``
        (``per_layer_metric``), ``oracle`` (``evaluate_policy``), ``oracle_front``, ``vs_baseline``
        (``matched_vs_baseline``), the λ used and where it came from; ``.format()`` renders the report.
    """
    _require_labels(test_trace, "a comparison")
    speedups = _check_speedups(speedups, max_speedup)
    if val_trace is None:
        lam, note = 1.0, "λ = 1 (default): no validation trace given; pass one to choose λ without the test split"
    else:
        if val_trace is test_trace or (val_trace.folder is not None and val_trace.folder == test_trace.folder):
            raise CurveError("the validation trace is the test trace; trace the validation split to choose λ")
        if (val_trace.num_layers, val_trace.label_names) != (test_trace.num_layers, test_trace.label_names):
            raise CurveError(f"{_trace_name(val_trace)} has other layers or labels than {_trace_name(test_trace)}; "
                             "trace both splits with the same checkpoint")
        lam = choose_lambda(val_trace, lambdas, max_speedup=max_speedup)
        note = f"λ = {lam:g}, chosen by AUC on the validation trace {_trace_name(val_trace)}"
    curves = sweep(test_trace, default_grid(test_trace, lambdas=(lam,)))
    front = oracle_frontier(test_trace)
    return Comparison(
        table=matched_table(curves, speedups, lambda_=lam, max_speedup=max_speedup, oracle_front=front),
        per_layer=per_layer_metric(test_trace),
        oracle=evaluate_policy(test_trace, ExitPolicy("oracle")),
        lambda_=lam, lambda_note=note, metric=test_trace.metric, speedups=speedups, max_speedup=float(max_speedup),
        source=_trace_name(test_trace), num_samples=test_trace.num_samples, num_layers=test_trace.num_layers,
        curves=curves, oracle_front=front,
        vs_baseline=matched_vs_baseline(test_trace, curves, speedups, lambda_=lam, baseline=baseline, n_boot=n_boot,
                                        seed=seed),
        baseline=baseline, n_boot=int(n_boot),
    )


# ---------------------------------------------------------------------------------------------------------
# Paired bootstrap, and every policy against a baseline at matched speed-ups
# ---------------------------------------------------------------------------------------------------------


def _bootstrap(labels: np.ndarray, answers: np.ndarray, metric: str, num_labels: int, n_boot: int, seed: int,
               level: float) -> dict:
    """Paired percentile bootstrap of metric(answers[:, 0]) − metric(answers[:, 1]): (N,), (N, 2) int64."""
    if n_boot < 1 or not 0 < level < 1:
        raise CurveError(f"need n_boot >= 1 and 0 < level < 1, got {n_boot} and {level}")
    k, n = num_labels, len(labels)
    metric_a, metric_b = score_margins(metric, margins(labels, answers, k))
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    chunk = max(1, 2_000_000 // n)  # bounded memory: chunk x N indices at a time
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(size, n)).T  # (N, B) same indices for both policies
        a, b = (score_margins(metric, margins(labels[idx], answers[idx, j], k)) for j in (0, 1))
        diffs[start:start + size] = a - b
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(diffs, [tail, 100 - tail])
    right = (answers == labels[:, None]).sum(0)  # (2,) right answers of each
    return {"diff": float(metric_a - metric_b), "low": float(low), "high": float(high),
            "metric_a": float(metric_a), "metric_b": float(metric_b), "metric": metric, "n_boot": int(n_boot),
            "diff_samples": int(right[0] - right[1]), "n": int(n)}


def paired_bootstrap(trace, policy_a: ExitPolicy, policy_b: ExitPolicy, n_boot: int = 1000, seed: int = 0,
                     *, level: float = 0.95) -> dict:
    """Metric difference (a − b) on the same samples, with a percentile bootstrap confidence interval.

    Each replicate resamples the samples with replacement and scores both policies' answers on the *same*
    indices (paired), so the interval reflects the difference, not each policy's own spread.

    Parameters
    ----------
    trace : Trace with labels.
    policy_a, policy_b : ExitPolicy
    n_boot : replicates.
    seed : seed of ``numpy.random.default_rng``; the result is deterministic given it.
    level : coverage of the interval (0.95: the 2.5 and 97.5 percentiles).

    Returns
    -------
    dict
        ``diff`` (metric(a) − metric(b) on all samples), ``low``, ``high``, ``metric_a``, ``metric_b``,
        ``metric`` (its name), ``n_boot``, ``diff_samples`` (a's right answers − b's), ``n`` (samples).
    """
    _require_labels(trace, "a paired bootstrap")
    labels = np.asarray(trace.labels, dtype=np.int64)
    answers = np.stack([decide_exits(trace.wide, p).pred for p in (policy_a, policy_b)], axis=1).astype(np.int64)  # (N, 2)
    return _bootstrap(labels, answers, trace.metric, trace.num_labels, n_boot, seed, level)


VS_BASELINE_COLUMNS = ("policy", "label", "speedup", "baseline", "setting", "baseline_setting", "metric",
                       "baseline_metric", "diff", "low", "high", "diff_samples", "verdict", "n", "n_boot", "level")


def matched_vs_baseline(trace, curve_df: pd.DataFrame, speedups: Sequence[float] = DEFAULT_SPEEDUPS, *,
                        lambda_: float = 1.0, baseline: str = "entropy", policies: Sequence[str] | None = None,
                        n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Every policy against a baseline at matched speed-ups: the metric difference on the same samples, its
    paired-bootstrap interval (``paired_bootstrap``) and the gap in right answers.

    At each target s, the policy and the baseline are each taken at their best setting with speed-up ≥ s
    (``best_setting_at``, the settings behind ``matched_table``'s values).

    Parameters
    ----------
    trace : Trace with labels, the one ``curve_df`` was swept on.
    curve_df : its ``sweep``.
    speedups : targets.
    lambda_ : the λ of DE3-BERT (as in ``matched_table``).
    baseline : the policy compared against (default DeeBERT's entropy).
    policies : names to compare; default every policy in ``curve_df`` but the baseline and the oracle (which
        reads the labels: it is a bound, not a contender).
    n_boot, seed, level : of the bootstrap; every cell uses the same seed, so the same resamples.

    Returns
    -------
    DataFrame
        One row per policy (``POLICIES`` order) and target, ``VS_BASELINE_COLUMNS``: ``policy``, ``label``,
        ``speedup`` (the target), ``baseline`` (its name), ``setting`` and ``baseline_setting``
        (``ExitPolicy.describe``), ``metric`` and
        ``baseline_metric``, ``diff`` (metric − baseline's), ``low``, ``high`` (its interval), ``diff_samples``
        (right answers − the baseline's), ``verdict`` ("ahead" / "behind" when the interval excludes 0, else
        "no significant difference"; "unreachable" when either never reaches s, the numbers then NaN),
        ``n`` (samples), ``n_boot``, ``level``.
    """
    _require_labels(trace, "a paired bootstrap against the baseline")
    speedups = _check_speedups(speedups, DEFAULT_MAX_SPEEDUP)
    if n_boot < 1 or not 0 < level < 1:
        raise CurveError(f"need n_boot >= 1 and 0 < level < 1, got {n_boot} and {level}")
    present = set(curve_df["policy"])
    if baseline not in present or baseline == "oracle":
        raise CurveError(f"baseline {baseline!r} is not a policy in the curves; choose one of "
                         f"{', '.join(p for p in POLICIES if p in present and p != 'oracle')}")
    names = [p for p in POLICIES if p in present and p not in (baseline, "oracle")] if policies is None else list(policies)
    unknown = [p for p in names if p not in present]
    if unknown:
        raise CurveError(f"the curves have no rows for {', '.join(unknown)}; sweep it first")
    if "de3" in names or baseline == "de3":
        frontier(curve_df, "de3", lambda_)  # refuses a λ the curves do not hold
    labels = np.asarray(trace.labels, dtype=np.int64)
    answers: dict[ExitPolicy, np.ndarray] = {}

    def answer(policy: ExitPolicy) -> np.ndarray:
        if policy not in answers:
            answers[policy] = decide_exits(trace.wide, policy).pred.astype(np.int64)
        return answers[policy]

    def setting(name: str, s: float) -> ExitPolicy | None:
        return best_setting_at(curve_df, name, s, lambda_=lambda_ if name == "de3" else None)

    rows = []
    for name in names:
        for s in speedups:
            mine, theirs = setting(name, s), setting(baseline, s)
            row = {"policy": name, "label": POLICY_LABELS[name], "speedup": s, "baseline": baseline,
                   "setting": mine.describe() if mine else "", "baseline_setting": theirs.describe() if theirs else "",
                   "n": int(trace.num_samples), "n_boot": int(n_boot), "level": float(level)}
            if mine is None or theirs is None:
                row.update(metric=math.nan, baseline_metric=math.nan, diff=math.nan, low=math.nan, high=math.nan,
                           diff_samples=math.nan, verdict="unreachable")
            else:
                b = _bootstrap(labels, np.stack([answer(mine), answer(theirs)], axis=1), trace.metric,
                               trace.num_labels, n_boot, seed, level)
                row.update(metric=b["metric_a"], baseline_metric=b["metric_b"], diff=b["diff"], low=b["low"],
                           high=b["high"], diff_samples=b["diff_samples"],
                           verdict="ahead" if b["low"] > 0 else "behind" if b["high"] < 0 else "no significant difference")
            rows.append(row)
    return pd.DataFrame(rows, columns=list(VS_BASELINE_COLUMNS))


def format_vs_baseline_cell(row) -> str:
    """One cell of a ``matched_vs_baseline`` table: "+0.23 [-0.46, +0.92] (+2)" — the difference ×100, its
    interval, and the gap in right answers; "-" when unreachable."""
    if row["verdict"] == "unreachable":
        return "-"
    return (f"{100 * row['diff']:+.2f} [{100 * row['low']:+.2f}, {100 * row['high']:+.2f}] "
            f"({int(row['diff_samples']):+d})")


def format_vs_baseline(vs: pd.DataFrame, speedups: Sequence[float], *, metric: str, lambda_: float) -> list[str]:
    """The plain-text lines of a ``matched_vs_baseline`` table: a title stating n, a policy x target table."""
    first = vs.iloc[0]
    baseline = POLICY_LABELS[first["baseline"]]
    lines = [f"vs {baseline} at the same speed-up, paired bootstrap {100 * first['level']:g} % CI, n = {int(first['n'])} "
             f"({int(first['n_boot'])} resamples):",
             f"{metric} difference x100 [interval] (difference in right answers); each at its best setting with "
             "speed-up >= s"]
    head = ["policy", *(_speedup_column(s) for s in speedups)]
    rows = []
    for name, group in vs.groupby("policy", sort=False):
        cells = {float(r["speedup"]): format_vs_baseline_cell(r) for r in group.to_dict("records")}
        record = {"policy": name, "label": group["label"].iloc[0], "lambda_": lambda_}
        rows.append([_row_name(record), *(cells.get(float(s), "-") for s in speedups)])
    return [*lines, _text_table(head, rows)]


# ---------------------------------------------------------------------------------------------------------
# Command line (wired into ``analysis.cli`` by ``add_cli``)
# ---------------------------------------------------------------------------------------------------------


def add_cli(subparsers) -> None:
    """Add the ``curves`` and ``compare`` subcommands (each with ``handler``) to an argparse subparsers object."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    c = subparsers.add_parser(
        "curves", help="metric vs speed-up of every exit policy's parameter sweep, as CSV", formatter_class=fmt,
        description="Sweep every exit policy over its parameters on a trace (DE3-BERT per λ, DR, entropy, "
                    "max-probability and PCEE over data-driven thresholds; PABEE patience; static layers; oracle) "
                    "and write one CSV row per setting. Speed-up = L / mean exit layer.")
    c.add_argument("--trace", required=True, help="trace folder written by `trace`")
    c.add_argument("--out", required=True, help="CSV file to write (replaced atomically)")
    c.add_argument("--lambdas", type=flag_list(POLICY["lambda_"]), default=",".join(f"{v:g}" for v in DEFAULT_LAMBDAS),
                   help="comma-separated EDR weights λ to sweep")
    c.set_defaults(handler=cmd_curves)

    p = subparsers.add_parser(
        "compare", help="every exit policy at matched speed-ups, with AUC and bootstrap intervals (paper-style table)",
        formatter_class=fmt,
        description="Best metric of every policy at a speed-up >= each target, and the area under its "
                    "metric-vs-speed-up frontier (mean metric over speed-ups 1..max); the oracle row is the oracle "
                    "frontier (an upper bound for accuracy). Under it, every policy against DeeBERT (entropy) at "
                    "the same target: the difference with a paired-bootstrap 95 %% interval over the n samples, and "
                    "the gap in right answers. DE3-BERT's λ is chosen on --val-trace; without it λ = 1.")
    p.add_argument("--trace", required=True, help="trace folder of the split to report (e.g. the test split)")
    p.add_argument("--val-trace", help="trace folder of the validation split, used only to choose λ")
    p.add_argument("--speedups", type=flag_list(RUN["speedup"]), default="1.5,2,3",
                   help="comma-separated target speed-ups, each >= 1")
    p.add_argument("--max-speedup", type=flag(RUN["max_speedup"]), default=DEFAULT_MAX_SPEEDUP,
                   help="upper end of the AUC range (> 1)")
    p.add_argument("--n-boot", type=flag(RUN["n_boot"]), default=1000,
                   help="bootstrap resamples of the comparison with the baseline")
    p.set_defaults(handler=cmd_compare)


def write_csv_atomic(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a CSV beside ``path`` and rename it over: a reader never sees half a file. ``path`` must pass
    ``io.check_output`` as a file (not a folder, in a place that can be written)."""
    path = check_output(path, kind="file", what="CSV file", error=CurveError)
    with atomic_file(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path


def cmd_curves(args) -> int:
    from .trace import load_trace

    # checked and locked before the trace is read: never the trace itself or a file inside it
    with claim_output(args.out, inputs=[args.trace], kind="file", error=CurveError,
                      command="analysis curves"):
        trace = load_trace(args.trace)
        curves = sweep(trace, default_grid(trace, lambdas=args.lambdas))
        write_csv_atomic(curves, args.out)
    print(f"{len(curves)} settings of {curves['policy'].nunique()} policies on {trace.num_samples} samples: {args.out}")
    return 0


def cmd_compare(args) -> int:
    from .trace import load_trace

    test = load_trace(args.trace)
    val = load_trace(args.val_trace) if args.val_trace else None
    print(compare(test, val, args.speedups, max_speedup=args.max_speedup, n_boot=args.n_boot).format())
    return 0
