"""The ``wasm`` runtime: WebAssembly guests under wasmtime (DESIGN.md, "Runtimes").

``host`` (engine, precompiled cache, sandbox per call), ``pool`` (guest threads),
``package`` (the WASM model package and its manifest), ``abi`` (the ABIs a package may
declare), ``wasi_nn`` + ``nn_ggml`` + ``nn_onnx`` (the wasi-nn host), ``spin`` (Spin
components), ``build`` (building guests from ``wasm-modules/``), ``backend`` (the
``Runtime`` the worker uses). Importing this package imports none of them.
"""

__all__: list[str] = []
