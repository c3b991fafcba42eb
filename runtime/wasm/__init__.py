"""The ``wasm`` runtime: WebAssembly guests under wasmtime (DESIGN.md, "Runtimes").

``host`` (engine, precompiled cache, sandbox per call), ``component`` (components under
the same sandbox), ``pool`` (guest threads), ``package`` (the WASM model package and
its manifest), ``abi`` (the ABIs a package may declare: ``wasi_nn_guest``, ``spin``),
``wasi_nn`` + ``nn_ggml`` + ``nn_onnx`` (the wasi-nn host), ``snapshot`` + ``wasm_binary`` +
``engine_snapshot`` (snapshots of initialised guests, mapped copy-on-write), ``request_pool``
(``isolation: request``), ``build`` (building guests
from ``wasm-modules/``), ``command`` (``edgeinfer wasm run``), ``backend`` (the
``Runtime`` the worker uses). Importing this package imports none of them.
"""

__all__: list[str] = []
