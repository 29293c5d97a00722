// cuda.cuh: what every file of cuda/ shares: the runtime (the real one, or cuda/emu.h's CPU emulation),
// the checked-call wrapper, the backend's stream, the launch helper, grid sizing, a block-wide sum,
// and the declarations of the ops (one per op of struct msd_backend, named cu_<op>).
//
// Contract of cuda/ (every file): the same functions as ref/, as CUDA kernels in fp32 (no TF32, no
// fast-math: NaN and Inf come out as ref's), launched on one stream, asynchronous; only download and
// sync wait. Each file comments what it computes differently from its ref/ namesake (order of sums,
// float where ref uses double); tests/test_cuda_*.c hold it to bounds derived from that, on the device
// when there is one and on the CPU emulator always.
//
// Two builds of the same sources, in two namespaces so that both can be linked into one program:
//   nvcc                      -> namespace msd_cuda,     table msd_backend_cuda
//   g++ -x c++ -DMSD_CUDA_EMU -> namespace msd_cuda_emu, table msd_backend_cuda_emu (tests only)
#ifndef MSD_CUDA_CUH
#define MSD_CUDA_CUH

#ifdef MSD_CUDA_EMU
#include "emu.h"
#define MSD_CUDA_NS msd_cuda_emu
#else
#include <cuda_runtime.h>
#define MSD_CUDA_NS msd_cuda
#endif

#include <stddef.h>
#include <stdint.h>

#include "common/core/backend.h"
#include "common/core/util.h"

namespace MSD_CUDA_NS {

// ---------------------------------------------------------------------------------------------------
// Checked calls: a failing CUDA call aborts with the call, file, line and CUDA's message (ops have no
// error return, and a device fault leaves nothing to recover).
void check_at(cudaError_t err, const char *call, const char *file, int line);
#define CU_CHECK(call) check_at((call), #call, __FILE__, __LINE__)

// The stream every op is queued on (created when the backend is first handed out).
cudaStream_t stream();

// Scratch in device memory for ops that need partial results (split-K sums): at least n floats,
// valid until the next call. One buffer for the backend, grown on demand and kept, so that a
// training step allocates nothing after its first run (and can be captured as a CUDA graph). Ops
// run in stream order, so one op's partials are consumed before the next op reuses the buffer.
float *cu_scratch(size_t n);

// Launch `kernel` on grid x block threads on the backend's stream and check the launch. `name` is for
// messages. The arguments are converted to the kernel's parameter types here, as <<<>>> would.
// With MSD_CUDA_PROFILE=1 in the environment, every launch is timed by a pair of events and the
// program prints, at exit, the GPU time per kernel name and the share of the wall time they fill.
extern bool profiling;
void profile_begin(const char *name);
void profile_end(void);

template <typename... P, typename... A>
static inline void launch(const char *name, void (*kernel)(P...), dim3 grid, dim3 block, A... args) {
#ifdef MSD_CUDA_EMU
    emu_launch(name, grid, block, [&] { kernel(P(args)...); });
#else
    if (profiling) profile_begin(name);
    kernel<<<grid, block, 0, stream()>>>(P(args)...);
    check_at(cudaGetLastError(), name, __FILE__, __LINE__);
    if (profiling) profile_end();
#endif
}

// Threads per block for the one-dimensional kernels, and the grid for n items with a grid-stride
// loop: enough blocks to fill the device, never more than the items need, never zero.
static const unsigned CU_THREADS = 256, CU_MAX_BLOCKS = 4096;
static inline unsigned grid_for(size_t n) {
    size_t b = (n + CU_THREADS - 1) / CU_THREADS;
    return b == 0 ? 1u : b > CU_MAX_BLOCKS ? CU_MAX_BLOCKS : (unsigned)b;
}

// The grid-stride loop over i < n: each thread takes i = its global index, then steps by the grid.
#define CU_FOR(i, n)                                                                               \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                      \
         i += (size_t)gridDim.x * blockDim.x)

// Elementwise kernels four elements at a time: float4 loads and stores (one 16-byte access instead of
// four) over the n4 quads i = 4q..4q+3, then the n - 4 n4 tail elements one at a time. n4 = n / 4
// when every pointer the kernel accesses is 16-byte aligned (vec4_quads), else 0: all scalar.
// The grid: enough blocks for one pass over the quads, at most one wave of resident blocks (8 of
// 256 threads on each of the CU_SMS multiprocessors); the threads stride over the rest.
static const unsigned CU_SMS = 132; // streaming multiprocessors of an H100 SXM (an H200 has as many)
static inline bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }
static inline size_t vec4_quads(size_t n, bool aligned) { return aligned ? n / 4 : 0; }
static inline unsigned grid_for_quads(size_t n4, size_t n) {
    const size_t items = n4 + (n - 4 * n4), b = (items + CU_THREADS - 1) / CU_THREADS;
    return b == 0 ? 1u : b > 8 * CU_SMS ? 8 * CU_SMS : (unsigned)b;
}
#define CU_FOR_TAIL(i, n4, n)                                                                      \
    for (size_t i = 4 * (n4) + (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);           \
         i += (size_t)gridDim.x * blockDim.x)
// Quad q of p (the emulator checks the alignment and copies bytes: no aliasing of float as float4).
__device__ static inline float4 ld4(const float *p, size_t q) {
#ifdef MSD_CUDA_EMU
    emu_check_aligned16(p + 4 * q);
    float4 v;
    memcpy(&v, p + 4 * q, sizeof v);
    return v;
#else
    return reinterpret_cast<const float4 *>(p)[q];
#endif
}
__device__ static inline void st4(float *p, size_t q, float4 v) {
#ifdef MSD_CUDA_EMU
    emu_check_aligned16(p + 4 * q);
    memcpy(p + 4 * q, &v, sizeof v);
#else
    reinterpret_cast<float4 *>(p)[q] = v;
#endif
}

// Reductions over the threads of a one-dimensional block whose size is a multiple of 32 (a whole
// number of warps), at most 1024: each warp reduces its 32 values by a butterfly of register
// shuffles (__shfl_xor_sync, no barrier), lane 0 of each warp puts the warp's result in shared
// memory, and after one barrier every thread combines the warps' results in warp order. Two
// barriers in all (the second so that the next call may reuse the slots), where a tree in shared
// memory takes log2(threads) + 1. The order is fixed (lane 0's butterfly, then warps ascending), so
// results are the same on every run. Every thread of the block must call them; every thread gets
// the result. block_max and block_min skip NaN (fmax and fmin return the other operand), as ref's
// loops do.
struct cu_sum_op {
    template <typename T> __device__ T operator()(T a, T b) const { return a + b; }
};
struct cu_max_op {
    template <typename T> __device__ T operator()(T a, T b) const { return a != a ? b : b != b ? a : a > b ? a : b; }
};
struct cu_min_op {
    template <typename T> __device__ T operator()(T a, T b) const { return a != a ? b : b != b ? a : a < b ? a : b; }
};
// The reduction of v over the 32 lanes of the calling warp (every lane must call it), as lane 0
// forms it; the other lanes get the same value up to the order of op's operands.
template <typename T, typename Op> __device__ static inline T warp_reduce(T v, Op op) {
    for (int d = 16; d > 0; d /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, d));
    return v;
}
template <typename T, typename Op>
__device__ static inline T block_reduce(T v, Op op) {
    __shared__ T part[32]; // one per warp
    const unsigned t = threadIdx.x, warps = blockDim.x / 32;
    v = warp_reduce(v, op);
    if (t % 32 == 0) part[t / 32] = v;
    __syncthreads();
    T r = part[0];
    for (unsigned w = 1; w < warps; w++) r = op(r, part[w]);
    __syncthreads(); // nobody may write part[] again until everyone has read it
    return r;
}
// Threads for a block that reduces n values: the smallest power of two >= n in [32, 256] (the
// reductions want a power of two; a warp is the least worth launching, 256 keeps blocks resident).
static inline unsigned reduce_threads(size_t n) {
    unsigned t = 32;
    while (t < 256 && t < n) t *= 2;
    return t;
}
template <typename T> __device__ static inline T block_sum(T v) { return block_reduce(v, cu_sum_op()); }
// Two sums at once (*a and *b become their block sums), each in block_sum's order, with the two
// barriers of one.
template <typename T> __device__ static inline void block_sum2(T *a, T *b) {
    __shared__ T part[32][2];
    const unsigned t = threadIdx.x, warps = blockDim.x / 32;
    const T va = warp_reduce(*a, cu_sum_op()), vb = warp_reduce(*b, cu_sum_op());
    if (t % 32 == 0) part[t / 32][0] = va, part[t / 32][1] = vb;
    __syncthreads();
    T ra = part[0][0], rb = part[0][1];
    for (unsigned w = 1; w < warps; w++) ra += part[w][0], rb += part[w][1];
    __syncthreads();
    *a = ra, *b = rb;
}
template <typename T> __device__ static inline T block_max(T v) { return block_reduce(v, cu_max_op()); }
template <typename T> __device__ static inline T block_min(T v) { return block_reduce(v, cu_min_op()); }

// ---------------------------------------------------------------------------------------------------
// The ops (documented once, in common/core/backend.h).

// backend.cu: memory
float *cu_alloc(size_t n);
void cu_release(float *p);
void cu_upload(float *dst, const float *host_src, size_t n);
void cu_download(float *host_dst, const float *src, size_t n);
void cu_copy(float *dst, const float *src, size_t n);
void cu_fill(float *x, float value, size_t n);
void cu_fill_normal(float *x, uint64_t seed, uint64_t stream, size_t n);
void cu_sync(void);

// conv.cu, linear.cu
void cu_conv2d_forward(float *y, const float *x, const float *w, const float *b, int N, int C, int H,
                       int W, int OC, int K);
void cu_conv2d_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                        const float *w, int N, int C, int H, int W, int OC, int K);
void cu_linear_forward(float *y, const float *x, const float *w, const float *b, int N, int IN,
                       int OUT);
void cu_linear_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                        const float *w, int N, int IN, int OUT);

// resample.cu
void cu_down2_forward(float *y, const float *x, int N, int C, int H, int W);
void cu_down2_backward(float *dx, const float *dy, int N, int C, int H, int W);
void cu_up2_forward(float *y, const float *x, int N, int C, int H, int W);
void cu_up2_backward(float *dx, const float *dy, int N, int C, int H, int W);

// norm.cu
void cu_groupnorm_forward(float *y, float *mean, float *rstd, const float *x, const float *gamma,
                          const float *beta, int N, int C, int HW, int G, float eps);
void cu_groupnorm_backward(float *dx, float *dgamma, float *dbeta, const float *dy,
                           const float *mean, const float *rstd, const float *x, const float *gamma,
                           int N, int C, int HW, int G);

// attention.cu
void cu_attention_forward(float *a, float *w, const float *qkv, int N, int C, int HW);
void cu_attention_backward(float *dqkv, const float *da, const float *w, const float *qkv, int N,
                           int C, int HW);

// embedding.cu, dropout.cu
void cu_posemb_forward(float *y, const float *c, int N, int C);
void cu_dropout_forward(float *y, const float *x, float p, uint64_t seed, uint64_t stream, size_t n);
void cu_dropout_backward(float *dx, const float *dy, float p, uint64_t seed, uint64_t stream,
                         size_t n);

// elementwise.cu
void cu_silu_forward(float *y, const float *x, size_t n);
void cu_silu_backward(float *dx, const float *dy, const float *x, size_t n);
void cu_concat_forward(float *y, const float *a, const float *b, int N, int CA, int CB, int HW);
void cu_concat_backward(float *da, float *db, const float *dy, int N, int CA, int CB, int HW);
void cu_add(float *y, const float *a, const float *b, size_t n);
void cu_scale(float *y, const float *x, float s, size_t n);
void cu_axpby(float *y, float a, const float *x, float b, size_t n);
void cu_bias_add_forward(float *y, const float *x, const float *bias, int N, int C, int HW);
void cu_bias_add_backward(float *dbias, const float *dy, int N, int C, int HW);
void cu_scale_rows(float *y, const float *x, const float *s, int N, size_t M);
void cu_combine_rows(float *y, const float *a, const float *x, const float *b, const float *z, int N,
                     size_t M);
void cu_sqerr_rows(float *out, const float *x, const float *z, int N, size_t M);

// optim.cu
void cu_adam(float *p, float *m, float *v, const float *g, float lr, float beta1, float beta2,
             float eps, long step, size_t n);
void cu_ema(float *ema, const float *p, float beta, size_t n);
void cu_nan_to_num(float *x, float nan, float posinf, float neginf, size_t n);
void cu_sumsq(float *out, const float *x, size_t n);

// denoiser.cu
void cu_posterior_mean(float *m, float *w, const float *z, const float *data, const float *sigma,
                       int N, int K, size_t M);

} // namespace MSD_CUDA_NS

#endif
