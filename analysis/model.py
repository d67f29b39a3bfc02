"""The DE3-BERT model (spec §2-3): a BERT-family encoder with, after every layer m = 1..L,

    an ExitHead      pooled tokens u_m -> pooler -> dropout -> classifier logits z_m   (B, K)
                                          pooler -> prototypical projection e_m       (B, d_p)
    a PrototypeBank  class prototypes c_{m,k}, moving averages of e_m (buffers, no gradient)

``forward`` returns a ``DE3Output`` with every layer's logits, embeddings and prototype distances, plus the
loss (mean CE over exits + alpha * DAR) when labels are given. No exit threshold lives here: exit policies
are pure functions of these outputs, applied elsewhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .errors import CheckpointError, DE3Error, one_line, shorten
from .io import atomic_dir, os_errors, path_kind
from .signals import ExitSignals, distance_ratio, exit_signals, pairwise_distance

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def pool_tokens(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, T, H) -> (B, H): the [CLS] vector, or the mean over real (unmasked) tokens."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class ExitHead(nn.Module):
    """Internal classifier and prototypical network of one layer."""

    def __init__(self, hidden_size: int, num_labels: int, proto_dim: int, pooling: str, dropout: float):
        super().__init__()
        self.pooling = pooling
        self.pooler = nn.Linear(hidden_size, hidden_size)  # own pooler, as BERT's: dense + tanh
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)
        self.proto = nn.Linear(hidden_size, proto_dim)  # the prototypical network: e = W u + b

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, H) hidden states -> logits (B, K), prototype-space embedding (B, d_p)."""
        u = torch.tanh(self.pooler(pool_tokens(hidden, attention_mask, self.pooling)))  # (B, H)
        return self.classifier(self.dropout(u)), self.proto(u)


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
            raise DE3Error(f"{what}: the prototypes of class(es) {', '.join(map(repr, missing[:8]))} were never fitted "
                           "(no training sample of them), so DR would be measured against an empty vector; retrain "
                           "with training rows of every class")

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

    def update(self, embeddings: torch.Tensor, labels: torch.Tensor, gamma: float) -> None:
        """One moving-average step from a batch: embeddings (L, B, d_p), labels (B,)."""
        sums, counts = self.batch_stats(embeddings, labels, self.prototypes.shape[1])
        self.apply_stats(sums, counts, gamma)


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
            ExitHead(hidden, config.num_labels, proto_dim, config.pooling, dropout) for _ in range(self.num_layers)
        )
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
        per_layer = [head(h, attention_mask) for head, h in zip(self.heads, hidden_states)]
        logits = torch.stack([z for z, _ in per_layer])  # (L, B, K)
        embeddings = torch.stack([e for _, e in per_layer])  # (L, B, d_p)
        distances = self.bank.distances(embeddings)  # (L, B, K)
        output = DE3Output(logits, embeddings, distances)
        if labels is not None:
            self._add_loss(output, labels)
        return output

    def _add_loss(self, output: DE3Output, labels: torch.Tensor) -> None:
        """Loss = mean_m CE(z_m, y) + alpha * mean over internal m < L of DAR_m (spec §3)."""
        num_layers = output.logits.shape[0]
        ce = F.cross_entropy(output.logits.float().flatten(0, 1), labels.repeat(num_layers))
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
        """Moving-average step of every layer's prototypes (call after the optimiser step)."""
        self.bank.update(embeddings, labels, self.config.gamma)

    # ---- checkpoints, the Hugging Face way: config.json + model.safetensors + tokenizer files ----

    def save_pretrained(self, folder: str | Path, tokenizer=None, extra_files: dict[str, dict] | None = None, *,
                        half: bool = False, omit_base: bool = False) -> Path:
        """Write config.json (backbone config + ``de3`` settings + label names), model.safetensors and the
        tokenizer. The folder appears whole or not at all: it is written beside, then renamed into place.

        For small shipped checkpoints: ``half`` stores floating-point tensors as float16 (loaded back as
        float32); ``omit_base`` leaves out backbone tensors identical to the pretrained backbone named in the
        config (e.g. frozen token embeddings), which ``from_pretrained`` then takes from that backbone.
        """
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        omitted: list[str] = []
        if omit_base:
            base = _base_backbone_state(self.config.backbone)
            omitted = sorted(k for k, v in state.items() if k.startswith("backbone.")
                             and k[len("backbone."):] in base and torch.equal(base[k[len("backbone."):]], v))
            state = {k: v for k, v in state.items() if k not in omitted}
        if half:
            state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        with atomic_dir(folder) as tmp:
            config = self.backbone.config.to_dict()
            config.update(
                de3=self.config.to_dict(),
                id2label={str(i): n for i, n in enumerate(self.config.label_names)},
                label2id={n: i for i, n in enumerate(self.config.label_names)},
            )
            if omitted:
                config["de3_base_weights"] = {"backbone": self.config.backbone, "tensors": omitted}
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
            save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp))
            for name, payload in (extra_files or {}).items():
                (tmp / name).write_text(json.dumps(payload, indent=2), encoding="utf-8")
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, map_location: str | torch.device = "cpu") -> "DE3Bert":
        """Load a checkpoint written by ``save_pretrained``, checking files, label count and every shape."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        from transformers import CONFIG_MAPPING, AutoConfig, AutoModel

        from .backbones import check_encoder_config

        folder = Path(folder)
        raw = read_checkpoint_config(folder)
        weights = folder / WEIGHTS_FILE
        if path_kind(weights, CheckpointError) != "file":
            with os_errors(folder, CheckpointError):
                pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
            if pickles:
                raise CheckpointError(f"{folder}: missing {WEIGHTS_FILE} (found {', '.join(pickles)}: pickle weights "
                                      "are refused, loading them can run code); convert them to safetensors or re-train")
            raise CheckpointError(f"{folder}: missing {WEIGHTS_FILE}; copy the whole checkpoint folder again or re-train it")
        config = ModelConfig.from_dict(raw.pop("de3"), source=str(folder / CONFIG_FILE))
        model_type = raw.pop("model_type", None)
        if not isinstance(model_type, str):
            raise CheckpointError(f"{folder / CONFIG_FILE}: no 'model_type'; this is not a config written by save_pretrained")
        if model_type not in CONFIG_MAPPING:
            why = (" needs its repository's own code (auto_map), and checkpoints are loaded without running remote "
                   "code; re-train on a backbone built into transformers") if "auto_map" in raw else \
                  " is not known to this transformers version; upgrade transformers or re-train on a built-in backbone"
            raise CheckpointError(f"{folder / CONFIG_FILE}: backbone type {model_type!r}{why}")
        for key in ("id2label", "label2id", "auto_map"):
            raw.pop(key, None)
        base_weights = raw.pop("de3_base_weights", None)
        try:
            bcfg = AutoConfig.for_model(model_type, **raw)
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{folder / CONFIG_FILE}: cannot rebuild the {model_type!r} backbone config "
                                  f"({one_line(exc)}); re-save the checkpoint") from None
        try:
            check_encoder_config(bcfg, str(folder))
        except DE3Error as exc:
            raise CheckpointError(f"{folder / CONFIG_FILE}: {exc}") from None
        with os_errors(weights, CheckpointError), open(weights, "rb"):
            pass  # a permission problem is said as one, not as a corrupt file
        try:
            state = load_file(str(weights), device=str(map_location))
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise CheckpointError(f"{weights}: unreadable or corrupt safetensors file ({one_line(exc)}); "
                                  "copy it again or re-train") from None
        if base_weights:  # a compact checkpoint: tensors equal to the pretrained backbone were left out
            base = _base_backbone_state(base_weights["backbone"], needed_by=folder)
            for key in base_weights["tensors"]:
                name = key[len("backbone."):]
                if name not in base:
                    raise CheckpointError(f"{folder}: base backbone {base_weights['backbone']!r} has no tensor {name}")
                state[key] = base[name]
        try:
            backbone = AutoModel.from_config(bcfg)
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"{folder / CONFIG_FILE}: cannot build the {model_type!r} backbone it describes "
                                  f"({one_line(exc)}); re-save the checkpoint") from None
        model = cls(config, backbone)
        expected = model.state_dict()
        state = {k: v.to(expected[k].dtype) if k in expected and v.is_floating_point() else v for k, v in state.items()}
        _check_state(model, state, weights)
        model.load_state_dict(state, strict=True)
        return model.to(map_location).eval()


def _base_backbone_state(name: str, needed_by: Path | None = None) -> dict[str, torch.Tensor]:
    """The pretrained backbone's own tensors, by their names inside the backbone module."""
    from .backbones import load_backbone

    try:
        return {k: v.detach() for k, v in load_backbone(name).state_dict().items()}
    except DE3Error as exc:
        if needed_by is None:
            raise
        raise CheckpointError(f"{needed_by}: this compact checkpoint takes some weights from backbone {name!r}, "
                              f"which cannot be loaded ({exc})") from None


def read_checkpoint_config(folder: Path) -> dict:
    """config.json of a checkpoint folder, with errors that say which file is wrong and what to do."""
    folder = Path(folder)
    kind = path_kind(folder, CheckpointError)  # a permission problem or a symlink loop is said as such
    if kind is None:
        raise CheckpointError(f"{folder}: checkpoint folder not found; train one with `python -m analysis train`")
    if kind != "dir":
        raise CheckpointError(f"{folder}: is a file; a checkpoint is the folder holding config.json and {WEIGHTS_FILE}")
    path = folder / CONFIG_FILE
    if path_kind(path, CheckpointError) != "file":
        raise CheckpointError(f"{folder}: missing {CONFIG_FILE}; this is not a DE3-BERT checkpoint folder")
    with os_errors(path, CheckpointError):
        text = path.read_bytes()
    try:
        raw = json.loads(text.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({one_line(exc)}); re-save the checkpoint") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("de3"), dict):
        raise CheckpointError(f"{path}: no 'de3' section; this is a plain Hugging Face model, not a DE3-BERT checkpoint "
                              "(train one from it with `python -m analysis train --backbone <this folder>`)")
    layers = raw.get("num_hidden_layers", 1)  # BERT-style configs; others name it differently
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise CheckpointError(f"{path}: num_hidden_layers must be a positive integer, found {shorten(layers)}; "
                              "re-save the checkpoint")
    names = raw["de3"].get("label_names")
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) and n for n in names):
        raise CheckpointError(f"{path}: de3.label_names must be a list of at least 2 class names (strings), found "
                              f"{shorten(names)}; re-save the checkpoint")
    if len(set(names)) != len(names):
        raise CheckpointError(f"{path}: de3.label_names repeats a class name; re-save the checkpoint")
    return raw


def _check_state(model: nn.Module, state: dict[str, torch.Tensor], weights: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = [f"missing {len(missing)} tensor(s) e.g. {missing[0]}" if missing else "",
                 f"{len(unexpected)} unexpected e.g. {unexpected[0]}" if unexpected else ""]
        raise CheckpointError(f"{weights}: weights do not match config.json ({'; '.join(p for p in parts if p)}); "
                              "the config and weights come from different models")
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            hint = ""
            if key.endswith("classifier.weight") or key == "bank.initialized":
                hint = (f" — the weights have {state[key].shape[0]} classes but config.json lists {tensor.shape[0]} label "
                        "names; restore de3.label_names in config.json or re-train")
            raise CheckpointError(
                f"{weights}: tensor {key} has shape {tuple(state[key].shape)}, config.json implies {tuple(tensor.shape)}"
                + (hint or "; the config and weights come from different models")
            )


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

