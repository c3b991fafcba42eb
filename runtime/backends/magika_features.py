"""Magika pre- and post-processing, independent of the ``magika`` package's internals.

edgeinfer runs Magika's ONNX model (``model.onnx``: input ``bytes`` int32 ``[N, beg+end]``,
output ``target_label`` float ``[N, len(target_labels_space)]``) in its own onnxruntime
session. This module reproduces, from the model's ``config.min.json`` and Magika's
``content_types_kb.min.json``, what ``magika.Magika`` (1.0.x, model ``standard_v3_3``,
feature extraction v2, ``PredictionMode.HIGH_CONFIDENCE``) does around the model:

1. :func:`classify_without_model` answers the cases Magika answers without the model:
   empty content -> ``empty``; content shorter than ``min_file_size_for_dl``, or whose
   whitespace-stripped beginning has fewer than ``min_file_size_for_dl`` bytes ->
   ``txt`` if its first ``block_size`` bytes decode as UTF-8, else ``unknown``.
2. Otherwise :func:`extract_features` builds the model row and, after inference,
   :func:`label_from_scores` turns one row of scores into the final label (argmax,
   ``overwrite_map``, per-label ``thresholds`` with ``medium_confidence_threshold`` as
   default, and the ``txt``/``unknown`` fallback by ``is_text`` when the score is low).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np

from runtime.spec.types import Tensor, TensorSpec

__all__ = [
    "OUTPUT_SPECS",
    "ContentTypeInfo",
    "MagikaConfig",
    "MagikaLabel",
    "classify",
    "classify_without_model",
    "extract_features",
    "label_from_scores",
    "label_tensors",
    "load_magika_config",
]

UNDEFINED = "undefined"

#: The OIP v2 outputs of a classification, one entry per input (:func:`label_tensors`).
OUTPUT_SPECS = (
    TensorSpec("label", "BYTES", (-1,)),
    TensorSpec("score", "FP32", (-1,)),
    TensorSpec("dl_label", "BYTES", (-1,)),
    TensorSpec("mime_type", "BYTES", (-1,)),
)
"""``dl_label`` reported when the model was not run."""


@dataclass(frozen=True)
class ContentTypeInfo:
    """Metadata of one content type, with Magika's defaults applied for missing values."""

    is_text: bool
    mime_type: str
    group: str
    description: str


@dataclass(frozen=True)
class MagikaConfig:
    """Everything needed to reproduce Magika's pre/post-processing for one model.

    ``target_labels_space[i]`` is the label of column ``i`` of the model's output.
    ``content_types`` maps every label Magika can report (model labels plus ``txt``,
    ``unknown``, ``empty``, ``undefined``, ...) to its :class:`ContentTypeInfo`.
    """

    beg_size: int
    end_size: int
    block_size: int
    padding_token: int
    min_file_size_for_dl: int
    medium_confidence_threshold: float
    target_labels_space: tuple[str, ...]
    thresholds: Mapping[str, float] = field(hash=False)
    overwrite_map: Mapping[str, str] = field(hash=False)
    content_types: Mapping[str, ContentTypeInfo] = field(hash=False)

    @property
    def features_size(self) -> int:
        """Length of one model input row (``beg_size + end_size``)."""
        return self.beg_size + self.end_size


@dataclass(frozen=True)
class MagikaLabel:
    """Magika's answer for one input.

    ``label`` is the final output label (``prediction.output.label`` in Magika),
    ``dl_label`` the model's argmax label or ``"undefined"`` when the model was not run,
    ``score`` the model's score for ``dl_label`` (1.0 when the model was not run).
    ``is_text``, ``mime_type``, ``group`` and ``description`` describe ``label``.
    """

    label: str
    dl_label: str
    score: float
    is_text: bool
    mime_type: str
    group: str
    description: str


def _default_kb_path(model_config: Path) -> Path:
    # <pkg>/models/<model_name>/config.min.json -> <pkg>/config/content_types_kb.min.json
    return model_config.parent.parent.parent / "config" / "content_types_kb.min.json"


def _load_content_types(path: Path) -> dict[str, ContentTypeInfo]:
    out: dict[str, ContentTypeInfo] = {}
    for name, info in json.loads(path.read_text(encoding="utf-8")).items():
        is_text = bool(info["is_text"])
        default_mime = "text/plain" if is_text else "application/octet-stream"
        out[name] = ContentTypeInfo(
            is_text=is_text,
            mime_type=info.get("mime_type") or default_mime,
            group=info.get("group") or "unknown",
            description=info.get("description") or name,
        )
    return out


def load_magika_config(model_config: Path, content_types_kb: Path | None = None) -> MagikaConfig:
    """Read a Magika model's ``config.min.json`` and the content types knowledge base.

    ``content_types_kb`` defaults to ``config/content_types_kb.min.json`` two levels above
    the model folder (the layout of the ``magika`` package). Raises ``FileNotFoundError``
    when a file is missing and ``ValueError`` when the config asks for features this
    module does not implement (``mid_size``, ``use_inputs_at_offsets``) or is inconsistent.
    """
    model_config = Path(model_config)
    raw = json.loads(model_config.read_text(encoding="utf-8"))
    kb_path = Path(content_types_kb) if content_types_kb else _default_kb_path(model_config)
    if not kb_path.is_file():
        raise FileNotFoundError(f"Magika content types knowledge base not found: {kb_path}")
    if raw.get("mid_size", 0) != 0 or raw.get("use_inputs_at_offsets", False):
        raise ValueError(f"{model_config}: mid_size / use_inputs_at_offsets are not supported")
    config = MagikaConfig(
        beg_size=int(raw["beg_size"]),
        end_size=int(raw["end_size"]),
        block_size=int(raw["block_size"]),
        padding_token=int(raw["padding_token"]),
        min_file_size_for_dl=int(raw["min_file_size_for_dl"]),
        medium_confidence_threshold=float(raw["medium_confidence_threshold"]),
        target_labels_space=tuple(str(x) for x in raw["target_labels_space"]),
        thresholds=MappingProxyType({str(k): float(v) for k, v in raw["thresholds"].items()}),
        overwrite_map=MappingProxyType({str(k): str(v) for k, v in raw["overwrite_map"].items()}),
        content_types=MappingProxyType(_load_content_types(kb_path)),
    )
    if not (0 < config.beg_size < config.block_size and 0 <= config.end_size < config.block_size):
        raise ValueError(f"{model_config}: need 0 < beg_size, end_size < block_size")
    if not 0 < config.min_file_size_for_dl <= config.beg_size:
        raise ValueError(f"{model_config}: need 0 < min_file_size_for_dl <= beg_size")
    needed = {*config.target_labels_space, *config.overwrite_map.values()}
    missing = needed.union({"txt", "unknown", "empty", UNDEFINED}) - config.content_types.keys()
    if missing:
        raise ValueError(f"{kb_path}: no entry for content types {sorted(missing)}")
    return config


def _beg_ints(content: bytes, config: MagikaConfig) -> np.ndarray:
    beg = np.full(config.beg_size, config.padding_token, dtype=np.int32)
    head = content[: config.block_size].lstrip()[: config.beg_size]
    beg[: len(head)] = np.frombuffer(head, dtype=np.uint8)
    return beg


def extract_features(content: bytes, config: MagikaConfig) -> np.ndarray:
    """Return the model input row for ``content`` (the whole file): int32 ``[beg+end]``.

    ``beg``: the first ``min(block_size, len)`` bytes, ``bytes.lstrip()``-ed, first
    ``beg_size`` of them, padded at the end with ``padding_token``. ``end``: the last
    ``min(block_size, len)`` bytes, ``bytes.rstrip()``-ed, last ``end_size`` of them,
    padded at the beginning. The row is ``beg`` followed by ``end``. Any length works
    (empty content gives all padding); whether the model should run at all is
    :func:`classify_without_model`'s decision.
    """
    end = np.full(config.end_size, config.padding_token, dtype=np.int32)
    if config.end_size > 0:
        tail = content[len(content) - min(config.block_size, len(content)) :].rstrip()
        tail = tail[max(0, len(tail) - config.end_size) :]
        if tail:
            end[config.end_size - len(tail) :] = np.frombuffer(tail, dtype=np.uint8)
    return np.concatenate([_beg_ints(content, config), end])


def _make_label(label: str, dl_label: str, score: float, config: MagikaConfig) -> MagikaLabel:
    info = config.content_types[label]
    return MagikaLabel(
        label=label,
        dl_label=dl_label,
        score=score,
        is_text=info.is_text,
        mime_type=info.mime_type,
        group=info.group,
        description=info.description,
    )


def classify_without_model(content: bytes, config: MagikaConfig) -> MagikaLabel | None:
    """Answer the inputs Magika classifies without its model, or return ``None``.

    Empty content -> ``empty``. Content shorter than ``min_file_size_for_dl`` bytes, or
    whose feature ``beg[min_file_size_for_dl - 1]`` is padding (too few bytes left after
    stripping leading whitespace from the first block) -> ``txt`` when its first
    ``block_size`` bytes decode as UTF-8, ``unknown`` otherwise. These answers have
    ``dl_label == "undefined"`` and ``score == 1.0``. ``None`` means: run the model on
    :func:`extract_features` and call :func:`label_from_scores`.
    """
    if not content:
        return _make_label("empty", UNDEFINED, 1.0, config)
    if len(content) >= config.min_file_size_for_dl:
        if _beg_ints(content, config)[config.min_file_size_for_dl - 1] != config.padding_token:
            return None
        content = content[: config.block_size]
    try:
        content.decode("utf-8")
        label = "txt"
    except UnicodeDecodeError:
        label = "unknown"
    return _make_label(label, UNDEFINED, 1.0, config)


def label_from_scores(scores: np.ndarray, config: MagikaConfig) -> MagikaLabel:
    """Turn one row of model scores (shape ``[len(target_labels_space)]``) into a label.

    ``dl_label`` is the label of the first maximal score and ``score`` that score. The
    output label is ``overwrite_map.get(dl_label, dl_label)`` when ``score`` reaches
    ``thresholds.get(dl_label, medium_confidence_threshold)`` (Magika's high-confidence
    mode); otherwise it is ``txt`` or ``unknown`` according to whether the overwritten
    label is text. Raises ``ValueError`` on a row of the wrong shape.
    """
    row = np.asarray(scores)
    if row.shape != (len(config.target_labels_space),):
        raise ValueError(
            f"expected scores of shape ({len(config.target_labels_space)},), got {row.shape}"
        )
    index = int(np.argmax(row))
    score = float(row[index])
    dl_label = config.target_labels_space[index]
    label = config.overwrite_map.get(dl_label, dl_label)
    if score < config.thresholds.get(dl_label, config.medium_confidence_threshold):
        label = "txt" if config.content_types[label].is_text else "unknown"
    return _make_label(label, dl_label, score, config)


def classify(
    items: list[bytes], config: MagikaConfig, scores: Callable[[np.ndarray], np.ndarray]
) -> list[MagikaLabel]:
    """Magika's answer for each item: :func:`classify_without_model` where it answers,
    else ``scores`` (int32 features ``[n, beg+end]`` -> scores ``[n, labels]``, the model,
    run once for all such items) and :func:`label_from_scores`."""
    labels: list[MagikaLabel | None] = [classify_without_model(item, config) for item in items]
    todo = [i for i, label in enumerate(labels) if label is None]
    if todo:
        features = np.stack([extract_features(items[i], config) for i in todo]).astype(np.int32)
        rows = scores(features)
        for row, i in enumerate(todo):
            labels[i] = label_from_scores(rows[row], config)
    return [label for label in labels if label is not None]


def label_tensors(labels: list[MagikaLabel]) -> list[Tensor]:
    """The OIP v2 output tensors of :data:`OUTPUT_SPECS` for ``labels``."""

    def text(values: list[str]) -> np.ndarray:
        return np.array([v.encode() for v in values], dtype=object)

    return [
        Tensor("label", "BYTES", text([x.label for x in labels])),
        Tensor("score", "FP32", np.array([x.score for x in labels], dtype=np.float32)),
        Tensor("dl_label", "BYTES", text([x.dl_label for x in labels])),
        Tensor("mime_type", "BYTES", text([x.mime_type for x in labels])),
    ]
