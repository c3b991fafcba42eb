"""Tests for runtime.backends.magika_features: hand-computed features, parity with magika."""

from __future__ import annotations

import gzip
import importlib.resources
import io
import random
import struct
import zipfile
import zlib
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest

from runtime.backends.magika_features import (
    ContentTypeInfo,
    MagikaConfig,
    classify_without_model,
    extract_features,
    label_from_scores,
    load_magika_config,
)

P = 256  # padding token of the tiny hand-made config


def _tiny_config() -> MagikaConfig:
    kinds = {
        "txt": True,
        "unknown": False,
        "empty": False,
        "undefined": False,
        "python": True,
        "png": False,
        "randomtxt": True,
        "markdown": True,
    }
    return MagikaConfig(
        beg_size=4,
        end_size=3,
        block_size=8,
        padding_token=P,
        min_file_size_for_dl=3,
        medium_confidence_threshold=0.5,
        target_labels_space=("python", "png", "randomtxt", "markdown"),
        thresholds=MappingProxyType({"markdown": 0.75}),
        overwrite_map=MappingProxyType({"randomtxt": "txt"}),
        content_types=MappingProxyType(
            {
                k: ContentTypeInfo(v, "text/plain" if v else "application/octet-stream", "g", k)
                for k, v in kinds.items()
            }
        ),
    )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", [P, P, P, P, P, P, P]),
        (b"ab", [97, 98, P, P, P, 97, 98]),
        (b"abcdef", [97, 98, 99, 100, 100, 101, 102]),
        # beg is only lstripped, end only rstripped
        (b" \tab\r\n ", [97, 98, 13, 10, 9, 97, 98]),
        (b" \x0b\x0cxy\x00 ", [120, 121, 0, 32, 120, 121, 0]),  # NUL is not whitespace
        (b"   \n\t  ", [P, P, P, P, P, P, P]),
        # 12 bytes > block_size 8: beg sees b"012345 6", end sees b"45 6789 " -> b"45 6789"
        (b"012345 6789 ", [48, 49, 50, 51, 55, 56, 57]),
        # only the first block is stripped: beg block b"        " is all whitespace
        (b"        abc", [P, P, P, P, 97, 98, 99]),
    ],
)
def test_extract_features_by_hand(content: bytes, expected: list[int]) -> None:
    feats = extract_features(content, _tiny_config())
    assert feats.dtype == np.int32
    assert feats.tolist() == expected


def test_classify_without_model_tiny() -> None:
    cfg = _tiny_config()
    assert classify_without_model(b"", cfg).label == "empty"  # type: ignore[union-attr]
    short = classify_without_model(b"ab", cfg)
    assert short is not None and (short.label, short.dl_label, short.score) == (
        "txt",
        "undefined",
        1.0,
    )
    assert classify_without_model(b"\xff\xfe", cfg).label == "unknown"  # type: ignore[union-attr]
    # long enough, but only 2 bytes left after lstrip of the first block
    assert classify_without_model(b"      ab", cfg).label == "txt"  # type: ignore[union-attr]
    # the UTF-8 check only looks at the first block_size bytes
    assert classify_without_model(b"        \xff", cfg).label == "txt"  # type: ignore[union-attr]
    assert classify_without_model(b"abc", cfg) is None


def test_label_from_scores_tiny() -> None:
    cfg = _tiny_config()
    sure = label_from_scores(np.array([0.9, 0.05, 0.03, 0.02], np.float32), cfg)
    assert (sure.label, sure.dl_label, sure.is_text) == ("python", "python", True)
    assert sure.score == pytest.approx(0.9)
    low_bin = label_from_scores(np.array([0.1, 0.45, 0.4, 0.05]), cfg)
    assert (low_bin.label, low_bin.dl_label) == ("unknown", "png")
    over = label_from_scores(np.array([0.0, 0.0, 0.99, 0.01]), cfg)
    assert (over.label, over.dl_label) == ("txt", "randomtxt")
    md_low = label_from_scores(np.array([0.0, 0.0, 0.3, 0.7]), cfg)  # per-label threshold 0.75
    assert (md_low.label, md_low.dl_label) == ("txt", "markdown")
    md_ok = label_from_scores(np.array([0.0, 0.0, 0.2, 0.8]), cfg)
    assert md_ok.label == "markdown"
    at_threshold = label_from_scores(np.array([0.0, 0.0, 0.25, 0.75]), cfg)  # >= keeps it
    assert at_threshold.label == "markdown"
    with pytest.raises(ValueError):
        label_from_scores(np.zeros(5), cfg)


# --------------------------------------------------------------------------- parity


def _png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    width, height = 16, 16
    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in (x * 16, y * 16, 128))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("hello.txt", "hello world\n" * 50)
        zf.writestr("data/numbers.csv", "\n".join(f"{i},{i * i}" for i in range(200)))
    return buf.getvalue()


PY_SRC = '''import os
import sys


def main(argv: list[str]) -> int:
    """Print the environment sorted by key."""
    for key, value in sorted(os.environ.items()):
        print(f"{key}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
'''

C_SRC = """#include <stdio.h>
#include <stdlib.h>

static int square(int x) { return x * x; }

int main(int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        printf("%d: %s -> %d\\n", i, argv[i], square(i));
    }
    return EXIT_SUCCESS;
}
"""

HTML_SRC = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Test page</title></head>
<body>
  <h1>Hello</h1>
  <p>This is a <a href="https://example.com">link</a>.</p>
  <ul><li>one</li><li>two</li></ul>
</body>
</html>
"""

MD_SRC = """# Project title

Some *introductory* text with a [link](https://example.com).

## Installation

```bash
pip install something
```

- item one
- item two
"""

SH_SRC = """#!/bin/bash
set -euo pipefail

for f in "$@"; do
    if [[ -f "$f" ]]; then
        echo "file: $f"
    else
        echo "missing: $f" >&2
    fi
done
"""


def _inputs() -> dict[str, bytes]:
    rng = random.Random(1234)
    json_src = (
        "{\n"
        + ",\n".join(
            f'  "key{i}": {{"value": {i}, "name": "item {i}", "ok": true}}' for i in range(20)
        )
        + "\n}\n"
    )
    csv_src = "id,name,score\n" + "".join(f"{i},name{i},{i * 1.5}\n" for i in range(60))
    big_py = "\n".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(400))
    return {
        "script.py": PY_SRC.encode(),
        "prog.c": C_SRC.encode(),
        "data.json": json_src.encode(),
        "page.html": HTML_SRC.encode(),
        "table.csv": csv_src.encode(),
        "readme.md": MD_SRC.encode(),
        "run.sh": SH_SRC.encode(),
        "image.png": _png(),
        "text.gz": gzip.compress(PY_SRC.encode() * 5, mtime=0),
        "archive.zip": _zip(),
        "doc.pdf": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\n"
        b"endobj\n2 0 obj\n<< /Type /Pages /Kids [] /Count 0 >>\nendobj\ntrailer\n"
        b"<< /Root 1 0 R >>\n%%EOF\n",
        "random.bin": bytes(rng.getrandbits(8) for _ in range(3000)),
        "random_small.bin": bytes(rng.getrandbits(8) for _ in range(20)),
        "empty": b"",
        "three.txt": b"abc",
        "three_bin": b"\xff\x00\xfe",
        "seven.txt": b"1234567",
        "whitespace_only": b" \n\t\r\n   \x0b\x0c\n" * 10,
        "whitespace_big": b" " * 5000 + b"print('hi')\n",
        "few_after_strip": b"\n\n\n\n      ok\n\n",
        "big.py": big_py.encode(),
        "padded.py": b"\n\n\t   " + PY_SRC.encode() + b"\n\n   \t\n",
        "accents.txt": ("Ça va? Élégant café, naïve façade, señor, über, déjà vu. " * 8).encode(),
        "latin1.txt": ("Élégant café, déjà vu, naïve. " * 5).encode("latin-1"),
        "zeros.bin": bytes(10000),
        # rst at ~0.77: above medium_confidence_threshold, below rst's own threshold 0.9
        "setext_title.txt": b"Title\n=====\n\nhello world\n",
        "numbers.txt": b"1 2 3 4 5 6 7 8 9\n",
        "elf_like.bin": b"\x7fELF\x02\x01\x01" + bytes(9) + bytes(range(256)) * 20,
    }


@pytest.fixture(scope="module")
def oracle():  # type: ignore[no-untyped-def]
    magika = pytest.importorskip("magika")
    return magika.Magika()


@pytest.fixture(scope="module")
def model_setup():  # type: ignore[no-untyped-def]
    pytest.importorskip("magika")
    ort = pytest.importorskip("onnxruntime")
    model_dir = importlib.resources.files("magika") / "models" / "standard_v3_3"
    config = load_magika_config(Path(str(model_dir / "config.min.json")))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(model_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"]
    )
    return config, session


def test_load_magika_config_defaults(model_setup) -> None:  # type: ignore[no-untyped-def]
    config, session = model_setup
    assert session.get_inputs()[0].shape[1] == config.features_size == 2048
    assert session.get_outputs()[0].shape[1] == len(config.target_labels_space) == 214
    assert config.content_types["txt"].is_text
    with pytest.raises(FileNotFoundError):
        load_magika_config(
            Path(
                str(
                    importlib.resources.files("magika")
                    / "models"
                    / "standard_v3_3"
                    / "config.min.json"
                )
            ),
            Path("/nonexistent/kb.json"),
        )


def test_parity_with_magika(tmp_path: Path, oracle, model_setup) -> None:  # type: ignore[no-untyped-def]
    config, session = model_setup
    inputs = _inputs()
    assert len(inputs) >= 25
    mismatches = []
    used_model = 0
    reasons = set()
    for name, data in inputs.items():
        path = tmp_path / name
        path.write_bytes(data)
        content = path.read_bytes()
        ours = classify_without_model(content, config)
        if ours is None:
            used_model += 1
            row = extract_features(content, config)
            scores = session.run(["target_label"], {"bytes": row[None, :]})[0][0]
            ours = label_from_scores(scores, config)
        want = oracle.identify_bytes(content).prediction
        if want.overwrite_reason.name == "LOW_CONFIDENCE" and want.score >= 0.5:
            reasons.add("per_label_threshold")
        reasons.add(want.overwrite_reason.name)
        got = (ours.label, ours.dl_label, ours.is_text, ours.mime_type, ours.group)
        exp = (
            str(want.output.label),
            str(want.dl.label),
            want.output.is_text,
            want.output.mime_type,
            want.output.group,
        )
        if got != exp or abs(ours.score - want.score) > 1e-5:
            mismatches.append((name, got, ours.score, exp, want.score))
        assert oracle.identify_path(path).prediction.output.label == want.output.label
    assert not mismatches, mismatches
    assert used_model >= 15  # most inputs really went through the model
    # the set exercises every branch of the output-label logic
    assert {"OVERWRITE_MAP", "LOW_CONFIDENCE", "per_label_threshold"} <= reasons
