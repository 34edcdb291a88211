"""`dept serve` on tiny random models: batched equals alone, streaming, every bad-input class,
LRU eviction, auth, adapter management, and the stock `openai` client against a real server."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import threading
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from dept import DePTConfig, DePTModel  # noqa: E402
from dept.scoring import candidates_for, rank_scores  # noqa: E402
from dept.serve.app import create_app  # noqa: E402
from dept.serve.batch import DecodeBatch  # noqa: E402
from dept.serve.text import TextStream  # noqa: E402
from dept.tasks import get_task  # noqa: E402

from conftest import randomize_update  # noqa: E402
from tiny import make_tiny_llama, make_tiny_t5, make_tiny_tokenizer  # noqa: E402

PROMPTS = [
    "the movie was great",
    "the film was terrible, boring and far",
    "question: is the sky",
    "Hello world",
    "premise: a man",
    "sentence: this is",
]
ADAPTERS = {"a": dict(prompt_length=4, rank=2, max_length=32), "b": dict(prompt_length=7, rank=3, max_length=24)}


@pytest.fixture(scope="module", params=["causal", "seq2seq"])
def served(request, tmp_path_factory):
    """A tiny backbone, two adapters of different prompt lengths saved as runs under one root, and
    a reference DePTModel holding both (what "alone" means)."""
    root = tmp_path_factory.mktemp(f"serve-{request.param}")
    if request.param == "causal":
        tok = make_tiny_tokenizer(root / "backbone")
        backbone = make_tiny_llama(root / "backbone", tokenizer=tok)
    else:
        tok = make_tiny_tokenizer(root / "backbone", pad_token="<pad>", add_eos=True)
        backbone = make_tiny_t5(root / "backbone", tokenizer=tok)
    ref = DePTModel(backbone, tokenizer=tok)
    for i, (name, shape) in enumerate(ADAPTERS.items()):
        ref.add_adapter(name, DePTConfig(**shape, prompt_init="vocab", seed=i))
        randomize_update(ref, name, seed=i + 1)
    for name in ADAPTERS:
        ref.set_adapter(name)  # the active adapter is saved at the path itself
        ref.save_pretrained(root / "runs" / name / "best", adapter_names=[name])
        (root / "runs" / name / "run.json").write_text(
            json.dumps({"task": "glue/sst2", "model": "tiny", "method": {"method": "dept"}})
        )
    return _Served(root, tok, backbone, ref)


class _Served:
    def __init__(self, root: Path, tok, backbone, ref: DePTModel):
        self.root, self.tok, self.backbone, self.ref = root, tok, backbone, ref
        self.kind = ref.kind

    def adapter(self, name: str) -> Path:
        return self.root / "runs" / name

    def app(self, **kwargs):
        model = DePTModel(self.backbone, tokenizer=self.tok)
        adapters = kwargs.pop("adapters", {name: self.adapter(name) for name in ADAPTERS})
        kwargs.setdefault("max_wait_ms", 50)
        return create_app(model, self.tok, "tiny", adapters, **kwargs)

    def alone(self, name: str, prompt: str, max_tokens: int = 8) -> str:
        ids = self.tok(prompt, return_tensors="pt")["input_ids"]
        out = self.ref.generate(input_ids=ids, adapter_names=[name], max_new_tokens=max_tokens, do_sample=False)
        out = out[0] if self.kind == "causal" else out[0, 1:]
        return self.tok.decode(out, skip_special_tokens=True)


def complete(client, model: str, prompt, **body) -> dict:
    body = {"max_tokens": 8, "temperature": 0, **body}
    response = client.post("/v1/completions", json={"model": model, "prompt": prompt, **body})
    assert response.status_code == 200, response.text
    return response.json()


def concurrently(calls):
    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        return [f.result() for f in [pool.submit(c) for c in calls]]


# ----- batched equals alone -----------------------------------------------------------------------
def test_mixed_adapter_completions_equal_each_request_alone(served):
    with TestClient(served.app()) as client:
        names = ["a", "b", "tiny"] * 2
        outs = concurrently([lambda n=n, p=p: complete(client, n, p) for n, p in zip(names, PROMPTS)])
        load = client.get("/health").json()
    assert load["largest_prefill"] > 1  # the requests did share backbone calls
    for name, prompt, out in zip(names, PROMPTS, outs):
        adapter = "__base__" if name == "tiny" else name
        assert out["choices"][0]["text"] == served.alone(adapter, prompt), (name, prompt)
        assert out["choices"][0]["finish_reason"] in ("length", "stop")


def test_rows_joining_a_running_batch_equal_alone(served):
    if served.kind != "causal":
        pytest.skip("encoder-decoders decode in fixed batches")
    app = served.app(max_wait_ms=0)
    with TestClient(app) as client:
        slow = DecodeBatch.step

        def step(self, tokens):
            time.sleep(0.01)  # long enough for later requests to arrive mid-decode
            return slow(self, tokens)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(DecodeBatch, "step", step)

            def late(i):
                time.sleep(0.03 * i)
                return complete(client, "ab"[i % 2], PROMPTS[i], max_tokens=12)

            outs = concurrently([lambda i=i: late(i) for i in range(4)])
        assert app.state.scheduler.stats["prefill_calls"] > 1
        assert app.state.scheduler.stats["largest_step"] > 1
    for i, out in enumerate(outs):
        assert out["choices"][0]["text"] == served.alone("ab"[i % 2], PROMPTS[i], 12)


def test_decode_batch_rows_that_join_and_leave_keep_their_own_logits(served):
    """Row by row, step by step: a row's logits in a batch that others join and leave equal the
    row decoded alone (positions, padding of the stacked caches, trimming after leaving)."""
    if served.kind != "causal":
        pytest.skip("encoder-decoders decode in fixed batches")
    prompts = [served.tok(p)["input_ids"] for p in PROMPTS[:3]]
    names = ["a", "b", "__base__"]

    def alone(i: int, steps: int) -> list[torch.Tensor]:
        batch = DecodeBatch(served.ref, 0)
        logits, state = batch.prefill([prompts[i]], [names[i]])
        batch.join(state)
        out = [logits[0]]
        for _ in range(steps):
            out.append(batch.step(out[-1].argmax()[None])[0])
        return out

    with torch.no_grad():
        expected = [alone(i, 6) for i in range(3)]
        batch = DecodeBatch(served.ref, 0)
        logits, state = batch.prefill([prompts[0]], [names[0]])  # row 0 starts alone
        batch.join(state)
        got = {0: [logits[0]]}
        rows = [0]
        for step in range(6):
            if step == 2:  # rows 1 and 2 join the running row, prefilled together
                logits, state = batch.prefill(prompts[1:], names[1:])
                batch.join(state)
                got[1], got[2] = [logits[0]], [logits[1]]
                rows += [1, 2]
            if step == 4:  # row 0 leaves
                batch.keep([1, 2])
                rows = [1, 2]
            tokens = torch.stack([got[r][-1].argmax() for r in rows])
            for r, logit in zip(rows, batch.step(tokens)):
                got[r].append(logit)
    for r in range(3):
        for k, logit in enumerate(got[r]):
            torch.testing.assert_close(logit, expected[r][k], atol=1e-5, rtol=1e-5, msg=f"row {r} step {k}")


def test_a_list_prompt_gives_one_choice_per_prompt_in_order(served):
    with TestClient(served.app()) as client:
        out = complete(client, "b", PROMPTS[:3])
    assert [c["index"] for c in out["choices"]] == [0, 1, 2]
    assert [c["text"] for c in out["choices"]] == [served.alone("b", p) for p in PROMPTS[:3]]
    assert out["usage"]["prompt_tokens"] == sum(len(served.tok(p)["input_ids"]) for p in PROMPTS[:3])


def test_classify_batched_equals_rank_scoring_alone(served):
    task = get_task("glue/sst2")
    candidates, _ = candidates_for(task)
    texts = PROMPTS[:4]
    with TestClient(served.app()) as client:
        calls = [
            lambda: client.post("/v1/classify", json={"model": "a", "inputs": texts[:2]}),
            lambda: client.post("/v1/classify", json={"model": "b", "inputs": [{"sentence": t} for t in texts[2:]]}),
        ]
        first, second = [r.json() for r in concurrently(calls)]
    for name, response, part in (
        ("a", first, texts[:2]),
        ("b", second, [task.format_fn({"sentence": t})[0] for t in texts[2:]]),
    ):
        assert response["task"] == "glue/sst2"  # from the adapter's run.json
        served.ref.set_adapter(name)
        alone = rank_scores(served.ref, served.tok, served.kind, part, candidates, 64)
        for row, expected in zip(response["data"], alone):
            got = torch.tensor([row["scores"][c] for c in candidates])
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
            assert row["label"] == candidates[int(expected.argmax())]


def test_regression_tasks_report_the_expected_value(served):
    with TestClient(served.app()) as client:
        out = client.post(
            "/v1/classify",
            json={"model": "a", "task": "glue/stsb", "inputs": [{"sentence1": "a man", "sentence2": "a person"}]},
        )
    assert out.status_code == 200, out.text
    row = out.json()["data"][0]
    assert 0 <= row["value"] <= 5 and len(row["scores"]) == 26


def test_seeded_sampling_does_not_depend_on_the_batch(served):
    if served.kind != "causal":
        pytest.skip("encoder-decoders sample through generate()")
    body = dict(temperature=0.9, top_p=0.9, seed=7, max_tokens=10)
    with TestClient(served.app()) as client:
        alone = complete(client, "a", PROMPTS[0], **body)["choices"][0]["text"]
        crowd = concurrently([lambda: complete(client, "a", PROMPTS[0], **body)] + [
            lambda p=p: complete(client, "b", p, **body) for p in PROMPTS[1:4]
        ])  # fmt: skip
    assert crowd[0]["choices"][0]["text"] == alone


# ----- streaming and stop strings ---------------------------------------------------------------
def _events(client, body: dict) -> list:
    with client.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]


def test_streaming_sends_the_same_text_in_pieces(served):
    with TestClient(served.app()) as client:
        events = _events(
            client, {"model": "a", "prompt": PROMPTS[1], "max_tokens": 8, "temperature": 0, "stream": True}
        )
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == served.alone("a", PROMPTS[1])
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")


def test_stop_strings_cut_the_text_and_are_never_streamed(served):
    full = served.alone("a", PROMPTS[2], 8)
    if len(full) < 4:
        pytest.skip("the tiny model ends too soon to cut")
    stop = full[2:4]
    with TestClient(served.app()) as client:
        plain = complete(client, "a", PROMPTS[2], stop=stop)["choices"][0]
        events = _events(
            client,
            {"model": "a", "prompt": PROMPTS[2], "max_tokens": 8, "temperature": 0, "stream": True, "stop": [stop]},
        )
    assert plain["text"] == full[: full.find(stop)] and plain["finish_reason"] == "stop"
    assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == plain["text"]


def test_text_stream_holds_back_a_possible_stop_string():
    tok = make_tiny_tokenizer()
    stream = TextStream(tok, stop=["world!"])
    ids = tok("Hello world! Numbers")["input_ids"]
    sent, stopped = "", False
    for token in ids:
        delta, stopped = stream.add(token)
        sent += delta
        assert not sent.endswith("w")  # "w" may start the stop string: held back until decided
        if stopped:
            break
    assert stopped and sent == "Hello "


# ----- bad input: each gets its status, the server keeps serving --------------------------------
def _error(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body["error"]) >= {"message", "type", "code"}
    for word in words:
        assert word in body["error"]["message"]


def test_bad_requests_get_openai_style_errors_and_serving_goes_on(served):
    with TestClient(served.app(max_queue=2)) as client:
        _error(client.post("/v1/completions", json={"model": "nope", "prompt": "x"}), 404, "nope")
        long_prompt = " ".join(["the movie was great"] * 20)
        n = len(served.tok(long_prompt)["input_ids"])
        _error(client.post("/v1/completions", json={"model": "b", "prompt": long_prompt}), 400, str(n), "24")
        _error(client.post("/v1/classify", json={"model": "b", "inputs": [long_prompt]}), 400, str(n))
        headers = {"content-type": "application/json"}
        _error(client.post("/v1/completions", content=b'{"model": "a", "prompt": ', headers=headers), 422)
        _error(client.post("/v1/completions", json={"model": "a", "prompt": 5}), 422, "prompt")
        _error(
            client.post("/v1/completions", json={"model": "a", "prompt": "x", "max_tokens": "many"}), 422, "max_tokens"
        )
        _error(client.post("/v1/completions", json={"model": "a", "prompt": "x", "temperature": -1}), 422)
        _error(client.post("/v1/classify", json={"model": "a", "inputs": []}), 422)
        _error(client.post("/v1/classify", json={"model": "a", "inputs": [{"premise": "x"}]}), 400, "sentence")
        _error(client.post("/v1/classify", json={"model": "tiny", "inputs": ["x"]}), 400, "task")
        _error(client.post("/v1/classify", json={"model": "a", "task": "glue/nope", "inputs": ["x"]}), 400, "nope")
        _error(client.post("/v1/completions", json={"model": "a", "prompt": PROMPTS[:3]}), 429, "queue")
        if served.kind == "causal":  # T5's relative positions set no context length
            _error(
                client.post("/v1/completions", json={"model": "a", "prompt": "x", "max_tokens": 500}), 400, "context"
            )
        _error(client.get("/v1/nothing"), 404)
        complete(client, "a", PROMPTS[0])  # still serving


def test_a_request_that_raises_in_the_model_fails_alone(served):
    poison = served.tok(PROMPTS[5])["input_ids"]
    if served.kind == "causal":
        target, name = DecodeBatch, "prefill"
    else:
        target, name = DePTModel, "generate"
    original = getattr(target, name)

    def faulty(self, *args, **kwargs):
        rows = args[0] if args else kwargs["input_ids"]
        rows = [r.tolist() if hasattr(r, "tolist") else list(r) for r in rows]
        if any([t for t in r if t] == poison for r in rows):  # without padding (id 0)
            raise RuntimeError("boom")
        return original(self, *args, **kwargs)

    with TestClient(served.app()) as client, pytest.MonkeyPatch.context() as mp:
        mp.setattr(target, name, faulty)
        calls = [
            lambda p=p: client.post(
                "/v1/completions", json={"model": "a", "prompt": p, "max_tokens": 8, "temperature": 0}
            )
            for p in PROMPTS
        ]
        responses = concurrently(calls)
    for prompt, response in zip(PROMPTS, responses):
        if prompt == PROMPTS[5]:
            _error(response, 500, "boom")
        else:
            assert response.status_code == 200 and response.json()["choices"][0]["text"] == served.alone("a", prompt)


# ----- adapters: management, LRU, auth ------------------------------------------------------------
def test_adapters_load_and_unload_at_runtime_only_from_under_the_root(served, tmp_path):
    with TestClient(served.app(adapters={}, adapter_root=served.root / "runs")) as client:
        _error(client.post("/v1/completions", json={"model": "a", "prompt": "x"}), 404)
        assert client.post("/v1/adapters", json={"name": "a", "path": "a"}).status_code == 200
        assert complete(client, "a", PROMPTS[0])["choices"][0]["text"] == served.alone("a", PROMPTS[0])
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["tiny", "a"]
        assert client.get("/v1/models").json()["data"][1]["parent"] == "tiny"
        _error(client.post("/v1/adapters", json={"name": "a", "path": "b"}), 409)
        _error(client.post("/v1/adapters", json={"name": "x", "path": "../../etc"}), 403, "outside")
        _error(client.post("/v1/adapters", json={"name": "x", "path": str(tmp_path)}), 403, "outside")
        _error(client.post("/v1/adapters", json={"name": "__base__", "path": "a"}), 400)
        assert client.delete("/v1/adapters/a").status_code == 200
        _error(client.post("/v1/completions", json={"model": "a", "prompt": "x"}), 404)
        _error(client.delete("/v1/adapters/a"), 404)
    with TestClient(served.app(adapters={})) as client:
        _error(client.post("/v1/adapters", json={"name": "a", "path": str(served.adapter("a"))}), 403, "--adapter-root")


def test_only_safetensors_adapters_of_this_backbone_load(served, tmp_path):
    import shutil

    legacy = tmp_path / "legacy"
    shutil.copytree(served.adapter("a") / "best", legacy)
    weights = legacy / "adapter_model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(weights), legacy / "adapter_model.bin")
    weights.unlink()
    other = DePTModel(
        make_tiny_llama(vocab_size=300, hidden_size=48),
        DePTConfig(prompt_length=2, rank=1, max_length=8, prompt_init="vocab"),
    )
    other.save_pretrained(tmp_path / "other")
    with TestClient(served.app(adapters={}, adapter_root=tmp_path)) as client:
        _error(client.post("/v1/adapters", json={"name": "old", "path": "legacy"}), 400, "safetensors")
        _error(client.post("/v1/adapters", json={"name": "other", "path": "other"}), 400)
        _error(client.post("/v1/adapters", json={"name": "none", "path": "missing"}), 400)
        complete(client, "tiny", PROMPTS[0])


def test_an_adapter_whose_files_break_after_registration_fails_only_its_requests(served, tmp_path):
    import shutil

    shutil.copytree(served.adapter("a") / "best", tmp_path / "a")
    app = served.app(adapters={"a": tmp_path / "a", "b": served.adapter("b")})
    with TestClient(app) as client:
        (tmp_path / "a" / "adapter_model.safetensors").write_bytes(b"truncated")  # before its first load
        broken, fine = concurrently(
            [
                lambda: client.post("/v1/completions", json={"model": "a", "prompt": PROMPTS[0], "temperature": 0}),
                lambda: client.post("/v1/completions", json={"model": "b", "prompt": PROMPTS[1], "temperature": 0}),
            ]
        )
        _error(broken, 500, "Could not load the adapter 'a'")
        assert fine.status_code == 200
        assert complete(client, "b", PROMPTS[1])["choices"][0]["text"] == served.alone("b", PROMPTS[1])


def test_least_recently_used_adapters_are_evicted_and_come_back(served):
    app = served.app(max_loaded=1)
    store = app.state.store
    with TestClient(app) as client:
        complete(client, "a", PROMPTS[0])
        assert store.loaded() == ["a"]
        complete(client, "b", PROMPTS[1])
        assert store.loaded() == ["b"] and list(store.model.adapters) == ["b"]
        again = complete(client, "a", PROMPTS[0])["choices"][0]["text"]
        assert store.loaded() == ["a"]
        # with one resident adapter at a time, mixed requests still all succeed
        outs = concurrently([lambda n=n, p=p: complete(client, n, p) for n, p in zip("abab", PROMPTS)])
    assert again == served.alone("a", PROMPTS[0])
    assert [o["choices"][0]["text"] for o in outs] == [served.alone(n, p) for n, p in zip("abab", PROMPTS)]


def test_an_api_key_guards_every_endpoint(served):
    with TestClient(served.app(api_key="s3cret")) as client:
        for call in (lambda h: client.get("/health", headers=h), lambda h: client.get("/v1/models", headers=h),
                     lambda h: client.post("/v1/completions", json={"model": "a", "prompt": "x"}, headers=h)):  # fmt: skip
            _error(call({}), 401)
            _error(call({"Authorization": "Bearer wrong"}), 401)
            assert call({"Authorization": "Bearer s3cret"}).status_code == 200


# ----- a real server: the openai client, disconnects ------------------------------------------
@contextlib.contextmanager
def running(app):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_the_openai_client_round_trips(served):
    openai = pytest.importorskip("openai")
    with running(served.app(api_key="k")) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0)
        assert {m.id for m in client.models.list()} == {"tiny", "a", "b"}
        out = client.completions.create(model="b", prompt=PROMPTS[0], max_tokens=8, temperature=0)
        assert out.choices[0].text == served.alone("b", PROMPTS[0])
        pieces = client.completions.create(model="b", prompt=PROMPTS[0], max_tokens=8, temperature=0, stream=True)
        assert "".join(p.choices[0].text for p in pieces) == out.choices[0].text
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="nope", prompt="x", max_tokens=2)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="bad", max_retries=0).models.list()


def test_a_client_that_disconnects_mid_stream_frees_its_row(served):
    if served.kind != "causal":
        pytest.skip("encoder-decoders stream a whole generate() call")
    import httpx

    app = served.app()
    slow = DecodeBatch.step

    def step(self, tokens):
        time.sleep(0.02)
        return slow(self, tokens)

    with pytest.MonkeyPatch.context() as mp, running(app) as url:
        mp.setattr(DecodeBatch, "step", step)
        body = {"model": "a", "prompt": PROMPTS[0], "max_tokens": 90, "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=10) as response:
            next(response.iter_lines())
        deadline = time.monotonic() + 5
        while app.state.scheduler.load()["decoding"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert app.state.scheduler.load()["decoding"] == 0
        assert app.state.scheduler.stats["steps"] < 60  # it stopped long before max_tokens
        assert httpx.get(f"{url}/health").json()["status"] == "ok"


def test_serve_command_refuses_bad_flags(capsys):
    from dept.cli import main

    assert main(["serve", "--adapter", "no-equals-sign"]) == 2
    assert "NAME=PATH" in capsys.readouterr().err
    assert main(["serve", "--adapter", "a=/nonexistent/folder"]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["serve", "--scheduler", "fastest"]) == 2
    assert "--scheduler" in capsys.readouterr().err
