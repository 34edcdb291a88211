"""Instruction data (prompt/completion or chat messages in jsonl) on a tiny Llama: free-form completions
scored by generation, --chat-template formatting through training, eval and predict, and an error naming
the file and line for each bad record."""

import io
import json
import sys

import pytest
from tokenizers import processors

from dept.chat import prepare, render
from dept.cli import main
from dept.data import encode
from dept.options import MethodOptions, UsageError
from dept.runs.train import TrainOptions, train
from dept.tasks import get_task
from dept.tasks.instructions import InstructionTask, scoring_for

from tiny import make_tiny_llama, make_tiny_tokenizer

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
WORDS = ["red", "blue", "green", "black"]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def pairs(n=20):
    return [{"prompt": f"colour {i}?", "completion": WORDS[i % 4] + (" sky" if i % 3 == 0 else "")} for i in range(n)]


def chats(n=20):
    return [
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": f"colour {i}?"},
                {"role": "assistant", "content": WORDS[i % 4]},
            ]
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A tiny Llama whose tokenizer has a chat template, and a prompt/completion and a messages file."""
    root = tmp_path_factory.mktemp("instr")
    tok = make_tiny_tokenizer()
    tok.chat_template = TEMPLATE
    tok.save_pretrained(root / "model")
    make_tiny_llama(root / "model", tokenizer=tok)
    write_jsonl(root / "pairs.jsonl", pairs())
    write_jsonl(root / "chat.jsonl", chats())
    return root


def options(root, task, out, **overrides):
    base = dict(
        task=f"jsonl:{root / task}",
        model=str(root / "model"),
        output_dir=str(out),
        max_steps=2,
        batch_size=4,
        eval_every=2,
        eval_samples=2,
        test_samples=2,
        precision="fp32",
        warmup_steps=0,
        method=MethodOptions(method="dept", prompt_length=4, rank=2, max_length=96, prompt_init="vocab"),
    )
    base.update(overrides)
    return TrainOptions(**base)


def test_prompt_completion_trains_and_scores_by_generation(root, tmp_path):
    results = train(options(root, "pairs.jsonl", tmp_path))
    assert results["scoring"] == "generate" and results["main_metric"] == "rougeL"
    saved = json.loads((tmp_path / "results.json").read_text())
    for split in ("validation", "test"):
        assert set(saved[split]) == {"rougeL", "exact_match"}
        assert all(0.0 <= v <= 100.0 for v in saved[split].values())
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["scoring"] == "generate" and run["chat_template"] is False


def test_the_kind_comes_from_the_fields_and_classification_jsonl_is_unchanged(root, tmp_path):
    task = get_task(f"jsonl:{root / 'pairs.jsonl'}")
    assert isinstance(task, InstructionTask) and task.free_form and task.main_metric == "rougeL"
    example = task.load()["train"][0]
    assert example.source.startswith("colour ") and example.target.split()[0] in WORDS and example.label is None
    labelled = write_jsonl(tmp_path / "cls.jsonl", [{"text": f"t {i}", "label": "ab"[i % 2]} for i in range(10)])
    classic = get_task(f"jsonl:{labelled}")
    assert not isinstance(classic, InstructionTask) and classic.label_words == ["a", "b"]
    assert classic.main_metric == "accuracy" and scoring_for(classic, None) == "rank"


def test_metrics_are_exact_match_and_rouge_l(root):
    task = get_task(f"jsonl:{root / 'pairs.jsonl'}")
    scores = task.metrics([" red sky ", "blue", "nothing"], ["red sky", "blue green", "black"])
    assert scores["exact_match"] == pytest.approx(100 / 3)
    assert scores["rougeL"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)


def test_messages_without_the_flag_join_role_lines(root):
    example = get_task(f"jsonl:{root / 'chat.jsonl'}").load()["train"][0]
    assert example.source.startswith("system: be brief\nuser: colour ") and example.source.endswith("?\nassistant:")


def test_chat_template_renders_the_messages_before_the_answer(root):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(root / "model")
    task = get_task(f"jsonl:{root / 'chat.jsonl'}")
    splits = task.load()
    example = splits["train"][0]
    user = example.meta["messages"][1]["content"]
    prepare(task, tok, "causal", splits["train"], [splits["validation"], splits["validation"]], True, 96)
    assert example.source == f"<|system|>be brief\n<|user|>{user}\n<|assistant|>"
    assert splits["validation"][0].source.count("<|assistant|>") == 1  # shared lists render once
    assert task.max_new_tokens == max(len(tok(" " + e.target)["input_ids"]) for e in splits["train"])


def test_a_template_that_writes_the_bos_does_not_get_it_twice():
    tok = make_tiny_tokenizer()
    bos = tok.bos_token_id
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    tok.chat_template = "{{ bos_token }}" + TEMPLATE
    assert tok("hi")["input_ids"][0] == bos
    ids = encode(tok, render(tok, [{"role": "user", "content": "hi"}]), "x", "causal", 64).input_ids
    assert ids[0] == bos and ids.count(bos) == 1


def test_no_chat_template_is_a_clear_error():
    with pytest.raises(UsageError, match="no chat template"):
        render(make_tiny_tokenizer(), [{"role": "user", "content": "hi"}])


def test_forced_rank_scoring_is_refused_before_anything_loads(root, tmp_path):
    with pytest.raises(UsageError, match="--scoring rank.*free-form"):
        train(options(root, "pairs.jsonl", tmp_path, scoring="rank"))


GOOD = {"prompt": "p", "completion": "c"}


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"text": "no form"}, "missing field 'prompt'"),
        ({"prompt": "p"}, "missing field 'completion'"),
        ({"prompt": 3, "completion": "c"}, "'prompt' must be a string, got int"),
        ({"prompt": "p", "completion": "  "}, "empty 'completion'"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "last message must be the assistant's"),
        ({"messages": [{"role": "user", "content": 1}, {"role": "assistant", "content": "a"}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}, "empty completion"),
        ({"messages": "hello"}, "non-empty list"),
    ],
)
def test_each_bad_record_names_its_line(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, GOOD, bad])
    with pytest.raises(ValueError, match=f"{path}:3: .*") as err:
        get_task(f"jsonl:{path}")
    assert message in str(err.value)


def test_an_empty_file_is_a_clear_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no examples in file"):
        get_task(f"jsonl:{tmp_path / 'empty.jsonl'}")


def test_a_row_over_max_length_names_its_line(tmp_path):
    records = [*pairs(9), {"prompt": "long " * 40, "completion": "c"}]
    path = write_jsonl(tmp_path / "long.jsonl", records)
    task = get_task(f"jsonl:{path}")
    splits = task.load()
    tok = make_tiny_tokenizer()
    with pytest.raises(ValueError, match=f"{path}:10: prompt and completion take .* --max-length 32"):
        prepare(task, tok, "causal", splits["train"], splits.values(), False, 32)


def test_eval_and_predict_of_a_chat_template_run_format_the_same_way(root, tmp_path, capsys, monkeypatch):
    import dept.scoring

    out = tmp_path / "run"
    results = train(options(root, "chat.jsonl", out, chat_template=True))
    assert json.loads((out / "run.json").read_text())["chat_template"] is True
    seen = []
    real = dept.scoring.generate_texts

    def spy(model, tokenizer, kind, sources, *args, **kwargs):
        seen.append(list(sources))
        return real(model, tokenizer, kind, sources, *args, **kwargs)

    monkeypatch.setattr(dept.scoring, "generate_texts", spy)
    code = main(["eval", "--adapter", str(out), "--task", f"jsonl:{root / 'chat.jsonl'}", "--precision", "fp32"])
    printed, err = capsys.readouterr()
    assert code == 0, err
    scored = json.loads(printed)
    assert scored["rougeL"] == pytest.approx(results["test"]["rougeL"]) and "exact_match" in scored
    assert seen[-1] and all(s.startswith("<|system|>be brief\n<|user|>colour ") for s in seen[-1])
    assert all(s.endswith("?\n<|assistant|>") for s in seen[-1])

    monkeypatch.setattr(sys, "stdin", io.StringIO("colour 3?\n"))
    code = main(["predict", "--adapter", str(out), "--max-new-tokens", "3", "--precision", "fp32"])
    printed, err = capsys.readouterr()
    assert code == 0, err
    assert seen[-1] == ["<|user|>colour 3?\n<|assistant|>"]
    assert json.loads(printed)["source"] == "colour 3?"
    code = main(["predict", "--adapter", str(out), "--task", f"jsonl:{root / 'chat.jsonl'}"])
    assert code == 2 and "free-form completions" in capsys.readouterr().err
