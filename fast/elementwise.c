// fast/elementwise.c: SiLU, channel concat/split, add, scale, axpby, per-(sample, channel) bias and
// the per-sample row ops, 8 floats per instruction.
//
// What differs from ref/elementwise.c:
// - SiLU runs in float with a vector exp (fast/simd.h) instead of double exp: within a few float ulps
//   of ref (the bound is derived in tests/test_fast.c).
// - add, scale, axpby, bias_add_forward and scale_rows do ref's float operations in ref's order (no
//   FMA contraction), and combine_rows does ref's double arithmetic in double lanes: bit-identical.
// - bias_add_backward and sqerr_rows sum in double lanes, in another order than ref's single chain.
// Tails shorter than a vector go through masked loads and stores (the same arithmetic as the body)
// or, where the op is exact, through the scalar formula.
#include <string.h>

#include "fast.h"
#include "simd.h"

// ---------------------------------------------------------------------------------------------------
// SiLU. With t = exp(-|x|) in (0, 1] nothing overflows: sigmoid(x) = 1/(1+t) for x >= 0 and t/(1+t)
// for x < 0, and 1 - sigmoid(x) is the other one (no cancellation in 1 - s). The infinities and NaN
// come out as ref's: silu(+inf) = inf, silu(-inf) = -inf * 0 = NaN, silu(NaN) = NaN.

static inline __m256 silu8(__m256 x) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 t = fast_exp8(_mm256_or_ps(x, sign)); // exp(-|x|)
    const __m256 d = _mm256_add_ps(_mm256_set1_ps(1.0f), t);
    const __m256 neg = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
    const __m256 num = _mm256_blendv_ps(x, _mm256_mul_ps(x, t), neg);
    return _mm256_div_ps(num, d);
}

// Forward was y = x s; dy/dx = s (1 + x (1 - s)), evaluated as ref writes it: (dy s) (1 + x (1 - s)).
static inline __m256 silu_grad8(__m256 dy, __m256 x) {
    const __m256 t = fast_exp8(_mm256_or_ps(x, _mm256_set1_ps(-0.0f)));
    const __m256 rd = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(_mm256_set1_ps(1.0f), t));
    const __m256 td = _mm256_mul_ps(t, rd);
    const __m256 neg = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
    const __m256 s = _mm256_blendv_ps(rd, td, neg), c = _mm256_blendv_ps(td, rd, neg); // s, 1 - s
    return _mm256_mul_ps(_mm256_mul_ps(dy, s), _mm256_fmadd_ps(x, c, _mm256_set1_ps(1.0f)));
}

void fast_silu_forward(float *y, const float *x, size_t n) {
    const size_t n8 = n & ~(size_t)7;
#pragma omp parallel for if (n >= FAST_PAR_MIN)
    for (size_t i = 0; i < n8; i += 8) _mm256_storeu_ps(y + i, silu8(_mm256_loadu_ps(x + i)));
    if (n8 < n) {
        const __m256i m = fast_mask8(n - n8);
        _mm256_maskstore_ps(y + n8, m, silu8(_mm256_maskload_ps(x + n8, m)));
    }
}

void fast_silu_backward(float *dx, const float *dy, const float *x, size_t n) {
    const size_t n8 = n & ~(size_t)7;
#pragma omp parallel for if (n >= FAST_PAR_MIN)
    for (size_t i = 0; i < n8; i += 8)
        _mm256_storeu_ps(dx + i, silu_grad8(_mm256_loadu_ps(dy + i), _mm256_loadu_ps(x + i)));
    if (n8 < n) {
        const __m256i m = fast_mask8(n - n8);
        _mm256_maskstore_ps(dx + n8, m, silu_grad8(_mm256_maskload_ps(dy + n8, m), _mm256_maskload_ps(x + n8, m)));
    }
}

void fast_exp_array(float *y, const float *x, size_t n) {
    const size_t n8 = n & ~(size_t)7;
    for (size_t i = 0; i < n8; i += 8) _mm256_storeu_ps(y + i, fast_exp8(_mm256_loadu_ps(x + i)));
    if (n8 < n) {
        const __m256i m = fast_mask8(n - n8);
        _mm256_maskstore_ps(y + n8, m, fast_exp8(_mm256_maskload_ps(x + n8, m)));
    }
}

// ---------------------------------------------------------------------------------------------------
// Concat and split: ref's memcpy per sample, the samples spread over the threads.

void fast_concat_forward(float *y, const float *a, const float *b, int N, int CA, int CB, int HW) {
    const size_t sa = (size_t)CA * HW, sb = (size_t)CB * HW;
#pragma omp parallel for if ((size_t)N * (sa + sb) >= FAST_PAR_MIN)
    for (int n = 0; n < N; n++) {
        memcpy(y + n * (sa + sb), a + n * sa, sa * sizeof(float));
        memcpy(y + n * (sa + sb) + sa, b + n * sb, sb * sizeof(float));
    }
}

void fast_concat_backward(float *da, float *db, const float *dy, int N, int CA, int CB, int HW) {
    const size_t sa = (size_t)CA * HW, sb = (size_t)CB * HW;
#pragma omp parallel for if ((size_t)N * (sa + sb) >= FAST_PAR_MIN)
    for (int n = 0; n < N; n++) {
        if (da) memcpy(da + n * sa, dy + n * (sa + sb), sa * sizeof(float));
        if (db) memcpy(db + n * sb, dy + n * (sa + sb) + sa, sb * sizeof(float));
    }
}

// ---------------------------------------------------------------------------------------------------
// Linear combinations: ref's float operations, unfused, so the results are bit-identical.

void fast_add(float *y, const float *a, const float *b, size_t n) {
    const size_t n8 = n & ~(size_t)7;
#pragma omp parallel for if (n >= FAST_PAR_MIN)
    for (size_t i = 0; i < n8; i += 8)
        _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
    for (size_t i = n8; i < n; i++) y[i] = a[i] + b[i];
}

void fast_scale(float *y, const float *x, float s, size_t n) {
    const size_t n8 = n & ~(size_t)7;
    const __m256 sv = _mm256_set1_ps(s);
#pragma omp parallel for if (n >= FAST_PAR_MIN)
    for (size_t i = 0; i < n8; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(sv, _mm256_loadu_ps(x + i)));
    for (size_t i = n8; i < n; i++) y[i] = s * x[i];
}

void fast_axpby(float *y, float a, const float *x, float b, size_t n) {
    const size_t n8 = n & ~(size_t)7;
    const __m256 av = _mm256_set1_ps(a), bv = _mm256_set1_ps(b);
#pragma omp parallel for if (n >= FAST_PAR_MIN)
    for (size_t i = 0; i < n8; i += 8)
        _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_mul_ps(av, _mm256_loadu_ps(x + i)),
                                              _mm256_mul_ps(bv, _mm256_loadu_ps(y + i))));
    for (size_t i = n8; i < n; i++) y[i] = a * x[i] + b * y[i];
}

// ---------------------------------------------------------------------------------------------------
// Per-(sample, channel) bias

void fast_bias_add_forward(float *y, const float *x, const float *bias, int N, int C, int HW) {
    const size_t HW8 = (size_t)HW & ~(size_t)7;
#pragma omp parallel for if ((size_t)N * C * HW >= FAST_PAR_MIN)
    for (long nc = 0; nc < (long)N * C; nc++) {
        const float *xc = x + (size_t)nc * HW;
        float *yc = y + (size_t)nc * HW;
        const __m256 bv = _mm256_set1_ps(bias[nc]);
        for (size_t p = 0; p < HW8; p += 8) _mm256_storeu_ps(yc + p, _mm256_add_ps(_mm256_loadu_ps(xc + p), bv));
        for (size_t p = HW8; p < (size_t)HW; p++) yc[p] = xc[p] + bias[nc];
    }
}

void fast_bias_add_backward(float *dbias, const float *dy, int N, int C, int HW) {
#pragma omp parallel for if ((size_t)N * C * HW >= FAST_PAR_MIN)
    for (long nc = 0; nc < (long)N * C; nc++) dbias[nc] = (float)fast_sum_d(dy + (size_t)nc * HW, (size_t)HW);
}

// ---------------------------------------------------------------------------------------------------
// Per-sample rows. The (N, M) tensor is cut into pieces of at most ROW_PIECE floats, so that a batch
// of one still spreads over the threads.
#define ROW_PIECE ((size_t)1 << 14)

void fast_scale_rows(float *y, const float *x, const float *s, int N, size_t M) {
    const size_t pieces = (M + ROW_PIECE - 1) / ROW_PIECE;
#pragma omp parallel for if ((size_t)N * M >= FAST_PAR_MIN)
    for (size_t t = 0; t < (size_t)N * pieces; t++) {
        const size_t n = t / pieces, i0 = (t % pieces) * ROW_PIECE;
        const size_t i1 = M - i0 < ROW_PIECE ? M : i0 + ROW_PIECE, i8 = i0 + ((i1 - i0) & ~(size_t)7);
        const float *xr = x + n * M;
        float *yr = y + n * M;
        const __m256 sv = _mm256_set1_ps(s[n]);
        for (size_t i = i0; i < i8; i += 8) _mm256_storeu_ps(yr + i, _mm256_mul_ps(sv, _mm256_loadu_ps(xr + i)));
        for (size_t i = i8; i < i1; i++) yr[i] = s[n] * xr[i];
    }
}

// a x + b z in double lanes: both products of floats are exact in double, so the one rounding of the
// FMA equals ref's rounding of the sum, and the conversion to float rounds as ref's cast does.
void fast_combine_rows(float *y, const float *a, const float *x, const float *b, const float *z, int N,
                       size_t M) {
    const size_t pieces = (M + ROW_PIECE - 1) / ROW_PIECE;
#pragma omp parallel for if ((size_t)N * M >= FAST_PAR_MIN)
    for (size_t t = 0; t < (size_t)N * pieces; t++) {
        const size_t n = t / pieces, i0 = (t % pieces) * ROW_PIECE;
        const size_t i1 = M - i0 < ROW_PIECE ? M : i0 + ROW_PIECE, i4 = i0 + ((i1 - i0) & ~(size_t)3);
        const float *xr = x + n * M, *zr = z + n * M;
        float *yr = y + n * M;
        const __m256d av = _mm256_set1_pd(a[n]), bv = _mm256_set1_pd(b[n]);
        for (size_t i = i0; i < i4; i += 4) {
            __m256d v = _mm256_fmadd_pd(av, fast_load4d(xr + i), _mm256_mul_pd(bv, fast_load4d(zr + i)));
            _mm_storeu_ps(yr + i, _mm256_cvtpd_ps(v));
        }
        for (size_t i = i4; i < i1; i++) yr[i] = (float)((double)a[n] * xr[i] + (double)b[n] * zr[i]);
    }
}

// Sum of squared differences in double lanes (differences of floats are exact in double).
void fast_sqerr_rows(float *out, const float *x, const float *z, int N, size_t M) {
#pragma omp parallel for if ((size_t)N * M >= FAST_PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * M, *zr = z + (size_t)n * M;
        __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
        size_t i = 0;
        for (; i + 8 <= M; i += 8) {
            __m256d d0 = _mm256_sub_pd(fast_load4d(xr + i), fast_load4d(zr + i));
            __m256d d1 = _mm256_sub_pd(fast_load4d(xr + i + 4), fast_load4d(zr + i + 4));
            a0 = _mm256_fmadd_pd(d0, d0, a0);
            a1 = _mm256_fmadd_pd(d1, d1, a1);
        }
        double acc = fast_hsum_pd(_mm256_add_pd(a0, a1));
        for (; i < M; i++) {
            double d = (double)xr[i] - zr[i];
            acc += d * d;
        }
        out[n] = (float)acc;
    }
}
