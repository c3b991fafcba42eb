"""``python -m runtime.worker``'s choice between one model and the WASM host: a bad
combination is exit code 2 with a message, before anything is loaded."""

from __future__ import annotations

import pytest

from runtime.worker.cli import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "either --model NAME or --host-wasm"),
        (["--host-wasm", "--model", "m"], "either --model NAME or --host-wasm"),
        (["--host-wasm", "--memory-budget-mib", "0"], "--memory-budget-mib must be at least 1"),
        (["--host-wasm", "--config", "/nonexistent/models.yaml"], "cannot read config"),
    ],
)
def test_bad_command_lines_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err
