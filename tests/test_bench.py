"""The benchmark on a tiny trained checkpoint: every key is there, the engine agrees with the simulation."""

import argparse
import json

import numpy as np
import pytest
import torch

from analysis.commands.bench import check_targets, register, run_bench, synthetic_trace, threshold_for_speedup
from analysis.engine import threshold_values
from analysis.policies import ExitPolicy, decide_exits

SMALL = dict(max_samples=24, batch_sizes=(1, 8), repeats=1, trace_batch_size=8, sweep_samples=300, sweep_layers=4)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is much faster on a shared machine
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tiny_backbone, tiny_csv):
    from analysis.commands import main

    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    code = main(["train", "--data", str(tiny_csv), "--backbone", tiny_backbone, "--max-steps", "2", "--max-length", "16",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    return out


def test_run_bench_writes_every_key(tiny_checkpoint, tiny_csv, tmp_path):
    out = tmp_path / "bench.json"
    result = run_bench(tiny_checkpoint, str(tiny_csv), out=out, device="cpu", **SMALL)
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))  # what is returned is what is written
    assert not list(tmp_path.glob(".bench.json.tmp*"))  # written beside, then renamed
    assert {"trace_overhead", "early_exit", "sweep_seconds", "policy", "targets", "num_samples", "num_layers"} <= set(saved)
    assert saved["trace_overhead"]["ratio"] > 0 and saved["trace_overhead"]["includes"]
    assert set(saved["early_exit"]) == {"1", "8"}
    for r in saved["early_exit"].values():
        assert {"layer_speedup", "wall_speedup", "efficiency", "agreement", "engine_seconds", "full_seconds"} <= set(r)
        assert r["agreement"] == r["exit_agreement"] == r["answer_agreement"] == 1.0
        assert r["efficiency"] == pytest.approx(r["wall_speedup"] / r["layer_speedup"])
        assert r["layers_computed"] == pytest.approx(saved["num_samples"] * saved["num_layers"] / r["layer_speedup"])
    assert saved["sweep_seconds"]["one_policy"] > 0
    names = [t["name"] for t in saved["targets"]]
    assert names == ["trace_overhead", "efficiency_b1", "agreement_b1", "efficiency_b8", "agreement_b8",
                     "sweep_all_policies", "sweep_one_policy"]
    assert all(t["pass"] is True for t in saved["targets"] if t["name"].startswith("agreement"))


def test_bench_cli_prints_targets(tiny_checkpoint, tiny_csv, tmp_path, capsys, monkeypatch):
    from analysis.commands import bench

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--checkpoint", str(tiny_checkpoint), "--data", str(tiny_csv), "--out",
                              str(tmp_path / "b.json"), "--max-samples", "12", "--repeats", "1", "--device", "cpu"])
    real = bench.run_bench
    monkeypatch.setattr(bench, "run_bench", lambda *a, **kw: real(*a, **kw, batch_sizes=(1, 4), trace_batch_size=4,
                                                                  sweep_samples=200, sweep_layers=4))
    assert args.handler(args) == 0
    text = capsys.readouterr().out
    assert "trace_overhead" in text and "agreement_b1" in text and ("PASS" in text or "MISS" in text)
    assert (tmp_path / "b.json").is_file()


def test_threshold_for_speedup_hits_the_target():
    trace = synthetic_trace(2000, 6, seed=1)
    policy = threshold_for_speedup(trace.wide, ExitPolicy("de3", lambda_=1.0), 2.0)
    speedup = 6 / decide_exits(trace.wide, policy).exit_layer.mean()
    assert speedup == pytest.approx(2.0, rel=0.02)
    edr_values = threshold_values(trace.wide, policy)
    assert np.abs(edr_values - policy.tau).min() > 0  # moved off the recorded values by safe_threshold


def test_check_targets_marks_pass_and_miss():
    result = {"trace_overhead": {"ratio": 1.2},
              "early_exit": {"1": {"efficiency": 0.9, "agreement": 1.0}, "32": {"efficiency": 0.7, "agreement": 0.99}},
              "sweep_seconds": {"all_policies": None, "one_policy": 0.005}}
    verdict = {t["name"]: t["pass"] for t in check_targets(result)}
    assert verdict == {"trace_overhead": False, "efficiency_b1": True, "agreement_b1": True, "efficiency_b32": False,
                       "agreement_b32": False, "sweep_all_policies": None, "sweep_one_policy": True}
