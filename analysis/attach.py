"""Bring your own model: DE3 exits attached to a fine-tuned Hugging Face classifier (or a plain encoder), frozen.

    attach(model_source, data, out_dir)   -> AttachResult, an ordinary checkpoint in ``out_dir``

1. load    the model, frozen: ``AutoModelForSequenceClassification`` when its config's ``architectures`` name one,
           else ``AutoModel``. A classifier's own head -- [CLS] -> dense + activation -> linear (BERT: the pooler and
           ``classifier``; RoBERTa, XLM-R, CamemBERT: ``classifier.dense`` + tanh and ``out_proj``; ELECTRA: the
           same with gelu) -- is copied into the exit at L and kept frozen (``ModelConfig.final_head``), so layer L
           answers exactly as the model did. A plain encoder's exit at L is trained like the others.
2. labels  the data's classes in the model's: generic names (LABEL_0, LABEL_1, ...) take the data's classes by index,
           real names match by name (``data.class_ids``; a subset of them is fine).
3. cache   the training and validation rows go through the backbone once; every exit's pooled vector is kept,
           (N, L, H): float32 in memory, or a float16 ``np.memmap`` on disk when larger than ``cache_memory`` bytes.
4. train   every trained exit's pooler, classifier and prototypical network, and the prototypes, on the cached
           vectors with the spec's loss (``DE3Bert.exits``: mean CE over the trained exits + alpha * mean DAR over
           m < L; moving-average prototypes after each optimiser step): AdamW on the heads, the best epoch by
           validation (``TrainConfig.select_by``), every exit's validation metric logged per epoch.
5. save    ``save_model(..., omit_base=True)``: the backbone is left out and read back from ``model_source``
           (``config.backbone``), so the checkpoint holds the heads and prototypes only; plus train_config.json,
           data.json and metrics.json as training writes them. ``trace``, ``evaluate``, ``bench``, the engine and
           the app open it like any checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import batching
from .backbones import (OFFLINE_BACKBONES, _load_failure, _offline_kwargs, check_encoder_config, is_local, load_backbone,
                        load_tokenizer, pick_device, resolve_backbone)
from .checkpoint import save_model
from .config import FINAL_HEADS, ModelConfig, TrainConfig
from .data import DataBundle, class_ids, class_list, split_notes
from .errors import DE3Error, one_line
from .io import claim_output
from .model import ACTIVATIONS, DE3Bert, pool_tokens
from .training import ExitEvaluation, _autocast, evaluate, seed_everything

# The families whose layers the early-exit engine replays (engine.SUPPORTED_MODEL_TYPES) and whose classification
# head is [CLS] -> dense + activation -> linear: where that head lives in AutoModelForSequenceClassification.
HEAD_LAYOUTS = {"bert": "pooler", "roberta": "classifier", "xlm-roberta": "classifier", "camembert": "classifier",
                "electra": "classifier"}
# attach's own defaults: heads alone on cached vectors are cheap, so more epochs than end-to-end training
ATTACH_TRAIN_DEFAULTS = {"epochs": 10, "batch_size": 128}
CACHE_MEMORY = 2**30  # bytes of float32 pooled vectors kept in memory; beyond, a float16 memmap on disk
SCORE_BATCH = 4096  # cached rows scored at once (heads only)


@dataclass
class LoadedModel:
    """A frozen encoder, its tokenizer, and its classification head when it has one."""

    source: str  # what config.backbone records: a short name, a hub id, or an absolute folder
    encoder: nn.Module
    tokenizer: object
    dense: nn.Linear | None = None  # the head: [CLS] -> dense + activation -> classifier
    classifier: nn.Linear | None = None
    activation: str | None = None  # one of config.FINAL_HEADS
    label_names: list[str] | None = None  # the head's classes, in id order (config.id2label)
    architecture: str = ""


@dataclass
class AttachResult:
    checkpoint: Path
    best_epoch: int
    history: list[dict]
    test: ExitEvaluation | None
    cache_seconds: float
    heads_seconds: float
    label_names: list[str]
    notes: list[str]


# ---- 1. the model ----------------------------------------------------------------------------------------------


def load_model_to_attach(name: str) -> LoadedModel:
    """The model ``name`` (a hub id, a local folder or ``minilm-l6``), frozen and in eval mode, with its head.

    Raises ``DE3Error`` (one line) for: a model that cannot be loaded (a hub id with no network says so), a decoder
    or any non-encoder, a family the engine does not run, a classification head that is not [CLS] -> dense +
    activation -> linear.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = resolve_backbone(name)
    source = str(Path(name).expanduser().resolve()) if is_local(name) and name not in OFFLINE_BACKBONES else name
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False, **_offline_kwargs(path))
    except (OSError, ValueError, KeyError) as exc:
        raise DE3Error(_not_loaded(name, exc)) from None
    if isinstance(getattr(config, "de3", None), dict):
        raise DE3Error(f"model {name!r} is a DE3-BERT checkpoint already (it has exits); attach takes a plain Hugging "
                       "Face model: the classifier or encoder it was made from")
    check_encoder_config(config, name, what="model", flag="--model")
    model_type = getattr(config, "model_type", "?")
    if model_type not in HEAD_LAYOUTS:
        raise DE3Error(f"model {name!r} is a {model_type!r} model; attach supports {', '.join(HEAD_LAYOUTS)} (the "
                       "families the early-exit engine runs layer by layer); use one of them, or train DE3-BERT end "
                       "to end with `python -m analysis train --backbone ...`")
    tokenizer = load_tokenizer(name)
    classifier_arch = next((a for a in (getattr(config, "architectures", None) or [])
                            if a.endswith("ForSequenceClassification")), None)
    if classifier_arch is None:
        encoder = load_backbone(name)
        return LoadedModel(source, _frozen(encoder), tokenizer,
                           architecture=", ".join(getattr(config, "architectures", None) or [type(encoder).__name__]))
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, config=config, trust_remote_code=False,
                                                                   **_offline_kwargs(path))
    except (OSError, ValueError, KeyError) as exc:
        raise DE3Error(_not_loaded(name, exc)) from None
    model = _frozen(model)
    encoder = getattr(model, model.base_model_prefix)
    dense, classifier, reference = _head_parts(model, encoder, HEAD_LAYOUTS[model_type], name)
    activation = _head_activation(dense, classifier, reference, config.hidden_size, name)
    id2label = getattr(config, "id2label", None) or {}
    labels = [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(classifier.out_features)]
    return LoadedModel(source, encoder, tokenizer, dense, classifier, activation, labels, classifier_arch)


def _frozen(module: nn.Module) -> nn.Module:
    """float32 (the heads are), no gradients, eval mode."""
    return module.float().requires_grad_(False).eval()


def _not_loaded(name: str, exc: Exception) -> str:
    if is_local(name) or name in OFFLINE_BACKBONES or "trust_remote_code" in str(exc) or "custom code" in str(exc):
        return _load_failure(name, exc, what="model")
    first = one_line(str(exc).strip().splitlines()[0] if str(exc).strip() else exc, 160)
    return (f"could not load {name!r} from the Hugging Face hub (offline? {first}); pass a local folder holding the "
            "model (config.json, weights, tokenizer), or --model minilm-l6")


def _head_parts(model: nn.Module, encoder: nn.Module, layout: str, name: str):
    """(dense, classifier, the original head as a function of the last hidden states (B, T, H) -> logits)."""
    head = getattr(model, "classifier", None)
    if layout == "pooler":  # BERT: logits = classifier(dropout(tanh(pooler.dense(h[:, 0]))))
        pooler = getattr(encoder, "pooler", None)
        dense, classifier = getattr(pooler, "dense", None), head
        reference = lambda h: head(pooler(h))  # noqa: E731
    else:  # RoBERTa family, ELECTRA: classifier.dense, its activation, classifier.out_proj
        dense, classifier = getattr(head, "dense", None), getattr(head, "out_proj", None)
        reference = lambda h: head(h)  # noqa: E731
    if not isinstance(dense, nn.Linear) or not isinstance(classifier, nn.Linear):
        raise DE3Error(f"model {name!r} ({type(model).__name__}): its classification head is not [CLS] -> dense -> "
                       "activation -> linear, which attach copies; pass the plain encoder instead (every exit trained)")
    return dense, classifier, reference


def _head_activation(dense: nn.Linear, classifier: nn.Linear, reference, hidden: int, name: str) -> str:
    """Which of ``FINAL_HEADS`` the head applies after its dense: the one that reproduces it on random states."""
    probe = torch.Generator().manual_seed(0)
    states = torch.randn(4, 3, hidden, generator=probe)
    with torch.no_grad():
        want = reference(states)
        for activation in FINAL_HEADS:
            got = classifier(ACTIVATIONS[activation](dense(states[:, 0])))
            if torch.allclose(got, want, atol=1e-5, rtol=1e-4):
                return activation
    raise DE3Error(f"model {name!r}: its classification head is not [CLS] -> dense -> {'/'.join(FINAL_HEADS)} -> "
                   "linear, which attach copies; pass the plain encoder instead (every exit trained)")


# ---- 2. labels -------------------------------------------------------------------------------------------------


def is_generic(names) -> bool:
    """Hugging Face's placeholder class names: LABEL_0, LABEL_1, ... (what a config without id2label gets)."""
    return all(re.fullmatch(r"LABEL_\d+", n) for n in names)


def match_labels(loaded: LoadedModel, data: DataBundle) -> tuple[list[str], list[str]]:
    """The checkpoint's class names, and notes to print.

    No head: the data's classes. A head with generic names: the data's class k is the model's class k (refused when
    the data has more classes); the names are the data's (the model's placeholders for the rest). A head with real
    names: the data's classes must be among them (matched by name as ``data.class_ids`` does); the names are the
    model's. ``DE3Error`` naming both lists otherwise.
    """
    model_names, data_names = loaded.label_names, list(data.label_names)
    if model_names is None:
        return data_names, []
    if is_generic(model_names):
        if len(data_names) > len(model_names):
            raise DE3Error(f"{data.name}: {len(data_names)} classes ({class_list(data_names)}), but model "
                           f"{loaded.source!r} has {len(model_names)} ({class_list(model_names)}); attach a model "
                           "fine-tuned on these classes, or a plain encoder (every exit trained)")
        names = data_names + model_names[len(data_names):]
        if len(set(names)) != len(names):
            raise DE3Error(f"{data.name}: the class names {class_list(data_names)} collide with the model's "
                           f"{class_list(model_names)}; rename the data's classes")
        pairs = ", ".join(f"{m} = {d!r}" for m, d in zip(model_names, data_names))
        return names, [f"model {loaded.source!r} has generic class names ({class_list(model_names)}): the data's "
                       f"classes are taken by index ({pairs})"]
    unknown = [n for n, i in zip(data_names, class_ids(data_names, model_names)) if i is None]
    if unknown:
        raise DE3Error(f"{data.name}: classes {class_list(unknown)} are not among model {loaded.source!r}'s classes "
                       f"{class_list(model_names)} (the data has {class_list(data_names)}); use data labelled with "
                       "the model's classes, or a plain encoder (every exit trained)")
    return list(model_names), []


# ---- 3. the cache of pooled vectors ----------------------------------------------------------------------------


@torch.no_grad()
def cache_pooled(model: DE3Bert, tokenizer, encoded: batching.Encoded, out: np.ndarray, *, batch_size: int,
                 bar=None, on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """Write every exit's pooled vector of every row into ``out`` (N, L, H): one pass through the backbone."""
    device = model.device
    for indices, batch in batching.iterate(tokenizer, encoded, batching.eval_order(encoded, batch_size), device):
        batch.pop("labels")
        mask = batch["attention_mask"]
        with _autocast(device):
            hidden = model.backbone(**batch, output_hidden_states=True).hidden_states[1:]  # L x (B, T, H)
        pooled = torch.stack([pool_tokens(h.float(), mask, head.pooling) for head, h in zip(model.heads, hidden)], 1)
        order = np.argsort(indices)  # rows in file order: a memmap is written forward
        out[indices[order]] = pooled[torch.from_numpy(order).to(device)].cpu().numpy().astype(out.dtype)
        if bar is not None:
            bar.update(len(indices))
        if on_batch is not None:
            on_batch(len(indices))
    return out


def _cache_array(rows: int, layers: int, hidden: int, folder: Path | None, name: str) -> np.ndarray:
    """(rows, layers, hidden): float32 in memory, or a float16 memmap in ``folder`` when one is given."""
    if folder is None:
        return np.zeros((rows, layers, hidden), dtype=np.float32)
    return np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=np.float16, shape=(rows, layers, hidden))


def _rows(cache: np.ndarray, indices: np.ndarray, device) -> torch.Tensor:
    """The cached (B, L, H) vectors of ``indices`` as float32 on ``device``."""
    return torch.from_numpy(np.asarray(cache[np.sort(indices)], dtype=np.float32)).to(device)


# ---- 4. the heads on cached vectors ----------------------------------------------------------------------------


def _exits(model: DE3Bert, pooled: torch.Tensor, labels: torch.Tensor | None = None):
    """Every exit on cached vectors (B, L, H): ``DE3Bert.exits``, the same output and loss as a full forward."""
    return model.exits([head.from_pooled(pooled[:, m]) for m, head in enumerate(model.heads)], labels)


def _batches(model: DE3Bert, cache: np.ndarray, device):
    """Every exit's output on the cached rows (dropout off), ``SCORE_BATCH`` rows at a time, in row order."""
    model.eval()
    for start in range(0, len(cache), SCORE_BATCH):
        yield _exits(model, _rows(cache, np.arange(start, min(start + SCORE_BATCH, len(cache))), device))


@torch.no_grad()
def _predict(model: DE3Bert, cache: np.ndarray, device) -> np.ndarray:
    """Every exit's prediction (L, N) on cached rows."""
    return torch.cat([out.logits.argmax(-1).cpu() for out in _batches(model, cache, device)], 1).numpy()


def _head_state(model: DE3Bert) -> dict[str, torch.Tensor]:
    """Everything attach changes: the heads and the prototypes."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}


@torch.no_grad()
def _fit_missing_prototypes(model: DE3Bert, train_cache: np.ndarray, device) -> None:
    """Prototypes of the model's classes that no training row has, from the rows its own head assigns to them."""
    bank, num_labels = model.bank, model.config.num_labels
    missing = ~bank.initialized  # (K,)
    if not missing.any():
        return
    sums, counts = 0, 0
    for out in _batches(model, train_cache, device):
        batch_sums, batch_counts = bank.batch_stats(out.embeddings, out.logits[-1].argmax(-1), num_labels)
        sums, counts = sums + batch_sums, counts + batch_counts
    bank.apply_stats(sums, counts * missing, model.config.gamma)  # the classes without prototypes only


class _HeadTraining:
    """AdamW on the trained exits' parameters over cached vectors; prototypes after each step (spec §3)."""

    def __init__(self, model: DE3Bert, cfg: TrainConfig, num_rows: int, device):
        from transformers import get_linear_schedule_with_warmup

        self.model, self.cfg, self.device = model, cfg, device
        steps_per_epoch = -(-num_rows // cfg.batch_size)
        self.total_steps = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch
        self.num_epochs = math.ceil(self.total_steps / steps_per_epoch)
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        decay = [p for n, p in params if p.ndim >= 2]
        no_decay = [p for n, p in params if p.ndim < 2]  # biases
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr_heads)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, int(cfg.warmup_ratio * self.total_steps),
                                                         self.total_steps)
        self.rng = np.random.default_rng(cfg.seed)
        self.step = 0

    def epoch(self, cache: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """One shuffled pass (stopping at ``total_steps``); the mean (loss, ce, dar)."""
        model, cfg = self.model, self.cfg
        model.heads.train()  # dropout in the trained heads; the backbone is never run here
        if model.config.final_head:
            model.heads[-1].eval()  # the copied head stays as the model had it
        parts = []
        order = self.rng.permutation(len(cache))
        for start in range(0, len(order), cfg.batch_size):
            if self.step >= self.total_steps:
                break
            indices = np.sort(order[start : start + cfg.batch_size])
            y = torch.from_numpy(labels[indices]).to(self.device)
            out = _exits(model, _rows(cache, indices, self.device), y)
            values = (out.loss.item(), out.ce_loss.item(), out.dar_loss.item())
            if not all(math.isfinite(v) for v in values):
                raise DE3Error(f"attach diverged at step {self.step + 1}: loss {values[0]:.4g} (ce {values[1]:.4g}, dar "
                               f"{values[2]:.4g}); lower lr_heads ({cfg.lr_heads:g}) or check the data; nothing written")
            self.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            model.update_prototypes(out.embeddings, y)  # after the step: the loss used the prototypes before it
            self.step += 1
            parts.append(values)
        model.eval()
        return np.mean(parts, axis=0) if parts else np.full(3, np.nan)


# ---- all together ------------------------------------------------------------------------------------------------


def attach(
    model_source: str,
    data: DataBundle,
    out_dir: str | Path,
    *,
    config: ModelConfig | None = None,
    train_config: TrainConfig | None = None,
    device: str = "auto",
    data_info: dict | None = None,
    cache_dir: str | Path | None = None,
    cache_memory: int = CACHE_MEMORY,
    progress: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
    log=print,
) -> AttachResult:
    """Attach DE3 exits to a frozen model and write an ordinary checkpoint to ``out_dir``.

    Parameters
    ----------
    model_source : a Hugging Face id, a local folder, or ``"minilm-l6"``: an encoder classifier of a family in
        ``HEAD_LAYOUTS`` (its head becomes the exit at L) or a plain encoder (every exit trained).
    data : a labelled ``DataBundle``: its train split trains the exits, validation picks the best epoch, test is
        scored at the end.
    out_dir : the checkpoint folder (replaced atomically when it exists; checked and locked first).
    config : the exits' settings (pooling, proto_dim, distance, dropout, alpha, dar_form, dar_margin, gamma,
        max_length); ``backbone``, ``label_names`` and ``final_head`` are set here.
    train_config : epochs, batch_size, lr_heads, weight_decay, warmup_ratio, max_grad_norm, seed, max_steps,
        select_by, eval_batch_size (the backbone batch while caching), num_threads; default
        ``ATTACH_TRAIN_DEFAULTS``. The backbone is frozen: lr_backbone, freeze_embeddings, save_every are not used.
    device : "auto", "cpu" or "cuda".
    data_info : how the data was loaded (spec, seed, ``data.RECORDED_OPTIONS``), saved in data.json.
    cache_dir : where a cache too large for memory goes (default: a temporary folder beside ``out_dir``).
    cache_memory : bytes of float32 vectors kept in memory; a larger cache is a float16 memmap on disk.
    on_progress : called with (rows cached, rows to cache) during the backbone pass, the slow part.
    log : where the notes and per-epoch lines go.
    """
    config = config or ModelConfig()
    train_config = train_config or TrainConfig(**ATTACH_TRAIN_DEFAULTS)
    if not data.labelled:
        raise DE3Error(f"{data.name}: has no labels; attach trains the exits on labelled rows (pass --label-column)")
    out_dir = Path(out_dir)
    local = model_source if is_local(model_source) and model_source not in OFFLINE_BACKBONES else None
    with claim_output(out_dir, around=[local]):
        dev = pick_device(device)
        if train_config.num_threads:
            torch.set_num_threads(train_config.num_threads)
        seed_everything(train_config.seed)
        loaded = load_model_to_attach(model_source)
        label_names, notes = match_labels(loaded, data)
        data = data.relabel(label_names)
        model_config = dataclasses.replace(config, backbone=loaded.source, label_names=tuple(label_names),
                                           final_head=loaded.activation)
        model = _build(model_config, loaded).to(dev).eval()
        if model.num_layers < 2:
            raise DE3Error(f"model {model_source!r} has {model.num_layers} layer: no layer to exit early at")
        notes += split_notes(data)
        if loaded.label_names is None:
            notes.append(f"model {model_source!r} ({loaded.architecture}) has no sequence-classification head: "
                         f"every exit is trained, layer {model.num_layers} too")
        for note in notes:
            log(f"note: {note}")
        return _attach(model, loaded, data, out_dir, train_config, dev, data_info=data_info, cache_dir=cache_dir,
                       cache_memory=cache_memory, progress=progress, on_progress=on_progress, log=log, notes=notes)


def _build(model_config: ModelConfig, loaded: LoadedModel) -> DE3Bert:
    """A DE3Bert on the frozen encoder; with a head, the exit at L is a copy of it and every other exit's pooler
    starts from its dense (spec §2: an exit's pooler starts from the backbone's)."""
    model = DE3Bert(model_config, loaded.encoder)
    if loaded.dense is not None:
        for head in model.heads:
            head.pooler.load_state_dict(loaded.dense.state_dict())
        model.heads[-1].classifier.load_state_dict(loaded.classifier.state_dict())
    return model


def _attach(model: DE3Bert, loaded: LoadedModel, data: DataBundle, out_dir: Path, cfg: TrainConfig, dev, *, data_info,
            cache_dir, cache_memory, progress, on_progress, log, notes) -> AttachResult:
    tokenizer, max_length = loaded.tokenizer, model.config.max_length
    train_enc = batching.encode_split(tokenizer, data.train, max_length)
    val_enc = batching.encode_split(tokenizer, data.validation, max_length)
    L, H = model.num_layers, model.backbone.config.hidden_size
    rows = len(train_enc) + len(val_enc)
    on_disk = rows * L * H * 4 > cache_memory
    log(f"attaching DE3 exits to {loaded.source} ({loaded.architecture}, {L} layers, frozen; "
        f"{'its own head at layer ' + str(L) if model.config.final_head else 'no head of its own'}) on {data.name}: "
        f"{len(train_enc)} train / {len(val_enc)} validation samples, device {dev}")
    folder = None
    try:
        if on_disk:  # .<out>.tmp-*: removed at the end, or by the next writer of out_dir if this one is killed
            parent = Path(cache_dir) if cache_dir is not None else out_dir.parent
            parent.mkdir(parents=True, exist_ok=True)
            prefix = "de3-attach-cache-" if cache_dir is not None else f".{out_dir.name}.tmp-cache-"
            folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        start = time.perf_counter()
        done = 0

        def tick(n: int) -> None:
            nonlocal done
            done += n
            if on_progress is not None:
                on_progress(done, rows)

        with tqdm(total=rows, desc="cache", unit="sample", disable=not progress, dynamic_ncols=True,
                  file=sys.stderr) as bar:
            train_cache = cache_pooled(model, tokenizer, train_enc, _cache_array(len(train_enc), L, H, folder, "train"),
                                       batch_size=cfg.eval_batch_size, bar=bar, on_batch=tick)
            val_cache = cache_pooled(model, tokenizer, val_enc, _cache_array(len(val_enc), L, H, folder, "validation"),
                                     batch_size=cfg.eval_batch_size, bar=bar, on_batch=tick)
        cache_seconds = time.perf_counter() - start
        size = rows * L * H * (2 if on_disk else 4) / 2**20
        log(f"cached {rows} x {L} pooled vectors ({size:.0f} MiB {'on disk, ' + str(folder) if on_disk else 'in memory'})"
            f" in {cache_seconds:.1f} s")
        _check_missing_classes(model, train_cache, train_enc.labels, dev, data)

        start = time.perf_counter()
        with _head_threads(cfg, dev) as heads_threads:
            best_state, best_epoch, best_score, history = _train_heads(model, cfg, train_cache, train_enc.labels,
                                                                        val_cache, val_enc.labels, data.metric, dev, log)
        model.load_state_dict({**model.state_dict(), **best_state})
        _fit_missing_prototypes(model, train_cache, dev)
        heads_seconds = time.perf_counter() - start
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    model.eval()
    test_enc = batching.encode_split(tokenizer, data.test, max_length)
    test = evaluate(model, tokenizer, test_enc, data.metric, cfg.eval_batch_size) if len(test_enc) else None
    metrics = {"made_by": "attach", "model": loaded.source, "architecture": loaded.architecture,
               "final_head": model.config.final_head, "best_epoch": best_epoch,
               "cache_seconds": round(cache_seconds, 1), "heads_seconds": round(heads_seconds, 1),
               "train_seconds": round(cache_seconds + heads_seconds, 1), "cache_rows": rows, "cache_on_disk": on_disk,
               "history": history, "test": test.summary() if test else None, "notes": notes, "device": str(dev),
               "torch_threads": torch.get_num_threads(), "heads_threads": heads_threads, "processes": 1, "global_batch_size": cfg.batch_size}
    records = {"train_config.json": cfg.to_dict(),
               "data.json": {"name": data.name, "label_names": list(data.label_names), "metric": data.metric,
                             **(data_info or {})},
               "metrics.json": metrics}
    save_model(model, out_dir, tokenizer, extra_files=records, omit_base=True)
    if test is not None:
        log(f"test ({len(test_enc)} samples, best epoch {best_epoch}): {test.format()}")
    log(f"checkpoint: {out_dir}  (cache {cache_seconds:.1f} s, heads {heads_seconds:.1f} s)")
    return AttachResult(out_dir, best_epoch, history, test, cache_seconds, heads_seconds, list(data.label_names), notes)


@contextlib.contextmanager
def _head_threads(cfg: TrainConfig, dev: torch.device) -> Iterator[int]:
    """One CPU thread for head training unless ``num_threads`` says otherwise: its matrices are small, where more
    threads gain little and lose much on busy cores (measured on 2 shared cores: 26x slower with 2 threads)."""
    before = torch.get_num_threads()
    if dev.type == "cpu" and cfg.num_threads is None:
        torch.set_num_threads(1)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _check_missing_classes(model: DE3Bert, train_cache: np.ndarray, labels: np.ndarray, dev, data: DataBundle) -> None:
    """A model class no training row has gets its prototypes from the rows the model assigns to it; refuse the
    classes it assigns none (their prototypes could never be fitted)."""
    absent = sorted(set(range(model.config.num_labels)) - set(labels.tolist()))
    if not absent:
        return
    assigned = set(_predict(model, train_cache, dev)[-1].tolist())
    names = model.config.label_names
    never = [names[k] for k in absent if k not in assigned]
    if never:
        raise DE3Error(f"{data.name}: the model's class(es) {class_list(never)} have no training row and the model "
                       "predicts none of the training rows as them, so their prototypes cannot be fitted; add rows of "
                       "them to the data")


def _train_heads(model: DE3Bert, cfg: TrainConfig, train_cache, train_labels, val_cache, val_labels, metric: str, dev,
                 log) -> tuple[dict, int, float, list[dict]]:
    """Epochs of head training; after each, every exit's validation metric. Returns the best epoch's heads and
    prototypes, its number and score, and the history."""
    run = _HeadTraining(model, cfg, len(train_cache), dev)
    if cfg.max_steps is not None:
        log(f"note: max_steps={cfg.max_steps} sets this run's length; epochs={cfg.epochs} is not used")
    history, best_state, best_epoch, best_score = [], None, 0, -math.inf
    start = time.perf_counter()
    for epoch in range(1, run.num_epochs + 1):
        loss, ce, dar = run.epoch(train_cache, train_labels)
        record = {"epoch": epoch, "step": run.step, "loss": float(loss), "ce_loss": float(ce), "dar_loss": float(dar),
                  "seconds": round(time.perf_counter() - start, 1)}
        if len(val_cache):
            val = ExitEvaluation.score(_predict(model, val_cache, dev), val_labels, metric)
            record["validation"] = val.summary()
            score = val.metric[-1] if cfg.select_by == "last" else float(np.mean(val.metric))
            text = f"validation {val.format()}"
        else:  # no validation rows: the last epoch is kept
            score, text = float(epoch), "no validation rows"
        history.append(record)
        log(f"epoch {epoch}  loss {loss:.4f} (ce {ce:.4f}, dar {dar:.4f})  {text}")
        if score > best_score:
            best_state, best_epoch, best_score = _head_state(model), epoch, score
        if run.step >= run.total_steps:
            break
    return best_state, best_epoch, best_score, history
