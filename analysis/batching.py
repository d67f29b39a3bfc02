"""Tokenise a split in chunks into compact flat arrays, then cut it into padded batches (shuffled and
length-grouped for training, length-sorted for evaluation so little compute goes to padding).

Token ids are stored as one flat int32 array plus offsets (about 4 bytes per token), not as Python lists
(about 36 bytes per token and key), so MNLI-sized training sets fit in a few hundred MB.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

ENCODE_CHUNK = 4096  # texts tokenised per call: bounds the tokenizer's temporary Python lists


@dataclass
class Encoded:
    """A tokenised split: sample i's token ids are ``input_ids[offsets[i]:offsets[i+1]]``."""

    input_ids: np.ndarray  # (T_total,) int32
    offsets: np.ndarray  # (N + 1,) int64
    token_type_ids: np.ndarray | None  # (T_total,) int8, for tokenizers that make them
    labels: np.ndarray  # (N,) int64
    pad_token_id: int = 0
    padding_side: str = "right"

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def tokens(self, i: int) -> np.ndarray:
        return self.input_ids[self.offsets[i] : self.offsets[i + 1]]


def encode(tokenizer, texts: Sequence[str], text_pairs: Sequence[str] | None, labels: Sequence[int], max_length: int,
           chunk_size: int = ENCODE_CHUNK) -> Encoded:
    """Tokenise texts (and pairs) with truncation to ``max_length`` tokens, ``chunk_size`` texts at a time;
    padding happens per batch."""
    with_types = "token_type_ids" in tokenizer.model_input_names
    ids, types, lengths = [], [], []
    for start in range(0, len(texts), chunk_size):
        stop = min(start + chunk_size, len(texts))
        enc = tokenizer(list(texts[start:stop]), list(text_pairs[start:stop]) if text_pairs is not None else None,
                        truncation=True, max_length=max_length, return_attention_mask=False,
                        return_token_type_ids=with_types)
        lengths.extend(len(x) for x in enc["input_ids"])
        ids.append(np.fromiter((t for x in enc["input_ids"] for t in x), dtype=np.int32))
        if with_types:
            types.append(np.fromiter((t for x in enc["token_type_ids"] for t in x), dtype=np.int8))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    empty = np.zeros(0, dtype=np.int32)
    return Encoded(
        input_ids=np.concatenate(ids) if ids else empty,
        offsets=offsets,
        token_type_ids=(np.concatenate(types) if types else empty.astype(np.int8)) if with_types else None,
        labels=np.asarray(labels, dtype=np.int64),
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        padding_side=getattr(tokenizer, "padding_side", "right"),
    )


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
    """Pad the chosen samples into tensors on ``device`` (the keys the tokenizer's model takes); ``labels``
    included. ``tokenizer`` is unused (kept for call compatibility): padding id and side come from ``encoded``."""
    lengths = encoded.lengths[indices]
    width = int(lengths.max()) if len(indices) else 0
    input_ids = np.full((len(indices), width), encoded.pad_token_id, dtype=np.int64)
    mask = np.zeros((len(indices), width), dtype=np.int64)
    types = np.zeros((len(indices), width), dtype=np.int64) if encoded.token_type_ids is not None else None
    for row, (i, n) in enumerate(zip(indices, lengths)):
        cols = slice(width - n, width) if encoded.padding_side == "left" else slice(0, n)
        lo, hi = encoded.offsets[i], encoded.offsets[i + 1]
        input_ids[row, cols] = encoded.input_ids[lo:hi]
        mask[row, cols] = 1
        if types is not None:
            types[row, cols] = encoded.token_type_ids[lo:hi]
    batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}
    if types is not None:
        batch["token_type_ids"] = torch.from_numpy(types)
    batch["labels"] = torch.from_numpy(encoded.labels[indices])
    return {k: v.to(device) for k, v in batch.items()}


def iterate(tokenizer, encoded: Encoded, order: list[np.ndarray], device) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    for indices in order:
        yield indices, collate(tokenizer, encoded, indices, device)
