"""The trace: one forward pass through all layers, recording what every exit policy needs.

A trace directory holds

    trace.parquet    one row per (sample, layer): TRACE_COLUMNS, then prob_<k> and dist_<k> for k = 0..K-1
    samples.parquet  sample_id, text, (text_pair), label, n_tokens
    embeddings.npy   (L, N, d_p) float16: every layer's prototype-space embedding, for projections
    prototypes.npy   (L, K, d_p) float32: the class prototypes, projected with the samples
    meta.json        label names, layers, checkpoint, data, split, metric, labelled, cost model, package versions

A trace of a file without labels is prediction-only: ``label`` is -1 and ``correct`` False in every row, and
meta.json says ``"labelled": false`` (``Trace.labelled``).

The schema is defined here once and checked on every read. Writing streams in chunks of samples (bounded
memory) into a temporary folder that is renamed into place at the end; under torchrun the chunks are shared
out between processes and the parts merged in sample order.
"""

from __future__ import annotations

import contextlib
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
from .data import UNLABELLED
from .distributed import Dist
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
        raise TraceError(f"{source}: missing column(s) {', '.join(missing)}; re-create it with `python -m analysis trace`")
    for name, dtype in expected.items():
        if str(table[name].dtype) != dtype:
            raise TraceError(f"{source}: column {name} has dtype {table[name].dtype}, expected {dtype}; re-create the trace with `python -m analysis trace`")
    n = len(table)
    if n == 0 or n % num_layers:
        raise TraceError(f"{source}: {n} rows is not a whole number of samples x {num_layers} layers")
    layers = table["layer"].to_numpy().reshape(-1, num_layers)
    if not (layers == np.arange(1, num_layers + 1)).all():
        raise TraceError(f"{source}: rows must run through layers 1..{num_layers} for each sample, in order; re-create the trace with `python -m analysis trace`")
    ids = table["sample_id"].to_numpy().reshape(-1, num_layers)
    if not (ids == ids[:, :1]).all() or (np.diff(ids[:, 0]) <= 0).any():
        raise TraceError(f"{source}: rows must be grouped by sample_id in increasing order; re-create the trace with `python -m analysis trace`")
    for name in ("label", "pred") if labelled else ("pred",):
        values = table[name].to_numpy()
        if values.min() < 0 or values.max() >= num_labels:
            raise TraceError(f"{source}: column {name} has values outside 0..{num_labels - 1}; re-create the trace with `python -m analysis trace`")
    if not labelled and ((table["label"] != UNLABELLED).any() or table["correct"].any()):
        raise TraceError(f"{source}: an unlabelled trace (meta.json \"labelled\": false) must have label -1 and "
                         "correct False in every row; re-create the trace with `python -m analysis trace`")
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
    if folder.is_file():
        raise TraceError(f"{folder}: is a file; a trace is the folder that `python -m analysis trace` writes")
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
    validate(table, int(meta["num_layers"]), len(meta["label_names"]), source=str(folder / TRACE_FILE),
             labelled=bool(meta.get("labelled", True)))  # traces from before the key are labelled
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


SAMPLES_SCHEMA = {"sample_id": pa.int64(), "text": pa.string(), "text_pair": pa.string(), "label": pa.int16(),
                  "n_tokens": pa.int32()}


def _samples_schema(is_pair: bool) -> pa.Schema:
    return pa.schema([(k, t) for k, t in SAMPLES_SCHEMA.items() if is_pair or k != "text_pair"])


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
    ctx: Dist | None = None,
) -> Path:
    """Trace ``split`` (a ``data.Split``) through every layer of ``model`` into ``out_dir``.

    Samples are processed in chunks of ``chunk_size`` in their order; inside a chunk, batches are sorted by
    length so little compute goes to padding. Each chunk's rows are appended to trace.parquet and
    samples.parquet and its embeddings written into their place in embeddings.npy, so memory stays bounded
    however large the split. ``on_progress(done, total)`` is called after every batch (for a UI's progress bar).
    A split whose labels are all -1 (a file without labels) makes a prediction-only trace: meta.json says
    ``"labelled": false``.

    With ``ctx`` of several processes (torchrun), each process traces a contiguous run of whole chunks into a
    part folder and rank 0 concatenates the parts in sample order. Batches never cross a chunk, so the merged
    trace holds exactly the numbers a one-process trace does. Every process must see ``out_dir``'s file system.
    """
    ctx = ctx or Dist()
    model.eval()
    device = model.device
    n = len(split)
    if n == 0:
        raise DE3Error("cannot trace an empty split")
    num_layers, num_labels = model.num_layers, model.config.num_labels
    proto_dim = model.bank.prototypes.shape[-1]
    if len(label_names) != num_labels:
        raise DE3Error(f"the data has {len(label_names)} classes, the model {num_labels}; trace with matching data")
    is_pair = split.text_pairs is not None
    labelled = UNLABELLED not in split.labels
    chunks = [(lo, min(lo + chunk_size, n)) for lo in range(0, n, chunk_size)]
    mine = [chunks[i] for i in np.array_split(np.arange(len(chunks)), ctx.world_size)[ctx.rank]]
    with _shared_atomic_dir(out_dir, ctx) as tmp:
        if ctx.is_main:  # the embeddings file, filled in place by every process
            offset = np.lib.format.open_memmap(tmp / EMBEDDINGS_FILE, mode="w+", dtype=np.float16,
                                               shape=(num_layers, n, proto_dim)).offset
        offset = ctx.broadcast_object(offset if ctx.is_main else None)
        part = tmp / f"part-{ctx.rank:05d}" if ctx.enabled else tmp
        error = None
        try:
            part.mkdir(exist_ok=True)
            total = sum(hi - lo for lo, hi in mine)
            bar = tqdm(total=total, desc="trace", unit="sample", disable=not (progress and ctx.is_main), dynamic_ncols=True)
            with pq.ParquetWriter(part / TRACE_FILE, trace_schema(num_labels)) as rows_out, \
                    pq.ParquetWriter(part / SAMPLES_FILE, _samples_schema(is_pair)) as samples_out, \
                    open(tmp / EMBEDDINGS_FILE, "r+b") as emb_out, bar:
                for lo, hi in mine:
                    rows, samples, emb = _trace_chunk(model, tokenizer, split, lo, hi, batch_size, device, bar, on_progress, total)
                    rows_out.write_table(pa.table(rows, schema=trace_schema(num_labels)))
                    samples_out.write_table(pa.table(samples, schema=_samples_schema(is_pair)))
                    for layer in range(num_layers):  # rows lo..hi of every layer's (n, d_p) block
                        emb_out.seek(offset + (layer * n + lo) * proto_dim * 2)
                        emb_out.write(np.ascontiguousarray(emb[layer]).tobytes())
        except BaseException as exc:  # noqa: BLE001 - every process must reach the check below, then re-raise
            error = exc
        if not ctx.all_ok(error is None):
            if error is not None:
                raise error
            raise DE3Error("another tracing process failed (see its error above); nothing was written")
        if ctx.is_main:
            if ctx.enabled:
                _merge_parts(sorted(tmp.glob("part-*")), tmp, num_labels, is_pair)
            np.save(tmp / PROTOTYPES_FILE, model.bank.prototypes.float().cpu().numpy())
            meta = {
                "schema_version": SCHEMA_VERSION,
                "label_names": list(label_names),
                "num_layers": num_layers,
                "num_samples": n,
                "metric": metric,
                "is_pair": is_pair,
                "labelled": labelled,
                "model": model.config.to_dict(),
                "cost_model": CostModel.from_model(model).to_dict(),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "versions": _versions(),
                **(info or {}),
            }
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    ctx.barrier()  # the others return once the trace is in place
    return Path(out_dir)


def _trace_chunk(model, tokenizer, split, lo: int, hi: int, batch_size: int, device, bar, on_progress, total: int):
    """Samples lo..hi-1: their long-format rows, sample rows and (L, hi-lo, d_p) float16 embeddings, in order."""
    ids = np.arange(lo, hi)
    sub = split.subset(ids)
    enc = batching.encode_split(tokenizer, sub, model.config.max_length)
    parts: list[tuple[np.ndarray, dict]] = []
    emb = np.zeros((model.num_layers, hi - lo, model.bank.prototypes.shape[-1]), dtype=np.float16)
    for local, batch in batching.iterate(tokenizer, enc, batching.eval_order(enc, batch_size), device):
        labels = batch.pop("labels").cpu().numpy()
        out = model(**batch)
        parts.append((local, _rows(out, labels, ids[local])))
        emb[:, local] = out.embeddings.float().cpu().numpy().astype(np.float16)
        bar.update(len(local))
        if on_progress is not None:
            on_progress(bar.n, total)
    order = np.argsort(np.concatenate([local for local, _ in parts]), kind="stable")
    num_layers = model.num_layers
    rows = {k: np.concatenate([c[k] for _, c in parts]).reshape(-1, num_layers)[order].reshape(-1) for k in parts[0][1]}
    samples = {"sample_id": ids.astype(np.int64), "text": list(sub.texts)}
    if sub.text_pairs is not None:
        samples["text_pair"] = list(sub.text_pairs)
    samples.update(label=np.asarray(sub.labels, dtype=np.int16), n_tokens=enc.lengths.astype(np.int32))
    return rows, samples, emb


@contextlib.contextmanager
def _shared_atomic_dir(out_dir: str | Path, ctx: Dist):
    """``atomic_dir`` made by rank 0, its temporary path shared with every process."""
    if not ctx.enabled:
        with atomic_dir(out_dir) as tmp:
            yield tmp
        return
    if ctx.is_main:
        with atomic_dir(out_dir) as tmp:
            ctx.broadcast_object(str(tmp))
            yield tmp
    else:
        yield Path(ctx.broadcast_object(None))


def _merge_parts(parts: list[Path], folder: Path, num_labels: int, is_pair: bool) -> None:
    """Concatenate the processes' part files (each in sample order, parts in rank order) row group by row
    group, so memory stays bounded, then remove the parts."""
    import shutil

    for name, schema in ((TRACE_FILE, trace_schema(num_labels)), (SAMPLES_FILE, _samples_schema(is_pair))):
        with pq.ParquetWriter(folder / name, schema) as writer:
            for part in parts:
                if (part / name).is_file():
                    source = pq.ParquetFile(part / name)
                    for group in range(source.num_row_groups):
                        writer.write_table(source.read_row_group(group))
    for part in parts:
        shutil.rmtree(part)


def _versions() -> dict[str, str]:
    import transformers

    return {"analysis": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": np.__version__, "pandas": pd.__version__, "python": platform.python_version()}


def trace_from_outputs(
    logits: np.ndarray,
    distances: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    n_tokens: np.ndarray | None = None,
    label_names: list[str] | None = None,
    metric: str = "accuracy",
    cost_model: CostModel | None = None,
    texts: list[str] | None = None,
) -> Trace:
    """An in-memory ``Trace`` from per-layer logits and distances, each (L, N, K) — for tests, synthetic
    benchmarks and notebooks. Signals are computed by the same code as a real trace. Without ``labels`` the
    trace is unlabelled (label -1, correct False, ``labelled`` False), like a trace of a file without labels."""
    from .model import DE3Output

    logits_t = torch.as_tensor(np.asarray(logits, dtype=np.float32))
    dist_t = torch.as_tensor(np.asarray(distances, dtype=np.float32))
    num_layers, n, num_labels = logits_t.shape
    labelled = labels is not None
    labels = np.asarray(labels, dtype=np.int64) if labelled else np.full(n, UNLABELLED, dtype=np.int64)
    out = DE3Output(logits_t, torch.zeros(num_layers, n, 1), dist_t)
    table = pd.DataFrame(_rows(out, labels, np.arange(n)))
    n_tokens = np.full(n, 16, dtype=np.int32) if n_tokens is None else np.asarray(n_tokens, dtype=np.int32)
    cost = cost_model or CostModel(hidden=384, intermediate=1536, num_layers=num_layers, num_labels=num_labels, proto_dim=384)
    samples = pd.DataFrame({"sample_id": np.arange(n, dtype=np.int64),
                            "text": texts if texts is not None else [f"sample {i}" for i in range(n)],
                            "label": labels.astype(np.int16), "n_tokens": n_tokens})
    meta = {"schema_version": SCHEMA_VERSION, "label_names": label_names or [str(k) for k in range(num_labels)],
            "num_layers": num_layers, "num_samples": n, "metric": metric, "is_pair": False, "labelled": labelled,
            "cost_model": cost.to_dict()}
    validate(table, num_layers, num_labels, source="synthetic trace", labelled=labelled)
    return Trace(table, samples, meta)
