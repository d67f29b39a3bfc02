"""Command line: ``python -m analysis <command> --help``.

Commands
--------
train     train DE3-BERT on a data source (or on separate train / validation / test files); keep the best checkpoint
evaluate  every exit's metric of a checkpoint on a split (or ``--split all``: every row of the data)
trace     record every layer's signals for a split (or every row) into a trace folder; a file without a label
          column is traced as predictions only
compact   a small copy of a checkpoint (float16, base weights shared with the pip backbone)
curves    every exit policy's metric vs speed-up over its parameter sweep, as CSV
compare   every policy at matched speed-ups (1.5x, 2x, 3x) and the area under its curve
bench     trace overhead, real early-exit wall-clock speed-ups at batch 1 and 32, sweep timings
bench-memory  peak memory of tracing 10k vs 100k samples
study     the SST-2 study: train DE3 variants, trace, compare, write docs/results/sst2.md

Errors a user can cause print one line (``error: ...``) and exit with code 2; nothing is left half-written.
"""

from __future__ import annotations

import argparse
import os
import sys

from .errors import DE3Error

DATA_HELP = ("data source: 'bbc' (embedded BBC News, 5 classes), 'glue/<task>' (sst2, mrpc, rte, qnli, qqp, mnli, cola), "
             "or a CSV/TSV/Parquet/JSONL file")
SPLIT_HELP = ("train / validation / test: the seeded stratified split (a file: 80/10/10, or its separate files; GLUE: "
              "validation carved from train, dev = test), as in training for the checkpoint's own data; all: every "
              "row of the data, in file order (GLUE: train rows, then dev rows)")


def _column(value: str) -> str | int:
    """A column named by header or by 0-based index."""
    return int(value) if value.lstrip("-").isdigit() else value


def _add_data_args(p: argparse.ArgumentParser, *, for_training: bool) -> None:
    g = p.add_argument_group("data")
    if for_training:
        g.add_argument("--data", help=DATA_HELP + "; with --validation-data / --test-data: the training file")
        g.add_argument("--validation-data", metavar="FILE",
                       help="a separate validation file, read with the same column options; without it, validation "
                            "is carved from --data (seeded, stratified)")
        g.add_argument("--test-data", metavar="FILE",
                       help="a separate test file, read with the same column options; without it, test is carved from "
                            "--data. The training file's classes are the vocabulary: validation / test files may "
                            "hold some of them, no others")
    else:
        g.add_argument("--data", help=DATA_HELP + " (default: the checkpoint's own). Labels map by name to the "
                       "checkpoint's classes (some of them are enough); a file without a label column is traced as "
                       "predictions only")
    g.add_argument("--data-dir", help="local folder in GLUE's TSV layout for glue/<task>, e.g. ../shared/data/glue; "
                                      "for data files: the folder relative paths start from (else the working folder)")
    g.add_argument("--text-column", action="append", type=_column, dest="text_columns", metavar="COL",
                   help="text column by name or 0-based index; give twice for sentence pairs (user files)")
    g.add_argument("--label-column", type=_column, metavar="COL", help="label column by name or 0-based index (user files)")
    g.add_argument("--no-header", dest="header", action="store_false", default=None,
                   help="the CSV/TSV file has no header row (choose columns by index)")


def build_parser() -> argparse.ArgumentParser:
    from .data import TRACE_SPLITS

    parser = argparse.ArgumentParser(prog="python -m analysis", description="DE3-BERT: distance-enhanced early exiting for BERT.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    t = sub.add_parser("train", help="train DE3-BERT and keep the best checkpoint",
                       description="Train DE3-BERT (one stage: mean CE over all exits + alpha * DAR, prototype moving "
                                   "averages). Prints every exit's validation metric after each epoch and the test "
                                   "metric of the best epoch at the end. Options not listed here go in --config. "
                                   "Runs on several processes under torchrun (see the README's Scaling section); "
                                   "an interrupted run continues with --resume --out <same folder>.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_data_args(t, for_training=True)
    t.add_argument("--backbone", default="minilm-l6",
                   help="'minilm-l6' (offline, ships with pip), a Hugging Face model id, or a local folder")
    t.add_argument("--out", required=True, help="checkpoint folder to write (replaced atomically when it exists)")
    t.add_argument("--config", help="JSON file {\"model\": {...ModelConfig}, \"train\": {...TrainConfig}}; flags override it")
    m = t.add_argument_group("model (ModelConfig)")
    m.add_argument("--pooling", choices=["mean", "cls"], help="token pooling before each exit [default: mean]")
    m.add_argument("--alpha", type=float, help="weight of the DAR loss; 0 = w/o DAR [default: 1.0]")
    m.add_argument("--dar-form", choices=["proto_ce", "ratio", "margin"], help="DAR form [default: proto_ce]")
    m.add_argument("--max-length", type=int, help="max tokens per input [default: 128]")
    o = t.add_argument_group("optimisation (TrainConfig)")
    o.add_argument("--epochs", type=int, help="epochs [default: 3]")
    o.add_argument("--batch-size", type=int, help="batch size per process [default: 16]")
    o.add_argument("--lr-backbone", type=float, help="backbone learning rate [default: 5e-5]")
    o.add_argument("--lr-heads", type=float, help="exit heads' learning rate [default: 1e-3]")
    o.add_argument("--max-steps", type=int, help="stop after N optimiser steps (smoke runs)")
    o.add_argument("--max-train-samples", type=int, help="train on a seeded subset of N samples")
    o.add_argument("--seed", type=int, help="random seed [default: 42]")
    o.add_argument("--train-embeddings", dest="freeze_embeddings", action="store_false", default=None,
                   help="also train the token embeddings (frozen by default: faster, and compact checkpoints)")
    o.add_argument("--save-every", type=int, metavar="N",
                   help="save a resumable state to <out>.resume/ every N steps, 0 = at epoch ends only [default: 200]")
    t.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out from <out>.resume/ (its own settings and data)")
    t.add_argument("--device", default="auto", help="auto (CUDA when present; under torchrun one GPU per process), cpu or cuda")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--trust-remote-code", action="store_true",
                   help="let a backbone run its own Python code from its repository (auto_map); only for sources you "
                        "trust; not saved: checkpoints always load without remote code")

    e = sub.add_parser("evaluate", help="every exit's metric of a checkpoint on a split",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    e.add_argument("--checkpoint", required=True, help="checkpoint folder written by train")
    _add_data_args(e, for_training=False)
    e.add_argument("--split", default="test", choices=TRACE_SPLITS, help=SPLIT_HELP)
    e.add_argument("--device", default="auto")
    e.add_argument("--batch-size", type=int, default=64)
    tr = sub.add_parser("trace", help="record every layer's prediction, entropy, distances and DR for a split",
                        description="One forward pass through all layers; writes a trace folder (trace.parquet, "
                                    "samples.parquet, embeddings.npy, prototypes.npy, meta.json) that the app, the "
                                    "curves and compare commands read. Under torchrun the split is sharded across "
                                    "processes and merged into the same trace.",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    tr.add_argument("--checkpoint", required=True, help="checkpoint folder written by train")
    _add_data_args(tr, for_training=False)
    tr.add_argument("--split", default="test", choices=TRACE_SPLITS, help=SPLIT_HELP)
    tr.add_argument("--out", required=True, help="trace folder to write (replaced atomically when it exists)")
    tr.add_argument("--device", default="auto")
    tr.add_argument("--batch-size", type=int, default=64)
    tr.add_argument("--max-samples", type=int, help="trace only the first N samples of the split")
    tr.add_argument("--chunk-size", type=int, default=2048,
                    help="samples per chunk: memory is bounded by one chunk; under torchrun, chunks are shared out")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    c = sub.add_parser("compact", help="write a small copy of a checkpoint (float16, shared base weights left out)",
                       description="Copy a checkpoint as float16 and without the backbone tensors that equal the "
                                   "pretrained backbone (e.g. frozen token embeddings); loads like any checkpoint.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    c.add_argument("--checkpoint", required=True, help="checkpoint folder written by train")
    c.add_argument("--out", required=True, help="folder to write")
    c.add_argument("--no-half", dest="half", action="store_false", help="keep float32")

    from . import bench, curves, membench, study

    curves.add_cli(sub)  # curves, compare
    bench.add_cli(sub)  # bench
    membench.add_cli(sub)  # bench-memory
    study.add_cli(sub)  # study
    return parser


MODEL_FLAGS = {"pooling": "pooling", "alpha": "alpha", "dar_form": "dar_form", "max_length": "max_length"}
TRAIN_FLAGS = {"epochs": "epochs", "batch_size": "batch_size", "lr_backbone": "lr_backbone", "lr_heads": "lr_heads",
               "max_steps": "max_steps", "seed": "seed", "freeze_embeddings": "freeze_embeddings",
               "save_every": "save_every"}


def _data_kwargs(args) -> dict:
    """``load_data``'s options from the data flags (None where a command lacks the flag or it is not given)."""
    from .data import RECORDED_OPTIONS

    return {k: getattr(args, k, None) for k in RECORDED_OPTIONS}


def cmd_train(args) -> int:
    from .backbones import remote_code

    with remote_code(getattr(args, "trust_remote_code", False)):  # backbone + tokenizer loads inside train
        return _cmd_train(args)


def _cmd_train(args) -> int:
    from .config import ModelConfig, TrainConfig, read_json
    from .data import load_data
    from .training import resume_dir, train

    if args.resume:
        return _resume_train(args)
    if not args.data:
        raise DE3Error("train needs --data (or --resume to continue an interrupted run)")
    file_cfg = read_json(args.config) if args.config else {}
    unknown = sorted(set(file_cfg) - {"model", "train"})
    if unknown:
        raise DE3Error(f"{args.config}: unknown section(s) {', '.join(unknown)}; use 'model' and 'train'")
    for section in ("model", "train"):
        if not isinstance(file_cfg.get(section, {}), dict):
            raise DE3Error(f"{args.config}: section {section!r} must be a JSON object of field: value")
    model_kw = dict(file_cfg.get("model", {}))
    train_kw = dict(file_cfg.get("train", {}))
    model_kw.update({dst: getattr(args, src) for src, dst in MODEL_FLAGS.items() if getattr(args, src) is not None})
    train_kw.update({dst: getattr(args, src) for src, dst in TRAIN_FLAGS.items() if getattr(args, src) is not None})
    train_cfg = TrainConfig.from_dict(train_kw, source=args.config or "command line")
    if (resume_dir(args.out) / "state.json").is_file():  # before loading data: fail fast
        raise DE3Error(f"{resume_dir(args.out)} holds an interrupted run; continue it with --resume --out {args.out}, "
                       "or delete that folder to start over")
    data_kw = _data_kwargs(args)
    data = load_data(args.data, seed=train_cfg.seed, **data_kw)
    model_cfg = ModelConfig.from_dict({**model_kw, "backbone": args.backbone, "label_names": tuple(data.label_names)},
                                      source=args.config or "command line")
    data_info = {"spec": args.data, **data_kw, "seed": train_cfg.seed}  # data.json: what reload_data needs
    train(model_cfg, train_cfg, data, args.out, device=args.device, data_info=data_info, progress=not args.no_progress)
    return 0


def _resume_train(args) -> int:
    """Continue from <out>.resume/: its saved settings and data source, not this command line's."""
    from .config import ModelConfig, TrainConfig
    from .data import RECORDED_OPTIONS, reload_data
    from .training import read_resume_state, resume_dir, train

    data_flags = ("data", *RECORDED_OPTIONS, "config")
    given = [f"--{k.replace('_', '-')}" for k in (*MODEL_FLAGS, *TRAIN_FLAGS, *data_flags)
             if getattr(args, k, None) is not None and k != "save_every"]
    if given:
        raise DE3Error(f"--resume continues with the interrupted run's own settings; drop {', '.join(given)}")
    saved = read_resume_state(resume_dir(args.out))
    train_cfg = TrainConfig.from_dict(saved["train_config"], source=str(resume_dir(args.out)))
    if args.save_every is not None:
        train_cfg = TrainConfig.from_dict({**train_cfg.to_dict(), "save_every": args.save_every})
    model_cfg = ModelConfig.from_dict(saved["model_config"], source=str(resume_dir(args.out)))
    info = dict(saved["data_info"] or {})
    if "spec" not in info:
        raise DE3Error(f"{resume_dir(args.out)}: no record of the data source; it cannot be resumed from the command line")
    data = reload_data({"seed": train_cfg.seed, **info})
    train(model_cfg, train_cfg, data, args.out, device=args.device, data_info=saved["data_info"],
          progress=not args.no_progress, resume=True)
    return 0


def cmd_evaluate(args) -> int:
    from . import batching
    from .backbones import pick_device
    from .checkpoint import load_checkpoint, load_checkpoint_data
    from .training import evaluate

    model, tokenizer = load_checkpoint(args.checkpoint, device=pick_device(args.device))
    data = load_checkpoint_data(args.checkpoint, spec=args.data, **_data_kwargs(args))
    split = data.split(args.split)
    if not split.labelled:
        raise DE3Error(f"{data.name}: has no label column, and {data.metric} needs labels; pass --label-column, or "
                       "use `python -m analysis trace` to record predictions only")
    enc = batching.encode_split(tokenizer, split, model.config.max_length)
    result = evaluate(model, tokenizer, enc, data.metric, args.batch_size, progress=True)
    print(f"{args.checkpoint} on {data.name} [{args.split}, {len(split)} samples]: {result.format()}")
    return 0


def cmd_trace(args) -> int:
    from .checkpoint import load_checkpoint, load_checkpoint_data
    from .data import DEFAULT_LABEL_COLUMNS
    from .distributed import process_group
    from .trace import write_trace

    with process_group(args.device) as (ctx, device):  # under torchrun: shards of the split, merged in order
        model, tokenizer = load_checkpoint(args.checkpoint, device=device)
        data = load_checkpoint_data(args.checkpoint, spec=args.data, **_data_kwargs(args))
        split = data.split(args.split)
        if not split.labelled and ctx.is_main:
            print(f"note: {data.name} has no label column (looked for {', '.join(DEFAULT_LABEL_COLUMNS)}); tracing "
                  "predictions only — pass --label-column to score it", file=sys.stderr)
        if args.max_samples is not None:
            split = split.subset(range(min(args.max_samples, len(split))))
        info = {"checkpoint": str(args.checkpoint), "data": data.name, "split": args.split}
        write_trace(model, tokenizer, split, args.out, label_names=list(data.label_names), metric=data.metric,
                    batch_size=args.batch_size, chunk_size=args.chunk_size, info=info, progress=not args.no_progress,
                    ctx=ctx)
        if ctx.is_main:
            shards = f" ({ctx.world_size} processes)" if ctx.enabled else ""
            print(f"trace of {len(split)} samples x {model.num_layers} layers: {args.out}{shards}")
    return 0


def cmd_compact(args) -> int:
    import json
    from pathlib import Path

    from .checkpoint import load_checkpoint

    model, tokenizer = load_checkpoint(args.checkpoint)
    extras = {}
    for name in ("train_config.json", "data.json", "metrics.json"):
        path = Path(args.checkpoint) / name
        if path.is_file():
            extras[name] = json.loads(path.read_text(encoding="utf-8"))
    model.save_pretrained(args.out, tokenizer, extra_files=extras, half=args.half, omit_base=True)
    size = sum(p.stat().st_size for p in Path(args.out).iterdir()) / 2**20
    print(f"compact checkpoint: {args.out} ({size:.1f} MiB)")
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "trace": cmd_trace, "compact": cmd_compact}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the per-tensor "Loading weights" bar is noise next to ours
    try:
        handler = getattr(args, "handler", None) or COMMANDS[args.command]
        return handler(args)
    except DE3Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

