"""Export & share: the trace and tables as CSV/Parquet, figures as HTML (PNG with kaleido), the view as a link."""

import importlib.util
import io
import json
from urllib.parse import urlencode

import streamlit as st

from analysis.curves import evaluate_policy
from analysis.errors import DE3Error
from analysis.policies import decide_exits
from app import cache, charts, derive, sources, state

HAS_KALEIDO = importlib.util.find_spec("kaleido") is not None


def _csv(frame) -> bytes:
    return frame.to_csv(index=False).encode("utf-8")


def _parquet(frame) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def figures(ctx) -> dict:
    """Builders of every exportable figure at the current settings (called only for the one chosen)."""
    trace, policy, ref = ctx.trace, ctx.policy, ctx.ref
    metric_title = derive.metric_title(trace.metric)

    def tradeoff():
        return charts.tradeoff_chart(cache.get_sweep(ref, policy.lambda_, policy.patience), current=evaluate_policy(trace, policy),
                                     current_label=policy.describe(), lambda_=policy.lambda_, patience=policy.patience,
                                     metric_title=metric_title)

    def layer_bars():
        return charts.layer_metric_bars(cache.get_per_layer(ref), metric_title=metric_title)

    def exits():
        d = decide_exits(trace.wide, policy)
        return charts.exit_distribution(d.exit_layer, d.pred == trace.labels if trace.labelled else None,
                                        num_layers=trace.num_layers)

    def histograms():
        sig = derive.policy_signal(trace, policy)
        name, values = sig if sig else ("edr", derive.signals(trace, policy.lambda_)["edr"])
        tau = policy.tau if sig else None
        if name == "max_prob":
            values, tau = 1.0 - values, (None if tau is None else 1.0 - tau)
        correct = trace.wide["correct"] if trace.labelled else None
        return charts.signal_histograms(values, correct, tau=tau, signal_label=derive.signal_label(name))

    def proto_map():
        layer, problem = derive.map_layer(state.page_settings().map_layer, trace.num_layers)
        if problem:  # a link's layer outside 1..L: say which layer is shown instead
            st.warning(problem)
            state.set_page(map_layer=layer)
        config = st.session_state.get("map_config") or derive.projection_config(trace, state.page_settings().method or "umap")
        points, protos = cache.get_projection(ref, layer, config)
        color, what = (trace.labels, "true class") if trace.labelled else \
            (trace.wide["pred"][:, layer - 1], f"prediction at layer {layer}")
        return charts.prototype_map(points, protos, sample_ids=trace.samples["sample_id"].to_numpy(),
                                    color=color, color_label=what, categories=trace.label_names,
                                    category_colors=[charts.class_color(k) for k in range(trace.num_labels)],
                                    class_names=trace.label_names,
                                    hover=[f"sample {i}" for i in trace.samples["sample_id"]])

    scored = {"Trade-off (all policies)": tradeoff, "Each exit's metric": layer_bars} if trace.labelled else {}
    return {**scored, "Exit-layer distribution": exits, "Signal histograms per layer": histograms,
            "Prototype map (current layer)": proto_map}


def share_link(params: dict) -> str:
    base = (st.context.url or "http://localhost:8501/").split("?")[0]
    return f"{base}?{urlencode(params)}" if params else base


def load_settings() -> None:
    """A settings JSON saved here opens its view again (policy, τ, λ, page settings, checkpoint and data)."""
    upload = st.file_uploader("Open saved settings (JSON)", type=["json"], key="ex_load_settings",
                              help="A file saved with the Settings (JSON) button: its view opens in this tab.")
    if upload is None:
        return
    content = upload.getvalue()
    digest = hash(content)
    if st.session_state.get("_settings_applied") == digest:  # the uploader keeps the file across reruns
        return
    try:
        settings = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        st.error(f"{sources.safe_display_name(upload.name)}: not a settings file (not valid JSON: {exc}); save one "
                 "with the Settings (JSON) button")
        return
    problems = state.apply_settings(settings)
    for problem in problems:
        st.warning(problem)
    if isinstance(settings, dict):
        st.session_state["_settings_applied"] = digest
        st.rerun()


def render() -> None:
    ctx = state.require_trace()
    if ctx is None:
        return
    trace, policy = ctx.trace, ctx.policy
    st.title("Export & share")

    st.subheader("Share this view")
    params = state.desired_query_params(trace.num_layers)
    st.markdown("The address bar always holds the current settings; this link reopens them (policy, τ, λ, patience, "
                "layer and the pages' settings such as the inspected sample):")
    st.code(share_link(params), language=None)
    st.download_button("Settings (JSON)", json.dumps(params, indent=2), file_name="de3-view.json",
                       mime="application/json", key="ex_settings", on_click="ignore")
    load_settings()

    st.subheader("Data")
    tax = derive.exits_table(trace, decide_exits(trace.wide, policy), policy)
    c1, c2, c3, c4 = st.columns(4)
    c1.download_button("Trace (CSV, one row per sample × layer)", lambda: _csv(trace.table), file_name="trace.csv",
                       mime="text/csv", key="ex_trace_csv", on_click="ignore")
    c1.download_button("Trace (Parquet)", lambda: _parquet(trace.table), file_name="trace.parquet",
                       mime="application/octet-stream", key="ex_trace_parquet", on_click="ignore")
    c2.download_button("Samples (CSV: texts, labels)", lambda: _csv(trace.samples), file_name="samples.csv",
                       mime="text/csv", key="ex_samples_csv", on_click="ignore")
    c2.download_button("Samples (Parquet)", lambda: _parquet(trace.samples), file_name="samples.parquet",
                       mime="application/octet-stream", key="ex_samples_parquet", on_click="ignore")
    c3.download_button("Exits under the current policy (CSV)", lambda: _csv(tax), file_name="exits.csv",
                       mime="text/csv", key="ex_exits", help=policy.describe(), on_click="ignore")
    c3.download_button("All policies' curves (CSV)", lambda: _csv(cache.get_sweep(ctx.ref, policy.lambda_, policy.patience)),
                       file_name="curves.csv", mime="text/csv", key="ex_curves", on_click="ignore")
    if trace.labelled:
        c4.download_button("Matched speed-up table (CSV)", lambda: _csv(cache.get_matched(ctx.ref, policy.lambda_)),
                           file_name="matched.csv", mime="text/csv", key="ex_matched", on_click="ignore")
    c4.download_button("Trace meta (JSON)", json.dumps(trace.meta, indent=2, default=str), file_name="meta.json",
                       mime="application/json", key="ex_meta", on_click="ignore")
    st.caption(f"{trace.num_samples} samples × {trace.num_layers} layers; columns: {', '.join(trace.table.columns[:10])}, "
               "prob_k and dist_k per class. Everything here can be recomputed with `analysis` from the trace folder "
               f"`{ctx.ref.folder}`.")

    st.subheader("Figures")
    builders = figures(ctx)
    name = st.selectbox("Figure", list(builders), key="ex_figure")
    standalone = st.toggle("self-contained HTML (works offline, ≈4 MB)", value=True, key="ex_standalone")
    try:
        with st.spinner("Building the figure…"):
            fig = builders[name]()
    except DE3Error as exc:
        st.error(str(exc))
        return
    st.plotly_chart(fig, key="ex_preview")
    slug = name.split(" (")[0].lower().replace(" ", "-").replace("'", "")
    f1, f2 = st.columns(2)
    f1.download_button("Download HTML", lambda: fig.to_html(include_plotlyjs=True if standalone else "cdn"),
                       file_name=f"{slug}.html", mime="text/html", key="ex_html", on_click="ignore")
    if HAS_KALEIDO:
        f2.download_button("Download PNG", lambda: fig.to_image(format="png", scale=2), file_name=f"{slug}.png",
                           mime="image/png", key="ex_png", on_click="ignore")
    else:
        f2.info("PNG export needs the `kaleido` package (`pip install kaleido`), which is not installed here. "
                "The HTML file has a camera button that saves a PNG from the browser.")


render()
