// ref/backend.c: host memory for the reference backend, and its op table.
//
// Contract of ref/ (every file): scalar C11, no intrinsics, no fast-math, readable first.
// Reductions accumulate in double. The only parallelism is `#pragma omp parallel for` over
// independent outputs. Ops never allocate.
#include <stdlib.h>
#include <string.h>

#include "common/core/backend.h"
#include "common/core/rng.h"
#include "common/core/util.h"
#include "ref.h"

// Memory is plain host memory: upload/download/copy are memcpy.
// alloc returns NULL when memory runs out: the caller says what it was for (docs/DESIGN.md, Failure).
float *ref_alloc(size_t n) { return malloc((n ? n : 1) * sizeof(float)); }
void ref_release(float *p) { free(p); }
void ref_upload(float *dst, const float *host_src, size_t n) { memcpy(dst, host_src, n * sizeof(float)); }
void ref_download(float *host_dst, const float *src, size_t n) { memcpy(host_dst, src, n * sizeof(float)); }
void ref_copy(float *dst, const float *src, size_t n) { memmove(dst, src, n * sizeof(float)); }
void ref_fill(float *x, float value, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = value;
}
// The counter RNG is a pure function of (seed, stream, i), so every element is drawn independently.
void ref_fill_normal(float *x, uint64_t seed, uint64_t stream, size_t n) {
    // x: (n)
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) x[i] = msd_rng_normal(seed, stream, i);
}
void ref_sync(void) {}

#define REF_OP(op) .op = ref_##op,
const struct msd_backend msd_backend_ref = {.name = "ref", MSD_BACKEND_OPS(REF_OP)};
