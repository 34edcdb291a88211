"""The `dept bench` command. Imports no torch at module level, so `dept --help` stays fast; the
measuring code is imported when the command runs."""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from dept.bench.options import DEFAULT_METHODS, METHOD_LABELS, MODELS, BenchOptions


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
    methods: Annotated[str, typer.Option(help=f"Comma-separated: {', '.join(METHOD_LABELS)} (pt is the reference; lora = rank 8 on every linear layer).")] = ",".join(DEFAULT_METHODS),
    precision: Annotated[str, typer.Option(help="bf16 | fp32 | auto (bf16 where the CPU/GPU supports it).")] = "auto",
    device: Annotated[str, typer.Option(help="cpu | cuda | auto.")] = "auto",
    data_dir: Annotated[Optional[Path], typer.Option(envvar="DEPT_DATA_DIR", help="Folder with glue/ in the original GLUE layout, for real input lengths; without it, synthetic lengths.")] = None,
    output_dir: Annotated[Path, typer.Option(help="Where results.json, results.md and the PNG charts go.")] = Path("bench-results"),
    targets: Annotated[Optional[Path], typer.Option(help="Targets JSON for pass/fail (default: OUTPUT_DIR/targets.json if present; else ratios only).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Tiny random models, a few steps: checks the command end to end (<1 min).")] = False,
    new_tokens: Annotated[int, typer.Option(help="Tokens generated per row in the generation phase.")] = 8,
    memory: Annotated[bool, typer.Option(help="Measure memory in probe processes.")] = True,
    isolate_methods: Annotated[bool, typer.Option(help="One memory probe process per method instead of one per workload (slower; same added-memory figures).")] = False,
    threads: Annotated[Optional[int], typer.Option(help="torch threads (default: one per core).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for example sampling and random weights.")] = 0,
) -> None:  # fmt: skip
    """Measure DePT's training/inference time and memory against PT, PEFT PT and LoRA."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        opts = BenchOptions(
            models=_split(model), lengths=_split(lengths), suite=suite, batch_size=batch_size, steps=steps,
            warmup=warmup, methods=_split(methods), precision=precision, device=device, data_dir=data_dir,
            output_dir=output_dir, targets=targets, quick=quick, new_tokens=new_tokens, memory=memory,
            isolate_methods=isolate_methods, seed=seed, threads=threads, command=_invocation(),
        )  # fmt: skip
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    from dept.bench.report import console_summary
    from dept.bench.runner import run_bench

    results = run_bench(opts)
    typer.echo(console_summary(results))
    typer.echo(f"Results written to {output_dir}/ (results.json, results.md, *.png)")
