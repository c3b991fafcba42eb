"""Each fact stated once (issue 13 point 4), checked on the source tree: every error
class lives in ``runtime/errors.py`` and is drawn in its docstring's tree, pydantic
config models share the one ``Frozen`` base, and the gateway takes its ASGI types from
starlette instead of defining its own."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import runtime.errors as errors
from runtime.spec.frozen import Frozen

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "gateway", "knative")
ERRORS = ROOT / "runtime" / "errors.py"
# An exception class outside runtime/errors.py, and why (a wasi-nn status code carried to
# the host function's return value, never shown to a caller: see errors.py's docstring).
ELSEWHERE = {("runtime/backends/wasm/wasi_nn/types.py", "NnError")}
ASGI_NAMES = {"Scope", "Receive", "Send", "Message", "ASGIApp", "App"}


def sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def exception_classes(path: Path) -> list[str]:
    """Classes in ``path`` whose base is an exception (by the base's name)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", "")
                if name.endswith(("Error", "Exception")) or name in _error_names():
                    found.append(node.name)
                    break
    return found


def _error_names() -> set[str]:
    return {n for n, v in vars(errors).items() if isinstance(v, type)}


def test_every_exception_class_lives_in_the_errors_module() -> None:
    strays = [
        (str(p.relative_to(ROOT)), name)
        for p in sources()
        if p != ERRORS
        for name in exception_classes(p)
    ]
    assert set(strays) == ELSEWHERE, strays


def test_the_docstring_tree_draws_every_error_class() -> None:
    doc = errors.__doc__ or ""
    classes = [
        c
        for c in vars(errors).values()
        if inspect.isclass(c) and issubclass(c, errors.EdgeInferError)
    ]
    assert len(classes) > 20
    for cls in classes:
        line = next((ln for ln in doc.splitlines() if f"── {cls.__name__} (" in ln), None)
        if cls is errors.EdgeInferError:
            assert "    EdgeInferError (" in doc
            continue
        assert line is not None, f"{cls.__name__} is missing from the tree"
        # Drawn under its parent: the parent's line is the nearest one less indented.
        lines = doc.splitlines()
        at = lines.index(line)
        depth = line.index("──")
        parent = next(
            ln
            for ln in reversed(lines[:at])
            if ("──" in ln and ln.index("──") < depth) or ln.strip().startswith("EdgeInferError")
        )
        assert f"{cls.__bases__[0].__name__} (" in parent, (cls.__name__, parent)
        assert cls.__name__ in errors.__all__


@pytest.mark.parametrize("module", ["gateway/auth.py", "gateway/config.py"])
def test_config_models_use_the_one_frozen_base(module: str) -> None:
    tree = ast.parse((ROOT / module).read_text())
    models = [
        n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name.endswith("Config")
    ]
    assert models
    for model in models:
        assert [ast.unparse(b) for b in model.bases] == ["Frozen"], model.name
    assert "ConfigDict" not in (ROOT / module).read_text()


def test_frozen_config_models_refuse_typos_and_changes() -> None:
    from gateway.config import GatewayConfig

    assert issubclass(GatewayConfig, Frozen)
    with pytest.raises(ValueError, match="Extra inputs"):
        GatewayConfig.model_validate({"srever": {}})


def test_the_gateway_defines_no_asgi_aliases_of_its_own() -> None:
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            targets = (
                [t for t in node.targets if isinstance(t, ast.Name)]
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                else []
            )
            for target in targets:
                assert isinstance(target, ast.Name)
                assert target.id not in ASGI_NAMES, f"{path.name} defines {target.id}"


# What only runtime/api may write: an OpenAI model object, an error body, an SSE frame.
OPENAI_SHAPES = {"owned_by", "data: ", b"data: ", "[DONE]", b"[DONE]"}


def test_the_gateway_builds_no_openai_shape_by_hand() -> None:
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str | bytes):
                assert not any(
                    isinstance(s, type(node.value)) and s in node.value  # type: ignore[operator]
                    for s in OPENAI_SHAPES
                ), f"{path.name}:{node.lineno} writes {node.value!r}"
            if isinstance(node, ast.Dict):
                keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
                assert not keys & {"error", "owned_by"}, f"{path.name}:{node.lineno}"
