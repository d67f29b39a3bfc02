"""The corrected oracle and the oracle frontier (spec §5): by hand, against every exit assignment of tiny traces,
and as a bound that no policy of the default sweep crosses — on seeded synthetic traces and on every shipped trace."""

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from analysis.compare import matched_table
from analysis.curves import (
    best_metric_at,
    evaluate_policy,
    frontier_auc,
    oracle_frontier,
    sweep,
    upper_envelope,
)
from analysis.policies import ExitPolicy
from analysis.trace import load_trace
from analysis.tracer import trace_from_outputs
from tests.test_policies import LABELS, PRED, random_trace

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for p in (REPO / "pretrained").glob("*/trace-test") if (p / "meta.json").is_file())


def trace_with_predictions(pred: np.ndarray, labels: np.ndarray, k: int = 2, metric: str = "accuracy"):
    """A trace whose layer-m prediction of sample n is pred[n, m] (logit 3 on that class, 0 elsewhere)."""
    n, num_layers = pred.shape
    logits = np.zeros((num_layers, n, k))
    np.put_along_axis(logits, pred.T[..., None], 3.0, axis=2)
    return trace_from_outputs(logits, np.ones((num_layers, n, k)), labels, metric=metric)


def toy():
    """tests/test_policies.py's 5 x 4 toy: first correct layers 1, 2, 1, 2; sample 4 is never right."""
    return trace_with_predictions(PRED, LABELS)


def test_oracle_sends_never_right_samples_to_layer_one():
    result = evaluate_policy(toy(), ExitPolicy("oracle"))
    assert result["exit_counts"] == [3, 2, 0, 0]  # s0, s2, s4 (never right) at 1; s1, s3 at 2
    assert result["metric"] == 4 / 5 and result["mean_exit_layer"] == 7 / 5


def test_frontier_by_hand():
    # sorted first-correct layers 1, 1, 2, 2; N = 5, L = 4: mean exit layer (c_(1)+...+c_(k) + 5 - k) / 5
    front = oracle_frontier(toy())
    assert front["k"].tolist() == [4, 3, 2, 1, 0]
    assert front["metric"].tolist() == [0.8, 0.6, 0.4, 0.2, 0.0]
    assert front["mean_exit_layer"].tolist() == [7 / 5, 6 / 5, 1.0, 1.0, 1.0]
    assert front["speedup"].tolist() == [4 / 1.4, 4 / 1.2, 4.0, 4.0, 4.0]
    assert front.attrs["bound"] is True
    oracle = evaluate_policy(toy(), ExitPolicy("oracle"))  # k = S is the oracle point, number for number
    assert (front["metric"][0], front["speedup"][0]) == (oracle["metric"], oracle["speedup"])
    env = upper_envelope(front)  # k = 1, 0 share 4x with k = 2 and are dominated by it
    assert env["speedup"].tolist() == [4 / 1.4, 4 / 1.2, 4.0] and env["metric"].tolist() == [0.8, 0.6, 0.4]
    assert best_metric_at(env, 1.5) == 0.8 and best_metric_at(env, 3.0) == 0.6 and best_metric_at(env, 3.5) == 0.4
    assert frontier_auc(env, 3.0) == pytest.approx((0.8 * (4 / 1.4 - 1) + 0.6 * (3 - 4 / 1.4)) / 2)


def test_matched_table_reads_the_oracle_row_off_the_frontier():
    trace = toy()
    curves = sweep(trace, [ExitPolicy("static", layer=m) for m in (1, 2, 3, 4)] + [ExitPolicy("oracle")])
    front = oracle_frontier(trace)
    table = matched_table(curves, (1.5, 2, 3), oracle_front=front).set_index("policy")
    assert table.loc["oracle", ["1.5x", "2x", "3x"]].tolist() == [0.8, 0.8, 0.6]  # 3x: beyond the oracle's 2.86x
    assert table.loc["oracle", "max_speedup"] == 4.0 and "upper bound" in table.loc["oracle", "note"]
    plain = matched_table(curves, (1.5, 2, 3)).set_index("policy")  # without it: the oracle's one point
    assert math.isnan(plain.loc["oracle", "3x"])


@pytest.mark.parametrize("metric", ["f1", "mcc"])
def test_frontier_is_only_a_reference_point_for_f1_and_mcc(metric):
    trace = trace_with_predictions(PRED, LABELS, metric=metric)
    front = oracle_frontier(trace)
    oracle = evaluate_policy(trace, ExitPolicy("oracle"))
    assert len(front) == 1 and front.attrs["bound"] is False and front["k"].tolist() == [4]
    assert (front["metric"][0], front["speedup"][0]) == (oracle["metric"], oracle["speedup"])
    curves = sweep(trace, [ExitPolicy("static", layer=1), ExitPolicy("oracle")])
    assert "reference point" in matched_table(curves, (1.5,), oracle_front=front).set_index("policy").loc["oracle", "note"]


@pytest.mark.parametrize("seed", range(12))
def test_frontier_is_exactly_the_best_of_every_exit_assignment(seed):
    """Enumerate all L^N exit assignments of a tiny trace: none lies above the frontier, and every frontier point
    is reached by one (the bound is tight)."""
    rng = np.random.default_rng(seed)
    n, num_layers = int(rng.integers(1, 6)), int(rng.integers(2, 4))
    labels = rng.integers(0, 2, n)
    pred = rng.integers(0, 2, (n, num_layers))
    correct = pred == labels[:, None]
    env = upper_envelope(oracle_frontier(trace_with_predictions(pred, labels)))
    reached = set()
    for exits in itertools.product(range(num_layers), repeat=n):
        acc = correct[np.arange(n), exits].sum() / n
        speed = num_layers / (sum(exits) / n + 1)
        assert acc <= best_metric_at(env, speed) + 1e-12, (exits, acc, speed)
        reached.add((round(speed, 9), round(acc, 9)))
    for s, m in zip(env["speedup"], env["metric"]):
        assert (round(s, 9), round(m, 9)) in reached


def assert_no_point_above_the_frontier(trace) -> None:
    """Every setting of the default sweep lies on or under the oracle frontier, and the oracle point is the best
    accuracy at the fewest layers."""
    curves = sweep(trace)
    front = oracle_frontier(trace)
    env = upper_envelope(front)
    bound = np.array([best_metric_at(env, s) for s in curves["speedup"]])
    above = curves[curves["metric"].to_numpy() > bound + 1e-12]
    assert above.empty, above[["policy", "tau", "lambda_", "patience", "layer", "speedup", "metric"]].to_string()
    best, fastest = front["metric"].iloc[0], front["speedup"].iloc[0]
    oracle = curves[curves["policy"] == "oracle"].iloc[0]  # the oracle policy is the frontier's first point
    assert (oracle["metric"], oracle["speedup"]) == (best, fastest)
    assert curves["metric"].max() <= best + 1e-12
    as_good = curves[curves["metric"] >= best - 1e-12]
    assert (as_good["speedup"] <= fastest * (1 + 1e-12)).all(), as_good[["policy", "speedup", "metric"]].to_string()


@pytest.mark.parametrize("seed, n, num_layers, k", [(0, 200, 5, 3), (1, 60, 6, 2), (2, 300, 4, 4), (3, 25, 12, 2),
                                                    (4, 150, 6, 5)])
def test_no_policy_above_the_oracle_frontier_on_synthetic_traces(seed, n, num_layers, k):
    assert_no_point_above_the_frontier(random_trace(n=n, num_layers=num_layers, k=k, seed=seed))


@pytest.mark.skipif(not SHIPPED, reason="no pretrained/*/trace-test folder in this checkout")
@pytest.mark.parametrize("folder", SHIPPED, ids=lambda p: p.parent.name)
def test_no_policy_above_the_oracle_frontier_on_shipped_traces(folder):
    trace = load_trace(folder)
    trace.meta = {**trace.meta, "metric": "accuracy"}  # the frontier bounds accuracy, whatever the task reports
    assert_no_point_above_the_frontier(trace)
