"""Load a trained checkpoint with its tokenizer, and the data it was trained on."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .backbones import load_tokenizer
from .errors import CheckpointError, name_list, one_line
from .model import DE3Bert, read_checkpoint_config

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "spiece.model", "vocab.json")


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode on ``device``, tokenizer) from a folder written by ``DE3Bert.save_pretrained``."""
    folder = Path(folder)
    model = DE3Bert.from_pretrained(folder, map_location=device)
    source = str(folder) if any((folder / f).is_file() for f in TOKENIZER_FILES) else model.config.backbone
    return model, load_tokenizer(source)


def checkpoint_data_info(folder: str | Path) -> dict:
    """data.json of a checkpoint: how its training data was loaded (spec, data_dir, columns, seed)."""
    path = Path(folder) / "data.json"
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({one_line(exc, 200)}); pass --data instead") from None
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: expected a JSON object; pass --data instead")
    return info


def load_checkpoint_data(folder: str | Path, spec: str | None = None, **overrides):
    """The checkpoint's own data source (same splits as in training), or ``spec`` with ``overrides``.

    Refuses data whose label set differs from the checkpoint's.
    """
    from .data import load_data

    info = checkpoint_data_info(folder)
    if spec is None:
        if "spec" not in info:
            raise CheckpointError(f"{folder}: no data.json saying what it was trained on; pass --data")
        kwargs = {k: info.get(k) for k in ("data_dir", "text_columns", "label_column", "header", "max_train_samples")}
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        data = load_data(info["spec"], seed=info.get("seed", 42), **kwargs)
    else:
        data = load_data(spec, **overrides)
    model_labels = [str(n) for n in read_checkpoint_config(Path(folder))["de3"].get("label_names", [])]
    if list(data.label_names) != model_labels:
        unseen = [n for n in data.label_names if n not in model_labels]
        absent = [n for n in model_labels if n not in data.label_names]
        what = (f"classes the checkpoint never saw: {_classes(unseen)}" if unseen else
                f"not all of its classes (no {_classes(absent)})" if absent else "its classes in another order")
        raise CheckpointError(f"{data.name}: the data has {what}; the checkpoint {Path(folder).name} knows "
                              f"{_classes(model_labels)}; use data (or a label column) with exactly these classes")
    return data


def _classes(names: list[str]) -> str:
    """A few class names for a message (a wrong label column can hold thousands of values)."""
    return name_list(names, limit=8, width=30, quote=True)
