"""The `dept serve` command. Imports no torch at module level, so `dept --help` stays fast."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from dept.cli.flags import option_of
from dept.options import POLICIES, PRECISIONS, TrainOptions, UsageError, check_at_least, check_choice

SHUTDOWN_GRACE_S = 30  # after SIGTERM, requests in flight get this long to finish before they are cut


def _adapters(specs: list[str]) -> dict[str, Path]:
    adapters: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--adapter {spec!r}: write NAME=PATH (e.g. --adapter sst2=runs/glue/sst2/dept).")
        if name in adapters:
            raise UsageError(f"--adapter {name!r} is given twice.")
        if not Path(path).is_dir():
            raise UsageError(f"--adapter {spec!r}: {path} is not a folder.")
        adapters[name] = Path(path)
    return adapters


def serve_command(
    model: str = option_of(TrainOptions, "model"),
    adapter: list[str] = typer.Option([], help="NAME=PATH of an adapter (or its run folder); repeatable."),
    adapter_root: Optional[Path] = typer.Option(
        None, file_okay=False, exists=True, help="Folder under which POST /v1/adapters may load adapters."
    ),
    host: str = typer.Option("127.0.0.1", help="Interface to bind (default: this machine only)."),
    port: int = typer.Option(8000),
    max_batch_size: int = typer.Option(32, help="Rows per backbone call."),
    max_wait_ms: float = typer.Option(5.0, help="How long an idle server waits to fill a batch."),
    max_loaded: Optional[int] = typer.Option(None, help="Adapters resident at once (LRU eviction; default all)."),
    max_queue: int = typer.Option(
        256, help="Prompts/inputs waiting at most (a full queue: HTTP 429); also the most one request may send (400)."
    ),
    api_key: Optional[str] = typer.Option(None, envvar="DEPT_API_KEY", help="Require 'Authorization: Bearer KEY'."),
    precision: str = option_of(TrainOptions, "precision"),
    scheduler: str = typer.Option("mixed", help="mixed (adapters share batches) | adapter | none (baselines)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log requests; show the traceback of an error."),
):
    """Serve DePT adapters on one backbone: OpenAI-compatible /v1/completions, /v1/classify, /v1/models."""
    check_choice("--precision", precision, PRECISIONS)
    check_choice("--scheduler", scheduler, POLICIES)
    check_at_least("--max-batch-size", max_batch_size, 1)
    check_at_least("--max-loaded", max_loaded, 1)
    check_at_least("--max-queue", max_queue, 1)
    _check_listen(host, port)
    if max_wait_ms < 0:
        raise UsageError(f"--max-wait-ms must be at least 0, not {max_wait_ms}.")
    adapters = _adapters(adapter)
    from dept._extras import requires

    with requires("serve"):
        import uvicorn

        from dept.serve.adapters import ServeError
        from dept.serve.app import create_app
    from dept.backbones import load_backbone
    from dept.core.model import DePTModel
    from dept.precision import resolve_precision

    backbone, tokenizer = load_backbone(model)
    dm = DePTModel(backbone, tokenizer=tokenizer).eval()
    try:
        app = create_app(
            dm, tokenizer, model, adapters, adapter_root, max_loaded, api_key,
            policy=scheduler, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue,
            precision=resolve_precision(precision),
        )  # fmt: skip
    except ServeError as err:
        raise UsageError(err.message) from None
    logging.getLogger("dept").info("serving %s with %d adapter(s) on http://%s:%d", model, len(adapters), host, port)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="info" if verbose else "warning",
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )


def _check_listen(host: str, port: int) -> None:
    """Refuse a port out of range or in use before the backbone loads (uvicorn would exit after it)."""
    import socket

    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535; got {port}.")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as err:
        raise UsageError(
            f"--host {host} --port {port}: cannot listen there ({err.strerror or err}); choose another --port."
        ) from None
