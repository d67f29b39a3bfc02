"""A user's own data, whole, through the command line in-process: ``--split all``, separate train / validation /
test files (recorded in data.json, reloaded by trace / evaluate and --resume), a file holding some of the
checkpoint's classes, integer labels for named classes, and files without labels (prediction-only traces)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from analysis import training
from analysis.batching import encode_split
from analysis.checkpoint import load_checkpoint, load_checkpoint_data
from analysis.commands import main
from analysis.data import load_data
from analysis.trace import load_trace
from analysis.training import resume_dir

LABELS = ["negative", "positive"]  # tiny_csv's classes, so every checkpoint's here
TINY = ["--max-steps", "2", "--max-length", "16", "--no-progress"]


def tiny_rows(tiny_csv: Path) -> list[tuple[str, str]]:
    """tiny_csv's 120 (text, label) rows, in file order."""
    return [tuple(line.rsplit(",", 1)) for line in tiny_csv.read_text().splitlines()[1:]]


def write_csv(path: Path, rows: list[tuple[str, str]], header: str = "text,label", sep: str = ",") -> str:
    path.write_text(header + "\n" + "".join(f"{t}{sep}{lab}\n" for t, lab in rows), encoding="utf-8")
    return str(path)


def run(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def trace(ckpt: str, data: str | None, out: Path, *args: str) -> tuple[int, str, str]:
    argv = ["trace", "--checkpoint", ckpt, "--out", str(out), "--device", "cpu", "--no-progress", *args]
    return run(argv + (["--data", data] if data else []))


@pytest.fixture(scope="module")
def split_files(tiny_csv, tmp_path_factory) -> dict[str, object]:
    """tiny_csv cut into train (80 rows) / validation (15) / test (25) files, and a checkpoint trained on them."""
    root = tmp_path_factory.mktemp("user-data")
    rows = tiny_rows(tiny_csv)
    parts = {"train": rows[:80], "validation": rows[80:95], "test": rows[95:]}
    files = {name: write_csv(root / f"{name}.csv", part) for name, part in parts.items()}
    return {"root": root, "rows": parts, "files": files}


@pytest.fixture(scope="module")
def ckpt(tiny_backbone, split_files) -> dict[str, object]:
    files = split_files["files"]
    out = split_files["root"] / "ckpt"
    code, stdout, stderr = run(["train", "--data", files["train"], "--validation-data", files["validation"],
                                "--test-data", files["test"], "--backbone", tiny_backbone, "--out", str(out), *TINY])
    assert code == 0, stderr
    return {"path": str(out), "stdout": stdout}


# ---- --split all --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3, 25])
def test_trace_all_of_a_file_is_every_row_in_file_order(ckpt, tiny_csv, tmp_path, n):
    rows = tiny_rows(tiny_csv)[7 : 7 + n]
    code, stdout, stderr = trace(ckpt["path"], write_csv(tmp_path / "few.csv", rows), tmp_path / "t", "--split", "all")
    assert code == 0, stderr
    assert not stderr.strip() and f"trace of {n} samples" in stdout
    result = load_trace(tmp_path / "t")
    assert result.num_samples == n and result.samples["sample_id"].tolist() == list(range(n))
    assert result.samples["text"].tolist() == [t for t, _ in rows]
    assert [LABELS[k] for k in result.labels] == [lab for _, lab in rows]
    assert result.labelled and result.meta["labelled"] is True and result.meta["split"] == "all"


def test_a_split_of_a_file_too_small_points_at_split_all(ckpt, tmp_path):
    data = write_csv(tmp_path / "two.csv", [("good movie", "positive"), ("bad film", "negative")])
    code, _, stderr = trace(ckpt["path"], data, tmp_path / "t", "--split", "test")
    assert code == 2 and stderr.count("\n") == 1 and "too few to split" in stderr and "--split all" in stderr
    assert not (tmp_path / "t").exists()


def test_evaluate_split_all(ckpt, split_files):
    code, stdout, stderr = run(["evaluate", "--checkpoint", ckpt["path"], "--data", split_files["files"]["test"],
                                "--split", "all", "--device", "cpu"])
    assert code == 0, stderr
    assert "[all, 25 samples]" in stdout and "accuracy per exit" in stdout


# ---- separate train / validation / test files -----------------------------------------------------------------------


def test_train_on_separate_validation_and_test_files(ckpt, split_files):
    rows, files = split_files["rows"], split_files["files"]
    assert "80 train / 15 validation samples" in ckpt["stdout"] and "test (25 samples" in ckpt["stdout"]
    info = json.loads((Path(ckpt["path"]) / "data.json").read_text())
    recorded = (info["spec"], info["validation_data"], info["test_data"])
    assert recorded == (files["train"], files["validation"], files["test"])
    data = load_checkpoint_data(ckpt["path"])  # what trace / evaluate use without --data
    for name in ("train", "validation", "test"):
        split = data.split(name)
        assert split.texts == [t for t, _ in rows[name]]
        assert [LABELS[k] for k in split.labels] == [lab for _, lab in rows[name]]
    assert data.split("all").texts == [t for name in ("train", "validation", "test") for t, _ in rows[name]]


def test_train_on_a_separate_test_file_scores_that_file(tiny_backbone, split_files, tmp_path):
    rows, files = split_files["rows"], split_files["files"]
    only_positive = [r for r in rows["test"] if r[1] == "positive"]  # a test file may hold some of the classes
    test_file = write_csv(tmp_path / "positive.csv", only_positive)
    out = tmp_path / "ckpt"
    code, stdout, stderr = run(["train", "--data", files["train"], "--test-data", test_file,
                                "--backbone", tiny_backbone, "--out", str(out), *TINY])
    assert code == 0, stderr
    assert "72 train / 8 validation samples" in stdout and f"test ({len(only_positive)} samples" in stdout
    data = load_checkpoint_data(out)
    assert data.test.texts == [t for t, _ in only_positive] and set(data.test.labels) == {1}
    assert sorted(data.train.texts + data.validation.texts) == sorted(t for t, _ in rows["train"])  # carved from train
    assert data.validation.texts == load_data(files["train"], test_data=test_file).validation.texts
    model, tokenizer = load_checkpoint(out)
    scored = training.evaluate(model, tokenizer, encode_split(tokenizer, data.test, 16), "accuracy")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] == scored.accuracy  # the checkpoint's test metric is that file's
    assert json.loads((out / "data.json").read_text())["validation_data"] is None


class Interrupt(Exception):
    pass


def test_resume_reloads_the_separate_files(tiny_backbone, split_files, tmp_path, monkeypatch):
    files = split_files["files"]
    out = tmp_path / "run"
    real_train = training.train

    def interrupted(*args, **kwargs):
        def stop(step: int) -> None:
            if step == 2:
                raise Interrupt
        return real_train(*args, **kwargs, on_step=stop)

    monkeypatch.setattr(training, "train", interrupted)
    with pytest.raises(Interrupt):
        run(["train", "--data", files["train"], "--validation-data", files["validation"], "--test-data", files["test"],
             "--backbone", tiny_backbone, "--out", str(out), "--max-steps", "3", "--save-every", "1", "--no-progress"])
    monkeypatch.undo()
    assert (resume_dir(out) / "state.json").is_file()
    code, stdout, stderr = run(["train", "--resume", "--out", str(out), "--no-progress"])
    assert code == 0, stderr  # "the data differ" unless the same three files are read again
    assert "resuming" in stdout and "test (25 samples" in stdout


# ---- labels against the checkpoint's classes ----------------------------------------------------------------------


def test_a_file_with_some_of_the_classes_traces_in_the_checkpoints_ids(ckpt, tiny_csv, tmp_path):
    positive = [r for r in tiny_rows(tiny_csv) if r[1] == "positive"][:6]  # its own id would be 0
    code, _, stderr = trace(ckpt["path"], write_csv(tmp_path / "pos.csv", positive), tmp_path / "t", "--split", "all")
    assert code == 0, stderr
    result = load_trace(tmp_path / "t")
    assert result.label_names == LABELS and (result.labels == 1).all()
    np.testing.assert_array_equal(result.wide["correct"], result.wide["pred"] == 1)


def test_classes_the_checkpoint_never_saw_are_named(ckpt, tiny_csv, tmp_path):
    rows = tiny_rows(tiny_csv)[:20] + [("the plot", "neutral"), ("a film", "mixed")]
    code, _, stderr = trace(ckpt["path"], write_csv(tmp_path / "three.csv", rows), tmp_path / "t", "--split", "all")
    assert code == 2 and stderr.count("\n") == 1 and "three.csv" in stderr
    assert "classes the checkpoint never saw: 'mixed', 'neutral';" in stderr
    assert "the checkpoint knows 'negative', 'positive'" in stderr
    assert not (tmp_path / "t").exists()


def test_integer_labels_are_class_ids_of_a_named_checkpoint(ckpt, tiny_csv, tmp_path):
    rows = [(t, str(LABELS.index(lab))) for t, lab in tiny_rows(tiny_csv)[:12]]  # SST-2 style 0/1 labels
    data = write_csv(tmp_path / "ids.tsv", rows, header="text\tlabel", sep="\t")
    code, _, stderr = trace(ckpt["path"], data, tmp_path / "t", "--split", "all")
    assert code == 0, stderr
    assert load_trace(tmp_path / "t").labels.tolist() == [int(lab) for _, lab in rows]
    bad = write_csv(tmp_path / "bad.tsv", rows + [("good film", "2")], header="text\tlabel", sep="\t")
    code, _, stderr = trace(ckpt["path"], bad, tmp_path / "t2", "--split", "all")
    assert code == 2 and "never saw: '2'" in stderr


# ---- files without labels: prediction-only ------------------------------------------------------------------------


def test_a_file_without_labels_traces_predictions_only(ckpt, tiny_csv, tmp_path):
    texts = [t for t, _ in tiny_rows(tiny_csv)[:9]]
    data = tmp_path / "plain.csv"
    data.write_text("id,text\n" + "".join(f"{i},{t}\n" for i, t in enumerate(texts)), encoding="utf-8")
    code, stdout, stderr = trace(ckpt["path"], str(data), tmp_path / "t", "--split", "all")
    assert code == 0, stderr
    assert stderr.count("\n") == 1 and stderr.startswith(f"note: {data} has no label column (looked for label, labels, "
                                                         "target, class); tracing predictions only")
    assert "pass --label-column" in stderr and "trace of 9 samples" in stdout
    result = load_trace(tmp_path / "t")
    assert not result.labelled and result.meta["labelled"] is False
    assert (result.labels == -1).all() and (result.table["label"] == -1).all() and not result.table["correct"].any()
    assert result.samples["text"].tolist() == texts and result.label_names == LABELS
    code, _, stderr = trace(ckpt["path"], str(data), tmp_path / "t-test", "--split", "test")  # a split of it too
    assert code == 0 and load_trace(tmp_path / "t-test").num_samples == 1
    code, _, stderr = run(["evaluate", "--checkpoint", ckpt["path"], "--data", str(data), "--split", "all",
                           "--device", "cpu"])
    assert code == 2 and stderr.count("\n") == 1 and "accuracy needs labels" in stderr


def test_train_refuses_a_file_without_labels(tiny_backbone, tmp_path):
    data = tmp_path / "plain.csv"
    data.write_text("id,text\n" + "".join(f"{i},good movie {i}\n" for i in range(20)), encoding="utf-8")
    code, _, stderr = run(["train", "--data", str(data), "--backbone", tiny_backbone, "--out", str(tmp_path / "x"),
                           *TINY])
    assert code == 2 and stderr.count("\n") == 1
    assert "no label column found (looked for label, labels, target, class); columns found: id, text" in stderr
    assert not (tmp_path / "x").exists()


# ---- tiny or degenerate training data: refused or said, never silently used ----------------------------------------


def test_a_class_with_no_training_row_is_refused_before_training(tiny_backbone, tmp_path):
    """Seed 4 puts the one 'c' row of this file into the test split: its prototype could never be learned (and
    would stay a zero vector that DR then measures against). A 3-row file would train on a single row."""
    odd = write_csv(tmp_path / "odd.csv", [(f"sample text {i}", "ab"[i % 2]) for i in range(19)] + [("odd one", "c")])
    three = write_csv(tmp_path / "three.csv", [("good movie", "a"), ("bad film", "b"), ("great plot", "a")])
    for data, seed, needle in ((odd, "4", "'c' have no training row (only in the test split)"),
                               (three, "42", "have no training row (only in the validation and test splits)")):
        code, _, stderr = run(["train", "--data", data, "--seed", seed, "--backbone", tiny_backbone,
                               "--out", str(tmp_path / "x"), *TINY])
        assert code == 2 and stderr.count("\n") == 1 and needle in stderr, stderr
        assert "prototypes could never be learned" in stderr
        assert not (tmp_path / "x").exists()


def test_small_validation_and_test_splits_are_said_in_the_log(tiny_backbone, tmp_path):
    data = write_csv(tmp_path / "small.csv", [(f"good movie {i}" if i % 2 else f"bad film {i}", LABELS[i % 2])
                                              for i in range(40)])
    code, stdout, stderr = run(["train", "--data", data, "--backbone", tiny_backbone, "--out", str(tmp_path / "x"),
                                *TINY])
    assert code == 0, stderr
    assert "note: the validation split has only 4 rows: its accuracy moves in steps of 25 points" in stdout
    assert "note: the test split has only 4 rows" in stdout


def test_a_too_small_file_is_not_told_to_change_settings_the_cli_lacks(tiny_backbone, tmp_path):
    data = write_csv(tmp_path / "two.csv", [("good movie", "positive"), ("bad film", "negative")])
    code, _, stderr = run(["train", "--data", data, "--backbone", tiny_backbone, "--out", str(tmp_path / "x"), *TINY])
    assert code == 2 and "too few to split" in stderr and "--test-data" in stderr
    assert "val_fraction" not in stderr  # not a flag of the command line


def test_a_checkpoint_with_unfitted_prototypes_is_refused_where_it_is_loaded(tiny_backbone, tmp_path):
    import torch

    from analysis.backbones import load_backbone, load_tokenizer
    from analysis.config import ModelConfig
    from analysis.errors import DE3Error
    from analysis.model import DE3Bert

    tokenizer = load_tokenizer(tiny_backbone)
    model = DE3Bert(ModelConfig(backbone=tiny_backbone, label_names=("a", "b", "c")), load_backbone(tiny_backbone))
    batch = tokenizer(["good movie", "bad film"], return_tensors="pt", padding=True)
    with torch.no_grad():  # classes a and b seen, c never: its prototype stays an empty vector
        model.update_prototypes(model(**batch).embeddings, torch.tensor([0, 1]))
    folder = model.save_pretrained(tmp_path / "ckpt", tokenizer)
    with pytest.raises(DE3Error, match=r"prototypes of class\(es\) 'c' were never fitted"):
        load_checkpoint(folder)
    code, _, stderr = trace(str(folder), write_csv(tmp_path / "d.csv", [("good movie", "a")]), tmp_path / "t",
                            "--split", "all")
    assert code == 2 and "were never fitted" in stderr and not (tmp_path / "t").exists()
