"""Property-based tests of `dept serve`: requests generated from the app's own OpenAPI schema
(hypothesis strategies built from its JSON schemas), mixed with edge values and arbitrary JSON,
sent to every route of a tiny Llama server. The properties: never a 5xx (a stream's error events included), every request
answered within a bound, and afterwards `/health` is OK and fixed valid requests get the answers
they got before. Bounded for CI: a few hundred requests in all."""

from __future__ import annotations

import concurrent.futures
import json
import os
import time
from urllib.parse import quote

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("hypothesis")
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from dept import DePTConfig, DePTModel  # noqa: E402
from dept.serve.app import create_app  # noqa: E402

from conftest import randomize_update  # noqa: E402
from tiny import make_tiny_llama, make_tiny_tokenizer  # noqa: E402

# The longer committed run (benchmarks/serving/fuzz.sh) multiplies every example count and appends
# what it saw to a JSON report; CI runs the counts as written.
SCALE = int(os.environ.get("DEPT_FUZZ_SCALE", "1"))
REPORT = os.environ.get("DEPT_FUZZ_REPORT")
PER_REQUEST_S = 20.0  # generous on two busy cores; a request of the tiny model takes milliseconds
KEEP = "keep"  # the adapter the fixed requests use: the fuzz may not delete it
FIXED = [
    ("/v1/completions", {"model": KEEP, "prompt": "the movie was great", "max_tokens": 6, "temperature": 0}),
    ("/v1/completions", {"model": KEEP, "prompt": "Hello world", "max_tokens": 6, "temperature": 0.8, "seed": 5}),
    ("/v1/completions", {"model": "tiny", "prompt": "question: is the sky", "max_tokens": 4, "temperature": 0}),
    ("/v1/classify", {"model": KEEP, "inputs": ["the movie was great", {"sentence": "a dull film"}]}),
]
NASTY = [
    "",
    " ",
    "\x00",
    "\ud800",
    "x" * 300,
    "the movie was great",
    "csv:/etc/os-release",
    "tsv:/etc/passwd",
    "jsonl:~/x.jsonl",
    "/etc/passwd",
    "../../etc",
    "glue/sst2",
    "glue/stsb",
    "__base__",
    "tiny",
    KEEP,
    f"{KEEP}/best",
    ".",
    "a" * 129,
]
NUMBERS = [0, 1, -1, 2, 1e-300, 5e-324, 1e300, float("inf"), float("nan"), 2**63, 2**64, -(2**63) - 1, 10**30, 0.5]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-properties")
    tok = make_tiny_tokenizer(root / "backbone")
    backbone = make_tiny_llama(root / "backbone", tokenizer=tok)
    ref = DePTModel(backbone, tokenizer=tok)
    ref.add_adapter(KEEP, DePTConfig(prompt_length=4, rank=2, max_length=32, prompt_init="vocab", seed=0))
    randomize_update(ref, KEEP, seed=1)
    ref.set_adapter(KEEP)
    adapters = root / "adapters"
    ref.save_pretrained(adapters / KEEP / "best", adapter_names=[KEEP])
    (adapters / KEEP / "run.json").write_text(json.dumps({"task": "glue/sst2", "model": "tiny"}))
    app = create_app(
        DePTModel(backbone, tokenizer=tok), tok, "tiny", {KEEP: adapters / KEEP}, adapter_root=adapters,
        max_queue=8, max_batch_size=4, max_wait_ms=1,
    )  # fmt: skip
    with TestClient(app, raise_server_exceptions=False) as client, concurrent.futures.ThreadPoolExecutor(1) as pool:
        yield _Server(client, pool)


class _Server:
    def __init__(self, client: TestClient, pool):
        self.client, self.pool = client, pool
        self.schema = client.get("/openapi.json").json()
        self.statuses: dict[int, int] = {}

    def bodies(self, route: str) -> st.SearchStrategy:
        """Request bodies valid for the route's schema, as the app publishes it."""
        ref = self.schema["paths"][route]["post"]["requestBody"]["content"]["application/json"]["schema"]
        return _from_schema(ref, self.schema["components"]["schemas"])

    def send(self, method: str, route: str, body=None, raw: bytes | None = None):
        """One request, answered within PER_REQUEST_S, never a 5xx."""
        if body is not None:  # Python's json writes NaN and Infinity, which the server's parser reads
            raw = json.dumps(body).encode()
        kwargs = {"content": raw, "headers": {"content-type": "application/json"}} if raw is not None else {}
        start = time.monotonic()
        future = self.pool.submit(self.client.request, method, route, **kwargs)
        response = future.result(timeout=PER_REQUEST_S)  # a hang fails here
        assert time.monotonic() - start < PER_REQUEST_S
        self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (method, route, body, raw, response.text)
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            for line in response.text.splitlines():
                if line.startswith("data: {") and '"error"' in line:
                    assert json.loads(line[len("data: ") :])["error"]["code"] < 500, line
        else:
            assert "error" in response.json() or response.status_code == 200, response.text
        return response

    def answers(self) -> list:
        out = []
        for route, body in FIXED:
            response = self.send("POST", route, body)
            assert response.status_code == 200, response.text
            data = response.json()
            out.append(data["choices"] if "choices" in data else data["data"])
        return out


def _fuzz(server: _Server, requests, examples: int) -> dict[int, int]:
    """Send `examples` generated requests; the server answers each, and is unharmed afterwards.
    Returns how many got each status."""
    before = server.answers()
    server.statuses = {}

    started = time.perf_counter()

    @settings(
        max_examples=examples * SCALE,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(requests)
    def one(request):
        server.send(*request)

    one()
    seen = server.statuses
    print(f"{sum(seen.values())} requests, statuses {dict(sorted(seen.items()))}")
    health = server.send("GET", "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["waiting"] == 0
    assert server.answers() == before
    if REPORT:
        row = {
            "requests": sum(seen.values()),
            "statuses": {str(k): v for k, v in sorted(seen.items())},
            "seconds": round(time.perf_counter() - started, 1),
            "health_after": "ok",
            "answers_unchanged": True,
        }
        with open(REPORT, "a", encoding="utf-8") as out:
            out.write(json.dumps({"test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0], **row}) + "\n")
    return seen


def _from_schema(node: dict, schemas: dict) -> st.SearchStrategy:
    """Values a JSON schema allows (the subset FastAPI writes for these models: $ref, anyOf,
    objects, arrays, strings, numbers with bounds, booleans, null)."""
    if "$ref" in node:
        return _from_schema(schemas[node["$ref"].rsplit("/", 1)[-1]], schemas)
    if "anyOf" in node:
        return st.one_of([_from_schema(option, schemas) for option in node["anyOf"]])
    kind = node.get("type")
    if kind == "object":
        properties = {k: _from_schema(v, schemas) for k, v in node.get("properties", {}).items()}
        required = set(node.get("required", ()))
        fixed = st.fixed_dictionaries(
            {k: v for k, v in properties.items() if k in required},
            optional={k: v for k, v in properties.items() if k not in required},
        )
        if node.get("additionalProperties") in (True, {}) and not properties:
            return st.dictionaries(st.text(max_size=10), _value(), max_size=4)
        return fixed
    if kind == "array":
        items = _from_schema(node.get("items", {}), schemas)
        return st.lists(items, min_size=node.get("minItems", 0), max_size=min(node.get("maxItems", 6), 6))
    if kind == "string":
        return st.text(min_size=node.get("minLength", 0), max_size=min(node.get("maxLength", 40), 40))
    if kind == "integer":
        return st.integers(node.get("minimum"), node.get("maximum"))
    if kind == "number":
        low = node.get("minimum", node.get("exclusiveMinimum"))
        high = node.get("maximum", node.get("exclusiveMaximum"))
        return st.floats(
            low, high, exclude_min="exclusiveMinimum" in node, exclude_max="exclusiveMaximum" in node, allow_nan=False
        )
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return _value()


def _edgy(fields: dict) -> st.SearchStrategy:
    """Bodies with the route's fields set to edge values, any subset of them present."""
    return st.fixed_dictionaries({}, optional=fields)


def _served(bodies: st.SearchStrategy) -> st.SearchStrategy:
    """Schema-valid bodies, most of them naming a model this server has."""
    models = st.sampled_from([KEEP, KEEP, "tiny", None])
    return st.tuples(bodies, models).map(lambda b: {**b[0], "model": b[1]} if b[1] else b[0])


def _text():
    return st.one_of(st.sampled_from(NASTY), st.text(max_size=40))


def _value():
    return st.one_of(st.sampled_from(NUMBERS), _text(), st.none(), st.booleans(), st.lists(_text(), max_size=3))


def test_completions_never_fail_the_server(server):
    valid = _served(server.bodies("/v1/completions"))
    plausible = st.fixed_dictionaries(
        {"model": st.sampled_from([KEEP, "tiny"]), "prompt": st.one_of(_text(), st.lists(_text(), max_size=3))},
        optional={
            "max_tokens": st.integers(1, 30),
            "temperature": st.one_of(st.floats(0, 2), st.sampled_from([0, 1e-300, 5e-324, 2])),
            "top_p": st.one_of(st.floats(0, 1, exclude_min=True), st.sampled_from([1e-300, 5e-324, 1])),
            "seed": st.one_of(st.integers(-(2**63), 2**64 - 1), st.sampled_from([-(2**63), 2**64 - 1])),
            "stop": st.one_of(_text(), st.lists(_text(), max_size=4)),
            "stream": st.booleans(),
        },
    )
    edgy = _edgy(
        {
            "model": st.sampled_from([KEEP, "tiny", "nope"]),
            "prompt": st.one_of(_text(), st.lists(_text(), max_size=10)),
            "max_tokens": st.one_of(st.integers(1, 40), st.sampled_from(NUMBERS)),
            "temperature": st.one_of(st.floats(0, 2), st.sampled_from(NUMBERS)),
            "top_p": st.one_of(st.floats(0, 1), st.sampled_from(NUMBERS)),
            "seed": st.one_of(st.integers(-(2**64), 2**65), st.none()),
            "stop": st.one_of(_text(), st.lists(_text(), max_size=6), st.none()),
            "stream": st.booleans(),
            "n": _value(),
            "echo": _value(),
        }
    )
    bodies = st.one_of(
        valid, plausible, edgy, edgy.map(lambda b: {"model": KEEP, "prompt": "the movie", "max_tokens": 4, **b})
    )
    seen = _fuzz(server, bodies.map(lambda b: ("POST", "/v1/completions", b)), examples=80)
    assert seen.get(200, 0) >= 3, seen  # the fuzz reached the model, not only the checks before it


def test_classify_never_fails_the_server(server):
    valid = _served(server.bodies("/v1/classify"))
    record = st.dictionaries(st.sampled_from(["sentence", "sentence1", "sentence2", "premise", "x"]), _value())
    plausible = st.fixed_dictionaries(
        {
            "model": st.sampled_from([KEEP, "tiny"]),
            "inputs": st.lists(st.one_of(_text(), record), min_size=1, max_size=9),
        },
        optional={
            "task": st.sampled_from(["glue/sst2", "glue/rte", "glue/stsb", "superglue/boolq", "csv:/etc/passwd"])
        },
    )
    edgy = _edgy(
        {
            "model": st.sampled_from([KEEP, "tiny", "nope"]),
            "inputs": st.one_of(st.lists(st.one_of(_text(), record), max_size=10), _value()),
            "task": st.one_of(st.none(), st.sampled_from(NASTY), st.sampled_from(["glue/rte", "glue/stsb", "SST2"])),
        }
    )
    bodies = st.one_of(valid, plausible, edgy, edgy.map(lambda b: {"model": KEEP, "inputs": ["a film"], **b}))
    seen = _fuzz(server, bodies.map(lambda b: ("POST", "/v1/classify", b)), examples=60)
    assert seen.get(200, 0) >= 2, seen


def test_adapter_management_never_fails_the_server(server):
    valid = server.bodies("/v1/adapters")
    paths = [KEEP, f"{KEEP}/best", f"{KEEP}/../{KEEP}", ".", "..", "/etc", "/", f"{KEEP}\x00", "~", "nope"]
    names = st.one_of(st.integers(0, 30).map(lambda i: f"n{i}"), st.sampled_from(["y/z", "w.1", KEEP, "tiny"]))
    served_paths = st.sampled_from([KEEP, f"{KEEP}/best", f"{KEEP}/../{KEEP}"])
    plausible = st.fixed_dictionaries({"name": names, "path": st.one_of(served_paths, st.sampled_from(paths), _text())})
    edgy = _edgy({"name": st.one_of(st.sampled_from(["x", "y/z", KEEP]), _text()), "path": _text()})
    posts = st.one_of(valid, plausible, edgy).map(lambda b: ("POST", "/v1/adapters", b))
    names = st.one_of(st.sampled_from(["x", "y/z", "tiny", "__base__", "nope"]), st.text(max_size=20))
    deletes = names.filter(lambda n: n != KEEP).map(lambda n: ("DELETE", f"/v1/adapters/{quote(n, safe='/')}"))
    seen = _fuzz(server, st.one_of(posts, deletes), examples=40)
    assert seen.get(200, 0) >= 1, seen


def test_any_route_with_any_body_never_fails_the_server(server):
    json_values = st.recursive(
        st.one_of(st.none(), st.booleans(), st.sampled_from(NUMBERS), st.integers(), _text()),
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
        max_leaves=12,
    )
    routes = st.sampled_from(
        [("POST", "/v1/completions"), ("POST", "/v1/classify"), ("POST", "/v1/adapters"), ("GET", "/health"),
         ("GET", "/v1/models"), ("PUT", "/v1/models"), ("GET", "/v1/completions"), ("POST", "/nowhere")]
    )  # fmt: skip
    raw = st.one_of(st.binary(max_size=40), st.sampled_from([b"", b"{", b'{"model": ', b"[]", b"null", b"\xff\xfe"]))
    requests = st.one_of(
        st.tuples(routes, json_values).map(lambda r: (*r[0], r[1])),
        st.tuples(routes, raw).map(lambda r: (r[0][0], r[0][1], None, r[1])),
    )
    _fuzz(server, requests, examples=40)
