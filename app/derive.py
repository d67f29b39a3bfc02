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
from analysis.policies import DE3, REGISTRY, ExitPolicy, exit_mask, input_columns, threshold_signal
from analysis.signals import edr

# ---------------------------------------------------------------------------------------------------------
# Threshold grids for the sliders: "nice" numbers, evenly spaced on a log scale (signals span 1e-4..1)
# ---------------------------------------------------------------------------------------------------------

_MANTISSAS = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)
LOG_GRID = tuple([0.0] + [round(m * 10.0 ** e, 6) for e in range(-4, 0) for m in _MANTISSAS] + [1.0])
# for values that are near 1 when sure (max-probability exits when max_prob > τ): just below 1
ONE_MINUS_LOG_GRID = tuple(sorted({round(1.0 - g, 6) for g in LOG_GRID}))
TAU_GRIDS = {"log": LOG_GRID, "1-log": ONE_MINUS_LOG_GRID}  # by ``PolicySpec.tau_grid``
LAMBDA_GRID = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 64.0)
# The τ each threshold policy opens with is its ``PolicySpec.tau``: about 2× speed-up on the default (SST-2 dev,
# λ = 1, patience 2: DE3 2.19×, entropy 2.08×, DR 1.87×, max-probability 2.02×, PCEE 2.07×), so switching policy
# compares like with like and the default already lets a few samples out too early (6 premature exits for DE3).

SIGNAL_LABELS = {"entropy": "entropy", "dr": "DR", "edr": "EDR", "max_prob": "max-probability"}


def signal_label(name: str) -> str:
    """How the app names a signal (a policy's ``value_name``): "DR", "EDR", ...; other names as they are."""
    return SIGNAL_LABELS.get(name, name)


def tau_grid(policy_name: str, current: float | None = None) -> list[float]:
    """Slider options for τ of a policy, with ``current`` inserted when it is off the grid (a shared URL)."""
    grid = set(TAU_GRIDS[REGISTRY[policy_name].tau_grid])
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
    return None if values is None else (policy.spec.value_name, values)


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


def no_early_exit_hint(trace, policy: ExitPolicy) -> str:
    """Why nobody leaves before the last layer, and what to change."""
    L, spec = trace.num_layers, policy.spec
    sig = policy_signal(trace, policy)
    if sig is None:
        return spec.stuck(policy, L) if spec.stuck else f"no layer before {L} passes {policy.exit_test()}"
    name, values = sig
    early = values[:, :-1]
    if spec.above:
        return (f"the largest {signal_label(name)} at layers < {L} is {np.nanmax(early):.6g}; "
                f"lower τ below it to let someone exit")
    return (f"the smallest {signal_label(name)} at layers < {L} is {np.nanmin(early):.6g}; "
            f"raise τ above it to let someone exit")


def one_sample(trace, sample: int) -> dict[str, np.ndarray]:
    """The (1, L) columns every policy reads, of one sample: enough to decide its exit under any policy."""
    return {k: np.asarray(trace.wide[k])[sample:sample + 1] for k in input_columns()}


def exit_test_column(trace, policy: ExitPolicy, sample: int, exit_layer: int) -> list[str]:
    """Per layer: what the policy's exit test said for ``sample`` (which exits at ``exit_layer``)."""
    L, e = trace.num_layers, exit_layer
    passes = np.asarray(exit_mask(policy, one_sample(trace, sample)))[0]
    out = []
    for m in range(1, L + 1):
        if m == e:
            out.append("passes → exits" if m < L else "last layer answers")
        elif m < e:
            out.append("fails → continues")
        else:
            out.append("after the exit" + (" (would pass)" if passes[m - 1] and m < L else ""))
    return out


# ---------------------------------------------------------------------------------------------------------
# Comparing policies at a matched speed-up
# ---------------------------------------------------------------------------------------------------------


def matched_settings(curves: pd.DataFrame, speedup: float, *, lambda_: float | None = None,
                     patience: int | None = None) -> dict[str, tuple[ExitPolicy, pd.Series]]:
    """For every policy in ``curves``: the setting with the best metric among those at least as fast as
    ``speedup`` (ties: the faster one); the fastest setting when none is. A threshold policy's curve at
    ``lambda_`` (DE3) and ``patience`` (PCEE) when it has those parameters and the curves hold them."""
    out = {}
    for name, spec in REGISTRY.items():
        rows = curves[curves["policy"] == name]
        if "lambda_" in spec.curve_params and lambda_ is not None:
            same = rows[np.isclose(rows["lambda_"], lambda_)]
            rows = same if len(same) else rows
        if "patience" in spec.curve_params and patience is not None:
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

    sub = one_sample(trace, sample)
    rows = []
    label = int(trace.labels[sample])
    for name, p in policies.items():
        d = decide_exits(sub, p)
        rows.append({"policy": name, "setting": p.describe(), "exit_layer": int(d.exit_layer[0]),
                     "pred": int(d.pred[0]), "correct": bool(d.pred[0] == label)})
    return pd.DataFrame(rows)


def text_mask(samples: pd.DataFrame, query: str) -> np.ndarray:
    """(N,) bool: which samples' text (or text pair) contains every word of ``query`` (case-insensitive); all of
    them for a query without words."""
    words = [w for w in query.lower().split() if w]
    hit = np.ones(len(samples), dtype=bool)
    if not words:
        return hit
    text = samples["text"].str.lower()
    if "text_pair" in samples:
        text = text + " " + samples["text_pair"].fillna("").str.lower()
    for w in words:
        hit &= text.str.contains(w, regex=False).to_numpy()
    return hit


def search_samples(samples: pd.DataFrame, query: str, limit: int = 200) -> pd.DataFrame:
    """Samples whose text (or text pair) contains every word of ``query`` (case-insensitive)."""
    if not query.split():
        return samples.head(0)
    return samples[text_mask(samples, query)].head(limit)


# ---------------------------------------------------------------------------------------------------------
# The sample table and the selections made on charts (app/selection.py holds the selection itself)
# ---------------------------------------------------------------------------------------------------------


def sample_table(trace, decision, policy: ExitPolicy) -> pd.DataFrame:
    """One row per sample under ``policy``: sample_id, text, (true: the class name), answer (at the exit), exit_layer,
    (bucket, right), and the signals at the exit: entropy, dr, edr (at the policy's λ), max_prob. The label columns
    (true, bucket, right) only with labels (``trace.labelled``)."""
    names = np.asarray(trace.label_names, dtype=object)
    rows = np.arange(trace.num_samples)
    e = np.asarray(decision.exit_layer)
    sig = signals(trace, policy.lambda_)
    out = pd.DataFrame({"sample_id": trace.samples["sample_id"].to_numpy(), "text": trace.samples["text"].to_numpy()})
    if "text_pair" in trace.samples:
        out["text_pair"] = trace.samples["text_pair"].to_numpy()
    if trace.labelled:
        out["true"] = names[trace.labels]
    out["answer"] = names[np.asarray(decision.pred)]
    out["exit_layer"] = e
    if trace.labelled:
        from analysis import taxonomy

        tax = taxonomy.error_buckets(trace, decision)
        out["bucket"] = tax["bucket"].to_numpy()
        out["right"] = tax["correct"].to_numpy()
    for name in ("entropy", "dr", "edr", "max_prob"):
        out[name] = sig[name][rows, e - 1]
    return out


def filter_samples(table: pd.DataFrame, *, true=None, answer=None, layers: tuple[int, int] | None = None,
                   buckets=None, right: bool | None = None, query: str = "") -> pd.DataFrame:
    """The rows of a ``sample_table`` that pass every filter given: true class and answer among the given names,
    exit layer in ``layers`` (inclusive), bucket among ``buckets``, right or wrong, and text containing every word of
    ``query``. None (or an empty list, or a blank query) does not filter; label filters on a table without labels
    are ignored."""
    keep = np.ones(len(table), dtype=bool)
    if true and "true" in table:
        keep &= table["true"].isin(list(true)).to_numpy()
    if answer:
        keep &= table["answer"].isin(list(answer)).to_numpy()
    if layers is not None:
        keep &= table["exit_layer"].between(int(layers[0]), int(layers[1])).to_numpy()
    if buckets and "bucket" in table:
        keep &= table["bucket"].isin(list(buckets)).to_numpy()
    if right is not None and "right" in table:
        keep &= (table["right"] == bool(right)).to_numpy()
    if query.strip():
        keep &= text_mask(table, query)
    return table[keep]


LOG_FLOOR = 1e-6  # signals are drawn on a log scale from here (a zero entropy is drawn at 1e-6)


def signal_bins(values: np.ndarray, *, tau: float | None = None, log_x: bool = True,
                bins: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """The bins of the Trade-off page's per-layer histograms: (bin index of every value (N, L) in 0..bins-1, the
    bin edges (bins + 1,), on the drawn scale: log10 of the values when ``log_x``). One range for every layer, from
    the smallest to the largest value, stretched to include τ; a value on an inner edge belongs to the bin on its
    right (as in ``np.histogram``)."""
    values = np.asarray(values, dtype=np.float64)
    x = np.log10(np.clip(values, LOG_FLOOR, None)) if log_x else values
    finite = x[np.isfinite(x)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if tau is not None and tau > 0:
        t = np.log10(max(tau, LOG_FLOOR)) if log_x else tau
        lo, hi = min(lo, t), max(hi, t)
    hi = hi if hi > lo else lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    index = np.clip(np.searchsorted(edges, np.clip(x, lo, hi), side="right") - 1, 0, bins - 1)
    return index, edges



def bin_samples(index: np.ndarray, picks, *, correct: np.ndarray | None = None,
                active: np.ndarray | None = None) -> np.ndarray:
    """Rows in the histogram bins ``picks`` (``signal_bins``' index (N, L)): each pick (layer 1-based, bin, right)
    names the samples at that layer in that bin, right (True) or wrong (False) at that layer, or either (None), and
    still running there when ``active`` (N, L) is given. Returns the sorted rows of their union."""
    index = np.asarray(index)
    hit = np.zeros(index.shape[0], dtype=bool)
    for layer, b, ok in picks:
        m = int(layer) - 1
        here = index[:, m] == int(b)
        if ok is not None and correct is not None:
            here &= np.asarray(correct)[:, m] == bool(ok)
        if active is not None:
            here &= np.asarray(active)[:, m]
        hit |= here
    return np.flatnonzero(hit)


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


def exits_table(trace, decision, policy) -> pd.DataFrame:
    """One row per sample for the export: where it leaves under ``policy`` and what it answers, with class names
    and the text; with labels, also the true class, right/wrong and the error bucket (``taxonomy.error_buckets``)."""
    names = np.asarray(trace.label_names, dtype=object)
    out = pd.DataFrame({"sample_id": trace.samples["sample_id"].to_numpy(), "exit_layer": decision.exit_layer,
                        "answer": names[decision.pred]})
    if trace.labelled:
        from analysis import taxonomy

        tax = taxonomy.error_buckets(trace, decision, policy)
        out.insert(1, "true", names[trace.labels])
        out = pd.concat([out, tax.drop(columns=["sample_id", "exit_layer"]).rename(columns={"pred": "answer_id",
                                                                                             "label": "true_id"})], axis=1)
    out["text"] = trace.samples["text"].to_numpy()
    if "text_pair" in trace.samples:
        out["text_pair"] = trace.samples["text_pair"].to_numpy()
    return out


def playground_examples(trace, limit: int = 300) -> dict[str, str]:
    """Example inputs from a trace's own samples: for each class (at most 4), the shortest of its samples that the
    last layer gets surest (right, when there are labels), and the sample the last layer is least sure about —
    so every checkpoint, the user's own included, offers inputs from its own task. A text longer than ``limit``
    characters is offered by its first line (a news article's headline), cut at ``limit``."""
    texts = np.array([t if len(t) <= limit else t.split("\n", 1)[0][:limit]  # a long document: its first line
                      for t in trace.samples["text"].astype(str)], dtype=object)
    final = np.asarray(trace.wide["pred"])[:, -1]
    entropy = np.asarray(trace.wide["entropy"])[:, -1]
    ok = np.array([bool(t.strip()) for t in texts])
    out = {}
    for k, name in enumerate(trace.label_names[:4]):
        mine = ok & (final == k) & ((trace.labels == k) if trace.labelled else True)
        if mine.any():
            idx = np.flatnonzero(mine)
            sure = idx[np.argsort(entropy[idx], kind="stable")[: max(1, len(idx) // 10)]]  # the surest tenth
            out[str(name)] = texts[sure[np.argmin([len(texts[i]) for i in sure])]]
    unsure = np.flatnonzero(ok)
    out["ambiguous"] = texts[unsure[int(np.argmax(entropy[unsure]))]]
    return out


# ---------------------------------------------------------------------------------------------------------
# Two policies side by side (the Policy diff page)
# ---------------------------------------------------------------------------------------------------------

DIFF_OUTCOMES = ("only A right", "only B right", "both right", "both wrong")


def policy_diff(trace, a: ExitPolicy, b: ExitPolicy) -> pd.DataFrame:
    """Per sample: where policies ``a`` and ``b`` let it out, what each answers, whether each is right, and the
    outcome (``DIFF_OUTCOMES``: only A right, only B right, both right, both wrong). Needs labels."""
    from analysis.policies import decide_exits

    da, db = decide_exits(trace.wide, a), decide_exits(trace.wide, b)
    labels = np.asarray(trace.labels)
    ra, rb = da.pred == labels, db.pred == labels
    outcome = np.select([ra & ~rb, rb & ~ra, ra & rb], DIFF_OUTCOMES[:3], DIFF_OUTCOMES[3])
    return pd.DataFrame({"sample_id": trace.samples["sample_id"].to_numpy(), "label": labels,
                         "exit_a": da.exit_layer, "answer_a": da.pred, "right_a": ra,
                         "exit_b": db.exit_layer, "answer_b": db.pred, "right_b": rb, "outcome": outcome})


def diff_counts(diff: pd.DataFrame) -> dict[str, int]:
    """How many samples fall in each of ``DIFF_OUTCOMES`` (all four keys, zeros included)."""
    counts = diff["outcome"].value_counts()
    return {o: int(counts.get(o, 0)) for o in DIFF_OUTCOMES}


def best_lambda(curves: pd.DataFrame, max_speedup: float = 3.0) -> float | None:
    """The λ whose DE3-BERT frontier has the best AUC over speed-ups 1..``max_speedup`` on these curves (ties: the
    smaller λ), or None when no λ reaches it. Chosen on the curves' own trace: a description, not a tuned result."""
    from analysis.curves import frontier, frontier_auc

    rows = curves[curves["policy"] == DE3]
    best = None
    for lam in sorted(rows["lambda_"].dropna().unique()):
        auc = frontier_auc(frontier(curves, DE3, float(lam)), max_speedup)
        if not math.isnan(auc) and (best is None or auc > best[1] + 1e-12):
            best = (float(lam), auc)
    return None if best is None else best[0]
