"""The command line on a tiny model: train, eval, predict, convert, tasks; runs that never lose work;
one `error:` line (exit status 2) for each user mistake, through the console script's `main()`."""

import io
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import dept.runs.train
from dept.cli import app, main
from dept.cli.flags import flag_fields
from dept.options import METHODS, MethodOptions, TuneOptions
from dept.runs.train import TrainOptions

from conftest import OFFICIAL_DIR
from tiny import make_tiny_llama, make_tiny_tokenizer

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tok = make_tiny_tokenizer(root / "model", add_eos=False)
    make_tiny_llama(root / "model", tokenizer=tok)
    lines = ["text,label"] + [
        f"sample {i} is {'fine' if i % 2 else 'poor'},{'yes' if i % 2 else 'no'}" for i in range(30)
    ]
    (root / "task.csv").write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, train_args(root, root / "run"))
    assert result.exit_code == 0, result.output
    return root


def train_args(root, out, *extra):
    return [
        "train",
        "--task",
        f"csv:{root / 'task.csv'}",
        "--text-fields",
        "text",
        "--label-field",
        "label",
        "--model",
        str(root / "model"),
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--eval-every",
        "2",
        "--seed",
        "7",
        "--split-seed",
        "5",
        "--precision",
        "fp32",
        "--prompt-length",
        "3",
        "--rank",
        "2",
        "--max-length",
        "32",
        "--output-dir",
        str(out),
        *extra,
    ]


def cli(capsys, *args, stdin=None, monkeypatch=None):
    """The console script in-process: (exit status, stdout, stderr)."""
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(code, err, *fragments, alone=True):
    """Exit status 2 and one `error:` line, no traceback; `alone`: nothing else on stderr either."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert code == 2 and lines and lines[-1].startswith("error: "), (code, err)
    assert "Traceback" not in err and sum(line.startswith("error:") for line in lines) == 1, err
    assert len(lines) == 1 or not alone, err
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])
    return lines[-1]


def snapshot(folder):
    """Every file of a run folder (the lock file aside) and its bytes."""
    return {
        p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"
    }


# ----- the main flows -------------------------------------------------------------------------------


def test_train_prints_a_summary(trained):
    assert json.loads((trained / "run" / "results.json").read_text())["method"] == "dept"


def test_eval_reads_the_backbone_from_the_run(trained):
    result = runner.invoke(
        app,
        ["eval", "--adapter", str(trained / "run" / "best"), "--task", f"csv:{trained / 'task.csv'}", "--split",
         "validation", "--precision", "fp32"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    # The same adapter on the same validation split (the run's seed and split rule) as the trainer scored it.
    trained_on = json.loads((trained / "run" / "results.json").read_text())["validation"]
    assert metrics["split"] == "validation" and metrics["examples"] > 0
    assert metrics["accuracy"] == pytest.approx(trained_on["accuracy"], abs=1e-9)


def test_predict_ranks_or_generates(trained, tmp_path):
    from dept.runs.trained import Trained
    from dept.scoring import candidates_for, generate_texts, rank_scores
    from dept.tasks import get_task

    sources = ["text: sample 3 is fine", "text: sample 4 is poor", "plain text line"]
    inp = tmp_path / "in.jsonl"
    inp.write_text(f'{{"source": "{sources[0]}"}}\n{{"text": "{sources[1]}"}}\n{sources[2]}\n')
    adapter, task = trained / "run" / "best", f"csv:{trained / 'task.csv'}"
    common = ["predict", "--adapter", str(adapter), "--input", str(inp), "--max-new-tokens", "3", "--precision", "fp32"]
    ranked = runner.invoke(app, [*common, "--output", str(tmp_path / "ranked.jsonl"), "--task", task])
    generated = runner.invoke(app, [*common, "--output", str(tmp_path / "generated.jsonl")])
    assert ranked.exit_code == 0 and generated.exit_code == 0, (ranked.output, generated.output)
    # Each equals the library computed directly on the same adapter.
    model, tok = Trained(adapter, None).load()
    candidates, _ = candidates_for(get_task(task, text_fields=["text"], label_field="label"))
    expected = [candidates[int(i)] for i in rank_scores(model, tok, "causal", sources, candidates, 32).argmax(-1)]
    rows = [json.loads(line) for line in (tmp_path / "ranked.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rows] == sources and [r["prediction"] for r in rows] == expected
    texts = generate_texts(model, tok, "causal", sources, 32, max_new_tokens=3)
    rows = [json.loads(line) for line in (tmp_path / "generated.jsonl").read_text().splitlines()]
    assert [r["prediction"] for r in rows] == texts


def test_unknown_task_is_a_clear_error(trained):
    result = runner.invoke(app, ["train", "--task", "glue/sst3", "--model", str(trained / "model"), "--max-steps", "1"])
    assert result.exit_code != 0 and "sst3" in str(result.exception)


def test_tasks_lists_the_registry():
    result = runner.invoke(app, ["tasks"])
    assert "glue/rte" in result.output and "superglue/boolq" in result.output


@pytest.mark.skipif(not OFFICIAL_DIR.is_dir(), reason="official DePT checkpoints absent")
def test_convert_official(tmp_path):
    result = runner.invoke(app, ["convert", str(OFFICIAL_DIR / "cola"), str(tmp_path / "cola")])
    assert result.exit_code == 0 and "m=80 r=15 s=256" in result.output


# ----- 1-3: never lose or mix work -------------------------------------------------------------------


def test_rerun_into_a_finished_run_is_refused_and_leaves_it_intact(trained, capsys, no_backbone):
    before = snapshot(trained / "run")
    code, _, err = cli(capsys, *train_args(trained, trained / "run"))
    one_error_line(code, err, "--resume", "--overwrite")
    assert snapshot(trained / "run") == before


def test_overwrite_replaces_the_run(trained, tmp_path, capsys):
    shutil.copytree(trained / "run", tmp_path / "run")
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 99, "loss": 1.0}\n')
    code, _, err = cli(capsys, *train_args(trained, tmp_path / "run", "--overwrite"))
    assert code == 0, err
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert 99 not in steps and steps == sorted(steps)


def test_a_folder_in_use_is_refused_with_the_holders_pid(trained, tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    hold = (
        "import fcntl, os, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
        "f.truncate(0); f.write(str(os.getpid())); f.flush(); print('locked', flush=True); time.sleep(120)"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold, str(folder / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = cli(capsys, *train_args(trained, folder))
        one_error_line(code, err, f"pid {holder.pid}", "in use")
        assert not (folder / "run.json").exists()
    finally:
        holder.kill()
        holder.wait()
    code, _, err = cli(capsys, *train_args(trained, folder))  # the lock died with its process
    assert code == 0, err


@pytest.mark.parametrize(
    "change, field",
    [
        (["--task", "OTHER"], "task"),
        (["--prompt-length", "4"], "method.prompt_length"),
        (["--method", "pt"], "method.method"),
        (["--split-seed", "6"], "split_seed"),
    ],
)
def test_resume_refuses_another_run_before_writing_anything(trained, tmp_path, capsys, no_backbone, change, field):
    shutil.copytree(trained / "run", tmp_path / "run")
    (tmp_path / "other.csv").write_text((trained / "task.csv").read_text())
    change = [f"csv:{tmp_path / 'other.csv'}" if c == "OTHER" else c for c in change]
    before = snapshot(tmp_path / "run")
    code, _, err = cli(capsys, *train_args(trained, tmp_path / "run", "--resume", *change))
    one_error_line(code, err, "--resume", field)
    assert snapshot(tmp_path / "run") == before


# ----- 4: non-finite values --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flag, value", [("--lr-prompt", "inf"), ("--lr-lowrank", "nan"), ("--lr", "0"), ("--lr-prompt", "-1")]
)
def test_bad_learning_rates_are_refused_at_the_start(trained, tmp_path, capsys, no_backbone, flag, value):
    code, _, err = cli(capsys, *train_args(trained, tmp_path / "run", flag, value))
    one_error_line(code, err, flag)
    assert not (tmp_path / "run").exists()


def nan_copy(trained, tmp_path):
    adapter = tmp_path / "nan"
    shutil.copytree(trained / "run" / "best", adapter)
    tensors = load_file(adapter / "adapter_model.safetensors")
    tensors["lora_embedding_A"][0, 0] = float("nan")
    save_file(tensors, adapter / "adapter_model.safetensors")
    return adapter


def test_eval_and_predict_refuse_non_finite_weights(trained, tmp_path, capsys, monkeypatch, no_backbone):
    adapter = nan_copy(trained, tmp_path)
    code, _, err = cli(
        capsys, "eval", "--adapter", adapter, "--task", f"csv:{trained / 'task.csv'}", "--model", trained / "model"
    )
    one_error_line(code, err, "lora_embedding_A", "NaN")
    code, _, err = cli(
        capsys, "predict", "--adapter", adapter, "--model", trained / "model", stdin="hello\n", monkeypatch=monkeypatch
    )
    one_error_line(code, err, "lora_embedding_A", "NaN")


# ----- 5-6: eval on a run folder, with the run's splits ---------------------------------------------------


def test_eval_on_a_run_folder_uses_best_and_the_runs_split(trained, capsys, monkeypatch, caplog):
    import dept.scoring
    from dept.tasks import get_task

    seen = {}

    def spy(model, tokenizer, kind, task, examples, *args):
        seen["sources"] = [e.source for e in examples]
        return {"accuracy": 0.0}, None

    monkeypatch.setattr(dept.scoring, "evaluate", spy)
    task = f"csv:{trained / 'task.csv'}"
    code, out, err = cli(capsys, "eval", "--adapter", trained / "run", "--task", task, "--split", "validation")
    assert code == 0, err
    assert "best" in caplog.text and json.loads(out)["split"] == "validation"
    spec = get_task(task, text_fields=["text"], label_field="label")
    assert seen["sources"] == [
        e.source for e in spec.load(seed=5)["validation"]
    ]  # the run's split seed, not its seed 7
    code, _, err = cli(
        capsys, "eval", "--adapter", trained / "run", "--task", task, "--split", "validation", "--split-seed", "3"
    )
    assert code == 0 and "--split-seed 3 overrides the run's split_seed=5" in caplog.text
    assert seen["sources"] == [e.source for e in spec.load(seed=3)["validation"]]


def test_runs_from_before_split_seed_keep_their_split(trained, tmp_path, capsys, monkeypatch):
    """Their run.json has no split_seed: they shuffled with their seed, so eval and --resume must too."""
    import dept.scoring
    from dept.tasks import get_task

    shutil.copytree(trained / "run", tmp_path / "run")
    run_file = tmp_path / "run" / "run.json"
    legacy = json.loads(run_file.read_text())
    del legacy["split_seed"]
    run_file.write_text(json.dumps(legacy))
    seen = {}
    monkeypatch.setattr(
        dept.scoring, "evaluate", lambda *a, **k: seen.update(sources=[e.source for e in a[4]]) or ({}, None)
    )
    task = f"csv:{trained / 'task.csv'}"
    code, _, err = cli(capsys, "eval", "--adapter", tmp_path / "run", "--task", task, "--split", "test")
    assert code == 0, err
    spec = get_task(task, text_fields=["text"], label_field="label")
    assert seen["sources"] == [e.source for e in spec.load(seed=7)["test"]]
    code, _, err = cli(capsys, *train_args(trained, tmp_path / "run", "--resume"))
    one_error_line(code, err, "--resume", "split_seed 7 -> 5")


# ----- 7: permissions ------------------------------------------------------------------------------------


def test_saved_files_get_the_usual_permissions(trained):
    mask = os.umask(0)
    os.umask(mask)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (trained / "run" / "best" / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


# ----- 8: one line per mistake, before any backbone loads ---------------------------------------------------


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["train", "--task", "glue/nope"], ["glue/nope", "Known tasks"]),
        (["train", "--task", "glue/rte", "--method", "nope"], ["--method", "dept, pt, adept, lora, full"]),
        (["train", "--task", "glue/rte", "--scoring", "foo"], ["--scoring", "rank, generate"]),
        (["train", "--task", "glue/rte", "--precision", "fp8"], ["--precision"]),
        (["train", "--task", "glue/rte", "--split-rule", "mine"], ["--split-rule"]),
        (["train", "--task", "glue/rte", "--max-steps", "0"], ["--max-steps", "at least 1"]),
        (["train", "--task", "glue/rte", "--eval-every", "0"], ["--eval-every"]),
        (["train", "--task", "glue/rte", "--save-every", "-1"], ["--save-every"]),
        (["train", "--task", "glue/rte", "--batch-size", "0"], ["--batch-size"]),
        (["train", "--task", "glue/rte", "--rank", "300", "--max-length", "256"], ["--rank 300", "256"]),
        (["train", "--task", "glue/rte", "--prompt-length", "120"], ["--prompt-length 120", "--budget"]),
        (["train", "--task", "glue/rte", "--text-fields", "a"], ["--text-fields"]),
        (["train", "--task", "glue/rte", "--resume", "--overwrite"], ["--resume", "--overwrite"]),
        (["train", "--task", "glue/rte", "--max-steps", "x"], ["--max-steps"]),
        (["train", "--task", "glue/rte", "--data-dir", "/nonexistent/data"], ["--data-dir", "/nonexistent/data"]),
        (["trian"], ["No such command"]),
        (["eval", "--adapter", "/nonexistent", "--task", "glue/rte"], ["--adapter", "/nonexistent"]),
        (["convert", "/nonexistent", "out"], ["/nonexistent"]),
    ],
)
def test_each_mistake_is_one_line(args, fragments, capsys, no_backbone):
    code, out, err = cli(capsys, *args)
    one_error_line(code, err, *fragments)
    assert "Traceback" not in out + err


def test_eval_predict_choices_are_checked_first(trained, capsys, no_backbone):
    best = trained / "run" / "best"
    for args, fragment in (
        (["--split", "dev"], "--split"),
        (["--scoring", "foo"], "--scoring"),
        (["--task", "glue/nope"], "glue/nope"),
    ):
        code, _, err = cli(capsys, "eval", "--adapter", best, "--task", "glue/rte", *args)
        one_error_line(code, err, fragment)


def test_no_data_is_refused_at_once(capsys, monkeypatch, no_backbone, tmp_path):
    import dept.tasks.sources

    monkeypatch.delenv("DEPT_DATA_DIR", raising=False)
    monkeypatch.setattr(dept.tasks.sources, "hub_unreachable", lambda: "huggingface.co")
    code, _, err = cli(capsys, "train", "--task", "glue/rte", "--output-dir", tmp_path / "run")
    one_error_line(code, err, "No data found for task 'glue/rte'", "--data-dir", "huggingface.co")
    code, _, err = cli(capsys, "train", "--task", "glue/rte", "--data-dir", tmp_path, "--output-dir", tmp_path / "run")
    one_error_line(code, err, "No data found", str(tmp_path))  # a given folder: its files only, no hub


@pytest.mark.parametrize(
    "content, fragment",
    [("", "empty file"), ("text,label\n", "no examples"), ("text,label\na,b,c\n", ":2: more columns")],
)
def test_bad_custom_data_is_one_line(content, fragment, tmp_path, capsys, no_backbone):
    (tmp_path / "data.csv").write_text(content)
    code, _, err = cli(capsys, "train", "--task", f"csv:{tmp_path / 'data.csv'}", "--output-dir", tmp_path / "run")
    one_error_line(code, err, "data.csv", fragment)


def broken_adapters():
    def drop_weights(a):
        (a / "adapter_model.safetensors").unlink()

    def truncate(a):
        data = (a / "adapter_model.safetensors").read_bytes()
        (a / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])

    def garbage(a):
        (a / "adapter_model.safetensors").write_bytes(b"not a tensor file" * 10)

    def json_list(a):
        (a / "adapter_config.json").write_text("[1, 2]")

    def no_config_key(a):
        meta = json.loads((a / "adapter_config.json").read_text())
        del meta["config"]
        (a / "adapter_config.json").write_text(json.dumps(meta))

    def cut_json(a):
        (a / "adapter_config.json").write_text((a / "adapter_config.json").read_text()[:40])

    def missing_tensor(a):
        tensors = load_file(a / "adapter_model.safetensors")
        del tensors["lora_embedding_B"]
        save_file(tensors, a / "adapter_model.safetensors")

    return [
        (drop_weights, "adapter_model.safetensors"),
        (truncate, "adapter_model.safetensors"),
        (garbage, "adapter_model.safetensors"),
        (json_list, "adapter_config.json"),
        (no_config_key, "'config'"),
        (cut_json, "adapter_config.json"),
        (missing_tensor, "lora_embedding_B"),
    ]


@pytest.mark.parametrize("breakage, fragment", broken_adapters(), ids=lambda x: getattr(x, "__name__", ""))
def test_broken_adapter_files_are_named(breakage, fragment, trained, tmp_path, capsys, no_backbone):
    adapter = tmp_path / "adapter"
    shutil.copytree(trained / "run" / "best", adapter)
    breakage(adapter)
    code, _, err = cli(
        capsys, "eval", "--adapter", adapter, "--task", f"csv:{trained / 'task.csv'}", "--model", trained / "model"
    )
    one_error_line(code, err, fragment, str(adapter))


def test_empty_adapter_folder_and_convert(tmp_path, capsys, no_backbone):
    (tmp_path / "empty").mkdir()
    code, _, err = cli(capsys, "eval", "--adapter", tmp_path / "empty", "--task", "glue/rte")
    one_error_line(code, err, "No adapter_config.json")
    code, _, err = cli(capsys, "convert", tmp_path / "empty", tmp_path / "out")
    one_error_line(code, err, "No adapter_config.json")
    (tmp_path / "file").write_text("")
    code, _, err = cli(capsys, "convert", tmp_path / "empty", tmp_path / "file")
    one_error_line(code, err, "is a file")


def eval_on_a_wider_backbone(trained, adapter, tmp_path, capsys):
    tok = make_tiny_tokenizer(tmp_path / "wide", add_eos=False)
    make_tiny_llama(tmp_path / "wide", tokenizer=tok, hidden_size=48)
    capsys.readouterr()
    task = f"csv:{trained / 'task.csv'}"
    return cli(capsys, "eval", "--adapter", adapter, "--task", task, "--model", tmp_path / "wide")


def test_adapter_for_another_backbone(trained, tmp_path, capsys):
    code, _, err = eval_on_a_wider_backbone(trained, trained / "run" / "best", tmp_path, capsys)
    one_error_line(code, err, "hidden_size=32", "hidden_size=48", alone=False)  # after the backbone's progress bar


def test_lora_adapter_for_another_backbone(trained, tmp_path, capsys):
    code, _, err = cli(capsys, *train_args(trained, tmp_path / "lora", "--method", "lora"))
    assert code == 0, err
    code, _, err = eval_on_a_wider_backbone(trained, tmp_path / "lora" / "best", tmp_path, capsys)
    one_error_line(code, err, "LoRA adapter", f"trained on {trained / 'model'}", "does not fit", alone=False)


@pytest.mark.parametrize(
    "stdin, fragment",
    [
        ('{"source": "ok"}\n{\n', "stdin line 2: invalid JSON"),
        ('{"source": 5}\n', "stdin line 1: field 'source' must be a string"),
        ('{"input": "x"}\n', "stdin line 1: JSON object without a 'source'"),
    ],
)
def test_predict_input_mistakes(stdin, fragment, trained, capsys, monkeypatch, no_backbone):
    code, _, err = cli(
        capsys,
        "predict",
        "--adapter",
        trained / "run" / "best",
        "--task",
        f"csv:{trained / 'task.csv'}",
        stdin=stdin,
        monkeypatch=monkeypatch,
    )
    one_error_line(code, err, fragment)


def test_output_folder_that_is_a_file(trained, tmp_path, capsys, no_backbone):
    (tmp_path / "taken").write_text("")
    code, _, err = cli(capsys, *train_args(trained, tmp_path / "taken"))
    one_error_line(code, err, "--output-dir", "is a file")


def test_verbose_shows_the_traceback_and_bugs_keep_theirs(capsys, monkeypatch, no_backbone):
    code, _, err = cli(capsys, "train", "--task", "glue/rte", "--max-steps", "0", "--verbose")
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: --max-steps")

    def bug(self):
        raise KeyError("a bug")

    monkeypatch.setattr(TrainOptions, "validate", bug)
    with pytest.raises(KeyError, match="a bug"):
        main(["train", "--task", "glue/rte"])


# ----- 10: one source of truth for defaults --------------------------------------------------------------


def test_cli_defaults_are_the_dataclass_defaults(monkeypatch, capsys):
    captured = []
    monkeypatch.setattr(dept.runs.train, "train", lambda opts: captured.append(opts) or {})
    monkeypatch.delenv("DEPT_DATA_DIR", raising=False)
    assert cli(capsys, "train", "--task", "glue/rte")[0] == 0
    assert captured[0] == TrainOptions(task="glue/rte") and captured[0].method == MethodOptions()
    assert cli(capsys, "train")[0] == 0  # the main job: the default task, its own step budget
    assert captured[1].task == TrainOptions.task and captured[1].max_steps != TrainOptions.max_steps


@pytest.mark.parametrize(
    "command, options", [("train", (TrainOptions, MethodOptions)), ("tune", (TuneOptions,))], ids=["train", "tune"]
)
def test_every_option_flag_has_its_help_on_the_help_page(command, options):
    """The flags are made from the dataclass fields: each has a help text in its metadata, shown with the flag."""
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    for cls in options:
        for f in flag_fields(cls):
            flag = "--" + f.name.replace("_", "-")
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text in its metadata"
            line = next((line for line in result.output.splitlines() if re.match(rf"│[\s*]*{flag}\s", line)), "")
            assert f.metadata["help"] in line, (flag, line)
    assert command != "train" or " | ".join(METHODS) in result.output  # the choices come from METHODS
