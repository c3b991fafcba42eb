"""Model specs, runtimes, and the single-model worker.

Imports nothing from ``gateway`` or ``knative``; runtimes load lazily (see
``runtime.backend``), so importing this package needs neither llama.cpp nor CUDA.
"""

from runtime.backend import Runtime, create_runtime
from runtime.errors import EdgeInferError
from runtime.scaling import ScalingRule
from runtime.settings import Settings
from runtime.spec import ModelConfig, ModelSpec, Task, load_config

__all__ = [
    "EdgeInferError",
    "ModelConfig",
    "ModelSpec",
    "Runtime",
    "ScalingRule",
    "Settings",
    "Task",
    "create_runtime",
    "load_config",
]
