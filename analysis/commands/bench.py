"""Benchmarks of the things this project promises to be cheap (spec §6), measured side by side in one run.

    trace_overhead   tracing pass (forward through every exit head + signals + numpy columns, as write_trace
                     does, without the Parquet write) / plain backbone forward, same batches      target <= 1.15
    early_exit[b]    for batch sizes 1 and 32, at the DE3 threshold (lambda = 1) that gives ~2x layer speed-up
                     on the data: layer speed-up L / mean exit layer, wall-clock speed-up of the real early-exit
                     engine against the full model (all layers + final classifier, same batches), their ratio
                     (target >= 0.85 at batch 1, >= 0.75 batched) and the engine's agreement with the simulation
                     (exit layer and answer, must be 1.0)
    sweep_seconds    all policies' curves on a 10,000-sample, 12-layer synthetic trace (target <= 1 s), and one
                     policy at one threshold (target <= 20 ms)

The machine may be shared and noisy, so variants compared with each other are interleaved in blocks of
consecutive batches (>= 32 samples, alternating which goes first), repeated, and each ratio is the median of
the per-repetition ratios. Timings
cover model compute only: every batch is tokenised and collated before the clock starts, for all variants.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from .. import batching
from ..engine import EarlyExitEngine, safe_threshold, threshold_values
from ..cost import layer_speedup
from ..errors import DE3Error
from ..io import write_json_atomic
from ..policies import POLICIES, ExitPolicy, decide_exits
from ..validate import RUN, flag

TARGETS = {  # key -> (comparison, bound)
    "trace_overhead": ("<=", 1.15),
    "efficiency_b1": (">=", 0.85),
    "efficiency_batched": (">=", 0.75),
    "agreement": ("==", 1.0),
    "sweep_all_policies": ("<=", 1.0),
    "sweep_one_policy": ("<=", 0.020),
}


def run_bench(
    checkpoint: str | Path,
    data_spec: str | None,
    *,
    data_dir: str | None = None,
    split: str = "test",
    max_samples: int | None = 128,
    out: str | Path = "bench.json",
    device: str = "auto",
    batch_sizes: tuple[int, ...] = (1, 32),
    repeats: int = 5,
    trace_batch_size: int = 64,
    target_speedup: float = 2.0,
    lambda_: float = 1.0,
    sweep_samples: int = 10_000,
    sweep_layers: int = 12,
    num_threads: int | None = None,
) -> dict:
    """Run every benchmark on ``checkpoint`` and ``split`` of its data; write the result to ``out`` (JSON,
    atomically) and return it. See the module docstring for what is measured.

    ``num_threads`` sets torch's CPU threads for the run (restored after); on a machine shared with other busy
    processes, 1 thread avoids the stalls of threads waiting for each other, which hit small operations most.
    """
    before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _run_bench(checkpoint, data_spec, data_dir=data_dir, split=split, max_samples=max_samples, out=out,
                          device=device, batch_sizes=batch_sizes, repeats=repeats, trace_batch_size=trace_batch_size,
                          target_speedup=target_speedup, lambda_=lambda_, sweep_samples=sweep_samples,
                          sweep_layers=sweep_layers)
    finally:
        torch.set_num_threads(before)


def _run_bench(checkpoint, data_spec, *, data_dir, split, max_samples, out, device, batch_sizes, repeats,
               trace_batch_size, target_speedup, lambda_, sweep_samples, sweep_layers) -> dict:
    from ..backbones import pick_device
    from ..checkpoint import load_checkpoint, load_checkpoint_data

    if repeats < 1:
        raise DE3Error(f"repeats must be >= 1, got {repeats}")
    load_before = _load_average()
    model, tokenizer = load_checkpoint(checkpoint, device=pick_device(device))
    data = load_checkpoint_data(checkpoint, spec=data_spec, data_dir=data_dir)
    samples = data.split(split)
    if max_samples is not None:
        samples = samples.subset(range(min(max_samples, len(samples))))
    if len(samples) == 0:
        raise DE3Error(f"{data.name} [{split}] has no samples to benchmark")
    enc = batching.encode_split(tokenizer, samples, model.config.max_length)
    n, L = len(enc), model.num_layers

    overhead, trace = _trace_overhead(model, _collate(tokenizer, enc, trace_batch_size, model.device), repeats)
    policy = threshold_for_speedup(trace.wide, ExitPolicy("de3", lambda_=lambda_), target_speedup)
    expected = decide_exits(trace.wide, policy)
    engine = EarlyExitEngine(model, tokenizer)
    early_exit = {str(b): _early_exit(engine, model, _collate(tokenizer, enc, b, model.device), n, policy, expected,
                                      repeats) for b in batch_sizes}
    result = {
        "checkpoint": str(checkpoint),
        "data": data.name,
        "split": split,
        "num_samples": n,
        "num_layers": L,
        "mean_tokens": float(enc.lengths.mean()),
        "device": str(model.device),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "repeats": repeats,
        "timing": "model compute only (batches tokenised and collated beforehand); variants interleaved in blocks "
                  "of >= 32 samples, order alternating; ratios are medians of per-repetition ratios",
        "policy": {"name": policy.name, "tau": policy.tau, "lambda_": policy.lambda_,
                   "target_speedup": target_speedup, "simulated_speedup": layer_speedup(expected.exit_layer, L)},
        "trace_overhead": overhead,
        "early_exit": early_exit,
        "sweep_seconds": sweep_seconds(sweep_samples, sweep_layers, repeats=repeats),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine()},
    }
    result["load_average"] = {"start": load_before, "end": _load_average()}  # 1-minute, other processes included
    result["targets"] = check_targets(result)
    write_json_atomic(out, result)
    return result


# ---- batches and timing ----


def _collate(tokenizer, enc: batching.Encoded, batch_size: int, device) -> list[tuple[np.ndarray, dict]]:
    """Length-sorted batches, padded and on the device, without labels: the work no variant is timed on."""
    batches = []
    for idx in batching.eval_order(enc, batch_size):
        inputs = batching.collate(tokenizer, enc, idx, device)
        inputs.pop("labels")
        batches.append((idx, inputs))
    return batches


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _interleaved(variants: dict, batches: list, repeats: int, device: torch.device, block_samples: int = 32
                 ) -> dict[str, list[float]]:
    """Seconds per repetition of each variant over all batches, the variants alternating block by block.

    A block is a run of consecutive batches holding at least ``block_samples`` samples (one batch of 32, or 32
    batches of one): each variant runs the whole block, then the next one does, the order alternating. Blocks
    keep the noise of a shared machine paired between variants within a fraction of a second, while each
    variant still runs batches back to back, as it would in service (alternating every batch would let one
    variant flush the other's weights from the CPU cache). ``variants`` maps a name to
    ``fn(idx, inputs) -> anything``; each runs a few batches untimed first (warm-up).
    """
    names = list(variants)
    blocks, current, count = [], [], 0
    for item in batches:
        current.append(item)
        count += len(item[0])
        if count >= block_samples:
            blocks.append(current)
            current, count = [], 0
    if current:
        blocks.append(current)
    for name in names:
        for idx, inputs in batches[:2]:
            variants[name](idx, inputs)
    totals = {name: [] for name in names}
    for r in range(repeats):
        spent = dict.fromkeys(names, 0.0)
        for j, block in enumerate(blocks):
            for name in (names if (r + j) % 2 == 0 else names[::-1]):
                fn = variants[name]
                _sync(device)
                start = time.perf_counter()
                for idx, inputs in block:
                    fn(idx, inputs)
                _sync(device)
                spent[name] += time.perf_counter() - start
        for name in names:
            totals[name].append(spent[name])
    return totals


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every platform
        return None


def _median_ratio(num: list[float], den: list[float]) -> float:
    return float(statistics.median(a / b for a, b in zip(num, den)))


# ---- the benchmarks ----


def _trace_overhead(model, batches: list, repeats: int):
    """Tracing pass vs plain backbone forward on the same batches; also returns the in-memory trace."""
    from ..tracer import trace_from_outputs, trace_rows

    n = sum(len(idx) for idx, _ in batches)
    L, K = model.num_layers, model.config.num_labels
    logits = np.zeros((L, n, K), dtype=np.float32)
    distances = np.zeros((L, n, K), dtype=np.float32)
    zeros = np.zeros(n, dtype=np.int64)

    def plain(idx, inputs):
        return model.backbone(**inputs).last_hidden_state

    def trace_pass(idx, inputs):  # what write_trace does per batch, short of writing Parquet/.npy to disk
        out = model(**inputs)
        trace_rows(out, zeros[idx], idx)
        out.embeddings.float().cpu().numpy().astype(np.float16)
        logits[:, idx] = out.logits.float().cpu().numpy()
        distances[:, idx] = out.distances.float().cpu().numpy()

    with torch.no_grad():  # as write_trace
        times = _interleaved({"plain": plain, "trace": trace_pass}, batches, repeats, model.device)
    trace = trace_from_outputs(logits, distances, zeros, label_names=list(model.config.label_names))
    ratio = _median_ratio(times["trace"], times["plain"])
    return {
        "ratio": ratio,
        "trace_seconds": statistics.median(times["trace"]),
        "plain_seconds": statistics.median(times["plain"]),
        "batch_size": len(batches[0][0]),
        "includes": "DE3Bert forward (all layers, every exit head, prototype distances), signals and the trace's "
                    "numpy columns and float16 embeddings; excludes the Parquet/.npy writes",
        "baseline": "model.backbone(...) forward through all layers",
    }, trace


def threshold_for_speedup(signals, policy: ExitPolicy, target: float) -> ExitPolicy:
    """``policy`` with the τ whose layer speed-up on the trace ``signals`` is nearest ``target``, moved off the
    recorded values with ``safe_threshold``. Speed-up grows with τ, so this is a bisection over the values."""
    values = threshold_values(signals, policy)[:, :-1]  # the test at the last layer is never used
    num_layers = values.shape[1] + 1
    candidates = np.unique(values[np.isfinite(values)])
    if len(candidates) == 0:
        return policy

    def at(i: int) -> tuple[ExitPolicy, float]:
        p = dataclasses.replace(policy, tau=safe_threshold(values, candidates[i]))
        return p, layer_speedup(decide_exits(signals, p).exit_layer, num_layers)

    lo, hi = 0, len(candidates) - 1
    while lo < hi:  # smallest i whose speed-up reaches the target
        mid = (lo + hi) // 2
        if at(mid)[1] >= target:
            hi = mid
        else:
            lo = mid + 1
    options = [at(i) for i in {max(lo - 1, 0), lo}]
    return min(options, key=lambda o: abs(o[1] - target))[0]


def _early_exit(engine: EarlyExitEngine, model, batches: list, n: int, policy: ExitPolicy, expected, repeats: int) -> dict:
    """Real early-exit run vs the full model at one batch size: speed-ups, their ratio and agreement."""
    last = model.heads[-1]
    results = {}

    def full(idx, inputs):  # the full model: every layer, then the final classifier
        hidden = model.backbone(**inputs).last_hidden_state
        logits, _ = last(hidden, inputs["attention_mask"])
        return logits.argmax(-1).cpu()

    def early(idx, inputs):
        results[int(idx[0])] = (idx, engine.run_batch(inputs, policy=policy))  # keyed by batch

    with torch.inference_mode():
        times = _interleaved({"full": full, "engine": early}, batches, repeats, model.device)
    exit_layer = np.zeros(n, dtype=np.int64)
    pred = np.zeros(n, dtype=np.int64)
    for idx, (signals, layers) in results.values():
        exit_layer[idx] = layers
        pred[idx] = signals["pred"][np.arange(len(idx)), layers - 1]
    layers_speedup = layer_speedup(exit_layer, model.num_layers)
    wall_speedup = _median_ratio(times["full"], times["engine"])
    same = (exit_layer == expected.exit_layer) & (pred == expected.pred)
    return {
        "batch_size": len(batches[0][0]),
        "layer_speedup": layers_speedup,
        "wall_speedup": wall_speedup,
        "efficiency": wall_speedup / layers_speedup,  # 1.0 = the wall clock saves all the layers skipped
        "agreement": float(same.mean()),
        "exit_agreement": float((exit_layer == expected.exit_layer).mean()),
        "answer_agreement": float((pred == expected.pred).mean()),
        "engine_seconds": statistics.median(times["engine"]),
        "full_seconds": statistics.median(times["full"]),
        "layers_computed": int(exit_layer.sum()),
    }


def synthetic_trace(num_samples: int = 10_000, num_layers: int = 12, num_labels: int = 3, seed: int = 0):
    """A trace of random logits and distances whose classifiers grow more confident with depth."""
    from ..tracer import trace_from_outputs

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_labels, num_samples)
    depth = np.linspace(0.2, 3.0, num_layers)[:, None, None]  # (L, 1, 1)
    onehot = np.eye(num_labels)[labels][None]  # (1, N, K)
    logits = rng.normal(size=(num_layers, num_samples, num_labels)) + depth * onehot
    distances = np.abs(rng.normal(2.0, 1.0, size=logits.shape)) - 0.5 * depth * onehot
    return trace_from_outputs(logits, np.abs(distances), labels)


def sweep_seconds(num_samples: int = 10_000, num_layers: int = 12, repeats: int = 5) -> dict:
    """Seconds to compute all policies' curves, and one policy at one threshold, on a synthetic trace.

    Uses ``curves.sweep`` / ``curves.evaluate_policy`` when ``analysis/curves.py`` exists, else times
    ``decide_exits`` for the single policy and reports the sweep as not measured.
    """
    trace = synthetic_trace(num_samples, num_layers)
    try:
        from .. import curves
    except ImportError:
        curves = None
    policy = ExitPolicy("de3", tau=0.3, lambda_=1.0)
    result = {"num_samples": num_samples, "num_layers": num_layers}
    if curves is not None:
        start = time.perf_counter()
        curves.sweep(trace)  # cold: includes building the (N, L) arrays from the long table
        result["all_policies_cold"] = time.perf_counter() - start
        result["all_policies"] = _best_of(lambda: curves.sweep(trace), repeats)
        result["one_policy"] = _best_of(lambda: curves.evaluate_policy(trace, policy), repeats)
        result["source"] = "curves.sweep(trace), curves.evaluate_policy(trace, de3 tau=0.3)"
    else:
        for name in ("pred", "entropy", "dr", "max_prob", "correct"):  # warm the (N, L) arrays, as a loaded app has
            trace.wide[name]
        result["all_policies"] = None
        result["one_policy"] = _best_of(lambda: decide_exits(trace.wide, policy), repeats)
        result["source"] = "analysis/curves.py missing: decide_exits(trace.wide, de3 tau=0.3) only"
    result["policies"] = list(POLICIES)
    return result


def _best_of(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(statistics.median(times))


# ---- targets and the command line ----


def check_targets(result: dict) -> list[dict]:
    """Each target with its measured value and whether it is met (``pass`` None when not measured)."""
    rows = [("trace_overhead", "trace_overhead", result["trace_overhead"]["ratio"])]
    for b, r in result["early_exit"].items():
        rows.append((f"efficiency_b{b}", "efficiency_b1" if b == "1" else "efficiency_batched", r["efficiency"]))
        rows.append((f"agreement_b{b}", "agreement", r["agreement"]))
    rows.append(("sweep_all_policies", "sweep_all_policies", result["sweep_seconds"]["all_policies"]))
    rows.append(("sweep_one_policy", "sweep_one_policy", result["sweep_seconds"]["one_policy"]))
    out = []
    for name, kind, value in rows:
        op, bound = TARGETS[kind]
        ok = None if value is None else {"<=": value <= bound, ">=": value >= bound, "==": value == bound}[op]
        out.append({"name": name, "value": value, "op": op, "target": bound, "pass": ok})
    return out


def format_summary(result: dict) -> str:
    p = result["policy"]
    lines = [(f"bench: {result['checkpoint']} on {result['data']} [{result['split']}, {result['num_samples']} samples, "
              f"{result['num_layers']} layers, {result['device']}, {result['torch_threads']} threads]"),
             f"DE3 lambda={p['lambda_']:g} tau={p['tau']:.4g}: simulated speed-up {p['simulated_speedup']:.2f}x"]
    for b, r in result["early_exit"].items():
        lines.append(f"  batch {b:>3}: layer speed-up {r['layer_speedup']:.2f}x, wall-clock {r['wall_speedup']:.2f}x "
                     f"(engine {r['engine_seconds']:.2f}s vs full {r['full_seconds']:.2f}s)")
    loads = [x for x in result.get("load_average", {}).values() if x is not None]
    cores = result.get("cpu_count") or 1
    if result["device"] == "cpu" and result["torch_threads"] > 1 and loads and max(loads) > cores:
        lines.append(f"  note: the machine was busy (load {max(loads):.1f} on {cores} cores) and torch used "
                     f"{result['torch_threads']} threads, which then stall waiting for each other; timings are "
                     "unreliable, rerun with --threads 1")
    for t in result["targets"]:
        status = "n/a " if t["pass"] is None else "PASS" if t["pass"] else "MISS"
        value = "not measured" if t["value"] is None else f"{t['value']:.4g}"
        lines.append(f"  {status}  {t['name']:<20} {value:>12}  (target {t['op']} {t['target']:g})")
    return "\n".join(lines)


def register(subparsers) -> None:
    """Add the ``bench`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "bench", help="measure trace overhead, real early-exit speed-ups and sweep times",
        description="Benchmarks measured side by side in one run (interleaved, medians): tracing overhead over a "
                    "plain forward; at the DE3 threshold giving ~2x layer speed-up, the real early-exit engine's "
                    "wall-clock speed-up over the full model at batch 1 and 32 and its agreement with the "
                    "simulation; and policy sweep times. Writes bench.json and prints each target with PASS/MISS. "
                    "Exit code 1 if the engine disagrees with the simulation, else 0.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint folder written by train")
    p.add_argument("--data", help="data source (default: the checkpoint's own)")
    p.add_argument("--data-dir", help="local folder in GLUE's TSV layout for glue/<task>")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--max-samples", type=flag(RUN["max_samples"]), default=128, help="benchmark the first N samples of the split")
    p.add_argument("--repeats", type=flag(RUN["repeats"]), default=5, help="interleaved repetitions per comparison")
    p.add_argument("--out", required=True, help="JSON file to write (replaced atomically)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--threads", type=flag(RUN["threads"]), help="torch CPU threads (default: torch's); 1 is steadier on a busy machine")
    p.set_defaults(handler=cmd_bench)


def cmd_bench(args) -> int:
    from ..io import claim_output

    data_file = args.data if args.data and os.path.lexists(os.path.expanduser(args.data)) else None
    # checked and locked before the minutes of timing: a writable JSON file, none of the inputs
    with claim_output(args.out, inputs=[data_file], around=[args.checkpoint, args.data_dir], kind="file",
                      command="analysis bench"):
        result = run_bench(args.checkpoint, args.data, data_dir=args.data_dir, split=args.split,
                           max_samples=args.max_samples, out=args.out, device=args.device, repeats=args.repeats,
                           num_threads=args.threads)
    print(format_summary(result))
    print(f"written: {args.out}")
    agreement = [t for t in result["targets"] if t["name"].startswith("agreement")]
    return 0 if all(t["pass"] for t in agreement) else 1
