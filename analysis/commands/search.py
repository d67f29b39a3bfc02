"""The design search: which of the settings the paper leaves open make the distance signal help, measured where it
is cheap -- DE3 exits attached to a frozen backbone (``analysis.attach``), trained on cached pooled vectors.

    python -m analysis search --data glue/sst2 --data-dir ../shared/data/glue --max-train-samples 8000
    python -m analysis search --data bbc

1. cache      the data's train rows (a seeded subset with ``--max-train-samples``), validation and test rows go
              through the frozen backbone once; every layer's pooled vector is saved in ``<work>/cache`` and reused
              while the model, data, subset, max length and pooling are the same.
2. settings   the spec's defaults, then one change at a time (``FACTORS``): the DAR form, α, γ, the prototype
              dimension, the distance, what the prototypical network reads, the training length; then
              ``combined``: every factor's best level (by the mean AUC margin over seeds) that beat the default's
              margin, together.
3. runs       each setting with every seed (the seed sets the heads' initialisation, dropout and batch order; the
              data split is the first seed's for every run, so the settings compete on the same rows): the heads
              trained on the cache as ``attach`` trains them, the validation and test splits scored from the cache
              into traces, λ chosen on validation (never on test), DE3 against the entropy at matched speed-ups
              with a paired bootstrap (``compare``). Each run's numbers are saved in ``<work>/runs`` and reused.
4. report     Markdown and a figure: every setting's DE3 − entropy margin (mean over seeds, t-interval), each
              seed's verdict, the signals' AUROC, the best setting, the recommendation.

The frozen backbone is not the end-to-end model: what the search finds is confirmed with ``study --define``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from ..attach import ATTACH_TRAIN_DEFAULTS
from ..config import TrainConfig
from ..data import spec_kind
from ..errors import DE3Error, one_line
from ..io import atomic_file, check_writable, claim_output, read_json_object
from ..validate import RUN, TRAIN, flag
from .study import (SPEEDUPS, VERDICTS, _fmt, _fmt_interval, _md_table, add_column_args, check_columns, data_words,
                    seed_interval, setting_name, short_name)

# factor -> (the field it sets, the levels tried besides the default); ModelConfig fields, "epochs" a TrainConfig one
FACTORS: dict[str, tuple[str, tuple]] = {
    "DAR form": ("dar_form", ("ratio", "margin")),
    "DAR weight α": ("alpha", (0.0, 0.3, 3.0)),
    "prototype rate γ": ("gamma", (0.01, 0.5)),
    "prototype dimension": ("proto_dim", (32, 128)),
    "distance": ("distance", ("cosine", "sqeuclidean")),
    "prototypical input": ("proto_input", ("pooled",)),
    "training length (epochs)": ("epochs", (3, 30)),
}
TRAIN_FIELDS = ("epochs",)  # the factors that set a TrainConfig field; the others set ModelConfig fields
DEFAULT_EPOCHS = ATTACH_TRAIN_DEFAULTS["epochs"]  # attach's training length on cached vectors
DEFAULT_MAX_TRAIN = 8000
CACHE_VERSION = 1


@dataclass(frozen=True)
class SearchSettings:
    data: str = "glue/sst2"
    text_columns: tuple | None = None  # data files only, as train's --text-column
    label_column: str | int | None = None  # data files only, as train's --label-column
    model: str = "minilm-l6"
    max_train_samples: int | None = DEFAULT_MAX_TRAIN
    max_length: int = 64
    pooling: str = "mean"
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = ATTACH_TRAIN_DEFAULTS["batch_size"]
    seed: int = 42
    seeds: int = 3
    n_boot: int = 1000

    @property
    def seed_list(self) -> tuple[int, ...]:
        return tuple(self.seed + i for i in range(self.seeds))

    def cache_key(self) -> dict:
        """What the cached vectors depend on."""
        columns = {k: v for k, v in (("text_columns", list(self.text_columns or []) or None),
                                     ("label_column", self.label_column)) if v is not None}  # a file's, when named
        return {"version": CACHE_VERSION, "data": self.data, **columns, "model": self.model, "seed": self.seed,
                "max_train_samples": self.max_train_samples, "max_length": self.max_length, "pooling": self.pooling}

    def run_key(self) -> dict:
        """What a run's numbers depend on besides its setting and seed."""
        return {**self.cache_key(), "batch_size": self.batch_size, "n_boot": self.n_boot}


def one_at_a_time() -> dict[str, dict]:
    """The default and every factor's other levels, one change at a time: name -> changes."""
    settings = {"default": {}}
    for field, levels in FACTORS.values():
        for level in levels:
            settings[setting_name({field: level})] = {field: level}
    return settings


def factor_of(changes: dict) -> str | None:
    return next((f for f, (field, _) in FACTORS.items() if list(changes) == [field]), None)


# ---- 1. the cache ------------------------------------------------------------------------------------------------


@dataclass
class Cache:
    loaded: object  # attach.LoadedModel
    data: object  # DataBundle, relabelled to the model's classes
    splits: dict  # split -> (vectors (N, L, H) float32, labels (N,))
    seconds: float  # how long building it took (NaN when that was not recorded)


def build_cache(settings: SearchSettings, work: Path, data_dir: str | None, device, log=print) -> Cache:
    """The frozen model, the data and every split's pooled vectors (from ``<work>/cache`` when it matches)."""
    import torch

    from .. import batching
    from ..attach import cache_pooled, load_model_to_attach, match_labels
    from ..config import ModelConfig
    from ..data import load_data
    from ..training import seed_everything

    seed_everything(settings.seed)
    data = load_data(settings.data, data_dir=data_dir, text_columns=settings.text_columns,
                     label_column=settings.label_column, seed=settings.seed, max_train_samples=settings.max_train_samples)
    if not data.labelled:
        raise DE3Error(f"{data.name}: has no labels; the search trains and scores exits on labelled rows")
    loaded = load_model_to_attach(settings.model)
    names, notes = match_labels(loaded, data)
    data = data.relabel(names)
    for note in notes:
        log(f"note: {note}")
    folder = work / "cache"
    key = settings.cache_key()
    try:
        same = read_json_object(folder / "key.json") == key
    except DE3Error:
        same = False
    splits = {}
    start = time.perf_counter()
    if same:
        try:
            for split in ("train", "validation", "test"):
                vectors, labels = np.load(folder / f"{split}.npy"), np.load(folder / f"{split}.labels.npy")
                if vectors.ndim != 3 or len(vectors) != len(labels) or len(labels) != len(data.split(split)):
                    raise ValueError(f"{split}: {vectors.shape} vectors, {labels.shape} labels")
                splits[split] = (vectors.astype(np.float32), labels)
        except (OSError, ValueError, EOFError) as exc:  # damaged or edited since: made again
            log(f"note: the cache in {folder} cannot be read ({one_line(exc)}); computing it again")
            same = False
    if same:
        log(f"cache: {folder} ({', '.join(f'{s} {len(v[1])}' for s, v in splits.items())} rows)")
        try:
            built = float(read_json_object(folder / "built.json")["seconds"])
        except (DE3Error, KeyError, TypeError, ValueError):
            built = math.nan
        return Cache(loaded, data, splits, built)
    config = ModelConfig(backbone=loaded.source, label_names=tuple(names), pooling=settings.pooling,
                         max_length=settings.max_length, final_head=loaded.activation)
    model = _fresh(config, loaded).to(device).eval()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "key.json").unlink(missing_ok=True)  # the old files are no longer the key's
    from tqdm.auto import tqdm

    encoded = {split: batching.encode_split(loaded.tokenizer, data.split(split), settings.max_length)
               for split in ("train", "validation", "test")}
    L, H = model.num_layers, model.backbone.config.hidden_size
    with tqdm(total=sum(len(e) for e in encoded.values()), desc="cache", unit="sample", file=sys.stderr,
              dynamic_ncols=True) as bar, torch.inference_mode():
        for split, enc in encoded.items():
            vectors = cache_pooled(model, loaded.tokenizer, enc, np.zeros((len(enc), L, H), np.float32),
                                   batch_size=64, bar=bar)
            _save(folder / f"{split}.npy", vectors.astype(np.float16))
            _save(folder / f"{split}.labels.npy", np.asarray(enc.labels))
            splits[split] = (vectors.astype(np.float16).astype(np.float32), enc.labels)
    with atomic_file(folder / "key.json") as tmp:
        Path(tmp).write_text(json.dumps(key, indent=1))
    seconds = time.perf_counter() - start
    with atomic_file(folder / "built.json") as tmp:
        Path(tmp).write_text(json.dumps({"seconds": round(seconds, 1), "device": str(device)}))
    log(f"cached {sum(len(v[1]) for v in splits.values())} rows x {L} layers in {seconds:.0f} s: {folder}")
    return Cache(loaded, data, splits, seconds)


def _save(path: Path, array: np.ndarray) -> None:
    with atomic_file(path) as tmp, open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a name
        np.save(f, array)


def _fresh(config, loaded):
    """``attach._build`` for another setting on the same frozen model: DE3Bert takes the backbone's pooler away
    after copying it into the exits, so it is put back for the next build."""
    from ..attach import _build

    pooler = getattr(loaded.encoder, "pooler", None)
    try:
        return _build(config, loaded)
    finally:
        if pooler is not None:
            loaded.encoder.pooler = pooler


# ---- 2-3. one run ------------------------------------------------------------------------------------------------


def _trace(model, vectors: np.ndarray, labels: np.ndarray, data, device):
    """A trace of cached rows: every exit's logits and prototype distances (attach's scoring of cached vectors),
    through the trace's own signal code."""
    import torch

    from ..attach import _batches
    from ..tracer import trace_from_outputs

    with torch.inference_mode():
        outs = list(_batches(model, vectors, device))
    logits = torch.cat([o.logits.float().cpu() for o in outs], 1).numpy()
    dists = torch.cat([o.distances.float().cpu() for o in outs], 1).numpy()
    return trace_from_outputs(logits, dists, labels, label_names=list(data.label_names), metric=data.metric)


def run_setting(cache: Cache, settings: SearchSettings, changes: dict, seed: int, device) -> dict:
    """Train one setting's heads with one seed on the cache, score validation and test; the run's numbers."""
    from .. import compare
    from ..attach import _head_threads, _train_heads
    from ..config import ModelConfig, TrainConfig
    from ..curves import frontier, frontier_auc
    from ..training import seed_everything
    from .study import signal_auroc

    model_changes = {k: v for k, v in changes.items() if k not in TRAIN_FIELDS}
    train_cfg = TrainConfig(epochs=int(changes.get("epochs", settings.epochs)), batch_size=settings.batch_size,
                            seed=seed)
    loaded, data = cache.loaded, cache.data
    config = ModelConfig(backbone=loaded.source, label_names=tuple(data.label_names), pooling=settings.pooling,
                         max_length=settings.max_length, final_head=loaded.activation, **model_changes)
    seed_everything(seed)
    model = _fresh(config, loaded).to(device).eval()
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = (cache.splits[s] for s in ("train", "validation", "test"))
    start = time.perf_counter()
    with _head_threads(train_cfg, device):
        state, best_epoch, _, history = _train_heads(model, train_cfg, train_x, train_y, val_x, val_y, data.metric,
                                                     device, log=lambda *_: None)
        model.load_state_dict({**model.state_dict(), **state})
        model.eval()
        val, test = _trace(model, val_x, val_y, data, device), _trace(model, test_x, test_y, data, device)
    seconds = time.perf_counter() - start
    comp = compare.compare(test, val, SPEEDUPS, n_boot=settings.n_boot, seed=settings.seed)
    vs = compare.matched_vs_baseline(test, comp.curves, SPEEDUPS, lambda_=comp.lambda_, baseline="entropy",
                                     policies=("de3",), n_boot=settings.n_boot, seed=settings.seed)
    table = comp.table.set_index("policy")
    auroc = signal_auroc(test, comp.lambda_).iloc[:-1]  # the internal layers: where an exit is decided
    de3_auc = frontier_auc(frontier(comp.curves, "de3", comp.lambda_))
    ent_auc = frontier_auc(frontier(comp.curves, "entropy"))
    return {
        "key": settings.run_key(), "changes": changes, "seed": seed, "lambda": comp.lambda_,
        "best_epoch": best_epoch, "epochs_run": len(history), "seconds": round(seconds, 1),
        "layers": [float(x) for x in comp.per_layer["metric"]],
        "de3": {str(s): _num(table.loc["de3", compare._speedup_column(s)]) for s in SPEEDUPS},
        "entropy": {str(s): _num(table.loc["entropy", compare._speedup_column(s)]) for s in SPEEDUPS},
        "auc": {"de3": _num(de3_auc), "entropy": _num(ent_auc)},
        "vs": {str(r.speedup): {"diff": _num(r.diff), "low": _num(r.low), "high": _num(r.high), "verdict": r.verdict}
               for r in vs.itertuples()},
        "auroc": {name: _num(auroc[name].mean()) for name in ("entropy", "DR", "EDR")},
        "n_test": int(test.num_samples),
    }


def _num(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


RUN_FIELDS = {"key", "changes", "seed", "lambda", "seconds", "layers", "auc", "vs", "auroc"}  # what the report reads


def _run_file(work: Path, name: str, seed: int) -> Path:
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return work / "runs" / f"{digest}-seed-{seed}.json"


def run_all(cache: Cache, settings: SearchSettings, work: Path, grid: dict[str, dict], device, log=print) -> dict:
    """Every (setting, seed) of ``grid`` not yet in ``<work>/runs`` with the same key: name -> [run per seed]."""
    out = {}
    todo = [(name, s) for name in grid for s in settings.seed_list]
    for i, (name, seed) in enumerate(todo, 1):
        path = _run_file(work, name, seed)
        record = None
        if path.is_file():
            try:
                record = read_json_object(path)
            except DE3Error:
                record = None
            if record and (record.get("key") != settings.run_key() or record.get("changes") != _jsonable(grid[name])
                           or not RUN_FIELDS <= set(record)):  # another setting's, or damaged: run it again
                record = None
        if record is None:
            began = time.perf_counter()
            record = run_setting(cache, settings, grid[name], seed, device)
            record["wall_seconds"] = round(time.perf_counter() - began, 1)  # training, scoring, λ, bootstraps
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(path) as tmp:
                Path(tmp).write_text(json.dumps(record, indent=1))
            vs = record["vs"]
            log(f"[{i}/{len(todo)}] {name} seed {seed}: "
                f"λ {record['lambda']:g}, DE3 − entropy at 1.5/2/3x "
                + " / ".join("–" if vs[str(s)]["diff"] is None else f"{100 * vs[str(s)]['diff']:+.2f}" for s in SPEEDUPS)
                + f"  ({record['seconds']:.0f} s)")
        out.setdefault(name, []).append(record)
    return out


def _jsonable(changes: dict) -> dict:
    return json.loads(json.dumps(changes))


# ---- 4. summary and report ---------------------------------------------------------------------------------------


def summarise(runs: dict[str, list[dict]]) -> pd.DataFrame:
    """One row per setting: means and t-intervals over seeds of the margin at each speed-up and of the AUC margin,
    DE3's and the entropy's AUC, the signals' AUROC, the verdict counts."""
    rows = []
    for name, records in runs.items():
        row = {"setting": name, "changes": records[0]["changes"], "factor": factor_of(records[0]["changes"]) or
               ("reference" if name == "default" else "combined"), "n": len(records),
               "lambdas": [r["lambda"] for r in records], "seconds": float(np.mean([r["seconds"] for r in records])),
               "total_seconds": float(sum(r.get("wall_seconds", r["seconds"]) for r in records)),
               "untimed": sum("wall_seconds" not in r for r in records)}
        for s in SPEEDUPS:
            row[f"diff_{s:g}"] = seed_interval([_nan(r["vs"][str(s)]["diff"]) for r in records])
            words = [VERDICTS[r["vs"][str(s)]["verdict"]] for r in records]
            row[f"verdicts_{s:g}"] = {w: words.count(w) for w in ("better", "worse", "no difference", "unreachable")}
        row["diff_auc"] = seed_interval([_nan(r["auc"]["de3"]) - _nan(r["auc"]["entropy"]) for r in records])
        row["de3_auc"] = seed_interval([_nan(r["auc"]["de3"]) for r in records])
        row["entropy_auc"] = seed_interval([_nan(r["auc"]["entropy"]) for r in records])
        row["last_layer"] = seed_interval([r["layers"][-1] for r in records])
        for sig in ("entropy", "DR", "EDR"):
            row[f"auroc_{sig}"] = float(np.nanmean([_nan(r["auroc"][sig]) for r in records]))
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["rank_key"] = [d["mean"] for d in frame["diff_auc"]]
    return frame.sort_values("rank_key", ascending=False, kind="stable").reset_index(drop=True)


def _nan(x) -> float:
    return math.nan if x is None else float(x)


def combined_setting(summary: pd.DataFrame) -> dict:
    """Every factor's level with the best mean AUC margin, where it beats the default's: their changes together."""
    base = summary.set_index("setting").loc["default", "rank_key"]
    changes = {}
    for factor, (field, _) in FACTORS.items():
        rows = summary[summary["factor"] == factor]
        if len(rows):
            top = rows.iloc[int(np.argmax(rows["rank_key"].to_numpy()))]
            if top["rank_key"] > base:
                changes.update(top["changes"])
    return changes


def significant(interval: dict) -> bool:
    return interval["n"] >= 2 and interval["low"] > 0


def recommend(summary: pd.DataFrame) -> dict:
    """The setting to recommend: the best AUC margin whose t-interval over seeds lies above 0 and whose DE3 AUC is
    no lower than the default's (a margin won by making the entropy worse is no gain); else the default."""
    base = summary.set_index("setting").loc["default"]
    for row in summary.itertuples():
        if significant(row.diff_auc) and row.de3_auc["mean"] >= base["de3_auc"]["mean"]:
            return {"setting": row.setting, "changes": row.changes, "significant": True}
    return {"setting": "default", "changes": {}, "significant": False}


def _plot(summary: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = summary.iloc[::-1]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 0.35 * len(frame) + 1.6), dpi=110, sharey=True)
    y = np.arange(len(frame))
    for ax, col, label in ((ax1, "diff_auc", "DE3 − entropy, AUC 1–3× (points)"),):
        mean = np.array([100 * d["mean"] for d in frame[col]])
        low = np.array([100 * d["low"] for d in frame[col]])
        high = np.array([100 * d["high"] for d in frame[col]])
        colors = ["tab:green" if lo > 0 else "tab:red" if hi < 0 else "tab:gray" for lo, hi in zip(low, high)]
        for yi, m, lo, hi, c in zip(y, mean, low, high, colors):
            if np.isfinite(lo):
                ax.errorbar([m], [yi], xerr=[[m - lo], [hi - m]], fmt="none", ecolor=c, capsize=3)
        ax.scatter(mean, y, c=colors, zorder=3)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlabel(label)
    de3 = np.array([100 * d["mean"] for d in frame["de3_auc"]])
    ent = np.array([100 * d["mean"] for d in frame["entropy_auc"]])
    ax2.scatter(de3, y, marker="o", label="DE3 (EDR)", zorder=3)
    ax2.scatter(ent, y, marker="x", label="entropy", zorder=3)
    ax2.set_xlabel("AUC 1–3×, mean over seeds (%)")
    ax2.legend(fontsize=8)
    ax1.set_yticks(y, frame["setting"])
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _verdict_text(counts: dict) -> str:
    return " / ".join(str(counts[w]) for w in ("better", "worse", "no difference"))


def report(summary: pd.DataFrame, settings: SearchSettings, cache: Cache, out: Path, *, command: str,
           seconds: float, device) -> str:
    import torch

    from .bench import machine as describe_machine

    machine = describe_machine()
    words = data_words(settings.data)
    rec = recommend(summary)
    base = summary.set_index("setting").loc["default"]
    best = summary.iloc[0]
    n_seeds = settings.seeds
    _plot(summary, out.with_suffix(".png"), f"{words.title}: DE3 − entropy by setting (frozen {settings.model}, "
          f"{n_seeds} seeds, mean and 95 % t-interval)")
    train_rows, val_rows, test_rows = (len(cache.splits[s][1]) for s in ("train", "validation", "test"))
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# Design search on {words.title}: when does the distance help? ({n_seeds} seeds, frozen {settings.model})", "",
             f"Generated by `{command}` on {when}. Every number below is computed by that command from the runs it "
             "saves in its work folder; re-running it reuses them and rewrites this file (the runs' own times are in "
             "Setup).", "",
             "## How it was measured", "",
             f"DE3 exits attached to the frozen `{settings.model}` (`analysis attach`'s method): every layer's pooled "
             f"vector ({settings.pooling} pooling, max length {settings.max_length}) of {train_rows:,} training, "
             f"{val_rows:,} validation and {test_rows:,} {words.adj} {words.units} computed once, then each "
             f"setting's heads, prototypical networks and prototypes trained on those vectors ({settings.epochs} "
             f"epochs unless the setting says otherwise, batch {settings.batch_size}, AdamW lr {TrainConfig().lr_heads:g}, best epoch by "
             f"validation) with seeds {', '.join(map(str, settings.seed_list))} (initialisation, dropout, batch order; "
             "the rows are the same for every run). λ is chosen per run on the validation split (never on "
             f"{words.split}); the numbers are on {words.split_long} ({test_rows:,} {words.units}). "
             "**margin** = DE3 (EDR) minus DeeBERT's entropy on the same model at matched speed-up (each at its best "
             "threshold with speed-up ≥ s), in points; AUC = the mean of the accuracy-vs-speed-up frontier over 1–3×. "
             "Intervals: mean ± t(0.975, n − 1)·sd/√n over seeds. Verdicts: each seed's paired bootstrap "
             f"({settings.n_boot:,} resamples of the {words.units}; better / worse when its 95 % interval excludes 0).",
             "",
             "Settings: the spec's defaults (`default`), one change at a time from them, and `combined` (every "
             "factor's best level that beat the default's margin, together).", "",
             "## Every setting, best AUC margin first", "",
             f"![margin by setting]({out.with_suffix('.png').name})", ""]
    table = []
    for row in summary.to_dict("records"):
        table.append({
            "setting": f"`{row['setting']}`",
            "factor": f"combined: {setting_name(row['changes'])}" if row["factor"] == "combined" else row["factor"],
            **{f"margin {s:g}×": _fmt_interval(row[f"diff_{s:g}"], n_seeds, signed=True) for s in SPEEDUPS},
            "margin AUC": _fmt_interval(row["diff_auc"], n_seeds, signed=True),
            "DE3 AUC": _fmt(row["de3_auc"]["mean"]), "entropy AUC": _fmt(row["entropy_auc"]["mean"]),
            "last exit": _fmt(row["last_layer"]["mean"]),
            "verdicts 2× (b/w/nd)": _verdict_text(row["verdicts_2"]),
            "AUROC ent / DR / EDR": f"{row['auroc_entropy']:.3f} / {row['auroc_DR']:.3f} / {row['auroc_EDR']:.3f}",
            "λ per seed": ", ".join(f"{x:g}" for x in row["lambdas"]),
        })
    lines += [_md_table(pd.DataFrame(table)), "",
              "Columns: margin at 1.5×, 2×, 3× and over the AUC (points, mean [95 % t-interval]); DE3's and the "
              "entropy's AUC and the last exit's accuracy (mean over seeds, %); how many seeds' paired bootstraps "
              "at 2× call DE3 better / worse / no different; the AUROC of each signal for right-vs-wrong, averaged "
              "over the internal layers and the seeds (0.5 = no information, higher = better separation).", ""]
    sig = [r for r in summary.itertuples() if significant(r.diff_auc)]
    worse = [r for r in summary.itertuples() if r.diff_auc["n"] >= 2 and r.diff_auc["high"] < 0]
    lines += ["## Findings", ""]
    lines.append(f"- Default (spec §3): margin over the AUC {_fmt_interval(base['diff_auc'], n_seeds, signed=True)}; "
                 f"DE3 AUC {_fmt(base['de3_auc']['mean'])} vs entropy {_fmt(base['entropy_auc']['mean'])}. "
                 f"DR separates right from wrong {'better' if base['auroc_DR'] > base['auroc_entropy'] else 'worse'} "
                 f"than the entropy (AUROC {base['auroc_DR']:.3f} vs {base['auroc_entropy']:.3f}).")
    lines.append(f"- Best margin: `{best['setting']}`, {_fmt_interval(best['diff_auc'], n_seeds, signed=True)} over "
                 f"the AUC (DE3 AUC {_fmt(best['de3_auc']['mean'])}, entropy {_fmt(best['entropy_auc']['mean'])}).")
    if sig:
        lines.append("- Margins whose interval over seeds lies above 0: " + ", ".join(
            f"`{r.setting}` ({_fmt_interval(r.diff_auc, n_seeds, signed=True)})" for r in sig) + f". With "
            f"{len(summary)} settings compared, each interval at 95 %, about {len(summary) / 20:.1f} would exclude 0 by "
            "chance alone: a setting found here is a candidate, confirmed only end to end on fresh training runs.")
    else:
        lines.append("- No setting's AUC margin has an interval over seeds above 0: on this backbone and data no "
                     "setting makes DE3 reliably better than the entropy.")
    if worse:
        lines.append("- Margins whose interval lies below 0 (DE3 reliably worse): " + ", ".join(
            f"`{r.setting}` ({_fmt_interval(r.diff_auc, n_seeds, signed=True)})" for r in worse) + ".")
    verdicts = {w: sum(r[f"verdicts_{s:g}"][w] for r in summary.to_dict("records") for s in SPEEDUPS)
                for w in ("better", "worse", "no difference")}
    lines.append(f"- Per-seed paired bootstraps on {words.split} (every setting, seed and speed-up): "
                 f"{verdicts['better']} better, {verdicts['worse']} worse, {verdicts['no difference']} no difference "
                 f"for DE3 against the entropy.")
    better_dr = [r.setting for r in summary.itertuples() if r.auroc_DR > r.auroc_entropy]
    lines.append(f"- Settings where DR separates right from wrong better than the entropy: "
                 f"{', '.join(f'`{s}`' for s in better_dr) if better_dr else 'none'}.")
    if rec["significant"]:
        lines.append(f"- **Recommendation**: `{rec['setting']}` — its margin is above 0 over seeds and DE3's own AUC "
                     "is no lower than the default's. Confirm it end to end before changing the defaults "
                     f"(`python -m analysis study --data {settings.data}"
                     + (" --data-dir <GLUE folder>" if words.glue else "")
                     + f" --define best {setting_name(rec['changes'])} --variants de3,best --seeds 3`).")
    else:
        lines.append("- **Recommendation**: keep the defaults — no setting gives DE3 a margin above 0 over seeds "
                     "without lowering DE3's own AUC.")
    lines += ["", "## Setup", "", _md_table(pd.DataFrame([
        {"": "model", " ": f"{settings.model} (frozen; {cache.loaded.architecture})"},
        {"": "data", " ": f"{words.title}: {train_rows:,} train"
                          + (" (a seeded subset)" if train_rows == settings.max_train_samples else "")
                          + f" / {val_rows:,} validation / {test_rows:,} {words.adj}"},
        {"": "settings × seeds", " ": f"{len(summary)} × {n_seeds}; a run's heads train and score in "
                                      f"{summary['seconds'].mean():.0f} s on average"},
        {"": "compute", " ": f"the runs: {summary['total_seconds'].sum() / 60:.1f} min in all, each timed when it ran"
                            + (f" ({int(summary['untimed'].sum())} runs saved before wall times were kept count their "
                               "training and scoring only)" if summary["untimed"].sum() else "") + "; the cache: "
                            + ("not recorded" if math.isnan(cache.seconds) else f"{cache.seconds:.0f} s")},
        {"": "hardware", " ": f"{machine['cpu']}, {machine['cpu_count']} cores, device {device}"},
        {"": "software", " ": f"torch {torch.__version__}, Python {platform.python_version()}"},
        {"": "run time", " ": f"{seconds / 60:.1f} min from this command's start to this report (saved runs and "
                             "the cache are reused when they match)"},
    ]).rename(columns={"": "what", " ": "value"})), ""]
    return "\n".join(lines)


# ---- the command -------------------------------------------------------------------------------------------------


def register(subparsers) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = subparsers.add_parser("search", help="which DE3 settings make the distance help: exits on a frozen backbone, "
                              "many settings x seeds, in minutes", formatter_class=fmt,
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=SearchSettings.data, help="glue/<task> (with --data-dir), bbc, or a labelled file")
    p.add_argument("--data-dir", help="for glue/<task>: a folder in GLUE's TSV layout (e.g. ../shared/data/glue)")
    add_column_args(p)
    p.add_argument("--model", default=SearchSettings.model, help="the frozen model: minilm-l6, a folder or a hub id")
    p.add_argument("--work", help="folder for the cache and the runs (unset: runs/search-<name of --data>)")
    p.add_argument("--out", help="Markdown report, figure beside it (unset: docs/results/<name>-search.md)")
    p.add_argument("--max-train-samples", type=flag(RUN["max_train_samples"]), default=DEFAULT_MAX_TRAIN,
                   help="train every setting on a seeded subset of this many training rows")
    p.add_argument("--all-train-rows", action="store_true", help="train on every training row (slower per setting)")
    p.add_argument("--epochs", type=flag(TRAIN["epochs"]), default=DEFAULT_EPOCHS, help="the default training length")
    p.add_argument("--seeds", type=flag(RUN["seeds"]), default=SearchSettings.seeds, help="seeds per setting")
    p.add_argument("--no-combined", action="store_true", help="skip the combined setting")
    p.add_argument("--only", help="comma-separated setting names to run (e.g. default,alpha=3); unset: all")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(handler=cmd_search)


def cmd_search(args) -> int:
    from ..backbones import pick_device

    check_columns(args.data, args.text_columns, args.label_column)
    settings = SearchSettings(data=args.data, model=args.model,
                              text_columns=tuple(args.text_columns) if args.text_columns else None,
                              label_column=args.label_column,
                              max_train_samples=None if args.all_train_rows else args.max_train_samples,
                              epochs=args.epochs, seeds=args.seeds)
    name = short_name(args.data)
    work = Path(args.work or f"runs/search-{name}")
    out = Path(args.out or f"docs/results/{name}-search.md")
    grid = one_at_a_time()
    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in grid and s != "combined"]
        if unknown:
            raise DE3Error(f"--only: unknown setting(s) {', '.join(unknown)}; known: {', '.join(grid)}, combined")
        grid = {k: v for k, v in grid.items() if k in wanted or k == "default"}
    check_writable(work, what="--work")
    inputs = [p for p in (args.data_dir, args.data if spec_kind(args.data) == "file" else None) if p]
    with claim_output(out, inputs=inputs, kind="file", command="analysis search"), \
            claim_output(out.with_suffix(".png"), inputs=inputs, kind="file", what="the figure", command="analysis search"):
        start = time.perf_counter()
        device = pick_device(args.device)
        cache = build_cache(settings, work, args.data_dir, device)
        runs = run_all(cache, settings, work, grid, device)
        if not args.no_combined and (not args.only or "combined" in args.only):
            changes = combined_setting(summarise(runs))
            if len(changes) >= 2:  # one change alone is already in the grid
                runs.update(run_all(cache, settings, work, {"combined": changes}, device))
        summary = summarise(runs)
        command = "python -m analysis search" + "".join(
            f" {flag_}" + (f" {value}" if value != "" else "") for flag_, value in (
                ("--data", args.data if args.data != SearchSettings.data else None),
                ("--data-dir", "<GLUE folder>" if args.data_dir and data_words(args.data).glue else args.data_dir),
                *(("--text-column", c) for c in args.text_columns or ()),
                ("--label-column", args.label_column),
                ("--model", args.model if args.model != SearchSettings.model else None),
                ("--max-train-samples", args.max_train_samples if args.max_train_samples != DEFAULT_MAX_TRAIN
                 and not args.all_train_rows else None),
                ("--all-train-rows", "" if args.all_train_rows else None),
                ("--epochs", args.epochs if args.epochs != DEFAULT_EPOCHS else None),
                ("--seeds", args.seeds if args.seeds != SearchSettings.seeds else None),
                ("--only", args.only), ("--no-combined", "" if args.no_combined else None),
                ("--work", work), ("--out", out)) if value is not None)
        text = report(summary, settings, cache, out, command=command, seconds=time.perf_counter() - start,
                      device=device)
        with atomic_file(out) as tmp:
            Path(tmp).write_text(text)
    print(f"search done in {(time.perf_counter() - start) / 60:.1f} min: {out}")
    return 0
