#include "kernels.h"

#include <math.h>
#include <string.h>
#include <wasm_simd128.h>

#include "common.h"

/* Fused multiply-add where relaxed SIMD is available (one vfmadd on x86 with FMA, fmla on
 * arm64); otherwise a multiply and an add. Either is accurate enough for fp32 inference. */
#ifdef __wasm_relaxed_simd__
#define MADD(a, b, c) wasm_f32x4_relaxed_madd((a), (b), (c))
#else
#define MADD(a, b, c) wasm_f32x4_add(wasm_f32x4_mul((a), (b)), (c))
#endif

/* The matrix multiply is a dot-product kernel: C[i][j] = sum_k A[i][k] B[k][j] with
 * A read in place (rows, k contiguous) and B packed so that EI_NR columns advance together
 * through k in chunks of 4. Each micro-tile keeps EI_MR x EI_NR vector accumulators of
 * partial sums (one per output), multiplies whole vectors of A and B and reduces the four
 * lanes once at the end. No broadcasts: on wasmtime/x86 a broadcast from memory costs a
 * scalar load, a move and a shuffle, while a vector load folds into the multiply-add.
 * EI_MR x EI_NR accumulators + EI_MR rows of A + one B vector must fit the 16 vector
 * registers Cranelift allocates on x86-64, or the tile spills. */
#ifndef EI_MR
#define EI_MR 1
#endif
/* Rows of A per cache block: MC x k floats of A stay in L2 while every panel of B passes
 * (a panel, k x EI_NR floats, stays in L1). */
#ifndef MC
#define MC 64
#endif

static inline int kpad(int k) { return (k + 3) & ~3; }

size_t ei_packed_floats(int n, int k) {
    return (size_t)((n + EI_NR - 1) / EI_NR) * EI_NR * (size_t)kpad(k);
}

/* dst[p][kb][c][e] = B(k = 4 kb + e, column = p EI_NR + c), zero outside n x k. */
static void pack(const float *src, size_t col_stride, size_t k_stride, int n, int k, float *dst) {
    int k4 = kpad(k);
    for (int p = 0; p < n; p += EI_NR)
        for (int kb = 0; kb < k4; kb += 4)
            for (int c = 0; c < EI_NR; c++)
                for (int e = 0; e < 4; e++)
                    *dst++ = (p + c < n && kb + e < k) ? src[(size_t)(p + c) * col_stride + (size_t)(kb + e) * k_stride] : 0.0f;
}

void ei_pack_nk(const float *w, int ldw, int n, int k, float *dst) { pack(w, (size_t)ldw, 1, n, k, dst); }
void ei_pack_kn(const float *b, int ldb, int k, int n, float *dst) { pack(b, 1, (size_t)ldb, n, k, dst); }

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

/* [sum(v0), sum(v1), sum(v2), sum(v3)] */
static inline v128_t hsum4(v128_t v0, v128_t v1, v128_t v2, v128_t v3) {
    v128_t s01 = wasm_f32x4_add(wasm_i32x4_shuffle(v0, v1, 0, 4, 1, 5), wasm_i32x4_shuffle(v0, v1, 2, 6, 3, 7));
    v128_t s23 = wasm_f32x4_add(wasm_i32x4_shuffle(v2, v3, 0, 4, 1, 5), wasm_i32x4_shuffle(v2, v3, 2, 6, 3, 7));
    return wasm_f32x4_add(wasm_i32x4_shuffle(s01, s23, 0, 1, 4, 5), wasm_i32x4_shuffle(s01, s23, 2, 3, 6, 7));
}

/* One mr x EI_NR tile of C over k (a multiple of 4: callers pad A's rows with zeros,
 * B's packing pads with zeros). `nc` columns are stored (< EI_NR at the right edge). mr
 * is a constant in every instance, so the accumulators live in registers; each instance
 * is its own small function, which keeps Cranelift's register allocator from spilling
 * the accumulators inside the loop. */
static inline __attribute__((always_inline)) void micro(const int mr, int k, const float *a, int lda,
                                                        const float *b, const float *bias, float *c,
                                                        int ldc, int nc) {
    v128_t acc[EI_MR][EI_NR];
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < EI_NR; j++) acc[r][j] = wasm_f32x4_splat(0.0f);
    int kb = 0;
    /* Two chunks of k per iteration, summed before they meet the accumulator: a vector add
     * takes 3 cycles, so this halves the dependency chain through each accumulator (and
     * the loop overhead; Cranelift does not unroll). */
    for (; kb + 8 <= k; kb += 8, b += 8 * EI_NR) {
        v128_t av[EI_MR], av2[EI_MR];
        for (int r = 0; r < mr; r++) {
            av[r] = wasm_v128_load(a + (size_t)r * lda + kb);
            av2[r] = wasm_v128_load(a + (size_t)r * lda + kb + 4);
        }
        for (int j = 0; j < EI_NR; j++) {
            v128_t bv = wasm_v128_load(b + 4 * j), bv2 = wasm_v128_load(b + 4 * EI_NR + 4 * j);
            for (int r = 0; r < mr; r++)
                acc[r][j] = wasm_f32x4_add(acc[r][j], MADD(av2[r], bv2, wasm_f32x4_mul(av[r], bv)));
        }
    }
    for (; kb < k; kb += 4, b += 4 * EI_NR) {
        v128_t av[EI_MR];
        for (int r = 0; r < mr; r++) av[r] = wasm_v128_load(a + (size_t)r * lda + kb);
        for (int j = 0; j < EI_NR; j++) {
            v128_t bv = wasm_v128_load(b + 4 * j);
            for (int r = 0; r < mr; r++) acc[r][j] = MADD(av[r], bv, acc[r][j]);
        }
    }
    v128_t bvec = bias ? wasm_v128_load(bias) : wasm_f32x4_splat(0.0f);
    for (int r = 0; r < mr; r++) {
#if EI_NR == 4
        v128_t out = wasm_f32x4_add(hsum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]), bvec);
#else
        v128_t out = wasm_f32x4_add(hsum4(acc[r][0], acc[r][1], acc[r][0], acc[r][1]), bvec);
#endif
        if (nc == 4) {
            wasm_v128_store(c + (size_t)r * ldc, out);
        } else {
            float tmp[4] __attribute__((aligned(16)));
            wasm_v128_store(tmp, out);
            memcpy(c + (size_t)r * ldc, tmp, (size_t)nc * sizeof(float));
        }
    }
}

#define MICRO(R)                                                                                \
    static __attribute__((noinline)) void micro_##R(int k, const float *a, int lda, const float *b, \
                                                    const float *bias, float *c, int ldc, int nc) { \
        micro(R, k, a, lda, b, bias, c, ldc, nc);                                               \
    }
MICRO(1)
#if EI_MR >= 2
MICRO(2)
#endif
#if EI_MR >= 3
MICRO(3)
#endif
#if EI_MR >= 4
MICRO(4)
#endif

static void micro_rows(int mr, int k, const float *a, int lda, const float *b, const float *bias,
                       float *c, int ldc, int nc) {
    switch (mr) {
#if EI_MR >= 4
        case 4: micro_4(k, a, lda, b, bias, c, ldc, nc); break;
#endif
#if EI_MR >= 3
        case 3: micro_3(k, a, lda, b, bias, c, ldc, nc); break;
#endif
#if EI_MR >= 2
        case 2: micro_2(k, a, lda, b, bias, c, ldc, nc); break;
#endif
        default: micro_1(k, a, lda, b, bias, c, ldc, nc); break;
    }
}

void ei_gemm(int m, int n, int k, const float *a, int lda, const float *bp, const float *bias,
             float *c, int ldc) {
    k = kpad(k);
    size_t panel_floats = (size_t)EI_NR * kpad(k);
    for (int i0 = 0; i0 < m; i0 += MC) {
        int i1 = i0 + MC < m ? i0 + MC : m;
        for (int p = 0; p < n; p += EI_NR) {
            const float *panel = bp + (size_t)(p / EI_NR) * panel_floats;
            const float *pbias = bias ? bias + p : NULL;
            int nc = n - p < EI_NR ? n - p : EI_NR;
            int i = i0;
            for (; i + EI_MR <= i1; i += EI_MR)
                micro_rows(EI_MR, k, a + (size_t)i * lda, lda, panel, pbias, c + (size_t)i * ldc + p, ldc, nc);
            if (i < i1)
                micro_rows(i1 - i, k, a + (size_t)i * lda, lda, panel, pbias, c + (size_t)i * ldc + p, ldc, nc);
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
    v128_t fx = wasm_f32x4_floor(MADD(x, wasm_f32x4_splat(1.44269504088896341f), wasm_f32x4_splat(0.5f)));
    x = MADD(fx, wasm_f32x4_splat(-0.693359375f), x);
    x = MADD(fx, wasm_f32x4_splat(2.12194440e-4f), x);
    v128_t y = wasm_f32x4_splat(1.9875691500e-4f);
    y = MADD(y, x, wasm_f32x4_splat(1.3981999507e-3f));
    y = MADD(y, x, wasm_f32x4_splat(8.3334519073e-3f));
    y = MADD(y, x, wasm_f32x4_splat(4.1665795894e-2f));
    y = MADD(y, x, wasm_f32x4_splat(1.6666665459e-1f));
    y = MADD(y, x, wasm_f32x4_splat(5.0000001201e-1f));
    y = MADD(y, wasm_f32x4_mul(x, x), wasm_f32x4_add(x, wasm_f32x4_splat(1.0f)));
    v128_t n = wasm_i32x4_trunc_sat_f32x4(fx);
    v128_t pow2 = wasm_i32x4_shl(wasm_i32x4_add(n, wasm_i32x4_splat(127)), 23);
    return wasm_f32x4_mul(y, pow2);
}

/* erf by Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7). */
static inline v128_t verf(v128_t x) {
    v128_t ax = wasm_f32x4_abs(x);
    v128_t t = wasm_f32x4_div(wasm_f32x4_splat(1.0f), MADD(ax, wasm_f32x4_splat(0.3275911f), wasm_f32x4_splat(1.0f)));
    v128_t p = wasm_f32x4_splat(1.061405429f);
    p = MADD(p, t, wasm_f32x4_splat(-1.453152027f));
    p = MADD(p, t, wasm_f32x4_splat(1.421413741f));
    p = MADD(p, t, wasm_f32x4_splat(-0.284496736f));
    p = MADD(p, t, wasm_f32x4_splat(0.254829592f));
    p = wasm_f32x4_mul(p, t);
    v128_t e = vexp(wasm_f32x4_neg(wasm_f32x4_mul(ax, ax)));
    v128_t y = wasm_f32x4_sub(wasm_f32x4_splat(1.0f), wasm_f32x4_mul(p, e));
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

void ei_gelu_erf(float *x, size_t n) { 
    size_t i = 0;
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
