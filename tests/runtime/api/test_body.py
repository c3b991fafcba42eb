"""Reading a request body as a JSON object: what the parser cannot take is a 400."""

from __future__ import annotations

import pytest

from runtime.api.body import MAX_DEPTH, json_object, load_json
from runtime.api.oip import decode_request
from runtime.errors import BadInput


def nested(depth: int) -> bytes:
    return b'{"a": ' + b"[" * (depth - 1) + b"1" + b"]" * (depth - 1) + b"}"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"[" * 200_000, "nested deeper"),
        (nested(MAX_DEPTH + 1), "nested deeper"),
        (b'{"n": ' + b"1" * 5000 + b"}", "digits"),
        (b'{"n": 1', "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1]", "must be a JSON object"),
        (b"", "empty"),
    ],
)
def test_bodies_the_parser_refuses_are_bad_input(body: bytes, says: str) -> None:
    with pytest.raises(BadInput, match=says):
        json_object(body)


def test_depth_is_counted_outside_strings_and_up_to_the_limit() -> None:
    assert json_object(nested(MAX_DEPTH))["a"] is not None
    brackets = b"[{" * 10_000
    assert json_object(b'{"text": "' + brackets + b'"}')["text"] == brackets.decode()
    wide = b'{"data": [' + b",".join([b"[1, 2]"] * 10_000) + b"]}"
    assert len(json_object(wide)["data"]) == 10_000


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "a", "model": "b"}',
        b'{"model": "a", "mod\\u0065l": "b"}',
        b'{"x": {"model": "a", "model": "b"}, "model": "c"}',
    ],
)
def test_a_unique_key_given_twice_is_refused(body: bytes) -> None:
    with pytest.raises(BadInput, match="'model' is given twice"):
        json_object(body, unique_keys=("model",))
    assert isinstance(json_object(body), dict)  # other callers: the last one wins


def test_one_model_key_and_escapes_elsewhere_pass() -> None:
    body = b'{"model": "a", "input": "caf\\u00e9", "x": {"model": "a"}}'
    assert json_object(body, unique_keys=("model",))["input"] == "café"


HUGE_INT = (
    b'{"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": ['
    + b"9" * 5000
    + b"]}]}"
)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested deeper"),
        (HUGE_INT, "digits"),
        (b'{"a": ', "not valid JSON"),
        (b'{"a": "\xff"}', "not valid JSON"),
    ],
)
def test_every_json_reader_refuses_alike(body: bytes, says: str) -> None:
    for parse in (load_json, json_object, lambda b: decode_request(b, None)):
        with pytest.raises(BadInput, match=says) as err:
            parse(body)
        assert err.value.status == 400


def test_a_deep_tensor_within_the_limit_is_judged_by_its_shape() -> None:
    depth = MAX_DEPTH - 3  # the body object, "inputs" and the tensor object
    body = (
        b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": '
        + b"[" * depth
        + b"1"
        + b"]" * depth
        + b"}]}"
    )
    _, tensors = decode_request(body, None)
    assert tensors[0].data.tolist() == [1.0]


def test_a_big_integer_within_the_digit_limit_still_parses() -> None:
    assert json_object(b'{"n": 12345678901234567890}') == {"n": 12345678901234567890}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"prompt": "\\ud800x"}', "prompt"),
        (b'{"prompt": "x\\uDFFF"}', "prompt"),
        (b'{"messages": [{"role": "user", "content": "\\udc00\\ud800"}]}', "messages.0.content"),
        (b'{"\\ud800": 1}', None),
    ],
)
def test_a_lone_surrogate_is_a_bad_input_naming_its_field(body: bytes, param: str | None) -> None:
    with pytest.raises(BadInput) as caught:
        json_object(body)
    assert "surrogate" in caught.value.message and caught.value.param == param


def test_paired_surrogates_and_a_literal_backslash_u_are_text() -> None:
    assert json_object(b'{"prompt": "\\ud83d\\ude00"}') == {"prompt": "\U0001f600"}
    assert json_object(b'{"prompt": "\\\\ud800"}') == {"prompt": "\\ud800"}
