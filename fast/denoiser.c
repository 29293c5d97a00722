// fast/denoiser.c: the posterior mean of an empirical data set (the formulas are in ref/denoiser.c).
//
// What differs from ref/denoiser.c:
// - Up to PM_Q queries go through the data set together, so each image is loaded and widened to
//   double once for all of them, and their independent sums keep the adder busy. The number of
//   queries per group follows N and the thread count; it does not change any result.
// - The distance of one query runs in four double lanes whose lane j is exactly ref's partial sum
//   acc[j] (the terms i % 4 == j, in order, squared then added: no FMA), the tail goes to lane 0 and
//   the lanes combine as (0 + 1) + (2 + 3), as in ref's sqdist. The weights are ref's expression and
//   the weighted sums add w_k y_k[j] (exact products in double) in ref's order of k. The op is
//   therefore bit-identical to ref.
// - When an image fits in PM_BLOCK pixels the weighted sums are formed in the same pass as the
//   weights (ref's passes 2 and 3 fused: the data set is read twice instead of three times);
//   larger images go block by block as in ref.
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "fast.h"
#include "simd.h"

#define PM_BLOCK 1024
#define PM_Q 4

// d[q] = ||z_q - y||^2 for the nq <= PM_Q queries z_q, each bit-identical to ref's sqdist. Called
// with a constant nq, so that the accumulators stay in registers.
static inline __attribute__((always_inline)) void sqdist_q(double d[PM_Q], const float *const zq[PM_Q],
                                                           const float *y, size_t M, int nq) {
    __m256d acc[PM_Q];
    for (int q = 0; q < nq; q++) acc[q] = _mm256_setzero_pd();
    size_t i = 0;
    for (; i + 4 <= M; i += 4) {
        const __m256d yv = fast_load4d(y + i);
        for (int q = 0; q < nq; q++) {
            const __m256d t = _mm256_sub_pd(fast_load4d(zq[q] + i), yv);
            acc[q] = _mm256_add_pd(acc[q], _mm256_mul_pd(t, t));
        }
    }
    for (int q = 0; q < nq; q++) {
        double a[4];
        _mm256_storeu_pd(a, acc[q]);
        for (size_t j = i; j < M; j++) {
            const double t = (double)zq[q][j] - y[j];
            a[0] += t * t;
        }
        d[q] = (a[0] + a[1]) + (a[2] + a[3]);
    }
}

static void sqdist(double d[PM_Q], const float *const zq[PM_Q], const float *y, size_t M, int nq) {
    switch (nq) {
    case 1: sqdist_q(d, zq, y, M, 1); break;
    case 2: sqdist_q(d, zq, y, M, 2); break;
    case 3: sqdist_q(d, zq, y, M, 3); break;
    default: sqdist_q(d, zq, y, M, PM_Q); break;
    }
}

// acc[q * stride + j] += w[q] y[j] for j < len and the queries q < nq; an image of weight 0 is
// skipped, as in ref (0 * inf would be NaN).
static void accumulate(double *acc, size_t stride, const float w[PM_Q], const float *y, size_t len, int nq) {
    for (int q = 0; q < nq; q++) {
        if (w[q] == 0.0f) continue;
        const __m256d wv = _mm256_set1_pd(w[q]);
        double *a = acc + (size_t)q * stride;
        size_t j = 0;
        for (; j + 4 <= len; j += 4)
            _mm256_storeu_pd(a + j, _mm256_add_pd(_mm256_loadu_pd(a + j), _mm256_mul_pd(wv, fast_load4d(y + j))));
        for (; j < len; j++) a[j] += (double)w[q] * y[j];
    }
}

static int max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

void fast_posterior_mean(float *m, float *w, const float *z, const float *data, const float *sigma,
                         int N, int K, size_t M) {
    // m: (N, M)  w: (N, K)  z: (N, M)  data: (K, M)  sigma: (N)
    // PM_Q queries per group, fewer when that would leave threads without a group.
    if (N <= 0) return;
    const int threads = max_threads();
    const int Q = N >= PM_Q * threads ? PM_Q : (N + threads - 1) / threads;
    const int groups = (N + Q - 1) / Q;
    const int fused = M <= PM_BLOCK;
#pragma omp parallel for schedule(dynamic, 1)
    for (int b = 0; b < groups; b++) {
        const int n0 = b * Q, nq = N - n0 < Q ? N - n0 : Q;
        const float *zq[PM_Q];
        double inv2var[PM_Q], dmin[PM_Q], Z[PM_Q], d[PM_Q];
        double acc[PM_Q * PM_BLOCK];
        for (int q = 0; q < nq; q++) {
            zq[q] = z + (size_t)(n0 + q) * M;
            inv2var[q] = 1.0 / (2.0 * (double)sigma[n0 + q] * sigma[n0 + q]);
            dmin[q] = INFINITY;
            Z[q] = 0.0;
        }
        // pass 1: the smallest squared distance of each query
        for (int k = 0; k < K; k++) {
            sqdist(d, zq, data + (size_t)k * M, M, nq);
            for (int q = 0; q < nq; q++)
                if (d[q] < dmin[q]) dmin[q] = d[q];
        }
        // pass 2: the shifted weights and their sums; with `fused`, the weighted sums too
        if (fused)
            for (size_t j = 0; j < (size_t)nq * M; j++) acc[j] = 0.0;
        for (int k = 0; k < K; k++) {
            float wk[PM_Q];
            sqdist(d, zq, data + (size_t)k * M, M, nq);
            for (int q = 0; q < nq; q++) {
                wk[q] = (float)exp(-(d[q] - dmin[q]) * inv2var[q]);
                w[(size_t)(n0 + q) * K + k] = wk[q];
                Z[q] += wk[q];
            }
            if (fused) accumulate(acc, M, wk, data + (size_t)k * M, M, nq);
        }
        if (fused) {
            for (int q = 0; q < nq; q++)
                for (size_t j = 0; j < M; j++) m[(size_t)(n0 + q) * M + j] = (float)(acc[(size_t)q * M + j] / Z[q]);
            continue;
        }
        // pass 3 (images over PM_BLOCK pixels): the weighted sums, block by block as in ref
        for (size_t i0 = 0; i0 < M; i0 += PM_BLOCK) {
            const size_t len = M - i0 < PM_BLOCK ? M - i0 : PM_BLOCK;
            for (size_t j = 0; j < (size_t)nq * PM_BLOCK; j++) acc[j] = 0.0;
            for (int k = 0; k < K; k++) {
                float wk[PM_Q];
                for (int q = 0; q < nq; q++) wk[q] = w[(size_t)(n0 + q) * K + k];
                accumulate(acc, PM_BLOCK, wk, data + (size_t)k * M + i0, len, nq);
            }
            for (int q = 0; q < nq; q++)
                for (size_t j = 0; j < len; j++)
                    m[(size_t)(n0 + q) * M + i0 + j] = (float)(acc[(size_t)q * PM_BLOCK + j] / Z[q]);
        }
    }
}
