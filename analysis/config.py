"""Frozen dataclass configs, one per concern. Frozen = hashable = cacheable; each is saved next to what it made."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import DE3Error, name_list, shorten
from .validate import MODEL, TRAIN, check_fields

POOLINGS = ("mean", "cls")
DAR_FORMS = ("proto_ce", "ratio", "margin")
PROTO_INPUTS = ("pooler", "pooled")  # what the prototypical network reads: the exit's pooler output, or its input
# What a checkpoint saved before a field existed meant by leaving it out (not the field's default now, which may differ)
BEFORE_FIELD = {"proto_input": "pooler"}


def as_saved(fields: dict) -> dict:
    """A saved ModelConfig's fields (config.json's "de3") with the ones it predates filled in as ``BEFORE_FIELD``."""
    return {**BEFORE_FIELD, **fields}

FINAL_HEADS = ("tanh", "gelu", "relu")  # the pooler activation of a fine-tuned classifier's own head (attach)


def _from_dict(cls, data: dict[str, Any], source: str):
    """Build a config dataclass from a dict (e.g. JSON), refusing unknown keys and values of the wrong type with a
    message that names them."""
    if not isinstance(data, dict):
        raise DE3Error(f"{source}: {cls.__name__} settings must be a JSON object of field: value, "
                       f"got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise DE3Error(f"{source}: unknown {cls.__name__} field(s) {name_list(unknown)}; "
                       f"known: {', '.join(sorted(fields))}")
    numbers = cls.RANGES  # numbers: type and range from their declaration (validate.py), named with the file
    kwargs = {k: numbers[k].check(v, f"{source}: {cls.__name__} field {k}") if k in numbers
              else _typed(cls, k, v, str(fields[k].type), source) for k, v in data.items()}
    return cls(**kwargs)


_SCALARS = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def _typed(cls, name: str, value: Any, annotation: str, source: str) -> Any:
    """``value`` if it fits the field's annotation ("int | None", "tuple[str, ...]", ...); lists become tuples."""
    options = [t.strip() for t in annotation.split("|")]
    if value is None and "None" in options:
        return None
    for option in options:
        if option.startswith("tuple") and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        types = _SCALARS.get(option)
        if types and isinstance(value, types) and (option == "bool" or not isinstance(value, bool)):
            return value
    wanted = " or ".join("a list of strings" if o.startswith("tuple") else "null" if o == "None" else {
        "int": "an integer", "float": "a number", "bool": "true/false", "str": "a string"}.get(o, o) for o in options)
    raise DE3Error(f"{source}: {cls.__name__} field {name} must be {wanted}, got {shorten(value)} ({type(value).__name__})")


@dataclass(frozen=True)
class ModelConfig:
    """What a DE3-BERT is: its backbone, its exits and prototypes, and its training objective.

    Exit thresholds and policies are deliberately absent: they are inference-time arguments.
    """

    backbone: str = "minilm-l6"  # short name, Hugging Face model id, or local folder the backbone came from
    label_names: tuple[str, ...] = ()
    pooling: str = "mean"  # token pooling before each exit's pooler: "mean" (attention-masked) or "cls"
    proto_dim: int | None = None  # prototype space size d_p; None = hidden size H (spec decision)
    distance: str = "euclidean"  # "euclidean" | "sqeuclidean" | "cosine"
    proto_input: str = "pooler"  # the prototypical network reads the pooler output u_m, or "pooled": the pooled tokens
    dropout: float | None = None  # dropout before each classifier; None = the backbone's hidden dropout
    alpha: float = 1.0  # weight of the DAR term; 0 = the "w/o DAR" ablation
    dar_form: str = "proto_ce"  # "proto_ce" (spec default) | "ratio" | "margin"
    dar_margin: float = 1.0  # only for dar_form="margin"
    gamma: float = 0.1  # prototype moving-average rate
    max_length: int = 128  # tokenizer truncation
    # None: the exit at L is an ordinary trained head. "tanh" / "gelu" / "relu": it is the backbone's own fine-tuned
    # classification head ([CLS] -> dense + that activation -> classifier), copied and frozen by ``attach``
    final_head: str | None = None

    RANGES: ClassVar[dict] = MODEL  # every number's type and range, declared in validate.py

    def __post_init__(self) -> None:
        from .signals import DISTANCES

        check_fields(self, self.RANGES)
        checks = [
            (self.pooling in POOLINGS, f"pooling must be one of {POOLINGS}, got {shorten(self.pooling)}"),
            (self.distance in DISTANCES, f"distance must be one of {DISTANCES}, got {shorten(self.distance)}"),
            (self.dar_form in DAR_FORMS, f"dar_form must be one of {DAR_FORMS}, got {shorten(self.dar_form)}"),
            (self.proto_input in PROTO_INPUTS,
             f"proto_input must be one of {PROTO_INPUTS}, got {shorten(self.proto_input)}"),
            (self.final_head is None or self.final_head in FINAL_HEADS,
             f"final_head must be null or one of {FINAL_HEADS}, got {shorten(self.final_head)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise DE3Error(f"ModelConfig: {message}")

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "ModelConfig":
        return _from_dict(cls, data, source)


@dataclass(frozen=True)
class TrainConfig:
    """How a DE3-BERT is trained (spec §3). Defaults suit MiniLM-L6 on a CPU."""

    epochs: int = 3
    batch_size: int = 16
    eval_batch_size: int = 64
    lr_backbone: float = 5e-5  # separate learning rates: shallow exits need fast heads (spec care point)
    lr_heads: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1  # linear warm-up over this share of the steps, then linear decay to 0
    max_grad_norm: float = 1.0
    seed: int = 42
    max_steps: int | None = None  # stop after this many optimiser steps (smoke runs)
    freeze_embeddings: bool = True  # token embeddings stay as pretrained: faster steps, compact checkpoints
    select_by: str = "mean"  # keep the epoch with the best "mean" over exits or "last" exit metric
    num_threads: int | None = None  # torch CPU threads; None = torch's default
    save_every: int = 200  # optimiser steps between resumable training states (<out>.resume/); 0 = epoch ends only

    RANGES: ClassVar[dict] = TRAIN  # every number's type and range, declared in validate.py

    def __post_init__(self) -> None:
        check_fields(self, self.RANGES)
        if self.select_by not in ("mean", "last"):
            raise DE3Error(f"TrainConfig: select_by must be 'mean' or 'last', got {shorten(self.select_by)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "TrainConfig":
        return _from_dict(cls, data, source)
