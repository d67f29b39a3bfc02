"""Misclassified early exits: which samples the current policy gets wrong, why, and which layers it wastes."""

import numpy as np
import streamlit as st

from analysis.policies import decide_exits
from analysis import taxonomy
from app import charts, state


def render() -> None:
    ctx = state.require_trace()
    if ctx is None:
        return
    trace, policy = ctx.trace, ctx.policy
    names = trace.label_names
    st.title("Misclassified early exits")
    if not state.has_labels(ctx, "Telling right exits from wrong ones"):
        return
    st.markdown(f"Every sample falls in exactly one bucket under **{policy.describe()}**. Change the policy in the "
                "sidebar and watch samples move between buckets.")
    decision = decide_exits(trace.wide, policy)
    tax = taxonomy.error_buckets(trace, decision, policy)
    counts = taxonomy.bucket_counts(tax)
    with st.expander("Definitions of the buckets", expanded=False):
        for b in taxonomy.BUCKETS:
            st.markdown(f"**{taxonomy.BUCKET_LABELS[b]}** — {taxonomy.BUCKET_DEFINITIONS[b]}")
        st.markdown("Right/wrong means the layer's prediction (argmax of its classifier) against the true label.")

    c = dict(zip(counts["bucket"], counts["count"]))
    wasted_layers = int(tax["wasted_layers"].sum())
    computed = int(decision.exit_layer.sum())
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("premature exits", c["premature"], help=taxonomy.BUCKET_DEFINITIONS["premature"])
    m2.metric("missed chances", c["missed"], help=taxonomy.BUCKET_DEFINITIONS["missed"])
    m3.metric("hopeless", c["hopeless"], help=taxonomy.BUCKET_DEFINITIONS["hopeless"])
    m4.metric("wasted layers", f"{wasted_layers} ({100 * wasted_layers / max(computed, 1):.0f}%)",
              help=f"{taxonomy.BUCKET_DEFINITIONS['wasted']} Share of the {computed} layers computed in all.")
    left, right = st.columns([3, 2])
    with left:
        st.plotly_chart(charts.bucket_bars(counts), key="mis_buckets")
    with right:
        which = st.segmented_control("Confusion matrix of", ["exit", "final"], default="exit", key="mis_conf_which",
                                     format_func={"exit": "answers at the exit", "final": "the last layer"}.get) or "exit"
        preds = decision.pred if which == "exit" else np.asarray(trace.wide["pred"])[:, -1]
        st.plotly_chart(charts.confusion_heatmap(taxonomy.confusion(trace.labels, preds, trace.num_labels), class_names=names),
                        key="mis_confusion")

    st.subheader("Ranked samples")
    wanted = state.page_settings().bucket
    first_nonempty = next((b for b in ("premature", "missed", "hopeless", "wasted") if c[b]), "premature")
    default = wanted if wanted in taxonomy.BUCKETS else first_nonempty
    st.session_state.setdefault("w_mis_bucket", default)
    bucket = st.segmented_control("Bucket", taxonomy.BUCKETS, key="w_mis_bucket",
                                  format_func=lambda b: f"{b} ({c[b]})") or default
    state.set_page(bucket=bucket)
    ranked = taxonomy.ranked(tax, bucket)
    st.caption(taxonomy.BUCKET_DEFINITIONS[bucket] + "  Ranked: " + {
        "premature": "most confident wrong exits first (max-probability at the exit).",
        "missed": "most confident wrong exits first.", "hopeless": "most confident wrong answers first.",
        "wasted": "most wasted layers first.", "efficient": "earliest exits first."}[bucket])
    if ranked.empty:
        st.success(f"No sample in this bucket under {policy.describe()}.")
        return
    texts = trace.samples["text"].to_numpy()
    view = ranked.assign(
        true=[names[y] for y in ranked["label"]], answer=[names[p] for p in ranked["pred"]],
        text=[texts[s][:200] for s in ranked["sample_id"]],
        first_correct=["never" if np.isnan(v) else str(int(v)) for v in ranked["first_correct"]],
    )[["sample_id", "true", "answer", "exit_layer", "first_correct", "wasted_layers", "confidence_at_exit",
       *(["signal_at_exit"] if "signal_at_exit" in ranked else []), "text"]]
    event = st.dataframe(view, hide_index=True, width="stretch", height=min(360, 35 * (len(view) + 1) + 3),
                         key="mis_table", on_select="rerun", selection_mode="single-row",
                         column_config={"sample_id": st.column_config.NumberColumn("sample"),
                                        "exit_layer": st.column_config.NumberColumn("exit layer"),
                                        "wasted_layers": st.column_config.NumberColumn("wasted layers"),
                                        "confidence_at_exit": st.column_config.NumberColumn("max-prob at exit", format="%.3f"),
                                        "signal_at_exit": st.column_config.NumberColumn("τ-signal at exit", format="%.3g"),
                                        "first_correct": st.column_config.TextColumn("first right layer"),
                                        "text": st.column_config.TextColumn(width="large")})
    rows = (event.selection.rows if event is not None and hasattr(event, "selection") else []) or []
    ids = ranked["sample_id"].astype(int).tolist()
    chosen = ids[rows[0]] if rows else ids[0]
    c1, c2 = st.columns([2, 3])
    pick = c1.selectbox("Sample", ids, index=ids.index(chosen), key=f"mis_pick_{bucket}_{chosen}",
                        format_func=lambda s: f"{s}: {texts[s][:60]}…")
    c2.write("")
    if c2.button(f"Open sample {pick} in the inspector", key="mis_open", type="primary"):
        state.open_inspector(int(pick))


render()
