// ref/dropout.c: inverted dropout with a mask drawn from the counter RNG.
//
// Contract of ref/: scalar C11, no intrinsics, no fast-math, readable first; only
// `#pragma omp parallel for` over independent outputs; no allocation.
//
// Element i is kept when msd_rng_uniform(seed, stream, i) >= p and then scaled by 1/(1-p), so the
// expected output equals the input. The mask is never stored: it is a pure function of
// (seed, stream, i), and backward draws it again. Every backend draws the same mask.
#include "common/core/rng.h"
#include "ref.h"

void ref_dropout_forward(float *y, const float *x, float p, uint64_t seed, uint64_t stream, size_t n) {
    // y, x: (n)
    const float keep_scale = 1.0f / (1.0f - p);
#pragma omp parallel for
    for (size_t i = 0; i < n; i++)
        y[i] = msd_rng_uniform(seed, stream, i) >= p ? x[i] * keep_scale : 0.0f;
}

// Forward was y[i] = mask[i] * x[i] / (1-p), so dx[i] = mask[i] * dy[i] / (1-p).
void ref_dropout_backward(float *dx, const float *dy, float p, uint64_t seed, uint64_t stream,
                          size_t n) {
    // dx, dy: (n)
    const float keep_scale = 1.0f / (1.0f - p);
#pragma omp parallel for
    for (size_t i = 0; i < n; i++)
        dx[i] = msd_rng_uniform(seed, stream, i) >= p ? dy[i] * keep_scale : 0.0f;
}
