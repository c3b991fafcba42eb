/* The graph engine: a straight-line program of tensor ops over one sample, fixed shapes,
 * buffers planned by the host's converter (runtime/wasm/graph_convert.py, whose numpy
 * run_op is the reference for every op here). */
#include "graph.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wasm_simd128.h>

#include "common.h"
#include "json.h"
#include "kernels.h"
#include "profile.h"
#include "safetensors.h"

#define MAX_RANK 6
/* A fused op's limits (graph_program.py's MAX_FUSED_CODE, MAX_FUSED_INPUTS), and the
 * floats of each step's result per block: 16 steps x 1 KiB stay in the L1 cache. */
#define FUSED_CODE 16
#define FUSED_INPUTS 6
#define FUSED_BLOCK 256

enum { OP_GATHER, OP_BINARY, OP_UNARY, OP_REDUCE, OP_TRANSPOSE, OP_SLICE, OP_SOFTMAX, OP_MATMUL, OP_CONV, OP_FUSED, OP_WINOGRAD, OP_KINDS };
enum { BIN_ADD, BIN_SUB, BIN_MUL, BIN_DIV, BIN_MAX, BIN_MIN };
enum { UN_TANH, UN_EXP, UN_SQRT, UN_RECIP, UN_RELU, UN_ERF, UN_NEG, UN_SIGMOID, UN_ABS };
enum { RED_SUM, RED_MAX, RED_MEAN };

typedef struct {
    int value;          /* value id, or -1 for a constant */
    const float *cst;   /* the constant */
    int shape[MAX_RANK];
} operand_t;

/* One step of a fused op: fn (a binary or unary fn) over a, b; each reads an input of
 * the op (REF_INPUT), an earlier step's result (REF_STEP) or a scalar. */
enum { REF_INPUT, REF_STEP, REF_SCALAR };
typedef struct {
    int kind, index;
    float scalar;
} fused_ref;
typedef struct {
    int unary, fn;
    fused_ref a, b;
} fused_step;

typedef struct {
    int kind, fn, in, out;
    int rank, shape[MAX_RANK];            /* output shape (binary, slice) */
    operand_t a, b;                       /* binary */
    int in_shape[MAX_RANK], perm[MAX_RANK], begin[MAX_RANK], step[MAX_RANK];
    int n, outer, inner, m, k, rows, width;
    int c, h, w, kh, kw, oh, ow, sh, sw, ph, pw, dh, dw;
    const float *table, *bias;
    ei_packed packed;
    int n_in, ins[FUSED_INPUTS], n_code;  /* fused */
    fused_step code[FUSED_CODE];
    int taps, tile, alpha, tiles;         /* winograd (c, h, m, oh, ph as conv) */
    const float *bt, *at;
    ei_packed *packs;                     /* one per transform point */
} op_t;

static struct {
    json_node *doc;
    op_t *ops;
    int n_ops, n_values, n_buffers;
    float **buffers;
    int *value_buffer;
    int input_width, output_width, output_value, input_float;
    /* conv: im2col / its output; winograd: transformed input / products / output rows;
     * matmul: rows padded to whole vectors */
    float *scratch, *scratch2, *scratch3;
    st_file st;
    float **consts;
    int n_consts;
} G;

/* ---- loading ------------------------------------------------------------------------ */

static const float *find_const(const char *name) {
    for (int i = 0; i < G.st.count; i++)
        if (strcmp(G.st.tensors[i].name, name) == 0) return G.consts[i];
    return NULL;
}

static int get_int(json_node *op, const char *key, int *out) {
    json_node *n = json_get(op, key);
    if (!n || n->type != JSON_NUMBER) return ei_fail("graph op is missing the number %s", key);
    *out = (int)n->num;
    return 0;
}

static int get_ints(json_node *op, const char *key, int *out, int max, int *count) {
    json_node *arr = json_get(op, key);
    if (!arr || arr->type != JSON_ARRAY || arr->count > max) return ei_fail("graph op has a bad %s", key);
    int i = 0;
    for (json_node *c = arr->child; c; c = c->next) out[i++] = (int)c->num;
    if (count) *count = i;
    return 0;
}

static int get_const(json_node *op, const char *key, const float **out, int required) {
    const char *name = json_str(op, key, NULL);
    if (!name) return required ? ei_fail("graph op is missing the constant %s", key) : 0;
    if (!(*out = find_const(name))) return ei_fail("constant %s is missing from the weights", name);
    return 0;
}

static int read_operand(json_node *spec, int rank, operand_t *o) {
    if (!spec) return ei_fail("binary op without an operand");
    json_node *v = json_get(spec, "v");
    o->value = v ? (int)v->num : -1;
    o->cst = NULL;
    if (!v && get_const(spec, "c", &o->cst, 1)) return -1;
    int r;
    if (get_ints(spec, "shape", o->shape, MAX_RANK, &r)) return -1;
    if (r != rank) return ei_fail("binary operand rank differs from the output's");
    return 0;
}

static int lookup(const char *name, const char *const *names, int n) {
    for (int i = 0; i < n; i++)
        if (strcmp(name, names[i]) == 0) return i;
    return -1;
}

static int parse_ref(json_node *spec, int step, int n_in, fused_ref *r) {
    json_node *v;
    if (!spec) return ei_fail("fused step without an operand");
    if ((v = json_get(spec, "v"))) *r = (fused_ref){REF_INPUT, (int)v->num, 0.0f};
    else if ((v = json_get(spec, "t"))) *r = (fused_ref){REF_STEP, (int)v->num, 0.0f};
    else if ((v = json_get(spec, "s"))) *r = (fused_ref){REF_SCALAR, 0, (float)v->num};
    else return ei_fail("fused operand is neither v, t nor s");
    if (v->type != JSON_NUMBER) return ei_fail("fused operand is not a number");
    if ((r->kind == REF_INPUT && (r->index < 0 || r->index >= n_in)) || (r->kind == REF_STEP && (r->index < 0 || r->index >= step)))
        return ei_fail("fused step %d reads an operand out of range", step);
    return 0;
}

static int parse_fused(json_node *code, op_t *op, const char *const *uns, const char *const *bins) {
    if (!code || code->type != JSON_ARRAY || code->count < 1 || code->count > FUSED_CODE || op->n <= 0)
        return ei_fail("fused op has a bad code or n");
    int i = 0;
    for (json_node *c = code->child; c; c = c->next, i++) {
        fused_step *s = &op->code[i];
        const char *fn = json_str(c, "fn", "");
        if ((s->fn = lookup(fn, uns, 9)) >= 0) s->unary = 1;
        else if ((s->fn = lookup(fn, bins, 6)) < 0) return ei_fail("unknown fused fn %s", fn);
        if (parse_ref(json_get(c, "a"), i, op->n_in, &s->a)) return -1;
        if (!s->unary && parse_ref(json_get(c, "b"), i, op->n_in, &s->b)) return -1;
        if (s->unary && s->a.kind == REF_SCALAR) return ei_fail("fused step %d maps a scalar", i);
    }
    op->n_code = i;
    return 0;
}

static int parse_op(json_node *j, op_t *op) {
    static const char *const kinds[] = {"gather", "binary", "unary", "reduce", "transpose", "slice", "softmax", "matmul", "conv", "fused", "winograd"};
    static const char *const bins[] = {"add", "sub", "mul", "div", "max", "min"};
    static const char *const uns[] = {"tanh", "exp", "sqrt", "reciprocal", "relu", "erf", "neg", "sigmoid", "abs"};
    static const char *const reds[] = {"sum", "max", "mean"};
    memset(op, 0, sizeof *op);
    op->kind = lookup(json_str(j, "op", ""), kinds, OP_KINDS);
    if (op->kind < 0) return ei_fail("unknown graph op %s", json_str(j, "op", "?"));
    if (get_int(j, "out", &op->out)) return -1;
    if (op->kind != OP_BINARY && op->kind != OP_FUSED && get_int(j, "in", &op->in)) return -1;
    switch (op->kind) {
        case OP_GATHER:
            if (get_const(j, "table", &op->table, 1) || get_int(j, "rows", &op->rows) || get_int(j, "width", &op->width) || get_int(j, "n", &op->n)) return -1;
            break;
        case OP_BINARY:
            if ((op->fn = lookup(json_str(j, "fn", ""), bins, 6)) < 0) return ei_fail("unknown binary fn");
            if (get_ints(j, "shape", op->shape, MAX_RANK, &op->rank)) return -1;
            if (read_operand(json_get(j, "a"), op->rank, &op->a) || read_operand(json_get(j, "b"), op->rank, &op->b)) return -1;
            break;
        case OP_UNARY:
            if ((op->fn = lookup(json_str(j, "fn", ""), uns, 9)) < 0) return ei_fail("unknown unary fn");
            if (get_int(j, "n", &op->n)) return -1;
            break;
        case OP_REDUCE:
            if ((op->fn = lookup(json_str(j, "fn", ""), reds, 3)) < 0) return ei_fail("unknown reduce fn");
            if (get_int(j, "outer", &op->outer) || get_int(j, "n", &op->n) || get_int(j, "inner", &op->inner)) return -1;
            break;
        case OP_TRANSPOSE:
            if (get_ints(j, "in_shape", op->in_shape, MAX_RANK, &op->rank) || get_ints(j, "perm", op->perm, MAX_RANK, NULL)) return -1;
            break;
        case OP_SLICE:
            if (get_ints(j, "in_shape", op->in_shape, MAX_RANK, &op->rank) || get_ints(j, "begin", op->begin, MAX_RANK, NULL) ||
                get_ints(j, "step", op->step, MAX_RANK, NULL) || get_ints(j, "shape", op->shape, MAX_RANK, NULL)) return -1;
            break;
        case OP_SOFTMAX:
            if (get_int(j, "outer", &op->outer) || get_int(j, "n", &op->n)) return -1;
            break;
        case OP_MATMUL: {
            const float *w;
            if (get_int(j, "m", &op->m) || get_int(j, "k", &op->k) || get_int(j, "n", &op->n)) return -1;
            if (get_const(j, "weight", &w, 1) || get_const(j, "bias", &op->bias, 0)) return -1;
            if (ei_packed_matmul(&op->packed, w, op->bias, op->k, op->n)) return -1;
            break;
        }
        case OP_CONV: {
            const float *w;
            int pair[2];
            if (get_int(j, "c", &op->c) || get_int(j, "h", &op->h) || get_int(j, "w", &op->w) || get_int(j, "m", &op->m) ||
                get_int(j, "kh", &op->kh) || get_int(j, "kw", &op->kw) || get_int(j, "oh", &op->oh) || get_int(j, "ow", &op->ow)) return -1;
            if (get_ints(j, "stride", pair, 2, NULL)) return -1;
            op->sh = pair[0]; op->sw = pair[1];
            if (get_ints(j, "pad", pair, 2, NULL)) return -1;
            op->ph = pair[0]; op->pw = pair[1];
            if (get_ints(j, "dilation", pair, 2, NULL)) return -1;
            op->dh = pair[0]; op->dw = pair[1];
            if (get_const(j, "weight", &w, 1) || get_const(j, "bias", &op->bias, 0)) return -1;
            /* The weight [m][c kh kw] is a Linear weight over im2col rows. */
            if (ei_packed_linear(&op->packed, w, op->bias, op->m, op->c * op->kh * op->kw)) return -1;
            break;
        }
        case OP_FUSED:
            if (get_int(j, "n", &op->n) || get_ints(j, "in", op->ins, FUSED_INPUTS, &op->n_in)) return -1;
            return parse_fused(json_get(j, "code"), op, uns, bins);
        case OP_WINOGRAD: {
            const float *w;
            if (get_int(j, "c", &op->c) || get_int(j, "h", &op->h) || get_int(j, "m", &op->m) || get_int(j, "taps", &op->taps) ||
                get_int(j, "tile", &op->tile) || get_int(j, "oh", &op->oh) || get_int(j, "pad", &op->ph)) return -1;
            op->alpha = op->tile + op->taps - 1;
            if (op->c <= 0 || op->c % 4 || op->m <= 0 || op->tile <= 0 || op->taps <= 0 || op->oh <= 0 || op->ph < 0 || op->alpha > 16)
                return ei_fail("winograd op has bad sizes");
            op->tiles = (op->oh + op->tile - 1) / op->tile;
            if (get_const(j, "weight", &w, 1) || get_const(j, "bt", &op->bt, 1) || get_const(j, "at", &op->at, 1) ||
                get_const(j, "bias", &op->bias, 0)) return -1;
            /* weight [alpha][c][m]: one ONNX-MatMul-shaped right operand per point. */
            if (!(op->packs = calloc((size_t)op->alpha, sizeof(ei_packed)))) return ei_fail("out of guest memory");
            for (int x = 0; x < op->alpha; x++)
                if (ei_packed_matmul(&op->packs[x], w + (size_t)x * op->c * op->m, NULL, op->c, op->m)) return -1;
            break;
        }
    }
    return 0;
}

int graph_load(const char *config, const char *weights, int max_batch) {
    (void)max_batch;
    char *text, err[160];
    size_t len;
    if (ei_read_file(config, &text, &len)) return -1;
    G.doc = json_parse(text, len, err, sizeof err);
    free(text);
    if (!G.doc) return ei_fail("%s: %s", config, err);
    if (strcmp(json_str(G.doc, "format", ""), "edgeinfer-graph") != 0 || json_num(G.doc, "version", 0) != 1)
        return ei_fail("%s is not an edgeinfer-graph version 1 program", config);
    if (st_open(&G.st, weights)) return -1;
    G.consts = calloc((size_t)G.st.count + 1, sizeof(float *));
    for (int i = 0; i < G.st.count; i++) {
        G.consts[i] = ei_alloc_floats((size_t)st_numel(&G.st.tensors[i]) + 4);
        if (!G.consts[i] || st_read_f32(&G.st, &G.st.tensors[i], G.consts[i])) return -1;
    }
    G.input_width = (int)json_num(json_get(G.doc, "input"), "width", 0);
    G.input_float = strcmp(json_str(json_get(G.doc, "input"), "dtype", "int32"), "float32") == 0;
    G.output_width = (int)json_num(json_get(G.doc, "output"), "width", 0);
    G.output_value = (int)json_num(json_get(G.doc, "output"), "value", -1);
    json_node *ops = json_get(G.doc, "ops"), *bufs = json_get(G.doc, "buffers"), *vals = json_get(G.doc, "values");
    if (G.input_width <= 0 || G.output_width <= 0 || !ops || !bufs || !vals || ops->type != JSON_ARRAY)
        return ei_fail("%s: input, output, ops, buffers or values are missing", config);
    G.n_values = vals->count;
    G.value_buffer = calloc((size_t)G.n_values, sizeof(int));
    int i = 0;
    for (json_node *v = vals->child; v; v = v->next) G.value_buffer[i++] = (int)v->num;
    G.n_buffers = bufs->count;
    G.buffers = calloc((size_t)G.n_buffers, sizeof(float *));
    i = 0;
    for (json_node *b = bufs->child; b; b = b->next, i++)
        if (!(G.buffers[i] = ei_alloc_floats((size_t)b->num + 8))) return -1;
    G.n_ops = ops->count;
    G.ops = calloc((size_t)G.n_ops, sizeof(op_t));
    size_t scratch = 0, scratch2 = 0, scratch3 = 0;
    i = 0;
    for (json_node *o = ops->child; o; o = o->next, i++) {
        op_t *op = &G.ops[i];
        if (parse_op(o, op)) return -1;
        int ids[2 + FUSED_INPUTS], n_ids = 3;
        ids[0] = op->out;
        ids[1] = op->kind == OP_BINARY ? op->a.value : op->kind == OP_FUSED ? -1 : op->in;
        ids[2] = op->kind == OP_BINARY ? op->b.value : -1;
        if (op->kind == OP_FUSED)
            for (int q = 0; q < op->n_in; q++) ids[n_ids++] = op->ins[q];
        for (int q = 0; q < n_ids; q++)
            if (ids[q] >= G.n_values || ((q == 0 || q >= 3) && ids[q] < 0) || (ids[q] >= 0 && G.value_buffer[ids[q]] < 0) ||
                (ids[q] >= 0 && G.value_buffer[ids[q]] >= G.n_buffers))
                return ei_fail("graph op %d names value %d of %d", i, ids[q], G.n_values);
        if (op->kind == OP_WINOGRAD) {
            size_t t = (size_t)op->tiles, a = (size_t)op->alpha;
            if (a * t * op->c > scratch) scratch = a * t * op->c;
            if (a * t * op->m > scratch2) scratch2 = a * t * op->m;
            if ((size_t)op->tile * op->m > scratch3) scratch3 = (size_t)op->tile * op->m;
        }
        if (op->kind == OP_CONV) {
            size_t ck4 = (size_t)((op->c * op->kh * op->kw + 3) & ~3), p = (size_t)op->oh * op->ow;
            if (p * ck4 > scratch) scratch = p * ck4;
            if (p * op->m > scratch2) scratch2 = p * op->m;
        }
        if (op->kind == OP_MATMUL && op->k % 4) {
            size_t need = (size_t)op->m * ((op->k + 3) & ~3);
            if (need > scratch) scratch = need;
        }
    }
    if (G.output_value < 0 || G.output_value >= G.n_values) return ei_fail("graph output value is out of range");
    if (scratch && !(G.scratch = ei_alloc_floats(scratch + 4))) return -1;
    if (scratch2 && !(G.scratch2 = ei_alloc_floats(scratch2 + 4))) return -1;
    if (scratch3 && !(G.scratch3 = ei_alloc_floats(scratch3 + 4))) return -1;
    return 0;
}

int graph_input_width(void) { return G.input_width; }
int graph_output_width(void) { return G.output_width; }

/* ---- ops ---------------------------------------------------------------------------- */

static inline float *val(int v) { return G.buffers[G.value_buffer[v]]; }

static inline float bin_scalar(int fn, float a, float b) {
    switch (fn) {
        case BIN_ADD: return a + b;
        case BIN_SUB: return a - b;
        case BIN_MUL: return a * b;
        case BIN_DIV: return a / b;
        case BIN_MAX: return a > b ? a : (b != b ? b : (a != a ? a : b));
        default: return a < b ? a : (b != b ? b : (a != a ? a : b));
    }
}

static inline v128_t bin_vec(int fn, v128_t a, v128_t b) {
    switch (fn) {
        case BIN_ADD: return wasm_f32x4_add(a, b);
        case BIN_SUB: return wasm_f32x4_sub(a, b);
        case BIN_MUL: return wasm_f32x4_mul(a, b);
        case BIN_DIV: return wasm_f32x4_div(a, b);
        case BIN_MAX: return wasm_f32x4_max(a, b);  /* NaN-propagating, as numpy.maximum */
        default: return wasm_f32x4_min(a, b);
    }
}

/* One innermost row of a broadcast binary op: sa, sb are 0 (broadcast) or 1. */
static void bin_row(int fn, const float *a, int sa, const float *b, int sb, float *o, int n) {
    int i = 0;
    if (sa && sb) {
        for (; i + 4 <= n; i += 4) wasm_v128_store(o + i, bin_vec(fn, wasm_v128_load(a + i), wasm_v128_load(b + i)));
    } else if (sa) {
        v128_t bv = wasm_f32x4_splat(*b);
        for (; i + 4 <= n; i += 4) wasm_v128_store(o + i, bin_vec(fn, wasm_v128_load(a + i), bv));
    } else if (sb) {
        v128_t av = wasm_f32x4_splat(*a);
        for (; i + 4 <= n; i += 4) wasm_v128_store(o + i, bin_vec(fn, av, wasm_v128_load(b + i)));
    }
    for (; i < n; i++) o[i] = bin_scalar(fn, a[sa * i], b[sb * i]);
}

static void op_binary(const op_t *op) {
    const float *a = op->a.value >= 0 ? val(op->a.value) : op->a.cst;
    const float *b = op->b.value >= 0 ? val(op->b.value) : op->b.cst;
    float *o = val(op->out);
    int r = op->rank;
    if (r == 0) { o[0] = bin_scalar(op->fn, a[0], b[0]); return; }
    long sa[MAX_RANK], sb[MAX_RANK], ca = 1, cb = 1;
    for (int d = r - 1; d >= 0; d--) {
        sa[d] = op->a.shape[d] == 1 ? 0 : ca;
        sb[d] = op->b.shape[d] == 1 ? 0 : cb;
        ca *= op->a.shape[d];
        cb *= op->b.shape[d];
    }
    int n = op->shape[r - 1], idx[MAX_RANK] = {0};
    long rows = 1;
    for (int d = 0; d < r - 1; d++) rows *= op->shape[d];
    for (long row = 0; row < rows; row++) {
        long oa = 0, ob = 0;
        for (int d = 0; d < r - 1; d++) { oa += idx[d] * sa[d]; ob += idx[d] * sb[d]; }
        bin_row(op->fn, a + oa, (int)sa[r - 1], b + ob, (int)sb[r - 1], o + row * n, n);
        for (int d = r - 2; d >= 0; d--) {
            if (++idx[d] < op->shape[d]) break;
            idx[d] = 0;
        }
    }
}

static void unary_map(int fn, const float *x, float *y, size_t n) {
    size_t i;
    switch (fn) {
        case UN_TANH: ei_tanh(x, y, n); return;
        case UN_EXP: ei_exp(x, y, n); return;
        case UN_ERF: ei_erf(x, y, n); return;
        case UN_SIGMOID:
            for (i = 0; i < n; i++) y[i] = -x[i];
            ei_exp(y, y, n);
            for (i = 0; i < n; i++) y[i] = 1.0f / (1.0f + y[i]);
            return;
        default: break;
    }
    for (i = 0; i < n; i++) {
        float v = x[i];
        switch (fn) {
            case UN_SQRT: y[i] = sqrtf(v); break;
            case UN_RECIP: y[i] = 1.0f / v; break;
            case UN_RELU: y[i] = v > 0.0f ? v : 0.0f; break;
            case UN_NEG: y[i] = -v; break;
            default: y[i] = fabsf(v); break;
        }
    }
}

static void op_unary(const op_t *op) { unary_map(op->fn, val(op->in), val(op->out), (size_t)op->n); }

static inline float red_scalar(int fn, float acc, float v) {
    if (fn == RED_MAX) return (v > acc || v != v) ? v : acc;  /* NaN wins, as numpy */
    return acc + v;
}

static inline v128_t red_vec(int fn, v128_t acc, v128_t v) {
    return fn == RED_MAX ? wasm_f32x4_max(acc, v) : wasm_f32x4_add(acc, v);
}

/* y[o][i] = reduce_j x[o][j][i]. inner == 1 (the last axis): four lanes of partial
 * results per row, combined at its end; else whole rows of `inner` are combined into y,
 * a vector at a time, reading x in order. */
static void op_reduce(const op_t *op) {
    const float *x = val(op->in);
    float *y = val(op->out);
    int n = op->n, inner = op->inner, fn = op->fn;
    float init = fn == RED_MAX ? -INFINITY : 0.0f;
    for (int o = 0; o < op->outer; o++) {
        const float *p = x + (size_t)o * n * inner;
        float *out = y + (size_t)o * inner;
        if (inner == 1) {
            v128_t acc = wasm_f32x4_splat(init);
            int j = 0;
            for (; j + 4 <= n; j += 4) acc = red_vec(fn, acc, wasm_v128_load(p + j));
            float lanes[4] __attribute__((aligned(16)));
            wasm_v128_store(lanes, acc);
            float r = init;
            for (int l = 0; l < 4; l++) r = red_scalar(fn, r, lanes[l]);
            for (; j < n; j++) r = red_scalar(fn, r, p[j]);
            out[0] = r;
        } else {
            for (int i = 0; i < inner; i++) out[i] = init;
            for (int j = 0; j < n; j++) {
                const float *row = p + (size_t)j * inner;
                int i = 0;
                for (; i + 4 <= inner; i += 4) wasm_v128_store(out + i, red_vec(fn, wasm_v128_load(out + i), wasm_v128_load(row + i)));
                for (; i < inner; i++) out[i] = red_scalar(fn, out[i], row[i]);
            }
        }
        if (fn == RED_MEAN)
            for (int i = 0; i < inner; i++) out[i] /= (float)n;
    }
}

/* The fused op's steps over blocks of FUSED_BLOCK floats: each step's result for the
 * block lands in a buffer that stays in the L1 cache, and the last one in the output. */
static void op_fused(const op_t *op) {
    static float steps[FUSED_CODE][FUSED_BLOCK] __attribute__((aligned(16)));
    const float *ins[FUSED_INPUTS];
    for (int q = 0; q < op->n_in; q++) ins[q] = val(op->ins[q]);
    float *y = val(op->out);
    for (int b0 = 0; b0 < op->n; b0 += FUSED_BLOCK) {
        int len = op->n - b0 < FUSED_BLOCK ? op->n - b0 : FUSED_BLOCK;
        for (int i = 0; i < op->n_code; i++) {
            const fused_step *st = &op->code[i];
            float *dst = i == op->n_code - 1 ? y + b0 : steps[i];
            const float *ab[2];
            int strides[2];
            const fused_ref *refs[2] = {&st->a, &st->b};
            for (int q = 0; q < 2; q++) {
                const fused_ref *r = refs[q];
                strides[q] = r->kind != REF_SCALAR;
                ab[q] = r->kind == REF_INPUT ? ins[r->index] + b0 : r->kind == REF_STEP ? steps[r->index] : &r->scalar;
            }
            if (st->unary) unary_map(st->fn, ab[0], dst, (size_t)len);  /* a scalar input is folded on the host */
            else bin_row(st->fn, ab[0], strides[0], ab[1], strides[1], dst, len);
        }
    }
}

static void op_transpose(const op_t *op) {
    const float *x = val(op->in);
    float *y = val(op->out);
    int r = op->rank, oshape[MAX_RANK], idx[MAX_RANK] = {0};
    long istride[MAX_RANK], s = 1, total = 1;
    for (int d = r - 1; d >= 0; d--) { istride[d] = s; s *= op->in_shape[d]; }
    for (int d = 0; d < r; d++) { oshape[d] = op->in_shape[op->perm[d]]; total *= oshape[d]; }
    for (long i = 0; i < total; i++) {
        long src = 0;
        for (int d = 0; d < r; d++) src += idx[d] * istride[op->perm[d]];
        y[i] = x[src];
        for (int d = r - 1; d >= 0; d--) {
            if (++idx[d] < oshape[d]) break;
            idx[d] = 0;
        }
    }
}

static void op_slice(const op_t *op) {
    const float *x = val(op->in);
    float *y = val(op->out);
    int r = op->rank, idx[MAX_RANK] = {0};
    long istride[MAX_RANK], s = 1, total = 1;
    for (int d = r - 1; d >= 0; d--) { istride[d] = s; s *= op->in_shape[d]; }
    for (int d = 0; d < r; d++) total *= op->shape[d];
    for (long i = 0; i < total; i++) {
        long src = 0;
        for (int d = 0; d < r; d++) src += (long)(op->begin[d] + idx[d] * op->step[d]) * istride[d];
        y[i] = x[src];
        for (int d = r - 1; d >= 0; d--) {
            if (++idx[d] < op->shape[d]) break;
            idx[d] = 0;
        }
    }
}

static void op_gather(const op_t *op) {
    const float *idx = val(op->in);
    float *y = val(op->out);
    for (int i = 0; i < op->n; i++) {
        float f = idx[i];
        int row = (int)f;
        float *dst = y + (size_t)i * op->width;
        /* Out of range reads as zeros: what the one-hot MatMul it replaces computes. */
        if (f >= 0.0f && f < (float)op->rows && (float)row == f) memcpy(dst, op->table + (size_t)row * op->width, (size_t)op->width * sizeof(float));
        else memset(dst, 0, (size_t)op->width * sizeof(float));
    }
}

static void op_matmul(const op_t *op) {
    const float *a = val(op->in);
    int lda = op->k;
    if (op->k % 4) {  /* ei_gemm reads rows in whole vectors: pad them with zeros */
        lda = (op->k + 3) & ~3;
        for (int i = 0; i < op->m; i++) {
            memcpy(G.scratch + (size_t)i * lda, a + (size_t)i * op->k, (size_t)op->k * sizeof(float));
            memset(G.scratch + (size_t)i * lda + op->k, 0, (size_t)(lda - op->k) * sizeof(float));
        }
        a = G.scratch;
    }
    ei_linear(&op->packed, op->m, a, lda, val(op->out), op->n);
}

/* out[m][oh][ow] = W[m][c kh kw] . im2col: cols[p][c kh kw] built row by row, multiplied
 * as out^T = cols @ W^T (W packed once at load), then transposed into place. */
static void op_conv(const op_t *op) {
    const float *x = val(op->in);
    int ck = op->c * op->kh * op->kw, ck4 = (ck + 3) & ~3, P = op->oh * op->ow;
    for (int oy = 0; oy < op->oh; oy++)
        for (int ox = 0; ox < op->ow; ox++) {
            float *col = G.scratch + (size_t)(oy * op->ow + ox) * ck4;
            for (int c = 0; c < op->c; c++)
                for (int i = 0; i < op->kh; i++) {
                    int y = oy * op->sh + i * op->dh - op->ph;
                    for (int j = 0; j < op->kw; j++) {
                        int xx = ox * op->sw + j * op->dw - op->pw;
                        int inside = y >= 0 && y < op->h && xx >= 0 && xx < op->w;
                        *col++ = inside ? x[((size_t)c * op->h + y) * op->w + xx] : 0.0f;
                    }
                }
            for (int q = ck; q < ck4; q++) *col++ = 0.0f;
        }
    ei_linear(&op->packed, P, G.scratch, ck4, G.scratch2, op->m);
    float *y = val(op->out);
    for (int p = 0; p < P; p++)
        for (int m = 0; m < op->m; m++) y[(size_t)m * P + p] = G.scratch2[(size_t)p * op->m + m];
}

static void axpy(float *y, float a, const float *x, int n) {
    v128_t av = wasm_f32x4_splat(a);
    for (int i = 0; i < n; i += 4) wasm_v128_store(y + i, wasm_f32x4_add(wasm_v128_load(y + i), wasm_f32x4_mul(av, wasm_v128_load(x + i))));
}

/* A 1-D convolution over the rows of x[h][c] (channels innermost) by Winograd F(tile,
 * taps) (runtime/wasm/winograd.py): per tile of `tile` output rows, U[p][t] = BT x_t over
 * the tile's alpha input rows; then for each transform point p V[p] = U[p] @ W[p] (the
 * weights transformed on the host and packed here, c x m); then the tile's output rows
 * AT V[.][t] (+ bias), written transposed into y[m][oh] as ONNX's Conv lays it out. The
 * transforms are sums of rows scaled by constants (axpy over the channels); the products
 * are the matrix multiply's. */
static void op_winograd(const op_t *op) {
    const float *x = val(op->in);
    float *y = val(op->out), *U = G.scratch, *V = G.scratch2, *rows = G.scratch3;
    int c = op->c, m = op->m, T = op->tiles, A = op->alpha, oh = op->oh;
    for (int t = 0; t < T; t++)
        for (int p = 0; p < A; p++) {
            float *u = U + ((size_t)p * T + t) * c;
            memset(u, 0, (size_t)c * sizeof(float));
            for (int j = 0; j < A; j++) {
                float coef = op->bt[p * A + j];
                int r = t * op->tile + j - op->ph;
                if (coef != 0.0f && r >= 0 && r < op->h) axpy(u, coef, x + (size_t)r * c, c);
            }
        }
    for (int p = 0; p < A; p++)
        ei_linear(&op->packs[p], T, U + (size_t)p * T * c, c, V + (size_t)p * T * m, m);
    for (int t = 0; t < T; t++) {
        int n_rows = oh - t * op->tile < op->tile ? oh - t * op->tile : op->tile;
        for (int i = 0; i < n_rows; i++) {
            float *row = rows + (size_t)i * m;
            if (op->bias) memcpy(row, op->bias, (size_t)m * sizeof(float));
            else memset(row, 0, (size_t)m * sizeof(float));
            int mv = m & ~3;
            for (int p = 0; p < A; p++) {
                float coef = op->at[i * A + p];
                const float *v = V + ((size_t)p * T + t) * m;
                if (coef == 0.0f) continue;
                axpy(row, coef, v, mv);
                for (int q = mv; q < m; q++) row[q] += coef * v[q];
            }
        }
        float *dst = y + (size_t)t * op->tile;
        int q = 0;
        if (n_rows == 4)  /* four output rows x four channels: a 4 x 4 transpose in registers */
            for (; q + 4 <= m; q += 4) {
                v128_t r0 = wasm_v128_load(rows + q), r1 = wasm_v128_load(rows + m + q);
                v128_t r2 = wasm_v128_load(rows + 2 * m + q), r3 = wasm_v128_load(rows + 3 * m + q);
                v128_t a0 = wasm_i32x4_shuffle(r0, r1, 0, 4, 1, 5), a1 = wasm_i32x4_shuffle(r0, r1, 2, 6, 3, 7);
                v128_t b0 = wasm_i32x4_shuffle(r2, r3, 0, 4, 1, 5), b1 = wasm_i32x4_shuffle(r2, r3, 2, 6, 3, 7);
                wasm_v128_store(dst + (size_t)q * oh, wasm_i64x2_shuffle(a0, b0, 0, 2));
                wasm_v128_store(dst + (size_t)(q + 1) * oh, wasm_i64x2_shuffle(a0, b0, 1, 3));
                wasm_v128_store(dst + (size_t)(q + 2) * oh, wasm_i64x2_shuffle(a1, b1, 0, 2));
                wasm_v128_store(dst + (size_t)(q + 3) * oh, wasm_i64x2_shuffle(a1, b1, 1, 3));
            }
        for (; q < m; q++)
            for (int i = 0; i < n_rows; i++) dst[(size_t)q * oh + i] = rows[(size_t)i * m + q];
    }
}

int graph_run(const int *input, int batch, float *out) {
    float *in = G.buffers[G.value_buffer[0]];
    for (int b = 0; b < batch; b++) {
        const int *row = input + (size_t)b * G.input_width;
        if (G.input_float) memcpy(in, row, (size_t)G.input_width * sizeof(float));
        else for (int i = 0; i < G.input_width; i++) in[i] = (float)row[i];
        for (int i = 0; i < G.n_ops; i++) {
            const op_t *op = &G.ops[i];
            double t0 = ei_now_ms();
            switch (op->kind) {
                case OP_GATHER: op_gather(op); break;
                case OP_BINARY: op_binary(op); break;
                case OP_UNARY: op_unary(op); break;
                case OP_REDUCE: op_reduce(op); break;
                case OP_TRANSPOSE: op_transpose(op); break;
                case OP_SLICE: op_slice(op); break;
                case OP_SOFTMAX:
                    for (int r = 0; r < op->outer; r++) {
                        float *dst = val(op->out) + (size_t)r * op->n;
                        if (dst != val(op->in) + (size_t)r * op->n) memcpy(dst, val(op->in) + (size_t)r * op->n, (size_t)op->n * sizeof(float));
                        ei_softmax(dst, op->n, 1.0f, NULL);
                    }
                    break;
                case OP_MATMUL: op_matmul(op); break;
                case OP_CONV: op_conv(op); break;
                case OP_FUSED: op_fused(op); break;
                case OP_WINOGRAD: op_winograd(op); break;
            }
            int gemm = op->kind == OP_MATMUL || op->kind == OP_CONV || op->kind == OP_WINOGRAD;
            ei_prof_ms[gemm ? PROF_GEMM : PROF_OTHER] += ei_now_ms() - t0;
        }
        memcpy(out + (size_t)b * G.output_width, val(G.output_value), (size_t)G.output_width * sizeof(float));
    }
    return 0;
}
