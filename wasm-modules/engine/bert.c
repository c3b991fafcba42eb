#include "bert.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "json.h"
#include "kernels.h"
#include "profile.h"
#include "safetensors.h"

/* Additive bias on masked keys, as torch BERT exports use. */
#define MASK_BIAS -10000.0f

typedef struct {
    ei_packed qkv, attn_out, inter, out;
    float *ln1_g, *ln1_b, *ln2_g, *ln2_b;
} layer_t;

static struct {
    int hidden, heads, head_dim, layers, inter, vocab, max_pos, type_vocab;
    float eps;
    float *word, *pos, *type, *ln_g, *ln_b;
    layer_t *layer;
    /* The plan: every buffer a call needs, sized once at load. */
    int max_tokens, max_seq;
    float *x, *qkv, *ctx, *tmp, *ff, *scores, *kpack, *vpack, *keybias;
    int *row_start, *row_len;
} M;

static int read_config(const char *path) {
    char err[160], *text;
    size_t len;
    if (ei_read_file(path, &text, &len)) return -1;
    json_node *cfg = json_parse(text, len, err, sizeof err);
    free(text);
    if (!cfg) return ei_fail("%s: %s", path, err);
    int rc = 0;
    M.hidden = (int)json_num(cfg, "hidden_size", 0);
    M.heads = (int)json_num(cfg, "num_attention_heads", 0);
    M.layers = (int)json_num(cfg, "num_hidden_layers", 0);
    M.inter = (int)json_num(cfg, "intermediate_size", 4.0 * M.hidden);
    M.vocab = (int)json_num(cfg, "vocab_size", 0);
    M.max_pos = (int)json_num(cfg, "max_position_embeddings", 512);
    M.type_vocab = (int)json_num(cfg, "type_vocab_size", 2);
    M.eps = (float)json_num(cfg, "layer_norm_eps", 1e-12);
    const char *act = json_str(cfg, "hidden_act", "gelu");
    const char *pos_type = json_str(cfg, "position_embedding_type", "absolute");
    const char *model_type = json_str(cfg, "model_type", "bert");
    if (strcmp(model_type, "bert") != 0)
        rc = ei_fail("%s: model_type %s is not supported (only bert)", path, model_type);
    else if (M.hidden <= 0 || M.heads <= 0 || M.hidden % M.heads || M.layers <= 0 || M.vocab <= 0 || M.inter <= 0)
        rc = ei_fail("%s: hidden_size, num_attention_heads, num_hidden_layers, vocab_size are missing or inconsistent", path);
    else if (M.hidden % 4 || M.inter % 4 || (M.hidden / M.heads) % 4)
        rc = ei_fail("%s: hidden_size, intermediate_size and the head size must be multiples of 4", path);
    else if (strcmp(act, "gelu") != 0)
        rc = ei_fail("%s: hidden_act %s is not supported (only gelu, the exact erf form)", path, act);
    else if (strcmp(pos_type, "absolute") != 0)
        rc = ei_fail("%s: position_embedding_type %s is not supported", path, pos_type);
    M.head_dim = M.heads ? M.hidden / M.heads : 0;
    json_free(cfg);
    return rc;
}

/* Loads a Linear layer, or several stacked along the output axis into one (q, k, v). */
static int load_linear(st_file *st, ei_packed *p, const char *const *names, int parts, int n, int k) {
    float *w = ei_alloc_floats((size_t)parts * n * k), *b = ei_alloc_floats((size_t)parts * n);
    int rc = (!w || !b) ? -1 : 0;
    char name[256];
    for (int i = 0; rc == 0 && i < parts; i++) {
        int64_t wshape[2] = {n, k}, bshape[1] = {n};
        snprintf(name, sizeof name, "%s.weight", names[i]);
        const st_tensor *t = st_find(st, name);
        if (!t || t->ndim != 2 || t->shape[0] != wshape[0] || t->shape[1] != wshape[1]) { rc = ei_fail("tensor %s is missing or has a wrong shape", name); break; }
        rc = st_read_f32(st, t, w + (size_t)i * n * k);
        snprintf(name, sizeof name, "%s.bias", names[i]);
        t = st_find(st, name);
        if (rc == 0 && (!t || t->ndim != 1 || t->shape[0] != bshape[0])) rc = ei_fail("tensor %s is missing or has a wrong shape", name);
        if (rc == 0) rc = st_read_f32(st, t, b + (size_t)i * n);
    }
    if (rc == 0) rc = ei_packed_linear(p, w, b, parts * n, k);
    ei_free(w);
    ei_free(b);
    return rc;
}

static float *load_vec(st_file *st, const char *name, int n) {
    int64_t shape[1] = {n};
    return st_load(st, name, 1, shape);
}

static int load_weights(const char *path) {
    char a[160], b[160], c[160];
    st_file st;
    if (st_open(&st, path)) return -1;
    int H = M.hidden, rc = -1;
    int64_t wshape[2] = {M.vocab, H}, pshape[2] = {M.max_pos, H}, tshape[2] = {M.type_vocab, H};
    if (!(M.word = st_load(&st, "embeddings.word_embeddings.weight", 2, wshape))) goto done;
    if (!(M.pos = st_load(&st, "embeddings.position_embeddings.weight", 2, pshape))) goto done;
    if (!(M.type = st_load(&st, "embeddings.token_type_embeddings.weight", 2, tshape))) goto done;
    if (!(M.ln_g = load_vec(&st, "embeddings.LayerNorm.weight", H))) goto done;
    if (!(M.ln_b = load_vec(&st, "embeddings.LayerNorm.bias", H))) goto done;
    M.layer = calloc((size_t)M.layers, sizeof(layer_t));
    for (int l = 0; l < M.layers; l++) {
        layer_t *L = &M.layer[l];
        snprintf(a, sizeof a, "encoder.layer.%d.attention.self.query", l);
        snprintf(b, sizeof b, "encoder.layer.%d.attention.self.key", l);
        snprintf(c, sizeof c, "encoder.layer.%d.attention.self.value", l);
        const char *qkv[3] = {a, b, c};
        if (load_linear(&st, &L->qkv, qkv, 3, H, H)) goto done;
        const char *one[1] = {a};
        snprintf(a, sizeof a, "encoder.layer.%d.attention.output.dense", l);
        if (load_linear(&st, &L->attn_out, one, 1, H, H)) goto done;
        snprintf(a, sizeof a, "encoder.layer.%d.intermediate.dense", l);
        if (load_linear(&st, &L->inter, one, 1, M.inter, H)) goto done;
        snprintf(a, sizeof a, "encoder.layer.%d.output.dense", l);
        if (load_linear(&st, &L->out, one, 1, H, M.inter)) goto done;
        snprintf(a, sizeof a, "encoder.layer.%d.attention.output.LayerNorm.weight", l);
        if (!(L->ln1_g = load_vec(&st, a, H))) goto done;
        snprintf(a, sizeof a, "encoder.layer.%d.attention.output.LayerNorm.bias", l);
        if (!(L->ln1_b = load_vec(&st, a, H))) goto done;
        snprintf(a, sizeof a, "encoder.layer.%d.output.LayerNorm.weight", l);
        if (!(L->ln2_g = load_vec(&st, a, H))) goto done;
        snprintf(a, sizeof a, "encoder.layer.%d.output.LayerNorm.bias", l);
        if (!(L->ln2_b = load_vec(&st, a, H))) goto done;
    }
    rc = 0;
done:
    st_close(&st);
    return rc;
}

static int plan(int max_tokens, int max_seq) {
    int H = M.hidden, T = max_tokens, S = max_seq;
    size_t Sp = (size_t)(S + EI_NR - 1) / EI_NR * EI_NR;
    M.max_tokens = T;
    M.max_seq = S;
    M.x = ei_alloc_floats((size_t)T * H);
    M.tmp = ei_alloc_floats((size_t)T * H);
    M.ctx = ei_alloc_floats((size_t)T * H);
    M.qkv = ei_alloc_floats((size_t)T * 3 * H);
    M.ff = ei_alloc_floats((size_t)T * M.inter);
    M.scores = ei_alloc_floats((size_t)S * Sp);
    M.kpack = ei_alloc_floats(ei_packed_floats(S, M.head_dim));
    M.vpack = ei_alloc_floats(ei_packed_floats(M.head_dim, S));
    M.keybias = ei_alloc_floats(Sp);
    M.row_start = calloc((size_t)T + 1, sizeof(int));
    M.row_len = calloc((size_t)T + 1, sizeof(int));
    if (!M.x || !M.tmp || !M.ctx || !M.qkv || !M.ff || !M.scores || !M.kpack || !M.vpack ||
        !M.keybias || !M.row_start || !M.row_len)
        return ei_fail("out of memory planning buffers for %d tokens", T);
    return 0;
}

int bert_load(const char *config, const char *weights, int max_tokens, int max_seq) {
    if (read_config(config) || load_weights(weights)) return -1;
    if (max_seq <= 0 || max_seq > M.max_pos) max_seq = M.max_pos;
    if (max_tokens < max_seq) max_tokens = max_seq;
    return plan(max_tokens, max_seq);
}

int bert_hidden(void) { return M.hidden; }
int bert_max_positions(void) { return M.max_seq; }

/* Self-attention of one sequence (rows [start, start+len) of the packed batch). */
static void attention(int start, int len, const int *mask) {
    int H = M.hidden, d = M.head_dim, ld = 3 * H;
    float scale = 1.0f / sqrtf((float)d);
    int len4 = (len + 3) & ~3;
    for (int j = 0; j < len; j++) M.keybias[j] = mask[j] ? 0.0f : MASK_BIAS;
    for (int h = 0; h < M.heads; h++) {
        const float *q = M.qkv + (size_t)start * ld + h * d;
        ei_pack_nk(q + H, ld, len, d, M.kpack);
        ei_pack_kn(q + 2 * H, ld, len, d, M.vpack);
        /* Rows of the probabilities are padded to a multiple of 4 with zeros: ei_gemm
         * reads A in whole vectors. */
        ei_gemm(len, len, d, q, ld, M.kpack, NULL, M.scores, len4);
        ei_softmax_rows(M.scores, len, len, len4, scale, M.keybias);
        ei_gemm(len, d, len, M.scores, len4, M.vpack, NULL, M.ctx + (size_t)start * H + h * d, H);
    }
}

int bert_embed(const int *ids, const int *types, const int *mask, int batch, int seq, float *out) {
    int H = M.hidden;
    if (batch <= 0 || seq <= 0) return ei_fail("empty batch");
    if (seq > M.max_seq) return ei_fail("sequence of %d tokens; this model takes at most %d", seq, M.max_seq);
    if ((long long)batch * seq > M.max_tokens) return ei_fail("%d x %d tokens exceed the planned %d", batch, seq, M.max_tokens);
    double t0 = ei_now_ms();
    /* Pack the rows back to back, dropping trailing padding: padded positions never
     * change the states of real tokens, and pooling ignores them. */
    int T = 0;
    for (int b = 0; b < batch; b++) {
        const int *m = mask + (size_t)b * seq;
        int len = seq;
        while (len > 0 && m[len - 1] == 0) len--;
        M.row_start[b] = T;
        M.row_len[b] = len;
        for (int p = 0; p < len; p++) {
            int id = ids[(size_t)b * seq + p], tt = types[(size_t)b * seq + p];
            if (id < 0 || id >= M.vocab) return ei_fail("token id %d at [%d][%d] is outside the vocabulary (%d)", id, b, p, M.vocab);
            if (tt < 0 || tt >= M.type_vocab) return ei_fail("token type %d at [%d][%d] is outside 0..%d", tt, b, p, M.type_vocab - 1);
            float *x = M.x + (size_t)(T + p) * H;
            const float *w = M.word + (size_t)id * H, *ps = M.pos + (size_t)p * H, *ty = M.type + (size_t)tt * H;
            for (int i = 0; i < H; i++) x[i] = w[i] + ps[i] + ty[i];
        }
        T += len;
    }
    ei_layernorm(M.x, NULL, T, H, M.ln_g, M.ln_b, M.eps);
    double t1 = ei_now_ms();
    ei_prof_ms[PROF_EMBED] += t1 - t0;
    float *x = M.x, *tmp = M.tmp;
    for (int l = 0; l < M.layers && T > 0; l++) {
        layer_t *L = &M.layer[l];
        double a = ei_now_ms();
        ei_linear(&L->qkv, T, x, H, M.qkv, 3 * H);
        double b = ei_now_ms();
        for (int r = 0; r < batch; r++)
            if (M.row_len[r]) attention(M.row_start[r], M.row_len[r], mask + (size_t)r * seq);
        double c = ei_now_ms();
        ei_linear(&L->attn_out, T, M.ctx, H, tmp, H);
        double d = ei_now_ms();
        ei_layernorm(tmp, x, T, H, L->ln1_g, L->ln1_b, M.eps);
        float *swap = x; x = tmp; tmp = swap;
        double e = ei_now_ms();
        ei_linear(&L->inter, T, x, H, M.ff, M.inter);
        double f = ei_now_ms();
        ei_gelu_erf(M.ff, (size_t)T * M.inter);
        double g = ei_now_ms();
        ei_linear(&L->out, T, M.ff, M.inter, tmp, H);
        double h = ei_now_ms();
        ei_layernorm(tmp, x, T, H, L->ln2_g, L->ln2_b, M.eps);
        swap = x; x = tmp; tmp = swap;
        double i = ei_now_ms();
        ei_prof_ms[PROF_GEMM] += (b - a) + (d - c) + (f - e) + (h - g);
        ei_prof_ms[PROF_ATTENTION] += c - b;
        ei_prof_ms[PROF_GELU] += g - f;
        ei_prof_ms[PROF_LAYERNORM] += (e - d) + (i - h);
    }
    /* Masked mean pooling, then L2 normalisation (count clamped at 1e-9, norm at 1e-12). */
    double t2 = ei_now_ms();
    for (int b = 0; b < batch; b++) {
        float *o = out + (size_t)b * H;
        memset(o, 0, (size_t)H * sizeof(float));
        const int *m = mask + (size_t)b * seq;
        float count = 0.0f;
        for (int p = 0; p < M.row_len[b]; p++) {
            if (!m[p]) continue;
            const float *xr = x + (size_t)(M.row_start[b] + p) * H;
            for (int i = 0; i < H; i++) o[i] += xr[i];
            count += 1.0f;
        }
        float inv = 1.0f / fmaxf(count, 1e-9f), norm = 0.0f;
        for (int i = 0; i < H; i++) { o[i] *= inv; norm += o[i] * o[i]; }
        norm = 1.0f / fmaxf(sqrtf(norm), 1e-12f);
        for (int i = 0; i < H; i++) o[i] *= norm;
    }
    ei_prof_ms[PROF_OTHER] += ei_now_ms() - t2;
    return 0;
}
