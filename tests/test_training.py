"""Training smoke tests on a tiny random BERT, the CLI's contract, and the offline default backbone."""

import json
import subprocess
import sys

import numpy as np
import pytest

from analysis.commands import main
from analysis.config import ModelConfig, TrainConfig
from analysis.data import load_data
from analysis.model import DE3Bert
from analysis.training import train

from .conftest import REPO


def test_training_learns_and_saves_best_checkpoint(tiny_backbone, tiny_csv, tmp_path, capsys):
    data = load_data(str(tiny_csv))
    out = tmp_path / "ckpt"
    result = train(ModelConfig(backbone=tiny_backbone, label_names=tuple(data.label_names), max_length=16),
                   TrainConfig(epochs=3, batch_size=8, lr_backbone=1e-3, lr_heads=5e-3, warmup_ratio=0.0),
                   data, out, device="cpu", progress=False)
    printed = capsys.readouterr().out
    assert printed.count("validation accuracy per exit") == 3  # every epoch reports every exit
    assert len(result.history) == 3 and len(result.history[0]["validation"]["metric"]) == 3
    assert result.test is not None and max(result.test.accuracy) >= 0.75  # the toy task is learnable (chance: 0.5)
    model = DE3Bert.from_pretrained(out)
    assert model.bank.is_fitted
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best_epoch"] == result.best_epoch and metrics["test"]["accuracy"] == result.test.accuracy
    assert json.loads((out / "data.json").read_text())["label_names"] == ["negative", "positive"]


def test_training_is_seeded(tiny_backbone, tiny_csv, tmp_path):
    data = load_data(str(tiny_csv))
    cfg = ModelConfig(backbone=tiny_backbone, label_names=tuple(data.label_names), max_length=16)
    runs = [train(cfg, TrainConfig(epochs=1, batch_size=8, max_steps=4), data, tmp_path / str(i), device="cpu", progress=False,
                  log=lambda *_: None) for i in range(2)]
    a, b = (DE3Bert.from_pretrained(r.checkpoint) for r in runs)
    assert all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_cli_trains_header_csv_and_headerless_tsv_by_index(tiny_backbone, tiny_csv, tmp_path):
    rows = tiny_csv.read_text().splitlines()[1:]
    tsv = tmp_path / "noheader.tsv"
    tsv.write_text("\n".join(f"{r.rsplit(',', 1)[1]}\t{r.rsplit(',', 1)[0]}" for r in rows) + "\n")  # label first
    common = ["--backbone", tiny_backbone, "--max-steps", "2", "--max-length", "16", "--no-progress"]
    assert main(["train", "--data", str(tiny_csv), "--text-column", "text", "--label-column", "label",
                 "--out", str(tmp_path / "a"), *common]) == 0
    assert main(["train", "--data", str(tsv), "--no-header", "--text-column", "1", "--label-column", "0",
                 "--out", str(tmp_path / "b"), *common]) == 0
    for name in "ab":
        assert DE3Bert.from_pretrained(tmp_path / name).config.label_names == ("negative", "positive")


def test_cli_config_file_and_flags(tiny_backbone, tiny_csv, tmp_path):
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"model": {"dar_form": "ratio", "max_length": 16}, "train": {"batch_size": 4, "epochs": 1}}))
    assert main(["train", "--data", str(tiny_csv), "--backbone", tiny_backbone, "--config", str(config), "--alpha", "0.5",
                 "--max-steps", "2", "--out", str(tmp_path / "c"), "--no-progress"]) == 0
    model = DE3Bert.from_pretrained(tmp_path / "c")
    assert model.config.dar_form == "ratio" and model.config.alpha == 0.5
    assert json.loads((tmp_path / "c" / "train_config.json").read_text())["batch_size"] == 4


def test_cli_evaluate(tiny_backbone, tiny_csv, tmp_path, capsys):
    out = tmp_path / "e"
    main(["train", "--data", str(tiny_csv), "--backbone", tiny_backbone, "--max-steps", "2", "--max-length", "16",
          "--out", str(out), "--no-progress"])
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out), "--split", "validation", "--device", "cpu"]) == 0
    assert "accuracy per exit" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--data", "nope.csv"], "not found"),
    (["--data", "bbc", "--backbone", "/no/such/model"], "cannot load"),
    (["--data", "bbc", "--config", "missing.json"], "missing.json"),
])
def test_cli_errors_are_one_line(argv, message, tmp_path, capsys):
    before = sorted(tmp_path.iterdir())
    assert main(["train", *argv, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err and "Traceback" not in err
    assert sorted(tmp_path.iterdir()) == before  # nothing written


def test_cli_bad_config_value(tiny_csv, tmp_path, capsys):
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"train": {"learning_rate": 1}}))
    assert main(["train", "--data", str(tiny_csv), "--config", str(config), "--out", str(tmp_path / "x")]) == 2
    assert "learning_rate" in capsys.readouterr().err


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "analysis", "train", "--help"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and "--max-steps" in out.stdout and "bbc" in out.stdout


@pytest.mark.slow
def test_default_backbone_smoke_run(tmp_path):
    """The acceptance smoke command: the offline MiniLM-L6 on BBC News, 5 steps on CPU."""
    out = tmp_path / "smoke"
    proc = subprocess.run([sys.executable, "-m", "analysis", "train", "--data", "bbc", "--backbone", "minilm-l6",
                           "--out", str(out), "--max-steps", "5", "--no-progress"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "test (222 samples" in proc.stdout
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    assert DE3Bert.from_pretrained(out).num_layers == 6
