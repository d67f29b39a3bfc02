"""Rows, their split and their class names: ``Split`` (texts and integer labels), ``SplitPlan`` (how every row of
a source becomes train / validation / test: deterministic, seeded, stratified) and ``DataBundle`` (a dataset: its
rows, label names, metric and plan).

Class names are matched by ``class_ids`` after ``clean_label`` (Unicode NFC, zero-width characters and surrounding
whitespace removed), so a checkpoint and a file spelling a class differently in those ways agree.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ..errors import DataError, name_list

SPLIT_NAMES = ("train", "validation", "test")
TRACE_SPLITS = (*SPLIT_NAMES, "all")  # what trace / evaluate (and the app) may ask for: a split, or every row
UNLABELLED = -1  # the label of every row of a file without a label column (prediction-only)
SMALL_SPLIT = 50  # rows below which a split's metric moves in steps of 2 points or more: training says so


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
# Splitting
# ---------------------------------------------------------------------------------------------------------


def concat_splits(parts: Sequence[Split]) -> Split:
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
    from sklearn.model_selection import train_test_split  # here: importing the data package stays light

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


def check_training_classes(bundle: DataBundle) -> None:
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


# ---------------------------------------------------------------------------------------------------------
# Class names
# ---------------------------------------------------------------------------------------------------------


_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))  # deleted from labels


def clean_label(text: str) -> str:
    """A label as one spelling: Unicode NFC, zero-width characters deleted, whitespace stripped."""
    return unicodedata.normalize("NFC", text.translate(_ZERO_WIDTH)).strip()


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
    index = {clean_label(k): i for i, k in enumerate(known)}
    return [index.get(clean_label(n)) for n in names]


def class_list(names: Sequence[str]) -> str:
    """A few class names, quoted, for a message (a wrong label column can hold thousands of values)."""
    return name_list(names, limit=8, width=30, quote=True)
