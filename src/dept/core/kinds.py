"""The three kinds of backbone dept wraps, and the one place that decides which kind a model is.

A causal LM, an encoder-decoder and an encoder classifier need different inputs (left-padded
source + answer, encoder source + decoder labels, source + class id), so the kind is decided once,
from the config and the model class, never from the model's name. `kind_from_config` serves
before a model is loaded (to pick the Auto class); `model_kind` once it is.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

logger = logging.getLogger(__name__)

Kind = Literal["causal", "seq2seq", "classification"]
KINDS: tuple[str, ...] = ("causal", "seq2seq", "classification")


def _is_classifier(class_name: str) -> bool:
    if class_name.endswith("ForSequenceClassification"):
        return True
    from transformers.models.auto import modeling_auto

    return class_name in _class_names(modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)


def _class_names(mapping: dict) -> set[str]:
    names: set[str] = set()
    for value in mapping.values():
        names.update(value if isinstance(value, (list, tuple)) else [value])
    return names


def is_bidirectional(config: Any) -> bool:
    """An encoder whose attention sees the whole sequence (BERT, RoBERTa, DeBERTa…): a masked-LM
    architecture not configured as a decoder. Teacher forcing on it would see the answer."""
    from transformers.models.auto import modeling_auto

    if getattr(config, "is_encoder_decoder", False):
        return False
    if getattr(config, "is_decoder", False) or getattr(config, "causal", False):  # `causal`: XLM, Flaubert
        return False
    return getattr(config, "model_type", None) in modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES


def kind_from_config(config: Any) -> Kind:
    """Before loading: encoder-decoder -> seq2seq, a sequence-classification architecture or a
    bidirectional encoder -> classification, anything else (a decoder) -> causal."""
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    architectures = getattr(config, "architectures", None) or []
    if any(_is_classifier(arch) for arch in architectures):
        return "classification"
    if is_bidirectional(config):
        logger.info(
            "%s is a bidirectional encoder (config.is_decoder=False, architectures %s): loading it as a "
            "sequence classifier, since as a causal LM teacher forcing would see the answer.",
            type(config).__name__,
            architectures,
        )
        return "classification"
    return "causal"


def model_kind(model: Any) -> Kind:
    """A loaded backbone's kind, from its config and class; a TypeError for models dept cannot wrap."""
    if getattr(model.config, "is_encoder_decoder", False):
        return "seq2seq"
    cls = type(model).__name__
    if _is_classifier(cls):
        return "classification"
    if is_bidirectional(model.config) and model.get_output_embeddings() is not None:
        raise TypeError(
            f"{cls} is a bidirectional encoder (config.is_decoder=False); teacher forcing would see the answer. "
            "Load it as a sequence classifier (load_backbone(..., kind='classification') / "
            "AutoModelForSequenceClassification) or set is_decoder=True for a real decoder."
        )
    from transformers.models.auto import modeling_auto

    if cls in _class_names(modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) or (
        model.can_generate() and model.get_output_embeddings() is not None
    ):
        return "causal"
    raise TypeError(
        f"{cls} is neither an encoder-decoder, a causal LM nor a sequence classifier; load the backbone with "
        "AutoModelForCausalLM, AutoModelForSeq2SeqLM or AutoModelForSequenceClassification."
    )


def pools_last_token(model: Any) -> bool:
    """Decoder-only classifiers (Llama, GPT-2, Mistral…) pool the last slot; given `inputs_embeds`
    they cannot find padding, so their rows must end at the last slot (left padding)."""
    from transformers.models.auto import modeling_auto

    if getattr(model.config, "is_encoder_decoder", False):
        return False  # Marian, Pegasus, BART…: in the causal-LM mapping for their decoder alone
    model_type = getattr(model.config, "model_type", None)
    return (
        model_type in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and model_type not in modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )


def takes_logits_to_keep(model) -> bool:
    """Whether a transformers model's forward can project only some positions onto the vocabulary."""
    import inspect

    return "logits_to_keep" in inspect.signature(model.forward).parameters


def cache_name(model) -> str:
    """The keyword (and output field) of a transformers model's KV cache: `cache` since transformers
    5.x renamed it, `past_key_values` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def cache_length(cache) -> int:
    """Tokens a KV cache holds (0 for none), for either cache format."""
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    return int(cache[0][0].shape[-2])  # legacy tuple of (key, value) per layer
