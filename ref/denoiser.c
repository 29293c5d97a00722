// ref/denoiser.c: the optimal denoiser of an empirical data set: the posterior mean of the clean image
// given a noisy one, over every image of the set (docs/METHOD.md, The optimal denoiser). The
// stage-division algorithms (common/model/cluster.h) call it through the backend table; nothing else
// does.
//
// Contract of ref/: scalar C11, no intrinsics, no fast-math, readable first; reductions in double;
// only `#pragma omp parallel for` over independent outputs (here: the queries); no allocation (the
// weights go to the caller's scratch w). Forward only: nothing differentiates through it.
//
// The formula, in the EDM form msdiff uses everywhere (z = y + sigma eps; the paper's VP x_t equals
// s_t z with sigma = sigma_t, and w_k = exp(-||x_t - s_t y_k||^2 / (2 (s_t sigma_t)^2)) is the same
// number, because ||x_t - s_t y_k|| = s_t ||z - y_k||):
//   d_k = ||z - y_k||^2,  d_min = min_k d_k
//   w_k = exp(-(d_k - d_min) / (2 sigma^2))      (log-sum-exp: the largest weight is exactly 1)
//   m   = sum_k w_k y_k / sum_k w_k
// At small sigma the exponents reach -1e6 and every unshifted weight would underflow to 0 (0/0);
// shifted by d_min the nearest image keeps weight 1 and m stays a convex combination of the images.
#include <math.h>

#include "ref.h"

// Pixels per block of the weighted sum: the block's accumulators live in doubles on the stack (8 KB),
// so an image of up to PM_BLOCK pixels (Fashion-MNIST 784, CIFAR-10 3072 in three blocks) streams
// through the data set once.
#define PM_BLOCK 1024

// ||a - b||^2 over M pixels, accumulated in double. Four partial sums: one chain of dependent
// additions would be the op's bottleneck (four times the time at the same accuracy).
static double sqdist(const float *a, const float *b, size_t M) {
    double acc[4] = {0.0, 0.0, 0.0, 0.0};
    size_t i = 0;
    for (; i + 4 <= M; i += 4)
        for (int j = 0; j < 4; j++) {
            double d = (double)a[i + j] - b[i + j];
            acc[j] += d * d;
        }
    for (; i < M; i++) {
        double d = (double)a[i] - b[i];
        acc[0] += d * d;
    }
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

void ref_posterior_mean(float *m, float *w, const float *z, const float *data, const float *sigma, int N,
                        int K, size_t M) {
    // m: (N, M)  w: (N, K)  z: (N, M)  data: (K, M)  sigma: (N)
#pragma omp parallel for schedule(dynamic, 1)
    for (int n = 0; n < N; n++) {
        const float *zn = z + (size_t)n * M;
        float *wn = w + (size_t)n * K;
        float *mn = m + (size_t)n * M;
        const double inv2var = 1.0 / (2.0 * (double)sigma[n] * sigma[n]);

        // pass 1: the smallest squared distance (the largest exponent)
        double dmin = INFINITY;
        for (int k = 0; k < K; k++) {
            double d = sqdist(zn, data + (size_t)k * M, M);
            if (d < dmin) dmin = d;
        }
        // pass 2: the shifted weights, in (0, 1], and their sum. A weight below float's range is
        // stored as 0; next to the nearest image's weight of 1 it could not change the sum anyway.
        double Z = 0.0;
        for (int k = 0; k < K; k++) {
            double d = sqdist(zn, data + (size_t)k * M, M);
            wn[k] = (float)exp(-(d - dmin) * inv2var);
            Z += wn[k];
        }
        // pass 3: m = sum_k w_k y_k / Z, PM_BLOCK pixels at a time (accumulators in double); the
        // images of zero weight add nothing and are skipped.
        for (size_t i0 = 0; i0 < M; i0 += PM_BLOCK) {
            const size_t len = M - i0 < PM_BLOCK ? M - i0 : PM_BLOCK;
            double acc[PM_BLOCK] = {0};
            for (int k = 0; k < K; k++) {
                const double wk = wn[k];
                if (wk == 0.0) continue;
                const float *yk = data + (size_t)k * M + i0;
                for (size_t j = 0; j < len; j++) acc[j] += wk * yk[j];
            }
            for (size_t j = 0; j < len; j++) mn[i0 + j] = (float)(acc[j] / Z);
        }
    }
}
