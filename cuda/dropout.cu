// cuda/dropout.cu: inverted dropout, the mask drawn on the device from the same counter RNG
// (common/rng.h is __host__ __device__), so every backend keeps the same elements.
//
// What differs from ref/dropout.c: nothing.
#include "../common/rng.h"
#include "cuda.cuh"

namespace MSD_CUDA_NS {

__global__ static void dropout_kernel(float *y, const float *x, float p, uint64_t seed,
                                      uint64_t stream, size_t n) {
    const float keep_scale = 1.0f / (1.0f - p);
    CU_FOR(i, n) y[i] = msd_rng_uniform(seed, stream, i) >= p ? x[i] * keep_scale : 0.0f;
}
void cu_dropout_forward(float *y, const float *x, float p, uint64_t seed, uint64_t stream, size_t n) {
    if (n) launch("dropout_forward", dropout_kernel, grid_for(n), CU_THREADS, y, x, p, seed, stream, n);
}

// Forward was y[i] = mask[i] * x[i] / (1-p), so dx[i] = mask[i] * dy[i] / (1-p): the same kernel.
void cu_dropout_backward(float *dx, const float *dy, float p, uint64_t seed, uint64_t stream,
                         size_t n) {
    if (n) launch("dropout_backward", dropout_kernel, grid_for(n), CU_THREADS, dx, dy, p, seed, stream, n);
}

} // namespace MSD_CUDA_NS
