// test_fast.c: the conformance suite of fast/: every op against ref/ on the same fixed-seed inputs,
// except conv2d, linear and attention, which tests/test_fast_gemm.c checks (with the GEMM bounds
// of tests/tolerance.h); here they are checked to be the table's entries. Also the table itself,
// the memory ops and the fallback on a CPU without AVX2/FMA. Whole computations (the network, a
// training step, a sampler run) are in tests/test_fast_net.c.
//
// Shapes: the real `mini` layers (batch 64; 32, 64, 96 channels; 28x28, 14x14, 7x7 maps) and awkward
// ones (3, 5, 13 channels, batch 1, 1x1 and odd maps, lengths 1, 7, 1023) so that every vector tail
// runs. Every buffer has guard regions (tbuf_new) that must come back intact.
// Each op runs twice per shape: on finite inputs, where the outputs must match ref's within a bound
// derived in tests/tolerance.h or next to the test (or bit for bit, where fast does ref's arithmetic
// in ref's order), and with NaN and +-Inf injected into the inputs, where the outputs must agree with
// ref's in kind (NaN, +Inf, -Inf or finite) at every position. Bounds are per element, from the
// arithmetic each side does (each fast/ file says what it does differently from ref/). A check
// prints one line, "fast <op> ...", with max |error|, relative L2 and the worst error/bound ratio:
// the closing note quotes them.
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/core/backend.h"
#include "common/core/error.h"
#include "common/core/rng.h"
#include "common/core/util.h"
#include "../fast/fast.h"
#include "../ref/ref.h"
#include "testutil.h"
#include "tolerance.h"

// ---------------------------------------------------------------------------------------------------
// Buffers: every buffer a test makes is registered, and done() checks their guards and frees them.

static struct {
    float *p;
    size_t n;
} bufs[64];
static int nbufs;

static float *buf(size_t n) {
    ck_assert_int_lt(nbufs, 64);
    bufs[nbufs].n = n;
    return bufs[nbufs++].p = tbuf_new(n);
}

// Uniform in [lo, hi] times 4/3 (rounded): the uniform draws are multiples of 2^-24, whose float sums
// would mostly be exact; scaled, the values carry full 24-bit significands and the rounding of every
// operation shows.
static float *input(size_t n, uint64_t seed, float lo, float hi) {
    float *p = buf(n);
    fill_uniform(p, n, seed, lo, hi);
    for (size_t i = 0; i < n; i++) p[i] *= 4.0f / 3.0f;
    return p;
}

static float *copy_of(const float *x, size_t n) {
    float *p = buf(n);
    memcpy(p, x, n * sizeof(float));
    return p;
}

// |x| elementwise: the magnitudes that a bound is made of, run through ref's own op.
static float *absv(const float *x, size_t n) {
    float *p = buf(n);
    for (size_t i = 0; i < n; i++) p[i] = fabsf(x[i]);
    return p;
}

static void done(void) {
    for (int i = 0; i < nbufs; i++) {
        char what[32];
        snprintf(what, sizeof what, "buffer %d", i);
        tbuf_check(bufs[i].p, bufs[i].n, what);
        tbuf_free(bufs[i].p);
    }
    nbufs = 0;
}

static double *dbuf(size_t n) { return xcalloc(n ? n : 1, sizeof(double)); }

// NaN, +Inf and -Inf at three seeded positions (fewer when n < 3).
static void inject(float *x, size_t n, uint64_t seed) {
    const float bad[3] = {NAN, INFINITY, -INFINITY};
    for (size_t k = 0; k < 3 && k < n; k++) x[msd_rng_u32(seed, MSD_STREAM_TEST + 2, k) % n] = bad[k];
}

static int kind(double v) { return isnan(v) ? 0 : isinf(v) ? (v > 0 ? 1 : 2) : 3; }

// got against want. NaN/Inf agreement first, at every position. Then, with bound NULL, every value
// must be bit-identical (fast does ref's arithmetic); otherwise |got[i] - want[i]| <= bound[i] at
// every i, which implies max abs error <= max bound and relative L2 <= ||bound|| / ||want||. With
// injected NaN/Inf (nonfinite) only the kinds count for bounded ops: the bounds assume finite inputs.
static void match(const char *what, uint64_t seed, bool nonfinite, const float *got, const float *want,
                  const double *bound, size_t n) {
    // (Every ck_assert records its location even when it holds, so the loops find the first failure
    // and assert once.)
    size_t i = 0;
    while (i < n && kind(got[i]) == kind(want[i])) i++;
    ck_assert_msg(i == n, "%s (seed %llu): [%zu] got %g, ref %g: NaN/Inf disagree", what, (unsigned long long)seed,
                  i, got[i < n ? i : 0], want[i < n ? i : 0]);
    if (!bound) {
        for (i = 0; i < n && (isnan(want[i]) || memcmp(&got[i], &want[i], sizeof(float)) == 0); i++) {}
        ck_assert_msg(i == n, "%s (seed %llu): [%zu] got %.9g, ref %.9g: not bit-identical", what,
                      (unsigned long long)seed, i, got[i < n ? i : 0], want[i < n ? i : 0]);
        if (!nonfinite) printf("fast %-44s n=%-8zu bit-identical\n", what, n);
        return;
    }
    if (nonfinite) return;
    double worst = 0, max_abs = 0, num = 0, den = 0, bnum = 0;
    size_t bad = n;
    for (i = 0; i < n; i++) {
        if (!isfinite(want[i])) continue; // the kinds agree (above)
        const double e = fabs((double)got[i] - want[i]);
        if (!(e <= bound[i]) && bad == n) bad = i;
        if (bound[i] > 0) worst = fmax(worst, e / bound[i]);
        max_abs = fmax(max_abs, e);
        num += e * e, den += (double)want[i] * want[i], bnum += bound[i] * bound[i];
    }
    ck_assert_msg(bad == n, "%s (seed %llu): [%zu] got %.9g, ref %.9g: error %.3g > bound %.3g", what,
                  (unsigned long long)seed, bad, got[bad < n ? bad : 0], want[bad < n ? bad : 0],
                  bad < n ? fabs((double)got[bad] - want[bad]) : 0.0, bad < n ? bound[bad] : 0.0);
    const double rel = den > 0 ? sqrt(num / den) : sqrt(num), brel = den > 0 ? sqrt(bnum / den) : sqrt(bnum);
    ck_assert_msg(rel <= brel, "%s: rel L2 %.3g > %.3g", what, rel, brel);
    printf("fast %-44s n=%-8zu max abs %.2e, rel L2 %.2e (bound %.2e), worst err/bound %.3f\n", what, n,
           max_abs, rel, brel, worst);
}

static const size_t LENGTHS[] = {1, 7, 8, 9, 31, 33, 1023, 64 * 32 * 28 * 28};
#define NLEN (sizeof LENGTHS / sizeof LENGTHS[0])

// ---------------------------------------------------------------------------------------------------
// The vector exp against expf: within 2 ulp wherever e^x is a normal or subnormal float, and of the
// same kind at the special values. Positive floats are ordered like their bit patterns, so the ulp
// distance is the difference of the patterns (inf is the pattern after FLT_MAX).

static long ulps(float a, float b) {
    int32_t ia, ib;
    memcpy(&ia, &a, 4), memcpy(&ib, &b, 4);
    return labs((long)ia - ib);
}

START_TEST(exp_vs_expf) {
    const size_t n = 2100001; // [-110, 100] in steps of 1e-4
    float *x = buf(n), *y = buf(n);
    for (size_t i = 0; i < n; i++) x[i] = (float)(-110.0 + 1e-4 * (double)i);
    fast_exp_array(y, x, n);
    long worst = 0;
    size_t wi = 0;
    for (size_t i = 0; i < n; i++) {
        long d = ulps(y[i], expf(x[i]));
        if (d > worst) worst = d, wi = i;
    }
    printf("fast exp over [-110, 100]: worst %ld ulp at x = %.9g (got %.9g, expf %.9g)\n", worst, x[wi], y[wi],
           expf(x[wi]));
    ck_assert_msg(worst <= 2, "vector exp: %ld ulp from expf at x = %.9g", worst, x[wi]);
    const float sx[] = {NAN, INFINITY, -INFINITY, 0.0f, -0.0f, 1e-45f, -1e-45f, 1e-30f, 89.0f, 100.0f, 1e30f,
                        FLT_MAX, -104.0f, -200.0f, -FLT_MAX, 88.0f, -87.0f, -103.0f, 1.0f, -1.0f};
    const size_t ns = sizeof sx / sizeof sx[0];
    float *ys = buf(ns);
    fast_exp_array(ys, sx, ns);
    for (size_t i = 0; i < ns; i++) {
        const float want = expf(sx[i]);
        ck_assert_msg(kind(ys[i]) == kind(want) && (isnan(want) || ulps(ys[i], want) <= 2),
                      "exp(%g): got %.9g, expf %.9g", sx[i], ys[i], want);
    }
    done();
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// SiLU: per-element bounds from silu_bounds (tests/tolerance.h, which derives them).
static void t_silu(const float *x, const float *dy, size_t n, const char *range, uint64_t seed, bool nf) {
    float *yr = buf(n), *yf = buf(n), *dr = buf(n), *df = buf(n);
    ref_silu_forward(yr, x, n), fast_silu_forward(yf, x, n);
    ref_silu_backward(dr, dy, x, n), fast_silu_backward(df, dy, x, n);
    double *b = dbuf(n), *bd = dbuf(n);
    for (size_t i = 0; i < n; i++) silu_bounds(x[i], dy[i], yr[i], &b[i], &bd[i]);
    char what[96];
    snprintf(what, sizeof what, "silu_forward %s", range);
    match(what, seed, nf, yf, yr, b, n);
    snprintf(what, sizeof what, "silu_backward %s", range);
    match(what, seed, nf, df, dr, bd, n);
    // in place (y == x, dx == dy) gives the same values
    float *xi = copy_of(x, n), *gi = copy_of(dy, n);
    fast_silu_forward(xi, xi, n), fast_silu_backward(gi, gi, x, n);
    match("silu_forward in place", seed, true, xi, yf, NULL, n);
    match("silu_backward in place", seed, true, gi, df, NULL, n);
    free(b), free(bd);
    done();
}

START_TEST(silu) {
    for (int nf = 0; nf < 2; nf++)
        for (size_t k = 0; k <= NLEN; k++) {
            // the last run: [-120, 120], where exp underflows to subnormals and 0
            const size_t n = k < NLEN ? LENGTHS[k] : 1023;
            const float r = k < NLEN ? 8 : 120;
            float *x = input(n, 100 + k, -r, r), *dy = input(n, 200 + k, -1, 1);
            if (nf) inject(x, n, 300 + k), inject(dy, n, 400 + k);
            t_silu(x, dy, n, k < NLEN ? "[-8, 8]" : "[-120, 120]", 100 + k, nf);
        }
    // the special values, with dy = 4/3
    const float sx[] = {0.0f, -0.0f, 1e-40f, -1e-40f, 88.7f, -88.7f, 89.5f, -89.5f, -103.9f, -104.5f, -150.0f,
                        150.0f, FLT_MAX, -FLT_MAX, -1.2784645f, INFINITY, -INFINITY, NAN};
    const size_t n = sizeof sx / sizeof sx[0];
    float *x = copy_of(sx, n), *ones = input(n, 1, 1, 1);
    t_silu(x, ones, n, "special values", 1, false);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// Concat, add, scale, axpby, bias_add forward, scale_rows, combine_rows: fast does ref's arithmetic
// (copies, single float operations in ref's order, or exact products summed once in double), so
// every value is bit-identical.

START_TEST(concat) {
    const int S[][4] = {{64, 32, 32, 784}, {64, 64, 64, 196}, {64, 96, 64, 49},
                        {1, 3, 5, 49},     {2, 13, 1, 1},     {3, 5, 3, 7}};
    for (int nf = 0; nf < 2; nf++)
        for (size_t k = 0; k < sizeof S / sizeof S[0]; k++) {
            const int N = S[k][0], CA = S[k][1], CB = S[k][2], HW = S[k][3];
            const size_t na = (size_t)N * CA * HW, nb = (size_t)N * CB * HW, ny = na + nb;
            float *a = input(na, 10 + k, -1, 1), *b = input(nb, 20 + k, -1, 1), *dy = input(ny, 30 + k, -1, 1);
            if (nf) inject(a, na, 40 + k), inject(b, nb, 50 + k), inject(dy, ny, 60 + k);
            float *yr = buf(ny), *yf = buf(ny), *dar = buf(na), *daf = buf(na), *dbr = buf(nb), *dbf = buf(nb);
            ref_concat_forward(yr, a, b, N, CA, CB, HW), fast_concat_forward(yf, a, b, N, CA, CB, HW);
            match("concat_forward", 10 + k, nf, yf, yr, NULL, ny);
            ref_concat_backward(dar, dbr, dy, N, CA, CB, HW), fast_concat_backward(daf, dbf, dy, N, CA, CB, HW);
            match("concat_backward da", 10 + k, nf, daf, dar, NULL, na);
            match("concat_backward db", 10 + k, nf, dbf, dbr, NULL, nb);
            // either gradient may be NULL
            float *da2 = buf(na), *db2 = buf(nb);
            fast_concat_backward(da2, NULL, dy, N, CA, CB, HW), fast_concat_backward(NULL, db2, dy, N, CA, CB, HW);
            match("concat_backward da alone", 10 + k, true, da2, dar, NULL, na);
            match("concat_backward db alone", 10 + k, true, db2, dbr, NULL, nb);
            done();
        }
}
END_TEST

START_TEST(linear_combinations) {
    for (int nf = 0; nf < 2; nf++)
        for (size_t k = 0; k < NLEN; k++) {
            const size_t n = LENGTHS[k];
            float *a = input(n, 70 + k, -2, 2), *b = input(n, 80 + k, -2, 2);
            if (nf) inject(a, n, 90 + k), inject(b, n, 95 + k);
            float *yr = buf(n), *yf = buf(n);
            ref_add(yr, a, b, n), fast_add(yf, a, b, n);
            match("add", 70 + k, nf, yf, yr, NULL, n);
            ref_scale(yr, a, -0.3f, n), fast_scale(yf, a, -0.3f, n);
            match("scale", 70 + k, nf, yf, yr, NULL, n);
            float *zr = copy_of(b, n), *zf = copy_of(b, n);
            ref_axpby(zr, 0.7f, a, -1.3f, n), fast_axpby(zf, 0.7f, a, -1.3f, n);
            match("axpby", 70 + k, nf, zf, zr, NULL, n);
            fast_add(zf, zf, a, n), ref_add(zr, zr, a, n); // in place
            match("add in place", 70 + k, nf, zf, zr, NULL, n);
            done();
        }
}
END_TEST

// bias_add backward: sum over HW in double on both sides (bound_double_sums with A = sum |dy|, from
// ref's op on |dy|, whose own rounding the 3 gamd term covers since A enters only there).
START_TEST(bias_add) {
    const int S[][3] = {{64, 32, 784}, {64, 64, 196}, {64, 96, 49}, {1, 3, 49}, {2, 5, 1}, {3, 13, 7}};
    for (int nf = 0; nf < 2; nf++)
        for (size_t k = 0; k < sizeof S / sizeof S[0]; k++) {
            const int N = S[k][0], C = S[k][1], HW = S[k][2];
            const size_t n = (size_t)N * C * HW, nc = (size_t)N * C;
            float *x = input(n, 110 + k, -1, 1), *bias = input(nc, 120 + k, -1, 1), *dy = input(n, 130 + k, -1, 1);
            float *A = buf(nc);
            ref_bias_add_backward(A, absv(dy, n), N, C, HW);
            if (nf) inject(x, n, 140 + k), inject(bias, nc, 150 + k), inject(dy, n, 160 + k);
            float *yr = buf(n), *yf = buf(n), *dr = buf(nc), *df = buf(nc);
            ref_bias_add_forward(yr, x, bias, N, C, HW), fast_bias_add_forward(yf, x, bias, N, C, HW);
            match("bias_add_forward", 110 + k, nf, yf, yr, NULL, n);
            ref_bias_add_backward(dr, dy, N, C, HW), fast_bias_add_backward(df, dy, N, C, HW);
            double *b = dbuf(nc);
            for (size_t i = 0; i < nc; i++) b[i] = bound_double_sums(dr[i], A[i] * (1 + U), HW);
            match("bias_add_backward", 110 + k, nf, df, dr, b, nc);
            free(b);
            done();
        }
}
END_TEST

// sqerr_rows: both sides sum the exact squares of differences of floats in double, in different
// orders: bound_double_sums with A = the sum itself.
START_TEST(rows) {
    const int S[][2] = {{64, 784}, {1, 7}, {3, 1023}, {2, 40000}, {5, 1}};
    for (int nf = 0; nf < 2; nf++)
        for (size_t k = 0; k < sizeof S / sizeof S[0]; k++) {
            const int N = S[k][0];
            const size_t M = (size_t)S[k][1], n = N * M;
            float *x = input(n, 170 + k, -1, 1), *z = input(n, 180 + k, -3, 3);
            float *a = input(N, 190 + k, -2, 2), *b = input(N, 200 + k, -2, 2);
            if (nf) inject(x, n, 210 + k), inject(z, n, 220 + k), inject(a, N, 230 + k);
            float *yr = buf(n), *yf = buf(n), *er = buf(N), *ef = buf(N);
            ref_scale_rows(yr, x, a, N, M), fast_scale_rows(yf, x, a, N, M);
            match("scale_rows", 170 + k, nf, yf, yr, NULL, n);
            ref_combine_rows(yr, a, x, b, z, N, M), fast_combine_rows(yf, a, x, b, z, N, M);
            match("combine_rows", 170 + k, nf, yf, yr, NULL, n);
            ref_sqerr_rows(er, x, z, N, M), fast_sqerr_rows(ef, x, z, N, M);
            double *bd = dbuf(N);
            for (int i = 0; i < N; i++) bd[i] = bound_double_sums(er[i], er[i] * (1 + U), (double)M);
            match("sqerr_rows", 170 + k, nf, ef, er, bd, N);
            free(bd);
            done();
        }
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// Resampling. down2 backward and up2 forward copy values (times 1/4, exact): bit-identical.
// down2 forward and up2 backward: fast adds the four values of a block in float at two levels
// ((a + c) + (b + d): gam(2) sum |x|), ref sums in double and rounds once (u |sum| plus gamd(3),
// negligible); A = sum |x| (times 1/4 for down2) comes from ref's op on |x|, rounded once more:
// |fast - ref| <= gam(4) A.
START_TEST(resample) {
    // (N, C, H, W): down2's input, and up2's output (up2 runs on (N, C, H/2, W/2))
    const int S[][4] = {{64, 32, 28, 28}, {64, 64, 14, 14}, {64, 96, 14, 14}, {1, 3, 14, 14},
                        {2, 5, 2, 2}, {1, 13, 6, 18}, {3, 7, 30, 2}};
    for (int nf = 0; nf < 2; nf++)
        for (size_t k = 0; k < sizeof S / sizeof S[0]; k++) {
            const int N = S[k][0], C = S[k][1], H = S[k][2], W = S[k][3];
            const size_t nbig = (size_t)N * C * H * W, nsmall = nbig / 4;
            float *x = input(nbig, 240 + k, -1, 1), *xs = input(nsmall, 250 + k, -1, 1);
            float *dys = input(nsmall, 260 + k, -1, 1), *dy = input(nbig, 270 + k, -1, 1);
            float *A = buf(nsmall), *B = buf(nsmall);
            ref_down2_forward(A, absv(x, nbig), N, C, H, W);
            ref_up2_backward(B, absv(dy, nbig), N, C, H / 2, W / 2);
            if (nf) inject(x, nbig, 280 + k), inject(xs, nsmall, 281 + k), inject(dys, nsmall, 282 + k),
                    inject(dy, nbig, 283 + k);
            float *sr = buf(nsmall), *sf = buf(nsmall), *br = buf(nbig), *bf = buf(nbig);
            double *bd = dbuf(nsmall);
            for (size_t i = 0; i < nsmall; i++) bd[i] = gam(4) * A[i];
            ref_down2_forward(sr, x, N, C, H, W), fast_down2_forward(sf, x, N, C, H, W);
            match("down2_forward", 240 + k, nf, sf, sr, bd, nsmall);
            ref_down2_backward(br, dys, N, C, H, W), fast_down2_backward(bf, dys, N, C, H, W);
            match("down2_backward", 240 + k, nf, bf, br, NULL, nbig);
            ref_up2_forward(br, xs, N, C, H / 2, W / 2), fast_up2_forward(bf, xs, N, C, H / 2, W / 2);
            match("up2_forward", 240 + k, nf, bf, br, NULL, nbig);
            for (size_t i = 0; i < nsmall; i++) bd[i] = gam(4) * B[i];
            ref_up2_backward(sr, dy, N, C, H / 2, W / 2), fast_up2_backward(sf, dy, N, C, H / 2, W / 2);
            match("up2_backward", 240 + k, nf, sf, sr, bd, nsmall);
            free(bd);
            done();
        }
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// GroupNorm. Per group of M = (C/G) HW values, with ref's saved mean m and rstd r (floats) and
// xh = (x - m) r (double):
// - mean: both sides sum in double (gamd(M + 2) sum|x| / M each, the division included) and round
//   once: b_mean = d + u (2 |m| + d), d = 2 gamd(M + 2) A, A = sum |x| / M.
// - rstd: the variance is a double two-pass sum on each side (relative gamd(M + 4), plus
//   (mean error)^2 / var), then sqrt, division and one float rounding on each side:
//   b_rstd = r (2u (1 + 2u) + 2 gamd(M + 6) + d^2 / (var + eps)).
// - y: fast rounds x - m_f, gamma r_f and the FMA (gam(3) |gamma xh| + u |y|), ref rounds once
//   (u |y| + gamd(4) (|gamma xh| + |beta|)), and fast's own m_f, r_f may differ from ref's by b_mean,
//   b_rstd: + |gamma| r b_mean + |gamma (x - m)| b_rstd.
// Backward, with MG = mean of dy gamma and MGX = mean of dy gamma xh over the group (double), and
// A1, A2 the means of their absolute values:
// - fast's float means: dmg = u |MG| + 2 gamd(M + 4) A1, dmgx = u |MGX| + 2 gamd(M + 6) A2;
// - t1 = fl(dy gamma - mg) (one FMA rounding): e1 = u |dy gamma - MG| + dmg;
// - xh' = fl(fl(x - m) r) within gam(2) |xh|; t2 = fl(t1 - xh' mgx) (one rounding):
//   e2 = e1 + |xh| dmgx + gam(2) |xh| (|MGX| + dmgx) + u (|R| + e1 + |xh| dmgx), R the exact t2;
// - dx = fl(r t2): r e2 (1 + u) + u (1 + u) |dx|; ref: u |dx| + r (2 gamd(M + 8) (A1 + |xh| A2) +
//   gamd(4) (|dy gamma| + |MG| + |xh MGX|)).
// dgamma, dbeta: D0 + one double sum over N HW terms on each side (bound_accumulated).
static void t_groupnorm(int N, int C, int HW, int G, uint64_t seed, bool nf) {
    const int CG = C / G;
    const size_t n = (size_t)N * C * HW, M = (size_t)CG * HW, ng = (size_t)N * G;
    float *x = input(n, seed, -1, 3), *gamma = input(C, seed + 1, -1.5f, 1.5f), *beta = input(C, seed + 2, -1, 1);
    float *dy = input(n, seed + 3, -1, 1), *dg0 = input(C, seed + 4, -1, 1), *db0 = input(C, seed + 5, -1, 1);
    if (nf) inject(x, n, seed + 6), inject(dy, n, seed + 7);
    const float eps = 1e-6f;
    float *yr = buf(n), *yf = buf(n), *mr = buf(ng), *mf = buf(ng), *rr = buf(ng), *rf = buf(ng);
    ref_groupnorm_forward(yr, mr, rr, x, gamma, beta, N, C, HW, G, eps);
    fast_groupnorm_forward(yf, mf, rf, x, gamma, beta, N, C, HW, G, eps);
    // backward from ref's saved statistics on both sides
    float *dxr = buf(n), *dxf = buf(n), *dgr = copy_of(dg0, C), *dgf = copy_of(dg0, C);
    float *dbr = copy_of(db0, C), *dbf = copy_of(db0, C);
    ref_groupnorm_backward(dxr, dgr, dbr, dy, mr, rr, x, gamma, N, C, HW, G);
    fast_groupnorm_backward(dxf, dgf, dbf, dy, mr, rr, x, gamma, N, C, HW, G);
    double *bm = dbuf(ng), *br = dbuf(ng), *by = dbuf(n), *bx = dbuf(n), *bg = dbuf(C), *bb = dbuf(C);
    double *Ag = dbuf(C), *Ab = dbuf(C);
    for (size_t q = 0; q < ng && !nf; q++) {
        const size_t base = q * M, g = q % G;
        const double m = mr[q], r = rr[q];
        double A = 0, mu = 0, var = 0, MG = 0, MGX = 0, A1 = 0, A2 = 0;
        for (size_t i = 0; i < M; i++) A += fabs(x[base + i]) / M, mu += (double)x[base + i] / M;
        for (size_t i = 0; i < M; i++) var += (x[base + i] - mu) * (x[base + i] - mu) / M;
        for (size_t i = 0; i < M; i++) {
            const double dg = (double)dy[base + i] * gamma[g * CG + i / HW], xh = (x[base + i] - m) * r;
            MG += dg / M, MGX += dg * xh / M, A1 += fabs(dg) / M, A2 += fabs(dg * xh) / M;
        }
        const double d = 2 * gamd(M + 2) * A;
        bm[q] = d + U * (2 * fabs(m) + d);
        br[q] = r * (2 * U * (1 + 2 * U) + 2 * gamd(M + 6) + d * d / (var + eps));
        const double dmg = U * fabs(MG) + 2 * gamd(M + 4) * A1, dmgx = U * fabs(MGX) + 2 * gamd(M + 6) * A2;
        for (size_t i = 0; i < M; i++) {
            const size_t j = base + i;
            const int c = (int)(g * CG + i / HW);
            const double xh = (x[j] - m) * r, gx = gamma[c] * xh, dg = (double)dy[j] * gamma[c];
            by[j] = gam(3) * fabs(gx) + U * fabs(yr[j]) * (2 + gam(3)) + gamd(4) * (fabs(gx) + fabs(beta[c])) +
                    fabs(gamma[c]) * r * bm[q] + fabs(gamma[c] * (x[j] - m)) * br[q];
            const double R = dg - MG - xh * MGX, e1 = U * fabs(dg - MG) + dmg;
            const double e2 = e1 + fabs(xh) * dmgx + gam(2) * fabs(xh) * (fabs(MGX) + dmgx) +
                              U * (fabs(R) + e1 + fabs(xh) * dmgx);
            bx[j] = r * e2 * (1 + U) + U * (2 + U) * fabs(r * R) +
                    r * (2 * gamd(M + 8) * (A1 + fabs(xh) * A2) + gamd(4) * (fabs(dg) + fabs(MG) + fabs(xh * MGX)));
            Ag[c] += fabs(dy[j] * xh), Ab[c] += fabs(dy[j]);
        }
    }
    for (int c = 0; c < C && !nf; c++) {
        bg[c] = bound_accumulated(dgr[c], dg0[c], Ag[c], (double)N * HW + 4);
        bb[c] = bound_accumulated(dbr[c], db0[c], Ab[c], (double)N * HW + 4);
    }
    char what[96];
    snprintf(what, sizeof what, "groupnorm (%d,%d,%d) G=%d mean", N, C, HW, G);
    match(what, seed, nf, mf, mr, bm, ng);
    snprintf(what, sizeof what, "groupnorm (%d,%d,%d) G=%d rstd", N, C, HW, G);
    match(what, seed, nf, rf, rr, br, ng);
    snprintf(what, sizeof what, "groupnorm_forward (%d,%d,%d) G=%d y", N, C, HW, G);
    match(what, seed, nf, yf, yr, by, n);
    snprintf(what, sizeof what, "groupnorm_backward (%d,%d,%d) G=%d dx", N, C, HW, G);
    match(what, seed, nf, dxf, dxr, bx, n);
    snprintf(what, sizeof what, "groupnorm_backward (%d,%d,%d) G=%d dgamma +=", N, C, HW, G);
    match(what, seed, nf, dgf, dgr, bg, C);
    snprintf(what, sizeof what, "groupnorm_backward (%d,%d,%d) G=%d dbeta +=", N, C, HW, G);
    match(what, seed, nf, dbf, dbr, bb, C);
    free(bm), free(br), free(by), free(bx), free(bg), free(bb), free(Ag), free(Ab);
    done();
}

START_TEST(groupnorm) {
    const int S[][4] = {{64, 32, 784, 8}, {64, 64, 196, 16}, {64, 96, 49, 16}, {1, 3, 49, 3},
                        {2, 5, 7, 1}, {1, 13, 49, 13}, {3, 12, 1, 4}, {2, 24, 9, 6}};
    for (int nf = 0; nf < 2; nf++)
        for (size_t k = 0; k < sizeof S / sizeof S[0]; k++)
            t_groupnorm(S[k][0], S[k][1], S[k][2], S[k][3], 300 + 10 * k, nf);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// Dropout: the same mask from the counter RNG and the same float product: bit-identical, forward and
// backward, for seeds and streams with high bits set (the key's and counter's upper words).
START_TEST(dropout) {
    const float P[] = {0.0f, 0.1f, 0.5f, 0.93f};
    const uint64_t SEED[] = {7, 0x123456789abcdefull}, STREAM[] = {MSD_STREAM_DROPOUT + 3, (1ull << 40) | 5};
    for (int nf = 0; nf < 2; nf++)
        for (size_t k = 0; k < NLEN; k++)
            for (int v = 0; v < 4; v++) {
                const size_t n = LENGTHS[k];
                const uint64_t seed = SEED[v % 2], stream = STREAM[v / 2 % 2];
                float *x = input(n, 500 + k, -1, 1);
                if (nf) inject(x, n, 510 + k);
                float *yr = buf(n), *yf = buf(n);
                ref_dropout_forward(yr, x, P[v], seed, stream, n), fast_dropout_forward(yf, x, P[v], seed, stream, n);
                match("dropout_forward", seed, nf, yf, yr, NULL, n);
                ref_dropout_backward(yr, x, P[v], seed, stream, n), fast_dropout_backward(yf, x, P[v], seed, stream, n);
                match("dropout_backward", seed, nf, yf, yr, NULL, n);
                fast_dropout_forward(x, x, P[v], seed, stream, n); // in place
                match("dropout_forward in place", seed, true, x, yr, NULL, n);
                done();
            }
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// Optimiser ops. Adam, EMA and nan_to_num do ref's operations in ref's precision and order:
// bit-identical. sumsq: one double sum of exact squares on each side (bound_double_sums).
START_TEST(optim) {
    for (int nf = 0; nf < 2; nf++)
        for (size_t k = 0; k < NLEN; k++) {
            const size_t n = LENGTHS[k];
            float *p = input(n, 600 + k, -1, 1), *m = input(n, 610 + k, -0.1f, 0.1f), *v = input(n, 620 + k, 0, 0.01f);
            float *g = input(n, 630 + k, -0.5f, 0.5f);
            if (nf) inject(g, n, 640 + k), inject(p, n, 650 + k);
            for (long step = 1; step <= 1000; step *= 1000) {
                float *pr = copy_of(p, n), *pf = copy_of(p, n), *mr = copy_of(m, n), *mf = copy_of(m, n);
                float *vr = copy_of(v, n), *vf = copy_of(v, n);
                ref_adam(pr, mr, vr, g, 2e-3f, 0.9f, 0.999f, 1e-8f, step, n);
                fast_adam(pf, mf, vf, g, 2e-3f, 0.9f, 0.999f, 1e-8f, step, n);
                match("adam p", 600 + k, nf, pf, pr, NULL, n);
                match("adam m", 600 + k, nf, mf, mr, NULL, n);
                match("adam v", 600 + k, nf, vf, vr, NULL, n);
            }
            float *er = copy_of(m, n), *ef = copy_of(m, n);
            ref_ema(er, p, 0.999f, n), fast_ema(ef, p, 0.999f, n);
            match("ema", 600 + k, nf, ef, er, NULL, n);
            float *xr = copy_of(p, n), *xf = copy_of(p, n);
            inject(xr, n, 660 + k), inject(xf, n, 660 + k);
            ref_nan_to_num(xr, 0.5f, 1e4f, -2e4f, n), fast_nan_to_num(xf, 0.5f, 1e4f, -2e4f, n);
            match("nan_to_num", 600 + k, nf, xf, xr, NULL, n);
            float *sr = buf(1), *sf = buf(1);
            ref_sumsq(sr, g, n), fast_sumsq(sf, g, n);
            const double bs = bound_double_sums(sr[0], sr[0] * (1 + U), (double)n);
            match("sumsq", 600 + k, nf, sf, sr, &bs, 1);
            done();
        }
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// The positional embedding (fast calls ref) and the posterior mean (fast computes ref's distances,
// weights and sums in ref's order, see fast/denoiser.c): bit-identical.
START_TEST(posemb) {
    const int S[][2] = {{64, 32}, {1, 4}, {3, 6}, {5, 128}};
    for (int nf = 0; nf < 2; nf++)
        for (size_t k = 0; k < sizeof S / sizeof S[0]; k++) {
            const int N = S[k][0], C = S[k][1];
            float *c = input(N, 700 + k, -5, 5), *yr = buf((size_t)N * C), *yf = buf((size_t)N * C);
            if (nf) inject(c, N, 710 + k);
            ref_posemb_forward(yr, c, N, C), fast_posemb_forward(yf, c, N, C);
            match("posemb_forward", 700 + k, nf, yf, yr, NULL, (size_t)N * C);
            done();
        }
}
END_TEST

START_TEST(posterior_mean) {
    // (N, K, M): Fashion-MNIST images (fused pass), larger ones (block by block), tiny ones
    const int S[][3] = {{5, 37, 784}, {9, 64, 1500}, {1, 1, 7}, {2, 5, 3}, {17, 40, 784}};
    const float SIG[] = {0.01f, 0.1f, 1.0f, 10.0f, 0.05f, 0.3f, 3.0f, 0.02f, 30.0f};
    for (int nf = 0; nf < 2; nf++)
        for (size_t k = 0; k < sizeof S / sizeof S[0]; k++) {
            const int N = S[k][0], K = S[k][1];
            const size_t M = (size_t)S[k][2];
            float *data = input((size_t)K * M, 800 + k, -1, 1), *z = buf((size_t)N * M), *sigma = buf(N);
            fill_normal(z, (size_t)N * M, 810 + k, 1.0f);
            for (int q = 0; q < N; q++) {
                sigma[q] = SIG[q % 9];
                for (size_t i = 0; i < M; i++) // z = y_k + sigma eps, for the image k = q mod K
                    z[q * M + i] = data[(size_t)(q % K) * M + i] + sigma[q] * z[q * M + i];
            }
            if (nf) inject(z, (size_t)N * M, 820 + k), inject(data, (size_t)K * M, 830 + k);
            float *mr = buf((size_t)N * M), *mf = buf((size_t)N * M), *wr = buf((size_t)N * K), *wf = buf((size_t)N * K);
            ref_posterior_mean(mr, wr, z, data, sigma, N, K, M);
            fast_posterior_mean(mf, wf, z, data, sigma, N, K, M);
            match("posterior_mean m", 800 + k, nf, mf, mr, NULL, (size_t)N * M);
            match("posterior_mean w", 800 + k, nf, wf, wr, NULL, (size_t)N * K);
            done();
        }
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// The table: msd_backend_get("fast") hands out msd_backend_fast on this machine, every entry is the
// fast_ function this suite (and tests/test_fast_gemm.c, for conv2d, linear and attention) checks,
// the memory ops behave as ref's, and a CPU without AVX2/FMA gets a clear message and, by default,
// ref with one notice.

START_TEST(table) {
    ck_assert_msg(msd_cpu_has_avx2_fma(), "this suite needs a CPU with AVX2 and FMA");
    const struct msd_backend *be = msd_backend_get("fast");
    ck_assert_ptr_eq(be, &msd_backend_fast);
    ck_assert_str_eq(be->name, "fast");
#define SAME(op) ck_assert_msg(be->op != NULL && (void (*)(void))be->op == (void (*)(void))fast_##op, "fast." #op);
    MSD_BACKEND_OPS(SAME)
#undef SAME
    ck_assert_ptr_ne(msd_backend_default(), &msd_backend_ref);
    // memory: 64-byte aligned, fill, overlapping copy, upload and download
    const size_t n = 1023;
    float *d = be->alloc(n), *host = input(n, 900, -1, 1), *back = buf(n);
    ck_assert_msg(d && ((uintptr_t)d & 63) == 0, "fast alloc: %p not 64-byte aligned", (void *)d);
    be->upload(d, host, n), be->download(back, d, n);
    match("upload/download", 900, false, back, host, NULL, n);
    be->copy(d + 1, d, n - 1), be->download(back, d, n); // overlapping, as memmove
    match("copy overlapping", 900, false, back + 1, host, NULL, n - 1);
    be->fill(d, -2.5f, n), be->download(back, d, n);
    for (size_t i = 0; i < n; i++) host[i] = -2.5f;
    match("fill", 900, false, back, host, NULL, n);
    // fill_normal: ref's draws, bit for bit, at a seed and stream with both 32-bit halves in use
    const uint64_t seed = 0x123456789abull, stream = ((uint64_t)7 << 40) | 5;
    be->fill_normal(d, seed, stream, n), be->download(back, d, n);
    ref_fill_normal(host, seed, stream, n);
    match("fill_normal", seed, false, back, host, NULL, n);
    be->release(d), be->sync();
    done();
}
END_TEST

// A CPU without AVX2/FMA, simulated: get("fast") fails with a message saying so, and the default is
// ref with a one-line notice on stderr, printed once however often the default is asked for.
START_TEST(no_avx2_fallback) {
    msd_clear_error();
    ck_assert_ptr_null(msd_backend_get_for_cpu("fast", false));
    ck_assert_msg(strstr(msd_last_error(), "this CPU lacks AVX2/FMA"), "message: %s", msd_last_error());
    ck_assert_ptr_eq(msd_backend_get_for_cpu("ref", false), &msd_backend_ref);
    FILE *err = tmpfile();
    ck_assert_ptr_nonnull(err);
    fflush(stderr);
    const int saved = dup(2);
    dup2(fileno(err), 2);
    const struct msd_backend *b1 = msd_backend_default_for_cpu(false), *b2 = msd_backend_default_for_cpu(false);
    fflush(stderr);
    dup2(saved, 2), close(saved);
    ck_assert_ptr_eq(b1, &msd_backend_ref);
    ck_assert_ptr_eq(b2, &msd_backend_ref);
    char text[512] = "";
    rewind(err);
    const size_t len = fread(text, 1, sizeof text - 1, err);
    fclose(err);
    text[len] = '\0';
    const char *nl = strchr(text, '\n');
    ck_assert_msg(nl && nl[1] == '\0' && strstr(text, "AVX2/FMA") && strstr(text, "ref"),
                  "expected one notice line naming AVX2/FMA and ref, got: \"%s\"", text);
}
END_TEST

int main(void) {
    Suite *s = suite_create("fast");
    TCase *tc = tcase_create("fast against ref");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, exp_vs_expf);
    tcase_add_test(tc, silu);
    tcase_add_test(tc, concat);
    tcase_add_test(tc, linear_combinations);
    tcase_add_test(tc, bias_add);
    tcase_add_test(tc, rows);
    tcase_add_test(tc, resample);
    tcase_add_test(tc, groupnorm);
    tcase_add_test(tc, dropout);
    tcase_add_test(tc, optim);
    tcase_add_test(tc, posemb);
    tcase_add_test(tc, posterior_mean);
    tcase_add_test(tc, table);
    tcase_add_test(tc, no_avx2_fallback);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
