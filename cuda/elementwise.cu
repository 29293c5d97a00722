// cuda/elementwise.cu: SiLU, channel concat/split, add, scale, axpby, per-(sample, channel) bias, and
// the per-sample row ops, as grid-stride kernels (cuda.cuh's CU_FOR; silu, add, scale, axpby and
// bias_add_forward four elements at a time where their pointers are 16-byte aligned).
//
// What differs from ref/elementwise.c: nothing in the arithmetic except the sums and, on the device,
// SiLU: computed in double as ref does (the op is memory-bound, so double costs nothing visible), but
// with CUDA's exp, and nvcc fuses the backward's 1 + x (1 - s) into one multiply-add. bias_add_backward
// and sqerr_rows sum in double by block_sum's tree, not left to right.
#include "cuda.cuh"

namespace MSD_CUDA_NS {

// ---------------------------------------------------------------------------------------------------
// SiLU

// The kernels below go four elements at a time where their pointers allow (cuda.cuh's ld4, st4,
// CU_FOR_TAIL): the same arithmetic on each element as the one-at-a-time tail.

__device__ static inline float silu(float x) { return (float)(x / (1.0 + exp(-(double)x))); }
__global__ static void silu_forward_kernel(float *y, const float *x, size_t n4, size_t n) {
    CU_FOR(q, n4) {
        const float4 v = ld4(x, q);
        st4(y, q, float4{silu(v.x), silu(v.y), silu(v.z), silu(v.w)});
    }
    CU_FOR_TAIL(i, n4, n) y[i] = silu(x[i]);
}
void cu_silu_forward(float *y, const float *x, size_t n) {
    const size_t n4 = vec4_quads(n, aligned16(y) && aligned16(x));
    if (n) launch("silu_forward", silu_forward_kernel, grid_for_quads(n4, n), CU_THREADS, y, x, n4, n);
}

// Forward was y = x s(x), so dy/dx = s (1 + x (1 - s)).
__device__ static inline float silu_grad(float dy, float x) {
    const double s = 1.0 / (1.0 + exp(-(double)x));
    return (float)(dy * s * (1.0 + x * (1.0 - s)));
}
__global__ static void silu_backward_kernel(float *dx, const float *dy, const float *x, size_t n4, size_t n) {
    CU_FOR(q, n4) {
        const float4 g = ld4(dy, q), v = ld4(x, q);
        st4(dx, q, float4{silu_grad(g.x, v.x), silu_grad(g.y, v.y), silu_grad(g.z, v.z), silu_grad(g.w, v.w)});
    }
    CU_FOR_TAIL(i, n4, n) dx[i] = silu_grad(dy[i], x[i]);
}
void cu_silu_backward(float *dx, const float *dy, const float *x, size_t n) {
    const size_t n4 = vec4_quads(n, aligned16(dx) && aligned16(dy) && aligned16(x));
    if (n) launch("silu_backward", silu_backward_kernel, grid_for_quads(n4, n), CU_THREADS, dx, dy, x, n4, n);
}

// ---------------------------------------------------------------------------------------------------
// Channel concat and its split. One thread per element of y (dy); sa, sb are the per-sample sizes.

__global__ static void concat_forward_kernel(float *y, const float *a, const float *b, size_t sa,
                                             size_t sb, size_t n) {
    CU_FOR(i, n) {
        size_t s = i / (sa + sb), j = i % (sa + sb);
        y[i] = j < sa ? a[s * sa + j] : b[s * sb + (j - sa)];
    }
}
void cu_concat_forward(float *y, const float *a, const float *b, int N, int CA, int CB, int HW) {
    const size_t sa = (size_t)CA * HW, sb = (size_t)CB * HW, n = (size_t)N * (sa + sb);
    if (n) launch("concat_forward", concat_forward_kernel, grid_for(n), CU_THREADS, y, a, b, sa, sb, n);
}

// Forward copied a and b into the two channel ranges of y; the gradient copies them back.
__global__ static void concat_backward_kernel(float *da, float *db, const float *dy, size_t sa,
                                              size_t sb, size_t n) {
    CU_FOR(i, n) {
        size_t s = i / (sa + sb), j = i % (sa + sb);
        if (j < sa) {
            if (da) da[s * sa + j] = dy[i];
        } else if (db) {
            db[s * sb + (j - sa)] = dy[i];
        }
    }
}
void cu_concat_backward(float *da, float *db, const float *dy, int N, int CA, int CB, int HW) {
    const size_t sa = (size_t)CA * HW, sb = (size_t)CB * HW, n = (size_t)N * (sa + sb);
    if (n && (da || db))
        launch("concat_backward", concat_backward_kernel, grid_for(n), CU_THREADS, da, db, dy, sa, sb, n);
}

// ---------------------------------------------------------------------------------------------------
// Linear combinations

__global__ static void add_kernel(float *y, const float *a, const float *b, size_t n4, size_t n) {
    CU_FOR(q, n4) {
        const float4 u = ld4(a, q), v = ld4(b, q);
        st4(y, q, float4{u.x + v.x, u.y + v.y, u.z + v.z, u.w + v.w});
    }
    CU_FOR_TAIL(i, n4, n) y[i] = a[i] + b[i];
}
void cu_add(float *y, const float *a, const float *b, size_t n) {
    const size_t n4 = vec4_quads(n, aligned16(y) && aligned16(a) && aligned16(b));
    if (n) launch("add", add_kernel, grid_for_quads(n4, n), CU_THREADS, y, a, b, n4, n);
}

__global__ static void scale_kernel(float *y, const float *x, float s, size_t n4, size_t n) {
    CU_FOR(q, n4) {
        const float4 v = ld4(x, q);
        st4(y, q, float4{s * v.x, s * v.y, s * v.z, s * v.w});
    }
    CU_FOR_TAIL(i, n4, n) y[i] = s * x[i];
}
void cu_scale(float *y, const float *x, float s, size_t n) {
    const size_t n4 = vec4_quads(n, aligned16(y) && aligned16(x));
    if (n) launch("scale", scale_kernel, grid_for_quads(n4, n), CU_THREADS, y, x, s, n4, n);
}

// Two products and a sum, each rounded as ref rounds them (no fused multiply-add).
__device__ static inline float axpby1(float a, float x, float b, float y) {
    return __fadd_rn(__fmul_rn(a, x), __fmul_rn(b, y));
}
__global__ static void axpby_kernel(float *y, float a, const float *x, float b, size_t n4, size_t n) {
    CU_FOR(q, n4) {
        const float4 u = ld4(x, q), v = ld4(y, q);
        st4(y, q, float4{axpby1(a, u.x, b, v.x), axpby1(a, u.y, b, v.y), axpby1(a, u.z, b, v.z), axpby1(a, u.w, b, v.w)});
    }
    CU_FOR_TAIL(i, n4, n) y[i] = axpby1(a, x[i], b, y[i]);
}
void cu_axpby(float *y, float a, const float *x, float b, size_t n) {
    const size_t n4 = vec4_quads(n, aligned16(y) && aligned16(x));
    if (n) launch("axpby", axpby_kernel, grid_for_quads(n4, n), CU_THREADS, y, a, x, b, n4, n);
}

// ---------------------------------------------------------------------------------------------------
// Per-(sample, channel) bias

// A quad's four elements lie in at most two rows of HW >= 4 (the host passes n4 = 0 for HW < 4):
// row r of its first element, r + 1 from where the row ends.
__global__ static void bias_add_forward_kernel(float *y, const float *x, const float *bias, size_t HW,
                                               size_t n4, size_t n) {
    CU_FOR(q, n4) {
        const size_t i = 4 * q, r = i / HW, e = (r + 1) * HW - i; // elements of row r from i on
        const float b0 = bias[r], b1 = e < 4 ? bias[r + 1] : b0;
        const float4 v = ld4(x, q);
        st4(y, q, float4{v.x + b0, v.y + (e > 1 ? b0 : b1), v.z + (e > 2 ? b0 : b1), v.w + (e > 3 ? b0 : b1)});
    }
    CU_FOR_TAIL(i, n4, n) y[i] = x[i] + bias[i / HW];
}
void cu_bias_add_forward(float *y, const float *x, const float *bias, int N, int C, int HW) {
    const size_t n = (size_t)N * C * HW, n4 = vec4_quads(n, HW >= 4 && aligned16(y) && aligned16(x));
    if (n)
        launch("bias_add_forward", bias_add_forward_kernel, grid_for_quads(n4, n), CU_THREADS, y, x, bias,
               (size_t)HW, n4, n);
}

// Forward was y[n, c, p] = x[n, c, p] + bias[n, c], so dbias[n, c] = sum_p dy[n, c, p]: one block per
// (n, c), the block's threads striding over p.
__global__ static void bias_add_backward_kernel(float *dbias, const float *dy, int HW) {
    const float *row = dy + (size_t)blockIdx.x * HW;
    double acc = 0.0;
    for (int p = threadIdx.x; p < HW; p += blockDim.x) acc += row[p];
    acc = block_sum(acc);
    if (threadIdx.x == 0) dbias[blockIdx.x] = (float)acc;
}
void cu_bias_add_backward(float *dbias, const float *dy, int N, int C, int HW) {
    if ((long)N * C > 0) launch("bias_add_backward", bias_add_backward_kernel, (unsigned)(N * C), 128, dbias, dy, HW);
}

// ---------------------------------------------------------------------------------------------------
// Per-sample rows

__global__ static void scale_rows_kernel(float *y, const float *x, const float *s, size_t M, size_t n) {
    CU_FOR(i, n) y[i] = s[i / M] * x[i];
}
void cu_scale_rows(float *y, const float *x, const float *s, int N, size_t M) {
    const size_t n = (size_t)N * M;
    if (n) launch("scale_rows", scale_rows_kernel, grid_for(n), CU_THREADS, y, x, s, M, n);
}

// In double and rounded once, as ref does.
__global__ static void combine_rows_kernel(float *y, const float *a, const float *x, const float *b,
                                           const float *z, size_t M, size_t n) {
    CU_FOR(i, n) {
        size_t r = i / M;
        y[i] = (float)((double)a[r] * x[i] + (double)b[r] * z[i]);
    }
}
void cu_combine_rows(float *y, const float *a, const float *x, const float *b, const float *z, int N,
                     size_t M) {
    const size_t n = (size_t)N * M;
    if (n) launch("combine_rows", combine_rows_kernel, grid_for(n), CU_THREADS, y, a, x, b, z, M, n);
}

// One block per row.
__global__ static void sqerr_rows_kernel(float *out, const float *x, const float *z, size_t M) {
    const size_t base = (size_t)blockIdx.x * M;
    double acc = 0.0;
    for (size_t i = threadIdx.x; i < M; i += blockDim.x) {
        double d = (double)x[base + i] - z[base + i];
        acc += d * d;
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) out[blockIdx.x] = (float)acc;
}
void cu_sqerr_rows(float *out, const float *x, const float *z, int N, size_t M) {
    if (N > 0) launch("sqerr_rows", sqerr_rows_kernel, (unsigned)N, CU_THREADS, out, x, z, M);
}

} // namespace MSD_CUDA_NS
