"""Where a trace comes from: a checkpoint, a data source and a split — and the folder its trace lives in.

No Streamlit here. A ``TraceSource`` is small, frozen and hashable; ``trace_folder`` maps it to

    <checkpoint>/trace-<split>/              a trace shipped with the checkpoint (own data, whole split)
    ~/.cache/de3bert/traces/<hash>/          anything else, computed once (``compute_trace``) and reused

The hash covers the checkpoint's weights file (path, size, modification time), the data spec and its options
and the split, so a retrained checkpoint or another file never reuses a stale trace. Nothing is written
into the repository.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from analysis.errors import DE3Error
from analysis.io import atomic_file

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = REPO / "pretrained"
DEFAULT_CHECKPOINT = "pretrained/bbc-minilm-l6"
DEFAULT_GLUE_DIR = (REPO.parent / "shared" / "data" / "glue")
GLUE_TASKS = ("sst2", "mrpc", "rte", "qnli", "qqp", "mnli", "cola")
SPLITS = ("test", "validation", "train")
OWN_DATA = "own"
CACHE_VERSION = 1


def cache_root() -> Path:
    """``$DE3_CACHE_DIR`` or ``~/.cache/de3bert``: computed traces and uploaded files, never the repo."""
    return Path(os.environ.get("DE3_CACHE_DIR") or Path.home() / ".cache" / "de3bert").expanduser()


@dataclass(frozen=True)
class TraceSource:
    """What to trace. ``data`` is "own" (the checkpoint's training data), "glue/<task>" or a file path."""

    checkpoint: str = DEFAULT_CHECKPOINT
    data: str = OWN_DATA
    data_dir: str | None = None  # GLUE folder; None = online (Hugging Face hub)
    text_columns: tuple[str, ...] | None = None  # user files only
    label_column: str | None = None
    header: bool | None = None
    split: str = "test"
    max_samples: int | None = None  # trace only the first N samples of the split
    display_name: str | None = None  # an uploaded file's original name, for captions only

    def describe(self) -> str:
        data = {OWN_DATA: "its own data"}.get(self.data, self.display_name or self.data)
        limit = f", first {self.max_samples}" if self.max_samples else ""
        return f"{Path(self.checkpoint).name} · {data} · {self.split}{limit}"

    def key(self) -> dict:
        """The fields that decide the trace's content (not the display name)."""
        d = asdict(self)
        d.pop("display_name")
        return d


def resolve_checkpoint(checkpoint: str) -> Path:
    """A checkpoint folder as typed (relative to the repository or absolute), checked to exist."""
    path = Path(checkpoint).expanduser()
    if not path.is_absolute():
        path = REPO / path
    if not path.is_dir():
        raise DE3Error(f"checkpoint folder {checkpoint!r} not found; type a folder written by "
                       "`python -m analysis train` (it holds config.json and model.safetensors)")
    if not (path / "config.json").is_file():
        raise DE3Error(f"{checkpoint}: no config.json; this is not a checkpoint folder written by `python -m analysis train`")
    return path


def shipped_checkpoints() -> list[str]:
    """Checkpoint folders under ``pretrained/``, the default first, as repository-relative paths."""
    found = sorted(f"pretrained/{p.name}" for p in PRETRAINED.iterdir()
                   if (p / "config.json").is_file()) if PRETRAINED.is_dir() else []
    return sorted(found, key=lambda c: c != DEFAULT_CHECKPOINT)


def checkpoint_layers(checkpoint: str) -> int | None:
    """Number of layers from a checkpoint's config.json, or None when unreadable."""
    try:
        return int(json.loads((resolve_checkpoint(checkpoint) / "config.json").read_text())["num_hidden_layers"])
    except (DE3Error, OSError, ValueError, KeyError, TypeError):
        return None


def _weights_stamp(folder: Path) -> list:
    weights = folder / "model.safetensors"
    try:
        st = weights.stat()
        return [str(weights.resolve()), st.st_size, st.st_mtime_ns]
    except OSError:
        return [str(weights), None, None]


def shipped_trace(source: TraceSource) -> Path | None:
    """``<checkpoint>/trace-<split>`` when it exists and the source is the checkpoint's own data, whole split."""
    if source.data != OWN_DATA or source.max_samples is not None:
        return None
    try:
        folder = resolve_checkpoint(source.checkpoint) / f"trace-{source.split}"
    except DE3Error:
        return None
    return folder if (folder / "meta.json").is_file() else None


def trace_folder(source: TraceSource) -> Path:
    """The folder holding (or about to hold) the trace of ``source``."""
    shipped = shipped_trace(source)
    if shipped is not None:
        return shipped
    ckpt = resolve_checkpoint(source.checkpoint)
    data_dir = str(Path(source.data_dir).expanduser().resolve()) if source.data_dir else None
    data = source.data if source.data == OWN_DATA or source.data.startswith("glue/") else str(Path(source.data).expanduser().resolve())
    payload = {"v": CACHE_VERSION, "weights": _weights_stamp(ckpt), **source.key(), "data": data, "data_dir": data_dir}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return cache_root() / "traces" / digest


def trace_stamp(folder: Path) -> int:
    """Changes whenever the trace is rewritten (meta.json is written last): a cache key next to the folder."""
    return (folder / "meta.json").stat().st_mtime_ns


def has_trace(folder: Path) -> bool:
    return (folder / "meta.json").is_file()


def load_split(source: TraceSource):
    """(Split, DataBundle) of ``source``, refusing data whose classes differ from the checkpoint's."""
    from analysis.checkpoint import load_checkpoint_data

    ckpt = resolve_checkpoint(source.checkpoint)
    if source.data == OWN_DATA:
        data = load_checkpoint_data(ckpt)
    else:
        overrides = {"data_dir": source.data_dir}
        if not source.data.startswith("glue/"):
            overrides.update(text_columns=list(source.text_columns) if source.text_columns else None,
                             label_column=source.label_column, header=source.header)
        data = load_checkpoint_data(ckpt, spec=source.data, **overrides)
    split = data.split(source.split)
    if source.max_samples:
        split = split.subset(range(min(source.max_samples, len(split))))
    return split, data


def compute_trace(source: TraceSource, model, tokenizer, folder: Path,
                  on_progress: Callable[[int, int], None] | None = None) -> Path:
    """Trace ``source`` with an already loaded model into ``folder`` (written atomically)."""
    from analysis.trace import write_trace

    split, data = load_split(source)
    info = {"checkpoint": source.checkpoint, "data": data.name, "split": source.split,
            "source": source.key() | {"display_name": source.display_name}}
    write_trace(model, tokenizer, split, folder, label_names=list(data.label_names), metric=data.metric,
                info=info, progress=False, on_progress=on_progress)
    return folder


def save_upload(name: str, content: bytes) -> Path:
    """Keep an uploaded data file under the cache folder, named by its content hash (same file, same path)."""
    suffix = Path(name).suffix.lower()
    if suffix not in (".csv", ".tsv", ".txt", ".parquet", ".jsonl", ".json"):
        raise DE3Error(f"{name}: unsupported file type {suffix or '(none)'}; upload .csv, .tsv, .txt, .parquet or .jsonl")
    folder = cache_root() / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(content).hexdigest()[:16]}{suffix}"
    if not path.is_file():
        with atomic_file(path) as tmp:
            tmp.write_bytes(content)
    return path


def preview_columns(path: Path, header: bool = True, rows: int = 5):
    """Column names and the first rows of a CSV/TSV/Parquet/JSONL file, for the column pickers."""
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(path).head(rows)
        elif suffix in (".jsonl", ".json"):
            frame = pd.read_json(path, lines=suffix == ".jsonl").head(rows)
        else:
            sep = "," if suffix == ".csv" else "\t"
            frame = pd.read_csv(path, sep=sep, header=0 if header else None, nrows=rows,
                                quoting=3 if sep == "\t" else 0, dtype=str)
    except Exception as exc:  # noqa: BLE001 - pandas raises many kinds; all mean "this file cannot be read"
        raise DE3Error(f"{path.name}: cannot read the file ({' '.join(str(exc).split())[:200]})") from None
    frame.columns = [str(c) for c in frame.columns]
    return frame


def with_split(source: TraceSource, split: str) -> TraceSource:
    return replace(source, split=split)
