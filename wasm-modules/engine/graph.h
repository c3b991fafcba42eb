/* The graph engine: runs a program of tensor operations (graph.json + model.safetensors),
 * written by the host's converter (runtime/wasm/graph_convert.py) from an ONNX model. */
#ifndef EI_GRAPH_H
#define EI_GRAPH_H

int graph_load(const char *config, const char *weights, int max_batch);
int graph_input_width(void);
int graph_output_width(void);
/* input: [batch][input_width] int32, or float32 when graph.json's input dtype says so;
 * out: float [batch][output_width]. 0 or -1. */
int graph_run(const int *input, int batch, float *out);

#endif
