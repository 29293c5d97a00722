// bf16.h: the reduced-precision number formats of msdiff, as roundings of float32.
//
// bfloat16 is float32 with the low 16 bits of the mantissa dropped: 1 sign bit, the same 8 exponent
// bits (so the same range, subnormals included), 7 mantissa bits. TF32, what NVIDIA's tensor cores take
// for fp32 operands, keeps 10 mantissa bits: float32 with the low 13 bits dropped. Both round a float
// to the nearest value of the format, ties to the one whose last kept mantissa bit is 0 (IEEE 754's
// default rounding), so:
//   - a value past the largest finite one of the format by half a unit or more becomes infinity;
//   - subnormal floats round like normal ones (the formats share float32's exponent range);
//   - infinities stay infinities, and a NaN stays a NaN of the same sign: its top mantissa bits are
//     kept and the quiet bit is set, so a payload held only in the dropped bits cannot turn into an
//     infinity.
// These are the only roundings to these formats in the program: every backend's reduced-precision
// path rounds operands with them (or with instructions that give the same bits), and the tests check
// them against the formats' definitions.
#ifndef MSD_BF16_H
#define MSD_BF16_H

#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" { // also used by cuda/ (C++)
#endif

static inline uint32_t msd_f32_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static inline float msd_f32_from_bits(uint32_t u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

// float32 bits u rounded to nearest, ties to even, keeping the top 32 - drop bits (drop = 16: bf16,
// 13: TF32). The dropped bits come back as zeros.
static inline uint32_t msd_round_bits(uint32_t u, int drop) {
    const uint32_t low = (1u << drop) - 1;
    if ((u & 0x7f800000u) == 0x7f800000u) { // infinity or NaN: no rounding
        if (u & 0x007fffffu) return (u | 0x00400000u) & ~low; // NaN: quiet, same sign, top payload bits
        return u;
    }
    // adding half a unit minus one, plus the kept part's last bit, carries exactly when the dropped
    // bits are above half, or at half with an odd kept part; a carry out of the mantissa increments
    // the exponent, and out of the largest exponent gives infinity's bits
    const uint32_t odd = (u >> drop) & 1u;
    return (u + (low >> 1) + odd) & ~low;
}

// bfloat16 as its 16 bits, and back to float32 (exact).
static inline uint16_t msd_bf16_from_f32(float x) { return (uint16_t)(msd_round_bits(msd_f32_bits(x), 16) >> 16); }
static inline float msd_bf16_to_f32(uint16_t h) { return msd_f32_from_bits((uint32_t)h << 16); }

// x rounded to the nearest bfloat16 / TF32 value, as a float32.
static inline float msd_bf16_round(float x) { return msd_f32_from_bits(msd_round_bits(msd_f32_bits(x), 16)); }
static inline float msd_tf32_round(float x) { return msd_f32_from_bits(msd_round_bits(msd_f32_bits(x), 13)); }

#ifdef __cplusplus
}
#endif

#endif
