/* wasi-nn-ggml: generate text with a GGML graph preloaded by the host.
 *
 *   wasi-nn-ggml [--model NAME] [--n-predict N] [--ctx-size N] [--temp T] [--top-p P]
 *                [--repeat-penalty R] [--seed S] [--reverse-prompt S] [--stream]
 *                [--stream-stdout] [--metadata] [--prompt TEXT] [--options JSON]
 *
 * The prompt is --prompt, else all of stdin. Without --stream it calls compute once
 * and prints output 0; with --stream it prints each token as compute_single yields it.
 * --stream-stdout leaves printing to the backend (WasmEdge's stream-stdout option: each
 * token goes to stdout as it is generated) and does not print output 0 itself.
 * --metadata prints output 1 (token counts, JSON) to stderr after the answer.
 * --options adds the members of a JSON object to the config as they are (for the
 * plugin's other options: grammar, json-schema, embedding).
 * Exit codes: 0 done (end of sequence, n-predict reached or context full), 3 prompt too
 * long, 4 model not found, 5 any other wasi-nn error.
 *
 * Test modes (--mode): unload (unload the graph, then init_execution_context must
 * fail), set-input-twice (the second prompt replaces the first).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wasi_nn.h"

static char *read_all(FILE *f) {
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    size_t n;
    while (buf && (n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len < 2) buf = realloc(buf, cap *= 2);
    }
    if (buf) buf[len] = 0;
    return buf;
}

/* Appends s to the JSON buffer as a string literal. */
static size_t json_str(char *out, size_t at, size_t cap, const char *s) {
    at += snprintf(out + at, cap - at, "\"");
    for (; *s && at + 8 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') at += snprintf(out + at, cap - at, "\\%c", c);
        else if (c < 0x20) at += snprintf(out + at, cap - at, "\\u%04x", c);
        else out[at++] = (char)c;
    }
    at += snprintf(out + at, cap - at, "\"");
    return at;
}

static int fail(const char *what, uint32_t err) {
    fprintf(stderr, "wasi-nn-ggml: %s failed: error %u\n", what, err);
    if (err == WASI_NN_PROMPT_TOO_LONG) return 3;
    if (err == WASI_NN_MODEL_NOT_FOUND || err == WASI_NN_NOT_FOUND) return 4;
    return 5;
}

static uint32_t set_prompt(uint32_t ctx, const char *prompt) {
    uint32_t dims[1] = {1};
    wasi_nn_tensor t = {dims, 1, WASI_NN_U8, (const uint8_t *)prompt, (uint32_t)strlen(prompt)};
    return wasi_nn_set_input(ctx, 0, &t);
}

int main(int argc, char **argv) {
    const char *model = "default", *prompt = NULL, *reverse = NULL, *mode = "";
    const char *n_predict = NULL, *ctx_size = NULL, *temp = NULL, *top_p = NULL;
    const char *repeat = NULL, *seed = NULL, *options = NULL;
    int stream = 0, metadata = 0, stream_stdout = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--stream")) stream = 1;
        else if (!strcmp(a, "--metadata")) metadata = 1;
        else if (!strcmp(a, "--stream-stdout")) stream_stdout = 1;
        else if (!v) { fprintf(stderr, "wasi-nn-ggml: %s needs a value\n", a); return 2; }
        else if (!strcmp(a, "--model")) model = argv[++i];
        else if (!strcmp(a, "--prompt")) prompt = argv[++i];
        else if (!strcmp(a, "--n-predict")) n_predict = argv[++i];
        else if (!strcmp(a, "--ctx-size")) ctx_size = argv[++i];
        else if (!strcmp(a, "--temp")) temp = argv[++i];
        else if (!strcmp(a, "--top-p")) top_p = argv[++i];
        else if (!strcmp(a, "--repeat-penalty")) repeat = argv[++i];
        else if (!strcmp(a, "--seed")) seed = argv[++i];
        else if (!strcmp(a, "--reverse-prompt")) reverse = argv[++i];
        else if (!strcmp(a, "--mode")) mode = argv[++i];
        else if (!strcmp(a, "--options")) options = argv[++i];
        else { fprintf(stderr, "wasi-nn-ggml: unknown option %s\n", a); return 2; }
    }
    char *owned = NULL;
    if (!prompt) prompt = owned = read_all(stdin);
    if (!prompt) return fail("reading the prompt", WASI_NN_TOO_LARGE);

    /* The options, as the JSON config of WasmEdge's GGML plugin. */
    static char config[16384];
    size_t at = snprintf(config, sizeof config, "{\"stream-stdout\":%s", stream_stdout ? "true" : "false");
    const char *keys[] = {"n-predict", "ctx-size", "temp", "top-p", "repeat-penalty", "seed"};
    const char *vals[] = {n_predict, ctx_size, temp, top_p, repeat, seed};
    for (int k = 0; k < 6; k++)
        if (vals[k] && *vals[k]) at += snprintf(config + at, sizeof config - at, ",\"%s\":%s", keys[k], vals[k]);
    if (reverse) {
        at += snprintf(config + at, sizeof config - at, ",\"reverse-prompt\":");
        at = json_str(config, at, sizeof config, reverse);
    }
    if (options) {
        /* {"k": v, ...} -> ,"k": v, ... */
        const char *open = strchr(options, '{'), *close = strrchr(options, '}');
        if (!open || !close || close < open) return fail("--options must be a JSON object", WASI_NN_INVALID_ARGUMENT);
        if (close - open > 1)
            at += snprintf(config + at, sizeof config - at, ",%.*s", (int)(close - open - 1), open + 1);
    }
    if (at >= sizeof config - 1) return fail("the config", WASI_NN_TOO_LARGE);
    snprintf(config + at, sizeof config - at, "}");

    uint32_t graph, ctx, err;
    if ((err = wasi_nn_load_by_name_with_config(model, strlen(model), config, strlen(config), &graph)))
        return fail("load_by_name_with_config", err);
    if (!strcmp(mode, "unload")) {
        if ((err = wasi_nn_unload(graph))) return fail("unload", err);
        err = wasi_nn_init_execution_context(graph, &ctx);
        printf("init_execution_context after unload: error %u\n", err);
        return err == WASI_NN_SUCCESS ? 1 : 0;
    }
    if ((err = wasi_nn_init_execution_context(graph, &ctx))) return fail("init_execution_context", err);
    if (!strcmp(mode, "set-input-twice") && (err = set_prompt(ctx, "This prompt is replaced.")))
        return fail("set_input (first)", err);
    if ((err = set_prompt(ctx, prompt))) return fail("set_input", err);

    static uint8_t out[1 << 16];
    uint32_t written = 0;
    if (stream) {
        for (;;) {
            err = wasi_nn_compute_single(ctx);
            if (err == WASI_NN_END_OF_SEQUENCE || err == WASI_NN_CONTEXT_FULL) break;
            if (err) return fail("compute_single", err);
            if ((err = wasi_nn_get_output_single(ctx, 0, out, sizeof out, &written)))
                return fail("get_output_single", err);
            fwrite(out, 1, written, stdout);
            fflush(stdout);
        }
        if (err == WASI_NN_CONTEXT_FULL) fprintf(stderr, "wasi-nn-ggml: context full\n");
    } else {
        err = wasi_nn_compute(ctx);
        if (err == WASI_NN_CONTEXT_FULL) fprintf(stderr, "wasi-nn-ggml: context full\n");
        else if (err) return fail("compute", err);
        if ((err = wasi_nn_get_output(ctx, 0, out, sizeof out - 1, &written))) return fail("get_output", err);
        if (!stream_stdout) fwrite(out, 1, written, stdout);
        fflush(stdout);
    }
    if (metadata) {
        if ((err = wasi_nn_get_output(ctx, 1, out, sizeof out - 1, &written))) return fail("get_output 1", err);
        out[written] = 0;
        fprintf(stderr, "%s\n", (char *)out);
    }
    if (stream && (err = wasi_nn_fini_single(ctx))) return fail("fini_single", err);
    if ((err = wasi_nn_finalize_execution_context(ctx))) return fail("finalize_execution_context", err);
    free(owned);
    return 0;
}
