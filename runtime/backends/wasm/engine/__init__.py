"""Our inference engine guest (``wasm-modules/engine``): instances and its graph."""
