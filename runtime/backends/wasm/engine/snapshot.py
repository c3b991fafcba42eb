"""The snapshot recipe of our engine guest (``wasm-modules/engine``): the instance after
``_initialize`` and ``ei_init(max_tokens, max_seq)``, i.e. with the model's weights read,
packed and every buffer planned, captured by ``runtime.backends.wasm.snapshot``.

The snapshot exports neither ``_initialize`` nor ``ei_init``: an instance of it answers
``ei_info`` and ``ei_run`` at once, and :class:`runtime.backends.wasm.engine.reactor.EngineInstance`
skips the load when the template it is given has no ``ei_init``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import wasmtime

from runtime.backends.wasm.host import Sandbox
from runtime.backends.wasm.snapshot import SnapshotRecipe
from runtime.errors import ConfigError

__all__ = ["ENGINE_INIT_EXPORTS", "engine_recipe"]

ENGINE_INIT_EXPORTS = frozenset({"_initialize", "ei_init"})
ERROR_BYTES = 512  # ei_error's buffer


def engine_recipe(
    guest: Path,
    sandbox: Sandbox,
    inputs: Sequence[Path],
    *,
    max_tokens: int,
    max_seq: int,
    load_timeout_s: float,
) -> SnapshotRecipe:
    """The recipe of the engine ``guest`` loading the model the sandbox's environment
    names (``EI_CONFIG`` / ``EI_WEIGHTS``); ``inputs`` are those files on the host."""

    def init(store: wasmtime.Store, instance: wasmtime.Instance) -> None:
        exports = instance.exports(store)
        fn, error, memory = exports.get("ei_init"), exports.get("ei_error"), exports.get("memory")
        if not isinstance(fn, wasmtime.Func):
            raise ConfigError(f"{guest.name}: the engine guest does not export 'ei_init'")
        rc = fn(store, max_tokens, max_seq)
        if rc != 0:
            reason = "(no reason given)"
            if isinstance(error, wasmtime.Func) and isinstance(memory, wasmtime.Memory):
                ptr = error(store)
                raw = bytes(memory.read(store, ptr, ptr + ERROR_BYTES))
                reason = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
            raise ConfigError(f"the engine could not load the model: {reason}")

    return SnapshotRecipe(
        guest=guest,
        sandbox=sandbox,
        init=init,
        init_key=f"ei_init({max_tokens}, {max_seq})",
        inputs=tuple(inputs),
        drop_exports=ENGINE_INIT_EXPORTS,
        init_timeout_s=load_timeout_s,
        name=guest.stem.split("-")[0],
    )
