"""The import contracts in pyproject.toml ([tool.importlinter]) hold, and the checker
really fails when one is broken (run on a copy of the tree with a bad import added)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT), "--config", str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def copy_tree(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("runtime", "gateway", "knative"):
        shutil.copytree(ROOT / package, dest / package, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


@pytest.fixture(scope="module")
def checker() -> Path:
    if not LINT.exists():
        pytest.fail(f"import-linter is not installed beside {sys.executable} (the test extra)")
    return LINT


def test_the_contracts_hold(checker: Path) -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "bad_import", "broken"),
    [
        # spec is below scaling: the model spec may not reach up into the supervisor.
        ("runtime/spec/model.py", "import runtime.scaling.supervisor", "one-way layers"),
        # api and backends are independent of each other.
        ("runtime/backends/onnx.py", "import runtime.api.openai", "one-way layers"),
        # runtime never imports the gateway.
        ("runtime/worker/app.py", "import gateway.metrics", "runtime imports neither"),
    ],
)
def test_a_bad_import_breaks_a_contract(
    checker: Path, tmp_path: Path, module: str, bad_import: str, broken: str
) -> None:
    tree = copy_tree(tmp_path)
    target = tree / module
    target.write_text(target.read_text() + f"\n{bad_import}  # noqa\n")
    result = lint(tree)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout
    assert broken in result.stdout.split("Broken contracts")[1]
    assert bad_import.split()[1] in result.stdout
