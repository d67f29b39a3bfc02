"""``curves`` and ``compare``: every exit policy's sweep on a trace as CSV, and the paper-style table at matched
speed-ups (``analysis.curves`` and ``analysis.compare`` compute them)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from ..compare import compare
from ..curves import DEFAULT_LAMBDAS, DEFAULT_MAX_SPEEDUP, default_grid, sweep
from ..errors import CurveError
from ..io import atomic_file, check_output, claim_output
from ..trace import load_trace
from ..validate import POLICY, RUN, flag, flag_list


def register(subparsers) -> None:
    """Add ``curves`` and ``compare`` to an argparse subparsers object."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    c = subparsers.add_parser(
        "curves", help="metric vs speed-up of every exit policy's parameter sweep, as CSV", formatter_class=fmt,
        description="Sweep every exit policy over its parameters on a trace (DE3-BERT per λ, DR, entropy, "
                    "max-probability and PCEE over data-driven thresholds; PABEE patience; static layers; oracle) "
                    "and write one CSV row per setting. Speed-up = L / mean exit layer.")
    c.add_argument("--trace", required=True, help="trace folder written by `trace`")
    c.add_argument("--out", required=True, help="CSV file to write (replaced atomically)")
    c.add_argument("--lambdas", type=flag_list(POLICY["lambda_"]), default=",".join(f"{v:g}" for v in DEFAULT_LAMBDAS),
                   help="comma-separated EDR weights λ to sweep")
    c.set_defaults(handler=cmd_curves)

    p = subparsers.add_parser(
        "compare", help="every exit policy at matched speed-ups, with AUC and bootstrap intervals (paper-style table)",
        formatter_class=fmt,
        description="Best metric of every policy at a speed-up >= each target, and the area under its "
                    "metric-vs-speed-up frontier (mean metric over speed-ups 1..max); the oracle row is the oracle "
                    "frontier (an upper bound for accuracy). Under it, every policy against DeeBERT (entropy) at "
                    "the same target: the difference with a paired-bootstrap 95 %% interval over the n samples, and "
                    "the gap in right answers. DE3-BERT's λ is chosen on --val-trace; without it λ = 1.")
    p.add_argument("--trace", required=True, help="trace folder of the split to report (e.g. the test split)")
    p.add_argument("--val-trace", help="trace folder of the validation split, used only to choose λ")
    p.add_argument("--speedups", type=flag_list(RUN["speedup"]), default="1.5,2,3",
                   help="comma-separated target speed-ups, each >= 1")
    p.add_argument("--max-speedup", type=flag(RUN["max_speedup"]), default=DEFAULT_MAX_SPEEDUP,
                   help="upper end of the AUC range (> 1)")
    p.add_argument("--n-boot", type=flag(RUN["n_boot"]), default=1000,
                   help="bootstrap resamples of the comparison with the baseline")
    p.set_defaults(handler=cmd_compare)


def write_csv_atomic(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a CSV beside ``path`` and rename it over: a reader never sees half a file. ``path`` must pass
    ``io.check_output`` as a file (not a folder, in a place that can be written)."""
    path = check_output(path, kind="file", what="CSV file", error=CurveError)
    with atomic_file(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path


def cmd_curves(args) -> int:
    # checked and locked before the trace is read: never the trace itself or a file inside it
    with claim_output(args.out, inputs=[args.trace], kind="file", error=CurveError, command="analysis curves"):
        trace = load_trace(args.trace)
        curves = sweep(trace, default_grid(trace, lambdas=args.lambdas))
        write_csv_atomic(curves, args.out)
    print(f"{len(curves)} settings of {curves['policy'].nunique()} policies on {trace.num_samples} samples: {args.out}")
    return 0


def cmd_compare(args) -> int:
    test = load_trace(args.trace)
    val = load_trace(args.val_trace) if args.val_trace else None
    print(compare(test, val, args.speedups, max_speedup=args.max_speedup, n_boot=args.n_boot).format())
    return 0
