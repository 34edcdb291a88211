"""The run folder: what a run writes there, and the rules that keep its work from being lost or mixed.

A run holds an OS lock on its folder, refuses a folder that already holds a run unless told to
--resume it (same task, method, model and adapter shape) or to --overwrite it, and swaps checkpoint
folders in atomically, so a killed run leaves the old folder or the new one, never half of one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

from dept.options import TrainOptions, UsageError

try:
    import fcntl
except ImportError:  # not POSIX: no folder lock
    fcntl = None

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"
BEST = "best"
RUN_FILE = "run.json"
LOCK_FILE = ".lock"
# What a run writes into its folder; any of them there means the folder holds a run.
RUN_FILES = (RUN_FILE, "metrics.jsonl", "results.json", "training_curve.png", BEST, CHECKPOINT, "tensorboard")
# What a --resume must share with the run it continues; anything else may change (with a note).
RESUME_MUST_MATCH = (
    "task",
    "task_options",
    "model",
    "split_rule",
    "split_seed",
    "seed",
    "k_shot",
    "chat_template",
    "method.method",
    "method.budget",
    "method.prompt_length",
    "method.rank",
    "method.max_length",
    "method.lora_rank",
    "method.prompt_init",
)
RESUME_IGNORED = ("resume", "overwrite", "output_dir")
# Options that, left unset, take a value from the backbone; run.json holds that value.
BACKBONE_DEFAULTS = ("method.lr_prompt", "method.lr_lowrank")


def with_split_seed(run: dict) -> dict:
    """A run.json from before `split_seed` existed shuffled its paper split with its `seed`: say so."""
    return {"split_seed": run["seed"], **run} if "seed" in run else run


def code_commit() -> Optional[str]:
    """The git commit of the dept source measured ("+changes" when src/ differs from it); None outside a checkout."""
    src = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=src, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        return commit + ("+changes" if git("status", "--porcelain", "--", ".") else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def atomic_dir(target: Path, write) -> None:
    """Write a folder beside `target`, then swap it in: a kill leaves the old or the new one."""
    tmp = target.with_name(f".{target.name}.tmp")
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        write(tmp)
    except OSError as err:  # a full disk: free what was written, keep the previous folder
        shutil.rmtree(tmp, ignore_errors=True)
        kept = f"the previous {target.name}/ is intact" if restorable(target) else f"no {target.name}/ was saved"
        raise OSError(err.errno, f"Could not write {target} ({err.strerror or err}); {kept}.") from err
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def atomic_file(target: Path, write) -> None:
    """Write a file beside `target` (same suffix, so writers that go by it still work), then swap it in."""
    tmp = target.with_name(f".{target.stem}.tmp{target.suffix}")
    write(tmp)
    os.replace(tmp, target)


def read_log(path: Path) -> list[dict]:
    """The records of an append-only log; a torn last line (a kill mid-append) is dropped."""
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").split("\n") if line.strip()]
    records = []
    for lineno, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if lineno == len(lines):
                logger.warning("%s: dropping its torn last line %d (%s)", path, lineno, err.msg)
                break
            raise UsageError(f"{path} line {lineno} is not JSON ({err.msg}); remove the line or --overwrite.") from None
    return records


def trim_log(path: Path, step: int, evals: bool = True) -> None:
    """Drop what a killed run logged after its last checkpoint (all of it for a fresh run), and
    its evaluation at that step too unless `evals` (the evaluation will run again)."""
    if not path.exists():
        return
    kept = [r for r in read_log(path) if r["step"] < step or (r["step"] == step and (evals or "loss" in r))]
    atomic_file(path, lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8"))


def restorable(target: Path) -> Optional[Path]:
    old = target.with_name(f".{target.name}.old")
    return target if target.exists() else (old if old.exists() else None)


class FolderLock:
    """An exclusive flock on OUT/.lock, so two runs never write into one folder at once. The OS drops
    it when the process dies, so a killed run leaves no stale lock; the file names the holder's PID."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.file = open(folder / LOCK_FILE, "a+", encoding="utf-8")
        if fcntl is None:
            return
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "unknown"
            self.file.close()
            raise UsageError(
                f"{folder} is in use by another dept run (pid {holder}); wait for it to finish "
                "or choose another --output-dir."
            ) from None
        self.file.truncate(0)
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()

    def release(self) -> None:
        if not self.file.closed:
            self.file.close()  # closing drops the flock


def _flat(options: dict, prefix: str = "") -> dict:
    """{"method": {"rank": 2}} -> {"method.rank": 2}, to compare two run.json files field by field."""
    out = {}
    for key, value in options.items():
        if isinstance(value, dict) and key != "task_options":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_output(out: Path, opts: TrainOptions) -> None:
    """Refuse a folder that holds a run, unless --resume (of the same run) or --overwrite says what to do."""
    held = [name for name in RUN_FILES if restorable(out / name) is not None]
    if opts.resume:
        if (out / RUN_FILE).is_file():
            _check_resume(out, opts)
    elif held and not opts.overwrite:
        raise UsageError(
            f"{out} already holds a run ({', '.join(held)}); pass --resume to continue it or --overwrite to replace it."
        )


def _check_resume(out: Path, opts: TrainOptions) -> None:
    """--resume continues the same training: refuse another task, method, model or adapter shape."""
    try:
        stored = _flat(json.loads((out / RUN_FILE).read_text(encoding="utf-8")))
    except (ValueError, AttributeError) as err:  # invalid JSON, not UTF-8, not an object
        raise UsageError(f"{out / RUN_FILE} is unreadable ({err}); --overwrite starts the run afresh.") from None
    stored = with_split_seed(stored)
    new = _flat(json.loads(json.dumps(jsonable(opts))))
    changed = {
        k: (stored[k], v)
        for k, v in new.items()
        if k in stored and stored[k] != v and k not in RESUME_IGNORED and not (k in BACKBONE_DEFAULTS and v is None)
    }
    clashes = [f"{k} {old!r} -> {value!r}" for k, (old, value) in changed.items() if k in RESUME_MUST_MATCH]
    if clashes:
        raise UsageError(
            f"--resume: {out} holds a different run ({'; '.join(clashes)}); use the same options, "
            "or another --output-dir for a new run."
        )
    if changed:
        logger.warning(
            "--resume with changed options: %s", "; ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
        )


def clear_output(out: Path) -> None:
    """--overwrite: remove what the previous run wrote (only a run's own files; the lock stays)."""
    for name in RUN_FILES:
        for path in (out / name, out / f".{name}.tmp", out / f".{name}.old"):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()


def jsonable(obj) -> Any:
    return asdict(obj) if hasattr(obj, "__dataclass_fields__") else obj


def tensorboard_writer(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ImportError("--tensorboard needs the tensorboard package: pip install tensorboard") from err
    return SummaryWriter(out / "tensorboard")
