"""The server's one model thread and the bounded queue in front of it.

Requests of any adapter wait in one queue. The thread takes them into backbone calls by a policy:

- `mixed`: rows of any adapters in one call (DePT adapters are chosen per row);
- `adapter`: one adapter per batch, what PEFT allows for prompt methods (a baseline);
- `none`: one request at a time (a baseline).

Completions on a causal LM are batched continuously: new requests are prefilled between decoding
steps and join the running rows; finished or abandoned rows leave at once. No backbone call holds
more than `max_batch_size` rows: a decoding step neither (new rows join only while there is room).
Results go back to each request's own asyncio queue. A request that raises inside the model is
retried alone, so it fails alone; the thread keeps serving. Every admitted job gets an answer: if
the loop itself raises, what it held fails with an error, and when the thread ends (shutdown, or
anything else) every job still waiting or decoding gets a 503.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Optional

import torch

from dept.core.model import BASE, DePTModel
from dept.data import Encoded, pad_batch, pad_id
from dept.options import POLICIES
from dept.precision import autocast
from dept.scoring import classifier_scores, rank_each
from dept.serve.adapters import AdapterStore, ServeError
from dept.serve.batch import DecodeBatch, sample
from dept.serve.jobs import Classification, Completion, Job, Row
from dept.serve.text import TextStream

logger = logging.getLogger(__name__)

UNLIMITED = 1 << 30  # lengths are checked before a request is queued; scoring must not cut anything
IDLE = 1.0  # seconds without work after which freed memory goes back to the OS
STOP_TIMEOUT = 10.0  # seconds `stop` waits for the model thread to finish its current call


class Scheduler:
    def __init__(
        self,
        model: DePTModel,
        tokenizer,
        store: AdapterStore,
        policy: str = "mixed",
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 256,
        precision: str = "fp32",
    ):
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, not {policy!r}.")
        self.model, self.tokenizer, self.store = model, tokenizer, store
        self.policy = policy
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.precision = precision
        self.device = model.base_model.get_input_embeddings().weight.device
        self.batch = DecodeBatch(model, pad_id(tokenizer))
        self.rows: list[Row] = []  # aligned with self.batch's rows
        self.eos = _eos_ids(model.base_model)
        self.stats = {"prefill_calls": 0, "largest_prefill": 0, "steps": 0, "largest_step": 0, "classify_calls": 0}
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: Optional[threading.Thread] = None

    # ----- the request side (event loop) ------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dept-model", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end, and wait (at most STOP_TIMEOUT) for its current call to finish."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT)
            if self._thread.is_alive():
                logger.warning("The model thread is still in a call after %.0f s; leaving it.", STOP_TIMEOUT)

    def submit(self, jobs: Sequence[Job], what: str = "prompt") -> None:
        """Queue one request's jobs (one per prompt or input). More than `max_queue` can never fit:
        400; a full queue: 429."""
        self.check_size(len(jobs), what)
        with self._cond:
            if self._stopping or self._thread is None or not self._thread.is_alive():
                raise ServeError(503, "The server is shutting down.")
            if len(self._waiting) + len(jobs) > self.max_queue:
                raise ServeError(
                    429, f"The queue is full ({len(self._waiting)} waiting, at most {self.max_queue}); retry later."
                )
            self._waiting.extend(jobs)
            self._cond.notify_all()

    def check_size(self, count: int, what: str) -> None:
        """A request of more prompts (inputs) than the queue holds can never be served: 400."""
        if count > self.max_queue:
            noun = what if what.endswith("s") else f"{what}s"
            raise ServeError(
                400,
                f"{count} {noun} in one request; this server takes at most {self.max_queue} per request "
                "(--max-queue): split them.",
                what,
            )

    def load(self) -> dict:
        """What /health reports."""
        return {"waiting": len(self._waiting), "decoding": len(self.rows), **self.stats}

    # ----- the model thread -------------------------------------------------------------------
    def _run(self) -> None:
        rested = True
        try:
            with torch.no_grad():
                while True:
                    scoring: list[Job] = []
                    starting: list[Job] = []
                    with self._cond:
                        while not self._stopping and not self._waiting and not self.rows:
                            if not self._cond.wait(None if rested else IDLE):
                                _release_memory()  # idle for a while: hand the batch buffers back to the OS
                                rested = True
                        rested = False
                        if self._stopping:
                            break
                        try:
                            if not self.rows and self.policy != "none":
                                self._gather()
                            self._waiting = deque(job for job in self._waiting if not job.cancelled)
                            scoring, starting = self._take(Classification), self._take(Completion)
                        except Exception as err:  # a bug of ours: fail what waits, keep serving
                            logger.exception("The model thread failed to schedule; failing the waiting requests.")
                            for job in [*scoring, *starting, *self._waiting]:
                                job.fail(err)
                            self._waiting.clear()
                            continue
                    try:
                        with autocast(self.device, self.precision):
                            if scoring:
                                self._classify(scoring)
                            if starting:
                                self._start(starting)
                            if self.rows:
                                self._step()
                    except Exception as err:  # a bug of ours: fail what is in flight, keep serving
                        logger.exception("The model thread failed; failing the requests in flight.")
                        for job in [*scoring, *starting, *(row.job for row in self.rows)]:
                            if not job.answered:
                                job.fail(err)
                        self.rows, self.batch.state = [], None
        finally:  # however the thread ends, nothing admitted is left without an answer
            with self._cond:
                self._stopping = True
                left = [*(row.job for row in self.rows), *self._waiting]
                self._waiting.clear()
                self.rows, self.batch.state = [], None
            for job in left:
                if not job.answered:
                    job.answer(("error", job.index, ServeError(503, "The server is shutting down.")))

    def _gather(self) -> None:
        """Idle, a request arrived: wait up to max_wait for more, to fill a batch."""
        deadline = time.monotonic() + self.max_wait
        while len(self._waiting) < self.max_batch_size and not self._stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._cond.wait(left)

    def _take(self, kind: type) -> list[Job]:
        """The waiting jobs of this kind that the policy lets into the next call, oldest first."""
        decoding = kind is Completion and self.rows
        if decoding and (self.policy == "none" or not self.batch.joinable or self.model.kind != "causal"):
            return []
        room = 1 if self.policy == "none" else self.max_batch_size - (len(self.rows) if kind is Completion else 0)
        if room <= 0:
            return []  # the running rows fill the batch: new ones join once some leave
        only = self.rows[0].job.adapter if decoding and self.policy == "adapter" else None
        limit = self.store.max_loaded
        taken: list[Job] = []
        adapters: set[str] = set()
        size = 0
        for job in self._waiting:
            if not isinstance(job, kind):
                continue
            if size + job.size > room and (taken or kind is Completion):
                break  # (a classification larger than a batch goes alone: scoring splits it into batches)
            if self.policy == "adapter":
                only = only or job.adapter
                if job.adapter != only:
                    continue
            if limit is not None and job.adapter not in adapters and len(adapters - {BASE}) >= limit:
                continue  # all of a call's adapters must be resident at once
            if kind is Completion and self.model.kind != "causal" and taken and not job.decodes_with(taken[0]):
                continue  # encoder-decoders share one generate() call: one set of sampling options
            taken.append(job)
            adapters.add(job.adapter)
            size += job.size
        for job in taken:
            self._waiting.remove(job)
        return taken

    def _resident(self, jobs: list[Job]) -> list[Job]:
        """The jobs whose adapters are now in the model; the others fail (deleted, or unloadable)."""
        failed: dict[str, ServeError] = {}
        try:
            gone = self.store.ensure_loaded(job.adapter for job in jobs)
        except Exception:  # one adapter's files broke since it was registered: find which
            gone = set()
            for name in dict.fromkeys(job.adapter for job in jobs):
                try:
                    gone |= self.store.ensure_loaded([name])
                except Exception as err:
                    failed[name] = ServeError(500, f"Could not load the adapter {name!r}: {err}")
        failed.update({name: ServeError(404, f"The adapter {name!r} was deleted.") for name in gone})
        for job in jobs:
            if job.adapter in failed:
                job.answer(("error", job.index, failed[job.adapter]))
        return [job for job in jobs if job.adapter not in failed]

    def _isolated(self, run, jobs: list[Job], err: Exception) -> None:
        """A batched call raised: run each job alone, so only the faulty one fails."""
        if len(jobs) == 1:
            logger.warning("A request failed inside the model: %s", err)
            jobs[0].fail(err)
            return
        for job in jobs:
            run([job])

    def _classify(self, jobs: list[Classification]) -> None:
        jobs = self._resident(jobs)
        if not jobs:
            return
        sources = [s for job in jobs for s in job.sources]
        names = [job.adapter for job in jobs for _ in job.sources]
        try:
            if self.model.kind == "classification":
                table = classifier_scores(
                    self.model, self.tokenizer, sources, UNLIMITED, self.max_batch_size, self.precision, names
                )
                scores = list(table)
            else:
                lists = [job.candidates for job in jobs for _ in job.sources]
                scores = rank_each(
                    self.model, self.tokenizer, self.model.kind, sources, lists, UNLIMITED, self.max_batch_size,
                    self.precision, names,
                )  # fmt: skip
        except Exception as err:
            self._isolated(self._classify, jobs, err)
            return
        self.stats["classify_calls"] += 1
        start = 0
        for job in jobs:
            job.answer(("scores", job.index, scores[start : start + job.size]))
            start += job.size

    def _start(self, jobs: list[Completion]) -> None:
        jobs = self._resident(jobs)
        if not jobs:
            return
        if self.model.kind != "causal":
            self._generate(jobs)
            return
        rows = []
        for job in jobs:  # everything that may fail for one job, before its rows join the batch
            try:
                rows.append(Row(job, TextStream(self.tokenizer, job.sampling.stop), job.generator()))
            except Exception as err:
                job.fail(err)
        if not rows:
            return
        jobs = [row.job for row in rows]
        try:
            logits, state = self.batch.prefill([job.prompt for job in jobs], [job.adapter for job in jobs])
        except Exception as err:
            self._isolated(self._start, jobs, err)
            return
        self.stats["prefill_calls"] += 1
        self.stats["largest_prefill"] = max(self.stats["largest_prefill"], len(jobs))
        first = len(self.rows)
        self.batch.join(state)
        self.rows += rows
        self._advance(logits, first)

    def _step(self) -> None:
        live = [i for i, row in enumerate(self.rows) if not row.job.cancelled]
        self._keep(live)
        if not self.rows:
            return
        logits = self.batch.step(torch.tensor([row.last for row in self.rows]))
        self.stats["steps"] += 1
        self.stats["largest_step"] = max(self.stats["largest_step"], len(self.rows))
        self._advance(logits, 0)

    def _advance(self, logits: torch.Tensor, first: int) -> None:
        """Sample the next token of rows[first:] from `logits`; rows that finish leave the batch."""
        keep = list(range(first))
        for i, row in enumerate(self.rows[first:], start=first):
            s = row.job.sampling
            try:
                row.last = sample(logits[i - first], s.temperature, s.top_p, row.generator)
                if self._emit(row, row.last) is None:
                    keep.append(i)
            except Exception as err:
                row.job.fail(err)
        self._keep(keep)

    def _keep(self, rows: list[int]) -> None:
        if len(rows) != len(self.rows):
            self.batch.keep(rows)
            self.rows = [self.rows[i] for i in rows]

    def _emit(self, row: Row, token: int) -> Optional[str]:
        """Send the text this token adds; the finish reason once the row is done."""
        row.generated += 1
        if token in self.eos:
            finish, delta = "stop", row.stream.finish()
        else:
            delta, stopped = row.stream.add(token)
            finish = "stop" if stopped else "length" if row.generated >= row.job.sampling.max_tokens else None
            if finish == "length":
                delta += row.stream.finish()
        if delta:
            row.job.sink.put(("text", row.job.index, delta))
        if finish:
            row.job.answer(("done", row.job.index, finish, row.generated))
        return finish

    def _generate(self, jobs: list[Completion]) -> None:
        """Encoder-decoders: one generate() call per batch; new requests wait for the next one."""
        s = jobs[0].sampling
        options = {"do_sample": False}
        if s.temperature > 0:
            options = {"do_sample": True, "temperature": s.temperature, "top_p": s.top_p}
            torch.manual_seed(s.seed if s.seed is not None else int(time.time_ns() % 2**31))
        batch = pad_batch([Encoded(job.prompt, []) for job in jobs], self.model.kind, pad_id(self.tokenizer))
        try:
            out = self.model.generate(
                input_ids=batch["input_ids"].to(self.device),
                attention_mask=batch["attention_mask"].to(self.device),
                adapter_names=[job.adapter for job in jobs],
                max_new_tokens=max(job.sampling.max_tokens for job in jobs),
                **options,
            )
        except Exception as err:
            self._isolated(self._start, jobs, err)
            return
        self.stats["prefill_calls"] += 1
        self.stats["largest_prefill"] = max(self.stats["largest_prefill"], len(jobs))
        for job, tokens in zip(jobs, out[:, 1:].tolist()):  # after the decoder start token
            row = Row(job, TextStream(self.tokenizer, job.sampling.stop), torch.Generator())
            for token in tokens:
                if job.cancelled or self._emit(row, token) is not None:
                    break


def _release_memory() -> None:
    """glibc keeps freed heap pages (a large batch's activations and caches) mapped; give them back,
    so an idle server's memory returns to its resting size. Nothing to do elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _eos_ids(backbone) -> set[int]:
    eos = backbone.generation_config.eos_token_id
    if eos is None:
        eos = backbone.config.eos_token_id
    return set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
