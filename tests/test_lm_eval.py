"""lm-evaluation-harness scores a dept adapter as dept does: the `dept` model's log-likelihoods equal
rank_scores (offsets on the context only), its generations equal DePTModel.generate."""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lm_eval.api.instance import Instance  # noqa: E402

from dept import DePTConfig, DePTModel  # noqa: E402
from dept.data import encode, pad_batch  # noqa: E402
from dept.errors import UsageError  # noqa: E402
from dept.integrations.lm_eval import DePTLM, write_task  # noqa: E402
from dept.scoring import rank_scores  # noqa: E402

from tiny import make_tiny_llama, make_tiny_t5, make_tiny_tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "tests" / "lm_eval_tasks"
CHOICES = ["great", "not_entailment"]  # dept_tiny.yaml's doc_to_choice
CONTEXTS = ["the movie was great and the actors were wonderful", "question: is the sky blue? answer:"]


def _adapter(model, folder: Path, seed: int) -> None:
    dept = DePTModel(model, DePTConfig(prompt_length=3, rank=2, max_length=64, prompt_init="vocab"))
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        dept.adapters["default"].lora_embedding_B.normal_()  # the official init is 0: offsets must matter here
    dept.save_pretrained(folder)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval")
    make_tiny_llama(root / "llama", tokenizer=make_tiny_tokenizer(root / "llama"))
    make_tiny_t5(root / "t5", tokenizer=make_tiny_tokenizer(root / "t5", pad_token="<pad>", add_eos=True))
    _adapter(make_tiny_llama(tokenizer=make_tiny_tokenizer()), root / "llama_adapter", 1)
    _adapter(make_tiny_t5(tokenizer=make_tiny_tokenizer(pad_token="<pad>", add_eos=True)), root / "t5_adapter", 2)
    return root


@pytest.fixture(scope="module")
def models(saved):
    return {
        kind: DePTLM(pretrained=str(saved / kind), adapter=str(saved / f"{kind}_adapter"), batch_size=3)
        for kind in ("llama", "t5")
    }


def test_harness_multiple_choice_equals_rank_scores(models, monkeypatch):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    monkeypatch.chdir(REPO)  # dept_tiny.yaml names its data file relative to the repository root
    lm = models["llama"]
    out = simple_evaluate(
        model=lm,
        tasks=["dept_tiny"],
        task_manager=TaskManager(include_path=str(TASKS), include_defaults=False),
        log_samples=True,
    )
    docs = sorted(out["samples"]["dept_tiny"], key=lambda s: s["doc_id"])
    rows = [json.loads(line) for line in (TASKS / "dept_tiny.jsonl").read_text().splitlines()]
    harness = torch.tensor([[float(r[0][0]) for r in s["resps"]] for s in docs])
    dept = rank_scores(lm.model, lm.tokenizer, "causal", [r["source"] for r in rows], CHOICES, lm.max_length)
    assert harness.shape == dept.shape == (4, 2)
    assert torch.allclose(harness, dept, atol=1e-4)
    accuracy = sum(int(s.argmax()) == r["label"] for s, r in zip(dept, rows)) / len(rows)
    assert out["results"]["dept_tiny"]["acc,none"] == pytest.approx(accuracy)


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_loglikelihood_equals_rank_scores_and_offsets_matter(models, saved, kind):
    lm = models[kind]
    requests = [Instance("loglikelihood", {}, (c, " " + x), i) for i, (c, x) in enumerate(_pairs())]
    got = torch.tensor([ll for ll, _ in lm.loglikelihood(requests)]).view(len(CONTEXTS), -1)
    dept_kind = "causal" if kind == "llama" else "seq2seq"
    want = rank_scores(lm.model, lm.tokenizer, dept_kind, CONTEXTS, ["good", "bad", "not_entailment"], lm.max_length)
    assert torch.allclose(got, want, atol=1e-4)
    plain = DePTLM(pretrained=str(saved / kind))  # no adapter: the backbone, zero-shot
    base = torch.tensor([ll for ll, _ in plain.loglikelihood(requests)]).view(len(CONTEXTS), -1)
    assert not torch.allclose(base, got, atol=1e-2)


def _pairs():
    return [(c, x) for c in CONTEXTS for x in ["good", "bad", "not_entailment"]]


def test_is_greedy_matches_the_argmax(models):
    lm = models["llama"]
    context = CONTEXTS[0]
    ids = torch.tensor([lm.tokenizer(context)["input_ids"]])
    with torch.no_grad():
        last = lm.model(input_ids=ids, logits_to_keep=1).logits[0, -1]
    best, worst = int(last.argmax()), int(last.argmin())
    texts = [lm.tokenizer.decode([t]) for t in (best, worst)]
    if lm.tok_encode(texts[0]) != [best] or lm.tok_encode(texts[1]) != [worst]:
        pytest.skip("the argmax token does not round-trip through text")
    (_, greedy), (_, not_greedy) = lm.loglikelihood([Instance("loglikelihood", {}, (context, t), 0) for t in texts])
    assert greedy and not not_greedy


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_generate_until_equals_dept_generate(models, kind):
    lm = models[kind]
    dept_kind = "causal" if kind == "llama" else "seq2seq"
    batch = pad_batch([encode(lm.tokenizer, c, None, dept_kind, 64) for c in CONTEXTS], dept_kind, lm._pad)
    ids = lm.model.generate(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=6, do_sample=False
    )
    want = lm.tokenizer.batch_decode(ids, skip_special_tokens=True)
    got = lm.generate_until(
        [Instance("generate_until", {}, (c, {"until": [], "max_gen_toks": 6}), 0) for c in CONTEXTS]
    )
    assert got == want
    stop = want[0][2:4]
    if stop:
        cut = lm.generate_until(
            [Instance("generate_until", {}, (CONTEXTS[0], {"until": [stop], "max_gen_toks": 6}), 0)]
        )
        assert cut == [want[0].split(stop, 1)[0]]


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_loglikelihood_rolling_sums_windows(models, kind):
    lm = models[kind]
    text = " ".join(CONTEXTS * 6)  # longer than max_length=64 tokens: several windows
    assert len(lm.tok_encode(text)) > lm.max_length
    short, long = lm.loglikelihood_rolling(
        [Instance("loglikelihood_rolling", {}, (t,), 0) for t in (CONTEXTS[0], text)]
    )
    assert math.isfinite(short) and math.isfinite(long) and long < short < 0


def test_bad_model_args_are_one_line_errors(saved):
    with pytest.raises(UsageError, match="Unknown model_args"):
        DePTLM(pretrained=str(saved / "llama"), adpater="x")
    with pytest.raises(UsageError, match="is not a folder"):
        DePTLM(pretrained=str(saved / "llama"), adapter=str(saved / "missing"))
    with pytest.raises(UsageError) as err:  # DePTModel refuses an adapter of another backbone
        DePTLM(pretrained=str(saved / "t5"), adapter=str(saved / "llama_adapter"))
    assert "\n" not in str(err.value) and "backbone" in str(err.value)


def test_command_line_runs_the_harness_with_dept_registered(saved):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    model_args = f"pretrained={saved / 'llama'},adapter={saved / 'llama_adapter'}"
    run = subprocess.run(
        [sys.executable, "-m", "dept.lm_eval", "--model", "dept", "--model_args", model_args]
        + ["--tasks", "dept_tiny", "--include_path", "tests/lm_eval_tasks", "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert any(line.startswith("|dept_tiny") and "acc" in line for line in run.stdout.splitlines()), run.stdout


def test_command_line_prints_a_model_args_mistake_as_one_line(saved, monkeypatch, capsys):
    from lm_eval._cli import HarnessCLI

    import dept.lm_eval

    monkeypatch.setattr(HarnessCLI, "execute", lambda self, args: DePTLM(adapter=str(saved / "nope")))
    with pytest.raises(SystemExit) as exit_:
        dept.lm_eval.main(["ls", "tasks"])
    assert exit_.value.code == 2 and capsys.readouterr().err.startswith("error: adapter=")


def test_compare_rehearsal_on_a_csv_task(saved, tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "benchmarks" / "lm_eval"))
    import compare

    data = tmp_path / "reviews.csv"
    with open(data, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(40):
            writer.writerow([f"{CONTEXTS[i % 2]} {i}", ["good", "bad"][i % 3 == 0]])
    monkeypatch.chdir(tmp_path)
    name = write_task(f"csv:{data}", tmp_path / "task", samples=3)
    assert name == "dept_reviews" and len((tmp_path / "task" / f"{name}.jsonl").read_text().splitlines()) == 3
    argv = ["--adapter", str(saved / "llama_adapter"), "--model", str(saved / "llama"), "--task", f"csv:{data}"]
    results = compare.main([*argv, "--samples", "4", "--out", str(tmp_path / "out")])
    assert results["max_abs_delta_loglik"] < 1e-4 and results["examples"] == 4
    accuracy = results["accuracy"]
    assert accuracy["lm-eval harness (acc)"] == pytest.approx(accuracy["dept evaluate"])
    written = (tmp_path / "out" / "results.json").read_text() + (tmp_path / "out" / "results.md").read_text()
    assert str(tmp_path) not in written and str(saved) not in written


def test_a_task_the_harness_cannot_find_is_one_line_naming_include_path(capsys):
    from dept.lm_eval import main

    with pytest.raises(SystemExit) as stop:
        main(["--model", "dept", "--model_args", "pretrained=x", "--tasks", "dept_no_such_task"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: Tasks not found") and "--include_path" in err[-1]
