"""Comparing exit policies on a trace (spec §7), from its sweep (``curves`` defines and computes speed-up, frontier and
AUC):

    matched_table          every policy's best metric at a speed-up ≥ each target, and its AUC
    choose_lambda          DE3-BERT's λ, by AUC on a validation trace
    compare, Comparison    all of it on a test trace, and the paper-style text report (``Comparison.format``)
    paired_bootstrap       two policies' metric difference on the same samples, with a percentile interval
    matched_vs_baseline    every policy against DeeBERT's entropy at the same targets: the difference, its
                           paired-bootstrap interval and the gap in right answers (one function for the CLI, the
                           study and the app)

Everything here needs labels: a trace without them is refused with a ``CurveError``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .curves import (
    DEFAULT_LAMBDAS,
    DEFAULT_MAX_SPEEDUP,
    N_QUANTILES,
    _TOL,
    _per_lambda,
    _require_labels,
    _threshold_grid,
    _trace_name,
    best_metric_at,
    best_setting_at,
    default_grid,
    evaluate_policy,
    frontier,
    frontier_auc,
    oracle_frontier,
    per_layer_metric,
    sweep,
    upper_envelope,
)
from .errors import CurveError
from .metrics import margins, score_margins
from .policies import DE3, ORACLE, REGISTRY, ExitPolicy, decide_exits
from .validate import RUN

DEFAULT_SPEEDUPS = (1.5, 2.0, 3.0)
DEFAULT_BASELINE = "entropy"  # DeeBERT: what every policy is compared against at matched speed-ups


def _bounds(names) -> set[str]:
    """The names among ``names`` of policies that read the labels (the oracle): bounds, not contenders."""
    return {n for n in names if n in REGISTRY and REGISTRY[n].needs_labels}


# ---------------------------------------------------------------------------------------------------------
# Matched speed-ups
# ---------------------------------------------------------------------------------------------------------


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
        One row per policy present, in ``policies.REGISTRY`` order: ``policy``, ``label``, ``lambda_``, one column
        per target (``"1.5x"``...; NaN when unreachable), ``auc``, ``max_speedup`` (the policy's largest),
        ``note`` (why a value is missing, else empty).
    """
    speedups = _check_speedups(speedups, max_speedup)
    present = set(curves["policy"])
    rows = []
    names = [p for p in REGISTRY if p in present or (p == ORACLE and oracle_front is not None)]
    for name in names:
        if name == ORACLE and oracle_front is not None:
            front = upper_envelope(oracle_front)
        else:
            front = frontier(curves, name, lambda_ if _per_lambda(name) else None)
        top = float(front["speedup"].max())
        needed = max(max(speedups), max_speedup)
        note = "" if top >= needed * (1 - _TOL) else f"reaches {top:.2f}x at most"
        if name == ORACLE and oracle_front is not None:
            kind = "frontier: upper bound" if oracle_front.attrs.get("bound") else "reference point, not a bound"
            note = "; ".join(v for v in (f"{kind} (uses labels)", note) if v)
        rows.append({"policy": name, "label": REGISTRY[name].label,
                     "lambda_": float(lambda_) if _per_lambda(name) else math.nan,
                     **{_speedup_column(s): best_metric_at(front, s) for s in speedups},
                     "auc": frontier_auc(front, max_speedup), "max_speedup": top, "note": note})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------
# Choosing λ and comparing policies
# ---------------------------------------------------------------------------------------------------------


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
    policies = [p for lam in lambdas for p in _threshold_grid(val_trace, ExitPolicy(DE3, lambda_=float(lam)), n_quantiles)]
    curves = sweep(val_trace, policies)
    aucs = [frontier_auc(frontier(curves, DE3, float(lam)), max_speedup) for lam in lambdas]
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
    baseline: str = DEFAULT_BASELINE
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
    return record["label"] + (f", λ={record['lambda_']:g}" if _per_lambda(record["policy"]) else "")


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
            baseline: str = DEFAULT_BASELINE, n_boot: int = 1000, seed: int = 0) -> Comparison:
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
        oracle=evaluate_policy(test_trace, ExitPolicy(ORACLE)),
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
                        lambda_: float = 1.0, baseline: str = DEFAULT_BASELINE, policies: Sequence[str] | None = None,
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
        One row per policy (``policies.REGISTRY`` order) and target, ``VS_BASELINE_COLUMNS``: ``policy``, ``label``,
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
    contenders = [p for p in REGISTRY if p in present and p not in _bounds(present)]
    if baseline not in contenders:
        raise CurveError(f"baseline {baseline!r} is not a policy in the curves; choose one of {', '.join(contenders)}")
    names = [p for p in contenders if p != baseline] if policies is None else list(policies)
    unknown = [p for p in names if p not in present]
    if unknown:
        raise CurveError(f"the curves have no rows for {', '.join(unknown)}; sweep it first")
    for name in dict.fromkeys([*names, baseline]):
        if _per_lambda(name):
            frontier(curve_df, name, lambda_)  # refuses a λ the curves do not hold
    labels = np.asarray(trace.labels, dtype=np.int64)
    answers: dict[ExitPolicy, np.ndarray] = {}

    def answer(policy: ExitPolicy) -> np.ndarray:
        if policy not in answers:
            answers[policy] = decide_exits(trace.wide, policy).pred.astype(np.int64)
        return answers[policy]

    def setting(name: str, s: float) -> ExitPolicy | None:
        return best_setting_at(curve_df, name, s, lambda_=lambda_ if _per_lambda(name) else None)

    rows = []
    for name in names:
        for s in speedups:
            mine, theirs = setting(name, s), setting(baseline, s)
            row = {"policy": name, "label": REGISTRY[name].label, "speedup": s, "baseline": baseline,
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
    baseline = REGISTRY[first["baseline"]].label
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
