"""The wasi-nn host: ``host`` (the imports a guest calls), ``ggml`` and ``onnx`` graphs."""
