// cuda/dropout.cu: inverted dropout, the mask drawn on the device from the same counter RNG
// (common/core/rng.h is __host__ __device__), so every backend keeps the same elements.
//
// What differs from ref/dropout.c: nothing.
#include "common/core/rng.h"
#include "cuda.cuh"

namespace MSD_CUDA_NS {

// Four elements at a time where y and x are 16-byte aligned: draws 4q..4q+3 are the four words of
// one Philox block (common/core/rng.h's msd_rng_block), so a quad costs one block where the tail's single
// elements cost one each (msd_rng_uniform: the same word, the same float).
__device__ static inline float keep(uint32_t word, float p, float x, float keep_scale) {
    const float u = (float)(word >> 8) * (1.0f / 16777216.0f); // msd_rng_uniform's value
    return u >= p ? x * keep_scale : 0.0f;
}
__global__ static void dropout_kernel(float *y, const float *x, float p, uint64_t seed,
                                      uint64_t stream, size_t n4, size_t n) {
    const float keep_scale = 1.0f / (1.0f - p);
    CU_FOR(q, n4) {
        uint32_t w[4];
        msd_rng_block(w, seed, stream, 4 * q);
        const float4 v = ld4(x, q);
        st4(y, q, float4{keep(w[0], p, v.x, keep_scale), keep(w[1], p, v.y, keep_scale),
                         keep(w[2], p, v.z, keep_scale), keep(w[3], p, v.w, keep_scale)});
    }
    CU_FOR_TAIL(i, n4, n) y[i] = msd_rng_uniform(seed, stream, i) >= p ? x[i] * keep_scale : 0.0f;
}
void cu_dropout_forward(float *y, const float *x, float p, uint64_t seed, uint64_t stream, size_t n) {
    const size_t n4 = vec4_quads(n, aligned16(y) && aligned16(x));
    if (n) launch("dropout_forward", dropout_kernel, grid_for_quads(n4, n), CU_THREADS, y, x, p, seed, stream, n4, n);
}

// Forward was y[i] = mask[i] * x[i] / (1-p), so dx[i] = mask[i] * dy[i] / (1-p): the same kernel.
void cu_dropout_backward(float *dx, const float *dy, float p, uint64_t seed, uint64_t stream,
                         size_t n) {
    const size_t n4 = vec4_quads(n, aligned16(dx) && aligned16(dy));
    if (n)
        launch("dropout_backward", dropout_kernel, grid_for_quads(n4, n), CU_THREADS, dx, dy, p, seed, stream, n4, n);
}

} // namespace MSD_CUDA_NS
