"""A real ``edgeinfer serve`` gateway in its own process on a loopback port, with keys.

Used where the process matters (its RSS, its file descriptors, its own event loop):
the schemathesis run and the hostile-input suite and bench.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from runtime.scaling.replica import free_port

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "sk-suite-user-0123456789"
ADMIN_KEY = "sk-suite-admin-0123456789"


@dataclass
class ServedGateway:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def rss_bytes(self) -> int:
        """The gateway process's resident set (Linux ``/proc``)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc status")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def bundled_models(*names: str) -> list[dict[str, Any]]:
    """Entries of the bundled config by name, each with one replica at most."""
    from runtime.spec.model import bundled_config_path

    raw = yaml.safe_load(bundled_config_path().read_text())
    picked = [m for m in raw["models"] if m["name"] in names]
    assert {m["name"] for m in picked} == set(names), names
    for m in picked:
        m.setdefault("scaling", {})["max-scale"] = 1
    return picked


def start_gateway(
    log_dir: Path,
    models: list[dict[str, Any]],
    gateway: dict[str, Any] | None = None,
    server: str = "ours",
) -> ServedGateway:
    """``edgeinfer serve --config`` with one user key (all models) and an admin key;
    ``server="uvicorn-h11"`` serves the same gateway app with uvicorn's h11 parser
    instead (the reference column of ``bench/hostile.py``)."""
    port = free_port()
    config = log_dir / f"gateway-{port}.yaml"
    settings = {
        "auth": {
            "api_keys": [{"name": "suite", "key": API_KEY}],
            "admin_key": ADMIN_KEY,
            # The suite's own keyless attacks come from 127.0.0.1 too; the flood test
            # sends from 127.0.0.2, far past this.
            "failed_auth_burst": 100,
        },
        **(gateway or {}),
    }
    config.write_text(yaml.safe_dump({"models": models, "gateway": settings}))
    log = log_dir / f"gateway-{port}.log"
    cmd = [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port)]
    if server == "uvicorn-h11":
        cmd = [sys.executable, "-m", "tests.gateway.served", str(config), str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={"EDGEINFER_MEASURE_MISSING": "0", **os.environ},
        )
    served = ServedGateway(f"http://127.0.0.1:{port}", port, proc, log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}:\n{served.output()}")
        try:
            if httpx.get(f"{served.url}/v2/health/live", timeout=2).status_code == 200:
                return served
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    served.stop()
    raise RuntimeError(f"gateway not live in 120s:\n{served.output()}")


def run_uvicorn_h11(config: Path, port: int) -> None:
    """The gateway app of ``config`` on uvicorn with ``http="h11"``, loopback."""
    import uvicorn

    from gateway.server import build_gateway
    from runtime.settings import Settings
    from runtime.spec.model import load_config

    app = build_gateway(load_config(config), Settings.from_env())
    uvicorn.run(app, host="127.0.0.1", port=port, http="h11", lifespan="on", log_level="warning")


if __name__ == "__main__":
    run_uvicorn_h11(Path(sys.argv[1]), int(sys.argv[2]))
