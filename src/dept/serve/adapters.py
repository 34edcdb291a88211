"""The adapters a server offers, and which of them sit in the model right now.

Adapters are registered by name: from the command line (any path the operator gives) or at
runtime from under `--adapter-root` only. Registering reads and checks the files (safetensors
only, the right backbone and shapes), so a bad adapter is refused before a request needs it. The
model holds at most `max_loaded` of them: the scheduler's thread loads one when a request needs it
and evicts the least recently used; an evicted adapter stays registered and comes back on demand.

An adapter registered by a request reads nothing outside the root: its folder, every file of it
(`adapter_config.json`, `adapter_model.safetensors`, `run.json`, …) and the `run.json` found above
it must resolve inside the root, symlinks included (403 otherwise, checked again at each load); a
malformed path (a NUL byte, …) is a 400.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from dept.core import checkpoint
from dept.core.model import BASE, DePTModel
from dept.methods import METHODS, get_method
from dept.options import UsageError
from dept.runs.trained import _adapter_folder, _run_settings

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


class ServeError(Exception):
    """A request the server refuses: an HTTP status and an OpenAI-style error type."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
             404: "not_found_error", 409: "invalid_request_error", 422: "invalid_request_error",
             429: "rate_limit_error", 503: "server_error"}  # fmt: skip

    def __init__(self, status: int, message: str, param: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.type = self.TYPES.get(status, "server_error")


@dataclass
class Adapter:
    name: str
    path: Path
    max_length: int  # s: the longest input it was trained for
    prompt_length: int
    task: Optional[str]  # from the run that trained it, for /v1/classify
    task_options: dict = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time()))
    root: Optional[Path] = None  # registered by a request: its files must stay under this root
    built_task: Any = field(default=None, repr=False)  # its own task, once a request built it


class AdapterStore:
    def __init__(
        self, model: DePTModel, model_name: str, root: Optional[Path] = None, max_loaded: Optional[int] = None
    ):
        self.model = model
        self.model_name = model_name
        self.root = root.resolve() if root is not None else None
        self.max_loaded = max_loaded
        self._registered: dict[str, Adapter] = {}
        self._loaded: OrderedDict[str, Adapter] = OrderedDict()  # LRU order; the scheduler's thread only
        self._lock = threading.Lock()

    # ----- registry (any thread) -------------------------------------------------------------
    def register(self, name: str, path: Path, from_request: bool = False) -> Adapter:
        """Check the adapter's files and offer it under `name`. Requests may load only from under the root."""
        if not NAME.fullmatch(name) or name in (BASE, self.model_name):
            raise ServeError(
                400,
                f"Adapter name {name!r} is not allowed: use letters, digits and ._:/- (up to 128), "
                f"not {BASE!r} or the base model's name.",
                "name",
            )
        path = Path(path)
        root = None
        if from_request:
            path, root = self._under_root(path), self.root
        try:
            folder, run = _inspect(path, root)
            if not folder.is_dir():
                raise ServeError(400, f"Cannot serve {path}: it is not a folder.", "path")
            method = run.get("method") or {}
            method = method.get("method", "dept") if isinstance(method, dict) else method
            if not get_method(method).trains_prompt:
                served = ", ".join(name for name, m in METHODS.items() if m.trains_prompt)
                raise ServeError(400, f"{path} is a --method {method} run; dept serve serves {served} adapters.")
            if not (folder / checkpoint.WEIGHTS_NAME).is_file():
                raise ServeError(
                    400,
                    f"{folder} has no {checkpoint.WEIGHTS_NAME}; the server loads safetensors only "
                    "(`dept convert` turns an official checkpoint into one).",
                )
            config, tensors, backbone = checkpoint.read_adapter(folder)
            checkpoint.check_backbone(backbone, self.model.backbone_info(), folder)
            checkpoint.check_shapes(config, tensors, self.model.hidden_size, folder)
        except ServeError:
            raise
        except (UsageError, ValueError, OSError, RuntimeError) as err:
            raise ServeError(400, f"Cannot serve {path}: {err}") from None
        task, options = run.get("task"), run.get("task_options") or {}
        adapter = Adapter(
            name,
            folder,
            config.max_length,
            config.prompt_length,
            task if isinstance(task, str) else None,
            options if isinstance(options, dict) else {},
            root=root,
        )
        with self._lock:
            if name in self._registered:
                raise ServeError(409, f"An adapter named {name!r} is already served; DELETE it first.", "name")
            self._registered[name] = adapter
        return adapter

    def _under_root(self, path: Path) -> Path:
        if self.root is None:
            raise ServeError(403, "Loading adapters at runtime is off; start the server with --adapter-root DIR.")
        return _inside(self.root / path, self.root, path)  # an absolute path stays itself

    def unregister(self, name: str) -> None:
        with self._lock:
            if self._registered.pop(name, None) is None:
                raise ServeError(404, f"No adapter named {name!r} is served.", "name")

    def get(self, name: str) -> Optional[Adapter]:
        """The adapter a request's `model` names; None for the base model."""
        if name == self.model_name:
            return None
        with self._lock:
            adapter = self._registered.get(name)
        if adapter is None:
            raise ServeError(404, f"The model {name!r} does not exist; GET /v1/models lists what is served.", "model")
        return adapter

    def all(self) -> list[Adapter]:
        with self._lock:
            return list(self._registered.values())

    # ----- the model (the scheduler's thread) ------------------------------------------------
    def ensure_loaded(self, names: Iterable[str]) -> set[str]:
        """Make these adapters resident (evicting the least recently used); returns the names that
        are no longer registered."""
        wanted = [n for n in dict.fromkeys(names) if n != BASE]
        with self._lock:
            current = dict(self._registered)
        for name, adapter in list(self._loaded.items()):
            if current.get(name) is not adapter:  # deleted, or replaced by another adapter of that name
                self._unload(name)
        gone = set()
        for name in wanted:
            adapter = current.get(name)
            if adapter is None:
                gone.add(name)
            elif name in self._loaded:
                self._loaded.move_to_end(name)
            else:
                while self.max_loaded is not None and len(self._loaded) >= self.max_loaded:
                    victim = next((n for n in self._loaded if n not in wanted), None)
                    if victim is None:
                        break
                    self._unload(victim)
                if adapter.root is not None:  # its files may have changed since it was registered
                    _inspect(adapter.path, adapter.root)
                self.model.load_adapter(adapter.path, name)
                self._loaded[name] = adapter
        return gone

    def _unload(self, name: str) -> None:
        del self._loaded[name]
        if name in self.model.adapters:
            self.model.delete_adapter(name)

    def loaded(self) -> list[str]:
        return list(self._loaded)


def _inside(path: Path, root: Path, shown: Optional[Path] = None) -> Path:
    """`path` resolved (symlinks followed); 403 unless it lies under `root`, 400 if it is no usable path."""
    shown = path if shown is None else shown
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError, ValueError):  # a NUL byte, a symlink loop, a name too long
        raise ServeError(400, f"{str(shown)[:300]!r} is not a valid path.", "path") from None
    if not resolved.is_relative_to(root):
        raise ServeError(
            403,
            f"{str(shown)[:300]} is outside the adapter root (symlinks are followed); only adapters under it "
            "can be loaded.",
            "path",
        )
    return resolved


def _inspect(path: Path, root: Optional[Path]) -> tuple[Path, dict]:
    """The adapter folder `path` names (a run folder's best/) and the settings of the run that made
    it (its run.json, in the folder or up to two above). With a root, every file read is checked
    to lie under it, and no run.json above the root is looked for."""
    folder = _adapter_folder(path)
    if root is not None:
        folder = _inside(folder, root, path)
    run_file = None
    for candidate in (folder, *folder.parents[:2]):
        if root is not None and not candidate.is_relative_to(root):
            break
        if (candidate / "run.json").is_file():
            run_file = candidate / "run.json"
            break
    if root is not None:
        names = (checkpoint.CONFIG_NAME, checkpoint.WEIGHTS_NAME, checkpoint.LEGACY_WEIGHTS_NAME)
        for file in [folder / n for n in names] + ([run_file] if run_file else []):
            if os.path.lexists(file):
                _inside(file, root, file.relative_to(root))
    return folder, (_run_settings(run_file.parent) if run_file else {})
