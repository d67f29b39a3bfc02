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
    assert {"trace_overhead", "early_exit", "sweep_seconds", "policy", "targets", "num_samples", "num_layers",
            "exit_work", "attention", "dtype", "machine", "versions"} <= set(saved)
    assert saved["attention"] == "sdpa" and saved["dtype"] == "float32" and saved["compile"] is None
    assert saved["trace_overhead"]["ratio"] > 0 and saved["trace_overhead"]["includes"]
    assert saved["exit_work"]["layer_ms"] > 0 and saved["exit_work"]["samples"] == saved["num_samples"]
    assert set(saved["early_exit"]) == {"1", "8"}
    for r in saved["early_exit"].values():
        assert {"layer_speedup", "wall_speedup", "efficiency", "agreement", "engine_seconds", "full_seconds"} <= set(r)
        assert r["agreement"] == r["exit_agreement"] == r["answer_agreement"] == 1.0
        assert r["efficiency"] == pytest.approx(r["wall_speedup"] / r["layer_speedup"])
        assert r["layers_computed"] == pytest.approx(saved["num_samples"] * saved["num_layers"] / r["layer_speedup"])
        assert set(r["ms_per_sample"]) == {"full", "engine"} and min(r["ms_per_sample"].values()) > 0
        assert "compiled" not in r
    assert saved["sweep_seconds"]["one_policy"] > 0
    names = [t["name"] for t in saved["targets"]]
    assert names == ["trace_overhead", "efficiency_b1", "agreement_b1", "efficiency_b8", "agreement_b8",
                     "sweep_all_policies", "sweep_one_policy"]
    assert all(t["pass"] is True for t in saved["targets"] if t["name"].startswith("agreement"))


def test_compiled_rows(tiny_checkpoint, tiny_csv, tmp_path):
    """--compile: the engine and the full model each under torch.compile, side by side with eager, the same exits.
    The "eager" backend checks the graphs (dynamic batch and length) without minutes of code generation."""
    from analysis.commands.bench import format_report, format_summary

    result = run_bench(tiny_checkpoint, str(tiny_csv), out=None, device="cpu", compile="eager",
                       **{**SMALL, "max_samples": 12, "batch_sizes": (1, 4)})
    assert result["compile"]["backend"] == "eager" and result["compile"]["skipped"] is None
    assert set(result["compile"]["warmup_seconds"]) == {"1", "4"}
    for r in result["early_exit"].values():
        c = r["compiled"]
        assert c["agreement"] == 1.0 and c["layer_speedup"] == r["layer_speedup"]
        assert c["efficiency"] == pytest.approx(c["wall_speedup"] / c["layer_speedup"])
        assert set(r["ms_per_sample"]) == {"full", "engine", "full_compiled", "engine_compiled"}
        assert r["fastest_full"] in ("full", "full_compiled") and set(r["vs_fastest_full"]) == {"engine", "engine_compiled"}
    names = [t["name"] for t in result["targets"]]
    assert names[5:9] == ["efficiency_compiled_b1", "agreement_compiled_b1", "efficiency_compiled_b4",
                          "agreement_compiled_b4"]
    assert [t["target"] for t in result["targets"] if t["name"].startswith("efficiency_compiled")] == [0.9, 0.9]
    assert "batch   1 compiled:" in format_summary(result)
    assert "| 4 | compiled |" in format_report([result], "python -m analysis bench ...")


def test_compile_unavailable_is_one_line_and_no_rows(tiny_checkpoint, tiny_csv, monkeypatch):
    """A machine where torch.compile fails at the first call (no C++ compiler, ...): the bench says so and times
    the eager rows."""
    from analysis.commands import bench

    def broken(fn, **kwargs):
        def call(*args, **kw):
            raise RuntimeError("InductorError: no working C++ compiler found\nsecond line")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    result = run_bench(tiny_checkpoint, str(tiny_csv), out=None, device="cpu", compile=True,
                       **{**SMALL, "max_samples": 8, "batch_sizes": (1,)})
    assert "compiled" not in result["early_exit"]["1"] and result["early_exit"]["1"]["agreement"] == 1.0
    skipped = result["compile"]["skipped"]
    assert skipped.startswith("torch.compile failed here (RuntimeError: InductorError: no working C++ compiler") and "\n" not in skipped
    assert not any("compiled" in t["name"] for t in result["targets"])
    summary = bench.format_summary(result)
    assert sum("compiled rows skipped: torch.compile failed here" in line for line in summary.splitlines()) == 1


def test_bench_cli_prints_targets_and_writes_the_report(tiny_checkpoint, tiny_csv, tmp_path, capsys, monkeypatch):
    from analysis.commands import bench

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    report = tmp_path / "bench.md"
    args = parser.parse_args(["bench", "--checkpoint", str(tiny_checkpoint), "--checkpoint", str(tiny_checkpoint),
                              "--data", str(tiny_csv), "--out", str(tmp_path / "b.json"), "--max-samples", "8",
                              "--repeats", "1", "--device", "cpu", "--batch-sizes", "1,4", "--report", str(report)])
    assert args.batch_sizes == (1, 4) and not args.compile and args.dtype == "float32"
    real = bench.run_bench
    monkeypatch.setattr(bench, "run_bench", lambda *a, **kw: real(*a, **kw, trace_batch_size=4, sweep_samples=200,
                                                                  sweep_layers=4))
    assert args.handler(args) == 0
    text = capsys.readouterr().out
    assert "trace_overhead" in text and "agreement_b1" in text and ("PASS" in text or "FAIL" in text)
    assert "MISS" not in text and "per-layer exit work at batch 1:" in text
    saved = json.loads((tmp_path / "b.json").read_text())
    assert [set(r["early_exit"]) for r in saved["runs"]] == [{"1", "4"}, {"1", "4"}]  # two checkpoints: both runs
    md = report.read_text()
    assert md.startswith("# Early-exit benchmark") and md.count(f"## `{tiny_checkpoint}`") == 2
    assert "GPU**: unmeasured (no GPU on this machine)" in md and "--batch-sizes 1,4" in md
    assert "--device cuda --dtype bfloat16 --batch-sizes 1,32,256" in md and "--compile" in md
    assert "| 1 | eager |" in md and "| target | value | bound | status |" in md


def test_timing_waits_for_the_device_only_on_cuda(monkeypatch):
    """The clock brackets a CUDA device's queued work with torch.cuda.synchronize, and never calls it on the CPU."""
    from analysis.commands import bench

    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    batches = [(np.array([i]), {}) for i in range(4)]
    bench._interleaved({"a": lambda idx, inputs: None}, batches, 2, torch.device("cpu"))
    assert calls == []
    bench._interleaved({"a": lambda idx, inputs: None, "b": lambda idx, inputs: None}, batches, 2, torch.device("cuda"))
    assert len(calls) == 2 * 2 * 2 * 1 and all(d == torch.device("cuda") for d in calls)  # 2 per block, 2 variants, 2 reps


def test_threshold_for_speedup_hits_the_target():
    trace = synthetic_trace(2000, 6, seed=1)
    policy = threshold_for_speedup(trace.wide, ExitPolicy("de3", lambda_=1.0), 2.0)
    speedup = 6 / decide_exits(trace.wide, policy).exit_layer.mean()
    assert speedup == pytest.approx(2.0, rel=0.02)
    edr_values = threshold_values(trace.wide, policy)
    assert np.abs(edr_values - policy.tau).min() > 0  # moved off the recorded values by safe_threshold


def test_check_targets_marks_pass_and_fail():
    result = {"trace_overhead": {"ratio": 1.06},
              "early_exit": {"1": {"efficiency": 0.96, "agreement": 1.0},
                             "32": {"efficiency": 0.94, "agreement": 0.99,
                                    "compiled": {"efficiency": 0.91, "agreement": 1.0}}},
              "sweep_seconds": {"all_policies": None, "one_policy": 0.005}}
    verdict = {t["name"]: t["pass"] for t in check_targets(result)}
    assert verdict == {"trace_overhead": False, "efficiency_b1": True, "agreement_b1": True, "efficiency_b32": False,
                       "agreement_b32": False, "efficiency_compiled_b32": True, "agreement_compiled_b32": True,
                       "sweep_all_policies": None, "sweep_one_policy": True}
