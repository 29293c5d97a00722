// test_cuda_memory.c: cuda/'s memory ops, its random numbers (fill_normal, dropout) and the optimiser's
// ops (Adam, EMA, nan_to_num, sumsq) against ref/ on the same fixed-seed inputs, with guard regions
// around every device buffer and NaN/Inf agreement. Built twice, on the device and on the emulator;
// tests/cudacheck.h says how, and what is held bit for bit and what to a bound.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../ref/ref.h"
#include "common/core/rng.h"
#include "cudacheck.h"
#include "testutil.h"
#include "tolerance.h"

// ---------------------------------------------------------------------------------------------------
// Memory: upload/download/copy round trips are bit for bit (NaN payloads, -0, subnormals kept), fill
// writes exactly n values, copies of 0 floats and in place touch nothing, release(NULL) is allowed.

static void check_memory(size_t n, uint64_t seed) {
    float *h = pool_input(n, seed, -1, 1);
    const float special[] = {-0.0f, 1e-40f, -1e-45f, INFINITY, -INFINITY, from_bits(0x7fc12345u),
                             from_bits(0xffc00001u)};
    for (size_t s = 0; s < 7 && s < n; s++) h[(s * 7919) % n] = special[s];
    float *d = dput(h, n), *back = dget(d, n);
    ck_assert_msg(memcmp(back, h, n * sizeof(float)) == 0, "%s: upload/download of %zu floats not bit for bit",
                  cu->name, n);
    float *d2 = dout(n);
    cu->copy(d2, d, n);
    back = dget(d2, n);
    ck_assert_msg(memcmp(back, h, n * sizeof(float)) == 0, "%s: copy of %zu floats not bit for bit", cu->name, n);
    cu->copy(d2, d2, n); // in place: nothing happens
    cu->copy(d2, d, 0);  // nothing either
    cu->copy(d2 + n / 2, d, 0);
    cu->fill(d2, 5.0f, 0);
    cu->upload(d2, h, 0);
    cu->download(back, d2, 0);
    cu->sync();
    back = dget(d2, n);
    ck_assert_msg(memcmp(back, h, n * sizeof(float)) == 0, "%s: a copy/fill/upload of 0 floats or a copy in "
                  "place changed the buffer (n = %zu)", cu->name, n);
    const float values[] = {-2.5f, -0.0f, from_bits(0x7fc0abcdu)};
    for (int v = 0; v < 3; v++) {
        cu->fill(d2, values[v], n);
        back = dget(d2, n);
        size_t i = 0;
        while (i < n && bits_of(back[i]) == bits_of(values[v])) i++;
        ck_assert_msg(i == n, "%s: fill(%g) of %zu floats: [%zu] holds %g", cu->name, values[v], n, i, back[i]);
    }
    char what[64];
    snprintf(what, sizeof what, "memory ops, n = %zu", n);
    printf("%s %-58s n=%-9zu bit-identical\n", cu->name, what, n);
    done();
}

START_TEST(memory) {
    ck_assert_str_eq(cu->name, ON_DEVICE ? "cuda" : "cuda-emu");
#define SET(op) ck_assert_msg(cu->op != NULL, "%s." #op " is NULL", cu->name);
    MSD_BACKEND_OPS(SET)
#undef SET
    for (size_t k = 0; k < NLEN; k++)
        if (!skip(LENGTHS[k].flag)) check_memory(LENGTHS[k].n, 10 + k);
    if (!ON_DEVICE) { // the emulator: the wrap of a grid-stride loop once, with fill (one launch here costs ~1 s)
        const size_t n = (1u << 20) + 5;
        float *h = pool_input(n, 19, -1, 1), *d = dput(h, n);
        cu->fill(d + 1, -3.0f, n - 2);
        float *back = dget(d, n);
        size_t i = 1;
        while (i < n - 1 && back[i] == -3.0f) i++;
        ck_assert_msg(i == n - 1 && bits_of(back[0]) == bits_of(h[0]) && bits_of(back[n - 1]) == bits_of(h[n - 1]),
                      "%s: fill of %zu floats (a grid-stride loop that wraps) wrong at [%zu]", cu->name, n - 2, i);
        printf("%s %-58s n=%-9zu bit-identical\n", cu->name, "fill, a grid-stride loop that wraps", n - 2);
        done();
    }
    cu->release(NULL);
}
END_TEST

// fill_normal: ref's draws (common/core/rng.h's Box-Muller in double, rounded once). The emulator runs
// ref's code with glibc's libm: bit for bit. On the device: u1 and u2 are exact, 2 pi u2 rounds the
// same on both sides (one product, nothing to fuse); log is within 1 double ulp on each side and
// sqrt rounds correctly, so r = sqrt(-2 log u1) differs by at most 4 UD r; cos and sin are within
// 1 ulp (glibc) and 2 ulps (CUDA), 6 UD apart at most; the final product rounds once per side. The
// doubles are then within 6 UD |z| + 6 UD r, and r <= sqrt(2 ln 2^24) < 6: dd = 6 UD |z| + 36 UD,
// and each side rounds to float (bound_rounded_pair).
START_TEST(fill_normal_op) {
    const size_t n = ON_DEVICE ? (1u << 20) + 3 : 4099;
    const uint64_t seed = 0x123456789abull, stream = ((uint64_t)7 << 40) | 5;
    float *want = pool_buf(n), *d = dout(n);
    ref_fill_normal(want, seed, stream, n);
    cu->fill_normal(d, seed, stream, n);
    double *b = doubles(n);
    for (size_t i = 0; i < n; i++) b[i] = bound_rounded_pair(want[i], 6 * UD * fabs(want[i]) + 36 * UD);
    match(seed, false, dget(d, n), want, device_bound(b), NULL, n, "fill_normal");
    free(b);
    done();
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// Dropout: the same mask from the counter RNG (common/core/rng.h on the device) and the same float product:
// bit for bit, forward and backward, for seeds and streams with high bits set (the key's and the
// counter's upper words), and in place.
START_TEST(dropout) {
    const float P[] = {0.0f, 0.1f, 0.5f, 0.93f};
    const uint64_t SEED[] = {7, 0x123456789abcdefull}, STREAM[] = {MSD_STREAM_DROPOUT + 3, (1ull << 40) | 5};
    for (int nf = 0; nf < 2; nf++)
        for (size_t k = 0; k < NLEN; k++)
            for (int v = 0; v < 4; v++) {
                if (skip(LENGTHS[k].flag) || LENGTHS[k].flag == BIG) continue;
                const size_t n = LENGTHS[k].n;
                const uint64_t seed = SEED[v % 2], stream = STREAM[v / 2 % 2];
                float *x = pool_input(n, 500 + k, -1, 1);
                if (nf) inject(x, n, 510 + k);
                float *yr = pool_buf(n), *dr = pool_buf(n), *gx = dput(x, n), *gy = dout(n), *gd = dout(n);
                ref_dropout_forward(yr, x, P[v], seed, stream, n), ref_dropout_backward(dr, x, P[v], seed, stream, n);
                cu->dropout_forward(gy, gx, P[v], seed, stream, n), cu->dropout_backward(gd, gx, P[v], seed, stream, n);
                match(seed, nf, dget(gy, n), yr, NULL, NULL, n, "dropout_forward p=%g seed %llx stream %llx", P[v],
                      (unsigned long long)seed, (unsigned long long)stream);
                match(seed, nf, dget(gd, n), dr, NULL, NULL, n, "dropout_backward p=%g seed %llx stream %llx", P[v],
                      (unsigned long long)seed, (unsigned long long)stream);
                cu->dropout_forward(gx, gx, P[v], seed, stream, n); // in place
                match(seed, nf, dget(gx, n), yr, NULL, NULL, n, "dropout_forward in place");
                done();
            }
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// Optimiser ops. Adam, EMA and nan_to_num: ref's operations in ref's precision and order (cuda/optim.cu
// rounds the float ones one by one with __fmul_rn/__fadd_rn; the double part has no multiply-add to
// fuse): bit for bit. sumsq: one double sum of exact squares on each side (bound_double_sums), its
// output in device memory.

static void check_adam(const float *p, const float *m, const float *v, const float *g, const float *gg, long step,
                       size_t n, uint64_t seed, bool nf) {
    float *pr = pool_copy(p, n), *mr = pool_copy(m, n), *vr = pool_copy(v, n);
    float *gp = dput(p, n), *gm = dput(m, n), *gv = dput(v, n);
    ref_adam(pr, mr, vr, g, 2e-3f, 0.9f, 0.999f, 1e-8f, step, n);
    cu->adam(gp, gm, gv, gg, 2e-3f, 0.9f, 0.999f, 1e-8f, step, n);
    const float *got[3] = {dget(gp, n), dget(gm, n), dget(gv, n)}, *want[3] = {pr, mr, vr};
    for (int t = 0; t < 3; t++)
        match(seed, nf, got[t], want[t], NULL, NULL, n, "adam step %ld %c n=%zu", step, "pmv"[t], n);
}

START_TEST(optim) {
    for (int nf = 0; nf < 2; nf++)
        for (size_t k = 0; k < NLEN; k++) {
            if (skip(LENGTHS[k].flag) || LENGTHS[k].flag == BIG) continue;
            const size_t n = LENGTHS[k].n;
            const uint64_t seed = 600 + k;
            float *p = pool_input(n, 600 + k, -1, 1), *m = pool_input(n, 610 + k, -0.1f, 0.1f);
            float *v = pool_input(n, 620 + k, 0, 0.01f), *g = pool_input(n, 630 + k, -0.5f, 0.5f);
            if (nf) inject(g, n, 640 + k), inject(p, n, 650 + k);
            float *gg = dput(g, n);
            for (long step = 1; step <= 1000; step *= 1000) check_adam(p, m, v, g, gg, step, n, seed, nf);
            float *er = pool_copy(m, n), *ge = dput(m, n);
            ref_ema(er, p, 0.999f, n), cu->ema(ge, dput(p, n), 0.999f, n);
            match(seed, nf, dget(ge, n), er, NULL, NULL, n, "ema n=%zu", n);
            float *xr = pool_copy(p, n);
            inject(xr, n, 660 + k);
            float *gx = dput(xr, n);
            ref_nan_to_num(xr, 0.5f, 1e4f, -2e4f, n), cu->nan_to_num(gx, 0.5f, 1e4f, -2e4f, n);
            match(seed, nf, dget(gx, n), xr, NULL, NULL, n, "nan_to_num n=%zu", n);
            float *sr = pool_buf(1), *gs = dout(1);
            ref_sumsq(sr, g, n), cu->sumsq(gs, gg, n);
            const double bs = bound_double_sums(sr[0], sr[0] * (1 + U), (double)n);
            match(seed, nf, dget(gs, 1), sr, &bs, NULL, 1, "sumsq n=%zu", n);
            done();
        }
}
END_TEST

int main(void) {
    const TTest *tests[] = {memory, fill_normal_op, dropout, optim};
    return cuda_run_tests("test_cuda_memory", CUDA_SUITE_BACKEND, tests, TEST_COUNT(tests));
}
