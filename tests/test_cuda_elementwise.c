// test_cuda_elementwise.c: cuda/'s elementwise and per-row ops (SiLU, concat, add, scale, axpby,
// bias_add, scale_rows, combine_rows, sqerr_rows), resampling and the positional embedding against
// ref/ on the same fixed-seed inputs, forward and backward, with guard regions around every device
// buffer and NaN/Inf agreement. Built twice, on the device and on the emulator; tests/cudacheck.h says
// how, and what is held bit for bit and what to a bound.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "../ref/ref.h"
#include "cudacheck.h"
#include "testutil.h"
#include "tolerance.h"

// ---------------------------------------------------------------------------------------------------
// SiLU. cuda/elementwise.cu computes ref's double expressions: the emulator (ref's libm, no FMA)
// matches bit for bit. On the device, exp is CUDA's (within 1 double ulp, as glibc's: 2 UD
// relative each) and nvcc may fuse the backward's 1 + x (1 - s) into one FMA. So:
// - forward y = x / (1 + t), t = exp(-x): t differs by 4 UD t; 1 + t and the quotient round (UD each
//   side); t's error reaches y scaled by t / (1 + t) <= 1: the double results are within 9 UD |y|.
// - backward dy s (1 + x (1 - s)): s = 1 / (1 + t) within 4 UD s on each side; c = 1 - s then within
//   4 UD s + UD |c|, x c within |x| (4 s + 2 |c|) UD <= 4 UD |x| (s + c = 1; one rounding fewer if
//   fused), g = 1 + x c within UD (4 |x| + |g|), dy s within 5 UD |dy s|, the product one more UD:
//   per side |dy s| UD (7 |g| + 4 |x|); both sides, second-order terms covered:
//   |dy s| UD (16 |g| + 10 |x|). Above x = 38, t < 2^-54 and 1 + t rounds to 1 on both sides, so s = 1
//   and c = 0 exactly: the |x| term (c's error) vanishes there, which keeps the bound sharp at huge x.
// Then each side rounds to float (bound_rounded_pair).
static void t_silu(const float *x, const float *dy, size_t n, const char *range, uint64_t seed, bool nf) {
    float *yr = pool_buf(n), *dr = pool_buf(n);
    ref_silu_forward(yr, x, n), ref_silu_backward(dr, dy, x, n);
    float *dx_ = dput(x, n), *ddy = dput(dy, n), *dy_ = dout(n), *dd_ = dout(n);
    cu->silu_forward(dy_, dx_, n), cu->silu_backward(dd_, ddy, dx_, n);
    float *yc = dget(dy_, n), *dc = dget(dd_, n);
    double *b = doubles(n), *bd = doubles(n);
    for (size_t i = 0; i < n; i++) {
        const double xi = x[i], t = exp(-xi), s = 1 / (1 + t), g = 1 + xi * (1 - s);
        b[i] = bound_rounded_pair(yr[i], 9 * UD * fabs(yr[i]) * (1 + 2 * U));
        bd[i] = bound_rounded_pair(dr[i], UD * fabs(dy[i] * s) * (16 * fabs(g) + 10 * (xi > 38 ? 0.0 : fabs(xi))));
    }
    match(seed, nf, yc, yr, device_bound(b), NULL, n, "silu_forward %s", range);
    match(seed, nf, dc, dr, device_bound(bd), NULL, n, "silu_backward %s", range);
    // in place (y == x, dx == dy) gives the same values as out of place
    cu->silu_forward(dx_, dx_, n), cu->silu_backward(ddy, ddy, dput(x, n), n);
    match(seed, nf, dget(dx_, n), yc, NULL, NULL, n, "silu_forward in place");
    match(seed, nf, dget(ddy, n), dc, NULL, NULL, n, "silu_backward in place");
    // x one float past a 16-byte boundary: the kernels go four at a time only where every pointer is
    // aligned, so this takes the one-at-a-time path; the same values
    if (n > 1) {
        float *gx1 = dput(x, n), *gy1 = dout(n - 1), *gd1 = dout(n - 1);
        cu->silu_forward(gy1, gx1 + 1, n - 1), cu->silu_backward(gd1, dput(dy + 1, n - 1), gx1 + 1, n - 1);
        match(seed, nf, dget(gy1, n - 1), yc + 1, NULL, NULL, n - 1, "silu_forward x unaligned");
        match(seed, nf, dget(gd1, n - 1), dc + 1, NULL, NULL, n - 1, "silu_backward x unaligned");
    }
    free(b), free(bd);
    done();
}

START_TEST(silu) {
    for (int nf = 0; nf < 2; nf++)
        for (size_t k = 0; k <= NLEN; k++) {
            if (k < NLEN && (skip(LENGTHS[k].flag) || LENGTHS[k].flag == BIG)) continue;
            // the last run: [-120, 120], where exp(-x) reaches e^120 and s underflows float's range
            const size_t n = k < NLEN ? LENGTHS[k].n : 1023;
            const float r = k < NLEN ? 8 : 120;
            float *x = pool_input(n, 100 + k, -r, r), *dy = pool_input(n, 200 + k, -1, 1);
            if (nf) inject(x, n, 300 + k), inject(dy, n, 400 + k);
            t_silu(x, dy, n, k < NLEN ? "[-8, 8]" : "[-120, 120]", 100 + k, nf);
        }
    const float sx[] = {0.0f, -0.0f, 1e-40f, -1e-40f, 88.7f, -88.7f, 89.5f, -89.5f, -103.9f, -104.5f, -150.0f,
                        150.0f, 3.4e38f, -3.4e38f, -1.2784645f, INFINITY, -INFINITY, NAN};
    const size_t n = sizeof sx / sizeof sx[0];
    float *x = pool_copy(sx, n), *ones = pool_buf(n);
    for (size_t i = 0; i < n; i++) ones[i] = 4.0f / 3.0f;
    t_silu(x, ones, n, "special values", 1, false);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// Concat and its split, add, scale, axpby (its products and sum forced to round one by one), bias_add
// forward, scale_rows, combine_rows (double products of floats are exact, so a fused one rounds the
// same): ref's arithmetic, bit for bit on both. bias_add backward and sqerr_rows: double sums in
// block_sum's tree order, bound_double_sums (A = sum |terms| from ref's op on |dy|, or the sum of
// squares itself).

START_TEST(concat) {
    const int S[][5] = {{64, 32, 32, 784, DEV}, {64, 256, 256, 256, DEV}, {128, 256, 512, 64, DEV},
                        {1, 32, 32, 784, ANY},  {1, 3, 5, 49, ANY},          {2, 13, 1, 1, ANY},
                        {3, 5, 3, 7, ANY}};
    for (int nf = 0; nf < 2; nf++)
        for (size_t k = 0; k < sizeof S / sizeof S[0]; k++) {
            if (skip(S[k][4])) continue;
            const int N = S[k][0], CA = S[k][1], CB = S[k][2], HW = S[k][3];
            const size_t na = (size_t)N * CA * HW, nb = (size_t)N * CB * HW, ny = na + nb;
            float *a = pool_input(na, 10 + k, -1, 1), *b = pool_input(nb, 20 + k, -1, 1);
            float *dy = pool_input(ny, 30 + k, -1, 1);
            if (nf) inject(a, na, 40 + k), inject(b, nb, 50 + k), inject(dy, ny, 60 + k);
            float *yr = pool_buf(ny), *dar = pool_buf(na), *dbr = pool_buf(nb);
            ref_concat_forward(yr, a, b, N, CA, CB, HW), ref_concat_backward(dar, dbr, dy, N, CA, CB, HW);
            float *ga = dput(a, na), *gb = dput(b, nb), *gdy = dput(dy, ny), *gy = dout(ny);
            float *gda = dout(na), *gdb = dout(nb), *gda2 = dout(na), *gdb2 = dout(nb);
            cu->concat_forward(gy, ga, gb, N, CA, CB, HW);
            cu->concat_backward(gda, gdb, gdy, N, CA, CB, HW);
            cu->concat_backward(gda2, NULL, gdy, N, CA, CB, HW), cu->concat_backward(NULL, gdb2, gdy, N, CA, CB, HW);
            const uint64_t seed = 10 + k;
            match(seed, nf, dget(gy, ny), yr, NULL, NULL, ny, "concat_forward (%d,%d+%d,%d)", N, CA, CB, HW);
            match(seed, nf, dget(gda, na), dar, NULL, NULL, na, "concat_backward (%d,%d+%d,%d) da", N, CA, CB, HW);
            match(seed, nf, dget(gdb, nb), dbr, NULL, NULL, nb, "concat_backward (%d,%d+%d,%d) db", N, CA, CB, HW);
            match(seed, nf, dget(gda2, na), dar, NULL, NULL, na, "concat_backward (%d,%d+%d,%d) da alone", N, CA, CB,
                  HW);
            match(seed, nf, dget(gdb2, nb), dbr, NULL, NULL, nb, "concat_backward (%d,%d+%d,%d) db alone", N, CA, CB,
                  HW);
            done();
        }
}
END_TEST

START_TEST(linear_combinations) {
    for (int nf = 0; nf < 2; nf++)
        for (size_t k = 0; k < NLEN; k++) {
            if (skip(LENGTHS[k].flag)) continue;
            const size_t n = LENGTHS[k].n;
            const uint64_t seed = 70 + k;
            float *a = pool_input(n, 70 + k, -2, 2), *b = pool_input(n, 80 + k, -2, 2);
            if (nf) inject(a, n, 90 + k), inject(b, n, 95 + k);
            float *yr = pool_buf(n), *ga = dput(a, n), *gb = dput(b, n), *gy = dout(n);
            ref_add(yr, a, b, n), cu->add(gy, ga, gb, n);
            match(seed, nf, dget(gy, n), yr, NULL, NULL, n, "add n=%zu", n);
            ref_scale(yr, a, -0.3f, n), cu->scale(gy, ga, -0.3f, n);
            match(seed, nf, dget(gy, n), yr, NULL, NULL, n, "scale n=%zu", n);
            float *zr = pool_copy(b, n);
            ref_axpby(zr, 0.7f, a, -1.3f, n), cu->axpby(gb, 0.7f, ga, -1.3f, n);
            match(seed, nf, dget(gb, n), zr, NULL, NULL, n, "axpby n=%zu", n);
            ref_add(zr, zr, a, n), cu->add(gb, gb, ga, n); // in place
            match(seed, nf, dget(gb, n), zr, NULL, NULL, n, "add in place n=%zu", n);
            ref_scale(zr, zr, 1.7f, n), cu->scale(gb, gb, 1.7f, n);
            match(seed, nf, dget(gb, n), zr, NULL, NULL, n, "scale in place n=%zu", n);
            done();
        }
}
END_TEST

START_TEST(bias_add) {
    const int S[][4] = {{64, 32, 784, DEV}, {64, 256, 1024, DEV}, {128, 512, 64, DEV}, {1, 32, 784, ANY},
                        {1, 3, 49, ANY},    {2, 5, 1, ANY},        {3, 13, 7, ANY},      {1, 2, 1500, ANY}};
    for (int nf = 0; nf < 2; nf++)
        for (size_t k = 0; k < sizeof S / sizeof S[0]; k++) {
            if (skip(S[k][3])) continue;
            const int N = S[k][0], C = S[k][1], HW = S[k][2];
            const size_t n = (size_t)N * C * HW, nc = (size_t)N * C;
            const uint64_t seed = 110 + k;
            float *x = pool_input(n, 110 + k, -1, 1), *bias = pool_input(nc, 120 + k, -1, 1);
            float *dy = pool_input(n, 130 + k, -1, 1), *A = pool_buf(nc);
            ref_bias_add_backward(A, pool_abs(dy, n), N, C, HW);
            if (nf) inject(x, n, 140 + k), inject(bias, nc, 150 + k), inject(dy, n, 160 + k);
            float *yr = pool_buf(n), *dr = pool_buf(nc);
            ref_bias_add_forward(yr, x, bias, N, C, HW), ref_bias_add_backward(dr, dy, N, C, HW);
            float *gx = dput(x, n), *gbias = dput(bias, nc), *gy = dout(n), *gdy = dput(dy, n), *gdb = dout(nc);
            cu->bias_add_forward(gy, gx, gbias, N, C, HW), cu->bias_add_backward(gdb, gdy, N, C, HW);
            double *b = doubles(nc);
            for (size_t i = 0; i < nc; i++) b[i] = bound_double_sums(dr[i], A[i] * (1 + U), HW);
            match(seed, nf, dget(gy, n), yr, NULL, NULL, n, "bias_add_forward (%d,%d,%d)", N, C, HW);
            match(seed, nf, dget(gdb, nc), dr, b, NULL, nc, "bias_add_backward (%d,%d,%d)", N, C, HW);
            cu->bias_add_forward(gx, gx, gbias, N, C, HW); // in place
            match(seed, nf, dget(gx, n), yr, NULL, NULL, n, "bias_add_forward in place (%d,%d,%d)", N, C, HW);
            free(b);
            done();
        }
}
END_TEST

START_TEST(rows) {
    const int S[][3] = {{128, 784, DEV}, {128, 3072, DEV}, {2, 784, ANY}, {1, 7, ANY},
                        {3, 1023, ANY},  {2, 40000, ANY},  {5, 1, ANY}};
    for (int nf = 0; nf < 2; nf++)
        for (size_t k = 0; k < sizeof S / sizeof S[0]; k++) {
            if (skip(S[k][2])) continue;
            const int N = S[k][0];
            const size_t M = (size_t)S[k][1], n = N * M;
            const uint64_t seed = 170 + k;
            float *x = pool_input(n, 170 + k, -1, 1), *z = pool_input(n, 180 + k, -3, 3);
            float *a = pool_input(N, 190 + k, -2, 2), *b = pool_input(N, 200 + k, -2, 2);
            if (nf) inject(x, n, 210 + k), inject(z, n, 220 + k), inject(a, N, 230 + k);
            float *yr = pool_buf(n), *cr = pool_buf(n), *er = pool_buf(N);
            ref_scale_rows(yr, x, a, N, M), ref_combine_rows(cr, a, x, b, z, N, M), ref_sqerr_rows(er, x, z, N, M);
            float *gx = dput(x, n), *gz = dput(z, n), *ga = dput(a, N), *gb = dput(b, N);
            float *gy = dout(n), *gc = dout(n), *ge = dout(N);
            cu->scale_rows(gy, gx, ga, N, M), cu->combine_rows(gc, ga, gx, gb, gz, N, M);
            cu->sqerr_rows(ge, gx, gz, N, M);
            double *bd = doubles(N);
            for (int i = 0; i < N; i++) bd[i] = bound_double_sums(er[i], er[i] * (1 + U), (double)M);
            match(seed, nf, dget(gy, n), yr, NULL, NULL, n, "scale_rows (%d,%zu)", N, M);
            match(seed, nf, dget(gc, n), cr, NULL, NULL, n, "combine_rows (%d,%zu)", N, M);
            match(seed, nf, dget(ge, N), er, bd, NULL, N, "sqerr_rows (%d,%zu)", N, M);
            cu->combine_rows(gx, ga, gx, gb, gz, N, M), cu->scale_rows(gz, gz, ga, N, M); // in place
            match(seed, nf, dget(gx, n), cr, NULL, NULL, n, "combine_rows in place (%d,%zu)", N, M);
            ref_scale_rows(yr, z, a, N, M);
            match(seed, nf, dget(gz, n), yr, NULL, NULL, n, "scale_rows in place (%d,%zu)", N, M);
            free(bd);
            done();
        }
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// Resampling: cuda/resample.cu sums the four values of a block in double in ref's order, and scales
// by 1/4 (exact): bit for bit, all four ops.
START_TEST(resample) {
    // (N, C, H, W): down2's input and up2's output (up2 runs on (N, C, H/2, W/2))
    const int S[][5] = {{64, 32, 28, 28, DEV}, {128, 64, 14, 14, DEV}, {64, 256, 32, 32, DEV},
                        {128, 512, 16, 16, DEV}, {1, 32, 28, 28, ANY},  {1, 3, 14, 14, ANY},
                        {2, 5, 2, 2, ANY},      {1, 13, 6, 18, ANY},   {3, 7, 30, 2, ANY}};
    for (int nf = 0; nf < 2; nf++)
        for (size_t k = 0; k < sizeof S / sizeof S[0]; k++) {
            if (skip(S[k][4])) continue;
            const int N = S[k][0], C = S[k][1], H = S[k][2], W = S[k][3], h = H / 2, w = W / 2;
            const size_t nbig = (size_t)N * C * H * W, nsmall = nbig / 4;
            const uint64_t seed = 240 + k;
            float *x = pool_input(nbig, 240 + k, -1, 1), *xs = pool_input(nsmall, 250 + k, -1, 1);
            float *dys = pool_input(nsmall, 260 + k, -1, 1), *dy = pool_input(nbig, 270 + k, -1, 1);
            if (nf) inject(x, nbig, 280 + k), inject(xs, nsmall, 281 + k), inject(dys, nsmall, 282 + k),
                    inject(dy, nbig, 283 + k);
            float *r1 = pool_buf(nsmall), *r2 = pool_buf(nbig), *r3 = pool_buf(nbig), *r4 = pool_buf(nsmall);
            ref_down2_forward(r1, x, N, C, H, W), ref_down2_backward(r2, dys, N, C, H, W);
            ref_up2_forward(r3, xs, N, C, h, w), ref_up2_backward(r4, dy, N, C, h, w);
            float *g1 = dout(nsmall), *g2 = dout(nbig), *g3 = dout(nbig), *g4 = dout(nsmall);
            cu->down2_forward(g1, dput(x, nbig), N, C, H, W), cu->down2_backward(g2, dput(dys, nsmall), N, C, H, W);
            cu->up2_forward(g3, dput(xs, nsmall), N, C, h, w), cu->up2_backward(g4, dput(dy, nbig), N, C, h, w);
            match(seed, nf, dget(g1, nsmall), r1, NULL, NULL, nsmall, "down2_forward (%d,%d,%d,%d)", N, C, H, W);
            match(seed, nf, dget(g2, nbig), r2, NULL, NULL, nbig, "down2_backward (%d,%d,%d,%d)", N, C, H, W);
            match(seed, nf, dget(g3, nbig), r3, NULL, NULL, nbig, "up2_forward (%d,%d,%d,%d)", N, C, h, w);
            match(seed, nf, dget(g4, nsmall), r4, NULL, NULL, nsmall, "up2_backward (%d,%d,%d,%d)", N, C, h, w);
            done();
        }
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// The positional embedding: cuda/embedding.cu computes ref's double pow, sin and cos and rounds once.
// The emulator calls ref's libm: bit for bit. On the device, pow is within 2 double ulps (4 UD; glibc's
// within 1 ulp, 2 UD) and the product c f rounds (UD each side): the arguments differ by at most
// 8 UD |arg|; sin and cos are 1-Lipschitz and within 2 ulps (CUDA) and 1 ulp (glibc) of their
// arguments' values: the double results within 8 UD |arg| + 6 UD, then the float roundings
// (bound_rounded_pair).
START_TEST(posemb) {
    const int S[][3] = {{128, 128, DEV}, {128, 512, DEV}, {64, 32, ANY}, {1, 4, ANY}, {3, 6, ANY}, {5, 130, ANY}};
    for (int nf = 0; nf < 2; nf++)
        for (size_t k = 0; k < sizeof S / sizeof S[0]; k++) {
            if (skip(S[k][2])) continue;
            const int N = S[k][0], C = S[k][1], half = C / 2;
            const size_t n = (size_t)N * C;
            float *c = pool_input(N, 700 + k, -5, 5), *yr = pool_buf(n), *gy = dout(n);
            for (int i = 0; i < N; i += 7) c[i] *= 1000.0f; // EDM's c_noise reaches a few hundred
            if (nf) inject(c, N, 710 + k);
            ref_posemb_forward(yr, c, N, C);
            cu->posemb_forward(gy, dput(c, N), N, C);
            double *b = doubles(n);
            for (int s = 0; s < N; s++)
                for (int i = 0; i < half; i++) {
                    const double arg = c[s] * pow(1.0 / 10000.0, (double)i / (half - 1));
                    for (int h = 0; h < 2; h++) { // the sine, then the cosine
                        const size_t j = (size_t)s * C + h * half + i;
                        b[j] = bound_rounded_pair(yr[j], 8 * UD * fabs(arg) + 6 * UD);
                    }
                }
            match(700 + k, nf, dget(gy, n), yr, device_bound(b), NULL, n, "posemb_forward (%d,%d)", N, C);
            free(b);
            done();
        }
}
END_TEST

int main(void) {
    const TTest *tests[] = {silu, concat, linear_combinations, bias_add, rows, resample, posemb};
    return cuda_run_tests("test_cuda_elementwise", CUDA_SUITE_BACKEND, tests, TEST_COUNT(tests));
}
