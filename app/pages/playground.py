"""Playground: type a text and watch it go layer by layer to its exit — plus the ideas, in formulas."""

import time

import numpy as np
import pandas as pd
import streamlit as st

from analysis.errors import DE3Error
from analysis.policies import REGISTRY
from analysis.signals import edr
from app import cache, charts, derive, state, text

EXAMPLES = {  # when there is no trace to take examples from
    "business": "Shares in the carmaker rose 5% after quarterly profits beat analysts' forecasts and it raised its dividend.",
    "sport": "The striker scored twice in the second half as the champions came from behind to win the cup final.",
    "ambiguous": "The minister defended the deal, saying the merger of the two broadcasters would protect jobs and films.",
}


def _example(sample: str) -> None:
    st.session_state["pg_text"] = sample


def rows_for(result: dict, lambda_: float, upto: int) -> pd.DataFrame:
    """The per-layer rows shown while the input travels: signals from the real run, later layers from the full one."""
    names, L = result["label_names"], result["num_layers"]
    full, early = result["full"], result["early"]
    exit_layer = result["exit_layer"] or L
    out = []
    for m in range(upto):
        src = early if (early is not None and m < exit_layer) else full
        ent, dr_ = float(src["entropy"][m]), float(src["dr"][m])
        if m + 1 < exit_layer:
            decision = "continue ↓"
        elif m + 1 == exit_layer:
            decision = "EXIT ✔" if exit_layer < L else "last layer answers"
        else:
            decision = "(skipped: not computed in the real run)"
        out.append({"layer": m + 1, "prediction": names[int(src["pred"][m])],
                    "max-prob": float(src["max_prob"][m]), "entropy": ent, "DR": dr_,
                    f"EDR (λ={lambda_:g})": float(edr(dr_, ent, lambda_)), "decision": decision})
    return pd.DataFrame(out)


def styled(rows: pd.DataFrame):
    """Grey the layers a real early-exit run never computed; bold the exit."""
    def style(row):
        if row["decision"].startswith("(skipped"):
            return ["color: #9a9a9a"] * len(row)
        if row["decision"].startswith(("EXIT", "last")):
            return ["font-weight: bold"] * len(row)
        return [""] * len(row)

    return rows.style.apply(style, axis=1)


def teaching() -> None:
    st.subheader("The ideas, briefly")
    st.markdown(text.ENTROPY_WORDS)
    st.latex(text.ENTROPY)
    st.markdown(text.DR_WORDS)
    st.latex(text.R1R2)
    st.latex(text.DR)
    st.markdown(text.EDR_WORDS)
    st.latex(text.EDR)
    st.latex(text.EXIT_RULE)
    st.markdown(text.SPEEDUP_WORDS)
    st.latex(text.SPEEDUP)
    with st.expander("Worked example: why the harmonic mean?"):
        st.markdown("With λ = 1, EDR = 2·DR·Ent / (DR + Ent). If entropy = 0.01 (very sure) and DR = 0.4 (the geometry "
                    "barely agrees), EDR ≈ 0.0195; the arithmetic mean would be 0.205. If both are 0.1, EDR = 0.1. So a "
                    "sample can leave when the classifier is very sure *and* the geometry does not contradict it; "
                    "raise λ to make the geometry count more.")
        lam = st.slider("λ", 0.0, 8.0, 1.0, 0.25, key="pg_demo_lambda")
        ent = st.slider("entropy", 0.0, 1.0, 0.01, 0.005, key="pg_demo_ent")
        dr_ = st.slider("DR", 0.0, 1.0, 0.4, 0.01, key="pg_demo_dr")
        st.metric("EDR", f"{float(edr(dr_, ent, lam)):.4f}")
    with st.expander("Every policy in one line"):
        for spec in REGISTRY.values():
            st.markdown(f"- {spec.words}")


def render() -> None:
    ctx = state.context()
    policy = ctx.policy
    src = ctx.source
    st.title("Playground")
    st.markdown(f"Type a text and watch it travel through **{src.checkpoint}** layer by layer until "
                f"**{policy.describe()}** lets it out. This is a *real* early-exit run: the layers after the exit are "
                "not computed (they are shown greyed, from a separate full run, for comparison).")
    label_names = ctx.trace.label_names if ctx.ok else None
    if label_names:
        st.caption("This checkpoint's classes: " + ", ".join(label_names))
    is_pair = bool(ctx.ok and ctx.trace.meta.get("is_pair"))
    examples = derive.playground_examples(ctx.trace) if ctx.ok else EXAMPLES
    cols = st.columns(len(examples) + 1)
    for i, (col, (name, sample)) in enumerate(zip(cols, examples.items())):
        col.button(name, key=f"pg_ex_{i}", on_click=_example, args=(sample,), help=sample)
    if ctx.ok and cols[-1].button("random test sample", key="pg_random"):
        rng = np.random.default_rng()
        _example(str(ctx.trace.samples["text"].iloc[int(rng.integers(ctx.trace.num_samples))])[:2000])
        st.rerun()
    st.session_state.setdefault("pg_text", next(iter(examples.values())))
    typed = st.text_area("Text", key="pg_text", height=110)
    pair = st.text_input("Second text (sentence-pair task)", key="pg_pair") if is_pair else None
    go = st.button("Run ▶", type="primary", key="pg_run")
    if not typed.strip():
        st.info("Type something to run.")
        teaching()
        return
    if not policy.spec.in_engine:
        why = "needs the true label" if policy.spec.needs_labels else "exists only in simulation"
        st.info(f"The {policy.label} {why}, so it cannot run for real; below, every layer of a full run. "
                "Pick another policy in the sidebar to see a real early exit.")
    try:
        with st.spinner("Loading the model (once per server)…"):
            result = cache.run_text(src.checkpoint, state.device(), typed.strip(), (pair or None) if is_pair else None, policy)
    except DE3Error as exc:
        st.error(str(exc))
        teaching()
        return
    L, names = result["num_layers"], result["label_names"]
    e = result["exit_layer"]
    table_slot, chart_slot = st.empty(), st.empty()
    fmt = {c: st.column_config.NumberColumn(format="%.4g") for c in ("max-prob", "entropy", "DR", f"EDR (λ={policy.lambda_:g})")}
    if go:  # replay at human speed; the real run took result["early_ms"]
        for m in range(1, (e or L) + 1):
            table_slot.dataframe(styled(rows_for(result, policy.lambda_, m)), hide_index=True, width="stretch",
                                 column_config=fmt)
            time.sleep(0.25)
    table_slot.dataframe(styled(rows_for(result, policy.lambda_, L)), hide_index=True, width="stretch",
                         column_config=fmt, key="pg_table")
    full = result["full"]
    signals = {"entropy": full["entropy"], "dr": full["dr"], "edr": edr(full["dr"], full["entropy"], policy.lambda_)}
    tested = policy.spec.value_name
    if tested == "max_prob":
        signals["max_prob"] = full["max_prob"]
    chart_slot.plotly_chart(charts.signal_trajectory(signals, tau=policy.tau if tested else None, tested=tested,
                                                     exit_layer=e, computed=e, log_y=tested != "max_prob",
                                                     title="Signals per layer"), key="pg_chart")
    if e is not None:
        final = int(full["pred"][-1])
        if e < L:
            verdict = "the same answer as" if result["pred"] == final else "a **different** answer from"
            done = (f"Exited at layer **{e} of {L}** with **{names[result['pred']]}** — {verdict} the last layer "
                    f"({names[final]}). Layers computed: {e} instead of {L} (speed-up {L / e:.1f}× for this input).")
        else:
            done = (f"No early exit: no layer before {L} passed the test, so the last layer answered "
                    f"**{names[result['pred']]}** after all {L} layers (speed-up 1.0× for this input).")
        early, full_ms = result["early_ms"], result["full_ms"]
        timing = f" Wall time: {early:.0f} ms early-exit vs {full_ms:.0f} ms through every layer"
        if early >= full_ms:
            timing += (" — for one short input a layer takes a few milliseconds, so the timer's noise and the exit "
                       "test's own work can outweigh what the skipped layers save; the Trade-off explorer's speed-ups "
                       "count layers over the whole data, and `python -m analysis bench` measures them in batches.")
        else:
            timing += " (one input, CPU/GPU noise included)."
        st.success(done + timing)
    teaching()


render()
