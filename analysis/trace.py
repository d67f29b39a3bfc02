"""The trace: one forward pass through all layers, recording what every exit policy needs.

A trace directory holds

    trace.parquet    one row per (sample, layer): TRACE_COLUMNS, then prob_<k> and dist_<k> for k = 0..K-1
    samples.parquet  sample_id, text, (text_pair), label, n_tokens
    embeddings.npy   (L, N, d_p) float16: every layer's prototype-space embedding, for projections
    prototypes.npy   (L, K, d_p) float32: the class prototypes, projected with the samples
    meta.json        label names, layers, checkpoint, data, split, metric, labelled, cost model, package versions

A trace of a file without labels is prediction-only: ``label`` is -1 and ``correct`` False in every row, and
meta.json says ``"labelled": false`` (``Trace.labelled``).

The schema is defined here once and checked on every read; reading imports no torch. Traces are written by
``analysis.tracer`` (the model's forward pass, streamed in chunks, shared out under torchrun).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from .cost import CostModel
from .data import UNLABELLED
from .errors import DE3Error, name_list, one_line, shorten
from .io import atomic_dir, os_errors, path_kind, read_json_object
from .metrics import METRICS

TRACE_FILE, SAMPLES_FILE, EMBEDDINGS_FILE, PROTOTYPES_FILE, META_FILE = (
    "trace.parquet", "samples.parquet", "embeddings.npy", "prototypes.npy", "meta.json")
SCHEMA_VERSION = 1

# The long-format trace: one row per (sample, layer). Per-class columns prob_<k>, dist_<k> follow (float32).
TRACE_COLUMNS: dict[str, str] = {
    "sample_id": "int64",
    "layer": "int16",  # 1..L
    "label": "int16",
    "pred": "int16",
    "correct": "bool",
    "entropy": "float32",  # normalised to [0, 1]
    "max_prob": "float32",
    "r1": "float32",  # distance to the predicted class's prototype
    "r2": "float32",  # distance to the nearest other prototype
    "dr": "float32",  # distance ratio
}


# The float columns every policy and chart reads: each value must be a finite number.
SIGNAL_COLUMNS = ("entropy", "max_prob", "r1", "r2", "dr")
RECREATE = "re-create the trace with `python -m analysis trace`"


class TraceError(DE3Error):
    """A trace directory is missing a file or does not follow the schema."""


def class_columns(num_labels: int) -> list[str]:
    return [f"prob_{k}" for k in range(num_labels)] + [f"dist_{k}" for k in range(num_labels)]


def trace_schema(num_labels: int) -> pa.Schema:
    types = {**TRACE_COLUMNS, **{c: "float32" for c in class_columns(num_labels)}}
    return pa.schema([(name, pa.from_numpy_dtype(np.dtype(t))) for name, t in types.items()])


SAMPLES_SCHEMA = {"sample_id": pa.int64(), "text": pa.string(), "text_pair": pa.string(), "label": pa.int16(),
                  "n_tokens": pa.int32()}


def samples_schema(is_pair: bool) -> pa.Schema:
    return pa.schema([(k, t) for k, t in SAMPLES_SCHEMA.items() if is_pair or k != "text_pair"])


def validate(table: pd.DataFrame, num_layers: int, num_labels: int, source: str = "trace",
             labelled: bool = True) -> pd.DataFrame:
    """Check columns, dtypes, and that every sample has layers 1..L exactly once, in order.

    ``pred`` must lie in 0..K-1, and so must ``label`` -- unless the trace is unlabelled (``labelled=False``,
    a prediction-only trace of a file without labels): then every ``label`` is -1 and every ``correct`` False.
    Returns the table unchanged; raises ``TraceError`` naming the first problem.
    """
    expected = {**TRACE_COLUMNS, **{c: "float32" for c in class_columns(num_labels)}}
    missing = [c for c in expected if c not in table.columns]
    if missing:
        raise TraceError(f"{source}: missing column(s) {', '.join(missing)}; {RECREATE}")
    for name, dtype in expected.items():
        if str(table[name].dtype) != dtype:
            raise TraceError(f"{source}: column {name} has dtype {table[name].dtype}, expected {dtype}; {RECREATE}")
    n = len(table)
    if n == 0 or n % num_layers:
        raise TraceError(f"{source}: {n} rows is not a whole number of samples x {num_layers} layers")
    layers = table["layer"].to_numpy().reshape(-1, num_layers)
    if not (layers == np.arange(1, num_layers + 1)).all():
        raise TraceError(f"{source}: rows must run through layers 1..{num_layers} for each sample, in order; {RECREATE}")
    ids = table["sample_id"].to_numpy().reshape(-1, num_layers)
    if not (ids == ids[:, :1]).all() or (np.diff(ids[:, 0]) <= 0).any():
        raise TraceError(f"{source}: rows must be grouped by sample_id in increasing order; {RECREATE}")
    for name in ("label", "pred") if labelled else ("pred",):
        values = table[name].to_numpy()
        if values.min() < 0 or values.max() >= num_labels:
            raise TraceError(f"{source}: column {name} has values outside 0..{num_labels - 1}; {RECREATE}")
    if not labelled and ((table["label"] != UNLABELLED).any() or table["correct"].any()):
        raise TraceError(f"{source}: an unlabelled trace (meta.json \"labelled\": false) must have label -1 and "
                         f"correct False in every row; {RECREATE}")
    for name in (*SIGNAL_COLUMNS, *class_columns(num_labels)):  # a NaN would decide exits silently wrong
        values = table[name].to_numpy()
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise TraceError(f"{source}: column {name} holds {values[row]} in row {row} (sample "
                             f"{int(table['sample_id'].iat[row])}, layer {int(table['layer'].iat[row])}); every "
                             f"signal must be a finite number; {RECREATE}")
    return table


def _positive_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


def validate_meta(meta, source: str = "meta.json") -> dict:
    """Check a trace's meta.json: types and ranges of every field the package reads.

    ``num_layers`` a positive integer; ``label_names`` a list of at least 2 distinct strings; ``cost_model`` an
    object of exactly ``CostModel``'s fields, each a positive integer, agreeing with ``num_layers`` and the
    number of labels; ``labelled`` (optional) true or false; ``metric`` (optional) one of ``data.METRICS``;
    ``num_samples`` (optional) a non-negative integer; ``schema_version`` (optional) not newer than this
    package's. Returns ``meta`` unchanged; raises ``TraceError`` naming the first bad field.
    """
    if not isinstance(meta, dict):
        raise TraceError(f"{source}: expected a JSON object, found {type(meta).__name__}; {RECREATE}")
    for key in ("num_layers", "label_names", "cost_model"):
        if key not in meta:
            raise TraceError(f"{source}: no {key!r}; {RECREATE}")
    version = meta.get("schema_version", SCHEMA_VERSION)
    if not _positive_int(version):
        raise TraceError(f"{source}: schema_version must be a positive integer, found {shorten(version)}; {RECREATE}")
    if version > SCHEMA_VERSION:
        raise TraceError(f"{source}: written by a newer version of this package (trace schema {version}, this one "
                         f"reads {SCHEMA_VERSION}); upgrade the package or {RECREATE}")
    num_layers, names = meta["num_layers"], meta["label_names"]
    if not _positive_int(num_layers):
        raise TraceError(f"{source}: num_layers must be a positive integer, found {shorten(num_layers)}; {RECREATE}")
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
        raise TraceError(f"{source}: label_names must be a list of at least 2 strings, found {shorten(names)}; "
                         f"{RECREATE}")
    if len(set(names)) != len(names):
        raise TraceError(f"{source}: label_names repeats a name ({name_list(names, quote=True)}); {RECREATE}")
    cost = meta["cost_model"]
    fields = list(CostModel.__dataclass_fields__)
    if not isinstance(cost, dict) or sorted(cost) != sorted(fields):
        found = name_list(cost) if isinstance(cost, dict) else type(cost).__name__
        raise TraceError(f"{source}: cost_model must hold exactly {', '.join(fields)}; found {found or 'nothing'}; "
                         f"{RECREATE}")
    for key in fields:
        if not _positive_int(cost[key]):
            raise TraceError(f"{source}: cost_model.{key} must be a positive integer, found {shorten(cost[key])}; "
                             f"{RECREATE}")
    if cost["num_layers"] != num_layers or cost["num_labels"] != len(names):
        raise TraceError(f"{source}: cost_model describes {cost['num_layers']} layers and {cost['num_labels']} "
                         f"classes, the trace {num_layers} and {len(names)}; {RECREATE}")
    if not isinstance(meta.get("labelled", True), bool):
        raise TraceError(f"{source}: labelled must be true or false, found {shorten(meta['labelled'])}; {RECREATE}")
    if meta.get("metric", "accuracy") not in METRICS:
        raise TraceError(f"{source}: metric must be one of {', '.join(METRICS)}, found {shorten(meta['metric'])}; "
                         f"{RECREATE}")
    n = meta.get("num_samples", 0)
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise TraceError(f"{source}: num_samples must be a non-negative integer, found {shorten(n)}; {RECREATE}")
    return meta


SAMPLE_COLUMNS = ("sample_id", "text", "label", "n_tokens")


def validate_samples(samples: pd.DataFrame, table: pd.DataFrame, num_layers: int,
                     source: str = "samples") -> pd.DataFrame:
    """Check samples.parquet against its (already validated) trace table: one row per sample, in the trace's
    order, with the same labels; integer ids, labels and token counts (>= 1); a text in every row."""
    missing = [c for c in SAMPLE_COLUMNS if c not in samples.columns]
    if missing:
        raise TraceError(f"{source}: missing column(s) {', '.join(missing)}; {RECREATE}")
    for name in ("sample_id", "label", "n_tokens"):
        if not pd.api.types.is_integer_dtype(samples[name].dtype):
            raise TraceError(f"{source}: column {name} has dtype {samples[name].dtype}, expected integers; {RECREATE}")
    per_sample = table.iloc[::num_layers]
    if len(samples) != len(per_sample):
        raise TraceError(f"{source}: does not match trace.parquet: {len(samples)} samples, trace.parquet has "
                         f"{len(per_sample)}; {RECREATE}")
    for name in ("sample_id", "label"):
        differs = samples[name].to_numpy() != per_sample[name].to_numpy()
        if differs.any():
            row = int(np.flatnonzero(differs)[0])
            raise TraceError(f"{source}: does not match trace.parquet: row {row} has {name} "
                             f"{samples[name].iat[row]}, trace.parquet {per_sample[name].iat[row]}; {RECREATE}")
    tokens = samples["n_tokens"].to_numpy()
    if len(tokens) and tokens.min() < 1:
        row = int(np.flatnonzero(tokens < 1)[0])
        raise TraceError(f"{source}: n_tokens is {tokens[row]} in row {row}; every sample has at least 1 token; "
                         f"{RECREATE}")
    texts = samples["text"]
    if texts.isna().any() or not texts.map(lambda t: isinstance(t, str)).all():
        row = int(np.flatnonzero(~texts.map(lambda t: isinstance(t, str)).to_numpy())[0])
        raise TraceError(f"{source}: row {row} has no text; {RECREATE}")
    return samples


def check_array(path: Path, shape: tuple[int, ...], *, load: bool = False, mmap: bool = False) -> np.ndarray | None:
    """Check an ``.npy`` file's header against ``shape`` and a float dtype, and its size against the header;
    with ``load``, return the array (memory-mapped with ``mmap``). Never unpickles (``allow_pickle=False``).

    Raises ``TraceError`` for an unreadable file, a file that is not an ``.npy`` array (or holds objects), the
    wrong shape or dtype, or a file too short for its header (a copy cut off).
    """
    fmt = np.lib.format
    with os_errors(path, TraceError), open(path, "rb") as f:
        try:
            version = fmt.read_magic(f)
            header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            found, fortran, dtype = header(f)
        except (ValueError, OSError, EOFError) as exc:
            raise TraceError(f"{path}: not a NumPy array file ({one_line(exc, 120)}); {RECREATE}") from None
        size, offset = os.fstat(f.fileno()).st_size, f.tell()
    if dtype.hasobject or dtype.kind != "f":
        raise TraceError(f"{path}: holds {dtype} values, expected floats; {RECREATE}")
    if tuple(found) != tuple(shape):
        raise TraceError(f"{path}: has shape {tuple(found)}, the trace needs {tuple(shape)} (layers, rows, "
                         f"prototype dimensions); {RECREATE}")
    needed = offset + int(np.prod(found)) * dtype.itemsize
    if size < needed:
        raise TraceError(f"{path}: {size:,} bytes, too short for its {tuple(found)} {dtype} array ({needed:,} "
                         f"bytes): the file was cut off; {RECREATE}")
    if not load:
        return None
    with os_errors(path, TraceError):
        try:
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except ValueError as exc:
            raise TraceError(f"{path}: unreadable array ({one_line(exc, 120)}); {RECREATE}") from None


class _Wide(Mapping):
    """Trace columns as (N, L) arrays, built on first use and kept."""

    def __init__(self, table: pd.DataFrame, num_layers: int):
        self._table, self._num_layers, self._cache = table, num_layers, {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._cache:
            if name not in self._table.columns:
                raise KeyError(name)
            self._cache[name] = self._table[name].to_numpy().reshape(-1, self._num_layers)
        return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table.columns)

    def __len__(self) -> int:
        return len(self._table.columns)


@dataclass
class Trace:
    """A loaded trace: the long table, the samples, meta, and lazily the embeddings.

    ``wide[col]`` gives any column as an (N, L) array — the form exit policies read.
    """

    table: pd.DataFrame
    samples: pd.DataFrame
    meta: dict
    folder: Path | None = None
    wide: _Wide = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.wide = _Wide(self.table, self.num_layers)

    @property
    def num_layers(self) -> int:
        return int(self.meta["num_layers"])

    @property
    def num_labels(self) -> int:
        return len(self.meta["label_names"])

    @property
    def label_names(self) -> list[str]:
        return list(self.meta["label_names"])

    @property
    def metric(self) -> str:
        return self.meta.get("metric", "accuracy")

    @property
    def labelled(self) -> bool:
        """Whether the samples have labels (a prediction-only trace of an unlabelled file has label -1)."""
        return bool(self.meta.get("labelled", True))

    @property
    def num_samples(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> np.ndarray:
        return self.samples["label"].to_numpy()

    @property
    def n_tokens(self) -> np.ndarray:
        return self.samples["n_tokens"].to_numpy()

    @property
    def cost(self) -> CostModel:
        return CostModel(**self.meta["cost_model"])

    def probs(self) -> np.ndarray:
        """(N, L, K) class probabilities."""
        return np.stack([self.wide[f"prob_{k}"] for k in range(self.num_labels)], axis=-1)

    def distances(self) -> np.ndarray:
        """(N, L, K) distances to every prototype."""
        return np.stack([self.wide[f"dist_{k}"] for k in range(self.num_labels)], axis=-1)

    def check_layer(self, layer) -> int:
        """``layer`` as an int, if it is one of 1..L; ``TraceError`` otherwise (never Python's negative indexing:
        layer 0 is not layer L)."""
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 1 <= layer <= self.num_layers:
            raise TraceError(f"layer {shorten(layer)} is not one of this trace's layers 1..{self.num_layers}")
        return int(layer)

    def _array(self, name: str, rows: int, mmap: bool) -> np.ndarray:
        if self.folder is None or path_kind(self.folder / name, TraceError) != "file":
            raise TraceError(f"{self.folder or 'this trace'}: no {name}; {RECREATE}")
        shape = (self.num_layers, rows, int(self.meta["cost_model"]["proto_dim"]))
        return check_array(self.folder / name, shape, load=True, mmap=mmap)

    def embeddings(self, layer: int | None = None) -> np.ndarray:
        """(L, N, d_p) float16, memory-mapped; or one 1-based layer's (N, d_p)."""
        emb = self._array(EMBEDDINGS_FILE, self.num_samples, mmap=True)
        return emb if layer is None else emb[self.check_layer(layer) - 1]

    def save(self, folder: str | Path) -> Path:
        """Write this trace as a trace folder (atomically), e.g. a synthetic or filtered one; embeddings and
        prototypes are copied when the trace has them."""
        import shutil

        with atomic_dir(folder) as tmp:
            self.table.to_parquet(tmp / TRACE_FILE, index=False)
            self.samples.to_parquet(tmp / SAMPLES_FILE, index=False)
            (tmp / META_FILE).write_text(json.dumps(self.meta, indent=2), encoding="utf-8")
            for name in (EMBEDDINGS_FILE, PROTOTYPES_FILE):
                if self.folder is not None and (self.folder / name).is_file():
                    shutil.copyfile(self.folder / name, tmp / name)
        return Path(folder)

    def prototypes(self, layer: int | None = None) -> np.ndarray:
        """(L, K, d_p) class prototypes; or one 1-based layer's (K, d_p)."""
        protos = self._array(PROTOTYPES_FILE, self.num_labels, mmap=False)
        return protos if layer is None else protos[self.check_layer(layer) - 1]


def load_trace(folder: str | Path) -> Trace:
    """Read and validate a trace directory, every file where it enters.

    meta.json (``validate_meta``), trace.parquet (``validate``: schema, layer order, label ranges, finite
    signals), samples.parquet (``validate_samples``) and, when present, the headers of embeddings.npy and
    prototypes.npy (``check_array``: float, shape (L, N, d_p) and (L, K, d_p), not cut off). Raises
    ``TraceError`` with one line naming the file and the problem -- a permission problem or a symlink loop as
    what it is, not as "not found" or "corrupt".
    """
    folder = Path(folder)
    kind = path_kind(folder, TraceError)
    if kind is None:
        raise TraceError(f"{folder}: trace folder not found; make one with `python -m analysis trace`")
    if kind != "dir":
        raise TraceError(f"{folder}: is a file; a trace is the folder that `python -m analysis trace` writes")
    for name in (META_FILE, TRACE_FILE, SAMPLES_FILE):
        if path_kind(folder / name, TraceError) != "file":
            raise TraceError(f"{folder}: missing {name}; {RECREATE}")
    meta_path = folder / META_FILE
    meta = validate_meta(read_json_object(meta_path, TraceError, fix=RECREATE), str(meta_path))
    table, samples = (_read_parquet(folder / name) for name in (TRACE_FILE, SAMPLES_FILE))
    num_layers, num_labels = meta["num_layers"], len(meta["label_names"])
    validate(table, num_layers, num_labels, source=str(folder / TRACE_FILE),
             labelled=meta.get("labelled", True))  # traces from before the key are labelled
    validate_samples(samples, table, num_layers, source=str(folder / SAMPLES_FILE))
    proto_dim = meta["cost_model"]["proto_dim"]
    for name, rows in ((EMBEDDINGS_FILE, len(samples)), (PROTOTYPES_FILE, num_labels)):
        if path_kind(folder / name, TraceError) is not None:
            check_array(folder / name, (num_layers, rows, proto_dim))
    return Trace(table, samples, meta, folder)


def _read_parquet(path: Path) -> pd.DataFrame:
    with os_errors(path, TraceError), open(path, "rb"):
        pass  # a permission problem is said as one, not as "unreadable"
    try:
        return pd.read_parquet(path)
    except (OSError, pa.ArrowException) as exc:
        raise TraceError(f"{path}: unreadable trace file ({one_line(exc, 160)}); {RECREATE}") from None
