// test_cuda.c: the conformance suite of cuda/: every op of the backend table against ref/ on the same
// fixed-seed inputs, forward and backward, with guard regions around every device buffer, NaN/Inf
// agreement, the gradient convention, and per-element error bounds derived from the arithmetic each
// cuda/ file says it does (its header, "What differs from ref/").
//
// The Makefile builds this file twice (the section "The CUDA suites run twice"):
//   build/tests/test_cuda_emu  -DTEST_CUDA_EMU: the kernels on cuda/emu.h's CPU emulator (every CUDA
//                              thread a fiber on one core, about 1 GFLOP/s); always runs, on the
//                              cases marked ANY: batch 1-3, the awkward shapes, one real shape per
//                              op (about 20 s; 70 s under SANITIZE=1);
//   build/tests/test_cuda      the device: every case, the real mini and cifar10 shapes at batch 64
//                              and 128 included (MSD_TEST_SMALL=1: the emulator's cases only, for
//                              compute-sanitizer). Without nvcc at build time or a device at run
//                              time it prints "test_cuda: skipped: <why>" and exits 0.
// One TCase per op group (memory, elementwise, resample, groupnorm, linear, conv, attention,
// embedding, dropout, optim, denoiser): CK_RUN_CASE=conv runs one.
//
// What is held bit for bit and what to a bound: an op whose cuda/ kernel does ref's operations in
// ref's order and precision must match bit for bit. Where the device may round differently from the
// emulator (a double exp or sin that is the device's own, a multiply-add that nvcc may fuse where the
// kernel does not force __fmul_rn/__fadd_rn), the emulator must still match bit for bit (g++ on
// x86-64 without -mfma never fuses, and calls the same libm as ref), and the device is held to a
// bound. Sums in another order are held to bounds on both, summation-order-independent ones where
// the order is the kernel's choice (a float reduction of L terms, any order and grouping, FMA or
// not: tests/tolerance.h's bound_gemm with that L). Each check prints one line, "<backend> <op>
// <shape> ...", with max |error|, relative L2 and the worst error/bound: the closing note quotes them.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/core/backend.h"
#include "common/core/error.h"
#include "common/core/rng.h"
#include "common/core/util.h"
#include "../ref/ref.h"
#include "testutil.h"
#include "tolerance.h"

#ifdef TEST_CUDA_EMU
extern const struct msd_backend msd_backend_cuda_emu;
enum { ON_DEVICE = 0 };
#else
enum { ON_DEVICE = 1 };
#endif

static const struct msd_backend *cu; // the backend under test ("cuda" or "cuda-emu")
static bool small_only;              // the emulator's cases only (always on the emulator)

// A case runs everywhere (ANY) or on the device only (DEV: too slow for the emulator's one core;
// BIG: a length of 2^25, for the memory ops and the plain elementwise ops alone, whose ref/ side is
// cheap).
enum { ANY = 0, DEV = 1, BIG = 2 };
static bool skip(int flag) { return flag != ANY && small_only; }

// ---------------------------------------------------------------------------------------------------
// Host buffers: registered, guard-checked and freed by done() (testutil's tbuf_new).

static struct {
    float *p;
    size_t n;
} hbufs[96];
static int nh;

static float *hbuf(size_t n) {
    ck_assert_int_lt(nh, 96);
    hbufs[nh].n = n;
    return hbufs[nh++].p = tbuf_new(n);
}

// Uniform in [lo, hi] times 4/3 (the draws are multiples of 2^-24, whose float sums would mostly be
// exact; scaled, every value has a full significand), drawn in parallel (the device's shapes are large).
static float *input(size_t n, uint64_t seed, float lo, float hi) {
    float *p = hbuf(n);
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) p[i] = (lo + (hi - lo) * msd_rng_uniform(seed, MSD_STREAM_TEST, i)) * (4.0f / 3.0f);
    return p;
}

static float *copy_of(const float *x, size_t n) {
    if (!x) return NULL;
    float *p = hbuf(n);
    memcpy(p, x, n * sizeof(float));
    return p;
}

// |x| elementwise: the magnitudes that a bound is made of, run through ref's own op.
static float *absv(const float *x, size_t n) {
    if (!x) return NULL;
    float *p = hbuf(n);
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) p[i] = fabsf(x[i]);
    return p;
}

static double *dbl(size_t n) { return xcalloc(n ? n : 1, sizeof(double)); }

// NaN, +Inf and -Inf at three seeded positions (fewer when n < 3).
static void inject(float *x, size_t n, uint64_t seed) {
    const float bad[3] = {NAN, INFINITY, -INFINITY};
    for (size_t k = 0; k < 3 && k < n; k++) x[msd_rng_u32(seed, MSD_STREAM_TEST + 2, k) % n] = bad[k];
}

// ---------------------------------------------------------------------------------------------------
// Device buffers. Layout: [DGUARD guard floats][n floats][DGUARD guard floats], the guards uploaded
// with a sentinel NaN that done() downloads and checks. The middle starts 320 bytes into the
// allocation: 64-byte aligned (what the arenas guarantee, common/model/unet.c), not 128 or 256, so a
// kernel may assume no more alignment than the graph gives it. An output is first filled with
// another NaN, the poison: an element the op fails to write shows as a NaN where ref has a number.

#define DGUARD 80
static const uint32_t DGUARD_BITS = 0x7fc0beefu, POISON_BITS = 0x7fc0deadu;

static float from_bits(uint32_t b) {
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}
static uint32_t bits_of(float f) {
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return b;
}

static struct {
    float *base;
    size_t n;
} dbufs[48];
static int nd;

static float *dalloc(size_t n) {
    ck_assert_int_lt(nd, 48);
    float *base = cu->alloc(n + 2 * DGUARD);
    ck_assert_msg(base != NULL, "%s: alloc of %zu floats failed", cu->name, n + 2 * DGUARD);
    float g[DGUARD];
    for (int i = 0; i < DGUARD; i++) g[i] = from_bits(DGUARD_BITS);
    cu->upload(base, g, DGUARD);
    cu->upload(base + DGUARD + n, g, DGUARD);
    dbufs[nd].base = base, dbufs[nd++].n = n;
    return base + DGUARD;
}
// An output (or a written gradient): poisoned (uploaded, not filled: on the emulator every launch
// costs about a microsecond per CUDA thread).
static float *dout(size_t n) {
    float *d = dalloc(n), *h = xmalloc((n ? n : 1) * sizeof(float));
    const float poison = from_bits(POISON_BITS);
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) h[i] = poison;
    cu->upload(d, h, n);
    free(h);
    return d;
}
// An input: host values uploaded (NULL stays NULL: a missing bias).
static float *dput(const float *h, size_t n) {
    if (!h) return NULL;
    float *d = dalloc(n);
    cu->upload(d, h, n);
    return d;
}
// What a device buffer holds, in a new host buffer.
static float *dget(const float *d, size_t n) {
    float *h = hbuf(n);
    cu->download(h, d, n);
    return h;
}

// Check every guard, host and device, and free everything.
static void done(void) {
    for (int i = 0; i < nd; i++) {
        float lo[DGUARD], hi[DGUARD];
        cu->download(lo, dbufs[i].base, DGUARD);
        cu->download(hi, dbufs[i].base + DGUARD + dbufs[i].n, DGUARD);
        int bad_lo = -1, bad_hi = -1;
        for (int k = 0; k < DGUARD; k++) {
            if (bad_lo < 0 && bits_of(lo[DGUARD - 1 - k]) != DGUARD_BITS) bad_lo = k;
            if (bad_hi < 0 && bits_of(hi[k]) != DGUARD_BITS) bad_hi = k;
        }
        ck_assert_msg(bad_lo < 0 && bad_hi < 0,
                      "%s: device buffer %d (n = %zu): guard overwritten %s offset %s%d", cu->name, i, dbufs[i].n,
                      bad_lo >= 0 ? "before the buffer at" : "after the buffer at", bad_lo >= 0 ? "-" : "n+",
                      bad_lo >= 0 ? bad_lo + 1 : bad_hi);
        cu->release(dbufs[i].base);
    }
    nd = 0;
    for (int i = 0; i < nh; i++) {
        char what[32];
        snprintf(what, sizeof what, "host buffer %d", i);
        tbuf_check(hbufs[i].p, hbufs[i].n, what);
        tbuf_free(hbufs[i].p);
    }
    nh = 0;
}

// Before each test: what a failed test left behind (the device suite runs without fork) is freed.
static void reset(void) {
    for (int i = 0; i < nd; i++) cu->release(dbufs[i].base);
    for (int i = 0; i < nh; i++) tbuf_free(hbufs[i].p);
    nd = nh = 0;
}

// ---------------------------------------------------------------------------------------------------
// The comparison. NaN/Inf agreement first, at every position. Then, with bound NULL, every value
// bit-identical; otherwise |got[i] - want[i]| <= bound[i] wherever want and the bound are finite, and
// the relative L2 error within that of bl2 (the statistical bounds of the GEMM-like ops; NULL: the
// bounds themselves, which the per-element check already implies).

static int kind(double v) { return isnan(v) ? 0 : isinf(v) ? (v > 0 ? 1 : 2) : 3; }

static void match(const char *what, uint64_t seed, bool nf, const float *got, const float *want,
                  const double *bound, const double *bl2, size_t n) {
    // (Every ck_assert records its location even when it holds: loops find the first failure and
    // assert once.)
    size_t i = 0;
    while (i < n && kind(got[i]) == kind(want[i])) i++;
    ck_assert_msg(i == n, "%s %s (seed %llu): [%zu] got %g%s, ref %g: NaN/Inf disagree", cu->name, what,
                  (unsigned long long)seed, i, got[i < n ? i : 0],
                  i < n && bits_of(got[i]) == POISON_BITS ? " (the poison: never written)" : "", want[i < n ? i : 0]);
    if (!bound) {
        for (i = 0; i < n && (isnan(want[i]) || bits_of(got[i]) == bits_of(want[i])); i++) {}
        ck_assert_msg(i == n, "%s %s (seed %llu): [%zu] got %.9g, ref %.9g: not bit-identical", cu->name, what,
                      (unsigned long long)seed, i, got[i < n ? i : 0], want[i < n ? i : 0]);
        printf("%s %-58s n=%-9zu bit-identical%s\n", cu->name, what, n, nf ? " (NaN/Inf injected)" : "");
        return;
    }
    double worst = 0, max_abs = 0, num = 0, den = 0, bnum = 0;
    size_t bad = n;
    for (i = 0; i < n; i++) {
        if (!isfinite(want[i]) || !isfinite(bound[i])) continue; // the kinds agree (above)
        const double e = fabs((double)got[i] - want[i]), b2 = bl2 ? bl2[i] : bound[i];
        if (!(e <= bound[i]) && bad == n) bad = i;
        if (bound[i] > 0) worst = fmax(worst, e / bound[i]);
        max_abs = fmax(max_abs, e);
        num += e * e, den += (double)want[i] * want[i], bnum += b2 * b2;
    }
    ck_assert_msg(bad == n, "%s %s (seed %llu): [%zu] got %.9g, ref %.9g: error %.3g > bound %.3g", cu->name, what,
                  (unsigned long long)seed, bad, got[bad < n ? bad : 0], want[bad < n ? bad : 0],
                  bad < n ? fabs((double)got[bad] - want[bad]) : 0.0, bad < n ? bound[bad] : 0.0);
    const double rel = den > 0 ? sqrt(num / den) : sqrt(num), brel = den > 0 ? sqrt(bnum / den) : sqrt(bnum);
    if (!nf) ck_assert_msg(rel <= brel, "%s %s (seed %llu): rel L2 %.3g > %.3g", cu->name, what, (unsigned long long)seed,
                           rel, brel);
    printf("%s %-58s n=%-9zu max|err| %.2e, rel L2 %.2e (bound %.2e), worst err/bound %.3g%s\n", cu->name, what, n,
           max_abs, rel, brel, worst, nf ? " (NaN/Inf injected)" : "");
}

// Bit for bit on the emulator, to `bound` on the device (see the top of the file).
static const double *device_bound(const double *bound) { return ON_DEVICE ? bound : NULL; }

// A value computed in double on each side, the two double results within dd of each other, each
// rounded once to float: |fl(a) - fl(b)| <= |a - b| + u |a| + u |b| <= (1 + u) dd + 2u (1 + 2u) |want|
// (|b| <= |want| / (1 - u)), plus 2^-149 where the results are subnormal floats (each rounding then
// errs by up to 2^-150, absolutely).
static double bound_rounded_pair(double want, double dd) {
    return (1 + U) * dd + 2 * U * (1 + 2 * U) * fabs(want) + 0x1p-149;
}

// For an output that is a float reduction of L terms in the kernel's order: bound_gemm (rigorous, per
// element) and bound_gemm_stat (for the L2 norm), tests/tolerance.h; mag is ref's op on |inputs|.
static void match_sum(const char *what, uint64_t seed, bool nf, const float *got, const float *want,
                      const float *mag, double L, size_t n) {
    double *b = dbl(n), *s = dbl(n);
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) {
        const double w = isfinite(want[i]) ? fabs(want[i]) : 0.0;
        b[i] = bound_gemm(L, mag[i], w);
        s[i] = bound_gemm_stat(L, mag[i], w);
    }
    match(what, seed, nf, got, want, b, s, n);
    free(b), free(s);
}

static size_t nonfinite_count(const float *x, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += !isfinite(x[i]);
    return k;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

// Lengths of the elementwise ops: vector tails, one element, a grid-stride loop that wraps (cuda.cuh
// caps a launch at 4096 blocks of 256 threads, 2^20 threads: 2^20 + 3 leaves three for a second
// turn), and the real sizes of the mini and cifar10 activations at batch 64 and 128.
static const struct {
    size_t n;
    int flag;
} LENGTHS[] = {{1, ANY}, {7, ANY}, {1023, ANY}, {(1u << 20) + 3, DEV}, {64 * 32 * 28 * 28, DEV},
               {(size_t)128 * 256 * 32 * 32, BIG}};
#define NLEN (sizeof LENGTHS / sizeof LENGTHS[0])
#define WRAP_N ((1u << 20) + 5)

// ---------------------------------------------------------------------------------------------------
// Memory: upload/download/copy round trips are bit for bit (NaN payloads, -0, subnormals kept), fill
// writes exactly n values, copies of 0 floats and in place touch nothing, release(NULL) is allowed.

START_TEST(memory) {
    ck_assert_str_eq(cu->name, ON_DEVICE ? "cuda" : "cuda-emu");
#define SET(op) ck_assert_msg(cu->op != NULL, "%s." #op " is NULL", cu->name);
    MSD_BACKEND_OPS(SET)
#undef SET
    for (size_t k = 0; k < NLEN; k++) {
        if (skip(LENGTHS[k].flag)) continue;
        const size_t n = LENGTHS[k].n;
        float *h = input(n, 10 + k, -1, 1);
        const float special[] = {-0.0f, 1e-40f, -1e-45f, INFINITY, -INFINITY, from_bits(0x7fc12345u), from_bits(0xffc00001u)};
        for (size_t s = 0; s < 7 && s < n; s++) h[(s * 7919) % n] = special[s];
        char what[64];
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
        snprintf(what, sizeof what, "memory ops, n = %zu", n);
        printf("%s %-58s n=%-9zu bit-identical\n", cu->name, what, n);
        done();
    }
    if (!ON_DEVICE) { // the emulator: the wrap of a grid-stride loop once, with fill (one launch here costs ~1 s)
        const size_t n = WRAP_N;
        float *h = input(n, 19, -1, 1), *d = dput(h, n);
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
    float *want = hbuf(n), *d = dout(n);
    ref_fill_normal(want, seed, stream, n);
    cu->fill_normal(d, seed, stream, n);
    double *b = dbl(n);
    for (size_t i = 0; i < n; i++) b[i] = bound_rounded_pair(want[i], 6 * UD * fabs(want[i]) + 36 * UD);
    match("fill_normal", seed, false, dget(d, n), want, device_bound(b), NULL, n);
    free(b);
    done();
}
END_TEST

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
    float *yr = hbuf(n), *dr = hbuf(n);
    ref_silu_forward(yr, x, n), ref_silu_backward(dr, dy, x, n);
    float *dx_ = dput(x, n), *ddy = dput(dy, n), *dy_ = dout(n), *dd_ = dout(n);
    cu->silu_forward(dy_, dx_, n), cu->silu_backward(dd_, ddy, dx_, n);
    float *yc = dget(dy_, n), *dc = dget(dd_, n);
    double *b = dbl(n), *bd = dbl(n);
    for (size_t i = 0; i < n; i++) {
        const double xi = x[i], t = exp(-xi), s = 1 / (1 + t), g = 1 + xi * (1 - s);
        b[i] = bound_rounded_pair(yr[i], 9 * UD * fabs(yr[i]) * (1 + 2 * U));
        bd[i] = bound_rounded_pair(dr[i], UD * fabs(dy[i] * s) * (16 * fabs(g) + 10 * (xi > 38 ? 0.0 : fabs(xi))));
    }
    char what[96];
    snprintf(what, sizeof what, "silu_forward %s", range);
    match(what, seed, nf, yc, yr, device_bound(b), NULL, n);
    snprintf(what, sizeof what, "silu_backward %s", range);
    match(what, seed, nf, dc, dr, device_bound(bd), NULL, n);
    // in place (y == x, dx == dy) gives the same values as out of place
    cu->silu_forward(dx_, dx_, n), cu->silu_backward(ddy, ddy, dput(x, n), n);
    match("silu_forward in place", seed, nf, dget(dx_, n), yc, NULL, NULL, n);
    match("silu_backward in place", seed, nf, dget(ddy, n), dc, NULL, NULL, n);
    // x one float past a 16-byte boundary: the kernels go four at a time only where every pointer is
    // aligned, so this takes the one-at-a-time path; the same values
    if (n > 1) {
        float *gx1 = dput(x, n), *gy1 = dout(n - 1), *gd1 = dout(n - 1);
        cu->silu_forward(gy1, gx1 + 1, n - 1), cu->silu_backward(gd1, dput(dy + 1, n - 1), gx1 + 1, n - 1);
        match("silu_forward x unaligned", seed, nf, dget(gy1, n - 1), yc + 1, NULL, NULL, n - 1);
        match("silu_backward x unaligned", seed, nf, dget(gd1, n - 1), dc + 1, NULL, NULL, n - 1);
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
            float *x = input(n, 100 + k, -r, r), *dy = input(n, 200 + k, -1, 1);
            if (nf) inject(x, n, 300 + k), inject(dy, n, 400 + k);
            t_silu(x, dy, n, k < NLEN ? "[-8, 8]" : "[-120, 120]", 100 + k, nf);
        }
    const float sx[] = {0.0f, -0.0f, 1e-40f, -1e-40f, 88.7f, -88.7f, 89.5f, -89.5f, -103.9f, -104.5f, -150.0f,
                        150.0f, 3.4e38f, -3.4e38f, -1.2784645f, INFINITY, -INFINITY, NAN};
    const size_t n = sizeof sx / sizeof sx[0];
    float *x = copy_of(sx, n), *ones = hbuf(n);
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
            float *a = input(na, 10 + k, -1, 1), *b = input(nb, 20 + k, -1, 1), *dy = input(ny, 30 + k, -1, 1);
            if (nf) inject(a, na, 40 + k), inject(b, nb, 50 + k), inject(dy, ny, 60 + k);
            float *yr = hbuf(ny), *dar = hbuf(na), *dbr = hbuf(nb);
            ref_concat_forward(yr, a, b, N, CA, CB, HW), ref_concat_backward(dar, dbr, dy, N, CA, CB, HW);
            float *ga = dput(a, na), *gb = dput(b, nb), *gdy = dput(dy, ny), *gy = dout(ny);
            float *gda = dout(na), *gdb = dout(nb), *gda2 = dout(na), *gdb2 = dout(nb);
            cu->concat_forward(gy, ga, gb, N, CA, CB, HW);
            cu->concat_backward(gda, gdb, gdy, N, CA, CB, HW);
            cu->concat_backward(gda2, NULL, gdy, N, CA, CB, HW), cu->concat_backward(NULL, gdb2, gdy, N, CA, CB, HW);
            char what[96];
            snprintf(what, sizeof what, "concat_forward (%d,%d+%d,%d)", N, CA, CB, HW);
            match(what, 10 + k, nf, dget(gy, ny), yr, NULL, NULL, ny);
            snprintf(what, sizeof what, "concat_backward (%d,%d+%d,%d) da", N, CA, CB, HW);
            match(what, 10 + k, nf, dget(gda, na), dar, NULL, NULL, na);
            snprintf(what, sizeof what, "concat_backward (%d,%d+%d,%d) db", N, CA, CB, HW);
            match(what, 10 + k, nf, dget(gdb, nb), dbr, NULL, NULL, nb);
            snprintf(what, sizeof what, "concat_backward (%d,%d+%d,%d) da alone", N, CA, CB, HW);
            match(what, 10 + k, nf, dget(gda2, na), dar, NULL, NULL, na);
            snprintf(what, sizeof what, "concat_backward (%d,%d+%d,%d) db alone", N, CA, CB, HW);
            match(what, 10 + k, nf, dget(gdb2, nb), dbr, NULL, NULL, nb);
            done();
        }
}
END_TEST

START_TEST(linear_combinations) {
    for (int nf = 0; nf < 2; nf++)
        for (size_t k = 0; k < NLEN; k++) {
            if (skip(LENGTHS[k].flag)) continue;
            const size_t n = LENGTHS[k].n;
            float *a = input(n, 70 + k, -2, 2), *b = input(n, 80 + k, -2, 2);
            if (nf) inject(a, n, 90 + k), inject(b, n, 95 + k);
            float *yr = hbuf(n), *ga = dput(a, n), *gb = dput(b, n), *gy = dout(n);
            char what[96];
            ref_add(yr, a, b, n), cu->add(gy, ga, gb, n);
            snprintf(what, sizeof what, "add n=%zu", n);
            match(what, 70 + k, nf, dget(gy, n), yr, NULL, NULL, n);
            ref_scale(yr, a, -0.3f, n), cu->scale(gy, ga, -0.3f, n);
            snprintf(what, sizeof what, "scale n=%zu", n);
            match(what, 70 + k, nf, dget(gy, n), yr, NULL, NULL, n);
            float *zr = copy_of(b, n);
            ref_axpby(zr, 0.7f, a, -1.3f, n), cu->axpby(gb, 0.7f, ga, -1.3f, n);
            snprintf(what, sizeof what, "axpby n=%zu", n);
            match(what, 70 + k, nf, dget(gb, n), zr, NULL, NULL, n);
            ref_add(zr, zr, a, n), cu->add(gb, gb, ga, n); // in place
            snprintf(what, sizeof what, "add in place n=%zu", n);
            match(what, 70 + k, nf, dget(gb, n), zr, NULL, NULL, n);
            ref_scale(zr, zr, 1.7f, n), cu->scale(gb, gb, 1.7f, n);
            snprintf(what, sizeof what, "scale in place n=%zu", n);
            match(what, 70 + k, nf, dget(gb, n), zr, NULL, NULL, n);
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
            float *x = input(n, 110 + k, -1, 1), *bias = input(nc, 120 + k, -1, 1), *dy = input(n, 130 + k, -1, 1);
            float *A = hbuf(nc);
            ref_bias_add_backward(A, absv(dy, n), N, C, HW);
            if (nf) inject(x, n, 140 + k), inject(bias, nc, 150 + k), inject(dy, n, 160 + k);
            float *yr = hbuf(n), *dr = hbuf(nc);
            ref_bias_add_forward(yr, x, bias, N, C, HW), ref_bias_add_backward(dr, dy, N, C, HW);
            float *gx = dput(x, n), *gbias = dput(bias, nc), *gy = dout(n), *gdy = dput(dy, n), *gdb = dout(nc);
            cu->bias_add_forward(gy, gx, gbias, N, C, HW), cu->bias_add_backward(gdb, gdy, N, C, HW);
            double *b = dbl(nc);
            for (size_t i = 0; i < nc; i++) b[i] = bound_double_sums(dr[i], A[i] * (1 + U), HW);
            char what[96];
            snprintf(what, sizeof what, "bias_add_forward (%d,%d,%d)", N, C, HW);
            match(what, 110 + k, nf, dget(gy, n), yr, NULL, NULL, n);
            snprintf(what, sizeof what, "bias_add_backward (%d,%d,%d)", N, C, HW);
            match(what, 110 + k, nf, dget(gdb, nc), dr, b, NULL, nc);
            cu->bias_add_forward(gx, gx, gbias, N, C, HW); // in place
            snprintf(what, sizeof what, "bias_add_forward in place (%d,%d,%d)", N, C, HW);
            match(what, 110 + k, nf, dget(gx, n), yr, NULL, NULL, n);
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
            float *x = input(n, 170 + k, -1, 1), *z = input(n, 180 + k, -3, 3);
            float *a = input(N, 190 + k, -2, 2), *b = input(N, 200 + k, -2, 2);
            if (nf) inject(x, n, 210 + k), inject(z, n, 220 + k), inject(a, N, 230 + k);
            float *yr = hbuf(n), *cr = hbuf(n), *er = hbuf(N);
            ref_scale_rows(yr, x, a, N, M), ref_combine_rows(cr, a, x, b, z, N, M), ref_sqerr_rows(er, x, z, N, M);
            float *gx = dput(x, n), *gz = dput(z, n), *ga = dput(a, N), *gb = dput(b, N);
            float *gy = dout(n), *gc = dout(n), *ge = dout(N);
            cu->scale_rows(gy, gx, ga, N, M), cu->combine_rows(gc, ga, gx, gb, gz, N, M), cu->sqerr_rows(ge, gx, gz, N, M);
            double *bd = dbl(N);
            for (int i = 0; i < N; i++) bd[i] = bound_double_sums(er[i], er[i] * (1 + U), (double)M);
            char what[96];
            snprintf(what, sizeof what, "scale_rows (%d,%zu)", N, M);
            match(what, 170 + k, nf, dget(gy, n), yr, NULL, NULL, n);
            snprintf(what, sizeof what, "combine_rows (%d,%zu)", N, M);
            match(what, 170 + k, nf, dget(gc, n), cr, NULL, NULL, n);
            snprintf(what, sizeof what, "sqerr_rows (%d,%zu)", N, M);
            match(what, 170 + k, nf, dget(ge, N), er, bd, NULL, N);
            cu->combine_rows(gx, ga, gx, gb, gz, N, M), cu->scale_rows(gz, gz, ga, N, M); // in place
            snprintf(what, sizeof what, "combine_rows in place (%d,%zu)", N, M);
            match(what, 170 + k, nf, dget(gx, n), cr, NULL, NULL, n);
            ref_scale_rows(yr, z, a, N, M);
            snprintf(what, sizeof what, "scale_rows in place (%d,%zu)", N, M);
            match(what, 170 + k, nf, dget(gz, n), yr, NULL, NULL, n);
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
            const int N = S[k][0], C = S[k][1], H = S[k][2], W = S[k][3];
            const size_t nbig = (size_t)N * C * H * W, nsmall = nbig / 4;
            float *x = input(nbig, 240 + k, -1, 1), *xs = input(nsmall, 250 + k, -1, 1);
            float *dys = input(nsmall, 260 + k, -1, 1), *dy = input(nbig, 270 + k, -1, 1);
            if (nf) inject(x, nbig, 280 + k), inject(xs, nsmall, 281 + k), inject(dys, nsmall, 282 + k),
                    inject(dy, nbig, 283 + k);
            float *r1 = hbuf(nsmall), *r2 = hbuf(nbig), *r3 = hbuf(nbig), *r4 = hbuf(nsmall);
            ref_down2_forward(r1, x, N, C, H, W), ref_down2_backward(r2, dys, N, C, H, W);
            ref_up2_forward(r3, xs, N, C, H / 2, W / 2), ref_up2_backward(r4, dy, N, C, H / 2, W / 2);
            float *g1 = dout(nsmall), *g2 = dout(nbig), *g3 = dout(nbig), *g4 = dout(nsmall);
            cu->down2_forward(g1, dput(x, nbig), N, C, H, W), cu->down2_backward(g2, dput(dys, nsmall), N, C, H, W);
            cu->up2_forward(g3, dput(xs, nsmall), N, C, H / 2, W / 2);
            cu->up2_backward(g4, dput(dy, nbig), N, C, H / 2, W / 2);
            char what[96];
            snprintf(what, sizeof what, "down2_forward (%d,%d,%d,%d)", N, C, H, W);
            match(what, 240 + k, nf, dget(g1, nsmall), r1, NULL, NULL, nsmall);
            snprintf(what, sizeof what, "down2_backward (%d,%d,%d,%d)", N, C, H, W);
            match(what, 240 + k, nf, dget(g2, nbig), r2, NULL, NULL, nbig);
            snprintf(what, sizeof what, "up2_forward (%d,%d,%d,%d)", N, C, H / 2, W / 2);
            match(what, 240 + k, nf, dget(g3, nbig), r3, NULL, NULL, nbig);
            snprintf(what, sizeof what, "up2_backward (%d,%d,%d,%d)", N, C, H / 2, W / 2);
            match(what, 240 + k, nf, dget(g4, nsmall), r4, NULL, NULL, nsmall);
            done();
        }
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// GroupNorm. cuda/norm.cu sums in double as ref does, in another order, and forms y and dx with ref's
// double expressions from the float statistics (nvcc may fuse their multiply-adds). Per group of
// M = (C/G) HW values, with ref's saved mean m and rstd r (floats), xh = (x - m) r and A = mean |x|:
// - mean: each side's double sum is within gamd(M + 1) A of the exact mean, and each rounds once:
//   b_mean = d + u (2 |m| + d), d = 2 gamd(M + 2) A.
// - rstd: the two-pass variance on each side, sum (x - mu_side)^2 / M = var + (mu - mu_side)^2 plus
//   its rounding (relative gamd(M + 3)); then + eps, sqrt, the division and one float rounding on each
//   side: b_rstd = r (2u (1 + 2u) + 2 gamd(M + 6) + d^2 / (var + eps)).
// - y: both sides evaluate gamma ((x - m') r') + beta in double from their own m', r', within
//   b_mean, b_rstd of ref's: the difference |gamma| (r + b_rstd) b_mean + |gamma (x - m)| b_rstd, plus
//   three double roundings on each side, 2 gamd(3) (|gamma xh| + |beta|); then the float roundings
//   (bound_rounded_pair). Where the statistics came out bit-identical, the emulator evaluates the very
//   same expression as ref: y is held bit for bit there (a zero bound).
// Backward, both sides from ref's saved statistics. With dg = dy gamma, MG = mean dg, MGX = mean dg xh
// over the group (double) and A1, A2 the means of |dg|, |dg xh|:
// - cuda forms the two group means from per-channel sums s1 = sum_p dy, s2 = sum_p dy (x - m) and
//   gamma_c (HW + CG roundings on a term's path, and the products), ref from the elements: the means
//   differ by dmg = 2 gamd(M + CG + 4) A1, dmgx = 2 gamd(M + CG + 6) A2;
// - dx = r (dy gamma - MG - xh MGX), the same double expression on both sides: r (dmg + |xh| dmgx) from
//   the means, 2 gamd(6) r (|dg| + |MG| + |xh MGX|) from the six roundings of each side (fewer where
//   fused); then the float roundings.
// dgamma, dbeta: D0 + one double sum over N HW terms on each side (bound_accumulated, as fast/).
static void t_groupnorm(int N, int C, int HW, int G, uint64_t seed, bool nf) {
    const int CG = C / G;
    const size_t n = (size_t)N * C * HW, M = (size_t)CG * HW, ng = (size_t)N * G;
    float *x = input(n, seed, -1, 3), *gamma = input(C, seed + 1, -1.5f, 1.5f), *beta = input(C, seed + 2, -1, 1);
    float *dy = input(n, seed + 3, -1, 1), *dg0 = input(C, seed + 4, -1, 1), *db0 = input(C, seed + 5, -1, 1);
    if (nf) inject(x, n, seed + 6), inject(dy, n, seed + 7);
    const float eps = 1e-6f;
    float *yr = hbuf(n), *mr = hbuf(ng), *rr = hbuf(ng);
    ref_groupnorm_forward(yr, mr, rr, x, gamma, beta, N, C, HW, G, eps);
    float *dxr = hbuf(n), *dgr = copy_of(dg0, C), *dbr = copy_of(db0, C);
    ref_groupnorm_backward(dxr, dgr, dbr, dy, mr, rr, x, gamma, N, C, HW, G);

    float *gx = dput(x, n), *ggamma = dput(gamma, C), *gbeta = dput(beta, C), *gdy = dput(dy, n);
    float *gy = dout(n), *gm = dout(ng), *gr = dout(ng);
    cu->groupnorm_forward(gy, gm, gr, gx, ggamma, gbeta, N, C, HW, G, eps);
    // backward from ref's saved statistics: the dx written (poisoned first), dgamma, dbeta accumulated
    float *gmr = dput(mr, ng), *grr = dput(rr, ng), *gdx = dout(n), *gdg = dput(dg0, C), *gdb = dput(db0, C);
    cu->groupnorm_backward(gdx, gdg, gdb, gdy, gmr, grr, gx, ggamma, N, C, HW, G);
    // dx NULL: the parameter gradients alone, the same
    float *gdg2 = dput(dg0, C), *gdb2 = dput(db0, C);
    cu->groupnorm_backward(NULL, gdg2, gdb2, gdy, gmr, grr, gx, ggamma, N, C, HW, G);
    float *yc = dget(gy, n), *mc = dget(gm, ng), *rc = dget(gr, ng);

    double *bm = dbl(ng), *br = dbl(ng), *by = dbl(n), *bx = dbl(n), *bg = dbl(C), *bb = dbl(C);
#pragma omp parallel for
    for (size_t q = 0; q < ng; q++) { // (NaN bounds where NaN was injected: those are skipped)
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
        const double dmg = 2 * gamd(M + CG + 4) * A1, dmgx = 2 * gamd(M + CG + 6) * A2;
        const bool same = !ON_DEVICE && bits_of(mc[q]) == bits_of(mr[q]) && bits_of(rc[q]) == bits_of(rr[q]);
        for (size_t i = 0; i < M; i++) {
            const size_t j = base + i;
            const int c = (int)(g * CG + i / HW);
            const double xh = (x[j] - m) * r, gx = gamma[c] * xh, dg = (double)dy[j] * gamma[c];
            by[j] = same ? 0.0
                         : bound_rounded_pair(yr[j], fabs(gamma[c]) * (r + br[q]) * bm[q] +
                                                         fabs(gamma[c] * (x[j] - m)) * br[q] +
                                                         2 * gamd(3) * (fabs(gx) + fabs(beta[c])));
            bx[j] = bound_rounded_pair(dxr[j], r * (dmg + fabs(xh) * dmgx) +
                                                   2 * gamd(6) * r * (fabs(dg) + fabs(MG) + fabs(xh * MGX)));
        }
    }
#pragma omp parallel for
    for (int c = 0; c < C; c++) {
        double Ag = 0, Ab = 0;
        for (int s = 0; s < N; s++)
            for (int p = 0; p < HW; p++) {
                const size_t j = ((size_t)s * C + c) * HW + p, q = (size_t)s * G + c / CG;
                Ag += fabs(dy[j] * ((x[j] - (double)mr[q]) * rr[q])), Ab += fabs(dy[j]);
            }
        bg[c] = bound_accumulated(dgr[c], dg0[c], Ag, (double)N * HW + 4);
        bb[c] = bound_accumulated(dbr[c], db0[c], Ab, (double)N * HW + 4);
    }
    char what[96];
    snprintf(what, sizeof what, "groupnorm (%d,%d,%d) G=%d mean", N, C, HW, G);
    match(what, seed, nf, mc, mr, bm, NULL, ng);
    snprintf(what, sizeof what, "groupnorm (%d,%d,%d) G=%d rstd", N, C, HW, G);
    match(what, seed, nf, rc, rr, br, NULL, ng);
    snprintf(what, sizeof what, "groupnorm_forward (%d,%d,%d) G=%d y", N, C, HW, G);
    match(what, seed, nf, yc, yr, by, NULL, n);
    snprintf(what, sizeof what, "groupnorm_backward (%d,%d,%d) G=%d dx", N, C, HW, G);
    match(what, seed, nf, dget(gdx, n), dxr, bx, NULL, n);
    snprintf(what, sizeof what, "groupnorm_backward (%d,%d,%d) G=%d dgamma +=", N, C, HW, G);
    match(what, seed, nf, dget(gdg, C), dgr, bg, NULL, C);
    snprintf(what, sizeof what, "groupnorm_backward (%d,%d,%d) G=%d dbeta +=", N, C, HW, G);
    match(what, seed, nf, dget(gdb, C), dbr, bb, NULL, C);
    snprintf(what, sizeof what, "groupnorm_backward (%d,%d,%d) G=%d dgamma, dx NULL", N, C, HW, G);
    match(what, seed, nf, dget(gdg2, C), dgr, bg, NULL, C);
    snprintf(what, sizeof what, "groupnorm_backward (%d,%d,%d) G=%d dbeta, dx NULL", N, C, HW, G);
    match(what, seed, nf, dget(gdb2, C), dbr, bb, NULL, C);
    free(bm), free(br), free(by), free(bx), free(bg), free(bb);
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
// the count allows.) mag comes from ref's
// op on the absolute values (plus |D0| for a gradient accumulated into D0).

static float *plus_abs(const float *mag, const float *acc0, size_t n) {
    float *p = hbuf(n);
    for (size_t i = 0; i < n; i++) p[i] = mag[i] + fabsf(acc0[i]);
    return p;
}

static void check_linear(int N, int IN, int OUT, int bias, uint64_t seed, int nonfinite) {
    const size_t nx = (size_t)N * IN, nw = (size_t)OUT * IN, ny = (size_t)N * OUT;
    float *x = input(nx, seed, -1, 1), *w = input(nw, seed + 1, -1, 1), *b = bias ? input(OUT, seed + 2, -1, 1) : NULL;
    float *dy = input(ny, seed + 3, -1, 1), *dw0 = input(nw, seed + 4, -1, 1), *db0 = input(OUT, seed + 5, -1, 1);
    if (nonfinite) x[nx / 2] = NAN, dy[ny - 1] = INFINITY;
    char name[128];
    const int len = snprintf(name, sizeof name, "linear (%d,%d)->%d%s", N, IN, OUT, bias ? "" : " nobias");
    char *tail = name + len;
    const size_t room = sizeof name - len;
    float *ax = absv(x, nx), *aw = absv(w, nw), *ab = absv(b, OUT), *ady = absv(dy, ny);
    float *yr = hbuf(ny), *my = hbuf(ny), *dxr = hbuf(nx), *mdx = hbuf(nx), *mdw = hbuf(nw), *mdb = hbuf(OUT);
    float *dwr = copy_of(dw0, nw), *dbr = copy_of(db0, OUT);
    ref_linear_forward(yr, x, w, b, N, IN, OUT), ref_linear_forward(my, ax, aw, ab, N, IN, OUT);
    ref_linear_backward(dxr, dwr, dbr, dy, x, w, N, IN, OUT), ref_linear_backward(mdx, mdw, mdb, ady, ax, aw, N, IN, OUT);

    float *gx = dput(x, nx), *gw = dput(w, nw), *gb = dput(b, OUT), *gdy = dput(dy, ny), *gy = dout(ny);
    float *gdx = dout(nx), *gdw = dput(dw0, nw), *gdb = dput(db0, OUT), *gdw2 = dput(dw0, nw);
    cu->linear_forward(gy, gx, gw, gb, N, IN, OUT);
    cu->linear_backward(gdx, gdw, gdb, gdy, gx, gw, N, IN, OUT);
    cu->linear_backward(NULL, gdw2, NULL, gdy, gx, gw, N, IN, OUT);
    const bool nf = nonfinite;
    snprintf(tail, room, " y");
    match_sum(name, seed, nf, dget(gy, ny), yr, my, IN + 2, ny);
    snprintf(tail, room, " dx");
    match_sum(name, seed, nf, dget(gdx, nx), dxr, mdx, OUT + 1, nx);
    snprintf(tail, room, " dw +=");
    match_sum(name, seed, nf, dget(gdw, nw), dwr, plus_abs(mdw, dw0, nw), N + 2, nw);
    snprintf(tail, room, " db +=");
    match_sum(name, seed, nf, dget(gdb, OUT), dbr, plus_abs(mdb, db0, OUT), N + 2, OUT);
    snprintf(tail, room, " dw, dx and db NULL");
    match_sum(name, seed, nf, dget(gdw2, nw), dwr, plus_abs(mdw, dw0, nw), N + 2, nw);
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
    float *x = input(nx, seed, -1, 1), *w = input(nw, seed + 1, -1, 1), *b = s.bias ? input(s.OC, seed + 2, -1, 1) : NULL;
    float *dy = input(ny, seed + 3, -1, 1), *dw0 = input(nw, seed + 4, -1, 1), *db0 = input(s.OC, seed + 5, -1, 1);
    if (nonfinite == 1) x[0] = NAN, x[nx - 1 - (size_t)s.W / 2] = INFINITY;
    if (nonfinite == 2) {
        const size_t mid = (size_t)(s.H / 2) * s.W + s.W / 2;
        dy[mid] = NAN, dy[ny - HW + mid] = -INFINITY;
    }
    char name[128];
    const int len = snprintf(name, sizeof name, "conv%dx%d (%d,%d,%d,%d)->%d%s%s", s.K, s.K, s.N, s.C, s.H, s.W,
                             s.OC, s.bias ? "" : " nobias",
                             nonfinite == 1 ? " nan/inf in x" : nonfinite == 2 ? " nan/inf in dy" : "");
    char *tail = name + len;
    const size_t room = sizeof name - len;

    // the device first (it runs while ref computes), then ref and the magnitudes
    float *gx = dput(x, nx), *gw = dput(w, nw), *gb = dput(b, s.OC), *gdy = dput(dy, ny), *gy = dout(ny);
    float *gdx = dout(nx), *gdw = dput(dw0, nw), *gdb = dput(db0, s.OC), *gdw2 = dput(dw0, nw);
    cu->conv2d_forward(gy, gx, gw, gb, s.N, s.C, s.H, s.W, s.OC, s.K);
    cu->conv2d_backward(gdx, gdw, gdb, gdy, gx, gw, s.N, s.C, s.H, s.W, s.OC, s.K);
    cu->conv2d_backward(NULL, gdw2, NULL, gdy, gx, gw, s.N, s.C, s.H, s.W, s.OC, s.K);
    const double t1 = now();
    float *ax = absv(x, nx), *aw = absv(w, nw), *ab = absv(b, s.OC), *ady = absv(dy, ny);
    float *yr = hbuf(ny), *my = hbuf(ny), *dxr = hbuf(nx), *mdx = hbuf(nx), *mdw = hbuf(nw), *mdb = hbuf(s.OC);
    float *dwr = copy_of(dw0, nw), *dbr = copy_of(db0, s.OC);
    ref_conv2d_forward(yr, x, w, b, s.N, s.C, s.H, s.W, s.OC, s.K);
    ref_conv2d_forward(my, ax, aw, ab, s.N, s.C, s.H, s.W, s.OC, s.K);
    ref_conv2d_backward(dxr, dwr, dbr, dy, x, w, s.N, s.C, s.H, s.W, s.OC, s.K);
    ref_conv2d_backward(mdx, mdw, mdb, ady, ax, aw, s.N, s.C, s.H, s.W, s.OC, s.K);
    const double t2 = now();
    const bool nf = nonfinite != 0;
    const double NHW = (double)s.N * HW;
    snprintf(tail, room, " y");
    match_sum(name, seed, nf, dget(gy, ny), yr, my, (double)s.C * KK + 2, ny);
    snprintf(tail, room, " dx");
    match_sum(name, seed, nf, dget(gdx, nx), dxr, mdx, (double)s.OC * KK + 1, nx);
    snprintf(tail, room, " dw +=");
    match_sum(name, seed, nf, dget(gdw, nw), dwr, plus_abs(mdw, dw0, nw), NHW + 2, nw);
    snprintf(tail, room, " db +=");
    match_sum(name, seed, nf, dget(gdb, s.OC), dbr, plus_abs(mdb, db0, s.OC), NHW + 2, s.OC);
    snprintf(tail, room, " dw, dx and db NULL");
    match_sum(name, seed, nf, dget(gdw2, nw), dwr, plus_abs(mdw, dw0, nw), NHW + 2, nw);
    if (nonfinite == 1) // the non-finite inputs must reach the outputs, or the check above proves nothing
        ck_assert_msg(nonfinite_count(yr, ny) && nonfinite_count(dwr, nw), "%s: no NaN/Inf reached y, dw", name);
    if (nonfinite == 2)
        ck_assert_msg(nonfinite_count(dxr, nx) && nonfinite_count(dwr, nw) && nonfinite_count(dbr, s.OC),
                      "%s: no NaN/Inf reached dx, dw, db", name);
    done();
    if (now() - t0 > 1.0)
        printf("  (%s: inputs and %s %.1f s, ref %.1f s, checks %.1f s)\n", name, cu->name, t1 - t0, t2 - t1, now() - t2);
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
// sums in block_sum's tree order. So, with g = gam (rigorous) or gam_stat (L2), M_ij = s sum_c
// |q_ci k_cj|, and chains of L roundings (logits C + 1, a HW, dv HW, dW C, dq and dk HW + 1):
// - logits: |l_cuda - l_ref| <= E_ij = g(C + 1) (1 + 2u) M_ij + 2u |l_ij| (ref rounds once too).
// - w: a softmax moves by a factor within exp(+-2 E_i), E_i = max_j E_ij, when its logits move by E_i;
//   both sides then evaluate it in double (exp within a double ulp, sums within gamd(HW + 2)) and
//   round once to float: T_ij = 2 E_i + 2u + 8 UD + 2 gamd(HW + 2), |w_cuda - w_ref| <= rho w,
//   rho = expm1(T) / (1 - T) (+ 2^-148 for subnormal weights).
// - a = v w^T from cuda's w: sum_j |v_cj| rho_ij w_ij + g(HW) sum_j |v_cj| (1 + rho_ij) w_ij + u |a|.
// Backward, both from ref's saved w:
// - dv = da w: g(HW) sum_i w_ij |da_ci| + u |dv|.
// - dW = da^T v in float: D_ij = g(C) sum_c |da_ci v_cj|; r_i = sum_j w_ij dW_ij in double on both
//   sides from their own dW: R_i = sum_j w_ij D_ij + 2 gamd(HW + C + 2) sum_j w_ij |dW_ij|;
//   dl = w (dW - r), rounded to float by cuda: F_ij = w_ij (D_ij + R_i) + 2u w_ij |dW_ij - r_i|.
// - dq = s k dl^T: s sum_j |k_cj| F_ij + g(HW + 1) s sum_j |k_cj dl_ij| + 2u |dq|; dk alike.
// Products of two error terms (relative size below 1e-9) are dropped.

typedef double (*growth_fn)(double L);

struct attn_bounds {
    double *w, *a, *dv, *dq, *dk; // per element, for one growth function
};

static void attention_bounds(growth_fn g, const float *qkv, const float *wr, const float *da, const float *ar,
                             const float *dqkvr, int N, int C, int HW, struct attn_bounds *B) {
    const double s = 1.0 / sqrt((double)C);
    const size_t HH = (size_t)HW * HW, ld = 3 * (size_t)HW;
#pragma omp parallel for schedule(dynamic, 1)
    for (int n = 0; n < N; n++) {
        double *rho = xmalloc(HH * sizeof(double)), *dW = xmalloc(HH * sizeof(double));
        double *D = xmalloc(HH * sizeof(double)), *dl = xmalloc(HH * sizeof(double)), *F = xmalloc(HH * sizeof(double));
        double *l = xmalloc(HW * sizeof(double));
        const float *q = qkv + (size_t)n * 3 * C * HW, *k = q + HW, *v = q + 2 * HW; // row c at +3c HW
        const float *w = wr + (size_t)n * HH, *dan = da + (size_t)n * C * HW;
        for (int i = 0; i < HW; i++) {
            double Ei = 0.0;
            for (int j = 0; j < HW; j++) {
                double dot = 0.0, mag = 0.0, dd = 0.0, dm = 0.0;
                for (int c = 0; c < C; c++) {
                    dot += (double)q[c * ld + i] * k[c * ld + j], mag += fabs((double)q[c * ld + i] * k[c * ld + j]);
                    dd += (double)dan[(size_t)c * HW + i] * v[c * ld + j];
                    dm += fabs((double)dan[(size_t)c * HW + i] * v[c * ld + j]);
                }
                l[j] = s * dot;
                Ei = fmax(Ei, g(C + 1) * (1 + 2 * U) * s * mag + 2 * U * fabs(l[j]));
                dW[(size_t)i * HW + j] = dd;
                D[(size_t)i * HW + j] = g(C) * dm;
            }
            const double T = 2 * Ei + 2 * U + 8 * UD + 2 * gamd(HW + 2);
            for (int j = 0; j < HW; j++) rho[(size_t)i * HW + j] = expm1(T) / (1 - T);
        }
        for (int i = 0; i < HW; i++) { // softmax backward: r, dl, F
            double r = 0.0, R = 0.0, Rm = 0.0;
            for (int j = 0; j < HW; j++) {
                const size_t ij = (size_t)i * HW + j;
                r += w[ij] * dW[ij], R += w[ij] * D[ij], Rm += w[ij] * fabs(dW[ij]);
            }
            R += 2 * gamd(HW + C + 2) * Rm;
            for (int j = 0; j < HW; j++) {
                const size_t ij = (size_t)i * HW + j;
                dl[ij] = w[ij] * (dW[ij] - r);
                F[ij] = w[ij] * (D[ij] + R) + 2 * U * w[ij] * fabs(dW[ij] - r);
                B->w[n * HH + ij] = rho[ij] * w[ij] + 0x1p-148;
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
                B->a[ci + i] = ba + g(HW) * bam + U * fabs(ar[ci + i]);
                B->dv[ci + i] = g(HW) * bdv + U * fabs(dqkvr[qi + 2 * HW + i]);
                B->dq[ci + i] = s * bq + g(HW + 1) * s * bqm + 2 * U * fabs(dqkvr[qi + i]);
                B->dk[ci + i] = s * bk + g(HW + 1) * s * bkm + 2 * U * fabs(dqkvr[qi + HW + i]);
            }
        }
        free(rho), free(dW), free(D), free(dl), free(F), free(l);
    }
}

static struct attn_bounds bounds_new(size_t nw, size_t na) {
    struct attn_bounds b = {dbl(nw), dbl(na), dbl(na), dbl(na), dbl(na)};
    return b;
}
static void bounds_free(struct attn_bounds *b) { free(b->w), free(b->a), free(b->dv), free(b->dq), free(b->dk); }

// The rows j (0 q, 1 k, 2 v) of dqkv: (N, 3C, HW) gathered into a new (N, C, HW) host buffer.
static float *plane(const float *dqkv, int j, int N, int C, int HW) {
    float *p = hbuf((size_t)N * C * HW);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            memcpy(p + ((size_t)n * C + c) * HW, dqkv + ((size_t)n * 3 * C + 3 * c + j) * HW, HW * sizeof(float));
    return p;
}

static void check_attention(int N, int C, int HW, uint64_t seed, int nonfinite) {
    const size_t nq = (size_t)N * 3 * C * HW, na = (size_t)N * C * HW, nw = (size_t)N * HW * HW;
    const double t0 = now();
    float *qkv = input(nq, seed, -1.5f, 1.5f), *da = input(na, seed + 1, -1, 1); // logits of order one
    if (nonfinite) qkv[(size_t)HW / 2] = NAN, qkv[nq - 1] = INFINITY;           // a q of sample 0, a v of the last
    float *gq = dput(qkv, nq), *gda = dput(da, na), *ga = dout(na), *gw = dout(nw), *gd = dout(nq);
    cu->attention_forward(ga, gw, gq, N, C, HW);
    float *ar = hbuf(na), *wr = hbuf(nw), *dr = hbuf(nq);
    ref_attention_forward(ar, wr, qkv, N, C, HW);
    cu->attention_backward(gd, gda, dput(wr, nw), gq, N, C, HW); // from ref's saved w
    ref_attention_backward(dr, da, wr, qkv, N, C, HW);
    const double t1 = now();
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
    match(name, seed, nonfinite, dget(gw, nw), wr, bm.w, bs.w, nw);
    snprintf(name + len, room, " a");
    match(name, seed, nonfinite, dget(ga, na), ar, bm.a, bs.a, na);
    const float *dc = dget(gd, nq);
    const double *bmq[3] = {bm.dq, bm.dk, bm.dv}, *bsq[3] = {bs.dq, bs.dk, bs.dv};
    for (int j = 0; j < 3; j++) {
        snprintf(name + len, room, " d%c", "qkv"[j]);
        match(name, seed, nonfinite, plane(dc, j, N, C, HW), plane(dr, j, N, C, HW), bmq[j], bsq[j], na);
    }
    bounds_free(&bm), bounds_free(&bs);
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
            float *c = input(N, 700 + k, -5, 5), *yr = hbuf(n), *gy = dout(n);
            for (int i = 0; i < N; i += 7) c[i] *= 1000.0f; // EDM's c_noise reaches a few hundred
            if (nf) inject(c, N, 710 + k);
            ref_posemb_forward(yr, c, N, C);
            cu->posemb_forward(gy, dput(c, N), N, C);
            double *b = dbl(n);
            for (int s = 0; s < N; s++)
                for (int i = 0; i < half; i++) {
                    const double arg = c[s] * pow(1.0 / 10000.0, (double)i / (half - 1));
                    b[(size_t)s * C + i] = bound_rounded_pair(yr[(size_t)s * C + i], 8 * UD * fabs(arg) + 6 * UD);
                    b[(size_t)s * C + half + i] = bound_rounded_pair(yr[(size_t)s * C + half + i], 8 * UD * fabs(arg) + 6 * UD);
                }
            char what[64];
            snprintf(what, sizeof what, "posemb_forward (%d,%d)", N, C);
            match(what, 700 + k, nf, dget(gy, n), yr, device_bound(b), NULL, n);
            free(b);
            done();
        }
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
                float *x = input(n, 500 + k, -1, 1);
                if (nf) inject(x, n, 510 + k);
                float *yr = hbuf(n), *dr = hbuf(n), *gx = dput(x, n), *gy = dout(n), *gd = dout(n);
                ref_dropout_forward(yr, x, P[v], seed, stream, n), ref_dropout_backward(dr, x, P[v], seed, stream, n);
                cu->dropout_forward(gy, gx, P[v], seed, stream, n), cu->dropout_backward(gd, gx, P[v], seed, stream, n);
                char what[96];
                snprintf(what, sizeof what, "dropout_forward p=%g seed %llx stream %llx", P[v], (unsigned long long)seed,
                         (unsigned long long)stream);
                match(what, seed, nf, dget(gy, n), yr, NULL, NULL, n);
                snprintf(what, sizeof what, "dropout_backward p=%g seed %llx stream %llx", P[v], (unsigned long long)seed,
                         (unsigned long long)stream);
                match(what, seed, nf, dget(gd, n), dr, NULL, NULL, n);
                cu->dropout_forward(gx, gx, P[v], seed, stream, n); // in place
                match("dropout_forward in place", seed, nf, dget(gx, n), yr, NULL, NULL, n);
                done();
            }
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// Optimiser ops. Adam, EMA and nan_to_num: ref's operations in ref's precision and order (cuda/optim.cu
// rounds the float ones one by one with __fmul_rn/__fadd_rn; the double part has no multiply-add to
// fuse): bit for bit. sumsq: one double sum of exact squares on each side (bound_double_sums), its
// output in device memory.
START_TEST(optim) {
    for (int nf = 0; nf < 2; nf++)
        for (size_t k = 0; k < NLEN; k++) {
            if (skip(LENGTHS[k].flag) || LENGTHS[k].flag == BIG) continue;
            const size_t n = LENGTHS[k].n;
            float *p = input(n, 600 + k, -1, 1), *m = input(n, 610 + k, -0.1f, 0.1f), *v = input(n, 620 + k, 0, 0.01f);
            float *g = input(n, 630 + k, -0.5f, 0.5f);
            if (nf) inject(g, n, 640 + k), inject(p, n, 650 + k);
            float *gg = dput(g, n);
            char what[64];
            for (long step = 1; step <= 1000; step *= 1000) {
                float *pr = copy_of(p, n), *mr = copy_of(m, n), *vr = copy_of(v, n);
                float *gp = dput(p, n), *gm = dput(m, n), *gv = dput(v, n);
                ref_adam(pr, mr, vr, g, 2e-3f, 0.9f, 0.999f, 1e-8f, step, n);
                cu->adam(gp, gm, gv, gg, 2e-3f, 0.9f, 0.999f, 1e-8f, step, n);
                snprintf(what, sizeof what, "adam step %ld p n=%zu", step, n);
                match(what, 600 + k, nf, dget(gp, n), pr, NULL, NULL, n);
                snprintf(what, sizeof what, "adam step %ld m n=%zu", step, n);
                match(what, 600 + k, nf, dget(gm, n), mr, NULL, NULL, n);
                snprintf(what, sizeof what, "adam step %ld v n=%zu", step, n);
                match(what, 600 + k, nf, dget(gv, n), vr, NULL, NULL, n);
            }
            float *er = copy_of(m, n), *ge = dput(m, n);
            ref_ema(er, p, 0.999f, n), cu->ema(ge, dput(p, n), 0.999f, n);
            snprintf(what, sizeof what, "ema n=%zu", n);
            match(what, 600 + k, nf, dget(ge, n), er, NULL, NULL, n);
            float *xr = copy_of(p, n);
            inject(xr, n, 660 + k);
            float *gx = dput(xr, n);
            ref_nan_to_num(xr, 0.5f, 1e4f, -2e4f, n), cu->nan_to_num(gx, 0.5f, 1e4f, -2e4f, n);
            snprintf(what, sizeof what, "nan_to_num n=%zu", n);
            match(what, 600 + k, nf, dget(gx, n), xr, NULL, NULL, n);
            float *sr = hbuf(1), *gs = dout(1);
            ref_sumsq(sr, g, n), cu->sumsq(gs, gg, n);
            const double bs = bound_double_sums(sr[0], sr[0] * (1 + U), (double)n);
            snprintf(what, sizeof what, "sumsq n=%zu", n);
            match(what, 600 + k, nf, dget(gs, 1), sr, &bs, NULL, 1);
            done();
        }
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// The posterior mean. cuda/denoiser.cu computes ref's distances bit for bit (ref's four lanes, no FMA),
// ref's d_min and ref's weight expression; exp is the device's (within a double ulp, as glibc's) or,
// on the emulator, ref's own. So w is bit for bit on the emulator, and on the device within
// bound_rounded_pair(w, 4 UD w) (the same double argument, two exps within 2 UD w of the exact value).
// Z and the weighted sums are double sums in another order, of exact products w_k y_k: each side's
// m = sum w y / Z is within gamd(K + 1) (sum_k w_k |y_k| / Z + |m|) of the exact value on its own
// weights, and weights that differ by bw_k move m by at most sum_k bw_k |y_k - m| / (Z - sum_k bw_k);
// then the float roundings (bound_rounded_pair).
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
            float *data = input((size_t)K * M, 800 + k, -1, 1), *z = hbuf(nz), *sigma = hbuf(N);
            fill_normal(z, nz, 810 + k, 1.0f);
            for (int q = 0; q < N; q++) {
                sigma[q] = SIG[q % 9];
                for (size_t i = 0; i < M; i++) // z = y_k + sigma eps, for the image k = q mod K
                    z[q * M + i] = data[(size_t)(q % K) * M + i] + sigma[q] * z[q * M + i];
            }
            if (nf) inject(z, nz, 820 + k), inject(data, (size_t)K * M, 830 + k);
            float *mr = hbuf(nz), *wr = hbuf(nk), *gm = dout(nz), *gw = dout(nk);
            ref_posterior_mean(mr, wr, z, data, sigma, N, K, M);
            cu->posterior_mean(gm, gw, dput(z, nz), dput(data, (size_t)K * M), dput(sigma, N), N, K, M);
            double *bw = dbl(nk), *bm = dbl(nz);
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
            char what[64];
            snprintf(what, sizeof what, "posterior_mean (%d,%d,%zu) m", N, K, M);
            match(what, 800 + k, nf, dget(gm, nz), mr, bm, NULL, nz);
            snprintf(what, sizeof what, "posterior_mean (%d,%d,%zu) w", N, K, M);
            match(what, 800 + k, nf, dget(gw, nk), wr, device_bound(bw), NULL, nk);
            free(bw), free(bm);
            done();
        }
}
END_TEST

// ---------------------------------------------------------------------------------------------------

static TCase *tcase(Suite *s, const char *name, const TTest *test) {
    TCase *tc = tcase_create(name);
    tcase_set_timeout(tc, 900); // the emulator under AddressSanitizer is slow; without fork (the device) none applies
    tcase_add_checked_fixture(tc, reset, NULL);
    tcase_add_test(tc, test);
    suite_add_tcase(s, tc);
    return tc;
}

int main(void) {
#ifdef TEST_CUDA_EMU
    cu = &msd_backend_cuda_emu;
    small_only = true;
#else
    cu = msd_backend_get("cuda");
    if (!cu) {
        printf("test_cuda: skipped: %s\n", msd_last_error());
        return 0;
    }
    small_only = getenv("MSD_TEST_SMALL") && strcmp(getenv("MSD_TEST_SMALL"), "0") != 0;
#endif
    Suite *s = suite_create(cu->name);
    tcase(s, "memory", memory);
    tcase(s, "fill_normal", fill_normal_op);
    TCase *ew = tcase(s, "elementwise", silu);
    tcase_add_test(ew, concat);
    tcase_add_test(ew, linear_combinations);
    tcase_add_test(ew, bias_add);
    tcase_add_test(ew, rows);
    tcase(s, "resample", resample);
    tcase(s, "groupnorm", groupnorm);
    tcase(s, "linear", linear);
    tcase(s, "conv", conv);
    tcase(s, "attention", attention);
    tcase(s, "embedding", posemb);
    tcase(s, "dropout", dropout);
    tcase(s, "optim", optim);
    tcase(s, "denoiser", posterior_mean);
    SRunner *sr = srunner_create(s);
    // The device is not touched in Check's parent before it forks (a CUDA context does not survive a
    // fork): the device suite runs in this process. The emulator's may fork (a crash fails one test).
    if (ON_DEVICE) srunner_set_fork_status(sr, CK_NOFORK);
    const double t0 = now();
    srunner_run_all(sr, CK_NORMAL);
    const int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    printf("%s: %.1f s\n", cu->name, now() - t0);
    return failed ? 1 : 0;
}
