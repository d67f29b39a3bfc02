"""The programs that use the library: ``python -m analysis <command> --help``.

Commands
--------
train     train DE3-BERT on a data source (or on separate train / validation / test files); keep the best checkpoint
evaluate  every exit's metric of a checkpoint on a split (or ``--split all``: every row of the data)
trace     record every layer's signals for a split (or every row) into a trace folder; a file without a label
          column is traced as predictions only
compact   a small copy of a checkpoint (float16, base weights shared with the pip backbone)
attach    DE3 exits on a frozen, already fine-tuned classifier (or an encoder): a checkpoint in minutes
curves    every exit policy's metric vs speed-up over its parameter sweep, as CSV
compare   every policy at matched speed-ups (1.5x, 2x, 3x) and the area under its curve
bench     trace overhead, real early-exit wall-clock speed-ups at batch 1 and 32, sweep timings
bench-memory  peak memory of tracing 10k vs 100k samples
study     the SST-2 study: train DE3 variants, trace, compare, write docs/results/sst2.md
search    which DE3 settings make the distance help: exits on a frozen backbone, settings x seeds, in minutes

Each module here adds its commands with ``register(subparsers)``, one parser per command whose ``handler`` runs it:
``checkpoints`` (train, evaluate, trace, compact), ``attach``, ``curves`` (curves, compare), ``bench``, ``membench``
(bench-memory), ``study``, ``search``.

Errors a user can cause print one line (``error: ...``) and exit with code 2; nothing is left half-written.
Every ``--out`` is checked before any work (writable; not one of the command's inputs, inside one or holding one)
and locked while it is written (``analysis.io``): a second command writing the same folder, one inside it or one
around it stops with one line naming the process that writes it.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import DE3Error
from ..validate import OneLineParser
from . import attach, bench, checkpoints, curves, membench, search, study

COMMAND_MODULES = (checkpoints, attach, curves, bench, membench, study, search)  # in the order --help lists their commands


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m analysis", description="DE3-BERT: distance-enhanced early exiting for BERT.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args = build_parser().parse_args(argv)  # a bad flag or value: one error line, like any user error
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the per-tensor "Loading weights" bar is noise next to ours
        return args.handler(args)
    except DE3Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file the command needed but the OS refused (permissions, a full disk, a link loop)
        from ..io import os_error_message

        print(f"error: {os_error_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
