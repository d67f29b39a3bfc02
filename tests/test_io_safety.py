"""Files at the boundary (issue "Reliability, second pass", part B): outputs that would destroy an input, two
writers of one folder, unreadable and lying inputs, and the app's URL paths and map layers.

    outputs     every command checks its --out before any long work: writable, none of its inputs (equal, inside,
                containing); compact may write into its own checkpoint and keeps what the folder holds
    locks       a second writer of a folder (or of one inside it, or around it) is refused, naming the process
                that writes it; a killed writer's lock blocks nobody; atomic_dir leaves no .tmp-/.old- folders
    reading     permission problems and symlink loops said as such; meta.json, trace.parquet, samples.parquet,
                embeddings.npy / prototypes.npy and checkpoint configs validated where they enter
    app         a NUL byte in a URL path is an st.error; a map layer outside 1..L is clamped with a warning

Tests run as root here, and root ignores permission bits: the permission cases use a path under a file (where
writing really fails), a synthetic ``PermissionError`` through the real readers, and chmod only when not root.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ["DE3_APP_WARMUP"] = "0"

from analysis import io as aio
from analysis.checkpoint import load_checkpoint
from analysis.commands import main
from analysis.errors import CheckpointError, DataError, DE3Error
from analysis.io import OutputBusy, atomic_dir, check_output, os_error_message, output_lock
from analysis.trace import TraceError, load_trace
from tests.test_bad_inputs import (LABELS, _big_csv, _kill_trace_half_way, _save_tiny_checkpoint, assert_untouched,
                                   set_config, snapshot)

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "streamlit_app.py")
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def made(tiny_backbone, tiny_csv, tmp_path_factory):
    """A tiny checkpoint holding its own test trace (``trace-test/``, written by the CLI *inside* the checkpoint,
    as the shipped ones are) and a README.md model card; and a trace of it elsewhere."""
    root = tmp_path_factory.mktemp("io-safety")
    ckpt = Path(_save_tiny_checkpoint(tiny_backbone, tiny_csv, root / "ckpt"))
    assert main(["trace", "--checkpoint", str(ckpt), "--out", str(ckpt / "trace-test"), "--device", "cpu",
                 "--no-progress"]) == 0
    (ckpt / "README.md").write_text("---\ntitle: tiny\n---\n# a model card\n", encoding="utf-8")
    assert main(["trace", "--checkpoint", str(ckpt), "--out", str(root / "trace"), "--device", "cpu",
                 "--no-progress"]) == 0
    return {"ckpt": ckpt, "trace": root / "trace", "backbone": tiny_backbone, "csv": tiny_csv}


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def cli_error(argv: list[str], capsys) -> str:
    """Run the CLI in-process; it must exit 2 with exactly one ``error: ...`` line and no traceback."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and "%|" not in ln]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, lines
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name or p.name.endswith(".lock"))


# ---- outputs that are (or hold, or lie inside) an input ------------------------------------------------------------


OUT_CASES: dict[str, tuple[Callable[[dict, Path], list[str]], tuple[str, ...]]] = {
    "trace --out is the checkpoint": (
        lambda m, t: ["trace", "--checkpoint", str(t / "ckpt"), "--out", str(t / "ckpt"), "--device", "cpu"],
        ("is the input", "ckpt")),
    "trace --out contains the data file": (
        lambda m, t: ["trace", "--checkpoint", str(t / "ckpt"), "--data", str(t / "run" / "data.csv"),
                      "--out", str(t / "run"), "--device", "cpu"],
        ("contains the input", "data.csv")),
    "trace --out is the data file's folder through a symlink": (
        lambda m, t: ["trace", "--checkpoint", str(t / "ckpt"), "--data", str(t / "run" / "data.csv"),
                      "--out", str(t / "alias"), "--device", "cpu"],
        ("contains the input",)),
    "curves --out is the trace's own parquet": (
        lambda m, t: ["curves", "--trace", str(t / "trace"), "--out", str(t / "trace" / "trace.parquet")],
        ("lies inside the input", "trace.parquet")),
    "curves --out inside the trace folder": (
        lambda m, t: ["curves", "--trace", str(t / "trace"), "--out", str(t / "trace" / "curves.csv")],
        ("lies inside the input",)),
    "train --out is the backbone folder": (
        lambda m, t: ["train", "--data", str(m["csv"]), "--backbone", str(t / "backbone"), "--out", str(t / "backbone"),
                      "--max-steps", "1", "--no-progress"],
        ("is the input", "backbone")),
    "train --out contains the training file": (
        lambda m, t: ["train", "--data", str(t / "run" / "data.csv"), "--backbone", m["backbone"], "--out", str(t / "run"),
                      "--max-steps", "1", "--no-progress"],
        ("contains the input", "data.csv")),
    "train --out is the --config file": (
        lambda m, t: ["train", "--data", str(m["csv"]), "--backbone", m["backbone"], "--config", str(t / "c.json"),
                      "--out", str(t / "c.json"), "--max-steps", "1"],
        ("c.json",)),
    "compact --out contains the checkpoint": (
        lambda m, t: ["compact", "--checkpoint", str(t / "run" / "inner"), "--out", str(t / "run")],
        ("contains the input", "inner")),
    "bench --out replaces the checkpoint's weights": (
        lambda m, t: ["bench", "--checkpoint", str(t / "ckpt"), "--out", str(t / "ckpt" / "model.safetensors"),
                      "--device", "cpu"],
        ("lies inside the input", "model.safetensors")),
    "--out under a file (nothing can be written there)": (
        lambda m, t: ["trace", "--checkpoint", str(t / "ckpt"), "--out", str(t / "c.json" / "sub"), "--device", "cpu"],
        ("c.json is a file", "nothing can be made under it")),
}


@pytest.mark.parametrize("name", list(OUT_CASES))
def test_an_output_never_destroys_an_input(name, made, tmp_path, capsys):
    make, needles = OUT_CASES[name]
    copy(made["ckpt"], tmp_path / "ckpt")
    copy(made["trace"], tmp_path / "trace")
    copy(made["ckpt"], tmp_path / "run")  # an output folder of ours (config.json) that holds a data file
    copy(made["ckpt"], tmp_path / "run" / "inner")
    shutil.copy(made["csv"], tmp_path / "run" / "data.csv")
    (tmp_path / "alias").symlink_to(tmp_path / "run", target_is_directory=True)
    copy(Path(made["backbone"]), tmp_path / "backbone")
    (tmp_path / "c.json").write_text('{"train": {}}')
    argv = make(made, tmp_path)
    before = snapshot(tmp_path)
    line = cli_error(argv, capsys)
    for needle in needles:
        assert needle in line, line
    assert_untouched(before, snapshot(tmp_path))


def test_the_output_is_checked_before_any_work(made, tmp_path, capsys, monkeypatch):
    """A --out that cannot be written fails at once: no data is read, no model is loaded, no step is trained."""
    from analysis import checkpoint, data, training
    from analysis.commands import membench, study

    def never(*args, **kwargs):
        raise AssertionError("work started before the output was checked")

    for module, name in ((data, "load_data"), (training, "train"), (checkpoint, "load_checkpoint"),
                         (membench, "run_memory_bench"), (study, "train_variants")):
        monkeypatch.setattr(module, name, never)
    (tmp_path / "file").write_text("x")
    glue = tmp_path / "glue"
    (glue / "SST-2").mkdir(parents=True)
    for argv in (["train", "--data", str(made["csv"]), "--backbone", made["backbone"], "--out", str(tmp_path / "file" / "o")],
                 ["trace", "--checkpoint", str(made["ckpt"]), "--out", str(tmp_path / "file" / "o"), "--device", "cpu"],
                 ["curves", "--trace", str(made["trace"]), "--out", str(tmp_path / "file" / "c.csv")],
                 ["bench", "--checkpoint", str(made["ckpt"]), "--out", str(tmp_path / "file" / "b.json")],
                 ["compact", "--checkpoint", str(made["ckpt"]), "--out", str(tmp_path / "file" / "o")],
                 ["bench-memory", "--out", str(tmp_path / "file" / "m.json")],
                 ["study", "--data-dir", str(glue), "--work", str(tmp_path / "work"), "--out",
                  str(tmp_path / "file" / "sst2.md")],
                 ["study", "--data-dir", str(glue), "--work", str(tmp_path / "file" / "work")]):
        assert "nothing can be made under it" in cli_error(argv, capsys)


@pytest.mark.skipif(IS_ROOT, reason="root ignores permission bits; the case above covers an unwritable place")
def test_a_read_only_out_is_refused_before_training(made, tmp_path, capsys):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        line = cli_error(["train", "--data", str(made["csv"]), "--backbone", made["backbone"], "--out",
                          str(locked / "run"), "--max-steps", "1"], capsys)
        assert "permission denied" in line and str(locked) in line
    finally:
        locked.chmod(0o755)


def test_compact_in_place_keeps_the_traces_and_the_model_card(made, tmp_path, capsys):
    ckpt = copy(made["ckpt"], tmp_path / "ckpt")
    card = (ckpt / "README.md").read_bytes()
    trace_before = snapshot(ckpt / "trace-test")
    assert main(["compact", "--checkpoint", str(ckpt), "--out", str(ckpt)]) == 0
    assert "kept README.md, trace-test" in capsys.readouterr().out
    assert (ckpt / "README.md").read_bytes() == card
    assert {k: v[:2] for k, v in snapshot(ckpt / "trace-test").items()} == {k: v[:2] for k, v in trace_before.items()}
    assert load_trace(ckpt / "trace-test").num_samples > 0
    model, _ = load_checkpoint(ckpt)  # the compacted weights load
    assert json.loads((ckpt / "config.json").read_text())["de3"]["label_names"] == list(LABELS)
    assert leftovers(tmp_path) == []


def test_compact_into_an_existing_folder_keeps_its_card(made, tmp_path):
    src = copy(made["ckpt"], tmp_path / "src")
    shipped = copy(made["ckpt"], tmp_path / "shipped")
    (shipped / "README.md").write_text("the shipped card")
    (shipped / "vocab.txt").write_text("a stale tokenizer file")  # model files are replaced, never kept
    assert main(["compact", "--checkpoint", str(src), "--out", str(shipped)]) == 0
    assert (shipped / "README.md").read_text() == "the shipped card" and (shipped / "trace-test").is_dir()
    assert not (shipped / "vocab.txt").exists() or (shipped / "vocab.txt").read_text() != "a stale tokenizer file"


def test_a_trace_may_go_inside_its_checkpoint(made, tmp_path):
    ckpt = copy(made["ckpt"], tmp_path / "ckpt")
    assert main(["trace", "--checkpoint", str(ckpt), "--out", str(ckpt / "trace-validation"), "--split", "validation",
                 "--device", "cpu", "--no-progress"]) == 0
    assert load_trace(ckpt / "trace-validation").num_samples > 0
    assert leftovers(ckpt) == [] and leftovers(tmp_path) == []


def test_check_output_directly(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "meta.json").write_text("{}")  # an output of ours: it may be replaced, if no input
    (tmp_path / "in" / "f.csv").write_text("x")
    with pytest.raises(DE3Error, match="is the input"):
        check_output(tmp_path / "in", inputs=[tmp_path / "in"])
    with pytest.raises(DE3Error, match="lies inside the input"):
        check_output(tmp_path / "in" / "new", inputs=[tmp_path / "in"])
    with pytest.raises(DE3Error, match="contains the input"):
        check_output(tmp_path / "in", inputs=[tmp_path / "in" / "f.csv"])
    assert check_output(tmp_path / "in" / "new", around=[tmp_path / "in"]) == tmp_path / "in" / "new"
    with pytest.raises(DE3Error, match="lies inside the input"):  # a new entry, yes; one of its files, no
        check_output(tmp_path / "in" / "f.csv", around=[tmp_path / "in"], kind="file")
    with pytest.raises(DE3Error, match="contains the input"):
        check_output(tmp_path / "in", around=[tmp_path / "in" / "f.csv"])
    assert check_output(tmp_path / "in") == tmp_path / "in"
    with pytest.raises(DE3Error, match="NUL byte"):
        check_output("a\x00b")
    with pytest.raises(DE3Error, match="is a folder; give a file name"):
        check_output(tmp_path, kind="file")


# ---- two writers of one folder ---------------------------------------------------------------------------------------


def _start_trace(ckpt: Path, data: Path, out: Path) -> subprocess.Popen:
    """A real `python -m analysis trace` (one sample per batch, so it runs a while), started once it holds the lock."""
    cmd = [sys.executable, "-m", "analysis", "trace", "--checkpoint", str(ckpt), "--data", str(data), "--split",
           "train", "--batch-size", "1", "--device", "cpu", "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    deadline = time.monotonic() + 90
    while not any(p.name.startswith(f".{out.name}.tmp-") for p in out.parent.iterdir()):  # writing: lock held
        assert proc.poll() is None, proc.stderr.read().decode(errors="replace")[-2000:]
        assert time.monotonic() < deadline, "the first trace never started writing"
        time.sleep(0.1)
    return proc


def _finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]


def test_a_second_writer_of_the_same_out_is_refused(made, tmp_path, capsys):
    """Two processes trace into one --out (a `python -m analysis trace` child, then this process): the second is
    refused at once, naming the first; the first ends with a complete trace and nothing left beside it."""
    big = _big_csv(tmp_path / "big.csv", rows=3000)
    out = tmp_path / "trace"
    first = _start_trace(made["ckpt"], big, out)
    try:
        line = cli_error(["trace", "--checkpoint", str(made["ckpt"]), "--out", str(out), "--device", "cpu",
                          "--no-progress"], capsys)
        assert first.poll() is None, "the first trace ended before the second one tried"
    finally:
        _finish(first)
    assert f"{out} is being written by process {first.pid} (analysis trace); wait for it" in line
    assert load_trace(out).num_samples == 2400  # train split of 3000 rows (80 %), written by the first
    assert leftovers(tmp_path) == []


def test_train_over_a_folder_being_traced_into_is_refused(made, tmp_path, capsys):
    """The issue's lost traces: `train --out X` while `trace --out X/trace-new` writes."""
    ckpt = copy(made["ckpt"], tmp_path / "ckpt")
    big = _big_csv(tmp_path / "big.csv", rows=3000)
    first = _start_trace(ckpt, big, ckpt / "trace-new")
    try:
        line = cli_error(["train", "--data", str(made["csv"]), "--backbone", made["backbone"], "--out", str(ckpt),
                          "--max-steps", "1", "--no-progress"], capsys)
    finally:
        _finish(first)
    assert f"contains {ckpt / 'trace-new'}, which is being written by process {first.pid} (analysis trace)" in line
    assert load_trace(ckpt / "trace-new").num_samples == 2400 and load_trace(ckpt / "trace-test").num_samples > 0
    assert leftovers(ckpt) == [] and leftovers(tmp_path) == []


HOLDER = """
import sys, time
from analysis.io import output_lock
with output_lock(sys.argv[1], "analysis train"):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_trace_inside_a_folder_being_replaced_is_refused(made, tmp_path, capsys):
    ckpt = copy(made["ckpt"], tmp_path / "ckpt")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(ckpt)], cwd=REPO, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        line = cli_error(["trace", "--checkpoint", str(ckpt), "--out", str(ckpt / "trace-new"), "--device", "cpu"],
                         capsys)
        assert f"lies inside {ckpt}, which is being written by process {holder.pid} (analysis train)" in line
        line = cli_error(["compact", "--checkpoint", str(made["ckpt"]), "--out", str(ckpt)], capsys)
        assert f"{ckpt} is being written by process {holder.pid} (analysis train)" in line
    finally:
        holder.communicate("", timeout=60)
    assert main(["trace", "--checkpoint", str(ckpt), "--out", str(ckpt / "trace-new"), "--device", "cpu",
                 "--no-progress"]) == 0  # free again once the holder is gone
    assert leftovers(ckpt) == [] and leftovers(tmp_path) == []


def test_a_killed_writer_does_not_block_the_next(made, tmp_path):
    out = tmp_path / "trace"
    _kill_trace_half_way(made["ckpt"], _big_csv(tmp_path / "big.csv"), out)
    assert (tmp_path / ".trace.lock").exists()  # left behind by the killed process, but no longer locked
    assert main(["trace", "--checkpoint", str(made["ckpt"]), "--out", str(out), "--device", "cpu",
                 "--no-progress"]) == 0
    assert load_trace(out).num_samples > 0
    assert leftovers(tmp_path) == []  # the killed writer's temporary folder was cleaned up too


def test_atomic_dir_in_one_process_is_refused_not_errno_39(tmp_path):
    """Two writers in one process (two app sessions): the second is refused with OutputBusy; and a leftover
    .old- folder (even one named after a live process) never blocks a later write."""
    import threading

    folder = tmp_path / "out"
    entered, release, seen = threading.Event(), threading.Event(), []

    def writer():
        with atomic_dir(folder) as tmp:
            (tmp / "meta.json").write_text("{}")
            entered.set()
            release.wait(30)

    thread = threading.Thread(target=writer)
    thread.start()
    entered.wait(30)
    try:
        with pytest.raises(OutputBusy, match="being written by this process"):
            with atomic_dir(folder):
                seen.append("entered")
    finally:
        release.set()
        thread.join()
    assert seen == [] and (folder / "meta.json").is_file()
    stale = tmp_path / f".out.old-{os.getpid()}"
    (stale / "inner").mkdir(parents=True)
    (tmp_path / ".out.tmp-1-abc").mkdir()
    for _ in range(2):
        with atomic_dir(folder) as tmp:
            (tmp / "meta.json").write_text("{}")
    assert leftovers(tmp_path) == []


def test_output_lock_waits_when_asked(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "x")], cwd=REPO, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=ENV)
    assert holder.stdout.readline().strip() == "held"
    start = time.monotonic()
    with pytest.raises(OutputBusy, match=f"process {holder.pid} \\(analysis train\\)"):
        with output_lock(tmp_path / "x", wait=0.5):
            pass
    assert time.monotonic() - start >= 0.4
    holder.stdin.close()  # the holder ends within the wait
    with output_lock(tmp_path / "x", wait=30):
        pass
    holder.wait(30)
    assert leftovers(tmp_path) == []


# ---- reading: OS errors said as what they are ----------------------------------------------------------------------


@pytest.mark.parametrize("code, words", [
    (errno.EACCES, "permission denied; check that you may read it"),
    (errno.EPERM, "permission denied"),
    (errno.ELOOP, "symlink loop"),
    (errno.ENOENT, "not found"),
    (errno.EROFS, "read-only file system"),
    (errno.ENOSPC, "no space left"),
])
def test_os_error_message(code, words):
    message = os_error_message(OSError(code, os.strerror(code), "/data/x.csv"))
    assert message.startswith("/data/x.csv: ") and words in message and "\n" not in message
    assert "permission denied; check that you may write" in os_error_message(
        PermissionError(errno.EACCES, "Permission denied", "/o"), writing=True)


def _loop(folder: Path, name: str) -> Path:
    link = folder / name
    link.symlink_to(link)
    return link


@pytest.mark.parametrize("reader, error", [
    (lambda p: load_trace(p), TraceError),
    (lambda p: load_checkpoint(p), CheckpointError),
    (lambda p: __import__("analysis.data", fromlist=["load_data"]).load_data(str(p)), DataError),
])
def test_a_symlink_loop_is_not_reported_as_not_found(reader, error, tmp_path):
    loop = _loop(tmp_path, "loop.csv")
    with pytest.raises(error, match="symlink loop") as excinfo:
        reader(loop)
    assert "not found" not in str(excinfo.value)


@pytest.mark.parametrize("what", ["trace meta", "trace parquet", "checkpoint config", "weights", "data file"])
def test_a_permission_problem_is_not_reported_as_corrupt(what, made, tmp_path, monkeypatch):
    """Through the real readers, with a synthetic PermissionError (root reads everything)."""
    import builtins
    from pathlib import Path as P

    from analysis.data import load_data

    trace = copy(made["trace"], tmp_path / "trace")
    ckpt = copy(made["ckpt"], tmp_path / "ckpt")
    target, call, error = {
        "trace meta": (trace / "meta.json", lambda: load_trace(trace), TraceError),
        "trace parquet": (trace / "samples.parquet", lambda: load_trace(trace), TraceError),
        "checkpoint config": (ckpt / "config.json", lambda: load_checkpoint(ckpt), CheckpointError),
        "weights": (ckpt / "model.safetensors", lambda: load_checkpoint(ckpt), CheckpointError),
        "data file": (made["csv"], lambda: load_data(str(made["csv"])), DataError),
    }[what]
    real_open, real_read = builtins.open, P.read_bytes

    def deny(path) -> None:
        if Path(path) == Path(target):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)):
            deny(file)
        return real_open(file, *args, **kwargs)

    def guarded_read(self):
        deny(self)
        return real_read(self)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(P, "read_bytes", guarded_read)
    with pytest.raises(error) as excinfo:
        call()
    message = str(excinfo.value)
    assert f"{target}: permission denied; check that you may read it" in message, message
    assert "corrupt" not in message and "not found" not in message and "unreadable" not in message


@pytest.mark.skipif(IS_ROOT, reason="root ignores permission bits (the synthetic cases above cover the wording)")
def test_an_unreadable_trace_says_permission_denied(made, tmp_path):
    trace = copy(made["trace"], tmp_path / "trace")
    (trace / "meta.json").chmod(0)
    try:
        with pytest.raises(TraceError, match="permission denied"):
            load_trace(trace)
    finally:
        (trace / "meta.json").chmod(0o644)


def test_the_cli_reports_a_stray_os_error_in_one_line(monkeypatch, capsys):
    from analysis.commands import checkpoints

    def denied(args):
        raise PermissionError(errno.EACCES, "Permission denied", "/some/where")

    monkeypatch.setattr(checkpoints, "cmd_evaluate", denied)
    line = cli_error(["evaluate", "--checkpoint", "x"], capsys)
    assert line == "error: /some/where: permission denied; check that you may read it (its permissions and its folders')"


# ---- reading: files that lie ---------------------------------------------------------------------------------------


def _meta(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        meta = json.loads((folder / "meta.json").read_text())
        change(meta)
        (folder / "meta.json").write_text(json.dumps(meta))
    return edit


def _table(column: str, value: float, row: int = 4) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        table = pd.read_parquet(folder / "trace.parquet")
        values = table[column].to_numpy().copy()
        values[row] = value
        table[column] = values.astype(table[column].dtype)
        table.to_parquet(folder / "trace.parquet", index=False)
    return edit


def _samples(change: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        change(pd.read_parquet(folder / "samples.parquet")).to_parquet(folder / "samples.parquet", index=False)
    return edit


def _npy(name: str, make: Callable[[np.ndarray], bytes | np.ndarray]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        made = make(np.load(folder / name))
        if isinstance(made, bytes):
            (folder / name).write_bytes(made)
        else:
            np.save(folder / name, made, allow_pickle=True)
    return edit


def _cut(name: str) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
    return edit


def _pop(key: str) -> Callable[[dict], None]:
    return lambda m: m.pop(key)


TRACE_CASES: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "num_layers 0": (_meta(lambda m: m.update(num_layers=0)), ("num_layers must be a positive integer", "0")),
    "num_layers 'six'": (_meta(lambda m: m.update(num_layers="six")), ("num_layers must be a positive integer", "'six'")),
    "num_layers null": (_meta(lambda m: m.update(num_layers=None)), ("num_layers must be a positive integer", "None")),
    "num_layers true": (_meta(lambda m: m.update(num_layers=True)), ("num_layers must be a positive integer",)),
    "num_layers 2.5": (_meta(lambda m: m.update(num_layers=2.5)), ("num_layers must be a positive integer",)),
    "label_names null": (_meta(lambda m: m.update(label_names=None)), ("label_names must be a list of at least 2",)),
    "label_names one": (_meta(lambda m: m.update(label_names=["a"])), ("label_names must be a list of at least 2",)),
    "label_names numbers": (_meta(lambda m: m.update(label_names=[0, 1])), ("label_names must be a list",)),
    "label_names repeated": (_meta(lambda m: m.update(label_names=["a", "a"])), ("repeats a name",)),
    "cost_model empty": (_meta(lambda m: m.update(cost_model={})), ("cost_model must hold exactly", "nothing")),
    "cost_model null": (_meta(lambda m: m.update(cost_model=None)), ("cost_model must hold exactly", "NoneType")),
    "cost_model field a string": (_meta(lambda m: m["cost_model"].update(hidden="32")), ("cost_model.hidden",)),
    "cost_model other layers": (_meta(lambda m: m["cost_model"].update(num_layers=12)), ("12 layers",)),
    "no cost_model": (_meta(_pop("cost_model")), ("no 'cost_model'",)),
    "labelled 'yes'": (_meta(lambda m: m.update(labelled="yes")), ("labelled must be true or false",)),
    "metric unknown": (_meta(lambda m: m.update(metric="bleu")), ("metric must be one of",)),
    "newer schema": (_meta(lambda m: m.update(schema_version=99)), ("newer version",)),
    "meta a list": (lambda f: (f / "meta.json").write_text("[1, 2]"), ("expected a JSON object",)),
    "NaN entropy": (_table("entropy", np.nan, 4), ("column entropy holds nan in row 4", "sample 1, layer 2")),
    "inf max_prob": (_table("max_prob", np.inf, 0), ("column max_prob holds inf in row 0",)),
    "NaN r1": (_table("r1", np.nan, 2), ("column r1", "row 2")),
    "NaN r2": (_table("r2", np.nan, 1), ("column r2", "row 1")),
    "-inf dr": (_table("dr", -np.inf, 5), ("column dr holds -inf in row 5",)),
    "NaN prob_1": (_table("prob_1", np.nan, 3), ("column prob_1", "row 3")),
    "NaN dist_0": (_table("dist_0", np.nan, 6), ("column dist_0", "row 6")),
    "samples without text": (_samples(lambda s: s.drop(columns=["text"])), ("samples.parquet", "missing column(s) text")),
    "samples with other labels": (_samples(lambda s: s.assign(label=1 - s["label"])), ("does not match trace.parquet",
                                                                                   "label")),
    "samples with float ids": (_samples(lambda s: s.assign(sample_id=s["sample_id"].astype(float))),
                               ("sample_id has dtype float64",)),
    "samples with 0 tokens": (_samples(lambda s: s.assign(n_tokens=0)), ("n_tokens is 0",)),
    "embeddings cut short": (_cut("embeddings.npy"), ("embeddings.npy", "too short", "cut off")),
    "embeddings not an array": (lambda f: (f / "embeddings.npy").write_text("hello"), ("embeddings.npy",
                                                                                      "not a NumPy array file")),
    "embeddings of objects (pickle)": (_npy("embeddings.npy", lambda a: np.array([{"a": 1}], dtype=object)),
                                       ("embeddings.npy", "expected floats")),
    "embeddings of another shape": (_npy("embeddings.npy", lambda a: a[:, :-1]), ("embeddings.npy", "has shape")),
    "embeddings of integers": (_npy("embeddings.npy", lambda a: a.astype(np.int32)), ("holds int32 values",)),
    "prototypes of another shape": (_npy("prototypes.npy", lambda a: a[:-1]), ("prototypes.npy", "has shape")),
    "prototypes empty file": (lambda f: (f / "prototypes.npy").write_bytes(b""), ("prototypes.npy",
                                                                                 "not a NumPy array file")),
}


@pytest.mark.parametrize("name", list(TRACE_CASES))
def test_a_lying_trace_file_is_a_trace_error(name, made, tmp_path):
    edit, needles = TRACE_CASES[name]
    folder = copy(made["trace"], tmp_path / "t")
    edit(folder)
    with pytest.raises(TraceError) as excinfo:
        load_trace(folder)
    message = str(excinfo.value)
    assert "\n" not in message and len(message) < 600, message
    assert "allow_pickle" not in message  # numpy's advice to unpickle never reaches the user
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


def test_the_cli_shows_a_lying_trace_in_one_line(made, tmp_path, capsys):
    folder = copy(made["trace"], tmp_path / "t")
    _table("entropy", np.nan, 4)(folder)
    line = cli_error(["curves", "--trace", str(folder), "--out", str(tmp_path / "c.csv")], capsys)
    assert "column entropy holds nan in row 4" in line


def test_layers_outside_the_trace_are_refused(made):
    trace = load_trace(made["trace"])
    assert trace.embeddings(1).shape[0] == trace.num_samples
    for bad in (0, -1, trace.num_layers + 1, 99, 1.5, "2", True):
        with pytest.raises(TraceError, match=f"not one of this trace's layers 1..{trace.num_layers}"):
            trace.embeddings(bad)
        with pytest.raises(TraceError, match="layers 1.."):
            trace.prototypes(bad)
    assert np.array_equal(trace.prototypes(trace.num_layers), trace.prototypes()[-1])


CHECKPOINT_CASES = {
    "num_hidden_layers 0": ({"num_hidden_layers": 0}, "num_hidden_layers must be a positive integer"),
    "num_hidden_layers 'six'": ({"num_hidden_layers": "six"}, "num_hidden_layers must be a positive integer"),
    "label_names null": ({"de3.label_names": None}, "de3.label_names must be a list of at least 2"),
    "label_names one": ({"de3.label_names": ["only"]}, "de3.label_names must be a list of at least 2"),
    "label_names numbers": ({"de3.label_names": [0, 1]}, "de3.label_names must be a list"),
    "label_names repeated": ({"de3.label_names": ["a", "a"]}, "repeats a class name"),
}


@pytest.mark.parametrize("name", list(CHECKPOINT_CASES))
def test_a_lying_checkpoint_config_is_a_checkpoint_error(name, made, tmp_path, capsys):
    changes, needle = CHECKPOINT_CASES[name]
    ckpt = copy(made["ckpt"], tmp_path / "ckpt")
    config = json.loads((ckpt / "config.json").read_text())
    for key, value in changes.items():
        if key.startswith("de3."):
            config["de3"][key[4:]] = value
        else:
            config[key] = value
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=needle):
        load_checkpoint(ckpt)
    before = snapshot(tmp_path)
    line = cli_error(["trace", "--checkpoint", str(ckpt), "--out", str(tmp_path / "out"), "--device", "cpu"], capsys)
    assert needle in line and "config.json" in line
    assert_untouched(before, snapshot(tmp_path))


# ---- the app: paths with a NUL byte, map layers outside 1..L ----------------------------------------------------


@pytest.fixture
def app_root(made, tmp_path, monkeypatch):
    root = tmp_path / "root"
    copy(made["ckpt"], root / "ckpt")
    monkeypatch.setenv("DE3_APP_ROOTS", str(root))
    monkeypatch.setenv("DE3_CACHE_DIR", str(tmp_path / "cache"))
    return root


def run_app(**query):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update({"method": "pca", **query})
    return at.run()


def no_exception(at):
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.mark.parametrize("query, needle", [
    ({"ckpt": "pretrained/a\x00b"}, "contains a NUL byte"),
    ({"data": "mine\x00.csv"}, "contains a NUL byte"),
    ({"data": "LOOP"}, "symlink loop"),
])
def test_app_url_paths_that_cannot_be_read_are_an_error(query, needle, app_root):
    if query.get("data") == "LOOP":
        query["data"] = str(_loop(app_root, "loop.csv"))
    query.setdefault("ckpt", str(app_root / "ckpt"))
    at = no_exception(run_app(**query))
    shown = [e.value for e in at.error]
    assert any(needle in e for e in shown), shown


def test_map_layer_is_clamped_into_the_trace():
    from app.derive import map_layer

    assert map_layer(None, 6) == (3, None) and map_layer(6, 6) == (6, None) and map_layer("2", 6) == (2, None)
    for given, shown in ((0, 1), (-1, 1), (99, 6), ("x", 3), (2.5, 3), (float("nan"), 3)):
        layer, warning = map_layer(given, 6)
        assert layer == shown and f"showing layer {shown}" in warning, (given, layer, warning)


def _warnings(at) -> list[str]:
    return [w.value for w in at.warning]


@pytest.mark.parametrize("given", ["99", "0", "-2"])
def test_app_map_layer_outside_the_trace_is_refused_or_clamped_with_a_warning(given, app_root):
    """Never another layer in silence: 99 is clamped to L = 3 by the pages, 0 and -2 are refused where the link is
    read (or clamped to 1 by the pages) -- each with a warning, and layer 0 never shows layer L."""
    at = no_exception(run_app(ckpt=str(app_root / "ckpt"), map_layer=given))
    warned = _warnings(at)  # the first run reads the link (AppTest runs the same object again below)
    at = no_exception(at.switch_page("app/pages/prototype_map.py").run())
    shown = at.slider(key="w_map_layer").value
    assert shown == 3 if given == "99" else shown in (1, 2), shown  # 2: the default, the link's value ignored
    warned += _warnings(at)
    assert any("map_layer" in w or "map layer" in w for w in warned), warned
    assert any(f"of layer {shown}'s" in c.value for c in at.caption)  # the map drawn is the slider's layer

    at = no_exception(run_app(ckpt=str(app_root / "ckpt"), map_layer=given))
    warned = _warnings(at)
    at = no_exception(at.switch_page("app/pages/export.py").run())
    at = no_exception(at.selectbox(key="ex_figure").set_value("Prototype map (current layer)").run())
    warned += _warnings(at)
    assert any("map_layer" in w or "map layer" in w for w in warned), warned
    assert not at.error and at.query_params.get("map_layer", "2") in ("1", "2", "3")
    if given == "99":
        assert any("showing layer 3" in w for w in _warnings(at)) and at.query_params["map_layer"] == "3"


def test_app_map_layer_inside_the_trace_has_no_warning(app_root):
    at = no_exception(run_app(ckpt=str(app_root / "ckpt"), map_layer="3"))
    at = no_exception(at.switch_page("app/pages/export.py").run())
    at = no_exception(at.selectbox(key="ex_figure").set_value("Prototype map (current layer)").run())
    assert not [w for w in _warnings(at) if "map layer" in w or "map_layer" in w] and not at.error
