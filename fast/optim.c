// fast/optim.c: Adam, EMA, nan_to_num and the sum of squares (the formulas are in ref/optim.c).
//
// What differs from ref/optim.c: the vector forms do ref's operations in ref's order and precision
// (no FMA contraction; Adam's moments in float, its parameter update in double lanes), so Adam, EMA
// and nan_to_num are bit-identical to ref. sumsq sums in double lanes over a fixed split of the range
// (SUMSQ_PARTS pieces, added in order), so its result does not depend on the thread count, as ref's
// OpenMP reduction does; the two differ by double rounding only.
#include <math.h>

#include "fast.h"
#include "simd.h"

// p -= (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps) on four lanes, in double as ref.
static inline __m128 adam_p4(__m128 p, __m128 m, __m128 v, __m256d step_size, __m256d sqrt_bc2, __m256d eps) {
    const __m256d denom = _mm256_add_pd(_mm256_div_pd(_mm256_sqrt_pd(_mm256_cvtps_pd(v)), sqrt_bc2), eps);
    const __m256d upd = _mm256_div_pd(_mm256_mul_pd(step_size, _mm256_cvtps_pd(m)), denom);
    return _mm256_cvtpd_ps(_mm256_sub_pd(_mm256_cvtps_pd(p), upd));
}

void fast_adam(float *p, float *m, float *v, const float *g, float lr, float beta1, float beta2,
               float eps, long step, size_t n) {
    const double bc1 = 1.0 - pow(beta1, (double)step);
    const double bc2 = 1.0 - pow(beta2, (double)step);
    const double step_size = lr / bc1, sqrt_bc2 = sqrt(bc2);
    const __m256 b1 = _mm256_set1_ps(beta1), c1 = _mm256_set1_ps(1.0f - beta1);
    const __m256 b2 = _mm256_set1_ps(beta2), c2 = _mm256_set1_ps(1.0f - beta2);
    const __m256d ss = _mm256_set1_pd(step_size), sb = _mm256_set1_pd(sqrt_bc2), ev = _mm256_set1_pd(eps);
    const size_t n8 = n & ~(size_t)7;
#pragma omp parallel for if (n >= FAST_PAR_MIN)
    for (size_t i = 0; i < n8; i += 8) {
        const __m256 gi = _mm256_loadu_ps(g + i);
        const __m256 mi = _mm256_add_ps(_mm256_mul_ps(b1, _mm256_loadu_ps(m + i)), _mm256_mul_ps(c1, gi));
        const __m256 vi = _mm256_add_ps(_mm256_mul_ps(b2, _mm256_loadu_ps(v + i)),
                                        _mm256_mul_ps(_mm256_mul_ps(c2, gi), gi));
        _mm256_storeu_ps(m + i, mi);
        _mm256_storeu_ps(v + i, vi);
        const __m256 pi = _mm256_loadu_ps(p + i);
        const __m128 lo = adam_p4(_mm256_castps256_ps128(pi), _mm256_castps256_ps128(mi),
                                  _mm256_castps256_ps128(vi), ss, sb, ev);
        const __m128 hi = adam_p4(_mm256_extractf128_ps(pi, 1), _mm256_extractf128_ps(mi, 1),
                                  _mm256_extractf128_ps(vi, 1), ss, sb, ev);
        _mm256_storeu_ps(p + i, _mm256_set_m128(hi, lo));
    }
    for (size_t i = n8; i < n; i++) {
        m[i] = beta1 * m[i] + (1.0f - beta1) * g[i];
        v[i] = beta2 * v[i] + (1.0f - beta2) * g[i] * g[i];
        double denom = sqrt((double)v[i]) / sqrt_bc2 + eps;
        p[i] = (float)(p[i] - step_size * m[i] / denom);
    }
}

void fast_ema(float *ema, const float *p, float beta, size_t n) {
    const __m256 bv = _mm256_set1_ps(beta);
    const size_t n8 = n & ~(size_t)7;
#pragma omp parallel for if (n >= FAST_PAR_MIN)
    for (size_t i = 0; i < n8; i += 8) {
        const __m256 pi = _mm256_loadu_ps(p + i);
        _mm256_storeu_ps(ema + i, _mm256_add_ps(pi, _mm256_mul_ps(bv, _mm256_sub_ps(_mm256_loadu_ps(ema + i), pi))));
    }
    for (size_t i = n8; i < n; i++) ema[i] = p[i] + beta * (ema[i] - p[i]);
}

void fast_nan_to_num(float *x, float nan, float posinf, float neginf, size_t n) {
    const __m256 nv = _mm256_set1_ps(nan), pv = _mm256_set1_ps(posinf), mv = _mm256_set1_ps(neginf);
    const __m256 inf = _mm256_set1_ps(INFINITY), minf = _mm256_set1_ps(-INFINITY);
    const size_t n8 = n & ~(size_t)7;
#pragma omp parallel for if (n >= FAST_PAR_MIN)
    for (size_t i = 0; i < n8; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        const __m256 is_nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
        const __m256 is_pinf = _mm256_cmp_ps(v, inf, _CMP_EQ_OQ), is_minf = _mm256_cmp_ps(v, minf, _CMP_EQ_OQ);
        v = _mm256_blendv_ps(v, nv, is_nan);
        v = _mm256_blendv_ps(v, pv, is_pinf);
        _mm256_storeu_ps(x + i, _mm256_blendv_ps(v, mv, is_minf));
    }
    for (size_t i = n8; i < n; i++) {
        if (isnan(x[i])) x[i] = nan;
        else if (isinf(x[i])) x[i] = x[i] > 0 ? posinf : neginf;
    }
}

#define SUMSQ_PARTS 64

// sum of x^2 over [i0, i1) in double lanes (squares of floats are exact in double)
static double sumsq_range(const float *x, size_t i0, size_t i1) {
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
    size_t i = i0;
    for (; i + 8 <= i1; i += 8) {
        const __m256d x0 = fast_load4d(x + i), x1 = fast_load4d(x + i + 4);
        a0 = _mm256_fmadd_pd(x0, x0, a0);
        a1 = _mm256_fmadd_pd(x1, x1, a1);
    }
    double s = fast_hsum_pd(_mm256_add_pd(a0, a1));
    for (; i < i1; i++) s += (double)x[i] * x[i];
    return s;
}

// The first index of piece j of SUMSQ_PARTS: floor(n j / SUMSQ_PARTS), without overflow.
static size_t part_start(size_t n, int j) {
    return n / SUMSQ_PARTS * j + n % SUMSQ_PARTS * j / SUMSQ_PARTS;
}

void fast_sumsq(float *out, const float *x, size_t n) {
    double part[SUMSQ_PARTS];
#pragma omp parallel for if (n >= FAST_PAR_MIN)
    for (int j = 0; j < SUMSQ_PARTS; j++) part[j] = sumsq_range(x, part_start(n, j), part_start(n, j + 1));
    double acc = 0.0;
    for (int j = 0; j < SUMSQ_PARTS; j++) acc += part[j];
    out[0] = (float)acc;
}
