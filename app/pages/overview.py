"""Overview: choose what to trace; each exit's metric, where samples leave, and the cost, defined."""

from pathlib import Path

import numpy as np
import streamlit as st

from analysis.curves import evaluate_policy
from analysis.data import DEFAULT_LABEL_COLUMNS, DEFAULT_PAIR_COLUMNS, DEFAULT_TEXT_COLUMNS
from analysis.errors import DE3Error, one_line
from analysis.policies import decide_exits
from app import cache, charts, derive, selection, sources, state, text

OTHER = "Other folder…"
NO_LABELS = "(none: predictions only)"  # offered when no column has a label column's usual name
DATA_KINDS = {"own": "The checkpoint's own data", "glue": "A GLUE task", "file": "Upload a CSV / TSV file"}


def source_picker(current: sources.TraceSource) -> None:
    """Device, checkpoint, data and split; the trace is computed (or found) when "Load" is pressed."""
    left, right = st.columns(2)
    with left:
        devices = state.available_devices()
        if st.session_state.get("w_device") not in devices:
            st.session_state["w_device"] = state.device() if state.device() in devices else "auto"
        st.segmented_control("Device", devices, key="w_device",
                             help="auto = CUDA when available, else CPU" + ("" if "cuda" in devices else
                                                                             " (this machine has no CUDA device)"),
                             on_change=lambda: state.set_device(st.session_state["w_device"]))
        shipped = sources.shipped_checkpoints()
        options = shipped + [OTHER]
        st.session_state.setdefault("ov_ckpt", current.checkpoint if current.checkpoint in shipped else OTHER)
        choice = st.selectbox("Checkpoint", options, key="ov_ckpt",
                              help="A folder written by `python -m analysis train`; the shipped default is preselected.")
        if choice == OTHER:
            st.session_state.setdefault("ov_ckpt_path", "" if current.checkpoint in shipped else current.checkpoint)
            checkpoint = st.text_input("Checkpoint folder", key="ov_ckpt_path", placeholder="runs/bbc or /abs/path",
                                       help="Relative to the repository. The app reads only inside pretrained/, "
                                            f"runs/, its cache folder, the default GLUE folder and ${sources.ROOTS_ENV}.")
        else:
            checkpoint = choice
    with right:
        kind_now = "own" if current.data == "own" else "glue" if current.data.startswith("glue/") else "file"
        st.session_state.setdefault("ov_kind", kind_now)
        kind = st.radio("Data", list(DATA_KINDS), format_func=DATA_KINDS.get, key="ov_kind")
        extra: dict = {}
        if kind == "glue":
            task_now = current.data.split("/", 1)[1] if kind_now == "glue" else "sst2"
            st.session_state.setdefault("ov_task", task_now if task_now in sources.GLUE_TASKS else "sst2")
            task = st.selectbox("GLUE task", sources.GLUE_TASKS, key="ov_task")
            default_dir = str(sources.DEFAULT_GLUE_DIR) if sources.DEFAULT_GLUE_DIR.is_dir() else ""
            st.session_state.setdefault("ov_glue_dir", current.data_dir or default_dir)
            glue_dir = st.text_input("Local GLUE folder (blank = download from the Hugging Face hub)", key="ov_glue_dir")
            extra = {"data": f"glue/{task}", "data_dir": glue_dir.strip() or None}
            st.caption("GLUE's test labels are private: the **test** split here is GLUE's dev set, as in the "
                       "early-exit papers. The data must have the checkpoint's classes.")
        elif kind == "file":
            extra = file_picker()
        else:
            extra = {"data": sources.OWN_DATA}
    if extra is None:
        return
    s1, s2 = st.columns(2)
    # an upload is usually a file to look at whole; a training source has its own test split
    split_key = "ov_split_file" if kind == "file" else "ov_split"
    st.session_state.setdefault(split_key, current.split if kind == kind_now else "all" if kind == "file" else "test")
    split = s1.selectbox("Split", sources.SPLITS, key=split_key, format_func=sources.SPLIT_LABELS.get,
                         help="all rows = every row of the data, in file order; train / validation / test = the "
                              "seeded split the checkpoint's training used (80/10/10 for a file).")
    st.session_state.setdefault("ov_max", current.max_samples or 0)
    max_samples = s2.number_input("Trace at most this many samples (0 = all)", min_value=0, step=100, key="ov_max",
                                  help="Tracing runs every layer once: ≈10 samples/s on CPU for long texts.")
    if st.button("Load trace", type="primary", key="ov_load", disabled=not checkpoint):
        new = sources.TraceSource(checkpoint=checkpoint.strip(), split=split, max_samples=int(max_samples) or None,
                                  **extra)
        try:
            ref = state.trace_with_progress(new)
            cache.get_trace(ref)
        except DE3Error as exc:
            st.error(sources.in_app_words(str(exc)))
            return
        except (OSError, ValueError) as exc:  # e.g. an unreadable folder, or no network for the hub
            st.error(f"Could not trace {new.describe()}: {one_line(exc)}")
            return
        state.set_source(new)
        _forget_trace_settings()
        st.rerun()
    if kind == "file":
        fit_panel(extra)


FIT_EXAMPLES = "minilm-l6 (offline), a folder such as runs/my-classifier, or a hub id such as textattack/bert-base-uncased-SST-2"


def fit_panel(upload: dict) -> None:
    """Fit exits on the uploaded file: DE3 exits attached to a frozen model (``analysis.attach``), then its trace."""
    with st.container(border=True):
        st.markdown("**…or fit new exits on this file.** DE3's exits are attached to a frozen model — the offline "
                    "MiniLM, your own fine-tuned classifier (its head stays the last exit, answering exactly as "
                    "before) or a Hugging Face id — and trained on 80 % of the rows; the other rows pick the best "
                    "epoch and are traced. Well under a minute for 2,000 short texts on a 2-core CPU.")
        if upload.get("label_column") is None:
            st.caption("Fitting needs a label column: pick one above.")
            return
        left, right = st.columns([3, 1], vertical_alignment="bottom")
        st.session_state.setdefault("ov_fit_model", "minilm-l6")
        typed = left.text_input("Model to attach exits to", key="ov_fit_model", help=FIT_EXAMPLES + ". Folders "
                                "must lie inside pretrained/, runs/, the cache folder or $" + sources.ROOTS_ENV + ".")
        if not right.button("Fit exits on my data", key="ov_fit", width="stretch"):
            return
        data = sources.TraceSource(**{k: v for k, v in upload.items() if k in ("data", "text_columns", "label_column",
                                                                              "header", "display_name")})
        bar = st.progress(0.0, text="loading the model…")
        lines: list[str] = []

        def cached(done: int, total: int) -> None:  # the backbone pass: most of the time
            bar.progress(0.8 * done / total, text=f"running the frozen model once: {done} of {total} rows")

        def log(line: str) -> None:
            lines.append(line)
            if line.startswith("epoch "):
                bar.progress(0.9, text=f"training the exits on the cached vectors: {line.split('  ')[0]}")

        try:
            model = sources.attach_model(typed)
            new = sources.fit_exits(model, data, device=state.device(), on_progress=cached, log=log)
            bar.progress(1.0, text="exits fitted; tracing the held-out rows…")
            ref = state.trace_with_progress(new)
            cache.get_trace(ref)
        except DE3Error as exc:
            bar.empty()
            st.error(sources.in_app_words(str(exc)))
            return
        except (OSError, ValueError) as exc:
            bar.empty()
            st.error(f"Could not fit exits for {typed.strip()!r}: {one_line(exc)}")
            return
        state.set_source(new)
        _forget_trace_settings()
        st.session_state.pop("ov_ckpt", None)  # the picker follows the new checkpoint
        st.session_state.pop("ov_ckpt_path", None)
        st.rerun()


def _forget_trace_settings() -> None:
    """Per-trace settings (the map, the selection of samples, the named slices) start afresh when another trace
    opens."""
    for key in ("_ctx", "map_config"):
        st.session_state.pop(key, None)
    selection.forget()


def _open_example() -> None:
    """The example picked in the switch becomes the source (before the page reruns)."""
    choice = st.session_state.get("ov_example")
    if choice:
        state.set_source(sources.TraceSource(checkpoint=choice))
        _forget_trace_settings()
        st.session_state.pop("ov_ckpt", None)  # the picker below follows


def example_switch(current: sources.TraceSource) -> None:
    """The shipped checkpoints, one click each, with their one-line descriptions."""
    shipped = sources.shipped_checkpoints()
    if len(shipped) < 2:
        return
    cards = {c: sources.checkpoint_card(c) for c in shipped}
    showing = current.checkpoint if current.checkpoint in shipped and current.data == sources.OWN_DATA else None
    st.session_state["ov_example"] = showing  # follows the source, whichever control changed it
    st.segmented_control("Shipped examples", shipped, key="ov_example", on_change=_open_example,
                         format_func=lambda c: cards[c].get("title") or Path(c).name)
    st.caption(" · ".join(f"**{cards[c].get('title') or Path(c).name}**: {cards[c]['description']}"
                          for c in shipped if cards[c].get("description")))


def file_picker() -> dict | None:
    """An uploaded CSV/TSV/Parquet/JSONL with column pickers; None until it is usable."""
    upload = st.file_uploader("Data file", type=["csv", "tsv", "txt", "parquet", "jsonl", "json"], key="ov_upload",
                              help="Labels must be among the checkpoint's classes (some of them is fine); without a label "
                                   "column it is traced for its predictions only.")
    if upload is None:
        st.caption("Upload a file to pick its columns.")
        return None
    name = sources.safe_display_name(upload.name)
    try:
        path = sources.save_upload(upload.name, upload.getvalue())
        header = st.checkbox("First row holds column names", value=True, key="ov_header")
        preview = cache.get_preview(str(path), header, name)
    except DE3Error as exc:
        st.error(str(exc))
        return None
    st.dataframe(preview, height=150, width="stretch")
    cols = list(preview.columns)
    guess = lambda names, fallback: next((c for c in names if c in cols), fallback)
    text_col = st.selectbox("Text column", cols, index=cols.index(guess(DEFAULT_TEXT_COLUMNS, cols[0])),
                            key="ov_text_col")
    pair_opts = ["(none)"] + [c for c in cols if c != text_col]
    pair_col = st.selectbox("Second text column (pair tasks)", pair_opts,
                            index=pair_opts.index(guess(DEFAULT_PAIR_COLUMNS, "(none)")) if guess(DEFAULT_PAIR_COLUMNS, "(none)") in pair_opts else 0,
                            key="ov_pair_col")
    candidates = [c for c in cols if c not in (text_col, pair_col)]
    named = next((c for c in DEFAULT_LABEL_COLUMNS if c in candidates), None)
    label_opts = ([] if named else [NO_LABELS]) + candidates
    label_col = st.selectbox("Label column", label_opts, index=label_opts.index(named or NO_LABELS), key="ov_label_col",
                             help="The column holding each row's class. Without one the file is traced for its "
                                  "predictions only: speed-ups and exits, but no accuracy.")
    text_columns = (text_col,) if pair_col == "(none)" else (text_col, pair_col)
    return {"data": str(path), "text_columns": text_columns, "label_column": None if label_col == NO_LABELS else label_col,
            "header": header, "display_name": name}


def cost_definitions() -> None:
    c1, c2 = st.columns(2)
    c1.latex(text.SPEEDUP)
    c2.latex(text.SAVED)
    st.latex(text.FLOPS)  # the widest: a row of its own, never clipped
    st.markdown(text.COST_WORDS)


def render() -> None:
    st.title("DE3-BERT: where does each sample leave BERT, and is it right?")
    st.markdown(
        "A BERT with a classifier after **every** layer can stop early for easy inputs. **DE3-BERT** decides "
        "with **EDR**, which fuses the classifier's own uncertainty (*entropy*, local) with how close the sample "
        "is to the learned **class prototypes** (*distance ratio*, global). The model ran once over the data and "
        "recorded every layer — so every slider here is instant and never re-runs BERT."
    )
    ctx = state.context()
    example_switch(ctx.source)
    with st.expander("Checkpoint, data and device", expanded=not ctx.ok):
        source_picker(ctx.source)
    if not ctx.ok:
        st.error(f"No trace to show: {ctx.error}")
        return
    trace, policy = ctx.trace, ctx.policy
    L, metric = trace.num_layers, trace.metric
    meta = trace.meta
    st.caption(f"**{ctx.source.describe()}** — {trace.num_samples} samples × {L} layers, {len(trace.label_names)} "
               f"classes ({', '.join(trace.label_names)}); traced {meta.get('created', '?')} · "
               f"folder `{Path(ctx.ref.folder).name}`")

    result = evaluate_policy(trace, policy)
    decision = decide_exits(trace.wide, policy)
    st.subheader(f"Current policy: {policy.describe()}")
    m1, m2, m3, m4, m5 = st.columns(5)
    if trace.labelled:
        full = cache.get_per_layer(ctx.ref)["metric"].to_numpy()[-1]
        delta = result["metric"] - full
        same = abs(delta) < 1e-12
        m1.metric(derive.metric_name(metric), derive.fmt_metric(result["metric"], metric),
                  delta="same as the full model" if same else
                  (f"{100 * delta:+.1f} pts vs. full model" if metric != "mcc" else f"{delta:+.3f} vs. full model"),
                  delta_color="off" if same else "normal", delta_arrow="off" if same else "auto",
                  help=f"The full model (every sample through all {L} layers) scores {derive.fmt_metric(full, metric)}.")
    else:
        m1.metric(derive.metric_name(metric), "no labels", help="This trace holds predictions only.")
    m2.metric("speed-up", f"{result['speedup']:.2f}×", help="L / mean exit layer")
    m3.metric("saved fraction", f"{100 * result['saved_fraction']:.1f}%", help="1 − mean exit layer / L")
    m4.metric("FLOPs ratio", f"{100 * result['flops_ratio']:.1f}%", help="early-exit FLOPs / full-model FLOPs")
    m5.metric("mean exit layer", f"{result['mean_exit_layer']:.2f} of {L}")
    with st.expander("How these are defined", expanded=False):
        cost_definitions()

    left, right = st.columns(2)
    with left:
        st.markdown(f"**Each exit's {derive.metric_name(metric)}** if every sample answered there")
        if state.has_labels(ctx, "Each exit's " + derive.metric_name(metric)):
            st.plotly_chart(charts.layer_metric_bars(cache.get_per_layer(ctx.ref),
                                                     metric_title=derive.metric_title(metric)), key="ov_layer_bars")
    with right:
        st.markdown(f"**Where samples leave** under {policy.describe()}")
        correct = decision.pred == trace.labels if trace.labelled else None
        st.plotly_chart(charts.exit_distribution(decision.exit_layer, correct, num_layers=L), key="ov_exit_dist")
    if not (decision.exit_layer < L).any():
        st.warning(f"No sample exits before layer {L}: {derive.no_early_exit_hint(trace, policy)}.")
    st.markdown(f"**How the samples flow through the layers** under {policy.describe()}: into each layer, out "
                + ("right (green) or wrong (orange)" if trace.labelled else "(grey)")
                + ", or on to the next. Move τ in the sidebar and watch the exits move up or down the network.")
    st.plotly_chart(charts.exit_flow(decision.exit_layer, correct, num_layers=L), key="ov_flow")
    st.info("Next: move **τ** in the sidebar and watch the numbers change, or open the **Trade-off explorer** to see "
            "every policy's curve at once.", icon=":material/arrow_forward:")
    counts = np.bincount(decision.exit_layer - 1, minlength=L)
    st.caption("Exit counts per layer: " + " · ".join(f"L{m + 1}: {c}" for m, c in enumerate(counts)))


render()
