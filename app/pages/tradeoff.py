"""Trade-off explorer: metric vs speed-up of every policy, the matched-speed-up table, and the signals' histograms."""

import dataclasses

import numpy as np
import pandas as pd
import streamlit as st

from analysis.compare import format_vs_baseline_cell
from analysis.curves import evaluate_policy
from analysis.policies import REGISTRY, decide_exits
from app import cache, charts, derive, selection, state

SPEEDUPS = (1.5, 2.0, 3.0)


def matched_table_view(table: pd.DataFrame, metric: str, vs: pd.DataFrame | None = None) -> pd.DataFrame:
    """The matched-speed-up table, formatted: one row per policy, metric at each target and AUC.

    With ``vs`` (``compare.matched_vs_baseline``), each target's column is followed by the difference to the
    baseline at that target: "+0.45 [−0.45, +1.35] (+1)" = points ×100, 95 % paired-bootstrap interval, right
    answers gained; "baseline" on the baseline's row, "–" where either cannot reach the target or for the oracle.
    """
    shown = pd.DataFrame({"policy": [r["label"] + (f" (λ={r['lambda_']:g})" if pd.notna(r["lambda_"]) else "")
                                     for r in table.to_dict("records")]})
    cells, baseline = {}, None
    if vs is not None and len(vs):
        baseline = vs["baseline"].iloc[0]
        cells = {(r["policy"], f"{r['speedup']:g}x"): format_vs_baseline_cell(r).replace("-", "−")
                 for r in vs.to_dict("records") if r["verdict"] != "unreachable"}
    for col in [c for c in table.columns if c.endswith("x")]:
        shown[f"best at ≥{col}"] = [derive.fmt_metric(v, metric) for v in table[col]]
        if baseline is not None:
            shown[f"Δ vs {baseline} at ≥{col}"] = [
                "baseline" if p == baseline else cells.get((p, col), "–") for p in table["policy"]]
    shown["AUC 1–3×"] = [derive.fmt_metric(v, metric) for v in table["auc"]]
    shown["fastest"] = [f"{v:.2f}×" for v in table["max_speedup"]]
    shown["note"] = table["note"]
    return shown


def _adopt_clicked_setting() -> None:
    """A point clicked on the trade-off chart becomes the current policy (the sidebar follows)."""
    event = st.session_state.get("to_chart")
    points = (event or {}).get("selection", {}).get("points", []) if event else []
    for point in points:
        custom = point.get("customdata")
        if not isinstance(custom, list) or len(custom) != 5 or custom[0] not in REGISTRY:
            continue
        name, tau, lambda_, patience, layer = custom
        if REGISTRY[name].threshold and tau is None:
            st.toast("That end point is τ = ∞: everyone leaves at layer 1 (the static exit at layer 1 does the same).")
            return
        kwargs = {k: v for k, v in (("tau", tau), ("lambda_", lambda_)) if v is not None}
        kwargs.update({k: int(v) for k, v in (("patience", patience), ("layer", layer)) if v is not None})
        chosen = dataclasses.replace(state.current_policy(), name=name, **kwargs)
        state.set_policy(chosen)
        st.toast(f"Now using {chosen.describe()}")
        return


def render() -> None:
    ctx = state.require_trace()
    if ctx is None:
        return
    trace, policy = ctx.trace, ctx.policy
    L, metric = trace.num_layers, trace.metric
    st.title("Trade-off explorer")
    st.markdown("Every exit policy's **metric vs speed-up**, from one recorded trace. Choose the policy and move τ, λ, "
                "patience or the static layer **in the sidebar**: that only re-applies the exit rule to recorded numbers "
                "(≈1 ms), it never re-runs BERT.")

    result = evaluate_policy(trace, policy)
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("speed-up", f"{result['speedup']:.2f}×")
    c2.metric(derive.metric_name(metric), derive.fmt_metric(result["metric"], metric) if trace.labelled else "no labels")
    c3.metric("saved fraction", f"{100 * result['saved_fraction']:.1f}%")
    c4.metric("FLOPs ratio", f"{100 * result['flops_ratio']:.1f}%")
    if result["exit_counts"][-1] == trace.num_samples:
        st.warning(f"No sample can exit before the last layer ({L}) with {policy.describe()}: "
                   f"{derive.no_early_exit_hint(trace, policy)}.")

    if state.has_labels(ctx, "A metric-vs-speed-up curve"):
        curves_and_matched_table(ctx, result)
    histograms(ctx)


def curves_and_matched_table(ctx, result: dict) -> None:
    """Every policy's curve with the current point, and the matched-speed-up table with its statistics."""
    trace, policy, ref = ctx.trace, ctx.policy, ctx.ref
    metric = trace.metric
    curves = cache.get_sweep(ref, policy.lambda_, policy.patience)
    o1, o2, o3 = st.columns([2, 1, 1])
    x = o1.segmented_control("x axis", ["speedup", "flops"], default="speedup", key="to_x",
                             format_func={"speedup": "speed-up (layers)", "flops": "speed-up (FLOPs)"}.get) or "speedup"
    frontier_only = o2.toggle("frontier only", key="to_frontier",
                              help="Each policy's upper envelope: the best metric among its settings at a speed-up ≥ s.")
    other_lambdas = o3.toggle("DE3 at other λ", key="to_lambdas", help="Adds DE3-BERT's curves at the other λ of the sweep, dotted (click a legend entry to hide one).")
    labelled = trace.labelled
    oracle_front = cache.get_oracle_frontier(ref)
    fig = charts.tradeoff_chart(curves, current=result, current_label=policy.describe(), lambda_=policy.lambda_,
                                patience=policy.patience, metric_title=derive.metric_title(metric), x=x,
                                frontier_only=frontier_only, other_lambdas=other_lambdas, oracle_front=oracle_front)
    st.plotly_chart(fig, key="to_chart", on_select=_adopt_clicked_setting, selection_mode="points")
    if oracle_front is None:
        oracle_words = ""
    elif oracle_front.attrs.get("bound"):
        oracle_words = ("Oracle = each sample at its first correct layer, one that no layer gets right at layer 1 (uses "
                        "labels): the best accuracy at the fewest layers. The dashed **oracle frontier** is the best "
                        "accuracy any exit assignment can have at a speed-up ≥ s: no policy can cross it. ")
    else:
        oracle_words = ("Oracle = each sample at its first correct layer, one that no layer gets right at layer 1 (uses "
                        f"labels); for {derive.metric_name(metric)} it is a reference point, not a bound. ")
    st.caption("**Click any point** to make that setting the current one. Each line is one policy swept over its parameter (≈100 data-driven thresholds; PABEE over patience; "
               f"static over layers). {oracle_words}Speed-up = L / mean exit "
               "layer; FLOPs speed-up = full-model FLOPs / early-exit FLOPs (exit heads included).")

    st.subheader("Matched speed-up")
    st.markdown("Best metric a policy reaches **at a speed-up of at least** 1.5×, 2× and 3×, and the area under its "
                "frontier from 1× to 3× (its mean metric over that range; – when it cannot reach 3×). "
                + ("The oracle row is read off the oracle frontier. " if oracle_front is not None else "")
                + ("**Δ vs DeeBERT (entropy)**: how far each policy is from the entropy baseline at the same target, "
                   "both at their best setting with speed-up ≥ s." if labelled else ""))
    table = cache.get_matched(ref, policy.lambda_, SPEEDUPS)
    vs = cache.get_vs_baseline(ref, policy.lambda_, SPEEDUPS) if labelled else None
    st.dataframe(matched_table_view(table, metric, vs), hide_index=True, width="stretch", key="to_matched",
                 column_config={"policy": st.column_config.TextColumn(pinned=True),
                                "note": st.column_config.TextColumn(width="large")})
    if vs is not None and len(vs):
        n, n_boot = int(vs["n"].iloc[0]), int(vs["n_boot"].iloc[0])
        st.caption(f"**n = {n:,} samples.** Δ = the policy's {derive.metric_name(metric)} minus DeeBERT's (×100) "
                   f"[95 % paired-bootstrap interval: {n_boot:,} resamples of the same {n:,} samples for both] "
                   "(right answers gained or lost). An interval that contains 0 is a difference these samples do "
                   "not settle" + (f"; one sample moves accuracy by {100 / n:.2f} points." if metric == "accuracy" else "."))
    else:
        st.caption(f"**n = {trace.num_samples:,} samples**, without labels: no metric, so no comparison.")



def histograms(ctx) -> None:
    """Per-layer histograms of the chosen signal, split right / wrong, with τ where the policy tests it."""
    trace, policy = ctx.trace, ctx.policy
    L = trace.num_layers
    st.subheader("Where the threshold cuts, layer by layer")
    sig = derive.policy_signal(trace, policy)
    signal_names = {"edr": f"EDR (λ={policy.lambda_:g})", "entropy": "entropy", "dr": "DR",
                    "max_prob": "1 − max-probability"}
    default = sig[0] if sig else "edr"
    h1, h2, h3 = st.columns([2, 1, 1])
    chosen = h1.segmented_control("signal", list(signal_names), default=default, format_func=signal_names.get,
                                  key=f"to_signal_{default}") or default
    only_active = h2.toggle("only samples still running", key="to_active",
                            help="At layer m, count only the samples that have not exited before m under the current policy.")
    log_x = h3.toggle("log scale", value=True, key="to_log")
    values = derive.signals(trace, policy.lambda_)[chosen]
    tau = policy.tau if (sig is not None and sig[0] == chosen) else None
    if chosen == "max_prob":
        values = 1.0 - values
        tau = None if tau is None else 1.0 - tau
    active = None
    if only_active:
        exit_layer = decide_exits(trace.wide, policy).exit_layer
        active = np.arange(1, L + 1)[None, :] <= exit_layer[:, None]
    correct = trace.wide["correct"] if trace.labelled else None
    sample_ids = trace.samples["sample_id"].to_numpy()
    take_bin_pick(values, correct, active, sample_ids, tau=tau, log_x=log_x, label=signal_names[chosen])
    current = selection.current()
    chosen_rows = current.mask(sample_ids) if current is not None else None
    st.plotly_chart(charts.signal_histograms(values, correct, tau=tau, signal_label=signal_names[chosen],
                                             active=active, log_x=log_x, selected=chosen_rows), key="to_hist",
                    on_select="rerun", selection_mode=("points", "box"))
    if tau is None:
        st.caption(f"{policy.label} does not compare {signal_names[chosen]} with τ, so there is no threshold line: "
                   "the histograms show how the signal is spread at each layer, "
                   + ("right answers in green, wrong in orange." if trace.labelled else "every sample in grey."))
    else:
        st.caption("The dashed line is τ: a sample left of it passes the exit test at that layer (and leaves at the "
                   "first such layer)." + (" Orange bars left of the line are the wrong answers that threshold "
                                            "lets out." if trace.labelled else ""))
    st.caption("**Click a bar** (or use the box tool in the chart's toolbar) to select its samples"
               + (" — the right or the wrong ones, as the bar's colour says" if trace.labelled else "")
               + "; the purple outline is the current selection's share of each bin.")


def take_bin_pick(values, correct, active, sample_ids, *, tau, log_x: bool, label: str) -> None:
    """Bars clicked (or boxed) on the histograms, read from the chart's event before it is drawn again: the samples
    in those bins -- at that layer, right or wrong there as the bar's colour, still running there when only those
    are shown -- become the current selection. The bins are the chart's own (``derive.signal_bins``)."""
    points = selection.new_points("to_hist", st.session_state.get("to_hist"))
    picks = []
    for p in points or []:
        custom = p.get("customdata")
        if isinstance(custom, list) and len(custom) == 4:
            _, layer, b, group = custom
            picks.append((int(layer), int(b), None if group == -1 else bool(group)))
    if not picks:
        return
    index, edges = derive.signal_bins(values, tau=tau, log_x=log_x)
    rows = derive.bin_samples(index, picks, correct=correct, active=active)
    if len(picks) == 1:
        layer, b, ok = picks[0]
        lo, hi = (10 ** edges[b], 10 ** edges[b + 1]) if log_x else (edges[b], edges[b + 1])
        verdict = "" if ok is None else (", right there" if ok else ", wrong there")
        words = f"histogram: {label} {lo:.3g}–{hi:.3g} at layer {layer}{verdict}"
    else:
        layers = sorted({layer for layer, _, _ in picks})
        words = f"histogram: {len(picks)} bars of {label} at layer{'s' if len(layers) > 1 else ''} " \
                + ", ".join(map(str, layers))
    if not len(rows):
        st.toast(f"No sample in that bar ({words}).")
        return
    selection.select(sample_ids[rows], words, origin="to_hist")


render()
