// test_rng.c: the counter RNG. Philox4x32-10 against Random123's published known-answer vectors,
// the mapping of (seed, stream, index) to draws, and the moments of uniform and normal draws.
#include <check.h>
#include <math.h>
#include <stdlib.h>

#include "common/core/rng.h"
#include "../ref/ref.h"
#include "testutil.h"

// Random123 kat_vectors, "philox4x32 10" lines: counter (4 words), key (2 words), expected (4 words).
static const uint32_t KAT[3][10] = {
    {0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000,
     0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
    {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff,
     0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
    {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0,
     0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1},
};

START_TEST(philox_known_answers) {
    for (int t = 0; t < 3; t++) {
        uint32_t out[4];
        msd_philox4x32_10(out, KAT[t], KAT[t] + 4);
        for (int w = 0; w < 4; w++)
            ck_assert_msg(out[w] == KAT[t][6 + w], "vector %d word %d: got %08x, want %08x", t, w, out[w],
                          KAT[t][6 + w]);
    }
}
END_TEST

// (seed, stream, index) -> draw goes through the documented counter/key layout.
START_TEST(draw_mapping) {
    const uint64_t seed = 0x0123456789abcdefull, stream = 0xfedcba9876543210ull;
    for (uint64_t index = 0; index < 4 * 1000003ull; index += 999983) {
        uint64_t block = index >> 2;
        uint32_t ctr[4] = {(uint32_t)block, (uint32_t)(block >> 32), (uint32_t)stream,
                           (uint32_t)(stream >> 32)};
        uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
        uint32_t out[4];
        msd_philox4x32_10(out, ctr, key);
        ck_assert_msg(msd_rng_u32(seed, stream, index) == out[index & 3], "index %llu",
                      (unsigned long long)index);
    }
    // distinct seeds and streams give distinct draws
    ck_assert(msd_rng_u32(1, 1, 0) != msd_rng_u32(2, 1, 0));
    ck_assert(msd_rng_u32(1, 1, 0) != msd_rng_u32(1, 2, 0));
    // the draw is a pure function: same arguments, same value, whatever was drawn before
    float a = msd_rng_normal(7, 3, 12345);
    for (int i = 0; i < 100; i++) (void)msd_rng_normal(7, 3, (uint64_t)i);
    ck_assert(a == msd_rng_normal(7, 3, 12345));
}
END_TEST

// Uniform draws lie in [0, 1), on the 2^-24 grid, with mean 1/2 and variance 1/12 within 5 standard
// errors over 10^6 draws.
START_TEST(uniform_moments) {
    const int n = 1000000;
    double sum = 0, sumsq = 0;
    for (int i = 0; i < n; i++) {
        float u = msd_rng_uniform(42, MSD_STREAM_TEST, (uint64_t)i);
        ck_assert_msg(u >= 0.0f && u < 1.0f, "draw %d = %.9g outside [0, 1)", i, u);
        ck_assert_msg(u * 16777216.0f == floorf(u * 16777216.0f), "draw %d not on the 2^-24 grid", i);
        sum += u;
        sumsq += (double)u * u;
    }
    double mean = sum / n, var = sumsq / n - mean * mean;
    // the sample variance has standard error sqrt((mu4 - sigma^4) / n) = sqrt((1/80 - 1/144) / n)
    double se_mean = sqrt(1.0 / 12 / n), se_var = sqrt(1.0 / 180 / n);
    ck_assert_msg(fabs(mean - 0.5) < 5 * se_mean, "mean %.6f, want 0.5 +- %.2g", mean, 5 * se_mean);
    ck_assert_msg(fabs(var - 1.0 / 12) < 5 * se_var, "variance %.6f, want %.6f +- %.2g", var, 1.0 / 12,
                  5 * se_var);
}
END_TEST

// Normal draws: mean 0 and variance 1 within 5 standard errors over 10^6 draws (the standard error
// of the mean is 1/sqrt(n), of the variance sqrt(2/n)); all finite; the tails are populated.
START_TEST(normal_moments) {
    const int n = 1000000;
    double sum = 0, sumsq = 0;
    int beyond3 = 0;
    for (int i = 0; i < n; i++) {
        float z = msd_rng_normal(2024, MSD_STREAM_TEST, (uint64_t)i);
        ck_assert_msg(isfinite(z), "draw %d is not finite", i);
        sum += z;
        sumsq += (double)z * z;
        beyond3 += fabsf(z) > 3.0f;
    }
    double mean = sum / n, var = sumsq / n - mean * mean;
    ck_assert_msg(fabs(mean) < 5 / sqrt((double)n), "mean %.6f, want 0 +- %.2g", mean, 5 / sqrt((double)n));
    ck_assert_msg(fabs(var - 1) < 5 * sqrt(2.0 / n), "variance %.6f, want 1 +- %.2g", var,
                  5 * sqrt(2.0 / n));
    // P(|z| > 3) = 0.0026998; binomial standard deviation sqrt(n p (1-p)) ~ 52
    double expect = 0.0026998 * n, sd = sqrt(expect * (1 - 0.0026998));
    ck_assert_msg(fabs(beyond3 - expect) < 5 * sd, "%d draws beyond 3 sigma, want %.0f +- %.0f", beyond3,
                  expect, 5 * sd);
}
END_TEST

// The backend op fill_normal (ref's, the oracle of the others) draws element i from (seed, stream, i):
// the whole 64-bit seed and stream reach the generator, and the first element is index 0.
START_TEST(fill_normal_op) {
    enum { N = 37 };
    float x[N], y[N];
    const uint64_t seed = 0xabcdef0123ull, stream = ((uint64_t)9 << 36) | 8;
    ref_fill_normal(x, seed, stream, N);
    int same = 0;
    for (int i = 0; i < N; i++) same += x[i] == msd_rng_normal(seed, stream, (uint64_t)i);
    ck_assert_int_eq(same, N);
    ref_fill_normal(y, seed, stream ^ ((uint64_t)1 << 36), N); // the stream's high half changed
    same = 0;
    for (int i = 0; i < N; i++) same += x[i] == y[i];
    ck_assert_int_lt(same, N);
    ref_fill_normal(y, seed ^ ((uint64_t)1 << 35), stream, N); // the seed's high half changed
    same = 0;
    for (int i = 0; i < N; i++) same += x[i] == y[i];
    ck_assert_int_lt(same, N);
}
END_TEST

int main(void) {
    const TTest *tests[] = {
        philox_known_answers, draw_mapping, uniform_moments, normal_moments, fill_normal_op,
    };
    return run_tests("rng", 60, tests, TEST_COUNT(tests));
}
