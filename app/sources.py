"""Where a trace comes from: a checkpoint, a data source and a split — and the folder its trace lives in.

No Streamlit here. A ``TraceSource`` is small, frozen and hashable; ``trace_folder`` maps it to

    <checkpoint>/trace-<split>/              a trace shipped with the checkpoint (own data, whole split)
    ~/.cache/de3bert/traces/<hash>/          anything else, computed once (``compute_trace``) and reused

The hash covers the checkpoint's weights file (path, size, modification time), the data spec and its options
and the split, so a retrained checkpoint or another file never reuses a stale trace. Nothing is written
into the repository.

Roots: a path typed in the app (or put in its URL) -- checkpoint folder, GLUE folder, data file -- is resolved
(symlinks followed) and must lie inside one of ``allowed_roots()``: the repository's ``pretrained/`` and
``runs/``, the cache folder, the default GLUE folder ``../shared/data/glue``, and the folders listed in
``$DE3_APP_ROOTS`` (separated by ``os.pathsep``). Anything else is refused before it is read. Uploads are
stored only under ``<cache>/uploads/``, named by their content hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from analysis.data import TRACE_SPLITS
from analysis.errors import DE3Error, shorten
from analysis.io import atomic_file, os_error_message, output_lock, path_kind, read_json_object

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = REPO / "pretrained"
DEFAULT_CHECKPOINT = "pretrained/sst2-minilm-l6"
DEFAULT_GLUE_DIR = (REPO.parent / "shared" / "data" / "glue")
GLUE_TASKS = ("sst2", "mrpc", "rte", "qnli", "qqp", "mnli", "cola")
SPLITS = tuple(sorted(TRACE_SPLITS, key=("test", "validation", "train", "all").index))  # the order offered
SPLIT_LABELS = {**{s: s for s in SPLITS}, "all": "all rows"}
OWN_DATA = "own"
CACHE_VERSION = 1
ROOTS_ENV = "DE3_APP_ROOTS"
MAX_UPLOAD_MB = 50  # the same limit as server.maxUploadSize in .streamlit/config.toml
UPLOAD_TYPES = (".csv", ".tsv", ".txt", ".parquet", ".jsonl", ".json")


def cache_root() -> Path:
    """``$DE3_CACHE_DIR`` or ``~/.cache/de3bert``: computed traces and uploaded files, never the repo."""
    return Path(os.environ.get("DE3_CACHE_DIR") or Path.home() / ".cache" / "de3bert").expanduser()


def allowed_roots() -> list[Path]:
    """The folders the app may read checkpoints and data from (resolved): ``pretrained/``, ``runs/``, the cache,
    the default GLUE folder, and every folder in ``$DE3_APP_ROOTS`` (``os.pathsep``-separated)."""
    roots = [PRETRAINED, REPO / "runs", cache_root(), DEFAULT_GLUE_DIR]
    roots += [Path(p.strip()).expanduser() for p in os.environ.get(ROOTS_ENV, "").split(os.pathsep) if p.strip()]
    out: list[Path] = []
    for root in roots:
        resolved = root.resolve()
        if resolved not in out:
            out.append(resolved)
    return out


def _show_root(root: Path) -> str:
    for base, prefix in ((REPO, ""), (REPO.parent, "../"), (Path.home(), "~/")):
        try:
            return prefix + str(root.relative_to(base.resolve()))
        except ValueError:
            continue
    return str(root)


def check_allowed(path: str | Path, typed: str, what: str) -> Path:
    """``path`` resolved (``~`` expanded, symlinks followed), if it lies inside one of ``allowed_roots()``.

    Raises ``DE3Error`` naming the roots otherwise -- before anything at that path is read -- and for a path that
    cannot be looked up at all (a NUL byte, a symlink loop, a folder it may not enter).
    """
    if "\x00" in str(path) or "\x00" in typed:
        raise DE3Error(f"{what} {shorten(typed, 120)} contains a NUL byte, which no path can hold; type the path "
                       "again")
    try:
        resolved = Path(path).expanduser().resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # RuntimeError: a symlink loop, before Python 3.13
        reason = f"{typed}: a symlink loop (a link that leads back to itself); fix or remove the link" \
            if isinstance(exc, RuntimeError) else os_error_message(exc, typed)
        raise DE3Error(f"{what} {reason}") from None
    roots = allowed_roots()
    if any(resolved == root or resolved.is_relative_to(root) for root in roots):
        return resolved
    raise DE3Error(f"{what} {shorten(typed, 120)} is outside the folders this app may read "
                   f"({', '.join(_show_root(r) for r in roots)}); set {ROOTS_ENV} to allow it")



def _under_repo(typed: str) -> Path:
    """A typed path: ``~`` expanded, relative paths taken from the repository."""
    path = Path(typed).expanduser()
    return path if path.is_absolute() else REPO / path


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
        return f"{Path(self.checkpoint).name} · {data} · {SPLIT_LABELS.get(self.split, self.split)}{limit}"

    def key(self) -> dict:
        """The fields that decide the trace's content (not the display name)."""
        d = asdict(self)
        d.pop("display_name")
        return d


def resolve_checkpoint(checkpoint: str) -> Path:
    """A checkpoint folder as typed (relative to the repository or absolute), checked to lie inside the allowed
    roots and to exist; returned resolved."""
    path = check_allowed(_under_repo(checkpoint), checkpoint, "checkpoint folder")
    if path_kind(path) != "dir":
        raise DE3Error(f"checkpoint folder {shorten(checkpoint, 120)} not found; type a folder written by "
                       "`python -m analysis train` (it holds config.json and model.safetensors)")
    if path_kind(path / "config.json") != "file":
        raise DE3Error(f"{checkpoint}: no config.json; this is not a checkpoint folder written by `python -m analysis train`")
    return path


def shipped_checkpoints() -> list[str]:
    """Checkpoint folders under ``pretrained/``, the default first, as repository-relative paths."""
    found = sorted(f"pretrained/{p.name}" for p in PRETRAINED.iterdir()
                   if (p / "config.json").is_file()) if PRETRAINED.is_dir() else []
    return sorted(found, key=lambda c: c != DEFAULT_CHECKPOINT)


def checkpoint_card(checkpoint: str) -> dict[str, str]:
    """The ``key: value`` lines of a checkpoint's model card front matter (the YAML block between ``---`` lines at
    the top of its README.md, as on the Hugging Face hub): ``title`` (a few words) and ``description`` (one line
    saying what it shows) for the shipped ones. Empty when there is no card."""
    try:
        lines = (resolve_checkpoint(checkpoint) / "README.md").read_text(encoding="utf-8").splitlines()
    except (DE3Error, OSError, UnicodeDecodeError):
        return {}
    if not lines or lines[0].strip() != "---":
        return {}
    card: dict[str, str] = {}
    for line in lines[1:]:
        if line.strip() == "---":
            return card
        key, sep, value = line.partition(":")
        if sep and value.strip():
            card[key.strip()] = value.strip().strip('"')
    return {}  # no closing line: not front matter


def checkpoint_layers(checkpoint: str) -> int | None:
    """Number of layers from a checkpoint's config.json, or None when unreadable or not a positive integer."""
    try:
        layers = read_json_object(resolve_checkpoint(checkpoint) / "config.json")["num_hidden_layers"]
    except (DE3Error, OSError, ValueError, KeyError, TypeError):
        return None
    return layers if isinstance(layers, int) and not isinstance(layers, bool) and layers >= 1 else None


def weights_stamp(folder: Path) -> list:
    """[resolved path, size, modification time] of a checkpoint's weights: changes whenever it is rewritten."""
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
    data_dir = str(data_dir_of(source)) if source.data_dir else None
    data = str(data_file_of(source)) if is_data_file(source) else source.data
    payload = {"v": CACHE_VERSION, "weights": weights_stamp(ckpt), **source.key(), "data": data, "data_dir": data_dir}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return cache_root() / "traces" / digest


def is_data_file(source: TraceSource) -> bool:
    """Whether the source's data is a file path (not "own", "bbc" or "glue/<task>")."""
    return source.data != OWN_DATA and not source.data.startswith("glue/") and source.data.strip().lower() != "bbc"


def data_dir_of(source: TraceSource) -> Path | None:
    """The typed GLUE / data folder, resolved and checked against the allowed roots."""
    if not source.data_dir:
        return None
    return check_allowed(_under_repo(source.data_dir), source.data_dir, "data folder")


def data_file_of(source: TraceSource) -> Path:
    """The data file of ``source`` (relative to its data folder, else to the repository), resolved and checked."""
    path = Path(source.data).expanduser()
    if not path.is_absolute():
        path = (data_dir_of(source) or REPO) / path
    return check_allowed(path, source.display_name or source.data, "data file")


def trace_stamp(folder: Path) -> int:
    """Changes whenever the trace is rewritten (meta.json is written last): a cache key next to the folder."""
    return (folder / "meta.json").stat().st_mtime_ns


def has_trace(folder: Path) -> bool:
    return path_kind(folder / "meta.json") == "file"


# Library messages name command-line flags; the app says which control to change instead. Phrases first, then
# any flag left. (regex, replacement), applied in order by ``in_app_words``.
APP_WORDS = (
    (r"pass --(label|text)-column with one of these", lambda m: f"choose one of these as the {m.group(1).title()} column"),
    (r"pass (?:a valid |a different |e\.g\. )?--(label|text)-column(?: \d+)?(?: as a 0-based index)?",
     lambda m: f"choose {'another' if 'different' in m.group(0) else 'the'} {m.group(1).title()} column"),
    (r"\ba --(label|text)-column", lambda m: f"a {m.group(1).title()} column"),
    (r"\(?trace or evaluate every row with --split all\)?", "or choose the Split “all rows”"),
    (r"pass --data-dir pointing at", "type into the Local GLUE folder box"),
    (r"pass --data(?: instead)?\b", "choose the Data"),
    (r"--(label|text)-column", lambda m: f"the {m.group(1).title()} column"),
    (r"--no-header", "the “First row holds column names” box"),
    (r"--data-dir", "the Local GLUE folder box"),
    (r"--max-samples", "the “Trace at most” box"),
    (r"--split", "the Split box"),
    (r"(?:make one|re-create (?:it|the trace)) with `python -m analysis trace`", "press Load trace again"),
)


def in_app_words(message: str, path: Path | None = None, display_name: str | None = None) -> str:
    """A library message as the app should show it: the controls to change instead of command-line flags, and an
    upload's own name instead of the hash it is stored under."""
    import re

    if path is not None and display_name:
        message = message.replace(str(path), display_name)
    for pattern, words in APP_WORDS:
        message = re.sub(pattern, words, message)
    return message


def load_split(source: TraceSource):
    """(Split, DataBundle) of ``source``, refusing data whose classes differ from the checkpoint's."""
    from analysis.checkpoint import load_checkpoint_data

    ckpt = resolve_checkpoint(source.checkpoint)
    if source.data == OWN_DATA:  # as recorded in the checkpoint's data.json, which is part of the checkpoint
        data = load_checkpoint_data(ckpt)
    elif not is_data_file(source):
        data_dir = data_dir_of(source)
        data = load_checkpoint_data(ckpt, spec=source.data, data_dir=None if data_dir is None else str(data_dir))
    else:
        path = data_file_of(source)
        try:
            data = load_checkpoint_data(ckpt, spec=str(path), header=source.header, label_column=source.label_column,
                                        text_columns=list(source.text_columns) if source.text_columns else None)
        except DE3Error as exc:  # an upload is stored under a hash: name it as the user knows it
            raise type(exc)(in_app_words(str(exc), path, source.display_name)) from None
    split = data.split(source.split)
    if source.max_samples:
        split = split.subset(range(min(source.max_samples, len(split))))
    return split, data


TRACE_WAIT_S = 1800  # how long a session waits for another process tracing the same source


def compute_trace(source: TraceSource, model, tokenizer, folder: Path,
                  on_progress: Callable[[int, int], None] | None = None) -> Path:
    """Trace ``source`` with an already loaded model into ``folder`` (written atomically, locked).

    Another process writing ``folder`` (a second app server, a command) is waited for, up to ``TRACE_WAIT_S``;
    when it has left a complete trace there, that one is used.
    """
    from analysis.tracer import write_trace

    with output_lock(folder, "the app", what="trace folder", wait=TRACE_WAIT_S):
        if has_trace(folder):
            return folder
        split, data = load_split(source)
        info = {"checkpoint": source.checkpoint, "data": data.name, "split": source.split,
                "source": source.key() | {"display_name": source.display_name}}
        write_trace(model, tokenizer, split, folder, label_names=list(data.label_names), metric=data.metric,
                    info=info, progress=False, on_progress=on_progress)
    return folder


# ---- fit exits on an upload: ``analysis.attach`` from the app ----------------------------------------------------

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")  # "name" or "owner/name"


def attach_model(typed: str) -> str:
    """The model to attach exits to, as typed in the app: an offline name (``minilm-l6``), a folder inside the
    allowed roots (returned resolved), or a Hugging Face id (returned as typed; loading it needs the network or
    the hub cache). Raises ``DE3Error`` naming what to type otherwise."""
    from analysis.backbones import OFFLINE_BACKBONES

    typed = typed.strip()
    if not typed:
        raise DE3Error("type a model: minilm-l6 (offline), a folder holding a fine-tuned classifier, or a Hugging "
                       "Face id such as textattack/bert-base-uncased-SST-2")
    if typed in OFFLINE_BACKBONES:
        return typed
    path = _under_repo(typed)
    if path_kind(path) == "dir" or typed.startswith(("/", ".", "~")):
        path = check_allowed(path, typed, "model folder")
        if path_kind(path) != "dir":
            raise DE3Error(f"model folder {shorten(typed, 120)} not found; type a folder holding a Hugging Face "
                           "model (config.json and its weights)")
        return str(path)
    if not HUB_ID.match(typed):
        raise DE3Error(f"{shorten(typed, 80)!r} is neither a folder nor a Hugging Face id (owner/name, letters, "
                       "digits, . - _); type minilm-l6, a folder, or an id")
    return typed


def attached_folder(model: str, data: TraceSource) -> Path:
    """Where the exits fitted on ``data`` (an uploaded file) for ``model`` live: ``<cache>/attached/<model>-on-<file>-
    <hash>``; the hash covers the model (a folder's weights file too), the file and its column choices."""
    stamp = weights_stamp(Path(model)) if Path(model).is_absolute() else None
    payload = {"v": CACHE_VERSION, "model": model, "stamp": stamp, **data.key()}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]
    slug = lambda text: re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:30] or "model"
    stem = Path(data.display_name or Path(data.data).name).stem
    return cache_root() / "attached" / f"{slug(Path(model).name)}-on-{slug(stem)}-{digest}"


def fit_exits(model: str, data: TraceSource, *, device: str = "auto",
              on_progress: Callable[[int, int], None] | None = None, log: Callable[[str], None] = print) -> TraceSource:
    """``analysis.attach.attach`` of ``model`` (``attach_model``'s answer) on an uploaded labelled file, into
    ``attached_folder`` (reused when it is there already); returns the source of the new checkpoint's held-out test
    split (its own data: the file, split 80/10/10 as training splits a file)."""
    from analysis.attach import attach
    from analysis.data import load_data

    if not is_data_file(data) or data.label_column is None:
        raise DE3Error("fitting exits needs an uploaded file with a label column")
    folder = attached_folder(model, data)
    if path_kind(folder / "model.safetensors") != "file":
        path = data_file_of(data)
        options = {"text_columns": list(data.text_columns) if data.text_columns else None,
                   "label_column": data.label_column, "header": data.header}
        try:
            bundle = load_data(str(path), **options)
            attach(model, bundle, folder, device=device, data_info={"spec": str(path), **options, "seed": 42},
                   progress=False, on_progress=on_progress, log=log)
        except DE3Error as exc:  # an upload is stored under a hash: name it as the user knows it
            raise type(exc)(in_app_words(str(exc), path, data.display_name)) from None
    return TraceSource(checkpoint=str(folder), data=OWN_DATA, split="test")


def safe_display_name(name: str, limit: int = 100) -> str:
    """An uploaded file's name for captions and messages: no folders, no control or bidi-override characters
    (letters of any script and emoji are kept), at most ``limit`` characters."""
    base = str(name).replace("\\", "/").rsplit("/", 1)[-1]
    kept = "".join(c for c in base if c == "\u200d" or unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Zl", "Zp"))
    kept = kept.strip() or "upload"
    return kept if len(kept) <= limit else kept[: limit - 3] + "..."


def save_upload(name: str, content: bytes) -> Path:
    """Keep an uploaded data file under ``<cache>/uploads/``, named by its content hash (same file, same path).

    The uploaded name gives only the file type; it never becomes part of a path. Empty files, files larger than
    ``MAX_UPLOAD_MB`` and types other than ``UPLOAD_TYPES`` are refused with a ``DE3Error``.
    """
    shown = safe_display_name(name)
    suffix = Path(shown).suffix.lower()
    if suffix not in UPLOAD_TYPES:
        raise DE3Error(f"{shown}: unsupported file type {suffix or '(none)'}; upload .csv, .tsv, .txt, .parquet or .jsonl")
    if len(content) == 0:
        raise DE3Error(f"{shown}: the file is empty (0 bytes); upload a file with a header row and data rows")
    if len(content) > MAX_UPLOAD_MB * 2**20:
        raise DE3Error(f"{shown}: larger ({len(content):,} bytes) than the {MAX_UPLOAD_MB} MB this app accepts; "
                       "upload a smaller file (a sample of the rows), or use the command line for big data")
    folder = cache_root() / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(content).hexdigest()[:16]}{suffix}"
    if not path.is_file():
        with atomic_file(path) as tmp:
            tmp.write_bytes(content)
    return path


def preview_columns(path: Path, header: bool = True, rows: int = 5, display_name: str | None = None):
    """Column names and the first rows of a CSV/TSV/Parquet/JSONL file, for the column pickers.

    The file is read by ``analysis.data.read_columns``, so a file that previews is one ``load_data`` reads, and
    a bad one gets the same one-line message (naming ``display_name`` instead of the stored path).
    """
    import pandas as pd

    from analysis.data import read_columns

    try:
        names, columns = read_columns(path, header=header)
    except DE3Error as exc:
        raise DE3Error(in_app_words(str(exc), path, display_name)) from None
    frame = pd.DataFrame({i: col[:rows] for i, col in enumerate(columns)})
    frame.columns = [str(n) for n in names] if names is not None else [str(i) for i in range(len(columns))]
    return frame
