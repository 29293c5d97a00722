// test_cuda_norm.c: cuda/'s GroupNorm against ref/ on the same fixed-seed inputs, forward (y and the
// saved statistics) and backward (dx written, dgamma and dbeta accumulated, dx NULL), with guard
// regions around every device buffer and NaN/Inf agreement, at the real mini and cifar10 shapes and
// awkward ones. Built twice, on the device and on the emulator; tests/cudacheck.h says how.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/core/util.h"
#include "cudacheck.h"
#include "testutil.h"
#include "tolerance.h"

// cuda/norm.cu sums in double as ref does, in another order, and forms y and dx with ref's double
// expressions from the float statistics (nvcc may fuse their multiply-adds). Per group of
// M = (C/G) HW values, with ref's saved mean m and rstd r (floats), xh = (x - m) r:
// - mean and rstd: bound_gn_mean and bound_gn_rstd (tests/tolerance.h), b_mean and b_rstd below;
//   with the parameter gradients' bounds they are groupnorm_shared_bounds (tests/opcheck.h).
// - y: both sides evaluate gamma ((x - m') r') + beta in double from their own m', r', within
//   b_mean, b_rstd of ref's: the difference |gamma| (r + b_rstd) b_mean + |gamma (x - m)| b_rstd, plus
//   three double roundings on each side, 2 gamd(3) (|gamma xh| + |beta|); then the float roundings
//   (bound_rounded_pair). Where the statistics came out bit-identical, the emulator evaluates the very
//   same expression as ref: y is held bit for bit there (a zero bound).
// Backward, both sides from ref's saved statistics. With dg = dy gamma, MG = mean dg, MGX = mean dg xh
// over the group (double) and A1, A2 the means of |dg|, |dg xh| (struct gn_moments, tests/opcheck.h):
// - cuda forms the two group means from per-channel sums s1 = sum_p dy, s2 = sum_p dy (x - m) and
//   gamma_c (HW + CG roundings on a term's path, and the products), ref from the elements: the means
//   differ by dmg = 2 gamd(M + CG + 4) A1, dmgx = 2 gamd(M + CG + 6) A2;
// - dx = r (dy gamma - MG - xh MGX), the same double expression on both sides: r (dmg + |xh| dmgx) from
//   the means, 2 gamd(6) r (|dg| + |MG| + |xh MGX|) from the six roundings of each side (fewer where
//   fused); then the float roundings.
// dgamma, dbeta: D0 + one double sum over N HW terms on each side (groupnorm_shared_bounds).
static void t_groupnorm(int N, int C, int HW, int G, uint64_t seed, bool nf) {
    const int CG = C / G;
    const size_t n = (size_t)N * C * HW, M = (size_t)CG * HW, ng = (size_t)N * G;
    const struct gn_ref ref = groupnorm_reference(N, C, HW, G, seed, nf);
    const float *x = ref.x, *gamma = ref.gamma, *beta = ref.beta, *dy = ref.dy, *mr = ref.mean, *rr = ref.rstd;

    float *gx = dput(x, n), *ggamma = dput(gamma, C), *gbeta = dput(beta, C), *gdy = dput(dy, n);
    float *gy = dout(n), *gm = dout(ng), *gr = dout(ng);
    cu->groupnorm_forward(gy, gm, gr, gx, ggamma, gbeta, N, C, HW, G, GN_EPS);
    // backward from ref's saved statistics: the dx written (poisoned first), dgamma, dbeta accumulated
    float *gmr = dput(mr, ng), *grr = dput(rr, ng), *gdx = dout(n), *gdg = dput(ref.dg0, C), *gdb = dput(ref.db0, C);
    cu->groupnorm_backward(gdx, gdg, gdb, gdy, gmr, grr, gx, ggamma, N, C, HW, G);
    // dx NULL: the parameter gradients alone, the same
    float *gdg2 = dput(ref.dg0, C), *gdb2 = dput(ref.db0, C);
    cu->groupnorm_backward(NULL, gdg2, gdb2, gdy, gmr, grr, gx, ggamma, N, C, HW, G);
    float *yc = dget(gy, n), *mc = dget(gm, ng), *rc = dget(gr, ng);

    double *bm = doubles(ng), *br = doubles(ng), *by = doubles(n), *bx = doubles(n), *bg = doubles(C);
    double *bb = doubles(C);
    struct gn_moments *mom = xmalloc(ng * sizeof *mom);
    groupnorm_shared_bounds(bm, br, mom, bg, bb, &ref, N, C, HW, G);
#pragma omp parallel for
    for (size_t q = 0; q < ng; q++) { // (NaN bounds where NaN was injected: those are skipped)
        const size_t base = q * M, g = q % G;
        const double m = mr[q], r = rr[q];
        const struct gn_moments s = mom[q];
        const double dmg = 2 * gamd(M + CG + 4) * s.A1, dmgx = 2 * gamd(M + CG + 6) * s.A2;
        const bool same = !ON_DEVICE && bits_of(mc[q]) == bits_of(mr[q]) && bits_of(rc[q]) == bits_of(rr[q]);
        for (size_t i = 0; i < M; i++) {
            const size_t j = base + i;
            const int c = (int)(g * CG + i / HW);
            const double xh = (x[j] - m) * r, gx = gamma[c] * xh, dg = (double)dy[j] * gamma[c];
            by[j] = same ? 0.0
                         : bound_rounded_pair(ref.y[j], fabs(gamma[c]) * (r + br[q]) * bm[q] +
                                                            fabs(gamma[c] * (x[j] - m)) * br[q] +
                                                            2 * gamd(3) * (fabs(gx) + fabs(beta[c])));
            bx[j] = bound_rounded_pair(ref.dx[j], r * (dmg + fabs(xh) * dmgx) +
                                                      2 * gamd(6) * r * (fabs(dg) + fabs(s.MG) + fabs(xh * s.MGX)));
        }
    }
    char sh[48];
    snprintf(sh, sizeof sh, "(%d,%d,%d) G=%d", N, C, HW, G);
    match(seed, nf, mc, mr, bm, NULL, ng, "groupnorm %s mean", sh);
    match(seed, nf, rc, rr, br, NULL, ng, "groupnorm %s rstd", sh);
    match(seed, nf, yc, ref.y, by, NULL, n, "groupnorm_forward %s y", sh);
    match(seed, nf, dget(gdx, n), ref.dx, bx, NULL, n, "groupnorm_backward %s dx", sh);
    match(seed, nf, dget(gdg, C), ref.dgamma, bg, NULL, C, "groupnorm_backward %s dgamma +=", sh);
    match(seed, nf, dget(gdb, C), ref.dbeta, bb, NULL, C, "groupnorm_backward %s dbeta +=", sh);
    match(seed, nf, dget(gdg2, C), ref.dgamma, bg, NULL, C, "groupnorm_backward %s dgamma, dx NULL", sh);
    match(seed, nf, dget(gdb2, C), ref.dbeta, bb, NULL, C, "groupnorm_backward %s dbeta, dx NULL", sh);
    free(bm), free(br), free(by), free(bx), free(bg), free(bb), free(mom);
    done();
}

START_TEST(groupnorm) {
    // (N, C, HW, G): mini (32, 64, 96, 128 channels at 28x28, 14x14, 7x7; groups of 4 channels, at
    // most 16), cifar10 (256 at 32x32, 384 and 512 at 8x8 and 16x16), and awkward ones: one group,
    // one channel per group, HW = 1, a group of 16384 values (many per thread).
    const int S[][5] = {{64, 32, 784, 8, DEV},     {64, 64, 196, 16, DEV},  {128, 96, 49, 16, DEV},
                        {128, 128, 49, 16, DEV},   {64, 256, 1024, 16, DEV}, {128, 384, 64, 16, DEV},
                        {64, 512, 256, 16, DEV},   {1, 32, 784, 8, ANY},    {1, 3, 49, 3, ANY},
                        {2, 5, 7, 1, ANY},         {1, 13, 49, 13, ANY},    {3, 12, 1, 4, ANY},
                        {2, 24, 9, 6, ANY},        {1, 8, 4096, 2, ANY}};
    for (int nf = 0; nf < 2; nf++)
        for (size_t k = 0; k < sizeof S / sizeof S[0]; k++)
            if (!skip(S[k][4])) t_groupnorm(S[k][0], S[k][1], S[k][2], S[k][3], 300 + 10 * k, nf);
}
END_TEST

int main(void) {
    const TTest *tests[] = {groupnorm};
    return cuda_run_tests("test_cuda_norm", CUDA_SUITE_BACKEND, tests, TEST_COUNT(tests));
}
