"""Tokenise a split once, then cut it into padded batches (shuffled and length-grouped for training, length-sorted
for evaluation so little compute goes to padding)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Encoded:
    """A tokenised split: one feature dict per sample (lists of ints), and the labels."""

    features: list[dict[str, list[int]]]
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.features)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(f["input_ids"]) for f in self.features), dtype=np.int64, count=len(self.features))


def encode(tokenizer, texts: Sequence[str], text_pairs: Sequence[str] | None, labels: Sequence[int], max_length: int) -> Encoded:
    """Tokenise texts (and pairs) with truncation to ``max_length`` tokens; padding happens per batch."""
    enc = tokenizer(list(texts), list(text_pairs) if text_pairs is not None else None, truncation=True, max_length=max_length)
    keys = [k for k in tokenizer.model_input_names if k in enc]
    features = [{k: enc[k][i] for k in keys} for i in range(len(texts))]
    return Encoded(features, np.asarray(labels, dtype=np.int64))


def encode_split(tokenizer, split, max_length: int) -> Encoded:
    """``encode`` for a ``data.Split``."""
    return encode(tokenizer, split.texts, split.text_pairs, split.labels, max_length)


def eval_order(encoded: Encoded, batch_size: int) -> list[np.ndarray]:
    """Batches of indices sorted by length (longest first, so memory peaks at once)."""
    order = np.argsort(-encoded.lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def train_order(encoded: Encoded, batch_size: int, rng: np.random.Generator, group_by_length: bool = True) -> list[np.ndarray]:
    """Shuffled batches; with ``group_by_length``, each run of 50 batches is sorted by length first (as Hugging
    Face's ``group_by_length``), then the batches are shuffled, so batches are random but pad little."""
    order = rng.permutation(len(encoded))
    if group_by_length:
        lengths = encoded.lengths
        chunk = batch_size * 50
        order = np.concatenate([c[np.argsort(-lengths[c], kind="stable")] for c in np.array_split(order, max(1, -(-len(order) // chunk)))])
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(tokenizer, encoded: Encoded, indices: np.ndarray, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Pad the chosen samples into tensors on ``device``; ``labels`` included."""
    batch = tokenizer.pad([encoded.features[i] for i in indices], return_tensors="pt")
    batch["labels"] = torch.from_numpy(encoded.labels[indices])
    return {k: v.to(device) for k, v in batch.items()}


def iterate(tokenizer, encoded: Encoded, order: list[np.ndarray], device) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    for indices in order:
        yield indices, collate(tokenizer, encoded, indices, device)
