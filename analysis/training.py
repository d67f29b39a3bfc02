"""One-stage DE3-BERT training (spec §3): mean CE over all exits + alpha * DAR, prototype moving averages,
AdamW with separate learning rates for backbone and heads, linear warm-up and decay, clipping, seeded.

After every epoch each exit's validation metric is printed and logged, so a shallow exit that collapsed to
one class is visible at once; the best epoch's checkpoint is kept.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import batching
from .backbones import load_backbone, load_tokenizer, pick_device
from .config import ModelConfig, TrainConfig
from .data import DataBundle, compute_metric
from .io import write_json_atomic
from .model import DE3Bert


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class ExitEvaluation:
    """Every exit's predictions on one split, and its metric."""

    preds: np.ndarray  # (L, N) predicted class per exit and sample
    labels: np.ndarray  # (N,)
    metric_name: str
    metric: list[float] = field(default_factory=list)  # (L,) task metric per exit
    accuracy: list[float] = field(default_factory=list)  # (L,)
    collapsed: list[int] = field(default_factory=list)  # 1-based exits that predict a single class

    def summary(self) -> dict:
        return {"metric_name": self.metric_name, "metric": self.metric, "accuracy": self.accuracy, "collapsed": self.collapsed}

    def format(self) -> str:
        cells = " ".join(f"{i}:{100 * m:5.1f}" for i, m in enumerate(self.metric, start=1))
        text = f"{self.metric_name} per exit  {cells}"
        if self.collapsed:
            text += f"  [exit(s) {', '.join(map(str, self.collapsed))} predict a single class: collapsed]"
        return text


@torch.no_grad()
def evaluate(model: DE3Bert, tokenizer, encoded: batching.Encoded, metric_name: str, batch_size: int = 64,
             progress: bool = False) -> ExitEvaluation:
    """Run every exit on an encoded split (dropout off) and score each one."""
    was_training = model.training
    model.eval()
    device = model.device
    preds = np.zeros((model.num_layers, len(encoded)), dtype=np.int64)
    order = batching.eval_order(encoded, batch_size)
    for indices, batch in tqdm(batching.iterate(tokenizer, encoded, order, device), total=len(order),
                               desc="evaluate", leave=False, disable=not progress):
        batch.pop("labels")
        with _autocast(device):
            out = model(**batch)
        preds[:, indices] = out.logits.argmax(-1).cpu().numpy()
    model.train(was_training)
    labels = encoded.labels
    result = ExitEvaluation(preds, labels, metric_name)
    for m, p in enumerate(preds, start=1):
        result.metric.append(float(compute_metric(metric_name, labels, p)))
        result.accuracy.append(float((p == labels).mean()))
        if len(np.unique(p)) == 1 and len(np.unique(labels)) > 1:
            result.collapsed.append(m)
    return result


def _autocast(device: torch.device):
    """Mixed precision on CUDA (bf16 where supported, else fp16); full precision on CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def _param_groups(model: DE3Bert, cfg: TrainConfig) -> list[dict]:
    """Backbone and heads get their own learning rates; biases and LayerNorm weights get no weight decay."""
    groups = {(part, decay): [] for part in ("backbone", "heads") for decay in (True, False)}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = "backbone" if name.startswith("backbone.") else "heads"
        decay = param.ndim >= 2 and "LayerNorm" not in name and "layer_norm" not in name
        groups[(part, decay)].append(param)
    lrs = {"backbone": cfg.lr_backbone, "heads": cfg.lr_heads}
    return [
        {"params": params, "lr": lrs[part], "weight_decay": cfg.weight_decay if decay else 0.0}
        for (part, decay), params in groups.items()
        if params
    ]


@dataclass
class TrainResult:
    checkpoint: Path
    best_epoch: int
    history: list[dict]
    test: ExitEvaluation | None
    seconds: float


def train(
    model_config: ModelConfig,
    train_config: TrainConfig,
    data: DataBundle,
    out_dir: str | Path,
    *,
    device: str = "auto",
    data_info: dict | None = None,
    progress: bool = True,
    log=print,
) -> TrainResult:
    """Train DE3-BERT on ``data`` and keep the best epoch's checkpoint in ``out_dir``.

    Parameters
    ----------
    model_config, train_config : what to build and how to train it.
    data : a ``DataBundle``; its validation split picks the best epoch, its test split is scored at the end.
    out_dir : checkpoint folder (config.json, model.safetensors, tokenizer, train_config.json, metrics.json).
    device : "auto" (CUDA when present), "cpu" or "cuda".
    data_info : how the data was loaded (spec, data_dir, columns), saved so later commands can reload it.
    log : where the per-epoch lines go (``print`` by default).
    """
    start = time.perf_counter()
    cfg = train_config
    out_dir = Path(out_dir)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    seed_everything(cfg.seed)
    dev = pick_device(device)

    tokenizer = load_tokenizer(model_config.backbone)
    model = DE3Bert(model_config, load_backbone(model_config.backbone)).to(dev)
    if cfg.freeze_embeddings:
        model.backbone.get_input_embeddings().requires_grad_(False)
    model.train()

    train_enc = batching.encode_split(tokenizer, data.train, model_config.max_length)
    val_enc = batching.encode_split(tokenizer, data.validation, model_config.max_length)

    steps_per_epoch = math.ceil(len(train_enc) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * steps_per_epoch)
    if cfg.max_steps is not None and cfg.max_steps > cfg.epochs * steps_per_epoch:
        total_steps = cfg.max_steps  # more steps than epochs give: keep going over the data
    num_epochs = math.ceil(total_steps / steps_per_epoch)

    from transformers import get_linear_schedule_with_warmup

    optimizer = torch.optim.AdamW(_param_groups(model, cfg))
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    scaler = torch.amp.GradScaler("cuda", enabled=dev.type == "cuda" and not torch.cuda.is_bf16_supported())
    rng = np.random.default_rng(cfg.seed)

    log(f"training DE3-BERT ({model_config.backbone}, {model.num_layers} layers, {data.num_labels} classes) on "
        f"{data.name}: {len(train_enc)} train / {len(val_enc)} validation samples, {total_steps} steps, device {dev}")
    history: list[dict] = []
    best_score, best_epoch, step = -math.inf, 0, 0
    bar = tqdm(total=total_steps, desc="train", unit="step", disable=not progress, dynamic_ncols=True, file=sys.stderr)
    for epoch in range(1, num_epochs + 1):
        seen, epoch_start, losses = 0, time.perf_counter(), []
        for _, batch in batching.iterate(tokenizer, train_enc, batching.train_order(train_enc, cfg.batch_size, rng), dev):
            labels = batch.pop("labels")
            with _autocast(dev):
                out = model(**batch, labels=labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(out.loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            model.update_prototypes(out.embeddings, labels)  # after the step: the loss used the old ones
            step += 1
            seen += len(labels)
            losses.append((out.loss.item(), out.ce_loss.item(), out.dar_loss.item()))
            bar.update(1)
            sps = seen / (time.perf_counter() - epoch_start)
            bar.set_postfix(epoch=epoch, loss=f"{losses[-1][0]:.3f}", dar=f"{losses[-1][2]:.3f}", sps=f"{sps:.1f}")
            if not progress and step % max(1, total_steps // 20) == 0:  # no bar: a line every 5 %
                log(f"step {step}/{total_steps}  loss {losses[-1][0]:.4f}  {sps:.1f} samples/s")
            if step >= total_steps:
                break
        val = evaluate(model, tokenizer, val_enc, data.metric, cfg.eval_batch_size)
        mean_loss = np.mean(losses, axis=0) if losses else np.zeros(3)
        record = {"epoch": epoch, "step": step, "loss": float(mean_loss[0]), "ce_loss": float(mean_loss[1]),
                  "dar_loss": float(mean_loss[2]), "seconds": round(time.perf_counter() - start, 1),
                  "validation": val.summary()}
        history.append(record)
        bar.write(f"epoch {epoch}  loss {record['loss']:.4f} (ce {record['ce_loss']:.4f}, dar {record['dar_loss']:.4f})  "
                  f"validation {val.format()}")
        score = val.metric[-1] if cfg.select_by == "last" else float(np.mean(val.metric))
        if score > best_score:
            best_score, best_epoch = score, epoch
            model.save_pretrained(out_dir, tokenizer, extra_files=_extras(model_config, cfg, data, data_info, history))
        if step >= total_steps:
            break
    bar.close()

    best = DE3Bert.from_pretrained(out_dir, map_location=dev)
    test_enc = batching.encode_split(tokenizer, data.test, model_config.max_length)
    test = evaluate(best, tokenizer, test_enc, data.metric, cfg.eval_batch_size) if len(test_enc) else None
    seconds = time.perf_counter() - start
    metrics = {"best_epoch": best_epoch, "train_seconds": round(seconds, 1), "history": history,
               "test": test.summary() if test else None, "device": str(dev), "torch_threads": torch.get_num_threads()}
    write_json_atomic(out_dir / "metrics.json", metrics)
    if test is not None:
        log(f"test ({len(test_enc)} samples, best epoch {best_epoch}): {test.format()}")
    log(f"checkpoint: {out_dir}  ({seconds / 60:.1f} min)")
    return TrainResult(out_dir, best_epoch, history, test, seconds)


def _extras(model_config: ModelConfig, cfg: TrainConfig, data: DataBundle, data_info: dict | None, history: list[dict]) -> dict:
    return {
        "train_config.json": cfg.to_dict(),
        "data.json": {"name": data.name, "label_names": list(data.label_names), "metric": data.metric, **(data_info or {})},
        "metrics.json": {"history": history},
    }
