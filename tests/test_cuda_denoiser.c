// test_cuda_denoiser.c: cuda/'s posterior mean (the ideal denoiser over a data set, used by stage
// division) against ref/ on the same fixed-seed inputs, the mean and the saved weights, with guard
// regions around every device buffer and NaN/Inf agreement. Built twice, on the device and on the
// emulator; tests/cudacheck.h says how.
#include <math.h>
#include <stdlib.h>

#include "../ref/ref.h"
#include "cudacheck.h"
#include "testutil.h"
#include "tolerance.h"

// cuda/denoiser.cu computes ref's distances bit for bit (ref's four lanes, no FMA), ref's d_min and
// ref's weight expression; exp is the device's (within a double ulp, as glibc's) or, on the emulator,
// ref's own. So w is bit for bit on the emulator, and on the device within
// bound_rounded_pair(w, 4 UD w) (the same double argument, two exps within 2 UD w of the exact value).
// Z and the weighted sums are double sums in another order, of exact products w_k y_k: each side's
// m = sum w y / Z is within gamd(K + 1) (sum_k w_k |y_k| / Z + |m|) of the exact value on its own
// weights, and weights that differ by bw_k move m by at most sum_k bw_k |y_k - m| / (Z - sum_k bw_k);
// then the float roundings (bound_rounded_pair).
static void mean_bounds(double *bm, double *bw, const float *mr, const float *wr, const float *data, int N, int K,
                        size_t M) {
#pragma omp parallel for schedule(dynamic, 1)
    for (int q = 0; q < N; q++) {
        double Z = 0, Bw = 0;
        for (int j = 0; j < K; j++) {
            const size_t qj = (size_t)q * K + j;
            bw[qj] = ON_DEVICE ? bound_rounded_pair(wr[qj], 4 * UD * wr[qj] * (1 + 2 * U)) : 0.0;
            Z += wr[qj], Bw += bw[qj];
        }
        for (size_t i = 0; i < M; i++) {
            const double mi = mr[q * M + i];
            double wy = 0, dw = 0;
            for (int j = 0; j < K; j++) {
                const double y = data[(size_t)j * M + i], wj = wr[(size_t)q * K + j];
                if (wj == 0 && bw[(size_t)q * K + j] == 0) continue; // an image of no weight adds nothing
                wy += wj * fabs(y), dw += bw[(size_t)q * K + j] * fabs(y - mi);
            }
            bm[q * M + i] = bound_rounded_pair(mi, dw / (Z - Bw) + 2 * gamd(K + 1) * (wy / Z + fabs(mi)));
        }
    }
}

START_TEST(posterior_mean) {
    // (N, K, M): Fashion-MNIST-like images, several tiles of queries (32), images (64), pixels (64),
    // several slices of the images (K >= 512), tiny ones; on the device a data set of 16384 CIFAR-10
    // sized images, which the scratch bound cuts into two chunks of queries
    const int S[][4] = {{64, 16384, 3072, DEV}, {128, 2000, 784, DEV}, {5, 37, 784, ANY}, {1, 1, 7, ANY},
                        {2, 5, 3, ANY},         {33, 70, 130, ANY},     {3, 600, 20, ANY}};
    const float SIG[] = {0.01f, 0.1f, 1.0f, 10.0f, 0.05f, 0.3f, 3.0f, 0.02f, 30.0f};
    for (int nf = 0; nf < 2; nf++)
        for (size_t k = 0; k < sizeof S / sizeof S[0]; k++) {
            if (skip(S[k][3])) continue;
            const int N = S[k][0], K = S[k][1];
            const size_t M = (size_t)S[k][2], nz = (size_t)N * M, nk = (size_t)N * K;
            float *data = pool_input((size_t)K * M, 800 + k, -1, 1), *z = pool_buf(nz), *sigma = pool_buf(N);
            fill_normal(z, nz, 810 + k, 1.0f);
            for (int q = 0; q < N; q++) {
                sigma[q] = SIG[q % 9];
                for (size_t i = 0; i < M; i++) // z = y_k + sigma eps, for the image k = q mod K
                    z[q * M + i] = data[(size_t)(q % K) * M + i] + sigma[q] * z[q * M + i];
            }
            if (nf) inject(z, nz, 820 + k), inject(data, (size_t)K * M, 830 + k);
            float *mr = pool_buf(nz), *wr = pool_buf(nk), *gm = dout(nz), *gw = dout(nk);
            ref_posterior_mean(mr, wr, z, data, sigma, N, K, M);
            cu->posterior_mean(gm, gw, dput(z, nz), dput(data, (size_t)K * M), dput(sigma, N), N, K, M);
            double *bw = doubles(nk), *bm = doubles(nz);
            mean_bounds(bm, bw, mr, wr, data, N, K, M);
            match(800 + k, nf, dget(gm, nz), mr, bm, NULL, nz, "posterior_mean (%d,%d,%zu) m", N, K, M);
            match(800 + k, nf, dget(gw, nk), wr, device_bound(bw), NULL, nk, "posterior_mean (%d,%d,%zu) w", N, K, M);
            free(bw), free(bm);
            done();
        }
}
END_TEST

int main(void) {
    const TTest *tests[] = {posterior_mean};
    return cuda_run_tests("test_cuda_denoiser", CUDA_SUITE_BACKEND, tests, TEST_COUNT(tests));
}
