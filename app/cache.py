"""Every Streamlit cache of the app, in one place, keyed by small hashable values.

    st.cache_resource   models, the early-exit engine, per-folder locks, the UMAP warm-up  (shared, read-only)
    st.cache_data       traces, sweeps, matched tables and their bootstrap intervals, the oracle frontier,
                        per-layer metrics, projections                                      (copied per call)

A trace is keyed by ``TraceRef(folder, stamp)``: the folder it lives in and the modification time of its
meta.json, so a rewritten trace is a new key. Nothing here stores a policy or a threshold: those are
arguments, and live in each browser session's ``st.session_state`` (``app.state``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from analysis import compare as _compare
from analysis import curves as _curves
from analysis.projection import LayerMaps, ProjectionConfig, project_layer, project_layers
from app import sources


@dataclass(frozen=True)
class TraceRef:
    """A trace on disk: its folder and a stamp that changes when it is rewritten."""

    folder: str
    stamp: int


# ---- models ------------------------------------------------------------------------------------------------


def _weights_key(checkpoint: str) -> tuple:
    folder = sources.resolve_checkpoint(checkpoint)
    return str(folder.resolve()), *sources.weights_stamp(folder)[1:]


@st.cache_resource(show_spinner=False, max_entries=4)
def _model(folder: str, size, mtime, device: str):
    from analysis.backbones import pick_device
    from analysis.checkpoint import load_checkpoint

    with _LOADING:
        return load_checkpoint(folder, device=pick_device(device))


# transformers resolves its names lazily on first use, and two sessions loading two checkpoints at once could see it
# half-initialised ("cannot import name 'CONFIG_MAPPING'", seen in the browser test): one load at a time.
_LOADING = threading.Lock()


def get_model(checkpoint: str, device: str = "auto"):
    """(DE3Bert in eval mode, tokenizer), shared by every session. Never holds a policy."""
    return _model(*_weights_key(checkpoint), device)


@st.cache_resource(show_spinner=False, max_entries=4)
def _engine(folder: str, size, mtime, device: str):
    from analysis.engine import EarlyExitEngine

    model, tokenizer = _model(folder, size, mtime, device)
    with _LOADING:
        return EarlyExitEngine(model, tokenizer)


def get_engine(checkpoint: str, device: str = "auto"):
    """The real layer-by-layer early-exit engine; the policy is an argument of ``run``."""
    return _engine(*_weights_key(checkpoint), device)


@st.cache_resource(show_spinner=False)
def _folder_lock(folder: str) -> threading.Lock:
    return threading.Lock()


# ---- traces ------------------------------------------------------------------------------------------------


def trace_ref(source: sources.TraceSource, *, device: str = "auto", progress=None) -> TraceRef:
    """The trace of ``source``: found on disk, or computed once (``progress(done, total)`` while it runs).

    Two sessions asking for the same new trace compute it once: the second waits on the folder's lock (and
    ``sources.compute_trace`` waits for another process writing the same folder).
    """
    folder = sources.trace_folder(source)
    if not sources.has_trace(folder):
        with _folder_lock(str(folder)):
            if not sources.has_trace(folder):
                model, tokenizer = get_model(source.checkpoint, device)
                sources.compute_trace(source, model, tokenizer, folder, on_progress=progress)
    return TraceRef(str(folder), sources.trace_stamp(folder))


@st.cache_data(show_spinner=False, max_entries=8)
def get_trace(ref: TraceRef):
    """The loaded, validated ``Trace`` (embeddings stay on disk, memory-mapped on use)."""
    from analysis.trace import load_trace

    return load_trace(ref.folder)


@st.cache_data(show_spinner=False, max_entries=16)
def get_sweep(ref: TraceRef, lambda_: float | None = None, patience: int | None = None) -> pd.DataFrame:
    """Every policy's parameter sweep (``curves.sweep``): DE3 at the default λ grid plus ``lambda_``, PCEE at
    patience 1–3 plus ``patience``."""
    trace = get_trace(ref)
    lambdas, patiences = tuple(_curves.DEFAULT_LAMBDAS), tuple(_curves.PCEE_PATIENCES)
    if lambda_ is not None and not np.isclose(lambdas, lambda_).any():
        lambdas = lambdas + (float(lambda_),)
    if patience is not None and patience not in patiences and patience < trace.num_layers:
        patiences = patiences + (int(patience),)
    return _curves.sweep(trace, _curves.default_grid(trace, lambdas=lambdas, pcee_patiences=patiences))


@st.cache_data(show_spinner=False, max_entries=8)
def get_oracle_frontier(ref: TraceRef) -> pd.DataFrame | None:
    """The oracle frontier (``curves.oracle_frontier``); None for a trace without labels."""
    trace = get_trace(ref)
    return _curves.oracle_frontier(trace) if trace.labelled else None


@st.cache_data(show_spinner=False, max_entries=32)
def get_matched(ref: TraceRef, lambda_: float, speedups: tuple[float, ...] = (1.5, 2.0, 3.0)) -> pd.DataFrame:
    """Best metric per policy at matched speed-ups, and AUC (``compare.matched_table``), DE3 at ``lambda_``; the
    oracle row read off the oracle frontier."""
    return _compare.matched_table(get_sweep(ref, lambda_), speedups, lambda_=lambda_,
                                  oracle_front=get_oracle_frontier(ref))


@st.cache_data(show_spinner=False, max_entries=32)
def get_vs_baseline(ref: TraceRef, lambda_: float, speedups: tuple[float, ...] = (1.5, 2.0, 3.0),
                    baseline: str = _compare.DEFAULT_BASELINE, n_boot: int = 1000) -> pd.DataFrame:
    """Every policy against ``baseline`` at matched speed-ups, with paired-bootstrap intervals and the gap in
    right answers (``compare.matched_vs_baseline``), DE3 at ``lambda_``. Needs a labelled trace."""
    return _compare.matched_vs_baseline(get_trace(ref), get_sweep(ref, lambda_), speedups, lambda_=lambda_,
                                        baseline=baseline, n_boot=n_boot)


@st.cache_data(show_spinner=False, max_entries=32)
def get_bootstrap(ref: TraceRef, policy_a, policy_b) -> dict:
    """``compare.paired_bootstrap`` of two policies on a trace (1,000 paired resamples, seed 0)."""
    return _compare.paired_bootstrap(get_trace(ref), policy_a, policy_b)


@st.cache_data(show_spinner=False, max_entries=8)
def get_preview(path: str, header: bool, display_name: str | None = None) -> pd.DataFrame:
    """The first rows of an uploaded file (``sources.preview_columns``), read once per file and header setting: an
    upload's path is its content hash, so the path is a complete key. Errors are raised, not cached."""
    from pathlib import Path

    return sources.preview_columns(Path(path), header=header, display_name=display_name)


@st.cache_data(show_spinner=False, max_entries=8)
def get_per_layer(ref: TraceRef) -> pd.DataFrame:
    """Each exit's metric if every sample answered there (``curves.per_layer_metric``)."""
    return _curves.per_layer_metric(get_trace(ref))


@st.cache_data(show_spinner=False, max_entries=16)
def get_layer_maps(ref: TraceRef, config: ProjectionConfig) -> LayerMaps:
    """Every layer's map (``projection.project_layers``: aligned from layer to layer unless ``config.align`` is
    False), computed once per (trace, config), all layers at once."""
    trace = get_trace(ref)
    return project_layers(trace.embeddings(), trace.prototypes(), config)


def get_projection(ref: TraceRef, layer: int, config: ProjectionConfig) -> tuple[np.ndarray, np.ndarray]:
    """(points (N, 2), prototype points (K, 2)) of one layer: that layer of ``get_layer_maps``."""
    get_trace(ref).check_layer(layer)  # a layer outside 1..L: TraceError, before any map is computed
    return get_layer_maps(ref, config).layer(layer)


@st.cache_resource(show_spinner=False)
def cuda_available() -> bool:
    """Whether torch sees a CUDA device (asked once per server)."""
    import torch

    return bool(torch.cuda.is_available())


# ---- warm-up -----------------------------------------------------------------------------------------------


UMAP_COMPILE_SECONDS = (20, 60)  # measured: a cold server on a 2-core machine, quiet to busy (see warm_up_umap)


@st.cache_resource(show_spinner=False)
def warm_up_umap() -> threading.Thread | None:
    """Compile UMAP's numba code in the background at start-up (once per server process), so the first prototype
    map does not wait for it, then make the shipped default's layer maps (the map page's default settings) into the
    cache. Off when ``DE3_APP_WARMUP=0`` (the tests).

    How long it takes, measured in new processes (numba's disk cache as installed) on a shared 2-core machine: 21 s,
    32 s and 55 s as other work on the cores grew; a cold server showed its first UMAP map 57 s after the first
    request, six layers included -- hence ``UMAP_COMPILE_SECONDS``. The log says it each time ("UMAP compiled in
    N s")."""
    if os.environ.get("DE3_APP_WARMUP", "1") == "0":
        return None

    compiled = threading.Event()
    log = logging.getLogger(__name__)

    def work() -> None:
        time.sleep(3)  # let the first page paint first
        start = time.monotonic()
        try:
            rng = np.random.default_rng(0)
            project_layer(rng.normal(size=(60, 8)).astype(np.float32), rng.normal(size=(3, 8)),
                          ProjectionConfig(method="umap", n_neighbors=5))
            log.info("UMAP compiled in %.0f s", time.monotonic() - start)
        except Exception as exc:  # noqa: BLE001 - a failed warm-up only means the first real map compiles instead
            log.info("UMAP warm-up failed: %s", exc)
            return
        finally:
            compiled.set()
        start = time.monotonic()
        try:  # the shipped default's maps too, so a first visit to the Prototype map finds them made
            from app import derive

            source = sources.TraceSource()
            if sources.shipped_trace(source) is not None:
                ref = trace_ref(source)
                get_layer_maps(ref, derive.projection_config(get_trace(ref), "umap"))
                log.info("default maps made in %.0f s", time.monotonic() - start)
        except Exception as exc:  # noqa: BLE001 - the map page then makes them on its first visit
            log.info("default maps not made ahead: %s", exc)

    thread = threading.Thread(target=work, name="umap-warmup", daemon=True)
    thread.started = time.monotonic()  # when the server asked for it (the compile starts 3 s later)
    thread.compiled = compiled
    thread.start()
    return thread


def umap_ready() -> bool:
    thread = warm_up_umap()
    return thread is None or thread.compiled.is_set()


def umap_compiling_for() -> float:
    """Seconds since the UMAP warm-up began (0 when there is none)."""
    thread = warm_up_umap()
    return 0.0 if thread is None else time.monotonic() - thread.started


# ---- the playground: a real early-exit run on typed text ------------------------------------------------------


@st.cache_data(show_spinner=False, max_entries=128)
def run_text(checkpoint: str, device: str, text: str, text_pair: str | None, policy) -> dict:
    """A real layer-by-layer early exit of one input under ``policy`` (an argument, never stored on the
    model), next to a run through every layer for what the skipped layers would have said.

    Returns exit_layer, pred, label_names, the per-layer signals of both runs ((L,) arrays, NaN after the
    exit for the early-exit run) and the wall time of each run in milliseconds.
    """
    import time

    from analysis.policies import ExitPolicy

    engine = get_engine(checkpoint, device)
    pairs = [text_pair] if text_pair is not None else None
    every_layer = ExitPolicy("static", layer=engine.num_layers)
    full = engine.run([text], pairs, policy=every_layer, record=True)  # also warms up, so the timings below are fair
    early, early_ms = None, None
    if policy.spec.in_engine:
        start = time.perf_counter()
        early = engine.run([text], pairs, policy=policy, record=True)
        early_ms = 1000 * (time.perf_counter() - start)
    start = time.perf_counter()
    engine.run([text], pairs, policy=every_layer, record=True)
    full_ms = 1000 * (time.perf_counter() - start)
    return {
        "num_layers": engine.num_layers,
        "label_names": list(engine.model.config.label_names),
        "full": {k: v[0] for k, v in full.signals.items()},
        "early": None if early is None else {k: v[0] for k, v in early.signals.items()},
        "exit_layer": None if early is None else int(early.exit_layer[0]),
        "pred": None if early is None else int(early.pred[0]),
        "full_ms": full_ms,
        "early_ms": early_ms,
    }
