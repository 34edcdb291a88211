"""What the server's handlers hand the model thread: jobs, each with the sink its answer goes to."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

import torch

from dept.serve.adapters import ServeError
from dept.serve.text import TextStream


class Sink:
    """Events from the model thread to one request's handler on the event loop."""

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()

    def put(self, event: tuple) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the event loop has closed: nobody is listening
            pass


@dataclass
class Sampling:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: Sequence[str] = ()
    seed: Optional[int] = None


@dataclass(eq=False, kw_only=True)
class Job:
    adapter: str  # an adapter name, or BASE for the plain backbone
    sink: Sink
    index: int = 0  # which prompt/choice of its request
    cancelled: bool = False  # set by the handler when its client went away
    answered: bool = False  # its final event (result or error) was sent

    @property
    def size(self) -> int:
        return 1

    def answer(self, event: tuple) -> None:
        """The final event: its result, or its error."""
        self.answered = True
        self.sink.put(event)

    def fail(self, err: Exception) -> None:
        error = err if isinstance(err, ServeError) else ServeError(500, f"The model failed on this request: {err}")
        self.answer(("error", self.index, error))


@dataclass(eq=False, kw_only=True)
class Completion(Job):
    prompt: list[int]
    sampling: Sampling = field(default_factory=Sampling)

    def decodes_with(self, other: Completion) -> bool:
        """Encoder-decoders share one generate() call, so only greedy jobs of equal options go together."""
        mine, theirs = self.sampling, other.sampling
        same = (mine.temperature, mine.top_p, mine.seed) == (theirs.temperature, theirs.top_p, theirs.seed)
        return same and mine.temperature <= 0

    def generator(self) -> torch.Generator:
        generator = torch.Generator()
        if self.sampling.seed is not None:
            generator.manual_seed(self.sampling.seed)
        else:
            generator.seed()
        return generator


@dataclass(eq=False, kw_only=True)
class Classification(Job):
    sources: list[str]
    candidates: list[str]

    @property
    def size(self) -> int:
        return len(self.sources)


@dataclass(eq=False)
class Row:
    """A completion being decoded."""

    job: Completion
    stream: TextStream
    generator: torch.Generator
    generated: int = 0
    last: int = 0
