"""Prototype map: one layer's samples and class prototypes in one 2-D picture; select points to list them."""

from dataclasses import replace

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from analysis.errors import DE3Error
from analysis.policies import decide_exits
from analysis.projection import ProjectionConfig, effective_method
from app import cache, charts, derive, state

COLOR_BY = {"label": "true class", "pred": "prediction at this layer", "correct": "right / wrong at this layer",
            "exit": "exit layer (current policy)", "dr": "DR at this layer", "edr": "EDR at this layer"}
NEEDS_LABELS = ("label", "correct")  # colourings a trace without labels cannot offer


def projection_form(trace) -> ProjectionConfig:
    """Projection settings, applied only when the form is submitted; kept per session (method in the URL)."""
    saved = st.session_state.get("map_config")
    if saved is None:
        saved = derive.projection_config(trace, state.page_settings().method or "umap")
        st.session_state["map_config"] = saved
    metric = saved.metric
    with st.form("map_form", border=True):
        c1, c2, c3, c4, c5 = st.columns([1.3, 1, 1, 1, 1])
        method = c1.radio("Method", ["umap", "pca"], index=["umap", "pca"].index(saved.method), horizontal=True,
                          format_func={"umap": "UMAP", "pca": "PCA (fast)"}.get, key="map_f_method")
        n_neighbors = c2.number_input("UMAP neighbours", 2, 200, saved.n_neighbors, key="map_f_nn")
        min_dist = c3.number_input("UMAP min_dist", 0.0, 1.0, saved.min_dist, step=0.05, key="map_f_md")
        seed = c4.number_input("seed", 0, 2**31 - 1, saved.seed, key="map_f_seed")
        max_points = c5.number_input("max points fitted", 100, 20000, saved.max_points, step=500, key="map_f_max")
        if st.form_submit_button("Compute map", type="primary"):
            try:
                saved = ProjectionConfig(method=method, n_neighbors=int(n_neighbors), min_dist=float(min_dist),
                                         seed=int(seed), max_points=int(max_points), metric=metric)
            except DE3Error as exc:
                st.error(str(exc))
            st.session_state["map_config"] = saved
    state.set_page(method=saved.method)
    return saved


@st.fragment(run_every=2)
def _wait_for_umap() -> None:
    if cache.umap_ready():
        st.rerun()  # the whole page, now with UMAP


def _on_select() -> None:
    event = st.session_state.get("map_chart")
    points = (event or {}).get("selection", {}).get("points", []) if event else []
    ids = []
    for p in points:
        cd = p.get("customdata")
        if isinstance(cd, list):
            cd = cd[0] if cd else None
        if cd is not None:
            ids.append(int(cd))
    st.session_state["map_selected"] = sorted(set(ids))


def render() -> None:
    ctx = state.require_trace()
    if ctx is None:
        return
    trace, policy, ref = ctx.trace, ctx.policy, ctx.ref
    L, K, names = trace.num_layers, trace.num_labels, trace.label_names
    st.title("Prototype map")
    st.markdown("Each layer has one **prototype** per class (★). Here one layer's samples and its prototypes are "
                "projected **together** into 2-D. Select points (box or lasso) to list them; select one sample to "
                "draw its distances **r₁** (to the predicted class's prototype) and **r₂** (to the nearest rival).")
    config = projection_form(trace)
    page = state.page_settings()
    colours = [c for c in COLOR_BY if trace.labelled or c not in NEEDS_LABELS]
    fallback = colours[0]
    color_default = page.color if page.color in colours else fallback
    if st.session_state.get("w_map_color") not in (None, *colours):
        st.session_state["w_map_color"] = fallback  # another trace had labels, this one has none
    st.session_state.setdefault("w_map_color", color_default)
    color_by = st.segmented_control("Colour by", colours, format_func=COLOR_BY.get, key="w_map_color") or fallback
    wanted, problem = derive.map_layer(page.map_layer, L)
    if problem:  # a link's layer outside 1..L: clamped, and said so
        st.warning(problem)
    if st.session_state.get("w_map_layer") not in range(1, L + 1) or problem:
        st.session_state["w_map_layer"] = wanted  # also when another trace with more layers set it
    layer = st.slider("Layer", 1, L, key="w_map_layer", help="Each layer has its own prototypes and its own map.")
    state.set_page(map_layer=layer, color=color_by)

    method = effective_method(trace.num_samples, K, config)
    compiling = method == "umap" and not cache.umap_ready()
    if compiling:  # show PCA now; a small fragment polls and reruns the page once UMAP's code is compiled
        method, config = "pca", replace(config, method="pca")
        st.info("UMAP's code is being compiled (once per server start, ≈20 s). Showing PCA meanwhile — the map switches "
                "to UMAP by itself.", icon=":material/hourglass_top:")
        _wait_for_umap()
    try:
        with st.spinner(f"Projecting layer {layer} with {method.upper()}…"):
            points, proto_points = cache.get_projection(ref, layer, config)
    except DE3Error as exc:
        st.error(str(exc))
        return

    m = layer - 1
    labels = trace.labels
    pred = np.asarray(trace.wide["pred"])[:, m]
    correct = np.asarray(trace.wide["correct"])[:, m]
    sig = derive.signals(trace, policy.lambda_)
    dr, edr = sig["dr"][:, m], sig["edr"][:, m]
    decision = decide_exits(trace.wide, policy)
    ids = trace.samples["sample_id"].to_numpy()
    snippets = trace.samples["text"].str.slice(0, 90).str.replace("<", "‹")
    truth = ([f" · true {names[y]}" for y in labels], ["✓" if c else "✗" for c in correct]) if trace.labelled else \
        ([""] * len(ids), [""] * len(ids))
    hover = [f"<b>sample {i}</b>{t} · layer {layer} says {names[p]} {c}<br>"
             f"DR {d:.3f} · EDR {e:.2g} · exits at layer {x}<br>{s}…"
             for i, t, c, p, d, e, x, s in zip(ids, *truth, pred, dr, edr, decision.exit_layer, snippets)]
    kwargs: dict = {}
    if color_by in ("label", "pred"):
        kwargs = dict(color=labels if color_by == "label" else pred, categories=names,
                      category_colors=[charts.class_color(k) for k in range(K)])
    elif color_by == "correct":
        kwargs = dict(color=np.where(correct, 0, 1), categories=["right", "wrong"], category_colors=[charts.RIGHT, charts.WRONG])
    elif color_by == "exit":
        scale = px.colors.sample_colorscale("Viridis", [i / max(L - 1, 1) for i in range(L)])
        kwargs = dict(color=decision.exit_layer - 1, categories=[f"exits at {i}" for i in range(1, L + 1)],
                      category_colors=scale)
    else:
        kwargs = dict(color=dr if color_by == "dr" else edr, log_color=color_by == "edr")

    selected = [s for s in st.session_state.get("map_selected", []) if 0 <= s < len(ids)]
    focus_id = None
    if len(selected) == 1:
        focus_id = selected[0]
    elif len(selected) > 1:
        options = ["(none)"] + selected
        pick = st.selectbox("Draw r₁ / r₂ for one selected sample", options, key="map_focus_pick")
        focus_id = None if pick == "(none)" else int(pick)
    focus = None
    if focus_id is not None:
        i = int(np.flatnonzero(ids == focus_id)[0])
        dists = trace.distances()[i, m]
        p_cls = int(pred[i])
        rival = int(np.argmin(np.where(np.arange(K) == p_cls, np.inf, dists)))
        focus = dict(index=i, r1_class=p_cls, r2_class=rival, r1=float(dists[p_cls]), r2=float(dists[rival]), dr=float(dr[i]))

    fig = charts.prototype_map(points, proto_points, sample_ids=ids, color_label=COLOR_BY[color_by], class_names=names,
                               hover=hover, selected=selected, focus=focus, **kwargs)
    st.plotly_chart(fig, key="map_chart", on_select=_on_select, selection_mode=("points", "box", "lasso"))
    st.caption(f"{method.upper()} of layer {layer}'s {trace.num_samples} samples + {K} prototypes, fitted together "
               f"(seed {config.seed}, {config.metric}). Map distances are **not** the model's distances: r₁, r₂ and DR "
               "are measured in the full prototype space, and the lines only show which prototypes they refer to.")

    if selected:
        sel = np.isin(ids, selected)
        listing = pd.DataFrame({
            "sample": ids[sel], **({"true": [names[y] for y in labels[sel]]} if trace.labelled else {}),
            f"pred @L{layer}": [names[p] for p in pred[sel]],
            **({"right": correct[sel]} if trace.labelled else {}),
            "exit layer": decision.exit_layer[sel], "DR": dr[sel], "EDR": edr[sel],
            "text": trace.samples["text"].to_numpy()[sel],
        })
        right = f" — {int(correct[sel].sum())} right at layer {layer}" if trace.labelled else ""
        st.markdown(f"**{int(sel.sum())} selected**{right}")
        st.dataframe(listing, hide_index=True, width="stretch", key="map_listing",
                     column_config={"DR": st.column_config.NumberColumn(format="%.3f"),
                                    "EDR": st.column_config.NumberColumn(format="%.2e"),
                                    "text": st.column_config.TextColumn(width="large")})
        cols = st.columns([1, 1, 3])
        if focus_id is not None and cols[0].button(f"Inspect sample {focus_id}", key="map_inspect", type="primary"):
            state.open_inspector(focus_id)
        if cols[1].button("Clear selection", key="map_clear"):
            st.session_state["map_selected"] = []
            st.rerun()
    else:
        st.caption("Tip: click a point, or pick the lasso or box tool in the chart toolbar (top right) and draw around points.")


render()
