"""Request bodies the JSON parser refuses are BadInput (a 400), never a 500."""

from __future__ import annotations

import pytest

from runtime.api.body import json_object, load_json
from runtime.api.oip import decode_request
from runtime.errors import BadInput

DEEP = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
HUGE_INT = (
    b'{"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": ['
    + b"9" * 5000
    + b"]}]}"
)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (DEEP, "nested too deeply"),
        (HUGE_INT, "digits"),
        (b'{"a": ', "not valid JSON"),
        (b'{"a": "\xff"}', "not valid JSON"),
    ],
)
def test_what_the_parser_refuses_is_bad_input(body: bytes, says: str) -> None:
    for parse in (load_json, json_object, lambda b: decode_request(b, None)):
        with pytest.raises(BadInput, match=says) as err:
            parse(body)
        assert err.value.status == 400


def test_deep_but_parseable_data_is_judged_by_its_shape() -> None:
    depth = 500
    body = (
        b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": '
        + b"[" * depth
        + b"1"
        + b"]" * depth
        + b"}]}"
    )
    _, tensors = decode_request(body, None)
    assert tensors[0].data.tolist() == [1.0]


def test_a_valid_object_still_parses() -> None:
    assert json_object(b'{"n": 12345678901234567890}') == {"n": 12345678901234567890}
