/* The engine's ABI: the exports the host calls (see wasm-modules/engine/README.md).
 *
 * ei_init loads the model named by EI_CONFIG / EI_WEIGHTS (a BERT config.json -> the
 * encoder; an edgeinfer-graph graph.json -> the graph program) and plans every buffer
 * once; ei_run then computes without allocating. Errors return -1 and leave a message
 * for ei_error(). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bert.h"
#include "common.h"
#include "graph.h"
#include "profile.h"

#define EXPORT(name) __attribute__((export_name(#name)))
#define MODEL_DIR "/model"

enum { KIND_NONE = 0, KIND_BERT = 1, KIND_GRAPH = 2 };
enum { INFO_KIND, INFO_OUTPUT_WIDTH, INFO_MAX_TOKENS, INFO_MAX_SEQ, INFO_INPUT_WIDTH, INFO_ABI };
#define ABI_VERSION 1

char ei_errbuf[512];
double ei_prof_ms[PROF_SLOTS];

static int kind = KIND_NONE;
static int cap_tokens, cap_seq;
static void *input;
static float *output;
static size_t input_bytes;

int ei_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ei_errbuf, sizeof ei_errbuf, fmt, ap);
    va_end(ap);
    return -1;
}

void *ei_alloc_bytes(size_t bytes) {
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0) {
        ei_fail("out of guest memory (asked for %zu bytes)", bytes);
        return NULL;
    }
    memset(p, 0, bytes);
    return p;
}

float *ei_alloc_floats(size_t count) { return ei_alloc_bytes(count * sizeof(float)); }
void ei_free(void *p) { free(p); }

int ei_read_file(const char *path, char **text, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return ei_fail("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        fclose(f);
        free(buf);
        return ei_fail("cannot read %s", path);
    }
    fclose(f);
    buf[n] = 0;
    *text = buf;
    *len = (size_t)n;
    return 0;
}

/* Which model and where: EI_CONFIG (config.json of a BERT checkpoint, or graph.json of a
 * converted graph) and EI_WEIGHTS (model.safetensors), set by the host in the guest's
 * environment; default /model/config.json and /model/model.safetensors. */
static const char *env_or(const char *name, const char *dflt) {
    const char *v = getenv(name);
    return v && *v ? v : dflt;
}

static int is_graph(const char *config) {
    FILE *f = fopen(config, "rb");
    if (!f) return ei_fail("cannot open %s", config);
    char head[256] = {0};
    size_t n = fread(head, 1, sizeof head - 1, f);
    fclose(f);
    head[n] = 0;
    return strstr(head, "\"edgeinfer-graph\"") != NULL;
}

/* max_tokens: BERT: the most batch x sequence tokens of one call; graph: the most rows.
 * max_seq: BERT: the longest sequence (0: the model's max_position_embeddings). */
EXPORT(ei_init) int ei_init(int max_tokens, int max_seq) {
    if (kind != KIND_NONE) return ei_fail("the engine is already initialised");
    if (max_tokens <= 0) return ei_fail("max_tokens must be positive");
    const char *config = env_or("EI_CONFIG", MODEL_DIR "/config.json");
    const char *weights = env_or("EI_WEIGHTS", MODEL_DIR "/model.safetensors");
    int graph = is_graph(config);
    if (graph < 0) return -1;
    if (graph) {
        if (graph_load(config, weights, max_tokens)) return -1;
        kind = KIND_GRAPH;
        cap_tokens = max_tokens;
        input_bytes = (size_t)max_tokens * graph_input_width() * sizeof(int);
        output = ei_alloc_floats((size_t)max_tokens * graph_output_width());
    } else {
        if (bert_load(config, weights, max_tokens, max_seq)) return -1;
        kind = KIND_BERT;
        cap_seq = bert_max_positions();
        cap_tokens = max_tokens < cap_seq ? cap_seq : max_tokens;
        input_bytes = (size_t)3 * cap_tokens * sizeof(int);
        output = ei_alloc_floats((size_t)cap_tokens * bert_hidden());
    }
    input = ei_alloc_bytes(input_bytes);
    if (!input || !output) return -1;
    return 0;
}

EXPORT(ei_info) int ei_info(int what) {
    switch (what) {
        case INFO_KIND: return kind;
        case INFO_OUTPUT_WIDTH: return kind == KIND_BERT ? bert_hidden() : kind == KIND_GRAPH ? graph_output_width() : 0;
        case INFO_MAX_TOKENS: return cap_tokens;
        case INFO_MAX_SEQ: return cap_seq;
        case INFO_INPUT_WIDTH: return kind == KIND_GRAPH ? graph_input_width() : 0;
        case INFO_ABI: return ABI_VERSION;
        default: return -1;
    }
}

EXPORT(ei_input) void *ei_input(void) { return input; }
EXPORT(ei_input_bytes) int ei_input_bytes(void) { return (int)input_bytes; }
EXPORT(ei_output) float *ei_output(void) { return output; }
EXPORT(ei_error) const char *ei_error(void) { return ei_errbuf; }

/* BERT: input = int32 ids[batch][seq], types[batch][seq], mask[batch][seq] back to back;
 * output = float [batch][hidden]. Graph: input = int32 [batch][input_width]; output =
 * float [batch][output_width]. */
EXPORT(ei_run) int ei_run(int batch, int seq) {
    ei_errbuf[0] = 0;
    if (kind == KIND_BERT) {
        if (batch <= 0 || seq <= 0 || (long long)batch * seq > cap_tokens)
            return ei_fail("%d x %d tokens: need 1..%d in all", batch, seq, cap_tokens);
        const int *ids = input;
        size_t n = (size_t)batch * seq;
        return bert_embed(ids, ids + n, ids + 2 * n, batch, seq, output);
    }
    if (kind == KIND_GRAPH) {
        if (batch <= 0 || batch > cap_tokens) return ei_fail("batch of %d rows: need 1..%d", batch, cap_tokens);
        return graph_run(input, batch, output);
    }
    return ei_fail("ei_init has not succeeded");
}

/* Milliseconds spent in each phase since the last reset (slot -1 resets). */
EXPORT(ei_profile) double ei_profile(int slot) {
    if (slot < 0) {
        memset(ei_prof_ms, 0, sizeof ei_prof_ms);
        return 0.0;
    }
    return slot < PROF_SLOTS ? ei_prof_ms[slot] : -1.0;
}
