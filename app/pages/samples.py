"""Samples: every sample under the current policy in one table — filter it by any column or by its text, sort it,
make the rows shown the current selection, and open one in the inspector. The current selection (made here or on any
chart) filters it."""

import streamlit as st

from analysis import taxonomy
from analysis.policies import decide_exits
from app import derive, selection, state

SIGNALS = {"entropy": "entropy", "dr": "DR", "edr": "EDR", "max_prob": "max-prob"}


def _keep_valid(key: str, options) -> None:
    """Drop a multiselect's remembered values that this trace does not offer (another trace had other classes)."""
    if key in st.session_state:
        st.session_state[key] = [v for v in st.session_state[key] or [] if v in options]


def filters(table, trace) -> dict:
    """The filter widgets; returns ``derive.filter_samples``' keyword arguments."""
    L, labelled = trace.num_layers, trace.labelled
    names = list(trace.label_names)
    out: dict = {}
    with st.container(border=True):
        cols = st.columns([1.15, 1.15, 1.0, 1.5, 1.25] if labelled else [1.2, 1.1])
        if labelled:
            _keep_valid("smp_true", names)
            out["true"] = cols[0].multiselect("True class", names, key="smp_true", placeholder="any")
        _keep_valid("smp_answer", names)
        out["answer"] = cols[1 if labelled else 0].multiselect("Answer at the exit", names, key="smp_answer",
                                                               placeholder="any")
        layers = st.session_state.get("smp_layers")
        if not (isinstance(layers, tuple) and len(layers) == 2 and 1 <= layers[0] <= layers[1] <= L):
            st.session_state["smp_layers"] = (1, L)
        out["layers"] = cols[2 if labelled else 1].slider("Exit layer", 1, L, key="smp_layers") if L > 1 else (1, 1)
        if labelled:
            _keep_valid("smp_bucket", taxonomy.BUCKETS)
            out["buckets"] = cols[3].multiselect("Bucket", taxonomy.BUCKETS, key="smp_bucket", placeholder="any",
                                                 format_func=lambda b: taxonomy.BUCKET_LABELS[b].split(" (")[0],
                                                 help="The error taxonomy: see the Misclassified early exits page.")
            verdict = cols[4].segmented_control("Answer is", ["right", "wrong"], key="smp_right")
            out["right"] = None if verdict is None else verdict == "right"
        out["query"] = st.text_input("Text contains", key="smp_query", placeholder="words that must all appear")
    return out


def describe_filters(chosen: dict, full_layers: tuple[int, int]) -> str:
    """The filters in words, for the selection they make: "true negative · wrong · exit 1–2 · “film”"."""
    parts = []
    if chosen.get("true"):
        parts.append("true " + " or ".join(chosen["true"]))
    if chosen.get("answer"):
        parts.append("answer " + " or ".join(chosen["answer"]))
    if chosen.get("buckets"):
        parts.append(" or ".join(chosen["buckets"]))
    if chosen.get("right") is not None:
        parts.append("right" if chosen["right"] else "wrong")
    if chosen.get("layers") and tuple(chosen["layers"]) != full_layers:
        lo, hi = chosen["layers"]
        parts.append(f"exit layer {lo}" if lo == hi else f"exit layer {lo}–{hi}")
    if chosen.get("query", "").strip():
        parts.append(f"text “{chosen['query'].strip()}”")
    return " · ".join(parts)


def _select_rows(ids: list[int], source: str) -> None:
    selection.select(ids, source, origin="samples_table")


def render() -> None:
    ctx = state.require_trace()
    if ctx is None:
        return
    trace, policy = ctx.trace, ctx.policy
    N, L = trace.num_samples, trace.num_layers
    st.title("Samples")
    st.markdown(f"Every sample under **{policy.describe()}**: where it leaves, what it answers there and the signals "
                "at that layer. Filter by any column or by words of its text, sort by clicking a column header, and "
                "**click a row to open it in the Sample inspector**. A selection made on any chart — a bucket bar, a "
                "confusion-matrix cell, a histogram bin, the map — filters this table.")
    if not trace.labelled:
        state.has_labels(ctx, "The true class, right/wrong and the error bucket")
    decision = decide_exits(trace.wide, policy)
    table = derive.sample_table(trace, decision, policy)
    chosen = filters(table, trace)
    current = selection.current()
    if selection.is_new("samples") or "smp_only_sel" not in st.session_state:
        st.session_state["smp_only_sel"] = current is not None  # a new selection: show it
    only = st.toggle(f"Only the current selection ({len(current)})" if current else "Only the current selection",
                     key="smp_only_sel", disabled=current is None,
                     help="The selection is made on a chart, here (\"Select these rows\") or from a slice; it stays "
                          "the same samples when the policy changes.")
    shown = derive.filter_samples(table, **chosen)
    in_selection = current is not None and only
    if in_selection:
        shown = shown[current.mask(shown["sample_id"].to_numpy())]
    words = describe_filters(chosen, (1, L))

    c1, c2 = st.columns([3, 2])
    scope = f" of the selection's {len(current):,}" if in_selection else f" of {N:,}"
    c1.markdown(f"**{len(shown):,}{scope} samples** shown" + (f" — {words}" if words else ""))
    ids = shown["sample_id"].astype(int).tolist()
    source = "table: " + (words or "all samples") + (f" (within {current.source})" if in_selection and words else "")
    same = current is not None and tuple(sorted(ids)) == current.ids
    c2.button(f"Select these {len(ids):,} rows", key="smp_select", on_click=_select_rows, args=(ids, source),
              disabled=not ids or same, type="primary", icon=":material/select_all:",
              help="Make the rows shown the current selection: the other pages highlight them, the inspector steps "
                   "through them, and you can save them as a named slice (sidebar).")
    if not ids:
        st.info("No sample passes these filters" + (" within the current selection." if in_selection else "."))
    else:
        table_view(shown, trace)
    slices_panel()


def table_view(shown, trace) -> None:
    """The rows, sortable; a click on one opens it in the inspector."""
    view = shown.assign(text=shown["text"].str.slice(0, 300))
    if "text_pair" in view:
        view["text_pair"] = view["text_pair"].fillna("").str.slice(0, 200)
    order = ["sample_id", *(["true"] if "true" in view else []), "answer", "exit_layer",
             *(["bucket", "right"] if "bucket" in view else []), *SIGNALS, "text",
             *(["text_pair"] if "text_pair" in view else [])]
    generation = st.session_state.setdefault("smp_table_gen", 0)  # a fresh table (no row picked) after each jump
    event = st.dataframe(
        view[order], hide_index=True, width="stretch", height=min(560, 35 * (len(view) + 1) + 3),
        key=f"smp_table_{generation}", on_select="rerun", selection_mode="single-row",
        column_config={"sample_id": st.column_config.NumberColumn("sample", pinned=True),
                       "exit_layer": st.column_config.NumberColumn("exit layer"),
                       "answer": st.column_config.TextColumn("answer at exit"),
                       "right": st.column_config.CheckboxColumn("right"),
                       **{k: st.column_config.NumberColumn(f"{v} at exit", format="%.3g") for k, v in SIGNALS.items()},
                       "text": st.column_config.TextColumn(width="large"),
                       "text_pair": st.column_config.TextColumn("second text", width="medium")})
    rows = (event.selection.rows if event is not None and hasattr(event, "selection") else []) or []
    if rows:
        st.session_state["smp_table_gen"] = generation + 1
        state.open_inspector(int(view["sample_id"].iloc[rows[0]]))
    st.caption("Signals at the exit layer: entropy (normalised), DR, EDR at the sidebar's λ, max-probability."
               + (" Buckets as on the Misclassified early exits page." if "bucket" in view else ""))


def slices_panel() -> None:
    """The named slices: select one again, or delete it; they travel in the page's link."""
    saved = selection.slices()
    with st.expander(f"Named slices ({len(saved)})", expanded=False):
        if not saved:
            st.caption("None yet. Make a selection (here with **Select these rows**, or on any chart), then **save** it "
                       "under a name in the sidebar. Slices are kept in the page's link, so a link reopens them.")
            return
        for name, ids in list(saved.items()):
            c1, c2, c3 = st.columns([3, 1, 1])
            c1.markdown(f"**{name}** — {len(ids)} sample{'s' if len(ids) != 1 else ''}: "
                        f"`{selection.encode_ids(ids)[:80]}`")
            c2.button("select", key=f"smp_slice_use_{name}", on_click=selection.use_slice, args=(name,))
            c3.button("delete", key=f"smp_slice_del_{name}", on_click=selection.delete_slice, args=(name,),
                      type="tertiary")


render()
