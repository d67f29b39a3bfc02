"""A real early-exit run: the backbone layer by layer, each sample leaving at its first passing exit.

    embeddings once, then for m = 1..L:
        run layer m on the rows still active                     hidden (B_m, T_m, H)
        exit head m -> logits, embedding -> prototype distances  (B_m, K)
        signals (entropy, max_prob, pred, r1, r2, dr), the same functions the trace uses
        exit_mask(policy, history of the active rows)            the same causal rule the simulation uses
        rows whose test passes at m < L leave with pred_m and are dropped from the batch (index_select);
        at m = L everyone left answers

Dropping rows is what makes exits pay off at batch size > 1: a batch shrinks as it goes deeper, and trailing
columns that are padding for every row still active are cut too. Because the rule is ``policies.exit_mask``
itself, the engine's exit layers and answers equal ``decide_exits`` on a trace of the same samples — up to
~1e-6 float differences between a padded batch and a lone sample, which matter only when a threshold sits
exactly on a signal value (``safe_threshold`` moves it off).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from . import batching
from .cost import layer_speedup
from .errors import DE3Error
from .model import check_positions
from .policies import ExitPolicy, exit_mask, threshold_signal
from .signals import exit_signals

# Encoders whose forward is embeddings -> create_bidirectional_mask -> encoder.layer[i](hidden, mask), the
# steps this engine replays one layer at a time (MiniLM checkpoints are "bert").
SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "electra")
SIGNALS = ("pred", "entropy", "max_prob", "r1", "r2", "dr")  # recorded per layer: ExitSignals fields = trace columns
INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class EngineResult:
    """What an early-exit run returns. N = samples, L = layers.

    ``signals[name]`` is (N, L): the value at every layer a sample went through, NaN (``pred``: -1) after it left.
    """

    exit_layer: np.ndarray  # (N,) 1-based layer each sample left at
    pred: np.ndarray  # (N,) the answer: that layer's prediction
    signals: dict[str, np.ndarray]  # (N, L) per-layer signals computed so far
    layers_computed: int  # backbone layers actually run, summed over samples (= exit_layer.sum())
    num_layers: int

    @property
    def speedup(self) -> float:
        """Layer-count speed-up L / mean exit layer (spec §6)."""
        return layer_speedup(self.exit_layer, self.num_layers)


class EarlyExitEngine:
    """Early-exit inference for a ``DE3Bert`` on its own device. The policy is an argument of ``run``.

    Parameters
    ----------
    model : DE3Bert whose backbone is a BERT-family encoder (see ``SUPPORTED_MODEL_TYPES``); put in eval mode.
    tokenizer : its tokenizer.
    """

    def __init__(self, model, tokenizer):
        backbone = model.backbone
        model_type = getattr(backbone.config, "model_type", type(backbone).__name__)
        if (model_type not in SUPPORTED_MODEL_TYPES or getattr(backbone.config, "is_decoder", False)
                or not hasattr(backbone, "embeddings") or not hasattr(getattr(backbone, "encoder", None), "layer")):
            raise DE3Error(f"the early-exit engine runs BERT-family encoders ({', '.join(SUPPORTED_MODEL_TYPES)}) layer "
                           f"by layer; this backbone is {model_type!r} ({type(backbone).__name__}). Simulate exits on a "
                           "trace with decide_exits instead")
        from transformers.masking_utils import create_bidirectional_mask

        self.model, self.tokenizer = model.eval(), tokenizer
        self.backbone, self.layers = backbone, list(backbone.encoder.layer)
        self.heads, self.bank = list(model.heads), model.bank
        self.num_layers = len(self.layers)
        self._create_mask = create_bidirectional_mask

    @property
    def device(self) -> torch.device:
        return self.model.device

    def run(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None, *, policy: ExitPolicy,
            batch_size: int = 1) -> EngineResult:
        """Tokenise ``texts`` (and pairs), run them in length-sorted batches of ``batch_size``, and return every
        sample's exit layer and answer in the order given."""
        if len(texts) == 0:
            raise DE3Error("no texts to run")
        if batch_size < 1:
            raise DE3Error(f"batch_size must be >= 1, got {batch_size}")
        enc = batching.encode(self.tokenizer, texts, text_pairs, np.zeros(len(texts), dtype=np.int64),
                              self.model.config.max_length)
        batches = ((idx, batching.collate(self.tokenizer, enc, idx, self.device))
                   for idx in batching.eval_order(enc, batch_size))
        return self.run_batches(batches, len(texts), policy=policy)

    def run_batches(self, batches, num_samples: int, *, policy: ExitPolicy) -> EngineResult:
        """Run already collated batches: an iterable of (sample indices (B,), inputs dict of (B, T) tensors)."""
        _check_policy(policy)
        L = self.num_layers
        signals = {name: np.full((num_samples, L), np.nan, dtype=np.float32) for name in SIGNALS}
        signals["pred"] = np.full((num_samples, L), -1, dtype=np.int64)
        exit_layer = np.zeros(num_samples, dtype=np.int64)
        for idx, inputs in batches:
            sig, layers = self.run_batch(inputs, policy=policy)
            for name in SIGNALS:
                signals[name][idx] = sig[name]
            exit_layer[idx] = layers
        if (exit_layer == 0).any():
            raise DE3Error(f"{int((exit_layer == 0).sum())} of {num_samples} samples were in no batch")
        pred = signals["pred"][np.arange(num_samples), exit_layer - 1]
        return EngineResult(exit_layer, pred, signals, int(exit_layer.sum()), L)

    @torch.inference_mode()
    def run_batch(self, inputs: Mapping[str, torch.Tensor], *, policy: ExitPolicy) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """One padded batch: per-layer signals {name: (B, L)} and exit layers (B,) 1-based."""
        _check_policy(policy)
        L, needed = self.num_layers, ("pred", *policy.spec.inputs)
        input_ids = inputs["input_ids"]
        batch = input_ids.shape[0]
        mask2d = inputs.get("attention_mask")
        if mask2d is None:
            mask2d = torch.ones_like(input_ids)
        extra = {"token_type_ids": inputs["token_type_ids"]} if inputs.get("token_type_ids") is not None else {}
        check_positions(self.model, input_ids.shape[1])

        hidden = self.backbone.embeddings(input_ids=input_ids, **extra)  # (B, T, H)
        if hasattr(self.backbone, "embeddings_project"):  # ELECTRA: embedding size != hidden size
            hidden = self.backbone.embeddings_project(hidden)
        attn = self._create_mask(config=self.backbone.config, inputs_embeds=hidden, attention_mask=mask2d)
        # last real token + 1 per row, to cut columns that are padding for every row still active
        ends = (mask2d.shape[1] - mask2d.flip(1).to(torch.int8).argmax(1)).cpu().numpy()  # (B,)

        history = np.full((len(SIGNALS), batch, L), np.nan, dtype=np.float32)  # rows follow SIGNALS
        active = np.arange(batch)  # batch rows still computing
        exit_layer = np.full(batch, L, dtype=np.int64)
        for m in range(L):
            out = self.layers[m](hidden, attn)
            hidden = out[0] if isinstance(out, tuple) else out  # (B_m, T_m, H)
            logits, emb = self.heads[m](hidden, mask2d)  # (B_m, K), (B_m, d_p)
            s = exit_signals(logits[None], self.bank.distances(emb, layer=m)[None])  # each (1, B_m)
            packed = torch.cat([getattr(s, name).float() for name in SIGNALS]).cpu().numpy()  # (6, B_m), by name
            history[:, active, m] = packed
            if m == L - 1:
                break  # the final classifier answers whoever is left
            past = {name: history[SIGNALS.index(name), active, : m + 1] for name in needed}  # (B_m, m+1) each
            past["pred"] = past["pred"].astype(np.int64)
            passed = np.asarray(exit_mask(policy, past))[:, -1]  # (B_m,) this layer's test
            if not passed.any():
                continue
            exit_layer[active[passed]] = m + 1
            stay = np.flatnonzero(~passed)
            if len(stay) == 0:
                break
            active = active[stay]
            width = int(ends[active].max())
            keep = torch.from_numpy(stay).to(hidden.device)
            hidden = hidden.index_select(0, keep)[:, :width].contiguous()
            mask2d = mask2d.index_select(0, keep)[:, :width]
            attn = self._create_mask(config=self.backbone.config, inputs_embeds=hidden, attention_mask=mask2d)

        signals = {name: history[i] for i, name in enumerate(SIGNALS)}
        pred = signals["pred"]
        signals["pred"] = np.where(np.isnan(pred), -1, pred).astype(np.int64)
        return signals, exit_layer


def _check_policy(policy: ExitPolicy) -> None:
    if not isinstance(policy, ExitPolicy):
        raise DE3Error(f"policy must be an ExitPolicy, got {type(policy).__name__}")
    spec = policy.spec
    why = ("needs each sample's label" if spec.needs_labels else "is declared simulation-only" if not spec.in_engine
           else None)
    unrecorded = [c for c in spec.inputs if c not in SIGNALS]
    if why is None and unrecorded:
        why = f"reads {', '.join(unrecorded)}, which a real run does not compute"
    if why is not None:
        raise DE3Error(f"the {policy.name} policy {why}, so it exists only in simulation "
                       "(decide_exits on a trace); pick another policy for a real early-exit run")


def threshold_values(signals: Mapping[str, np.ndarray], policy: ExitPolicy) -> np.ndarray:
    """The (N, L) values ``policy``'s threshold τ is compared with (``policies.threshold_signal``); for choosing τ
    from a trace (``trace.wide``). Raises for policies without a threshold."""
    values = threshold_signal(signals, policy)
    if values is None:
        raise DE3Error(f"policy {policy.name!r} has no threshold")
    return values


def safe_threshold(values, target: float) -> float:
    """Move a threshold off the recorded signal values: the midpoint of the gap between the neighbouring values
    around ``target`` (the largest value below it and the smallest at or above it).

    A padded batch and a lone sample give signals that differ by ~1e-6, so a τ lying exactly on (or within
    1e-6 of) some sample's value could send that sample out at a different layer in a real run than in the
    simulation. With τ in the middle of a gap, every value strictly below ``target`` stays below τ and every
    other value stays above, with as much room as the data allow.

    Parameters
    ----------
    values : array-like of recorded signal values (any shape; NaN ignored), e.g. ``threshold_values(...)``.
    target : the threshold wanted. ±inf is returned unchanged.
    """
    target = float(target)
    if not np.isfinite(target):
        return target
    v = np.unique(np.asarray(values, dtype=np.float64).ravel())
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return target
    i = int(np.searchsorted(v, target, side="left"))  # v[i - 1] < target <= v[i]
    spacing = float(v[-1] - v[0]) / len(v) if len(v) > 1 else 1.0
    spacing = spacing if spacing > 0 else 1.0
    if i == 0:
        return float(v[0] - spacing)
    if i == len(v):
        return float(v[-1] + spacing)
    return float((v[i - 1] + v[i]) / 2)
