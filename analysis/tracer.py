"""Making traces: one forward pass through every layer, recording what every exit policy needs (the format and
its reader are ``analysis.trace``'s).

``write_trace`` streams a split in chunks of samples (bounded memory) into a temporary folder that is renamed
into place at the end; under torchrun the chunks are shared out between processes and the parts merged in sample
order. ``trace_from_outputs`` makes an in-memory ``Trace`` from logits and distances, by the same code.
"""

from __future__ import annotations

import contextlib
import json
import platform
from collections.abc import Callable
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
from .trace import (EMBEDDINGS_FILE, META_FILE, PROTOTYPES_FILE, SAMPLES_FILE, SCHEMA_VERSION, TRACE_FILE, Trace,
                    samples_schema, trace_schema, validate, validate_meta)


def trace_rows(out, labels: np.ndarray, sample_ids: np.ndarray) -> dict[str, np.ndarray]:
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
                    pq.ParquetWriter(part / SAMPLES_FILE, samples_schema(is_pair)) as samples_out, \
                    open(tmp / EMBEDDINGS_FILE, "r+b") as emb_out, bar:
                for lo, hi in mine:
                    rows, samples, emb = _trace_chunk(model, tokenizer, split, lo, hi, batch_size, device, bar, on_progress, total)
                    rows_out.write_table(pa.table(rows, schema=trace_schema(num_labels)))
                    samples_out.write_table(pa.table(samples, schema=samples_schema(is_pair)))
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
        parts.append((local, trace_rows(out, labels, ids[local])))
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

    for name, schema in ((TRACE_FILE, trace_schema(num_labels)), (SAMPLES_FILE, samples_schema(is_pair))):
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
    table = pd.DataFrame(trace_rows(out, labels, np.arange(n)))
    n_tokens = np.full(n, 16, dtype=np.int32) if n_tokens is None else np.asarray(n_tokens, dtype=np.int32)
    cost = cost_model or CostModel(hidden=384, intermediate=1536, num_layers=num_layers, num_labels=num_labels, proto_dim=384)
    samples = pd.DataFrame({"sample_id": np.arange(n, dtype=np.int64),
                            "text": texts if texts is not None else [f"sample {i}" for i in range(n)],
                            "label": labels.astype(np.int16), "n_tokens": n_tokens})
    meta = {"schema_version": SCHEMA_VERSION,
            "label_names": [str(n) for n in label_names] if label_names else [str(k) for k in range(num_labels)],
            "num_layers": num_layers, "num_samples": n, "metric": metric, "is_pair": False, "labelled": labelled,
            "cost_model": cost.to_dict()}
    validate_meta(meta, "synthetic trace")
    validate(table, num_layers, num_labels, source="synthetic trace", labelled=labelled)
    return Trace(table, samples, meta)
