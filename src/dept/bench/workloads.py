"""What the benchmark runs on: backbones (SmolLM2 or random-weight shapes), token batches with real
input lengths, and the plan of workloads for each suite.

Every method must see the same token tensors, so batches are a pure function of the workload and
the seed, and random-weight backbones are built from configs with a fixed seed: the timing process
and each memory probe process get identical weights and batches without any download.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from dept.bench.options import MODELS, BenchOptions, Workload, shown
from dept.data import Encoded, encode_ids, pad_batch
from dept.precision import resolve_precision

logger = logging.getLogger(__name__)

#: Random-weight shapes: T5 v1.0 (relu, tied embeddings, vocab 32128) and a ~1B Llama.
T5_SHAPES: dict[str, dict[str, int]] = {
    "t5-small": dict(d_model=512, d_ff=2048, d_kv=64, num_heads=8, num_layers=6),
    "t5-base": dict(d_model=768, d_ff=3072, d_kv=64, num_heads=12, num_layers=12),
    "t5-large": dict(d_model=1024, d_ff=4096, d_kv=64, num_heads=16, num_layers=24),
    "tiny-t5": dict(d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2),
}
LLAMA_SHAPES: dict[str, dict[str, int]] = {
    "llama-1b": dict(
        vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=2048,
    ),
    "tiny": dict(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
    ),
}  # fmt: skip
T5_VOCAB = 32128
#: T5 shapes whose DePT/PT ratios show how the saving scales with size (CPU and GPU suites).
SCALING_MODELS = ("t5-small", "t5-base", "t5-large")

#: Which task's inputs give each length regime its lengths (pad256 pads SST-2 inputs to s).
LENGTH_TASKS = {"sst2": "glue/sst2", "rte": "glue/rte", "pad256": "glue/sst2", "synthetic": None}

#: Synthetic source lengths (tokens) when the GLUE files are absent: log-normal (median, sigma,
#: min, max), fitted by eye to SST-2 train phrases and RTE premise+hypothesis pairs.
SYNTHETIC_LENGTHS = {"glue/sst2": (13.0, 0.6, 4, 70), "glue/rte": (70.0, 0.45, 20, 250), None: (13.0, 0.6, 4, 70)}


def build_backbone(name: str, device: str, precision: str, seed: int = 0) -> tuple[nn.Module, Any, str]:
    """(model, tokenizer or None, kind) in eval mode on `device`; bf16 weights under bf16 precision.

    bf16 stores the frozen weights in bf16: frozen fp32 weights under autocast would be re-cast at
    every forward (autocast caches casts only for weights that require grad)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    if name == "smollm2-135m":
        from dept.backbones import load_backbone

        model, tokenizer = load_backbone(name, dtype=dtype)
        return model.to(device).eval(), tokenizer, "causal"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name in T5_SHAPES:
            from transformers import T5Config, T5ForConditionalGeneration

            config = T5Config(
                vocab_size=T5_VOCAB if not name.startswith("tiny") else 512, feed_forward_proj="relu",
                dropout_rate=0.0, tie_word_embeddings=True, pad_token_id=0, eos_token_id=1,
                decoder_start_token_id=0, **T5_SHAPES[name],
            )  # fmt: skip
            model, kind = T5ForConditionalGeneration(config), "seq2seq"
        elif name in LLAMA_SHAPES:
            from transformers import LlamaConfig, LlamaForCausalLM

            config = LlamaConfig(pad_token_id=0, bos_token_id=2, eos_token_id=1, **LLAMA_SHAPES[name])
            model, kind = LlamaForCausalLM(config), "causal"
        else:
            raise ValueError(f"Unknown model {name!r}; choose from {list(MODELS)}.")
    return model.to(device=device, dtype=dtype).eval(), None, kind


# --------------------------------------------------------------------------- data


@dataclass
class Batch:
    """One batch, identical for every method. `gen_*` hold the source only (what generation sees)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    gen_input_ids: torch.Tensor
    gen_attention_mask: torch.Tensor

    def to(self, device: str) -> Batch:
        return Batch(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))

    @property
    def real_tokens(self) -> int:
        return int(self.attention_mask.sum())


def load_examples(lengths: str, data_dir: Optional[Path]) -> tuple[Optional[list[tuple[str, str]]], str]:
    """(train examples as (source, target) or None, provenance), read through the task registry.
    None means: use the synthetic length distribution."""
    from dept.tasks import DataNotFoundError, get_task

    task = LENGTH_TASKS[lengths]
    if task is None:
        return None, "synthetic (requested)"
    if data_dir is None or not Path(data_dir).is_dir():
        return None, f"synthetic ({task} lengths; no data directory found)"
    try:
        train = get_task(task).load(data_dir, use_hub=False)["train"]
    except DataNotFoundError:
        return None, f"synthetic ({task} not found under {shown(data_dir)})"
    return [(ex.source, ex.target) for ex in train], f"{task} train split from {shown(data_dir)}"


def length_tokenizer() -> Any:
    """The SmolLM2 tokenizer, to give random-weight models real token lengths; None if absent."""
    from transformers import AutoTokenizer

    from dept.backbones.offline import converted_backbone_dir

    try:
        return AutoTokenizer.from_pretrained(converted_backbone_dir("smollm2-135m"))
    except (ImportError, OSError) as err:  # weight package or [offline] extra missing: count words instead
        logger.info("SmolLM2 tokenizer unavailable (%s); estimating token lengths from word counts.", err)
        return None


def _token_lengths(texts: Sequence[str], tokenizer: Any) -> list[int]:
    if tokenizer is not None:
        return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    return [max(1, round(1.3 * len(text.split()))) for text in texts]


def token_samples(
    lengths: str,
    data_dir: Optional[Path],
    count: int,
    tokenizer: Any,
    vocab_size: int,
    seed: int,
    real_lengths: bool = True,
) -> tuple[list[tuple[list[int], list[int]]], str]:
    """`count` (source ids, target ids) pairs without special tokens.

    With the backbone's own tokenizer the ids are the real texts'; for random-weight models the
    ids are random but the lengths are the real texts' lengths under the SmolLM2 tokenizer (or
    1.3 tokens per word when it is absent or `real_lengths` is off, as in --quick runs).
    """
    rng = random.Random(seed)
    examples, provenance = load_examples(lengths, data_dir)
    if examples is not None:
        chosen = [examples[rng.randrange(len(examples))] for _ in range(count)]
        if tokenizer is not None and len(tokenizer) <= vocab_size:
            sources = tokenizer([s for s, _ in chosen], add_special_tokens=False)["input_ids"]
            targets = tokenizer([" " + t for _, t in chosen], add_special_tokens=False)["input_ids"]
            return list(zip(sources, targets)), provenance
        lengths_tok = tokenizer if tokenizer is not None else (length_tokenizer() if real_lengths else None)
        src_len = _token_lengths([s for s, _ in chosen], lengths_tok)
        tgt_len = _token_lengths([" " + t for _, t in chosen], lengths_tok)
        provenance += " (random ids, real lengths)"
    else:
        median, sigma, low, high = SYNTHETIC_LENGTHS[LENGTH_TASKS[lengths]]
        src_len = [min(high, max(low, round(rng.lognormvariate(math.log(median), sigma)))) for _ in range(count)]
        tgt_len = [rng.choice((1, 2)) for _ in range(count)]
    low_id = min(16, vocab_size // 4)  # skip the special ids at the start of the vocabulary

    def draw(n: int) -> list[int]:
        return [rng.randrange(low_id, vocab_size) for _ in range(n)]

    return [(draw(a), draw(b)) for a, b in zip(src_len, tgt_len)], provenance


def make_batch(
    samples: Sequence[tuple[list[int], list[int]]],
    kind: str,
    pad_id: int,
    eos_id: int,
    max_length: int,
    pad_to: int | None,
) -> Batch:
    """The batch `dept train` would build (`dept.data`): causal rows are [source ; target ; eos]
    left-padded with the loss on target + eos; seq2seq rows put source + eos in the encoder
    (right-padded) and target + eos in the decoder labels. `pad_to` pads to a fixed width."""
    if kind == "causal":
        rows = [encode_ids(src, [*tgt, eos_id], kind, max_length) for src, tgt in samples]
        train = pad_batch(rows, kind, pad_id, width=pad_to or 0)
        sources = [Encoded(r.input_ids[: r.labels.count(-100)], []) for r in rows]  # what generation sees
        gen = pad_batch(sources, kind, pad_id, width=pad_to or 0)
        return Batch(
            *(train[k] for k in ("input_ids", "attention_mask", "labels")), gen["input_ids"], gen["attention_mask"]
        )
    rows = [encode_ids([*src, eos_id], [*tgt, eos_id], kind, max_length) for src, tgt in samples]
    train = pad_batch(rows, kind, pad_id, width=pad_to or 0)
    return Batch(
        train["input_ids"], train["attention_mask"], train["labels"], train["input_ids"], train["attention_mask"]
    )


def build_batches(
    workload: Workload, opts: BenchOptions, kind: str, tokenizer: Any, model: nn.Module
) -> tuple[list[Batch], str]:
    """warmup + steps batches of distinct examples, the same in every process for this workload."""
    count = (workload.warmup + workload.steps) * workload.batch_size
    vocab = model.get_input_embeddings().weight.shape[0]
    samples, provenance = token_samples(
        workload.lengths, opts.data_dir, count, tokenizer, vocab, opts.seed, real_lengths=not opts.quick
    )
    cfg = model.config
    pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    eos = cfg.eos_token_id
    eos_id = eos[0] if isinstance(eos, (list, tuple)) else (eos if eos is not None else pad_id)
    pad_to = opts.max_length if workload.lengths == "pad256" else None
    bs = workload.batch_size
    batches = [
        make_batch(samples[i : i + bs], kind, pad_id, eos_id, opts.max_length, pad_to) for i in range(0, count, bs)
    ]
    return batches, provenance


# --------------------------------------------------------------------------- planning


def plan_workloads(opts: BenchOptions) -> tuple[list[Workload], list[str]]:
    """The workloads to run and notes about what was skipped."""
    device = resolve_device(opts.device)
    notes: list[str] = []

    def make(model, lengths, bs, steps, warmup, dev=device) -> Workload:
        return Workload(
            model=model, lengths=lengths,
            batch_size=opts.batch_size or bs, steps=opts.steps or steps,
            warmup=opts.warmup if opts.warmup is not None else warmup,
            device=dev, precision=resolve_precision(opts.precision, dev),
        )  # fmt: skip

    suite = "quick" if opts.quick else opts.suite
    if suite == "quick":
        return [make("tiny", "sst2", 4, 3, 1, "cpu"), make("tiny-t5", "sst2", 4, 3, 1, "cpu")], notes

    def gpu_plan() -> list[Workload]:
        models = SCALING_MODELS + ("llama-1b",)
        return [make(m, lengths, 64, 20, 5, "cuda") for m in models for lengths in ("sst2", "pad256")]

    gpu_note = (
        "GPU scaling set skipped: no CUDA device on this machine (it runs the T5 shapes and llama-1b "
        "on the GPU, bf16, batch 64, when one is present)."
    )
    if suite == "gpu":
        if not torch.cuda.is_available():
            notes.append(gpu_note)
            return [], notes
        return gpu_plan(), notes
    if suite == "full":
        # Sized to run in ~25 min on 2 CPU cores: the targets' workload gets the most rounds.
        plan = [
            make("smollm2-135m", "sst2", 16, 8, 1, "cpu"),
            make("smollm2-135m", "rte", 8, 4, 1, "cpu"),
            make("smollm2-135m", "pad256", 8, 4, 1, "cpu"),
        ]
        plan += [make(m, "sst2", 8, 4, 1, "cpu") for m in SCALING_MODELS]
        if torch.cuda.is_available():
            plan += gpu_plan()
        else:
            notes.append(gpu_note)
        return plan, notes
    return [make(m, x, 16, 10, 2) for m in opts.models for x in opts.lengths], notes


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device; use --device cpu.")
    return device
