// cuda/norm.cu: group normalisation with a per-channel affine (the formulas are in ref/norm.c).
// Gradients: parameters accumulate (dgamma +=, dbeta +=), activations are written (dx =).
//
// Kernels (the group of (n, g) is the M = (C/G) HW contiguous values from (n C + g C/G) HW):
//   forward   groupnorm_forward_kernel  one block per (n, g), a power of two of 32..256 threads:
//             the mean, then the centred sum of squares (two passes, as ref), then y; a group of
//             at most GN_CACHE floats is read once and kept in shared memory for the passes.
//   backward  channel_sums_kernel       one block per (n, c): s1 = sum_p dy, s2 = sum_p dy (x - mean),
//                                       into scratch (2 N C doubles, the only scratch of this file);
//             groupnorm_dx_kernel       one block per (n, g): the group's two means from the CG
//                                       channel sums, then dx elementwise (skipped when dx is NULL);
//             groupnorm_params_kernel   one block per channel: dgamma, dbeta += the sums of the
//                                       (n, c) partials over n (threads stride over n, then block_sum).
// No atomics: every sum has a fixed order, so results repeat bit for bit from run to run.
//
// What differs from ref/norm.c:
// - Every sum is in double as in ref, in another order: each thread of a block strides over its
//   values, then block_sum adds the threads' partials (warp butterflies, then warps in order). The
//   backward works from per-(n, c) sums as fast/ does (sum_g = sum_c gamma_c s1[n, c], sum_gx =
//   sum_c gamma_c s2[n, c] rstd, and dgamma[c] = sum_n s2[n, c] rstd[n, g]) where ref adds the
//   products element by element. Only
//   double rounding separates the two, so the saved mean and rstd agree with ref's to the float
//   rounding, and the backward's sums to a few double ulps of their terms' magnitude.
// - y and dx are ref's expressions in double from the float mean and rstd, rounded once to float;
//   nvcc may fuse a double multiply and add into one FMA (one double rounding fewer than ref), which
//   can move the float result only where the exact value lies within a double ulp of a rounding
//   boundary. The emulator (g++ on x86-64 without FMA) evaluates ref's expressions exactly.
#include <limits.h>

#include "cuda.cuh"

namespace MSD_CUDA_NS {

// Floats of a group that the forward keeps in shared memory (24 KB: every group of `mini`).
#define GN_CACHE 6144

// ---------------------------------------------------------------------------------------------------
// Forward

__global__ static void groupnorm_forward_kernel(float *y, float *mean, float *rstd, const float *x,
                                                const float *gamma, const float *beta, int C, int HW,
                                                int G, float eps) {
    // y, x: (N, C, HW)  mean, rstd: (N, G)  gamma, beta: (C); block q = blockIdx.x = n G + g
    const int CG = C / G, g = (int)(blockIdx.x % G), M = CG * HW; // M < 2^31: checked by the caller
    const size_t base = (size_t)blockIdx.x * M;                   // = (n C + g CG) HW
    const float *xg = x + base;
    float *yg = y + base;

    // A group that fits is read from global memory once, into shared memory, and the three passes
    // below read it there; a larger one is read three times.
    __shared__ float cache[GN_CACHE];
    const bool cached = M <= GN_CACHE;
    const float *xs = cached ? cache : xg;
    double sum = 0.0;
    for (int i = threadIdx.x; i < M; i += blockDim.x) {
        const float v = xg[i];
        if (cached) cache[i] = v;
        sum += v;
    }
    const double mu = block_sum(sum) / M; // (its barriers also publish the cache)
    double sq = 0.0; // two passes: no cancellation in the variance
    for (int i = threadIdx.x; i < M; i += blockDim.x) sq += (xs[i] - mu) * (xs[i] - mu);
    const double rs = 1.0 / sqrt(block_sum(sq) / M + eps);

    // y from the saved (float) statistics, as ref does
    const float mf = (float)mu, rf = (float)rs;
    if (threadIdx.x == 0) mean[blockIdx.x] = mf, rstd[blockIdx.x] = rf;
    for (int i = threadIdx.x; i < M; i += blockDim.x) {
        const int c = g * CG + i / HW;
        yg[i] = (float)(gamma[c] * ((xs[i] - (double)mf) * rf) + beta[c]);
    }
}

void cu_groupnorm_forward(float *y, float *mean, float *rstd, const float *x, const float *gamma,
                          const float *beta, int N, int C, int HW, int G, float eps) {
    const size_t groups = (size_t)N * G, M = (size_t)(C / G) * HW;
    if (groups == 0 || M == 0) return;
    CHECK(M <= INT_MAX, "groupnorm: a group of %zu values is too large for 32-bit indices", M);
    launch("groupnorm_forward", groupnorm_forward_kernel, (unsigned)groups, reduce_threads(M), y, mean,
           rstd, x, gamma, beta, C, HW, G, eps);
}

// ---------------------------------------------------------------------------------------------------
// Backward. Forward was y = gamma xhat + beta, xhat = (x - mean) rstd; ref/norm.c derives
//   dx = rstd (dy gamma - mean_group(dy gamma) - xhat mean_group(dy gamma xhat)),
//   dgamma[c] += sum_{n, p} dy xhat,   dbeta[c] += sum_{n, p} dy.
// All three need only two sums per (n, c), s1 = sum_p dy and s2 = sum_p dy (x - mean):
//   mean_group(dy gamma) = sum_c gamma_c s1 / M,  mean_group(dy gamma xhat) = sum_c gamma_c s2 rstd / M,
//   dgamma[c] += sum_n s2 rstd,                   dbeta[c] += sum_n s1.

__global__ static void channel_sums_kernel(double *s1, double *s2, const float *dy, const float *mean,
                                           const float *x, int C, int HW, int G) {
    // s1, s2: (N, C)  dy, x: (N, C, HW)  mean: (N, G); block blockIdx.x = n C + c
    const int n = (int)(blockIdx.x / C), c = (int)(blockIdx.x % C);
    const double mu = mean[n * G + c / (C / G)];
    const float *dyc = dy + (size_t)blockIdx.x * HW, *xc = x + (size_t)blockIdx.x * HW;
    double a = 0.0, b = 0.0;
    for (int p = threadIdx.x; p < HW; p += blockDim.x) {
        a += dyc[p];
        b += dyc[p] * (xc[p] - mu);
    }
    block_sum2(&a, &b);
    if (threadIdx.x == 0) s1[blockIdx.x] = a, s2[blockIdx.x] = b;
}

__global__ static void groupnorm_dx_kernel(float *dx, const double *s1, const double *s2,
                                           const float *dy, const float *mean, const float *rstd,
                                           const float *x, const float *gamma, int C, int HW, int G) {
    // dx, dy, x: (N, C, HW)  s1, s2: (N, C)  mean, rstd: (N, G)  gamma: (C); block q = n G + g
    const int CG = C / G, n = (int)(blockIdx.x / G), g = (int)(blockIdx.x % G), M = CG * HW;
    const size_t base = (size_t)blockIdx.x * M;
    const double mu = mean[blockIdx.x], rs = rstd[blockIdx.x];
    // the group means; every thread forms them, in the same order (CG terms, no barrier needed)
    double sum_g = 0.0, sum_gx = 0.0;
    for (int cc = 0; cc < CG; cc++) {
        const int c = g * CG + cc;
        sum_g += gamma[c] * s1[(size_t)n * C + c];
        sum_gx += gamma[c] * s2[(size_t)n * C + c] * rs;
    }
    const double mean_g = sum_g / M, mean_gx = sum_gx / M;
    for (int i = threadIdx.x; i < M; i += blockDim.x) {
        const double gm = gamma[g * CG + i / HW];
        const double xhat = (x[base + i] - mu) * rs;
        dx[base + i] = (float)(rs * (dy[base + i] * gm - mean_g - xhat * mean_gx));
    }
}

__global__ static void groupnorm_params_kernel(float *dgamma, float *dbeta, const double *s1,
                                               const double *s2, const float *rstd, int N, int C,
                                               int G) {
    // dgamma, dbeta: (C) +=  s1, s2: (N, C)  rstd: (N, G); channel c = blockIdx.x, threads over n
    const int c = blockIdx.x, g = c / (C / G);
    double sum_dy = 0.0, sum_dyx = 0.0;
    for (int n = threadIdx.x; n < N; n += blockDim.x) {
        sum_dy += s1[(size_t)n * C + c];
        sum_dyx += s2[(size_t)n * C + c] * rstd[n * G + g];
    }
    block_sum2(&sum_dy, &sum_dyx);
    if (threadIdx.x == 0) {
        dgamma[c] += (float)sum_dyx;
        dbeta[c] += (float)sum_dy;
    }
}

void cu_groupnorm_backward(float *dx, float *dgamma, float *dbeta, const float *dy,
                           const float *mean, const float *rstd, const float *x, const float *gamma,
                           int N, int C, int HW, int G) {
    const size_t NC = (size_t)N * C, M = (size_t)(C / G) * HW;
    if (NC == 0 || HW <= 0) return;
    CHECK(M <= INT_MAX, "groupnorm: a group of %zu values is too large for 32-bit indices", M);
    double *s1 = (double *)cu_scratch(4 * NC), *s2 = s1 + NC; // (N, C) each
    launch("groupnorm_channel_sums", channel_sums_kernel, (unsigned)NC, reduce_threads((size_t)HW), s1, s2,
           dy, mean, x, C, HW, G);
    if (dx)
        launch("groupnorm_backward_dx", groupnorm_dx_kernel, (unsigned)((size_t)N * G), reduce_threads(M), dx,
               s1, s2, dy, mean, rstd, x, gamma, C, HW, G);
    launch("groupnorm_backward_params", groupnorm_params_kernel, (unsigned)C, reduce_threads((size_t)N), dgamma,
           dbeta, s1, s2, rstd, N, C, G);
}

} // namespace MSD_CUDA_NS
