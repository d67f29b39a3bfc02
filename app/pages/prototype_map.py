"""Prototype map: every layer's samples and class prototypes in one 2-D frame, aligned from layer to layer; play
through the layers, search the texts, select with box or lasso (the app's shared selection), follow one sample's
path, and list its true nearest neighbours."""

import time
from dataclasses import replace

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from analysis.errors import DE3Error
from analysis.policies import decide_exits
from analysis.projection import ProjectionConfig, effective_method, nearest_samples, overlap_share
from app import cache, charts, derive, selection, state

COLOR_BY = {"label": "true class", "pred": "prediction at this layer", "correct": "right / wrong at this layer",
            "exit": "exit layer (current policy)", "dr": "DR at this layer", "edr": "EDR at this layer"}
COLOR_SHORT = {"label": "true class", "pred": "prediction", "correct": "right / wrong", "exit": "exit layer",
               "dr": "DR", "edr": "EDR"}  # the control's words; the chart says "at this layer"
NEEDS_LABELS = ("label", "correct")  # colourings a trace without labels cannot offer
PLAY_SECONDS = 0.8  # each layer's map stays this long while playing
NEIGHBOURS = 10
SEARCH_LIMIT = 5000
CROWDED = 0.5  # above this share of points within 3 px of another (``overlap_share``), the page suggests a change


# ---- the projection settings (folded away below the map) ---------------------------------------------------------


def current_config(trace) -> ProjectionConfig:
    """The session's map settings (the method from the URL on the first visit)."""
    saved = st.session_state.get("map_config")
    if saved is None:
        saved = derive.projection_config(trace, state.page_settings().method or "umap")
        st.session_state["map_config"] = saved
    return saved


def _apply_settings() -> None:
    """The settings form was submitted: its values become the session's config (before the page runs again)."""
    saved = st.session_state["map_config"]
    s = st.session_state
    try:
        st.session_state["map_config"] = ProjectionConfig(
            method=s["map_f_method"], n_neighbors=int(s["map_f_nn"]), min_dist=float(s["map_f_md"]), seed=int(s["map_f_seed"]),
            max_points=int(s["map_f_max"]), metric=saved.metric, align=bool(s["map_f_align"]))
    except DE3Error as exc:
        st.session_state["_map_config_problem"] = str(exc)


def settings_form(config: ProjectionConfig) -> None:
    """Projection settings in a collapsed expander: applied only when the form is submitted."""
    words = (f"{config.method.upper()}" + (f" · {config.n_neighbors} neighbours · min_dist {config.min_dist:g}"
                                          if config.method == "umap" else "")
             + f" · seed {config.seed} · " + ("layers aligned" if config.align else "each layer on its own"))
    with st.expander(f"Projection settings: {words}", icon=":material/tune:"):
        with st.form("map_form", border=False):
            c1, c2, c3, c4, c5 = st.columns([1.3, 1, 1, 1, 1])
            c1.radio("Method", ["umap", "pca"], index=["umap", "pca"].index(config.method), horizontal=True,
                     format_func={"umap": "UMAP", "pca": "PCA (fast)"}.get, key="map_f_method")
            c2.number_input("UMAP neighbours", 2, 200, config.n_neighbors, key="map_f_nn")
            c3.number_input("UMAP min_dist", 0.0, 1.0, config.min_dist, step=0.05, key="map_f_md",
                            help="How tightly UMAP may pack neighbours; small values crowd a class into a few pixels.")
            c4.number_input("seed", 0, 2**31 - 1, config.seed, key="map_f_seed")
            c5.number_input("max points fitted", 100, 20000, config.max_points, step=500, key="map_f_max")
            st.checkbox("Align the layers (each layer's map turned onto the previous one, so samples keep their "
                        "places)", value=config.align, key="map_f_align")
            st.form_submit_button("Compute maps", type="primary", on_click=_apply_settings)
    problem = st.session_state.pop("_map_config_problem", None)
    if problem:
        st.error(problem)


# ---- selection, search, play ---------------------------------------------------------------------------------------


def take_map_pick() -> None:
    """Points picked on the map (a click, a box, a lasso; read before the map is drawn again) become the app's
    current selection."""
    event = st.session_state.get("map_chart")
    points = selection.new_points("map_chart", event)
    if not points:
        return
    ids = []
    for p in points:
        cd = p.get("customdata")
        if isinstance(cd, list):
            cd = cd[0] if cd else None
        if isinstance(cd, (int, float)) and not isinstance(cd, bool):
            ids.append(int(cd))
    if not ids:
        return
    try:
        drawn = event["selection"]
        kind = "lasso" if drawn.get("lasso") else "box" if drawn.get("box") else "click"
    except (KeyError, TypeError, AttributeError):
        kind = "click"
    layer = st.session_state.get("w_map_layer", "?")
    selection.select(ids, f"map {kind} at layer {layer}", origin="map_chart")


def search_ids(samples: pd.DataFrame, query: str) -> tuple[np.ndarray, str]:
    """Sample ids matching ``query`` -- ids ("12", "12, 40") when every word is a number, else samples whose text
    holds every word -- and the words for the legend."""
    query = query.strip()
    words = query.replace(",", " ").split()
    if not words:
        return np.array([], dtype=np.int64), ""
    ids = samples["sample_id"].to_numpy()
    if all(w.isdigit() for w in words):
        hit = ids[np.isin(ids, [int(w) for w in words])]
        return hit, f"id {', '.join(words)}"
    hit = derive.search_samples(samples, query, limit=SEARCH_LIMIT)["sample_id"].to_numpy()
    return hit, f"“{query}”"


def _play() -> None:
    st.session_state["_map_play"] = True


def _select_neighbours(focus_id: int, neighbour_ids: list[int], layer: int) -> None:
    """The sample and its neighbours become the selection; the sample stays the one whose lines are drawn."""
    selection.select([focus_id, *neighbour_ids], f"sample {focus_id} and its {len(neighbour_ids)} neighbours at "
                     f"layer {layer}", origin="map_neighbours")
    st.session_state["map_focus_pick"] = focus_id


# ---- the page ------------------------------------------------------------------------------------------------------


def render() -> None:
    ctx = state.require_trace()
    if ctx is None:
        return
    trace, policy, ref = ctx.trace, ctx.policy, ctx.ref
    L, K, names = trace.num_layers, trace.num_labels, trace.label_names
    take_map_pick()
    st.title("Prototype map")
    st.markdown("Each layer's samples and class **prototypes** (☆) in 2-D, aligned from layer to layer: **Play** to "
                "watch the classes form; box or lasso points to select them.")
    config = current_config(trace)

    colours = [c for c in COLOR_BY if trace.labelled or c not in NEEDS_LABELS]
    fallback = colours[0]
    page = state.page_settings()
    if st.session_state.get("w_map_color") not in (None, *colours):
        st.session_state["w_map_color"] = fallback  # another trace had labels, this one has none
    st.session_state.setdefault("w_map_color", page.color if page.color in colours else fallback)
    wanted, problem = derive.map_layer(page.map_layer, L)
    if problem:  # a link's layer outside 1..L: clamped, and said so
        st.warning(problem)
    goto = st.session_state.pop("_map_goto", None)  # the last layer, after playing
    if st.session_state.get("w_map_layer") not in range(1, L + 1) or problem:
        st.session_state["w_map_layer"] = wanted  # also when another trace with more layers set it
    if goto is not None:
        st.session_state["w_map_layer"] = min(max(int(goto), 1), L)

    c1, c2 = st.columns([3, 1.6], vertical_alignment="bottom")
    color_by = c1.segmented_control("Colour by", colours, format_func=COLOR_SHORT.get, key="w_map_color",
                                    help="Prediction, right / wrong, DR and EDR: at the layer shown. Exit layer: "
                                         "under the current policy.") or fallback
    query = c2.text_input("Search", key="w_map_search", placeholder="words of the text, or a sample id",
                          help="Rings every sample whose text holds all the words (or whose id is given).")
    c1, c2, c3 = st.columns([2.4, 0.6, 1.6], vertical_alignment="bottom")
    layer = c1.slider("Layer", 1, L, key="w_map_layer", help="Each layer has its own prototypes and its own map; the "
                                                                "maps are aligned, so a sample keeps its place.")
    c2.button("Play", key="map_play", icon=":material/play_arrow:", on_click=_play,
              help=f"Step through layers 1 to {L} ({PLAY_SECONDS:g} s each), ending at the last.")
    state.set_page(map_layer=layer, color=color_by, method=config.method)

    method = effective_method(trace.num_samples, K, config)
    if method == "umap" and not cache.umap_ready():  # show PCA now; a fragment reruns the page once UMAP compiled
        method, config = "pca", replace(config, method="pca")
        lo, hi = cache.UMAP_COMPILE_SECONDS
        c3.caption(f":material/hourglass_top: **PCA for now**: UMAP compiles once per server start (≈ {lo}–{hi} s; "
                   f"{cache.umap_compiling_for():.0f} s so far), then the map switches by itself.")
        _wait_for_umap()
    try:
        with st.spinner(f"Mapping all {L} layers with {method.upper()}" + (" (about 1–2 s a layer, once per trace "
                        "and settings)…" if method == "umap" else "…")):
            maps = cache.get_layer_maps(ref, config)
    except DE3Error as exc:
        st.error(str(exc))
        return
    chart_slot = st.empty()

    labels = trace.labels
    ids = trace.samples["sample_id"].to_numpy()
    texts = trace.samples["text"].to_numpy()
    preds, corrects = np.asarray(trace.wide["pred"]), np.asarray(trace.wide["correct"])
    sig = derive.signals(trace, policy.lambda_)
    decision = decide_exits(trace.wide, policy)
    tested = derive.policy_signal(trace, policy)
    tau = policy.tau if tested is not None and tested[0] == color_by else None
    snippets = trace.samples["text"].str.slice(0, 90).str.replace("<", "‹")

    current = selection.current()
    selected = [s for s in (current.ids if current else ()) if 0 <= s < len(ids)]
    found, search_label = search_ids(trace.samples, query)

    st.caption(f"{method.upper()} of layer {layer}'s {trace.num_samples} samples + {K} prototypes, fitted together "
               f"(seed {config.seed}, {config.metric}" + (", layers aligned" if maps.aligned else "") + "). Map "
               "distances are **not** the model's distances: r₁, r₂, DR and the neighbours below are measured in the "
               "full prototype space; the lines only show which prototypes they refer to."
               + (f" Search {search_label}: **{len(found)}** sample{'s' if len(found) != 1 else ''} ringed."
                  if search_label else ""))
    crowded = overlap_share(maps.layer(layer)[0])
    if crowded > CROWDED:
        st.caption(f":material/blur_on: {crowded:.0%} of the points sit within 3 px of another at this layer: zoom in "
                   "(the chart's toolbar), or " + ("raise **min_dist** or try PCA" if method == "umap" else "try UMAP")
                   + " in the projection settings below.")
    if search_label and len(found):
        st.button(f"Select the {len(found)} found", key="map_search_select", icon=":material/select:",
                  on_click=selection.select, args=(found.tolist(), f"map search {search_label}"),
                  kwargs=dict(origin="map_search"))
    settings_form(config)

    def figure(m: int, focus_id: int | None, neighbour_ids: list[int] | None):
        """The map of layer ``m`` (1-based) with every highlight."""
        k = m - 1
        pred, correct = preds[:, k], corrects[:, k]
        dr, edr = sig["dr"][:, k], sig["edr"][:, k]
        truth = ([f" · true {names[y]}" for y in labels], ["✓" if c else "✗" for c in correct]) if trace.labelled \
            else ([""] * len(ids), [""] * len(ids))
        hover = [f"<b>sample {i}</b>{t} · layer {m} says {names[p]} {c}<br>"
                 f"DR {d:.3f} · EDR {e:.2g} · exits at layer {x}<br>{s}…"
                 for i, t, c, p, d, e, x, s in zip(ids, *truth, pred, dr, edr, decision.exit_layer, snippets)]
        if color_by in ("label", "pred"):
            kwargs = dict(color=labels if color_by == "label" else pred, categories=names,
                          category_colors=[charts.class_color(c) for c in range(K)])
        elif color_by == "correct":  # "wrong" drawn last: on top
            kwargs = dict(color=np.where(correct, 0, 1), categories=["right", "wrong"],
                          category_colors=[charts.RIGHT, charts.WRONG])
        elif color_by == "exit":
            scale = px.colors.sample_colorscale("Viridis", [i / max(L - 1, 1) for i in range(L)])
            kwargs = dict(color=decision.exit_layer - 1, categories=[f"exits at {i}" for i in range(1, L + 1)],
                          category_colors=scale)
        else:
            kwargs = dict(color=dr if color_by == "dr" else edr, log_color=color_by == "edr", tau=tau)
        focus = path = neighbours = None
        if focus_id is not None:
            i = int(np.flatnonzero(ids == focus_id)[0])
            dists = trace.distances()[i, k]
            p_cls = int(pred[i])
            rival = int(np.argmin(np.where(np.arange(K) == p_cls, np.inf, dists)))
            focus = dict(index=i, r1_class=p_cls, r2_class=rival, r1=float(dists[p_cls]), r2=float(dists[rival]),
                         dr=float(dr[i]))
            path = dict(points=maps.path(i), layer=m)
            if neighbour_ids:
                neighbours = dict(ids=neighbour_ids, label=f"{len(neighbour_ids)} nearest in the model's space")
        points, proto_points = maps.layer(m)
        return charts.prototype_map(
            points, proto_points, sample_ids=ids, color_label=COLOR_BY[color_by], class_names=names, hover=hover,
            selected=selected, focus=focus, path=path, neighbours=neighbours,
            search=dict(ids=found, label=f"search {search_label} ({len(found)})") if len(found) else None,
            corner=f"layer {m} of {L}", **kwargs)

    focus_id, neighbour_ids = None, None
    if selected:
        sel = np.isin(ids, selected)
        m = layer - 1
        if len(selected) > 1:
            if st.session_state.get("map_focus_pick") not in (None, "(none)", *selected):
                del st.session_state["map_focus_pick"]  # a sample of an earlier selection
            pick = st.selectbox("Draw r₁ / r₂, the path and the neighbours of one selected sample",
                                ["(none)"] + selected, key="map_focus_pick")
            focus_id = None if pick == "(none)" else int(pick)
        else:
            focus_id = selected[0]
        listing = pd.DataFrame({
            "sample": ids[sel], **({"true": [names[y] for y in labels[sel]]} if trace.labelled else {}),
            f"pred @L{layer}": [names[p] for p in preds[sel, m]],
            **({"right": corrects[sel, m]} if trace.labelled else {}),
            "exit layer": decision.exit_layer[sel], "DR": sig["dr"][sel, m], "EDR": sig["edr"][sel, m],
            "text": texts[sel],
        })
        right = f" — {int(corrects[sel, m].sum())} right at layer {layer}" if trace.labelled else ""
        st.markdown(f"**{int(sel.sum())} selected**{right} · {current.source}")
        st.dataframe(listing, hide_index=True, width="stretch", key="map_listing", height=min(38 + 35 * len(listing), 300),
                     column_config={"DR": st.column_config.NumberColumn(format="%.3f"),
                                    "EDR": st.column_config.NumberColumn(format="%.2e"),
                                    "text": st.column_config.TextColumn(width="large")})
        cols = st.columns([1, 1, 3])
        if focus_id is not None and cols[0].button(f"Inspect sample {focus_id}", key="map_inspect", type="primary"):
            state.open_inspector(focus_id)
        if cols[1].button("Clear selection", key="map_clear"):
            selection.clear()
            st.rerun()
        if focus_id is not None:
            neighbour_ids = neighbours_section(trace, ids, focus_id, layer)
    else:
        st.caption("Tip: click a point, or pick the lasso or box tool in the chart toolbar (top right) and draw around "
                   "points; the selection is shared with every page.")

    if st.session_state.pop("_map_play", False):  # step through the layers, then stay on the last one
        for m in range(1, L + 1):
            chart_slot.plotly_chart(figure(m, focus_id, None), key=f"map_play_{m}")
            time.sleep(PLAY_SECONDS)
        st.session_state["_map_goto"] = L
        st.rerun()
    chart_slot.plotly_chart(figure(layer, focus_id, neighbour_ids), key="map_chart", on_select="rerun",
                            selection_mode=("points", "box", "lasso"))


def neighbours_section(trace, ids: np.ndarray, focus_id: int, layer: int) -> list[int]:
    """The focus sample's nearest samples at ``layer`` in the model's own space (not the map's), each openable in
    the inspector. Returns their ids (ringed on the map)."""
    distance = trace.meta.get("model", {}).get("distance", "euclidean")
    i = int(np.flatnonzero(ids == focus_id)[0])
    rows, dist = nearest_samples(trace.embeddings(layer), i, NEIGHBOURS, distance)
    names, m = trace.label_names, layer - 1
    pred = np.asarray(trace.wide["pred"])[rows, m]
    table = pd.DataFrame({
        "sample": ids[rows], **({"true": [names[y] for y in trace.labels[rows]]} if trace.labelled else {}),
        f"pred @L{layer}": [names[p] for p in pred],
        **({"right": np.asarray(trace.wide["correct"])[rows, m]} if trace.labelled else {}),
        f"{distance} distance": dist, "text": trace.samples["text"].to_numpy()[rows],
    })
    st.markdown(f"**{len(rows)} nearest neighbours of sample {focus_id} at layer {layer}** — in the model's prototype "
                f"space ({distance} distance between embeddings), not on the map; ringed ◇ on the map.")
    st.dataframe(table, hide_index=True, width="stretch", key="map_neighbours",
                 column_config={f"{distance} distance": st.column_config.NumberColumn(format="%.4g"),
                                "text": st.column_config.TextColumn(width="large")})
    c1, c2, c3 = st.columns([2, 1, 1.2], vertical_alignment="bottom")
    pick = c1.selectbox("Open a neighbour in the inspector", ids[rows].tolist(), key="map_nb_pick",
                        format_func=lambda s: f"sample {s}: " + str(trace.samples["text"].iloc[int(np.flatnonzero(ids == s)[0])])[:60])
    if c2.button("Open in inspector", key="map_nb_open", icon=":material/search:"):
        state.open_inspector(int(pick))
    c3.button("Select these neighbours", key="map_nb_select", on_click=_select_neighbours,
              args=(focus_id, ids[rows].tolist(), layer))
    return ids[rows].tolist()


@st.fragment(run_every=2)
def _wait_for_umap() -> None:
    if cache.umap_ready():
        st.rerun()  # the whole page, now with UMAP


render()
