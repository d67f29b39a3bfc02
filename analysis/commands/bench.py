"""Benchmarks of the things this project promises to be cheap (spec §6), measured side by side in one run.

    trace_overhead   tracing pass (forward through every exit head + signals + numpy columns, as write_trace
                     does, without the Parquet write) / plain backbone forward, same batches      target <= 1.05
    exit_work        at batch 1 (first 32 samples): the engine's per-layer exit work (exit head, the signals the
                     policy reads, its test) in ms, against a layer's share of a run with no exit tests
    early_exit[b]    for each batch size (1 and 32 by default), at the DE3 threshold (lambda = 1) that gives ~2x layer
                     speed-up on the data: layer speed-up L / mean exit layer, wall-clock speed-up of the real
                     early-exit engine against the full model (all layers + final classifier, same batches, the
                     backbone's SDPA attention), their ratio, the efficiency (target >= 0.95 at batch 1 and batched),
                     the engine's agreement with the simulation (exit layer and answer, must be 1.0) and every
                     variant's latency in ms per sample. With --compile, the same for the engine and the full model
                     each under torch.compile (efficiency target >= 0.9, compiled against compiled), and the engine
                     against the fastest full model of the four
    sweep_seconds    all policies' curves on a 10,000-sample, 12-layer synthetic trace (target <= 1 s), and one
                     policy at one threshold (target <= 20 ms)

The machine may be shared and noisy, so variants compared with each other are interleaved in blocks of
consecutive batches (>= 32 samples, each variant leading in turn), repeated, and each ratio is the median of
the per-repetition ratios. Timings cover model compute only: every batch is tokenised and collated before the clock
starts, for all variants; compiled variants run every batch once, untimed, before (their compilation).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import shlex
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from .. import batching
from ..cost import layer_speedup
from ..engine import EarlyExitEngine, safe_threshold, threshold_values
from ..errors import DE3Error, one_line
from ..io import atomic_file, write_json_atomic
from ..policies import POLICIES, ExitPolicy, decide_exits
from ..validate import BATCH, RUN, flag, flag_list

TARGETS = {  # key -> (comparison, bound)
    "trace_overhead": ("<=", 1.05),
    "efficiency_b1": (">=", 0.95),
    "efficiency_batched": (">=", 0.95),
    "efficiency_compiled": (">=", 0.90),
    "agreement": ("==", 1.0),
    "sweep_all_policies": ("<=", 1.0),
    "sweep_one_policy": ("<=", 0.020),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BATCH_SIZES = (1, 32)
EXIT_WORK_SAMPLES = 32  # batch-1 samples the per-layer exit work is measured on
GPU_COMMANDS = (  # what bench.md and the README tell a user with a GPU to run
    "python -m analysis bench --checkpoint pretrained/sst2-minilm-l6 --checkpoint pretrained/bbc-minilm-l6 "
    "--device cuda --batch-sizes 1,32,256 --max-samples 512 --compile --out bench-gpu.json --report bench-gpu.md",
    "python -m analysis bench --checkpoint pretrained/sst2-minilm-l6 --checkpoint pretrained/bbc-minilm-l6 "
    "--device cuda --dtype bfloat16 --batch-sizes 1,32,256 --max-samples 512 --compile --out bench-gpu-bf16.json "
    "--report bench-gpu-bf16.md",
)


def run_bench(
    checkpoint: str | Path,
    data_spec: str | None,
    *,
    data_dir: str | None = None,
    split: str = "test",
    max_samples: int | None = 128,
    out: str | Path | None = "bench.json",
    device: str = "auto",
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    repeats: int = 5,
    trace_batch_size: int = 64,
    target_speedup: float = 2.0,
    lambda_: float = 1.0,
    sweep_samples: int = 10_000,
    sweep_layers: int = 12,
    num_threads: int | None = None,
    compile: bool | str = False,
    dtype: str = "float32",
) -> dict:
    """Run every benchmark on ``checkpoint`` and ``split`` of its data; write the result to ``out`` (JSON,
    atomically; None: not written) and return it. See the module docstring for what is measured.

    ``num_threads`` sets torch's CPU threads for the run (restored after); on a machine shared with other busy
    processes, 1 thread avoids the stalls of threads waiting for each other, which hit small operations most.
    ``compile``: also time the engine and the full model under ``torch.compile`` (True, or a backend name); where it
    cannot run here, the result says why and has no compiled rows. ``dtype``: the model's weights (bfloat16 on a GPU).
    """
    if dtype not in DTYPES:
        raise DE3Error(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _run_bench(checkpoint, data_spec, data_dir=data_dir, split=split, max_samples=max_samples, out=out,
                          device=device, batch_sizes=tuple(batch_sizes), repeats=repeats,
                          trace_batch_size=trace_batch_size, target_speedup=target_speedup, lambda_=lambda_,
                          sweep_samples=sweep_samples, sweep_layers=sweep_layers, compile=compile, dtype=dtype)
    finally:
        torch.set_num_threads(before)


def _run_bench(checkpoint, data_spec, *, data_dir, split, max_samples, out, device, batch_sizes, repeats,
               trace_batch_size, target_speedup, lambda_, sweep_samples, sweep_layers, compile, dtype) -> dict:
    from ..backbones import pick_device
    from ..checkpoint import load_checkpoint, load_checkpoint_data

    if repeats < 1:
        raise DE3Error(f"repeats must be >= 1, got {repeats}")
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise DE3Error(f"batch sizes must be >= 1, got {list(batch_sizes)}")
    load_before = _load_average()
    model, tokenizer = load_checkpoint(checkpoint, device=pick_device(device))
    model.to(DTYPES[dtype])
    attention = use_sdpa(model.backbone)
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
    compiled = _compiled_variants(model, tokenizer, compile) if compile else None
    single = _collate(tokenizer, enc, 1, model.device)
    exit_work = _exit_work(engine, model, single[:EXIT_WORK_SAMPLES], policy, repeats)
    early_exit = {}
    for b in batch_sizes:
        batches = single if b == 1 else _collate(tokenizer, enc, b, model.device)
        early_exit[str(b)] = _early_exit(engine, model, batches, n, policy, expected, repeats, compiled)
    result = {
        "checkpoint": str(checkpoint),
        "data": data.name,
        "split": split,
        "num_samples": n,
        "num_layers": L,
        "mean_tokens": float(enc.lengths.mean()),
        "device": str(model.device),
        "dtype": dtype,
        "attention": attention,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "repeats": repeats,
        "timing": "model compute only (batches tokenised and collated beforehand); variants interleaved in blocks "
                  "of >= 32 samples, each leading in turn; ratios are medians of per-repetition ratios",
        "policy": {"name": policy.name, "tau": policy.tau, "lambda_": policy.lambda_,
                   "target_speedup": target_speedup, "simulated_speedup": layer_speedup(expected.exit_layer, L)},
        "trace_overhead": overhead,
        "exit_work": exit_work,
        "early_exit": early_exit,
        "compile": None if compiled is None else {k: v for k, v in compiled.items() if k != "variants"},
        "sweep_seconds": sweep_seconds(sweep_samples, sweep_layers, repeats=repeats),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
    }
    result["load_average"] = {"start": load_before, "end": _load_average()}  # 1-minute, other processes included
    result["targets"] = check_targets(result)
    if out is not None:
        write_json_atomic(out, result)
    return result


# ---- the machine ----


def use_sdpa(backbone) -> str:
    """Make the backbone use PyTorch's scaled-dot-product attention when it can (the full model made fast, and the
    engine runs the same layers); return the attention implementation in use."""
    current = getattr(backbone.config, "_attn_implementation", None) or "eager"
    if current != "sdpa" and hasattr(backbone, "set_attn_implementation"):
        try:
            backbone.set_attn_implementation("sdpa")
        except (ValueError, ImportError, NotImplementedError):  # this architecture has no SDPA path
            pass
    return getattr(backbone.config, "_attn_implementation", None) or current


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(), "gpu": gpu}


def versions() -> dict:
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": np.__version__, "machine": platform.machine()}


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
    """Wait for the device's queued work, so the clock measures it (CUDA only; the CPU computes as it is asked)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _interleaved(variants: dict, batches: list, repeats: int, device: torch.device, block_samples: int = 32
                 ) -> dict[str, list[float]]:
    """Seconds per repetition of each variant over all batches, the variants alternating block by block.

    A block is a run of consecutive batches holding at least ``block_samples`` samples (one batch of 32, or 32
    batches of one): each variant runs the whole block, then the next one does, each leading in turn. Blocks
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
            lead = (r + j) % len(names)  # each variant leads in turn
            for name in names[lead:] + names[:lead]:
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


def _full_model(backbone, head):
    """The full model as a user runs it: every layer, then the final classifier's answer."""
    def full(idx, inputs):
        hidden = backbone(**inputs).last_hidden_state
        logits, _ = head(hidden, inputs["attention_mask"])
        return logits.argmax(-1).cpu()

    return full


def _compiled_variants(model, tokenizer, compile: bool | str) -> dict:
    """The engine and the full model under ``torch.compile`` (dynamic shapes), or why they cannot be built here."""
    backend = "inductor" if compile is True else str(compile)
    info = {"backend": backend, "skipped": None, "warmup_seconds": {}}
    try:
        engine = EarlyExitEngine(model, tokenizer, compile=backend)
        backbone = torch.compile(model.backbone, dynamic=True, backend=backend)
        head = torch.compile(model.heads[-1], dynamic=True, backend=backend)
    except Exception as exc:  # noqa: BLE001 - any failure means: no compiled rows, said in one line
        info["skipped"] = f"torch.compile unavailable here ({type(exc).__name__}: {one_line(exc, 200)})"
        return info
    info["variants"] = {"full_compiled": _full_model(backbone, head), "engine": engine}
    return info


def _early_exit(engine: EarlyExitEngine, model, batches: list, n: int, policy: ExitPolicy, expected, repeats: int,
                compiled: dict | None) -> dict:
    """Real early-exit runs vs the full model at one batch size: speed-ups, their ratio, agreement, latencies;
    with ``compiled``, the compiled engine vs the compiled full model too."""
    exits = {"engine": {}, "engine_compiled": {}}

    def early(store, eng):
        def fn(idx, inputs):
            store[int(idx[0])] = (idx, eng.run_batch(inputs, policy=policy))  # keyed by batch
        return fn

    variants = {"full": _full_model(model.backbone, model.heads[-1]), "engine": early(exits["engine"], engine)}
    warmup = None
    if compiled is not None and compiled.get("variants") and not compiled["skipped"]:
        candidates = {"full_compiled": compiled["variants"]["full_compiled"],
                      "engine_compiled": early(exits["engine_compiled"], compiled["variants"]["engine"])}
        start = time.perf_counter()
        try:  # every batch once, untimed: compiles each kind of shape the timed runs will meet
            with torch.inference_mode():
                for fn in candidates.values():
                    for idx, inputs in batches:
                        fn(idx, inputs)
            variants.update(candidates)
            warmup = time.perf_counter() - start
            compiled["warmup_seconds"][str(len(batches[0][0]))] = warmup
        except Exception as exc:  # noqa: BLE001 - a backend that fails at its first call (no C++ compiler, ...)
            compiled["skipped"] = f"torch.compile failed here ({type(exc).__name__}: {one_line(exc, 200)})"
            compiled.pop("variants", None)

    with torch.inference_mode():
        times = _interleaved(variants, batches, repeats, model.device)
    layers_speedup = layer_speedup(_exit_layers(exits["engine"], n)[0], model.num_layers)

    def versus(full: str, eng: str) -> dict:
        exit_layer, pred = _exit_layers(exits[eng], n)
        wall = _median_ratio(times[full], times[eng])
        same = (exit_layer == expected.exit_layer) & (pred == expected.pred)
        return {
            "layer_speedup": layer_speedup(exit_layer, model.num_layers),
            "wall_speedup": wall,
            "efficiency": wall / layers_speedup,  # 1.0 = the wall clock saves all the layers skipped
            "agreement": float(same.mean()),
            "exit_agreement": float((exit_layer == expected.exit_layer).mean()),
            "answer_agreement": float((pred == expected.pred).mean()),
            "engine_seconds": statistics.median(times[eng]),
            "full_seconds": statistics.median(times[full]),
            "layers_computed": int(exit_layer.sum()),
        }

    result = {"batch_size": len(batches[0][0]), **versus("full", "engine"),
              "ms_per_sample": {name: 1000 * statistics.median(t) / n for name, t in times.items()}}
    if "engine_compiled" in times:
        result["compiled"] = {**versus("full_compiled", "engine_compiled"), "warmup_seconds": warmup}
        fastest = [min(a, b) for a, b in zip(times["full"], times["full_compiled"])]  # per repetition
        result["fastest_full"] = min(("full", "full_compiled"), key=lambda k: statistics.median(times[k]))
        result["vs_fastest_full"] = {eng: _median_ratio(fastest, times[eng]) / layers_speedup
                                     for eng in ("engine", "engine_compiled")}  # efficiency against the fastest
    return result


def _exit_layers(store: dict, n: int) -> tuple[np.ndarray, np.ndarray]:
    exit_layer = np.zeros(n, dtype=np.int64)
    pred = np.zeros(n, dtype=np.int64)
    for idx, out in store.values():
        exit_layer[idx], pred[idx] = out.exit_layer, out.pred
    return exit_layer, pred


def _exit_work(engine: EarlyExitEngine, model, batches: list, policy: ExitPolicy, repeats: int) -> dict:
    """The engine's per-layer exit work at batch 1: runs whose test never passes (every layer's head, signals and
    test) against runs with no test (layers and the final head only), interleaved; the difference per tested
    layer, and a layer's share of the untested run, in ms."""
    L, n = model.num_layers, sum(len(idx) for idx, _ in batches)
    never = dataclasses.replace(policy, tau=-math.inf * policy.spec.sign)  # value < -inf: nobody leaves
    untested = ExitPolicy("static", layer=L)
    variants = {"untested": lambda idx, inputs: engine.run_batch(inputs, policy=untested),
                "tested": lambda idx, inputs: engine.run_batch(inputs, policy=never)}
    times = _interleaved(variants, batches, repeats, model.device)
    work = statistics.median((t - u) / (n * (L - 1)) for t, u in zip(times["tested"], times["untested"]))
    layer = statistics.median(times["untested"]) / (n * L)
    return {"layer_ms": 1000 * layer, "exit_work_ms": 1000 * work, "ratio": work / layer, "samples": n,
            "policy": policy.describe(),
            "what": "per layer: (a run testing every layer, nobody leaving - a run with no test) / (L - 1) tested "
                    "layers; layer_ms: the untested run / L (embeddings and final head included)"}


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


# ---- targets, the summary and the report ----


def check_targets(result: dict) -> list[dict]:
    """Each target with its measured value and whether it is met (``pass`` None when not measured)."""
    rows = [("trace_overhead", "trace_overhead", result["trace_overhead"]["ratio"])]
    for b, r in result["early_exit"].items():
        rows.append((f"efficiency_b{b}", "efficiency_b1" if b == "1" else "efficiency_batched", r["efficiency"]))
        rows.append((f"agreement_b{b}", "agreement", r["agreement"]))
    for b, r in result["early_exit"].items():
        if "compiled" in r:
            rows.append((f"efficiency_compiled_b{b}", "efficiency_compiled", r["compiled"]["efficiency"]))
            rows.append((f"agreement_compiled_b{b}", "agreement", r["compiled"]["agreement"]))
    rows.append(("sweep_all_policies", "sweep_all_policies", result["sweep_seconds"]["all_policies"]))
    rows.append(("sweep_one_policy", "sweep_one_policy", result["sweep_seconds"]["one_policy"]))
    out = []
    for name, kind, value in rows:
        op, bound = TARGETS[kind]
        ok = None if value is None else {"<=": value <= bound, ">=": value >= bound, "==": value == bound}[op]
        out.append({"name": name, "value": value, "op": op, "target": bound, "pass": ok})
    return out


def _status(target: dict) -> str:
    return "n/a " if target["pass"] is None else "PASS" if target["pass"] else "FAIL"


def format_summary(result: dict) -> str:
    p = result["policy"]
    lines = [(f"bench: {result['checkpoint']} on {result['data']} [{result['split']}, {result['num_samples']} samples, "
              f"{result['num_layers']} layers, {result['device']}, {result.get('dtype', 'float32')}, "
              f"{result.get('attention', '?')} attention, {result['torch_threads']} threads]"),
             f"DE3 lambda={p['lambda_']:g} tau={p['tau']:.4g}: simulated speed-up {p['simulated_speedup']:.2f}x"]
    work = result.get("exit_work")
    if work:
        lines.append(f"  per-layer exit work at batch 1: {work['exit_work_ms']:.3f} ms on a {work['layer_ms']:.3f} ms "
                     f"layer ({100 * work['ratio']:.1f} %)")
    for b, r in result["early_exit"].items():
        ms = r["ms_per_sample"]
        lines.append(f"  batch {b:>3}: layer speed-up {r['layer_speedup']:.2f}x, wall-clock {r['wall_speedup']:.2f}x, "
                     f"efficiency {r['efficiency']:.3f} (engine {ms['engine']:.3f} vs full {ms['full']:.3f} ms/sample)")
        if "compiled" in r:
            c = r["compiled"]
            lines.append(f"  batch {b:>3} compiled: wall-clock {c['wall_speedup']:.2f}x, efficiency {c['efficiency']:.3f} "
                         f"(engine {ms['engine_compiled']:.3f} vs full {ms['full_compiled']:.3f} ms/sample); against "
                         f"the fastest full model ({r['fastest_full'].replace('_', ' ')}): eager engine "
                         f"{r['vs_fastest_full']['engine']:.3f}, compiled engine {r['vs_fastest_full']['engine_compiled']:.3f}")
    compiled = result.get("compile")
    if compiled and compiled.get("skipped"):
        lines.append(f"  compiled rows skipped: {compiled['skipped']}")
    loads = [x for x in result.get("load_average", {}).values() if x is not None]
    cores = result.get("cpu_count") or 1
    if result["device"] == "cpu" and loads and max(loads) > cores:
        lines.append(f"  note: the machine was busy (load {max(loads):.1f} on {cores} cores): timings are noisy"
                     + (f"; torch used {result['torch_threads']} threads, which then stall waiting for each other, "
                        "rerun with --threads 1" if result["torch_threads"] > 1 else ""))
    for t in result["targets"]:
        value = "not measured" if t["value"] is None else f"{t['value']:.4g}"
        lines.append(f"  {_status(t)}  {t['name']:<25} {value:>12}  (target {t['op']} {t['target']:g})")
    return "\n".join(lines)


def format_report(results: list[dict], command: str) -> str:
    """docs/results/bench.md: the machine, versions, every checkpoint's figures and latencies, the targets, and the
    GPU command lines."""
    first = results[0]
    m, v = first.get("machine") or machine(), first.get("versions") or versions()
    loads = [x for r in results for x in r.get("load_average", {}).values() if x is not None]
    gpus = sorted({r["device"] for r in results if r["device"].startswith("cuda")})
    lines = [
        "# Early-exit benchmark",
        "",
        f"Written by `{command}` on {first['created'][:10]}; every ratio is measured side by side in one run "
        "(variants interleaved in blocks of 32 samples, medians of per-repetition ratios; model compute only).",
        "",
        f"- **Machine**: {m['cpu']}, {m['cpu_count']} cores; torch threads {first['torch_threads']}"
        + (f"; 1-minute load average {min(loads):.1f}–{max(loads):.1f} (other processes included)" if loads else ""),
        f"- **Versions**: Python {v['python']}, torch {v['torch']}, transformers {v.get('transformers', '?')}, "
        f"NumPy {v.get('numpy', '?')}",
        "- **GPU**: " + (f"{m['gpu']} ({', '.join(gpus)})" if gpus else
                         "unmeasured (no GPU on this machine)" if not m.get("gpu") else f"{m['gpu']}, not used here"),
        "",
        "Efficiency = wall-clock speed-up / layer speed-up: 1.0 means the clock saves every layer skipped. The full "
        "model is the backbone's forward (SDPA attention) and the final exit's classifier; *compiled* rows put both "
        "the full model and the engine under `torch.compile` (dynamic shapes).",
    ]
    for r in results:
        p, work = r["policy"], r.get("exit_work")
        lines += ["", f"## `{r['checkpoint']}` — {r['data']} [{r['split']}]", "",
                  f"{r['num_samples']} samples, {r['mean_tokens']:.1f} tokens on average, {r['num_layers']} layers, "
                  f"{r['device']}, {r.get('dtype', 'float32')}, {r.get('attention', '?')} attention. DE3 (λ={p['lambda_']:g}) "
                  f"at τ={p['tau']:.4g}: layer speed-up {p['simulated_speedup']:.2f}× in simulation.", ""]
        if work:
            lines += [f"Per-layer exit work at batch 1 (head, the signals DE3 reads, its test): "
                      f"**{work['exit_work_ms']:.3f} ms** on a {work['layer_ms']:.3f} ms layer "
                      f"({100 * work['ratio']:.1f} %). Trace overhead: {r['trace_overhead']['ratio']:.3f}.", ""]
        lines += ["| batch | run | full model ms/sample | early exit ms/sample | wall-clock speed-up | layer speed-up | "
                  "efficiency | agreement |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
        for b, e in r["early_exit"].items():
            ms = e["ms_per_sample"]
            lines.append(f"| {b} | eager | {ms['full']:.3f} | {ms['engine']:.3f} | {e['wall_speedup']:.2f}× | "
                         f"{e['layer_speedup']:.2f}× | {e['efficiency']:.3f} | {e['agreement']:.3f} |")
            if "compiled" in e:
                c = e["compiled"]
                lines.append(f"| {b} | compiled | {ms['full_compiled']:.3f} | {ms['engine_compiled']:.3f} | "
                             f"{c['wall_speedup']:.2f}× | {c['layer_speedup']:.2f}× | {c['efficiency']:.3f} | "
                             f"{c['agreement']:.3f} |")
        fastest = [(b, e) for b, e in r["early_exit"].items() if "vs_fastest_full" in e]
        if fastest:
            lines += ["", "Against the fastest full model at each batch size (efficiency): " + "; ".join(
                f"batch {b}: {e['fastest_full'].replace('_', ' ')}, eager engine {e['vs_fastest_full']['engine']:.3f}, "
                f"compiled engine {e['vs_fastest_full']['engine_compiled']:.3f}" for b, e in fastest) + "."]
        compiled = r.get("compile")
        if compiled and compiled.get("skipped"):
            lines += ["", f"Compiled rows skipped: {compiled['skipped']}."]
        elif compiled and compiled.get("warmup_seconds"):
            lines += ["", "Compilation (first pass over every batch, untimed): " + ", ".join(
                f"batch {b} {s:.0f} s" for b, s in compiled["warmup_seconds"].items()) + "."]
        lines += ["", "| target | value | bound | status |", "|---|---:|---:|---|"]
        for t in r["targets"]:
            value = "not measured" if t["value"] is None else f"{t['value']:.4g}"
            lines.append(f"| {t['name']} | {value} | {t['op']} {t['target']:g} | {_status(t).strip()} |")
    lines += ["", "## On a GPU", "",
              "Unmeasured here. On a machine with an NVIDIA GPU (a CUDA build of torch, see the README), batch 1, 32 and "
              "256, eager and compiled side by side, in float32 and in bfloat16:", "", "```bash", *GPU_COMMANDS, "```",
              "", "There the signals and the exit test run in torch on the device (one transfer of the test's answer "
              "per layer) and `torch.cuda.synchronize` brackets every timed block. In bfloat16 the simulation's trace and "
              "the engine's batches round differently, so agreement can fall below 1.0 for samples within bfloat16 "
              "rounding of τ.", ""]
    return "\n".join(lines)


def register(subparsers) -> None:
    """Add the ``bench`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "bench", help="measure trace overhead, real early-exit speed-ups and sweep times",
        description="Benchmarks measured side by side in one run (interleaved, medians): tracing overhead over a "
                    "plain forward; the engine's per-layer exit work at batch 1; at the DE3 threshold giving ~2x "
                    "layer speed-up, the real early-exit engine's wall-clock speed-up over the full model (SDPA "
                    "attention) at each batch size, its efficiency and its agreement with the simulation (with "
                    "--compile, also both under torch.compile); and policy sweep times. Writes --out (JSON; with "
                    "several --checkpoint, {\"runs\": [...]}) and --report (Markdown), prints each target with "
                    "PASS/FAIL. Exit code 1 if the engine disagrees with the simulation, else 0.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, action="append",
                   help="checkpoint folder written by train; repeat it to benchmark several in one run")
    p.add_argument("--data", help="data source (default: each checkpoint's own)")
    p.add_argument("--data-dir", help="local folder in GLUE's TSV layout for glue/<task>")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--max-samples", type=flag(RUN["max_samples"]), default=128, help="benchmark the first N samples of the split")
    p.add_argument("--repeats", type=flag(RUN["repeats"]), default=5, help="interleaved repetitions per comparison")
    p.add_argument("--batch-sizes", type=flag_list(BATCH), default=BATCH_SIZES,
                   help="comma-separated batch sizes of the early-exit comparison")
    p.add_argument("--compile", action="store_true",
                   help="also time the engine and the full model under torch.compile (minutes of compilation first); "
                        "where torch.compile cannot run, one line says why and the compiled rows are skipped")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="the model's weights (bfloat16 on a GPU)")
    p.add_argument("--out", required=True, help="JSON file to write (replaced atomically)")
    p.add_argument("--report", help="Markdown report to write too, e.g. docs/results/bench.md (replaced atomically)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--threads", type=flag(RUN["threads"]), help="torch CPU threads (default: torch's); 1 is steadier on a busy machine")
    p.set_defaults(handler=cmd_bench)


def _command_line(args) -> str:
    """The command that regenerates this run's files (flags left at their defaults omitted)."""
    parts = ["python", "-m", "analysis", "bench"]
    for ckpt in args.checkpoint:
        parts += ["--checkpoint", str(ckpt)]
    defaults = {"data": None, "data_dir": None, "split": "test", "max_samples": 128, "repeats": 5,
                "batch_sizes": BATCH_SIZES, "dtype": "float32", "device": "auto", "threads": None}
    for key, default in defaults.items():
        value = getattr(args, key)
        if value != default and value is not None:
            text = ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
            parts += [f"--{key.replace('_', '-')}", text]
    if args.compile:
        parts.append("--compile")
    parts += ["--out", str(args.out)] + (["--report", str(args.report)] if args.report else [])
    return " ".join(shlex.quote(p) for p in parts)


def cmd_bench(args) -> int:
    import contextlib

    from ..io import claim_output

    data_file = args.data if args.data and os.path.lexists(os.path.expanduser(args.data)) else None
    around = [*args.checkpoint, args.data_dir]
    # checked and locked before the minutes of timing: writable files, none of the inputs
    with contextlib.ExitStack() as stack:
        stack.enter_context(claim_output(args.out, inputs=[data_file], around=around, kind="file",
                                         command="analysis bench"))
        if args.report:
            stack.enter_context(claim_output(args.report, inputs=[data_file, args.out], around=around, kind="file",
                                             what="--report", command="analysis bench"))
        results = []
        for ckpt in args.checkpoint:
            results.append(run_bench(ckpt, args.data, data_dir=args.data_dir, split=args.split,
                                     max_samples=args.max_samples, out=None, device=args.device,
                                     repeats=args.repeats, num_threads=args.threads, batch_sizes=args.batch_sizes,
                                     compile=args.compile, dtype=args.dtype))
            print(format_summary(results[-1]), flush=True)
        write_json_atomic(args.out, results[0] if len(results) == 1 else {"runs": results})
        print(f"written: {args.out}")
        if args.report:
            with atomic_file(args.report) as tmp:
                tmp.write_text(format_report(results, _command_line(args)), encoding="utf-8")
            print(f"written: {args.report}")
    agreement = [t for r in results for t in r["targets"] if t["name"].startswith("agreement")]
    return 0 if all(t["pass"] for t in agreement) else 1
