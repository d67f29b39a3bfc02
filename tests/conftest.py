"""Shared fixtures: a tiny random BERT saved as a local backbone folder (never downloads), and paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GLUE_DIR = SHARED / "data" / "glue"

WORDS = ("good great fine happy love best nice bad awful poor sad hate worst ugly the a movie film plot actor "
         "is was very not and but it this that story music play team goal vote market").split()


def make_tiny_backbone(folder: Path, num_layers: int = 3) -> Path:
    """A random 3-layer BERT (hidden 32) with a 50-word vocabulary, saved like a Hugging Face model."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})  # transformers 5: a dict, not a file
    assert 1 not in tokenizer("good movie")["input_ids"], "tiny tokenizer maps words to [UNK]"
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> str:
    return str(make_tiny_backbone(tmp_path_factory.mktemp("tiny-bert")))


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory) -> Path:
    """A small, learnable two-class sentiment CSV with a header."""
    import random

    rng = random.Random(0)
    pos, neg, filler = WORDS[:7], WORDS[7:14], WORDS[14:]
    rows = ["text,label"]
    for i in range(120):
        label = i % 2
        words = rng.sample(pos if label else neg, 2) + rng.sample(filler, 3)
        rng.shuffle(words)
        rows.append(f"{' '.join(words)},{'positive' if label else 'negative'}")
    path = tmp_path_factory.mktemp("data") / "tiny.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def tiny_model(tiny_backbone):
    from analysis.backbones import load_backbone
    from analysis.config import ModelConfig
    from analysis.model import DE3Bert

    torch.manual_seed(0)
    return DE3Bert(ModelConfig(backbone=tiny_backbone, label_names=("neg", "pos", "mixed")), load_backbone(tiny_backbone)).eval()
