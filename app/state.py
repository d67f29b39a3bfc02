"""Per-session state: the trace source, the exit policy, page settings — and their sync with the URL.

One browser session = one ``st.session_state``. The canonical values live under a few keys:

    "source"   TraceSource              which checkpoint / data / split the pages show   ``source()``
    "device"   "auto" | "cpu" | "cuda"                                                   ``device()``
    "policy"   PolicyState              name, τ per policy, λ, patience, layer           ``policy_state()``
    "page"     PageState                page settings worth sharing (sample, map layer)  ``page_settings()``

Pages read them through those accessors (and ``set_page``), never by key. Widgets have their own keys ("w_..."),
are seeded from the canonical values before they are drawn, and write back in ``on_change`` callbacks, so a widget
that is hidden for a while (the patience slider of a policy without patience) does not lose its value. Which
widgets a policy shows is read from its ``PolicySpec``. Nothing here is cached across sessions; the cached model
and trace never see a policy.

URL: the first run of a session reads ``st.query_params`` (policy, tau, lambda, patience, layer, ckpt,
data, split, sample, map_layer, color, bucket, slices); a number outside its declared range (``URL_NUMBERS``) is
ignored with a warning, and so is a bad named slice (``app/selection.py``: ``slices=name:1,4,7-12;other:3``, read
once the trace is loaded, since its ids must be samples of it). Every run writes the current values back, so the
address bar always holds a link that reopens the same view.

The current selection of samples and the named slices are ``app/selection.py``'s; the frame shows them in the
sidebar on every page (``selection_sidebar``) and forgets them when another trace opens (``selection.follow``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import streamlit as st

from analysis.errors import DE3Error, one_line, shorten
from analysis.policies import DE3, REGISTRY, ExitPolicy
from analysis.validate import POLICY, RUN, BadNumber, Range
from app import cache, derive, selection, sources

DEVICES = ("auto", "cpu", "cuda")


# ---- canonical state ---------------------------------------------------------------------------------------


def _opening_taus() -> dict[str, float]:
    return {name: spec.tau for name, spec in REGISTRY.items() if spec.threshold}


@dataclass
class PolicyState:
    """The session's exit policy: which one, and the parameters of every policy, so that switching policy and back
    keeps each one's τ. ``policy`` makes the ``ExitPolicy``; the sidebar's callbacks write single fields."""

    name: str = DE3
    tau: dict[str, float] = field(default_factory=_opening_taus)  # per policy; opens at ``PolicySpec.tau``
    lambda_: float = 1.0
    patience: int = 2
    layer: int = 2

    def policy(self, num_layers: int | None = None) -> ExitPolicy:
        """As an ``ExitPolicy`` (patience and static layer clamped to the trace's layers)."""
        patience, layer = int(self.patience), int(self.layer)
        if num_layers:
            patience = min(max(patience, 1), max(num_layers - 1, 1))
            layer = min(max(layer, 1), num_layers)
        opening = REGISTRY[self.name].tau
        tau = self.tau.get(self.name, ExitPolicy.tau if opening is None else opening)
        return ExitPolicy(self.name, tau=float(tau), lambda_=float(self.lambda_), patience=patience, layer=layer)

    def adopt(self, policy: ExitPolicy) -> None:
        """Make ``policy`` the current one (keeps the other policies' τ)."""
        self.name = policy.name
        if policy.spec.threshold:
            self.tau[policy.name] = float(policy.tau)
        self.lambda_, self.patience, self.layer = float(policy.lambda_), int(policy.patience), int(policy.layer)


@dataclass
class PageState:
    """Page settings shared through the URL, each None until a page or a link sets it."""

    sample: int | None = None  # Sample inspector: the sample shown (0-based)
    map_layer: int | None = None  # Prototype map (and its export): the layer, 1-based
    color: str | None = None  # Prototype map: what colours the points
    method: str | None = None  # Prototype map: "umap" or "pca"
    bucket: str | None = None  # Misclassified early exits: the bucket listed


PAGE_PARAMS = tuple(f.name for f in fields(PageState))  # their URL keys are their names


def policy_state() -> PolicyState:
    if "policy" not in st.session_state:
        st.session_state["policy"] = PolicyState()
    return st.session_state["policy"]


def page_settings() -> PageState:
    """This session's page settings."""
    if "page" not in st.session_state:
        st.session_state["page"] = PageState()
    return st.session_state["page"]


def set_page(**values) -> None:
    """Set page settings by name (``PageState`` fields); None clears one."""
    current = page_settings()
    for key, value in values.items():
        if key not in PAGE_PARAMS:
            raise TypeError(f"no page setting {key!r}; PageState has {', '.join(PAGE_PARAMS)}")
        setattr(current, key, value)


def source() -> sources.TraceSource:
    if "source" not in st.session_state:
        st.session_state["source"] = sources.TraceSource()
    return st.session_state["source"]


def set_source(new: sources.TraceSource) -> None:
    st.session_state["source"] = new


def device() -> str:
    return st.session_state.get("device", "auto")


def available_devices() -> tuple[str, ...]:
    """``DEVICES`` this machine can use: "cuda" only where torch sees a CUDA device."""
    return DEVICES if cache.cuda_available() else tuple(d for d in DEVICES if d != "cuda")


def set_device(value: str | None) -> None:
    """The device new models load on: one of ``DEVICES`` (None: "auto")."""
    st.session_state["device"] = value or "auto"


def current_policy(num_layers: int | None = None) -> ExitPolicy:
    """The session's policy as an ``ExitPolicy`` (patience and static layer clamped to the trace's layers)."""
    return policy_state().policy(num_layers)


def set_policy(policy: ExitPolicy) -> None:
    """Make ``policy`` the session's current policy (keeps the other policies' τ)."""
    policy_state().adopt(policy)


# ---- URL ---------------------------------------------------------------------------------------------------


URL_POLICY_FIELDS = {"tau": "tau", "lambda": "lambda_", "patience": "patience", "layer": "layer"}  # URL key -> field

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
    p = policy_state()
    name = qp.get("policy")
    if name is not None:
        if name in REGISTRY:
            p.name = name
        else:
            problems.append(f"unknown policy {shorten(name)} in the link (choose one of {', '.join(REGISTRY)})")
    tau = _url_number(qp, "tau", problems)
    if tau is not None:
        p.tau[p.name] = tau
    for key, attr in URL_POLICY_FIELDS.items():
        if key != "tau":
            value = _url_number(qp, key, problems)
            if value is not None:
                setattr(p, attr, value)
    for key in ("sample", "map_layer"):
        value = _url_number(qp, key, problems)
        if value is not None:
            set_page(**{key: value})
    for key in ("color", "method", "bucket"):
        if key in qp:
            set_page(**{key: qp.get(key)})
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
    selection.read_link(qp.get("slices"))  # checked against the trace once it is loaded (``run``)
    return problems


def desired_query_params(num_layers: int | None = None) -> dict[str, str]:
    """What the URL should say now: the policy's parameters (only those it uses), page settings, source."""
    pol = current_policy(num_layers)
    out = {"policy": pol.name}
    url_key = {name: key for key, name in URL_POLICY_FIELDS.items()}
    for name, value in pol.params().items():
        out[url_key[name]] = f"{value:g}"
    for key in PAGE_PARAMS:
        value = getattr(page_settings(), key)
        if value is not None:
            out[key] = str(value)
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
    slices = selection.url_value()
    if slices:
        out["slices"] = slices
    return out


SOURCE_PARAMS = ("ckpt", "data", "data_dir", "split", "max_samples")  # the URL keys read into the TraceSource
URL_KEYS = ("policy", *URL_POLICY_FIELDS, *PAGE_PARAMS, *SOURCE_PARAMS, "slices")


def apply_settings(settings) -> list[str]:
    """Open the view a settings JSON describes (what the Export page's "Settings (JSON)" saves: the URL's keys and
    values): this session starts over from the defaults and reads them as a link's, on the next run.

    Returns the problems (not an object, unknown keys, values that are not text or numbers); nothing is applied
    when the settings are not an object.
    """
    if not isinstance(settings, dict):
        return [f"the settings file must hold a JSON object of URL keys, found {type(settings).__name__}"]
    problems = [f"ignored {shorten(k)} in the settings: not a setting of this app ({', '.join(URL_KEYS)})"
                for k in settings if k not in URL_KEYS]
    kept = {}
    for key, value in settings.items():
        if key not in URL_KEYS:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            problems.append(f"ignored {key} in the settings: {shorten(value)} is not text or a number")
            continue
        kept[key] = value if isinstance(value, str) else f"{value:g}"
    for key in ("policy", "page", "source", "_url_read", "_ctx"):
        st.session_state.pop(key, None)
    selection.forget()  # the settings' own slices, if any, are read with the rest
    st.query_params.from_dict(kept)
    return problems


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
    policy_state().name = st.session_state["w_policy"]


def _on_tau(name: str) -> None:
    policy_state().tau[name] = float(st.session_state[f"w_tau_{name}"])


def _on(name: str, key: str, cast) -> None:
    setattr(policy_state(), name, cast(st.session_state[key]))


def _reset_policy() -> None:
    st.session_state["policy"] = PolicyState()


def policy_sidebar(num_layers: int | None) -> ExitPolicy:
    """Policy and its parameters in the sidebar. Returns the current ``ExitPolicy``."""
    L = num_layers or 12
    pol = current_policy(L)
    spec = pol.spec
    sb = st.sidebar
    sb.subheader("Exit policy")
    _seed("w_policy", pol.name)
    sb.selectbox("Policy", list(REGISTRY), format_func=lambda name: REGISTRY[name].label, key="w_policy",
                 on_change=_on_name, help="The rule that decides, after each layer, whether a sample may stop there.")
    if spec.threshold:
        key = f"w_tau_{pol.name}"
        options = derive.tau_grid(pol.name, pol.tau)
        _seed(key, derive.nearest(options, pol.tau))
        sb.select_slider("Threshold τ", options=options, key=key, on_change=_on_tau, args=(pol.name,),
                         format_func=lambda v: f"{v:g}",
                         help=(f"Exit when {derive.signal_label(spec.value_name)} > τ (higher τ = more careful)."
                               if spec.above else
                               "Exit when the signal < τ (lower τ = more careful). Log-spaced steps."))
    if "lambda_" in spec.params:
        options = derive.lambda_grid(pol.lambda_)
        _seed("w_lambda", derive.nearest(options, pol.lambda_))
        sb.select_slider("λ (weight of DR vs entropy)", options=options, key="w_lambda", on_change=_on,
                         args=("lambda_", "w_lambda", float), format_func=lambda v: f"{v:g}",
                         help="λ = 0: entropy alone; large λ: DR alone; λ = 1: harmonic mean of the two.")
    if "patience" in spec.params:
        _seed("w_patience", pol.patience)
        sb.slider("Patience t", 1, max(L - 1, 1), key="w_patience", on_change=_on, args=("patience", "w_patience", int),
                  disabled=L <= 2, help="Consecutive layers the condition must hold before exiting.")
    if "layer" in spec.params:
        _seed("w_layer", pol.layer)
        sb.slider("Static exit layer", 1, L, key="w_layer", on_change=_on, args=("layer", "w_layer", int),
                  help="Every sample leaves at this layer.")
    sb.caption(f"Exit test at layers 1..{L - 1}: **{pol.exit_test()}**; layer {L} answers whoever is left.")
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


# ---- the sidebar: the current selection and the named slices -------------------------------------------------


def _save_slice() -> None:
    current = selection.current()
    problem = selection.save_slice(st.session_state.get("w_slice_name", ""), current.ids if current else ())
    st.session_state["_slice_problem"] = problem
    if problem is None:
        st.session_state["w_slice_name"] = ""


def selection_sidebar(ctx: Context, where=None) -> None:
    """One line on every page: the current selection (how many samples, where they were picked), to clear, open in
    the Samples table or save as a named slice; under it the slices, one click each to select again. Drawn into
    ``where`` (a sidebar container kept for it) after the page ran, so a selection the page just made is shown."""
    if not ctx.ok:
        return
    sb = where if where is not None else st.sidebar
    current = selection.current()
    if current is None:
        sb.caption("**Selection**: none — click a bucket bar, a confusion-matrix cell or a histogram bin, draw on the "
                   "map, or filter the Samples table.")
    else:
        sb.markdown(f"**Selection**: {current.describe()}")
        c1, c2 = sb.columns(2)
        c1.button("clear", key="w_sel_clear", on_click=selection.clear, type="tertiary", icon=":material/close:")
        c2.page_link("app/pages/samples.py", label="in the table", icon=":material/table_rows:")
        with sb.popover("Save as a named slice", icon=":material/bookmark_add:", width="stretch"):
            st.text_input("Slice name", key="w_slice_name", max_chars=40, placeholder="e.g. confident mistakes")
            st.button("Save", key="w_slice_save", on_click=_save_slice, type="primary")
    problem = st.session_state.pop("_slice_problem", None)
    if problem:
        sb.warning(problem)
    saved = selection.slices()
    if saved:
        sb.caption("**Slices** (in the link; click one to select it again)")
        for name, ids in saved.items():
            active = current is not None and current.ids == ids
            sb.button(f"{name} · {len(ids)}", key=f"w_slice_use_{name}", on_click=selection.use_slice, args=(name,),
                      type="secondary" if active else "tertiary", icon=":material/bookmark:")


# ---- the frame around every page ---------------------------------------------------------------------------


def run(page) -> None:
    """Everything around a page: URL → state, the trace, the sidebar, the page itself, state → URL."""
    problems = read_query_params()
    cache.warm_up_umap()
    ctx = load_context()
    if ctx.ok:
        selection.follow(ctx.ref.folder)  # another trace: the selection and slices of the last one are forgotten
        problems.append(selection.apply_link(ctx.trace.num_samples))
    for problem in filter(None, problems):
        st.warning(problem)
    num_layers = ctx.trace.num_layers if ctx.ok else sources.checkpoint_layers(ctx.source.checkpoint)
    policy = policy_sidebar(num_layers)
    if policy != ctx.policy:  # a callback or a clamp changed it: keep the context in step
        ctx.policy = policy
    operating_point_sidebar(ctx)
    selection_slot = st.sidebar.container()
    try:
        page.run()
        selection_sidebar(ctx, selection_slot)
    finally:
        write_query_params(num_layers)
        st.session_state.pop("_ctx", None)  # the trace is cached; do not keep a copy per idle session


def open_inspector(sample: int) -> None:
    """Switch to the Sample inspector on ``sample`` (the URL keeps the policy and the sample)."""
    set_page(sample=int(sample))
    st.switch_page("app/pages/inspector.py", query_params=desired_query_params())
