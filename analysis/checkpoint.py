"""Checkpoints, the Hugging Face way: a folder holding config.json (the backbone's config plus a ``de3`` section with
the DE3 settings and label names), model.safetensors (never pickle), the tokenizer files, and the training records
train_config.json, data.json and metrics.json.

    save_model / load_model    write / read a ``DE3Bert`` (``DE3Bert.save_pretrained`` / ``from_pretrained``), checking
                               files, label count and every shape where they enter
    load_checkpoint            the model in eval mode and its tokenizer
    compact_checkpoint         a small copy: float16, and without the backbone tensors equal to the pretrained
                               backbone named in the config, which loading takes from that backbone
    load_checkpoint_data       data to score with a checkpoint: its own (as data.json records it) or any other,
                               labels mapped by name into its classes

A folder is written beside and renamed into place (``io.atomic_dir``), so it is never half-written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from .backbones import load_tokenizer
from .config import ModelConfig, as_saved
from .errors import CheckpointError, DE3Error, one_line, shorten
from .io import atomic_dir, os_errors, path_kind, read_json_object
from .model import DE3Bert

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
RECORD_FILES = ("train_config.json", "data.json", "metrics.json")  # written by training, copied as they are
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "spiece.model", "vocab.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# What a checkpoint folder holds as a model (compact writes these afresh); anything else in its folder is kept.
MODEL_FILES = frozenset({CONFIG_FILE, WEIGHTS_FILE, "pytorch_model.bin", "tokenizer.json", "tokenizer_config.json",
                         "special_tokens_map.json", "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt",
                         "spiece.model", "sentencepiece.bpe.model", *RECORD_FILES})


# ---- writing -------------------------------------------------------------------------------------------------------


def save_model(model: DE3Bert, folder: str | Path, tokenizer=None, extra_files: dict[str, dict] | None = None, *,
               half: bool = False, omit_base: bool = False) -> Path:
    """Write config.json (backbone config + ``de3`` settings + label names), model.safetensors, the tokenizer and
    ``extra_files`` ({name: JSON payload}). The folder appears whole or not at all.

    For small shipped checkpoints: ``half`` stores floating-point tensors as float16 (loaded back as float32);
    ``omit_base`` leaves out backbone tensors identical to the pretrained backbone named in the config (e.g. frozen
    token embeddings), which ``load_model`` then takes from that backbone.
    """
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    omitted: list[str] = []
    if omit_base:
        base = _base_backbone_state(model.config.backbone)
        omitted = sorted(k for k, v in state.items() if k.startswith("backbone.")
                         and k[len("backbone."):] in base and torch.equal(base[k[len("backbone."):]], v))
        state = {k: v for k, v in state.items() if k not in omitted}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    with atomic_dir(folder) as tmp:
        config = model.backbone.config.to_dict()
        config.update(
            de3=model.config.to_dict(),
            id2label={str(i): n for i, n in enumerate(model.config.label_names)},
            label2id={n: i for i, n in enumerate(model.config.label_names)},
        )
        if omitted:
            config["de3_base_weights"] = {"backbone": model.config.backbone, "tensors": omitted}
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        for name, payload in (extra_files or {}).items():
            (tmp / name).write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return Path(folder)


def compact_checkpoint(source: str | Path, out: str | Path, *, half: bool = True) -> list[str]:
    """Write ``source`` to ``out`` as a compact checkpoint (``save_model`` with ``omit_base``, float16 with ``half``)
    that loads like any other. ``out`` may be ``source`` itself: what it holds besides a model (``MODEL_FILES``) --
    traces, the README.md model card, notes -- is kept. Returns the names of the entries kept."""
    source, out = Path(source), Path(out)
    model, tokenizer = load_checkpoint(source)
    records = {name: read_json_object(source / name, fix="fix or remove it")
               for name in RECORD_FILES if path_kind(source / name) == "file"}
    kept = []
    with atomic_dir(out) as tmp:  # replaces ``out`` once complete
        staged = save_model(model, tmp / "checkpoint", tokenizer, extra_files=records, half=half, omit_base=True)
        for item in staged.iterdir():
            item.rename(tmp / item.name)
        staged.rmdir()
        if path_kind(out) == "dir":
            for item in sorted(out.iterdir()):
                if item.name.startswith(".") or item.name in MODEL_FILES:
                    continue
                with os_errors(item):
                    if item.is_dir() and not item.is_symlink():
                        shutil.copytree(item, tmp / item.name, symlinks=True)
                    else:
                        shutil.copy2(item, tmp / item.name, follow_symlinks=False)
                kept.append(item.name)
    return kept


# ---- reading -------------------------------------------------------------------------------------------------------


def read_checkpoint_config(folder: str | Path) -> dict:
    """config.json of a checkpoint folder, checked: a ``de3`` section, a positive layer count and at least two
    distinct label names; ``CheckpointError`` saying which file is wrong and what to do otherwise."""
    folder = Path(folder)
    kind = path_kind(folder, CheckpointError)  # a permission problem or a symlink loop is said as such
    if kind is None:
        raise CheckpointError(f"{folder}: checkpoint folder not found; train one with `python -m analysis train`")
    if kind != "dir":
        raise CheckpointError(f"{folder}: is a file; a checkpoint is the folder holding config.json and {WEIGHTS_FILE}")
    path = folder / CONFIG_FILE
    if path_kind(path, CheckpointError) != "file":
        raise CheckpointError(f"{folder}: missing {CONFIG_FILE}; this is not a DE3-BERT checkpoint folder")
    raw = read_json_object(path, CheckpointError, fix="re-save the checkpoint")
    if not isinstance(raw.get("de3"), dict):
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


def load_model(folder: str | Path, *, map_location: str | torch.device = "cpu") -> DE3Bert:
    """A ``DE3Bert`` from a folder written by ``save_model``, in eval mode on ``map_location``: files, backbone
    type, label count and every tensor's shape checked (``CheckpointError`` naming the file otherwise)."""
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
    saved = raw.pop("de3")
    if isinstance(saved, dict):
        saved = as_saved(saved)  # a field the checkpoint predates means what it meant then
    config = ModelConfig.from_dict(saved, source=str(folder / CONFIG_FILE))
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
    model = DE3Bert(config, backbone)
    expected = model.state_dict()
    state = {k: v.to(expected[k].dtype) if k in expected and v.is_floating_point() else v for k, v in state.items()}
    _check_state(model, state, weights)
    model.load_state_dict(state, strict=True)
    return model.to(map_location).eval()


def _base_backbone_state(name: str, needed_by: Path | None = None) -> dict[str, torch.Tensor]:
    """The pretrained backbone's own tensors, by their names inside the backbone module."""
    from .backbones import load_backbone, quiet_loading

    try:
        with quiet_loading():  # a classifier's folder holds a head the encoder does not take: no report of it
            return {k: v.detach() for k, v in load_backbone(name).state_dict().items()}
    except DE3Error as exc:
        if needed_by is None:
            raise
        raise CheckpointError(f"{needed_by}: this compact checkpoint takes some weights from backbone {name!r}, "
                              f"which cannot be loaded ({exc})") from None


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


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode on ``device``, tokenizer) from a folder written by ``save_model``.

    Refuses a checkpoint whose prototypes were never fitted for some class (trained without a row of it): every
    DR it gave would be a distance to an empty vector."""
    folder = Path(folder)
    model = load_model(folder, map_location=device)
    model.bank.require_fitted(model.config.label_names, str(folder))
    source = str(folder) if any(path_kind(folder / f, CheckpointError) == "file" for f in TOKENIZER_FILES) \
        else model.config.backbone
    return model, load_tokenizer(source)


# ---- the data a checkpoint scores ----------------------------------------------------------------------------------


def checkpoint_data_info(folder: str | Path) -> dict:
    """data.json of a checkpoint: how its training data was loaded (spec, seed and ``data.RECORDED_OPTIONS``:
    data_dir, columns, header, max_train_samples, validation_data, test_data), plus name, label_names, metric.
    Empty when the checkpoint has none."""
    path = Path(folder) / "data.json"
    if path_kind(path, CheckpointError) != "file":
        return {}
    return read_json_object(path, CheckpointError, fix="pass --data instead")


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
