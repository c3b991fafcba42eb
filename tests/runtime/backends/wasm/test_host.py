"""runtime.backends.wasm.host: the sandbox of one call, the precompiled cache, hostile guests."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import wasmtime

from runtime.backends.wasm.host import Sandbox, Template, WasmHost
from runtime.errors import DeadlineExceeded, GuestLinkError, GuestOutOfMemory, GuestTrap
from runtime.settings import Settings


@pytest.fixture(scope="module")
def template(host: WasmHost, probe: Path) -> Template:
    return host.template(host.module(probe))


def _run(template: Template, *args: str, **kw: object) -> tuple[int, str, str]:
    out: list[bytes] = []
    err: list[bytes] = []
    result = template.run(Sandbox(args=args, stdout=out.append, stderr=err.append, **kw))  # type: ignore[arg-type]
    return result.exit_code, b"".join(out).decode(), b"".join(err).decode()


def test_args_env_stdin_and_exit_code_reach_the_guest(template: Template) -> None:
    code, out, err = _run(
        template, "echo", "a b", "--c", env={"PROBE_ENV": "x", "PROBE_EXIT": "7"}, stdin=b"hi"
    )
    assert code == 7
    assert "arg[0]=a b\narg[1]=--c\n" in out
    assert "env=x\n" in out and "stdin=hi\n" in out
    assert "home=(unset)" in out  # the host's environment does not leak in
    assert err == "probe: echo done\n"


def test_the_precompiled_module_is_reused_by_a_new_host(tmp_path: Path, probe: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    first = WasmHost(settings)
    first.module(probe)
    [cached] = list((tmp_path / "wasm" / "precompiled").glob("module-*.cwasm"))
    mtime = cached.stat().st_mtime_ns
    second = WasmHost(settings)
    module = second.module(probe)
    assert cached.stat().st_mtime_ns == mtime  # deserialized, not compiled and rewritten
    code, _, _ = _run(second.template(module), "echo")
    assert code == 0


def test_a_corrupt_cache_file_is_compiled_again(tmp_path: Path, probe: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    WasmHost(settings).module(probe)
    [cached] = list((tmp_path / "wasm" / "precompiled").glob("module-*.cwasm"))
    cached.write_bytes(b"not machine code")
    host = WasmHost(settings)
    code, _, _ = _run(host.template(host.module(probe)), "echo")
    assert code == 0 and cached.read_bytes() != b"not machine code"


def test_endless_loop_ends_at_the_deadline(template: Template) -> None:
    with pytest.raises(DeadlineExceeded, match=r"deadline of 0\.3 s"):
        _run(template, "loop", timeout_s=0.3)
    assert _run(template, "echo")[0] == 0


def test_memory_bomb_is_a_clear_error(template: Template) -> None:
    with pytest.raises(GuestOutOfMemory, match="memory limit of 32 MiB"):
        _run(template, "membomb", max_memory_bytes=32 << 20)
    assert _run(template, "echo")[0] == 0


def test_a_trap_reports_its_message(template: Template) -> None:
    with pytest.raises(GuestTrap, match="unreachable"):
        _run(template, "trap")
    assert _run(template, "echo")[0] == 0


def test_a_missing_import_fails_at_load(host: WasmHost, tmp_path: Path) -> None:
    wasm = wasmtime.wat2wasm(
        '(module (import "evil_host" "open_socket" (func (param i32) (result i32)))'
        ' (memory (export "memory") 1) (func (export "_start")))'
    )
    (tmp_path / "evil.wasm").write_bytes(wasm)
    module = host.module(tmp_path / "evil.wasm")
    with pytest.raises(GuestLinkError, match="evil_host::open_socket"):
        host.template(module)


def test_not_webassembly_is_a_link_error(host: WasmHost, tmp_path: Path) -> None:
    (tmp_path / "x.wasm").write_bytes(b"\0asm garbage")
    with pytest.raises(GuestLinkError, match="not a valid WebAssembly module"):
        host.module(tmp_path / "x.wasm")


def test_the_guest_sees_only_its_read_only_folder(template: Template, tmp_path: Path) -> None:
    (tmp_path / "model.txt").write_text("weights\n")
    mounts = [(tmp_path, "/model")]
    assert _run(template, "read", "/model/model.txt", mounts=mounts)[1] == (
        "read /model/model.txt: weights\n"
    )
    code, out, _ = _run(template, "write", "/model/new.txt", mounts=mounts)
    assert code == 1 and not (tmp_path / "new.txt").exists(), out
    code, out, _ = _run(template, "write", "/model/model.txt", mounts=mounts)
    assert code == 1 and (tmp_path / "model.txt").read_text() == "weights\n", out
    for path in ("/model/../escape.txt", "/tmp/escape.txt", "/etc/passwd"):
        code, out, _ = _run(template, "write", path, mounts=mounts)
        assert code == 1, out
    assert not (tmp_path.parent / "escape.txt").exists()
    code, out, _ = _run(template, "read", "/etc/passwd", mounts=mounts)
    assert code == 1 and "root:" not in out
    assert _run(template, "echo")[0] == 0


def test_the_gil_is_released_while_a_guest_runs(template: Template) -> None:
    done = threading.Event()
    counter = 0

    def guest() -> None:
        try:
            _run(template, "loop", timeout_s=0.5)
        except DeadlineExceeded:
            pass
        done.set()

    thread = threading.Thread(target=guest)
    thread.start()
    while not done.is_set():
        counter += 1
    thread.join()
    # If the guest held the GIL, this thread could not count at all while it ran.
    assert counter > 10_000
