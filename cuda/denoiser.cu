// cuda/denoiser.cu: the posterior mean of an empirical data set (the formulas are in ref/denoiser.c).
// Forward only.
//
// The queries go in chunks of nc = min(N, PM_SCRATCH / (K + 1 + S M)) (at least 1), so that the
// scratch stays under PM_SCRATCH doubles (unless a single query needs more), each chunk in four
// launches:
//   sqdist_kernel    d[n, k] = ||z_n - y_k||^2 into scratch (nc, K) doubles; blocks of 256 threads
//                    on tiles of 32 queries x 64 images, grid (K/64, nc/32), 32-pixel slices of both
//                    staged in shared memory (as doubles), each thread 2 queries x 4 images;
//   weights_kernel   one block (256 threads) per query: d_min, the weights w (the op's output) and
//                    their sum Z (scratch, nc doubles);
//   wsum_kernel      partial weighted sums over S slices of the images: part[s, n, j] =
//                    sum_{k in slice s} w[n, k] y_k[j] into scratch (S, nc, M) doubles; blocks of
//                    256 threads on tiles of 32 queries x 64 pixels, grid (M/64, nc/32, S), S <= 64;
//   finish_kernel    m[n, j] = (sum_s part[s, n, j]) / Z[n], the slices in order; one thread per
//                    output.
// Scratch: 2 (nc K + nc + S nc M) floats. No atomics: every sum has a fixed order.
//
// What differs from ref/denoiser.c:
// - The distances are ref's bit for bit: each is one thread's sum, in ref's four lanes (lane j takes
//   the terms i % 4 == j below M rounded down to a multiple of 4, in order, lane 0 the tail), squared
//   and added as separate roundings (__dmul_rn, __dadd_rn: no FMA), the lanes combined as (0 + 1) + (2 + 3).
// - The weights are ref's expression; exp is the device's (CUDA: within 1 double ulp) or the host's
//   (emulator: ref's own), so a weight can differ from ref's in the last float bit where exp's result
//   sits on a float rounding boundary. d_min (a minimum, exact in any order) skips NaN as ref does.
// - Z and the weighted sums are double sums of the same terms in another order: Z by block_sum's
//   tree, the weighted sums by slices of the images added slice after slice. Images of weight 0 are
//   skipped as in ref (their pixels may be Inf). The products w y are exact in double, so only
//   double rounding separates m from ref's, before the one rounding to float.
#include <math.h>

#include "cuda.cuh"

namespace MSD_CUDA_NS {

#define PM_SCRATCH (1u << 23) // doubles of scratch per chunk of queries (64 MB)

// ---------------------------------------------------------------------------------------------------
// Distances

#define DT_Q 32 // queries per block
#define DT_K 64 // images per block
#define DT_I 32 // pixels per shared-memory slice (a multiple of 4: slices start on ref's lane 0)

__global__ static void __launch_bounds__(256)
sqdist_kernel(double *d, const float *z, const float *data, int nq, int K, size_t M) {
    // d: (nq, K)  z: (nq, M)  data: (K, M)
    __shared__ double zs[DT_I][DT_Q + 1]; // zs[i][q] = z[q0 + q, i0 + i], 0 outside
    __shared__ double ys[DT_I][DT_K + 1]; // ys[i][k] = data[k0 + k, i0 + i]
    const int t = threadIdx.x, tx = t % 16, ty = t / 16; // queries ty + 16 a, images tx + 16 b
    const int q0 = blockIdx.y * DT_Q, k0 = blockIdx.x * DT_K;
    const size_t M4 = M & ~(size_t)3; // ref's four lanes cover [0, M4), lane 0 the tail

    double acc[2][4][4]; // [query][image][lane]
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 4; b++)
            for (int l = 0; l < 4; l++) acc[a][b][l] = 0.0;

    for (size_t i0 = 0; i0 < M; i0 += DT_I) {
        for (int e = t; e < DT_I * DT_Q; e += 256) {
            const int ii = e % DT_I, qq = e / DT_I;
            const size_t i = i0 + ii;
            zs[ii][qq] = q0 + qq < nq && i < M ? z[(size_t)(q0 + qq) * M + i] : 0.0f;
        }
        for (int e = t; e < DT_I * DT_K; e += 256) {
            const int ii = e % DT_I, kk = e / DT_I;
            const size_t i = i0 + ii;
            ys[ii][kk] = k0 + kk < K && i < M ? data[(size_t)(k0 + kk) * M + i] : 0.0f;
        }
        __syncthreads();
        const size_t end = i0 + DT_I < M ? i0 + DT_I : M, gend = end < M4 ? end : M4;
        const int groups = gend > i0 ? (int)(gend - i0) : 0; // a multiple of 4
        for (int ii = 0; ii < groups; ii += 4) // four pixels: one term in each lane
            for (int l = 0; l < 4; l++)
                for (int a = 0; a < 2; a++) {
                    const double zv = zs[ii + l][ty + 16 * a];
                    for (int b = 0; b < 4; b++) {
                        const double diff = zv - ys[ii + l][tx + 16 * b];
                        acc[a][b][l] = __dadd_rn(acc[a][b][l], __dmul_rn(diff, diff));
                    }
                }
        for (int ii = groups; ii < (int)(end - i0); ii++) // the tail (i >= M4): lane 0
            for (int a = 0; a < 2; a++)
                for (int b = 0; b < 4; b++) {
                    const double diff = zs[ii][ty + 16 * a] - ys[ii][tx + 16 * b];
                    acc[a][b][0] = __dadd_rn(acc[a][b][0], __dmul_rn(diff, diff));
                }
        __syncthreads();
    }
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 4; b++) {
            const int q = q0 + ty + 16 * a, k = k0 + tx + 16 * b;
            if (q < nq && k < K)
                d[(size_t)q * K + k] = __dadd_rn(__dadd_rn(acc[a][b][0], acc[a][b][1]), __dadd_rn(acc[a][b][2], acc[a][b][3]));
        }
}

// ---------------------------------------------------------------------------------------------------
// Weights

__global__ static void weights_kernel(float *w, double *Z, const double *d, const float *sigma, int K) {
    // w: (nq, K)  Z: (nq)  d: (nq, K)  sigma: (nq); query n = blockIdx.x
    const int n = blockIdx.x;
    const double *dn = d + (size_t)n * K;
    float *wn = w + (size_t)n * K;
    // the smallest squared distance (ref's `if (d < dmin)` skips NaN, as fmin does)
    double dmin = INFINITY;
    for (int k = threadIdx.x; k < K; k += blockDim.x) dmin = fmin(dmin, dn[k]);
    dmin = block_min(dmin);
    // the shifted weights, in (0, 1], and their sum
    const double inv2var = 1.0 / (2.0 * (double)sigma[n] * sigma[n]);
    double sum = 0.0;
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
        const float wk = (float)exp(-(dn[k] - dmin) * inv2var);
        wn[k] = wk;
        sum += wk;
    }
    sum = block_sum(sum);
    if (threadIdx.x == 0) Z[n] = sum;
}

// ---------------------------------------------------------------------------------------------------
// Weighted sums

#define WS_Q 32 // queries per block
#define WS_J 64 // pixels per block
#define WS_K 32 // images per shared-memory slice

__global__ static void __launch_bounds__(256)
wsum_kernel(double *part, const float *w, const float *data, int nq, int K, size_t M, int slice) {
    // part: (S, nq, M)  w: (nq, K)  data: (K, M); block (pixel tile, query tile, slice s = blockIdx.z)
    __shared__ double ws[WS_K][WS_Q + 1]; // ws[k][q] = w[q0 + q, kb + k], 0 outside
    __shared__ float ys[WS_K][WS_J];      // ys[k][j] = data[kb + k, j0 + j]
    const int t = threadIdx.x, tx = t % 16, ty = t / 16; // queries ty + 16 a, pixels tx + 16 b
    const int q0 = blockIdx.y * WS_Q;
    const size_t j0 = (size_t)blockIdx.x * WS_J;
    const int kbeg = (int)blockIdx.z * slice, kend = K - kbeg < slice ? K : kbeg + slice;

    double acc[2][4];
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 4; b++) acc[a][b] = 0.0;

    for (int kb = kbeg; kb < kend; kb += WS_K) {
        for (int e = t; e < WS_K * WS_Q; e += 256) {
            const int kk = e % WS_K, qq = e / WS_K;
            ws[kk][qq] = q0 + qq < nq && kb + kk < kend ? w[(size_t)(q0 + qq) * K + kb + kk] : 0.0f;
        }
        for (int e = t; e < WS_K * WS_J; e += 256) {
            const int jj = e % WS_J, kk = e / WS_J;
            ys[kk][jj] = kb + kk < kend && j0 + jj < M ? data[(size_t)(kb + kk) * M + j0 + jj] : 0.0f;
        }
        __syncthreads();
        for (int kk = 0; kk < WS_K; kk++)
            for (int a = 0; a < 2; a++) {
                const double wv = ws[kk][ty + 16 * a];
                // weight 0: skipped as in ref (0 * inf would be NaN). The product of two floats is
                // exact in double, so a fused multiply-add rounds it exactly as ref's `+=` does.
                for (int b = 0; b < 4; b++) acc[a][b] += wv != 0.0 ? wv * ys[kk][tx + 16 * b] : 0.0;
            }
        __syncthreads();
    }
    double *ps = part + (size_t)blockIdx.z * nq * M;
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 4; b++) {
            const int q = q0 + ty + 16 * a;
            const size_t j = j0 + tx + 16 * b;
            if (q < nq && j < M) ps[(size_t)q * M + j] = acc[a][b];
        }
}

__global__ static void finish_kernel(float *m, const double *part, const double *Z, int nq, size_t M, int S) {
    // m: (nq, M)  part: (S, nq, M)  Z: (nq)
    const size_t n_all = (size_t)nq * M;
    CU_FOR(i, n_all) {
        double acc = 0.0;
        for (int s = 0; s < S; s++) acc += part[(size_t)s * n_all + i];
        m[i] = (float)(acc / Z[i / M]);
    }
}

// ---------------------------------------------------------------------------------------------------
// The op

void cu_posterior_mean(float *m, float *w, const float *z, const float *data, const float *sigma,
                       int N, int K, size_t M) {
    // m: (N, M)  w: (N, K)  z: (N, M)  data: (K, M)  sigma: (N)
    if (N <= 0 || M == 0) return;
    if (K <= 0) { // no images: ref's 0 / 0
        cu_fill(m, NAN, (size_t)N * M);
        return;
    }
    // S slices of the images for the weighted sums: at least 256 images each, at most 64 slices
    const int S = K / 256 < 1 ? 1 : K / 256 > 64 ? 64 : K / 256, slice = (K + S - 1) / S;
    const size_t per_query = (size_t)K + 1 + (size_t)S * M; // doubles of scratch
    const size_t fit = PM_SCRATCH / per_query;
    const int nc = fit < 1 ? 1 : fit < (size_t)N ? (int)fit : N;
    double *d = (double *)cu_scratch(2 * (size_t)nc * per_query); // (nc, K)
    double *Z = d + (size_t)nc * K;                                // (nc)
    double *part = Z + nc;                                         // (S, nc, M)
    for (int n0 = 0; n0 < N; n0 += nc) {
        const int nq = N - n0 < nc ? N - n0 : nc;
        const float *zc = z + (size_t)n0 * M;
        float *wc = w + (size_t)n0 * K, *mc = m + (size_t)n0 * M;
        launch("posterior_mean_sqdist", sqdist_kernel,
               dim3((unsigned)((K + DT_K - 1) / DT_K), (unsigned)((nq + DT_Q - 1) / DT_Q)), 256, d, zc, data,
               nq, K, M);
        launch("posterior_mean_weights", weights_kernel, (unsigned)nq, 256, wc, Z, d, sigma + n0, K);
        launch("posterior_mean_wsum", wsum_kernel,
               dim3((unsigned)((M + WS_J - 1) / WS_J), (unsigned)((nq + WS_Q - 1) / WS_Q), (unsigned)S), 256,
               part, wc, data, nq, K, M, slice);
        launch("posterior_mean_finish", finish_kernel, grid_for((size_t)nq * M), CU_THREADS, mc, part, Z, nq,
               M, S);
    }
}

} // namespace MSD_CUDA_NS
