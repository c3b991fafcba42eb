"""The supervisor's spawner (runtime/scaling/forkserver.py) when its fork server cannot
start: workers start as plain processes, with the same environment as forked ones."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from runtime.scaling.forkserver import ForkServer
from runtime.scaling.replica import free_port
from runtime.settings import Settings
from runtime.spec.model import bundled_config_path, load_config


def environ_of(pid: int) -> list[bytes]:
    """A process's environment as Linux shows it (``/proc``); empty for a moment while
    the new process is still being set up, so read until it is not (10 s at most)."""
    for _ in range(1000):
        raw = Path(f"/proc/{pid}/environ").read_bytes()
        if raw:
            return raw.split(b"\0")
        time.sleep(0.01)
    raise AssertionError(f"process {pid} shows no environment")


@pytest.mark.slow
def test_plain_workers_are_told_their_cores_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The core budget reaches a worker through EDGEINFER_CPU_CORES (and a narrowed
    replica's width through its spec's options.threads); the fallback spawner once
    started workers without it, so each took every core of the machine."""
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
        # One replica as the config says, one the core budget narrowed to 1 thread.
        narrowed = spec.model_copy(
            update={"options": spec.options.model_copy(update={"threads": 1})}
        )
        for launched, cores in ((spec, b"3"), (narrowed, b"1")):
            process = await spawner(launched, free_port())
            try:
                assert b"EDGEINFER_CPU_CORES=" + cores in environ_of(process.pid)
            finally:
                process.kill()
                await process.wait()
        await spawner.close()

    asyncio.run(scenario())
