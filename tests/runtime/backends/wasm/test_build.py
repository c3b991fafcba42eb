"""runtime.backends.wasm.build: guests compile with zig and are cached by what went into them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from runtime.backends.wasm.build import build_guest, guest_names, guests_dir
from runtime.errors import ConfigError, RuntimeFailure
from runtime.settings import Settings


def test_every_guest_folder_is_listed() -> None:
    names = guest_names()
    for name in ("probe", "wasi-nn-ggml", "wasi-nn-onnx"):
        assert name in names


def test_a_built_guest_is_webassembly_and_cached(settings: Settings, probe: Path) -> None:
    assert probe.read_bytes()[:4] == b"\0asm"
    mtime = probe.stat().st_mtime_ns
    again = build_guest("probe", settings)
    assert again == probe and again.stat().st_mtime_ns == mtime


def _copy_guest(root: Path, name: str) -> Path:
    shutil.copytree(guests_dir() / name, root / name)
    shutil.copytree(guests_dir() / "include", root / "include")
    return root / name


@pytest.mark.slow
def test_changing_a_source_makes_a_new_build(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state")
    folder = _copy_guest(tmp_path / "src", "probe")
    first = build_guest("probe", settings, root=tmp_path / "src")
    main = folder / "main.c"
    main.write_text(main.read_text() + "\n/* changed */\n")
    second = build_guest("probe", settings, root=tmp_path / "src")
    assert second != first and second.is_file() and first.is_file()


def test_unknown_guest_is_a_config_error(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="no WASM guest 'nope'"):
        build_guest("nope", settings)


def test_a_compile_error_carries_the_compiler_output(tmp_path: Path) -> None:
    folder = tmp_path / "src" / "broken"
    folder.mkdir(parents=True)
    (folder / "guest.toml").write_text('kind = "c"\n')
    (folder / "main.c").write_text("int main(void) { return undeclared_name; }\n")
    with pytest.raises(RuntimeFailure, match="undeclared_name"):
        build_guest("broken", Settings(state_dir=tmp_path / "state"), root=tmp_path / "src")
