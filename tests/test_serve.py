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
# A DePT adapter and an ADePT one: every batched-equals-alone test mixes the two updates.
ADAPTERS = {
    "a": dict(prompt_length=4, rank=2, max_length=32),
    "b": dict(prompt_length=7, rank=3, max_length=24, update="token"),
}
METHOD_OF = {"a": "dept", "b": "adept"}


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
    ref = DePTModel(backbone, tokenizer=tok).eval()
    for i, (name, shape) in enumerate(ADAPTERS.items()):
        ref.add_adapter(name, DePTConfig(**shape, prompt_init="vocab", seed=i))
        randomize_update(ref, name, seed=i + 1)
    for name in ADAPTERS:
        ref.set_adapter(name)  # the active adapter is saved at the path itself
        ref.save_pretrained(root / "runs" / name / "best", adapter_names=[name])
        (root / "runs" / name / "run.json").write_text(
            json.dumps({"task": "glue/sst2", "model": "tiny", "method": {"method": METHOD_OF[name]}})
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
        _error(client.post("/v1/completions", json={"model": "a", "prompt": PROMPTS[:3]}), 400, "at most 2")
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
    assert not thread.is_alive(), "the server did not shut down within 10 s"


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


# ----- what an unfriendly client tried (issue 23): each case its status, the server unharmed -------
SECRET = "TOPSECRET-LINE"


def _secret_files(folder: Path) -> tuple[Path, Path]:
    """Files no request may read: a well-formed task table, and a file whose first line is a secret."""
    folder.mkdir(parents=True, exist_ok=True)
    table = folder / "secret.csv"
    table.write_text("sentence,label\n" + "".join(f"text {i},{SECRET}{i % 2}\n" for i in range(10)))
    plain = folder / "os-release"
    plain.write_text(f'{SECRET}="1"\nID=x\n')
    return table, plain


def _post(url: str, route: str, body: dict, timeout: float = 15):
    import httpx

    return httpx.post(f"{url}{route}", json=body, timeout=timeout)


def test_a_classify_request_never_names_a_file(served, tmp_path):
    table, plain = _secret_files(tmp_path)
    specs = [f"{kind}:{f}" for kind in ("csv", "tsv", "jsonl") for f in (table, plain)]
    specs += [str(table), "../../etc/passwd", f"csv:{tmp_path}", "csv:", "jsonl:~/x.jsonl", "x" * 10_000]
    with TestClient(served.app()) as client:
        for spec in specs:
            response = client.post("/v1/classify", json={"model": "a", "task": spec, "inputs": ["text 1"]})
            _error(response, 400)
            assert response.json()["error"]["param"] == "task"
            assert SECRET not in response.text and len(response.text) < 2000, spec
        for name in ("glue/sst2", "glue/rte"):  # registered tasks still work
            assert client.post("/v1/classify", json={"model": "a", "task": name, "inputs": ["x"]}).status_code == 200


def test_an_adapter_s_own_task_file_is_used_but_never_quoted(served, tmp_path):
    import shutil

    table, plain = _secret_files(tmp_path)
    for name, task in (("own", f"csv:{table}"), ("broken", f"csv:{plain}")):
        shutil.copytree(served.adapter("a") / "best", tmp_path / name / "best")
        (tmp_path / name / "run.json").write_text(json.dumps({"task": task, "model": "tiny"}))
    app = served.app(adapters={"own": tmp_path / "own", "broken": tmp_path / "broken"})
    with TestClient(app) as client:
        own = client.post("/v1/classify", json={"model": "own", "inputs": ["text 1"]})  # the operator's file
        assert own.status_code == 200 and set(own.json()["data"][0]["scores"]) == {f"{SECRET}0", f"{SECRET}1"}
        broken = client.post("/v1/classify", json={"model": "broken", "inputs": ["text 1"]})
        _error(broken, 400, "could not be built")
        assert SECRET not in broken.text


def test_an_adapter_loaded_at_runtime_reads_no_task_file_outside_the_root(served, tmp_path):
    import shutil

    table, _ = _secret_files(tmp_path / "outside")
    root = tmp_path / "root"
    inside, _ = _secret_files(root / "data")
    for name, task in (("x", f"csv:{table}"), ("y", f"csv:{inside}")):
        shutil.copytree(served.adapter("a") / "best", root / name / "best")
        (root / name / "run.json").write_text(json.dumps({"task": task, "model": "tiny"}))
    with TestClient(served.app(adapters={}, adapter_root=root)) as client:
        for name in "xy":
            assert client.post("/v1/adapters", json={"name": name, "path": name}).status_code == 200
        outside = client.post("/v1/classify", json={"model": "x", "inputs": ["text 1"]})
        _error(outside, 403, "outside the adapter root")
        assert SECRET not in outside.text
        assert client.post("/v1/classify", json={"model": "y", "inputs": ["text 1"]}).status_code == 200


def test_numbers_the_sampler_cannot_take_are_refused_at_the_schema(served):
    with TestClient(served.app()) as client:
        for seed in (2**64, -(2**63) - 1, 10**30):
            body = {"model": "a", "prompt": "x", "temperature": 1, "seed": seed}
            _error(client.post("/v1/completions", json=body), 422, "seed")
        for extra in ({"max_tokens": 2**16 + 1}, {"max_tokens": 10**30}, {"stop": ["a", "b", "c", "d", "e"]}):
            _error(client.post("/v1/completions", json={"model": "a", "prompt": "x", **extra}), 422)
        complete(client, "a", PROMPTS[0], stop="a stop string longer than four characters")  # one string: any length
        for seed in (0, 2**64 - 1, -(2**63)):  # the ends of the range sample, the same text each time
            first = complete(client, "a", PROMPTS[0], temperature=1, seed=seed)["choices"][0]["text"]
            assert complete(client, "a", PROMPTS[0], temperature=1, seed=seed)["choices"][0]["text"] == first


def test_tiny_temperatures_and_top_p_decode_greedily(served):
    greedy = served.alone("a", PROMPTS[0])
    with TestClient(served.app()) as client:
        for extra in ({"temperature": 1e-300}, {"temperature": 1, "top_p": 1e-300}, {"temperature": 5e-5, "seed": 3}):
            assert complete(client, "a", PROMPTS[0], **extra)["choices"][0]["text"] == greedy, extra


def test_sampling_survives_extreme_temperatures_and_top_p():
    from dept.serve.batch import sample

    logits = torch.randn(50, generator=torch.Generator().manual_seed(0)) * 30
    generator = torch.Generator().manual_seed(0)
    for temperature, top_p in ((1e-300, 1.0), (1e-5, 0.5), (1.0, 1e-300), (2.0, 1e-30)):
        assert sample(logits, temperature, top_p, generator) == int(logits.argmax()), (temperature, top_p)


def test_a_job_that_breaks_in_the_model_thread_fails_alone_and_shutdown_still_finishes(served):
    """The probe's seed 2**64 made the generator raise after the row had joined the batch: that
    request never answered, the rows in flight got 500, and SIGTERM no longer stopped the server."""
    if served.kind != "causal":
        pytest.skip("encoder-decoders sample through generate(), with no generator per row")
    from dept.serve.jobs import Completion

    original = Completion.generator

    def generator(job):
        if job.sampling.seed == 99:
            raise OverflowError("Overflow when unpacking long long")
        return original(job)

    slow = DecodeBatch.step

    def step(self, tokens):
        time.sleep(0.01)  # so the requests overlap
        return slow(self, tokens)

    bodies = [{"model": "a", "prompt": PROMPTS[0], "max_tokens": 8, "temperature": 1, "seed": 99}] + [
        {"model": n, "prompt": p, "max_tokens": 8, "temperature": 0} for n, p in zip("abab", PROMPTS[1:5])
    ]
    with pytest.MonkeyPatch.context() as mp, running(served.app(max_wait_ms=20)) as url:  # asserts the shutdown
        mp.setattr(Completion, "generator", generator)
        mp.setattr(DecodeBatch, "step", step)
        responses = concurrently([lambda b=b: _post(url, "/v1/completions", b) for b in bodies])
    _error(responses[0], 500, "Overflow")
    for body, response in zip(bodies[1:], responses[1:]):
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["text"] == served.alone(body["model"], body["prompt"])


def test_a_failure_of_the_scheduling_loop_answers_the_waiting_requests(served):
    from dept.serve.scheduler import Scheduler

    original, calls = Scheduler._take, []

    def take(self, kind):
        calls.append(kind)
        if len(calls) == 1:
            raise RuntimeError("scheduling broke")
        return original(self, kind)

    body = {"model": "b", "prompt": PROMPTS[1], "max_tokens": 8, "temperature": 0}
    with pytest.MonkeyPatch.context() as mp, running(served.app()) as url:
        mp.setattr(Scheduler, "_take", take)
        _error(_post(url, "/v1/completions", body), 500, "scheduling broke")
        again = _post(url, "/v1/completions", body)
        assert again.status_code == 200 and again.json()["choices"][0]["text"] == served.alone("b", PROMPTS[1])


def test_malformed_adapter_paths_are_400_json(served):
    app = served.app(adapters={}, adapter_root=served.root / "runs")
    with TestClient(app, raise_server_exceptions=False) as client:
        for path in ("a\x00", "\x00", "a/\x00/best", "x" * 5000, "d/" * 3000):
            _error(client.post("/v1/adapters", json={"name": "x", "path": path}), 400)
        assert client.post("/v1/adapters", json={"name": "a", "path": "a"}).status_code == 200
        complete(client, "a", PROMPTS[0])


def test_adapter_files_that_resolve_outside_the_root_are_refused(served, tmp_path):
    import shutil

    weights, config = "adapter_model.safetensors", "adapter_config.json"
    outside = tmp_path / "outside"
    shutil.copytree(served.adapter("a") / "best", outside)
    (tmp_path / "run.json").write_text(json.dumps({"task": "glue/rte", "model": "tiny"}))  # above the root
    root = tmp_path / "root"

    def copy(name: str, *links: str) -> Path:
        shutil.copytree(outside, root / name)
        for file in links:
            (root / name / file).unlink()
            (root / name / file).symlink_to(outside / file)
        return root / name

    copy("weights", weights)
    copy("config", config)
    (copy("run") / "run.json").symlink_to(tmp_path / "run.json")
    (root / "best").mkdir()
    (root / "best" / "run.json").write_text(json.dumps({"model": "tiny"}))
    (root / "best" / "best").symlink_to(outside, target_is_directory=True)
    copy("inner")
    shutil.move(root / "inner" / weights, root / "inner.safetensors")
    (root / "inner" / weights).symlink_to(root / "inner.safetensors")  # a link that stays inside is fine
    copy("late")
    with TestClient(served.app(adapters={}, adapter_root=root)) as client:
        for name in ("weights", "config", "run", "best"):
            _error(client.post("/v1/adapters", json={"name": name, "path": name}), 403, "outside the adapter root")
        for name in ("inner", "late"):
            assert client.post("/v1/adapters", json={"name": name, "path": name}).status_code == 200
        tasks = {m["id"]: m.get("task") for m in client.get("/v1/models").json()["data"]}
        assert tasks["inner"] is None  # the run.json above the root was not read
        (root / "late" / weights).unlink()  # swapped for a link after registration: refused at load
        (root / "late" / weights).symlink_to(outside / weights)
        _error(client.post("/v1/completions", json={"model": "late", "prompt": "x"}), 500, "outside the adapter root")
        assert complete(client, "inner", PROMPTS[0])["choices"][0]["text"] == served.alone("a", PROMPTS[0])


def test_max_batch_size_holds_on_every_decoding_step(served):
    if served.kind != "causal":
        pytest.skip("encoder-decoders decode in fixed batches")
    app = served.app(max_batch_size=2, max_wait_ms=0)
    slow = DecodeBatch.step

    def step(self, tokens):
        time.sleep(0.01)  # requests arrive while others decode
        return slow(self, tokens)

    with TestClient(app) as client, pytest.MonkeyPatch.context() as mp:
        mp.setattr(DecodeBatch, "step", step)
        outs = concurrently([lambda i=i: complete(client, "ab"[i % 2], PROMPTS[i], max_tokens=10) for i in range(6)])
    stats = app.state.scheduler.stats
    assert stats["largest_step"] == 2 and stats["largest_prefill"] <= 2, stats
    for i, out in enumerate(outs):
        assert out["choices"][0]["text"] == served.alone("ab"[i % 2], PROMPTS[i], 10)


def test_requests_larger_than_the_queue_are_400_and_a_full_queue_is_429(served):
    from dept.serve.jobs import Completion

    app = served.app(max_queue=2)
    with TestClient(app) as client:
        _error(
            client.post("/v1/completions", json={"model": "a", "prompt": PROMPTS[:3]}), 400, "at most 2", "--max-queue"
        )
        _error(client.post("/v1/classify", json={"model": "a", "inputs": PROMPTS[:3]}), 400, "at most 2")
        two = client.post("/v1/classify", json={"model": "a", "inputs": PROMPTS[:2]})
        assert two.status_code == 200 and [row["index"] for row in two.json()["data"]] == [0, 1]

        class Nobody:
            def put(self, event):
                pass

        scheduler = app.state.scheduler
        with scheduler._cond:  # two abandoned jobs fill the queue until the thread looks at it
            scheduler._waiting.extend(
                Completion(adapter="__base__", sink=Nobody(), prompt=[3], cancelled=True) for _ in range(2)
            )
        _error(client.post("/v1/completions", json={"model": "a", "prompt": "x"}), 429, "retry later")
        with scheduler._cond:
            scheduler._cond.notify_all()
        deadline = time.monotonic() + 5
        while scheduler.load()["waiting"] and time.monotonic() < deadline:
            time.sleep(0.01)
        complete(client, "a", PROMPTS[0])


def test_schema_valid_oddities_are_400_not_500(served):
    headers = {"content-type": "application/json"}
    with TestClient(served.app(), raise_server_exceptions=False) as client:
        lone = b'{"model": "a", "prompt": "\\ud800 x"}'
        _error(client.post("/v1/completions", content=lone, headers=headers), 400, "tokenized")
        lone = b'{"model": "a", "inputs": ["\\ud800"]}'
        _error(client.post("/v1/classify", content=lone, headers=headers), 400, "tokenized")
        for inputs in ([""], [{"sentence": ["a", 5]}], [{"sentence": None}], [{"sentence": {"x": 1}}]):
            response = client.post("/v1/classify", json={"model": "a", "inputs": inputs})
            assert response.status_code in (200, 400), (inputs, response.text)
        complete(client, "a", PROMPTS[0])
