/* Compute kernels, all SIMD128: the packed matrix multiply and the element-wise and
 * row-wise operations the encoder and the graph engine share. */
#ifndef EI_KERNELS_H
#define EI_KERNELS_H

#include <stddef.h>

/* Columns per packed panel of B: two v128 vectors. */
#define EI_NR 8

/* B packed for ei_gemm: ceil(n/EI_NR) panels, each k (rounded up to 4) rows of EI_NR
 * columns; zero padded. bias (may be NULL) padded to a multiple of EI_NR. */
typedef struct {
    float *w;
    float *bias;
    int n, k;
} ei_packed;

size_t ei_packed_floats(int n, int k);
/* From W[n][k] (a torch Linear weight: out x in), row stride ldw. dst: ei_packed_floats. */
void ei_pack_nk(const float *w, int ldw, int n, int k, float *dst);
/* From B[k][n] (an ONNX MatMul right operand), row stride ldb. */
void ei_pack_kn(const float *b, int ldb, int k, int n, float *dst);
/* Allocates and packs a Linear layer (w: [n][k], bias: [n] or NULL). 0 or -1. */
int ei_packed_linear(ei_packed *p, const float *w, const float *bias, int n, int k);
int ei_packed_matmul(ei_packed *p, const float *b, const float *bias, int k, int n);

/* C[m][n] = A[m][k] @ B (+ bias), A row stride lda, C row stride ldc. A's rows are read
 * in whole vectors up to k rounded up to 4: when k is not a multiple of 4 the values
 * past k must be finite (zeros), as NaN * 0 is NaN. */
void ei_gemm(int m, int n, int k, const float *a, int lda, const float *bp, const float *bias,
             float *c, int ldc);
static inline void ei_linear(const ei_packed *p, int m, const float *a, int lda, float *c, int ldc) {
    ei_gemm(m, p->n, p->k, a, lda, p->w, p->bias, c, ldc);
}

/* x[rows][n] = LayerNorm(x + residual) * gamma + beta over each row; residual may be NULL. */
void ei_layernorm(float *x, const float *residual, int rows, int n, const float *gamma,
                  const float *beta, float eps);
void ei_gelu_erf(float *x, size_t n);     /* x * 0.5 * (1 + erf(x / sqrt(2))) */
/* s[0..n) = softmax(s * scale + bias) (bias may be NULL). */
void ei_softmax(float *s, int n, float scale, const float *bias);
/* The same over `rows` rows of n values, row stride ld >= n rounded up to 4: rows are
 * processed in whole vectors and the padding columns come out as zeros (bias, if any,
 * is read up to n rounded up to 4). */
void ei_softmax_rows(float *s, int rows, int n, int ld, float scale, const float *bias);

/* Element-wise maps used by the graph engine (in place allowed). */
void ei_exp(const float *x, float *y, size_t n);
void ei_tanh(const float *x, float *y, size_t n);
void ei_erf(const float *x, float *y, size_t n);

#endif
