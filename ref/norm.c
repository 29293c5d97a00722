// ref/norm.c: group normalisation (Wu & He 2018) with a per-channel affine, as torch's group_norm.
//
// Contract of ref/: scalar C11, no intrinsics, no fast-math, readable first; reductions in double;
// only `#pragma omp parallel for` over independent outputs; no allocation.
// Gradients: parameters accumulate (dgamma +=, dbeta +=), activations are written (dx =).
//
// The C channels form G groups of C/G consecutive channels. For sample n and group g, over the
// M = (C/G) * HW values of the group:
//   mean = sum x / M,  var = sum (x - mean)^2 / M (biased),  rstd = 1 / sqrt(var + eps)
//   xhat = (x - mean) * rstd,  y = gamma[c] * xhat + beta[c]
// mean and rstd are saved for the backward pass.
#include <math.h>

#include "ref.h"

void ref_groupnorm_forward(float *y, float *mean, float *rstd, const float *x, const float *gamma,
                           const float *beta, int N, int C, int HW, int G, float eps) {
    // y: (N, C, HW)  mean, rstd: (N, G)  x: (N, C, HW)  gamma, beta: (C)
    const int CG = C / G;
    const size_t M = (size_t)CG * HW;
#pragma omp parallel for collapse(2)
    for (int n = 0; n < N; n++) {
        for (int g = 0; g < G; g++) {
            const size_t base = ((size_t)n * C + (size_t)g * CG) * HW; // the group is contiguous
            double sum = 0.0;
            for (size_t i = 0; i < M; i++) sum += x[base + i];
            double mu = sum / M;
            double sq = 0.0; // two passes: no cancellation in the variance
            for (size_t i = 0; i < M; i++) sq += (x[base + i] - mu) * (x[base + i] - mu);
            double rs = 1.0 / sqrt(sq / M + eps);
            mean[n * G + g] = (float)mu;
            rstd[n * G + g] = (float)rs;
            for (int cc = 0; cc < CG; cc++) {
                int c = g * CG + cc;
                for (int p = 0; p < HW; p++) {
                    size_t i = base + (size_t)cc * HW + p;
                    y[i] = (float)(gamma[c] * ((x[i] - (double)mean[n * G + g]) * rstd[n * G + g]) +
                                   beta[c]);
                }
            }
        }
    }
}

// Forward was y = gamma xhat + beta with xhat = (x - mean) rstd, mean and rstd functions of the
// whole group. With g = dy * gamma (the gradient at xhat), the chain rule through mean and rstd gives
//   dx = rstd * (g - mean_group(g) - xhat * mean_group(g * xhat))
//   dgamma[c] += sum_{n, p} dy * xhat,   dbeta[c] += sum_{n, p} dy
void ref_groupnorm_backward(float *dx, float *dgamma, float *dbeta, const float *dy,
                            const float *mean, const float *rstd, const float *x, const float *gamma,
                            int N, int C, int HW, int G) {
    // dx: (N, C, HW)  dgamma, dbeta: (C)  dy, x: (N, C, HW)  mean, rstd: (N, G)  gamma: (C)
    const int CG = C / G;
    const size_t M = (size_t)CG * HW;
    if (dx) {
#pragma omp parallel for collapse(2)
        for (int n = 0; n < N; n++) {
            for (int g = 0; g < G; g++) {
                const size_t base = ((size_t)n * C + (size_t)g * CG) * HW;
                const double mu = mean[n * G + g], rs = rstd[n * G + g];
                double sum_g = 0.0, sum_gx = 0.0;
                for (int cc = 0; cc < CG; cc++) {
                    double gm = gamma[g * CG + cc];
                    for (int p = 0; p < HW; p++) {
                        size_t i = base + (size_t)cc * HW + p;
                        double gi = dy[i] * gm;
                        sum_g += gi;
                        sum_gx += gi * (x[i] - mu) * rs;
                    }
                }
                double mean_g = sum_g / M, mean_gx = sum_gx / M;
                for (int cc = 0; cc < CG; cc++) {
                    double gm = gamma[g * CG + cc];
                    for (int p = 0; p < HW; p++) {
                        size_t i = base + (size_t)cc * HW + p;
                        double xhat = (x[i] - mu) * rs;
                        dx[i] = (float)(rs * (dy[i] * gm - mean_g - xhat * mean_gx));
                    }
                }
            }
        }
    }
#pragma omp parallel for
    for (int c = 0; c < C; c++) {
        const int g = c / CG;
        double sum_dy = 0.0, sum_dyx = 0.0;
        for (int n = 0; n < N; n++) {
            const double mu = mean[n * G + g], rs = rstd[n * G + g];
            for (int p = 0; p < HW; p++) {
                size_t i = ((size_t)n * C + c) * HW + p;
                sum_dy += dy[i];
                sum_dyx += dy[i] * (x[i] - mu) * rs;
            }
        }
        dgamma[c] += (float)sum_dyx;
        dbeta[c] += (float)sum_dy;
    }
}
