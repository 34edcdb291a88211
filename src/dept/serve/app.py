"""The HTTP face of the server: OpenAI-compatible completions, classification by rank scoring,
model listing and adapter management. Handlers only check requests and wait; the scheduler's
thread runs the model. Every error is one OpenAI-style JSON object with its HTTP status.

Limits, and what a request beyond them gets:

- `max_tokens`: 1 to `MAX_TOKENS` (422), and prompt + soft prompt + max_tokens within the
  backbone's context where it has one (400);
- `temperature` 0 to 2, `top_p` over 0 to 1 (422); a temperature below `GREEDY_BELOW` (1e-4)
  decodes greedily, and the nucleus always keeps the most likely token, so no value in range fails;
- `seed`: `SEED_MIN` to `SEED_MAX` (-2**63 to 2**64 - 1, what torch's generator takes; 422);
- `stop`: at most `MAX_STOP` (4) strings, as OpenAI (422);
- prompts per completion and inputs per classification: at most `--max-queue` (400, as each is
  one job of the queue); a queue too full for the request right now: 429;
- an input longer than the adapter's `max_length` (400, never cut); text that tokenizes to nothing
  or not at all: 400;
- `task` in /v1/classify: a registered task name (`dept.tasks.list_tasks()`), or left out for
  the adapter's own task (its run.json); a file (`csv:`/`tsv:`/`jsonl:`), a path or an unknown
  name: 400. No error message quotes a file's contents;
- adapter paths (POST /v1/adapters): outside `--adapter-root`, symlinks followed for the folder
  and every file, 403; malformed (a NUL byte, …) 400;
- anything unforeseen: a JSON 500 that quotes nothing; the server keeps serving.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Optional, Union

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from dept.core.model import BASE, DePTModel
from dept.options import CUSTOM_PREFIXES  # task specs that read a file: never from a request
from dept.serve.adapters import Adapter, AdapterStore, ServeError
from dept.serve.batch import GREEDY_BELOW
from dept.serve.jobs import Classification, Completion, Sampling, Sink
from dept.serve.scheduler import Scheduler

logger = logging.getLogger(__name__)

MAX_TOKENS = 1 << 16  # tokens one completion may ask for, on any backbone
SEED_MIN, SEED_MAX = -(1 << 63), (1 << 64) - 1  # what torch.Generator.manual_seed takes
MAX_STOP = 4  # stop strings per request, as OpenAI


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we have no use for (user, …)

    model: str
    prompt: Union[str, list[str]]
    max_tokens: int = Field(16, ge=1, le=MAX_TOKENS)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: Union[str, Annotated[list[str], Field(max_length=MAX_STOP)], None] = None
    seed: Optional[int] = Field(None, ge=SEED_MIN, le=SEED_MAX)
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
    model.eval()  # answers never depend on dropout (ADePT's, or the backbone's), however the model came in
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

    @app.exception_handler(Exception)
    async def unforeseen(request: Request, err: Exception) -> JSONResponse:
        logger.error("%s %s failed: %r", request.method, request.url.path, err)  # the traceback follows, from uvicorn
        return _error(ServeError(500, "The server failed on this request (its log says why)."))

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
        scheduler.check_size(len(prompts), "prompt")
        stop = [body.stop] if isinstance(body.stop, str) else body.stop or []
        temperature = body.temperature if body.temperature >= GREEDY_BELOW else 0.0
        sampling = Sampling(body.max_tokens, temperature, body.top_p, stop, body.seed)
        sink = Sink()
        jobs = [
            Completion(
                adapter=_row_name(adapter), sink=sink, index=i, prompt=_prompt_ids(p, adapter), sampling=sampling
            )
            for i, p in enumerate(prompts)
        ]
        for job in jobs:
            _check_context(len(job.prompt), adapter, body.max_tokens)
        scheduler.submit(jobs, "prompt")
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
        scheduler.check_size(len(body.inputs), "inputs")
        task = _task_for(body.task, adapter, body.model)
        candidates, values = candidates_for(task)
        sources = [_source(task, x, i) for i, x in enumerate(body.inputs)]
        label_tokens = max((len(tokenizer(c)["input_ids"]) for c in candidates), default=0)
        for i, source in enumerate(sources):
            tokens = len(_tokens(source, f"inputs.{i}"))
            _check_length(tokens, adapter, f"inputs.{i}", candidates)
            _check_context(tokens + label_tokens * (model.kind == "causal"), adapter, 0)
        sink = Sink()
        jobs = [
            Classification(adapter=_row_name(adapter), sink=sink, index=i, sources=[source], candidates=candidates)
            for i, source in enumerate(sources)
        ]  # one job per input: a long list shares the model with other requests instead of holding it
        scheduler.submit(jobs, "inputs")
        results: list = [None] * len(jobs)
        try:
            while any(r is None for r in results):
                event = await sink.queue.get()
                if event[0] == "error":
                    raise event[2]
                results[event[1]] = event[2][0]
        finally:
            _cancel(jobs)
        data = []
        for i, scores in enumerate(results):
            row = {"index": i, "label": candidates[int(scores.argmax())],
                   "scores": {c: float(s) for c, s in zip(candidates, scores)}}  # fmt: skip
            if values is not None:
                row["value"] = float((scores.softmax(-1) * values).sum())
            data.append(row)
        return {"object": "classification", "model": body.model, "task": task.name, "data": data}

    def _row_name(adapter: Optional[Adapter]) -> str:
        return BASE if adapter is None else adapter.name

    def _prompt_ids(prompt: str, adapter: Optional[Adapter]) -> list[int]:
        ids = _tokens(prompt, "prompt")
        _check_length(len(ids), adapter, "prompt")
        return ids

    def _tokens(text: str, param: str) -> list[int]:
        try:
            ids = tokenizer(text)["input_ids"]
        except Exception:  # e.g. a lone surrogate, which JSON can carry and a tokenizer cannot encode
            raise ServeError(400, f"{param}: the text cannot be tokenized (is it valid Unicode?).", param) from None
        if not ids:
            raise ServeError(400, f"{param}: the text tokenizes to nothing; send some text.", param)
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
                f"This model's context is {context} tokens; the request needs {total} (text {tokens}, "
                f"soft prompt {adapter.prompt_length if adapter else 0}, max_tokens {max_tokens}).",
                "max_tokens" if max_tokens else "inputs",
            )

    return app


def _task_for(name: Optional[str], adapter: Optional[Adapter], model: str):
    """The task a classification ranks the labels of: a registered task the request names, else
    the adapter's own (from its run.json, chosen by whoever trained it; built once). A request never
    names a file, and no error quotes one."""
    from dept.tasks import get_task, list_tasks

    if name is not None and (adapter is None or name != adapter.task):
        shown = name if len(name) <= 100 else name[:100] + "…"
        known = f"'task' takes a registered task name ({', '.join(list_tasks())}), or none for the adapter's own task"
        if name.startswith(CUSTOM_PREFIXES):
            raise ServeError(400, f"A request cannot name a task file ({shown!r}): {known}.", "task")
        try:
            return get_task(name)
        except (ValueError, TypeError):
            raise ServeError(400, f"Unknown task {shown!r}: {known}.", "task") from None
    if adapter is None or adapter.task is None:
        raise ServeError(400, f"No task is known for {model!r}: pass 'task' (e.g. \"glue/sst2\").", "task")
    if adapter.built_task is None:
        adapter.built_task = _own_task(adapter)
    return adapter.built_task


def _own_task(adapter: Adapter):
    from dept.tasks import get_task

    task = adapter.task
    if adapter.root is not None and task.startswith(CUSTOM_PREFIXES):  # loaded by a request: its files stay under root
        try:
            inside = Path(task.partition(":")[2]).expanduser().resolve().is_relative_to(adapter.root)
        except (OSError, RuntimeError, ValueError):
            inside = False
        if not inside:
            raise ServeError(
                403,
                f"Adapter {adapter.name!r}'s task {task!r} reads a file outside the adapter root; "
                "pass 'task' with a registered task name.",
                "task",
            )
    try:
        return get_task(task, **adapter.task_options)
    except Exception as err:  # the message may quote the task's file: the log has it, the client does not
        logger.warning("Adapter %r: its task %r could not be built: %s", adapter.name, task, err)
        raise ServeError(
            400,
            f"Adapter {adapter.name!r}'s own task {task!r} could not be built (the server log says why); "
            "pass 'task' with a registered task name.",
            "task",
        ) from None


def _source(task, item: Union[str, dict], i: int) -> str:
    """A text as is, or a record of the task's fields put through its template."""
    if isinstance(item, str):
        return item
    try:
        source = task.format_fn(item)[0]
    except Exception as err:  # the template over the request's own record: a missing or odd field
        raise ServeError(400, f"inputs.{i} does not fit {task.name}'s fields: {err!r}.", f"inputs.{i}") from None
    if not isinstance(source, str):
        raise ServeError(400, f"inputs.{i} does not fit {task.name}'s fields.", f"inputs.{i}")
    return source


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
