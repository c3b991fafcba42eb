"""schemathesis against a real ``edgeinfer serve`` gateway and real workers, from the
``/openapi.json`` each serves: 0 answers of 5xx, 0 hangs, every 4xx in the API's shape.

Cases come from the served document in both of schemathesis's modes: positive (valid
bodies, model names from the document's enum, so real models answer) and negative
(bodies and path parameters the schema forbids). Generation is derandomized (a fixed
seed). ``EDGEINFER_FUZZ_EXAMPLES`` sets the examples per operation and mode (CI: a few
hundred cases per target; ``EDGEINFER_FUZZ_EXAMPLES=40`` gives 1000+).

Generating text is what costs: chat and completion requests get ``max_tokens`` bounded
to 4 before they are sent (the schema allows more, correctly).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from tests.conftest import WorkerProcess, running_worker
from tests.gateway.served import ADMIN_KEY, API_KEY, ServedGateway, bundled_models, start_gateway

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("EDGEINFER_FUZZ_EXAMPLES", "10"))
CASE_TIMEOUT = 60.0  # seconds; a case that takes longer is a hang
_BOUNDED = ("max_tokens", "max_completion_tokens")
_GENERATING = ("/v1/chat/completions", "/v1/completions")


def error_shape_problem(path: str, response: requests.Response) -> str | None:
    """Why a 4xx body is not in the API's error shape, or None when it is."""
    try:
        body = response.json()
    except ValueError:
        return f"not JSON: {response.text[:200]!r}"
    if not isinstance(body, dict) or "error" not in body:
        return f"no 'error' key: {body!r:.200}"
    error = body["error"]
    if path.startswith("/v2"):
        return (
            None if isinstance(error, str) and error else f"OIP error not a string: {body!r:.200}"
        )
    if not isinstance(error, dict):
        return f"OpenAI error not an object: {body!r:.200}"
    if not isinstance(error.get("message"), str) or not isinstance(error.get("type"), str):
        return f"OpenAI error without message/type: {body!r:.200}"
    if "code" not in error:
        return f"OpenAI error without code: {body!r:.200}"
    return None


def _bound(case: Any) -> Any:
    """At most 4 generated tokens: absent, null or larger limits become 4 (a limit of
    the wrong type is left for the server to refuse)."""
    if isinstance(case.body, dict) and case.operation.path in _GENERATING:
        for key in _BOUNDED:
            value = case.body.get(key)
            if value is None or (isinstance(value, int) and value > 4):
                case.body[key] = 4
    return case


def fuzz(base_url: str, headers_for: Any, examples: int) -> Counter[str]:
    """Every operation of ``base_url``'s document, ``examples`` cases per mode; raises on
    the first 5xx, hang or badly shaped 4xx (hypothesis then shrinks it)."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    seen: Counter[str] = Counter()
    session = requests.Session()
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the served document is invalid: {result!r}"
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=examples,
                derandomize=True,
                database=None,
                # No shrinking: each call costs a real request (a hang, a minute); the
                # first failing case is reported as generated.
                phases=[Phase.explicit, Phase.generate],
                deadline=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode).map(_bound))
            def check(case: Any) -> None:
                path = case.operation.path
                try:
                    case.headers = {**(case.headers or {}), **headers_for(path)}
                    response = case.call(base_url=base_url, session=session, timeout=CASE_TIMEOUT)
                except requests.Timeout:
                    pytest.fail(f"hang: {case.method} {case.formatted_path} {case.body!r:.300}")
                seen[f"{response.status_code // 100}xx"] += 1
                seen["cases"] += 1
                where = f"{case.method} {case.formatted_path} body={case.body!r:.300}"
                assert response.status_code < 500, (
                    f"{response.status_code} {where}: {response.text[:300]}"
                )
                if 400 <= response.status_code < 500:
                    problem = error_shape_problem(path, response)
                    assert problem is None, f"{response.status_code} {where}: {problem}"

            try:
                check()
            except Unsatisfiable:
                # Negative mode on an operation with nothing to break (no body, no params).
                assert mode is GenerationMode.NEGATIVE, operation.path
    return seen


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedGateway]:
    logs = tmp_path_factory.mktemp("fuzz-gateway")
    models = bundled_models("smollm2", "minilm", "magika")
    for m in models:
        if m["name"] == "smollm2":
            m["options"] = {**m.get("options", {}), "context_length": 1024}
    served = start_gateway(logs, models)
    yield served
    served.stop()


def _gateway_headers(path: str) -> dict[str, str]:
    key = ADMIN_KEY if path in ("/metrics", "/admin/models") else API_KEY
    return {"Authorization": f"Bearer {key}"}


def test_schemathesis_gateway(gateway: ServedGateway) -> None:
    seen = fuzz(gateway.url, _gateway_headers, EXAMPLES)
    print(json.dumps({"target": "gateway", **seen}))
    assert seen["2xx"] > 0 and seen["4xx"] > 0, seen
    assert gateway.alive(), gateway.output()


@pytest.mark.parametrize("model", ["smollm2", "minilm", "magika"])
def test_schemathesis_worker(model: str, worker_logs: Path) -> None:
    worker: WorkerProcess
    for worker in running_worker(model, worker_logs):
        doc = httpx.get(f"{worker.url}/openapi.json").json()
        assert doc["components"]["schemas"]["InferenceRequest"]
        assert "/v2" in doc["paths"] and "/v1/embeddings" in doc["paths"]
        seen = fuzz(worker.url, lambda path: {}, EXAMPLES)
        print(json.dumps({"target": f"worker:{model}", **seen}))
        assert seen["2xx"] > 0 and seen["4xx"] > 0, seen
        assert worker.proc.poll() is None, worker.output()


def _hang_body() -> dict[str, Any]:
    """The fuzzed body that hung smollm2, without its made-up fields (now a 400 each) and
    ``max_completion_tokens`` (a chat field, refused on completions): ``repeat_penalty:
    0`` makes llama.cpp divide the prompt's positive logits by zero, and with this prompt
    (bytes of astral characters), ``top_p`` and ``temperature`` the model then repeats a
    token that begins a UTF-8 sequence. llama-cpp-python's ``create_completion`` held
    back incomplete UTF-8 *before* its ``max_tokens`` check, so it never stopped short
    of the context's end, detokenizing the whole answer at every token (minutes).
    ``runtime.backends.llama_decode`` counts every sampled token against the limit."""
    raw = json.loads((Path(__file__).parent / "schemathesis_hang_body.json").read_text())
    body = {k: v for k, v in raw.items() if k.isascii() and k.isidentifier()}
    del body["max_completion_tokens"]
    assert body["repeat_penalty"] == 0.0 and body["max_tokens"] == 4, body
    return body


@pytest.mark.parametrize("stream", [False, True])
def test_a_fuzzed_completion_that_hung_the_smollm2_worker_stops_at_max_tokens(
    smollm2_worker: WorkerProcess, stream: bool
) -> None:
    body = {**_hang_body(), "stream": stream, "stream_options": {"include_usage": True}}
    if not stream:
        del body["stream_options"]
    r = httpx.post(f"{smollm2_worker.url}/v1/completions", json=body, timeout=CASE_TIMEOUT)
    assert r.status_code == 200, r.text
    if stream:
        events = [json.loads(line[6:]) for line in r.text.splitlines() if line[6:7] == "{"]
        usage, finish = events[-1]["usage"], events[-2]["choices"][0]["finish_reason"]
    else:
        usage, finish = r.json()["usage"], r.json()["choices"][0]["finish_reason"]
    assert usage["completion_tokens"] == 4 and finish == "length", r.text
    assert smollm2_worker.proc.poll() is None, smollm2_worker.output()


def test_the_fuzzed_body_with_its_unknown_fields_is_a_400_naming_one(
    smollm2_worker: WorkerProcess,
) -> None:
    body = (Path(__file__).parent / "schemathesis_hang_body.json").read_bytes()
    r = httpx.post(
        f"{smollm2_worker.url}/v1/completions",
        content=body,
        headers={"content-type": "application/json"},
        timeout=CASE_TIMEOUT,
    )
    assert r.status_code == 400 and r.json()["error"]["param"], r.text


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"prompt": "\ud800x", "max_tokens": 2}, "prompt"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "\udc00"}], "max_tokens": 2},
            "messages.0.content",
        ),
    ],
)
def test_a_prompt_with_a_lone_surrogate_is_a_400_naming_the_field(
    smollm2_worker: WorkerProcess, path: str, body: dict[str, Any], param: str
) -> None:
    # json.dumps writes the lone surrogate as a \\u escape, as the fuzzer did; the
    # tokenizer cannot encode it (it was a 500).
    content = json.dumps({"model": "smollm2", **body}).encode()
    r = httpx.post(
        f"{smollm2_worker.url}{path}",
        content=content,
        headers={"content-type": "application/json"},
        timeout=CASE_TIMEOUT,
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert smollm2_worker.proc.poll() is None, smollm2_worker.output()
