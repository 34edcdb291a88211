"""DePTModel: a frozen transformers backbone with any number of named DePT adapters.

The backbone is never patched (a classifier's head modules only get forward hooks that route rows to
their adapter's head): every call embeds the tokens, lets `prepend_prompts` build the
prompted embeddings, and hands `inputs_embeds` to the backbone's own forward/generate. The model's
kind (causal LM, encoder-decoder, encoder classifier) is read from its config and class.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from transformers import PreTrainedModel

from dept.core import checkpoint
from dept.core.config import DePTConfig
from dept.core.heads import Heads
from dept.core.kinds import Kind, cache_length, model_kind, pools_last_token, takes_logits_to_keep
from dept.core.loss import causal_loss, keep_positions, logits_needed
from dept.core.prompt import AdapterGroup, DePTAdapter, PromptedInputs, initial_prompt, prepend_prompts

logger = logging.getLogger(__name__)

BASE = "__base__"  # adapter name for rows that run the plain backbone


class DePTModel(nn.Module):
    """A frozen backbone plus named DePT adapters; `adapter_names` picks an adapter per row.

    For classifiers, each adapter carries its own copy of the task head (the backbone's own head
    serves `__base__` rows); forward hooks on the head modules route each row to its adapter's."""

    # transformers.Trainer passes `num_items_in_batch` (the batch's target count over all micro-batches)
    # when a model says it normalizes its loss with it: gradient accumulation then sums to the full-batch loss.
    accepts_loss_kwargs = True

    def __init__(
        self,
        model: PreTrainedModel,
        config: Optional[DePTConfig] = None,
        adapter_name: str = "default",
        tokenizer=None,
    ):
        super().__init__()
        self.base_model = model
        self.kind: Kind = model_kind(model)
        # Causal LMs and decoder-only classifiers end each row at the last slot; encoder-decoders and
        # encoder classifiers are right-padded (their encoder positions count from the first slot).
        left = self.kind == "causal" or (self.kind == "classification" and pools_last_token(model))
        self.padding_side = "left" if left else "right"
        self.tokenizer = tokenizer
        for param in model.parameters():
            param.requires_grad_(False)
        self._heads = Heads(model) if self.kind == "classification" else None
        self.adapters = nn.ModuleDict()
        self.active_adapter = adapter_name
        self._supports_logits_to_keep = takes_logits_to_keep(model)
        if config is not None:
            self.add_adapter(adapter_name, config)

    # ----- adapters -------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.base_model.get_input_embeddings().weight.shape[1]

    @property
    def vocab_size(self) -> int:
        return self.base_model.get_input_embeddings().weight.shape[0]

    def __getattr__(self, name: str):
        """What the wrapper lacks comes from the backbone (config, generation_config, loss_type, ...), as
        for PEFT models, so trainers and evaluators written for a PreTrainedModel find it."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or name == "base_model":
                raise
            return getattr(super().__getattr__("base_model"), name)

    @property
    def dept_config(self) -> DePTConfig:
        """The active adapter's config."""
        return self.adapters[self.active_adapter].config

    def add_adapter(self, name: str, config: DePTConfig, prompt_init: Optional[torch.Tensor] = None) -> DePTAdapter:
        if name == BASE:
            raise ValueError(f"{BASE!r} is reserved for rows without an adapter; choose another name.")
        if prompt_init is None:
            tokenizer = self._tokenizer_for(config)
            if config.prompt_init == "text" and tokenizer is None:
                logger.warning(
                    "Adapter %r: no tokenizer for the text init (pass DePTModel(..., tokenizer=tok)); its prompt "
                    "starts from random vocabulary embeddings instead (prompt_init='vocab').",
                    name,
                )
                config = dataclasses.replace(config, prompt_init="vocab")
            prompt_init = initial_prompt(config, self.base_model.get_input_embeddings(), self.vocab_size, tokenizer)
        head = self._heads.copies() if self._heads is not None else {}
        # The model's mode, not nn.Module's default: an adapter added to a model in eval mode (a server
        # loading one) must not run ADePT's dropout.
        adapter = DePTAdapter(config, self.hidden_size, prompt_init, head=head).train(self.training)
        weight = self.base_model.get_input_embeddings().weight
        self.adapters[name] = adapter.to(weight.device)
        if len(self.adapters) == 1 or name == self.active_adapter:
            self.set_adapter(name)
        else:
            adapter.requires_grad_(False)
        return adapter

    def _tokenizer_for(self, config: DePTConfig):
        if config.prompt_init != "text" or self.tokenizer is not None:
            return self.tokenizer
        source = getattr(self.base_model, "name_or_path", "")
        if source and Path(source).is_dir():
            from transformers import AutoTokenizer

            try:
                self.tokenizer = AutoTokenizer.from_pretrained(source)
            except (OSError, ValueError) as err:
                logger.debug("no tokenizer next to the backbone at %s: %s", source, err)
        return self.tokenizer

    def set_adapter(self, name: str) -> None:
        """Make `name` the default adapter and the only trainable one."""
        self._check_names([name])
        for other, adapter in self.adapters.items():
            adapter.requires_grad_(other == name)
        self.active_adapter = name

    def delete_adapter(self, name: str) -> None:
        self._check_names([name])
        del self.adapters[name]
        if self.active_adapter == name and len(self.adapters):
            self.set_adapter(next(iter(self.adapters)))

    def _check_names(self, names: Sequence[str]) -> None:
        unknown = sorted({n for n in names if n != BASE and n not in self.adapters})
        if unknown:
            raise KeyError(f"Unknown adapter(s) {unknown}; loaded adapters are {sorted(self.adapters)} (and {BASE!r}).")

    def _groups(self, batch: int, adapter_names: Optional[Sequence[str]], device) -> list[AdapterGroup]:
        if adapter_names is None:
            if self.active_adapter not in self.adapters:
                raise ValueError(
                    "This DePTModel has no adapter yet: add one with add_adapter(name, DePTConfig(...)) or "
                    f"load_adapter(path), or pass adapter_names=[{BASE!r}, ...] to run the plain backbone."
                )
            return [(self.adapters[self.active_adapter], None)]
        if len(adapter_names) != batch:
            raise ValueError(f"adapter_names has {len(adapter_names)} entries for a batch of {batch} rows.")
        self._check_names(adapter_names)
        distinct = list(dict.fromkeys(adapter_names))
        if len(distinct) == 1:
            return [(None if distinct[0] == BASE else self.adapters[distinct[0]], None)]
        groups = []
        for name in distinct:
            rows = torch.tensor([i for i, n in enumerate(adapter_names) if n == name], device=device)
            groups.append((None if name == BASE else self.adapters[name], rows))
        return groups

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    # ----- running ----------------------------------------------------------------------------
    def _prepare(self, input_ids, attention_mask, inputs_embeds, adapter_names, source_mask):
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("Pass input_ids or inputs_embeds.")
            inputs_embeds = self.base_model.get_input_embeddings()(input_ids)
        groups = self._groups(inputs_embeds.shape[0], adapter_names, inputs_embeds.device)
        return prepend_prompts(inputs_embeds, attention_mask, groups, self.padding_side, source_mask), groups

    def prompted_inputs(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        adapter_names: Optional[Sequence[str]] = None,
        source_mask: Optional[torch.Tensor] = None,
    ) -> PromptedInputs:
        """The backbone's inputs for a batch: [P ; E + offsets], left-padded for causal LMs and
        decoder-only classifiers (text ends at the last slot), right-padded otherwise."""
        return self._prepare(input_ids, attention_mask, inputs_embeds, adapter_names, source_mask)[0]

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        adapter_names: Optional[Sequence[str]] = None,
        source_mask: Optional[torch.Tensor] = None,
        logits_to_keep: int = 0,
        **kwargs,
    ):
        """The backbone's forward on [P ; E + offsets]; returns the backbone's own output type.

        Causal LMs: offsets go to the source tokens, i.e. those `source_mask` marks, else those
        labelled -100, else all (a prompt to continue). `labels` align with `input_ids`. Logits
        cover every slot of the left-padded [prompt ; input] layout (the last L line up with a
        left-padded input), or the last `logits_to_keep` slots when that is > 0."""
        if kwargs.get("position_ids") is not None:
            raise ValueError("DePTModel sets position_ids itself (the prompt comes first); do not pass position_ids.")
        kwargs.pop("position_ids", None)
        num_items = kwargs.pop("num_items_in_batch", None)
        fused_head = kwargs.pop("fused_lm_head", False)  # TRL's SFTTrainer: see dept.integrations.trainer
        self._refuse_filled_cache(kwargs)
        if self.kind == "causal" and source_mask is None and labels is not None:
            source_mask = labels == -100
            has_update = any(adapter.config.rank for adapter in self.adapters.values())
            real = source_mask if attention_mask is None else source_mask & attention_mask.bool()
            if has_update and not real.any():
                warnings.warn(
                    "No input token is labelled -100, so no token is source and the low-rank update gets "
                    "no gradient; label the input -100 or pass source_mask.",
                    stacklevel=2,
                )
        p, groups = self._prepare(input_ids, attention_mask, inputs_embeds, adapter_names, source_mask)
        if kwargs.get("token_type_ids") is not None:
            kwargs["token_type_ids"] = p.carry(kwargs["token_type_ids"], 0)
        call = dict(inputs_embeds=p.inputs_embeds, attention_mask=p.attention_mask, **kwargs)
        if self.padding_side == "left":
            call["position_ids"] = p.position_ids
        if self.kind != "causal":
            if num_items is not None and labels is not None:
                call["num_items_in_batch"] = num_items
            with self._heads.routing(groups) if self._heads is not None else contextlib.nullcontext():
                return self.base_model(**call, labels=labels)
        if fused_head:  # the backbone carries TRL's fused LM head: per-token log-probs on the prompted layout
            return self.base_model(
                **call, labels=p.carry(labels, -100), fused_lm_head=True, num_items_in_batch=num_items
            )
        total = p.inputs_embeds.shape[1]
        if self._supports_logits_to_keep:
            call["logits_to_keep"] = keep_positions(logits_to_keep, total, p.inputs_embeds.device)
        out = self.base_model(**call)
        logits = out.logits[:, -logits_to_keep:] if logits_to_keep else out.logits
        out["logits"] = logits
        if labels is not None:
            labels = p.carry(labels, -100)
            if logits.shape[1] < logits_needed(labels):
                raise ValueError(
                    f"logits_to_keep={logits_to_keep} leaves out slots the loss needs; use at least "
                    f"{logits_needed(labels)} (dept.core.loss.logits_needed(labels)) or 0 for all."
                )
            targets = labels[:, total - logits.shape[1] :]
            if num_items is None:
                out["loss"] = causal_loss(logits, targets)
            else:
                out["loss"] = causal_loss(logits, targets, reduction="sum") / num_items
        return out

    def _refuse_filled_cache(self, kwargs: dict) -> None:
        """A causal cache holds dept's prompted layout; continuing it needs positions and a mask
        only generate() tracks, so a second forward would silently re-prompt the new tokens."""
        if self.padding_side != "left":
            return  # encoder-decoders: the cache is the decoder's, the encoder input is re-prompted as before
        for name in ("past_key_values", "cache"):
            if cache_length(kwargs.get(name)):
                raise ValueError(
                    f"DePTModel.forward does not continue from a filled {name}: the cache holds the prompted "
                    "[P ; input] layout. Use DePTModel.generate() to decode, or run forward on the whole "
                    "sequence with source_mask marking the input tokens."
                )

    def prefill(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        adapter_names: Optional[Sequence[str]] = None,
    ):
        """Causal LMs: the backbone on the prompted input (all of it source) with a KV cache, logits
        of the last slot only. Returns (output, attention mask, position ids) of the prompted layout:
        a caller continues the cache with the plain backbone (new tokens get no offsets), as a
        server's decoding loop and shared-source rank scoring do."""
        if self.kind != "causal":
            raise ValueError(f"prefill() is for causal LMs; this backbone is {self.kind}.")
        p = self.prompted_inputs(input_ids, attention_mask, None, adapter_names)
        last = {"logits_to_keep": torch.tensor([-1], device=p.inputs_embeds.device)}  # see generate()
        out = self.base_model(
            inputs_embeds=p.inputs_embeds,
            attention_mask=p.attention_mask,
            position_ids=p.position_ids,
            use_cache=True,
            **(last if self._supports_logits_to_keep else {}),
        )
        return out, p.attention_mask, p.position_ids

    @torch.no_grad()
    def generate(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        adapter_names: Optional[Sequence[str]] = None,
        **generate_kwargs,
    ) -> torch.Tensor:
        """The backbone's generate() on prompted embeddings, so the KV cache and all decoding
        options work unchanged. The offsets go to the given input (prefill) only, never to
        generated tokens: the source-only rule of training. Causal LMs return only the new tokens."""
        p = self.prompted_inputs(input_ids, attention_mask, None, adapter_names)
        generate_kwargs.setdefault("pad_token_id", self._pad_token_id())
        if self.kind == "causal" and self._supports_logits_to_keep:
            # generate() asks for logits_to_keep=1; at prefill that is the non-contiguous view
            # hidden[:, -1:] and hits the same batch-expanded vocab projection as in forward (see
            # keep_positions). An index tensor selects the same position, contiguously.
            generate_kwargs.setdefault("logits_to_keep", torch.tensor([-1], device=p.inputs_embeds.device))
        return self.base_model.generate(
            inputs_embeds=p.inputs_embeds, attention_mask=p.attention_mask, **generate_kwargs
        )

    def _pad_token_id(self) -> Optional[int]:
        cfg = self.base_model.generation_config
        pad = cfg.pad_token_id if cfg.pad_token_id is not None else self.base_model.config.pad_token_id
        if pad is None:
            eos = cfg.eos_token_id
            pad = eos[0] if isinstance(eos, (list, tuple)) else eos
        return pad

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: Optional[dict] = None, **options):
        """Non-reentrant checkpointing of the backbone: our prompted embeddings carry the gradient, nothing
        to patch. Takes what transformers.Trainer passes (`every_n_layers`, `offload` in `options`)."""
        kwargs = dict(activation_checkpointing_kwargs or {})
        if kwargs.get("use_reentrant"):
            raise ValueError("DePTModel uses non-reentrant checkpointing; pass use_reentrant=False or leave it out.")
        kwargs["use_reentrant"] = False
        if hasattr(self.base_model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            self.base_model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, **options)
        else:
            self.base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: Optional[dict] = None) -> None:
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs)

    # ----- checkpoints --------------------------------------------------------------------------
    def backbone_info(self) -> dict:
        """What a saved adapter records of its backbone, so loading it elsewhere can be refused."""
        return {
            "model_type": getattr(self.base_model.config, "model_type", None),
            "hidden_size": self.hidden_size,
            "vocab_size": self.vocab_size,
            "name_or_path": getattr(self.base_model.config, "_name_or_path", None),
            "kind": self.kind,
        }

    def save_pretrained(self, path: str | Path, adapter_names: Optional[Sequence[str]] = None) -> None:
        """The active adapter goes to `path`, every other one to `path/<name>`."""
        names = list(adapter_names) if adapter_names is not None else list(self.adapters)
        self._check_names(names)
        for name in names:
            target = Path(path) if name == self.active_adapter else Path(path) / name
            adapter = self.adapters[name]
            checkpoint.write_adapter(target, adapter.config, adapter.state_dict(), self.backbone_info())

    def load_adapter(self, path: str | Path, adapter_name: str = "default", is_trainable: bool = False) -> DePTAdapter:
        """Load an adapter saved by dept, an official DePT checkpoint or a PEFT prompt-tuning adapter."""
        path = Path(path)
        config, tensors, backbone = checkpoint.read_adapter(path)
        checkpoint.check_backbone(backbone, self.backbone_info(), path)
        checkpoint.check_shapes(config, tensors, self.hidden_size, path)
        adapter = self.add_adapter(adapter_name, config, prompt_init=tensors["prompt_embeddings"])
        checkpoint.fill_adapter(adapter, tensors, path)
        if is_trainable:
            self.set_adapter(adapter_name)
        else:
            adapter.requires_grad_(False)
        return adapter

    @classmethod
    def from_pretrained(
        cls,
        model: PreTrainedModel,
        path: str | Path,
        adapter_name: str = "default",
        is_trainable: bool = False,
        tokenizer=None,
    ) -> DePTModel:
        """Wrap `model` and load an adapter saved by dept, an official DePT checkpoint or a PEFT
        prompt-tuning adapter."""
        wrapped = cls(model, None, adapter_name, tokenizer=tokenizer)
        wrapped.load_adapter(path, adapter_name, is_trainable)
        return wrapped
