"""One-stage DE3-BERT training (spec §3): mean CE over all exits + alpha * DAR, prototype moving averages,
AdamW with separate learning rates for backbone and heads, linear warm-up and decay, clipping, seeded.

After every epoch each exit's validation metric is printed and logged, so a shallow exit that collapsed to
one class is visible at once; the best epoch's checkpoint is kept.

The same code runs on one CPU, one GPU, or N processes under ``torchrun`` (PyTorch DDP): every process draws
the same shuffled global batches of ``batch_size x N`` samples and takes every N-th sample of each, gradients
are averaged by DDP, and the prototype moving average uses per-class sums and counts all-reduced over the
processes, so every rank holds identical prototypes — the run equals a one-process run on the same global
batches up to float rounding. Rank 0 writes checkpoints and logs.

Every ``save_every`` steps and at every epoch end the full training state (weights, prototypes, optimiser,
scheduler, every rank's RNG, the position in the epoch) goes to ``<out>.resume/``; ``resume=True`` continues
from it to the same result as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import pickle
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import batching
from .backbones import load_backbone, load_tokenizer
from .checkpoint import load_model, save_model
from .config import ModelConfig, TrainConfig
from .data import DataBundle, split_notes
from .distributed import Dist, process_group
from .errors import DE3Error, name_list, one_line
from .io import atomic_dir, claim_output, read_json_object, write_json_atomic
from .metrics import compute_metric
from .model import DE3Bert, PrototypeBank

RESUME_SUFFIX = ".resume"  # <out>.resume/: the latest resumable training state, removed when the run finishes
STATE_FORMAT = 1


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

    @classmethod
    def score(cls, preds: np.ndarray, labels: np.ndarray, metric_name: str) -> "ExitEvaluation":
        """Every exit's metric and accuracy from its predictions (L, N) against ``labels`` (N,)."""
        result = cls(preds, labels, metric_name)
        for m, p in enumerate(preds, start=1):
            result.metric.append(float(compute_metric(metric_name, labels, p)))
            result.accuracy.append(float((p == labels).mean()))
            if len(np.unique(p)) == 1 and len(np.unique(labels)) > 1:
                result.collapsed.append(m)
        return result

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
             progress: bool = False, ctx: Dist | None = None) -> ExitEvaluation:
    """Run every exit on an encoded split (dropout off) and score each one.

    With ``ctx`` of several processes, each runs every ``world_size``-th batch and the predictions are summed
    across processes (each sample is predicted by exactly one), so every rank gets the whole result.
    """
    was_training = model.training
    model.eval()
    device = model.device
    preds = np.zeros((model.num_layers, len(encoded)), dtype=np.int64)
    order = batching.eval_order(encoded, batch_size)
    if ctx is not None and ctx.enabled:
        order = order[ctx.rank :: ctx.world_size]
    for indices, batch in tqdm(batching.iterate(tokenizer, encoded, order, device), total=len(order),
                               desc="evaluate", leave=False, disable=not progress):
        batch.pop("labels")
        with _autocast(device):
            out = model(**batch)
        preds[:, indices] = out.logits.argmax(-1).cpu().numpy()
    if ctx is not None and ctx.enabled:
        gathered = torch.from_numpy(preds).to(device)
        ctx.all_reduce_sum_(gathered)
        preds = gathered.cpu().numpy()
    model.train(was_training)
    return ExitEvaluation.score(preds, encoded.labels, metric_name)


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
    rank_divergence: float = 0.0  # largest weight/prototype difference between processes at the end (0 = in sync)


def resume_dir(out_dir: str | Path) -> Path:
    """Where the resumable training state of a run writing ``out_dir`` lives: ``<out>.resume/`` beside it."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + RESUME_SUFFIX)


@dataclass
class _Position:
    """Where a run stands; saved with the state so a resumed run continues exactly here."""

    step: int = 0
    epoch: int = 1
    batch_in_epoch: int = 0  # global batches of this epoch already done
    order_rng: dict | None = None  # the batch-order generator's state at this epoch's start
    epoch_losses: list = field(default_factory=list)
    epoch_samples: int = 0
    history: list = field(default_factory=list)
    best_score: float | None = None
    best_epoch: int = 0
    elapsed: float = 0.0


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
    resume: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train DE3-BERT on ``data`` and keep the best epoch's checkpoint in ``out_dir``.

    Parameters
    ----------
    model_config, train_config : what to build and how to train it.
    data : a labelled ``DataBundle``; its validation split picks the best epoch, its test split is scored at the end.
    out_dir : checkpoint folder (config.json, model.safetensors, tokenizer, train_config.json, metrics.json).
    device : "auto" (CUDA when present; under torchrun, each process its own GPU), "cpu" or "cuda".
    data_info : how the data was loaded (spec, seed and ``data.RECORDED_OPTIONS``: data_dir, columns, separate
        validation / test files ...), saved in data.json so later commands reload the same splits.
    log : where the per-epoch lines go (``print`` by default; only rank 0 logs).
    resume : continue the interrupted run whose state is in ``<out>.resume/`` (same configs and data).
    on_step : called with the step number after every optimiser step (and after any state save).
    """
    if not data.labelled:
        raise DE3Error(f"{data.name}: has no labels; training needs a label column (pass --label-column)")
    if model_config.final_head:
        raise DE3Error("ModelConfig.final_head is set by `python -m analysis attach` (a fine-tuned classifier's own "
                       "head, copied); train trains every exit: leave final_head out of the config")
    local_backbone = model_config.backbone if Path(model_config.backbone).expanduser().exists() else None
    # checked before any work (a file, someone else's folder, a read-only place, the backbone itself) and held
    # against other writers from start to the final save
    with process_group(device) as (ctx, dev), \
            claim_output(out_dir, around=[local_backbone], take=ctx.is_main, agree=ctx.all_ok):
        return _train(model_config, train_config, data, Path(out_dir), ctx, dev, data_info=data_info,
                      progress=progress and ctx.is_main, log=log if ctx.is_main else _quiet, resume=resume, on_step=on_step)


def _quiet(*_args, **_kwargs) -> None:
    pass


# ---- divergence: stop at the first non-finite loss; never save non-finite weights ----


class TrainingDiverged(DE3Error):
    """The loss or the weights stopped being finite: training stops, and nothing non-finite is saved."""


def _divergence_hint(cfg: TrainConfig, pos: _Position, out_dir: Path) -> str:
    """The likely causes, and what ``out_dir`` holds now."""
    kept = (f"{out_dir} keeps epoch {pos.best_epoch}'s checkpoint" if pos.best_epoch
            else f"nothing was written to {out_dir}")
    return (f"likely a learning rate too high (lr_heads {cfg.lr_heads:g}, lr_backbone {cfg.lr_backbone:g}), "
            f"weight_decay {cfg.weight_decay:g}, or bad data (lower them, check the data); {kept}")


def _require_finite_loss(parts: tuple[float, float, float], ctx: Dist, pos: _Position, cfg: TrainConfig,
                         out_dir: Path) -> None:
    """Raise ``TrainingDiverged`` at the first step whose loss (total, CE, DAR) is not finite, on every process."""
    if ctx.all_ok(all(math.isfinite(v) for v in parts)):
        return
    loss, ce, dar = parts
    raise TrainingDiverged(f"training diverged at step {pos.step + 1} (epoch {pos.epoch}): loss {loss:.4g} "
                           f"(ce {ce:.4g}, dar {dar:.4g}); {_divergence_hint(cfg, pos, out_dir)}")


def _require_finite_weights(model: DE3Bert, ctx: Dist, pos: _Position, cfg: TrainConfig, out_dir: Path,
                            what: str) -> None:
    """Raise ``TrainingDiverged`` instead of saving ``what`` when a weight or prototype is not finite."""
    bad = [name for name, t in model.state_dict().items()
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if ctx.all_ok(not bad):
        return
    raise TrainingDiverged(f"weights became non-finite by step {pos.step} ({name_list(bad, limit=3, width=50)}); "
                           f"not saving {what}; {_divergence_hint(cfg, pos, out_dir)}")


def _train(model_config: ModelConfig, cfg: TrainConfig, data: DataBundle, out_dir: Path, ctx: Dist,
           dev: torch.device, *, data_info, progress, log, resume, on_step) -> TrainResult:
    """Set up (or resume) a run, then every epoch: its optimiser steps, validation and the best checkpoint so far,
    and a resumable state; then the test split and metrics.json."""
    run = _Run(model_config, cfg, data, out_dir, ctx, dev, data_info=data_info, progress=progress, log=log,
               resume=resume, on_step=on_step)
    try:
        for epoch in range(run.pos.epoch, run.num_epochs + 1):
            run.train_epoch(epoch)
            run.end_epoch(epoch)
            if run.pos.step >= run.total_steps:
                break
            run.save_state()
    except KeyboardInterrupt:
        if (run.state_dir / "state.json").is_file():
            log(f"interrupted at step {run.pos.step}; continue from the last saved state with "
                f"`python -m analysis train --resume --out {out_dir}`")
        raise
    finally:
        run.bar.close()
    return run.finish()


class _Run:
    """One training run's state and its steps: ``__init__`` sets up (model, data, optimiser; or the interrupted run
    it resumes), ``train_epoch`` runs an epoch's optimiser steps, ``end_epoch`` validates and keeps the best
    checkpoint, ``save_state`` writes the resumable state, ``finish`` scores the test split."""

    def __init__(self, model_config: ModelConfig, cfg: TrainConfig, data: DataBundle, out_dir: Path, ctx: Dist,
                 dev: torch.device, *, data_info, progress, log, resume, on_step):
        self.model_config, self.cfg, self.data, self.out_dir = model_config, cfg, data, out_dir
        self.ctx, self.dev = ctx, dev
        self.data_info, self.progress, self.log, self.on_step = data_info, progress, log, on_step
        self.state_dir = resume_dir(out_dir)
        fingerprint = _data_fingerprint(data)
        self.pos = _Position()
        if resume:
            saved = read_resume_state(self.state_dir)
            _check_same_run(saved, model_config, cfg, fingerprint, ctx)
        elif (self.state_dir / "state.json").is_file():
            raise DE3Error(f"{self.state_dir} holds an interrupted run of {out_dir}; continue it with --resume "
                           f"(resume=True), or delete that folder to start over")
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        seed_everything(cfg.seed)

        self.tokenizer = load_tokenizer(model_config.backbone)
        self.model = model = DE3Bert(model_config, load_backbone(model_config.backbone)).to(dev)
        if cfg.freeze_embeddings:
            model.backbone.get_input_embeddings().requires_grad_(False)
        model.train()
        self.net = _LossAndEmbeddings(model)
        if ctx.enabled:
            # DDP finds the parameters without a gradient this step (the last exit's prototype net always; all of
            # them while DAR waits for every class's prototype, or with alpha = 0) by walking back from the loss.
            # Prototypes stay in sync by all-reduce, so DDP need not sync buffers.
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.net, device_ids=[dev.index] if dev.type == "cuda" else None, find_unused_parameters=True,
                forward_sync_buffers=False)

        for note in split_notes(data):
            log(f"note: {note}")
        self.train_enc = batching.encode_split(self.tokenizer, data.train, model_config.max_length)
        self.val_enc = batching.encode_split(self.tokenizer, data.validation, model_config.max_length)

        self.global_batch = cfg.batch_size * ctx.world_size
        steps_per_epoch = _steps_per_epoch(len(self.train_enc), self.global_batch, ctx.world_size)
        if steps_per_epoch == 0:
            raise DE3Error(f"{len(self.train_enc)} training samples cannot make a batch for {ctx.world_size} processes")
        self.total_steps = cfg.epochs * steps_per_epoch if cfg.max_steps is None else cfg.max_steps
        self.num_epochs = math.ceil(self.total_steps / steps_per_epoch)
        if cfg.max_steps is not None:  # said once, not silently: max_steps alone sets the length
            log(f"note: max_steps={cfg.max_steps} sets this run's length ({self.total_steps / steps_per_epoch:.3g} "
                f"epochs of {steps_per_epoch} steps); epochs={cfg.epochs} is not used")

        from transformers import get_linear_schedule_with_warmup

        self.optimizer = torch.optim.AdamW(_param_groups(model, cfg))
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, int(cfg.warmup_ratio * self.total_steps),
                                                         self.total_steps)
        self.scaler = torch.amp.GradScaler("cuda", enabled=dev.type == "cuda" and not torch.cuda.is_bf16_supported())
        self.rng = np.random.default_rng(cfg.seed)
        if resume:
            self.pos = _load_state(self.state_dir, saved, model, self.optimizer, self.scheduler, self.scaler, ctx, dev)
            log(f"resuming {out_dir} from step {self.pos.step}/{self.total_steps} (epoch {self.pos.epoch}, saved in "
                f"{self.state_dir})")

        procs = (f", {ctx.world_size} processes x {cfg.batch_size} = global batch {self.global_batch}"
                 if ctx.enabled else "")
        log(f"training DE3-BERT ({model_config.backbone}, {model.num_layers} layers, {data.num_labels} classes) on "
            f"{data.name}: {len(self.train_enc)} train / {len(self.val_enc)} validation samples, {self.total_steps} "
            f"steps, device {dev}{procs}")
        self.configs = {"model_config": model_config.to_dict(), "train_config": cfg.to_dict(), "data_info": data_info,
                        "data_fingerprint": fingerprint}
        self.run_start, self.earlier = time.perf_counter(), self.pos.elapsed  # time before an interruption counts
        self.bar = tqdm(total=self.total_steps, initial=self.pos.step, desc="train", unit="step", disable=not progress,
                        dynamic_ncols=True, file=sys.stderr)

    def elapsed(self) -> float:
        return self.earlier + time.perf_counter() - self.run_start

    def require_finite(self, what: str) -> None:
        _require_finite_weights(self.model, self.ctx, self.pos, self.cfg, self.out_dir, what)

    def save_state(self) -> None:
        """The resumable state in ``<out>.resume/`` (weights checked finite first)."""
        self.require_finite(f"the resumable state in {self.state_dir}")
        self.pos.elapsed = self.elapsed()
        _save_state(self.state_dir, self.model, self.optimizer, self.scheduler, self.scaler, self.pos, self.configs,
                    self.ctx)

    def train_epoch(self, epoch: int) -> None:
        """The optimiser steps of one epoch, from where ``pos`` stands in it; stops early at ``total_steps``."""
        pos, cfg = self.pos, self.cfg
        if pos.order_rng is not None:
            self.rng.bit_generator.state = pos.order_rng  # resumed: this epoch's order again
        pos.epoch, pos.order_rng = epoch, self.rng.bit_generator.state
        order = _global_batches(self.train_enc, self.global_batch, self.rng, self.ctx.world_size)
        epoch_start = time.perf_counter()
        for b in range(pos.batch_in_epoch, len(order)):
            parts = self.step(order[b])
            pos.step += 1
            pos.batch_in_epoch = b + 1
            pos.epoch_samples += len(order[b])
            pos.epoch_losses.append(parts)
            self.bar.update(1)
            sps = pos.epoch_samples / max(time.perf_counter() - epoch_start, 1e-9)
            self.bar.set_postfix(epoch=epoch, loss=f"{parts[0]:.3f}", dar=f"{parts[2]:.3f}", sps=f"{sps:.1f}")
            if not self.progress and pos.step % max(1, self.total_steps // 20) == 0:  # no bar: a line every 5 %
                self.log(f"step {pos.step}/{self.total_steps}  loss {parts[0]:.4f}  {sps:.1f} samples/s")
            if cfg.save_every and pos.step % cfg.save_every == 0 and pos.step < self.total_steps:
                self.save_state()
            if self.on_step is not None:
                self.on_step(pos.step)
            if pos.step >= self.total_steps:
                break

    def step(self, indices: np.ndarray) -> tuple[float, float, float]:
        """One optimiser step on a global batch (this process's share of it), then the prototypes' moving average
        from the whole global batch. Returns the loss, CE and DAR."""
        ctx, model = self.ctx, self.model
        local = indices[ctx.rank :: ctx.world_size]
        batch = batching.collate(self.tokenizer, self.train_enc, local, self.dev)
        labels = batch.pop("labels")
        with _autocast(self.dev):
            out_loss, embeddings, ce_loss, dar_loss = self.net(**batch, labels=labels)
        parts = (out_loss.item(), ce_loss.item(), dar_loss.item())
        _require_finite_loss(parts, ctx, self.pos, self.cfg, self.out_dir)  # before the step: NaN never reaches weights
        # DDP averages gradients over processes; weighting each process's mean loss by its share of the global
        # batch makes that average the global batch's mean, even for an uneven last batch.
        loss = out_loss * (len(local) * ctx.world_size / len(indices)) if ctx.enabled else out_loss
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        # prototypes after the step (the loss used the old ones), from the whole global batch
        sums, counts = PrototypeBank.batch_stats(embeddings, labels, model.config.num_labels)
        ctx.all_reduce_sum_(sums, counts)
        model.bank.apply_stats(sums, counts, model.config.gamma)
        return parts

    def end_epoch(self, epoch: int) -> None:
        """Validate every exit, log the epoch, keep the checkpoint when it is the best so far (by the mean exit
        metric, or the last exit's), and move ``pos`` to the next epoch's start."""
        pos, cfg = self.pos, self.cfg
        val = evaluate(self.model, self.tokenizer, self.val_enc, self.data.metric, cfg.eval_batch_size, ctx=self.ctx)
        mean_loss = np.mean(pos.epoch_losses, axis=0) if pos.epoch_losses else np.zeros(3)
        record = {"epoch": epoch, "step": pos.step, "loss": float(mean_loss[0]), "ce_loss": float(mean_loss[1]),
                  "dar_loss": float(mean_loss[2]), "seconds": round(self.elapsed(), 1), "validation": val.summary()}
        pos.history.append(record)
        (self.bar.write if self.progress else self.log)(
            f"epoch {epoch}  loss {record['loss']:.4f} (ce {record['ce_loss']:.4f}, dar {record['dar_loss']:.4f})  "
            f"validation {val.format()}")
        score = val.metric[-1] if cfg.select_by == "last" else float(np.mean(val.metric))
        if pos.best_score is None or score > pos.best_score:
            self.require_finite(f"a checkpoint in {self.out_dir}")
            pos.best_score, pos.best_epoch = score, epoch
            if self.ctx.is_main:
                save_model(self.model, self.out_dir, self.tokenizer,
                           extra_files=_records(cfg, self.data, self.data_info, pos.history))
        pos.epoch, pos.batch_in_epoch, pos.epoch_losses, pos.epoch_samples = epoch + 1, 0, [], 0
        pos.order_rng = self.rng.bit_generator.state

    def finish(self) -> TrainResult:
        """Check the processes agree; on rank 0, score the best checkpoint on the test split, write metrics.json
        and remove the resumable state."""
        ctx, pos, cfg, out_dir = self.ctx, self.pos, self.cfg, self.out_dir
        divergence = ctx.max_divergence([*self.model.parameters(), self.model.bank.prototypes])
        if ctx.enabled:
            self.log(f"{ctx.world_size} processes end in sync: largest weight/prototype difference {divergence:.3g}")
        test = None
        seconds = self.elapsed()
        if ctx.is_main:
            best = load_model(out_dir, map_location=self.dev)
            test_enc = batching.encode_split(self.tokenizer, self.data.test, self.model_config.max_length)
            if len(test_enc):
                test = evaluate(best, self.tokenizer, test_enc, self.data.metric, cfg.eval_batch_size)
            seconds = self.elapsed()
            metrics = {"best_epoch": pos.best_epoch, "train_seconds": round(seconds, 1), "history": pos.history,
                       "test": test.summary() if test else None, "device": str(self.dev),
                       "torch_threads": torch.get_num_threads(), "processes": ctx.world_size,
                       "global_batch_size": self.global_batch, "rank_divergence": divergence}
            write_json_atomic(out_dir / "metrics.json", metrics)
            if test is not None:
                self.log(f"test ({len(test_enc)} samples, best epoch {pos.best_epoch}): {test.format()}")
            shutil.rmtree(self.state_dir, ignore_errors=True)  # finished: nothing left to resume
            self.log(f"checkpoint: {out_dir}  ({seconds / 60:.1f} min)")
        ctx.barrier()
        return TrainResult(out_dir, pos.best_epoch, pos.history, test, seconds, divergence)


class _LossAndEmbeddings(torch.nn.Module):
    """The training forward with only the loss attached to the graph (the embeddings, for the prototype update,
    come detached), so DDP can tell which parameters got no gradient."""

    def __init__(self, model: DE3Bert):
        super().__init__()
        self.model = model

    def forward(self, labels: torch.Tensor, **inputs) -> tuple[torch.Tensor, ...]:
        out = self.model(**inputs, labels=labels)
        return out.loss, out.embeddings.detach(), out.ce_loss.detach(), out.dar_loss.detach()


def _steps_per_epoch(n: int, global_batch: int, world_size: int) -> int:
    """Global batches per epoch; a last batch smaller than the number of processes is dropped."""
    full, rest = divmod(n, global_batch)
    return full + (1 if rest >= world_size else 0)


def _global_batches(encoded: batching.Encoded, global_batch: int, rng: np.random.Generator, world_size: int) -> list[np.ndarray]:
    """This epoch's shuffled, length-grouped global batches — the same on every process (same seed)."""
    return [b for b in batching.train_order(encoded, global_batch, rng) if len(b) >= world_size]


# ---- resumable state: <out>.resume/{state.json, model.safetensors, optimizer.pt} ----


def _rng_state() -> dict:
    numpy_state = np.random.get_state(legacy=False)
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {**numpy_state, "state": {"key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                                                "pos": numpy_state["state"]["pos"]}}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    torch.set_rng_state(state["torch"])
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = {"key": numpy_state["state"]["key"].numpy().astype(np.uint32), "pos": numpy_state["state"]["pos"]}
    np.random.set_state(numpy_state)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_state(folder: Path, model: DE3Bert, optimizer, scheduler, scaler, pos: _Position, configs: dict, ctx: Dist) -> None:
    """Every rank's RNG is gathered; rank 0 writes the folder atomically (an interrupted save keeps the old one)."""
    from safetensors.torch import save_file

    rng_states = ctx.all_gather_object(_rng_state())
    if ctx.is_main:
        with atomic_dir(folder) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(), "rng": rng_states}, tmp / "optimizer.pt")
            payload = {"format": STATE_FORMAT, "world_size": ctx.world_size, **configs, **asdict(pos)}
            (tmp / "state.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
    ctx.barrier()


def read_resume_state(folder: Path) -> dict:
    """state.json of a resumable run in ``folder`` (``<out>.resume``), checked; one-line errors otherwise."""
    path = folder / "state.json"
    if not path.is_file():
        raise DE3Error(f"nothing to resume: {path} not found (the run finished, never saved a state, or --out differs)")
    saved = read_json_object(path, fix=f"delete {folder} to start over")
    if saved.get("format") != STATE_FORMAT:
        raise DE3Error(f"{path}: training state format {saved.get('format')!r}, this version reads {STATE_FORMAT}; "
                       f"delete {folder} to start over")
    return saved


def _check_same_run(saved: dict, model_config: ModelConfig, cfg: TrainConfig, fingerprint: dict, ctx: Dist) -> None:
    """A resumed run must be the same run: same configs (threads and save interval aside), data and processes."""
    ignore = {"num_threads", "save_every"}
    diffs = [f"model.{k}" for k, v in model_config.to_dict().items() if _jsonish(v) != saved["model_config"].get(k)]
    diffs += [f"train.{k}" for k, v in cfg.to_dict().items()
              if k not in ignore and _jsonish(v) != saved["train_config"].get(k)]
    if diffs:
        raise DE3Error(f"cannot resume: {', '.join(diffs)} differ from the interrupted run's; resume with the same settings")
    if saved["data_fingerprint"] != fingerprint:
        raise DE3Error("cannot resume: the data differ from the interrupted run's (sizes or labels); load the same data")
    if saved["world_size"] != ctx.world_size:
        raise DE3Error(f"cannot resume: the run was saved by {saved['world_size']} process(es), this is {ctx.world_size}; "
                       "resume with the same number")


def _jsonish(value):
    return json.loads(json.dumps(value))


def _load_state(folder: Path, saved: dict, model: DE3Bert, optimizer, scheduler, scaler, ctx: Dist, dev) -> _Position:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        weights = load_file(str(folder / "model.safetensors"), device=str(dev))
        model.load_state_dict(weights)
        blob = torch.load(folder / "optimizer.pt", map_location=dev, weights_only=True)
    except (OSError, SafetensorError, RuntimeError, pickle.UnpicklingError) as exc:
        raise DE3Error(f"{folder}: unreadable training state ({one_line(exc, 200)}); delete it to start over") from None
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    scaler.load_state_dict(blob["scaler"])
    rng = blob["rng"][ctx.rank]
    rng["torch"] = rng["torch"].cpu()
    _set_rng_state(rng)
    names = {f.name for f in dataclasses.fields(_Position)}
    return _Position(**{k: v for k, v in saved.items() if k in names})


def _data_fingerprint(data: DataBundle) -> dict:
    """Sizes and a hash of the labels and texts of every split: enough to refuse resuming on other data."""
    def digest(split) -> str:
        h = hashlib.sha1(np.asarray(split.labels, dtype=np.int64).tobytes())
        for text in split.texts:
            h.update(text.encode("utf-8", "surrogatepass"))
        return h.hexdigest()

    return {"name": data.name, **{name: [len(data.split(name)), digest(data.split(name))]
                                  for name in ("train", "validation", "test")}}


def _records(cfg: TrainConfig, data: DataBundle, data_info: dict | None, history: list[dict]) -> dict:
    """A checkpoint's records beside its weights: how it was trained, on what data (what ``reload_data`` needs),
    and every epoch so far."""
    return {
        "train_config.json": cfg.to_dict(),
        "data.json": {"name": data.name, "label_names": list(data.label_names), "metric": data.metric, **(data_info or {})},
        "metrics.json": {"history": history},
    }
