"""The DE3-BERT model (spec §2-3): a BERT-family encoder with, after every layer m = 1..L,

    an ExitHead      pooled tokens -> pooler u_m -> dropout -> classifier logits z_m   (B, K)
                                       u_m -> prototypical projection e_m          (B, d_p)
                     (``ModelConfig.proto_input = "pooled"``: the projection reads the pooled tokens instead)
    a PrototypeBank  class prototypes c_{m,k}, moving averages of e_m (buffers, no gradient)

(With ``ModelConfig.final_head`` the exit at L is a fine-tuned classifier's own head, copied and frozen: see
``analysis/attach.py``.)

``forward`` returns a ``DE3Output`` with every layer's logits, embeddings and prototype distances, plus the
loss (mean CE over exits + alpha * DAR) when labels are given. No exit threshold lives here: exit policies
are pure functions of these outputs, applied elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .errors import DE3Error, name_list
from .signals import ExitSignals, distance_ratio, exit_signals, pairwise_distance


def pool_tokens(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, T, H) -> (B, H): the [CLS] vector, or the mean over real (unmasked) tokens."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


ACTIVATIONS = {"tanh": torch.tanh, "gelu": F.gelu, "relu": F.relu}  # a pooler's; BERT's is tanh, ELECTRA's head gelu


class ExitHead(nn.Module):
    """Internal classifier and prototypical network of one layer."""

    def __init__(self, hidden_size: int, num_labels: int, proto_dim: int, pooling: str, dropout: float,
                 activation: str = "tanh", proto_input: str = "pooler"):
        super().__init__()
        self.pooling, self.activation, self.proto_input = pooling, activation, proto_input
        self.pooler = nn.Linear(hidden_size, hidden_size)  # own pooler, as BERT's: dense + tanh
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)
        self.proto = nn.Linear(hidden_size, proto_dim)  # the prototypical network: e = W u + b (or W pooled + b)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, H) hidden states -> logits (B, K), prototype-space embedding (B, d_p)."""
        return self.from_pooled(pool_tokens(hidden, attention_mask, self.pooling))

    def from_pooled(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H) pooled tokens -> logits (B, K), embedding (B, d_p): the exit after pooling (attach trains it so)."""
        u = ACTIVATIONS[self.activation](self.pooler(pooled))  # (B, H)
        return self.classifier(self.dropout(u)), self.proto(u if self.proto_input == "pooler" else pooled)


class PrototypeBank(nn.Module):
    """Per-layer class prototypes: a nearest-centroid classifier at every layer, fitted by moving average.

    Buffers: ``prototypes`` (L, K, d_p) and ``initialized`` (K,) — a class's prototypes are set from the first
    batch that contains it, at every layer at once.
    """

    def __init__(self, num_layers: int, num_labels: int, proto_dim: int, distance: str):
        super().__init__()
        self.distance = distance
        self.register_buffer("prototypes", torch.zeros(num_layers, num_labels, proto_dim))
        self.register_buffer("initialized", torch.zeros(num_labels, dtype=torch.bool))

    @property
    def is_fitted(self) -> bool:
        return bool(self.initialized.all())

    def require_fitted(self, label_names, what: str = "this model") -> None:
        """Refuse to measure distances with prototypes never fitted (a class no training batch held): DR against
        a zero vector would look meaningful and be wrong. ``DE3Error`` naming the classes."""
        if not self.is_fitted:
            missing = [str(n) for n, ok in zip(label_names, self.initialized.tolist()) if not ok]
            raise DE3Error(f"{what}: the prototypes of class(es) {name_list(missing, limit=8, quote=True)} were never "
                           "fitted (no training sample of them), so DR would be measured against an empty vector; "
                           "retrain with training rows of every class")

    def distances(self, embeddings: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """Distance of every embedding to every prototype: (L, B, d_p) -> (L, B, K), or one 0-based layer's
        (B, d_p) -> (B, K)."""
        protos = self.prototypes if layer is None else self.prototypes[layer]
        return pairwise_distance(embeddings, protos, self.distance)

    @staticmethod
    def batch_stats(embeddings: torch.Tensor, labels: torch.Tensor, num_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-class sums (L, K, d_p) and counts (K,) of a batch's embeddings (L, B, d_p), detached.

        Kept apart from ``apply_stats`` so that distributed training can all-reduce them in between.
        """
        onehot = F.one_hot(labels, num_labels).to(torch.float32)  # (B, K)
        sums = torch.einsum("bk,lbd->lkd", onehot, embeddings.detach().float())
        return sums, onehot.sum(0)

    @torch.no_grad()
    def apply_stats(self, sums: torch.Tensor, counts: torch.Tensor, gamma: float) -> None:
        """c <- (1 - gamma) c + gamma * batch mean, for every class present; first sight initialises.

        The buffer is replaced, never modified in place, so a graph that still holds the old prototypes
        (the loss of this step) stays valid.
        """
        present = counts > 0  # (K,)
        means = sums / counts.clamp_min(1.0)[None, :, None]  # (L, K, d_p)
        rate = torch.where(self.initialized, torch.full_like(counts, gamma), torch.ones_like(counts))
        rate = (rate * present)[None, :, None].to(self.prototypes.dtype)  # 0 for absent classes
        self.prototypes = (1 - rate) * self.prototypes + rate * means.to(self.prototypes.dtype)
        self.initialized = self.initialized | present


# ---- distance-aware regularisation (DAR, spec §3): pluggable forms, each (L', B, K) distances -> scalar ----


def _true_and_rival(distances: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance to the true class's prototype and to the nearest other one, each (L', B)."""
    idx = labels[None, :, None].expand(distances.shape[0], -1, 1)
    d_true = distances.gather(-1, idx).squeeze(-1)
    d_rival = distances.scatter(-1, idx, float("inf")).min(-1).values
    return d_true, d_rival


def dar_proto_ce(distances, labels, valid, margin):
    """Prototypical cross-entropy: -log softmax(-d)_y (the spec's default)."""
    logits = (-distances).masked_fill(~valid[None, None, :], float("-inf"))  # uninitialised classes drop out
    return F.cross_entropy(logits.flatten(0, 1), labels.repeat(distances.shape[0]), reduction="none")


def dar_ratio(distances, labels, valid, margin):
    """The distance ratio measured against the *true* class: pushes DR below 0.5 for correct geometry."""
    d_true, d_rival = _true_and_rival(distances.masked_fill(~valid[None, None, :], float("inf")), labels)
    return distance_ratio(d_true, d_rival).flatten()


def dar_margin(distances, labels, valid, margin):
    """Hinge: the true prototype must be nearer than the nearest rival by ``margin``."""
    d_true, d_rival = _true_and_rival(distances.masked_fill(~valid[None, None, :], float("inf")), labels)
    return F.relu(margin + d_true - d_rival).flatten()


DAR_LOSSES = {"proto_ce": dar_proto_ce, "ratio": dar_ratio, "margin": dar_margin}


@dataclass
class DE3Output:
    """What one forward pass of DE3-BERT returns. L = layers, B = batch, K = classes, d_p = prototype dim."""

    logits: torch.Tensor  # (L, B, K)
    embeddings: torch.Tensor  # (L, B, d_p)
    distances: torch.Tensor  # (L, B, K), to the prototypes as they were during this pass
    loss: torch.Tensor | None = None  # ce_loss + alpha * dar_loss
    ce_loss: torch.Tensor | None = None
    dar_loss: torch.Tensor | None = None

    def signals(self) -> ExitSignals:
        """Entropy, max-probability, r1, r2 and DR of every layer and sample."""
        return exit_signals(self.logits, self.distances)


class DE3Bert(nn.Module):
    """A BERT-family encoder with an exit head and prototypes after every layer."""

    def __init__(self, config: ModelConfig, backbone: nn.Module):
        super().__init__()
        if config.num_labels < 2:
            raise DE3Error(f"DE3Bert needs at least 2 classes, got label_names={list(config.label_names)}")
        bcfg = backbone.config
        hidden, self.num_layers = bcfg.hidden_size, bcfg.num_hidden_layers
        self.config = config
        self.backbone = backbone
        proto_dim = config.proto_dim or hidden
        dropout = config.dropout if config.dropout is not None else getattr(bcfg, "hidden_dropout_prob", 0.1)
        self.heads = nn.ModuleList(
            ExitHead(hidden, config.num_labels, proto_dim, config.pooling, dropout, proto_input=config.proto_input)
            for _ in range(self.num_layers)
        )
        if config.final_head:  # the exit at L is the backbone's own classification head: [CLS], dense + its activation
            self.heads[-1] = ExitHead(hidden, config.num_labels, proto_dim, "cls", dropout, config.final_head,
                                      config.proto_input)
            self.heads[-1].requires_grad_(False)  # copied from the fine-tuned classifier (attach.py), kept as it was
        self.bank = PrototypeBank(self.num_layers, config.num_labels, proto_dim, config.distance)
        self.max_positions = backbone_positions(bcfg)
        self._adopt_backbone_pooler()

    def _adopt_backbone_pooler(self) -> None:
        """Initialise every exit's pooler from the backbone's pooler (spec §2), then drop the backbone's own,
        which would otherwise be an unused parameter."""
        pooler = getattr(self.backbone, "pooler", None)
        dense = getattr(pooler, "dense", None)
        if isinstance(dense, nn.Linear) and dense.weight.shape == self.heads[0].pooler.weight.shape:
            for head in self.heads:
                head.pooler.load_state_dict(dense.state_dict())
        if pooler is not None:
            self.backbone.pooler = None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> DE3Output:
        """Run all L layers. Inputs (B, T) as a Hugging Face tokenizer makes them; labels (B,) optional."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        check_positions(self, input_ids.shape[1])
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, **extra)
        hidden_states = out.hidden_states[1:]  # L tensors (B, T, H); [0] is the embedding layer
        return self.exits([head(h, attention_mask) for head, h in zip(self.heads, hidden_states)], labels)

    def exits(self, per_layer: list[tuple[torch.Tensor, torch.Tensor]], labels: torch.Tensor | None = None) -> DE3Output:
        """Every exit's (logits (B, K), embedding (B, d_p)) -> the output, distances and loss (with ``labels``)."""
        logits = torch.stack([z for z, _ in per_layer])  # (L, B, K)
        embeddings = torch.stack([e for _, e in per_layer])  # (L, B, d_p)
        distances = self.bank.distances(embeddings)  # (L, B, K)
        output = DE3Output(logits, embeddings, distances)
        if labels is not None:
            self._add_loss(output, labels)
        return output

    def _add_loss(self, output: DE3Output, labels: torch.Tensor) -> None:
        """Loss = mean_m CE(z_m, y) over the trained exits + alpha * mean over internal m < L of DAR_m (spec §3)."""
        num_layers = output.logits.shape[0]
        trained = num_layers - 1 if self.config.final_head else num_layers  # a copied final head is not trained
        ce = F.cross_entropy(output.logits[:trained].float().flatten(0, 1), labels.repeat(trained))
        valid = self.bank.initialized  # (K,) classes whose prototypes exist yet
        keep = valid[labels]  # (B,) samples whose own class has a prototype; the rest skip DAR this step
        dar = ce.new_zeros(())
        if keep.any() and int(valid.sum()) >= 2 and num_layers > 1:
            internal = output.distances[:-1, keep]  # (L-1, B', K): the prototype at L is for display only
            dar = DAR_LOSSES[self.config.dar_form](internal, labels[keep], valid, self.config.dar_margin).mean()
        output.ce_loss, output.dar_loss = ce, dar
        output.loss = ce + self.config.alpha * dar

    @torch.no_grad()
    def update_prototypes(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Moving-average step of every layer's prototypes from one batch's embeddings (L, B, d_p) and labels (B,);
        call it after the optimiser step. (Training under DDP all-reduces ``batch_stats`` before ``apply_stats``.)"""
        sums, counts = self.bank.batch_stats(embeddings, labels, self.config.num_labels)
        self.bank.apply_stats(sums, counts, self.config.gamma)

    # ---- checkpoints, the Hugging Face way (the format is analysis/checkpoint.py's) ----

    def save_pretrained(self, folder: str | Path, tokenizer=None, extra_files: dict[str, dict] | None = None, *,
                        half: bool = False, omit_base: bool = False) -> Path:
        """Write a checkpoint folder: ``checkpoint.save_model``."""
        from .checkpoint import save_model

        return save_model(self, folder, tokenizer, extra_files, half=half, omit_base=omit_base)

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, map_location: str | torch.device = "cpu") -> "DE3Bert":
        """Load a checkpoint folder, checking files, label count and every shape: ``checkpoint.load_model``."""
        from .checkpoint import load_model

        return load_model(folder, map_location=map_location)


# Model types whose position ids start after the padding index (RoBERTa's offset of pad_token_id + 1).
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "roberta-prelayernorm",
                     "longformer", "xmod", "ibert", "luke")


def backbone_positions(bcfg) -> int | None:
    """How many tokens the backbone's position embeddings cover (None when it has no fixed limit)."""
    limit = getattr(bcfg, "max_position_embeddings", None)
    if not isinstance(limit, int) or getattr(bcfg, "position_embedding_type", "absolute") not in ("absolute", None):
        return None
    if getattr(bcfg, "model_type", "") in _OFFSET_POSITIONS:
        limit -= (getattr(bcfg, "pad_token_id", None) or 0) + 1
    return limit


def check_positions(model: "DE3Bert", num_tokens: int) -> None:
    """Refuse inputs longer than the backbone's position embeddings (an index error deep in torch otherwise)."""
    limit = getattr(model, "max_positions", None)
    if limit is not None and num_tokens > limit:
        raise DE3Error(f"an input of {num_tokens} tokens is longer than the backbone's {limit} position embeddings: "
                       f"this model's max_length ({model.config.max_length}) is too large; re-train it with "
                       f"--max-length {limit} or less")

