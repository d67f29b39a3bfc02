"""attach: DE3 exits on a frozen fine-tuned classifier (tiny random BERT / RoBERTa / ELECTRA classifiers saved to tmp
folders) or a plain encoder. The last exit answers exactly as the model did, the other exits learn, the checkpoint
is compact and opens in trace, evaluate and the engine like any other; bad models and labels are one error line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.attach import attach, load_model_to_attach
from analysis.backbones import load_backbone, load_tokenizer
from analysis.checkpoint import load_checkpoint, load_checkpoint_data
from analysis.commands import main
from analysis.config import ModelConfig, TrainConfig
from analysis.data import load_data
from analysis.engine import EarlyExitEngine, safe_threshold, threshold_values
from analysis.errors import DE3Error
from analysis.policies import ExitPolicy, decide_exits
from analysis.trace import load_trace
from analysis.training import train

from .conftest import WORDS

LABELS = {0: "negative", 1: "positive"}  # tiny_csv's classes
FAST = TrainConfig(epochs=8, batch_size=8, lr_heads=5e-3, warmup_ratio=0.0)
TEXTS = ["good movie", "the plot was very bad and the actor awful", "great", "not a happy story but nice music",
         "this film is the worst", "love it"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster on a shared machine, and the result the same
    yield
    torch.set_num_threads(before)


def csv_rows(csv: Path) -> list[tuple[str, str]]:
    return [tuple(line.rsplit(",", 1)) for line in csv.read_text().splitlines()[1:]]


def fine_tune(model, tokenizer, texts, labels, steps: int = 60) -> None:
    """A few AdamW steps on the whole tiny model: a classifier whose head answers differently for different texts."""
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    labels = torch.tensor(labels)
    gen = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        idx = torch.randperm(len(texts), generator=gen)[:32]
        loss = model(**{k: v[idx] for k, v in enc.items()}, labels=labels[idx]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def make_classifier(folder: Path, tokenizer_folder: str, kind: str = "bert", id2label: dict | None = None,
                    num_labels: int = 2, train_on: list[tuple[str, int]] | None = None, steps: int = 60) -> str:
    """A tiny ``<Kind>ForSequenceClassification`` (3 layers, hidden 32, conftest's vocabulary), fine-tuned a little on
    ``train_on`` (text, class id) when given, saved to ``folder`` with conftest's tokenizer."""
    import transformers as tf

    vocab = 5 + len(WORDS)
    common = dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37,
                  num_labels=num_labels)
    if id2label is not None:
        common.update(id2label=id2label, label2id={v: k for k, v in id2label.items()})
    config, cls = {
        "bert": (lambda: tf.BertConfig(max_position_embeddings=64, **common), tf.BertForSequenceClassification),
        "roberta": (lambda: tf.RobertaConfig(max_position_embeddings=66, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                                             **common), tf.RobertaForSequenceClassification),
        "electra": (lambda: tf.ElectraConfig(embedding_size=16, max_position_embeddings=64, **common),
                    tf.ElectraForSequenceClassification),
        "distilbert": (lambda: tf.DistilBertConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=4, hidden_dim=37,
                                                   max_position_embeddings=64),
                       tf.DistilBertForSequenceClassification),
    }[kind]
    torch.manual_seed(1)
    model = cls(config())
    if train_on:
        fine_tune(model, load_tokenizer(tokenizer_folder), [t for t, _ in train_on], [y for _, y in train_on], steps)
    model.save_pretrained(str(folder))
    for f in Path(tokenizer_folder).iterdir():
        if "token" in f.name or f.name in ("vocab.txt", "special_tokens_map.json"):
            shutil.copy(f, folder / f.name)
    return str(folder)


@pytest.fixture(scope="module")
def sentiment(tiny_csv) -> list[tuple[str, int]]:
    """tiny_csv's rows as (text, class id): what the tiny classifiers are fine-tuned on."""
    return [(text, int(label == "positive")) for text, label in csv_rows(tiny_csv)]


@pytest.fixture(scope="module")
def classifiers(tiny_backbone, sentiment, tmp_path_factory):
    root = tmp_path_factory.mktemp("classifiers")
    return {kind: make_classifier(root / kind, tiny_backbone, kind, LABELS, train_on=sentiment)
            for kind in ("bert", "roberta", "electra")}


@pytest.fixture(scope="module")
def attached(classifiers, tiny_csv, tmp_path_factory):
    """Each tiny classifier with DE3 exits attached (through the CLI), and what it printed."""
    root = tmp_path_factory.mktemp("attached")
    out = {}
    for kind, folder in classifiers.items():
        config = root / f"{kind}.json"
        config.write_text(json.dumps({"model": {"max_length": 32}, "train": {"warmup_ratio": 0.0, "eval_batch_size": 16}}))
        args = ["attach", "--model", folder, "--data", str(tiny_csv), "--out", str(root / kind), "--config", str(config),
                "--epochs", "8", "--batch-size", "8", "--lr-heads", "5e-3", "--device", "cpu", "--no-progress"]
        assert main(args) == 0
        out[kind] = root / kind
    return out


def original_logits(folder: str, texts) -> torch.Tensor:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    enc = load_tokenizer(folder)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits


def attached_logits(ckpt: Path, texts) -> torch.Tensor:
    model, tokenizer = load_checkpoint(ckpt)
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits  # (L, B, K)


# ---- the last exit is the model's own head; the others learn ------------------------------------------------------


@pytest.mark.parametrize("kind, activation", [("bert", "tanh"), ("roberta", "tanh"), ("electra", "gelu")])
def test_last_exit_answers_exactly_as_the_classifier(attached, classifiers, kind, activation):
    ckpt = attached[kind]
    config = json.loads((ckpt / "config.json").read_text())
    assert config["de3"]["final_head"] == activation and config["de3"]["label_names"] == ["negative", "positive"]
    ours, theirs = attached_logits(ckpt, TEXTS), original_logits(classifiers[kind], TEXTS)
    torch.testing.assert_close(ours[-1], theirs, atol=1e-5, rtol=1e-5)
    assert len(set(theirs.argmax(-1).tolist())) == 2  # the comparison could fail: both classes are answered


@pytest.mark.parametrize("kind", ["bert", "roberta", "electra"])
def test_internal_exits_are_trained(attached, kind):
    metrics = json.loads((attached[kind] / "metrics.json").read_text())
    history = metrics["history"]
    assert len(history) == 8 and history[-1]["loss"] < history[0]["loss"]
    assert metrics["made_by"] == "attach" and metrics["cache_seconds"] >= 0 and metrics["heads_seconds"] > 0
    best = history[metrics["best_epoch"] - 1]["validation"]["accuracy"]
    assert max(best[:-1]) >= 0.75  # the toy task is learnable from frozen random features (chance: 0.5)


@pytest.mark.parametrize("kind", ["bert", "roberta", "electra"])
def test_checkpoint_is_compact_and_loads(attached, classifiers, kind):
    from safetensors import safe_open

    ckpt = attached[kind]
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not [k for k in keys if k.startswith("backbone.")]  # heads and prototypes only
    config = json.loads((ckpt / "config.json").read_text())
    assert config["de3"]["backbone"] == str(Path(classifiers[kind]).resolve())
    model, _ = load_checkpoint(ckpt)
    assert model.bank.is_fitted and not any(p.requires_grad for p in model.heads[-1].parameters())
    assert json.loads((ckpt / "data.json").read_text())["spec"].endswith("tiny.csv")
    TrainConfig.from_dict(json.loads((ckpt / "train_config.json").read_text()))


def test_the_model_is_loaded_frozen_with_its_head(classifiers):
    loaded = load_model_to_attach(classifiers["electra"])
    assert not loaded.encoder.training and not any(p.requires_grad for p in loaded.encoder.parameters())
    assert (loaded.activation, loaded.label_names) == ("gelu", ["negative", "positive"])


def test_attach_takes_the_families_the_engine_runs():
    from analysis.attach import HEAD_LAYOUTS
    from analysis.engine import SUPPORTED_MODEL_TYPES

    assert set(HEAD_LAYOUTS) == set(SUPPORTED_MODEL_TYPES)


def test_load_backbone_of_a_classifier_folder_is_its_encoder(classifiers):
    from transformers import AutoModelForSequenceClassification

    for folder in classifiers.values():
        model = AutoModelForSequenceClassification.from_pretrained(folder)
        encoder = getattr(model, model.base_model_prefix).state_dict()
        backbone = load_backbone(folder).state_dict()
        shared = set(encoder) & set(backbone)
        assert shared >= {k for k in encoder if "pooler" not in k}
        assert all(torch.equal(encoder[k], backbone[k]) for k in shared)


# ---- it opens like any checkpoint: trace, evaluate, the engine -----------------------------------------------------


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_trace_evaluate_and_engine(attached, kind, tmp_path, capsys):
    ckpt = attached[kind]
    assert main(["evaluate", "--checkpoint", str(ckpt), "--split", "test", "--device", "cpu"]) == 0
    assert "accuracy per exit" in capsys.readouterr().out
    assert main(["trace", "--checkpoint", str(ckpt), "--split", "all", "--out", str(tmp_path / "trace"),
                 "--device", "cpu", "--batch-size", "16", "--no-progress"]) == 0
    trace = load_trace(tmp_path / "trace")
    model, tokenizer = load_checkpoint(ckpt)
    texts = list(load_checkpoint_data(ckpt).split("all").texts)
    assert trace.num_samples == len(texts) == 120
    engine = EarlyExitEngine(model, tokenizer)
    for name in ("de3", "entropy"):
        values = threshold_values(trace.wide, ExitPolicy(name))[:, :-1]
        policy = ExitPolicy(name, tau=safe_threshold(values, np.quantile(values[:, 0], 0.5)))
        expected = decide_exits(trace.wide, policy)
        for batch_size in (1, 16):
            result = engine.run(texts, policy=policy, batch_size=batch_size)
            agreement = np.mean((result.exit_layer == expected.exit_layer) & (result.pred == expected.pred))
            assert agreement == 1.0, (name, batch_size)
        assert len(np.unique(expected.exit_layer)) >= 2  # exits spread: the comparison could fail


# ---- labels -------------------------------------------------------------------------------------------------------


def test_generic_label_names_map_by_index(tiny_backbone, tiny_csv, sentiment, tmp_path, capsys):
    folder = make_classifier(tmp_path / "generic", tiny_backbone, train_on=sentiment)  # id2label: LABEL_0, LABEL_1
    data = load_data(str(tiny_csv))
    result = attach(folder, data, tmp_path / "ckpt", config=ModelConfig(max_length=32), train_config=FAST,
                    device="cpu", progress=False, data_info={"spec": str(tiny_csv), "seed": 42})
    assert "generic class names" in capsys.readouterr().out
    assert result.label_names == ["negative", "positive"]  # the data's names; data class k = model class k
    torch.testing.assert_close(attached_logits(tmp_path / "ckpt", TEXTS)[-1], original_logits(folder, TEXTS),
                               atol=1e-5, rtol=1e-5)
    assert load_checkpoint_data(tmp_path / "ckpt").label_names == ["negative", "positive"]


def test_a_subset_of_the_model_classes(tiny_backbone, tiny_csv, tmp_path, capsys):
    """A 3-class model on 2-class data: the checkpoint keeps the model's 3 classes; the class without training rows
    gets its prototypes from the rows the model itself assigns to it, so the checkpoint loads and traces."""
    three = [(t, 1 if "movie" in t.split() else 2 * (y == "positive")) for t, y in csv_rows(tiny_csv)]
    folder = make_classifier(tmp_path / "three", tiny_backbone, id2label={0: "negative", 1: "neutral", 2: "positive"},
                             num_labels=3, train_on=three, steps=150)
    data = load_data(str(tiny_csv))
    result = attach(folder, data, tmp_path / "ckpt", config=ModelConfig(max_length=32), train_config=FAST,
                    device="cpu", progress=False, data_info={"spec": str(tiny_csv), "seed": 42})
    assert result.label_names == ["negative", "neutral", "positive"]
    model, _ = load_checkpoint(tmp_path / "ckpt")  # every prototype fitted
    assert model.bank.is_fitted
    torch.testing.assert_close(attached_logits(tmp_path / "ckpt", TEXTS)[-1], original_logits(folder, TEXTS),
                               atol=1e-5, rtol=1e-5)
    assert "movie" in TEXTS[0] and original_logits(folder, TEXTS).argmax(-1)[0] == 1  # the model answers 'neutral'
    assert main(["trace", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "trace"), "--device", "cpu",
                 "--no-progress"]) == 0


# ---- a plain encoder: every exit trained ----------------------------------------------------------------------------


def test_plain_encoder_trains_every_exit(tiny_backbone, tiny_csv, tmp_path):
    data = load_data(str(tiny_csv))
    result = attach(tiny_backbone, data, tmp_path / "ckpt", config=ModelConfig(max_length=32), train_config=FAST,
                    device="cpu", progress=False, cache_memory=0, log=lambda *_: None)  # cache as a memmap on disk
    model, _ = load_checkpoint(tmp_path / "ckpt")
    assert model.config.final_head is None and len(model.heads) == 3
    assert all(p.requires_grad for p in model.heads[-1].parameters())
    pooler = load_backbone(tiny_backbone).pooler.dense.weight
    assert not torch.equal(model.heads[-1].pooler.weight, pooler)  # started from the backbone's pooler, then trained
    assert result.test is not None and result.test.accuracy[-1] >= 0.75
    metrics = json.loads((tmp_path / "ckpt" / "metrics.json").read_text())
    assert metrics["cache_on_disk"] and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # cache removed


def test_attach_is_seeded(tiny_backbone, tiny_csv, tmp_path):
    data = load_data(str(tiny_csv))
    runs = [attach(tiny_backbone, data, tmp_path / str(i), config=ModelConfig(max_length=32),
                   train_config=TrainConfig(epochs=2, batch_size=8), device="cpu", progress=False,
                   log=lambda *_: None, cache_memory=2**30 if i < 2 else 0) for i in range(3)]
    a, b, c = (load_checkpoint(r.checkpoint)[0].state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the same run from a float16 cache on disk instead of float32 in memory: close, not equal
    assert all(torch.allclose(a[k].float(), c[k].float(), atol=5e-2) for k in a)


def test_progress_callback(tiny_backbone, tiny_csv, tmp_path):
    calls = []
    attach(tiny_backbone, load_data(str(tiny_csv)), tmp_path / "ckpt", config=ModelConfig(max_length=32),
           train_config=TrainConfig(epochs=1, batch_size=8), device="cpu", progress=False, log=lambda *_: None,
           on_progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1][0] == calls[-1][1] == 108  # train + validation rows, once each
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


# ---- the config ---------------------------------------------------------------------------------------------------


def test_final_head_is_a_checked_config_field(tiny_backbone, tiny_csv, tmp_path):
    with pytest.raises(DE3Error, match="final_head must be null or one of"):
        ModelConfig(final_head="swish")
    with pytest.raises(DE3Error, match="set by `python -m analysis attach`"):
        train(ModelConfig(backbone=tiny_backbone, label_names=("negative", "positive"), final_head="tanh"),
              TrainConfig(max_steps=1), load_data(str(tiny_csv)), tmp_path / "x", device="cpu", progress=False)
    assert not (tmp_path / "x").exists()


# ---- bad inputs: one error line, exit 2, nothing written ------------------------------------------------------------


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def gpt2(folder: Path, tokenizer_folder: str) -> str:
    from transformers import GPT2Config, GPT2Model

    GPT2Model(GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=60, n_positions=64)).save_pretrained(str(folder))
    for f in Path(tokenizer_folder).iterdir():
        if "token" in f.name or f.name == "vocab.txt":
            shutil.copy(f, folder / f.name)
    return str(folder)


def _write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


BAD = {
    "decoder-only model": (lambda t, e: ["--model", gpt2(t / "gpt2", e["backbone"])], ("gpt2", "decoder-only", "--model")),
    "unsupported family": (lambda t, e: ["--model", make_classifier(t / "distil", e["backbone"], "distilbert")],
                           ("'distilbert'", "attach supports bert, roberta")),
    "labels the model lacks": (
        lambda t, e: ["--model", e["bert"], "--data", _write(t / "abc.csv", "text,label\n" + "".join(
            f"good movie {i},{'abc'[i % 3]}\n" for i in range(30)))],
        ("'a', 'b', 'c'", "not among model", "'negative', 'positive'")),
    "more classes than a generic model": (
        lambda t, e: ["--model", make_classifier(t / "generic", e["backbone"]), "--data", _write(
            t / "abc.csv", "text,label\n" + "".join(f"good movie {i},{'abc'[i % 3]}\n" for i in range(30)))],
        ("3 classes", "has 2", "'LABEL_0', 'LABEL_1'")),
    "hub id offline": (lambda t, e: ["--model", "someone/no-such-model"],
                       ("could not load 'someone/no-such-model' from the Hugging Face hub (offline?", "local folder")),
    "data without labels": (lambda t, e: ["--model", e["bert"], "--data", _write(
        t / "nolabel.csv", "text\n" + "".join(f"good movie {i}\n" for i in range(30)))], ("nolabel.csv", "label")),
    "model folder missing": (lambda t, e: ["--model", str(t / "nope")], ("no such folder",)),
    "a DE3 checkpoint as the model": (lambda t, e: ["--model", str(e["checkpoint"])], ("DE3-BERT checkpoint already",)),
    "config sets the backbone": (lambda t, e: ["--model", e["bert"], "--config", _write(
        t / "c.json", json.dumps({"model": {"backbone": "x"}}))], ("set by attach",)),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input(name, classifiers, attached, tiny_backbone, tiny_csv, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    make, needles = BAD[name]
    args = make(tmp_path, {"backbone": tiny_backbone, "checkpoint": attached["bert"], **classifiers})
    if "--data" not in args:
        args += ["--data", str(tiny_csv)]
    before = _files(tmp_path)
    capsys.readouterr()
    code = main(["attach", *args, "--out", str(tmp_path / "out"), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not (tmp_path / "out").exists() and _files(tmp_path) == before


def test_compact_of_an_attached_checkpoint(attached, tmp_path, capsys):
    assert main(["compact", "--checkpoint", str(attached["roberta"]), "--out", str(tmp_path / "small")]) == 0
    half, full = attached_logits(tmp_path / "small", TEXTS), attached_logits(attached["roberta"], TEXTS)
    torch.testing.assert_close(half, full, atol=2e-2, rtol=2e-2)  # float16 heads
