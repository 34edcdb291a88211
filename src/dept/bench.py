"""`dept bench`: DePT's time and memory against vanilla prompt tuning, PEFT and LoRA, side by side.

Why this module exists: DePT's reason to exist is cost. The paper claims >20 % less training and
inference time and memory than vanilla prompt tuning (PT) at the same number of trainable
parameters, because a shorter prompt means shorter sequences. This module measures that claim on
the same batches for every method, and prints every figure as a ratio to PT l=100 from the same run.

How it measures (and why):

* **Same batches.** Every method sees the same token tensors: the same texts (real GLUE inputs from
  the shared data directory, else a synthetic length distribution), the same tokenizer, the same
  seed. Causal LMs get left padding (text + label word, loss on the label only); T5-shaped models
  get the source in the encoder and the label word in the decoder.
* **Interleaved timing.** All methods live in one process and run one step each per round, the
  order alternating every round (A B C D, D C B A, ...), so slow drift of a shared machine hits all
  methods alike. Ratios are *paired*: the median over rounds of ``t(method)/t(PT)`` in the same
  round, which cancels contention that lasts a round or longer.
* **Memory in a separate probe process.** A process's peak RSS (``ru_maxrss``) only ever grows,
  and the timing process holds every method at once, so memory is measured elsewhere: a fresh
  interpreter (``python -m dept.bench --probe``) loads the backbone, warms the kernels up with one
  plain forward/backward, and records ``backbone_mb``. Then, per method: one unmeasured warm-up
  pass (lazy imports and kernel JIT are one-time costs, not the method's memory), ``gc`` +
  ``malloc_trim``, the baseline RSS, a reset of the kernel's peak counter (``/proc/self/clear_refs``
  = 5 resets VmHWM), the measured steps, and VmHWM. *added* = VmHWM − baseline: activations,
  gradients, optimizer state and the adapter. *peak* = ``backbone_mb`` + added, the peak of a
  process that runs only this method. The probe runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so
  that RSS follows live tensors instead of glibc's heap retention (see ``probe_environment``);
  repeated probes then agree to ~1 MB, and one probe per method (``--isolate-methods``) gives the
  same added figures as one per workload (checked on SmolLM2: within 4 MB). On a GPU the probe
  reads ``torch.cuda.max_memory_allocated`` instead.
* **What a step is.** Training: forward + backward + gradient clipping + AdamW step of the
  trainable parameters. Inference: one scoring forward with labels (our wrapper computes logits
  only where labels are; PEFT and plain transformers compute every position's logits when given
  labels, as users run them). Generation: greedy ``generate`` of a fixed number of new tokens.
* **Precision.** ``bf16`` stores the frozen backbone in bfloat16 and runs under bf16 autocast; the
  trainable parameters stay fp32. Frozen fp32 weights under autocast would be re-cast at every
  forward (autocast caches casts only for weights that require grad) and the bf16 copies kept for
  backward, which costs every method time and memory for nothing.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import datetime as _dt
import gc
import json
import logging
import math
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, Sequence

import torch
import typer
from torch import nn

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- registries

#: Method key -> human label template (filled with the options' l, m, LoRA rank).
METHOD_LABELS: dict[str, str] = {
    "pt": "PT l={l} (ours)",
    "peft_pt": "PT l={l} (PEFT)",
    "dept": "DePT m={m} r={r} (ours)",
    "pt_m": "PT l={m} (ours)",
    "lora": "LoRA r={lora_rank} (PEFT)",
    "full": "Full fine-tuning",
}
DEFAULT_METHODS: tuple[str, ...] = ("pt", "peft_pt", "dept", "pt_m", "lora")
REFERENCE = "pt"

MODELS = ("smollm2-135m", "t5-small", "t5-base", "t5-large", "llama-1b", "tiny", "tiny-t5")
LENGTHS = ("sst2", "rte", "pad256", "synthetic")
PRECISIONS = ("auto", "bf16", "fp32")
SUITES = ("full", "gpu", "quick")

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
}
T5_VOCAB = 32128

#: Which task's inputs give each length regime its lengths (pad256 pads SST-2 inputs to s).
LENGTH_TASKS = {"sst2": "glue/sst2", "rte": "glue/rte", "pad256": "glue/sst2", "synthetic": None}

#: Synthetic source lengths (tokens) when the GLUE files are absent: log-normal (median, sigma,
#: min, max), fitted by eye to SST-2 train phrases and RTE premise+hypothesis pairs.
SYNTHETIC_LENGTHS = {"glue/sst2": (13.0, 0.6, 4, 70), "glue/rte": (70.0, 0.45, 20, 250), None: (13.0, 0.6, 4, 70)}
SYNTHETIC_TARGETS = {"glue/sst2": ("negative", "positive"), "glue/rte": ("entailment", "not_entailment"), None: ("no", "yes")}

#: Thresholds of the issue's targets.
TARGET_TIME = 0.80
TARGET_MEMORY = 0.85
TARGET_OVERHEAD = 0.03
TARGET_PT_VS_PEFT = 1.05
SCALING_TOLERANCE = 0.02  # a saving may shrink by at most 2 points between sizes (timing noise)
SCALING_MODELS = ("t5-small", "t5-base", "t5-large")


# --------------------------------------------------------------------------- options


@dataclass
class Workload:
    """One backbone + one length regime + one batch size on one device."""

    model: str
    lengths: str
    batch_size: int
    steps: int
    warmup: int
    device: str = "cpu"
    precision: str = "auto"

    @property
    def key(self) -> str:
        return f"{self.model}/{self.lengths}/bs{self.batch_size}/{self.device}"


@dataclass
class BenchOptions:
    """Everything `dept bench` needs; `bench_command` builds it from CLI flags."""

    models: tuple[str, ...] = ("smollm2-135m",)
    lengths: tuple[str, ...] = ("sst2",)
    suite: Optional[str] = None
    batch_size: Optional[int] = None
    steps: Optional[int] = None
    warmup: Optional[int] = None
    methods: tuple[str, ...] = DEFAULT_METHODS
    precision: str = "auto"
    device: str = "auto"
    data_dir: Optional[Path] = None
    output_dir: Path = Path("bench-results")
    quick: bool = False
    budget_tokens: int = 100  # l
    prompt_length: int = 60  # m
    max_length: int = 256  # s
    lora_rank: int = 8
    new_tokens: int = 8
    gen_steps: Optional[int] = None
    memory: bool = True
    memory_steps: int = 2
    isolate_methods: bool = False  # one probe process per method (default: one per workload)
    seed: int = 0
    threads: Optional[int] = None  # torch intra-op threads (None: torch's default, one per core)
    command: str = ""

    def __post_init__(self) -> None:
        bad = [m for m in self.models if m not in MODELS]
        if bad:
            raise ValueError(f"Unknown --model {bad}; choose from {list(MODELS)}.")
        bad = [x for x in self.lengths if x not in LENGTHS]
        if bad:
            raise ValueError(f"Unknown --lengths {bad}; choose from {list(LENGTHS)}.")
        bad = [m for m in self.methods if m not in METHOD_LABELS]
        if bad:
            raise ValueError(f"Unknown --methods {bad}; choose from {list(METHOD_LABELS)}.")
        if REFERENCE not in self.methods:
            raise ValueError(f"--methods must include {REFERENCE!r}: every figure is reported as a ratio to it.")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {PRECISIONS}, got {self.precision!r}.")
        if self.suite is not None and self.suite not in SUITES:
            raise ValueError(f"--suite must be one of {SUITES}, got {self.suite!r}.")
        if not 0 < self.prompt_length <= self.budget_tokens:
            raise ValueError("Need 0 < prompt_length (m) <= budget_tokens (l).")
        for name in ("batch_size", "steps", "gen_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}.")
        if self.warmup is not None and self.warmup < 0:
            raise ValueError(f"--warmup must be >= 0, got {self.warmup}.")


# --------------------------------------------------------------------------- device and precision


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device; use --device cpu.")
    return device


def cpu_supports_bf16() -> bool:
    """bf16 autocast pays off on CPUs with native bf16 math (AVX512-BF16 or AMX)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_precision(precision: str, device: str) -> str:
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_supports_bf16() else "fp32"


def autocast_context(device: str, precision: str) -> contextlib.AbstractContextManager:
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- memory


_LIBC: Optional[ctypes.CDLL] = None


def release_memory(device: str) -> None:
    """Collect garbage and hand free heap back to the OS, so RSS reflects live tensors only."""
    global _LIBC
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        return
    if sys.platform.startswith("linux"):
        try:
            _LIBC = _LIBC or ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim(0)
        except OSError:  # not glibc (e.g. musl): nothing to trim
            pass


def _proc_status_mb(field_name: str) -> Optional[float]:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


class MemoryMeter:
    """Current and peak memory of this process: RSS on CPU (VmRSS / VmHWM, the peak reset through
    /proc/self/clear_refs), allocated bytes on CUDA."""

    def __init__(self, device: str):
        self.device = device
        self.cuda = device.startswith("cuda")

    def current_mb(self) -> float:
        if self.cuda:
            return torch.cuda.memory_allocated() / 2**20
        value = _proc_status_mb("VmRSS")
        if value is None:
            raise RuntimeError("Cannot read /proc/self/status: CPU memory probes need Linux; pass --no-memory.")
        return value

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
                handle.write("5")
        except OSError as err:
            raise RuntimeError(
                f"Cannot reset the peak RSS through /proc/self/clear_refs ({err}); pass --no-memory."
            ) from err

    def peak_mb(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        value = _proc_status_mb("VmHWM")
        return value if value is not None else self.current_mb()


# --------------------------------------------------------------------------- backbones


def build_backbone(name: str, device: str, precision: str, seed: int = 0) -> tuple[nn.Module, Any, str]:
    """(model, tokenizer or None, kind) in eval mode on `device`; bf16 weights under bf16 precision.

    Random-weight shapes are built from transformers configs with a fixed seed, so every process
    (the timing process and each memory probe) gets the same weights without any download.
    """
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


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def touch_parameters(model: nn.Module) -> None:
    """Read every weight once, so lazily mapped checkpoint pages are resident before a baseline."""
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            tensor.sum()


# --------------------------------------------------------------------------- data


@dataclass
class Batch:
    """One batch, identical for every method. `gen_*` hold the source only (what generation sees)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    gen_input_ids: torch.Tensor
    gen_attention_mask: torch.Tensor

    def to(self, device: str) -> "Batch":
        return Batch(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))

    @property
    def real_tokens(self) -> int:
        return int(self.attention_mask.sum())


def default_data_dir() -> Optional[Path]:
    """$DEPT_DATA_DIR, else ../shared/data from the current directory when it exists."""
    env = os.environ.get("DEPT_DATA_DIR")
    if env:
        return Path(env)
    candidate = Path.cwd().parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


def _examples_from_registry(task: str, data_dir: Path) -> Optional[list[tuple[str, str]]]:
    """Training examples through the task registry, when it is installed."""
    try:
        from dept.tasks import get_task  # type: ignore[attr-defined]
    except ImportError:
        return None
    try:
        splits = get_task(task).load(data_dir)
        train = splits["train"] if isinstance(splits, dict) else getattr(splits, "train")
        return [(ex.source, ex.target) for ex in train]
    except Exception as err:  # the registry is another module's business; fall back to the TSV
        logger.warning("Task registry could not load %s from %s (%s); reading the TSV directly.", task, data_dir, err)
        return None


def _examples_from_tsv(task: str, data_dir: Path) -> Optional[list[tuple[str, str]]]:
    """Fallback when the task registry is absent: the registry's text-to-text format
    ("name: value ...", the label word as target) read straight from the GLUE TSV."""
    import csv

    folder = {"glue/sst2": "SST-2", "glue/rte": "RTE"}[task]
    path = data_dir / "glue" / folder / "train.tsv"
    if not path.is_file():
        return None
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    if task == "glue/sst2":
        words = {"0": "negative", "1": "positive"}
        return [(f"sentence: {r['sentence'].strip()}", words.get(r["label"], r["label"])) for r in rows]
    return [(f"sentence1: {r['sentence1'].strip()} sentence2: {r['sentence2'].strip()}", r["label"]) for r in rows]


def _shown(path) -> str:
    """A path as results files show it: relative to the working directory, never this machine's."""
    return os.path.relpath(path)


def load_examples(lengths: str, data_dir: Optional[Path]) -> tuple[Optional[list[tuple[str, str]]], str]:
    """(examples or None, provenance). None means: use the synthetic length distribution."""
    task = LENGTH_TASKS[lengths]
    if task is None:
        return None, "synthetic (requested)"
    if data_dir is None or not Path(data_dir).is_dir():
        return None, f"synthetic ({task} lengths; no data directory found)"
    examples = _examples_from_registry(task, Path(data_dir)) or _examples_from_tsv(task, Path(data_dir))
    if not examples:
        return None, f"synthetic ({task} not found under {_shown(data_dir)})"
    return examples, f"{task} train split from {_shown(data_dir)}"


def length_tokenizer() -> Any:
    """The SmolLM2 tokenizer, to give random-weight models real token lengths; None if absent."""
    try:
        from transformers import AutoTokenizer

        from dept.backbones import converted_backbone_dir

        return AutoTokenizer.from_pretrained(converted_backbone_dir("smollm2-135m"))
    except Exception as err:  # missing weight package or conversion failure: estimate from words
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


def _pad(rows: Sequence[Sequence[int]], value: int, width: int, left: bool) -> torch.Tensor:
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            if left:
                out[i, width - len(row) :] = torch.tensor(row)
            else:
                out[i, : len(row)] = torch.tensor(row)
    return out


def make_batch(
    samples: Sequence[tuple[list[int], list[int]]], kind: str, pad_id: int, eos_id: int, max_length: int, pad_to: Optional[int]
) -> Batch:
    """Causal: [source ; target ; eos] left-padded, loss on target + eos. Seq2seq: source + eos in
    the encoder (right-padded), target + eos as decoder labels. Sources are cut to fit s; targets
    never are."""
    if kind == "causal":
        rows, labels, sources = [], [], []
        for src, tgt in samples:
            tgt = list(tgt) + [eos_id]
            src = list(src)[: max(1, max_length - len(tgt))]
            rows.append(src + tgt)
            labels.append([-100] * len(src) + tgt)
            sources.append(src)
        width = pad_to or max(map(len, rows))
        gen_width = pad_to or max(map(len, sources))
        ids, lab = _pad(rows, pad_id, width, True), _pad(labels, -100, width, True)
        gen = _pad(sources, pad_id, gen_width, True)
        mask = _pad([[1] * len(r) for r in rows], 0, width, True)
        gen_mask = _pad([[1] * len(s) for s in sources], 0, gen_width, True)
        return Batch(ids, mask, lab, gen, gen_mask)
    sources = [list(src)[: max_length - 1] + [eos_id] for src, _ in samples]
    targets = [list(tgt) + [eos_id] for _, tgt in samples]
    width = pad_to or max(map(len, sources))
    ids = _pad(sources, pad_id, width, False)
    mask = _pad([[1] * len(s) for s in sources], 0, width, False)
    lab = _pad(targets, -100, max(map(len, targets)), False)
    return Batch(ids, mask, lab, ids, mask)


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


# --------------------------------------------------------------------------- methods


@dataclass
class BenchMethod:
    """A method ready to run: the module users would call, its optimizer and how to call it."""

    key: str
    label: str
    module: nn.Module
    optimizer: Optional[torch.optim.Optimizer]
    trainable: int
    extra: dict[str, Any] = field(default_factory=dict)

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]


def dept_rank(opts: BenchOptions, hidden_size: int) -> int:
    """The budget-matched rank: r = floor((l − m)·d / (s + d))."""
    from dept.config import DePTConfig

    return DePTConfig.from_budget(opts.budget_tokens, opts.prompt_length, hidden_size, opts.max_length).rank


def method_label(key: str, opts: BenchOptions, rank: int) -> str:
    return METHOD_LABELS[key].format(l=opts.budget_tokens, m=opts.prompt_length, r=rank, lora_rank=opts.lora_rank)


def _ours(backbone: nn.Module, prompt_length: int, rank: int, opts: BenchOptions) -> nn.Module:
    from dept.config import DePTConfig
    from dept.model import DePTModel

    config = DePTConfig(
        prompt_length=prompt_length, rank=rank, max_length=opts.max_length, prompt_init="vocab", seed=opts.seed
    )
    return DePTModel(backbone, config)


def _peft(backbone: nn.Module, kind: str, key: str, opts: BenchOptions) -> nn.Module:
    from peft import LoraConfig, PromptTuningConfig, TaskType, get_peft_model

    task_type = TaskType.CAUSAL_LM if kind == "causal" else TaskType.SEQ_2_SEQ_LM
    if key == "peft_pt":
        config = PromptTuningConfig(task_type=task_type, num_virtual_tokens=opts.budget_tokens)
    else:  # PEFT's default targets for Llama and T5 are the attention query and value projections
        config = LoraConfig(task_type=task_type, r=opts.lora_rank, lora_alpha=2 * opts.lora_rank, lora_dropout=0.0)
    return get_peft_model(backbone, config)


def _full(backbone: nn.Module) -> nn.Module:
    """Full fine-tuning keeps fp32 master weights (mixed precision comes from autocast)."""
    model = backbone.float()
    model.requires_grad_(True)
    return model


def build_method(key: str, backbone: nn.Module, kind: str, opts: BenchOptions, private_copy: bool) -> BenchMethod:
    """Wrap `backbone` for method `key`. Our wrappers never modify the backbone, so they share it;
    PEFT and full fine-tuning modify it (injected layers, trained weights), so with
    `private_copy` they get their own copy."""
    from dept.optim import create_optimizer

    hidden = backbone.get_input_embeddings().weight.shape[1]
    rank = dept_rank(opts, hidden)
    if key in ("pt", "pt_m", "dept"):
        length = opts.budget_tokens if key == "pt" else opts.prompt_length
        module = _ours(backbone, length, rank if key == "dept" else 0, opts)
    else:
        owned = copy.deepcopy(backbone) if private_copy else backbone
        module = _full(owned) if key == "full" else _peft(owned, kind, key, opts)
    module.eval()  # dropout off for every method: the comparison is about cost, not regularisation
    params = [p for p in module.parameters() if p.requires_grad]
    if key in ("pt", "pt_m", "dept"):
        optimizer = create_optimizer(module, lr_prompt=0.3, lr_lowrank=1e-4)
    else:
        optimizer = torch.optim.AdamW(params, lr=0.3 if key == "peft_pt" else 1e-4, eps=1e-6, weight_decay=0.0)
    trainable = sum(p.numel() for p in params)
    return BenchMethod(key, method_label(key, opts, rank), module, optimizer, trainable, {"rank": rank})


# --------------------------------------------------------------------------- one step of each kind


def train_step(method: BenchMethod, batch: Batch, device: str, precision: str) -> None:
    """Forward + backward + clip + AdamW step, as a training loop runs it."""
    assert method.optimizer is not None
    method.optimizer.zero_grad(set_to_none=True)
    with autocast_context(device, precision):
        loss = method.module(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(method.parameters(), 1.0)
    method.optimizer.step()


def score(method: BenchMethod, batch: Batch, device: str, precision: str) -> None:
    """One scoring forward with labels, no autograd (what evaluation by loss/likelihood runs)."""
    with torch.no_grad(), autocast_context(device, precision):
        method.module(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels)


def generate(method: BenchMethod, batch: Batch, device: str, precision: str, new_tokens: int) -> None:
    """Greedy generation of exactly `new_tokens` tokens per row (min = max, so eos cannot end it early)."""
    with torch.no_grad(), autocast_context(device, precision):
        method.module.generate(
            input_ids=batch.gen_input_ids, attention_mask=batch.gen_attention_mask, max_new_tokens=new_tokens,
            min_new_tokens=new_tokens, do_sample=False,
        )  # fmt: skip


# --------------------------------------------------------------------------- interleaved timing


def round_order(keys: Sequence[str], round_index: int) -> list[str]:
    """A B C D, then D C B A, ...: every method runs early and late equally often."""
    return list(keys) if round_index % 2 == 0 else list(reversed(keys))


def time_interleaved(
    methods: dict[str, BenchMethod],
    batches: Sequence[Batch],
    warmup: int,
    run: Callable[[BenchMethod, Batch], None],
    device: str,
    phase: str,
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, str]]:
    """Per-method wall and CPU seconds of each measured round (warm-up rounds dropped)."""
    wall: dict[str, list[float]] = {k: [] for k in methods}
    cpu: dict[str, list[float]] = {k: [] for k in methods}
    errors: dict[str, str] = {}
    for index, batch in enumerate(batches):
        for key in round_order(list(methods), index):
            if key in errors:
                continue
            synchronize(device)
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            try:
                run(methods[key], batch)
                synchronize(device)
            except Exception as err:  # one method's failure must not sink the others' figures
                logger.warning("%s failed in %s: %s", methods[key].label, phase, err)
                errors[key] = f"{type(err).__name__}: {err}"
                continue
            if index >= warmup:
                wall[key].append(time.perf_counter() - start_wall)
                cpu[key].append(time.process_time() - start_cpu)
        logger.info(
            "%s round %d/%d: %s", phase, index + 1, len(batches),
            ", ".join(f"{k}={wall[k][-1]:.3f}s" for k in methods if index >= warmup and wall[k]),
        )  # fmt: skip
    return wall, cpu, errors


def summarize(values: Sequence[float]) -> Optional[dict[str, Any]]:
    if not values:
        return None
    quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"median": statistics.median(values), "p25": quartiles[0], "p75": quartiles[2], "n": len(values),
            "samples": [round(v, 6) for v in values]}  # fmt: skip


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> Optional[dict[str, float]]:
    """Median (and quartiles) over rounds of numerator[i] / denominator[i], same-round pairs."""
    pairs = [a / b for a, b in zip(numerator, denominator) if b > 0]
    if not pairs or len(numerator) != len(denominator):
        return None
    summary = summarize(pairs)
    assert summary is not None
    return {"median": summary["median"], "p25": summary["p25"], "p75": summary["p75"]}


# --------------------------------------------------------------------------- memory probe


def _warm_kernels(model: nn.Module, kind: str, batch: Batch, device: str, precision: str) -> None:
    """One plain forward/backward, so kernel caches and thread pools exist before the baseline."""
    ids, mask, labels = batch.input_ids[:2], batch.attention_mask[:2], batch.labels[:2]
    with autocast_context(device, precision):
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        out = model(inputs_embeds=embeds, attention_mask=mask, labels=labels)
    out.loss.backward()


def probe_memory(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Memory of each method in `spec["methods"]`, measured in this (fresh) process.

    `backbone_mb` = memory of the process holding the frozen backbone with kernels warm. For each
    method: inference peak over `memory_steps` scoring forwards (the largest batches), generation
    peak over one generate call, training peak over `memory_steps` training steps (the first
    allocates AdamW's state). `*_added_mb` = peak minus the memory just before the method was
    built; `*_peak_mb` = backbone_mb + added, the peak of a process running only this method
    (`*_hwm_mb` is the raw kernel counter, which also holds copies kept for other methods when one
    process measures several).
    """
    opts = _options_from_dict(spec["options"])
    workload = Workload(**spec["workload"])
    device, precision = workload.device, workload.precision
    torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
    backbone, tokenizer, kind = build_backbone(workload.model, device, precision, opts.seed)
    batches, _ = build_batches(workload, opts, kind, tokenizer, backbone)
    batches = sorted(batches, key=lambda b: b.input_ids.numel(), reverse=True)[: opts.memory_steps]
    batches = [b.to(device) for b in batches]
    touch_parameters(backbone)
    _warm_kernels(backbone, kind, batches[-1], device, precision)
    import peft  # noqa: F401  (imported before the baseline: module memory is not a method's)

    import dept.model, dept.optim  # noqa: E401,F401

    meter = MemoryMeter(device)
    release_memory(device)
    backbone_mb = meter.current_mb()
    several = len(spec["methods"]) > 1
    results: dict[str, dict[str, Any]] = {}
    for key in spec["methods"]:
        results[key] = _probe_one(key, backbone, kind, batches, opts, workload, meter, several)
        results[key]["backbone_mb"] = backbone_mb
        for name in ("infer", "gen", "train"):
            if f"{name}_added_mb" in results[key]:
                results[key][f"{name}_peak_mb"] = backbone_mb + results[key][f"{name}_added_mb"]
    return results


MODIFIES_BACKBONE = ("peft_pt", "lora", "full")  # PEFT injects layers / full FT trains weights


def _run_all_phases(method: BenchMethod, batches: Sequence[Batch], workload: Workload, new_tokens: int) -> None:
    device, precision = workload.device, workload.precision
    score(method, batches[-1], device, precision)
    generate(method, batches[-1], device, precision, new_tokens)
    train_step(method, batches[-1], device, precision)


def _probe_one(
    key: str, backbone: nn.Module, kind: str, batches: Sequence[Batch], opts: BenchOptions,
    workload: Workload, meter: MemoryMeter, several: bool,
) -> dict[str, Any]:  # fmt: skip
    """Warm the method up once (lazy imports, kernel JIT for its shapes: one-time costs, not the
    method's memory), throw it away, take the baseline, then build it afresh and measure.
    Methods that modify the backbone get a private copy when others will use it after them; the
    copy is made before the baseline, so it is not counted as the method's memory."""
    device, precision = workload.device, workload.precision
    modifies = key in MODIFIES_BACKBONE
    try:
        warm = build_method(key, copy.deepcopy(backbone) if modifies else backbone, kind, opts, private_copy=False)
        _run_all_phases(warm, batches, workload, opts.new_tokens)
        del warm
    except Exception as err:  # the measurement below records the failing phase
        logger.warning("memory probe warm-up of %s failed: %s", key, err)
    subject = copy.deepcopy(backbone) if modifies and several else backbone
    release_memory(device)
    base = meter.current_mb()
    out: dict[str, Any] = {"base_mb": base}
    method = build_method(key, subject, kind, opts, private_copy=False)

    def measure(name: str, action: Callable[[], None]) -> None:
        release_memory(device)
        meter.reset_peak()
        try:
            action()
        except Exception as err:
            out[f"{name}_error"] = f"{type(err).__name__}: {err}"
            return
        peak = meter.peak_mb()
        out[f"{name}_hwm_mb"] = peak
        out[f"{name}_added_mb"] = peak - base

    measure("infer", lambda: [score(method, b, device, precision) for b in batches])
    measure("gen", lambda: generate(method, batches[0], device, precision, opts.new_tokens))
    measure("train", lambda: [train_step(method, b, device, precision) for b in batches])
    del method, subject
    release_memory(device)
    return out


def _options_from_dict(data: dict[str, Any]) -> BenchOptions:
    data = dict(data)
    for name in ("models", "lengths", "methods"):
        data[name] = tuple(data[name])
    for name in ("data_dir", "output_dir"):
        data[name] = Path(data[name]) if data.get(name) is not None else None
    if data["output_dir"] is None:
        data["output_dir"] = Path("bench-results")
    return BenchOptions(**data)


def _options_to_dict(opts: BenchOptions) -> dict[str, Any]:
    data = dataclasses.asdict(opts)
    for name in ("data_dir", "output_dir"):
        data[name] = _shown(data[name]) if data[name] is not None else None
    return data


#: glibc: every allocation above 64 KiB gets its own mapping, unmapped when freed.
PROBE_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def probe_environment() -> dict[str, str]:
    """The probe's environment: ours plus PROBE_MALLOC_ENV.

    With glibc's defaults, freed tensors stay in the heap and RSS keeps up to several hundred MB
    that no tensor uses, varying from run to run (we saw ±30 % on SmolLM2 scoring). Giving every
    tensor above 64 KiB its own mapping makes RSS follow live tensors: repeated probes then agree
    to 1 MB. Timing runs keep the default allocator, as users run it."""
    env = dict(os.environ)
    env.update(PROBE_MALLOC_ENV)
    return env


def run_probe_process(workload: Workload, methods: Sequence[str], opts: BenchOptions) -> dict[str, dict[str, Any]]:
    """Run `probe_memory` in a fresh interpreter (so its peak belongs to these methods only)."""
    spec = {
        "workload": dataclasses.asdict(workload),
        "methods": list(methods),
        "options": _options_to_dict(opts),
        "threads": opts.threads or torch.get_num_threads(),
    }
    with tempfile.TemporaryDirectory(prefix="dept-bench-probe-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec))
        cmd = [sys.executable, "-m", "dept.bench", "--probe", str(spec_path), str(out_path)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=probe_environment())
        if proc.returncode != 0 or not out_path.is_file():
            tail = (proc.stderr or proc.stdout)[-2000:]
            logger.warning("Memory probe for %s %s failed (exit %s): %s", workload.key, list(methods), proc.returncode, tail)
            return {key: {"error": f"probe exited with {proc.returncode}: {tail[-300:]}"} for key in methods}
        return json.loads(out_path.read_text())


def measure_memory(workload: Workload, keys: Sequence[str], opts: BenchOptions) -> dict[str, dict[str, Any]]:
    """One probe process per method (default) or one for the whole workload (quick runs)."""
    if not opts.memory:
        return {}
    if not opts.isolate_methods:
        return run_probe_process(workload, keys, opts)
    results: dict[str, dict[str, Any]] = {}
    for key in keys:
        logger.info("memory probe: %s %s", workload.key, key)
        results.update(run_probe_process(workload, [key], opts))
    return results


# --------------------------------------------------------------------------- one workload


def _model_facts(model: nn.Module, kind: str) -> dict[str, Any]:
    cfg = model.config
    return {
        "kind": kind,
        "parameters": count_parameters(model),
        "hidden_size": model.get_input_embeddings().weight.shape[1],
        "layers": getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "num_layers", None),
        "vocab_size": model.get_input_embeddings().weight.shape[0],
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }


def _token_facts(batches: Sequence[Batch], kind: str, opts: BenchOptions) -> dict[str, Any]:
    rows = sum(b.input_ids.shape[0] for b in batches)
    padded = statistics.mean(b.input_ids.shape[1] for b in batches)
    return {
        "mean_real_tokens_per_row": sum(b.real_tokens for b in batches) / rows,
        "mean_padded_length": padded,
        "model_length_pt": padded + opts.budget_tokens,
        "model_length_dept": padded + opts.prompt_length,
        "note": "encoder input (source + eos)" if kind == "seq2seq" else "source + label word + eos, left-padded",
    }


def build_methods(
    keys: Sequence[str], backbone: nn.Module, kind: str, opts: BenchOptions
) -> tuple[dict[str, BenchMethod], dict[str, str]]:
    methods: dict[str, BenchMethod] = {}
    errors: dict[str, str] = {}
    for key in keys:
        try:
            methods[key] = build_method(key, backbone, kind, opts, private_copy=True)
        except Exception as err:
            logger.warning("Could not build %s: %s", key, err)
            errors[key] = f"{type(err).__name__}: {err}"
    return methods, errors


def run_workload(workload: Workload, opts: BenchOptions) -> dict[str, Any]:
    """Time every method interleaved in this process, then measure memory in probe processes."""
    started = time.time()
    device, precision = workload.device, workload.precision
    logger.info("workload %s (%s, %d+%d steps)", workload.key, precision, workload.warmup, workload.steps)
    load_start = _loadavg()
    backbone, tokenizer, kind = build_backbone(workload.model, device, precision, opts.seed)
    batches, provenance = build_batches(workload, opts, kind, tokenizer, backbone)
    batches = [b.to(device) for b in batches]
    facts = _model_facts(backbone, kind)
    methods, build_errors = build_methods(opts.methods, backbone, kind, opts)
    if REFERENCE not in methods:
        raise RuntimeError(f"The reference method {REFERENCE!r} could not be built: {build_errors.get(REFERENCE)}")

    phases: dict[str, tuple] = {}
    phases["train"] = time_interleaved(
        methods, batches, workload.warmup, lambda m, b: train_step(m, b, device, precision), device, "train"
    )
    phases["infer"] = time_interleaved(
        methods, batches, workload.warmup, lambda m, b: score(m, b, device, precision), device, "infer"
    )
    gen_steps = opts.gen_steps or max(2, workload.steps // 2)
    gen_batches = batches[: min(len(batches), workload.warmup + gen_steps)]
    phases["gen"] = time_interleaved(
        methods, gen_batches, workload.warmup,
        lambda m, b: generate(m, b, device, precision, opts.new_tokens), device, "gen",
    )  # fmt: skip
    clock = primary_clock(device)
    trainable = {k: m.trainable for k, m in methods.items()}
    labels = {k: m.label for k, m in methods.items()}
    rank = next(iter(methods.values())).extra["rank"]
    del methods
    release_memory(device)
    memory = measure_memory(workload, opts.methods, opts)
    result = {
        "key": workload.key,
        "workload": dataclasses.asdict(workload),
        "model": facts,
        "dept_rank": rank,
        "data": provenance,
        "tokens": _token_facts(batches, kind, opts),
        "gen_new_tokens": opts.new_tokens,
        "clock": clock,
        "methods": _method_results(opts.methods, labels, trainable, phases, memory, build_errors, workload, opts, clock),
        "loadavg": {"start": load_start, "end": _loadavg()},
        "seconds": time.time() - started,
    }
    result["ratios"] = workload_ratios(result)
    return result


def _method_results(
    keys: Sequence[str], labels: dict, trainable: dict, phases: dict, memory: dict, build_errors: dict,
    workload: Workload, opts: BenchOptions, clock: str,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    out: dict[str, dict[str, Any]] = {}
    batch_size = workload.batch_size
    for key in keys:
        if key in build_errors:
            out[key] = {"label": METHOD_LABELS[key], "error": build_errors[key]}
            continue
        entry: dict[str, Any] = {"label": labels[key], "trainable_params": trainable[key], "errors": {}}
        for phase, (wall, cpu, errors) in phases.items():
            entry[f"{phase}_wall_s"] = summarize(wall[key])
            entry[f"{phase}_cpu_s"] = summarize(cpu[key])
            if key in errors:
                entry["errors"][phase] = errors[key]
        train, gen = entry[f"train_{clock}_s"], entry[f"gen_{clock}_s"]
        entry["train_samples_per_s"] = batch_size / train["median"] if train else None
        entry["gen_tokens_per_s"] = batch_size * opts.new_tokens / gen["median"] if gen else None
        entry["memory"] = memory.get(key, {})
        out[key] = entry
    return out


def _loadavg() -> Optional[float]:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


#: Ratio name -> timed phase, and ratio name -> memory figure of the probe (lower is better for all).
TIME_METRICS = {"train_step": "train", "infer_latency": "infer", "gen_time": "gen"}
MEMORY_METRICS = {
    "train_added_mem": "train_added_mb",
    "train_peak_rss": "train_peak_mb",
    "infer_added_mem": "infer_added_mb",
    "infer_peak_rss": "infer_peak_mb",
    "gen_added_mem": "gen_added_mb",
}


def primary_clock(device: str) -> str:
    """Which clock the ratios and targets use: process CPU time for single-threaded CPU runs,
    wall time otherwise.

    With one thread, a step's CPU time is the wall time it would take on a dedicated core, and it
    does not count the time the process waited for a core while other jobs ran on a shared
    machine. With several threads (or a GPU) CPU time is not a step's duration, so wall time it is.
    Both clocks are always recorded and shown."""
    return "cpu" if device == "cpu" and torch.get_num_threads() == 1 else "wall"


def samples(entry: dict[str, Any], phase: str, clock: str) -> list[float]:
    stats = entry.get(f"{phase}_{clock}_s")
    return list(stats["samples"]) if stats else []


def workload_ratios(result: dict[str, Any], reference: str = REFERENCE) -> dict[str, dict[str, Any]]:
    """Every method's figures over the reference's: paired per-round medians for time (on both
    clocks; the unsuffixed name is the workload's primary clock), plain quotients for memory
    (deterministic to ~1 MB in the probe)."""
    methods, clock = result["methods"], result.get("clock", "wall")
    ref = methods.get(reference, {})
    ratios: dict[str, dict[str, Any]] = {}
    for key, entry in methods.items():
        if "error" in entry:
            continue
        row: dict[str, Any] = {}
        for name, phase in TIME_METRICS.items():
            for clk in ("wall", "cpu"):
                pair = paired_ratio(samples(entry, phase, clk), samples(ref, phase, clk))
                row[f"{name}_{clk}"] = pair["median"] if pair else None
                if clk == clock:
                    row[name] = row[f"{name}_{clk}"]
                    row[f"{name}_iqr"] = [pair["p25"], pair["p75"]] if pair else None
        for name, field_name in MEMORY_METRICS.items():
            num, den = entry.get("memory", {}).get(field_name), ref.get("memory", {}).get(field_name)
            row[name] = num / den if num is not None and den else None
        ratios[key] = row
    return ratios


# --------------------------------------------------------------------------- targets


def _find(workloads: Sequence[dict], model: str, lengths: str, batch_size: Optional[int] = None, device: str = "cpu"):
    for w in workloads:
        spec = w["workload"]
        if spec["model"] == model and spec["lengths"] == lengths and spec["device"] == device:
            if batch_size is None or spec["batch_size"] == batch_size:
                return w
    return None


def _paired(workload: dict, key: str, reference: str, phase: str, clock: Optional[str] = None) -> Optional[float]:
    methods = workload["methods"]
    if key not in methods or reference not in methods or "error" in methods[key] or "error" in methods[reference]:
        return None
    clock = clock or workload.get("clock", "wall")
    pair = paired_ratio(samples(methods[key], phase, clock), samples(methods[reference], phase, clock))
    return pair["median"] if pair else None


def _check(name: str, description: str, value: Optional[float], threshold: float, where: str) -> dict[str, Any]:
    status = "not run" if value is None else ("pass" if value <= threshold else "fail")
    return {"name": name, "description": description, "value": value, "threshold": threshold, "status": status, "workload": where}


def evaluate_targets(workloads: Sequence[dict]) -> list[dict[str, Any]]:
    """The issue's targets, each with its measured value and pass/fail ("not run" when the
    workload it is defined on was not part of this run). Time targets are judged on the
    workload's primary clock; the other clock's value is recorded next to it."""
    w = _find(workloads, "smollm2-135m", "sst2", 16)
    where = w["key"] if w else "smollm2-135m/sst2/bs16/cpu"
    dept = w["ratios"].get("dept", {}) if w else {}

    def timed(name: str, description: str, key: str, ref: str, phase: str, threshold: float, offset: float = 0.0):
        values = {clk: (_paired(w, key, ref, phase, clk) if w else None) for clk in ("wall", "cpu")}
        values = {clk: None if v is None else v - offset for clk, v in values.items()}
        clock = w.get("clock", "wall") if w else "wall"
        check = _check(name, description, values[clock], threshold, where)
        check.update(clock=clock, wall=values["wall"], cpu=values["cpu"])
        return check

    checks = [
        timed("train_time", "DePT(m=60)/PT(l=100) training-step time", "dept", "pt", "train", TARGET_TIME),
        _check("train_memory", "DePT/PT training peak memory added over the backbone", dept.get("train_added_mem"), TARGET_MEMORY, where),
        timed("infer_time", "DePT/PT inference (scoring) latency", "dept", "pt", "infer", TARGET_TIME),
        _check("infer_memory", "DePT/PT inference peak memory added over the backbone", dept.get("infer_added_mem"), TARGET_MEMORY, where),
        timed("dept_overhead", "DePT(m=60) over PT(l=60) step time − 1 (cost of the A·B add)", "dept", "pt_m", "train",
              TARGET_OVERHEAD, offset=1.0),
        timed("pt_vs_peft", "our PT l=100 / PEFT PT l=100 training-step time", "pt", "peft_pt", "train", TARGET_PT_VS_PEFT),
    ]  # fmt: skip
    checks.extend(scaling_checks(workloads))
    return checks


def scaling_checks(workloads: Sequence[dict]) -> list[dict[str, Any]]:
    """DePT/PT step-time ratio for T5-small, -base, -large (same lengths, device): the saving
    (1 − ratio) must not shrink by more than SCALING_TOLERANCE from one size to the next."""
    out = []
    groups: dict[tuple[str, str], dict[str, float]] = {}
    for w in workloads:
        spec = w["workload"]
        value = w["ratios"].get("dept", {}).get("train_step")
        if spec["model"] in SCALING_MODELS and value is not None:
            groups.setdefault((spec["lengths"], spec["device"]), {})[spec["model"]] = value
    for (lengths, device), values in sorted(groups.items()):
        if not all(m in values for m in SCALING_MODELS):
            continue
        series = [values[m] for m in SCALING_MODELS]
        worst = max(b - a for a, b in zip(series, series[1:]))  # growth of the ratio = shrink of the saving
        check = _check(
            f"scaling_{lengths}_{device}",
            "DePT/PT step-time ratio T5-small → base → large (" + " → ".join(f"{v:.3f}" for v in series) + "); "
            f"value = largest increase, allowed {SCALING_TOLERANCE}",
            worst, SCALING_TOLERANCE, f"t5-*/{lengths}/{device}",
        )  # fmt: skip
        check["series"] = dict(zip(SCALING_MODELS, series))
        out.append(check)
    if not out:
        out.append(_check("scaling", "DePT/PT step-time ratio T5-small → base → large", None, SCALING_TOLERANCE, "t5-*"))
    return out


# --------------------------------------------------------------------------- planning and running


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

    gpu_note = ("GPU scaling set skipped: no CUDA device on this machine (it runs the T5 shapes and llama-1b "
                "on the GPU, bf16, batch 64, when one is present).")  # fmt: skip
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


def machine_facts() -> dict[str, Any]:
    import peft
    import transformers

    facts: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": cpu_supports_bf16(),
    }
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
    return facts


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_bench(opts: BenchOptions) -> dict[str, Any]:
    """Plan, run every workload, evaluate the targets, write JSON/Markdown/PNG to opts.output_dir."""
    from dept.bench_plot import write_report

    torch.set_flush_denormal(True)  # random weights can produce denormals; x86 runs them slowly
    workloads, notes = plan_workloads(opts)
    if opts.quick:  # tiny models: one probe process per workload and one thread are plenty
        opts = dataclasses.replace(opts, threads=opts.threads or 1, new_tokens=min(opts.new_tokens, 4))
    if opts.threads:
        torch.set_num_threads(opts.threads)
    results: dict[str, Any] = {
        "command": opts.command,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_facts(),
        "options": _options_to_dict(opts),
        "notes": notes,
        "workloads": [],
    }
    for workload in workloads:
        try:
            results["workloads"].append(run_workload(workload, opts))
        except (ImportError, OSError) as err:  # e.g. the SmolLM2 weight package is not installed here
            logger.warning("Skipping %s: %s", workload.key, err)
            results["notes"].append(f"{workload.key} skipped: {type(err).__name__}: {str(err).splitlines()[0]}")
        release_memory(workload.device)
    results["targets"] = evaluate_targets(results["workloads"])
    write_report(results, Path(opts.output_dir))
    return results


# --------------------------------------------------------------------------- CLI entry


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _invocation() -> str:
    """The command line as the user typed it after `dept bench` (for the results' header)."""
    args = sys.argv[1:]
    if "bench" in args:
        args = args[args.index("bench") + 1 :]
    return " ".join(["dept", "bench", *(shlex.quote(a) for a in args)])


def bench_command(
    model: Annotated[str, typer.Option(help=f"Backbone(s), comma-separated: {', '.join(MODELS)}.")] = "smollm2-135m",
    lengths: Annotated[str, typer.Option(help="Length regime(s), comma-separated: sst2, rte (dynamic padding on real inputs), pad256 (pad to s=256), synthetic.")] = "sst2",
    suite: Annotated[Optional[str], typer.Option(help="'full': the committed set (SmolLM2 x sst2/rte/pad256 + T5 scaling on CPU, plus the GPU scaling set when CUDA is present); 'gpu': only the GPU scaling set. Overrides --model/--lengths.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Rows per batch (default 16; the suite picks per workload).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Measured rounds per phase (default 10).")] = None,
    warmup: Annotated[Optional[int], typer.Option(help="Unmeasured warm-up rounds per phase (default 2).")] = None,
    methods: Annotated[str, typer.Option(help=f"Comma-separated: {', '.join(METHOD_LABELS)} (pt is the reference).")] = ",".join(DEFAULT_METHODS),
    precision: Annotated[str, typer.Option(help="bf16 | fp32 | auto (bf16 where the CPU/GPU supports it).")] = "auto",
    device: Annotated[str, typer.Option(help="cpu | cuda | auto.")] = "auto",
    data_dir: Annotated[Optional[Path], typer.Option(help="GLUE/SuperGLUE files (default $DEPT_DATA_DIR, else ../shared/data).")] = None,
    output_dir: Annotated[Path, typer.Option(help="Where results.json, results.md and the PNG charts go.")] = Path("bench-results"),
    quick: Annotated[bool, typer.Option("--quick", help="Tiny random models, a few steps: checks the command end to end (<1 min).")] = False,
    new_tokens: Annotated[int, typer.Option(help="Tokens generated per row in the generation phase.")] = 8,
    memory: Annotated[bool, typer.Option(help="Measure memory in probe processes.")] = True,
    isolate_methods: Annotated[bool, typer.Option(help="One memory probe process per method instead of one per workload (slower; same added-memory figures).")] = False,
    threads: Annotated[Optional[int], typer.Option(help="torch threads (default: one per core).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for example sampling and random weights.")] = 0,
) -> None:
    """Measure DePT's training/inference time and memory against PT, PEFT PT and LoRA."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from dept.bench_plot import console_summary

    try:
        opts = BenchOptions(
            models=_split(model), lengths=_split(lengths), suite=suite, batch_size=batch_size, steps=steps,
            warmup=warmup, methods=_split(methods), precision=precision, device=device,
            data_dir=data_dir if data_dir is not None else default_data_dir(), output_dir=output_dir,
            quick=quick, new_tokens=new_tokens, memory=memory, isolate_methods=isolate_methods, seed=seed,
            threads=threads, command=_invocation(),
        )  # fmt: skip
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    results = run_bench(opts)
    typer.echo(console_summary(results))
    typer.echo(f"Results written to {output_dir}/ (results.json, results.md, *.png)")


def _probe_main(argv: Sequence[str]) -> int:
    spec_path, out_path = argv
    spec = json.loads(Path(spec_path).read_text())
    torch.set_flush_denormal(True)
    result = probe_memory(spec)
    Path(out_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--probe":
        raise SystemExit(_probe_main(sys.argv[2:]))
    typer.run(bench_command)
