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

from analysis.curves import policy_from_row
from analysis.policies import POLICIES, THRESHOLD_SIGNAL, ExitPolicy, threshold_signal
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
# τ each threshold policy opens with: about 2× speed-up on the default (SST-2 dev, λ = 1, patience 2: DE3 2.19×,
# entropy 2.08×, DR 1.87×, max-probability 2.02×, PCEE 2.07×), so switching policy compares like with like and the
# default already lets a few samples out too early (6 premature exits for DE3).
DEFAULT_TAUS = {"de3": 0.2, "dr": 0.15, "entropy": 0.3, "maxprob": 0.95, "pcee": 0.7}

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
    values = threshold_signal(trace.wide, policy)
    return None if values is None else (THRESHOLD_SIGNAL[policy.name], values)


def map_layer(value, num_layers: int) -> tuple[int, str | None]:
    """The prototype map's layer from a page setting (a link's ``map_layer``): (layer in 1..L, a warning or None).

    No setting gives the middle layer. One outside 1..L -- or not a whole number -- is clamped into range with a
    warning saying which layer is shown instead: never Python's negative indexing (layer 0 is not layer L).
    """
    middle = (num_layers + 1) // 2
    if value is None:
        return middle, None
    try:
        number = float(value)
        layer = int(number)
    except (TypeError, ValueError, OverflowError):
        return middle, f"map layer {value!r} from the link is not a layer number; showing layer {middle} of 1..{num_layers}"
    if layer != number or isinstance(value, bool):
        return middle, f"map layer {value!r} from the link is not a layer number; showing layer {middle} of 1..{num_layers}"
    if 1 <= layer <= num_layers:
        return layer, None
    shown = min(max(layer, 1), num_layers)
    return shown, f"map layer {layer} from the link is outside this trace's layers 1..{num_layers}; showing layer {shown}"


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
        "oracle": "the prediction is correct; never right at any layer → layer 1 (needs the label: an upper bound)",
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
        return "every sample is first right at the last layer"
    name, values = sig
    early = values[:, :-1]
    if policy.name == "maxprob":
        return (f"the largest max-probability at layers < {L} is {np.nanmax(early):.6g}; "
                f"lower τ below it to let someone exit")
    return (f"the smallest {SIGNAL_LABELS[name]} at layers < {L} is {np.nanmin(early):.6g}; "
            f"raise τ above it to let someone exit")


# ---------------------------------------------------------------------------------------------------------
# Comparing policies at a matched speed-up
# ---------------------------------------------------------------------------------------------------------


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


SMALL_TRACE = 50  # below this many labelled samples, percentages move in coarse steps: say so


def sample_size_note(trace) -> str | None:
    """A warning for a trace with fewer than ``SMALL_TRACE`` labelled samples (each one moves a percentage by
    100/n points), else None."""
    n = trace.num_samples
    if not trace.labelled or n >= SMALL_TRACE:
        return None
    return (f"Only {n} labelled sample{'s' if n != 1 else ''}: every percentage here moves in steps of "
            f"{100 / n:.1f} points (one sample), so small differences are noise. Trace more rows for firm numbers.")


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
