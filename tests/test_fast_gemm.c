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
#include "testutil.h"
#include "tolerance.h"

typedef double (*growth_fn)(double L); // gam or gam_stat

// L for a reduction of K terms, cut in segments of kseg (0: one segment), by GEMM_PARALLEL (ksplit
// false) or GEMM_KSPLIT (one partial per thread).
static double chain(long K, long kseg, bool ksplit) {
    return gemm_roundings(K, kseg, GEMM_KC, ksplit ? fast_max_threads() : 0);
}

// ---------------------------------------------------------------------------------------------------
// Buffers

static float *rnd(size_t n, uint64_t seed, float lo, float hi) {
    float *p = tbuf_new(n);
    fill_uniform(p, n, seed, lo, hi);
    return p;
}

static float *copy_of(const float *x, size_t n) {
    float *p = tbuf_new(n);
    memcpy(p, x, n * sizeof(float));
    return p;
}

static float *abs_of(const float *x, size_t n) {
    if (!x) return NULL;
    float *p = tbuf_new(n);
    for (size_t i = 0; i < n; i++) p[i] = fabsf(x[i]);
    return p;
}

static float *filled(size_t n, float v) {
    float *p = tbuf_new(n);
    for (size_t i = 0; i < n; i++) p[i] = v;
    return p;
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
    double *bmax = xmalloc(n * sizeof(double)), *bl2 = xmalloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) {
        const double w = isfinite(want[i]) ? fabs(want[i]) : 0.0;
        bmax[i] = bound_gemm(L, mag[i], w);
        bl2[i] = bound_gemm_stat(L, mag[i], w);
    }
    check_bounded(what, got, want, bmax, bl2, n, seed);
    free(bmax), free(bl2);
}

static size_t nonfinite_count(const float *x, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += !isfinite(x[i]);
    return k;
}

// mag + |acc0|: the bound's scale for a gradient accumulated into acc0.
static float *plus_abs(const float *mag, const float *acc0, size_t n) {
    float *p = tbuf_new(n);
    for (size_t i = 0; i < n; i++) p[i] = mag[i] + fabsf(acc0[i]);
    return p;
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
    float *x = rnd(nx, seed, -1, 1), *w = rnd(nw, seed + 1, -1, 1);
    float *b = s.bias ? rnd(s.OC, seed + 2, -1, 1) : NULL;
    float *dy = rnd(ny, seed + 3, -1, 1);
    if (nonfinite == 1) {
        x[0] = NAN;
        x[nx - 1 - (size_t)s.W / 2] = INFINITY;
    }
    if (nonfinite == 2) {
        const size_t mid = (s.H / 2) * s.W + s.W / 2;
        dy[mid] = NAN;
        dy[ny - HW + mid] = -INFINITY;
    }
    char name[128];
    const int len = snprintf(name, sizeof name, "conv%dx%d (%d,%d,%d,%d)->%d%s%s", s.K, s.K, s.N, s.C, s.H,
                             s.W, s.OC, s.bias ? "" : " nobias",
                             nonfinite == 1 ? " nan/inf in x" : nonfinite == 2 ? " nan/inf in dy" : "");
    char *tail = name + len;
    const size_t room = sizeof name - len;

    // forward
    float *yr = tbuf_new(ny), *yf = filled(ny, 1e30f), *my = tbuf_new(ny);
    float *ax = abs_of(x, nx), *aw = abs_of(w, nw), *ab = abs_of(b, s.OC), *ady = abs_of(dy, ny);
    ref_conv2d_forward(yr, x, w, b, s.N, s.C, s.H, s.W, s.OC, s.K);
    fast_conv2d_forward(yf, x, w, b, s.N, s.C, s.H, s.W, s.OC, s.K);
    ref_conv2d_forward(my, ax, aw, ab, s.N, s.C, s.H, s.W, s.OC, s.K);
    snprintf(tail, room, " y");
    check_sum(name, yf, yr, my, chain((long)s.C * KK, 0, false), ny, seed);
    tbuf_check(yf, ny, "conv y");

    // backward: dx written (a sentinel must not survive), dw and db accumulated into D0
    float *dxr = tbuf_new(nx), *dxf = filled(nx, 1e30f), *mdx = tbuf_new(nx);
    float *dw0 = rnd(nw, seed + 4, -1, 1), *dwr = copy_of(dw0, nw), *dwf = copy_of(dw0, nw), *mdw = tbuf_new(nw);
    float *db0 = rnd(s.OC, seed + 5, -1, 1), *dbr = copy_of(db0, s.OC), *dbf = copy_of(db0, s.OC);
    float *mdb = tbuf_new(s.OC);
    ref_conv2d_backward(dxr, dwr, dbr, dy, x, w, s.N, s.C, s.H, s.W, s.OC, s.K);
    fast_conv2d_backward(dxf, dwf, dbf, dy, x, w, s.N, s.C, s.H, s.W, s.OC, s.K);
    ref_conv2d_backward(mdx, mdw, mdb, ady, ax, aw, s.N, s.C, s.H, s.W, s.OC, s.K);
    float *mdw1 = plus_abs(mdw, dw0, nw), *mdb1 = plus_abs(mdb, db0, s.OC);
    snprintf(tail, room, " dx");
    check_sum(name, dxf, dxr, mdx, chain((long)s.OC * KK, 0, false), nx, seed);
    snprintf(tail, room, " dw");
    check_sum(name, dwf, dwr, mdw1, chain((long)s.N * HW, HW, true) + 1, nw, seed);
    snprintf(tail, room, " db");
    check_sum(name, dbf, dbr, mdb1, 3, s.OC, seed); // summed in double: float cast, then +=
    tbuf_check(dxf, nx, "conv dx"), tbuf_check(dwf, nw, "conv dw"), tbuf_check(dbf, s.OC, "conv db");

    if (nonfinite == 1) // the non-finite inputs must reach the outputs, or the check above proves nothing
        ck_assert_msg(nonfinite_count(yr, ny) && nonfinite_count(dwr, nw), "%s: no NaN/Inf reached y, dw", name);
    if (nonfinite == 2)
        ck_assert_msg(nonfinite_count(dxr, nx) && nonfinite_count(dwr, nw) && nonfinite_count(dbr, s.OC),
                      "%s: no NaN/Inf reached dx, dw, db", name);

    // NULL dx and db are allowed and leave dw as it was with them
    float *dw2 = copy_of(dw0, nw);
    fast_conv2d_backward(NULL, dw2, NULL, dy, x, w, s.N, s.C, s.H, s.W, s.OC, s.K);
    ck_assert_msg(memcmp(dw2, dwf, nw * sizeof(float)) == 0, "%s: dw differs when dx and db are NULL", name);
    tbuf_check(dw2, nw, "conv dw (NULL dx, db)");

    float *all[] = {x, w, b, dy, yr, yf, my, ax, aw, ab, ady, dxr, dxf, mdx, dw0, dwr, dwf, mdw,
                    db0, dbr, dbf, mdb, mdw1, mdb1, dw2};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) tbuf_free(all[i]);
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
    float *x = rnd(nx, seed, -1, 1), *w = rnd(nw, seed + 1, -1, 1), *b = bias ? rnd(OUT, seed + 2, -1, 1) : NULL;
    float *dy = rnd(ny, seed + 3, -1, 1);
    if (nonfinite) x[nx / 2] = NAN, dy[ny - 1] = INFINITY;
    char name[128];
    const int len = snprintf(name, sizeof name, "linear (%d,%d)->%d%s%s", N, IN, OUT, bias ? "" : " nobias",
                             nonfinite ? " nan/inf in x, dy" : "");
    char *tail = name + len;
    const size_t room = sizeof name - len;
    float *yr = tbuf_new(ny), *yf = filled(ny, 1e30f), *my = tbuf_new(ny);
    float *ax = abs_of(x, nx), *aw = abs_of(w, nw), *ab = abs_of(b, OUT), *ady = abs_of(dy, ny);
    ref_linear_forward(yr, x, w, b, N, IN, OUT);
    fast_linear_forward(yf, x, w, b, N, IN, OUT);
    ref_linear_forward(my, ax, aw, ab, N, IN, OUT);
    snprintf(tail, room, " y");
    check_sum(name, yf, yr, my, chain(IN, 0, false), ny, seed);
    float *dxr = tbuf_new(nx), *dxf = filled(nx, 1e30f), *mdx = tbuf_new(nx);
    float *dw0 = rnd(nw, seed + 4, -1, 1), *dwr = copy_of(dw0, nw), *dwf = copy_of(dw0, nw), *mdw = tbuf_new(nw);
    float *db0 = rnd(OUT, seed + 5, -1, 1), *dbr = copy_of(db0, OUT), *dbf = copy_of(db0, OUT), *mdb = tbuf_new(OUT);
    ref_linear_backward(dxr, dwr, dbr, dy, x, w, N, IN, OUT);
    fast_linear_backward(dxf, dwf, dbf, dy, x, w, N, IN, OUT);
    ref_linear_backward(mdx, mdw, mdb, ady, ax, aw, N, IN, OUT);
    float *mdw1 = plus_abs(mdw, dw0, nw), *mdb1 = plus_abs(mdb, db0, OUT);
    snprintf(tail, room, " dx");
    check_sum(name, dxf, dxr, mdx, chain(OUT, 0, false), nx, seed);
    snprintf(tail, room, " dw");
    check_sum(name, dwf, dwr, mdw1, chain(N, 0, false) + 1, nw, seed);
    snprintf(tail, room, " db");
    check_sum(name, dbf, dbr, mdb1, 3, OUT, seed);
    tbuf_check(yf, ny, "linear y"), tbuf_check(dxf, nx, "linear dx"), tbuf_check(dwf, nw, "linear dw");
    tbuf_check(dbf, OUT, "linear db");
    float *dw2 = copy_of(dw0, nw);
    fast_linear_backward(NULL, dw2, NULL, dy, x, w, N, IN, OUT);
    ck_assert_msg(memcmp(dw2, dwf, nw * sizeof(float)) == 0, "%s: dw differs when dx and db are NULL", name);
    float *all[] = {x, w, b, dy, yr, yf, my, ax, aw, ab, ady, dxr, dxf, mdx, dw0, dwr, dwf, mdw, db0, dbr,
                    dbf, mdb, mdw1, mdb1, dw2};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) tbuf_free(all[i]);
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
// attention
//
// Forward. l = s q^T k (s = 1/sqrt(C)) is a GEMM of length C with alpha = s rounded to float, so
// with M_ij = s sum_c |q_ci k_cj|:  |l_fast - l_ref| <= E_ij = g(L_C) M_ij + 2u |l_ij|  (fast's
// rounded s, ref's final rounding; fast's final rounding is the last of the L_C). The softmax is invariant to a shift, and its relative
// sensitivity to the logits is |dw_ij / w_ij| <= |dl_ij| + max_k |dl_ik| <= 2 E_i, E_i = max_j E_ij.
// fast/ then rounds x - max (u |l_ij - m_i|), evaluates exp (FAST_EXP_ULPS u, measured by
// softmax_exp below), sums HW positive terms in 8 lanes (g(ceil(HW/8) + 3) plus the exp error again,
// relative), and multiplies by a rounded reciprocal (2u); ref rounds once (u). The relative factors
// multiply; (1 + d1)...(1 + dn) and its inverse stay within T = sum d_i of 1 to first order, bounded
// by rho = expm1(T) / (1 - T). So |w_fast - w_ref| <= rho_ij w_ij (+ 1e-37 for exp's flush below
// 2^-126). a = v w^T is a GEMM of length HW on the perturbed w:
//   |a_fast - a_ref| <= sum_j |v_cj| rho_ij w_ij + g(L_HW) sum_j |v_cj| (1 + rho_ij) w_ij + u |a|.
// Backward, on the same saved w: dv = da w is a plain GEMM. dW = da^T v (length C) errs by
// D_ij = g(L_C) sum_c |da_ci v_cj|; r_i = sum_j w_ij dW_ij (8 lanes) by R_i = sum_j w_ij D_ij +
// g(ceil(HW/8) + 4) sum_j w_ij |dW_ij|; dl = w (dW - r) by F_ij = w_ij (D_ij + R_i) + 2u w_ij |dW_ij - r_i|;
// dq = s k dl^T by s sum_j |k_cj| F_ij + g(L_HW) s sum_j |k_cj dl_ij| + 2u |dq|, and dk alike.
// Products of two error terms (relative size below 1e-9) are dropped.

struct attn_bounds {
    double *w, *a, *dv, *dq, *dk; // per element, for one growth function
};

static void attention_bounds(growth_fn g, const float *qkv, const float *wr, const float *da,
                             const float *ar, const float *dqkvr, int N, int C, int HW,
                             struct attn_bounds *B) {
    const double s = 1.0 / sqrt((double)C);
    const double LC = chain(C, 0, false), LH = chain(HW, 0, false);
    const double gsum = g(ceil(HW / 8.0) + 3), gr = g(ceil(HW / 8.0) + 4);
    const double eexp = FAST_EXP_ULPS * U;
    const size_t HH = (size_t)HW * HW;
    double *rho = xmalloc(HH * sizeof(double)), *dW = xmalloc(HH * sizeof(double));
    double *D = xmalloc(HH * sizeof(double)), *dl = xmalloc(HH * sizeof(double)), *F = xmalloc(HH * sizeof(double));
    for (int n = 0; n < N; n++) {
        const float *q = qkv + (size_t)n * 3 * C * HW, *k = q + HW, *v = q + 2 * HW; // row c at +3c*HW
        const float *w = wr + (size_t)n * HH, *dan = da + (size_t)n * C * HW;
        const size_t ld = 3 * (size_t)HW;
        for (int i = 0; i < HW; i++) {
            double Ei = 0.0, mi = -INFINITY;
            double *l = dW; // row i of the logits, borrowed
            for (int j = 0; j < HW; j++) {
                double dot = 0.0, mag = 0.0, dd = 0.0, dm = 0.0;
                for (int c = 0; c < C; c++) {
                    dot += (double)q[c * ld + i] * k[c * ld + j], mag += fabs((double)q[c * ld + i] * k[c * ld + j]);
                    dd += (double)dan[(size_t)c * HW + i] * v[c * ld + j];
                    dm += fabs((double)dan[(size_t)c * HW + i] * v[c * ld + j]);
                }
                l[j] = s * dot;
                Ei = fmax(Ei, g(LC) * s * mag + 2 * U * fabs(l[j]));
                mi = fmax(mi, l[j]);
                dl[(size_t)i * HW + j] = dd; // dW_ij for now
                D[(size_t)i * HW + j] = g(LC) * dm;
            }
            for (int j = 0; j < HW; j++) {
                const double T = 2 * Ei + U * fabs(l[j] - mi) + 2 * eexp + gsum + 3 * U;
                rho[(size_t)i * HW + j] = expm1(T) / (1 - T);
            }
        }
        memcpy(dW, dl, HH * sizeof(double));
        for (int i = 0; i < HW; i++) { // softmax backward: r, dl, F
            double r = 0.0, R = 0.0, Rm = 0.0;
            for (int j = 0; j < HW; j++) {
                const size_t ij = (size_t)i * HW + j;
                r += w[ij] * dW[ij], R += w[ij] * D[ij], Rm += w[ij] * fabs(dW[ij]);
            }
            R += gr * Rm;
            for (int j = 0; j < HW; j++) {
                const size_t ij = (size_t)i * HW + j;
                dl[ij] = w[ij] * (dW[ij] - r);
                F[ij] = w[ij] * (D[ij] + R) + 2 * U * w[ij] * fabs(dW[ij] - r);
                B->w[n * HH + ij] = rho[ij] * w[ij] + 1e-37;
            }
        }
        for (int c = 0; c < C; c++) {
            const size_t ci = ((size_t)n * C + c) * HW, qi = (size_t)n * 3 * C * HW + 3 * (size_t)c * HW;
            for (int i = 0; i < HW; i++) {
                double ba = 0.0, bam = 0.0, bdv = 0.0, bq = 0.0, bqm = 0.0, bk = 0.0, bkm = 0.0;
                for (int j = 0; j < HW; j++) {
                    const size_t ij = (size_t)i * HW + j, ji = (size_t)j * HW + i;
                    ba += fabs(v[c * ld + j]) * rho[ij] * w[ij];
                    bam += fabs(v[c * ld + j]) * (1 + rho[ij]) * w[ij];
                    bdv += w[ji] * fabs(dan[(size_t)c * HW + j]); // dv[c, i] = sum_j da[c, j] w[j, i]
                    bq += fabs(k[c * ld + j]) * F[ij], bqm += fabs(k[c * ld + j] * dl[ij]);
                    bk += fabs(q[c * ld + j]) * F[ji], bkm += fabs(q[c * ld + j] * dl[ji]);
                }
                B->a[ci + i] = ba + g(LH) * bam + U * fabs(ar[ci + i]);
                B->dv[ci + i] = g(LH) * bdv + U * fabs(dqkvr[qi + 2 * HW + i]);
                B->dq[ci + i] = s * bq + g(LH) * s * bqm + 2 * U * fabs(dqkvr[qi + i]);
                B->dk[ci + i] = s * bk + g(LH) * s * bkm + 2 * U * fabs(dqkvr[qi + HW + i]);
            }
        }
    }
    free(rho), free(dW), free(D), free(dl), free(F);
}

static struct attn_bounds bounds_new(size_t nw, size_t na) {
    struct attn_bounds b;
    b.w = xmalloc(nw * sizeof(double));
    b.a = xmalloc(na * sizeof(double)), b.dv = xmalloc(na * sizeof(double));
    b.dq = xmalloc(na * sizeof(double)), b.dk = xmalloc(na * sizeof(double));
    return b;
}

static void bounds_free(struct attn_bounds *b) { free(b->w), free(b->a), free(b->dv), free(b->dq), free(b->dk); }

// The rows j (0 q, 1 k, 2 v) of dqkv: (N, 3C, HW) gathered into (N, C, HW).
static float *plane(const float *dqkv, int j, int N, int C, int HW) {
    float *p = tbuf_new((size_t)N * C * HW);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            memcpy(p + ((size_t)n * C + c) * HW, dqkv + ((size_t)n * 3 * C + 3 * c + j) * HW, HW * sizeof(float));
    return p;
}

static void check_attention(int N, int C, int HW, uint64_t seed, int nonfinite) {
    const size_t nq = (size_t)N * 3 * C * HW, na = (size_t)N * C * HW, nw = (size_t)N * HW * HW;
    float *qkv = rnd(nq, seed, -1.5f, 1.5f), *da = rnd(na, seed + 1, -1, 1); // logits of order one
    if (nonfinite) qkv[(size_t)HW / 2] = NAN, qkv[nq - 1] = INFINITY;     // a q of sample 0, a v of the last
    float *ar = tbuf_new(na), *af = filled(na, 1e30f), *wr = tbuf_new(nw), *wf = filled(nw, 1e30f);
    ref_attention_forward(ar, wr, qkv, N, C, HW);
    fast_attention_forward(af, wf, qkv, N, C, HW);
    float *dr = tbuf_new(nq), *df = filled(nq, 1e30f);
    ref_attention_backward(dr, da, wr, qkv, N, C, HW);
    fast_attention_backward(df, da, wr, qkv, N, C, HW);
    struct attn_bounds bm = bounds_new(nw, na), bs = bounds_new(nw, na);
    attention_bounds(gam, qkv, wr, da, ar, dr, N, C, HW, &bm);
    attention_bounds(gam_stat, qkv, wr, da, ar, dr, N, C, HW, &bs);
    if (nonfinite)
        ck_assert_msg(nonfinite_count(wr, nw) && nonfinite_count(ar, na) && nonfinite_count(dr, nq),
                      "attention: no NaN/Inf reached w, a, dqkv");
    char name[128];
    const int len = snprintf(name, sizeof name, "attention (%d,%d,%d)%s", N, C, HW, nonfinite ? " nan/inf in qkv" : "");
    const size_t room = sizeof name - len;
    snprintf(name + len, room, " w");
    check_bounded(name, wf, wr, bm.w, bs.w, nw, seed);
    snprintf(name + len, room, " a");
    check_bounded(name, af, ar, bm.a, bs.a, na, seed);
    const double *bmq[3] = {bm.dq, bm.dk, bm.dv}, *bsq[3] = {bs.dq, bs.dk, bs.dv};
    for (int j = 0; j < 3; j++) {
        float *pf = plane(df, j, N, C, HW), *pr = plane(dr, j, N, C, HW);
        snprintf(name + len, room, " d%c", "qkv"[j]);
        check_bounded(name, pf, pr, bmq[j], bsq[j], na, seed);
        tbuf_free(pf), tbuf_free(pr);
    }
    tbuf_check(af, na, "attention a"), tbuf_check(wf, nw, "attention w"), tbuf_check(df, nq, "attention dqkv");
    bounds_free(&bm), bounds_free(&bs);
    float *all[] = {qkv, da, ar, af, wr, wf, dr, df};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) tbuf_free(all[i]);
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
    Suite *s = suite_create("fast gemm ops");
    TCase *tc = tcase_create("against ref");
    tcase_set_timeout(tc, 1200);
    tcase_add_test(tc, softmax_exp);
    tcase_add_test(tc, conv_awkward);
    tcase_add_test(tc, conv_nonfinite);
    tcase_add_test(tc, conv_mini_batch1);
    tcase_add_test(tc, conv_mini_batch64);
    tcase_add_test(tc, conv_cifar);
    tcase_add_test(tc, linear_shapes);
    tcase_add_test(tc, attention_shapes);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
