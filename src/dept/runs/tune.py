"""`dept tune`: search the learning rates (and, for DePT, optionally the prompt length) on the validation split.

Each trial is an ordinary training run in OUT/trial-NNNN, so its checkpoints, logs and curve are
there. Optuna's seeded TPE sampler proposes the settings; its MedianPruner stops a trial whose
validation score lags the median of earlier trials at the same step, through the trainer's `on_eval`
hook. A trial that diverges (NaN) counts as pruned: its rates are bad, and TPE should learn that.

The study lives in OUT/study.db (SQLite), so a killed search resumes with the same command: finished
trials stay, and a trial that was running is marked failed and tried again with the same settings in
its own folder, where its training resumes from its last checkpoint. `trials` counts finished
(completed or pruned) trials in total. The test split is never scored.

After each trial, OUT/best.json (the best trial's options, in the form `dept train --config` reads),
trials.json and trials.png are rewritten atomically.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from dept._extras import requires
from dept.options import TrainOptions, TuneOptions, UsageError, flat_options
from dept.runs import rundir
from dept.runs.train import train

with requires("train"):
    import optuna
    from optuna.trial import FrozenTrial, TrialState

logger = logging.getLogger(__name__)

STUDY_NAME = "dept-tune"
STUDY_FILE = "study.db"
# Options that belong to one run folder rather than to the search; best.json leaves them out.
RUN_ONLY = ("output_dir", "resume", "overwrite", "test")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def trial_folder(number: int) -> str:
    return f"trial-{number:04d}"


def tune(run: TrainOptions, opts: TuneOptions) -> dict[str, Any]:
    """Run (or resume) the search in opts.out(run) until `opts.trials` trials have finished; returns trials.json."""
    space = opts.space(run)
    _validate(run, opts, space)
    out = opts.out(run)
    lock = rundir.FolderLock(out)
    try:
        study = _open_study(out, run, opts, space)
        from dept.tasks import get_task

        metric = get_task(run.task, **run.task_options).main_metric
        write = lambda study, trial=None: _write_outputs(study, trial, out, run, opts, space, metric)
        remaining = opts.trials - _finished(study)
        if remaining > 0:
            study.optimize(
                lambda trial: _objective(trial, run, space, out),
                n_trials=remaining,
                timeout=opts.timeout,
                callbacks=[write],
            )
        return write(study)
    finally:
        lock.release()


def _validate(run: TrainOptions, opts: TuneOptions, space: dict[str, tuple]) -> None:
    opts.validate(run)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("dept tune runs in one process (trials follow each other); launch it without accelerate.")
    # The searched values replace the run's own, so check the options each trial will actually get.
    _with(run, {name: low for name, (low, _) in space.items()}).validate()


def _with(run: TrainOptions, params: dict[str, Any], **changes: Any) -> TrainOptions:
    return dataclasses.replace(run, method=dataclasses.replace(run.method, **params), **changes)


def _search(run: TrainOptions, space: dict[str, tuple]) -> dict[str, Any]:
    """What defines a search: a study.db holding another one is refused rather than mixed."""
    options = {k: v for k, v in flat_options(run).items() if k not in RUN_ONLY}
    return json.loads(json.dumps({"options": options, "space": space}))


def _open_study(out: Path, run: TrainOptions, opts: TuneOptions, space: dict[str, tuple]) -> optuna.Study:
    if not (out / STUDY_FILE).exists() and any(out.glob("trial-*")):
        raise UsageError(
            f"{out} holds trial folders but no {STUDY_FILE}; choose another --output-dir for a new search."
        )
    storage = optuna.storages.RDBStorage(f"sqlite:///{out.resolve() / STUDY_FILE}")
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=storage,
        direction="maximize",  # every task's main metric grows with quality
        # Optuna's 10 random start-up trials would make a short search pure random search.
        sampler=optuna.samplers.TPESampler(seed=run.seed, n_startup_trials=min(10, max(2, opts.trials // 3))),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=opts.prune_after),
        load_if_exists=True,
    )
    search, stored = _search(run, space), study.user_attrs.get("search")
    if stored is None:
        study.set_user_attr("search", search)
    elif stored != search:
        old, new = _flat(stored), _flat(search)
        changed = [
            f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
        ]
        raise UsageError(
            f"{out / STUDY_FILE} holds another search ({'; '.join(changed)}); use the same options to resume it, "
            "or another --output-dir for a new search."
        )
    _retry_interrupted(study, storage)
    return study


def _flat(search: dict) -> dict:
    return {**search["options"], **{f"{k} range": v for k, v in search["space"].items()}}


def _retry_interrupted(study: optuna.Study, storage) -> None:
    """This process holds the folder's lock, so a trial still marked running belongs to a dead process:
    mark it failed, and queue its settings once more, in its folder, so its training resumes there."""
    study_id = storage.get_study_id_from_name(STUDY_NAME)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for t in trials:
        if t.state == TrialState.RUNNING:
            storage.set_trial_state_values(
                storage.get_trial_id_from_study_id_trial_number(study_id, t.number), TrialState.FAIL
            )
        if t.state in (TrialState.RUNNING, TrialState.FAIL) and t.number not in retried:
            folder = t.user_attrs.get("folder", trial_folder(t.number))
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number, "folder": folder})
            logger.info("trial %d was interrupted; it runs again in %s", t.number, folder)


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def _suggest(trial: optuna.Trial, space: dict[str, tuple]) -> dict[str, Any]:
    return {
        name: trial.suggest_int(name, low, high)
        if name == "prompt_length"
        else trial.suggest_float(name, low, high, log=True)
        for name, (low, high) in space.items()
    }


def _objective(trial: optuna.Trial, run: TrainOptions, space: dict[str, tuple], out: Path) -> float:
    folder = out / trial.user_attrs.get("folder", trial_folder(trial.number))
    trial.set_user_attr("folder", folder.name)
    retry = "retry_of" in trial.user_attrs and (folder / rundir.RUN_FILE).exists()
    opts = _with(
        run, _suggest(trial, space), output_dir=str(folder), test=False, test_samples=0, resume=retry, overwrite=False
    )

    def on_eval(step: int, score: float) -> None:
        if not math.isfinite(score):
            return
        trial.report(score, step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"validation {score:.4g} at step {step} is below the median of earlier trials")

    try:
        value = train(opts, on_eval)["best_validation"]
    except FloatingPointError as err:
        trial.set_user_attr("diverged", " ".join(str(err).split()))
        raise optuna.TrialPruned("diverged") from None
    if value is None or not math.isfinite(value):
        trial.set_user_attr("diverged", f"no finite validation score ({value})")
        raise optuna.TrialPruned("no finite validation score")
    return value


def _row(t: FrozenTrial) -> dict[str, Any]:
    row = {
        "trial": t.number,
        "state": t.state.name.lower(),
        "value": t.value,
        "params": t.params,
        "folder": t.user_attrs.get("folder"),
        "intermediate": {str(step): v for step, v in sorted(t.intermediate_values.items())},
    }
    if t.datetime_start and t.datetime_complete:
        row["seconds"] = round((t.datetime_complete - t.datetime_start).total_seconds(), 1)
    for key in ("retry_of", "diverged"):
        if key in t.user_attrs:
            row[key] = t.user_attrs[key]
    return row


def _describe(row: dict[str, Any], metric: str) -> str:
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["params"].items())
    if row["state"] == "complete":
        outcome = f"{metric} {row['value']:.4g}"
    elif row.get("diverged"):
        outcome = "diverged (counted as pruned)"
    else:
        last = list(row["intermediate"].items())[-1:]
        outcome = "pruned" + (f" at step {last[0][0]} ({metric} {last[0][1]:.4g})" if last else "")
    return f"{outcome}; {params}"


def _write_outputs(study, trial, out, run, opts, space, metric) -> dict[str, Any]:
    """trials.json, trials.png and best.json, each swapped in whole; one log line for the trial just done."""
    from dept.runs.plots import tuning_trials

    rows = [_row(t) for t in study.get_trials(deepcopy=False) if t.state in FINISHED]
    complete = [r for r in rows if r["state"] == "complete"]
    best = max(complete, key=lambda r: r["value"], default=None)
    summary = {
        "task": run.task,
        "method": run.method.method,
        "metric": metric,
        "split": "validation",
        "space": {name: list(bounds) for name, bounds in space.items()},
        "trials_wanted": opts.trials,
        "finished": len(rows),
        "pruned": len(rows) - len(complete),
        "best": best,
        "trials": rows,
    }
    rundir.atomic_file(out / "trials.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2) + "\n"))
    rundir.atomic_file(
        out / "trials.png", lambda tmp: tuning_trials(rows, tmp, metric, f"{run.task} {run.method.method}")
    )
    if best is not None:
        options = {k: v for k, v in flat_options(_with(run, best["params"])).items() if k not in RUN_ONLY}
        rundir.atomic_file(out / "best.json", lambda tmp: tmp.write_text(json.dumps(options, indent=2) + "\n"))
    if trial is not None and trial.state in FINISHED:
        best_text = f"best {metric} {best['value']:.4g} (trial {best['trial']})" if best else "no completed trial yet"
        logger.info(
            "trial %d (%d/%d finished): %s | %s",
            trial.number,
            len(rows),
            opts.trials,
            _describe(_row(trial), metric),
            best_text,
        )
    return summary
