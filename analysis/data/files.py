"""User data files: ``.csv``, ``.tsv`` / ``.txt`` (tab-separated, no quoting), ``.parquet``, ``.jsonl`` / ``.json``
(JSON lines, or one JSON array of objects). Reading, choosing the text and label columns (by name or 0-based index,
or by the default names), and turning label cells into class ids.

Every problem a user can cause is one ``DataError`` line naming the file, the row (and its line) or column, and the fix.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DataError, name_list, one_line, shorten
from ..io import os_errors, path_kind
from .splitting import UNLABELLED, Split, class_ids, class_list, clean_label

SUPPORTED_EXTENSIONS = (".csv", ".tsv", ".txt", ".parquet", ".jsonl", ".json")
MAX_FIELD_CHARS = 2**31 - 1  # csv's default cap (131,072 characters per field) would refuse long documents

# Default column names for user files, tried in this order.
DEFAULT_TEXT_COLUMNS = ("text", "sentence", "sentence1")
DEFAULT_PAIR_COLUMNS = ("sentence2", "text_pair")
DEFAULT_LABEL_COLUMNS = ("label", "labels", "target", "class")

# Label cells that mean "no value" (compared case-insensitively, after cleaning): refused, never a class.
MISSING_LABELS = frozenset({"", "nan", "na", "n/a", "null", "none"})


def user_path(spec: str | Path, data_dir: str | Path | None) -> Path:
    """A data file's path: as given (relative to the working directory), or relative to ``data_dir``."""
    path = Path(spec).expanduser()
    if data_dir is not None and not path.is_absolute():
        path = Path(data_dir).expanduser() / path
    return path


def read_user_file(
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


def into_training_classes(path: Path, rows: Split, names: list[str], train_path: Path, train: Split,
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


# ---------------------------------------------------------------------------------------------------------
# Reading a file into columns
# ---------------------------------------------------------------------------------------------------------


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
        names, columns, line_numbers = read_delimited(path, sep, quote=ext == ".csv", header=header)
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


def read_delimited(
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


# ---------------------------------------------------------------------------------------------------------
# Columns and cells
# ---------------------------------------------------------------------------------------------------------


def _is_index(column: str | int) -> bool:
    """Whether a column selector is a 0-based index (an int, or a string of digits as the CLI passes it)."""
    if isinstance(column, bool):
        return False
    return isinstance(column, (int, np.integer)) or (isinstance(column, str) and column.strip().isdigit())


def _column_name(names: list[str] | None, key: int) -> str:
    return repr(names[key]) if names is not None else f"{key} (0-based)"


def column_index(path: Path, names: list[str] | None, n_columns: int, column: str | int, role: str) -> int:
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
        text_keys = [column_index(path, names, n_columns, c, "text") for c in text_columns]
    if label_column is None and label_optional and not set(DEFAULT_LABEL_COLUMNS) & set(names or ()):
        label_key = None
    elif label_column is None:
        label_key = default(DEFAULT_LABEL_COLUMNS, "label")
    else:
        label_key = column_index(path, names, n_columns, label_column, "label")
    return text_keys, label_key


def _is_missing(value: Any) -> bool:
    """None, NaN, pandas NA or a blank string."""
    if isinstance(value, str):
        return not value.strip()
    return bool(np.ndim(value) == 0 and pd.isna(value))


def _is_missing_label(value: Any) -> bool:
    """A missing value, or a string that spells one ("nan", "NA", "N/A", "null", "None", zero-width only)."""
    return _is_missing(value) or (isinstance(value, str) and clean_label(value).lower() in MISSING_LABELS)


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
    values = [clean_label(v) if isinstance(v, str) else v for v in values]
    as_ints = [_as_int(v) for v in values]
    if all(v is not None for v in as_ints):
        classes = sorted(set(as_ints))
        label_names = [str(c) for c in classes]
        keys = as_ints
    else:
        keys = [clean_label(_cell_text(v)) for v in values]
        label_names = classes = sorted(set(keys))
    if len(classes) < min_classes:
        raise DataError(f"{path}: column {_column_name(names, key)} holds a single class ({shorten(label_names[0])}); "
                        "a classifier needs at least 2 classes: check --label-column or add rows of other classes")
    index = {c: i for i, c in enumerate(classes)}
    return [index[k] for k in keys], label_names
