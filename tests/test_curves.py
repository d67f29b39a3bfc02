"""Curves, matched tables, λ choice, bootstrap and the curves/compare CLI (spec §6–§7)."""

import argparse
import math
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from analysis.commands.curves import register as add_cli
from analysis.compare import (
    VS_BASELINE_COLUMNS,
    choose_lambda,
    compare,
    matched_table,
    matched_vs_baseline,
    paired_bootstrap,
)
from analysis.cost import CostModel
from analysis.curves import (
    CURVE_COLUMNS,
    _Context,
    _running_min,
    _threshold_totals,
    best_metric_at,
    best_setting_at,
    default_grid,
    evaluate_policy,
    frontier,
    frontier_auc,
    oracle_frontier,
    per_layer_metric,
    sweep,
)
from analysis.errors import CurveError, DE3Error
from analysis.metrics import compute_metric, score
from analysis.policies import POLICIES, ExitPolicy, decide_exits
from analysis.trace import load_trace
from analysis.tracer import trace_from_outputs
from tests.test_policies import random_trace

# ---------------------------------------------------------------------------------------------------------
# The sweep equals decide_exits, setting by setting
# ---------------------------------------------------------------------------------------------------------


def awkward_policies(trace):
    """Thresholds exactly at data values, between float32 neighbours, ints, infinities, np.float64 (NaN is refused:
    ``test_nan_threshold_is_refused``)."""
    values = np.unique(trace.wide["entropy"][:, :-1])[::37]
    taus = [float(v) for v in values] + [float(np.nextafter(np.float64(v), 2.0)) for v in values[:5]]
    taus += [0, 1, 0.0, float("inf"), float("-inf"), np.float64(values[3]) + 1e-12]
    out = []
    for t in taus:
        out += [ExitPolicy("entropy", tau=t), ExitPolicy("dr", tau=t), ExitPolicy("de3", tau=t, lambda_=2.0),
                ExitPolicy("pcee", tau=t, patience=2), ExitPolicy("maxprob", tau=t if math.isnan(t) else 1 - t)]
    return out


@pytest.mark.parametrize("metric, k, seed", [("accuracy", 3, 0), ("f1", 2, 1), ("mcc", 3, 2), ("mcc", 2, 4)])
def test_sweep_equals_evaluate_policy_row_by_row(metric, k, seed):
    trace = random_trace(n=150, num_layers=5, k=k, seed=seed, metric=metric)
    policies = default_grid(trace, lambdas=(0.25, 2.0), n_quantiles=15) + awkward_policies(trace)
    curves = sweep(trace, policies)
    assert list(curves.columns) == list(CURVE_COLUMNS) and len(curves) == len(policies)
    for policy, row in zip(policies, curves.to_dict("records")):
        expected = evaluate_policy(trace, policy)
        answers = decide_exits(trace.wide, policy).pred
        assert row["policy"] == policy.name and row["label"] == policy.label
        assert row["mean_exit_layer"] == expected["mean_exit_layer"], policy  # exact: integer sums
        assert row["speedup"] == expected["speedup"] and row["saved_fraction"] == expected["saved_fraction"]
        assert row["metric"] == pytest.approx(expected["metric"], abs=1e-12)
        assert row["metric"] == pytest.approx(compute_metric(metric, trace.labels, answers), abs=1e-12)
        assert row["flops_ratio"] == pytest.approx(expected["flops_ratio"], rel=1e-12)


def test_threshold_totals_equal_decide_exits_exactly():
    """Exit counts and confusion matrices of the vectorised sweep, per threshold, against the causal rule."""
    trace = random_trace(n=120, num_layers=4, k=3, seed=5)
    ctx = _Context.of(trace)
    for policy in (ExitPolicy("de3", lambda_=0.5), ExitPolicy("pcee", patience=2), ExitPolicy("entropy")):
        signal = policy.spec.exit_signal(trace.wide, policy)
        taus = np.unique(np.concatenate([signal[:, :-1].ravel()[::7], [0.0, np.inf]]).astype(signal.dtype))
        totals = _threshold_totals(ctx, _running_min(signal), taus)
        for j, tau in enumerate(taus):
            d = decide_exits(trace.wide, ExitPolicy(policy.name, tau=float(tau), lambda_=policy.lambda_,
                                                    patience=policy.patience))
            assert totals.counts[j].tolist() == np.bincount(d.exit_layer - 1, minlength=4).tolist()
            confusion = np.zeros((3, 3), dtype=int)
            np.add.at(confusion, (trace.labels, d.pred), 1)
            assert (totals.right[j] == np.diag(confusion)).all()  # the confusion matrix's margins, exactly
            assert (totals.answered[j] == confusion.sum(0)).all()


def test_default_grid_covers_every_policy_and_both_extremes():
    trace = random_trace(num_layers=6)
    grid = default_grid(trace)
    assert {p.name for p in grid} == set(POLICIES)
    assert sorted(p.patience for p in grid if p.name == "pabee") == [1, 2, 3, 4, 5]
    assert sorted(p.layer for p in grid if p.name == "static") == [1, 2, 3, 4, 5, 6]
    assert sum(p.name == "oracle" for p in grid) == 1
    curves = sweep(trace, grid)
    for name in ("de3", "dr", "entropy", "maxprob"):
        speed = curves[curves.policy == name]["speedup"]
        assert speed.min() == 1.0 and speed.max() == 6.0, name  # exit no one .. everyone at layer 1
    assert len(curves[(curves.policy == "entropy")]) > 50  # ~100 quantile thresholds


# ---------------------------------------------------------------------------------------------------------
# Definitions by hand
# ---------------------------------------------------------------------------------------------------------


def toy_cost_trace():
    """4 samples x 4 layers. Entropy < 0.5 first at: s0 layer 1, s1 layer 2, s2 and s3 never (-> 4)."""
    sure, unsure = [5.0, -5.0], [0.0, 0.0]
    logits = np.array([[sure, sure, sure, sure],
                       [unsure, sure, sure, sure],
                       [unsure, unsure, unsure, unsure],
                       [unsure, unsure, unsure, [-3.0, 3.0]]]).transpose(1, 0, 2)  # (L, N, K)
    cost = CostModel(hidden=2, intermediate=4, num_layers=4, num_labels=2, proto_dim=2)
    return trace_from_outputs(logits, np.ones((4, 4, 2)), np.array([0, 0, 1, 1]), n_tokens=np.array([1, 1, 2, 2]),
                              cost_model=cost)


def test_speedup_saved_and_flops_by_hand():
    result = evaluate_policy(toy_cost_trace(), ExitPolicy("entropy", tau=0.5))
    assert result["exit_counts"] == [1, 1, 0, 2]
    assert result["mean_exit_layer"] == pytest.approx(11 / 4)
    assert result["speedup"] == pytest.approx(4 / 2.75)
    assert result["saved_fraction"] == pytest.approx(1 - 2.75 / 4)
    assert result["metric"] == pytest.approx(3 / 4)  # s2 answers class 0 (a tie), label 1
    # layer(T) = 8TH² + 4T²H + 4THI = 64T + 8T²: 72 (T=1), 160 (T=2); exit head = 8 + 8 + 8 + 12 = 36;
    # final head = 8 + 8 = 16. Early exit: 72+36 + 2(72+36) + 2(4·160 + 3·36 + 16) = 1852; full: 2·304 + 2·656
    assert result["flops_ratio"] == pytest.approx(1852 / 1920)
    row = sweep(toy_cost_trace(), [ExitPolicy("entropy", tau=0.5)]).iloc[0]
    assert row["flops_ratio"] == pytest.approx(1852 / 1920) and row["speedup"] == pytest.approx(4 / 2.75)


def test_scores_from_confusion_by_hand():
    labels, preds = np.array([1, 1, 0, 0, 1]), np.array([1, 0, 0, 1, 1])  # tp 2, fp 1, fn 1, tn 1
    confusion = np.zeros((2, 2), dtype=int)
    np.add.at(confusion, (labels, preds), 1)
    assert score("accuracy", confusion) == pytest.approx(3 / 5)
    assert score("f1", confusion) == pytest.approx(4 / 6)
    assert score("mcc", confusion) == pytest.approx((2 * 1 - 1 * 1) / math.sqrt(3 * 3 * 2 * 2))
    for metric, reference in (("accuracy", accuracy_score), ("f1", f1_score), ("mcc", matthews_corrcoef)):
        assert score(metric, confusion) == pytest.approx(reference(labels, preds))  # scikit-learn, independently
    degenerate = np.array([[5, 0], [0, 0]])  # one class only: F1 and MCC undefined -> 0
    assert score("f1", degenerate) == 0.0 and score("mcc", degenerate) == 0.0
    with pytest.raises(CurveError):
        score("auc", confusion)


def test_per_layer_metric():
    trace = random_trace(seed=1)
    table = per_layer_metric(trace)
    assert table["layer"].tolist() == [1, 2, 3, 4, 5] and table["speedup"].tolist() == [5, 2.5, 5 / 3, 1.25, 1]
    for layer, value in zip(table["layer"], table["metric"]):
        assert value == pytest.approx(np.mean(trace.wide["pred"][:, layer - 1] == trace.labels))


# ---------------------------------------------------------------------------------------------------------
# Frontier, matched table, AUC on a toy curve
# ---------------------------------------------------------------------------------------------------------


def toy_curves():
    rows = [("de3", 1.0, 1.0, 0.90), ("de3", 1.0, 1.5, 0.85), ("de3", 1.0, 2.0, 0.86), ("de3", 1.0, 2.5, 0.80),
            ("de3", 1.0, 3.2, 0.70), ("de3", 0.5, 1.0, 0.99), ("de3", 0.5, 4.0, 0.99),
            ("static", math.nan, 1.0, 0.90), ("static", math.nan, 2.5, 0.60)]
    return pd.DataFrame(rows, columns=["policy", "lambda_", "speedup", "metric"])


def test_frontier_is_the_upper_envelope():
    front = frontier(toy_curves(), "de3", 1.0)
    assert front["speedup"].tolist() == [1.0, 1.5, 2.0, 2.5, 3.2]
    assert front["metric"].tolist() == [0.90, 0.86, 0.86, 0.80, 0.70]  # 1.5x: 2.0x's 0.86 is better and faster
    assert best_metric_at(front, 1.2) == 0.86 and best_metric_at(front, 2.0) == 0.86
    assert best_metric_at(front, 3.0) == 0.70 and math.isnan(best_metric_at(front, 3.5))
    with pytest.raises(CurveError, match="several"):
        frontier(toy_curves(), "de3")
    with pytest.raises(CurveError, match="no rows"):
        frontier(toy_curves(), "pabee")


def test_auc_by_hand():
    # 1..2: 0.86, 2..2.5: 0.80, 2.5..3: 0.70 -> (0.86 + 0.40 + 0.35) / 2
    assert frontier_auc(frontier(toy_curves(), "de3", 1.0), 3.0) == pytest.approx(0.805)
    assert frontier_auc(frontier(toy_curves(), "de3", 1.0), 2.0) == pytest.approx(0.86)
    assert math.isnan(frontier_auc(frontier(toy_curves(), "static"), 3.0))  # stops at 2.5x


def test_matched_table_by_hand():
    table = matched_table(toy_curves(), (1.5, 2, 3), lambda_=1.0).set_index("policy")
    assert list(table.index) == ["de3", "static"]
    assert table.loc["de3", ["1.5x", "2x", "3x"]].tolist() == [0.86, 0.86, 0.70]
    assert table.loc["de3", "auc"] == pytest.approx(0.805) and table.loc["de3", "note"] == ""
    assert table.loc["static", ["1.5x", "2x"]].tolist() == [0.60, 0.60]
    assert math.isnan(table.loc["static", "3x"]) and math.isnan(table.loc["static", "auc"])
    assert "2.50x" in table.loc["static", "note"]
    other = matched_table(toy_curves(), (1.5,), lambda_=0.5).set_index("policy")
    assert other.loc["de3", "1.5x"] == 0.99 and other.loc["de3", "lambda_"] == 0.5
    with pytest.raises(CurveError):
        matched_table(toy_curves(), (1.5,), lambda_=2.0)
    with pytest.raises(CurveError):
        matched_table(toy_curves(), (0.5,))


# ---------------------------------------------------------------------------------------------------------
# Choosing λ on validation data; compare
# ---------------------------------------------------------------------------------------------------------


def informative_trace(signal: str, n=400, num_layers=6, seed=0, split=None):
    """A trace where only one signal says whether a layer is right: ``dr`` (prototype distances) or
    ``entropy`` (logit confidence); the other is noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    right = rng.random((num_layers, n)) < np.linspace(0.55, 0.95, num_layers)[:, None]  # (L, N)
    pred = np.where(right, labels, 1 - labels)
    noise = rng.uniform(0.1, 4.0, (num_layers, n))
    margin = noise if signal == "dr" else np.where(right, rng.uniform(1.0, 5.0, (num_layers, n)), noise / 2)
    logits = np.zeros((num_layers, n, 2))
    np.put_along_axis(logits, pred[..., None], margin[..., None], axis=2)
    if signal == "dr":  # the label's prototype is usually nearer: DR mostly low when the prediction is right
        distances = rng.uniform(0.8, 2.0, (num_layers, n, 2))
        near = np.broadcast_to(labels, (num_layers, n))[..., None]
        np.put_along_axis(distances, near, rng.uniform(0.3, 1.2, (num_layers, n, 1)), axis=2)
    else:
        distances = rng.uniform(0.5, 2.0, (num_layers, n, 2))
    trace = trace_from_outputs(logits, distances, labels)
    if split:
        trace.meta["split"] = split
    return trace


def test_choose_lambda_follows_the_validation_trace():
    val_dr, val_ent = informative_trace("dr", split="validation"), informative_trace("entropy", split="validation")
    assert choose_lambda(val_dr) == 8.0  # DR is the signal: largest λ
    assert choose_lambda(val_ent) == 0.1  # entropy is the signal: smallest λ
    with pytest.raises(CurveError, match="test split"):
        choose_lambda(informative_trace("dr", split="test"))


def test_compare_uses_the_validation_lambda_not_the_test_one():
    test = informative_trace("entropy", seed=1)
    result = compare(test, informative_trace("dr", seed=2, split="validation"))
    assert result.lambda_ == 8.0 and "validation" in result.lambda_note  # the test trace alone would pick 0.1
    assert set(result.curves.query("policy == 'de3'")["lambda_"]) == {8.0}
    assert list(result.table["policy"]) == list(POLICIES)
    assert result.table.loc[result.table.policy == "de3", "lambda_"].item() == 8.0
    assert result.oracle["metric"] == evaluate_policy(test, ExitPolicy("oracle"))["metric"]
    assert len(result.per_layer) == test.num_layers
    with pytest.raises(CurveError, match="is the test trace"):
        compare(test, test)


def test_compare_without_validation_defaults_to_lambda_one():
    result = compare(random_trace(seed=2), speedups=(1.5, 2))
    assert result.lambda_ == 1.0 and "no validation trace" in result.lambda_note
    text = result.format()
    assert "accuracy" in text.splitlines()[0] and "λ = 1" in text
    for label in ("DE3-BERT (EDR), λ=1", "DR only", "PABEE (patience)", "oracle", "per-layer"):
        assert label in text


# ---------------------------------------------------------------------------------------------------------
# Paired bootstrap
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["accuracy", "f1", "mcc"])
def test_paired_bootstrap(metric):
    trace = random_trace(n=300, k=2, seed=6, metric=metric)
    a, b = ExitPolicy("static", layer=5), ExitPolicy("static", layer=1)
    result = paired_bootstrap(trace, a, b, n_boot=300, seed=0)
    expected = evaluate_policy(trace, a)["metric"] - evaluate_policy(trace, b)["metric"]
    assert result["diff"] == pytest.approx(expected)
    assert result["low"] <= result["diff"] <= result["high"] and result["low"] < result["high"]
    assert paired_bootstrap(trace, a, b, n_boot=300, seed=0) == result  # deterministic with a seed
    assert paired_bootstrap(trace, a, b, n_boot=300, seed=1)["low"] != result["low"]
    same = paired_bootstrap(trace, a, a, n_boot=50)
    assert same["diff"] == same["low"] == same["high"] == 0.0  # paired: identical answers never differ


# ---------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------


def save_trace(trace, folder):
    return trace.save(folder)


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="test")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_cli_curves_writes_the_sweep_atomically(tmp_path):
    folder = save_trace(random_trace(seed=7), tmp_path / "trace")
    out = tmp_path / "out" / "curves.csv"
    assert run_cli(["curves", "--trace", str(folder), "--out", str(out), "--lambdas", "0.5,2"]) == 0
    written = pd.read_csv(out)
    trace = load_trace(folder)
    expected = sweep(trace, default_grid(trace, lambdas=(0.5, 2.0)))
    assert list(written.columns) == list(CURVE_COLUMNS) and len(written) == len(expected)
    np.testing.assert_allclose(written["metric"], expected["metric"])
    assert [p.name for p in out.parent.iterdir()] == ["curves.csv"]  # no temporary file left behind


def test_cli_compare_prints_the_table(tmp_path, capsys):
    test = save_trace(informative_trace("entropy", seed=1, split="test"), tmp_path / "test")
    val = save_trace(informative_trace("dr", seed=2, split="validation"), tmp_path / "val")
    assert run_cli(["compare", "--trace", str(test), "--val-trace", str(val), "--speedups", "1.5,2"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert header.startswith("accuracy") and "400 samples, 6 layers" in header
    assert "λ = 8, chosen by AUC on the validation trace" in out
    table = out.split("\n\n")[1].splitlines()
    assert table[0].split()[:4] == ["policy", "1.5x", "2x", "AUC"]
    end = table[0].index("AUC 1-3x") + len("AUC 1-3x")  # right-aligned: every value ends under its header
    for line in table[1:]:
        assert line[end - 1] in "0123456789-" and line[end:end + 1] in ("", " "), line
    assert len(table) == 1 + len(POLICIES)
    assert "per-layer accuracy" in out and "oracle" in out
    vs = out.split("\n\n")[3].splitlines()  # under the matched table: every policy against the entropy baseline
    assert vs[0].startswith("vs DeeBERT (entropy) at the same speed-up, paired bootstrap 95 % CI, n = 400")
    assert vs[2].split() == ["policy", "1.5x", "2x"] and len(vs) == 3 + len(POLICIES) - 2  # no baseline, no oracle
    cell = r"[+-]\d+\.\d\d \[[+-]\d+\.\d\d, [+-]\d+\.\d\d\] \([+-]\d+\)"
    assert re.fullmatch(rf"DE3-BERT \(EDR\), λ=8 +{cell} +{cell}", vs[3]), vs[3]


def test_cli_user_errors(tmp_path):
    with pytest.raises(DE3Error, match="not found"):
        run_cli(["compare", "--trace", str(tmp_path / "nope")])
    folder = save_trace(random_trace(), tmp_path / "trace")
    for argv in (["compare", "--trace", str(folder), "--speedups", "0.5"],
                 ["compare", "--trace", str(folder), "--max-speedup", "1"],
                 ["compare", "--trace", str(folder), "--speedups", "1.5,fast"],
                 ["curves", "--trace", str(folder), "--out", str(tmp_path / "c.csv"), "--lambdas", "nan"]):
        with pytest.raises(SystemExit):  # argparse refuses a value outside its declared range (analysis.validate)
            run_cli(argv)
    with pytest.raises(CurveError, match="speed-ups"):  # the API reads the same declaration
        compare(load_trace(folder), None, speedups=(0.5,))
    with pytest.raises(CurveError, match="max speed-up"):
        compare(load_trace(folder), None, max_speedup=1.0)
    with pytest.raises(CurveError, match="folder"):
        run_cli(["curves", "--trace", str(folder), "--out", str(tmp_path)])


# ---------------------------------------------------------------------------------------------------------
# Every policy against the entropy baseline at matched speed-ups (one function: compare, the study, the app)
# ---------------------------------------------------------------------------------------------------------


def test_matched_vs_baseline_is_the_paired_bootstrap_of_the_matched_settings():
    trace = random_trace(n=250, num_layers=5, k=3, seed=8)
    curves = sweep(trace, default_grid(trace, lambdas=(2.0,), n_quantiles=30))
    vs = matched_vs_baseline(trace, curves, (1.5, 2, 3), lambda_=2.0, n_boot=200, seed=3)
    assert list(vs.columns) == list(VS_BASELINE_COLUMNS)
    assert vs["policy"].unique().tolist() == ["de3", "dr", "maxprob", "pabee", "pcee", "static"]  # POLICIES order
    assert (vs["baseline"] == "entropy").all() and (vs["n"] == 250).all() and (vs["n_boot"] == 200).all()
    unreachable = 0
    for r in vs.to_dict("records"):
        mine = best_setting_at(curves, r["policy"], r["speedup"], lambda_=2.0 if r["policy"] == "de3" else None)
        base = best_setting_at(curves, "entropy", r["speedup"])
        if mine is None:  # e.g. PABEE: leaves at layer 2 at the earliest, 2.5x at most
            assert curves.loc[curves.policy == r["policy"], "speedup"].max() < r["speedup"]
            assert r["verdict"] == "unreachable" and math.isnan(r["diff"]) and math.isnan(r["diff_samples"])
            unreachable += 1
            continue
        b = paired_bootstrap(trace, mine, base, n_boot=200, seed=3)
        assert (r["diff"], r["low"], r["high"]) == (b["diff"], b["low"], b["high"])
        assert r["setting"] == mine.describe() and r["baseline_setting"] == base.describe()
        right = [(decide_exits(trace.wide, p).pred == trace.labels).sum() for p in (mine, base)]
        assert r["diff_samples"] == right[0] - right[1] == b["diff_samples"]
        assert r["diff"] * 250 == pytest.approx(r["diff_samples"])  # accuracy: the gap is diff x N samples
        assert r["metric"] - r["baseline_metric"] == pytest.approx(r["diff"])
        expected = "ahead" if r["low"] > 0 else "behind" if r["high"] < 0 else "no significant difference"
        assert r["verdict"] == expected
    assert unreachable >= 1  # PABEE at 3x at least
    static = vs[(vs.policy == "static") & (vs.speedup == 1.5)].iloc[0]  # 5 / 3 >= 1.5: layer 3 is the best static
    assert static["setting"] == "static exit (layer=3)"


def test_matched_vs_baseline_options_and_refusals():
    trace = random_trace(n=120, seed=9)
    curves = sweep(trace, default_grid(trace, lambdas=(1.0,), n_quantiles=20))
    one = matched_vs_baseline(trace, curves, (2,), baseline="static", policies=("de3", "entropy"), n_boot=50)
    assert one["policy"].tolist() == ["de3", "entropy"] and (one["baseline"] == "static").all()
    with pytest.raises(CurveError, match="baseline"):
        matched_vs_baseline(trace, curves, baseline="oracle")
    with pytest.raises(CurveError, match="no rows"):
        matched_vs_baseline(trace, curves, lambda_=4.0)
    with pytest.raises(CurveError, match="n_boot"):
        matched_vs_baseline(trace, curves, n_boot=0)


def test_comparison_carries_the_oracle_frontier_and_the_statistics():
    test = random_trace(n=200, seed=2)
    result = compare(test, speedups=(1.5, 2), n_boot=100)
    front = oracle_frontier(test)
    assert result.oracle_front.equals(front) and result.oracle_front.attrs["bound"]
    oracle_row = result.table.set_index("policy").loc["oracle"]
    assert oracle_row["1.5x"] == best_metric_at(front, 1.5) and oracle_row["2x"] == best_metric_at(front, 2.0)
    assert result.vs_baseline.equals(matched_vs_baseline(test, result.curves, (1.5, 2), n_boot=100))
    text = result.format()
    assert "paired bootstrap 95 % CI, n = 200 (100 resamples)" in text and "oracle frontier" not in text.splitlines()[0]


# ---------------------------------------------------------------------------------------------------------
# A trace without labels: costs yes, metric NaN, and whatever needs labels refuses
# ---------------------------------------------------------------------------------------------------------


def unlabelled(trace):
    """``trace`` as a prediction-only trace: label -1, nothing correct, ``meta["labelled"]`` False."""
    trace.table["label"] = -1
    trace.table["correct"] = False
    trace.samples["label"] = -1
    trace.meta["labelled"] = False
    return trace


def test_unlabelled_trace_has_costs_but_no_metric():
    labelled = random_trace(n=80, num_layers=5, k=3, seed=11)
    bare = unlabelled(trace_from_outputs(*_outputs(80, 5, 3, 11)))
    grid = default_grid(bare, lambdas=(0.5,), n_quantiles=10)
    assert "oracle" not in {p.name for p in grid}  # it needs the labels
    ours, theirs = sweep(bare, grid), sweep(labelled, grid)
    assert ours["metric"].isna().all() and theirs["metric"].notna().all()
    for col in ("speedup", "saved_fraction", "mean_exit_layer", "flops_ratio"):
        assert ours[col].tolist() == theirs[col].tolist(), col
    policy = ExitPolicy("de3", tau=0.2, lambda_=0.5)
    one, other = evaluate_policy(bare, policy), evaluate_policy(labelled, policy)
    assert math.isnan(one["metric"])
    assert {k: v for k, v in one.items() if k != "metric"} == {k: v for k, v in other.items() if k != "metric"}
    layers = per_layer_metric(bare)
    assert layers["metric"].isna().all() and layers["speedup"].tolist() == per_layer_metric(labelled)["speedup"].tolist()


def _outputs(n, num_layers, k, seed):
    """The logits, distances and labels ``random_trace`` builds, so a labelled twin can be unlabelled."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    scale = np.linspace(0.3, 3.0, num_layers)[:, None, None]
    logits = rng.normal(size=(num_layers, n, k)) * scale
    logits[:, np.arange(n), labels] += np.linspace(0.0, 2.0, num_layers)[:, None]
    return logits, rng.uniform(0.2, 2.0, size=(num_layers, n, k)), np.zeros(n)


@pytest.mark.parametrize("what, call", [
    ("the oracle", lambda t: evaluate_policy(t, ExitPolicy("oracle"))),
    ("the oracle", lambda t: sweep(t, [ExitPolicy("static", layer=1), ExitPolicy("oracle")])),
    ("the oracle frontier", oracle_frontier),
    ("a comparison", compare),
    ("a paired bootstrap", lambda t: paired_bootstrap(t, ExitPolicy("static", layer=1), ExitPolicy("static", layer=2))),
    ("a paired bootstrap against the baseline", lambda t: matched_vs_baseline(t, sweep(t, default_grid(t, lambdas=(1.0,))))),
    ("choosing λ", choose_lambda),
])
def test_unlabelled_trace_is_refused_where_labels_are_needed(what, call):
    bare = unlabelled(random_trace(n=40, seed=12))
    bare.meta["split"] = "validation"
    with pytest.raises(CurveError, match=f"has no labels: {re.escape(what)} needs labelled data"):
        call(bare)
