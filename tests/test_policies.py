"""Exit policies (spec §5) on a hand-built toy trace with hand-computed exits, and their invariants."""

import math

import numpy as np
import pytest

from analysis.curves import evaluate_policy, sweep
from analysis.errors import DE3Error
from analysis.policies import POLICIES, ExitPolicy, decide_exits
from analysis.signals import edr
from analysis.tracer import trace_from_outputs

# ---------------------------------------------------------------------------------------------------------
# A toy trace: 5 samples x 4 layers, two classes. Every exit below is worked out by hand from these numbers
# (the last layer is never tested: whoever is left answers there).
# ---------------------------------------------------------------------------------------------------------

LABELS = np.array([0, 0, 1, 1, 0])
PRED = np.array([[0, 0, 0, 0],
                 [1, 0, 0, 0],
                 [1, 1, 0, 1],
                 [0, 1, 1, 1],
                 [1, 1, 1, 1]])
ENTROPY = np.array([[0.1, 0.05, 0.02, 0.01],
                    [0.6, 0.3, 0.1, 0.05],
                    [0.5, 0.4, 0.3, 0.2],
                    [0.9, 0.2, 0.7, 0.1],
                    [0.8, 0.7, 0.6, 0.5]])
DR = np.array([[0.2, 0.4, 0.1, 0.1],
               [0.3, 0.6, 0.2, 0.1],
               [0.8, 0.1, 0.5, 0.3],
               [0.5, 0.5, 0.5, 0.5],
               [0.9, 0.9, 0.2, 0.1]])
MAX_PROB = np.array([[0.98, 0.99, 0.995, 0.999],
                     [0.7, 0.9, 0.97, 0.99],
                     [0.8, 0.85, 0.9, 0.95],
                     [0.55, 0.95, 0.6, 0.97],
                     [0.6, 0.65, 0.7, 0.75]])
TOY = {"pred": PRED, "entropy": ENTROPY, "dr": DR, "max_prob": MAX_PROB, "correct": PRED == LABELS[:, None]}

# policy -> (exit layers, answers), by hand
CASES = [
    # entropy < 0.35: s0 0.1 @1; s1 0.3 @2; s2 0.3 @3; s3 0.2 @2; s4 never -> 4
    (ExitPolicy("entropy", tau=0.35), [1, 2, 3, 2, 4], [0, 0, 0, 1, 1]),
    # DR < 0.25: s0 0.2 @1; s1 0.2 @3; s2 0.1 @2; s3 never; s4 0.2 @3
    (ExitPolicy("dr", tau=0.25), [1, 3, 2, 4, 3], [0, 0, 1, 1, 1]),
    # max prob > 0.92: s0 0.98 @1; s1 0.97 @3; s2 never; s3 0.95 @2; s4 never
    (ExitPolicy("maxprob", tau=0.92), [1, 3, 4, 2, 4], [0, 0, 1, 1, 1]),
    # EDR(λ=1) = 2·DR·Ent / (DR + Ent):
    #   s0: .04/.3 = .133 @1;  s1: .4, .4, .04/.3 = .133 @3;  s2: .615, .08/.5 = .16 @2;
    #   s3: .643, .2/.7 = .286 @2;  s4: .847, .788, .24/.8 = .30 -> never below .29 -> 4
    (ExitPolicy("de3", tau=0.29, lambda_=1.0), [1, 3, 2, 2, 4], [0, 0, 1, 1, 1]),
    # EDR(λ=3) = 4·DR·Ent / (3·Ent + DR):
    #   s0: .08/.5 = .16 @1;  s1: .343, .48, .08/.5 = .16 @3;  s2: .696, .16/1.3 = .123 @2;
    #   s3: .5625, .4/1.1 = .364, 1.4/2.6 = .538 -> 4;  s4: .873, .84, .48/2 = .24 @3
    (ExitPolicy("de3", tau=0.3, lambda_=3.0), [1, 3, 2, 4, 3], [0, 0, 1, 1, 1]),
    # PABEE patience 1: the prediction at m equals the one at m-1
    #   s0 @2; s1 (1,0,0) @3; s2 (1,1) @2; s3 (0,1,1) @3; s4 @2
    (ExitPolicy("pabee", patience=1), [2, 3, 2, 3, 2], [0, 0, 1, 1, 1]),
    # patience 2: unchanged at layers 2 and 3 -> only s0 and s4 leave (@3)
    (ExitPolicy("pabee", patience=2), [3, 4, 4, 4, 3], [0, 0, 1, 1, 1]),
    # PCEE: entropy < 0.35 at 2 consecutive layers: s0 (.1,.05) @2; s1 (.3,.1) @3; s2 only one; s3 (.2,.7) no
    (ExitPolicy("pcee", tau=0.35, patience=2), [2, 3, 4, 4, 4], [0, 0, 1, 1, 1]),
    (ExitPolicy("static", layer=2), [2, 2, 2, 2, 2], [0, 0, 1, 1, 1]),
    (ExitPolicy("static", layer=4), [4, 4, 4, 4, 4], [0, 0, 1, 1, 1]),
    # oracle: the first correct layer; s4 is never correct -> layer 1 (wrong anyway, so the bound spends nothing on
    # it) with layer 1's (wrong) answer
    (ExitPolicy("oracle"), [1, 2, 1, 2, 1], [0, 0, 1, 1, 1]),
]


@pytest.mark.parametrize("policy, exits, answers", CASES, ids=lambda v: v.describe() if isinstance(v, ExitPolicy) else "")
def test_toy_exits_by_hand(policy, exits, answers):
    decision = decide_exits(TOY, policy)
    assert decision.exit_layer.tolist() == exits
    assert decision.pred.tolist() == answers


def test_every_policy_has_a_toy_case():
    assert {p.name for p, _, _ in CASES} == set(POLICIES)


def test_toy_edr_values_by_hand():
    assert edr(DR, ENTROPY, 1.0)[3, 1] == pytest.approx(0.2 / 0.7)
    assert edr(DR, ENTROPY, 3.0)[3, 1] == pytest.approx(0.4 / 1.1)
    assert edr(DR, ENTROPY, 3.0)[4, 2] == pytest.approx(0.24)


# ---------------------------------------------------------------------------------------------------------
# Invariants on random traces
# ---------------------------------------------------------------------------------------------------------


def random_trace(n=200, num_layers=5, k=3, seed=0, metric="accuracy"):
    """Logits that grow more confident and more often right with depth; random prototype distances."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    scale = np.linspace(0.3, 3.0, num_layers)[:, None, None]
    logits = rng.normal(size=(num_layers, n, k)) * scale
    logits[:, np.arange(n), labels] += np.linspace(0.0, 2.0, num_layers)[:, None]
    distances = rng.uniform(0.2, 2.0, size=(num_layers, n, k))
    return trace_from_outputs(logits, distances, labels, metric=metric)


THRESHOLD_POLICIES = [ExitPolicy("de3", lambda_=0.5), ExitPolicy("de3", lambda_=4.0), ExitPolicy("dr"),
                      ExitPolicy("entropy"), ExitPolicy("pcee", patience=1)]


@pytest.mark.parametrize("base", THRESHOLD_POLICIES, ids=lambda p: p.describe())
def test_infinite_threshold_exits_everyone_at_layer_one(base):
    trace = random_trace()
    policy = ExitPolicy(base.name, tau=float("inf"), lambda_=base.lambda_, patience=base.patience)
    assert (decide_exits(trace.wide, policy).exit_layer == 1).all()


@pytest.mark.parametrize("base", THRESHOLD_POLICIES, ids=lambda p: p.describe())
def test_zero_threshold_exits_nobody_early(base):
    trace = random_trace()
    policy = ExitPolicy(base.name, tau=0.0, lambda_=base.lambda_, patience=base.patience)
    result = evaluate_policy(trace, policy)
    assert result["mean_exit_layer"] == trace.num_layers and result["speedup"] == 1.0
    assert result["exit_counts"] == [0] * (trace.num_layers - 1) + [trace.num_samples]


def test_maxprob_extremes():
    trace = random_trace()
    assert (decide_exits(trace.wide, ExitPolicy("maxprob", tau=float("-inf"))).exit_layer == 1).all()
    assert (decide_exits(trace.wide, ExitPolicy("maxprob", tau=1.0)).exit_layer == trace.num_layers).all()


def test_pcee_infinite_threshold_waits_for_its_patience():
    trace = random_trace()
    assert (decide_exits(trace.wide, ExitPolicy("pcee", tau=float("inf"), patience=3)).exit_layer == 3).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_lower_threshold_never_raises_the_speedup(seed):
    trace = random_trace(seed=seed)
    taus = np.linspace(0.0, 1.0, 41)
    for base in [*THRESHOLD_POLICIES, ExitPolicy("pcee", patience=2)]:
        speed = [evaluate_policy(trace, ExitPolicy(base.name, tau=float(t), lambda_=base.lambda_,
                                                   patience=base.patience))["speedup"] for t in taus]
        assert np.all(np.diff(speed) >= 0), base.describe()  # τ up -> speed-up up (or equal)
    speed = [evaluate_policy(trace, ExitPolicy("maxprob", tau=float(t)))["speedup"] for t in taus]
    assert np.all(np.diff(speed) <= 0)  # max-probability: a *higher* τ is the stricter one


def test_static_layer_k_gives_speedup_l_over_k():
    trace = random_trace()
    for k in range(1, trace.num_layers + 1):
        result = evaluate_policy(trace, ExitPolicy("static", layer=k))
        assert result["speedup"] == pytest.approx(trace.num_layers / k)
        assert result["saved_fraction"] == pytest.approx(1 - k / trace.num_layers)


def test_oracle_is_an_upper_bound_on_accuracy():
    trace = random_trace(seed=3)
    oracle = evaluate_policy(trace, ExitPolicy("oracle"))["metric"]
    last = evaluate_policy(trace, ExitPolicy("static", layer=trace.num_layers))["metric"]
    assert oracle >= last
    # every answer is some layer's prediction, so no setting of any policy can be right more often
    assert oracle >= sweep(trace)["metric"].max() - 1e-12


# ---------------------------------------------------------------------------------------------------------
# The registry: one declaration per policy, and what reads it
# ---------------------------------------------------------------------------------------------------------


def toy_spec():
    """A policy that is not shipped: exit when min(DR, entropy) < τ — declared once, nothing else written for it."""
    from analysis.policies import PolicySpec

    return PolicySpec(
        name="dr_entropy_min", label="min(DR, entropy)", color="#999933",
        words="min(DR, entropy) < τ: whichever signal is surer decides.",
        inputs=("dr", "entropy"), params=("tau",),
        value=lambda s, p: np.minimum(np.asarray(s["dr"]), np.asarray(s["entropy"])), value_name="min(DR, entropy)",
        test=lambda p: f"min(DR, entropy) < τ={p.tau:g}", tau=0.2)


@pytest.fixture
def toy_policy(monkeypatch):
    """``toy_spec`` registered for one test (the registry is restored after it)."""
    from analysis import policies

    spec = toy_spec()
    monkeypatch.setitem(policies.REGISTRY, spec.name, spec)
    return spec


def test_a_new_policy_needs_only_its_spec(toy_policy):
    """Registering a spec is all it takes: the exit rule, the sweep (vectorised, equal to evaluate_policy row by
    row), the default grid with both extremes, and the matched table handle it with no other change."""
    from analysis.compare import matched_table
    from analysis.curves import CURVE_COLUMNS, default_grid
    from analysis.policies import exit_mask, threshold_signal

    policy = ExitPolicy(toy_policy.name, tau=0.25)
    assert policy.describe() == "min(DR, entropy) (τ=0.25)" and policy.exit_test() == "min(DR, entropy) < τ=0.25"
    # min(DR, entropy) of TOY: s0 .1 @1; s1 (.3, .3, .1) @3; s2 (.5, .1) @2; s3 (.5, .2) @2; s4 (.8, .7, .2) @3
    d = decide_exits(TOY, policy)
    assert d.exit_layer.tolist() == [1, 3, 2, 2, 3] and d.pred.tolist() == [0, 0, 1, 1, 1]
    assert exit_mask(policy, TOY).tolist() == (np.minimum(DR, ENTROPY) < 0.25).tolist()
    np.testing.assert_array_equal(threshold_signal(TOY, policy), np.minimum(DR, ENTROPY))

    trace = random_trace(n=150, num_layers=5, seed=7)
    grid = default_grid(trace, lambdas=(1.0,), n_quantiles=20)
    mine = [p for p in grid if p.name == toy_policy.name]
    assert len(mine) > 10 and {p.name for p in grid} == set(POLICIES) | {toy_policy.name}
    extra = [ExitPolicy(toy_policy.name, tau=t) for t in (0, 0.3, float(np.float32(0.3)), np.float64(0.3))]
    curves = sweep(trace, mine + extra)
    assert list(curves.columns) == list(CURVE_COLUMNS)
    for p, row in zip(mine + extra, curves.to_dict("records")):
        expected = evaluate_policy(trace, p)
        assert row["policy"] == p.name and row["label"] == "min(DR, entropy)" and row["tau"] == p.tau
        assert row["mean_exit_layer"] == expected["mean_exit_layer"], p  # exact: integer sums
        assert row["metric"] == pytest.approx(expected["metric"], abs=1e-12)
        assert row["flops_ratio"] == pytest.approx(expected["flops_ratio"], rel=1e-12)
    speed = curves["speedup"][: len(mine)]
    assert speed.min() == 1.0 and speed.max() == trace.num_layers  # exit no one .. everyone at layer 1
    table = matched_table(sweep(trace, grid), (1.5, 2.0), lambda_=1.0).set_index("policy")
    assert table.loc[toy_policy.name, "label"] == "min(DR, entropy)" and not math.isnan(table.loc[toy_policy.name, "auc"])


def test_the_toy_policy_is_not_shipped():
    from analysis.policies import REGISTRY

    assert "dr_entropy_min" not in REGISTRY and POLICIES == tuple(REGISTRY)
    with pytest.raises(DE3Error, match="unknown exit policy"):
        ExitPolicy("dr_entropy_min")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_forms_equal_the_definitions(seed):
    """The one rule every policy is run by (``exit_signal < signal_tau``) is spec §5's test: PCEE's windowed maximum
    is "entropy < τ at `patience` layers in a row", max-probability's negation is "max_prob > τ" — NaN included, and
    for every type of τ (numpy compares a Python float in the signal's dtype, a numpy float64 in float64)."""
    from analysis.policies import exit_mask, run_lengths

    rng = np.random.default_rng(seed)
    ent = rng.uniform(0, 1, (300, 6)).astype(np.float32)
    ent[rng.uniform(size=ent.shape) < 0.05] = np.nan
    mp = rng.uniform(0, 1, (300, 6)).astype(np.float32)
    mp[rng.uniform(size=mp.shape) < 0.05] = np.nan
    signals = {"entropy": ent, "max_prob": mp}
    taus = [0, 1, 0.3, float(ent[0, 1]), float(np.float32(0.7)), np.float64(ent[2, 2]), float("inf"), float("-inf")]
    for t in taus:
        for patience in (1, 2, 3, 6, 8):
            got = exit_mask(ExitPolicy("pcee", tau=t, patience=patience), signals)
            assert (got == (run_lengths(ent < t) >= patience)).all(), (t, patience)
        assert (exit_mask(ExitPolicy("maxprob", tau=t), signals) == (mp > t)).all(), t


def test_a_spec_that_contradicts_itself_is_refused():
    from dataclasses import replace

    spec = toy_spec()
    for bad in ({"rule": lambda p, s: s["dr"] < 0},  # a value and a rule
                {"params": ()},  # a threshold without τ
                {"params": ("tau", "threshold")},  # not an ExitPolicy field
                {"tau": None},  # no opening τ
                {"consecutive": True},  # "in a row" without patience
                {"tau_grid": "linear"},
                {"needs_labels": True}):  # reads labels, yet claims to run in the engine
        with pytest.raises(DE3Error):
            replace(spec, **bad)
