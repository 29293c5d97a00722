// test_fast_gemm.c: the GEMM-based ops of fast/ (conv2d, linear, attention) against ref/, forward
// and backward, on fixed-seed inputs at the real `mini` shapes (batch 64 and 1), cifar10-like shapes
// and awkward ones (odd channel counts, 7x7 and non-square maps, batch 1, one output channel), with
// guard regions, NaN/Inf agreement, and error bounds derived from the summation fast/gemm.c performs.
// The bounds (tests/tolerance.h derives them): every output of a reduction within bound_gemm of
// ref's, rigorously, and the L2 norm of the error within that of bound_gemm_stat, with L from
// gemm_roundings for the k blocks fast/gemm.c makes. Attention composes these through the softmax;
// check_attention spells out each step.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/core/util.h"
#include "../fast/gemm.h"
#include "../ref/ref.h"
#include "opcheck.h"
#include "testutil.h"
#include "tolerance.h"

// L for a reduction of K terms, cut in segments of kseg (0: one segment), by GEMM_PARALLEL (ksplit
// false) or GEMM_KSPLIT (one partial per thread).
static double chain(long K, long kseg, bool ksplit) {
    return gemm_roundings(K, kseg, GEMM_KC, ksplit ? fast_max_threads() : 0);
}

// ---------------------------------------------------------------------------------------------------
// The check: NaN/Inf agreement first, then every finite element within its rigorous bound bmax[i],
// then ||fast - ref||_2 <= ||bl2||_2 (the statistical bounds). Prints one line per tensor.
static void check_bounded(const char *what, const float *got, const float *want, const double *bmax,
                          const double *bl2, size_t n, uint64_t seed) {
    const struct cmp_result r = compare(got, want, n);
    size_t bad = n;
    for (size_t i = 0; i < n && bad == n; i++)
        if (!isfinite(got[i]) || !isfinite(want[i]))
            if (!((isnan(got[i]) && isnan(want[i])) || (isinf(got[i]) && got[i] == want[i]))) bad = i;
    ck_assert_msg(r.nonfinite_mismatch == 0, "%s (seed %llu): %zu NaN/Inf disagreements, first at [%zu]: fast %g ref %g",
                  what, (unsigned long long)seed, r.nonfinite_mismatch, bad, bad < n ? got[bad] : 0.0,
                  bad < n ? want[bad] : 0.0);
    double worst = 0.0, e2 = 0.0, b2 = 0.0, w2 = 0.0;
    size_t wi = 0, unbounded = n;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i]) || !isfinite(want[i])) continue;
        const double d = fabs((double)got[i] - want[i]);
        if (!(isfinite(bmax[i]) && isfinite(bl2[i])) && unbounded == n) unbounded = i;
        const double ratio = d / (bmax[i] + 1e-300);
        if (ratio > worst) worst = ratio, wi = i;
        e2 += d * d, b2 += bl2[i] * bl2[i], w2 += (double)want[i] * want[i];
    }
    // (Check records every passing assertion: assert once per tensor, never per element.)
    ck_assert_msg(unbounded == n, "%s: no finite bound at [%zu]", what, unbounded);
    const double l2 = sqrt(e2), l2b = sqrt(b2), wn = sqrt(w2) + 1e-300;
    printf("fast %-46s max err/bound %.3f  rel L2 %.2e (bound %.2e)\n", what, worst, l2 / wn, l2b / wn);
    ck_assert_msg(worst <= 1.0, "%s (seed %llu): error %.3g at [%zu] (fast %.9g ref %.9g) exceeds its bound %.3g",
                  what, (unsigned long long)seed, fabs((double)got[wi] - want[wi]), wi, got[wi], want[wi],
                  bmax[wi]);
    ck_assert_msg(l2 <= l2b, "%s (seed %llu): L2 error %.3g exceeds the statistical bound %.3g", what,
                  (unsigned long long)seed, l2, l2b);
}

// For an output that is one reduction of length L: bound_gemm and bound_gemm_stat (tolerance.h).
static void check_sum(const char *what, const float *got, const float *want, const float *mag, double L,
                      size_t n, uint64_t seed) {
    double *bmax = doubles(n), *bl2 = doubles(n);
    gemm_bounds(bmax, bl2, want, mag, L, n);
    check_bounded(what, got, want, bmax, bl2, n, seed);
    free(bmax), free(bl2);
}

// ---------------------------------------------------------------------------------------------------
// conv2d

struct conv_shape {
    int N, C, H, W, OC, K, bias;
};

// Inputs in [-1, 1]; nonfinite: 0 none, 1 a NaN and an Inf in x (one at a corner pixel, where the
// 3x3 taps reach the padding), 2 a NaN and an Inf in dy at interior pixels.
static void check_conv(struct conv_shape s, uint64_t seed, int nonfinite) {
    const int KK = s.K * s.K;
    const size_t HW = (size_t)s.H * s.W, nx = (size_t)s.N * s.C * HW, ny = (size_t)s.N * s.OC * HW;
    const size_t nw = (size_t)s.OC * s.C * KK;
    float *x = pool_uniform(nx, seed, -1, 1), *w = pool_uniform(nw, seed + 1, -1, 1);
    float *b = s.bias ? pool_uniform(s.OC, seed + 2, -1, 1) : NULL;
    float *dy = pool_uniform(ny, seed + 3, -1, 1);
    if (nonfinite == 1) x[0] = NAN, x[nx - 1 - (size_t)s.W / 2] = INFINITY;
    if (nonfinite == 2) {
        const size_t mid = (s.H / 2) * s.W + s.W / 2;
        dy[mid] = NAN, dy[ny - HW + mid] = -INFINITY;
    }
    char name[128];
    snprintf(name, sizeof name, "conv%dx%d (%d,%d,%d,%d)->%d%s%s", s.K, s.K, s.N, s.C, s.H, s.W, s.OC,
             s.bias ? "" : " nobias", nonfinite == 1 ? " nan/inf in x" : nonfinite == 2 ? " nan/inf in dy" : "");

    // forward
    float *yr = pool_buf(ny), *yf = pool_filled(ny, 1e30f), *my = pool_buf(ny);
    float *ax = pool_abs(x, nx), *aw = pool_abs(w, nw), *ab = pool_abs(b, s.OC), *ady = pool_abs(dy, ny);
    ref_conv2d_forward(yr, x, w, b, s.N, s.C, s.H, s.W, s.OC, s.K);
    fast_conv2d_forward(yf, x, w, b, s.N, s.C, s.H, s.W, s.OC, s.K);
    ref_conv2d_forward(my, ax, aw, ab, s.N, s.C, s.H, s.W, s.OC, s.K);
    check_sum(test_pathf("%s y", name), yf, yr, my, chain((long)s.C * KK, 0, false), ny, seed);

    // backward: dx written (a sentinel must not survive), dw and db accumulated into D0
    float *dxr = pool_buf(nx), *dxf = pool_filled(nx, 1e30f), *mdx = pool_buf(nx);
    float *dw0 = pool_uniform(nw, seed + 4, -1, 1), *dwr = pool_copy(dw0, nw), *dwf = pool_copy(dw0, nw);
    float *db0 = pool_uniform(s.OC, seed + 5, -1, 1), *dbr = pool_copy(db0, s.OC), *dbf = pool_copy(db0, s.OC);
    float *mdw = pool_buf(nw), *mdb = pool_buf(s.OC);
    ref_conv2d_backward(dxr, dwr, dbr, dy, x, w, s.N, s.C, s.H, s.W, s.OC, s.K);
    fast_conv2d_backward(dxf, dwf, dbf, dy, x, w, s.N, s.C, s.H, s.W, s.OC, s.K);
    ref_conv2d_backward(mdx, mdw, mdb, ady, ax, aw, s.N, s.C, s.H, s.W, s.OC, s.K);
    check_sum(test_pathf("%s dx", name), dxf, dxr, mdx, chain((long)s.OC * KK, 0, false), nx, seed);
    check_sum(test_pathf("%s dw", name), dwf, dwr, pool_plus_abs(mdw, dw0, nw), chain((long)s.N * HW, HW, true) + 1,
              nw, seed);
    // db is summed in double: its float cast, then +=
    check_sum(test_pathf("%s db", name), dbf, dbr, pool_plus_abs(mdb, db0, s.OC), 3, s.OC, seed);

    if (nonfinite == 1) // the non-finite inputs must reach the outputs, or the check above proves nothing
        ck_assert_msg(nonfinite_count(yr, ny) && nonfinite_count(dwr, nw), "%s: no NaN/Inf reached y, dw", name);
    if (nonfinite == 2)
        ck_assert_msg(nonfinite_count(dxr, nx) && nonfinite_count(dwr, nw) && nonfinite_count(dbr, s.OC),
                      "%s: no NaN/Inf reached dx, dw, db", name);

    // NULL dx and db are allowed and leave dw as it was with them
    float *dw2 = pool_copy(dw0, nw);
    fast_conv2d_backward(NULL, dw2, NULL, dy, x, w, s.N, s.C, s.H, s.W, s.OC, s.K);
    ck_assert_msg(memcmp(dw2, dwf, nw * sizeof(float)) == 0, "%s: dw differs when dx and db are NULL", name);
    pool_done();
}

START_TEST(conv_mini_batch64) {
    // the mini U-Net at batch 64: encoder/decoder convs at 28, 14, 7; the aux head (OC = 1); 1x1
    // skip and qkv convs
    const struct conv_shape shapes[] = {
        {64, 1, 28, 28, 32, 3, 1},  {64, 32, 28, 28, 32, 3, 1}, {64, 64, 14, 14, 64, 3, 1},
        {64, 128, 7, 7, 64, 3, 1},  {64, 32, 28, 28, 1, 3, 1},  {64, 64, 14, 14, 192, 1, 1},
        {64, 96, 28, 28, 32, 1, 1},
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) check_conv(shapes[i], 1000 + 10 * i, 0);
}
END_TEST

START_TEST(conv_mini_batch1) {
    const struct conv_shape shapes[] = {
        {1, 1, 28, 28, 32, 3, 1},  {1, 32, 28, 28, 32, 3, 1}, {1, 32, 14, 14, 64, 3, 1},
        {1, 64, 14, 14, 64, 3, 1}, {1, 64, 7, 7, 64, 3, 1},   {1, 128, 7, 7, 64, 3, 1},
        {1, 192, 14, 14, 64, 3, 1}, {1, 96, 28, 28, 32, 3, 1}, {1, 32, 28, 28, 1, 3, 1},
        {1, 64, 14, 14, 192, 1, 1}, {1, 64, 14, 14, 64, 1, 0}, {1, 96, 28, 28, 32, 1, 1},
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) check_conv(shapes[i], 2000 + 10 * i, 0);
}
END_TEST

START_TEST(conv_cifar) {
    const struct conv_shape shapes[] = {{8, 256, 16, 16, 256, 3, 1}, {8, 256, 16, 16, 256, 1, 1}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) check_conv(shapes[i], 3000 + 10 * i, 0);
}
END_TEST

START_TEST(conv_awkward) {
    const struct conv_shape shapes[] = {
        {1, 3, 7, 7, 5, 3, 1},  {2, 13, 9, 11, 5, 3, 1}, {3, 5, 7, 7, 13, 1, 1}, {2, 5, 5, 3, 1, 3, 0},
        {1, 1, 1, 1, 1, 3, 1},  {2, 7, 1, 9, 3, 3, 1},   {5, 3, 2, 2, 7, 3, 0},  {2, 13, 7, 7, 29, 3, 1},
        {3, 300, 3, 3, 4, 3, 1}, // a reduction of 2700: several k blocks
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) check_conv(shapes[i], 4000 + 10 * i, 0);
}
END_TEST

START_TEST(conv_nonfinite) {
    check_conv((struct conv_shape){2, 5, 7, 7, 6, 3, 1}, 5000, 1);
    check_conv((struct conv_shape){3, 13, 9, 5, 7, 3, 1}, 5010, 1);
    check_conv((struct conv_shape){2, 5, 7, 7, 6, 1, 1}, 5020, 1);
    check_conv((struct conv_shape){2, 5, 7, 7, 6, 3, 1}, 5030, 2);
    check_conv((struct conv_shape){2, 5, 7, 7, 6, 1, 0}, 5040, 2);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// linear

static void check_linear(int N, int IN, int OUT, int bias, uint64_t seed, int nonfinite) {
    const size_t nx = (size_t)N * IN, nw = (size_t)OUT * IN, ny = (size_t)N * OUT;
    float *x = pool_uniform(nx, seed, -1, 1), *w = pool_uniform(nw, seed + 1, -1, 1);
    float *b = bias ? pool_uniform(OUT, seed + 2, -1, 1) : NULL, *dy = pool_uniform(ny, seed + 3, -1, 1);
    if (nonfinite) x[nx / 2] = NAN, dy[ny - 1] = INFINITY;
    char name[128];
    snprintf(name, sizeof name, "linear (%d,%d)->%d%s%s", N, IN, OUT, bias ? "" : " nobias",
             nonfinite ? " nan/inf in x, dy" : "");
    float *yr = pool_buf(ny), *yf = pool_filled(ny, 1e30f), *my = pool_buf(ny);
    float *ax = pool_abs(x, nx), *aw = pool_abs(w, nw), *ab = pool_abs(b, OUT), *ady = pool_abs(dy, ny);
    ref_linear_forward(yr, x, w, b, N, IN, OUT);
    fast_linear_forward(yf, x, w, b, N, IN, OUT);
    ref_linear_forward(my, ax, aw, ab, N, IN, OUT);
    check_sum(test_pathf("%s y", name), yf, yr, my, chain(IN, 0, false), ny, seed);
    float *dxr = pool_buf(nx), *dxf = pool_filled(nx, 1e30f), *mdx = pool_buf(nx);
    float *dw0 = pool_uniform(nw, seed + 4, -1, 1), *dwr = pool_copy(dw0, nw), *dwf = pool_copy(dw0, nw);
    float *db0 = pool_uniform(OUT, seed + 5, -1, 1), *dbr = pool_copy(db0, OUT), *dbf = pool_copy(db0, OUT);
    float *mdw = pool_buf(nw), *mdb = pool_buf(OUT);
    ref_linear_backward(dxr, dwr, dbr, dy, x, w, N, IN, OUT);
    fast_linear_backward(dxf, dwf, dbf, dy, x, w, N, IN, OUT);
    ref_linear_backward(mdx, mdw, mdb, ady, ax, aw, N, IN, OUT);
    check_sum(test_pathf("%s dx", name), dxf, dxr, mdx, chain(OUT, 0, false), nx, seed);
    check_sum(test_pathf("%s dw", name), dwf, dwr, pool_plus_abs(mdw, dw0, nw), chain(N, 0, false) + 1, nw, seed);
    check_sum(test_pathf("%s db", name), dbf, dbr, pool_plus_abs(mdb, db0, OUT), 3, OUT, seed);
    float *dw2 = pool_copy(dw0, nw);
    fast_linear_backward(NULL, dw2, NULL, dy, x, w, N, IN, OUT);
    ck_assert_msg(memcmp(dw2, dwf, nw * sizeof(float)) == 0, "%s: dw differs when dx and db are NULL", name);
    pool_done();
}

START_TEST(linear_shapes) {
    check_linear(64, 32, 128, 1, 6000, 0);  // mini map_layer0
    check_linear(64, 128, 128, 1, 6010, 0); // mini map_layer1
    check_linear(64, 128, 64, 1, 6020, 0);  // a block's affine (emb -> C)
    check_linear(1, 128, 128, 1, 6030, 0);
    check_linear(8, 128, 512, 1, 6040, 0);  // cifar10 mapping
    check_linear(8, 512, 512, 1, 6050, 0);
    check_linear(1, 7, 5, 1, 6060, 0);
    check_linear(3, 13, 1, 0, 6070, 0);
    check_linear(5, 1, 3, 1, 6080, 0);
    check_linear(3, 600, 29, 1, 6090, 0);   // several k blocks
    check_linear(4, 13, 30, 1, 6100, 1);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// attention, held to attention_bounds (tests/opcheck.h) with fast/'s rounding counts. The logits
// l = s q^T k (s = 1/sqrt(C)) are a GEMM of length C with alpha = s rounded to float: chains of L_C =
// chain(C) roundings (fast's rounded s, then ref's final rounding: the 2u |l| term; fast's final
// rounding is the last of the L_C), and dW = da^T v the same. The softmax is invariant to a shift:
// fast/ rounds l - max (u |l_ij - m_i|), evaluates exp (FAST_EXP_ULPS u, measured by softmax_exp
// below), sums HW positive terms in 8 lanes (g(ceil(HW/8) + 3) plus the exp error again, relative),
// and multiplies by a rounded reciprocal (2u); ref rounds once (u): T = 2 exp + g(ceil(HW/8) + 3) + 3u.
// 1e-37 covers exp's flush below 2^-126. r_i = sum_j w_ij dW_ij is summed in 8 lanes:
// g(ceil(HW/8) + 4). a = v w^T, dv = da w, dq = s k dl^T and dk are GEMMs of length HW: L_HW.
static struct attn_rounding fast_attention(growth_fn g, int C, int HW) {
    return (struct attn_rounding){.L_logits = chain(C, 0, false),
                                  .scale = 1,
                                  .L_dW = chain(C, 0, false),
                                  .rounds_shift = true,
                                  .T = {2 * FAST_EXP_ULPS * U, g(ceil(HW / 8.0) + 3), 3 * U},
                                  .r_growth = g(ceil(HW / 8.0) + 4),
                                  .L_a = chain(HW, 0, false),
                                  .L_dv = chain(HW, 0, false),
                                  .L_dqk = chain(HW, 0, false),
                                  .w_floor = 1e-37};
}

static void check_attention(int N, int C, int HW, uint64_t seed, int nonfinite) {
    const size_t nq = (size_t)N * 3 * C * HW, na = (size_t)N * C * HW, nw = (size_t)N * HW * HW;
    float *qkv = pool_uniform(nq, seed, -1.5f, 1.5f), *da = pool_uniform(na, seed + 1, -1, 1); // logits of order one
    if (nonfinite) qkv[(size_t)HW / 2] = NAN, qkv[nq - 1] = INFINITY; // a q of sample 0, a v of the last
    float *ar = pool_buf(na), *af = pool_filled(na, 1e30f), *wr = pool_buf(nw), *wf = pool_filled(nw, 1e30f);
    ref_attention_forward(ar, wr, qkv, N, C, HW);
    fast_attention_forward(af, wf, qkv, N, C, HW);
    float *dr = pool_buf(nq), *df = pool_filled(nq, 1e30f);
    ref_attention_backward(dr, da, wr, qkv, N, C, HW);
    fast_attention_backward(df, da, wr, qkv, N, C, HW);
    struct attn_bounds bm, bs;
    attention_bounds_both(&bm, &bs, fast_attention, qkv, wr, da, ar, dr, N, C, HW, nonfinite);
    char name[128];
    snprintf(name, sizeof name, "attention (%d,%d,%d)%s", N, C, HW, nonfinite ? " nan/inf in qkv" : "");
    check_bounded(test_pathf("%s w", name), wf, wr, bm.w, bs.w, nw, seed);
    check_bounded(test_pathf("%s a", name), af, ar, bm.a, bs.a, na, seed);
    const double *bmq[3] = {bm.dq, bm.dk, bm.dv}, *bsq[3] = {bs.dq, bs.dk, bs.dv};
    for (int j = 0; j < 3; j++)
        check_bounded(test_pathf("%s d%c", name, "qkv"[j]), pool_plane(df, j, N, C, HW), pool_plane(dr, j, N, C, HW),
                      bmq[j], bsq[j], na, seed);
    attn_bounds_free(&bm), attn_bounds_free(&bs);
    pool_done();
}

START_TEST(attention_shapes) {
    check_attention(64, 64, 196, 7000, 0); // mini: attention at 14x14, 64 channels
    check_attention(1, 64, 196, 7010, 0);  // batch 1: one sample at a time, parallel GEMMs
    check_attention(8, 256, 256, 7020, 0); // cifar10: 16x16, 256 channels
    check_attention(1, 5, 49, 7030, 0);
    check_attention(3, 13, 7, 7040, 0);
    check_attention(2, 1, 1, 7050, 0);
    check_attention(3, 4, 300, 7060, 0); // HW > KC: the a and dq/dk reductions take two k blocks
    check_attention(2, 5, 49, 7070, 1);
}
END_TEST

// The softmax's exp: relative error against exp() over [-87.33, 0] (a 2^22-point grid), its special
// values, and its subnormal results.
START_TEST(softmax_exp) {
    const size_t n = (size_t)1 << 22;
    float *x = xmalloc(n * sizeof(float)), *y = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = (float)(-87.33 * (double)i / (double)(n - 1));
    fast_softmax_exp(y, x, n);
    double worst = 0.0;
    size_t wi = 0;
    for (size_t i = 0; i < n; i++) {
        const double e = exp((double)x[i]), rel = fabs(y[i] - e) / e;
        if (rel > worst) worst = rel, wi = i;
    }
    printf("fast softmax exp: max rel err %.3g = %.2f u over [-87.33, 0] (bound %d u)\n", worst, worst / U,
           FAST_EXP_ULPS);
    ck_assert_msg(worst <= FAST_EXP_ULPS * U, "exp(%.9g): rel err %.3g > %d u", x[wi], worst, FAST_EXP_ULPS);
    const float sx[] = {0.0f, -0.0f, -INFINITY, NAN, -1e30f};
    const float sy[] = {1.0f, 1.0f, 0.0f, NAN, 0.0f};
    float out[5];
    fast_softmax_exp(out, sx, 5);
    for (int i = 0; i < 5; i++)
        ck_assert_msg(isnan(sy[i]) ? isnan(out[i]) : out[i] == sy[i], "exp(%g) = %g, want %g", sx[i], out[i], sy[i]);
    // below -87.33 the result is subnormal: within 2 subnormal steps (2^-149 each) of expf
    const float tx[] = {-87.34f, -95.0f, -100.0f, -103.0f};
    float tout[4];
    fast_softmax_exp(tout, tx, 4);
    for (int i = 0; i < 4; i++)
        ck_assert_msg(fabs((double)tout[i] - expf(tx[i])) <= 2 * 0x1p-149, "exp(%g) = %g, want %g", tx[i], tout[i],
                      expf(tx[i]));
    free(x), free(y);
}
END_TEST

int main(void) {
    const TTest *tests[] = {softmax_exp,       conv_awkward, conv_nonfinite, conv_mini_batch1,
                            conv_mini_batch64, conv_cifar,   linear_shapes,  attention_shapes};
    return run_tests("fast gemm ops", 1200, tests, TEST_COUNT(tests));
}
