"""The model spec: the bundled config, and errors that name file, model and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from runtime.errors import ConfigError
from runtime.spec.model import ArtifactFormat, RuntimeName, Task, load_config

GOOD = {
    "name": "tiny",
    "task": "chat",
    "artifacts": {"gguf": "model.gguf"},
    "runtimes": ["llama"],
}


def write(tmp_path: Path, models: object) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": models}))
    return path


def test_bundled_models_are_the_contract() -> None:
    config = load_config()
    names = {m.name: m for m in config.models}
    assert set(names) == {"smollm2", "gemma3-270m", "minilm", "magika"}
    assert names["smollm2"].task is Task.CHAT
    assert names["gemma3-270m"].task is Task.COMPLETION
    assert names["minilm"].task is Task.EMBEDDING
    # Every bundled model has its native form first and a WASM form over the same files.
    native = {"smollm2": "llama", "gemma3-270m": "llama", "minilm": "onnx", "magika": "onnx"}
    for name, runtime in native.items():
        assert names[name].runtimes == [RuntimeName(runtime), RuntimeName.WASM], name
        assert ArtifactFormat.WASM in names[name].artifacts, name
    assert ArtifactFormat.SAFETENSORS in names["minilm"].artifacts
    assert names["magika"].task is Task.CLASSIFY


def test_a_good_file_loads_with_knative_names(tmp_path: Path) -> None:
    spec = {**GOOD, "scaling": {"min-scale": 1, "window": "30s"}, "latency": {"p95_ms": 50}}
    config = load_config(write(tmp_path, [spec]))
    model = config.get("tiny")
    assert model is not None and model.scaling.min_scale == 1 and model.scaling.window == 30
    assert config.base_dir == tmp_path.resolve()


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        (
            {"task": "translate"},
            "task",
            "'chat', 'completion', 'embedding', 'classify' or 'tensor'",
        ),
        ({"runtimes": ["tpu"]}, "runtimes.0", "'wasm', 'onnx' or 'llama'"),
        (
            {"runtimes": ["onnx"]},
            "(the model itself)",
            "runtime 'onnx' needs a onnx or safetensors",
        ),
        ({"runtimes": []}, "(the model itself)", "a model needs runtimes (and artifacts), or"),
        ({"artifacts": {}}, "(the model itself)", "needs at least one artifact"),
        ({"endpoint": "https://x:1"}, "endpoint", "should match pattern"),
        ({"runtimes": ["llama", "llama"]}, "runtimes", "each runtime may be listed once"),
        ({"artifacts": {"pt": "x.pt"}}, "artifacts.pt.[key]", "'gguf', 'onnx', 'safetensors' or"),
        ({"scaling": {"window": "5s"}}, "scaling.window", "greater than or equal to 6"),
        ({"scaling": {"min-scale": 2, "max-scale": 1}}, "scaling", "max-scale (1) must be >="),
        ({"latency": {"p95_ms": 0}}, "latency.p95_ms", "greater than 0"),
        ({"options": {"parallel": 0}}, "options.parallel", "greater than or equal to 1"),
        ({"colour": "blue"}, "colour", "Extra inputs are not permitted"),
        ({"name": "Bad_Name"}, "name", "should match pattern"),
    ],
)
def test_bad_field_names_file_model_and_field(
    tmp_path: Path, change: dict[str, object], field: str, fragment: str
) -> None:
    path = write(tmp_path, [GOOD, {**GOOD, "name": "second", **change}])
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = info.value.message
    assert str(path) in message
    expected_model = repr(change.get("name", "second"))
    assert f"model {expected_model}" in message
    assert f"field {field!r}" in message
    assert fragment in message


def test_a_model_served_from_an_endpoint_needs_no_artifacts(tmp_path: Path) -> None:
    spec = {"name": "remote", "task": "tensor", "endpoint": "http://10.0.0.7:8080"}
    model = load_config(write(tmp_path, [spec])).get("remote")
    assert model is not None and model.endpoint == "http://10.0.0.7:8080"
    assert model.runtimes == [] and model.artifacts == {}


def test_duplicate_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model name 'tiny' is used twice"):
        load_config(write(tmp_path, [GOOD, GOOD]))


def test_classify_needs_preprocess(tmp_path: Path) -> None:
    spec = {"name": "c", "task": "classify", "artifacts": {"onnx": "m.onnx"}, "runtimes": ["onnx"]}
    with pytest.raises(ConfigError, match=r"options\.preprocess"):
        load_config(write(tmp_path, [spec]))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("models: [", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping"),
        ("models: []\n", "at least 1 item"),
    ],
)
def test_unreadable_files(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment) as info:
        load_config(path)
    assert str(path) in info.value.message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "none.yaml")
