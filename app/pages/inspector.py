"""Sample inspector: one sample's way through the layers — its signals, probabilities, prototype distances,
and where every policy would let it out."""

import numpy as np
import pandas as pd
import streamlit as st

from analysis.curves import evaluate_policy
from analysis.policies import REGISTRY, decide_exits
from app import cache, charts, derive, selection, state


def _set_sample(value: int) -> None:
    state.set_page(sample=int(value))


def _on_id() -> None:
    _set_sample(st.session_state["w_insp_id"])


def _on_hit() -> None:
    hit = st.session_state.get("w_insp_hit")
    if hit is not None:
        _set_sample(hit)


def picker(trace, decision) -> int:
    """Sample by id, by text search, or stepping through (through the current selection when there is one); the
    choice is kept in the page state (and URL)."""
    n = trace.num_samples
    current = int(min(max(int(state.page_settings().sample or 0), 0), n - 1))
    state.set_page(sample=current)
    chosen = selection.current()
    steps = chosen.ids if chosen is not None else range(n)  # what ◀ ▶ step through
    before, after = selection.step(steps, current, -1), selection.step(steps, current, +1)
    c1, c2, c3 = st.columns([1, 2, 1.4])
    st.session_state["w_insp_id"] = current
    c1.number_input(f"Sample id (0–{n - 1})", 0, n - 1, key="w_insp_id", on_change=_on_id)
    query = c2.text_input("Search the texts", key="w_insp_query", placeholder="words that must all appear")
    if query:
        hits = derive.search_samples(trace.samples, query)
        if len(hits):
            labels = dict(zip(hits["sample_id"].astype(int), hits["text"].str.slice(0, 80)))
            c2.selectbox(f"{len(hits)} match(es)", list(labels), format_func=lambda i: f"{i}: {labels[i]}…",
                         key="w_insp_hit", on_change=_on_hit, index=None, placeholder="pick one")
        else:
            c2.caption("no sample contains all these words")
    with c3:
        st.write("")
        b1, b2, b3 = st.columns([1, 1, 2])
        among = " in the selection" if chosen is not None else ""
        if b1.button("◀", key="insp_prev", help=f"previous sample{among}", disabled=before is None):
            _set_sample(before)
            st.rerun()
        if b2.button("▶", key="insp_next", help=f"next sample{among}", disabled=after is None):
            _set_sample(after)
            st.rerun()
        wrong = np.flatnonzero(decision.pred != trace.labels) if trace.labelled else np.array([], dtype=int)
        if chosen is not None:
            wrong = wrong[chosen.mask(trace.samples["sample_id"].to_numpy()[wrong])]
        if b3.button("next ✗", key="insp_wrong", disabled=len(wrong) == 0,
                     help=f"next sample{among} the current policy gets wrong" if trace.labelled else "needs labels"):
            later = wrong[wrong > current]
            _set_sample(int(later[0] if len(later) else wrong[0]))
            st.rerun()
    if chosen is not None:
        where = (f"sample {current} is {chosen.ids.index(current) + 1} of {len(chosen)}" if current in chosen.ids
                 else f"sample {current} is not in it")
        st.caption(f"◀ ▶ step through the **selection** ({chosen.describe()}): {where}. Clear it in the sidebar to "
                   "step through every sample.")
    return int(state.page_settings().sample)


def render() -> None:
    ctx = state.require_trace()
    if ctx is None:
        return
    trace, policy = ctx.trace, ctx.policy
    L, names = trace.num_layers, trace.label_names
    st.title("Sample inspector")
    decision = decide_exits(trace.wide, policy)
    i = picker(trace, decision)
    label = int(trace.labels[i]) if trace.labelled else None
    e, answer = int(decision.exit_layer[i]), int(decision.pred[i])
    row = trace.samples.iloc[i]

    st.subheader(f"Sample {i} — true class: {names[label] if label is not None else 'unknown (no labels)'}")
    with st.container(height=170, border=True):
        st.text(row["text"])
        if "text_pair" in trace.samples and isinstance(row.get("text_pair"), str):
            st.markdown("**second text**")
            st.text(row["text_pair"])
    final_pred = int(trace.wide["pred"][i, -1])
    m1, m2, m3, m4 = st.columns([1, 1.5, 1.5, 0.7])  # class names need the room (e.g. "entertainment")
    m1.metric("exits at layer", f"{e} of {L}")

    def verdict(pred: int) -> dict:  # the metric's right/wrong badge; none without a label
        if label is None:
            return {}
        right = pred == label  # a badge, not a change: no arrow
        return {"delta": "✓ right" if right else "✗ wrong", "delta_color": "normal" if right else "inverse",
                "delta_arrow": "off"}

    m2.metric("answer at exit", names[answer], **verdict(answer))
    m3.metric("final layer says", names[final_pred], **verdict(final_pred))
    m4.metric("tokens", int(trace.n_tokens[i]))
    st.caption(f"Under {policy.describe()}: exit test **{policy.exit_test()}** at layers 1..{L - 1}.")

    sig = derive.signals(trace, policy.lambda_)
    tested = derive.policy_signal(trace, policy)
    tested_name = tested[0] if tested else None
    shown = {k: sig[k][i] for k in ("entropy", "dr", "edr")}
    tau = policy.tau
    if tested_name == "max_prob":
        shown["max_prob"] = sig["max_prob"][i]
    log_y = st.toggle("log scale", value=True, key="insp_log")
    st.plotly_chart(charts.signal_trajectory(shown, tau=tau if tested_name else None, tested=tested_name, exit_layer=e,
                                             correct=trace.wide["correct"][i] if label is not None else None,
                                             log_y=log_y and tested_name != "max_prob",
                                             title="Exit signals per layer (lower = more confident)"
                                                   + ("; ✓/✗ = that layer's prediction right/wrong" if label is not None else "")),
                    key="insp_signals")

    left, right_col = st.columns(2)
    pred_path = np.asarray(trace.wide["pred"][i])
    with left:
        st.plotly_chart(charts.class_lines(trace.probs()[i], class_names=names, true_label=label, ylabel="probability",
                                           highlight=pred_path, title="Class probabilities"), key="insp_probs")
    with right_col:
        st.plotly_chart(charts.class_lines(trace.distances()[i], class_names=names, true_label=label,
                                           ylabel="distance to prototype", highlight=pred_path,
                                           title="Distance to every class prototype (○ = predicted: r₁)"),
                        key="insp_dists")

    st.subheader("Where each policy would let it out")
    if state.has_labels(ctx, "Comparing policies at a matched speed-up"):
        policy_strip(ctx, i)
    layer_table(trace, policy, i, e, sig)


def policy_strip(ctx, i: int) -> None:
    """Where every policy, at its best setting at least as fast as the current one, lets sample ``i`` out."""
    trace, policy, ref = ctx.trace, ctx.policy, ctx.ref
    L, names = trace.num_layers, trace.label_names
    result = evaluate_policy(trace, policy)
    curves = cache.get_sweep(ref, policy.lambda_, policy.patience)
    matched = derive.matched_settings(curves, result["speedup"], lambda_=policy.lambda_, patience=policy.patience)
    settings = {name: p for name, (p, _) in matched.items()}
    settings[policy.name] = policy
    exits = derive.sample_exits(trace, i, settings)
    st.plotly_chart(charts.policy_exit_strip(exits, num_layers=L, current=policy.name), key="insp_strip")
    st.caption(f"The current policy at your setting; every other policy at its best setting that is at least as fast "
               f"({result['speedup']:.2f}×) on this data — a comparison at matched speed-up.")
    with st.expander("Settings used"):
        st.dataframe(exits.assign(policy=[REGISTRY[p].label for p in exits["policy"]], pred=[names[p] for p in exits["pred"]]),
                     hide_index=True, width="stretch")


def layer_table(trace, policy, i: int, e: int, sig: dict) -> None:
    """Sample ``i``'s prediction, signals and exit test at every layer."""
    L, names = trace.num_layers, trace.label_names
    pred_path = np.asarray(trace.wide["pred"][i])
    st.subheader("Layer by layer")
    table = pd.DataFrame({
        "layer": np.arange(1, L + 1), "prediction": [names[p] for p in pred_path],
        **({"right": trace.wide["correct"][i].astype(bool)} if trace.labelled else {}),
        "max-prob": trace.wide["max_prob"][i],
        "entropy": sig["entropy"][i], "r1": trace.wide["r1"][i], "r2": trace.wide["r2"][i], "DR": sig["dr"][i],
        f"EDR (λ={policy.lambda_:g})": sig["edr"][i],
        "exit test": derive.exit_test_column(trace, policy, i, e),
    })
    st.dataframe(table, hide_index=True, width="stretch", key="insp_table",
                 column_config={c: st.column_config.NumberColumn(format="%.4g")
                                for c in ("max-prob", "entropy", "r1", "r2", "DR", f"EDR (λ={policy.lambda_:g})")})


render()
