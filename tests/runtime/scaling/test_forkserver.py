"""The supervisor's spawner (runtime/scaling/forkserver.py) when its fork server cannot
start: workers start as plain processes, with the same environment as forked ones."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from runtime.scaling.forkserver import ForkServer
from runtime.scaling.replica import free_port
from runtime.settings import Settings
from runtime.spec.model import bundled_config_path, load_config


def environ_of(pid: int) -> list[bytes]:
    """A process's environment as Linux shows it (``/proc``)."""
    return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")


@pytest.mark.slow
def test_plain_workers_are_told_their_cores_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The core budget reaches a worker through EDGEINFER_CPU_CORES; the fallback spawner
    once started workers without it, so each took every core of the machine."""
    spec = load_config().get("magika")
    assert spec is not None

    async def scenario() -> None:
        spawner = ForkServer(
            config_path=bundled_config_path(),
            log_dir=tmp_path / "logs",
            socket_path=tmp_path / "no-such-folder" / "forkserver.sock",  # cannot bind
            environ=Settings.cores_environ(3),
        )
        with caplog.at_level(logging.WARNING, logger="edgeinfer"):
            await spawner.start()
        assert "fork server unavailable" in caplog.text
        process = await spawner(spec, free_port())
        try:
            assert b"EDGEINFER_CPU_CORES=3" in environ_of(process.pid)
        finally:
            process.kill()
            await process.wait()
            await spawner.close()

    asyncio.run(scenario())
