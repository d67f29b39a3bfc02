"""Property tests (hypothesis): invariants of the signals, the policies and the curve sweep on random inputs."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from analysis.curves import best_metric_at, evaluate_policy, oracle_frontier, sweep, upper_envelope
from analysis.policies import ExitPolicy, decide_exits
from analysis.signals import distance_ratio, edr
from analysis.tracer import trace_from_outputs

positive = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)
unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
lambdas = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)


@given(positive, positive)
def test_dr_in_unit_interval(r1, r2):
    dr = distance_ratio(np.float64(r1), np.float64(r2))
    assert 0.0 <= dr <= 1.0
    assert (dr < 0.5) == (r1 < r2) or abs(r1 - r2) <= 1e-9 * max(r1, r2, 1.0)


@given(unit, unit, lambdas)
def test_edr_between_dr_and_entropy(dr, ent, lam):
    value = edr(np.float64(dr), np.float64(ent), lam)
    lo, hi = min(dr, ent), max(dr, ent)
    assert lo - 1e-9 <= value <= hi + 1e-9


@st.composite
def traces(draw):
    layers = draw(st.integers(2, 6))
    n = draw(st.integers(1, 30))
    k = draw(st.integers(2, 4))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=draw(st.floats(0.1, 5.0)), size=(layers, n, k))
    distances = rng.uniform(0.0, 3.0, size=(layers, n, k))
    labels = rng.integers(0, k, n)
    return trace_from_outputs(logits, distances, labels, metric=draw(st.sampled_from(["accuracy", "mcc"])))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traces(), st.sampled_from(["de3", "dr", "entropy", "pcee"]), unit, unit, lambdas)
def test_lower_tau_never_raises_speedup(trace, name, t1, t2, lam):
    low, high = sorted((t1, t2))
    s_low = evaluate_policy(trace, ExitPolicy(name, tau=low, lambda_=lam))["speedup"]
    s_high = evaluate_policy(trace, ExitPolicy(name, tau=high, lambda_=lam))["speedup"]
    assert s_low <= s_high + 1e-12


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traces())
def test_extreme_thresholds(trace):
    L = trace.num_layers
    assert (decide_exits(trace.wide, ExitPolicy("de3", tau=float("inf"))).exit_layer == 1).all()
    assert (decide_exits(trace.wide, ExitPolicy("entropy", tau=0.0)).exit_layer == L).all()
    assert (decide_exits(trace.wide, ExitPolicy("maxprob", tau=1.0)).exit_layer == L).all()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traces())
def test_sweep_never_raises_and_stays_in_range(trace):
    curves = sweep(trace)
    assert len(curves) > 0
    assert ((curves.speedup >= 1 - 1e-12) & (curves.speedup <= trace.num_layers + 1e-12)).all()
    assert ((curves.saved_fraction >= -1e-12) & (curves.saved_fraction < 1)).all()
    assert curves.metric.between(-1, 1).all()


@settings(max_examples=20, deadline=None)
@given(arrays(np.float64, st.integers(1, 20), elements=positive), arrays(np.float64, st.integers(1, 20), elements=positive))
def test_dr_vectorised_equals_scalar(a, b):
    n = min(len(a), len(b))
    vec = distance_ratio(a[:n], b[:n])
    assert np.allclose(vec, [distance_ratio(x, y) for x, y in zip(a[:n], b[:n])])


# ---- added for issue 6: every direction of every parameter, per sample, and the signals of whole traces ----------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traces(), st.sampled_from(["de3", "dr", "entropy", "pcee"]), unit, unit, lambdas, st.integers(1, 3))
def test_lower_tau_never_moves_a_sample_earlier(trace, name, t1, t2, lam, patience):
    """Signals are "lower = more confident" and a sample exits when its signal < τ: a lower τ passes a subset of the
    layers, so no sample leaves earlier (per sample, stronger than the mean speed-up)."""
    low, high = sorted((t1, t2))
    early = decide_exits(trace.wide, ExitPolicy(name, tau=high, lambda_=lam, patience=patience)).exit_layer
    late = decide_exits(trace.wide, ExitPolicy(name, tau=low, lambda_=lam, patience=patience)).exit_layer
    assert (late >= early).all()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traces(), unit, unit)
def test_maxprob_higher_tau_never_raises_speedup(trace, t1, t2):
    """max-probability exits when max_p > τ (the other direction): a higher τ is the more careful one."""
    low, high = sorted((t1, t2))
    loose = decide_exits(trace.wide, ExitPolicy("maxprob", tau=low)).exit_layer
    careful = decide_exits(trace.wide, ExitPolicy("maxprob", tau=high)).exit_layer
    assert (careful >= loose).all()
    assert evaluate_policy(trace, ExitPolicy("maxprob", tau=high))["speedup"] <= \
        evaluate_policy(trace, ExitPolicy("maxprob", tau=low))["speedup"] + 1e-12


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traces(), st.sampled_from(["pabee", "pcee"]), st.integers(1, 5), st.integers(1, 5), unit)
def test_more_patience_never_raises_speedup(trace, name, p1, p2, tau):
    small, large = sorted((p1, p2))
    quick = decide_exits(trace.wide, ExitPolicy(name, tau=tau, patience=small)).exit_layer
    patient = decide_exits(trace.wide, ExitPolicy(name, tau=tau, patience=large)).exit_layer
    assert (patient >= quick).all()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traces(), st.sampled_from(["de3", "dr", "entropy", "maxprob", "pabee", "pcee", "static", "oracle"]), unit,
       lambdas, st.integers(1, 6))
def test_exits_are_valid_layers_and_answer_with_that_layer(trace, name, tau, lam, k):
    decision = decide_exits(trace.wide, ExitPolicy(name, tau=tau, lambda_=lam, patience=k, layer=k))
    L = trace.num_layers
    assert ((decision.exit_layer >= 1) & (decision.exit_layer <= L)).all()
    rows = np.arange(trace.num_samples)
    assert (decision.pred == np.asarray(trace.wide["pred"])[rows, decision.exit_layer - 1]).all()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traces())
def test_trace_signals_in_unit_interval(trace):
    for name in ("dr", "entropy", "max_prob"):
        values = np.asarray(trace.wide[name])
        assert np.isfinite(values).all() and (values >= 0).all() and (values <= 1 + 1e-6).all(), name


@given(unit, unit, lambdas, lambdas)
def test_edr_moves_towards_dr_as_lambda_grows(dr, ent, l1, l2):
    """EDR is the weighted harmonic mean of DR (weight λ) and entropy (weight 1): a larger λ never moves it away
    from DR."""
    small, large = sorted((l1, l2))
    gap_small = abs(edr(np.float64(dr), np.float64(ent), small) - dr)
    gap_large = abs(edr(np.float64(dr), np.float64(ent), large) - dr)
    assert gap_large <= gap_small + 1e-7


# ---- the oracle frontier (spec §5): an upper bound no setting of any policy crosses -----------------------------


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traces())
def test_no_setting_lies_above_the_oracle_frontier(trace):
    trace.meta["metric"] = "accuracy"  # the frontier bounds accuracy
    curves = sweep(trace)
    front = oracle_frontier(trace)
    env = upper_envelope(front)
    for speed, value in zip(curves["speedup"], curves["metric"]):
        assert value <= best_metric_at(env, speed) + 1e-12
    oracle = curves[curves["policy"] == "oracle"].iloc[0]  # the oracle point: the best accuracy at the fewest layers
    assert (oracle["metric"], oracle["speedup"]) == (front["metric"].iloc[0], front["speedup"].iloc[0])
    assert (curves.loc[curves["metric"] >= oracle["metric"] - 1e-12, "speedup"] <= oracle["speedup"] * (1 + 1e-12)).all()
    assert front["metric"].is_monotonic_decreasing and front["speedup"].is_monotonic_increasing
