"""Scaling: 2-process DDP training (gloo, CPU) equals one process; a sharded trace equals a one-process trace;
an interrupted or killed run resumes to the same result as an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from analysis.config import ModelConfig, TrainConfig
from analysis.data import load_data
from analysis.errors import DE3Error
from analysis.trace import load_trace
from analysis.tracer import write_trace
from analysis.training import resume_dir, train

from .conftest import REPO, make_tiny_backbone

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _run(*args: str, nproc: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] if nproc > 1 else [sys.executable]
    proc = subprocess.run([*launcher, "-m", "analysis", *args], check=False, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def still_backbone(tmp_path_factory) -> Path:
    """The tiny BERT without dropout: processes draw their own dropout masks, so only a dropout-free run can be
    compared number for number with a single process."""
    folder = make_tiny_backbone(tmp_path_factory.mktemp("still-bert"))
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def ddp_runs(still_backbone, tiny_csv, tmp_path_factory):
    """The same training on 1 process (batch 8) and on 2 processes (4 each); 95 samples leave an uneven last
    global batch (7 = 4 + 3), which exercises the loss weighting."""
    root = tmp_path_factory.mktemp("ddp")
    cfg = root / "cfg.json"
    cfg.write_text(json.dumps({"model": {"dropout": 0.0}, "train": {"save_every": 0}}))
    common = ["train", "--data", str(tiny_csv), "--backbone", str(still_backbone), "--config", str(cfg),
              "--epochs", "2", "--max-train-samples", "95", "--no-progress"]
    _run(*common, "--out", str(root / "one"), "--batch-size", "8")
    two = _run(*common, "--out", str(root / "two"), "--batch-size", "4", nproc=2)
    return root / "one", root / "two", two


def test_two_process_training_equals_one_process(ddp_runs):
    one, two, proc = ddp_runs
    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-5, msg=name)
    assert b["bank.initialized"].all()
    torch.testing.assert_close(b["bank.prototypes"], a["bank.prototypes"], rtol=1e-5, atol=1e-5)
    m_one, m_two = (json.loads((f / "metrics.json").read_text()) for f in (one, two))
    assert m_two["processes"] == 2 and m_two["global_batch_size"] == 8 == m_one["global_batch_size"]
    assert m_two["rank_divergence"] == 0.0  # both ranks hold identical weights and prototypes at the end
    assert [h["validation"]["metric"] for h in m_two["history"]] == [h["validation"]["metric"] for h in m_one["history"]]
    assert m_two["test"] == m_one["test"]
    assert proc.stdout.count("checkpoint:") == 1  # one rank logs and writes
    assert not resume_dir(two).exists()


def test_sharded_trace_equals_one_process_trace(ddp_runs, tmp_path):
    from analysis.checkpoint import load_checkpoint, load_checkpoint_data

    checkpoint = ddp_runs[0]
    _run("trace", "--checkpoint", str(checkpoint), "--split", "train", "--out", str(tmp_path / "two"),
         "--chunk-size", "10", "--batch-size", "4", "--no-progress", nproc=2)
    model, tokenizer = load_checkpoint(checkpoint)
    data = load_checkpoint_data(checkpoint)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker (OMP_NUM_THREADS=1): other thread counts round differently
    try:
        write_trace(model, tokenizer, data.train, tmp_path / "one", label_names=list(data.label_names), chunk_size=10,
                    batch_size=4, progress=False)
    finally:
        torch.set_num_threads(threads)
    one, two = load_trace(tmp_path / "one"), load_trace(tmp_path / "two")
    assert one.num_samples == two.num_samples == 95
    pd.testing.assert_frame_equal(two.table, one.table, check_exact=True)
    pd.testing.assert_frame_equal(two.samples, one.samples, check_exact=True)
    np.testing.assert_array_equal(two.embeddings(), one.embeddings())
    np.testing.assert_array_equal(two.prototypes(), one.prototypes())
    assert not list((tmp_path / "two").glob("part-*"))


def test_trace_chunks_do_not_change_the_numbers(tiny_model, tmp_path):
    """Chunk size changes only how rows are grouped on disk: the one-process trace with 7-sample chunks
    equals the one with a single chunk (the sharded trace above relies on whole chunks)."""
    from analysis.data import Split

    texts = [" ".join(["good", "movie", "not", "bad"][: 1 + i % 4] * (1 + i % 5)) for i in range(30)]
    split = Split(texts, None, [i % 3 for i in range(30)])
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model.config.backbone)
    for name, chunk in (("a", 7), ("b", 1000)):
        write_trace(tiny_model, tokenizer, split, tmp_path / name, label_names=["n", "p", "m"], chunk_size=chunk,
                    batch_size=4, progress=False)
    a, b = load_trace(tmp_path / "a"), load_trace(tmp_path / "b")
    pd.testing.assert_frame_equal(a.samples, b.samples)
    np.testing.assert_allclose(a.wide["dr"], b.wide["dr"], atol=1e-5)
    assert (a.wide["pred"] == b.wide["pred"]).all()
    np.testing.assert_allclose(a.embeddings().astype(np.float32), b.embeddings().astype(np.float32), atol=2e-3)


# ---- resume ----


class Interrupt(Exception):
    pass


def _stop_at(step: int):
    def hook(current: int) -> None:
        if current == step:
            raise Interrupt(f"stopped at step {step}")
    return hook


@pytest.fixture(scope="module")
def resume_setup(tiny_backbone, tiny_csv):
    data = load_data(str(tiny_csv), seed=0)
    model_cfg = ModelConfig(backbone=tiny_backbone, label_names=tuple(data.label_names))  # dropout on: RNG matters
    return data, model_cfg


@pytest.mark.parametrize("save_every, stop", [(5, 17), (0, 20)], ids=["mid-epoch-state", "epoch-end-state"])
def test_resume_equals_uninterrupted(resume_setup, tmp_path, save_every, stop):
    data, model_cfg = resume_setup
    cfg = TrainConfig(epochs=3, batch_size=8, save_every=save_every, seed=3)
    done = train(model_cfg, cfg, data, tmp_path / "full", progress=False, log=lambda *_: None)

    out = tmp_path / "cut"
    with pytest.raises(Interrupt):
        train(model_cfg, cfg, data, out, progress=False, log=lambda *_: None, on_step=_stop_at(stop))
    state = json.loads((resume_dir(out) / "state.json").read_text())
    assert state["step"] == (15 if save_every else 12)  # the last state saved before the interruption
    with pytest.raises(DE3Error, match="--resume"):  # a fresh run would throw the interrupted one away
        train(model_cfg, cfg, data, out, progress=False, log=lambda *_: None)
    resumed = train(model_cfg, cfg, data, out, progress=False, log=lambda *_: None, resume=True)

    assert resumed.best_epoch == done.best_epoch
    assert [h["validation"] for h in resumed.history] == [h["validation"] for h in done.history]
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in done.history], abs=1e-6)
    a, b = _weights(tmp_path / "full"), _weights(out)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)
    assert resumed.test.summary() == done.test.summary()
    assert not resume_dir(out).exists()  # finished: the state is gone


def test_resume_refuses_other_settings_or_data(resume_setup, tmp_path):
    data, model_cfg = resume_setup
    cfg = TrainConfig(epochs=2, batch_size=8, save_every=4)
    with pytest.raises(Interrupt):
        train(model_cfg, cfg, data, tmp_path / "run", progress=False, log=lambda *_: None, on_step=_stop_at(5))
    with pytest.raises(DE3Error, match=r"train\.lr_heads"):
        train(model_cfg, TrainConfig(epochs=2, batch_size=8, save_every=4, lr_heads=0.5), data, tmp_path / "run",
              progress=False, log=lambda *_: None, resume=True)
    other = load_data(str(data.name), seed=1)  # other split of the same file
    with pytest.raises(DE3Error, match="data differ"):
        train(model_cfg, cfg, other, tmp_path / "run", progress=False, log=lambda *_: None, resume=True)
    with pytest.raises(DE3Error, match="nothing to resume"):
        train(model_cfg, cfg, data, tmp_path / "elsewhere", progress=False, log=lambda *_: None, resume=True)


def test_cli_resume_needs_no_settings_and_rejects_them(tmp_path):
    from analysis.commands import main

    proc = _run("train", "--resume", "--out", str(tmp_path / "none"), check=False)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: nothing to resume")
    assert "Traceback" not in proc.stderr
    assert main(["train", "--resume", "--out", str(tmp_path / "x"), "--epochs", "3"]) == 2


def test_killed_training_resumes_to_the_same_checkpoint(tiny_backbone, tiny_csv, tmp_path):
    """SIGKILL a CLI training run once it has saved a state; the checkpoint and state left behind load, and
    `train --resume` finishes with the weights an uninterrupted run gets."""
    args = ["train", "--data", str(tiny_csv), "--backbone", tiny_backbone, "--epochs", "25", "--batch-size", "8",
            "--save-every", "3", "--no-progress"]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "analysis", *args, "--out", str(out)], cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_file = resume_dir(out) / "state.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if state_file.is_file() and json.loads(state_file.read_text())["step"] >= 30 and (out / "config.json").is_file():
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    from analysis.model import DE3Bert

    DE3Bert.from_pretrained(out)  # the best-epoch checkpoint so far is whole
    killed_at = json.loads(state_file.read_text())["step"]
    assert 30 <= killed_at < 300
    _run("train", "--resume", "--out", str(out))
    _run(*args, "--out", str(tmp_path / "full"))
    a, b = _weights(tmp_path / "full"), _weights(out)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)
    assert not resume_dir(out).exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left over


# ---- bounded memory ----


def test_trace_memory_stays_flat_in_the_number_of_samples():
    """The memory benchmark at small sizes (the full 10k vs 100k run is `python -m analysis bench-memory`)."""
    from analysis.commands.membench import run_memory_bench

    report = run_memory_bench(sizes=(1000, 8000), chunk_size=500, log=lambda *_: None)
    small, large = report["rows"]
    assert large["samples"] == 8 * small["samples"]
    assert report["peak_ratio"] <= 1.1, report
    assert large["working_mb"] <= small["working_mb"] + 16, report  # the trace's own memory does not grow with N


def test_encoded_split_is_compact(tiny_backbone):
    """Token ids are stored as flat int32 arrays (not Python lists): ~4 bytes per token."""
    from transformers import AutoTokenizer

    from analysis import batching

    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone)
    texts = ["good movie"] * 5000
    enc = batching.encode(tokenizer, texts, None, [0] * 5000, 16, chunk_size=777)
    assert len(enc) == 5000 and enc.input_ids.dtype == np.int32
    assert enc.input_ids.nbytes == 4 * int(enc.lengths.sum())
    batch = batching.collate(tokenizer, enc, np.array([0, 4999]))
    ref = tokenizer(["good movie", "good movie"], padding=True, return_tensors="pt")
    for key in ref:
        assert torch.equal(batch[key], ref[key]), key
