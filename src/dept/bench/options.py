"""What a benchmark run is made of: the method and backbone names it knows, one workload, and the
options of `dept bench`.

Plain Python with no torch import, so `dept --help` can show the bench options without loading
torch, and so a results.json can be read back into options in the memory probe process.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from dept.precision import PRECISIONS

#: Method key -> human label template (filled with the options' l, m, LoRA rank and the budget-matched ranks).
METHOD_LABELS: dict[str, str] = {
    "pt": "PT l={l} (ours)",
    "peft_pt": "PT l={l} (PEFT)",
    "dept": "DePT m={m} r={r} (ours)",
    "adept": "ADePT m={m} r={token_rank} (ours)",
    "pt_m": "PT l={m} (ours)",
    "lora": "LoRA r={lora_rank} all-linear (PEFT)",
    "full": "Full fine-tuning",
}
DEFAULT_METHODS: tuple[str, ...] = ("pt", "peft_pt", "dept", "adept", "pt_m", "lora")
#: Every figure is also reported as a ratio to this method, measured in the same run.
REFERENCE = "pt"

MODELS = ("smollm2-135m", "t5-small", "t5-base", "t5-large", "llama-1b", "tiny", "tiny-t5")
LENGTHS = ("sst2", "rte", "pad256", "synthetic")
SUITES = ("full", "gpu", "quick")


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
    """Everything `dept bench` needs; `dept.bench.cli.bench_command` builds it from CLI flags."""

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
    targets: Optional[Path] = None  # targets JSON (default: OUTPUT_DIR/targets.json when it exists)
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
        for flag, given, known in (("--model", self.models, MODELS), ("--lengths", self.lengths, LENGTHS),
                                   ("--methods", self.methods, METHOD_LABELS)):  # fmt: skip
            bad = [x for x in given if x not in known]
            if bad:
                raise ValueError(f"Unknown {flag} {bad}; choose from {list(known)}.")
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

    def targets_file(self) -> Optional[Path]:
        """--targets, else OUTPUT_DIR/targets.json when present: targets live with the results."""
        if self.targets is not None:
            return Path(self.targets)
        beside = Path(self.output_dir) / "targets.json"
        return beside if beside.is_file() else None


def shown(path: Any) -> str:
    """A path as results files show it: relative to the working directory, never this machine's."""
    return os.path.relpath(path)


def options_to_dict(opts: BenchOptions) -> dict[str, Any]:
    data = dataclasses.asdict(opts)
    for name in ("data_dir", "output_dir", "targets"):
        data[name] = shown(data[name]) if data[name] is not None else None
    return data


def options_from_dict(data: dict[str, Any]) -> BenchOptions:
    data = dict(data)
    for name in ("models", "lengths", "methods"):
        data[name] = tuple(data[name])
    for name in ("data_dir", "output_dir", "targets"):
        data[name] = Path(data[name]) if data.get(name) is not None else None
    if data["output_dir"] is None:
        data["output_dir"] = Path("bench-results")
    return BenchOptions(**data)
