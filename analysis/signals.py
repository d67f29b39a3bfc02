"""Exit signals of DE3-BERT (spec §4). All are "lower = more confident".

The formulas are written once here and used by the model, the trace and the exit policies. ``dr`` and
``edr`` use only arithmetic operators and ``abs``, so they accept torch tensors and numpy arrays alike.

    Entropy_m = -sum_k p_k log p_k / log K                      in [0, 1]
    r1_m      = d(e_m, c_{m, y_hat})                            distance to the predicted class's prototype
    r2_m      = min_{k != y_hat} d(e_m, c_{m, k})                distance to the nearest rival prototype
    DR_m      = 0.5 * (1 + (r1 - r2) / max(r1, r2))             in [0, 1]; < 0.5 when geometry agrees
    EDR_m     = (lambda + 1) / (lambda / DR + 1 / Entropy)      weighted harmonic mean of DR and entropy
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

EPS = 1e-12
DISTANCES = ("euclidean", "sqeuclidean", "cosine")


def normalized_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` over the last axis, divided by ``log K`` so it lies in [0, 1].

    Parameters
    ----------
    logits : Tensor of shape (..., K), K >= 2.
    """
    num_classes = logits.shape[-1]
    log_p = torch.log_softmax(logits.float(), dim=-1)
    ent = -(log_p.exp() * log_p).sum(-1)  # (...,)
    return (ent / math.log(num_classes)).clamp(0.0, 1.0)


def pairwise_distance(emb: torch.Tensor, protos: torch.Tensor, kind: str = "euclidean") -> torch.Tensor:
    """Distance of every embedding to every prototype.

    Parameters
    ----------
    emb : Tensor (..., B, D)
    protos : Tensor (..., K, D), broadcast against ``emb``'s leading axes.
    kind : "euclidean" | "sqeuclidean" | "cosine" (1 - cosine similarity).

    Returns
    -------
    Tensor (..., B, K)
    """
    emb, protos = emb.float(), protos.float()
    if kind == "cosine":
        e = torch.nn.functional.normalize(emb, dim=-1, eps=EPS)
        c = torch.nn.functional.normalize(protos, dim=-1, eps=EPS)
        return 1.0 - e @ c.transpose(-1, -2)
    # Direct differences, (..., B, 1, D) - (..., 1, K, D): K is small, and the expanded form
    # ||e||^2 - 2 e.c + ||c||^2 cancels catastrophically in float32 when the norms are large — its rounding then
    # depends on the batch, and a sample's DR would differ between a batched trace and a lone early-exit run.
    diff = emb.unsqueeze(-2) - protos.unsqueeze(-3)
    sq = (diff * diff).sum(-1)  # (..., B, K)
    if kind == "sqeuclidean":
        return sq
    if kind == "euclidean":
        return torch.sqrt(sq + EPS)
    raise ValueError(f"unknown distance {kind!r}; choose one of {', '.join(DISTANCES)}")


def r1_r2(distances: torch.Tensor, pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance to the predicted class's prototype (r1) and to the nearest other prototype (r2).

    Parameters
    ----------
    distances : Tensor (..., K) of distances to every class prototype.
    pred : LongTensor (...) predicted class per sample.
    """
    r1 = distances.gather(-1, pred.unsqueeze(-1)).squeeze(-1)
    others = distances.scatter(-1, pred.unsqueeze(-1), float("inf"))  # mask the predicted class out
    r2 = others.min(-1).values
    return r1, r2


def distance_ratio(r1, r2, eps: float = EPS):
    """DR = 0.5 * (1 + (r1 - r2) / max(r1, r2, eps)), in [0, 1]. Works on tensors and arrays."""
    larger = (r1 + r2 + abs(r1 - r2)) * 0.5  # max(r1, r2) without a library call
    larger = larger + (larger < eps) * eps  # guard: both distances 0 -> DR = 0.5
    return 0.5 * (1.0 + (r1 - r2) / larger)


def edr(dr, entropy, lambda_: float, eps: float = EPS):
    """EDR = (lambda + 1) / (lambda / DR + 1 / Entropy), in the safe form that is 0 when either is 0.

    ``lambda_ = 0`` gives the entropy, large ``lambda_`` approaches DR. Works on tensors and arrays.
    """
    if lambda_ < 0:
        raise ValueError(f"lambda_ must be >= 0, got {lambda_}")
    return (lambda_ + 1.0) * dr * entropy / (lambda_ * entropy + dr + eps)


@dataclass(frozen=True)
class ExitSignals:
    """Every per-layer quantity an exit policy reads, each (L, B) unless noted."""

    probs: torch.Tensor  # (L, B, K)
    pred: torch.Tensor  # predicted class
    entropy: torch.Tensor  # normalised to [0, 1]
    max_prob: torch.Tensor
    r1: torch.Tensor  # distance to the predicted class's prototype
    r2: torch.Tensor  # distance to the nearest other prototype
    dr: torch.Tensor  # distance ratio in [0, 1]


def exit_signals(logits: torch.Tensor, distances: torch.Tensor) -> ExitSignals:
    """Signals from per-layer logits (L, B, K) and prototype distances (L, B, K)."""
    probs = torch.softmax(logits.float(), dim=-1)
    max_prob, pred = probs.max(-1)
    r1, r2 = r1_r2(distances.float(), pred)
    return ExitSignals(probs, pred, normalized_entropy(logits), max_prob, r1, r2, distance_ratio(r1, r2))
