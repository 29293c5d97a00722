// test_cuda_gemm.c: cuda/'s GEMM-based ops (linear, conv2d, attention) against ref/ on the same
// fixed-seed inputs, forward and backward, with guard regions around every device buffer, NaN/Inf
// agreement and the gradient convention, at the real mini and cifar10 shapes and awkward ones. Built
// twice, on the device and on the emulator; tests/cudacheck.h says how.
#include <math.h>
#include <stdio.h>

#include "../ref/ref.h"
#include "cudacheck.h"
#include "testutil.h"
#include "tolerance.h"

// ---------------------------------------------------------------------------------------------------
// linear and conv2d: cuda/gemm.cuh's tiled GEMM. Each output is a float sum, k ascending within a
// chunk of the reduction (one FMA per term on the device, a rounded product and sum on the emulator),
// chunks (split-K) added in double, rounded to float, then the bias added or the gradient
// accumulated in float. Whatever the tiles and the split the kernel picks, a term passes through at
// most K + 2 roundings on its way to the output (K for its chunk, one for the chunks' sum, one for
// the bias or the +=; gradients summed some other way, as db may be, within the same count), so
// every output is held to bound_gemm and bound_gemm_stat with L = K + 2 (K + 1 for the activation
// gradients, which have no bias and no +=): summation-order-independent bounds. (The forward and
// input-gradient GEMMs are never split today, so they pass each term through one rounding fewer than
// the count allows.) mag comes from ref's op on the absolute values (plus |D0| for a gradient
// accumulated into D0).

// The outputs of one layer as cuda computed them and as ref did, held to bound_gemm with the chain
// lengths L: y (K + 2, K the forward's reduction: IN, or C K K), dx (KT + 1, KT the input gradient's:
// OUT, or OC K K) and the parameter gradients (NP + 2, NP = N, or N H W), dw and db accumulated into
// acc0, and dw again from a call with dx and db NULL.
struct layer_outputs {
    const float *got[5];  // cuda's y, dx, dw, db and the second dw, on the device
    const float *ref[4];  // ref's y, dx, dw, db
    const float *mag[4];  // ref's op on the absolute values
    const float *acc0[2]; // what dw and db accumulated into
    size_t n[4];          // floats in y, dx, dw, db
    double L[3];          // roundings of y, dx, dw and db
};

static void match_layer(const char *name, uint64_t seed, bool nf, const struct layer_outputs *o) {
    static const char *const what[5] = {"y", "dx", "dw +=", "db +=", "dw, dx and db NULL"};
    const float *mag[4] = {o->mag[0], o->mag[1], pool_plus_abs(o->mag[2], o->acc0[0], o->n[2]),
                           pool_plus_abs(o->mag[3], o->acc0[1], o->n[3])};
    for (int t = 0; t < 5; t++) {
        const int k = t < 4 ? t : 2; // the second dw is held to the first's reference
        match_sum(seed, nf, dget(o->got[t], o->n[k]), o->ref[k], mag[k], o->L[k < 2 ? k : 2], o->n[k], "%s %s", name,
                  what[t]);
    }
}

static void check_linear(int N, int IN, int OUT, int bias, uint64_t seed, int nonfinite) {
    const size_t nx = (size_t)N * IN, nw = (size_t)OUT * IN, ny = (size_t)N * OUT;
    float *x = pool_input(nx, seed, -1, 1), *w = pool_input(nw, seed + 1, -1, 1);
    float *b = bias ? pool_input(OUT, seed + 2, -1, 1) : NULL;
    float *dy = pool_input(ny, seed + 3, -1, 1), *dw0 = pool_input(nw, seed + 4, -1, 1);
    float *db0 = pool_input(OUT, seed + 5, -1, 1);
    if (nonfinite) x[nx / 2] = NAN, dy[ny - 1] = INFINITY;
    char name[128];
    snprintf(name, sizeof name, "linear (%d,%d)->%d%s", N, IN, OUT, bias ? "" : " nobias");
    float *ax = pool_abs(x, nx), *aw = pool_abs(w, nw), *ab = pool_abs(b, OUT), *ady = pool_abs(dy, ny);
    float *yr = pool_buf(ny), *my = pool_buf(ny), *dxr = pool_buf(nx), *mdx = pool_buf(nx), *mdw = pool_buf(nw);
    float *mdb = pool_buf(OUT), *dwr = pool_copy(dw0, nw), *dbr = pool_copy(db0, OUT);
    ref_linear_forward(yr, x, w, b, N, IN, OUT), ref_linear_forward(my, ax, aw, ab, N, IN, OUT);
    ref_linear_backward(dxr, dwr, dbr, dy, x, w, N, IN, OUT);
    ref_linear_backward(mdx, mdw, mdb, ady, ax, aw, N, IN, OUT);

    float *gx = dput(x, nx), *gw = dput(w, nw), *gb = dput(b, OUT), *gdy = dput(dy, ny), *gy = dout(ny);
    float *gdx = dout(nx), *gdw = dput(dw0, nw), *gdb = dput(db0, OUT), *gdw2 = dput(dw0, nw);
    cu->linear_forward(gy, gx, gw, gb, N, IN, OUT);
    cu->linear_backward(gdx, gdw, gdb, gdy, gx, gw, N, IN, OUT);
    cu->linear_backward(NULL, gdw2, NULL, gdy, gx, gw, N, IN, OUT);
    match_layer(name, seed, nonfinite,
                &(struct layer_outputs){.got = {gy, gdx, gdw, gdb, gdw2}, .ref = {yr, dxr, dwr, dbr},
                                        .mag = {my, mdx, mdw, mdb}, .acc0 = {dw0, db0}, .n = {ny, nx, nw, OUT},
                                        .L = {IN + 2, OUT + 1, N + 2}});
    if (nonfinite)
        ck_assert_msg(nonfinite_count(yr, ny) && nonfinite_count(dxr, nx) && nonfinite_count(dwr, nw),
                      "%s: no NaN/Inf reached y, dx, dw", name);
    done();
}

START_TEST(linear) {
    const struct {
        int N, IN, OUT, bias, flag;
    } S[] = {
        {128, 32, 128, 1, DEV},  {128, 128, 128, 1, DEV}, {128, 128, 64, 1, DEV}, // mini: mapping, a block's affine
        {64, 128, 512, 1, DEV},  {128, 512, 512, 1, DEV}, {128, 512, 256, 1, DEV}, // cifar10 likewise
        {2, 32, 128, 1, ANY},    {1, 128, 128, 1, ANY},   {1, 7, 5, 1, ANY},       {3, 13, 1, 0, ANY},
        {5, 1, 3, 1, ANY},       {3, 600, 29, 1, ANY},    {300, 5, 7, 1, ANY},     {2, 130, 70, 0, ANY},
    };
    for (size_t k = 0; k < sizeof S / sizeof S[0]; k++)
        if (!skip(S[k].flag)) check_linear(S[k].N, S[k].IN, S[k].OUT, S[k].bias, 6000 + 10 * k, 0);
    check_linear(4, 13, 30, 1, 6900, 1);
}
END_TEST

struct conv_case {
    int N, C, H, W, OC, K, bias, flag;
};

// nonfinite: 0 none, 1 a NaN and an Inf in x (one at a corner pixel, where the 3x3 taps reach the
// padding), 2 a NaN and an Inf in dy at interior pixels.
static void check_conv(struct conv_case s, uint64_t seed, int nonfinite) {
    const int KK = s.K * s.K;
    const size_t HW = (size_t)s.H * s.W, nx = (size_t)s.N * s.C * HW, ny = (size_t)s.N * s.OC * HW;
    const size_t nw = (size_t)s.OC * s.C * KK;
    const double t0 = now();
    float *x = pool_input(nx, seed, -1, 1), *w = pool_input(nw, seed + 1, -1, 1);
    float *b = s.bias ? pool_input(s.OC, seed + 2, -1, 1) : NULL;
    float *dy = pool_input(ny, seed + 3, -1, 1), *dw0 = pool_input(nw, seed + 4, -1, 1);
    float *db0 = pool_input(s.OC, seed + 5, -1, 1);
    if (nonfinite == 1) x[0] = NAN, x[nx - 1 - (size_t)s.W / 2] = INFINITY;
    if (nonfinite == 2) {
        const size_t mid = (size_t)(s.H / 2) * s.W + s.W / 2;
        dy[mid] = NAN, dy[ny - HW + mid] = -INFINITY;
    }
    char name[128];
    snprintf(name, sizeof name, "conv%dx%d (%d,%d,%d,%d)->%d%s%s", s.K, s.K, s.N, s.C, s.H, s.W, s.OC,
             s.bias ? "" : " nobias", nonfinite == 1 ? " nan/inf in x" : nonfinite == 2 ? " nan/inf in dy" : "");

    // the device first (it runs while ref computes), then ref and the magnitudes
    float *gx = dput(x, nx), *gw = dput(w, nw), *gb = dput(b, s.OC), *gdy = dput(dy, ny), *gy = dout(ny);
    float *gdx = dout(nx), *gdw = dput(dw0, nw), *gdb = dput(db0, s.OC), *gdw2 = dput(dw0, nw);
    cu->conv2d_forward(gy, gx, gw, gb, s.N, s.C, s.H, s.W, s.OC, s.K);
    cu->conv2d_backward(gdx, gdw, gdb, gdy, gx, gw, s.N, s.C, s.H, s.W, s.OC, s.K);
    cu->conv2d_backward(NULL, gdw2, NULL, gdy, gx, gw, s.N, s.C, s.H, s.W, s.OC, s.K);
    const double t1 = now();
    float *ax = pool_abs(x, nx), *aw = pool_abs(w, nw), *ab = pool_abs(b, s.OC), *ady = pool_abs(dy, ny);
    float *yr = pool_buf(ny), *my = pool_buf(ny), *dxr = pool_buf(nx), *mdx = pool_buf(nx), *mdw = pool_buf(nw);
    float *mdb = pool_buf(s.OC), *dwr = pool_copy(dw0, nw), *dbr = pool_copy(db0, s.OC);
    ref_conv2d_forward(yr, x, w, b, s.N, s.C, s.H, s.W, s.OC, s.K);
    ref_conv2d_forward(my, ax, aw, ab, s.N, s.C, s.H, s.W, s.OC, s.K);
    ref_conv2d_backward(dxr, dwr, dbr, dy, x, w, s.N, s.C, s.H, s.W, s.OC, s.K);
    ref_conv2d_backward(mdx, mdw, mdb, ady, ax, aw, s.N, s.C, s.H, s.W, s.OC, s.K);
    const double t2 = now();
    match_layer(name, seed, nonfinite != 0,
                &(struct layer_outputs){.got = {gy, gdx, gdw, gdb, gdw2}, .ref = {yr, dxr, dwr, dbr},
                                        .mag = {my, mdx, mdw, mdb}, .acc0 = {dw0, db0}, .n = {ny, nx, nw, s.OC},
                                        .L = {(double)s.C * KK + 2, (double)s.OC * KK + 1, (double)s.N * HW + 2}});
    if (nonfinite == 1) // the non-finite inputs must reach the outputs, or the check above proves nothing
        ck_assert_msg(nonfinite_count(yr, ny) && nonfinite_count(dwr, nw), "%s: no NaN/Inf reached y, dw", name);
    if (nonfinite == 2)
        ck_assert_msg(nonfinite_count(dxr, nx) && nonfinite_count(dwr, nw) && nonfinite_count(dbr, s.OC),
                      "%s: no NaN/Inf reached dx, dw, db", name);
    done();
    if (now() - t0 > 1.0)
        printf("  (%s: inputs and %s %.1f s, ref %.1f s, checks %.1f s)\n", name, cu->name, t1 - t0, t2 - t1,
               now() - t2);
}

START_TEST(conv) {
    const struct conv_case S[] = {
        // mini at batch 64 and 128: encoder/decoder convs at 28, 14, 7; the output head (OC = 1); the
        // 1x1 skip and qkv convs
        {128, 1, 28, 28, 32, 3, 1, DEV}, {64, 32, 28, 28, 32, 3, 1, DEV}, {64, 64, 14, 14, 64, 3, 1, DEV},
        {128, 128, 7, 7, 64, 3, 1, DEV}, {64, 96, 28, 28, 32, 3, 1, DEV}, {64, 32, 28, 28, 1, 3, 1, DEV},
        {128, 64, 14, 14, 192, 1, 1, DEV}, {64, 96, 28, 28, 32, 1, 1, DEV},
        // cifar10: the input conv, 3x3 at 16 and 8, the qkv and a skip at 16, the output head
        {128, 3, 32, 32, 256, 3, 1, DEV}, {128, 256, 16, 16, 256, 3, 1, DEV}, {128, 512, 8, 8, 256, 3, 1, DEV},
        {128, 256, 16, 16, 768, 1, 1, DEV}, {64, 384, 16, 16, 256, 1, 1, DEV}, {32, 256, 32, 32, 3, 3, 1, DEV},
        // the emulator's: one real shape at batch 1 (split-K on dw), awkward ones
        {1, 32, 28, 28, 32, 3, 1, ANY}, {1, 64, 14, 14, 192, 1, 1, ANY}, {1, 3, 7, 7, 5, 3, 1, ANY},
        {2, 13, 9, 11, 5, 3, 1, ANY},   {3, 5, 7, 7, 13, 1, 1, ANY},     {2, 5, 5, 3, 1, 3, 0, ANY},
        {1, 1, 1, 1, 1, 3, 1, ANY},     {2, 7, 1, 9, 3, 3, 1, ANY},      {5, 3, 2, 2, 7, 3, 0, ANY},
        {3, 300, 3, 3, 4, 3, 1, ANY}, // a reduction of 2700 in the forward (never split)
        {1, 8, 5, 5, 40, 3, 1, ANY},  // dw: 40 x 72, the 64 x 128 tile
    };
    for (size_t k = 0; k < sizeof S / sizeof S[0]; k++)
        if (!skip(S[k].flag)) check_conv(S[k], 4000 + 10 * k, 0);
    check_conv((struct conv_case){2, 5, 7, 7, 6, 3, 1, ANY}, 5000, 1);
    check_conv((struct conv_case){3, 13, 9, 5, 7, 3, 1, ANY}, 5010, 1);
    check_conv((struct conv_case){2, 5, 7, 7, 6, 1, 1, ANY}, 5020, 1);
    check_conv((struct conv_case){2, 5, 7, 7, 6, 3, 1, ANY}, 5030, 2);
    check_conv((struct conv_case){2, 5, 7, 7, 6, 1, 0, ANY}, 5040, 2);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// Attention. cuda/attention.cu: five batched products, each output one float FMA chain in the order of
// the reduction (the emulator the same, bit for bit), the scale s applied to the finished sum in
// double and rounded once; the softmax and its backward in double from the float logits (float dW),
// sums in block_sum's tree order. So, in the terms of attention_bounds (tests/opcheck.h): chains of
// L roundings, logits C + 1 (and ref's mag rounded: scale 1 + 2u), a HW, dv HW, dW C, dq and dk
// HW + 1; the softmax evaluated in double (exp within a double ulp, sums within gamd(HW + 2)) and
// rounded once to float: T = 2u + 8 UD + 2 gamd(HW + 2), nothing for the shift; r_i summed in double
// from cuda's own dW: 2 gamd(HW + C + 2); 2^-148 for subnormal weights.
static struct attn_rounding cuda_attention(growth_fn g, int C, int HW) {
    (void)g; // the same counts for both bounds
    return (struct attn_rounding){.L_logits = C + 1,
                                  .scale = 1 + 2 * U,
                                  .L_dW = C,
                                  .rounds_shift = false,
                                  .T = {2 * U, 8 * UD, 2 * gamd(HW + 2)},
                                  .r_growth = 2 * gamd(HW + C + 2),
                                  .L_a = HW,
                                  .L_dv = HW,
                                  .L_dqk = HW + 1,
                                  .w_floor = 0x1p-148};
}

static void check_attention(int N, int C, int HW, uint64_t seed, int nonfinite) {
    const size_t nq = (size_t)N * 3 * C * HW, na = (size_t)N * C * HW, nw = (size_t)N * HW * HW;
    const double t0 = now();
    float *qkv = pool_input(nq, seed, -1.5f, 1.5f), *da = pool_input(na, seed + 1, -1, 1); // logits of order one
    if (nonfinite) qkv[(size_t)HW / 2] = NAN, qkv[nq - 1] = INFINITY; // a q of sample 0, a v of the last
    float *gq = dput(qkv, nq), *gda = dput(da, na), *ga = dout(na), *gw = dout(nw), *gd = dout(nq);
    cu->attention_forward(ga, gw, gq, N, C, HW);
    float *ar = pool_buf(na), *wr = pool_buf(nw), *dr = pool_buf(nq);
    ref_attention_forward(ar, wr, qkv, N, C, HW);
    cu->attention_backward(gd, gda, dput(wr, nw), gq, N, C, HW); // from ref's saved w
    ref_attention_backward(dr, da, wr, qkv, N, C, HW);
    const double t1 = now();
    struct attn_bounds bm, bs;
    attention_bounds_both(&bm, &bs, cuda_attention, qkv, wr, da, ar, dr, N, C, HW, nonfinite);
    char name[128];
    snprintf(name, sizeof name, "attention (%d,%d,%d)%s", N, C, HW, nonfinite ? " nan/inf in qkv" : "");
    match(seed, nonfinite, dget(gw, nw), wr, bm.w, bs.w, nw, "%s w", name);
    match(seed, nonfinite, dget(ga, na), ar, bm.a, bs.a, na, "%s a", name);
    const float *dc = dget(gd, nq);
    const double *bmq[3] = {bm.dq, bm.dk, bm.dv}, *bsq[3] = {bs.dq, bs.dk, bs.dv};
    for (int j = 0; j < 3; j++)
        match(seed, nonfinite, pool_plane(dc, j, N, C, HW), pool_plane(dr, j, N, C, HW), bmq[j], bsq[j], na, "%s d%c",
              name, "qkv"[j]);
    attn_bounds_free(&bm), attn_bounds_free(&bs);
    done();
    if (now() - t0 > 1.0) printf("  (attention (%d,%d,%d): %s and ref %.1f s, bounds and checks %.1f s)\n", N, C, HW,
                                 cu->name, t1 - t0, now() - t1);
}

START_TEST(attention) {
    const int S[][4] = {
        {64, 64, 196, DEV}, {128, 64, 196, DEV}, // mini: attention at 14x14, 64 channels
        {128, 256, 256, DEV},                    // cifar10: 16x16, 256 channels
        {1, 64, 196, ANY},  {1, 5, 49, ANY},     {3, 13, 7, ANY}, {2, 1, 1, ANY},
        {2, 4, 100, ANY}, // HW > 64: several tiles of the products and of the rows
        {1, 70, 3, ANY},  // C > 64: the a and dv products' rows take two tiles
    };
    for (size_t k = 0; k < sizeof S / sizeof S[0]; k++)
        if (!skip(S[k][3])) check_attention(S[k][0], S[k][1], S[k][2], 7000 + 10 * k, 0);
    check_attention(2, 5, 49, 7900, 1);
}
END_TEST

int main(void) {
    const TTest *tests[] = {linear, conv, attention};
    return cuda_run_tests("test_cuda_gemm", CUDA_SUITE_BACKEND, tests, TEST_COUNT(tests));
}
