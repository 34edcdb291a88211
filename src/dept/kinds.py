"""The three kinds of backbone dept wraps, and the one place that decides which kind a model is.

A causal LM, an encoder-decoder and an encoder classifier need different inputs (left-padded
source + answer, encoder source + decoder labels, source + class id), so the kind is decided once,
from the config and the model class, never from the model's name. `kind_from_config` serves
before a model is loaded (to pick the Auto class); `model_kind` once it is.
"""

from __future__ import annotations

from typing import Any, Literal

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


def kind_from_config(config: Any) -> Kind:
    """Before loading: encoder-decoder -> seq2seq, a sequence-classification architecture ->
    classification, anything else -> causal."""
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    if any(_is_classifier(arch) for arch in getattr(config, "architectures", None) or []):
        return "classification"
    return "causal"


def model_kind(model: Any) -> Kind:
    """A loaded backbone's kind, from its config and class; a TypeError for models dept cannot wrap."""
    if getattr(model.config, "is_encoder_decoder", False):
        return "seq2seq"
    cls = type(model).__name__
    if _is_classifier(cls):
        return "classification"
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

    model_type = getattr(model.config, "model_type", None)
    return (
        model_type in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and model_type not in modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )


def cache_name(model) -> str:
    """The keyword (and output field) of a transformers model's KV cache: `cache` since transformers
    5.x renamed it, `past_key_values` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
