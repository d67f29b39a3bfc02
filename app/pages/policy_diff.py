"""Policy diff: two exit policies at the same speed-up, sample by sample — which samples the distance signal saves or
loses compared with the entropy alone. The paper's claim, made inspectable."""

import numpy as np
import pandas as pd
import streamlit as st

from analysis.compare import DEFAULT_BASELINE
from analysis.curves import best_setting_at, evaluate_policy
from analysis.policies import DE3, REGISTRY, ExitPolicy
from app import cache, charts, derive, state

TARGETS = (1.25, 1.5, 2.0, 2.5, 3.0, 4.0)
PICKABLE = [name for name, spec in REGISTRY.items() if spec.in_engine]  # real policies, not the oracle


def _setting(curves: pd.DataFrame, name: str, speedup: float, lambda_: float | None) -> ExitPolicy | None:
    return best_setting_at(curves, name, speedup, lambda_=lambda_ if name == DE3 else None)


def render() -> None:
    ctx = state.require_trace()
    if ctx is None:
        return
    trace, ref = ctx.trace, ctx.ref
    names, L = trace.label_names, trace.num_layers
    st.title("Policy diff")
    st.markdown("Two exit policies **at the same speed-up**, sample by sample: which samples does one get right that "
                "the other gets wrong, where does each let them out, and what did the signals say? By default, "
                "DE3-BERT (entropy fused with the distance ratio) against DeeBERT's entropy alone — the question "
                "the paper raises.")
    if not state.has_labels(ctx, "Telling which policy is right"):
        return

    curves = cache.get_sweep(ref)
    best = derive.best_lambda(curves)
    c1, c2, c3, c4 = st.columns([1.2, 1.2, 1, 1])
    st.session_state.setdefault("pd_a", DE3)
    st.session_state.setdefault("pd_b", DEFAULT_BASELINE)
    name_a = c1.selectbox("Policy A", PICKABLE, key="pd_a", format_func=lambda n: REGISTRY[n].label)
    name_b = c2.selectbox("Policy B", PICKABLE, key="pd_b", format_func=lambda n: REGISTRY[n].label)
    target = c3.select_slider("at a speed-up of at least", TARGETS, value=2.0, key="pd_target",
                              format_func=lambda s: f"{s:g}×")
    lambdas = sorted(curves.loc[curves["policy"] == DE3, "lambda_"].dropna().unique())
    default_lambda = best if best is not None else 1.0
    lam = c4.selectbox("λ for DE3-BERT", lambdas, index=lambdas.index(default_lambda) if default_lambda in lambdas else 0,
                       key="pd_lambda", format_func=lambda v: f"{v:g}" + (" (best AUC here)" if v == best else ""),
                       disabled=DE3 not in (name_a, name_b),
                       help="The default is the λ whose DE3-BERT curve has the largest area (speed-ups 1–3×) on this "
                            "very trace — a description of this data, not a λ chosen on held-out data.")
    if name_a == name_b:
        st.info("Pick two different policies.")
        return
    a, b = _setting(curves, name_a, target, lam), _setting(curves, name_b, target, lam)
    missing = [REGISTRY[n].label for n, p in ((name_a, a), (name_b, b)) if p is None]
    if missing:
        st.warning(f"{' and '.join(missing)} cannot reach {target:g}× on this trace; pick a lower speed-up.")
        return

    diff = derive.policy_diff(trace, a, b)
    counts = derive.diff_counts(diff)
    boot = cache.get_bootstrap(ref, a, b)
    st.caption(f"**A** = {a.describe()} — {summary(trace, a)}  \n**B** = {b.describe()} — {summary(trace, b)}  \n"
               f"Each policy at its "
               f"best setting with a speed-up of at least {target:g}× (the matched table's rule).")

    m1, m2, m3, m4 = st.columns(4)
    m1.metric("only A right", counts["only A right"], help="Samples A answers right and B wrong.")
    m2.metric("only B right", counts["only B right"], help="Samples B answers right and A wrong.")
    net = counts["only A right"] - counts["only B right"]
    m3.metric("net (A − B)", f"{net:+d} samples", help=f"Of {trace.num_samples}; both right: {counts['both right']}, "
                                                       f"both wrong: {counts['both wrong']}.")
    m4.metric(f"Δ {derive.metric_name(trace.metric)} (A − B)", f"{100 * boot['diff']:+.2f} pts",
              help="Paired bootstrap, 1,000 resamples of the same samples for both policies.")
    verdict = ("an interval that contains 0: these samples do not settle which is better"
               if boot["low"] <= 0 <= boot["high"] else ("A ahead" if boot["low"] > 0 else "B ahead"))
    st.markdown(f"95 % paired-bootstrap interval of the difference: **[{100 * boot['low']:+.2f}, "
                f"{100 * boot['high']:+.2f}] points** (n = {trace.num_samples:,}) — {verdict}.")

    left, right = st.columns([1, 1])
    with left:
        st.markdown("**Where each lets the same samples out** — samples per pair of exit layers; *A+n B+m*: n that "
                    "only A gets right there, m only B")
        st.plotly_chart(charts.diff_exit_layers(diff, num_layers=L, name_a=REGISTRY[name_a].short,
                                                name_b=REGISTRY[name_b].short), key="pd_layers")
    with right:
        st.markdown("**The samples they disagree on**")
        which = st.segmented_control("show", ["only A right", "only B right"], default="only A right",
                                     key="pd_which") or "only A right"
        part = diff[diff["outcome"] == which]
        texts = trace.samples["text"].to_numpy()
        view = pd.DataFrame({"sample": part["sample_id"], "true": [names[y] for y in part["label"]],
                             "A exits": part["exit_a"], "A says": [names[p] for p in part["answer_a"]],
                             "B exits": part["exit_b"], "B says": [names[p] for p in part["answer_b"]],
                             "text": [texts[i][:160] for i in part["sample_id"]]})
        event = st.dataframe(view, hide_index=True, width="stretch", height=300, key="pd_table", on_select="rerun",
                             selection_mode="single-row",
                             column_config={"text": st.column_config.TextColumn(width="large")})
    if part.empty:
        st.success(f"No sample is {which.lower()} at this speed-up.")
        return
    picked = (event.selection.rows if event is not None and hasattr(event, "selection") else []) or [0]
    i = int(part["sample_id"].iloc[picked[0]])
    trajectory(trace, a, b, i, diff)
    if st.button(f"Open sample {i} in the inspector", key="pd_open"):
        state.open_inspector(i)


def summary(trace, policy: ExitPolicy) -> str:
    """A setting's speed-up and metric on the trace."""
    r = evaluate_policy(trace, policy)
    return f"{r['speedup']:.2f}× speed-up, {derive.metric_name(trace.metric)} {derive.fmt_metric(r['metric'], trace.metric)}"


def trajectory(trace, a: ExitPolicy, b: ExitPolicy, i: int, diff: pd.DataFrame) -> None:
    """One disagreed sample's signals over the layers, with both policies' exits."""
    row = diff[diff["sample_id"] == i].iloc[0]
    names = trace.label_names
    st.markdown(f"**Sample {i}** (true: {names[int(row['label'])]}) — A exits at layer {int(row['exit_a'])} saying "
                f"{names[int(row['answer_a'])]} {'✓' if row['right_a'] else '✗'}, B at layer {int(row['exit_b'])} "
                f"saying {names[int(row['answer_b'])]} {'✓' if row['right_b'] else '✗'}")
    st.text(str(trace.samples["text"].iloc[i])[:600])
    lam = a.lambda_ if a.name == DE3 else b.lambda_
    sig = derive.signals(trace, lam)
    shown = {k: sig[k][i] for k in ("entropy", "dr", "edr")}
    fig = charts.signal_trajectory(shown, tau=None, tested=None, exit_layer=int(row["exit_a"]),
                                   correct=np.asarray(trace.wide["correct"][i]), log_y=True,
                                   title="Signals per layer; A's exit (solid), B's exit (dashed)")
    fig.add_vline(x=int(row["exit_b"]), line=dict(color="#E69F00", dash="dash", width=2),
                  annotation_text=f"B exits at {int(row['exit_b'])}", annotation_position="bottom right")
    for p, dash in ((a, "solid"), (b, "dash")):
        if p.spec.threshold and p.spec.value_name in shown:
            fig.add_hline(y=max(p.tau, 1e-6), line=dict(color=charts.SIGNAL_COLORS.get(p.spec.value_name, "#333"),
                                                         dash="dot", width=1),
                          annotation_text=f"τ of {'A' if p is a else 'B'} = {p.tau:.3g}",
                          annotation_position="top left" if p is a else "bottom right")  # close τs: labels apart
    st.plotly_chart(fig, key="pd_signals")


render()
