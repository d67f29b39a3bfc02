"""Per-session state: the trace source, the exit policy, page settings — and their sync with the URL.

One browser session = one ``st.session_state``. The canonical values live under a few keys:

    "source"        TraceSource        which checkpoint / data / split the pages show
    "device"        "auto" | "cpu" | "cuda"
    "policy"        dict               name, tau per policy, lambda_, patience, layer
    "page"          dict               page settings worth sharing (inspected sample, map layer, ...)

Widgets have their own keys ("w_..."), are seeded from the canonical values before they are drawn, and write
back in ``on_change`` callbacks, so a widget that is hidden for a while (the patience slider of a policy
without patience) does not lose its value. Nothing here is cached across sessions; the cached model and
trace never see a policy.

URL: the first run of a session reads ``st.query_params`` (policy, tau, lambda, patience, layer, ckpt,
data, split, sample, map_layer, color, bucket); a number outside its declared range (``URL_NUMBERS``) is ignored
with a warning. Every run writes the current values back, so the address bar always holds a link that reopens the
same view.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import streamlit as st

from analysis.errors import DE3Error, one_line, shorten
from analysis.policies import POLICIES, POLICY_LABELS, ExitPolicy
from analysis.validate import POLICY, RUN, BadNumber, Range
from app import cache, derive, sources

DEFAULT_POLICY = {"name": "de3", "tau": dict(derive.DEFAULT_TAUS), "lambda_": 1.0, "patience": 2, "layer": 2}
PAGE_PARAMS = ("sample", "map_layer", "color", "method", "bucket")  # page settings shared through the URL
DEVICES = ("auto", "cpu", "cuda")


# ---- canonical state ---------------------------------------------------------------------------------------


def _policy_state() -> dict:
    if "policy" not in st.session_state:
        st.session_state["policy"] = {**DEFAULT_POLICY, "tau": dict(DEFAULT_POLICY["tau"])}
    return st.session_state["policy"]


def page_state() -> dict:
    """Page settings shared through the URL: sample, map_layer, color, method, bucket."""
    if "page" not in st.session_state:
        st.session_state["page"] = {}
    return st.session_state["page"]


def set_page(**values) -> None:
    page = page_state()
    for k, v in values.items():
        if v is None:
            page.pop(k, None)
        else:
            page[k] = v


def source() -> sources.TraceSource:
    if "source" not in st.session_state:
        st.session_state["source"] = sources.TraceSource()
    return st.session_state["source"]


def set_source(new: sources.TraceSource) -> None:
    st.session_state["source"] = new


def device() -> str:
    return st.session_state.get("device", "auto")


def current_policy(num_layers: int | None = None) -> ExitPolicy:
    """The session's policy as an ``ExitPolicy`` (patience and static layer clamped to the trace's layers)."""
    p = _policy_state()
    patience, layer = int(p["patience"]), int(p["layer"])
    if num_layers:
        patience = min(max(patience, 1), max(num_layers - 1, 1))
        layer = min(max(layer, 1), num_layers)
    tau = p["tau"].get(p["name"], derive.DEFAULT_TAUS.get(p["name"], 0.5))
    return ExitPolicy(p["name"], tau=float(tau), lambda_=float(p["lambda_"]), patience=patience, layer=layer)


def set_policy(policy: ExitPolicy) -> None:
    """Make ``policy`` the session's current policy (keeps the other policies' τ)."""
    p = _policy_state()
    p["name"] = policy.name
    if policy.name in derive.THRESHOLD_POLICIES:
        p["tau"][policy.name] = float(policy.tau)
    p["lambda_"], p["patience"], p["layer"] = float(policy.lambda_), int(policy.patience), int(policy.layer)


# ---- URL ---------------------------------------------------------------------------------------------------


# The URL's numbers and their declared ranges (analysis/validate.py); a value outside one is ignored, with a warning.
URL_NUMBERS = {
    "tau": Range(0),  # the τ slider: finite (it cannot show an infinity), >= 0 like every signal it is compared with
    "lambda": POLICY["lambda_"],
    "patience": POLICY["patience"],
    "layer": POLICY["layer"],
    "sample": RUN["sample"],
    "map_layer": POLICY["layer"],
    "max_samples": RUN["max_samples"],
}


def _url_number(qp, key: str, problems: list[str]) -> int | float | None:
    """The URL's number ``key`` read against its declared range; None when absent or bad (then a problem is noted)."""
    if key not in qp:
        return None
    try:
        return URL_NUMBERS[key].parse(qp.get(key))
    except BadNumber as exc:
        problems.append(f"ignored {key} in the link: {key} {exc}")
        return None


def read_query_params() -> list[str]:
    """On the first run of a session: take policy, page settings and source from the URL.

    Returns the problems found (unknown policy, bad numbers), to be shown once; bad values are ignored.
    """
    problems: list[str] = []
    if st.session_state.get("_url_read"):
        return problems
    st.session_state["_url_read"] = True
    qp = st.query_params
    p = _policy_state()
    name = qp.get("policy")
    if name is not None:
        if name in POLICIES:
            p["name"] = name
        else:
            problems.append(f"unknown policy {shorten(name)} in the link (choose one of {', '.join(POLICIES)})")
    tau = _url_number(qp, "tau", problems)
    if tau is not None:
        p["tau"][p["name"]] = tau
    for key, field in (("lambda", "lambda_"), ("patience", "patience"), ("layer", "layer")):
        value = _url_number(qp, key, problems)
        if value is not None:
            p[field] = value
    page = page_state()
    for key in ("sample", "map_layer"):
        value = _url_number(qp, key, problems)
        if value is not None:
            page[key] = value
    for key in ("color", "method", "bucket"):
        if key in qp:
            page[key] = qp.get(key)
    src = source()
    changes = {}
    if qp.get("ckpt"):
        changes["checkpoint"] = qp.get("ckpt")
    if qp.get("data"):
        data = qp.get("data")
        changes["data"] = data
        if data.startswith("glue/") and sources.DEFAULT_GLUE_DIR.is_dir():
            changes["data_dir"] = qp.get("data_dir") or str(sources.DEFAULT_GLUE_DIR)
    if qp.get("split") in sources.SPLITS:
        changes["split"] = qp.get("split")
    max_samples = _url_number(qp, "max_samples", problems)
    if max_samples is not None:
        changes["max_samples"] = max_samples
    if changes:
        set_source(replace(src, **changes))
    return problems


def desired_query_params(num_layers: int | None = None) -> dict[str, str]:
    """What the URL should say now: the policy's parameters (only those it uses), page settings, source."""
    pol = current_policy(num_layers)
    out = {"policy": pol.name}
    for key, value in pol.params().items():
        out[{"lambda_": "lambda", "tau": "tau"}.get(key, key)] = f"{value:g}"
    for key in PAGE_PARAMS:
        if key in page_state():
            out[key] = str(page_state()[key])
    src, default = source(), sources.TraceSource()
    if src.checkpoint != default.checkpoint:
        out["ckpt"] = src.checkpoint
    if src.data != default.data and not src.display_name:  # an uploaded file cannot be shared by link
        out["data"] = src.data
        if src.data_dir and src.data.startswith("glue/"):
            out["data_dir"] = src.data_dir
    if src.split != default.split:
        out["split"] = src.split
    if src.max_samples:
        out["max_samples"] = str(src.max_samples)
    return out


def write_query_params(num_layers: int | None = None) -> None:
    desired = desired_query_params(num_layers)
    if {k: st.query_params.get(k) for k in st.query_params} != desired:
        st.query_params.from_dict(desired)


# ---- the trace of the current source -----------------------------------------------------------------------


@dataclass
class Context:
    """What a page needs: the source, its trace (or the error that prevented it) and the policy."""

    source: sources.TraceSource
    ref: cache.TraceRef | None
    trace: object | None
    error: str | None
    policy: ExitPolicy

    @property
    def ok(self) -> bool:
        return self.trace is not None


def load_context(where=None) -> Context:
    """Find (or compute, with a progress bar) the current source's trace. Errors are caught, not raised."""
    src = source()
    ref = trace = error = None
    try:
        ref = trace_with_progress(src, where=where)
        trace = cache.get_trace(ref)
    except DE3Error as exc:
        error = sources.in_app_words(str(exc))
    except OSError as exc:  # an unreadable folder or file named in the URL: a user mistake, not a bug
        error = f"{src.describe()}: {one_line(exc)}"
    num_layers = trace.num_layers if trace is not None else sources.checkpoint_layers(src.checkpoint)
    ctx = Context(src, ref, trace, error, current_policy(num_layers))
    st.session_state["_ctx"] = ctx
    return ctx


def trace_with_progress(src: sources.TraceSource, where=None) -> cache.TraceRef:
    """``cache.trace_ref`` with a progress bar while a new trace is computed."""
    folder = sources.trace_folder(src)
    if sources.has_trace(folder):
        return cache.trace_ref(src, device=device())
    box = (where or st).empty()
    with box.container():
        st.info(f"Tracing {src.describe()} once — every layer's outputs are recorded, then every page, slider and "
                "curve reads that record without running the model again.")
        bar = st.progress(0.0, text="loading the model and the data…")

        def progress(done: int, total: int) -> None:
            bar.progress(done / total, text=f"traced {done} of {total} samples")

        ref = cache.trace_ref(src, device=device(), progress=progress)
    box.empty()
    return ref


def context() -> Context:
    """The context of this run (set by ``run`` before the page runs; loaded here if a page runs alone)."""
    ctx = st.session_state.get("_ctx")
    return ctx if ctx is not None else load_context()


def require_trace() -> Context | None:
    """The context, or None after explaining on the page why there is no trace."""
    ctx = context()
    if ctx.ok:
        return ctx
    st.error(f"No trace to show: {ctx.error}")
    st.page_link("app/pages/overview.py", label="Choose a checkpoint and data on the Overview page", icon=":material/settings:")
    return None


# ---- the sidebar: policy widgets ---------------------------------------------------------------------------


def _seed(key: str, value) -> None:
    """Set a widget's value from the canonical state before the widget is drawn."""
    st.session_state[key] = value


def _on_name() -> None:
    _policy_state()["name"] = st.session_state["w_policy"]


def _on_tau(name: str) -> None:
    _policy_state()["tau"][name] = float(st.session_state[f"w_tau_{name}"])


def _on(field: str, key: str, cast) -> None:
    _policy_state()[field] = cast(st.session_state[key])


def _reset_policy() -> None:
    st.session_state["policy"] = {**DEFAULT_POLICY, "tau": dict(DEFAULT_POLICY["tau"])}


def policy_sidebar(num_layers: int | None) -> ExitPolicy:
    """Policy and its parameters in the sidebar. Returns the current ``ExitPolicy``."""
    L = num_layers or 12
    pol = current_policy(L)
    sb = st.sidebar
    sb.subheader("Exit policy")
    _seed("w_policy", pol.name)
    sb.selectbox("Policy", POLICIES, format_func=POLICY_LABELS.get, key="w_policy", on_change=_on_name,
                 help="The rule that decides, after each layer, whether a sample may stop there.")
    if pol.name in derive.THRESHOLD_POLICIES:
        key = f"w_tau_{pol.name}"
        options = derive.tau_grid(pol.name, pol.tau)
        _seed(key, derive.nearest(options, pol.tau))
        sb.select_slider("Threshold τ", options=options, key=key, on_change=_on_tau, args=(pol.name,),
                         format_func=lambda v: f"{v:g}",
                         help=("Exit when max-probability > τ (higher τ = more careful)." if pol.name == "maxprob"
                               else "Exit when the signal < τ (lower τ = more careful). Log-spaced steps."))
    if pol.name == "de3":
        options = derive.lambda_grid(pol.lambda_)
        _seed("w_lambda", derive.nearest(options, pol.lambda_))
        sb.select_slider("λ (weight of DR vs entropy)", options=options, key="w_lambda", on_change=_on,
                         args=("lambda_", "w_lambda", float), format_func=lambda v: f"{v:g}",
                         help="λ = 0: entropy alone; large λ: DR alone; λ = 1: harmonic mean of the two.")
    if pol.name in derive.PATIENCE_POLICIES:
        _seed("w_patience", pol.patience)
        sb.slider("Patience t", 1, max(L - 1, 1), key="w_patience", on_change=_on, args=("patience", "w_patience", int),
                  disabled=L <= 2, help="Consecutive layers the condition must hold before exiting.")
    if pol.name == "static":
        _seed("w_layer", pol.layer)
        sb.slider("Static exit layer", 1, L, key="w_layer", on_change=_on, args=("layer", "w_layer", int),
                  help="Every sample leaves at this layer.")
    sb.caption(f"Exit test at layers 1..{L - 1}: **{derive.exit_test_text(pol)}**; layer {L} answers whoever is left.")
    sb.button("Reset policy", on_click=_reset_policy, key="w_reset_policy", type="tertiary")
    return current_policy(L)


def operating_point_sidebar(ctx: Context) -> None:
    """One line under the policy: speed-up and metric right now."""
    if not ctx.ok:
        return
    from analysis.curves import evaluate_policy

    trace = ctx.trace
    r = evaluate_policy(trace, ctx.policy)
    score = f" · {derive.metric_name(trace.metric)} **{derive.fmt_metric(r['metric'], trace.metric)}**" if trace.labelled else ""
    st.sidebar.caption(f"Now: **{r['speedup']:.2f}×** speed-up{score} · FLOPs **{100 * r['flops_ratio']:.0f}%** of full")
    st.sidebar.caption(f"Trace: {ctx.source.describe()} ({trace.num_samples} samples, {trace.num_layers} layers)")
    note = derive.sample_size_note(trace)
    if note:
        st.sidebar.warning(note, icon=":material/straighten:")


def has_labels(ctx: Context, what: str) -> bool:
    """Whether the trace has labels; if not, say on the page that ``what`` needs them (instead of numbers)."""
    if ctx.trace.labelled:
        return True
    st.info(f"{what} needs the true labels, and this trace has none: {ctx.source.describe()} was traced for its "
            "predictions only. To score it, open the **Overview** page and choose the file's **Label column**.",
            icon=":material/label_off:")
    return False


# ---- the frame around every page ---------------------------------------------------------------------------


def run(page) -> None:
    """Everything around a page: URL → state, the trace, the sidebar, the page itself, state → URL."""
    problems = read_query_params()
    cache.warm_up_umap()
    ctx = load_context()
    for problem in problems:
        st.warning(problem)
    num_layers = ctx.trace.num_layers if ctx.ok else sources.checkpoint_layers(ctx.source.checkpoint)
    policy = policy_sidebar(num_layers)
    if policy != ctx.policy:  # a callback or a clamp changed it: keep the context in step
        ctx.policy = policy
    operating_point_sidebar(ctx)
    try:
        page.run()
    finally:
        write_query_params(num_layers)
        st.session_state.pop("_ctx", None)  # the trace is cached; do not keep a copy per idle session


def open_inspector(sample: int) -> None:
    """Switch to the Sample inspector on ``sample`` (the URL keeps the policy and the sample)."""
    set_page(sample=int(sample))
    st.switch_page("app/pages/inspector.py", query_params=desired_query_params())
