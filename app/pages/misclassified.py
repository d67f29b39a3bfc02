"""Misclassified early exits: which samples the current policy gets wrong, why, and which layers it wastes. A click
on a bucket bar or a confusion-matrix cell makes its samples the current selection (``app/selection.py``)."""

import numpy as np
import streamlit as st

from analysis.policies import decide_exits
from analysis import taxonomy
from app import charts, selection, state

CONFUSION_OF = {"exit": "answers at the exit", "final": "the last layer"}


def bucket_name(bucket: str) -> str:
    return taxonomy.BUCKET_LABELS[bucket].split(" (")[0]


def take_bucket_pick(tax) -> None:
    """A bar clicked on the bucket chart (its event, read before the chart is drawn again): its samples become the
    current selection, and the ranked list below shows that bucket."""
    points = selection.new_points("mis_buckets", st.session_state.get("mis_buckets"))
    buckets = [b for b in taxonomy.BUCKETS if any(p.get("customdata") == b for p in points or [])]
    if not buckets:
        return
    ids = tax.loc[tax["bucket"].isin(buckets), "sample_id"].astype(int).tolist()
    if not ids:
        st.toast(f"No sample is in the bucket {bucket_name(buckets[0])} now.")
        return
    selection.select(ids, "bucket: " + " + ".join(bucket_name(b) for b in buckets), origin="mis_buckets")
    if len(buckets) == 1:
        st.session_state["w_mis_bucket"] = buckets[0]


def take_confusion_pick(labels, preds, names, which: str) -> None:
    """A cell clicked on the confusion matrix: the samples with that true class and that answer become the current
    selection."""
    points = selection.new_points("mis_confusion", st.session_state.get("mis_confusion"))
    cells = sorted({tuple(int(v) for v in p["customdata"]) for p in points or []
                    if isinstance(p.get("customdata"), list) and len(p["customdata"]) == 2})
    if not cells:
        return
    hit = np.zeros(len(labels), dtype=bool)
    for t, a in cells:
        hit |= (labels == t) & (preds == a)
    where = "at the exit" if which == "exit" else "at the last layer"
    if len(cells) == 1:
        t, a = cells[0]
        words = f"confusion {where}: true {names[t]}, answered {names[a]}"
    else:
        words = f"confusion {where}: " + ", ".join(f"{names[t]}→{names[a]}" for t, a in cells)
    if not hit.any():
        st.toast(f"No sample in that cell ({words}).")
        return
    selection.select(np.flatnonzero(hit), words, origin="mis_confusion")


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
                "sidebar and watch samples move between buckets. **Click a bar or a confusion-matrix cell** to select "
                "its samples: the Samples table, the inspector and the other charts follow.")
    decision = decide_exits(trace.wide, policy)
    tax = taxonomy.error_buckets(trace, decision, policy)
    counts = taxonomy.bucket_counts(tax)
    which = st.session_state.get("mis_conf_which") or "exit"
    preds = decision.pred if which == "exit" else np.asarray(trace.wide["pred"])[:, -1]
    take_bucket_pick(tax)
    take_confusion_pick(trace.labels, preds, names, which)
    current = selection.current()
    chosen = current.mask(tax["sample_id"].to_numpy()) if current is not None else None
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
        in_selection = None if chosen is None else tax.loc[chosen, "bucket"].value_counts().to_dict()
        st.plotly_chart(charts.bucket_bars(counts, selected=in_selection), key="mis_buckets", on_select="rerun",
                        selection_mode="points")
    with right:
        st.segmented_control("Confusion matrix of", list(CONFUSION_OF), default="exit", key="mis_conf_which",
                             format_func=CONFUSION_OF.get)
        K = trace.num_labels
        selected_cells = None if chosen is None else taxonomy.confusion(trace.labels[chosen], preds[chosen], K)
        st.plotly_chart(charts.confusion_heatmap(taxonomy.confusion(trace.labels, preds, K), class_names=names,
                                                 selected=selected_cells),
                        key="mis_confusion", on_select="rerun", selection_mode="points")

    st.subheader("Ranked samples")
    wanted = state.page_settings().bucket
    first_nonempty = next((b for b in ("premature", "missed", "hopeless", "wasted") if c[b]), "premature")
    default = wanted if wanted in taxonomy.BUCKETS else first_nonempty
    st.session_state.setdefault("w_mis_bucket", default)
    bucket = st.segmented_control("Bucket", taxonomy.BUCKETS, key="w_mis_bucket",
                                  format_func=lambda b: f"{b} ({c[b]})") or default
    state.set_page(bucket=bucket)
    ranked = taxonomy.ranked(tax, bucket)
    if selection.is_new("misclassified") or "mis_only_sel" not in st.session_state:
        st.session_state["mis_only_sel"] = current is not None  # a new selection: list it
    only = st.toggle(f"Only the current selection ({len(current)})" if current else "Only the current selection",
                     key="mis_only_sel", disabled=current is None,
                     help="List only this bucket's samples that are in the current selection.")
    if current is not None and only:
        ranked = ranked[current.mask(ranked["sample_id"].to_numpy())]
    st.caption(taxonomy.BUCKET_DEFINITIONS[bucket] + "  Ranked: " + {
        "premature": "most confident wrong exits first (max-probability at the exit).",
        "missed": "most confident wrong exits first.", "hopeless": "most confident wrong answers first.",
        "wasted": "most wasted layers first.", "efficient": "earliest exits first."}[bucket])
    if ranked.empty:
        st.success(f"No sample in this bucket under {policy.describe()}"
                   + (f" among the {len(current)} selected ({current.source})." if current is not None and only else "."))
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
