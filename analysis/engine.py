"""A real early-exit run: the backbone layer by layer, each sample leaving at its first passing exit.

    embeddings once, then for m = 1..L:
        run layer m on the rows still active                     hidden (B_m, T_m, H)
        exit head m -> logits (and, if the policy reads DR, r1 or r2, the prototype embedding and its distances)
        only the signals the policy reads (``PolicySpec.inputs``) and ``pred``: the same formulas the trace uses
        exit_mask(policy, history of the active rows)            the same causal rule the simulation uses
        rows whose test passes at m < L leave with pred_m and are dropped from the batch (index_select);
        at m = L everyone left answers

Dropping rows is what makes exits pay off at batch size > 1: a batch shrinks as it goes deeper, and trailing
columns that are padding for every row still active are cut too. Because the rule is ``policies.exit_mask``
itself, the engine's exit layers and answers equal ``decide_exits`` on a trace of the same samples — up to
~1e-6 float differences between a padded batch and a lone sample, which matter only when a threshold sits
exactly on a signal value (``safe_threshold`` moves it off).

What a layer costs beyond the layer itself is kept near zero:

- no exit head at layers where nothing can leave and the policy reads no history (``static`` before its layer), no
  exit test before ``PolicySpec.first_layer`` (PABEE before ``patience`` + 1 layers), no distances when the policy
  reads no DR, r1 or r2;
- the batch's pooling mask is made once (again only when rows leave), and a plain ``ExitHead`` is applied as its
  operations (the same numbers as calling the module, without the module calls);
- on a CPU the signals and the test run in NumPy on the tensors' own memory (no copy; a NumPy call on a few numbers
  costs a third of a torch call); on an accelerator they run in torch on the device (the registry's tests are
  array-neutral), and the test's (B_m,) answer is the one device-to-host transfer of a layer;
- signals are recorded only when asked for (``record=True``: the playground); otherwise only each row's answer is
  kept, and read from the device once per batch.

``compile=True`` wraps each layer and exit head in ``torch.compile`` (dynamic in batch and length; on an accelerator
the signal computation and the exit test too: the test is compiled for each policy setting it meets, so a compiled
engine suits a fixed deployment setting rather than a slider).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from . import batching
from .cost import layer_speedup
from .errors import DE3Error
from .model import ACTIVATIONS, ExitHead, check_positions
from .policies import ExitPolicy, exit_mask, threshold_signal
from .signals import EPS, distance_ratio, normalized_entropy, pairwise_distance, r1_r2

# Encoders whose forward is embeddings -> create_bidirectional_mask -> encoder.layer[i](hidden, mask), the
# steps this engine replays one layer at a time (MiniLM checkpoints are "bert").
SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "electra")
SIGNALS = ("pred", "entropy", "max_prob", "r1", "r2", "dr")  # recorded per layer: ExitSignals fields = trace columns
DISTANCE_SIGNALS = frozenset({"r1", "r2", "dr"})  # the ones that need the prototype embedding and its distances
INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class EngineResult:
    """What an early-exit run returns. N = samples, L = layers.

    ``signals`` is None unless the run was asked to record them (``record=True``); then ``signals[name]`` is (N, L):
    the value at every layer a sample went through, NaN (``pred``: -1) after it left.
    """

    exit_layer: np.ndarray  # (N,) 1-based layer each sample left at
    pred: np.ndarray  # (N,) the answer: that layer's prediction
    signals: dict[str, np.ndarray] | None  # (N, L) per-layer signals computed, when recorded
    layers_computed: int  # backbone layers actually run, summed over samples (= exit_layer.sum())
    num_layers: int

    @property
    def speedup(self) -> float:
        """Layer-count speed-up L / mean exit layer (spec §6)."""
        return layer_speedup(self.exit_layer, self.num_layers)


class BatchResult(NamedTuple):
    """One padded batch's exits. B = rows."""

    exit_layer: np.ndarray  # (B,) 1-based
    pred: np.ndarray  # (B,) the answer at that layer
    signals: dict[str, np.ndarray] | None  # (B, L) each, when recorded


class EarlyExitEngine:
    """Early-exit inference for a ``DE3Bert`` on its own device. The policy is an argument of ``run``.

    Parameters
    ----------
    model : DE3Bert whose backbone is a BERT-family encoder (see ``SUPPORTED_MODEL_TYPES``); put in eval mode.
    tokenizer : its tokenizer.
    compile : wrap every layer and exit head in ``torch.compile(dynamic=True)`` (True: the default backend; a string:
        that backend, e.g. "eager" to check the graphs without code generation). The first batches of each shape
        kind (one row, several rows, with or without padding) pay the compilation.
    host_math : compute the signals and the exit test in NumPy on the host (True) or in torch on the model's device
        (False). Default: NumPy when the model is on the CPU (same memory, cheaper calls), torch elsewhere.
    """

    def __init__(self, model, tokenizer, *, compile: bool | str = False, host_math: bool | None = None):
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
        self.host_math = host_math
        self.compile = compile
        self._create_mask = create_bidirectional_mask
        self._mask_skip_flag = "allow_is_bidirectional_skip" in inspect.signature(create_bidirectional_mask).parameters
        self._fast = [_plain_head(head) for head in self.heads]  # heads applied as their operations
        if compile:
            backend = "inductor" if compile is True else str(compile)
            self._layer_fns = [torch.compile(layer, dynamic=True, backend=backend) for layer in self.layers]
            self._head_fns = [torch.compile(head, dynamic=True, backend=backend) for head in self.heads]
            self._device_signals = torch.compile(device_signals, dynamic=True, backend=backend)
            self._device_test = torch.compile(_layer_test, dynamic=True, backend=backend)
        else:
            self._layer_fns, self._head_fns = self.layers, None
            self._device_signals, self._device_test = device_signals, _layer_test
        self._torch_tests: dict[str, bool] = {}  # policy name -> its registry test runs on tensors

    @property
    def device(self) -> torch.device:
        return self.model.device

    def run(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None, *, policy: ExitPolicy,
            batch_size: int = 1, record: bool = False) -> EngineResult:
        """Tokenise ``texts`` (and pairs), run them in length-sorted batches of ``batch_size``, and return every
        sample's exit layer and answer in the order given (and, with ``record``, every signal computed)."""
        if len(texts) == 0:
            raise DE3Error("no texts to run")
        if batch_size < 1:
            raise DE3Error(f"batch_size must be >= 1, got {batch_size}")
        enc = batching.encode(self.tokenizer, texts, text_pairs, np.zeros(len(texts), dtype=np.int64),
                              self.model.config.max_length)
        batches = ((idx, batching.collate(self.tokenizer, enc, idx, self.device))
                   for idx in batching.eval_order(enc, batch_size))
        return self.run_batches(batches, len(texts), policy=policy, record=record)

    def run_batches(self, batches, num_samples: int, *, policy: ExitPolicy, record: bool = False) -> EngineResult:
        """Run already collated batches: an iterable of (sample indices (B,), inputs dict of (B, T) tensors)."""
        _check_policy(policy)
        L = self.num_layers
        signals = None
        if record:
            signals = {name: np.full((num_samples, L), np.nan, dtype=np.float32) for name in SIGNALS}
            signals["pred"] = np.full((num_samples, L), -1, dtype=np.int64)
        exit_layer = np.zeros(num_samples, dtype=np.int64)
        pred = np.full(num_samples, -1, dtype=np.int64)
        for idx, inputs in batches:
            out = self.run_batch(inputs, policy=policy, record=record)
            exit_layer[idx], pred[idx] = out.exit_layer, out.pred
            if record:
                for name in SIGNALS:
                    signals[name][idx] = out.signals[name]
        if (exit_layer == 0).any():
            raise DE3Error(f"{int((exit_layer == 0).sum())} of {num_samples} samples were in no batch")
        return EngineResult(exit_layer, pred, signals, int(exit_layer.sum()), L)

    @torch.inference_mode()
    def run_batch(self, inputs: Mapping[str, torch.Tensor], *, policy: ExitPolicy, record: bool = False) -> BatchResult:
        """One padded batch (inputs are moved to the model's device): exit layers (B,), answers (B,) and, with
        ``record``, every signal computed {name: (B, L)}."""
        _check_policy(policy)
        spec, L, device = policy.spec, self.num_layers, self.device
        host = self.host_math if self.host_math is not None else device.type == "cpu"
        test_on_host = host or not self._torch_test(policy)
        test_names = tuple(dict.fromkeys(("pred", *spec.inputs)))  # what the exit test reads, layer by layer
        reads_history = bool(spec.inputs)  # else (static) the head runs only where a row can leave
        first = spec.first_layer(policy) - 1  # 0-based first layer whose test can pass
        distance_kind = self.bank.distance
        protos = self.bank.prototypes.detach().float()
        if host:
            protos = protos.cpu().numpy()

        input_ids = inputs["input_ids"].to(device)
        batch, width = input_ids.shape
        mask2d = inputs.get("attention_mask")
        mask2d = torch.ones_like(input_ids) if mask2d is None else mask2d
        # the mask on the host (free for inputs collated on the CPU; else the batch's one transfer before layer 1)
        real = (mask2d.numpy() if mask2d.device.type == "cpu" else mask2d.cpu().numpy()) != 0  # (B, T)
        mask2d = mask2d.to(device)
        extra = {"token_type_ids": inputs["token_type_ids"].to(device)} if inputs.get("token_type_ids") is not None else {}
        check_positions(self.model, width)
        # last real token + 1 per row, to cut columns that are padding for every row still active
        ends = width - real[:, ::-1].argmax(1) if batch > 1 else None  # (B,)

        hidden = self.backbone.embeddings(input_ids=input_ids, **extra)  # (B, T, H)
        if hasattr(self.backbone, "embeddings_project"):  # ELECTRA: embedding size != hidden size
            hidden = self.backbone.embeddings_project(hidden)
        dense = bool(real.all())
        attn = None if dense else self._attention_mask(hidden, mask2d)
        pool = _Pooling(mask2d, hidden.dtype, dense)

        history = {}  # name -> (B_m, L): the test's inputs at the layers computed so far, rows still active
        for name in test_names:
            dtype = (np.int64 if host else torch.int64) if name == "pred" else (np.float32 if host else torch.float32)
            fill = -1 if name == "pred" else math.nan
            history[name] = (np.full((batch, L), fill, dtype=dtype) if host
                             else torch.full((batch, L), fill, dtype=dtype, device=device))
        active = np.arange(batch)  # batch rows still computing
        exit_layer = np.full(batch, L, dtype=np.int64)
        answers = []  # (rows, pred (B_m,)) of every layer whose head ran: a row's last one is its answer
        recorded = []  # (rows, layer, {name: (B_m,)}) when recording
        for m in range(L):
            out = self._layer_fns[m](hidden, attn)
            hidden = out[0] if isinstance(out, tuple) else out  # (B_m, T_m, H)
            last = m == L - 1
            testing = not last and m >= first
            if not (record or last or testing or reads_history):
                continue  # nothing can leave here and the test reads no history: no head
            names = SIGNALS if record else ("pred",) if last else test_names
            sig = self._signals(m, hidden, pool, names, protos, distance_kind, host)
            answers.append((active, sig["pred"]))
            if record:
                recorded.append((active, m, sig))
            if last:
                break  # the final classifier answers whoever is left
            for name in test_names:
                history[name][:, m] = sig[name]
            if not testing:
                continue
            past = {name: h[:, : m + 1] for name, h in history.items()}
            if test_on_host:
                if not host:  # a policy written with NumPy alone: its test on the host
                    past = {name: h.cpu().numpy() for name, h in past.items()}
                passed = np.asarray(_layer_test(policy, past))  # (B_m,) this layer's test
            else:
                passed = self._device_test(policy, past).cpu().numpy()  # the layer's one transfer
            if not passed.any():
                continue
            exit_layer[active[passed]] = m + 1
            stay = np.flatnonzero(~passed)
            if len(stay) == 0:
                break
            active = active[stay]
            keep = torch.from_numpy(stay).to(device)
            width = int(ends[active].max())
            real = real[stay, :width]
            dense = bool(real.all())
            hidden = hidden.index_select(0, keep)[:, :width].contiguous()
            pool = pool.select(keep, width, dense)
            attn = None if dense else self._attention_mask(hidden, pool.mask2d)
            history = {name: (h[stay] if host else h.index_select(0, keep)) for name, h in history.items()}

        pred = np.full(batch, -1, dtype=np.int64)
        for rows, values in zip([rows for rows, _ in answers], _to_host([p for _, p in answers], host)):
            pred[rows] = values
        signals = None
        if record:
            signals = {name: np.full((batch, L), np.nan, dtype=np.float32) for name in SIGNALS}
            signals["pred"] = np.full((batch, L), -1, dtype=np.int64)
            for name in SIGNALS:
                for (rows, m, _), values in zip(recorded, _to_host([s[name] for _, _, s in recorded], host)):
                    signals[name][rows, m] = values
        return BatchResult(exit_layer, pred, signals)

    def _attention_mask(self, hidden: torch.Tensor, mask2d: torch.Tensor):
        """The layers' attention mask for rows with padding: the backbone's own, told there is padding so it does not
        read the mask back from the device to find out. (Without padding the layers get None: what the backbone's own
        forward passes to SDPA then, and no mask at all for the other implementations: the same numbers.)"""
        extra = {"allow_is_bidirectional_skip": False} if self._mask_skip_flag else {}
        return self._create_mask(config=self.backbone.config, inputs_embeds=hidden, attention_mask=mask2d, **extra)

    def _signals(self, m: int, hidden, pool: _Pooling, names, protos, distance_kind: str, host: bool) -> dict:
        """Layer m's exit head on ``hidden`` and the signals in ``names`` (and ``pred``), each (B_m,)."""
        want_emb = not DISTANCE_SIGNALS.isdisjoint(names)
        if self._head_fns is not None:
            logits, emb = self._head_fns[m](hidden, pool.mask2d)
        elif self._fast[m] is not None and not self.model.training:
            logits, emb = self._fast[m](hidden, pool, want_emb)
        else:
            logits, emb = self.heads[m](hidden, pool.mask2d)
        if host:
            return host_signals(logits.float().cpu().numpy(), emb.float().cpu().numpy() if want_emb else None,
                                protos[m], distance_kind, names)
        return self._device_signals(logits, emb if want_emb else None, protos[m], distance_kind, tuple(names))

    def _torch_test(self, policy: ExitPolicy) -> bool:
        """Whether ``policy``'s registry test runs on torch tensors (the shipped ones do); a policy written with NumPy
        alone is tested on the host instead, correct but with one transfer per input."""
        name = policy.name
        if name not in self._torch_tests:
            probe = {k: torch.zeros((2, 3), dtype=torch.int64 if k == "pred" else torch.float32)
                     for k in ("pred", *policy.spec.inputs)}
            try:
                self._torch_tests[name] = isinstance(exit_mask(policy, probe), torch.Tensor)
            except Exception:  # noqa: BLE001 - any failure means: not on tensors
                self._torch_tests[name] = False
        return self._torch_tests[name]


class _Pooling:
    """A batch's attention mask and what mean pooling divides by, made once and cut with the rows and columns."""

    def __init__(self, mask2d: torch.Tensor, dtype: torch.dtype, dense: bool = False):
        self.mask2d = mask2d  # (B, T)
        self.mask3 = mask2d.unsqueeze(-1).to(dtype)  # (B, T, 1), as pool_tokens makes it
        self.denom = self.mask3.sum(1).clamp_min(1.0)  # (B, 1)
        self.dense = dense  # no padding: multiplying by the mask (all ones) changes nothing, and is skipped

    def select(self, keep: torch.Tensor, width: int, dense: bool) -> _Pooling:
        out = object.__new__(_Pooling)
        out.mask2d, out.dense = self.mask2d.index_select(0, keep)[:, :width], dense
        out.mask3, out.denom = self.mask3.index_select(0, keep)[:, :width], self.denom.index_select(0, keep)
        return out


def _plain_head(head):
    """``ExitHead.forward`` as its operations on the module's own (live) parameters — the same numbers, without five
    module calls and with the batch's pooling mask made once — or None for anything else (a subclass, a head with
    hooks, an unknown pooling or activation), which is then called as a module."""
    if (type(head) is not ExitHead or head.activation not in ACTIVATIONS or head.pooling not in ("mean", "cls")
            or any(mod._forward_hooks or mod._forward_pre_hooks for mod in head.modules())):
        return None
    activation = ACTIVATIONS[head.activation]
    cls, from_pooler = head.pooling == "cls", head.proto_input == "pooler"
    pooler, classifier, proto = head.pooler, head.classifier, head.proto

    def forward(hidden: torch.Tensor, pool: _Pooling, want_emb: bool):
        if cls:
            pooled = hidden[:, 0]
        else:  # = pool_tokens: x * 1.0 is x, so without padding the mask is not multiplied in
            pooled = (hidden if pool.dense else hidden * pool.mask3).sum(1) / pool.denom
        u = activation(F.linear(pooled, pooler.weight, pooler.bias))  # dropout: identity in eval mode
        emb = F.linear(u if from_pooler else pooled, proto.weight, proto.bias) if want_emb else None
        return F.linear(u, classifier.weight, classifier.bias), emb

    return forward


def device_signals(logits: torch.Tensor, emb: torch.Tensor | None, protos: torch.Tensor, distance: str,
                   names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """``signals.exit_signals`` of one layer (logits (B, K), embedding (B, d_p), prototypes (K, d_p)), only the
    signals in ``names`` and ``pred``: the same torch operations, each (B,)."""
    probs = torch.softmax(logits.float(), dim=-1)
    max_prob, pred = probs.max(-1)
    out = {"pred": pred, "max_prob": max_prob}
    if "entropy" in names:
        out["entropy"] = normalized_entropy(logits)
    if not DISTANCE_SIGNALS.isdisjoint(names):
        r1, r2 = r1_r2(pairwise_distance(emb, protos, distance), pred)
        out.update(r1=r1, r2=r2, dr=distance_ratio(r1, r2))
    return out


def host_signals(logits: np.ndarray, emb: np.ndarray | None, protos: np.ndarray, distance: str, names) -> dict:
    """``device_signals`` in NumPy, float32, for a model on the CPU: the formulas of ``analysis/signals.py`` (to float
    rounding; tests/test_engine.py holds them equal), each NumPy call a third of a torch call's cost on a few numbers.
    One row (batch 1, the latency case) goes through ``_one_row_signals``: plain floats, a tenth of the calls."""
    if len(logits) == 1:
        return _one_row_signals(logits, emb, protos, distance, names)
    top = logits.max(-1, keepdims=True)
    shifted = logits - top  # (B, K)
    expo = np.exp(shifted)
    total = expo.sum(-1, keepdims=True)
    probs = expo / total if "max_prob" in names or "entropy" in names else None
    pred = (probs if probs is not None else logits).argmax(-1)  # softmax is monotone: the same class
    out = {"pred": pred}
    if "max_prob" in names:
        out["max_prob"] = probs.max(-1)
    if "entropy" in names:  # normalized_entropy: -sum p log p / log K, clamped to [0, 1]
        ent = -(probs * (shifted - np.log(total))).sum(-1) / np.float32(math.log(logits.shape[-1]))
        out["entropy"] = np.minimum(np.maximum(ent, np.float32(0.0)), np.float32(1.0))
    if not DISTANCE_SIGNALS.isdisjoint(names):
        if distance == "cosine":  # pairwise_distance
            e = emb / np.maximum(np.sqrt((emb * emb).sum(-1, keepdims=True)), np.float32(EPS))
            c = protos / np.maximum(np.sqrt((protos * protos).sum(-1, keepdims=True)), np.float32(EPS))
            dist = np.float32(1.0) - e @ c.T
        else:
            diff = emb[:, None, :] - protos  # (B, K, d_p)
            dist = (diff * diff).sum(-1)
            if distance == "euclidean":
                dist = np.sqrt(dist + np.float32(EPS))
            elif distance != "sqeuclidean":
                raise ValueError(f"unknown distance {distance!r}")
        rows = np.arange(len(pred))
        r1 = dist[rows, pred]  # r1_r2: the predicted class's prototype, and the nearest other one
        dist[rows, pred] = np.inf
        r2 = dist.min(-1)
        larger = np.maximum(np.maximum(r1, r2), np.float32(EPS))  # distance_ratio
        out.update(r1=r1, r2=r2, dr=np.float32(0.5) * (np.float32(1.0) + (r1 - r2) / larger))
    return out


def _one_row_signals(logits: np.ndarray, emb: np.ndarray | None, protos: np.ndarray, distance: str, names) -> dict:
    """``host_signals`` of a single row in Python floats (float64: closer to the exact values than float32, well
    inside the ~1e-6 a padded batch differs by), each a (1,) array; the distances in one NumPy pass."""
    row = logits[0].tolist()
    k = len(row)
    top = max(row)
    c = row.index(top)  # argmax: the first largest, as NumPy's
    expo = [math.exp(v - top) for v in row]
    total = math.fsum(expo)
    out = {"pred": np.array([c], dtype=np.int64)}
    if "max_prob" in names:
        out["max_prob"] = np.array([1.0 / total], dtype=np.float32)  # exp(0) / total
    if "entropy" in names:
        log_total = math.log(total)
        ent = -math.fsum(e / total * (v - top - log_total) for e, v in zip(expo, row)) / math.log(k)
        out["entropy"] = np.array([min(max(ent, 0.0), 1.0)], dtype=np.float32)
    if not DISTANCE_SIGNALS.isdisjoint(names):
        if distance == "cosine":
            e = emb[0] / max(float(np.sqrt(emb[0] @ emb[0])), EPS)
            norms = np.maximum(np.sqrt((protos * protos).sum(-1)), np.float32(EPS))
            dist = (1.0 - (protos @ e) / norms).tolist()
        else:
            diff = protos - emb[0]  # (K, d_p)
            dist = (diff * diff).sum(-1).tolist()
            if distance == "euclidean":
                dist = [math.sqrt(d + EPS) for d in dist]
            elif distance != "sqeuclidean":
                raise ValueError(f"unknown distance {distance!r}")
        r1 = dist[c]
        r2 = min(d for j, d in enumerate(dist) if j != c) if k > 1 else math.inf
        larger = max(r1, r2, EPS)
        out.update(r1=np.array([r1], dtype=np.float32), r2=np.array([r2], dtype=np.float32),
                   dr=np.array([0.5 * (1.0 + (r1 - r2) / larger)], dtype=np.float32))
    return out


def _layer_test(policy: ExitPolicy, past: Mapping):
    """The exit test of the last layer in ``past`` ((B, m) each): the registry's causal rule, on arrays or tensors."""
    return exit_mask(policy, past)[:, -1]


def _to_host(values: list, host: bool) -> list[np.ndarray]:
    """(B_i,) arrays or device tensors -> NumPy arrays, with one transfer for all of them."""
    if host or not values:
        return [np.asarray(v) for v in values]
    joined = torch.cat([v.reshape(-1) for v in values]).cpu().numpy()
    return np.split(joined, np.cumsum([v.numel() for v in values])[:-1])


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
