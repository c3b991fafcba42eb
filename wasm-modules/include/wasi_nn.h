/* wasi_nn.h: the wasi_ephemeral_nn imports in the dialect WasmEdge uses.
 *
 * Every function returns an error code (WASI_NN_*); out-parameters are guest pointers.
 * A tensor is five u32: dimensions pointer and count, type, data pointer and length.
 */
#ifndef EDGEINFER_WASI_NN_H
#define EDGEINFER_WASI_NN_H

#include <stdint.h>

#define WASI_NN_IMPORT(name) __attribute__((import_module("wasi_ephemeral_nn"), import_name(name)))

enum {
    WASI_NN_SUCCESS = 0,
    WASI_NN_INVALID_ARGUMENT = 1,
    WASI_NN_INVALID_ENCODING = 2,
    WASI_NN_MISSING_MEMORY = 3,
    WASI_NN_BUSY = 4,
    WASI_NN_RUNTIME_ERROR = 5,
    WASI_NN_UNSUPPORTED_OPERATION = 6,
    WASI_NN_TOO_LARGE = 7,
    WASI_NN_NOT_FOUND = 8,
    WASI_NN_END_OF_SEQUENCE = 100,
    WASI_NN_CONTEXT_FULL = 101,
    WASI_NN_PROMPT_TOO_LONG = 102,
    WASI_NN_MODEL_NOT_FOUND = 103,
};

enum { WASI_NN_ENCODING_ONNX = 1, WASI_NN_ENCODING_GGML = 6 };
enum { WASI_NN_TARGET_CPU = 0, WASI_NN_TARGET_GPU = 1, WASI_NN_TARGET_TPU = 2, WASI_NN_TARGET_AUTO = 3 };
enum { WASI_NN_F16 = 0, WASI_NN_F32 = 1, WASI_NN_F64 = 2, WASI_NN_U8 = 3, WASI_NN_I32 = 4, WASI_NN_I64 = 5 };

typedef struct {
    const uint32_t *dims;
    uint32_t ndims;
    uint32_t type;
    const uint8_t *data;
    uint32_t len;
} wasi_nn_tensor;

typedef struct {
    const uint8_t *buf;
    uint32_t len;
} wasi_nn_builder;

WASI_NN_IMPORT("load")
uint32_t wasi_nn_load(const wasi_nn_builder *builders, uint32_t n, uint32_t encoding,
                      uint32_t target, uint32_t *graph);
WASI_NN_IMPORT("load_by_name")
uint32_t wasi_nn_load_by_name(const char *name, uint32_t name_len, uint32_t *graph);
WASI_NN_IMPORT("load_by_name_with_config")
uint32_t wasi_nn_load_by_name_with_config(const char *name, uint32_t name_len, const char *config,
                                          uint32_t config_len, uint32_t *graph);
WASI_NN_IMPORT("init_execution_context")
uint32_t wasi_nn_init_execution_context(uint32_t graph, uint32_t *ctx);
WASI_NN_IMPORT("set_input")
uint32_t wasi_nn_set_input(uint32_t ctx, uint32_t index, const wasi_nn_tensor *tensor);
WASI_NN_IMPORT("compute")
uint32_t wasi_nn_compute(uint32_t ctx);
WASI_NN_IMPORT("get_output")
uint32_t wasi_nn_get_output(uint32_t ctx, uint32_t index, uint8_t *out, uint32_t max,
                            uint32_t *written);
WASI_NN_IMPORT("compute_single")
uint32_t wasi_nn_compute_single(uint32_t ctx);
WASI_NN_IMPORT("get_output_single")
uint32_t wasi_nn_get_output_single(uint32_t ctx, uint32_t index, uint8_t *out, uint32_t max,
                                   uint32_t *written);
WASI_NN_IMPORT("fini_single")
uint32_t wasi_nn_fini_single(uint32_t ctx);
WASI_NN_IMPORT("unload")
uint32_t wasi_nn_unload(uint32_t graph);
WASI_NN_IMPORT("finalize_execution_context")
uint32_t wasi_nn_finalize_execution_context(uint32_t ctx);

#endif
