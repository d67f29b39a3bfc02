"""``attach``: DE3 exits on a frozen, already fine-tuned model (``analysis.attach``), in minutes."""

from __future__ import annotations

import argparse

from ..errors import DE3Error
from ..validate import RUN, TRAIN, flag
from .checkpoints import (MODEL_FLAGS, _add_data_args, _data_inputs, _data_kwargs, _existing, add_model_args,
                          read_config_file)

TRAIN_FLAGS = ("epochs", "batch_size", "lr_heads", "max_steps", "seed")  # flags that set a TrainConfig field
SET_BY_ATTACH = ("backbone", "label_names", "final_head")  # ModelConfig fields attach fills in itself
UNUSED = ("lr_backbone", "freeze_embeddings", "save_every")  # TrainConfig fields of a backbone attach never trains


def register(sub) -> None:
    """Add ``attach`` to an argparse subparsers object."""
    from ..attach import ATTACH_TRAIN_DEFAULTS

    a = sub.add_parser("attach", help="attach DE3 exits to a fine-tuned classifier (or an encoder), frozen: minutes",
                       description="Load a Hugging Face encoder classifier (bert, roberta, xlm-roberta, camembert, "
                                   "electra) or a plain encoder, frozen; run the data through it once, caching every "
                                   "layer's pooled vector; train every exit's head, prototypical network and "
                                   "prototypes on the cache (the spec's loss). A classifier's own head is the last "
                                   "exit, unchanged: it answers exactly as the model did. Writes an ordinary, compact "
                                   "checkpoint (the backbone is read back from --model) that trace, evaluate, bench "
                                   "and the app open as they are. Options not listed here go in --config.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a.add_argument("--model", required=True,
                   help="a Hugging Face model id (needs the network, or the hub cache), a local folder, or "
                        "'minilm-l6' (offline, ships with pip; no head: every exit trained)")
    _add_data_args(a, for_training=True)
    a.add_argument("--out", required=True, help="checkpoint folder to write (replaced atomically when it exists)")
    a.add_argument("--config", help="JSON file {\"model\": {...ModelConfig}, \"train\": {...TrainConfig}}: the exits' "
                                    "settings; flags override it")
    add_model_args(a.add_argument_group("exits (ModelConfig)"), exits="each trained exit")
    o = a.add_argument_group("optimisation of the heads (TrainConfig)")
    o.add_argument("--epochs", type=flag(TRAIN["epochs"]),
                   help=f"epochs over the cached vectors [default: {ATTACH_TRAIN_DEFAULTS['epochs']}]")
    o.add_argument("--batch-size", type=flag(TRAIN["batch_size"]),
                   help=f"batch size of head training [default: {ATTACH_TRAIN_DEFAULTS['batch_size']}]")
    o.add_argument("--lr-heads", type=flag(TRAIN["lr_heads"]), help="the heads' learning rate [default: 1e-3]")
    o.add_argument("--max-steps", type=flag(TRAIN["max_steps"]), metavar="N",
                   help="stop after N optimiser steps (smoke runs); --epochs is then not used")
    o.add_argument("--max-train-samples", type=flag(RUN["max_train_samples"]), help="train on a seeded subset of N samples")
    o.add_argument("--seed", type=flag(TRAIN["seed"]), help="random seed [default: 42]")
    a.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    a.add_argument("--cache-dir", help="folder for the cache of pooled vectors when it is too large for memory "
                                       "(default: a temporary folder beside --out, removed at the end)")
    a.add_argument("--no-progress", action="store_true", help="no progress bar")
    a.set_defaults(handler=cmd_attach)


def cmd_attach(args) -> int:
    from ..io import claim_output

    files, folders = _data_inputs(args)
    # checked before any work, and held from here to the final save; the model's folder is an input
    with claim_output(args.out, inputs=files, around=[*folders, *_existing(args.model)], command="analysis attach"):
        return _cmd_attach(args)


def _cmd_attach(args) -> int:
    import sys

    from ..attach import ATTACH_TRAIN_DEFAULTS, attach
    from ..config import ModelConfig, TrainConfig
    from ..data import load_data

    if not args.data:
        raise DE3Error("attach needs --data (the labelled rows that train the exits)")
    model_kw, train_kw = read_config_file(args.config)
    fixed = [k for k in SET_BY_ATTACH if k in model_kw]
    if fixed:
        raise DE3Error(f"{args.config}: model field(s) {', '.join(fixed)} are set by attach (from --model and the "
                       "data); leave them out")
    unused = [k for k in UNUSED if k in train_kw]
    if unused:
        print(f"note: attach trains no backbone: {', '.join(unused)} in {args.config} are not used", file=sys.stderr)
    model_kw.update({k: getattr(args, k) for k in MODEL_FLAGS if getattr(args, k) is not None})
    train_kw = {**ATTACH_TRAIN_DEFAULTS, **train_kw}
    train_kw.update({k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None})
    source = args.config or "command line"
    train_cfg = TrainConfig.from_dict(train_kw, source=source)
    config = ModelConfig.from_dict(model_kw, source=source)
    data_kw = _data_kwargs(args)
    data = load_data(args.data, seed=train_cfg.seed, **data_kw)
    data_info = {"spec": args.data, **data_kw, "seed": train_cfg.seed}  # data.json: what reload_data needs
    attach(args.model, data, args.out, config=config, train_config=train_cfg, device=args.device, data_info=data_info,
           cache_dir=args.cache_dir, progress=not args.no_progress)
    return 0
