"""The HTTP face of the server: OpenAI-compatible completions, classification by rank scoring,
model listing and adapter management. Handlers only check requests and wait; the scheduler's
thread runs the model. Every error is one OpenAI-style JSON object with its HTTP status."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Optional, Union

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from dept.model import BASE, DePTModel
from dept.serve.adapters import Adapter, AdapterStore, ServeError
from dept.serve.scheduler import Classification, Completion, Sampling, Scheduler, Sink


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we have no use for (user, …)

    model: str
    prompt: Union[str, list[str]]
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    stream: bool = False
    n: int = Field(1, ge=1)
    echo: bool = False
    logprobs: Optional[int] = None


class ClassifyRequest(BaseModel):
    model: str
    inputs: list[Union[str, dict[str, Any]]] = Field(min_length=1)
    task: Optional[str] = None


class AdapterRequest(BaseModel):
    name: str
    path: str


def _error(err: ServeError) -> JSONResponse:
    body = {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.status}}
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return JSONResponse(body, status_code=err.status, headers=headers)


def create_app(
    model: DePTModel,
    tokenizer,
    model_name: str,
    adapters: Optional[dict[str, Path]] = None,
    adapter_root: Optional[Path] = None,
    max_loaded: Optional[int] = None,
    api_key: Optional[str] = None,
    **scheduling: Any,
) -> FastAPI:
    """The app for one backbone. `adapters` are registered now (any path); at runtime only from
    under `adapter_root`. `scheduling` goes to `Scheduler` (policy, max_batch_size, max_wait_ms,
    max_queue, precision)."""
    store = AdapterStore(model, model_name, adapter_root, max_loaded)
    for name, path in (adapters or {}).items():
        store.register(name, path)
    scheduler = Scheduler(model, tokenizer, store, **scheduling)
    context = getattr(model.base_model.config.get_text_config(), "max_position_embeddings", None)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()

    def authorized(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), api_key.encode()):
            raise ServeError(401, "Missing or wrong API key: send the header 'Authorization: Bearer <key>'.")

    app = FastAPI(title="dept serve", lifespan=lifespan, dependencies=[Depends(authorized)])
    app.state.scheduler, app.state.store = scheduler, store

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, err: ServeError) -> JSONResponse:
        return _error(err)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid request")
        return _error(ServeError(422, message, where or None))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return _error(ServeError(err.status_code, str(err.detail)))

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": model_name, "adapters_loaded": len(store.loaded()), **scheduler.load()}

    @app.get("/v1/models")
    def models() -> dict:
        base = {"id": model_name, "object": "model", "created": 0, "owned_by": "dept", "parent": None}
        data = [base] + [
            {"id": a.name, "object": "model", "created": a.created, "owned_by": "dept", "parent": model_name,
             "task": a.task, "prompt_length": a.prompt_length, "max_length": a.max_length}
            for a in store.all()
        ]  # fmt: skip
        return {"object": "list", "data": data}

    @app.post("/v1/adapters")
    def add_adapter(body: AdapterRequest) -> dict:
        adapter = store.register(body.name, Path(body.path), from_request=True)
        return {"id": adapter.name, "object": "model", "parent": model_name, "task": adapter.task}

    @app.delete("/v1/adapters/{name:path}")
    def delete_adapter(name: str) -> dict:
        store.unregister(name)
        return {"id": name, "object": "model", "deleted": True}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        if model.kind == "classification":
            raise ServeError(400, f"{model_name} is a sequence classifier: use POST /v1/classify.", "model")
        if body.n != 1 or body.echo or body.logprobs is not None:
            raise ServeError(400, "n > 1, echo and logprobs are not supported by dept serve.")
        adapter = store.get(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise ServeError(400, "prompt is an empty list.", "prompt")
        stop = [body.stop] if isinstance(body.stop, str) else body.stop or []
        sampling = Sampling(body.max_tokens, body.temperature, body.top_p, stop, body.seed)
        sink = Sink()
        jobs = [
            Completion(
                adapter=_row_name(adapter), sink=sink, index=i, prompt=_prompt_ids(p, adapter), sampling=sampling
            )
            for i, p in enumerate(prompts)
        ]
        for job in jobs:
            _check_context(len(job.prompt), adapter, body.max_tokens)
        scheduler.submit(jobs)
        meta = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": body.model}  # fmt: skip
        if body.stream:
            return StreamingResponse(_stream(jobs, meta), media_type="text/event-stream")
        try:
            texts, finishes, counts = [""] * len(jobs), [None] * len(jobs), [0] * len(jobs)
            while None in finishes:
                event = await sink.queue.get()
                if event[0] == "error":
                    raise event[2]
                if event[0] == "text":
                    texts[event[1]] += event[2]
                else:
                    finishes[event[1]], counts[event[1]] = event[2], event[3]
        finally:
            _cancel(jobs)
        prompt_tokens = sum(len(job.prompt) for job in jobs)
        return {
            **meta,
            "choices": [
                {"text": t, "index": i, "logprobs": None, "finish_reason": f}
                for i, (t, f) in enumerate(zip(texts, finishes))
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": sum(counts),
                "total_tokens": prompt_tokens + sum(counts),
            },  # fmt: skip
        }

    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest):
        from dept.scoring import candidates_for

        adapter = store.get(body.model)
        task = _task_for(body.task, adapter, body.model)
        candidates, values = candidates_for(task)
        sources = [_source(task, x, i) for i, x in enumerate(body.inputs)]
        for i, source in enumerate(sources):
            _check_length(len(tokenizer(source)["input_ids"]), adapter, f"inputs.{i}", candidates)
        sink = Sink()
        job = Classification(adapter=_row_name(adapter), sink=sink, sources=sources, candidates=candidates)
        scheduler.submit([job])
        try:
            event = await sink.queue.get()
        finally:
            _cancel([job])
        if event[0] == "error":
            raise event[2]
        data = []
        for i, scores in enumerate(event[2]):
            row = {"index": i, "label": candidates[int(scores.argmax())],
                   "scores": {c: float(s) for c, s in zip(candidates, scores)}}  # fmt: skip
            if values is not None:
                row["value"] = float((scores.softmax(-1) * values).sum())
            data.append(row)
        return {"object": "classification", "model": body.model, "task": task.name, "data": data}

    def _row_name(adapter: Optional[Adapter]) -> str:
        return BASE if adapter is None else adapter.name

    def _prompt_ids(prompt: str, adapter: Optional[Adapter]) -> list[int]:
        ids = tokenizer(prompt)["input_ids"]
        if not ids:
            raise ServeError(400, "The prompt tokenizes to nothing; send some text.", "prompt")
        _check_length(len(ids), adapter, "prompt")
        return ids

    def _check_length(tokens: int, adapter: Optional[Adapter], param: str, candidates=()) -> None:
        """An adapter's offsets cover s input tokens: refuse longer inputs instead of cutting them."""
        if adapter is None:
            return
        from dept.data import target_ids

        room = adapter.max_length
        if model.kind == "causal" and candidates:
            room -= max(len(target_ids(tokenizer, c, "causal")) for c in candidates)
        if tokens > room:
            raise ServeError(
                400,
                f"The input has {tokens} tokens; adapter {adapter.name!r} takes at most {room} "
                f"(it was trained with max_length {adapter.max_length}).",
                param,
            )

    def _check_context(tokens: int, adapter: Optional[Adapter], max_tokens: int) -> None:
        total = tokens + (adapter.prompt_length if adapter else 0) + max_tokens * (model.kind == "causal")
        if context is not None and total > context:
            raise ServeError(
                400,
                f"This model's context is {context} tokens; the request needs {total} (prompt {tokens}, "
                f"soft prompt {adapter.prompt_length if adapter else 0}, max_tokens {max_tokens}).",
                "max_tokens",
            )

    return app


def _task_for(name: Optional[str], adapter: Optional[Adapter], model: str):
    from dept.tasks import get_task

    task = name or (adapter.task if adapter else None)
    if task is None:
        raise ServeError(400, f"No task is known for {model!r}: pass 'task' (e.g. \"glue/sst2\").", "task")
    options = adapter.task_options if adapter is not None and task == adapter.task else {}
    try:
        return get_task(task, **options)
    except (ValueError, TypeError, OSError) as err:
        raise ServeError(400, str(err), "task") from None


def _source(task, item: Union[str, dict], i: int) -> str:
    """A text as is, or a record of the task's fields put through its template."""
    if isinstance(item, str):
        return item
    try:
        return task.format_fn(item)[0]
    except (KeyError, TypeError, ValueError) as err:
        raise ServeError(400, f"inputs.{i} does not fit {task.name}'s fields: {err!r}.", f"inputs.{i}") from None


def _cancel(jobs) -> None:
    for job in jobs:
        job.cancelled = True


async def _stream(jobs: list[Completion], meta: dict) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's shape; a client that goes away cancels its rows."""
    sink = jobs[0].sink
    open_rows = len(jobs)
    try:
        while open_rows:
            event = await sink.queue.get()
            if event[0] == "error":
                err = event[2]
                yield f"data: {json.dumps({'error': {'message': err.message, 'type': err.type, 'code': err.status}})}\n\n"
                break
            text, finish = (event[2], None) if event[0] == "text" else ("", event[2])
            open_rows -= finish is not None
            choice = {"text": text, "index": event[1], "logprobs": None, "finish_reason": finish}
            yield f"data: {json.dumps({**meta, 'choices': [choice]})}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        _cancel(jobs)
