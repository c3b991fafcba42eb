"""The wasi-nn host through real guests: wasi-nn-ggml (llama.cpp) and wasi-nn-onnx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from runtime.backends.wasm.host import Sandbox, Template, WasmHost
from runtime.backends.wasm.package import Preload
from runtime.backends.wasm.wasi_nn.host import NnCall, NnHost, define_wasi_nn
from runtime.backends.wasm.wasi_nn.types import MODEL_NOT_FOUND, NOT_FOUND, PROMPT_TOO_LONG
from tests.runtime.backends.wasm.conftest import affine_onnx

CHAT = b"<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def _call(
    template: Template, nn: NnHost, *args: str, stdin: bytes = b"", **kw: object
) -> tuple[int, str, str, NnCall]:
    out: list[bytes] = []
    err: list[bytes] = []
    state = NnCall(nn, stdout=out.append)
    try:
        result = template.run(
            Sandbox(args=args, stdin=stdin, stdout=out.append, stderr=err.append, **kw),  # type: ignore[arg-type]
            state,
        )
    finally:
        state.close()
    return result.exit_code, b"".join(out).decode(), b"".join(err).decode(), state


@pytest.fixture(scope="module")
def ggml(host: WasmHost, ggml_guest: Path, smollm2_gguf: Path) -> Iterator[tuple[Template, NnHost]]:
    nn = NnHost(
        [Preload.parse(f"default:GGML:AUTO:{smollm2_gguf}")],
        {"default": smollm2_gguf},
        ggml_defaults={"ctx-size": 256, "threads": 2},
    )
    yield host.template(host.module(ggml_guest), define_wasi_nn), nn
    nn.close()


@pytest.mark.slow
def test_ggml_generates_and_reports_token_counts(ggml: tuple[Template, NnHost]) -> None:
    code, out, err, state = _call(
        *ggml, "--n-predict", "24", "--temp", "0", "--metadata", stdin=CHAT
    )
    assert code == 0, err
    assert "Paris" in out
    meta = json.loads(err.strip().splitlines()[-1])
    assert meta["input_tokens"] > 10 and 0 < meta["output_tokens"] <= 24
    assert state.last_metadata["output_tokens"] == meta["output_tokens"]


@pytest.mark.slow
def test_ggml_streams_the_same_tokens_one_by_one(ggml: tuple[Template, NnHost]) -> None:
    pieces: list[bytes] = []
    nn_template, nn = ggml
    state = NnCall(nn, stdout=pieces.append)
    try:
        result = nn_template.run(
            Sandbox(
                args=["--stream", "--n-predict", "24", "--temp", "0"],
                stdin=CHAT,
                stdout=pieces.append,
            ),
            state,
        )
    finally:
        state.close()
    assert result.exit_code == 0
    whole = _call(*ggml, "--n-predict", "24", "--temp", "0", stdin=CHAT)[1]
    assert len(pieces) > 3  # one write per token
    assert b"".join(pieces).decode() == whole


@pytest.mark.slow
def test_ggml_n_predict_limits_the_answer(ggml: tuple[Template, NnHost]) -> None:
    code, _, err, state = _call(
        *ggml, "--n-predict", "3", "--temp", "0", "--metadata", stdin=b"Once upon a time"
    )
    assert code == 0, err
    assert state.last_metadata["output_tokens"] == 3
    assert state.last_metadata["stop_reason"] == "n_predict"


@pytest.mark.slow
def test_ggml_stream_stdout_prints_from_the_backend(ggml: tuple[Template, NnHost]) -> None:
    args = ("--n-predict", "12", "--temp", "0")
    printed = _call(*ggml, *args, "--stream-stdout", stdin=CHAT)[1]
    assert printed and printed == _call(*ggml, *args, stdin=CHAT)[1]


@pytest.mark.slow
def test_ggml_reverse_prompt_stops_the_generation(ggml: tuple[Template, NnHost]) -> None:
    prompt = b"1, 2, 3, 4, 5, 6,"
    whole = _call(*ggml, "--n-predict", "12", "--temp", "0", stdin=prompt)[1]
    assert "9," in whole
    code, out, _, state = _call(
        *ggml, "--n-predict", "12", "--temp", "0", "--reverse-prompt", "9,", stdin=prompt
    )
    assert code == 0 and out == whole[: whole.index("9,")]
    assert state.last_metadata["stop_reason"] == "reverse_prompt"


@pytest.mark.slow
def test_ggml_model_not_found(ggml: tuple[Template, NnHost]) -> None:
    code, _, err, state = _call(*ggml, "--model", "missing", stdin=b"hi")
    assert code == 4 and f"error {MODEL_NOT_FOUND}" in err
    assert state.last_error == MODEL_NOT_FOUND


@pytest.mark.slow
def test_ggml_unload_then_init_fails(ggml: tuple[Template, NnHost]) -> None:
    code, out, err, _ = _call(*ggml, "--mode", "unload", stdin=b"hi")
    assert code == 0, err
    assert f"error {NOT_FOUND}" in out
    # The preloaded graph is still there for the next call.
    assert _call(*ggml, "--n-predict", "2", stdin=b"Hello")[0] == 0


@pytest.mark.slow
def test_ggml_set_input_twice_keeps_the_last(ggml: tuple[Template, NnHost]) -> None:
    args = ("--n-predict", "16", "--temp", "0")
    once = _call(*ggml, *args, stdin=CHAT)[1]
    twice = _call(*ggml, *args, "--mode", "set-input-twice", stdin=CHAT)[1]
    assert twice == once


@pytest.mark.slow
def test_ggml_prompt_too_long(ggml: tuple[Template, NnHost]) -> None:
    code, _, err, state = _call(*ggml, "--n-predict", "4", stdin=b"word " * 400)
    assert code == 3 and f"error {PROMPT_TOO_LONG}" in err
    assert state.last_error == PROMPT_TOO_LONG


@pytest.mark.slow
def test_ggml_context_full_is_reported(ggml: tuple[Template, NnHost]) -> None:
    code, _, err, state = _call(
        *ggml, "--stream", "--ctx-size", "64", "--temp", "0", stdin=b"word " * 40
    )
    assert code == 0, err
    assert "context full" in err
    assert state.last_metadata["stop_reason"] == "context_full"


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return affine_onnx(tmp_path_factory.mktemp("onnx") / "affine.onnx", 2.0, 1.0)


@pytest.fixture(scope="module")
def onnx_nn(host: WasmHost, onnx_guest: Path, onnx_model: Path) -> tuple[Template, NnHost]:
    nn = NnHost([Preload.parse(f"affine:ONNX:CPU:{onnx_model}")], {"affine": onnx_model})
    return host.template(host.module(onnx_guest), define_wasi_nn), nn


def _floats(text: str) -> np.ndarray:
    return np.array([float(v) for v in text.strip().split(",")], np.float32)


def test_onnx_preloaded_by_name(onnx_nn: tuple[Template, NnHost]) -> None:
    code, out, err, _ = _call(
        *onnx_nn, "--model", "affine", "--shape", "1,4", "--input", "0,1,2.5,-3"
    )
    assert code == 0, err
    np.testing.assert_allclose(_floats(out), [1, 3, 6, -5])


def test_onnx_loaded_from_bytes_in_the_sandbox(
    onnx_nn: tuple[Template, NnHost], onnx_model: Path
) -> None:
    code, out, err, _ = _call(
        *onnx_nn,
        "--file",
        "/model/affine.onnx",
        "--shape",
        "1,4",
        "--input",
        "1,1,1,1",
        mounts=[(onnx_model.parent, "/model")],
    )
    assert code == 0, err
    np.testing.assert_allclose(_floats(out), [3, 3, 3, 3])


def test_onnx_wrong_shape_is_an_error_code(onnx_nn: tuple[Template, NnHost]) -> None:
    code, _, err, _ = _call(*onnx_nn, "--model", "affine", "--shape", "1,4", "--input", "1,2")
    assert code == 5 and "set_input failed: error 1" in err


def test_onnx_model_not_found(onnx_nn: tuple[Template, NnHost]) -> None:
    code, _, err, _ = _call(*onnx_nn, "--model", "nope", "--shape", "1,4", "--input", "1,2,3,4")
    assert code == 4 and f"error {MODEL_NOT_FOUND}" in err


ANSWER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 16},
        "sure": {"type": "boolean"},
    },
    "required": ["city", "sure"],
}


@pytest.mark.slow
@pytest.mark.parametrize("as_string", [True, False])
def test_ggml_json_schema_option_constrains_the_output(
    ggml: tuple[Template, NnHost], as_string: bool
) -> None:
    import jsonschema

    schema: object = json.dumps(ANSWER) if as_string else ANSWER
    for seed in ("1", "2"):
        code, out, err, state = _call(
            *ggml,
            "--n-predict", "60", "--temp", "0.8", "--seed", seed,
            "--options", json.dumps({"json-schema": schema}),
            stdin=CHAT,
        )  # fmt: skip
        assert code == 0, err
        assert state.last_metadata["stop_reason"] == "eos"
        jsonschema.validate(json.loads(out), ANSWER)


@pytest.mark.slow
def test_ggml_grammar_option_and_bad_grammars(ggml: tuple[Template, NnHost]) -> None:
    grammar = {"grammar": 'root ::= ("yes" | "no") "."'}
    code, out, err, _ = _call(
        *ggml, "--n-predict", "8", "--options", json.dumps(grammar), "--stream", stdin=CHAT
    )
    assert code == 0, err
    assert out in ("yes.", "no.")
    for bad in (
        {"grammar": "root ::= (unclosed"},
        {"json-schema": {"type": "number", "minimum": 1}},
        {"json-schema": "{not json"},
        {"grammar": 'root ::= "a"', "json-schema": ANSWER},
    ):
        code, _, err, _ = _call(*ggml, "--options", json.dumps(bad), stdin=CHAT)
        assert code == 5 and "compute failed: error 1" in err, (bad, err)
    # The host is still serving after the refusals.
    assert _call(*ggml, "--n-predict", "2", stdin=CHAT)[0] == 0


@pytest.mark.slow
def test_ggml_embedding_option_writes_wasmedge_json(ggml: tuple[Template, NnHost]) -> None:
    options = json.dumps({"embedding": True})
    outs = [_call(*ggml, "--options", options, stdin=text) for text in (b"cats", b"cats", b"tax")]
    for code, _, err, _ in outs:
        assert code == 0, err
    bodies = [json.loads(out) for _, out, _, _ in outs]
    assert all(b["n_embedding"] == len(b["embedding"]) == 576 for b in bodies)
    vectors = [np.asarray(b["embedding"]) for b in bodies]
    np.testing.assert_allclose(np.linalg.norm(vectors[0]), 1.0, rtol=1e-6)
    np.testing.assert_allclose(vectors[0], vectors[1])
    assert not np.allclose(vectors[0], vectors[2])


@pytest.mark.slow
def test_a_missing_preloaded_file_is_model_not_found_at_load(
    host: WasmHost, ggml_guest: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "gone.gguf"
    nn = NnHost([Preload.parse(f"default:GGML:AUTO:{missing}")], {"default": missing})
    try:
        template = host.template(host.module(ggml_guest), define_wasi_nn)
        code, _, err, state = _call(template, nn, stdin=b"hi")
    finally:
        nn.close()
    assert code == 4 and f"error {MODEL_NOT_FOUND}" in err and state.last_error == MODEL_NOT_FOUND
