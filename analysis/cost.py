"""Compute cost of an early-exit run (spec §6), in floating-point operations (a multiply-add = 2 FLOPs).

    layer(T)   = 8 T H^2  (Q, K, V, output projections)  + 4 T^2 H  (scores, weighted sum)  + 4 T H I  (FFN)
    exit head  = 2 H^2 (pooler) + 2 H K (classifier) + 2 H d_p (prototype net) + 3 K d_p (distances)
    final head = 2 H^2 + 2 H K  (the full model's classifier: no prototype test at the last layer)

A sample leaving at layer e < L costs e layers and e exit heads; one that reaches L costs L layers, L - 1 exit
heads and the final head. The full model, the reference, costs L layers and the final head. Embeddings and
token pooling are left out of both (a lookup and a sum; negligible).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def layer_speedup(exit_layer: np.ndarray, num_layers: int) -> float:
    """Speed-up ratio L / mean exit layer (= L·N / Σ_i i·N_i), from each sample's 1-based exit layer."""
    return num_layers / float(np.mean(exit_layer))


@dataclass(frozen=True)
class CostModel:
    hidden: int
    intermediate: int
    num_layers: int
    num_labels: int
    proto_dim: int

    @classmethod
    def from_model(cls, model) -> "CostModel":
        bcfg = model.backbone.config
        return cls(bcfg.hidden_size, getattr(bcfg, "intermediate_size", 4 * bcfg.hidden_size), model.num_layers,
                   model.config.num_labels, model.bank.prototypes.shape[-1])

    def to_dict(self) -> dict:
        return asdict(self)

    def layer(self, n_tokens: np.ndarray) -> np.ndarray:
        t, h = np.asarray(n_tokens, dtype=np.float64), self.hidden
        return 8 * t * h * h + 4 * t * t * h + 4 * t * h * self.intermediate

    @property
    def exit_head(self) -> float:
        h, k, d = self.hidden, self.num_labels, self.proto_dim
        return 2 * h * h + 2 * h * k + 2 * h * d + 3 * k * d

    @property
    def final_head(self) -> float:
        return 2 * self.hidden * self.hidden + 2 * self.hidden * self.num_labels

    def early_exit(self, exit_layer: np.ndarray, n_tokens: np.ndarray) -> np.ndarray:
        """FLOPs of each sample's early-exit run: (N,) exit layers (1-based) and token counts -> (N,)."""
        e = np.asarray(exit_layer, dtype=np.float64)
        last = e >= self.num_layers
        heads = np.where(last, (self.num_layers - 1) * self.exit_head + self.final_head, e * self.exit_head)
        return e * self.layer(n_tokens) + heads

    def full(self, n_tokens: np.ndarray) -> np.ndarray:
        """FLOPs of the full model for each sample (N,)."""
        return self.num_layers * self.layer(n_tokens) + self.final_head

    def ratio(self, exit_layer: np.ndarray, n_tokens: np.ndarray) -> float:
        """Total early-exit FLOPs / total full-model FLOPs over a set of samples."""
        return float(self.early_exit(exit_layer, n_tokens).sum() / self.full(n_tokens).sum())
