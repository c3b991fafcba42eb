"""``edgeinfer serve`` at start: the fd soft limit raised, and the ``gateway: server:``
section's bounds validated and in force on the real server."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.config import ServerConfig, gateway_config
from gateway.http1 import connection_cap
from gateway.server import raise_fd_limit
from runtime.errors import ConfigError
from runtime.spec.model import ModelConfig
from tests.conftest import ROOT, free_port

INF = resource.RLIM_INFINITY
ONE_MODEL = [{"name": "outside", "task": "tensor", "endpoint": "http://127.0.0.1:9"}]


@pytest.mark.parametrize(
    ("soft", "hard", "asked", "result"),
    [
        (256, 4096, (4096, 4096), 4096),  # raised to the hard limit
        (1024, INF, (1 << 20, INF), 1 << 20),  # an unlimited hard limit: Linux's nr_open
        (4096, 4096, None, 4096),  # already there
        (INF, INF, None, INF),
    ],
)
def test_raise_fd_limit_asks_for_the_hard_limit(
    soft: int, hard: int, asked: tuple[int, int] | None, result: int
) -> None:
    calls: list[tuple[int, int]] = []
    got = raise_fd_limit(lambda _: (soft, hard), lambda _, limits: calls.append(limits))
    assert got == result and calls == ([asked] if asked else [])


def test_raise_fd_limit_keeps_the_soft_limit_when_refused() -> None:
    def refuse(_: int, __: tuple[int, int]) -> None:
        raise ValueError("not allowed")

    assert raise_fd_limit(lambda _: (256, INF), refuse) == 256


def test_raise_fd_limit_raises_this_process_limit_for_real() -> None:
    code = (
        "import resource\n"
        "from gateway.server import raise_fd_limit\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))\n"
        "got = raise_fd_limit()\n"
        "print(got, resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    got, now, hard = (int(v) for v in out)
    assert got == now > 64
    assert now == (hard if hard != INF else 1 << 20)


def test_the_connection_cap_follows_the_fd_limit() -> None:
    assert connection_cap(256) == 96  # (256 - 64 reserved) / 2: each may proxy upstream
    assert connection_cap(1 << 20) == ((1 << 20) - 64) // 2
    assert connection_cap(80) == 16  # never below a floor
    assert connection_cap(INF) == connection_cap(1 << 20)


@pytest.mark.parametrize(
    ("section", "fragment"),
    [
        ({"head_timeout_seconds": 0}, "server.head_timeout_seconds"),
        ({"body_timeout_seconds": 7200}, "server.body_timeout_seconds"),
        ({"max_connections": 0}, "server.max_connections"),
        ({"max_head_bytes": 16}, "server.max_head_bytes"),
        ({"max_headers": 5000}, "server.max_headers"),
        ({"slowloris": True}, "server.slowloris"),
    ],
)
def test_out_of_bounds_server_settings_are_config_errors(
    section: dict[str, object], fragment: str
) -> None:
    config = ModelConfig.model_validate({"models": ONE_MODEL, "gateway": {"server": section}})
    with pytest.raises(ConfigError, match=fragment):
        gateway_config(config)


def test_the_defaults_are_a_deployment_s() -> None:
    limits = gateway_config(ModelConfig.model_validate({"models": ONE_MODEL})).server
    assert limits == ServerConfig()
    assert (limits.head_timeout_seconds, limits.body_timeout_seconds) == (10.0, 30.0)
    assert (limits.max_head_bytes, limits.max_headers, limits.max_connections) == (
        64 * 1024,
        100,
        None,
    )


@pytest.mark.slow
def test_serve_raises_its_fd_limit_and_applies_the_server_section(tmp_path: Path) -> None:
    """A real ``edgeinfer serve`` started with a soft limit of 256 and a cap of 2."""
    upstream = free_port()
    config = {
        "models": [
            {"name": "outside", "task": "tensor", "endpoint": f"http://127.0.0.1:{upstream}"}
        ],
        "gateway": {"server": {"max_connections": 2, "head_timeout_seconds": 30}},
    }
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()

    def low_limit() -> None:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        )

    env = os.environ | {"EDGEINFER_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", str(port)],
        cwd=ROOT,
        env=env,
        preexec_fn=low_limit,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/live").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        soft = next(line for line in limits.splitlines() if "open files" in line).split()[3]
        assert int(soft) > 256
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as a,
            socket.create_connection(("127.0.0.1", port), timeout=5) as b,
        ):
            a.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n")
            b.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n")
            assert a.recv(4096).startswith(b"HTTP/1.1 200")
            assert b.recv(4096).startswith(b"HTTP/1.1 200")
            with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                assert c.recv(4096).startswith(b"HTTP/1.1 503")
    finally:
        proc.terminate()
        proc.wait(30)
