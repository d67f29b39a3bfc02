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

# Okabe-Ito (colour-blind safe), then more distinct colours for many classes
CLASS_COLORS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#882255",
                "#2E91E5", "#E15F99", "#1CA71C", "#FB0D0D", "#DA16FF", "#222A2A", "#B68100", "#750D86"]
RIGHT, WRONG, NEUTRAL = "#009E73", "#D55E00", "#7F7F7F"  # NEUTRAL: no labels to judge by
CURRENT = "#E4007C"  # the current setting / exit marker: visible on light and dark themes
SIGNAL_COLORS = {"entropy": "#E69F00", "dr": "#56B4E9", "edr": "#0072B2", "max_prob": "#CC79A7"}
BUCKET_COLORS = {"efficient": "#009E73", "wasted": "#56B4E9", "premature": "#D55E00", "missed": "#CC79A7",
                 "hopeless": "#7F7F7F"}
LOG_FLOOR = 1e-6


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
                      cols: int = 6) -> go.Figure:
    """Per-layer histograms of an exit signal (N, L), stacked by whether that layer's answer is right (one group
    when ``correct`` is None: a trace without labels).

    ``tau`` draws the threshold line (exit when the value is left of it). ``active`` (N, L) bool keeps only
    samples still running at each layer. ``log_x`` bins log10 of the values (signals span several decades).
    """
    values = np.asarray(values, dtype=np.float64)
    L = values.shape[1]
    groups = ((True, RIGHT, "right at this layer"), (False, WRONG, "wrong at this layer"))
    if correct is None:  # no labels: every sample in one neutral group
        correct, groups = np.ones(values.shape, dtype=bool), ((True, NEUTRAL, "samples"),)
    correct = np.asarray(correct, dtype=bool)
    shown = np.ones_like(correct) if active is None else np.asarray(active, dtype=bool)
    x = np.log10(np.clip(values, LOG_FLOOR, None)) if log_x else values
    finite = x[np.isfinite(x)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if tau is not None and tau > 0:
        t = np.log10(max(tau, LOG_FLOOR)) if log_x else tau
        lo, hi = min(lo, t), max(hi, t)
    hi = hi if hi > lo else lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    centers, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    cols = min(cols, L)
    rows = int(np.ceil(L / cols))
    fig = make_subplots(rows=rows, cols=cols, shared_yaxes=True, horizontal_spacing=0.015, vertical_spacing=0.12,
                        subplot_titles=[f"layer {m}" + (" (answers all)" if m == L else "") for m in range(1, L + 1)])
    for m in range(L):
        r, c = m // cols + 1, m % cols + 1
        keep = shown[:, m]
        for ok, color, name in groups:
            sel = keep & (correct[:, m] == ok)
            counts, _ = np.histogram(np.clip(x[sel, m], lo, hi), bins=edges)
            fig.add_trace(go.Bar(x=centers, y=counts, width=width, marker_color=color, name=name, legendgroup=name,
                                 showlegend=m == 0, customdata=10 ** centers if log_x else centers,
                                 hovertemplate=f"layer {m + 1}<br>{signal_label} ≈ %{{customdata:.3g}}<br>%{{y}} {name}"
                                               "<extra></extra>"), row=r, col=c)
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


def prototype_map(points: np.ndarray, proto_points: np.ndarray, *, sample_ids: np.ndarray, color: np.ndarray,
                  color_label: str, categories: list[str] | None = None, category_colors: list[str] | None = None,
                  class_names: list[str], hover: list[str], selected: list[int] | None = None,
                  focus: dict | None = None, log_color: bool = False, height: int = 620) -> go.Figure:
    """Samples and class prototypes of one layer in one 2-D map.

    ``color``: category index per sample (with ``categories`` and ``category_colors``) or a number (continuous
    colour scale; ``log_color`` colours by log10). ``selected``: sample ids to emphasise. ``focus``: one sample's
    dict(index, r1_class, r2_class, r1, r2, dr) — lines to its predicted-class (r1) and nearest rival (r2)
    prototypes, labelled with the true distances.
    """
    points, proto_points = np.asarray(points), np.asarray(proto_points)
    sample_ids = np.asarray(sample_ids)
    hover = np.asarray(hover, dtype=object)
    sel = set(selected or [])
    Scatter = go.Scattergl if len(points) > 3000 else go.Scatter
    fig = go.Figure()

    def selected_points(mask: np.ndarray):
        ids = sample_ids[mask]
        idx = [i for i, s in enumerate(ids) if s in sel]
        return idx if sel else None

    if categories is not None:
        color = np.asarray(color)
        for c, name in enumerate(categories):
            mask = color == c
            if not mask.any():
                continue
            fig.add_trace(Scatter(
                x=points[mask, 0], y=points[mask, 1], mode="markers", name=f"{name} ({int(mask.sum())})",
                marker=dict(size=7, color=(category_colors or CLASS_COLORS)[c % len(category_colors or CLASS_COLORS)],
                            line=dict(width=0.5, color="white"), opacity=0.85),
                customdata=sample_ids[mask], text=hover[mask], selectedpoints=selected_points(mask),
                selected=dict(marker=dict(size=11, opacity=1.0)), unselected=dict(marker=dict(opacity=0.25)),
                hovertemplate="%{text}<extra></extra>"))
    else:
        values = np.asarray(color, dtype=np.float64)
        shown = np.log10(np.clip(values, LOG_FLOOR, None)) if log_color else values
        fig.add_trace(Scatter(
            x=points[:, 0], y=points[:, 1], mode="markers", name=color_label, showlegend=False,
            marker=dict(size=7, color=shown, colorscale="Viridis_r", showscale=True,
                        colorbar=dict(title=("log10 " if log_color else "") + color_label, thickness=12),
                        line=dict(width=0.3, color="white")),
            customdata=sample_ids, text=hover, selectedpoints=selected_points(np.ones(len(points), bool)),
            selected=dict(marker=dict(size=11, opacity=1.0)), unselected=dict(marker=dict(opacity=0.25)),
            hovertemplate="%{text}<extra></extra>"))

    if focus is not None:
        i = focus["index"]
        for which, cls, dist, dash in (("r1", focus["r1_class"], focus["r1"], "solid"),
                                       ("r2", focus["r2_class"], focus["r2"], "dot")):
            px, py = proto_points[cls]
            fig.add_trace(go.Scatter(x=[points[i, 0], px], y=[points[i, 1], py], mode="lines", showlegend=True,
                                     name=f"{which} = {dist:.3g} → {class_names[cls]}",
                                     line=dict(color=class_color(cls), width=3, dash=dash), hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=[points[i, 0]], y=[points[i, 1]], mode="markers", name=f"sample {sample_ids[i]}",
                                 marker=dict(size=18, symbol="circle-open", color=CURRENT, line=dict(width=3)),
                                 hovertemplate=f"sample {sample_ids[i]} · DR = {focus['dr']:.3f}<extra></extra>"))

    fig.add_trace(go.Scatter(
        x=proto_points[:, 0], y=proto_points[:, 1], mode="markers+text", name="class prototypes",
        text=class_names, textposition="top center", textfont=dict(size=13),
        marker=dict(size=22, symbol="star", color=[class_color(k) for k in range(len(proto_points))],
                    line=dict(width=1.5, color="#555555")),
        hovertemplate="prototype of <b>%{text}</b><extra></extra>"))
    fig.update_xaxes(showticklabels=False, title=None, zeroline=False, showgrid=False)
    fig.update_yaxes(showticklabels=False, title=None, zeroline=False, showgrid=False, scaleanchor="x", scaleratio=1)
    return _layout(fig, height=height)  # Streamlit: pan + click-to-select; lasso and box in the toolbar


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


def confusion_heatmap(matrix: np.ndarray, *, class_names: list[str], title: str | None = None) -> go.Figure:
    """Counts [true, predicted]; the diagonal is right."""
    m = np.asarray(matrix)
    fig = go.Figure(go.Heatmap(z=m, x=[f"pred {c}" for c in class_names], y=[f"true {c}" for c in class_names],
                               colorscale="Blues", text=m, texttemplate="%{text}", showscale=False,
                               hovertemplate="%{y}, %{x}: %{z}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title=title, height=120 + 45 * len(class_names))


def bucket_bars(counts: pd.DataFrame) -> go.Figure:
    """Samples per error bucket (``taxonomy.bucket_counts``)."""
    fig = go.Figure(go.Bar(x=counts["count"], y=counts["label"], orientation="h",
                           marker_color=[BUCKET_COLORS[b] for b in counts["bucket"]],
                           text=[f"{c} ({100 * s:.1f}%)" for c, s in zip(counts["count"], counts["share"])],
                           textposition="auto", hovertemplate="%{y}: %{x}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title="samples")
    return _layout(fig, height=260)
