// emu.cpp: the CPU emulation of a CUDA launch that cuda/emu.h describes: blocks in turn, the threads of
// a block as fibers that meet at barriers. Built only into the emulated backend (tests).
#include "emu.h"

#include <sys/mman.h>
#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;

namespace {

const size_t STACK_BYTES = 256 * 1024; // per thread; kernels keep small register tiles on it

struct fiber {
    ucontext_t ctx;
    char *stack;
    bool done;
};

std::vector<fiber> fibers;                  // one per thread of the running block
ucontext_t scheduler;                       // where a fiber returns at a barrier or at its end
unsigned current;                           // the running thread's flat index
const std::function<void()> *kernel_body;   // what every thread runs
const char *kernel_name;
float shfl_slot[1024];

#if EMU_ASAN
// AddressSanitizer must be told about every stack switch, or it reports false stack errors.
const void *sched_bottom;
size_t sched_size;
#endif

void die(const char *what) {
    fprintf(stderr, "cuda-emu: kernel %s: %s\n", kernel_name, what);
    abort();
}

void enter_fiber(unsigned t) {
#if EMU_ASAN
    void *fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, fibers[t].stack, STACK_BYTES);
#endif
    swapcontext(&scheduler, &fibers[t].ctx);
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

void fiber_main() {
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &sched_bottom, &sched_size);
#endif
    (*kernel_body)();
    fibers[current].done = true;
#if EMU_ASAN
    __sanitizer_start_switch_fiber(nullptr, sched_bottom, sched_size); // this fiber ends
#endif
    // returning follows uc_link back to the scheduler
}

void set_thread(unsigned t) {
    current = t;
    threadIdx.x = t % blockDim.x;
    threadIdx.y = t / blockDim.x % blockDim.y;
    threadIdx.z = t / (blockDim.x * blockDim.y);
}

} // namespace

void __syncthreads() {
    if (fibers.empty()) die("__syncthreads outside a launch");
#if EMU_ASAN
    void *fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, sched_bottom, sched_size);
#endif
    swapcontext(&fibers[current].ctx, &scheduler);
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, &sched_bottom, &sched_size);
#endif
}

float emu_shfl(float v, int src_lane) {
    const unsigned t = current, n = blockDim.x * blockDim.y * blockDim.z;
    shfl_slot[t] = v;
    __syncthreads();
    const unsigned src = t / 32 * 32 + (unsigned)src_lane;
    float r = (src_lane >= 0 && src_lane < 32 && src < n) ? shfl_slot[src] : v;
    __syncthreads();
    return r;
}

void emu_launch(const char *name, dim3 grid, dim3 block, const std::function<void()> &body) {
    kernel_name = name;
    const unsigned n = block.x * block.y * block.z;
    if (n == 0 || n > 1024) die("block size must be 1..1024 threads");
    if (grid.x == 0 || grid.y == 0 || grid.z == 0) die("empty grid (CUDA rejects it)");
    if (grid.y > 65535 || grid.z > 65535) die("grid.y and grid.z must be <= 65535");
    while (fibers.size() < n) {
        void *s = mmap(nullptr, STACK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (s == MAP_FAILED) die("out of memory for thread stacks");
        fibers.push_back(fiber{ucontext_t{}, (char *)s, false});
    }
    kernel_body = &body;
    gridDim = grid;
    blockDim = block;
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                blockIdx.x = bx, blockIdx.y = by, blockIdx.z = bz;
                for (unsigned t = 0; t < n; t++) {
                    fiber &f = fibers[t];
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = f.stack;
                    f.ctx.uc_stack.ss_size = STACK_BYTES;
                    f.ctx.uc_link = &scheduler;
                    f.done = false;
                    makecontext(&f.ctx, fiber_main, 0);
                }
                // Phases: every live thread runs to its next barrier or its end. A phase where some
                // threads wait at a barrier and others ended is a divergent barrier.
                for (;;) {
                    unsigned waiting = 0, ended = 0;
                    for (unsigned t = 0; t < n; t++) {
                        if (fibers[t].done) continue;
                        set_thread(t);
                        enter_fiber(t);
                        if (fibers[t].done) ended++;
                        else waiting++;
                    }
                    if (waiting == 0) break;
                    if (ended > 0) die("__syncthreads not reached by every thread of the block");
                }
            }
    kernel_body = nullptr;
}

// ---------------------------------------------------------------------------------------------------
// The runtime on host memory.
const char *cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "out of memory"; }
cudaError_t cudaGetLastError() { return cudaSuccess; }
cudaError_t cudaMalloc(void **p, size_t bytes) {
    *p = aligned_alloc(256, (bytes + 255) / 256 * 256);
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFree(void *p) {
    free(p);
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind, cudaStream_t) {
    memmove(dst, src, bytes);
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
