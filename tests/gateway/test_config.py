"""The ``gateway:`` section: each problem one line naming the file, the section, the
field and what is allowed there (the project's one wording, ``runtime.errors``)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import GatewayConfig, gateway_config
from runtime.errors import ConfigError
from runtime.spec.model import ModelConfig


def config(gateway: dict[str, Any]) -> ModelConfig:
    model = {"name": "m", "task": "embedding", "endpoint": "http://127.0.0.1:1"}
    return ModelConfig.model_validate(
        {"models": [model], "gateway": gateway, "source": "/x/c.yaml"}
    )


@pytest.mark.parametrize(
    ("section", "lines"),
    [
        (
            {"max_queue": -1},
            ["/x/c.yaml: gateway: field 'max_queue': Input should be greater than or equal to 0"],
        ),
        (
            {"server": {"keep_alive_seconds": 0}},
            ["/x/c.yaml: gateway: field 'server.keep_alive_seconds': Input should be greater"],
        ),
        (
            {"tick_secs": 1, "max_queue": "many"},
            [
                "/x/c.yaml: gateway: field 'max_queue': Input should be a valid integer",
                "/x/c.yaml: gateway: field 'tick_secs': Extra inputs are not permitted",
            ],
        ),
    ],
)
def test_each_problem_is_one_line_naming_the_field(
    section: dict[str, Any], lines: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        gateway_config(config(section))
    got = sorted(info.value.message.splitlines())
    assert len(got) == len(lines)
    for line, want in zip(got, sorted(lines), strict=True):
        assert line.startswith(want), line


def test_a_valid_section_is_read_and_frozen() -> None:
    got = gateway_config(config({"max_queue": 7}))
    assert isinstance(got, GatewayConfig) and got.max_queue == 7
    with pytest.raises(ValueError, match="frozen"):
        got.max_queue = 8  # type: ignore[misc]


def test_reserved_cores_shrink_the_budget_and_reach_the_workers(tmp_path: Any) -> None:
    from gateway.server import build_gateway
    from runtime.scaling.cores import host_cores
    from runtime.scaling.forkserver import ForkServer
    from runtime.scaling.replica import WorkerLauncher
    from runtime.scaling.supervisor import Supervisor
    from runtime.settings import Settings

    cores = host_cores()
    settings = Settings(state_dir=tmp_path)
    if cores > 1:
        app = build_gateway(config({"reserved_cores": 1}), settings, environ={})
        supervisor = app.supervisor
        assert isinstance(supervisor, Supervisor) and supervisor.cores is not None
        assert supervisor.cores.cores == cores - 1
        launcher = supervisor.launcher
        assert isinstance(launcher, WorkerLauncher) and isinstance(launcher.spawner, ForkServer)
        environ = launcher.spawner.environ
        assert environ is not None and environ["EDGEINFER_CPU_CORES"] == str(cores - 1)
        worker = Settings.from_env(environ)
        assert worker.cpu_cores == cores - 1
        assert (worker.threads(None), worker.threads(1)) == (cores - 1, 1)
    with pytest.raises(ConfigError, match="leaves no core for replicas"):
        build_gateway(config({"reserved_cores": cores}), settings, environ={})
