// fast/attention.c: the attention core (one head, EDM's interleaved qkv) on fast/gemm.c. Computes the
// functions of ref/attention.c; the sums run in float and the softmax uses fast_exp8.
// Gradients: activations are written (dqkv =); this op has no parameters.
//
// Per sample, with s = 1/sqrt(C) and q, k, v the (C, HW) planes of qkv (row c of q at qkv + 3c*HW,
// so q is the strided view {qkv, 3HW, 1} and q^T is {qkv, 1, 3HW}):
//   forward   l (HW, HW) = s q^T k;   w = softmax over rows of l (in place);   a (C, HW) = v w^T
//   backward  dv = da w;   dW (HW, HW) = da^T v;   dl = w * (dW - rowsum(w * dW));
//             dq = s k dl^T;   dk = s q dl
// dW and dl live in one (HW, HW) scratch per thread (fast_scratch SLOT_OP; the op table passes
// none). With at least as many samples as threads the samples run in parallel, each with serial
// GEMMs; otherwise one sample at a time with parallel GEMMs.
#include <math.h>

#include "gemm.h"
#include "simd.h"

static inline __m256i lanes_below(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

static inline float hmax(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

void fast_softmax_exp(float *y, const float *x, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, fast_exp8(_mm256_loadu_ps(x + i)));
    for (; i < n; i++) _mm256_maskstore_ps(y + i, lanes_below(1), fast_exp8(_mm256_set1_ps(x[i])));
}

// One row of logits becomes its softmax, in place: w = exp(l - max) / sum, the sum in 8 float lanes.
// The maximum skips NaN as ref/'s `if (l > max)` does (maxps returns its second operand, the running
// maximum, when the first is NaN); a NaN anywhere then reaches the sum and the whole row.
static void softmax_row(float *row, int n) {
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    const __m256i tail = lanes_below(n % 8);
    const int n8 = n - n % 8;
    __m256 m = ninf;
    for (int j = 0; j < n8; j += 8) m = _mm256_max_ps(_mm256_loadu_ps(row + j), m);
    if (n8 < n)
        m = _mm256_max_ps(_mm256_blendv_ps(ninf, _mm256_maskload_ps(row + n8, tail), _mm256_castsi256_ps(tail)), m);
    const __m256 vm = _mm256_set1_ps(hmax(m));
    __m256 sum = _mm256_setzero_ps();
    for (int j = 0; j < n8; j += 8) {
        const __m256 e = fast_exp8(_mm256_sub_ps(_mm256_loadu_ps(row + j), vm));
        _mm256_storeu_ps(row + j, e);
        sum = _mm256_add_ps(sum, e);
    }
    if (n8 < n) {
        __m256 e = fast_exp8(_mm256_sub_ps(_mm256_maskload_ps(row + n8, tail), vm));
        e = _mm256_and_ps(e, _mm256_castsi256_ps(tail));
        _mm256_maskstore_ps(row + n8, tail, e);
        sum = _mm256_add_ps(sum, e);
    }
    const __m256 inv = _mm256_set1_ps(1.0f / hsum(sum));
    for (int j = 0; j < n8; j += 8) _mm256_storeu_ps(row + j, _mm256_mul_ps(_mm256_loadu_ps(row + j), inv));
    if (n8 < n) _mm256_maskstore_ps(row + n8, tail, _mm256_mul_ps(_mm256_maskload_ps(row + n8, tail), inv));
}

// Softmax backward of one row, in place on d (which holds dW): d = w * (d - sum_j w_j d_j).
static void softmax_grad_row(float *d, const float *w, int n) {
    const __m256i tail = lanes_below(n % 8);
    const int n8 = n - n % 8;
    __m256 acc = _mm256_setzero_ps();
    for (int j = 0; j < n8; j += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(w + j), _mm256_loadu_ps(d + j), acc);
    if (n8 < n) acc = _mm256_fmadd_ps(_mm256_maskload_ps(w + n8, tail), _mm256_maskload_ps(d + n8, tail), acc);
    const __m256 r = _mm256_set1_ps(hsum(acc));
    for (int j = 0; j < n8; j += 8)
        _mm256_storeu_ps(d + j, _mm256_mul_ps(_mm256_loadu_ps(w + j), _mm256_sub_ps(_mm256_loadu_ps(d + j), r)));
    if (n8 < n) {
        const __m256 dd = _mm256_sub_ps(_mm256_maskload_ps(d + n8, tail), r);
        _mm256_maskstore_ps(d + n8, tail, _mm256_mul_ps(_mm256_maskload_ps(w + n8, tail), dd));
    }
}

// C = alpha A B for strided views, written.
static void matmul(float *c, ptrdiff_t ldc, struct gemm_mat A, struct gemm_mat B, int M, int N, int K,
                   float alpha, enum gemm_mode mode) {
    const struct gemm g = {.M = M, .N = N, .K = K, .pack_a = gemm_pack_a_mat, .a = &A,
                           .pack_b = gemm_pack_b_mat, .b = &B, .c = {c, ldc, 0, 0}, .alpha = alpha,
                           .accumulate = false, .bias = NULL};
    gemm_run(&g, mode);
}

// One sample. a: (C, HW)  w: (HW, HW)  qkv: (3C, HW)
static void forward_one(float *a, float *w, const float *qkv, int C, int HW, enum gemm_mode mode) {
    const float s = (float)(1.0 / sqrt((double)C));
    const ptrdiff_t ld = 3 * (ptrdiff_t)HW;
    const float *q = qkv, *k = qkv + HW, *v = qkv + 2 * HW;
    matmul(w, HW, (struct gemm_mat){q, 1, ld}, (struct gemm_mat){k, ld, 1}, HW, HW, C, s, mode);
#pragma omp parallel for if (mode == GEMM_PARALLEL)
    for (int i = 0; i < HW; i++) softmax_row(w + (size_t)i * HW, HW);
    matmul(a, HW, (struct gemm_mat){v, ld, 1}, (struct gemm_mat){w, 1, HW}, C, HW, HW, 1.0f, mode);
}

void fast_attention_forward(float *a, float *w, const float *qkv, int N, int C, int HW) {
    // a: (N, C, HW)  w: (N, HW, HW)  qkv: (N, 3C, HW)
    const size_t na = (size_t)C * HW, nw = (size_t)HW * HW, nq = 3 * na;
    if (N >= fast_max_threads()) {
#pragma omp parallel for schedule(dynamic, 1)
        for (int n = 0; n < N; n++) forward_one(a + n * na, w + n * nw, qkv + n * nq, C, HW, GEMM_SERIAL);
    } else {
        for (int n = 0; n < N; n++) forward_one(a + n * na, w + n * nw, qkv + n * nq, C, HW, GEMM_PARALLEL);
    }
}

// One sample. dqkv: (3C, HW)  da: (C, HW)  w: (HW, HW)  qkv: (3C, HW)
// Forward was a = v w^T with w = softmax(s q^T k) (ref/attention.c writes out each formula).
static void backward_one(float *dqkv, const float *da, const float *w, const float *qkv, int C, int HW,
                         enum gemm_mode mode) {
    const float s = (float)(1.0 / sqrt((double)C));
    const ptrdiff_t ld = 3 * (ptrdiff_t)HW;
    const float *q = qkv, *k = qkv + HW, *v = qkv + 2 * HW;
    float *dl = fast_scratch(SLOT_OP, (size_t)HW * HW); // dW, then dl, in place
    // dv[c, j] = sum_i da[c, i] w[i, j]
    matmul(dqkv + 2 * HW, ld, (struct gemm_mat){da, HW, 1}, (struct gemm_mat){w, HW, 1}, C, HW, HW, 1.0f, mode);
    // dW[i, j] = sum_c da[c, i] v[c, j]
    matmul(dl, HW, (struct gemm_mat){da, 1, HW}, (struct gemm_mat){v, ld, 1}, HW, HW, C, 1.0f, mode);
#pragma omp parallel for if (mode == GEMM_PARALLEL)
    for (int i = 0; i < HW; i++) softmax_grad_row(dl + (size_t)i * HW, w + (size_t)i * HW, HW);
    // dq[c, i] = s sum_j k[c, j] dl[i, j];  dk[c, j] = s sum_i q[c, i] dl[i, j]
    matmul(dqkv, ld, (struct gemm_mat){k, ld, 1}, (struct gemm_mat){dl, 1, HW}, C, HW, HW, s, mode);
    matmul(dqkv + HW, ld, (struct gemm_mat){q, ld, 1}, (struct gemm_mat){dl, HW, 1}, C, HW, HW, s, mode);
}

void fast_attention_backward(float *dqkv, const float *da, const float *w, const float *qkv, int N,
                             int C, int HW) {
    // dqkv: (N, 3C, HW)  da: (N, C, HW)  w: (N, HW, HW)  qkv: (N, 3C, HW)
    const size_t na = (size_t)C * HW, nw = (size_t)HW * HW, nq = 3 * na;
    if (N >= fast_max_threads()) {
#pragma omp parallel for schedule(dynamic, 1)
        for (int n = 0; n < N; n++)
            backward_one(dqkv + n * nq, da + n * na, w + n * nw, qkv + n * nq, C, HW, GEMM_SERIAL);
    } else {
        for (int n = 0; n < N; n++)
            backward_one(dqkv + n * nq, da + n * na, w + n * nw, qkv + n * nq, C, HW, GEMM_PARALLEL);
    }
}
