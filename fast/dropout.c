// fast/dropout.c: inverted dropout with the mask drawn from the counter RNG (see ref/dropout.c).
//
// What differs from ref/dropout.c: ref calls msd_rng_uniform per element, running a whole Philox
// block for each of its four words; here one vectorised Philox (fast/simd.h) makes 8 blocks, i.e. 32
// draws, at a time. The mask is the same function of (seed, stream, i), bit for bit, and the kept
// values are x * (1/(1-p)) in float as in ref, so the op is bit-identical to ref. A dropped NaN is 0,
// as in ref (the mask selects, it does not multiply).
#include "common/core/rng.h"
#include "fast.h"
#include "simd.h"

// Draws [i0, i0 + 32) for i0 a multiple of 32: y = keep ? x * scale : 0.
static inline void dropout32(float *y, const float *x, __m256 p, __m256 scale, uint64_t seed, uint64_t stream,
                             size_t i0) {
    __m256i u[4];
    fast_philox8(u, seed, stream, i0 / 4);
    for (int j = 0; j < 4; j++) {
        const __m256 keep = _mm256_cmp_ps(fast_uniform8(u[j]), p, _CMP_GE_OQ);
        _mm256_storeu_ps(y + 8 * j, _mm256_and_ps(keep, _mm256_mul_ps(_mm256_loadu_ps(x + 8 * j), scale)));
    }
}

// Forward and backward are the same map (y from x, dx from dy).
static void dropout(float *y, const float *x, float p, uint64_t seed, uint64_t stream, size_t n) {
    const float keep_scale = 1.0f / (1.0f - p);
    const __m256 pv = _mm256_set1_ps(p), sv = _mm256_set1_ps(keep_scale);
    const size_t n32 = n & ~(size_t)31;
#pragma omp parallel for if (n >= FAST_PAR_MIN / 4)
    for (size_t i = 0; i < n32; i += 32) dropout32(y + i, x + i, pv, sv, seed, stream, i);
    for (size_t i = n32; i < n; i++) y[i] = msd_rng_uniform(seed, stream, i) >= p ? x[i] * keep_scale : 0.0f;
}

void fast_dropout_forward(float *y, const float *x, float p, uint64_t seed, uint64_t stream, size_t n) {
    dropout(y, x, p, seed, stream, n);
}

// Forward was y[i] = mask[i] * x[i] / (1-p), so dx[i] = mask[i] * dy[i] / (1-p).
void fast_dropout_backward(float *dx, const float *dy, float p, uint64_t seed, uint64_t stream, size_t n) {
    dropout(dx, dy, p, seed, stream, n);
}
