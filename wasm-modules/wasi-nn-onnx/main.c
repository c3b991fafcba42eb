/* wasi-nn-onnx: one f32 tensor through an ONNX graph.
 *
 *   wasi-nn-onnx (--model NAME | --file PATH) --shape D0,D1,... --input X0,X1,...
 *
 * --model uses a graph the host preloaded; --file reads the model bytes from the
 * sandbox (e.g. /model/net.onnx) and calls `load`. Prints output 0 as comma-separated
 * floats. Exit codes: 0 ok, 4 model not found, 5 other wasi-nn errors, 2 usage.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wasi_nn.h"

static int parse_list(const char *s, float *out, int max) {
    int n = 0;
    while (*s && n < max) {
        char *end;
        out[n++] = strtof(s, &end);
        if (end == s) return -1;
        s = *end == ',' ? end + 1 : end;
    }
    return n;
}

static int fail(const char *what, uint32_t err) {
    fprintf(stderr, "wasi-nn-onnx: %s failed: error %u\n", what, err);
    return err == WASI_NN_MODEL_NOT_FOUND || err == WASI_NN_NOT_FOUND ? 4 : 5;
}

int main(int argc, char **argv) {
    const char *model = NULL, *file = NULL, *shape = NULL, *input = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model")) model = argv[i + 1];
        else if (!strcmp(argv[i], "--file")) file = argv[i + 1];
        else if (!strcmp(argv[i], "--shape")) shape = argv[i + 1];
        else if (!strcmp(argv[i], "--input")) input = argv[i + 1];
    }
    if ((!model && !file) || !shape || !input) {
        fprintf(stderr, "usage: wasi-nn-onnx (--model NAME | --file PATH) --shape D,.. --input X,..\n");
        return 2;
    }
    float dimsf[8], values[4096];
    int ndims = parse_list(shape, dimsf, 8), n = parse_list(input, values, 4096);
    if (ndims <= 0 || n <= 0) return 2;
    uint32_t dims[8];
    for (int i = 0; i < ndims; i++) dims[i] = (uint32_t)dimsf[i];

    uint32_t graph, ctx, err;
    if (model) {
        if ((err = wasi_nn_load_by_name(model, strlen(model), &graph))) return fail("load_by_name", err);
    } else {
        FILE *f = fopen(file, "rb");
        if (!f) { perror(file); return 2; }
        fseek(f, 0, SEEK_END);
        long size = ftell(f);
        fseek(f, 0, SEEK_SET);
        uint8_t *bytes = malloc(size);
        if (!bytes || fread(bytes, 1, size, f) != (size_t)size) { perror(file); return 2; }
        fclose(f);
        wasi_nn_builder b = {bytes, (uint32_t)size};
        if ((err = wasi_nn_load(&b, 1, WASI_NN_ENCODING_ONNX, WASI_NN_TARGET_CPU, &graph))) return fail("load", err);
        free(bytes);
    }
    if ((err = wasi_nn_init_execution_context(graph, &ctx))) return fail("init_execution_context", err);
    wasi_nn_tensor t = {dims, (uint32_t)ndims, WASI_NN_F32, (const uint8_t *)values, (uint32_t)(n * sizeof(float))};
    if ((err = wasi_nn_set_input(ctx, 0, &t))) return fail("set_input", err);
    if ((err = wasi_nn_compute(ctx))) return fail("compute", err);
    static float out[4096];
    uint32_t written = 0;
    if ((err = wasi_nn_get_output(ctx, 0, (uint8_t *)out, sizeof out, &written))) return fail("get_output", err);
    for (uint32_t i = 0; i < written / sizeof(float); i++) printf(i ? ",%g" : "%g", out[i]);
    printf("\n");
    if ((err = wasi_nn_finalize_execution_context(ctx))) return fail("finalize_execution_context", err);
    if ((err = wasi_nn_unload(graph))) return fail("unload", err);
    return 0;
}
