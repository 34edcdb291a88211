"""Runs that survive their own failures, and one `error:` line for each bad input (issue 23, items 8-13):
bad regression labels, a failing evaluation, exploding weights, torn run files, absurd sizes, a full disk,
--init-from with another shape, the progress bar, files that are not UTF-8, and inputs predict cuts."""

import errno
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

import dept.methods
import dept.runs.train
from dept.runs.train import Run
from test_cli import cli, one_error_line, train_args, trained  # noqa: F401  (fixture)
from test_train import options, tiny_setup  # noqa: F401  (fixture)


def regression_csv(path, labels):
    path.write_text("text,label\n" + "".join(f"row {i},{label}\n" for i, label in enumerate(labels)))
    return f"csv:{path}"


def val_steps(folder):
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "val_accuracy" in r]


# ----- 8: evaluation failures lose no training --------------------------------------------------------


@pytest.mark.parametrize(
    "labels, fragments",
    [
        ([*range(20), "inf"], ["data.csv:22", "'inf' is not a finite number"]),
        ([*range(20), "nan"], ["data.csv:22", "'nan' is not a finite number"]),
        ([i * 20_000 for i in range(20)] + [390_000], ["span 0..390000", "1,950,001", "limit of 501"]),
    ],
    ids=["inf", "nan", "wide-range"],
)
def test_regression_labels_are_checked_when_the_data_loads(labels, fragments, tmp_path, capsys, no_backbone):
    task = regression_csv(tmp_path / "data.csv", labels)
    code, _, err = cli(capsys, "train", "--task", task, "--output-dir", tmp_path / "run")
    one_error_line(code, err, *fragments)
    assert not (tmp_path / "run").exists()


def test_a_failing_evaluation_keeps_the_checkpoint_before_it(tiny_setup, tmp_path, monkeypatch):  # noqa: F811
    evaluate = Run._evaluate

    def overflow(self, examples, model=None):
        raise OverflowError("cannot convert float infinity to integer")

    monkeypatch.setattr(Run, "_evaluate", overflow)
    with pytest.raises(OverflowError):
        Run(options(tiny_setup, tmp_path)).fit()
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3 and state["pending_eval"]  # the three steps before the evaluation are kept
    monkeypatch.setattr(Run, "_evaluate", evaluate)
    assert Run(options(tiny_setup, tmp_path, resume=True)).fit()["steps"] == 6
    assert val_steps(tmp_path) == [3, 6]  # the resume ran the evaluation that failed, once
    assert not json.loads((tmp_path / "checkpoint" / "state.json").read_text())["pending_eval"]


# ----- 9: exploding values are divergence; absurd rates are refused ------------------------------------------


def test_exploding_parameters_are_never_saved(tiny_setup, tmp_path):  # noqa: F811
    run = Run(options(tiny_setup, tmp_path, eval_every=1))
    step = run.optimizer.step

    def explode(*args, **kwargs):
        step(*args, **kwargs)
        if run.state["step"] == 2:  # the third update sends the prompt to 1e30, finite but diverged
            with torch.no_grad():
                run.unwrapped.adapters["default"].prompt_embeddings.mul_(1e30)

    run.optimizer.step = explode
    with pytest.raises(
        FloatingPointError, match=r"prompt_embeddings has exploded .*before it diverged is .*\(step 2\)"
    ):
        run.fit()
    for folder in (tmp_path / "best", tmp_path / "checkpoint" / "model"):
        for key, tensor in load_file(folder / "adapter_model.safetensors").items():
            assert tensor.abs().max() < 1e3, (folder, key)
    assert Run(options(tiny_setup, tmp_path, eval_every=1, resume=True)).fit()["steps"] == 6  # the advice works


@pytest.mark.parametrize("flag, value", [("--lr-prompt", "1e38"), ("--lr-lowrank", "1e30"), ("--lr", "1e4")])
def test_absurd_learning_rates_are_refused_at_the_start(trained, tmp_path, capsys, no_backbone, flag, value):  # noqa: F811
    code, _, err = cli(capsys, *train_args(trained, tmp_path / "run", flag, value))
    one_error_line(code, err, flag, "at most 1000")
    assert not (tmp_path / "run").exists()


# ----- 10: torn files do not block a resume ---------------------------------------------------------------


def test_a_torn_last_log_line_is_dropped_on_resume(trained, tmp_path, capsys):  # noqa: F811
    shutil.copytree(trained / "run", tmp_path / "run")
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "lo')  # a kill mid-append
    code, _, err = cli(capsys, *train_args(trained, tmp_path / "run", "--resume", "--max-steps", "3"))
    assert code == 0, err
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 3


def test_a_torn_log_line_elsewhere_is_named(tmp_path):
    from dept.runs.rundir import trim_log

    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"st\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl line 2 is not JSON"):
        trim_log(tmp_path / "metrics.jsonl", 2)


@pytest.mark.parametrize("name", ["state.json", "trainer_state.pt", "model/adapter_model.safetensors"])
def test_a_torn_checkpoint_file_is_named_with_what_to_do(name, trained, tmp_path, capsys):  # noqa: F811
    shutil.copytree(trained / "run", tmp_path / "run")
    file = tmp_path / "run" / "checkpoint" / name
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    code, _, err = cli(capsys, *train_args(trained, tmp_path / "run", "--resume", "--max-steps", "3"))
    one_error_line(code, err, str(file.parent if name.startswith("model/") else file), "--overwrite", alone=False)


# ----- 11: one line, not a traceback ------------------------------------------------------------------------


def test_unknown_task_options_in_a_config_are_one_line(trained, tmp_path, capsys, no_backbone):  # noqa: F811
    config = tmp_path / "c.json"
    task = {"text_fields": ["text"], "labelfield": "label"}
    config.write_text(json.dumps({"task": f"csv:{trained / 'task.csv'}", "task_options": task}))
    code, _, err = cli(capsys, "train", "--config", config, "--output-dir", tmp_path / "run")
    one_error_line(code, err, "task_options", "'labelfield'", "'label_field'")
    config.write_text(json.dumps({"task": f"csv:{trained / 'task.csv'}", "task_options": {"text_fields": "text"}}))
    code, _, err = cli(capsys, "train", "--config", config, "--output-dir", tmp_path / "run")
    one_error_line(code, err, "text_fields must be a non-empty list")


def test_predict_max_new_tokens_must_leave_room_for_the_input(trained, capsys, monkeypatch):  # noqa: F811
    adapter = trained / "run" / "best"
    code, _, err = cli(
        capsys, "predict", "--adapter", adapter, "--max-new-tokens", 32, stdin="hello\n", monkeypatch=monkeypatch
    )
    one_error_line(code, err, "--max-new-tokens 32", "max_length of 32", alone=False)


@pytest.mark.parametrize(
    "flag, value, fragment",
    [
        ("--max-length", 100_000_000, "at most 1,048,576"),
        ("--prompt-length", 100_000_000, "at most 1,048,576"),
        ("--budget", 100_000_000, "at most 1,048,576"),
        ("--grad-accum", 100_000_000, "more than 65536 sequences"),
        ("--batch-size", 1_000_000_000, "more than 65536 sequences"),
    ],
)
def test_absurd_sizes_are_refused_before_anything_loads(
    flag,
    value,
    fragment,
    trained,  # noqa: F811
    tmp_path,
    capsys,
    no_backbone,
):
    code, _, err = cli(capsys, *train_args(trained, tmp_path / "run", flag, value))
    one_error_line(code, err, flag, fragment)


@pytest.mark.parametrize("args", [["--max-length", "200"], ["--prompt-length", "100", "--max-length", "32"]])
def test_sizes_past_the_backbones_positions_are_refused_before_the_adapter(
    args,
    trained,  # noqa: F811
    tmp_path,
    capsys,
    monkeypatch,
):
    def refuse(*a, **k):
        raise AssertionError("an adapter was built")

    monkeypatch.setattr(dept.methods.PromptMethod, "build", refuse)
    code, _, err = cli(capsys, *train_args(trained, tmp_path / "run", *args, "--budget", "200"))
    one_error_line(code, err, "--max-length", "128 positions", "max_position_embeddings", alone=False)


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(trained, tmp_path, capsys, monkeypatch):  # noqa: F811
    save, calls = torch.save, []

    def fill_the_disk(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            with open(path, "wb") as f:
                f.write(b"half a file")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fill_the_disk)
    out = tmp_path / "run"
    code, _, err = cli(capsys, *train_args(trained, out, "--max-steps", "4", "--save-every", "2", "--eval-every", "4"))
    monkeypatch.setattr(torch, "save", save)
    one_error_line(code, err, f"Could not write {out / 'checkpoint'}", "No space left", "intact", alone=False)
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 2
    assert not (out / ".checkpoint.tmp").exists()  # what the failed save wrote is freed
    code, _, err = cli(capsys, *train_args(trained, out, "--max-steps", "4", "--eval-every", "4", "--resume"))
    assert code == 0, err


# ----- 12: --init-from with another shape ---------------------------------------------------------------------


@pytest.mark.parametrize("change", [["--prompt-length", "5"], ["--rank", "1"], ["--max-length", "40"]])
def test_init_from_refuses_a_shape_the_adapter_does_not_have(change, trained, tmp_path, capsys):  # noqa: F811
    best = trained / "run" / "best"
    code, _, err = cli(capsys, *train_args(trained, tmp_path / "run", "--init-from", best, *change))
    one_error_line(code, err, f"--init-from {best}", "m=3, r=2, s=32", "--prompt-length 3 --rank 2", alone=False)
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_init_from_applies_to_prompt_adapters_only(trained, tmp_path, capsys, no_backbone):  # noqa: F811
    best = trained / "run" / "best"
    code, _, err = cli(capsys, *train_args(trained, tmp_path / "run", "--init-from", best, "--method", "lora"))
    one_error_line(code, err, "--init-from", "--method lora")


# ----- 13: the progress bar, non-UTF-8 files, predict's cut inputs -------------------------------------------------


def test_the_error_line_starts_after_the_progress_bar(trained, tmp_path, capsys, monkeypatch):  # noqa: F811
    loss, calls = dept.runs.train.lm_loss, []

    def nan_later(*args, **kwargs):
        calls.append(1)
        value = loss(*args, **kwargs)
        return value * float("nan") if len(calls) == 2 else value

    monkeypatch.setattr(dept.runs.train, "lm_loss", nan_later)
    code, _, err = cli(capsys, *train_args(trained, tmp_path / "run"))
    one_error_line(code, err, "Loss is nan", alone=False)
    assert "sps=" in err  # the bar was drawn
    assert all(line.startswith("error:") for line in err.split("\n") if "error:" in line), err


NOT_UTF8 = b"text,label\nna\xefve caf\xe9,yes\n"


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_non_utf8_task_files_are_named(kind, tmp_path, capsys, no_backbone):
    data = tmp_path / f"data.{kind}"
    data.write_bytes(NOT_UTF8 if kind == "csv" else b'{"text": "ok", "label": "yes"}\n{"text": "caf\xe9"}\n')
    code, _, err = cli(capsys, "train", "--task", f"{kind}:{data}", "--output-dir", tmp_path / "run")
    one_error_line(code, err, str(data), "not UTF-8")


def test_non_utf8_config_input_and_run_json_are_named(trained, tmp_path, capsys, no_backbone):  # noqa: F811
    bad = tmp_path / "bad"
    bad.write_bytes(NOT_UTF8)
    code, _, err = cli(capsys, "train", "--config", bad)
    one_error_line(code, err, f"--config {bad}", "not UTF-8")
    code, _, err = cli(capsys, "predict", "--adapter", trained / "run" / "best", "--input", bad)
    one_error_line(code, err, f"--input {bad}", "not UTF-8")
    shutil.copytree(trained / "run", tmp_path / "run")
    (tmp_path / "run" / "run.json").write_bytes(b'{"task": "caf\xe9"}')
    code, _, err = cli(capsys, *train_args(trained, tmp_path / "run", "--resume"))
    one_error_line(code, err, str(tmp_path / "run" / "run.json"))
    code, _, err = cli(capsys, "eval", "--adapter", tmp_path / "run", "--task", f"csv:{trained / 'task.csv'}")
    one_error_line(code, err, str(tmp_path / "run" / "run.json"))


def test_predict_warns_about_inputs_it_cuts(trained, tmp_path, capsys, monkeypatch, caplog):  # noqa: F811
    adapter, task = trained / "run" / "best", f"csv:{trained / 'task.csv'}"
    stdin = "text: sample 3 is fine\n" + "text: sample 4 is poor " * 20 + "\n"
    for extra in ([], ["--task", task]):
        caplog.clear()
        args = ["predict", "--adapter", adapter, "--max-new-tokens", 3, *extra]
        code, _, err = cli(capsys, *args, stdin=stdin, monkeypatch=monkeypatch)
        assert code == 0, err
        assert "1 of 2 inputs are longer than" in caplog.text, (extra, caplog.text)


def test_serve_refuses_a_port_out_of_range_or_in_use_before_loading(capsys, no_backbone):
    import socket

    code, _, err = cli(capsys, "serve", "--port", "70000")
    one_error_line(code, err, "--port must be between 0 and 65535")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = cli(capsys, "serve", "--port", port)
        one_error_line(code, err, f"--port {port}: cannot listen there", "choose another --port")
