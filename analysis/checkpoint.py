"""Load a trained checkpoint with its tokenizer, and data to score with it: its own (the splits it was trained
on) or any other, labels mapped into its classes."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .backbones import load_tokenizer
from .errors import CheckpointError, one_line
from .io import os_errors, path_kind
from .model import DE3Bert, read_checkpoint_config

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "spiece.model", "vocab.json")


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode on ``device``, tokenizer) from a folder written by ``DE3Bert.save_pretrained``.

    Refuses a checkpoint whose prototypes were never fitted for some class (trained without a row of it): every
    DR it gave would be a distance to an empty vector."""
    folder = Path(folder)
    model = DE3Bert.from_pretrained(folder, map_location=device)
    model.bank.require_fitted(model.config.label_names, str(folder))
    source = str(folder) if any(path_kind(folder / f, CheckpointError) == "file" for f in TOKENIZER_FILES) \
        else model.config.backbone
    return model, load_tokenizer(source)


def checkpoint_data_info(folder: str | Path) -> dict:
    """data.json of a checkpoint: how its training data was loaded (spec, seed and ``data.RECORDED_OPTIONS``:
    data_dir, columns, header, max_train_samples, validation_data, test_data), plus name, label_names, metric."""
    path = Path(folder) / "data.json"
    if path_kind(path, CheckpointError) != "file":
        return {}
    with os_errors(path, CheckpointError):
        text = path.read_bytes()
    try:
        info = json.loads(text.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({one_line(exc, 200)}); pass --data instead") from None
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: expected a JSON object; pass --data instead")
    return info


def load_checkpoint_data(folder: str | Path, spec: str | None = None, **overrides):
    """Data to score with a checkpoint, its labels mapped by name into the checkpoint's label ids.

    Parameters
    ----------
    folder : str or Path
        A checkpoint folder written by ``train``.
    spec : str, optional
        A data spec for ``analysis.data.load_data``, loaded with ``overrides``. Default: the checkpoint's own
        data as its data.json records it (spec, seed, columns, separate validation / test files), so every
        split is the one it was trained and tested on; ``overrides`` that are not None replace recorded options.

    Returns
    -------
    DataBundle
        Its ``label_names`` are the checkpoint's, in the checkpoint's order. The data may hold only some of
        them; a data class matches a checkpoint class of the same name (after label cleaning), and integer
        labels 0..K-1 read against named classes (a 0/1 file for GLUE SST-2's 'negative', 'positive') are the
        class ids themselves. A file without a label column loads with every label -1 (prediction only).

    Raises
    ------
    CheckpointError
        No data.json and no ``spec``, or data with classes the checkpoint never saw (named).
    DataError
        A bad data file.
    """
    from .data import class_ids, class_list, load_data, reload_data

    info = checkpoint_data_info(folder)
    if spec is None:
        if "spec" not in info:
            raise CheckpointError(f"{folder}: no data.json saying what it was trained on; pass --data")
        data = reload_data(info, training=False, **overrides)
    else:
        data = load_data(spec, training=False, **overrides)
    model_labels = list(read_checkpoint_config(Path(folder))["de3"]["label_names"])  # checked: strings
    unseen = [n for n, i in zip(data.label_names, class_ids(data.label_names, model_labels)) if i is None]
    if unseen:
        raise CheckpointError(f"{data.name}: the data has classes the checkpoint never saw: {class_list(unseen)}; "
                              f"the checkpoint knows {class_list(model_labels)}; use data (or a --label-column) "
                              "holding only these classes")
    return data.relabel(model_labels)
