// fast/simd.h: the AVX2+FMA building blocks the files of fast/ share: tail masks, horizontal sums,
// float<->double lane conversion, a vectorised expf and an 8-block Philox4x32-10.
//
// Included only by fast/*.c, which the Makefile compiles with -mavx2 -mfma; the program checks the
// CPU before it uses the fast table (common/core/backend.c). Not for tests/ (built without those flags):
// tests reach the vector exp through fast_exp_array (fast/fast.h).
#ifndef MSD_FAST_SIMD_H
#define MSD_FAST_SIMD_H

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

// Elementwise ops over n values run on OpenMP threads only from this many values on: below it the
// fork/join costs more than the loop (a few microseconds against ~1 ns per 8 floats).
#define FAST_PAR_MIN ((size_t)1 << 15)

// Lanes [0, k) of 8 set, the rest clear (0 <= k <= 8): for maskload/maskstore of a loop's tail, which
// touch no memory in the clear lanes.
static inline __m256i fast_mask8(size_t k) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
// The same for 4 double lanes (each lane's mask is 64 bits wide).
static inline __m256i fast_mask4d(size_t k) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x((long long)k), _mm256_setr_epi64x(0, 1, 2, 3));
}

// Four floats widened to four doubles (exact).
static inline __m256d fast_load4d(const float *p) { return _mm256_cvtps_pd(_mm_loadu_ps(p)); }

// ((l0 + l1) + (l2 + l3)) of four double lanes.
static inline double fast_hsum_pd(__m256d v) {
    __m128d lo = _mm256_castpd256_pd128(v), hi = _mm256_extractf128_pd(v, 1);
    __m128d a = _mm_unpacklo_pd(lo, hi), b = _mm_unpackhi_pd(lo, hi); // (l0, l2), (l1, l3)
    __m128d s = _mm_add_pd(a, b);                                      // (l0 + l1, l2 + l3)
    return _mm_cvtsd_f64(s) + _mm_cvtsd_f64(_mm_unpackhi_pd(s, s));
}

// Sum of n floats in four double lanes with two accumulators (the chain of dependent adds would
// otherwise set the pace): it differs from ref's sequential double sum only by double rounding
// (n 2^-53 relative to the sum of |x|).
static inline double fast_sum_d(const float *x, size_t n) {
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        a0 = _mm256_add_pd(a0, fast_load4d(x + i));
        a1 = _mm256_add_pd(a1, fast_load4d(x + i + 4));
    }
    double s = fast_hsum_pd(_mm256_add_pd(a0, a1));
    for (; i < n; i++) s += x[i];
    return s;
}

// ---------------------------------------------------------------------------------------------------
// exp(x) for 8 floats, within 2 ulp of the correctly rounded value (tests/test_fast.c measures it
// against expf over [-110, 100] and at the special values).
// Range reduction x = n ln2 + r, |r| <= ln2/2, with ln2 split in a 10-bit head (n * head is exact
// for |n| < 2^14) and a tail; e^r by Cephes' degree-7 polynomial; then 2^n applied as two factors
// 2^(n/2) 2^(n - n/2) so that results down in the subnormal range (n down to -150) and up to
// overflow (n = 128 gives inf) come out right without tests on n.
// x is clamped to [-104, 89] first (e^-104 rounds to 0, e^89 overflows): NaN passes through,
// because min/max return their second operand when either is NaN.
static inline __m256 fast_exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_set1_ps(89.0f), x);
    x = _mm256_max_ps(_mm256_set1_ps(-104.0f), x);
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i ni = _mm256_cvtps_epi32(n);
    const __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
    const __m256i bias = _mm256_set1_epi32(127);
    const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
    const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}

// ---------------------------------------------------------------------------------------------------
// Philox4x32-10 for 8 consecutive blocks at once: the same rounds as msd_philox4x32_10
// (common/core/rng.h), one block per 32-bit lane, words c0..c3 in four vectors. The 32x32->64 multiplies
// run on the even lanes (mul_epu32) and on the odd lanes shifted down; the halves are blended back.

// hi and lo words of a * m for 8 lanes.
static inline void fast_mulhilo8(__m256i a, __m256i m, __m256i *hi, __m256i *lo) {
    const __m256i pe = _mm256_mul_epu32(a, m);                                            // lanes 0,2,4,6
    const __m256i po = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), _mm256_srli_epi64(m, 32)); // 1,3,5,7
    *hi = _mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xAA);
    *lo = _mm256_blend_epi32(pe, _mm256_slli_epi64(po, 32), 0xAA);
}

// The 32 draws of blocks b0 .. b0 + 7 (b0 a multiple of 8), in draw order: out[j] holds draws
// 4 b0 + 8 j .. 4 b0 + 8 j + 7.
static inline void fast_philox8(__m256i out[4], uint64_t seed, uint64_t stream, uint64_t b0) {
    // b0 % 8 == 0, so the low counter word b0 + lane never carries into the high one.
    __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32((int)(uint32_t)b0), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256i c1 = _mm256_set1_epi32((int)(uint32_t)(b0 >> 32));
    __m256i c2 = _mm256_set1_epi32((int)(uint32_t)stream);
    __m256i c3 = _mm256_set1_epi32((int)(uint32_t)(stream >> 32));
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    const __m256i M0 = _mm256_set1_epi32((int)0xD2511F53u), M1 = _mm256_set1_epi32((int)0xCD9E8D57u);
    for (int round = 0; round < 10; round++) {
        if (round > 0) k0 += 0x9E3779B9u, k1 += 0xBB67AE85u;
        __m256i hi0, lo0, hi1, lo1;
        fast_mulhilo8(c0, M0, &hi0, &lo0);
        fast_mulhilo8(c2, M1, &hi1, &lo1);
        c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32((int)k0));
        c1 = lo1;
        c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32((int)k1));
        c3 = lo0;
    }
    // 4x8 transpose: block-major words (c0..c3 of lane b) to draw order (4b + word).
    const __m256i t0 = _mm256_unpacklo_epi32(c0, c1), t1 = _mm256_unpackhi_epi32(c0, c1);
    const __m256i t2 = _mm256_unpacklo_epi32(c2, c3), t3 = _mm256_unpackhi_epi32(c2, c3);
    const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2); // b0|b4, b1|b5
    const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3); // b2|b6, b3|b7
    out[0] = _mm256_permute2x128_si256(u0, u1, 0x20);
    out[1] = _mm256_permute2x128_si256(u2, u3, 0x20);
    out[2] = _mm256_permute2x128_si256(u0, u1, 0x31);
    out[3] = _mm256_permute2x128_si256(u2, u3, 0x31);
}

// msd_rng_uniform of 8 raw words: the top 24 bits times 2^-24, exact in float.
static inline __m256 fast_uniform8(__m256i u) {
    return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(u, 8)), _mm256_set1_ps(1.0f / 16777216.0f));
}

#endif
