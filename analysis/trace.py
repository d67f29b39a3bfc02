"""The trace: one forward pass through all layers, recording what every exit policy needs.

A trace directory holds

    trace.parquet    one row per (sample, layer): TRACE_COLUMNS, then prob_<k> and dist_<k> for k = 0..K-1
    samples.parquet  sample_id, text, (text_pair), label, n_tokens
    embeddings.npy   (L, N, d_p) float16: every layer's prototype-space embedding, for projections
    prototypes.npy   (L, K, d_p) float32: the class prototypes, projected with the samples
    meta.json        label names, layers, checkpoint, data, split, metric, cost model, package versions

The schema is defined here once and checked on every read. Writing streams in chunks of samples (bounded
memory) into a temporary folder that is renamed into place at the end.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from . import __version__, batching
from .cost import CostModel
from .errors import DE3Error
from .io import atomic_dir

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


class TraceError(DE3Error):
    """A trace directory is missing a file or does not follow the schema."""


def class_columns(num_labels: int) -> list[str]:
    return [f"prob_{k}" for k in range(num_labels)] + [f"dist_{k}" for k in range(num_labels)]


def trace_schema(num_labels: int) -> pa.Schema:
    types = {**TRACE_COLUMNS, **{c: "float32" for c in class_columns(num_labels)}}
    return pa.schema([(name, pa.from_numpy_dtype(np.dtype(t))) for name, t in types.items()])


def validate(table: pd.DataFrame, num_layers: int, num_labels: int, source: str = "trace") -> pd.DataFrame:
    """Check columns, dtypes, and that every sample has layers 1..L exactly once, in order.

    Returns the table unchanged; raises ``TraceError`` naming the first problem.
    """
    expected = {**TRACE_COLUMNS, **{c: "float32" for c in class_columns(num_labels)}}
    missing = [c for c in expected if c not in table.columns]
    if missing:
        raise TraceError(f"{source}: missing column(s) {', '.join(missing)}; re-create it with `python -m analysis trace`")
    for name, dtype in expected.items():
        if str(table[name].dtype) != dtype:
            raise TraceError(f"{source}: column {name} has dtype {table[name].dtype}, expected {dtype}")
    n = len(table)
    if n == 0 or n % num_layers:
        raise TraceError(f"{source}: {n} rows is not a whole number of samples x {num_layers} layers")
    layers = table["layer"].to_numpy().reshape(-1, num_layers)
    if not (layers == np.arange(1, num_layers + 1)).all():
        raise TraceError(f"{source}: rows must run through layers 1..{num_layers} for each sample, in order")
    ids = table["sample_id"].to_numpy().reshape(-1, num_layers)
    if not (ids == ids[:, :1]).all() or (np.diff(ids[:, 0]) <= 0).any():
        raise TraceError(f"{source}: rows must be grouped by sample_id in increasing order")
    for name in ("label", "pred"):
        values = table[name].to_numpy()
        if values.min() < 0 or values.max() >= num_labels:
            raise TraceError(f"{source}: column {name} has values outside 0..{num_labels - 1}")
    return table


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

    def embeddings(self, layer: int | None = None) -> np.ndarray:
        """(L, N, d_p) float16, memory-mapped; or one 1-based layer's (N, d_p)."""
        if self.folder is None or not (self.folder / EMBEDDINGS_FILE).is_file():
            raise TraceError("this trace has no embeddings file")
        emb = np.load(self.folder / EMBEDDINGS_FILE, mmap_mode="r")
        return emb if layer is None else emb[layer - 1]

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

    def prototypes(self) -> np.ndarray:
        """(L, K, d_p) class prototypes."""
        if self.folder is None or not (self.folder / PROTOTYPES_FILE).is_file():
            raise TraceError("this trace has no prototypes file")
        return np.load(self.folder / PROTOTYPES_FILE)


def load_trace(folder: str | Path) -> Trace:
    """Read and validate a trace directory."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TraceError(f"{folder}: trace folder not found; make one with `python -m analysis trace`")
    for name in (META_FILE, TRACE_FILE, SAMPLES_FILE):
        if not (folder / name).is_file():
            raise TraceError(f"{folder}: missing {name}; re-create the trace with `python -m analysis trace`")
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        table = pd.read_parquet(folder / TRACE_FILE)
        samples = pd.read_parquet(folder / SAMPLES_FILE)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, pa.ArrowException) as exc:
        raise TraceError(f"{folder}: unreadable trace ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); re-create it") from None
    for key in ("num_layers", "label_names", "cost_model"):
        if key not in meta:
            raise TraceError(f"{folder / META_FILE}: no {key!r}; re-create the trace")
    validate(table, int(meta["num_layers"]), len(meta["label_names"]), source=str(folder / TRACE_FILE))
    if len(samples) * int(meta["num_layers"]) != len(table) or not {"sample_id", "label", "n_tokens"} <= set(samples.columns):
        raise TraceError(f"{folder / SAMPLES_FILE}: does not match trace.parquet (sample count or columns)")
    return Trace(table, samples, meta, folder)


def _rows(out, labels: np.ndarray, sample_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Long-format columns for one batch: (L, B, ...) model outputs -> L*B rows ordered by (sample, layer)."""
    s = out.signals()
    num_layers, batch = s.pred.shape

    def flat(t: torch.Tensor) -> np.ndarray:  # (L, B) -> (B*L,) sample-major
        return t.transpose(0, 1).reshape(-1).cpu().numpy()

    pred = flat(s.pred)
    label = np.repeat(labels, num_layers)
    cols = {
        "sample_id": np.repeat(sample_ids, num_layers).astype(np.int64),
        "layer": np.tile(np.arange(1, num_layers + 1), batch).astype(np.int16),
        "label": label.astype(np.int16),
        "pred": pred.astype(np.int16),
        "correct": pred == label,
        "entropy": flat(s.entropy).astype(np.float32),
        "max_prob": flat(s.max_prob).astype(np.float32),
        "r1": flat(s.r1).astype(np.float32),
        "r2": flat(s.r2).astype(np.float32),
        "dr": flat(s.dr).astype(np.float32),
    }
    probs, dists = s.probs.transpose(0, 1).float().cpu().numpy(), out.distances.transpose(0, 1).float().cpu().numpy()
    for k in range(probs.shape[-1]):
        cols[f"prob_{k}"] = probs[..., k].reshape(-1).astype(np.float32)
    for k in range(dists.shape[-1]):
        cols[f"dist_{k}"] = dists[..., k].reshape(-1).astype(np.float32)
    return cols


@torch.no_grad()
def write_trace(
    model,
    tokenizer,
    split,
    out_dir: str | Path,
    *,
    label_names: list[str],
    metric: str = "accuracy",
    batch_size: int = 64,
    chunk_size: int = 2048,
    info: dict | None = None,
    progress: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Trace ``split`` (a ``data.Split``) through every layer of ``model`` into ``out_dir``.

    Samples are processed in chunks of ``chunk_size`` in their order; inside a chunk, batches are sorted by
    length so little compute goes to padding. Each chunk's rows are appended to trace.parquet and its
    embeddings written into a memory-mapped .npy, so memory stays bounded however large the split.
    ``on_progress(done, total)`` is called after every batch (for a UI's progress bar).
    """
    model.eval()
    device = model.device
    n = len(split)
    if n == 0:
        raise DE3Error("cannot trace an empty split")
    num_layers, num_labels = model.num_layers, model.config.num_labels
    proto_dim = model.bank.prototypes.shape[-1]
    if len(label_names) != num_labels:
        raise DE3Error(f"the data has {len(label_names)} classes, the model {num_labels}; trace with matching data")
    with atomic_dir(out_dir) as tmp:
        emb_file = np.lib.format.open_memmap(tmp / EMBEDDINGS_FILE, mode="w+", dtype=np.float16, shape=(num_layers, n, proto_dim))
        writer = pq.ParquetWriter(tmp / TRACE_FILE, trace_schema(num_labels))
        n_tokens = np.zeros(n, dtype=np.int32)
        bar = tqdm(total=n, desc="trace", unit="sample", disable=not progress, dynamic_ncols=True)
        try:
            for start in range(0, n, chunk_size):
                ids = np.arange(start, min(start + chunk_size, n))
                enc = batching.encode_split(tokenizer, split.subset(ids), model.config.max_length)
                n_tokens[ids] = enc.lengths
                chunk_cols: list[tuple[np.ndarray, dict]] = []
                for local, batch in batching.iterate(tokenizer, enc, batching.eval_order(enc, batch_size), device):
                    labels = batch.pop("labels").cpu().numpy()
                    out = model(**batch)
                    chunk_cols.append((local, _rows(out, labels, ids[local])))
                    emb_file[:, ids[local]] = out.embeddings.float().cpu().numpy().astype(np.float16)
                    bar.update(len(local))
                    if on_progress is not None:
                        on_progress(bar.n, n)
                order = np.argsort(np.concatenate([ids[local] for local, _ in chunk_cols]), kind="stable")
                columns = {k: np.concatenate([c[k] for _, c in chunk_cols]).reshape(-1, num_layers)[order].reshape(-1)
                           for k in chunk_cols[0][1]}
                writer.write_table(pa.table(columns, schema=trace_schema(num_labels)))
        finally:
            writer.close()
            bar.close()
        emb_file.flush()
        del emb_file
        np.save(tmp / PROTOTYPES_FILE, model.bank.prototypes.float().cpu().numpy())
        samples = {"sample_id": np.arange(n, dtype=np.int64), "text": list(split.texts)}
        if split.text_pairs is not None:
            samples["text_pair"] = list(split.text_pairs)
        samples.update(label=np.asarray(split.labels, dtype=np.int16), n_tokens=n_tokens)
        pd.DataFrame(samples).to_parquet(tmp / SAMPLES_FILE, index=False)
        meta = {
            "schema_version": SCHEMA_VERSION,
            "label_names": list(label_names),
            "num_layers": num_layers,
            "num_samples": n,
            "metric": metric,
            "is_pair": split.text_pairs is not None,
            "model": model.config.to_dict(),
            "cost_model": CostModel.from_model(model).to_dict(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(),
            **(info or {}),
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return Path(out_dir)


def _versions() -> dict[str, str]:
    import transformers

    return {"analysis": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": np.__version__, "pandas": pd.__version__, "python": platform.python_version()}


def trace_from_outputs(
    logits: np.ndarray,
    distances: np.ndarray,
    labels: np.ndarray,
    *,
    n_tokens: np.ndarray | None = None,
    label_names: list[str] | None = None,
    metric: str = "accuracy",
    cost_model: CostModel | None = None,
    texts: list[str] | None = None,
) -> Trace:
    """An in-memory ``Trace`` from per-layer logits and distances, each (L, N, K) — for tests, synthetic
    benchmarks and notebooks. Signals are computed by the same code as a real trace."""
    from .model import DE3Output

    logits_t = torch.as_tensor(np.asarray(logits, dtype=np.float32))
    dist_t = torch.as_tensor(np.asarray(distances, dtype=np.float32))
    num_layers, n, num_labels = logits_t.shape
    labels = np.asarray(labels, dtype=np.int64)
    out = DE3Output(logits_t, torch.zeros(num_layers, n, 1), dist_t)
    table = pd.DataFrame(_rows(out, labels, np.arange(n)))
    n_tokens = np.full(n, 16, dtype=np.int32) if n_tokens is None else np.asarray(n_tokens, dtype=np.int32)
    cost = cost_model or CostModel(hidden=384, intermediate=1536, num_layers=num_layers, num_labels=num_labels, proto_dim=384)
    samples = pd.DataFrame({"sample_id": np.arange(n, dtype=np.int64),
                            "text": texts if texts is not None else [f"sample {i}" for i in range(n)],
                            "label": labels.astype(np.int16), "n_tokens": n_tokens})
    meta = {"schema_version": SCHEMA_VERSION, "label_names": label_names or [str(k) for k in range(num_labels)],
            "num_layers": num_layers, "num_samples": n, "metric": metric, "is_pair": False, "cost_model": cost.to_dict()}
    validate(table, num_layers, num_labels, source="synthetic trace")
    return Trace(table, samples, meta)
