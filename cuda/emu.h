// emu.h: just enough of CUDA to run cuda/'s kernels on the CPU, so that the kernels' logic (indexing,
// tiling, bounds guards, barriers, reductions) is tested on every machine, GPU or not.
//
// The same .cu files compile two ways (cuda/cuda.cuh chooses):
//   - with nvcc, for the GPU: the backend "cuda";
//   - with g++ -x c++ -DMSD_CUDA_EMU, against this header: the backend "cuda-emu", used only by the
//     tests (tests/test_cuda_*.c run the same conformance suites on both).
//
// How a launch runs here: blocks one after another; inside a block every thread is a fiber
// (its own stack) on one OS thread. A thread runs until it reaches __syncthreads() (or a warp
// shuffle), then the next thread runs; when all threads of the block (of the warp) have arrived, they
// all go on. So:
//   - __shared__ is `static`: one copy, shared by the threads of the block that is running, which is
//     exactly CUDA's scope because only one block runs at a time.
//   - A barrier that some threads skip (one returned early, or the barrier sits in a branch that
//     diverges) is an error in CUDA (undefined behaviour); here it aborts with the kernel's name.
//   - Warp shuffles (__shfl_xor_sync only, full warps only) are an exchange among the 32 fibers of
//     a warp: each lane deposits its value, the warp meets at a warp barrier, each lane reads its
//     partner's, and the warp meets again. A shuffle that some lanes of the warp do not reach (a
//     divergent branch, an early return, a lane waiting at __syncthreads instead), a partial mask
//     or a warp that the block does not fill aborts with the kernel's name, as a divergent
//     __syncthreads() does.
//   - Atomics are plain read-modify-writes: threads never run at the same time.
// What the emulator cannot show: races between threads that a barrier should have ordered but did
// not (the order here is fixed: thread 0, 1, 2, ... between barriers), memory-model effects, speed.
// compute-sanitizer's racecheck and synccheck on a device cover the first (bench/device-check.sh).
#ifndef MSD_CUDA_EMU_H
#define MSD_CUDA_EMU_H

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>

// ---------------------------------------------------------------------------------------------------
// The built-in variables and qualifiers.
struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) float4 {
    float x, y, z, w;
};
extern uint3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;
static const int warpSize = 32;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __restrict__ __restrict

// ---------------------------------------------------------------------------------------------------
// Barriers, warp shuffles, atomics, intrinsics.
void __syncthreads();

// The value of `v` held by lane (this lane ^ lane_mask) of the warp. Every lane of a full warp must
// call it together with mask 0xffffffff and width 32 (the emulator aborts otherwise); T at most 16
// bytes and trivially copyable (float, double, int, ...).
void emu_warp_exchange(const void *mine, void *theirs, size_t bytes, unsigned mask, int lane_mask, int width);
template <typename T> static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    static_assert(sizeof(T) <= 16, "emu: shuffled values are at most 16 bytes");
    T r;
    emu_warp_exchange(&v, &r, sizeof(T), mask, lane_mask, width);
    return r;
}
static inline float atomicAdd(float *p, float v) {
    float old = *p;
    *p = old + v;
    return old;
}
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline float __ldg(const float *p) { return *p; }
// A float4 access at p must be 16-byte aligned (a fault on the device): aborts otherwise.
void emu_check_aligned16(const void *p);

// ---------------------------------------------------------------------------------------------------
// The runtime calls cuda/ makes, on host memory.
typedef int cudaError_t;
typedef struct emu_stream *cudaStream_t;
enum { cudaSuccess = 0, cudaErrorMemoryAllocation = 2 };
enum cudaMemcpyKind { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
const char *cudaGetErrorString(cudaError_t e);
cudaError_t cudaGetLastError();
cudaError_t cudaMalloc(void **p, size_t bytes);
cudaError_t cudaFree(void *p);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind, cudaStream_t);
cudaError_t cudaStreamSynchronize(cudaStream_t);

// Run `body` as every thread of every block of the launch (grid, block); `name` is for messages.
void emu_launch(const char *name, dim3 grid, dim3 block, const std::function<void()> &body);

#endif
