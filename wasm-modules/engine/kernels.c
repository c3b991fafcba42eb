#include "kernels.h"

#include <math.h>
#include <string.h>
#include <wasm_simd128.h>

#include "common.h"

/* a * b + c as a multiply and an add (plain SIMD128, the same bits on every host). */
#define MADD(a, b, c) wasm_f32x4_add(wasm_f32x4_mul((a), (b)), (c))
/* a * b + c for the matrix multiply and the polynomials of exp / erf: relaxed SIMD, a
 * fused multiply-add where the host has one (x86-64 with FMA3, aarch64), else a
 * multiply and an add. */
#define FMA(a, b, c) wasm_f32x4_relaxed_madd((a), (b), (c))

/* The matrix multiply: C[i][j] = sum_k A[i][k] B[k][j] + bias[j], A read in place (rows,
 * k contiguous), B packed once into panels of EI_NR columns (k-major: each k holds the
 * panel's EI_NR values in two vectors). A micro-tile is up to EI_MR rows x 8 columns: per
 * step of 4 k it loads the panel's 8 vectors (4 k x 8 columns) once, then for each row
 * loads one vector of A (4 k), broadcasts its lanes with shuffles and updates the row's
 * two accumulators (8 fused multiply-adds).
 *
 * Why this shape, measured with wasmtime 50 / Cranelift on x86-64 (see README.md):
 * - the epoch check wasmtime puts at every loop header calls into the runtime on its slow
 *   path, and no vector register survives a call: whatever vector a loop carries from
 *   one iteration to the next is spilled and reloaded every iteration anyway. So the
 *   accumulators live in a small tile in memory on purpose, each row loading its two
 *   and storing them back once per step of 4 k, and nothing vector is loop-carried;
 * - Cranelift keeps loads in program order but computes arithmetic where its result is
 *   first needed. Without a use in between, every load of a step would come first and
 *   the values would not fit the 16 vector registers. The tile is accessed through
 *   volatile pointers, so each row's store pins its arithmetic right after its loads:
 *   8 B vectors, 1 A vector, its broadcasts and 2 accumulators are live at a time, for
 *   any number of rows;
 * - so the tile can be tall: up to 32 rows share each load of the panel, and a sentence
 *   of up to 32 tokens reads each weight once (the former 6 x 8 register tile made 13
 *   rows three passes of 5 + 4 + 4);
 * - the row loop is unrolled in full (each height is its own function), else the tile
 *   index is dynamic and the loop gets its own epoch check;
 * - relaxed-SIMD fused multiply-add (vfmadd213ps): half the vector instructions of a
 *   multiply and an add, and on the FMA pipes, which leaves a pipe free for the
 *   broadcast shuffles (one instruction each, where v128.load32_splat costs three, and
 *   Cranelift folds no vector load into an arithmetic instruction: the v128 -> f32x4
 *   bitcast prevents it). A copy of A stored already broadcast, loaded instead of
 *   shuffled, measured slower with FMA (faster without). Results differ in the last
 *   bits between hosts with and without FMA. */
#define EI_MR 32 /* the micro_1 .. micro_32 instances below */
/* Rows of A per cache block: MC x k floats of A stay in L2 while every panel of B passes
 * (a panel, k x EI_NR floats, stays in L1 for k up to ~1000, L2 beyond); up to MC rows,
 * the weights stream from memory once per product. */
#define MC 128

static inline int kpad(int k) { return (k + 3) & ~3; }

size_t ei_packed_floats(int n, int k) {
    return (size_t)((n + EI_NR - 1) / EI_NR) * EI_NR * (size_t)kpad(k);
}

/* dst[p][k][c] = B(k, column p EI_NR + c), zero outside n x k (k padded to 4); panels
 * from column p0 on. */
static void pack(const float *src, size_t col_stride, size_t k_stride, int p0, int n, int k, float *dst) {
    int k4 = kpad(k);
    dst += (size_t)p0 * k4;
    for (int p = p0; p < n; p += EI_NR)
        for (int kk = 0; kk < k4; kk++)
            for (int c = 0; c < EI_NR; c++)
                *dst++ = (p + c < n && kk < k) ? src[(size_t)(p + c) * col_stride + (size_t)kk * k_stride] : 0.0f;
}

/* The attention packs K and V of every head on every call, so both have a vector path
 * for whole panels: W[n][k] is transposed 4 x 4 at a time with shuffles, B[k][n] rows
 * are copied 8 floats at a time; a ragged last panel goes through pack(). */
void ei_pack_nk(const float *w, int ldw, int n, int k, float *dst) {
    int full = k % 4 ? 0 : n / EI_NR * EI_NR;
    float *out = dst;
    for (int p = 0; p < full; p += EI_NR, out += (size_t)EI_NR * k)
        for (int h = 0; h < EI_NR; h += 4) {
            const float *r0 = w + (size_t)(p + h) * ldw, *r1 = r0 + ldw, *r2 = r1 + ldw, *r3 = r2 + ldw;
            for (int kk = 0; kk < k; kk += 4) {
                v128_t a = wasm_v128_load(r0 + kk), b = wasm_v128_load(r1 + kk);
                v128_t c = wasm_v128_load(r2 + kk), d = wasm_v128_load(r3 + kk);
                v128_t ab0 = wasm_i32x4_shuffle(a, b, 0, 4, 1, 5), ab1 = wasm_i32x4_shuffle(a, b, 2, 6, 3, 7);
                v128_t cd0 = wasm_i32x4_shuffle(c, d, 0, 4, 1, 5), cd1 = wasm_i32x4_shuffle(c, d, 2, 6, 3, 7);
                float *o = out + (size_t)kk * EI_NR + h;
                wasm_v128_store(o, wasm_i64x2_shuffle(ab0, cd0, 0, 2));
                wasm_v128_store(o + EI_NR, wasm_i64x2_shuffle(ab0, cd0, 1, 3));
                wasm_v128_store(o + 2 * EI_NR, wasm_i64x2_shuffle(ab1, cd1, 0, 2));
                wasm_v128_store(o + 3 * EI_NR, wasm_i64x2_shuffle(ab1, cd1, 1, 3));
            }
        }
    pack(w, (size_t)ldw, 1, full, n, k, dst);
}

void ei_pack_kn(const float *b, int ldb, int k, int n, float *dst) {
    int full = n / EI_NR * EI_NR, k4 = kpad(k);
    float *out = dst;
    for (int p = 0; p < full; p += EI_NR)
        for (int kk = 0; kk < k4; kk++, out += EI_NR) {
            v128_t lo = wasm_f32x4_splat(0.0f), hi = lo;
            if (kk < k) {
                lo = wasm_v128_load(b + (size_t)kk * ldb + p);
                hi = wasm_v128_load(b + (size_t)kk * ldb + p + 4);
            }
            wasm_v128_store(out, lo);
            wasm_v128_store(out + 4, hi);
        }
    pack(b, 1, (size_t)ldb, full, n, k, dst);
}

static int alloc_packed(ei_packed *p, const float *bias, int n, int k) {
    p->n = n;
    p->k = k;
    p->w = ei_alloc_floats(ei_packed_floats(n, k));
    p->bias = NULL;
    if (!p->w) return -1;
    if (bias) {
        int np = (n + EI_NR - 1) / EI_NR * EI_NR;
        if (!(p->bias = ei_alloc_floats((size_t)np))) return -1;
        memcpy(p->bias, bias, (size_t)n * sizeof(float));
    }
    return 0;
}

int ei_packed_linear(ei_packed *p, const float *w, const float *bias, int n, int k) {
    if (alloc_packed(p, bias, n, k)) return -1;
    ei_pack_nk(w, k, n, k, p->w);
    return 0;
}

int ei_packed_matmul(ei_packed *p, const float *b, const float *bias, int k, int n) {
    if (alloc_packed(p, bias, n, k)) return -1;
    ei_pack_kn(b, n, k, n, p->w);
    return 0;
}

#define LANE(v, l) wasm_i32x4_shuffle((v), (v), (l), (l), (l), (l))
/* Volatile, so that Cranelift sees the tile accesses in program order (see above). */
#define TILE_LOAD(p) (*(const volatile v128_t *)(p))
#define TILE_STORE(p, v) (*(volatile v128_t *)(p) = (v))

/* One mr x 8 tile of C over k (a multiple of 4). `nc` columns are stored (< 8 at the
 * right edge). mr is a constant in every instance (the row loops unroll). */
static inline __attribute__((always_inline)) void micro(const int mr, int k, const float *a, int lda,
                                                        const float *b, const float *bias, float *c,
                                                        int ldc, int nc) {
    v128_t tile[EI_MR * 2];
    v128_t bias0 = bias ? wasm_v128_load(bias) : wasm_f32x4_splat(0.0f);
    v128_t bias1 = bias ? wasm_v128_load(bias + 4) : wasm_f32x4_splat(0.0f);
#pragma clang loop unroll(full)
    for (int r = 0; r < mr; r++) {
        TILE_STORE(&tile[2 * r], bias0);
        TILE_STORE(&tile[2 * r + 1], bias1);
    }
    for (int kk = 0; kk < k; kk += 4, b += 4 * EI_NR) {
        v128_t bv[8];
#pragma clang loop unroll(full)
        for (int j = 0; j < 8; j++) bv[j] = wasm_v128_load(b + 4 * j);
#pragma clang loop unroll(full)
        for (int r = 0; r < mr; r++) {
            v128_t av = wasm_v128_load(a + (size_t)r * lda + kk);
            v128_t acc0 = TILE_LOAD(&tile[2 * r]), acc1 = TILE_LOAD(&tile[2 * r + 1]);
#define STEP(l)                                        \
    {                                                  \
        v128_t s = LANE(av, l);                        \
        acc0 = FMA(s, bv[2 * (l)], acc0);              \
        acc1 = FMA(s, bv[2 * (l) + 1], acc1);          \
    }
            STEP(0) STEP(1) STEP(2) STEP(3)
#undef STEP
            TILE_STORE(&tile[2 * r], acc0);
            TILE_STORE(&tile[2 * r + 1], acc1);
        }
    }
#pragma clang loop unroll(full)
    for (int r = 0; r < mr; r++) {
        float *row = c + (size_t)r * ldc;
        v128_t t0 = TILE_LOAD(&tile[2 * r]), t1 = TILE_LOAD(&tile[2 * r + 1]);
        if (nc == EI_NR) {
            wasm_v128_store(row, t0);
            wasm_v128_store(row + 4, t1);
        } else {
            float tmp[EI_NR] __attribute__((aligned(16)));
            wasm_v128_store(tmp, t0);
            wasm_v128_store(tmp + 4, t1);
            for (int j = 0; j < nc; j++) row[j] = tmp[j];
        }
    }
}

#define MICRO(R)                                                                                    \
    static __attribute__((noinline)) void micro_##R(int k, const float *a, int lda, const float *b, \
                                                    const float *bias, float *c, int ldc, int nc) { \
        micro(R, k, a, lda, b, bias, c, ldc, nc);                                                   \
    }
MICRO(1) MICRO(2) MICRO(3) MICRO(4) MICRO(5) MICRO(6) MICRO(7) MICRO(8)
MICRO(9) MICRO(10) MICRO(11) MICRO(12) MICRO(13) MICRO(14) MICRO(15) MICRO(16)
MICRO(17) MICRO(18) MICRO(19) MICRO(20) MICRO(21) MICRO(22) MICRO(23) MICRO(24)
MICRO(25) MICRO(26) MICRO(27) MICRO(28) MICRO(29) MICRO(30) MICRO(31) MICRO(32)
#undef MICRO

typedef void (*micro_fn)(int k, const float *a, int lda, const float *b, const float *bias, float *c,
                         int ldc, int nc);
static const micro_fn micros[EI_MR + 1] = {
    NULL,     micro_1,  micro_2,  micro_3,  micro_4,  micro_5,  micro_6,  micro_7, micro_8,
    micro_9,  micro_10, micro_11, micro_12, micro_13, micro_14, micro_15, micro_16,
    micro_17, micro_18, micro_19, micro_20, micro_21, micro_22, micro_23, micro_24,
    micro_25, micro_26, micro_27, micro_28, micro_29, micro_30, micro_31, micro_32,
};

void ei_gemm(int m, int n, int k, const float *a, int lda, const float *bp, const float *bias,
             float *c, int ldc) {
    k = kpad(k);
    size_t panel_floats = (size_t)EI_NR * k;
    for (int i0 = 0; i0 < m; i0 += MC) {
        int i1 = i0 + MC < m ? i0 + MC : m;
        for (int p = 0; p < n; p += EI_NR) {
            const float *panel = bp + (size_t)(p / EI_NR) * panel_floats;
            const float *pbias = bias ? bias + p : NULL;
            int nc = n - p < EI_NR ? n - p : EI_NR;
            /* Tiles of equal height (40 rows: 20 + 20, not 32 + 8). */
            int tiles = (i1 - i0 + EI_MR - 1) / EI_MR;
            for (int t = 0, i = i0; t < tiles; t++) {
                int rows = (i1 - i + (tiles - t) - 1) / (tiles - t);
                micros[rows](k, a + (size_t)i * lda, lda, panel, pbias, c + (size_t)i * ldc + p, ldc, nc);
                i += rows;
            }
        }
    }
}

/* ---- element-wise --------------------------------------------------------------------- */

static inline float hsum(v128_t v) {
    return wasm_f32x4_extract_lane(v, 0) + wasm_f32x4_extract_lane(v, 1) +
           wasm_f32x4_extract_lane(v, 2) + wasm_f32x4_extract_lane(v, 3);
}

static inline float hmax(v128_t v) {
    float a = fmaxf(wasm_f32x4_extract_lane(v, 0), wasm_f32x4_extract_lane(v, 1));
    float b = fmaxf(wasm_f32x4_extract_lane(v, 2), wasm_f32x4_extract_lane(v, 3));
    return fmaxf(a, b);
}

/* e^x, Cephes' expf scheme: x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial, scaled by
 * 2^n through the exponent bits. Relative error about 2e-7; inputs clamped to
 * [-87.3, 88.3] (e^-87.3 is the smallest normal float). */
static inline v128_t vexp(v128_t x) {
    x = wasm_f32x4_pmin(wasm_f32x4_splat(88.3762626647949f), x);
    x = wasm_f32x4_pmax(wasm_f32x4_splat(-87.3f), x);
    /* n = round(x / ln 2) by the 1.5 * 2^23 trick: t holds n in its low mantissa bits,
     * which also give 2^n below with an integer add and shift (no float -> int
     * conversion, whose saturating form is long on x86). */
    v128_t t = FMA(x, wasm_f32x4_splat(1.44269504088896341f), wasm_f32x4_splat(12582912.0f));
    v128_t fx = wasm_f32x4_sub(t, wasm_f32x4_splat(12582912.0f));
    x = FMA(fx, wasm_f32x4_splat(-0.693359375f), x);
    x = FMA(fx, wasm_f32x4_splat(2.12194440e-4f), x);
    v128_t y = wasm_f32x4_splat(1.9875691500e-4f);
    y = FMA(y, x, wasm_f32x4_splat(1.3981999507e-3f));
    y = FMA(y, x, wasm_f32x4_splat(8.3334519073e-3f));
    y = FMA(y, x, wasm_f32x4_splat(4.1665795894e-2f));
    y = FMA(y, x, wasm_f32x4_splat(1.6666665459e-1f));
    y = FMA(y, x, wasm_f32x4_splat(5.0000001201e-1f));
    y = FMA(y, wasm_f32x4_mul(x, x), wasm_f32x4_add(x, wasm_f32x4_splat(1.0f)));
    v128_t pow2 = wasm_i32x4_shl(wasm_i32x4_add(t, wasm_i32x4_splat(127 - 0x4B400000)), 23);
    return wasm_f32x4_mul(y, pow2);
}

/* erf by Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7). */
static inline v128_t verf(v128_t x) {
    v128_t ax = wasm_f32x4_abs(x);
    v128_t t = wasm_f32x4_div(wasm_f32x4_splat(1.0f), FMA(ax, wasm_f32x4_splat(0.3275911f), wasm_f32x4_splat(1.0f)));
    v128_t p = wasm_f32x4_splat(1.061405429f);
    p = FMA(p, t, wasm_f32x4_splat(-1.453152027f));
    p = FMA(p, t, wasm_f32x4_splat(1.421413741f));
    p = FMA(p, t, wasm_f32x4_splat(-0.284496736f));
    p = FMA(p, t, wasm_f32x4_splat(0.254829592f));
    p = wasm_f32x4_mul(p, t);
    v128_t e = vexp(wasm_f32x4_neg(wasm_f32x4_mul(ax, ax)));
    v128_t y = FMA(wasm_f32x4_neg(p), e, wasm_f32x4_splat(1.0f));
    /* copy the sign of x */
    v128_t sign = wasm_v128_and(x, wasm_i32x4_splat((int)0x80000000));
    return wasm_v128_or(y, sign);
}

/* tanh(x) = sign(x) (1 - 2 / (e^{2|x|} + 1)); |x| > 9 is +-1 in float. */
static inline v128_t vtanh(v128_t x) {
    v128_t ax = wasm_f32x4_pmin(wasm_f32x4_splat(9.0f), wasm_f32x4_abs(x));
    v128_t e = vexp(wasm_f32x4_add(ax, ax));
    v128_t y = wasm_f32x4_sub(wasm_f32x4_splat(1.0f), wasm_f32x4_div(wasm_f32x4_splat(2.0f), wasm_f32x4_add(e, wasm_f32x4_splat(1.0f))));
    v128_t sign = wasm_v128_and(x, wasm_i32x4_splat((int)0x80000000));
    return wasm_v128_or(y, sign);
}

#define MAP(name, vexpr, sexpr)                                          \
    void name(const float *x, float *y, size_t n) {                     \
        size_t i = 0;                                                   \
        for (; i + 4 <= n; i += 4) {                                    \
            v128_t v = wasm_v128_load(x + i);                           \
            wasm_v128_store(y + i, vexpr);                              \
        }                                                               \
        for (; i < n; i++) {                                            \
            float tail[4] __attribute__((aligned(16))) = {x[i], 0, 0, 0}; \
            v128_t v = wasm_v128_load(tail);                            \
            y[i] = wasm_f32x4_extract_lane(sexpr, 0);                   \
        }                                                               \
    }

MAP(ei_exp, vexp(v), vexp(v))
MAP(ei_tanh, vtanh(v), vtanh(v))
MAP(ei_erf, verf(v), verf(v))

static inline v128_t vgelu(v128_t v) {
    v128_t e = verf(wasm_f32x4_mul(v, wasm_f32x4_splat(0.70710678118654752f)));
    return wasm_f32x4_mul(wasm_f32x4_mul(v, wasm_f32x4_splat(0.5f)), wasm_f32x4_add(e, wasm_f32x4_splat(1.0f)));
}

/* Four vectors per iteration: one GELU is a long dependent chain (a division, then two
 * polynomials), and the loop's per-iteration costs are shared. */
void ei_gelu_erf(float *x, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        v128_t a = vgelu(wasm_v128_load(x + i)), b = vgelu(wasm_v128_load(x + i + 4));
        v128_t c = vgelu(wasm_v128_load(x + i + 8)), d = vgelu(wasm_v128_load(x + i + 12));
        wasm_v128_store(x + i, a);
        wasm_v128_store(x + i + 4, b);
        wasm_v128_store(x + i + 8, c);
        wasm_v128_store(x + i + 12, d);
    }
    for (; i + 4 <= n; i += 4) wasm_v128_store(x + i, vgelu(wasm_v128_load(x + i)));
    for (; i < n; i++) {
        float tail[4] __attribute__((aligned(16))) = {x[i], 0, 0, 0};
        x[i] = wasm_f32x4_extract_lane(vgelu(wasm_v128_load(tail)), 0);
    }
}

void ei_layernorm(float *x, const float *residual, int rows, int n, const float *gamma,
                  const float *beta, float eps) {
    for (int r = 0; r < rows; r++) {
        float *row = x + (size_t)r * n;
        const float *res = residual ? residual + (size_t)r * n : NULL;
        v128_t s = wasm_f32x4_splat(0.0f);
        int i = 0;
        for (; i + 4 <= n; i += 4) {
            v128_t v = wasm_v128_load(row + i);
            if (res) { v = wasm_f32x4_add(v, wasm_v128_load(res + i)); wasm_v128_store(row + i, v); }
            s = wasm_f32x4_add(s, v);
        }
        float sum = hsum(s);
        for (; i < n; i++) { if (res) row[i] += res[i]; sum += row[i]; }
        float mean = sum / (float)n;
        v128_t mv = wasm_f32x4_splat(mean), q = wasm_f32x4_splat(0.0f);
        for (i = 0; i + 4 <= n; i += 4) {
            v128_t d = wasm_f32x4_sub(wasm_v128_load(row + i), mv);
            q = MADD(d, d, q);
        }
        float var = hsum(q);
        for (; i < n; i++) var += (row[i] - mean) * (row[i] - mean);
        float inv = 1.0f / sqrtf(var / (float)n + eps);
        v128_t iv = wasm_f32x4_splat(inv);
        for (i = 0; i + 4 <= n; i += 4) {
            v128_t d = wasm_f32x4_mul(wasm_f32x4_sub(wasm_v128_load(row + i), mv), iv);
            wasm_v128_store(row + i, MADD(d, wasm_v128_load(gamma + i), wasm_v128_load(beta + i)));
        }
        for (; i < n; i++) row[i] = (row[i] - mean) * inv * gamma[i] + beta[i];
    }
}

/* Every lane: the max / sum of the four lanes (shuffles, no lane extraction). */
static inline v128_t allmax(v128_t v) {
    v = wasm_f32x4_pmax(v, wasm_i32x4_shuffle(v, v, 2, 3, 0, 1));
    return wasm_f32x4_pmax(v, wasm_i32x4_shuffle(v, v, 1, 0, 3, 2));
}
static inline v128_t allsum(v128_t v) {
    v = wasm_f32x4_add(v, wasm_i32x4_shuffle(v, v, 2, 3, 0, 1));
    return wasm_f32x4_add(v, wasm_i32x4_shuffle(v, v, 1, 0, 3, 2));
}

void ei_softmax_rows(float *s, int rows, int n, int ld, float scale, const float *bias) {
    int n4 = (n + 3) & ~3;
    v128_t sc = wasm_f32x4_splat(scale), ninf = wasm_f32x4_splat(-INFINITY);
    /* The lanes of the last vector that hold columns below n. */
    v128_t keep = wasm_i32x4_lt(wasm_i32x4_make(0, 1, 2, 3), wasm_i32x4_splat(n - (n4 - 4)));
    for (int r = 0; r < rows; r++) {
        float *row = s + (size_t)r * ld;
        v128_t mx = ninf;
        for (int i = 0; i < n4; i += 4) {
            v128_t v = wasm_f32x4_mul(wasm_v128_load(row + i), sc);
            if (bias) v = wasm_f32x4_add(v, wasm_v128_load(bias + i));
            if (i == n4 - 4) v = wasm_v128_bitselect(v, ninf, keep);
            wasm_v128_store(row + i, v);
            mx = wasm_f32x4_pmax(mx, v);
        }
        v128_t m = allmax(mx), acc = wasm_f32x4_splat(0.0f);
        for (int i = 0; i < n4; i += 4) {
            v128_t e = vexp(wasm_f32x4_sub(wasm_v128_load(row + i), m));
            if (i == n4 - 4) e = wasm_v128_and(e, keep);
            wasm_v128_store(row + i, e);
            acc = wasm_f32x4_add(acc, e);
        }
        v128_t inv = wasm_f32x4_div(wasm_f32x4_splat(1.0f), allsum(acc));
        for (int i = 0; i < n4; i += 4) wasm_v128_store(row + i, wasm_f32x4_mul(wasm_v128_load(row + i), inv));
    }
}

void ei_softmax(float *s, int n, float scale, const float *bias) {
    v128_t sc = wasm_f32x4_splat(scale), mx = wasm_f32x4_splat(-INFINITY);
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        v128_t v = wasm_f32x4_mul(wasm_v128_load(s + i), sc);
        if (bias) v = wasm_f32x4_add(v, wasm_v128_load(bias + i));
        wasm_v128_store(s + i, v);
        mx = wasm_f32x4_pmax(mx, v);
    }
    float m = hmax(mx);
    for (; i < n; i++) { s[i] = s[i] * scale + (bias ? bias[i] : 0.0f); m = fmaxf(m, s[i]); }
    /* The tail goes through the vector exp on a zero-padded copy. */
    v128_t mv = wasm_f32x4_splat(m), acc = wasm_f32x4_splat(0.0f);
    for (i = 0; i + 4 <= n; i += 4) {
        v128_t e = vexp(wasm_f32x4_sub(wasm_v128_load(s + i), mv));
        wasm_v128_store(s + i, e);
        acc = wasm_f32x4_add(acc, e);
    }
    float total = hsum(acc);
    for (; i < n; i++) {
        float tail[4] __attribute__((aligned(16))) = {s[i] - m, 0, 0, 0};
        s[i] = wasm_f32x4_extract_lane(vexp(wasm_v128_load(tail)), 0);
        total += s[i];
    }
    v128_t inv = wasm_f32x4_splat(1.0f / total);
    for (i = 0; i + 4 <= n; i += 4) wasm_v128_store(s + i, wasm_f32x4_mul(wasm_v128_load(s + i), inv));
    for (; i < n; i++) s[i] *= 1.0f / total;
}
