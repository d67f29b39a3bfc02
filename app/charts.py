"""Figure builders: data first, options keyword-only, always a ``plotly.graph_objects.Figure``.

No Streamlit here; pages place the figures. Colours are fixed per class, per policy (``PolicySpec.color``) and for
right/wrong, so the same thing looks the same on every page.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.policies import ORACLE, REGISTRY
from app.derive import LOG_FLOOR, signal_bins  # the histograms' bins, shared with what a click on one selects

# Okabe-Ito (colour-blind safe), then more distinct colours for many classes
CLASS_COLORS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#882255",
                "#2E91E5", "#E15F99", "#1CA71C", "#FB0D0D", "#DA16FF", "#222A2A", "#B68100", "#750D86"]
RIGHT, WRONG, NEUTRAL = "#009E73", "#D55E00", "#7F7F7F"  # NEUTRAL: no labels to judge by
CURRENT = "#E4007C"  # the current setting / exit marker: visible on light and dark themes
SELECTION = "#5E2CA5"  # the current selection of samples (app/selection.py), on every chart that shows it
SIGNAL_COLORS = {"entropy": "#E69F00", "dr": "#56B4E9", "edr": "#0072B2", "max_prob": "#CC79A7"}
BUCKET_COLORS = {"efficient": "#009E73", "wasted": "#56B4E9", "premature": "#D55E00", "missed": "#CC79A7",
                 "hopeless": "#7F7F7F"}


def class_color(k: int) -> str:
    return CLASS_COLORS[k % len(CLASS_COLORS)]


def _layout(fig: go.Figure, *, title: str | None = None, height: int = 380, **kwargs) -> go.Figure:
    """Common layout: a horizontal legend above the plot (below the title, when there is one)."""
    legend = dict(orientation="h", xanchor="left", x=0, yanchor="bottom", y=1.02)
    if title:
        legend.update(yref="container", yanchor="top", y=0.90)
    fig.update_layout(title=dict(text=title, y=0.98, yref="container", yanchor="top") if title else None, height=height,
                      margin=dict(l=10, r=10, t=95 if title else 20, b=10), legend=legend,
                      modebar=dict(orientation="v"), **kwargs)  # the toolbar beside the plot, not over the legend
    return fig


# ---- overview ----------------------------------------------------------------------------------------------


def layer_metric_bars(per_layer: pd.DataFrame, *, metric_title: str = "accuracy (%)", final_label: str = "final") -> go.Figure:
    """Each exit's metric if every sample answered there (``curves.per_layer_metric``)."""
    layers = per_layer["layer"].to_numpy()
    values = 100 * per_layer["metric"].to_numpy()
    names = [f"{m}" + (f" ({final_label})" if m == layers.max() else "") for m in layers]
    fig = go.Figure(go.Bar(x=names, y=values, marker_color=["#0072B2"] * (len(layers) - 1) + ["#003f63"],
                           text=[f"{v:.1f}" for v in values], textposition="outside",
                           customdata=per_layer["speedup"].to_numpy(),
                           hovertemplate="exit %{x}<br>" + metric_title + ": %{y:.2f}<br>speed-up if everyone left here "
                                         "%{customdata:.2f}×<extra></extra>"))
    low = max(0.0, float(np.nanmin(values)) - 10) if len(values) else 0
    fig.update_yaxes(title=metric_title, range=[low, min(100.0, float(np.nanmax(values)) + 6) if len(values) else 100])
    fig.update_xaxes(title="exit (layer)", type="category")
    return _layout(fig, height=320)


def exit_distribution(exit_layer: np.ndarray, correct: np.ndarray | None, *, num_layers: int) -> go.Figure:
    """How many samples leave at each layer under the current policy, split into right and wrong answers (one
    bar per layer when ``correct`` is None: a trace without labels)."""
    exit_layer = np.asarray(exit_layer)
    layers = np.arange(1, num_layers + 1)
    if correct is None:
        bars = [go.Bar(x=layers, y=np.bincount(exit_layer - 1, minlength=num_layers), name="samples",
                       marker_color=NEUTRAL, hovertemplate="layer %{x}: %{y} samples<extra></extra>")]
    else:
        correct = np.asarray(correct, dtype=bool)
        bars = [go.Bar(x=layers, y=np.bincount(exit_layer[correct] - 1, minlength=num_layers), name="right",
                       marker_color=RIGHT, hovertemplate="layer %{x}: %{y} right<extra></extra>"),
                go.Bar(x=layers, y=np.bincount(exit_layer[~correct] - 1, minlength=num_layers), name="wrong",
                       marker_color=WRONG, hovertemplate="layer %{x}: %{y} wrong<extra></extra>")]
    fig = go.Figure(bars)
    fig.update_layout(barmode="stack")
    fig.update_xaxes(title="exit layer", tickmode="array", tickvals=layers)
    fig.update_yaxes(title="samples")
    return _layout(fig, height=320)


# ---- trade-off -----------------------------------------------------------------------------------------------


def _hover(rows: pd.DataFrame) -> list[str]:
    out = []
    for r in rows.itertuples(index=False):
        params = []
        if not np.isnan(r.tau):
            params.append(f"τ={r.tau:.4g}")
        if not np.isnan(r.lambda_):
            params.append(f"λ={r.lambda_:g}")
        if not np.isnan(r.patience):
            params.append(f"patience={int(r.patience)}")
        if not np.isnan(r.layer):
            params.append(f"layer={int(r.layer)}")
        out.append(f"<b>{r.label}</b> {', '.join(params)}<br>speed-up {r.speedup:.2f}× · metric {100 * r.metric:.2f}%"
                   f"<br>mean exit layer {r.mean_exit_layer:.2f} · FLOPs {100 * r.flops_ratio:.0f}% of full")
    return out


def _settings(rows: pd.DataFrame) -> list[list]:
    """customdata of sweep points: [policy, tau, lambda_, patience, layer], None where unused or infinite."""
    def clean(v):
        return None if v is None or not np.isfinite(v) else float(v)

    return [[r.policy, clean(r.tau), clean(r.lambda_), clean(r.patience), clean(r.layer)]
            for r in rows.itertuples(index=False)]


def tradeoff_chart(curves: pd.DataFrame, *, current: dict, current_label: str, lambda_: float, patience: int,
                   metric_title: str = "accuracy (%)", x: str = "speedup", frontier_only: bool = False,
                   other_lambdas: bool = False, oracle_front: pd.DataFrame | None = None) -> go.Figure:
    """Metric vs speed-up of every policy's sweep on one chart, the current setting marked.

    ``curves``: a ``curves.sweep`` frame. A threshold policy with λ (DE3) is drawn at ``lambda_`` (other λ as hidden
    legend entries when ``other_lambdas``), one with patience (PCEE) at ``patience``; how each policy looks is its
    ``PolicySpec`` (colour, style, featured on top). ``x`` = "speedup" (L / mean exit layer) or "flops" (1 / FLOPs
    ratio). ``frontier_only`` draws each policy's upper envelope (best metric at a speed-up ≥ s) instead.
    ``oracle_front`` (``curves.oracle_frontier``): for accuracy, drawn as the line "oracle frontier (upper
    bound)" — the best accuracy any exit assignment can have at a speed-up ≥ s (layer speed-up only: it is not
    a bound in FLOPs); for F1/MCC the oracle is labelled a reference point.
    """
    xcol = "speedup" if x == "speedup" else "flops_speedup"
    curves = curves.assign(flops_speedup=1.0 / curves["flops_ratio"])
    fig = go.Figure()

    order = list(REGISTRY)

    def add(rows: pd.DataFrame, name: str, policy: str, *, visible=True, dash=None, width=2.0, opacity=1.0) -> None:
        spec = REGISTRY[policy]
        point = spec.style == "point"
        rows = rows.sort_values([xcol, "metric"])
        if frontier_only and spec.style == "line":
            rows = rows.sort_values(xcol, ascending=False)
            rows = rows[rows["metric"].cummax() == rows["metric"]].drop_duplicates("metric", keep="first")
            rows = rows.sort_values(xcol)
        fig.add_trace(go.Scatter(
            x=rows[xcol], y=100 * rows["metric"], name=name, mode="markers" if point else "lines+markers",
            visible=visible, opacity=opacity, legendrank=100 + order.index(policy) + (0 if opacity == 1.0 else 50),
            # F(s) on (s_prev, s] is the value at s: drop at s_prev, then run flat to s ("vh")
            line=dict(color=spec.color, width=width, dash=dash, shape="vh" if frontier_only else "linear"),
            marker=dict(size=14 if point else 4, symbol="star" if point else "circle", color=spec.color),
            text=_hover(rows), customdata=_settings(rows), hovertemplate="%{text}<extra></extra>"))

    for policy in sorted(order, key=lambda name: REGISTRY[name].featured):  # the featured one last: on top
        spec = REGISTRY[policy]
        rows = curves[curves["policy"] == policy]
        if rows.empty:
            continue
        if spec.style == "layers":  # one marker per exit layer, labelled with it
            rows = rows.sort_values(xcol)
            fig.add_trace(go.Scatter(
                x=rows[xcol], y=100 * rows["metric"], name=spec.label, mode="lines+markers+text",
                legendrank=100 + order.index(policy),
                line=dict(color=spec.color, dash="dash", width=1.5),
                marker=dict(size=8, symbol="square", color=spec.color),
                text=[f"L{int(v)}" for v in rows["layer"]], textposition="bottom center",
                hovertext=_hover(rows), customdata=_settings(rows), hovertemplate="%{hovertext}<extra></extra>"))
            continue
        if spec.needs_labels:  # the oracle: an upper bound for accuracy, a reference point for F1/MCC
            bound = oracle_front is None or bool(oracle_front.attrs.get("bound"))
            add(rows, spec.label if bound else f"{spec.label} (reference point)", policy)
            continue
        name, width = spec.label, 3.5 if spec.featured else 2.0
        if "patience" in spec.curve_params:  # the curve at the sidebar's patience, when the sweep has it
            same = rows[rows["patience"] == patience]
            if len(same):
                rows, name = same, f"{name}, t={patience}"
        if "lambda_" in spec.curve_params:  # the curve at the sidebar's λ; the others on demand
            every = rows
            add(rows[np.isclose(rows["lambda_"], lambda_)], f"{name}, λ={lambda_:g}", policy, width=width)
            if other_lambdas:
                for lam in sorted(every["lambda_"].unique()):
                    if not np.isclose(lam, lambda_):
                        add(every[np.isclose(every["lambda_"], lam)], f"{spec.short} λ={lam:g}", policy,
                            dash="dot", width=1.2, opacity=0.55)
            continue
        add(rows, name, policy, width=width)
    if oracle_front is not None and oracle_front.attrs.get("bound") and x == "speedup":
        _add_oracle_frontier(fig, oracle_front)

    cx = current["speedup"] if x == "speedup" else 1.0 / current["flops_ratio"]
    fig.add_trace(go.Scatter(
        x=[cx], y=[100 * current["metric"]], name="current setting", mode="markers",
        marker=dict(size=22, symbol="circle-open", line=dict(width=3), color=CURRENT),
        hovertemplate=f"<b>current: {current_label}</b><br>speed-up {current['speedup']:.2f}× · metric "
                      f"{100 * current['metric']:.2f}%<extra></extra>"))
    fig.add_annotation(x=cx, y=100 * current["metric"], text="you are here", showarrow=True, arrowhead=2, ax=40, ay=-40,
                       arrowcolor=CURRENT, font=dict(color=CURRENT))
    fig.update_xaxes(title="speed-up = L / mean exit layer (×)" if x == "speedup" else "FLOPs speed-up = 1 / FLOPs ratio (×)")
    fig.update_yaxes(title=metric_title)
    return _layout(fig, height=500)


def _add_oracle_frontier(fig: go.Figure, oracle_front: pd.DataFrame) -> None:
    """The oracle frontier as a dashed step line from 1× (its value there is the oracle's accuracy) to L×."""
    from analysis.curves import upper_envelope

    env = upper_envelope(oracle_front)
    xs, ys = env["speedup"].to_numpy(), 100 * env["metric"].to_numpy()
    if xs[0] > 1.0:
        xs, ys = np.concatenate([[1.0], xs]), np.concatenate([[ys[0]], ys])
    fig.add_trace(go.Scatter(
        x=xs, y=ys, name="oracle frontier (upper bound)", mode="lines", legendrank=100 + len(REGISTRY),
        line=dict(color=REGISTRY[ORACLE].color, width=1.5, dash="dash", shape="vh"),
        hovertemplate="<b>oracle frontier</b>: no exit assignment reaches more than %{y:.2f}% at a speed-up ≥ "
                      "%{x:.2f}× (uses labels)<extra></extra>"))


def _log_ticks(lo: float, hi: float) -> tuple[list[float], list[str]]:
    exps = list(range(int(np.floor(lo)), int(np.ceil(hi)) + 1))
    return exps, [f"1e{e}" if e < -2 else f"{10.0 ** e:g}" for e in exps]


def signal_histograms(values: np.ndarray, correct: np.ndarray | None, *, tau: float | None, signal_label: str,
                      active: np.ndarray | None = None, log_x: bool = True, bins: int = 30,
                      cols: int = 6, selected: np.ndarray | None = None) -> go.Figure:
    """Per-layer histograms of an exit signal (N, L), stacked by whether that layer's answer is right (one group
    when ``correct`` is None: a trace without labels).

    ``tau`` draws the threshold line (exit when the value is left of it). ``active`` (N, L) bool keeps only
    samples still running at each layer. ``log_x`` bins log10 of the values (signals span several decades); the
    bins are ``derive.signal_bins``'. Each bar's customdata is [value at its centre, layer, bin, 1 right / 0 wrong /
    -1 no labels], what a click on it selects. ``selected`` (N,) bool outlines the current selection's share.
    """
    values = np.asarray(values, dtype=np.float64)
    L = values.shape[1]
    groups = ((True, RIGHT, "right at this layer"), (False, WRONG, "wrong at this layer"))
    labelled = correct is not None
    if correct is None:  # no labels: every sample in one neutral group
        correct, groups = np.ones(values.shape, dtype=bool), ((True, NEUTRAL, "samples"),)
    correct = np.asarray(correct, dtype=bool)
    shown = np.ones_like(correct) if active is None else np.asarray(active, dtype=bool)
    index, edges = signal_bins(values, tau=tau, log_x=log_x, bins=bins)
    lo, hi = float(edges[0]), float(edges[-1])
    centers, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    at_center = 10 ** centers if log_x else centers
    cols = min(cols, L)
    rows = int(np.ceil(L / cols))
    fig = make_subplots(rows=rows, cols=cols, shared_yaxes=True, horizontal_spacing=0.015, vertical_spacing=0.12,
                        subplot_titles=[f"layer {m}" + (" (answers all)" if m == L else "") for m in range(1, L + 1)])
    for m in range(L):
        r, c = m // cols + 1, m % cols + 1
        keep = shown[:, m]
        for ok, color, name in groups:
            sel = keep & (correct[:, m] == ok)
            counts = np.bincount(index[sel, m], minlength=bins)
            group = (1 if ok else 0) if labelled else -1
            custom = [[float(v), m + 1, b, group] for b, v in enumerate(at_center)]
            fig.add_trace(go.Bar(x=centers, y=counts, width=width, marker_color=color, name=name, legendgroup=name,
                                 showlegend=m == 0, customdata=custom,
                                 hovertemplate=f"layer {m + 1}<br>{signal_label} ≈ %{{customdata[0]:.3g}}<br>%{{y}} {name}"
                                               "<br>click: select them<extra></extra>"), row=r, col=c)
        if selected is not None:  # the current selection's samples in each bin, outlined
            counts = np.bincount(index[keep & np.asarray(selected, dtype=bool), m], minlength=bins)
            fig.add_trace(go.Scatter(x=edges, y=np.append(counts, counts[-1]), mode="lines", name="in the selection",
                                     legendgroup="in the selection", showlegend=m == 0, hoverinfo="skip",
                                     line=dict(color=SELECTION, width=2, shape="hv")), row=r, col=c)
        if tau is not None and m < L - 1:
            t = (np.log10(max(tau, LOG_FLOOR)) if log_x else tau) if tau > 0 else lo
            fig.add_vline(x=t, line=dict(color=CURRENT, dash="dash", width=1.5), row=r, col=c)
    fig.update_layout(barmode="stack", bargap=0)
    if log_x:
        tickvals, ticktext = _log_ticks(lo, hi)
        fig.update_xaxes(tickmode="array", tickvals=tickvals, ticktext=ticktext, range=[lo, hi])
    fig.update_xaxes(title_text=f"{signal_label}" + (" (log scale)" if log_x else ""), row=rows, col=1)
    fig.update_yaxes(title_text="samples", row=1, col=1)
    _layout(fig, height=260 * rows + 90, bargap=0)
    fig.update_layout(legend=dict(y=1.0, yref="container", yanchor="top"), margin=dict(t=70))
    return fig


# ---- prototype map ---------------------------------------------------------------------------------------------


def map_point_style(n: int) -> tuple[int, float]:
    """(marker size, opacity) for a map of ``n`` samples: smaller and more transparent as they grow, so that
    overlapping points read as density instead of one solid blob."""
    if n <= 300:
        return 9, 0.85
    if n <= 1500:
        return 7, 0.7
    if n <= 6000:
        return 5, 0.55
    return 4, 0.45


def colorbar_ticks(lo: float, hi: float, *, log: bool) -> tuple[list[float], list[str]] | None:
    """Colour-bar ticks in the signal's own units. ``log``: ``lo``/``hi`` are log10 values and the ticks sit at
    1, 2, 5 × powers of ten inside them, labelled as values (0.001, 0.01, 0.1, 1 -- never exponents); linear: None
    (Plotly's own ticks are already values)."""
    if not log:
        return None
    vals = []
    for e in range(int(np.floor(lo)), int(np.ceil(hi)) + 1):
        for mult in (1, 2, 5):
            v = np.log10(mult) + e
            if lo - 1e-9 <= v <= hi + 1e-9:
                vals.append((mult, v))
    decades = [(m, v) for m, v in vals if m == 1]
    keep = decades if len(decades) >= 3 else vals  # enough decades: label only them
    return [float(v) for _, v in keep], [f"{10.0 ** v:.6g}" for _, v in keep]


def prototype_map(points: np.ndarray, proto_points: np.ndarray, *, sample_ids: np.ndarray, color: np.ndarray,
                  color_label: str, categories: list[str] | None = None, category_colors: list[str] | None = None,
                  class_names: list[str], hover: list[str], selected: list[int] | None = None,
                  focus: dict | None = None, log_color: bool = False, height: int = 500,
                  view: tuple[tuple[float, float], tuple[float, float]] | None = None, path: dict | None = None,
                  search: dict | None = None, neighbours: dict | None = None, tau: float | None = None,
                  corner: str | None = None) -> go.Figure:
    """Samples and class prototypes of one layer in one 2-D map.

    Drawn bottom to top: the prototypes (hollow stars, so points on them stay visible), the samples (size and
    opacity by their number, so density shows; categories in the order given, so "wrong" after "right" is on top),
    then the highlights. The view is fitted to the samples: a prototype outside it is drawn at the edge and
    labelled so.

    ``color``: category index per sample (with ``categories`` and ``category_colors``) or a number (continuous
    colour scale, ticks in the signal's own units; ``log_color``: a log scale labelled 0.001, 0.01, ...; ``tau``:
    the policy's threshold marked on the colour bar). ``selected``: sample ids of the current selection (others
    fade). ``focus``: one sample's dict(index, r1_class, r2_class, r1, r2, dr) — lines to its predicted-class (r1)
    and nearest rival (r2) prototypes, labelled with the true distances, each prototype ringed so a line of no
    length still shows. ``view``: ((x0, x1), (y0, y1)), e.g. ``LayerMaps.view()`` (one view for every layer);
    None fits these samples (and the path). ``path``: dict(points=(L, 2), layer=1-based) — the focus sample at every layer.
    ``search``: dict(ids, label) ringed; ``neighbours``: dict(ids, label) marked. ``corner``: words in the top
    left corner (which layer this is, while the layers play).
    """
    points, proto_points = np.asarray(points, dtype=np.float64), np.asarray(proto_points, dtype=np.float64)
    sample_ids = np.asarray(sample_ids)
    hover = np.asarray(hover, dtype=object)
    sel = set(int(s) for s in (selected or []))
    Scatter = go.Scattergl if len(points) > 3000 else go.Scatter
    size, opacity = map_point_style(len(points))
    fig = go.Figure()
    if view is None:  # these samples, and the focus sample's path when there is one
        fitted = points if path is None else np.concatenate([points, np.asarray(path["points"], dtype=np.float64)])
        lo, hi = fitted.min(axis=0), fitted.max(axis=0)
        margin = 0.05 * np.maximum(hi - lo, 1e-6)
        view = (lo[0] - margin[0], hi[0] + margin[0]), (lo[1] - margin[1], hi[1] + margin[1])
    (x0, x1), (y0, y1) = view
    span = np.array([x1 - x0, y1 - y0])
    inset = 0.02 * span  # a prototype outside the view sits just inside its edge
    shown_protos = np.clip(proto_points, [x0 + inset[0], y0 + inset[1]], [x1 - inset[0], y1 - inset[1]])
    outside = (np.abs(shown_protos - proto_points) > 1e-9).any(axis=1)

    # prototypes first: under the points
    K = len(proto_points)
    proto_hover = [f"prototype of <b>{class_names[k]}</b>" + (" — outside this view, drawn at its edge" if outside[k] else "")
                   for k in range(K)]
    fig.add_trace(go.Scatter(
        x=shown_protos[:, 0], y=shown_protos[:, 1], mode="markers", name="class prototypes",
        marker=dict(size=26, symbol="star-open", color=[class_color(k) for k in range(K)], line=dict(width=2.5)),
        text=list(class_names), hovertext=proto_hover, hovertemplate="%{hovertext}<extra></extra>"))

    def selected_points(mask: np.ndarray):
        ids = sample_ids[mask]
        return [i for i, s in enumerate(ids) if int(s) in sel] if sel else None

    point_line = dict(width=0.5, color="white") if len(points) <= 1500 else dict(width=0)
    faded = dict(marker=dict(opacity=0.15))
    if categories is not None:
        color = np.asarray(color)
        palette = category_colors or CLASS_COLORS
        for c, name in enumerate(categories):
            mask = color == c
            if not mask.any():
                continue
            fig.add_trace(Scatter(
                x=points[mask, 0], y=points[mask, 1], mode="markers", name=f"{name} ({int(mask.sum())})",
                marker=dict(size=size, color=palette[c % len(palette)], line=point_line, opacity=opacity),
                customdata=sample_ids[mask], text=hover[mask], selectedpoints=selected_points(mask),
                selected=dict(marker=dict(opacity=1.0)), unselected=faded,
                hovertemplate="%{text}<extra></extra>"))
    else:
        values = np.asarray(color, dtype=np.float64)
        shown = np.log10(np.clip(values, LOG_FLOOR, None)) if log_color else values
        finite = shown[np.isfinite(shown)]
        cmin, cmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        t = None
        if tau is not None and np.isfinite(tau):
            t = float(np.log10(max(tau, LOG_FLOOR))) if log_color else float(tau)
            cmin, cmax = min(cmin, t), max(cmax, t)  # τ always on the bar
        cmax = cmax if cmax > cmin else cmin + 1.0
        colorbar = dict(title=dict(text=color_label + (" (log scale)" if log_color else ""), side="right"),
                        thickness=14, len=1.0, lenmode="fraction", y=0.5, yanchor="middle", ypad=0,
                        x=1.0, xref="paper", xanchor="left", xpad=COLORBAR_XPAD, outlinewidth=0)
        ticks = colorbar_ticks(cmin, cmax, log=log_color)
        if ticks is not None:
            colorbar.update(tickmode="array", tickvals=ticks[0], ticktext=ticks[1])
        fig.add_trace(Scatter(
            x=points[:, 0], y=points[:, 1], mode="markers", name=color_label, showlegend=False,
            marker=dict(size=size, color=shown, cmin=cmin, cmax=cmax, colorscale="Viridis_r", showscale=True,
                        colorbar=colorbar, line=point_line, opacity=opacity),
            customdata=sample_ids, text=hover, selectedpoints=selected_points(np.ones(len(points), bool)),
            selected=dict(marker=dict(opacity=1.0)), unselected=faded,
            hovertemplate="%{text}<extra></extra>"))
        if t is not None:  # a line across the colour bar at τ, and its value beside it
            frac = (t - cmin) / (cmax - cmin)
            fig.add_shape(type="line", name="tau", xref="paper", xsizemode="pixel", xanchor=1.0,
                          x0=COLORBAR_XPAD - 4, x1=COLORBAR_XPAD + 18, yref="paper", y0=frac, y1=frac,
                          line=dict(color=CURRENT, width=3))
            fig.add_annotation(name="tau", xref="paper", yref="paper", x=1.0, y=frac, xanchor="right",
                               xshift=COLORBAR_XPAD - 6, showarrow=False, text=f"<b>τ = {tau:g}</b>",
                               font=dict(color=CURRENT, size=12), bgcolor="rgba(255,255,255,0.8)")

    if sel:  # the current selection, ringed (on every page, selected samples wear this colour)
        mask = np.isin(sample_ids, list(sel))
        if mask.any():
            fig.add_trace(go.Scatter(
                x=points[mask, 0], y=points[mask, 1], mode="markers", name=f"selected ({int(mask.sum())})",
                marker=dict(size=size + 5, symbol="circle-open", color=SELECTION, line=dict(width=1.8)),
                customdata=sample_ids[mask], text=hover[mask], hovertemplate="%{text}<extra></extra>"))
    if search is not None and len(search["ids"]):
        mask = np.isin(sample_ids, list(search["ids"]))
        fig.add_trace(go.Scatter(
            x=points[mask, 0], y=points[mask, 1], mode="markers", name=search["label"],
            marker=dict(size=size + 9, symbol="circle-open", color="#111111", line=dict(width=2.2)),
            customdata=sample_ids[mask], text=hover[mask], hovertemplate="%{text}<extra></extra>"))
    if neighbours is not None and len(neighbours["ids"]):
        mask = np.isin(sample_ids, list(neighbours["ids"]))
        fig.add_trace(go.Scatter(
            x=points[mask, 0], y=points[mask, 1], mode="markers", name=neighbours["label"],
            marker=dict(size=size + 7, symbol="diamond-open", color=CURRENT, line=dict(width=2)),
            customdata=sample_ids[mask], text=hover[mask], hovertemplate="%{text}<extra></extra>"))
    if path is not None:  # the focus sample at every layer: a thin line, each layer numbered
        trail = np.asarray(path["points"], dtype=np.float64)
        current = int(path["layer"])
        fig.add_trace(go.Scatter(
            x=trail[:, 0], y=trail[:, 1], mode="lines+markers+text", name=f"its path, layers 1–{len(trail)}",
            line=dict(color="#333333", width=1.5), marker=dict(size=6, color="#333333"),
            text=[f"<b>{m}</b>" if m == current else str(m) for m in range(1, len(trail) + 1)],
            textposition="top right", textfont=dict(size=11, color="#333333"),
            hovertemplate="layer %{text}<extra></extra>"))
    if focus is not None:
        i = focus["index"]
        sx, sy = points[i]
        short = 0.03 * float(np.hypot(*span))  # a line shorter than this is hard to see: say it in words
        notes = []
        for which, cls, dist, dash, ring in (("r1", focus["r1_class"], focus["r1"], "solid", 34),
                                             ("r2", focus["r2_class"], focus["r2"], "dot", 42)):
            px_, py_ = shown_protos[cls]
            fig.add_trace(go.Scatter(
                x=[sx, px_], y=[sy, py_], mode="lines+markers", showlegend=True,
                name=f"{which} = {dist:.3g} → {class_names[cls]}", line=dict(color=class_color(cls), width=3, dash=dash),
                marker=dict(size=[0, ring], symbol="circle-open", color=class_color(cls), line=dict(width=2.5)),
                hoverinfo="skip"))
            if np.hypot(px_ - sx, py_ - sy) < short:
                notes.append(f"{which} = {dist:.3g}")
        fig.add_trace(go.Scatter(x=[sx], y=[sy], mode="markers", name=f"sample {sample_ids[i]}",
                                 marker=dict(size=18, symbol="circle-open", color=CURRENT, line=dict(width=3)),
                                 hovertemplate=f"sample {sample_ids[i]} · DR = {focus['dr']:.3f}<extra></extra>"))
        if notes:  # the sample sits on a prototype in the map: the line has no length, the words say it
            fig.add_annotation(x=sx, y=sy, ax=40, ay=-36, showarrow=True, arrowhead=2, arrowcolor=CURRENT,
                               text=f"sample {sample_ids[i]} on its prototype in the map; " + ", ".join(notes)
                                    + " in the model", font=dict(color=CURRENT, size=12),
                               bgcolor="rgba(255,255,255,0.85)")

    for k in range(K):  # class names on top of everything, beside their stars
        fig.add_annotation(x=shown_protos[k, 0], y=shown_protos[k, 1], yshift=18, showarrow=False,
                           text=f"<b>{class_names[k]}</b>" + (" (outside the view)" if outside[k] else ""),
                           font=dict(size=13, color=class_color(k), shadow="0px 0px 3px white"))  # a halo, not a box
    if corner:
        fig.add_annotation(xref="paper", yref="paper", x=0.01, y=0.99, xanchor="left", yanchor="top", showarrow=False,
                           text=f"<b>{corner}</b>", font=dict(size=15, color="#333333"))
    fig.update_xaxes(showticklabels=False, title=None, zeroline=False, showgrid=False, range=[x0, x1])
    fig.update_yaxes(showticklabels=False, title=None, zeroline=False, showgrid=False, range=[y0, y1],
                     scaleanchor="x", scaleratio=1)
    return _layout(fig, height=height)  # Streamlit: pan + click-to-select; lasso and box in the toolbar


COLORBAR_XPAD = 12  # px between the plot and the colour bar (the τ mark is drawn across it)


# ---- sample trajectories -----------------------------------------------------------------------------------


def signal_trajectory(signals: dict[str, np.ndarray], *, tau: float | None, tested: str | None,
                      exit_layer: int | None = None, correct: np.ndarray | None = None, log_y: bool = True,
                      computed: int | None = None, title: str | None = None) -> go.Figure:
    """Entropy, DR and EDR of one sample over the layers, with τ on the tested signal and the exit marked.

    ``signals``: name -> (L,) values (keys among entropy, dr, edr, max_prob). ``correct`` (L,) marks right/wrong
    predictions on the x axis. ``computed``: layers actually run (later ones drawn faded: never computed).
    """
    names = {"entropy": "entropy", "dr": "DR", "edr": "EDR", "max_prob": "max-probability"}
    L = len(next(iter(signals.values())))
    layers = np.arange(1, L + 1)
    fig = go.Figure()
    for key, values in signals.items():
        v = np.asarray(values, dtype=np.float64)
        y = np.clip(v, LOG_FLOOR, None) if log_y else v
        fig.add_trace(go.Scatter(x=layers, y=y, name=names.get(key, key), mode="lines+markers",
                                 line=dict(color=SIGNAL_COLORS.get(key, "#333"), width=3.5 if key == tested else 2),
                                 marker=dict(size=9 if key == tested else 6),
                                 hovertemplate=f"layer %{{x}}: {names.get(key, key)} = %{{y:.4g}}<extra></extra>"))
    if tau is not None and tested is not None:
        fig.add_hline(y=max(tau, LOG_FLOOR) if log_y else tau, line=dict(color=SIGNAL_COLORS.get(tested, "#000"), dash="dash"),
                      annotation_text=f"τ = {tau:g} ({names.get(tested, tested)})", annotation_position="top left")
    if exit_layer is not None:
        fig.add_vline(x=exit_layer, line=dict(color=CURRENT, width=2),
                      annotation_text=f"exits at layer {exit_layer}", annotation_position="top right")
    if computed is not None and computed < L:
        fig.add_vrect(x0=computed + 0.5, x1=L + 0.5, fillcolor="#BBBBBB", opacity=0.25, line_width=0,
                      annotation_text="not computed (already exited)", annotation_position="bottom right")
    if correct is not None:  # ✓ / ✗ above each layer: is that layer's prediction right?
        for m, ok in enumerate(np.asarray(correct, dtype=bool), start=1):
            fig.add_annotation(x=m, y=1.0, yref="paper", yanchor="bottom", showarrow=False, text="✓" if ok else "✗",
                               font=dict(size=16, color=RIGHT if ok else WRONG))
    fig.update_xaxes(title="layer", tickmode="array", tickvals=layers, range=[0.5, L + 0.5])
    fig.update_yaxes(title="value" + (" (log)" if log_y else ""), type="log" if log_y else "linear",
                     dtick=1 if log_y else None)
    return _layout(fig, title=title, height=380)


def class_lines(values: np.ndarray, *, class_names: list[str], true_label: int | None, ylabel: str,
                highlight: np.ndarray | None = None, title: str | None = None, log_y: bool = False) -> go.Figure:
    """(L, K) per-class values of one sample over the layers — probabilities or prototype distances.

    The true class is drawn thick; ``highlight`` (L,) class index per layer is marked (e.g. the prediction).
    """
    values = np.asarray(values, dtype=np.float64)
    L, K = values.shape
    layers = np.arange(1, L + 1)
    fig = go.Figure()
    for k in range(K):
        true = k == true_label
        fig.add_trace(go.Scatter(x=layers, y=values[:, k], mode="lines+markers",
                                 name=class_names[k] + (" (true)" if true else ""),
                                 line=dict(color=class_color(k), width=4 if true else 1.8, dash=None if true else "solid"),
                                 marker=dict(size=7), hovertemplate=f"layer %{{x}}: {class_names[k]} %{{y:.4g}}<extra></extra>"))
    if highlight is not None:
        h = np.asarray(highlight, dtype=int)
        fig.add_trace(go.Scatter(x=layers, y=values[np.arange(L), h], mode="markers", name="predicted class",
                                 marker=dict(size=15, symbol="circle-open", color=CURRENT, line=dict(width=2.5)),
                                 hoverinfo="skip"))
    fig.update_xaxes(title="layer", tickmode="array", tickvals=layers)
    fig.update_yaxes(title=ylabel, type="log" if log_y else "linear")
    return _layout(fig, title=title, height=340)


def policy_exit_strip(exits: pd.DataFrame, *, num_layers: int, current: str | None = None) -> go.Figure:
    """Where each policy would let one sample exit (``derive.sample_exits``), ✓ right / ✗ wrong."""
    exits = exits.iloc[::-1]
    labels = [(REGISTRY[p].label if p in REGISTRY else p) + (" ◀ current" if p == current else "") for p in exits["policy"]]
    fig = go.Figure(go.Scatter(
        x=exits["exit_layer"], y=labels, mode="markers+text",
        marker=dict(size=18, symbol=np.where(exits["correct"], "circle", "x"),
                    color=np.where(exits["correct"], RIGHT, WRONG)),
        text=np.where(exits["correct"], "✓", "✗"), textposition="middle right",
        customdata=exits["setting"], hovertemplate="%{customdata}<br>exits at layer %{x}<extra></extra>"))
    fig.update_xaxes(title="exit layer", range=[0.5, num_layers + 0.7], tickmode="array",
                     tickvals=list(range(1, num_layers + 1)))
    return _layout(fig, height=60 + 34 * len(exits))


# ---- errors ------------------------------------------------------------------------------------------------------


def confusion_heatmap(matrix: np.ndarray, *, class_names: list[str], title: str | None = None,
                      selected: np.ndarray | None = None) -> go.Figure:
    """Counts [true, predicted]; the diagonal is right. A click on a cell selects its samples: a marker sits on every
    cell (customdata [true, predicted]; a heatmap itself cannot be selected), the nearest one is picked (hoverdistance
    -1). ``selected`` (K, K): the current selection's samples per cell, counted in the text where there is room (up
    to 3 classes), else outlined."""
    m = np.asarray(matrix)
    K = len(class_names)
    xs, ys = [f"pred {c}" for c in class_names], [f"true {c}" for c in class_names]
    chosen = np.zeros_like(m) if selected is None else np.asarray(selected)
    text = np.array([[f"{m[t, p]}" + (f"<br>({chosen[t, p]} selected)" if chosen[t, p] and K <= 3 else "")
                      for p in range(K)] for t in range(K)], dtype=object)
    fig = go.Figure(go.Heatmap(z=m, x=xs, y=ys, colorscale="Blues", text=text, texttemplate="%{text}", showscale=False,
                               hoverinfo="skip"))
    t, p = np.divmod(np.arange(K * K), K)
    hover = [f"{m[i, j]}" + (f" ({chosen[i, j]} in the selection)" if chosen[i, j] else "") for i, j in zip(t, p)]
    fig.add_trace(go.Scatter(
        x=[xs[j] for j in p], y=[ys[i] for i in t], mode="markers", showlegend=False, name="cells",
        marker=dict(symbol="square-open", size=24, color=SELECTION, line=dict(width=2.5),
                    opacity=[1.0 if chosen[i, j] and K > 3 else 0.0 for i, j in zip(t, p)]),
        customdata=np.stack([t, p], axis=1).tolist(), text=hover,
        hovertemplate="%{y}, %{x}: %{text}<br>click: select them<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(hoverdistance=-1)
    return _layout(fig, title=title, height=120 + 45 * len(class_names))


def bucket_bars(counts: pd.DataFrame, *, selected: dict[str, int] | None = None) -> go.Figure:
    """Samples per error bucket (``taxonomy.bucket_counts``); a click on a bar selects its samples (customdata: the
    bucket). ``selected``: the current selection's samples per bucket, drawn as a narrow bar over each."""
    fig = go.Figure(go.Bar(x=counts["count"], y=counts["label"], orientation="h", name="samples",
                           marker_color=[BUCKET_COLORS[b] for b in counts["bucket"]], customdata=counts["bucket"],
                           text=[f"{c} ({100 * s:.1f}%)" for c, s in zip(counts["count"], counts["share"])],
                           textposition="auto" if selected is None else "outside", cliponaxis=False,
                           hovertemplate="%{y}: %{x}<br>click: select them<extra></extra>"))
    if selected is not None:  # over each bar, so its count goes outside it
        n = [int(selected.get(b, 0)) for b in counts["bucket"]]
        fig.add_trace(go.Bar(x=n, y=counts["label"], orientation="h", name="in the selection", width=0.3,
                             marker=dict(color=SELECTION), customdata=counts["bucket"], showlegend=True,
                             hovertemplate="%{y}: %{x} in the selection<extra></extra>"))
        fig.update_layout(barmode="overlay")
        fig.update_xaxes(range=[0, 1.45 * max(int(counts["count"].max()), 1)])  # room for the counts
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title="samples")
    return _layout(fig, height=260, showlegend=selected is not None)


# ---- two policies side by side; the flow of samples through the layers --------------------------------------------


def diff_exit_layers(diff: pd.DataFrame, *, num_layers: int, name_a: str, name_b: str) -> go.Figure:
    """Where two policies let the same samples out (``derive.policy_diff``): samples per (A's exit layer, B's exit
    layer), the disagreements (only one of them right) counted in each cell's hover."""
    layers = np.arange(1, num_layers + 1)
    total = np.zeros((num_layers, num_layers), dtype=int)
    only_a = np.zeros_like(total)
    only_b = np.zeros_like(total)
    np.add.at(total, (diff["exit_b"] - 1, diff["exit_a"] - 1), 1)
    for outcome, grid in (("only A right", only_a), ("only B right", only_b)):
        part = diff[diff["outcome"] == outcome]
        np.add.at(grid, (part["exit_b"] - 1, part["exit_a"] - 1), 1)
    # each cell: its samples, and (when any) how many only A / only B gets right there, short enough to read
    text = [[f"{total[j, i]}" + (f"<br>A+{only_a[j, i]} B+{only_b[j, i]}" if only_a[j, i] or only_b[j, i] else "")
             if total[j, i] else "" for i in range(num_layers)] for j in range(num_layers)]
    fig = go.Figure(go.Heatmap(z=total, x=layers, y=layers, text=text, texttemplate="%{text}", textfont=dict(size=12),
                               colorscale="Blues",
                               showscale=False, customdata=np.dstack([only_a, only_b]),
                               hovertemplate=f"{name_a} exits at %{{x}}, {name_b} at %{{y}}: %{{z}} samples<br>"
                                             "only A right %{customdata[0]} · only B right %{customdata[1]}<extra></extra>"))
    fig.update_xaxes(title=f"A: {name_a} — exit layer", tickmode="array", tickvals=layers)
    fig.update_yaxes(title=f"B: {name_b} — exit layer", tickmode="array", tickvals=layers)
    return _layout(fig, height=380)


def exit_flow(exit_layer: np.ndarray, correct: np.ndarray | None, *, num_layers: int) -> go.Figure:
    """How the samples flow through the layers under a policy: into each layer, out right or wrong there (or just
    out, without labels), on to the next. A Sankey diagram that moves with τ."""
    exit_layer = np.asarray(exit_layer)
    L = num_layers
    entering = [int((exit_layer >= m).sum()) for m in range(1, L + 1)]
    labels = [f"layer {m}<br>{entering[m - 1]} in" for m in range(1, L + 1)]
    colors = ["#4C78A8"] * L
    source, target, value, link_colors = [], [], [], []

    def node(label: str, color: str) -> int:
        labels.append(label)
        colors.append(color)
        return len(labels) - 1

    groups = (("right", RIGHT), ("wrong", WRONG)) if correct is not None else (("out", NEUTRAL),)
    ok = None if correct is None else np.asarray(correct, dtype=bool)
    for m in range(1, L + 1):
        here = exit_layer == m
        for word, color in groups:
            n = int((here & (ok if word == "right" else ~ok)).sum()) if ok is not None else int(here.sum())
            if n:
                source.append(m - 1)
                target.append(node(f"exit {word} at {m}: {n}", color))
                value.append(n)
                link_colors.append(_fade(color))
        if m < L and entering[m]:
            source.append(m - 1)
            target.append(m)
            value.append(entering[m])
            link_colors.append("rgba(76,120,168,0.25)")
    fig = go.Figure(go.Sankey(arrangement="snap", node=dict(label=labels, color=colors, pad=12, thickness=14),
                              link=dict(source=source, target=target, value=value, color=link_colors,
                                        hovertemplate="%{value} samples<extra></extra>")))
    return _layout(fig, height=360)


def _fade(hex_color: str, alpha: float = 0.45) -> str:
    h = hex_color.lstrip("#")
    return f"rgba({int(h[0:2], 16)},{int(h[2:4], 16)},{int(h[4:6], 16)},{alpha})"
