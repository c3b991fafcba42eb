"""The runtimes: ``registry`` (the ``Runtime`` interface and the registry that loads
one lazily), ``onnx``, ``llama``, ``wasm/``, and what they share: ``bert_onnx`` (builds
any BERT-family encoder into ONNX), ``magika_features``, ``tensor_inputs``,
``text_batch`` and ``devices`` (what compute this host really has)."""
