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
// prints one line, "fast <op> ...", with max |error|, relative L2 and the worst error/bound ratio, so
// that a run shows how far inside its bound each op is.
#include <float.h>
#include <math.h>
#include <stdarg.h>
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
#include "opcheck.h"
#include "testutil.h"
#include "tolerance.h"

// got against want, the check named by a printf format. NaN/Inf agreement first, at every position.
// Then, with bound NULL, every value must be bit-identical (fast does ref's arithmetic); otherwise
// |got[i] - want[i]| <= bound[i] at every i, which implies max abs error <= max bound and relative
// L2 <= ||bound|| / ||want||. With injected NaN/Inf (nonfinite) only the kinds count for bounded ops:
// the bounds assume finite inputs.
static void match(uint64_t seed, bool nonfinite, const float *got, const float *want, const double *bound, size_t n,
                  const char *fmt, ...) __attribute__((format(printf, 7, 8)));
static void match(uint64_t seed, bool nonfinite, const float *got, const float *want, const double *bound, size_t n,
                  const char *fmt, ...) {
    char what[96];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    // (Every ck_assert records its location even when it holds, so the loops find the first failure
    // and assert once.)
    size_t i = 0;
    while (i < n && value_kind(got[i]) == value_kind(want[i])) i++;
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

// check(n, k, nf) at every length LENGTHS[k]: on finite inputs, then with NaN and Inf injected (nf).
static void at_every_length(void (*check)(size_t n, size_t k, bool nf)) {
    for (int nf = 0; nf < 2; nf++)
        for (size_t k = 0; k < NLEN; k++) check(LENGTHS[k], k, nf);
}

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
    float *x = pool_buf(n), *y = pool_buf(n);
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
    float *ys = pool_buf(ns);
    fast_exp_array(ys, sx, ns);
    for (size_t i = 0; i < ns; i++) {
        const float want = expf(sx[i]);
        ck_assert_msg(value_kind(ys[i]) == value_kind(want) && (isnan(want) || ulps(ys[i], want) <= 2),
                      "exp(%g): got %.9g, expf %.9g", sx[i], ys[i], want);
    }
    pool_done();
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// SiLU: per-element bounds from silu_bounds (tests/tolerance.h, which derives them).
static void t_silu(const float *x, const float *dy, size_t n, const char *range, uint64_t seed, bool nf) {
    float *yr = pool_buf(n), *yf = pool_buf(n), *dr = pool_buf(n), *df = pool_buf(n);
    ref_silu_forward(yr, x, n), fast_silu_forward(yf, x, n);
    ref_silu_backward(dr, dy, x, n), fast_silu_backward(df, dy, x, n);
    double *b = doubles(n), *bd = doubles(n);
    for (size_t i = 0; i < n; i++) silu_bounds(x[i], dy[i], yr[i], &b[i], &bd[i]);
    match(seed, nf, yf, yr, b, n, "silu_forward %s", range);
    match(seed, nf, df, dr, bd, n, "silu_backward %s", range);
    // in place (y == x, dx == dy) gives the same values
    float *xi = pool_copy(x, n), *gi = pool_copy(dy, n);
    fast_silu_forward(xi, xi, n), fast_silu_backward(gi, gi, x, n);
    match(seed, true, xi, yf, NULL, n, "silu_forward in place");
    match(seed, true, gi, df, NULL, n, "silu_backward in place");
    free(b), free(bd);
    pool_done();
}

START_TEST(silu) {
    for (int nf = 0; nf < 2; nf++)
        for (size_t k = 0; k <= NLEN; k++) {
            // the last run: [-120, 120], where exp underflows to subnormals and 0
            const size_t n = k < NLEN ? LENGTHS[k] : 1023;
            const float r = k < NLEN ? 8 : 120;
            float *x = pool_input(n, 100 + k, -r, r), *dy = pool_input(n, 200 + k, -1, 1);
            if (nf) inject(x, n, 300 + k), inject(dy, n, 400 + k);
            t_silu(x, dy, n, k < NLEN ? "[-8, 8]" : "[-120, 120]", 100 + k, nf);
        }
    // the special values, with dy = 4/3
    const float sx[] = {0.0f, -0.0f, 1e-40f, -1e-40f, 88.7f, -88.7f, 89.5f, -89.5f, -103.9f, -104.5f, -150.0f,
                        150.0f, FLT_MAX, -FLT_MAX, -1.2784645f, INFINITY, -INFINITY, NAN};
    const size_t n = sizeof sx / sizeof sx[0];
    float *x = pool_copy(sx, n), *ones = pool_input(n, 1, 1, 1);
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
            float *a = pool_input(na, 10 + k, -1, 1), *b = pool_input(nb, 20 + k, -1, 1);
            float *dy = pool_input(ny, 30 + k, -1, 1);
            if (nf) inject(a, na, 40 + k), inject(b, nb, 50 + k), inject(dy, ny, 60 + k);
            float *yr = pool_buf(ny), *yf = pool_buf(ny), *dar = pool_buf(na), *daf = pool_buf(na);
            float *dbr = pool_buf(nb), *dbf = pool_buf(nb);
            ref_concat_forward(yr, a, b, N, CA, CB, HW), fast_concat_forward(yf, a, b, N, CA, CB, HW);
            match(10 + k, nf, yf, yr, NULL, ny, "concat_forward");
            ref_concat_backward(dar, dbr, dy, N, CA, CB, HW), fast_concat_backward(daf, dbf, dy, N, CA, CB, HW);
            match(10 + k, nf, daf, dar, NULL, na, "concat_backward da");
            match(10 + k, nf, dbf, dbr, NULL, nb, "concat_backward db");
            // either gradient may be NULL
            float *da2 = pool_buf(na), *db2 = pool_buf(nb);
            fast_concat_backward(da2, NULL, dy, N, CA, CB, HW), fast_concat_backward(NULL, db2, dy, N, CA, CB, HW);
            match(10 + k, true, da2, dar, NULL, na, "concat_backward da alone");
            match(10 + k, true, db2, dbr, NULL, nb, "concat_backward db alone");
            pool_done();
        }
}
END_TEST

static void t_linear_combinations(size_t n, size_t k, bool nf) {
    float *a = pool_input(n, 70 + k, -2, 2), *b = pool_input(n, 80 + k, -2, 2);
    if (nf) inject(a, n, 90 + k), inject(b, n, 95 + k);
    float *yr = pool_buf(n), *yf = pool_buf(n);
    ref_add(yr, a, b, n), fast_add(yf, a, b, n);
    match(70 + k, nf, yf, yr, NULL, n, "add");
    ref_scale(yr, a, -0.3f, n), fast_scale(yf, a, -0.3f, n);
    match(70 + k, nf, yf, yr, NULL, n, "scale");
    float *zr = pool_copy(b, n), *zf = pool_copy(b, n);
    ref_axpby(zr, 0.7f, a, -1.3f, n), fast_axpby(zf, 0.7f, a, -1.3f, n);
    match(70 + k, nf, zf, zr, NULL, n, "axpby");
    fast_add(zf, zf, a, n), ref_add(zr, zr, a, n); // in place
    match(70 + k, nf, zf, zr, NULL, n, "add in place");
    pool_done();
}

START_TEST(linear_combinations) { at_every_length(t_linear_combinations); }
END_TEST

// bias_add backward: sum over HW in double on both sides (bound_double_sums with A = sum |dy|, from
// ref's op on |dy|, whose own rounding the 3 gamd term covers since A enters only there).
START_TEST(bias_add) {
    const int S[][3] = {{64, 32, 784}, {64, 64, 196}, {64, 96, 49}, {1, 3, 49}, {2, 5, 1}, {3, 13, 7}};
    for (int nf = 0; nf < 2; nf++)
        for (size_t k = 0; k < sizeof S / sizeof S[0]; k++) {
            const int N = S[k][0], C = S[k][1], HW = S[k][2];
            const size_t n = (size_t)N * C * HW, nc = (size_t)N * C;
            float *x = pool_input(n, 110 + k, -1, 1), *bias = pool_input(nc, 120 + k, -1, 1);
            float *dy = pool_input(n, 130 + k, -1, 1);
            float *A = pool_buf(nc);
            ref_bias_add_backward(A, pool_abs(dy, n), N, C, HW);
            if (nf) inject(x, n, 140 + k), inject(bias, nc, 150 + k), inject(dy, n, 160 + k);
            float *yr = pool_buf(n), *yf = pool_buf(n), *dr = pool_buf(nc), *df = pool_buf(nc);
            ref_bias_add_forward(yr, x, bias, N, C, HW), fast_bias_add_forward(yf, x, bias, N, C, HW);
            match(110 + k, nf, yf, yr, NULL, n, "bias_add_forward");
            ref_bias_add_backward(dr, dy, N, C, HW), fast_bias_add_backward(df, dy, N, C, HW);
            double *b = doubles(nc);
            for (size_t i = 0; i < nc; i++) b[i] = bound_double_sums(dr[i], A[i] * (1 + U), HW);
            match(110 + k, nf, df, dr, b, nc, "bias_add_backward");
            free(b);
            pool_done();
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
            float *x = pool_input(n, 170 + k, -1, 1), *z = pool_input(n, 180 + k, -3, 3);
            float *a = pool_input(N, 190 + k, -2, 2), *b = pool_input(N, 200 + k, -2, 2);
            if (nf) inject(x, n, 210 + k), inject(z, n, 220 + k), inject(a, N, 230 + k);
            float *yr = pool_buf(n), *yf = pool_buf(n), *er = pool_buf(N), *ef = pool_buf(N);
            ref_scale_rows(yr, x, a, N, M), fast_scale_rows(yf, x, a, N, M);
            match(170 + k, nf, yf, yr, NULL, n, "scale_rows");
            ref_combine_rows(yr, a, x, b, z, N, M), fast_combine_rows(yf, a, x, b, z, N, M);
            match(170 + k, nf, yf, yr, NULL, n, "combine_rows");
            ref_sqerr_rows(er, x, z, N, M), fast_sqerr_rows(ef, x, z, N, M);
            double *bd = doubles(N);
            for (int i = 0; i < N; i++) bd[i] = bound_double_sums(er[i], er[i] * (1 + U), (double)M);
            match(170 + k, nf, ef, er, bd, N, "sqerr_rows");
            free(bd);
            pool_done();
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
            float *x = pool_input(nbig, 240 + k, -1, 1), *xs = pool_input(nsmall, 250 + k, -1, 1);
            float *dys = pool_input(nsmall, 260 + k, -1, 1), *dy = pool_input(nbig, 270 + k, -1, 1);
            float *A = pool_buf(nsmall), *B = pool_buf(nsmall);
            ref_down2_forward(A, pool_abs(x, nbig), N, C, H, W);
            ref_up2_backward(B, pool_abs(dy, nbig), N, C, H / 2, W / 2);
            if (nf) inject(x, nbig, 280 + k), inject(xs, nsmall, 281 + k), inject(dys, nsmall, 282 + k),
                    inject(dy, nbig, 283 + k);
            float *sr = pool_buf(nsmall), *sf = pool_buf(nsmall), *br = pool_buf(nbig), *bf = pool_buf(nbig);
            double *bd = doubles(nsmall);
            for (size_t i = 0; i < nsmall; i++) bd[i] = gam(4) * A[i];
            ref_down2_forward(sr, x, N, C, H, W), fast_down2_forward(sf, x, N, C, H, W);
            match(240 + k, nf, sf, sr, bd, nsmall, "down2_forward");
            ref_down2_backward(br, dys, N, C, H, W), fast_down2_backward(bf, dys, N, C, H, W);
            match(240 + k, nf, bf, br, NULL, nbig, "down2_backward");
            ref_up2_forward(br, xs, N, C, H / 2, W / 2), fast_up2_forward(bf, xs, N, C, H / 2, W / 2);
            match(240 + k, nf, bf, br, NULL, nbig, "up2_forward");
            for (size_t i = 0; i < nsmall; i++) bd[i] = gam(4) * B[i];
            ref_up2_backward(sr, dy, N, C, H / 2, W / 2), fast_up2_backward(sf, dy, N, C, H / 2, W / 2);
            match(240 + k, nf, sf, sr, bd, nsmall, "up2_backward");
            free(bd);
            pool_done();
        }
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// GroupNorm. Per group of M = (C/G) HW values, with ref's saved mean m and rstd r (floats) and
// xh = (x - m) r (double):
// - mean and rstd: bound_gn_mean and bound_gn_rstd (tests/tolerance.h), b_mean and b_rstd below;
//   with the parameter gradients' bounds they are groupnorm_shared_bounds (tests/opcheck.h).
// - y: fast rounds x - m_f, gamma r_f and the FMA (gam(3) |gamma xh| + u |y|), ref rounds once
//   (u |y| + gamd(4) (|gamma xh| + |beta|)), and fast's own m_f, r_f may differ from ref's by b_mean,
//   b_rstd: + |gamma| r b_mean + |gamma (x - m)| b_rstd.
// Backward, with MG = mean of dy gamma and MGX = mean of dy gamma xh over the group (double), and
// A1, A2 the means of their absolute values (struct gn_moments, tests/opcheck.h):
// - fast's float means: dmg = u |MG| + 2 gamd(M + 4) A1, dmgx = u |MGX| + 2 gamd(M + 6) A2;
// - t1 = fl(dy gamma - mg) (one FMA rounding): e1 = u |dy gamma - MG| + dmg;
// - xh' = fl(fl(x - m) r) within gam(2) |xh|; t2 = fl(t1 - xh' mgx) (one rounding):
//   e2 = e1 + |xh| dmgx + gam(2) |xh| (|MGX| + dmgx) + u (|R| + e1 + |xh| dmgx), R the exact t2;
// - dx = fl(r t2): r e2 (1 + u) + u (1 + u) |dx|; ref: u |dx| + r (2 gamd(M + 8) (A1 + |xh| A2) +
//   gamd(4) (|dy gamma| + |MG| + |xh MGX|)).
// dgamma, dbeta: D0 + one double sum over N HW terms on each side (groupnorm_shared_bounds).
static void t_groupnorm(int N, int C, int HW, int G, uint64_t seed, bool nf) {
    const int CG = C / G;
    const size_t n = (size_t)N * C * HW, M = (size_t)CG * HW, ng = (size_t)N * G;
    const struct gn_ref ref = groupnorm_reference(N, C, HW, G, seed, nf);
    const float *x = ref.x, *gamma = ref.gamma, *beta = ref.beta, *dy = ref.dy, *mr = ref.mean, *rr = ref.rstd;
    float *yf = pool_buf(n), *mf = pool_buf(ng), *rf = pool_buf(ng);
    fast_groupnorm_forward(yf, mf, rf, x, gamma, beta, N, C, HW, G, GN_EPS);
    // backward from ref's saved statistics, as ref's
    float *dxf = pool_buf(n), *dgf = pool_copy(ref.dg0, C), *dbf = pool_copy(ref.db0, C);
    fast_groupnorm_backward(dxf, dgf, dbf, dy, mr, rr, x, gamma, N, C, HW, G);
    double *bm = doubles(ng), *br = doubles(ng), *by = doubles(n), *bx = doubles(n), *bg = doubles(C);
    double *bb = doubles(C);
    struct gn_moments *mom = xmalloc(ng * sizeof *mom);
    if (!nf) groupnorm_shared_bounds(bm, br, mom, bg, bb, &ref, N, C, HW, G);
    for (size_t q = 0; q < ng && !nf; q++) { // (with NaN/Inf injected only the kinds are checked)
        const size_t base = q * M, g = q % G;
        const double m = mr[q], r = rr[q];
        const struct gn_moments s = mom[q];
        const double dmg = U * fabs(s.MG) + 2 * gamd(M + 4) * s.A1, dmgx = U * fabs(s.MGX) + 2 * gamd(M + 6) * s.A2;
        for (size_t i = 0; i < M; i++) {
            const size_t j = base + i;
            const int c = (int)(g * CG + i / HW);
            const double xh = (x[j] - m) * r, gx = gamma[c] * xh, dg = (double)dy[j] * gamma[c];
            by[j] = gam(3) * fabs(gx) + U * fabs(ref.y[j]) * (2 + gam(3)) + gamd(4) * (fabs(gx) + fabs(beta[c])) +
                    fabs(gamma[c]) * r * bm[q] + fabs(gamma[c] * (x[j] - m)) * br[q];
            const double R = dg - s.MG - xh * s.MGX, e1 = U * fabs(dg - s.MG) + dmg;
            const double e2 = e1 + fabs(xh) * dmgx + gam(2) * fabs(xh) * (fabs(s.MGX) + dmgx) +
                              U * (fabs(R) + e1 + fabs(xh) * dmgx);
            bx[j] = r * e2 * (1 + U) + U * (2 + U) * fabs(r * R) +
                    r * (2 * gamd(M + 8) * (s.A1 + fabs(xh) * s.A2) +
                         gamd(4) * (fabs(dg) + fabs(s.MG) + fabs(xh * s.MGX)));
        }
    }
    char sh[48];
    snprintf(sh, sizeof sh, "(%d,%d,%d) G=%d", N, C, HW, G);
    match(seed, nf, mf, mr, bm, ng, "groupnorm %s mean", sh);
    match(seed, nf, rf, rr, br, ng, "groupnorm %s rstd", sh);
    match(seed, nf, yf, ref.y, by, n, "groupnorm_forward %s y", sh);
    match(seed, nf, dxf, ref.dx, bx, n, "groupnorm_backward %s dx", sh);
    match(seed, nf, dgf, ref.dgamma, bg, C, "groupnorm_backward %s dgamma +=", sh);
    match(seed, nf, dbf, ref.dbeta, bb, C, "groupnorm_backward %s dbeta +=", sh);
    free(bm), free(br), free(by), free(bx), free(bg), free(bb), free(mom);
    pool_done();
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
static void t_dropout(size_t n, size_t k, bool nf) {
    const float P[] = {0.0f, 0.1f, 0.5f, 0.93f};
    const uint64_t SEED[] = {7, 0x123456789abcdefull}, STREAM[] = {MSD_STREAM_DROPOUT + 3, (1ull << 40) | 5};
    for (int v = 0; v < 4; v++) {
        const uint64_t seed = SEED[v % 2], stream = STREAM[v / 2 % 2];
        float *x = pool_input(n, 500 + k, -1, 1);
        if (nf) inject(x, n, 510 + k);
        float *yr = pool_buf(n), *yf = pool_buf(n);
        ref_dropout_forward(yr, x, P[v], seed, stream, n), fast_dropout_forward(yf, x, P[v], seed, stream, n);
        match(seed, nf, yf, yr, NULL, n, "dropout_forward");
        ref_dropout_backward(yr, x, P[v], seed, stream, n), fast_dropout_backward(yf, x, P[v], seed, stream, n);
        match(seed, nf, yf, yr, NULL, n, "dropout_backward");
        fast_dropout_forward(x, x, P[v], seed, stream, n); // in place
        match(seed, true, x, yr, NULL, n, "dropout_forward in place");
        pool_done();
    }
}

START_TEST(dropout) { at_every_length(t_dropout); }
END_TEST

// ---------------------------------------------------------------------------------------------------
// Optimiser ops. Adam, EMA and nan_to_num do ref's operations in ref's precision and order:
// bit-identical. sumsq: one double sum of exact squares on each side (bound_double_sums).
static void t_optim(size_t n, size_t k, bool nf) {
    float *p = pool_input(n, 600 + k, -1, 1), *m = pool_input(n, 610 + k, -0.1f, 0.1f);
    float *v = pool_input(n, 620 + k, 0, 0.01f), *g = pool_input(n, 630 + k, -0.5f, 0.5f);
    if (nf) inject(g, n, 640 + k), inject(p, n, 650 + k);
    for (long step = 1; step <= 1000; step *= 1000) {
        float *pr = pool_copy(p, n), *pf = pool_copy(p, n), *mr = pool_copy(m, n), *mf = pool_copy(m, n);
        float *vr = pool_copy(v, n), *vf = pool_copy(v, n);
        ref_adam(pr, mr, vr, g, 2e-3f, 0.9f, 0.999f, 1e-8f, step, n);
        fast_adam(pf, mf, vf, g, 2e-3f, 0.9f, 0.999f, 1e-8f, step, n);
        match(600 + k, nf, pf, pr, NULL, n, "adam p");
        match(600 + k, nf, mf, mr, NULL, n, "adam m");
        match(600 + k, nf, vf, vr, NULL, n, "adam v");
    }
    float *er = pool_copy(m, n), *ef = pool_copy(m, n);
    ref_ema(er, p, 0.999f, n), fast_ema(ef, p, 0.999f, n);
    match(600 + k, nf, ef, er, NULL, n, "ema");
    float *xr = pool_copy(p, n), *xf = pool_copy(p, n);
    inject(xr, n, 660 + k), inject(xf, n, 660 + k);
    ref_nan_to_num(xr, 0.5f, 1e4f, -2e4f, n), fast_nan_to_num(xf, 0.5f, 1e4f, -2e4f, n);
    match(600 + k, nf, xf, xr, NULL, n, "nan_to_num");
    float *sr = pool_buf(1), *sf = pool_buf(1);
    ref_sumsq(sr, g, n), fast_sumsq(sf, g, n);
    const double bs = bound_double_sums(sr[0], sr[0] * (1 + U), (double)n);
    match(600 + k, nf, sf, sr, &bs, 1, "sumsq");
    pool_done();
}

START_TEST(optim) { at_every_length(t_optim); }
END_TEST

// ---------------------------------------------------------------------------------------------------
// The positional embedding (fast calls ref) and the posterior mean (fast computes ref's distances,
// weights and sums in ref's order, see fast/denoiser.c): bit-identical.
START_TEST(posemb) {
    const int S[][2] = {{64, 32}, {1, 4}, {3, 6}, {5, 128}};
    for (int nf = 0; nf < 2; nf++)
        for (size_t k = 0; k < sizeof S / sizeof S[0]; k++) {
            const int N = S[k][0], C = S[k][1];
            float *c = pool_input(N, 700 + k, -5, 5), *yr = pool_buf((size_t)N * C), *yf = pool_buf((size_t)N * C);
            if (nf) inject(c, N, 710 + k);
            ref_posemb_forward(yr, c, N, C), fast_posemb_forward(yf, c, N, C);
            match(700 + k, nf, yf, yr, NULL, (size_t)N * C, "posemb_forward");
            pool_done();
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
            float *data = pool_input((size_t)K * M, 800 + k, -1, 1), *z = pool_buf((size_t)N * M), *sigma = pool_buf(N);
            fill_normal(z, (size_t)N * M, 810 + k, 1.0f);
            for (int q = 0; q < N; q++) {
                sigma[q] = SIG[q % 9];
                for (size_t i = 0; i < M; i++) // z = y_k + sigma eps, for the image k = q mod K
                    z[q * M + i] = data[(size_t)(q % K) * M + i] + sigma[q] * z[q * M + i];
            }
            if (nf) inject(z, (size_t)N * M, 820 + k), inject(data, (size_t)K * M, 830 + k);
            float *mr = pool_buf((size_t)N * M), *mf = pool_buf((size_t)N * M);
            float *wr = pool_buf((size_t)N * K), *wf = pool_buf((size_t)N * K);
            ref_posterior_mean(mr, wr, z, data, sigma, N, K, M);
            fast_posterior_mean(mf, wf, z, data, sigma, N, K, M);
            match(800 + k, nf, mf, mr, NULL, (size_t)N * M, "posterior_mean m");
            match(800 + k, nf, wf, wr, NULL, (size_t)N * K, "posterior_mean w");
            pool_done();
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
    float *d = be->alloc(n), *host = pool_input(n, 900, -1, 1), *back = pool_buf(n);
    ck_assert_msg(d && ((uintptr_t)d & 63) == 0, "fast alloc: %p not 64-byte aligned", (void *)d);
    be->upload(d, host, n), be->download(back, d, n);
    match(900, false, back, host, NULL, n, "upload/download");
    be->copy(d + 1, d, n - 1), be->download(back, d, n); // overlapping, as memmove
    match(900, false, back + 1, host, NULL, n - 1, "copy overlapping");
    be->fill(d, -2.5f, n), be->download(back, d, n);
    for (size_t i = 0; i < n; i++) host[i] = -2.5f;
    match(900, false, back, host, NULL, n, "fill");
    // fill_normal: ref's draws, bit for bit, at a seed and stream with both 32-bit halves in use
    const uint64_t seed = 0x123456789abull, stream = ((uint64_t)7 << 40) | 5;
    be->fill_normal(d, seed, stream, n), be->download(back, d, n);
    ref_fill_normal(host, seed, stream, n);
    match(seed, false, back, host, NULL, n, "fill_normal");
    be->release(d), be->sync();
    pool_done();
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
    const TTest *tests[] = {exp_vs_expf, silu,    concat, linear_combinations, bias_add,       rows,  resample,
                            groupnorm,   dropout, optim,  posemb,              posterior_mean, table, no_avx2_fallback};
    return run_tests("fast", 300, tests, TEST_COUNT(tests));
}
