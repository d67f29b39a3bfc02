"""Bad inputs (issue 6): each one gives ONE clear line naming the problem and the fix, and touches no existing file.

The table ``CASES`` drives one test per case across the three ways in:

    cli   ``analysis.commands.main([...])`` in-process: exit code 2, stderr one ``error: ...`` line, no traceback
    api   the Python functions: a ``DE3Error`` subclass with a one-line message
    app   the Overview page under ``AppTest``: ``st.error`` shown, no exception, the app keeps running

plus "good odd inputs" (emoji, right-to-left text, long texts, odd file names) that must simply work. Before each
case the files around it are hashed (bytes and modification times) -- including an existing output that a
failing command's ``--out`` points at -- and checked again afterwards.

Also here: a ``trace`` process killed half-way (SIGKILL) leaves the previous trace intact, safe loading
(``torch.load`` / ``trust_remote_code``) and the app's allowed roots.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch

os.environ["DE3_APP_WARMUP"] = "0"  # no background numba compile in the app tests

from analysis.backbones import load_backbone
from analysis.checkpoint import load_checkpoint, load_checkpoint_data
from analysis.commands import main
from analysis.config import ModelConfig
from analysis.data import load_data
from analysis.errors import CheckpointError, DataError, DE3Error
from analysis.model import DE3Bert
from analysis.trace import load_trace
from app import sources

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "streamlit_app.py")
LABELS = ("negative", "positive")  # the classes of conftest's tiny_csv, so of the tiny checkpoint
ODD_TEXTS = ["great movie 😀👍🏽", "فيلم رائع جدا", "סרט נהדר", "bad film — \u200fmixed עברית and English",
             "très bon « film »", "🎬🍿", "awful 😡 plot", "ugly\u00a0music", "日本語のテキスト", "x" * 3000]


# ---- fixtures: a tiny checkpoint (no training), its trace, and copies to break ---------------------------------


def _save_tiny_checkpoint(backbone: str, csv: Path, folder: Path, max_length: int = 32) -> Path:
    from analysis.backbones import load_tokenizer

    torch.manual_seed(0)
    tokenizer = load_tokenizer(backbone)
    model = DE3Bert(ModelConfig(backbone=backbone, label_names=LABELS, max_length=max_length), load_backbone(backbone))
    batch = tokenizer(["good movie", "bad film", "great plot", "awful actor"], return_tensors="pt", padding=True)
    with torch.no_grad():
        model.update_prototypes(model(**batch).embeddings, torch.tensor([1, 0, 1, 0]))
    return model.save_pretrained(folder, tokenizer, extra_files={"data.json": {"spec": str(csv), "seed": 42}})


@pytest.fixture(scope="module")
def base(tiny_backbone, tiny_csv, tmp_path_factory):
    """A tiny checkpoint (2 classes, max_length 32) with data.json pointing at tiny_csv, and its test trace."""
    root = tmp_path_factory.mktemp("bad-inputs-base")
    ckpt = _save_tiny_checkpoint(tiny_backbone, tiny_csv, root / "ckpt")
    assert main(["trace", "--checkpoint", str(ckpt), "--out", str(root / "trace"), "--device", "cpu"]) == 0
    return {"ckpt": Path(ckpt), "trace": root / "trace", "backbone": tiny_backbone, "csv": tiny_csv}


@dataclass
class Env:
    """What a case builds its input from: a private folder and the shared tiny checkpoint / trace / backbone."""

    tmp: Path
    base: dict

    @property
    def backbone(self) -> str:
        return self.base["backbone"]

    @property
    def csv(self) -> Path:
        return self.base["csv"]

    def write(self, name: str, content: str | bytes) -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return str(path)

    def parquet(self, name: str, frame: pd.DataFrame, truncate: bool = False) -> str:
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        data = buf.getvalue()
        return self.write(name, data[: len(data) // 2] if truncate else data)

    def ckpt(self, name: str = "ckpt", edit: Callable[[Path], None] | None = None) -> str:
        """A copy of the tiny checkpoint, optionally broken by ``edit``."""
        folder = self.tmp / name
        shutil.copytree(self.base["ckpt"], folder)
        if edit is not None:
            edit(folder)
        return str(folder)

    def trace(self, name: str = "old-trace", edit: Callable[[Path], None] | None = None) -> str:
        """A copy of the complete tiny trace, e.g. as an existing output a failing command must not touch."""
        folder = self.tmp / name
        shutil.copytree(self.base["trace"], folder)
        if edit is not None:
            edit(folder)
        return str(folder)

    def out_ckpt(self) -> str:
        """An existing, good checkpoint as the --out of a failing train."""
        return self.ckpt("existing-out")


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under ``root``: (sha256, size, mtime_ns) of files, "dir" for folders."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            out[rel] = ("dir",)
        else:
            st = path.stat()
            out[rel] = (hashlib.sha256(path.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns)
    return out


def assert_untouched(before: dict, after: dict, allow_new: tuple[str, ...] = ()) -> None:
    changed = [k for k in before if after.get(k) != before[k]]
    assert not changed, f"pre-existing files changed or removed: {changed[:5]}"
    new = [k for k in after if k not in before and not any(k == a or k.startswith(a + os.sep) for a in allow_new)]
    assert not new, f"unexpected new files: {new[:5]}"


# ---- data makers ------------------------------------------------------------------------------------------------


def rows_csv(rows: list[tuple[str, str]], header: str = "text,label", sep: str = ",") -> str:
    return header + "\n" + "".join(f"{t}{sep}{lab}\n" for t, lab in rows)


GOOD_ROWS = [(f"good movie number {i}" if i % 2 else f"bad film number {i}", LABELS[i % 2]) for i in range(20)]


def pair_csv(words: int) -> str:
    lines = ["sentence1,sentence2,label"]
    for i in range(20):
        a = " ".join(["good"] * words) if i % 2 else " ".join(["bad"] * words)
        lines.append(f"{a},{' '.join(['movie'] * words)},{LABELS[i % 2]}")
    return "\n".join(lines) + "\n"


def set_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if key.startswith("de3."):
            config["de3"][key[4:]] = value
        elif value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))


def gpt2_folder(env: Env, name: str = "gpt2") -> str:
    """A tiny GPT-2 (decoder-only) saved like a Hugging Face model, with a tokenizer, built offline."""
    from transformers import GPT2Config, GPT2Model

    folder = env.tmp / name
    GPT2Model(GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=60, n_positions=64)).save_pretrained(str(folder))
    for f in Path(env.backbone).iterdir():
        if "token" in f.name or f.name == "vocab.txt" or f.name == "special_tokens_map.json":
            shutil.copy(f, folder / f.name)
    return str(folder)


def remote_code_folder(env: Env) -> str:
    """A backbone folder whose config needs its own Python code (auto_map), as trust_remote_code repos do."""
    folder = env.tmp / "custom-encoder"
    shutil.copytree(env.backbone, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="my-encoder", auto_map={"AutoConfig": "configuration_my.MyConfig",
                                                     "AutoModel": "modeling_my.MyModel"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_my.py").write_text("raise SystemExit('remote code ran')\n")
    return str(folder)


def trace_table_edit(change: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        table = pd.read_parquet(folder / "trace.parquet")
        change(table).to_parquet(folder / "trace.parquet", index=False)
    return edit


def swap_first_layers(table: pd.DataFrame) -> pd.DataFrame:
    table = table.copy()
    layer = table["layer"].to_numpy().copy()
    layer[[0, 1]] = layer[[1, 0]]
    table["layer"] = layer
    return table


def truncate_file(name: str) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
    return edit


def pickle_instead_of_safetensors(folder: Path) -> None:
    state = torch.nn.Linear(2, 2).state_dict()
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")


# ---- the table --------------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One input. ``make(env)`` returns the argv (cli), a zero-argument callable (api) or an AppTest driver (app).

    ``expect``: substrings of the one-line message (bad inputs), or None for good inputs that must work.
    """

    kind: str  # "cli" | "api" | "app"
    make: Callable[[Env], object]
    expect: tuple[str, ...] | None
    error: type = DE3Error  # api cases: the class the error must be
    check: Callable[[Env, object], None] | None = None  # good inputs: what "it works" means
    allow_new: tuple[str, ...] = ()


def train(env: Env, *args: str) -> list[str]:
    return ["train", *args, "--backbone", env.backbone, "--out", env.out_ckpt(), "--no-progress", "--max-steps", "1"]


def train_on(env: Env, name: str, content: str | bytes, *args: str) -> list[str]:
    return train(env, "--data", env.write(name, content), *args)


def trace(env: Env, *args: str, checkpoint: str | None = None) -> list[str]:
    return ["trace", "--checkpoint", checkpoint or env.ckpt(), *args, "--out", env.trace(), "--device", "cpu"]


def call(fn: Callable, *args, **kwargs) -> Callable[[], object]:
    """``fn(*args, **kwargs)`` to run later; the arguments (files written, folders copied) are made now, before
    the files are hashed."""
    return lambda: fn(*args, **kwargs)


FIVE_MB_LINE = "text,label " + "word " * 1_000_000  # one 5 MB line, no line break: a header and nothing else

CASES: dict[str, Case] = {
    # ---- CLI: data files -------------------------------------------------------------------------------------------
    "cli empty file": Case("cli", lambda e: train_on(e, "empty.csv", b""), ("empty.csv", "0 bytes")),
    "cli header only": Case("cli", lambda e: train_on(e, "header.csv", "text,label\n"), ("no data rows",)),
    "cli unknown text column": Case("cli", lambda e: train_on(e, "r.csv", rows_csv(GOOD_ROWS), "--text-column", "review"),
                                    ("no text column 'review'", "text, label", "--text-column")),
    "cli missing default columns": Case("cli", lambda e: train_on(e, "c.csv", rows_csv(GOOD_ROWS, "body,y")),
                                        ("no text column found", "body, y", "--text-column")),
    "cli label column index out of range": Case(
        "cli", lambda e: train_on(e, "i.tsv", "a\t0\nb\t1\n", "--text-column", "0", "--label-column", "7"),
        ("index 7", "2 columns")),
    "cli one class only": Case("cli", lambda e: train_on(e, "one.csv", rows_csv([(f"t {i}", "pos") for i in range(9)])),
                               ("single class", "at least 2 classes")),
    "cli empty texts": Case("cli", lambda e: train_on(e, "holes.csv", "text,label\na,x\n,y\nc,x\n  ,y\n"),
                            ("2 empty or missing texts", "data row 2 (line 3)")),
    "cli NaN texts in parquet": Case(
        "cli", lambda e: train(e, "--data", e.parquet("nan.parquet", pd.DataFrame({"text": ["a", None, "c", float("nan")],
                                                                                  "label": [0, 1, 0, 1]}))),
        ("'text'", "2 empty or missing texts", "data row 2")),
    "cli invalid UTF-8": Case("cli", lambda e: train_on(e, "latin.csv", "text,label\ncaf\xe9,0\nb,1\n".encode("latin-1")),
                              ("not UTF-8", "line 2", "re-save")),
    "cli semicolon delimiter": Case("cli", lambda e: train_on(e, "semi.csv", rows_csv(GOOD_ROWS, "text;label", ";")),
                                    ("semicolon-separated", "comma")),
    "cli tabs in a .csv": Case("cli", lambda e: train_on(e, "tabs.csv", rows_csv(GOOD_ROWS, "text\tlabel", "\t")),
                               ("tab-separated", "rename it .tsv")),
    "cli truncated parquet": Case(
        "cli", lambda e: train(e, "--data", e.parquet("cut.parquet", pd.DataFrame({"text": ["a b"] * 50,
                                                                                  "label": [0, 1] * 25}), truncate=True)),
        ("cut.parquet", "not a readable Parquet file")),
    "cli 5 MB single line": Case("cli", lambda e: train_on(e, "oneline.csv", FIVE_MB_LINE), ("no data rows", "...")),
    "cli data is a folder": Case("cli", lambda e: train(e, "--data", str(Path(e.write("d.csv/x", "")).parent)),
                                 ("is not a file",)),
    "cli data does not exist": Case("cli", lambda e: train(e, "--data", str(e.tmp / "nope.csv")),
                                    ("nope.csv", "file not found")),
    "cli unsupported extension": Case("cli", lambda e: train_on(e, "data.xlsx", "x"), ("unsupported file type '.xlsx'",)),
    # ---- CLI: configs and backbones ----------------------------------------------------------------------------------
    "cli config unknown key": Case(
        "cli", lambda e: train(e, "--data", str(e.csv), "--config", e.write("c.json", '{"model": {"threshold": 0.5}}')),
        ("unknown ModelConfig field(s) threshold", "known:")),
    "cli config wrong type": Case(
        "cli", lambda e: train(e, "--data", str(e.csv), "--config", e.write("c.json", '{"train": {"epochs": "three"}}')),
        ("TrainConfig field epochs must be an integer", "'three'")),
    "cli config alpha wrong type": Case(
        "cli", lambda e: train(e, "--data", str(e.csv), "--config", e.write("c.json", '{"model": {"alpha": "high"}}')),
        ("ModelConfig field alpha must be a number",)),
    "cli config not JSON": Case("cli", lambda e: train(e, "--data", str(e.csv), "--config", e.write("c.json", "{model:")),
                                ("not valid JSON",)),
    "cli config is a folder": Case("cli", lambda e: train(e, "--data", str(e.csv), "--config", str(e.tmp)),
                                   ("is a folder; pass a JSON file",)),
    "cli GPT-2 backbone": Case(
        "cli", lambda e: ["train", "--data", str(e.csv), "--backbone", gpt2_folder(e), "--out", e.out_ckpt(),
                          "--no-progress", "--max-steps", "1"],
        ("gpt2", "decoder-only", "BERT-family encoder")),
    "cli remote-code backbone without the flag": Case(
        "cli", lambda e: ["train", "--data", str(e.csv), "--backbone", remote_code_folder(e), "--out", e.out_ckpt(),
                          "--no-progress", "--max-steps", "1"],
        ("its own Python code", "--trust-remote-code")),
    "cli backbone folder does not exist": Case(
        "cli", lambda e: ["train", "--data", str(e.csv), "--backbone", str(e.tmp / "no-model"), "--out", e.out_ckpt()],
        ("cannot load backbone", "no such folder", "minilm-l6")),
    # ---- CLI: checkpoints --------------------------------------------------------------------------------------------
    "cli checkpoint does not exist": Case("cli", lambda e: trace(e, checkpoint=str(e.tmp / "nope")),
                                          ("checkpoint folder not found",)),
    "cli checkpoint is a file": Case("cli", lambda e: trace(e, checkpoint=e.write("ckpt.txt", "x")),
                                     ("is a file", "folder holding config.json")),
    "cli missing weights file": Case(
        "cli", lambda e: trace(e, checkpoint=e.ckpt(edit=lambda f: (f / "model.safetensors").unlink())),
        ("missing model.safetensors", "re-train")),
    "cli corrupt weights file": Case(
        "cli", lambda e: trace(e, checkpoint=e.ckpt(edit=truncate_file("model.safetensors"))),
        ("model.safetensors", "corrupt safetensors")),
    "cli pickle pytorch_model.bin": Case(
        "cli", lambda e: trace(e, checkpoint=e.ckpt(edit=pickle_instead_of_safetensors)),
        ("pytorch_model.bin", "pickle weights are refused", "safetensors")),
    "cli config with a wrong label count": Case(
        "cli", lambda e: trace(e, checkpoint=e.ckpt(edit=lambda f: set_config(f, **{"de3.label_names": ["a", "b", "c"]}))),
        ("2 classes but config.json lists 3",)),
    "cli checkpoint config not JSON": Case(
        "cli", lambda e: trace(e, checkpoint=e.ckpt(edit=lambda f: (f / "config.json").write_text("{"))),
        ("config.json", "not valid JSON")),
    "cli plain Hugging Face model as checkpoint": Case("cli", lambda e: trace(e, checkpoint=e.backbone),
                                                       ("plain Hugging Face model",)),
    "cli checkpoint of a GPT-2": Case(
        "cli", lambda e: trace(e, checkpoint=e.ckpt(edit=lambda f: set_config(f, model_type="gpt2"))),
        ("decoder-only",)),
    "cli checkpoint needing remote code": Case(
        "cli", lambda e: trace(e, checkpoint=e.ckpt(edit=lambda f: set_config(f, model_type="my-encoder",
                                                                              auto_map={"AutoModel": "m.M"}))),
        ("'my-encoder'", "without running remote code")),
    # ---- CLI: data against a checkpoint, outputs ---------------------------------------------------------------------
    "cli labels unseen in training": Case(
        "cli", lambda e: trace(e, "--data", e.write("abc.csv", rows_csv([(f"t {i}", "abc"[i % 3]) for i in range(30)]))),
        ("abc.csv", "classes the checkpoint never saw", "'a'", "'negative', 'positive'")),
    "cli over-long sentence pair beyond the backbone's positions": Case(
        "cli", lambda e: trace(e, "--data", e.write("pairs.csv", pair_csv(400)),
                               checkpoint=e.ckpt(edit=lambda f: set_config(f, **{"de3.max_length": 128}))),
        ("128 tokens", "backbone's 64 position embeddings", "--max-length 64")),
    "cli --out is an existing file": Case(
        "cli", lambda e: ["trace", "--checkpoint", e.ckpt(), "--out", e.write("mine.csv", "text,label\n"), "--device", "cpu"],
        ("mine.csv", "is a file, not a folder")),
    "cli --out is a folder of other things": Case(
        "cli", lambda e: ["trace", "--checkpoint", e.ckpt(), "--out", str(Path(e.write("work/notes.txt", "mine")).parent),
                          "--device", "cpu"],
        ("work", "not a checkpoint or trace", "new or empty folder")),
    "cli trace layers out of order": Case(
        "cli", lambda e: ["curves", "--trace", e.trace("bad", trace_table_edit(swap_first_layers)),
                          "--out", e.write("curves.csv", "existing")],
        ("trace.parquet", "layers 1..3", "in order")),
    # ---- API -----------------------------------------------------------------------------------------------------------
    "api empty spec": Case("api", lambda e: call(load_data, ""), ("data spec must be",), DataError),
    "api blank jsonl": Case("api", lambda e: call(load_data, e.write("h.jsonl", "\n\n")), ("blank lines",), DataError),
    "api 5 MB single line": Case("api", lambda e: call(load_data, e.write("oneline.csv", FIVE_MB_LINE)), ("no data rows",),
                                 DataError),
    "api jsonl with a non-object line": Case(
        "api", lambda e: call(load_data, e.write("l.jsonl", '{"text": "a", "label": 0}\n[1, 2]\n')),
        ("line 2", "expected a JSON object"), DataError),
    "api load_checkpoint missing folder": Case(
        "api", lambda e: call(load_checkpoint, e.tmp / "none"),
        ("checkpoint folder not found",), CheckpointError),
    "api from_pretrained on a directory of junk": Case(
        "api", lambda e: call(DE3Bert.from_pretrained, Path(e.write("junk/a.txt", "x")).parent), ("missing config.json",),
        CheckpointError),
    "api load_checkpoint_data labels unseen": Case(
        "api", lambda e: call(load_checkpoint_data, e.ckpt(),
                              spec=e.write("z.csv", rows_csv([(f"t {i}", "xyz"[i % 3]) for i in range(30)]))),
        ("classes the checkpoint never saw", "'x', 'y', 'z'"), CheckpointError),
    "api ModelConfig unknown key": Case("api", lambda e: call(ModelConfig.from_dict, {"threshold": 0.5}, "cfg.json"),
                                        ("cfg.json", "unknown ModelConfig field(s) threshold")),
    "api ModelConfig wrong type": Case("api", lambda e: call(ModelConfig.from_dict, {"label_names": "ab"}, "cfg.json"),
                                       ("label_names must be a list of strings", "'ab'")),
    "api ModelConfig not an object": Case("api", lambda e: call(ModelConfig.from_dict, [["alpha", 1]], "cfg.json"), ("must be a JSON object",)),
    "api load_backbone GPT-2": Case(
        "api", lambda e: call(load_backbone, gpt2_folder(e)),
        ("decoder-only",)),
    "api trace missing column": Case(
        "api", lambda e: call(load_trace, e.trace("t", trace_table_edit(lambda t: t.drop(columns=["dr"])))),
        ("missing column(s) dr",)),
    "api trace wrong dtype": Case(
        "api", lambda e: call(load_trace, e.trace("t", trace_table_edit(lambda t: t.astype({"entropy": "float64"})))),
        ("column entropy has dtype float64, expected float32",)),
    "api trace layers out of order": Case(
        "api", lambda e: call(load_trace, e.trace("t", trace_table_edit(swap_first_layers))), ("in order",)),
    "api trace truncated parquet": Case(
        "api", lambda e: call(load_trace, e.trace("t", truncate_file("trace.parquet"))), ("unreadable trace",)),
    "api trace folder does not exist": Case("api", lambda e: call(load_trace, str(e.tmp / "none")), ("not found",)),
    "api trace path is a file": Case("api", lambda e: call(load_trace, e.write("trace.parquet", "x")), ("is a file", "python -m analysis trace")),
    "api upload too large": Case(
        "api", lambda e: call(sources.save_upload, "big.csv", b"x" * (50 * 2**20 + 1)),
        ("big.csv", "52,428,801 bytes", "than the 50 MB this app accepts")),
    "api upload of an unsupported type": Case(
        "api", lambda e: call(sources.save_upload, "../../run.exe", b"MZ"),
        ("run.exe", "unsupported file type .exe")),
    "api preview of undecodable bytes": Case(
        "api", lambda e: call(sources.preview_columns, Path(e.write("u.csv", b"text,label\n\xff\xfe,0\n")),
                              display_name="mine.csv"),
        ("mine.csv", "not UTF-8")),
    "api typed checkpoint outside the roots": Case(
        "api", lambda e: call(sources.resolve_checkpoint, "../../etc"),
        ("'../../etc'", "outside the folders this app may read", "DE3_APP_ROOTS")),
}


# ---- good odd inputs --------------------------------------------------------------------------------------------------


def _odd_rows() -> list[tuple[str, str]]:
    return [(ODD_TEXTS[i % len(ODD_TEXTS)] + f" {i}", LABELS[i % 2]) for i in range(40)]


def _check_odd_trace(env: Env, argv) -> None:
    out = Path(argv[argv.index("--out") + 1])
    samples = load_trace(out).samples
    assert len(samples) == 4 and all(t in {r[0] for r in _odd_rows()} for t in samples["text"])


def _check_long_pair_trace(env: Env, argv) -> None:
    trace = load_trace(Path(argv[argv.index("--out") + 1]))
    assert (trace.n_tokens == 32).all() and "text_pair" in trace.samples  # truncated to max_length, both texts kept


def _check_long_text(env: Env, bundle) -> None:
    texts = bundle.train.texts + bundle.validation.texts + bundle.test.texts
    assert max(len(t) for t in texts) == 5_000_000 - 1  # kept whole (only tokenisation truncates)


def _check_upload_name(env: Env, path) -> None:
    assert path.parent == env.tmp / "cache" / "uploads" and re.fullmatch(r"[0-9a-f]{16}\.csv", path.name)


GOOD_CASES: dict[str, Case] = {
    "good emoji and RTL texts in a file with an odd name": Case(
        "cli", lambda e: ["trace", "--checkpoint", e.ckpt(), "--data",
                          e.write("отзывы 📊 تقييم (v2).csv", 'text,label\n' + "".join(f'"{t}",{lab}\n' for t, lab in _odd_rows())),
                          "--out", str(e.tmp / "new trace ✓"), "--device", "cpu"],
        None, check=_check_odd_trace, allow_new=("new trace ✓",)),
    "good over-long sentence pair is truncated": Case(
        "cli", lambda e: ["trace", "--checkpoint", e.ckpt(), "--data", e.write("pairs.csv", pair_csv(400)),
                          "--out", str(e.tmp / "pair-trace"), "--device", "cpu"],
        None, check=_check_long_pair_trace, allow_new=("pair-trace",)),
    "good 5 MB text in one row": Case(
        "api", lambda e: call(load_data, e.write("long.csv", rows_csv([("x" * 4_999_999, "a")] + GOOD_ROWS[:9]))),
        None, check=_check_long_text),
    "good upload named with ../ is kept under the cache": Case(
        "api", lambda e: call(sources.save_upload, "../../../etc/evil\u202e.csv", rows_csv(GOOD_ROWS).encode()),
        None, check=_check_upload_name, allow_new=("cache",)),
}


def _stderr_lines(err: str) -> list[str]:
    """stderr without tqdm's progress bar lines."""
    parts = re.split(r"[\r\n]", err)
    return [p for p in parts if p.strip() and "%|" not in p]


@pytest.fixture
def env(base, tmp_path, monkeypatch):
    monkeypatch.setenv("DE3_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("DE3_APP_ROOTS", raising=False)
    monkeypatch.chdir(tmp_path)
    return Env(tmp_path, base)


@pytest.mark.parametrize("name", list(CASES) + list(GOOD_CASES))
def test_input(name, env, capsys):
    case = CASES.get(name) or GOOD_CASES[name]
    made = case.make(env)
    before = snapshot(env.tmp)
    capsys.readouterr()
    if case.kind == "cli":
        code = main(list(made))
        err = capsys.readouterr().err
        if case.expect is None:
            assert code == 0, err
            case.check(env, made)
        else:
            lines = _stderr_lines(err)
            assert code == 2, err
            assert len(lines) == 1 and lines[0].startswith("error: "), lines
            assert "Traceback" not in err
            for needle in case.expect:
                assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
            assert len(lines[0]) < 600, lines[0]
    else:
        if case.expect is None:
            case.check(env, made())
        else:
            with pytest.raises(case.error) as excinfo:
                made()
            message = str(excinfo.value)
            assert "\n" not in message and len(message) < 600, message
            for needle in case.expect:
                assert needle in message, f"{needle!r} not in {message!r}"
    assert_untouched(before, snapshot(env.tmp), case.allow_new)


def test_the_table_is_big_enough():
    assert len(CASES) >= 30 and len(GOOD_CASES) >= 3


@pytest.mark.parametrize("command, needle", [
    (["trace", "--checkpoint", "{tmp}/missing", "--out", "{tmp}/old-trace"], "checkpoint folder not found"),
    (["train", "--data", "{tmp}/latin.csv", "--out", "{tmp}/old-ckpt"], "not UTF-8"),
])
def test_cli_error_in_a_fresh_process(command, needle, base, tmp_path):
    """The same contract as seen from a shell: exit code 2 and exactly one stderr line, nothing else."""
    shutil.copytree(base["trace"], tmp_path / "old-trace")
    shutil.copytree(base["ckpt"], tmp_path / "old-ckpt")
    (tmp_path / "latin.csv").write_bytes("text,label\ncaf\xe9,0\nb,1\n".encode("latin-1"))
    before = snapshot(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "analysis", *(c.format(tmp=tmp_path) for c in command)], check=False,
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and needle in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert_untouched(before, snapshot(tmp_path))


# ---- a trace process killed half-way ------------------------------------------------------------------------------


def _big_csv(path: Path, rows: int = 6000) -> Path:
    import random

    from tests.conftest import WORDS

    rng = random.Random(1)
    lines = ["text,label"] + [f"{' '.join(rng.choices(WORDS, k=12))},{LABELS[i % 2]}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _kill_trace_half_way(ckpt: Path, data: Path, out: Path) -> str:
    """Start `python -m analysis trace`, wait until its progress bar shows samples done, then SIGKILL it."""
    cmd = [sys.executable, "-m", "analysis", "trace", "--checkpoint", str(ckpt), "--data", str(data), "--split", "train",
           "--batch-size", "1", "--device", "cpu", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    os.set_blocking(proc.stderr.fileno(), False)
    seen, deadline = b"", time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            seen += proc.stderr.read() or b""
            done = [int(m) for m in re.findall(rb"\| *(\d+)/\d+ \[", seen)]
            if done and max(done) >= 50:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"trace ended before it could be killed: {seen[-500:]!r}"
        assert done and max(done) >= 50, f"no progress seen: {seen[-500:]!r}"
        # the temporary folder exists now: the kill lands mid-write
        assert [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp-")]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return seen.decode(errors="replace")


def test_killed_trace_keeps_the_previous_trace(base, tmp_path):
    out = tmp_path / "trace"
    shutil.copytree(base["trace"], out)
    before = snapshot(out)
    _kill_trace_half_way(base["ckpt"], _big_csv(tmp_path / "big.csv"), out)
    assert snapshot(out) == before  # byte-identical, same modification times
    assert load_trace(out).num_samples == len(pd.read_parquet(base["trace"] / "samples.parquet"))
    # hidden, never loaded as a trace; .trace.lock: the killed writer's lock file, which the kernel has unlocked
    leftovers = [p for p in tmp_path.iterdir() if p.name not in ("trace", "big.csv", ".trace.lock")]
    assert all(p.name.startswith(".trace.tmp-") for p in leftovers), leftovers
    assert not any((p / "meta.json").exists() for p in leftovers)  # meta.json comes last: load_trace refuses them


def test_killed_trace_leaves_no_output(base, tmp_path):
    out = tmp_path / "trace"
    _kill_trace_half_way(base["ckpt"], _big_csv(tmp_path / "big.csv"), out)
    assert not out.exists()
    leftovers = [p for p in tmp_path.iterdir() if p.name not in ("big.csv", ".trace.lock")]
    assert all(p.name.startswith(".trace.tmp-") for p in leftovers), leftovers
    for partial in leftovers:
        with pytest.raises(DE3Error, match="missing meta.json"):
            load_trace(partial)


# ---- safe loading -----------------------------------------------------------------------------------------------


def test_every_torch_load_is_weights_only():
    calls = []
    for path in [*REPO.glob("analysis/**/*.py"), *REPO.glob("app/**/*.py"), REPO / "streamlit_app.py"]:
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"torch\.load\(", text):
            depth, end = 0, match.end() - 1
            for end in range(match.end() - 1, len(text)):
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0:
                    break
            calls.append((path.name, text[match.start():end + 1]))
    assert all("weights_only=True" in call for _, call in calls), calls


def test_trust_remote_code_is_false_unless_asked(base, tmp_path, monkeypatch, capsys):
    import transformers

    from analysis import backbones

    seen: list[tuple[str, object]] = []

    class Stop(Exception):
        pass

    def recorder(what):
        def from_pretrained(*args, **kwargs):
            seen.append((what, kwargs.get("trust_remote_code", "absent")))
            raise Stop
        return from_pretrained

    for cls in (transformers.AutoConfig, transformers.AutoModel, transformers.AutoTokenizer):
        monkeypatch.setattr(cls, "from_pretrained", recorder(cls.__name__))
    for call in (backbones.load_backbone_config, backbones.load_backbone, backbones.load_tokenizer):
        with pytest.raises(Stop):
            call(base["backbone"])
    assert seen == [("AutoConfig", False), ("AutoConfig", False), ("AutoTokenizer", False)]

    # the CLI: off by default, on with --trust-remote-code for the backbone and tokenizer loads inside train
    from analysis import training

    def fake_train(*args, **kwargs):
        seen.append(("train", backbones._trust(None)))

    monkeypatch.setattr(training, "train", fake_train)
    seen.clear()
    argv = ["train", "--data", str(base["csv"]), "--backbone", base["backbone"], "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    assert main([*argv, "--trust-remote-code"]) == 0
    assert seen == [("train", False), ("train", True)]
    assert backbones._trust(None) is False  # not left on after the command


def test_checkpoint_loading_never_runs_remote_code(base, tmp_path):
    """A checkpoint's config cannot make loading import code: an unknown backbone type is refused, not imported."""
    folder = tmp_path / "ckpt"
    shutil.copytree(base["ckpt"], folder)
    set_config(folder, model_type="my-encoder", auto_map={"AutoConfig": "configuration_my.MyConfig"})
    (folder / "configuration_my.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(CheckpointError, match="without running remote code"):
        load_checkpoint(folder)


# ---- the app: uploads and typed paths on the Overview page ---------------------------------------------------------


@pytest.fixture(scope="module")
def app_root(base, tmp_path_factory):
    """An allowed root (via DE3_APP_ROOTS) holding two tiny checkpoints, a symlink out of it, and a cache."""
    root = tmp_path_factory.mktemp("app-root")
    shutil.copytree(base["ckpt"], root / "ckpt")
    shutil.copytree(base["ckpt"], root / "ckpt2")
    outside = tmp_path_factory.mktemp("outside")
    shutil.copytree(base["ckpt"], outside / "ckpt")
    (root / "link").symlink_to(outside / "ckpt", target_is_directory=True)
    return {"root": root, "outside": outside, "cache": tmp_path_factory.mktemp("app-cache")}


@pytest.fixture
def app_env(app_root, monkeypatch):
    monkeypatch.setenv("DE3_APP_ROOTS", str(app_root["root"]))
    monkeypatch.setenv("DE3_CACHE_DIR", str(app_root["cache"]))
    return app_root


def overview(ckpt: Path | str, **query):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update({"ckpt": str(ckpt), "method": "pca", **query})
    return at.run()


def no_exception(at):
    assert not at.exception, [e.value for e in at.exception]
    return at


def errors(at) -> list[str]:
    return [e.value for e in at.error]


def upload(at, name: str, content: bytes):
    no_exception(at.radio(key="ov_kind").set_value("file").run())
    return no_exception(at.file_uploader(key="ov_upload").upload(name, content, "text/csv").run())


def type_checkpoint(at, typed: str):
    no_exception(at.text_input(key="ov_ckpt_path").input(typed).run())
    return no_exception(at.button(key="ov_load").click().run())


def _app_snapshot(app_env) -> dict:
    return {f"root/{k}": v for k, v in snapshot(app_env["root"]).items()} | \
           {f"outside/{k}": v for k, v in snapshot(app_env["outside"]).items()} | \
           {f"cache/{k}": v for k, v in snapshot(app_env["cache"]).items()}


APP_UPLOADS = {
    # name: (file name, content, needles in st.error, whether the error shows only on "Load trace")
    "empty": ("empty.csv", b"", ("empty.csv", "empty (0 bytes)"), False),
    "header only": ("head.csv", b"text,label\n", ("head.csv", "no data rows"), False),
    "invalid UTF-8": ("bytes.csv", b"text,label\ncaf\xe9,negative\n", ("bytes.csv", "not UTF-8"), False),
    "semicolons": ("semi.csv", rows_csv(GOOD_ROWS, "text;label", ";").encode(), ("semi.csv", "semicolon-separated"), False),
    "too large": ("big.csv", b"text,label\n" + b"x" * (50 * 2**20), ("big.csv", "than the 50 MB this app accepts"), False),
    "labels unseen in training": ("abc.csv", rows_csv([(f"t {i}", "abc"[i % 3]) for i in range(30)]).encode(),
                                  ("abc.csv", "classes the checkpoint never saw"), True),
    "empty texts": ("holes.csv", rows_csv([("", "negative"), ("a", "positive")] * 10).encode(),
                    ("holes.csv", "empty or missing texts"), True),
}


@pytest.mark.parametrize("case", list(APP_UPLOADS))
def test_app_bad_upload(case, app_env):
    name, content, needles, on_load = APP_UPLOADS[case]
    at = no_exception(overview(app_env["root"] / "ckpt"))
    assert not errors(at)
    before = _app_snapshot(app_env)
    at = upload(at, name, content)
    if on_load:
        assert not errors(at)
        at = no_exception(at.button(key="ov_load").click().run())
    shown = errors(at)
    assert len(shown) == 1 and "\n" not in shown[0], shown
    assert all(n in shown[0] for n in needles), shown
    assert str(app_env["cache"]) not in shown[0]  # the upload is named as the user knows it, not by its hash
    assert "Traceback" not in shown[0]
    assert_untouched(before, _app_snapshot(app_env), allow_new=(f"cache{os.sep}uploads",))
    no_exception(at.run())  # and the app keeps running


def test_app_good_odd_upload(app_env):
    name = "отзывы 📊 تقييم.csv"
    content = ("text,label\n" + "".join(f'"{t}",{lab}\n' for t, lab in _odd_rows())).encode()
    at = upload(no_exception(overview(app_env["root"] / "ckpt")), name, content)
    assert not errors(at) and len(at.dataframe) == 1
    at = no_exception(at.button(key="ov_load").click().run())
    assert not errors(at), errors(at)
    assert any(name in c.value for c in at.caption)


@pytest.mark.parametrize("typed", ["../../etc", "/etc", "~/..", "LINK"])
def test_app_refuses_paths_outside_the_roots(typed, app_env):
    typed = str(app_env["root"] / "link") if typed == "LINK" else typed
    at = no_exception(overview(app_env["root"] / "ckpt"))
    before = _app_snapshot(app_env)
    at = type_checkpoint(at, typed)
    shown = errors(at)
    assert len(shown) == 1 and "outside the folders this app may read" in shown[0] and "DE3_APP_ROOTS" in shown[0], shown
    assert_untouched(before, _app_snapshot(app_env))
    assert at.session_state["source"].checkpoint == str(app_env["root"] / "ckpt")  # nothing else was loaded


def test_app_refuses_a_glue_folder_outside_the_roots(app_env):
    at = no_exception(overview(app_env["root"] / "ckpt"))
    no_exception(at.radio(key="ov_kind").set_value("glue").run())
    no_exception(at.text_input(key="ov_glue_dir").input("/etc").run())
    at = no_exception(at.button(key="ov_load").click().run())
    assert any("data folder '/etc' is outside the folders" in e for e in errors(at)), errors(at)


@pytest.mark.parametrize("query, needle", [
    ({"ckpt": "/etc"}, "checkpoint folder '/etc' is outside"),
    ({"data": "/etc/passwd.csv"}, "data file '/etc/passwd.csv' is outside"),
    ({"data": "glue/sst2", "data_dir": "/etc"}, "data folder '/etc' is outside"),
])
def test_app_refuses_url_paths_outside_the_roots(query, needle, app_env):
    at = no_exception(overview(query.pop("ckpt", app_env["root"] / "ckpt"), **query))
    assert any(needle in e and "DE3_APP_ROOTS" in e for e in errors(at)), errors(at)


def test_app_loads_an_allowed_path(app_env):
    at = no_exception(overview(app_env["root"] / "ckpt"))
    at = type_checkpoint(at, str(app_env["root"] / "ckpt2"))
    assert not errors(at), errors(at)
    assert at.session_state["source"].checkpoint == str(app_env["root"] / "ckpt2")
    assert any("ckpt2" in c.value for c in at.caption)


def test_allowed_roots_include_the_defaults_and_the_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DE3_APP_ROOTS", os.pathsep.join([str(tmp_path / "a"), "", str(tmp_path / "b")]))
    roots = sources.allowed_roots()
    for expected in (sources.PRETRAINED, sources.REPO / "runs", sources.cache_root(), sources.DEFAULT_GLUE_DIR,
                     tmp_path / "a", tmp_path / "b"):
        assert expected.resolve() in roots
    assert sources.check_allowed(tmp_path / "a" / "x" / ".." / "y", "a/y", "data file") == (tmp_path / "a" / "y").resolve()
    with pytest.raises(DE3Error, match="outside"):
        sources.check_allowed(tmp_path / "a" / ".." / "c", "a/../c", "data file")


def test_upload_limit_matches_the_server_setting():
    config = (REPO / ".streamlit" / "config.toml").read_text()
    assert re.search(rf"^maxUploadSize = {sources.MAX_UPLOAD_MB}$", config, flags=re.MULTILINE)
