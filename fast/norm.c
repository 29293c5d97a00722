// fast/norm.c: group normalisation with a per-channel affine (the formulas are in ref/norm.c).
// Gradients: parameters accumulate (dgamma +=, dbeta +=), activations are written (dx =).
//
// What differs from ref/norm.c:
// - The group statistics and the backward's reductions are summed in four double lanes (two passes
//   for the variance, as ref), in another order than ref's single chain; only double rounding
//   separates them, so the saved mean and rstd agree with ref's to the float rounding.
// - The elementwise passes (y, dx) run in float, 8 lanes: y = (x - mean) (gamma rstd) + beta and
//   dx = rstd (dy gamma - mean_g - xhat mean_gx) with xhat = (x - mean) rstd; a few float roundings
//   where ref rounds once (tests/test_fast.c derives the bound).
// - The backward works from per-(n, c) sums, sum_p dy and sum_p dy (x - mean) (channel_sums): the
//   dx loop combines them into the group means, and a second loop over channels, which re-reads dy
//   and x as ref's does, into dgamma and dbeta. So each parallel loop owns its outputs: no shared
//   accumulators, and the result does not depend on the thread count.
#include <math.h>

#include "fast.h"
#include "simd.h"

// sum_p (x[p] - mu)^2 in double lanes. x: (n)
static double centred_sumsq(const float *x, double mu, size_t n) {
    const __m256d m = _mm256_set1_pd(mu);
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256d d0 = _mm256_sub_pd(fast_load4d(x + i), m), d1 = _mm256_sub_pd(fast_load4d(x + i + 4), m);
        a0 = _mm256_fmadd_pd(d0, d0, a0);
        a1 = _mm256_fmadd_pd(d1, d1, a1);
    }
    double s = fast_hsum_pd(_mm256_add_pd(a0, a1));
    for (; i < n; i++) s += (x[i] - mu) * (x[i] - mu);
    return s;
}

// *s1 = sum_p dy[p], *s2 = sum_p dy[p] (x[p] - mu), in double lanes. dy, x: (n)
static void channel_sums(const float *dy, const float *x, double mu, size_t n, double *s1, double *s2) {
    const __m256d m = _mm256_set1_pd(mu);
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd(), b0 = _mm256_setzero_pd(),
            b1 = _mm256_setzero_pd();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256d g0 = fast_load4d(dy + i), g1 = fast_load4d(dy + i + 4);
        a0 = _mm256_add_pd(a0, g0);
        a1 = _mm256_add_pd(a1, g1);
        b0 = _mm256_fmadd_pd(g0, _mm256_sub_pd(fast_load4d(x + i), m), b0);
        b1 = _mm256_fmadd_pd(g1, _mm256_sub_pd(fast_load4d(x + i + 4), m), b1);
    }
    double t1 = fast_hsum_pd(_mm256_add_pd(a0, a1)), t2 = fast_hsum_pd(_mm256_add_pd(b0, b1));
    for (; i < n; i++) {
        t1 += dy[i];
        t2 += dy[i] * (x[i] - mu);
    }
    *s1 = t1, *s2 = t2;
}

void fast_groupnorm_forward(float *y, float *mean, float *rstd, const float *x, const float *gamma,
                            const float *beta, int N, int C, int HW, int G, float eps) {
    const int CG = C / G;
    const size_t M = (size_t)CG * HW, HW8 = (size_t)HW & ~(size_t)7;
    const __m256i tail = fast_mask8((size_t)HW - HW8);
#pragma omp parallel for collapse(2) if ((size_t)N * C * HW >= FAST_PAR_MIN)
    for (int n = 0; n < N; n++) {
        for (int g = 0; g < G; g++) {
            const size_t base = ((size_t)n * C + (size_t)g * CG) * HW;
            const double mu = fast_sum_d(x + base, M) / M;
            const double rs = 1.0 / sqrt(centred_sumsq(x + base, mu, M) / M + eps);
            const float mf = (float)mu, rf = (float)rs;
            mean[n * G + g] = mf;
            rstd[n * G + g] = rf;
            const __m256 mv = _mm256_set1_ps(mf);
            for (int cc = 0; cc < CG; cc++) {
                const int c = g * CG + cc;
                const float *xc = x + base + (size_t)cc * HW;
                float *yc = y + base + (size_t)cc * HW;
                const __m256 a = _mm256_set1_ps(gamma[c] * rf), b = _mm256_set1_ps(beta[c]);
                for (size_t p = 0; p < HW8; p += 8)
                    _mm256_storeu_ps(yc + p, _mm256_fmadd_ps(_mm256_sub_ps(_mm256_loadu_ps(xc + p), mv), a, b));
                if (HW8 < (size_t)HW)
                    _mm256_maskstore_ps(yc + HW8, tail,
                                        _mm256_fmadd_ps(_mm256_sub_ps(_mm256_maskload_ps(xc + HW8, tail), mv), a, b));
            }
        }
    }
}

// dx = rstd (g - mean_g - xhat mean_gx) for one channel of HW values, g = dy gamma[c].
static inline __m256 dx8(__m256 dy, __m256 x, __m256 mu, __m256 rs, __m256 gm, __m256 mg, __m256 mgx) {
    const __m256 xhat = _mm256_mul_ps(_mm256_sub_ps(x, mu), rs);
    const __m256 t = _mm256_fnmadd_ps(xhat, mgx, _mm256_fmsub_ps(dy, gm, mg));
    return _mm256_mul_ps(rs, t);
}

void fast_groupnorm_backward(float *dx, float *dgamma, float *dbeta, const float *dy,
                             const float *mean, const float *rstd, const float *x,
                             const float *gamma, int N, int C, int HW, int G) {
    const int CG = C / G;
    const size_t M = (size_t)CG * HW, HW8 = (size_t)HW & ~(size_t)7;
    const __m256i tail = fast_mask8((size_t)HW - HW8);
    if (dx) {
#pragma omp parallel for collapse(2) if ((size_t)N * C * HW >= FAST_PAR_MIN)
        for (int n = 0; n < N; n++) {
            for (int g = 0; g < G; g++) {
                const size_t base = ((size_t)n * C + (size_t)g * CG) * HW;
                const double mu = mean[n * G + g], rs = rstd[n * G + g];
                double sum_g = 0.0, sum_gx = 0.0; // sum of dy gamma and of dy gamma xhat over the group
                for (int cc = 0; cc < CG; cc++) {
                    double s1, s2;
                    channel_sums(dy + base + (size_t)cc * HW, x + base + (size_t)cc * HW, mu, (size_t)HW, &s1, &s2);
                    sum_g += gamma[g * CG + cc] * s1;
                    sum_gx += gamma[g * CG + cc] * s2 * rs;
                }
                const __m256 mg = _mm256_set1_ps((float)(sum_g / M)), mgx = _mm256_set1_ps((float)(sum_gx / M));
                const __m256 muv = _mm256_set1_ps(mean[n * G + g]), rsv = _mm256_set1_ps(rstd[n * G + g]);
                for (int cc = 0; cc < CG; cc++) {
                    const size_t off = base + (size_t)cc * HW;
                    const __m256 gm = _mm256_set1_ps(gamma[g * CG + cc]);
                    for (size_t p = 0; p < HW8; p += 8)
                        _mm256_storeu_ps(dx + off + p, dx8(_mm256_loadu_ps(dy + off + p), _mm256_loadu_ps(x + off + p),
                                                           muv, rsv, gm, mg, mgx));
                    if (HW8 < (size_t)HW)
                        _mm256_maskstore_ps(dx + off + HW8, tail,
                                            dx8(_mm256_maskload_ps(dy + off + HW8, tail),
                                                _mm256_maskload_ps(x + off + HW8, tail), muv, rsv, gm, mg, mgx));
                }
            }
        }
    }
    // dgamma[c] += sum_{n, p} dy xhat, dbeta[c] += sum_{n, p} dy: each thread owns its channels.
#pragma omp parallel for if ((size_t)N * C * HW >= FAST_PAR_MIN)
    for (int c = 0; c < C; c++) {
        const int g = c / CG;
        double sum_dy = 0.0, sum_dyx = 0.0;
        for (int n = 0; n < N; n++) {
            const size_t off = ((size_t)n * C + c) * HW;
            double s1, s2;
            channel_sums(dy + off, x + off, mean[n * G + g], (size_t)HW, &s1, &s2);
            sum_dy += s1;
            sum_dyx += s2 * rstd[n * G + g];
        }
        dgamma[c] += (float)sum_dyx;
        dbeta[c] += (float)sum_dy;
    }
}
