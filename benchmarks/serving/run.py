"""Load test of `dept serve`: 1, 4 and 16 DePT adapters of different prompt lengths on SmolLM2-135M,
at several concurrency levels, under three schedulers on the same machine with the same requests:

- mixed:   rows of any adapters share backbone calls (dept's scheduler);
- adapter: one adapter per batch, what PEFT allows for prompt methods;
- none:    one request at a time.

A real HTTP load: a closed loop of `concurrency` asyncio clients (httpx) against a `dept serve`
process, each sending its next request when the last one returns. One server per scheduler runs
for the whole test; the cells take turns (mixed, adapter, none for each load), so a drift of the
machine hits the three alike, and only the server under load does any work. Requests go round-robin over the
adapters. The adapters' prompt lengths are chosen so that the first 1, 4 and 16 all average m = 24:
changing the number of adapters changes only how many there are, not how long the sequences are.
Cells already in results.json are skipped, so a killed run resumes.

    .venv/bin/python benchmarks/serving/run.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from dept.precision import cpu_name

HERE = Path(__file__).parent
PROMPT_LENGTHS = [24, 12, 36, 24, 16, 32, 8, 40, 20, 28, 24, 24, 4, 44, 30, 18]  # every 1/4/16 prefix averages 24
FALLBACK_SENTENCES = [
    "it 's a charming and often affecting journey .",
    "unflinchingly bleak and desperate",
    "the acting , costumes , music , cinematography and sound are all astounding given the production 's austere locales .",
    "it 's slow -- very , very slow .",
    "a sometimes tedious film .",
    "or doing last year 's taxes with your ex-wife .",
]


def sentences(data_dir: Path | None, count: int) -> list[str]:
    """SST-2 validation sentences when the GLUE files are there (real lengths), else a few built in."""
    dev = data_dir / "glue" / "SST-2" / "dev.tsv" if data_dir else None
    if dev is None or not dev.is_file():
        return (FALLBACK_SENTENCES * count)[:count]
    lines = dev.read_text(encoding="utf-8").splitlines()[1:]
    return [line.split("\t")[0].strip() for line in lines[:count]]


def make_adapters(model: str, root: Path) -> None:
    """16 DePT adapters with random prompts and non-zero low-rank updates, saved under `root`."""
    import torch

    from dept import DePTConfig, DePTModel, load_backbone

    backbone, tokenizer = load_backbone(model)
    dm = DePTModel(backbone, tokenizer=tokenizer)
    generator = torch.Generator().manual_seed(0)
    for i, m in enumerate(PROMPT_LENGTHS):
        name = f"task{i:02d}"
        adapter = dm.add_adapter(name, DePTConfig(prompt_length=m, rank=8, max_length=256, prompt_init="vocab", seed=i))
        with torch.no_grad():
            adapter.lora_embedding_B.normal_(0, 0.01, generator=generator)
        dm.set_adapter(name)
        dm.save_pretrained(root / name, adapter_names=[name])
        dm.delete_adapter(name)


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Server:
    """A `dept serve` process on a free port."""

    def __init__(self, args, root: Path, scheduler: str, port: int):
        adapters = [f"--adapter=task{i:02d}={root / f'task{i:02d}'}" for i in range(len(PROMPT_LENGTHS))]
        self.port = port
        cmd = [sys.executable, "-m", "dept.cli", "serve", "--model", args.model, *adapters, "--port", str(self.port),
               "--scheduler", scheduler, "--max-batch-size", str(args.max_batch_size),
               "--max-wait-ms", str(args.max_wait_ms), "--precision", args.precision]  # fmt: skip
        self.process = subprocess.Popen(cmd)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dept serve did not start ({' '.join(cmd)})")
            time.sleep(0.5)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


async def load(url: str, requests: list[dict], concurrency: int) -> dict:
    """Closed-loop load; every request's latency, tokens and status."""
    queue = list(reversed(requests))
    results = []

    async def client(http: httpx.AsyncClient) -> None:
        while queue:
            body = queue.pop()
            start = time.perf_counter()
            try:
                response = await http.post(f"{url}/v1/completions", json=body)
                status = response.status_code
                tokens = response.json()["usage"]["completion_tokens"] if status == 200 else 0
            except httpx.HTTPError as err:
                status, tokens = type(err).__name__, 0
            results.append({"latency": time.perf_counter() - start, "status": status, "tokens": tokens})

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    latencies = sorted(r["latency"] for r in results)
    ok = [r for r in results if r["status"] == 200]
    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "server_errors": sum(isinstance(r["status"], int) and r["status"] >= 500 for r in results),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(ok) / wall, 3),
        "tokens_per_s": round(sum(r["tokens"] for r in ok) / wall, 2),
        "p50_s": round(statistics.median(latencies), 3),
        "p99_s": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 3),
    }


def requests_for(prompts: list[str], adapters: int, count: int, max_tokens: int) -> list[dict]:
    return [
        {"model": f"task{i % adapters:02d}", "prompt": prompts[i % len(prompts)], "max_tokens": max_tokens,
         "temperature": 0}
        for i in range(count)
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("DEPT_DATA_DIR"))
    parser.add_argument("--schedulers", default="mixed,adapter,none")
    parser.add_argument("--adapters", default="1,4,16")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--requests", type=int, default=12, help="Requests per cell, at least.")
    parser.add_argument("--rounds", type=int, default=3, help="...and at least this many per client.")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--output-dir", type=Path, default=HERE)
    args = parser.parse_args()

    out = args.output_dir / "results.json"
    results = json.loads(out.read_text()) if out.is_file() else {"cells": [], "memory": {}}
    done = {(c["scheduler"], c["adapters"], c["concurrency"]) for c in results["cells"]}
    schedulers = args.schedulers.split(",")
    levels = [int(c) for c in args.concurrency.split(",")]
    cells = [(a, c, s) for a in map(int, args.adapters.split(",")) for c in levels for s in schedulers]
    todo = [(a, c, s) for a, c, s in cells if (s, a, c) not in done]
    prompts = sentences(args.data_dir, 64)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        servers = {}
        if todo:
            make_adapters(args.model, root)
        try:
            for i, scheduler in enumerate(s for s in schedulers if any(cell[2] == s for cell in todo)):
                servers[scheduler] = server = Server(args, root, scheduler, args.port + i)
                # every adapter, then a full round at the highest concurrency: resident adapters, warm
                # kernels, the allocator at its working size
                warm = requests_for(prompts, len(PROMPT_LENGTHS), len(PROMPT_LENGTHS) + max(levels), args.max_tokens)
                asyncio.run(load(server.url, warm, max(levels)))
            time.sleep(3)  # idle: the servers trim their heaps
            before = {name: rss_mb(server.process.pid) for name, server in servers.items()}
            for adapters, concurrency, scheduler in todo:
                count = max(args.requests, args.rounds * concurrency)
                requests = requests_for(prompts, adapters, count, args.max_tokens)
                cell = asyncio.run(load(servers[scheduler].url, requests, concurrency))
                cell.update(scheduler=scheduler, adapters=adapters, concurrency=concurrency)
                print(json.dumps(cell), flush=True)
                results["cells"].append(cell)
                out.write_text(json.dumps(results, indent=2))
            time.sleep(3)
            for name, server in servers.items():
                results["memory"][name] = {"rss_before_mb": before[name], "rss_after_mb": rss_mb(server.process.pid)}
                results.setdefault("batching", {})[name] = httpx.get(f"{server.url}/health").json()
        finally:
            for server in servers.values():
                server.stop()
    results["setup"] = {
        "model": args.model, "max_tokens": args.max_tokens, "max_batch_size": args.max_batch_size,
        "max_wait_ms": args.max_wait_ms, "precision": args.precision, "prompt_lengths": PROMPT_LENGTHS,
        "prompts": "SST-2 validation sentences" if args.data_dir else "built-in sentences",
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "command": " ".join(["python", "benchmarks/serving/run.py", *sys.argv[1:]]),
    }  # fmt: skip
    out.write_text(json.dumps(results, indent=2))
    from report import write_report

    write_report(results, args.output_dir)


if __name__ == "__main__":
    main()
