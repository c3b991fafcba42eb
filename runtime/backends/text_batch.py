"""Texts -> the padded token batch a BERT-family encoder takes, shared by the runtimes that
tokenise on the host (``onnx``, and the ``wasm`` runtime's pure-compute engine)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from runtime.errors import ContextOverflow

__all__ = ["TokenBatch", "encode_texts", "shared_tokenizer"]

_tokenizers: dict[tuple[str, int, int], Tokenizer] = {}
_tokenizers_lock = threading.Lock()


def shared_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer of ``path`` without padding or truncation, one per file per process
    (keyed by path, size and modification time): many models over the same files, as in
    the WASM host, share one (about 7 MB for MiniLM's). Only ``encode`` is called on it,
    which is safe from several threads."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _tokenizers_lock:
        found = _tokenizers.get(key)
        if found is None:
            found = Tokenizer.from_file(str(path))
            found.no_padding()
            found.no_truncation()
            _tokenizers[key] = found
        return found


@dataclass(frozen=True)
class TokenBatch:
    """int64 ``[batch, sequence]`` arrays, padded with zeros to the longest input."""

    ids: np.ndarray
    mask: np.ndarray
    types: np.ndarray

    @property
    def tokens(self) -> int:
        return int(self.mask.sum())


def encode_texts(
    tokenizer: Tokenizer, texts: list[str], *, limit: int, truncate: bool, model: str
) -> TokenBatch:
    """Tokenise ``texts`` (the tokenizer's own special tokens included). An input longer
    than ``limit`` tokens raises :class:`ContextOverflow`, or with ``truncate`` is cut to
    ``limit`` keeping its final token ([SEP])."""
    encodings = tokenizer.encode_batch(texts)
    lengths = [len(e.ids) for e in encodings]
    if not truncate:
        for i, n in enumerate(lengths):
            if n > limit:
                raise ContextOverflow(
                    f"input {i} is {n} tokens; model {model!r} takes at most "
                    f"{limit} tokens per input (shorten it, or set options.truncate)"
                )
    seq = min(max(lengths), limit)
    ids = np.zeros((len(texts), seq), dtype=np.int64)
    mask = np.zeros((len(texts), seq), dtype=np.int64)
    types = np.zeros((len(texts), seq), dtype=np.int64)
    for row, enc in enumerate(encodings):
        n = min(len(enc.ids), seq)
        if n < len(enc.ids):  # truncation keeps the final [SEP]
            ids[row, : n - 1] = enc.ids[: n - 1]
            ids[row, n - 1] = enc.ids[-1]
        else:
            ids[row, :n] = enc.ids
        mask[row, :n] = 1
        types[row, :n] = enc.type_ids[:n]
    return TokenBatch(ids, mask, types)
