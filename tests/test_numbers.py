"""Numbers a user gives (issue "Reliability, second pass", part A): each named case of the audit, one test.

Every number is checked against one declaration (``analysis/validate.py``): command-line flags at parse time,
config fields in ``from_dict`` / ``__post_init__``, ``ExitPolicy`` and ``ProjectionConfig`` on construction.
Training stops at the first non-finite loss and never saves non-finite weights; the sweep's memory is O(S·K),
not O(S·K²). ``tests/test_fuzz_inputs.py`` throws bad values at every flag and URL number.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from analysis import validate
from analysis.commands import main
from analysis.config import ModelConfig, TrainConfig
from analysis.compare import _bootstrap
from analysis.cost import CostModel
from analysis.curves import default_grid, evaluate_policy, per_layer_metric, sweep
from analysis.data import load_data
from analysis.errors import DE3Error
from analysis.metrics import compute_metric, confusion_counts, margins, score, score_margins
from analysis.policies import ExitPolicy, decide_exits
from analysis.projection import ProjectionConfig, ProjectionError
from analysis.training import TrainingDiverged, resume_dir, train
from tests.test_bad_inputs import assert_untouched, snapshot
from tests.test_policies import random_trace


def run_cli(argv, capsys) -> str:
    """``main(argv)`` must exit 2 with one short ``error:`` line and no traceback; returns that line."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, lines
    assert len(lines[0]) < 400, lines[0]
    return lines[0]


# ---- command-line flags: refused at parse time, naming the flag and its range ---------------------------------

FLAG_CASES = {
    "train --batch-size 0": (["train", "--data", "bbc", "--out", "o", "--batch-size", "0"],
                             ("--batch-size", "[1, 65536]", "'0'")),
    "train --batch-size -1": (["train", "--data", "bbc", "--out", "o", "--batch-size", "-1"], ("--batch-size", "'-1'")),
    "evaluate --batch-size 0": (["evaluate", "--checkpoint", "c", "--batch-size", "0"], ("--batch-size", "[1, 65536]")),
    "trace --batch-size -1": (["trace", "--checkpoint", "c", "--out", "t", "--batch-size", "-1"], ("--batch-size",)),
    "trace --chunk-size 0": (["trace", "--checkpoint", "c", "--out", "t", "--chunk-size", "0"], ("--chunk-size", "'0'")),
    "train --seed -1": (["train", "--data", "bbc", "--out", "o", "--seed", "-1"], ("--seed", "[0, 4294967295]")),
    "curves --lambdas -1": (["curves", "--trace", "t", "--out", "c.csv", "--lambdas", "-1"], ("--lambdas", ">= 0", "'-1'")),
    "curves --lambdas nan": (["curves", "--trace", "t", "--out", "c.csv", "--lambdas", "1,nan"],
                             ("--lambdas", "'nan'", "value 2 of 2")),
    "train --lr-heads inf": (["train", "--data", "bbc", "--out", "o", "--lr-heads", "inf"], ("--lr-heads", "(0, 1]", "'inf'")),
    "trace --max-samples -5": (["trace", "--checkpoint", "c", "--out", "t", "--max-samples", "-5"],
                               ("--max-samples", "[1, 1000000000]", "'-5'")),
    "compare --speedups 0.5": (["compare", "--trace", "t", "--speedups", "0.5"], ("--speedups", ">= 1")),
    "an unknown flag": (["trace", "--checkpoint", "c", "--out", "t", "--bogus", "1"], ("unrecognized arguments: --bogus",)),
}


@pytest.mark.parametrize("case", list(FLAG_CASES))
def test_flag_out_of_range_is_one_line(case, tmp_path, monkeypatch, capsys):
    argv, needles = FLAG_CASES[case]
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    line = run_cli(argv, capsys)
    assert all(n in line for n in needles), line
    assert "--help" in line  # and where to read what the flag takes
    assert_untouched(before, snapshot(tmp_path))


def test_a_huge_value_gives_a_short_line(capsys):
    line = run_cli(["train", "--data", "bbc", "--out", "o", "--epochs", "7" * 5000], capsys)
    assert "--epochs" in line and "..." in line and len(line) < 200


# ---- config files: the same declarations, named with the file ------------------------------------------------


@pytest.mark.parametrize("section, field, value, needles", [
    ("model", "dropout", 1.5, ("ModelConfig field dropout", "[0, 1) or null", "1.5")),
    ("train", "weight_decay", math.nan, ("TrainConfig field weight_decay", "[0, 1]", "nan")),
    ("train", "lr_heads", math.inf, ("TrainConfig field lr_heads", "(0, 1]", "inf")),
    ("train", "batch_size", 0, ("TrainConfig field batch_size", "[1, 65536]")),
    ("train", "epochs", "x" * 5000, ("TrainConfig field epochs", "must be an integer", "...")),
])
def test_config_file_value_out_of_range(section, field, value, needles, tiny_csv, tmp_path, capsys):
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({section: {field: value}}))  # JSON NaN / Infinity, as Python writes them
    out = tmp_path / "out"
    line = run_cli(["train", "--data", tiny_csv, "--config", config, "--out", out, "--no-progress"], capsys)
    assert str(config) in line and all(n in line for n in needles), line
    assert not out.exists()


def test_every_config_number_is_declared_and_checked():
    for cls, table in ((ModelConfig, validate.MODEL), (TrainConfig, validate.TRAIN)):
        numeric = {f.name for f in dataclasses.fields(cls) if "int" in str(f.type) or "float" in str(f.type)}
        assert numeric == set(table), f"{cls.__name__}: numbers without a declared range {numeric - set(table)}"
        for name in table:
            for bad in (math.nan, math.inf, -1e30, "1"):
                with pytest.raises(DE3Error, match=f"{cls.__name__} field {name} must be"):
                    cls.from_dict({name: bad}, source="cfg.json")
                with pytest.raises(DE3Error, match=f"{cls.__name__} field {name} must be"):
                    cls(**{name: bad})


def test_defaults_and_shipped_settings_pass():
    ModelConfig(), TrainConfig(), ProjectionConfig(), ExitPolicy("de3")
    for path in Path(__file__).resolve().parents[1].glob("pretrained/*/train_config.json"):
        TrainConfig.from_dict(json.loads(path.read_text()), source=str(path))
        ModelConfig.from_dict(json.loads((path.parent / "config.json").read_text())["de3"], source=str(path.parent))


# ---- the API: ExitPolicy, ProjectionConfig ---------------------------------------------------------------------


def test_exit_policy_refuses_nan_and_keeps_infinity():
    for kwargs in (dict(tau=math.nan), dict(lambda_=math.nan), dict(lambda_=-1.0), dict(lambda_=math.inf),
                   dict(patience=0), dict(patience=2.5), dict(layer=0), dict(layer=True), dict(tau="0.5")):
        with pytest.raises(DE3Error, match="ExitPolicy field"):
            ExitPolicy("pcee", **kwargs)
    trace = random_trace(seed=3)
    assert (decide_exits(trace.wide, ExitPolicy("de3", tau=math.inf)).exit_layer == 1).all()  # everyone at layer 1
    assert (decide_exits(trace.wide, ExitPolicy("maxprob", tau=-math.inf)).exit_layer == 1).all()
    assert ExitPolicy("entropy", tau=np.float32(0.5)).tau == np.float32(0.5)  # numpy numbers are numbers


@pytest.mark.parametrize("kwargs", [dict(n_neighbors=2.5), dict(min_dist=math.nan), dict(seed=-1), dict(max_points=0),
                                    dict(n_neighbors=True)])
def test_projection_config_numbers(kwargs):
    with pytest.raises(ProjectionError, match="ProjectionConfig field"):
        ProjectionConfig(**kwargs)


# ---- training: a non-finite loss stops it; nothing non-finite is saved ----------------------------------------


def _bypass(cfg: TrainConfig, **values) -> TrainConfig:
    """A config with values its validation refuses: how the audit's ``--lr-heads inf`` reached training."""
    for key, value in values.items():
        object.__setattr__(cfg, key, value)
    return cfg


@pytest.fixture
def tiny_run(tiny_backbone, tiny_csv):
    data = load_data(str(tiny_csv))
    return ModelConfig(backbone=tiny_backbone, label_names=tuple(data.label_names), max_length=16), data


@pytest.mark.parametrize("values, max_steps, save_every, needle", [
    (dict(lr_heads=math.inf), None, 0, "training diverged at step 2 (epoch 1): loss nan"),  # step 1 broke the weights
    (dict(weight_decay=math.nan), None, 0, "training diverged at step 2 (epoch 1): loss nan"),
    (dict(lr_heads=math.inf), None, 1, "weights became non-finite by step 1 (heads.0."),  # the state save after step 1
    (dict(lr_heads=math.inf), 1, 0, "not saving a checkpoint in"),  # no step 2: caught before the checkpoint save
])
def test_training_stops_at_a_non_finite_loss(values, max_steps, save_every, needle, tiny_run, tmp_path):
    model_cfg, data = tiny_run
    cfg = _bypass(TrainConfig(epochs=1, batch_size=8, max_steps=max_steps, save_every=save_every), **values)
    out = tmp_path / "out"
    with pytest.raises(TrainingDiverged) as info:
        train(model_cfg, cfg, data, out, device="cpu", progress=False, log=lambda *_: None)
    message = str(info.value)
    assert needle in message and "learning rate" in message and "weight_decay" in message, message
    assert f"nothing was written to {out}" in message and "\n" not in message and len(message) < 500
    assert not out.exists() and not resume_dir(out).exists()  # no checkpoint, no resumable state


def test_cli_divergence_exits_2_and_leaves_out_unchanged(tiny_run, tiny_backbone, tiny_csv, tmp_path, monkeypatch,
                                                         capsys):
    from analysis import training

    model_cfg, data = tiny_run
    out = tmp_path / "out"
    train(model_cfg, TrainConfig(epochs=1, batch_size=8, max_steps=1), data, out, device="cpu", progress=False,
          log=lambda *_: None)  # an existing, good checkpoint as --out
    before = snapshot(tmp_path)
    forward = training._LossAndEmbeddings.forward

    def nan_loss(self, labels, **inputs):
        loss, emb, ce, dar = forward(self, labels, **inputs)
        return loss * float("nan"), emb, ce, dar  # e.g. a bad batch

    monkeypatch.setattr(training._LossAndEmbeddings, "forward", nan_loss)
    line = run_cli(["train", "--data", tiny_csv, "--backbone", tiny_backbone, "--out", out, "--max-steps", "2",
                    "--max-length", "16", "--no-progress"], capsys)
    assert "training diverged at step 1 (epoch 1): loss nan" in line and "bad data" in line, line
    assert_untouched(before, snapshot(tmp_path))


def test_max_steps_says_that_it_sets_the_length(tiny_run, tmp_path, capsys):
    model_cfg, data = tiny_run
    train(model_cfg, TrainConfig(epochs=3, batch_size=8, max_steps=2), data, tmp_path / "o", device="cpu", progress=False)
    printed = capsys.readouterr().out
    assert "note: max_steps=2 sets this run's length" in printed and "epochs=3 is not used" in printed
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "N alone sets the run's length" in help_text and "--epochs, which is then not used" in help_text


# ---- curves on a 5,000-class trace: bounded memory -------------------------------------------------------------


def _many_class_trace(n: int = 300, num_layers: int = 4, k: int = 5000, seed: int = 0):
    """What the sweep reads of a trace, for a 5,000-class model (a real one would hold 10,000 prob/dist columns)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    pred = np.where(rng.random((n, num_layers)) < np.linspace(0.3, 0.9, num_layers), labels[:, None],
                    rng.integers(0, k, (n, num_layers)))
    entropy = rng.random((n, num_layers)).astype(np.float32)
    wide = {"pred": pred, "correct": pred == labels[:, None], "entropy": entropy,
            "dr": rng.random((n, num_layers)).astype(np.float32), "max_prob": (1 - entropy / 2).astype(np.float32)}
    cost = CostModel(hidden=384, intermediate=1536, num_layers=num_layers, num_labels=k, proto_dim=384)
    return SimpleNamespace(wide=wide, labels=labels, num_labels=k, num_layers=num_layers, num_samples=n,
                           metric="accuracy", n_tokens=np.full(n, 16, dtype=np.int32), cost=cost,
                           meta={"labelled": True}, labelled=True, folder=None)


def test_sweep_of_5000_classes_stays_small():
    trace = _many_class_trace()
    grid = default_grid(trace)
    tracemalloc.start()
    try:
        curves = sweep(trace, grid)
        per_layer = per_layer_metric(trace)
        boot = _bootstrap(trace.labels, np.stack([trace.wide["pred"][:, 0], trace.wide["pred"][:, -1]], axis=1),
                          "accuracy", trace.num_labels, 200, 0, 0.95)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MiB"  # S x K x K counts would be ~{len(grid)} x 200 MB
    for policy, row in list(zip(grid, curves.to_dict("records")))[::25]:  # and the numbers are the plain ones
        answers = decide_exits(trace.wide, policy).pred
        assert row["metric"] == pytest.approx(compute_metric("accuracy", trace.labels, answers), abs=1e-12)
        assert row["metric"] == pytest.approx(evaluate_policy(trace, policy)["metric"], abs=1e-12)
    assert per_layer["metric"].tolist() == pytest.approx((trace.wide["correct"]).mean(0).tolist())
    assert boot["diff"] == pytest.approx(trace.wide["correct"][:, 0].mean() - trace.wide["correct"][:, -1].mean())


def test_scores_from_margins_equal_scores_from_confusion():
    rng = np.random.default_rng(1)
    for metric, k in (("accuracy", 4), ("f1", 2), ("mcc", 3), ("mcc", 2)):
        labels, answers = rng.integers(0, k, 60), rng.integers(0, k, (60, 5))
        assert score_margins(metric, margins(labels, answers, k)).tolist() == \
            score(metric, confusion_counts(labels, answers, k)).tolist()  # exactly: the same integer sums
