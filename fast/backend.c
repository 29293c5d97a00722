// fast/backend.c: host memory for the AVX2+FMA backend, and its op table.
//
// Contract of fast/ (every file): the same functions as ref/, with AVX2+FMA intrinsics and
// `#pragma omp parallel for`; no fast-math, so NaN and Inf come out as ref's. Each file says what it
// computes differently from its ref/ namesake (order of sums, float where ref uses double) and
// tests/test_fast.c holds it to bounds derived from that. Ops never allocate (the GEMM's scratch is
// the one exception, fast/gemm.h). Every function needs AVX2 and FMA: common/core/backend.c hands this
// table out only on a CPU that has them.
#include <stdlib.h>
#include <string.h>

#include "common/core/backend.h"
#include "common/core/rng.h"
#include "fast.h"
#include "simd.h"

// What differs from ref/backend.c: buffers are 64-byte aligned (a cache line; the GEMM's packed
// panels and the vector loops never straddle one at a buffer's start), and fill runs 8 lanes wide on
// the threads. aligned_alloc wants a size that is a multiple of the alignment.
float *fast_alloc(size_t n) {
    if (n > (SIZE_MAX - 63) / sizeof(float)) return NULL;
    return aligned_alloc(64, ((n ? n : 1) * sizeof(float) + 63) & ~(size_t)63);
}
void fast_release(float *p) { free(p); }
void fast_upload(float *dst, const float *host_src, size_t n) { memcpy(dst, host_src, n * sizeof(float)); }
void fast_download(float *host_dst, const float *src, size_t n) { memcpy(host_dst, src, n * sizeof(float)); }
void fast_copy(float *dst, const float *src, size_t n) { memmove(dst, src, n * sizeof(float)); }
void fast_fill(float *x, float value, size_t n) {
    const __m256 v = _mm256_set1_ps(value);
    const size_t n8 = n & ~(size_t)7;
#pragma omp parallel for if (n >= FAST_PAR_MIN)
    for (size_t i = 0; i < n8; i += 8) _mm256_storeu_ps(x + i, v);
    for (size_t i = n8; i < n; i++) x[i] = value;
}
// What differs from ref: nothing; ref's loop, here for the table (the draw is the cost, not memory).
void fast_fill_normal(float *x, uint64_t seed, uint64_t stream, size_t n) {
#pragma omp parallel for if (n >= FAST_PAR_MIN)
    for (size_t i = 0; i < n; i++) x[i] = msd_rng_normal(seed, stream, i);
}
void fast_sync(void) {}

#define FAST_OP(op) .op = fast_##op,
const struct msd_backend msd_backend_fast = {.name = "fast", MSD_BACKEND_OPS(FAST_OP)};
