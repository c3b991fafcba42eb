"""The ``wasm`` runtime: WebAssembly guests under wasmtime (DESIGN.md, "Runtimes").

``host`` (engine, precompiled cache, sandbox per call), ``component`` (components under
the same sandbox), ``pool`` (guest threads), ``package`` (the WASM model package and
its manifest), ``abi/`` (the ABIs a package may declare: ``base`` with their registry,
``wasi_nn``, ``spin``, ``compute``), ``wasi_nn/`` (the wasi-nn host: ``host``, ``ggml``,
``onnx``, ``types``), ``engine/`` (our inference engine guest: ``reactor`` runs its
instances, ``convert`` + ``program`` turn an ONNX model into its graph), ``build``
(building guests from ``wasm-modules/``), ``command`` (``edgeinfer wasm run``),
``backend`` (the ``Runtime`` the worker uses). Importing this package imports none of
them.
"""

__all__: list[str] = []
