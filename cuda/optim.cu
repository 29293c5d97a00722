// cuda/optim.cu: Adam, EMA, nan_to_num and the sum of squares, each one kernel.
//
// What differs from ref/optim.c: nothing in Adam, EMA and nan_to_num (the float products and sums
// are rounded one by one with __fmul_rn/__fadd_rn, as ref rounds them, so no fused multiply-add
// changes a bit). sumsq sums in double, in a fixed order of its own (strided per thread, then trees).
#include <float.h>

#include "cuda.cuh"

namespace MSD_CUDA_NS {

__global__ static void adam_kernel(float *p, float *m, float *v, const float *g, float beta1,
                                   float beta2, float eps, double step_size, double sqrt_bc2,
                                   size_t n) {
    CU_FOR(i, n) {
        const float gi = g[i];
        // m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
        const float mi = __fadd_rn(__fmul_rn(beta1, m[i]), __fmul_rn(1.0f - beta1, gi));
        const float vi = __fadd_rn(__fmul_rn(beta2, v[i]), __fmul_rn(__fmul_rn(1.0f - beta2, gi), gi));
        m[i] = mi;
        v[i] = vi;
        double denom = sqrt((double)vi) / sqrt_bc2 + eps;
        p[i] = (float)(p[i] - step_size * mi / denom);
    }
}
void cu_adam(float *p, float *m, float *v, const float *g, float lr, float beta1, float beta2,
             float eps, long step, size_t n) {
    // the bias corrections, once, on the host, as ref computes them
    const double bc1 = 1.0 - pow(beta1, (double)step), bc2 = 1.0 - pow(beta2, (double)step);
    if (n) launch("adam", adam_kernel, grid_for(n), CU_THREADS, p, m, v, g, beta1, beta2, eps, lr / bc1, sqrt(bc2), n);
}

// ema = p + beta (ema - p)
__global__ static void ema_kernel(float *ema, const float *p, float beta, size_t n) {
    CU_FOR(i, n) ema[i] = __fadd_rn(p[i], __fmul_rn(beta, ema[i] - p[i]));
}
void cu_ema(float *ema, const float *p, float beta, size_t n) {
    if (n) launch("ema", ema_kernel, grid_for(n), CU_THREADS, ema, p, beta, n);
}

__global__ static void nan_to_num_kernel(float *x, float nan, float posinf, float neginf, size_t n) {
    CU_FOR(i, n) {
        const float v = x[i];
        if (v != v) x[i] = nan;
        else if (v > FLT_MAX) x[i] = posinf;
        else if (v < -FLT_MAX) x[i] = neginf;
    }
}
void cu_nan_to_num(float *x, float nan, float posinf, float neginf, size_t n) {
    if (n) launch("nan_to_num", nan_to_num_kernel, grid_for(n), CU_THREADS, x, nan, posinf, neginf, n);
}

// Two launches: blocks stride over x (grid-stride) and leave one partial each in scratch, then one
// block adds the partials. The grid depends on n alone, so the order of the sums is fixed.
__global__ static void sumsq_part_kernel(double *part, const float *x, size_t n) {
    double acc = 0.0;
    CU_FOR(i, n) acc += (double)x[i] * x[i];
    acc = block_sum(acc);
    if (threadIdx.x == 0) part[blockIdx.x] = acc;
}
__global__ static void sumsq_finish_kernel(float *out, const double *part, unsigned parts) {
    double acc = 0.0;
    for (unsigned i = threadIdx.x; i < parts; i += blockDim.x) acc += part[i];
    acc = block_sum(acc);
    if (threadIdx.x == 0) out[0] = (float)acc;
}
void cu_sumsq(float *out, const float *x, size_t n) {
    const unsigned g = grid_for((n + 7) / 8), parts = g < 1024 ? g : 1024; // >= 8 terms a thread
    double *part = (double *)cu_scratch(2 * (size_t)parts);
    launch("sumsq", sumsq_part_kernel, parts, CU_THREADS, part, x, n);
    launch("sumsq_finish", sumsq_finish_kernel, 1, 1024, out, part, parts);
}

} // namespace MSD_CUDA_NS
