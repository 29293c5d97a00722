// test_bf16.c: the roundings of common/core/bf16.h against the formats' definition.
//
// The definition, written here independently of the bit trick in bf16.h: a finite float x lies
// between two neighbours of the format, lo (x with the dropped bits cleared, toward zero) and hi (the
// next value of the format away from zero, which past the largest finite one is 2^128 and stands for
// infinity). The result is the nearer of the two, in exact double arithmetic; on a tie, the one whose
// last kept mantissa bit is 0. Infinities stay; a NaN stays a NaN of its sign. Checked on named
// values (ties both ways, subnormals, the largest finite values, overflow, NaN payloads), on every
// exponent with the mantissa patterns around each boundary, and on a million random floats.
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>

#include "common/core/bf16.h"
#include "common/core/rng.h"
#include "testutil.h"

// The format's rounding of the float with bits u, by the definition above, as float32 bits.
static uint32_t nearest(uint32_t u, int drop) {
    const uint32_t unit = 1u << drop, sign = u & 0x80000000u, mag = u & 0x7fffffffu;
    if (mag > 0x7f800000u) return 0; // NaN: checked separately
    if (mag == 0x7f800000u) return u;
    const uint32_t lo = mag & ~(unit - 1), hi = lo + unit; // hi may be 0x7f800000: infinity's bits
    const double x = msd_f32_from_bits(mag), a = msd_f32_from_bits(lo);
    const double b = hi == 0x7f800000u ? ldexp(1.0, 128) : (double)msd_f32_from_bits(hi);
    const double below = x - a, above = b - x;
    uint32_t r;
    if (below < above) r = lo;
    else if (above < below) r = hi;
    else r = (lo & unit) ? hi : lo; // a tie: the even one
    return sign | r;
}

static void expect_rounding(uint32_t u, int drop) {
    const uint32_t got = msd_round_bits(u, drop);
    if ((u & 0x7fffffffu) > 0x7f800000u) { // NaN in, a NaN of the same sign out, with no low bits
        ck_assert_msg(isnan(msd_f32_from_bits(got)) && (got & 0x80000000u) == (u & 0x80000000u) &&
                          (got & ((1u << drop) - 1)) == 0,
                      "drop %d: NaN %08x rounds to %08x", drop, u, got);
        return;
    }
    const uint32_t want = nearest(u, drop);
    ck_assert_msg(got == want, "drop %d: %08x (%.9g) rounds to %08x, want %08x", drop, u,
                  (double)msd_f32_from_bits(u), got, want);
}

// Named values, with the bits the formats give them.
START_TEST(named_values) {
    const struct { uint32_t in; uint16_t bf16; } bf[] = {
        {0x3f800000, 0x3f80}, // 1
        {0x3f808000, 0x3f80}, // 1 + 2^-8: a tie, down to the even 1
        {0x3f818000, 0x3f82}, // 1 + 3 * 2^-8: a tie, up to the even neighbour
        {0x3f808001, 0x3f81}, // just past the tie
        {0xbf818000, 0xbf82}, // the same, negative
        {0x7f7f7fff, 0x7f7f}, // below half a unit past bf16's largest finite value
        {0x7f7f8000, 0x7f80}, // a tie at the top: to the even side, which is infinity
        {0x7f7fffff, 0x7f80}, // FLT_MAX overflows
        {0xff7fffff, 0xff80}, // -FLT_MAX to -inf
        {0x00000001, 0x0000}, // the smallest subnormal float, below half of bf16's smallest
        {0x00008000, 0x0000}, // a tie at bf16's smallest subnormal: to even, zero
        {0x00018000, 0x0002}, // a tie between 1 and 2 units: up to even
        {0x00008001, 0x0001}, // just past the tie
        {0x007fffff, 0x0080}, // the largest subnormal float rounds up to the smallest normal
        {0x80000000, 0x8000}, // -0 keeps its sign
        {0x7f800000, 0x7f80}, // inf
        {0xff800000, 0xff80}, // -inf
        {0x7fc00000, 0x7fc0}, // the quiet NaN
        {0x7f800001, 0x7fc0}, // a NaN whose payload is all in the dropped bits: still a NaN
        {0xffc12345, 0xffc1}, // a negative NaN keeps its sign and top payload bits
    };
    for (size_t i = 0; i < sizeof bf / sizeof bf[0]; i++) {
        const uint16_t got = msd_bf16_from_f32(msd_f32_from_bits(bf[i].in));
        ck_assert_msg(got == bf[i].bf16, "bf16(%08x) = %04x, want %04x", bf[i].in, got, bf[i].bf16);
        if ((bf[i].in & 0x7fffffffu) <= 0x7f800000u) // and the float of the result is the rounded value
            ck_assert(msd_f32_bits(msd_bf16_round(msd_f32_from_bits(bf[i].in))) == (uint32_t)got << 16);
    }
    ck_assert(msd_bf16_to_f32(0x4049) == 3.140625f && msd_bf16_to_f32(0xc000) == -2.0f);
    const struct { uint32_t in, tf32; } tf[] = {
        {0x3f801000, 0x3f800000}, // 1 + 2^-11: a tie, down to even
        {0x3f803000, 0x3f804000}, // 1 + 3 * 2^-11: a tie, up to even
        {0x7f7fefff, 0x7f7fe000}, // TF32's largest finite value, from below half a unit past it
        {0x7f7ff000, 0x7f800000}, // a tie at the top: infinity
        {0x00001000, 0x00000000}, // a tie at TF32's smallest subnormal: zero
        {0x7f800001, 0x7fc00000}, // NaN stays NaN
    };
    for (size_t i = 0; i < sizeof tf / sizeof tf[0]; i++) {
        const uint32_t got = msd_f32_bits(msd_tf32_round(msd_f32_from_bits(tf[i].in)));
        ck_assert_msg(got == tf[i].tf32, "tf32(%08x) = %08x, want %08x", tf[i].in, got, tf[i].tf32);
    }
}
END_TEST

// Every sign and exponent, with the kept mantissa at its ends and the dropped bits at and around zero,
// half and one unit: every kind of boundary the rounding has, for both formats.
START_TEST(every_exponent_at_its_boundaries) {
    const int drops[2] = {16, 13};
    for (int d = 0; d < 2; d++) {
        const int drop = drops[d];
        const uint32_t half = 1u << (drop - 1), unit = 1u << drop, kept_max = 0x007fffffu & ~(unit - 1);
        const uint32_t low[] = {0, 1, half - 1, half, half + 1, unit - 1};
        const uint32_t kept[] = {0, unit, 2 * unit, kept_max - unit, kept_max};
        for (uint32_t sign = 0; sign < 2; sign++)
            for (uint32_t e = 0; e < 256; e++)
                for (size_t k = 0; k < sizeof kept / sizeof kept[0]; k++)
                    for (size_t l = 0; l < sizeof low / sizeof low[0]; l++)
                        expect_rounding(sign << 31 | e << 23 | kept[k] | low[l], drop);
    }
}
END_TEST

// A million random bit patterns (every float equally likely, NaNs included), both formats.
START_TEST(random_floats) {
    for (uint64_t i = 0; i < 1000000; i++) {
        const uint32_t u = msd_rng_u32(1234, MSD_STREAM_TEST, i);
        expect_rounding(u, 16);
        expect_rounding(u, 13);
    }
}
END_TEST

int main(void) {
    const TTest *tests[] = {named_values, every_exponent_at_its_boundaries, random_floats};
    return run_tests("bf16", 120, tests, TEST_COUNT(tests));
}
