"""Components (the WebAssembly component model) under the same sandbox as modules: WASI
preview 2 plus the host's own interfaces, a fresh store per call, the same deadline,
memory limit and error translation as ``runtime.backends.wasm.host.Template``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import wasmtime
from wasmtime import component as wc

from runtime.backends.wasm.host import CallState, Sandbox, WasmHost, sandboxed_store, translate
from runtime.errors import GuestLinkError

__all__ = ["ComponentTemplate", "HostInterfaces"]

# interface name -> {function name -> host function(store, *args)}
HostInterfaces = dict[str, dict[str, Callable[..., Any]]]


class ComponentTemplate:
    """A component with its imports defined once; each ``call`` instantiates it in a
    fresh store and calls one exported function."""

    def __init__(self, host: WasmHost, component: wc.Component, interfaces: HostInterfaces):
        self.host = host
        self.component = component
        self.linker = wc.Linker(host.engine)
        self.linker.add_wasip2()
        with self.linker.root() as root:
            for interface, functions in interfaces.items():
                with root.add_instance(interface) as instance:
                    for name, func in functions.items():
                        instance.add_func(name, func)
        self._check_imports()

    def _check_imports(self) -> None:
        """Instantiate once with no code run past the start: an import the host does not
        provide is a :class:`GuestLinkError` at load, not at the first call."""
        store = wasmtime.Store(self.host.engine)
        try:
            store.set_wasi(wasmtime.WasiConfig())
            store.set_epoch_deadline(1 << 62)
            self.linker.instantiate(store, self.component)
        except wasmtime.WasmtimeError as exc:
            first = str(exc).splitlines()[0]
            raise GuestLinkError(f"the component cannot be instantiated: {first}") from None
        finally:
            store.close()

    def call(self, sandbox: Sandbox, state: CallState, export: str, *args: Any) -> Any:
        with sandboxed_store(self.host, sandbox, state) as store:
            try:
                instance = self.linker.instantiate(store, self.component)
                func = instance.get_func(store, export)
                if func is None:
                    raise GuestLinkError(f"the component exports no function {export!r}")
                result = func(store, *args)
            except GuestLinkError:
                raise
            except BaseException as exc:
                raise translate(exc, state, 0, sandbox) from None
            if state.error is not None:
                raise translate(state.error, state, 0, sandbox)
            return result
