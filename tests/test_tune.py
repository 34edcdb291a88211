"""`dept tune` on a tiny model: a search writes best.json, trials.json and trials.png; best.json feeds
`dept train --config`; a killed search resumes to the same total; the median rule prunes; mistakes
(in the search options or a --config file) are one `error:` line."""

import json
import sys

import optuna
import pytest

import dept.runs.train
from dept.options import TuneOptions, UsageError, read_config
from dept.runs.train import Run
from dept.runs.tune import STUDY_FILE, STUDY_NAME, tune
from test_cli import cli, one_error_line
from test_train import options

from tiny import make_tiny_llama, make_tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """A tiny Llama + tokenizer folder and a small two-label CSV task, as `options()` expects."""
    root = tmp_path_factory.mktemp("tune")
    make_tiny_llama(root / "model", tokenizer=make_tiny_tokenizer(root / "model"))
    words = ["great", "terrible", "wonderful", "boring", "good", "bad"]
    rows = [f"the movie was {words[i % 6]} {i},{'pos' if i % 2 == 0 else 'neg'}" for i in range(48)]
    (root / "task.csv").write_text("\n".join(["text,label", *rows]) + "\n")
    return root


def search(root, out, **overrides) -> TuneOptions:
    return TuneOptions(**{"trials": 3, "output_dir": str(out), **overrides})


def trials_json(out) -> dict:
    return json.loads((out / "trials.json").read_text())


def tune_args(root, out, *extra):
    return [
        "tune",
        "--task",
        f"csv:{root / 'task.csv'}",
        "--text-fields",
        "text",
        "--label-field",
        "label",
        "--model",
        str(root / "model"),
        "--max-steps",
        "6",
        "--batch-size",
        "4",
        "--eval-every",
        "3",
        "--eval-samples",
        "4",
        "--warmup-steps",
        "2",
        "--precision",
        "fp32",
        "--seed",
        "3",
        "--split-seed",
        "11",
        "--prompt-length",
        "4",
        "--rank",
        "2",
        "--max-length",
        "32",
        "--output-dir",
        str(out),
        *extra,
    ]


def test_search_writes_best_trials_and_plot_without_scoring_test(tiny_setup, tmp_path):
    summary = tune(options(tiny_setup, None), search(tiny_setup, tmp_path))
    assert summary["finished"] == 3 and len(summary["trials"]) == 3
    assert summary == trials_json(tmp_path)
    assert (tmp_path / "trials.png").stat().st_size > 0 and (tmp_path / STUDY_FILE).exists()
    values = [t["value"] for t in summary["trials"] if t["state"] == "complete"]
    assert summary["best"]["value"] == max(values)
    for t in summary["trials"]:
        lo, hi = summary["space"]["lr_prompt"]
        assert lo <= t["params"]["lr_prompt"] <= hi and set(t["params"]) == {"lr_prompt", "lr_lowrank"}
        results = json.loads((tmp_path / t["folder"] / "results.json").read_text())
        assert "test" not in results  # tuning never scores the test split
        assert (
            json.loads((tmp_path / t["folder"] / "run.json").read_text())["method"]["lr_prompt"]
            == (t["params"]["lr_prompt"])
        )
    best = read_config(tmp_path / "best.json")  # the form `dept train --config` reads
    assert best["lr_prompt"] == summary["best"]["params"]["lr_prompt"]
    assert "output_dir" not in best and best["max_steps"] == 6
    assert not list(tmp_path.glob(".*.tmp*"))  # atomic writes leave no temporary file behind


def test_best_json_feeds_train_config(tiny_setup, tmp_path, capsys, caplog):
    code, out, err = cli(capsys, *tune_args(tiny_setup, tmp_path / "tune", "--trials", "2"))
    assert code == 0, err
    assert "train with it: dept train --config" in out
    lines = [r.getMessage() for r in caplog.records if r.name == "dept.runs.tune"]
    assert len(lines) == 2 and "(2/2 finished): accuracy" in lines[1], lines  # one line per trial
    best = trials_json(tmp_path / "tune")["best"]
    code, out, err = cli(
        capsys, "train", "--config", tmp_path / "tune" / "best.json", "--output-dir", tmp_path / "final"
    )
    assert code == 0, err
    trial_runs = [json.loads(p.read_text()) for p in sorted((tmp_path / "tune").glob("trial-*/run.json"))]
    assert len(trial_runs) == 2 and {r["split_seed"] for r in trial_runs} == {11}  # one split for every trial
    run = json.loads((tmp_path / "final" / "run.json").read_text())
    assert run["split_seed"] == 11  # best.json carries the search's split to the final run
    assert run["method"]["lr_prompt"] == best["params"]["lr_prompt"]
    assert run["method"]["lr_lowrank"] == best["params"]["lr_lowrank"]
    results = json.loads((tmp_path / "final" / "results.json").read_text())
    assert results["best_validation"] == best["value"]  # the same run again, now also scored on test
    assert "test" in results


def test_config_file_then_flags(tiny_setup, tmp_path, capsys, monkeypatch):
    runs = []
    monkeypatch.setattr(dept.runs.train, "train", lambda opts: runs.append(opts) or {})
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"task": "glue/rte", "lr_prompt": 0.2, "max_steps": 5, "seed": 9, "rank": None}))
    assert cli(capsys, "train", "--config", config, "--max-steps", "7", "--lr-lowrank", "1e-4")[0] == 0
    opts = runs[-1]
    assert (opts.task, opts.max_steps, opts.method.lr_prompt, opts.method.lr_lowrank) == ("glue/rte", 7, 0.2, 1e-4)
    assert opts.seed == opts.method.seed == 9 and opts.batch_size == 16 and not opts.zero_shot  # not the main job


@pytest.mark.parametrize(
    "content, fragments",
    [
        ({"lr_promt": 0.1}, ["unknown option 'lr_promt'", "did you mean 'lr_prompt'"]),
        ({"max_steps": "10"}, ["max_steps must be an integer", '"10"']),
        ({"lr_prompt": True}, ["lr_prompt must be a number"]),
        ([1, 2], ["expected a JSON object"]),
        ("{not json", ["invalid JSON"]),
    ],
)
def test_config_file_mistakes_are_one_line(tmp_path, capsys, no_backbone, content, fragments):
    config = tmp_path / "c.json"
    config.write_text(content if isinstance(content, str) else json.dumps(content))
    code, _, err = cli(capsys, "train", "--config", config)
    one_error_line(code, err, str(config), *fragments, alone=False)


@pytest.mark.parametrize("kill", [KeyboardInterrupt, SystemExit], ids=["interrupted", "killed"])
def test_killed_search_resumes_to_the_same_total(tiny_setup, tmp_path, monkeypatch, kill):
    """KeyboardInterrupt: Optuna marks the trial failed. SystemExit passes through Optuna, which leaves
    the trial marked running, as a `kill -9` would."""
    save = Run._save_checkpoint

    def save_then_die(self):
        save(self)
        if self.out.name == "trial-0001":
            raise kill("killed in the second trial, after its first checkpoint")

    monkeypatch.setattr(Run, "_save_checkpoint", save_then_die)
    with pytest.raises(kill):
        tune(options(tiny_setup, None), search(tiny_setup, tmp_path, prune_after=10))
    monkeypatch.setattr(Run, "_save_checkpoint", save)
    first = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{tmp_path / STUDY_FILE}").trials
    assert [t.state.name for t in first] == ["COMPLETE", "FAIL" if kill is KeyboardInterrupt else "RUNNING"]

    summary = tune(options(tiny_setup, None), search(tiny_setup, tmp_path, prune_after=10))
    rows = {t["trial"]: t for t in summary["trials"]}
    assert summary["finished"] == 3 and sorted(rows) == [0, 2, 3]
    assert rows[0]["value"] == first[0].value  # the finished trial is kept, not rerun
    assert rows[2]["retry_of"] == 1 and rows[2]["params"] == first[1].params and rows[2]["folder"] == "trial-0001"
    assert sorted(p.name for p in tmp_path.glob("trial-*")) == ["trial-0000", "trial-0001", "trial-0003"]
    logged = [json.loads(line) for line in (tmp_path / "trial-0001" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "val_accuracy" in r] == [3, 6]  # resumed from its checkpoint
    assert list(rows[2]["intermediate"]) == ["3", "6"]  # killed before its step-3 evaluation: the retry ran it

    # --trials counts finished trials: the same command again has nothing left to do.
    assert tune(options(tiny_setup, None), search(tiny_setup, tmp_path))["finished"] == 3
    # Another search in the same folder is refused, naming what differs.
    with pytest.raises(UsageError, match="max_steps 6 -> 7"):
        tune(options(tiny_setup, None, max_steps=7), search(tiny_setup, tmp_path))


def test_lagging_and_diverged_trials_are_pruned(tiny_setup, tmp_path, monkeypatch):
    def scripted(self, examples, model=None):
        if self.out.name == "trial-0002":
            raise FloatingPointError("Loss is nan at step 3.")
        return {"accuracy": 90.0 if self.out.name == "trial-0000" else 10.0}

    monkeypatch.setattr(Run, "_evaluate", scripted)
    summary = tune(options(tiny_setup, None), search(tiny_setup, tmp_path, prune_after=1))
    states = {t["trial"]: t for t in summary["trials"]}
    assert [states[n]["state"] for n in range(3)] == ["complete", "pruned", "pruned"]
    assert states[1]["intermediate"] == {"3": 10.0}  # stopped at its first evaluation
    assert "Loss is nan" in states[2]["diverged"]
    assert summary["best"]["trial"] == 0 and summary["pruned"] == 2
    assert (tmp_path / "trials.png").exists()


def test_shape_search_keeps_the_rank_budget_matched(tiny_setup, tmp_path):
    run = options(tiny_setup, None)
    run.method.rank, run.method.budget = None, 10
    summary = tune(run, search(tiny_setup, tmp_path, trials=2, search_shape=True))
    for t in summary["trials"]:
        m = t["params"]["prompt_length"]
        assert 1 <= m <= 9
        config = json.loads((tmp_path / t["folder"] / "best" / "adapter_config.json").read_text())["config"]
        assert config["prompt_length"] == m and config["rank"] == (10 - m) * 32 // (32 + 32)


@pytest.mark.parametrize(
    "extra, fragments",
    [
        (["--method", "lora", "--lr-prompt-range", "1e-3", "1"], ["--lr-prompt-range applies to --method dept/pt"]),
        (["--trials", "0"], ["--trials must be at least 1"]),
        (["--lr-lowrank-range", "1e-2", "1e-6"], ["LOW <= HIGH"]),
        (["--lr-prompt-range", "0", "1"], ["--lr-prompt-range must be a finite number above 0"]),
        (["--method", "pt", "--search-shape"], ["--search-shape", "--method pt"]),
        (["--search-shape"], ["leave --rank out"]),
        (["--prompt-length-range", "2", "3"], ["applies with --search-shape"]),
        (["--timeout", "0"], ["--timeout"]),
    ],
)
def test_tune_mistakes_are_one_line(tiny_setup, tmp_path, capsys, no_backbone, extra, fragments):
    code, _, err = cli(capsys, *tune_args(tiny_setup, tmp_path / "tune", *extra))
    one_error_line(code, err, *fragments, alone=False)
    assert not (tmp_path / "tune").exists()


def test_missing_optuna_names_the_extra(tiny_setup, tmp_path, capsys, monkeypatch, no_backbone):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` now fails as if it were not installed
    monkeypatch.delitem(sys.modules, "dept.runs.tune", raising=False)
    code, _, err = cli(capsys, *tune_args(tiny_setup, tmp_path / "tune"))
    one_error_line(code, err, "'optuna' package", 'pip install "dept[train]"', alone=False)
