"""Adapter checkpoints: dept's own format (safetensors + JSON), the official DePT format
(PROMPT_TUNING_LORA, pickled .bin), the official ADePT format (PROMPT_TUNING_LORAX) and PEFT prompt
tuning (PROMPT_TUNING), in and out.

dept format: `adapter_config.json` = {"peft_type": "DEPT", "dept_version", "config": DePTConfig (its
`update` says DePT or ADePT), "backbone": {model_type, hidden_size, vocab_size, name_or_path, kind},
"head": [...]} and `adapter_model.safetensors` with `prompt_embeddings` (m,d), the update's tensors
under the official names (`DePTConfig.update_shapes`: DePT `lora_embedding_A` (s,r), `lora_embedding_B`
(r,d); ADePT also `lora_embedding_a` (r), `lora_embedding_b` (d), with A (d,r)) and, for classifiers,
`head.<param>`.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dept._extras import requires
from dept.core.config import OFFICIAL_INIT_TEXT, DePTConfig
from dept.core.prompt import DePTAdapter

logger = logging.getLogger(__name__)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
LEGACY_WEIGHTS_NAME = "adapter_model.bin"
# Update tensors of either kind (official names). Rank-0 saves from before PT lost its A, B hold zero-size ones.
UPDATE_KEYS = ("lora_embedding_A", "lora_embedding_B", "lora_embedding_a", "lora_embedding_b")
OFFICIAL_UPDATES = {"PROMPT_TUNING_LORA": "position", "PROMPT_TUNING_LORAX": "token"}  # DePT, ADePT


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: a killed run never
    leaves a half-written checkpoint behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a saved adapter is readable like any other file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_adapter(
    path: str | Path, config: DePTConfig, tensors: dict[str, torch.Tensor], backbone: dict[str, Any]
) -> None:
    from dept import __version__

    path = Path(path)
    meta = {
        "peft_type": "DEPT",
        "dept_version": __version__,
        "config": config.to_dict(),
        "backbone": backbone,
        "head": sorted(k[len("head.") :] for k in tensors if k.startswith("head.")),
    }
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
    _atomic_write(path / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    _atomic_write(path / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2, sort_keys=True)))


def read_adapter(path: str | Path) -> tuple[DePTConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """Read any supported adapter format into (config, tensors with dept key names, backbone info)."""
    path = Path(path)
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"No {CONFIG_NAME} in {path}; expected an adapter folder saved by dept, DePT or PEFT.")
    try:
        meta = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_file} is not valid JSON ({err}); the file is truncated or corrupt.") from err
    if not isinstance(meta, dict):
        raise ValueError(f"{config_file} holds a JSON {type(meta).__name__}, not the object an adapter config is.")
    kind = meta.get("peft_type")
    if kind not in ("DEPT", *OFFICIAL_UPDATES, "PROMPT_TUNING"):
        raise ValueError(
            f"{config_file} has peft_type {kind!r}; dept reads 'DEPT', 'PROMPT_TUNING_LORA' (official DePT), "
            "'PROMPT_TUNING_LORAX' (official ADePT) and 'PROMPT_TUNING' (PEFT)."
        )
    tensors = read_weights(path)
    try:
        if kind in OFFICIAL_UPDATES:
            return _from_official(meta, tensors, OFFICIAL_UPDATES[kind])
        if kind == "PROMPT_TUNING":
            return _from_peft_prompt_tuning(meta, tensors)
        if not isinstance(meta.get("config"), dict):
            raise ValueError("no 'config' object (the DePTConfig) in it; re-save the adapter with dept")
        config = DePTConfig.from_dict(meta["config"])
    except KeyError as err:  # an entry the format requires
        raise ValueError(
            f"Adapter {path} ({kind}) lacks {err.args[0]!r}; its config or weights file is incomplete."
        ) from err
    except (ValueError, TypeError) as err:
        raise ValueError(f"{config_file}: {err}") from err
    missing = [key for key in ("prompt_embeddings", *config.update_shapes(1)) if key not in tensors]
    if missing:
        raise ValueError(
            f"The weights in {path} lack the tensor(s) {missing} that its config (rank {config.rank}) needs."
        )
    return config, tensors, meta.get("backbone") or {}


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The adapter's tensors; a truncated or corrupt file, or a NaN/inf tensor, is named in the error."""
    if (path / WEIGHTS_NAME).is_file():
        file = path / WEIGHTS_NAME
        try:
            tensors = load_file(file)
        except SafetensorError as err:
            raise ValueError(f"{file} is not a readable safetensors file ({err}); it is truncated or corrupt.") from err
    elif (path / LEGACY_WEIGHTS_NAME).is_file():
        file = path / LEGACY_WEIGHTS_NAME
        try:
            # Legacy pickles only through the tensor-only unpickler.
            tensors = torch.load(file, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(
                f"{file} is not a readable PyTorch weights file ({reason}); it is truncated or corrupt."
            ) from err
        if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
            raise ValueError(f"{file} does not hold a dict of tensors.")
    else:
        raise FileNotFoundError(f"No {WEIGHTS_NAME} or {LEGACY_WEIGHTS_NAME} in {path}.")
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(
                f"{file}: tensor {key!r} holds NaN or inf values (saved from a diverged run); "
                "use an earlier checkpoint or retrain with lower learning rates."
            )
    return tensors


def _from_official(meta: dict, weights: dict[str, torch.Tensor], update: str):
    """An official DePT or ADePT save: `prompt_embeddings` and `prompt_encoder.lora_embedding_*`."""
    config = DePTConfig(
        prompt_length=int(meta["num_virtual_tokens"]),
        rank=int(meta.get("r", 0)),
        max_length=int(meta.get("max_length", 256)),
        lora_alpha=float(meta.get("lora_alpha", 8)),
        prompt_init="text" if str(meta.get("prompt_tuning_init", "TEXT")).upper() == "TEXT" else "random",
        init_text=meta.get("prompt_tuning_init_text") or OFFICIAL_INIT_TEXT,
        update=update,
    )
    tensors = {"prompt_embeddings": weights["prompt_embeddings"]}
    for key in config.update_shapes(1):
        for candidate in (f"prompt_encoder.{key}", key):
            if candidate in weights:
                tensors[key] = weights[candidate]
    if config.rank and len(tensors) == 1:
        # Some released checkpoints carry only the prompt: the official loader then keeps the
        # fresh init (A kaiming, B zeros), i.e. a zero update. Do the same, and say so.
        logger.warning(
            "Official checkpoint has no low-rank matrices (r=%d); using the official init (B = 0, so the "
            "update is zero and the adapter acts as prompt tuning with m=%d).",
            config.rank,
            config.prompt_length,
        )
    backbone = {
        "model_type": None,
        "hidden_size": int(meta.get("token_dim") or tensors["prompt_embeddings"].shape[1]),
        "vocab_size": None,
        "name_or_path": meta.get("base_model_name_or_path"),
        "kind": "seq2seq" if meta.get("task_type") == "SEQ_2_SEQ_LM" else None,
    }
    return config, tensors, backbone


def _from_peft_prompt_tuning(meta: dict, weights: dict[str, torch.Tensor]):
    m = int(meta["num_virtual_tokens"])
    key = next((k for k in weights if k.endswith("prompt_embeddings")), None)
    if key is None:
        raise ValueError(f"PEFT prompt-tuning weights have no 'prompt_embeddings' tensor (keys: {sorted(weights)}).")
    prompt = weights[key]
    if prompt.shape[0] != m:
        # PEFT keeps one block of m rows per transformer submodule; the first is the encoder's.
        logger.warning("PEFT prompt has %d rows for %d virtual tokens; using the first %d.", prompt.shape[0], m, m)
    config = DePTConfig(
        prompt_length=m,
        rank=0,
        prompt_init="text" if meta.get("prompt_tuning_init") == "TEXT" else "random",
        init_text=meta.get("prompt_tuning_init_text") or OFFICIAL_INIT_TEXT,
    )
    backbone = {
        "model_type": None,
        "hidden_size": int(prompt.shape[1]),
        "vocab_size": None,
        "name_or_path": meta.get("base_model_name_or_path"),
        "kind": None,
    }
    return config, {"prompt_embeddings": prompt[:m]}, backbone


def check_backbone(saved: dict[str, Any], actual: dict[str, Any], path: Path) -> None:
    """Refuse an adapter saved on a backbone of another shape or kind, naming both."""
    for field in ("hidden_size", "vocab_size", "kind"):
        expected = saved.get(field)
        if expected is not None and expected != actual[field]:
            raise ValueError(
                f"Adapter at {path} was trained on a backbone with {field}={expected} "
                f"({saved.get('name_or_path') or 'unknown backbone'}), but this backbone has {field}={actual[field]} "
                f"({actual.get('name_or_path') or actual.get('model_type')}). Load it onto the backbone it was trained with."
            )


def check_shapes(config: DePTConfig, tensors: dict[str, torch.Tensor], hidden: int, path: Path) -> None:
    expected = {"prompt_embeddings": (config.prompt_length, hidden), **config.update_shapes(hidden)}
    for key, shape in expected.items():
        if key in tensors and tuple(tensors[key].shape) != shape:
            raise ValueError(
                f"Checkpoint {path} tensor {key!r} has shape {tuple(tensors[key].shape)}, but its config "
                f"(m={config.prompt_length}, r={config.rank}, s={config.max_length}, {config.update}-wise update) on a "
                f"backbone with hidden size "
                f"{hidden} needs {shape}."
            )


def fill_adapter(adapter: DePTAdapter, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Copy saved tensors into an adapter in place (so an optimizer keeps pointing at its
    parameters). Tensors a checkpoint lacks keep their fresh init: the official B = 0, a
    classifier's untrained head."""
    state = adapter.state_dict()
    # r=0 adapters have no A, B; those saved before that was so hold zero-size ones.
    tensors = {k: v for k, v in tensors.items() if k in state or k not in UPDATE_KEYS or v.numel()}
    for key, value in tensors.items():
        if key not in state or state[key].shape != value.shape:
            have = tuple(state[key].shape) if key in state else "no such tensor"
            raise ValueError(
                f"Checkpoint {path} tensor {key!r} {tuple(value.shape)} does not fit this adapter ({have}); "
                "was it saved for another backbone or head?"
            )
    missing = sorted(k for k in state if k.startswith("head.") and k not in tensors)
    if missing:
        logger.warning("Checkpoint %s has no classifier head (%s); the head keeps its fresh init.", path, missing)
    with torch.no_grad():
        for key, value in tensors.items():
            state[key].copy_(value)


def convert_official(src_dir: str | Path, dst_dir: str | Path) -> DePTConfig:
    """Convert an official DePT checkpoint (pickled .bin) into dept's safetensors format."""
    config, tensors, backbone = read_adapter(src_dir)
    if config.rank and not set(config.update_shapes(1)) <= set(tensors):
        fresh = DePTAdapter(config, tensors["prompt_embeddings"].shape[1], tensors["prompt_embeddings"])
        tensors = dict(fresh.state_dict())
    write_adapter(dst_dir, config, tensors, backbone)
    return config


def export_peft(model, path: str | Path, adapter_name: Optional[str] = None) -> None:
    """Write a DePTModel's r=0 adapter as a PEFT PROMPT_TUNING adapter that `PeftModel.from_pretrained` loads."""
    with requires("train"):
        from peft import PromptTuningConfig, TaskType

    name = adapter_name or model.active_adapter
    adapter = model.adapters[name]
    # The offsets are zero while B (and ADePT's b) are: then the adapter is prompt tuning.
    outputs = [
        getattr(adapter, key)
        for key in ("lora_embedding_B", "lora_embedding_b")
        if getattr(adapter, key, None) is not None
    ]
    if any(bool(t.detach().abs().sum() > 0) for t in outputs):
        raise ValueError(
            f"Adapter {name!r} has rank {adapter.config.rank} with a non-zero update; PEFT prompt tuning cannot "
            "represent it. Export only r=0 adapters (or ones whose update is still zero)."
        )
    task_types = {"causal": TaskType.CAUSAL_LM, "seq2seq": TaskType.SEQ_2_SEQ_LM}
    if model.kind not in task_types:
        raise ValueError(f"PEFT export supports causal and seq2seq backbones, not {model.kind!r}.")
    base_cfg = model.base_model.config
    peft_config = PromptTuningConfig(
        task_type=task_types[model.kind],
        num_virtual_tokens=adapter.prompt_length,
        token_dim=model.hidden_size,
        num_transformer_submodules=1,
        base_model_name_or_path=getattr(base_cfg, "_name_or_path", None),
    )
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    peft_config.save_pretrained(str(path))
    prompt = adapter.prompt_embeddings.detach().cpu().float().contiguous()
    _atomic_write(
        path / WEIGHTS_NAME, lambda tmp: save_file({"prompt_embeddings": prompt}, tmp, metadata={"format": "pt"})
    )
