"""Metric vs speed-up of every exit policy (spec §5–§6), as pure functions of a trace: evaluating a policy, the
sweep of every policy's settings, frontiers and their AUC.

Definitions (spec §6), used here and in ``compare``:

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

How a metric is scored from counts is ``metrics``'; comparing policies at matched speed-ups (the table, λ choice,
the paired bootstrap) is ``compare``'s.

A trace without labels (``meta["labelled"]`` False: label −1, ``correct`` all False) still has speed-ups,
saved fractions, mean exit layers and FLOPs; its metric is NaN, and whatever needs labels (the oracle, the
oracle frontier, λ choice, ``compare``, the bootstrap) refuses it with a ``CurveError``.

How the sweep is fast and still exact. For a threshold policy the test at layer m is ``signal_m < τ′``
(``PolicySpec.exit_signal``; max-probability: ``−max_prob_m < −τ``; PCEE: the largest entropy of the last
``patience`` layers ``< τ``).
A sample has left by layer m iff the *running minimum* of its signal up to m is below τ, so with the
thresholds sorted, the settings at which a sample leaves at layer e form one contiguous range. Adding +1 at
the range's start and −1 at its end (``np.bincount``) and a cumulative sum over thresholds gives, for every
threshold at once, the confusion matrix's margins (``metrics.Margins``: O(K) per setting, never O(K²)), the exit counts
and the FLOPs — O(N·L) work instead of O(N·L·T).
Thresholds are compared in the signal's dtype, exactly as ``numpy`` does in ``policies.exit_mask``; the tests
check every row against ``decide_exits``.

Which policies exist, what each sweeps and how is read from ``policies.REGISTRY``: a new policy declared there is
swept here, and tabled and compared in ``compare``, with no change to either module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from .errors import CurveError
from .metrics import Margins, margins, score_margins
from .policies import (
    ORACLE,
    REGISTRY,
    ExitPolicy,
    GridArgs,
    PolicySpec,
    decide_exits,
    exit_mask,
    first_exit,
)

DEFAULT_LAMBDAS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
DEFAULT_MAX_SPEEDUP = 3.0
N_QUANTILES = 100
PCEE_PATIENCES = (1, 2, 3)
CURVE_COLUMNS = ("policy", "label", "tau", "lambda_", "patience", "layer",
                 "speedup", "saved_fraction", "metric", "mean_exit_layer", "flops_ratio")
_TOL = 1e-9  # relative slack when asking whether a speed-up reaches a target (12/6 must count as 2x)


def _labelled(trace) -> bool:
    """Whether the trace has labels (``Trace.labelled``; ``meta["labelled"]``, True when absent)."""
    return bool(getattr(trace, "labelled", trace.meta.get("labelled", True)))


def _per_lambda(name: str) -> bool:
    """Whether a policy's curves are one per λ (DE3-BERT): tables and frontiers take one λ."""
    spec = REGISTRY.get(name)
    return spec is not None and "lambda_" in spec.params


def _require_labels(trace, what: str) -> None:
    if not _labelled(trace):
        raise CurveError(f"{_trace_name(trace)} has no labels: {what} needs labelled data; trace a labelled split")


def _trace_name(trace) -> str:
    return str(trace.folder) if getattr(trace, "folder", None) is not None else "in-memory trace"


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
    if policy.spec.needs_labels:
        _require_labels(trace, f"the {policy.label}")
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


def _running_min(signal: np.ndarray) -> np.ndarray:
    """Running minimum over the layers that may exit early: (N, L) -> (N, L-1). NaN never passes a test."""
    return np.fmin.accumulate(signal[:, :-1], axis=1)


def _signal_taus(spec: PolicySpec, taus: Sequence[float], dtype) -> np.ndarray:
    """Policy thresholds as compared with ``spec.exit_signal``: in its dtype, negated when it exits above τ."""
    return (spec.sign * np.asarray(taus, dtype=np.float64)).astype(dtype)


def _threshold_grid(trace, base: ExitPolicy, n_quantiles: int = N_QUANTILES) -> list[ExitPolicy]:
    """Thresholds of ``base``'s policy (at its other parameters) from the data: quantiles of the running-minimum
    signal at layers < L, plus "exit no one" (0; max-probability 1) and "exit everyone at layer 1" (+inf;
    max-probability −inf).

    The mean exit layer is 1 + (1/N)·#{(n, m < L): runmin[n, m] >= τ}, so quantiles of the running minimum
    space the settings evenly in mean exit layer.
    """
    spec = base.spec
    signal = spec.exit_signal(trace.wide, base)
    values = _running_min(signal)
    values = values[np.isfinite(values)].astype(np.float64)
    natural_none = min(spec.sign * b for b in spec.bounds)  # the smallest the signal can be (-max_prob >= -1)
    nobody = min(natural_none, values.min()) if values.size else natural_none
    quantiles = np.quantile(values, np.linspace(0.0, 1.0, n_quantiles)) if values.size else np.empty(0)
    grid = np.unique(np.concatenate([[nobody], quantiles, [np.inf]]).astype(signal.dtype))
    return [replace(base, tau=spec.sign * float(t)) for t in grid]


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
        Every policy of ``policies.REGISTRY`` in its order, at each of its ``settings``: de3 (per λ), dr,
        entropy, maxprob: thresholds; pabee: patience 1..L-1; pcee: patience × thresholds; static: layers 1..L;
        oracle once (not for a trace without labels: it needs them). A threshold policy sweeps τ at each setting.
    """
    args = GridArgs(trace.num_layers, tuple(lambdas), tuple(pcee_patiences))
    labelled = _labelled(trace)
    grid: list[ExitPolicy] = []
    for name, spec in REGISTRY.items():
        if spec.needs_labels and not labelled:
            continue
        for setting in spec.sweep_settings(args):
            base = ExitPolicy(name, **setting)
            grid += _threshold_grid(trace, base, n_quantiles) if spec.threshold else [base]
    return grid


def _vectorisable(policy: ExitPolicy) -> bool:
    """Threshold policies whose τ numpy compares in the signal's dtype (a Python number, not NaN)."""
    return (policy.spec.threshold and type(policy.tau) in (float, int)
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
    bound = next((p for p in policies if p.spec.needs_labels), None)
    if bound is not None:
        _require_labels(trace, f"the {bound.label}")
    ctx = _Context.of(trace)
    stats = {c: np.full(len(policies), np.nan) for c in CURVE_COLUMNS[6:]}

    def put(indices: list[int], summary: dict[str, np.ndarray], rows: np.ndarray) -> None:
        for col, values in summary.items():
            stats[col][indices] = values[rows]

    groups: dict[tuple, list[int]] = {}
    direct: list[int] = []
    for i, p in enumerate(policies):
        if _vectorisable(p):  # one group per curve: the policy at its parameters other than τ
            key = (p.name, *(getattr(p, k) for k in p.spec.curve_params))
            groups.setdefault(key, []).append(i)
        else:
            direct.append(i)
    for indices in groups.values():
        base = policies[indices[0]]
        signal = base.spec.exit_signal(trace.wide, base)  # (N, L)
        taus = _signal_taus(base.spec, [policies[i].tau for i in indices], signal.dtype)
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
# Frontiers and AUC
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
    if _per_lambda(policy):
        lams = np.unique(rows["lambda_"].to_numpy(dtype=np.float64))
        if lambda_ is None and len(lams) > 1:
            raise CurveError(f"the curves hold {REGISTRY[policy].label} at several λ ({', '.join(f'{v:g}' for v in lams)}); pick one")
        if lambda_ is not None:
            rows = rows[np.isclose(rows["lambda_"].to_numpy(dtype=np.float64), lambda_, rtol=1e-12, atol=0.0)]
    if rows.empty:
        what = f"{policy} with λ={lambda_:g}" if _per_lambda(policy) and lambda_ is not None else policy
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
    metric = k / n if bound else np.array([evaluate_policy(trace, ExitPolicy(ORACLE))["metric"]])
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
    if _per_lambda(policy) and lambda_ is not None:
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
