"""Exit policies (spec §5) on a hand-built toy trace with hand-computed exits, and their invariants."""

import numpy as np
import pytest

from analysis.curves import evaluate_policy, sweep
from analysis.policies import POLICIES, ExitPolicy, decide_exits
from analysis.signals import edr
from analysis.trace import trace_from_outputs

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
