"""Peak memory of tracing N samples, for several N side by side: ``python -m analysis bench-memory``.

Each size runs in a fresh process (so one size's high-water mark cannot hide another's) that builds a small
random BERT-architecture DE3 model with the real MiniLM tokenizer, makes N synthetic sentences, and traces
them with ``write_trace``. It reports the process's peak resident memory and how much of it the trace itself
added above the model and the input texts ("working"). Streaming in chunks should keep both flat in N: the
peak ratio between the largest and the smallest size is the figure to read (target <= 1.25).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 1.25
WORDS = ("the a film movie story plot actor music scene good great fine bad poor dull long short funny sad "
         "bright dark slow quick warm cold new old simple clever strange quiet loud").split()


def _peak_mb() -> float:
    """This process's peak resident set size in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _child(n: int, folder: Path, chunk_size: int, threads: int) -> dict:
    """Trace n synthetic samples through a small random model; measure in this process."""
    import numpy as np
    import torch
    from transformers import BertConfig, BertModel

    from ..backbones import load_tokenizer
    from ..config import ModelConfig
    from ..data import Split
    from ..model import DE3Bert
    from ..tracer import write_trace

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    tokenizer = load_tokenizer("minilm-l6")
    backbone = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=4,
                                    num_attention_heads=4, intermediate_size=128, max_position_embeddings=64))
    model = DE3Bert(ModelConfig(backbone="minilm-l6", label_names=("neg", "pos"), max_length=48), backbone).eval()
    rng = np.random.default_rng(0)
    lengths = rng.integers(4, 30, size=n)
    words = np.asarray(WORDS)
    texts = [" ".join(words[rng.integers(0, len(words), size=k)]) for k in lengths]
    split = Split(texts, None, [int(k % 2) for k in lengths])
    baseline = _peak_mb()
    start = time.perf_counter()
    write_trace(model, tokenizer, split, folder / "trace", label_names=["neg", "pos"], chunk_size=chunk_size,
                progress=False)
    seconds = time.perf_counter() - start
    peak = _peak_mb()
    size = sum(p.stat().st_size for p in (folder / "trace").iterdir()) / 2**20
    return {"samples": n, "peak_mb": round(peak, 1), "before_trace_mb": round(baseline, 1),
            "working_mb": round(peak - baseline, 1), "seconds": round(seconds, 1), "trace_mb": round(size, 1)}


def run_memory_bench(sizes=(10_000, 100_000), chunk_size: int = 2048, threads: int = 1, out: str | Path | None = None,
                     log=print) -> dict:
    """Trace every size in its own process and compare peak memory; returns (and optionally writes) the report."""
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="de3-membench-") as tmp:
            cmd = [sys.executable, "-m", "analysis.commands.membench", "--child", str(n), "--folder", tmp,
                   "--chunk-size", str(chunk_size), "--threads", str(threads)]
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"memory bench child ({n} samples) failed:\n{proc.stderr[-2000:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        log(f"{row['samples']:>8} samples  peak {row['peak_mb']:7.1f} MiB  (trace working set {row['working_mb']:6.1f} MiB)  "
            f"{row['seconds']:6.1f} s  trace on disk {row['trace_mb']:6.1f} MiB")
    small, large = rows[0], rows[-1]
    ratio = large["peak_mb"] / small["peak_mb"]
    report = {"chunk_size": chunk_size, "threads": threads, "rows": rows,
              "peak_ratio": round(ratio, 3), "samples_ratio": large["samples"] / small["samples"],
              "target": TARGET_RATIO, "pass": ratio <= TARGET_RATIO}
    log(f"peak memory ratio {large['samples']} vs {small['samples']} samples "
        f"({report['samples_ratio']:.0f}x the data): {ratio:.3f}  target <= {TARGET_RATIO}  "
        f"{'PASS' if report['pass'] else 'MISS'}")
    if out:
        from ..io import write_json_atomic

        write_json_atomic(out, report)
    return report


def register(sub) -> None:
    from ..validate import RUN, flag

    p = sub.add_parser("bench-memory", help="peak memory of tracing 10k vs 100k samples (flat in N?)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=flag(RUN["sizes"]), nargs="+", default=[10_000, 100_000], help="sample counts, smallest first")
    p.add_argument("--chunk-size", type=flag(RUN["chunk_size"]), default=2048, help="samples per trace chunk")
    p.add_argument("--threads", type=flag(RUN["threads"]), default=1, help="torch threads in each child process")
    p.add_argument("--out", help="also write the report as JSON here")
    p.set_defaults(handler=cmd_memory_bench)


def cmd_memory_bench(args) -> int:
    from ..io import claim_output

    with contextlib.ExitStack() as stack:
        if args.out:  # checked and locked before the children run, not after
            stack.enter_context(claim_output(args.out, kind="file", command="analysis bench-memory"))
        return 0 if run_memory_bench(sorted(args.sizes), args.chunk_size, args.threads, args.out) else 1


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--child", type=int, required=True)
    p.add_argument("--folder", required=True)
    p.add_argument("--chunk-size", type=int, default=2048)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    print(json.dumps(_child(args.child, Path(args.folder), args.chunk_size, args.threads)))


if __name__ == "__main__":
    main()
