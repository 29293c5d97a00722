// cudacheck.c: the CUDA conformance suites' device buffers, comparison and runner (see cudacheck.h).
#include "cudacheck.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/core/error.h"
#include "common/core/util.h"
#include "testutil.h"

const struct msd_backend *cu;
static bool small_only; // the emulator's cases only (always on the emulator)

bool skip(int flag) { return flag != ANY && small_only; }

const struct cuda_length LENGTHS[] = {{1, ANY},
                                      {7, ANY},
                                      {1023, ANY},
                                      {(1u << 20) + 3, DEV},
                                      {64 * 32 * 28 * 28, DEV},
                                      {(size_t)128 * 256 * 32 * 32, BIG}};
const size_t NLEN = sizeof LENGTHS / sizeof LENGTHS[0];

double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

float from_bits(uint32_t b) {
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

uint32_t bits_of(float f) {
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return b;
}

// ---------------------------------------------------------------------------------------------------
// Device buffers

#define DGUARD 80
static const uint32_t DGUARD_BITS = 0x7fc0beefu, POISON_BITS = 0x7fc0deadu;

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

// (Poisoned by an upload, not a fill: on the emulator every launch costs about a microsecond per CUDA
// thread.)
float *dout(size_t n) {
    float *d = dalloc(n), *h = xmalloc((n ? n : 1) * sizeof(float));
    const float poison = from_bits(POISON_BITS);
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) h[i] = poison;
    cu->upload(d, h, n);
    free(h);
    return d;
}

float *dput(const float *h, size_t n) {
    if (!h) return NULL;
    float *d = dalloc(n);
    cu->upload(d, h, n);
    return d;
}

float *dget(const float *d, size_t n) {
    float *h = pool_buf(n);
    cu->download(h, d, n);
    return h;
}

void done(void) {
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
    pool_done();
}

// Before each test: what a failed test left behind (the device suite runs without fork) is freed.
static void reset(void) {
    for (int i = 0; i < nd; i++) cu->release(dbufs[i].base);
    nd = 0;
    pool_reset();
}

// ---------------------------------------------------------------------------------------------------
// The comparison

static void vmatch(uint64_t seed, bool nf, const float *got, const float *want, const double *bound,
                   const double *bl2, size_t n, const char *fmt, va_list ap) {
    char what[160];
    vsnprintf(what, sizeof what, fmt, ap);
    // (Every ck_assert records its location even when it holds: loops find the first failure and
    // assert once.)
    size_t i = 0;
    while (i < n && value_kind(got[i]) == value_kind(want[i])) i++;
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
    if (!nf)
        ck_assert_msg(rel <= brel, "%s %s (seed %llu): rel L2 %.3g > %.3g", cu->name, what, (unsigned long long)seed,
                      rel, brel);
    printf("%s %-58s n=%-9zu max|err| %.2e, rel L2 %.2e (bound %.2e), worst err/bound %.3g%s\n", cu->name, what, n,
           max_abs, rel, brel, worst, nf ? " (NaN/Inf injected)" : "");
}

void match(uint64_t seed, bool nf, const float *got, const float *want, const double *bound, const double *bl2,
           size_t n, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vmatch(seed, nf, got, want, bound, bl2, n, fmt, ap);
    va_end(ap);
}

void match_sum(uint64_t seed, bool nf, const float *got, const float *want, const float *mag, double L, size_t n,
               const char *fmt, ...) {
    double *b = doubles(n), *s = doubles(n);
    gemm_bounds(b, s, want, mag, L, n);
    va_list ap;
    va_start(ap, fmt);
    vmatch(seed, nf, got, want, b, s, n, fmt, ap);
    va_end(ap);
    free(b), free(s);
}

// ---------------------------------------------------------------------------------------------------
// The runner

int cuda_run_tests(const char *name, const struct msd_backend *emu, const TTest *const *tests, size_t n) {
    if (emu) {
        cu = emu;
        small_only = true;
    } else {
        cu = msd_backend_get("cuda");
        if (!cu) {
            printf("%s: skipped: %s\n", name, msd_last_error());
            return 0;
        }
        small_only = getenv("MSD_TEST_SMALL") && strcmp(getenv("MSD_TEST_SMALL"), "0") != 0;
    }
    char suite[96];
    snprintf(suite, sizeof suite, "%s on %s", name, cu->name);
    const double t0 = now();
    // The device is not touched in Check's parent before it forks (a CUDA context does not survive a
    // fork): the device suite runs in this process. The emulator's may fork (a crash fails one test).
    // The timeout: the emulator under AddressSanitizer is slow; without fork (the device) none applies.
    const int rc = run_test_suite(&(struct test_suite){
        .name = suite, .timeout_s = 900, .tests = tests, .n = n, .setup = reset, .no_fork = !emu});
    printf("%s: %.1f s\n", suite, now() - t0);
    return rc;
}
