"""DePTModel: a frozen transformers backbone with any number of named DePT adapters.

The backbone is never patched: every call embeds the tokens, lets `prepend_prompts` build the
prompted embeddings, and hands `inputs_embeds` to the backbone's own forward/generate. The model's
kind (causal LM, encoder-decoder, encoder classifier) is read from its config and class.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from dept.config import DePTConfig
from dept.kinds import Kind, model_kind
from dept.prompt import AdapterGroup, DePTAdapter, PromptedInputs, initial_prompt, prepend_prompts

logger = logging.getLogger(__name__)

BASE = "__base__"  # adapter name for rows that run the plain backbone


def logits_needed(labels: torch.Tensor) -> int:
    """Logits from one slot before the first labelled position to the end: all a causal loss
    uses when rows are left-padded."""
    labelled = (labels != -100).any(0).nonzero()
    first = int(labelled[0]) if len(labelled) else labels.shape[1] - 1
    return labels.shape[1] - max(first, 1) + 1


def keep_positions(keep: int, total: int, device) -> int | torch.Tensor:
    """`logits_to_keep` for the backbone: the last `keep` positions as an index tensor.

    An int makes transformers take the view `hidden[:, -keep:]`, which is not contiguous; a linear
    layer on it whose weight needs no grad (the frozen output embedding) cannot be folded into one
    matmul and falls back to a bmm over a batch-expanded copy of the weight (batch×d×vocab: 0.9 GB
    and ~2.5 s per call for SmolLM2 at batch 16 on CPU). Indexing with a tensor gathers a small
    contiguous copy instead. 0 (all), 1 and `total` give foldable tensors and stay ints."""
    if keep <= 1 or keep >= total:
        return keep
    return torch.arange(total - keep, total, device=device)


class DePTModel(nn.Module):
    """A frozen backbone plus named DePT adapters; `adapter_names` picks an adapter per row."""

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
        self.tokenizer = tokenizer
        for param in model.parameters():
            param.requires_grad_(False)
        # An encoder classifier's head is task-specific, so it trains (and is saved) with the adapter.
        self.head_names: list[str] = []
        if self.kind == "classification":
            body = {id(p) for p in model.base_model.parameters()}
            for name, param in model.named_parameters():
                if id(param) not in body:
                    param.requires_grad_(True)
                    self.head_names.append(name)
        self.adapters = nn.ModuleDict()
        self.active_adapter = adapter_name
        self._supports_logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        if config is not None:
            self.add_adapter(adapter_name, config)

    # ----- adapters -------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.base_model.get_input_embeddings().weight.shape[1]

    @property
    def vocab_size(self) -> int:
        return self.base_model.get_input_embeddings().weight.shape[0]

    @property
    def config(self):
        """The backbone's config, where transformers and accelerate utilities look for it."""
        return self.base_model.config

    @property
    def dept_config(self) -> DePTConfig:
        """The active adapter's config."""
        return self.adapters[self.active_adapter].config

    def add_adapter(self, name: str, config: DePTConfig, prompt_init: Optional[torch.Tensor] = None) -> DePTAdapter:
        if name == BASE:
            raise ValueError(f"{BASE!r} is reserved for rows without an adapter; choose another name.")
        if prompt_init is None:
            prompt_init = initial_prompt(
                config, self.base_model.get_input_embeddings(), self.vocab_size, self._tokenizer_for(config)
            )
        adapter = DePTAdapter(config, self.hidden_size, prompt_init)
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
    def prompted_inputs(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        adapter_names: Optional[Sequence[str]] = None,
    ) -> PromptedInputs:
        """The backbone's inputs for a batch. Causal LMs get left padding (text ends at the last
        slot, ready to generate); encoders get right padding."""
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("Pass input_ids or inputs_embeds.")
            inputs_embeds = self.base_model.get_input_embeddings()(input_ids)
        groups = self._groups(inputs_embeds.shape[0], adapter_names, inputs_embeds.device)
        side = "left" if self.kind == "causal" else "right"
        return prepend_prompts(inputs_embeds, attention_mask, groups, side)

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        adapter_names: Optional[Sequence[str]] = None,
        logits_to_keep: Optional[int] = None,
        **kwargs,
    ):
        """Like the backbone's forward. For causal LMs, `labels` align with `input_ids` and the
        returned logits cover [prompt ; input] laid out left-padded; with labels, only the logits
        the loss needs are computed unless `logits_to_keep` says otherwise."""
        p = self.prompted_inputs(input_ids, attention_mask, inputs_embeds, adapter_names)
        if "token_type_ids" in kwargs and kwargs["token_type_ids"] is not None:
            kwargs["token_type_ids"] = p.carry(kwargs["token_type_ids"], 0)
        if self.kind != "causal":
            return self.base_model(
                inputs_embeds=p.inputs_embeds, attention_mask=p.attention_mask, labels=labels, **kwargs
            )
        labels = None if labels is None else p.carry(labels, -100)
        total = p.inputs_embeds.shape[1]
        if logits_to_keep is None:
            logits_to_keep = total if labels is None else logits_needed(labels)
        call = dict(inputs_embeds=p.inputs_embeds, attention_mask=p.attention_mask, position_ids=p.position_ids, **kwargs)
        if self._supports_logits_to_keep:
            call["logits_to_keep"] = keep_positions(logits_to_keep, total, p.inputs_embeds.device)
        out = self.base_model(**call)
        logits = out.logits[:, -logits_to_keep:] if logits_to_keep else out.logits
        loss = None
        if labels is not None:
            targets = labels[:, total - logits.shape[1] + 1 :]
            loss = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100
            )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        adapter_names: Optional[Sequence[str]] = None,
        **generate_kwargs,
    ) -> torch.Tensor:
        """The backbone's generate() on prompted embeddings, so the KV cache and all decoding
        options work unchanged; the offsets apply to the given input only (prefill), as in the
        official code. Causal LMs return only the new tokens."""
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

    def gradient_checkpointing_enable(self) -> None:
        """Non-reentrant checkpointing: our prompted embeddings carry the gradient, nothing to patch."""
        kwargs = {"use_reentrant": False}
        if hasattr(self.base_model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            self.base_model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    # ----- checkpoints --------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path, adapter_names: Optional[Sequence[str]] = None) -> None:
        """The active adapter goes to `path`, every other one to `path/<name>`."""
        from dept.checkpoint import save_adapter

        names = list(adapter_names) if adapter_names is not None else list(self.adapters)
        self._check_names(names)
        for name in names:
            target = Path(path) if name == self.active_adapter else Path(path) / name
            save_adapter(self, name, target)

    def load_adapter(self, path: str | Path, adapter_name: str = "default", is_trainable: bool = False) -> DePTAdapter:
        from dept.checkpoint import load_adapter

        return load_adapter(self, path, adapter_name, is_trainable)

    @classmethod
    def from_pretrained(
        cls,
        model: PreTrainedModel,
        path: str | Path,
        adapter_name: str = "default",
        is_trainable: bool = False,
        tokenizer=None,
    ) -> "DePTModel":
        """Wrap `model` and load an adapter saved by dept, an official DePT checkpoint or a PEFT
        prompt-tuning adapter."""
        wrapped = cls(model, None, adapter_name, tokenizer=tokenizer)
        wrapped.load_adapter(path, adapter_name, is_trainable)
        return wrapped
