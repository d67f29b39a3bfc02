"""``train``, ``evaluate``, ``trace`` and ``compact``: the commands that make a checkpoint and use one.

Each command's ``--out`` is checked and locked before the work starts (``io.claim_output``); the data flags of
``train``, ``evaluate`` and ``trace`` are shared (``_add_data_args``) and go to ``data.load_data`` as they are.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import DE3Error
from ..validate import BATCH, MODEL, RUN, TRAIN, flag

MODEL_FLAGS = ("pooling", "alpha", "dar_form", "max_length")  # flags that set a ModelConfig field of the same name
TRAIN_FLAGS = ("epochs", "batch_size", "lr_backbone", "lr_heads", "max_steps", "seed", "freeze_embeddings",
               "save_every")  # ... and a TrainConfig field

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


def add_model_args(group, exits: str = "each exit") -> None:
    """The ``MODEL_FLAGS``: the exits' ModelConfig fields a command line sets (train, attach)."""
    group.add_argument("--pooling", choices=["mean", "cls"], help=f"token pooling before {exits} [default: mean]")
    group.add_argument("--alpha", type=flag(MODEL["alpha"]), help="weight of the DAR loss; 0 = w/o DAR [default: 1.0]")
    group.add_argument("--dar-form", choices=["proto_ce", "ratio", "margin"], help="DAR form [default: proto_ce]")
    group.add_argument("--max-length", type=flag(MODEL["max_length"]), help="max tokens per input [default: 128]")


def register(sub) -> None:
    """Add ``train``, ``evaluate``, ``trace`` and ``compact`` to an argparse subparsers object."""
    from ..data import TRACE_SPLITS

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
    add_model_args(t.add_argument_group("model (ModelConfig)"))
    o = t.add_argument_group("optimisation (TrainConfig)")
    o.add_argument("--epochs", type=flag(TRAIN["epochs"]), help="epochs; not used with --max-steps [default: 3]")
    o.add_argument("--batch-size", type=flag(TRAIN["batch_size"]), help="batch size per process [default: 16]")
    o.add_argument("--lr-backbone", type=flag(TRAIN["lr_backbone"]), help="backbone learning rate [default: 5e-5]")
    o.add_argument("--lr-heads", type=flag(TRAIN["lr_heads"]), help="exit heads' learning rate [default: 1e-3]")
    o.add_argument("--max-steps", type=flag(TRAIN["max_steps"]), metavar="N",
                   help="stop after N optimiser steps (smoke runs). N alone sets the run's length, even inside an "
                        "epoch or past --epochs, which is then not used; training prints a note saying so")
    o.add_argument("--max-train-samples", type=flag(RUN["max_train_samples"]), help="train on a seeded subset of N samples")
    o.add_argument("--seed", type=flag(TRAIN["seed"]), help="random seed [default: 42]")
    o.add_argument("--train-embeddings", dest="freeze_embeddings", action="store_false", default=None,
                   help="also train the token embeddings (frozen by default: faster, and compact checkpoints)")
    o.add_argument("--save-every", type=flag(TRAIN["save_every"]), metavar="N",
                   help="save a resumable state to <out>.resume/ every N steps, 0 = at epoch ends only [default: 200]")
    t.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out from <out>.resume/ (its own settings and data)")
    t.add_argument("--device", default="auto", help="auto (CUDA when present; under torchrun one GPU per process), cpu or cuda")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--trust-remote-code", action="store_true",
                   help="let a backbone run its own Python code from its repository (auto_map); only for sources you "
                        "trust; not saved: checkpoints always load without remote code")
    t.set_defaults(handler=cmd_train)

    e = sub.add_parser("evaluate", help="every exit's metric of a checkpoint on a split",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    e.add_argument("--checkpoint", required=True, help="checkpoint folder written by train")
    _add_data_args(e, for_training=False)
    e.add_argument("--split", default="test", choices=TRACE_SPLITS, help=SPLIT_HELP)
    e.add_argument("--device", default="auto")
    e.add_argument("--batch-size", type=flag(BATCH), default=64)
    e.set_defaults(handler=cmd_evaluate)

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
    tr.add_argument("--batch-size", type=flag(BATCH), default=64)
    tr.add_argument("--max-samples", type=flag(RUN["max_samples"]), help="trace only the first N samples of the split")
    tr.add_argument("--chunk-size", type=flag(RUN["chunk_size"]), default=2048,
                    help="samples per chunk: memory is bounded by one chunk; under torchrun, chunks are shared out")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    tr.set_defaults(handler=cmd_trace)

    c = sub.add_parser("compact", help="write a small copy of a checkpoint (float16, shared base weights left out)",
                       description="Copy a checkpoint as float16 and without the backbone tensors that equal the "
                                   "pretrained backbone (e.g. frozen token embeddings); loads like any checkpoint.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    c.add_argument("--checkpoint", required=True, help="checkpoint folder written by train")
    c.add_argument("--out", required=True,
                   help="folder to write; may be --checkpoint itself. What --out already holds besides a model "
                        "(trace-*/ folders, the README.md model card, other files) is kept; the weights, config and "
                        "tokenizer are replaced (re-trace kept traces if the weights changed)")
    c.add_argument("--no-half", dest="half", action="store_false", help="keep float32")
    c.set_defaults(handler=cmd_compact)


def _data_kwargs(args) -> dict:
    """``load_data``'s options from the data flags (None where a command lacks the flag or it is not given)."""
    from ..data import RECORDED_OPTIONS

    return {k: getattr(args, k, None) for k in RECORDED_OPTIONS}


def _existing(*paths, kind: str = "dir") -> list[str]:
    """The given paths that name a folder (``kind="dir"``) or a file (``"file"``) on disk; a data spec such as
    'bbc' or 'glue/sst2' names neither, and a path of the wrong kind is left to the reader's own message."""
    from ..io import path_kind

    return [p for p in paths if p and path_kind(os.path.expanduser(str(p))) == kind]


def _data_inputs(args, checkpoint: str | None = None) -> tuple[list[str], list[str]]:
    """(files, folders) that a command's data flags -- or, without --data, the checkpoint's recorded data -- read,
    for ``io.check_output``: an output may not be or contain either, nor lie inside one of the files."""
    spec = {k: getattr(args, k, None) for k in ("data", "validation_data", "test_data", "data_dir")}
    if checkpoint is not None and not spec["data"]:
        from ..checkpoint import checkpoint_data_info

        try:
            info = checkpoint_data_info(checkpoint)
        except DE3Error:
            info = {}
        spec = {k: info.get("spec" if k == "data" else k) for k in spec}
    files = _existing(spec["data"], spec["validation_data"], spec["test_data"], getattr(args, "config", None),
                      kind="file")
    return files, _existing(spec["data_dir"])


def read_config_file(path: str | None) -> tuple[dict, dict]:
    """The ``model`` and ``train`` sections of a ``--config`` JSON file (empty without one), checked to be objects."""
    from ..io import read_json_object

    file_cfg = read_json_object(path) if path else {}
    unknown = sorted(set(file_cfg) - {"model", "train"})
    if unknown:
        raise DE3Error(f"{path}: unknown section(s) {', '.join(unknown)}; use 'model' and 'train'")
    for section in ("model", "train"):
        if not isinstance(file_cfg.get(section, {}), dict):
            raise DE3Error(f"{path}: section {section!r} must be a JSON object of field: value")
    return dict(file_cfg.get("model", {})), dict(file_cfg.get("train", {}))


def cmd_train(args) -> int:
    from ..backbones import remote_code
    from ..distributed import env_dist
    from ..io import claim_output

    files, folders = _data_inputs(args)
    # checked before any work, and held from here to the final save (under torchrun, train() takes the lock
    # once the process group can agree on it)
    with claim_output(args.out, inputs=files, around=[*folders, *_existing(args.backbone)],
                      command="analysis train", take=not env_dist().enabled), \
            remote_code(getattr(args, "trust_remote_code", False)):  # backbone + tokenizer loads inside train
        return _cmd_train(args)


def _cmd_train(args) -> int:
    from ..config import ModelConfig, TrainConfig
    from ..data import load_data
    from ..training import resume_dir, train

    if args.resume:
        return _resume_train(args)
    if not args.data:
        raise DE3Error("train needs --data (or --resume to continue an interrupted run)")
    model_kw, train_kw = read_config_file(args.config)
    model_kw.update({k: getattr(args, k) for k in MODEL_FLAGS if getattr(args, k) is not None})
    train_kw.update({k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None})
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
    from ..config import ModelConfig, TrainConfig
    from ..data import RECORDED_OPTIONS, reload_data
    from ..training import read_resume_state, resume_dir, train

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
    from .. import batching
    from ..backbones import pick_device
    from ..checkpoint import load_checkpoint, load_checkpoint_data
    from ..training import evaluate

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
    from ..checkpoint import load_checkpoint, load_checkpoint_data
    from ..data import DEFAULT_LABEL_COLUMNS
    from ..distributed import process_group
    from ..io import claim_output
    from ..tracer import write_trace

    files, folders = _data_inputs(args, args.checkpoint)
    # under torchrun: shards of the split, merged in order; the output is checked on every process and locked by
    # rank 0 before the model loads (a trace may go inside its checkpoint's folder, as trace-<split>/)
    with process_group(args.device) as (ctx, device), \
            claim_output(args.out, inputs=files, around=[args.checkpoint, *folders],
                         command="analysis trace", take=ctx.is_main, agree=ctx.all_ok):
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
    from ..checkpoint import compact_checkpoint
    from ..io import claim_output, path_kind, same_path

    source = Path(args.checkpoint)
    in_place = path_kind(args.out) == "dir" and same_path(args.out, source)
    # --out may be the checkpoint itself, never inside or around it; locked from here to the end
    with claim_output(args.out, around=[] if in_place else [source], command="analysis compact") as out:
        kept = compact_checkpoint(source, out, half=args.half)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file()) / 2**20
    also = f"; kept {', '.join(kept)}" if kept else ""
    print(f"compact checkpoint: {args.out} ({size:.1f} MiB in files{also})")
    return 0
