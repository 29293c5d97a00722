// emu.cpp: the CPU emulation of a CUDA launch that cuda/emu.h describes: blocks in turn, the threads of
// a block as fibers that meet at barriers. Built only into the emulated backend (tests).
#include "emu.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;

namespace {

const size_t STACK_BYTES = 64 * 1024; // per thread; kernels keep small register tiles on it

// ---------------------------------------------------------------------------------------------------
// Switching stacks. glibc's swapcontext saves the signal mask with a system call on every switch,
// which made the emulator spend most of its time switching; on x86-64 a switch here is six pushes,
// a stack-pointer swap and six pops (the callee-saved registers; the compiler saves the rest around
// the call). Elsewhere, ucontext; also where the compiler emits code for CET shadow stacks
// (__CET__ bit 2), which a hand-made `ret` onto a new stack would violate.
#if defined(__x86_64__) && !(defined(__CET__) && (__CET__ & 2))
#define EMU_FAST_SWITCH 1
typedef void *context; // the saved stack pointer
extern "C" void emu_switch(context *save, context to);
asm(".pushsection .text\n"
    ".globl emu_switch\n"
    ".type emu_switch, @function\n"
    "emu_switch:\n"
    "    pushq %rbp\n    pushq %rbx\n    pushq %r12\n    pushq %r13\n    pushq %r14\n    pushq %r15\n"
    "    movq %rsp, (%rdi)\n"
    "    movq %rsi, %rsp\n"
    "    popq %r15\n    popq %r14\n    popq %r13\n    popq %r12\n    popq %rbx\n    popq %rbp\n"
    "    ret\n"
    ".size emu_switch, .-emu_switch\n"
    ".popsection\n");
#else
#define EMU_FAST_SWITCH 0
typedef ucontext_t context;
#endif

// Where a fiber stands when it is not running.
enum fiber_state {
    RUNNABLE,      // released: runs in the next pass
    AT_BARRIER,    // waits at __syncthreads() for every thread of the block
    AT_WARP_SYNC,  // waits inside a warp shuffle for every lane of its warp
    DONE,          // the kernel body returned
};

struct fiber {
    context ctx;
    char *stack;
    fiber_state state;
};

std::vector<fiber> fibers;                  // one per thread of the running block
context scheduler;                          // where a fiber returns at a barrier or at its end
unsigned current;                           // the running thread's flat index
const std::function<void()> *kernel_body;   // what every thread runs
const char *kernel_name;
unsigned block_threads;                     // threads of the running block
unsigned char warp_slots[1024][16];         // per thread: the value it offers in a warp shuffle

#if EMU_ASAN
// AddressSanitizer must be told about every stack switch, or it reports false stack errors.
const void *sched_bottom;
size_t sched_size;
#endif

void die(const char *what) {
    fprintf(stderr, "cuda-emu: kernel %s: %s\n", kernel_name, what);
    abort();
}

void switch_to(context *save, context *to) {
#if EMU_FAST_SWITCH
    emu_switch(save, *to);
#else
    swapcontext(save, to);
#endif
}

void enter_fiber(unsigned t) {
#if EMU_ASAN
    void *fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, fibers[t].stack, STACK_BYTES);
#endif
    switch_to(&scheduler, &fibers[t].ctx);
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

// A thread's whole life: the kernel body, then back to the scheduler for good.
void fiber_main() {
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &sched_bottom, &sched_size);
#endif
    (*kernel_body)();
    fibers[current].state = DONE;
#if EMU_ASAN
    __sanitizer_start_switch_fiber(nullptr, sched_bottom, sched_size); // this fiber ends
#endif
    context dead;
    switch_to(&dead, &scheduler); // never resumed
    abort();
}

// Make fiber f start at fiber_main when it is first switched to.
void fiber_init(fiber &f) {
    f.state = RUNNABLE;
#if EMU_ASAN
    // the frames that the stack's last thread abandoned at its end still carry their redzones
    __asan_unpoison_memory_region(f.stack, STACK_BYTES);
#endif
#if EMU_FAST_SWITCH
    // emu_switch pops six registers and returns: below the top, a return address for fiber_main
    // (never used) and fiber_main's address, then six zeros; the stack pointer at fiber_main's entry
    // is then 8 modulo 16, as after a call.
    void **top = (void **)(f.stack + STACK_BYTES);
    top[-1] = nullptr;
    top[-2] = (void *)fiber_main;
    for (int r = 3; r <= 8; r++) top[-r] = nullptr;
    f.ctx = (void *)(top - 8);
#else
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = STACK_BYTES;
    f.ctx.uc_link = &scheduler;
    makecontext(&f.ctx, fiber_main, 0);
#endif
}

void set_thread(unsigned t) {
    current = t;
    threadIdx.x = t % blockDim.x;
    threadIdx.y = t / blockDim.x % blockDim.y;
    threadIdx.z = t / (blockDim.x * blockDim.y);
}

// The running fiber waits (as `why`) until the scheduler releases it.
void wait_as(fiber_state why) {
    fibers[current].state = why;
#if EMU_ASAN
    void *fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, sched_bottom, sched_size);
#endif
    switch_to(&fibers[current].ctx, &scheduler);
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, &sched_bottom, &sched_size);
#endif
}

// After a pass in which every released thread ran until it waited or ended: release the warps whose
// lanes all wait in a shuffle, else (no warp waiting) the block's barrier. False when every thread
// has ended. Aborts where CUDA would hang or be undefined: a warp whose lanes stand in different
// places while some wait in a shuffle, a barrier that some threads ended without reaching.
bool release(unsigned n) {
    bool warps = false;
    for (unsigned base = 0; base < n; base += 32) {
        const unsigned lanes = n - base < 32 ? n - base : 32;
        unsigned at_shuffle = 0;
        for (unsigned l = 0; l < lanes; l++) at_shuffle += fibers[base + l].state == AT_WARP_SYNC;
        if (at_shuffle == 0) continue;
        if (at_shuffle != lanes) die("warp shuffle not reached by every lane of the warp");
        for (unsigned l = 0; l < lanes; l++) fibers[base + l].state = RUNNABLE;
        warps = true;
    }
    if (warps) return true;
    unsigned waiting = 0, ended = 0;
    for (unsigned t = 0; t < n; t++) {
        waiting += fibers[t].state == AT_BARRIER;
        ended += fibers[t].state == DONE;
    }
    if (waiting == 0) return false;
    if (ended > 0) die("__syncthreads not reached by every thread of the block");
    for (unsigned t = 0; t < n; t++) fibers[t].state = RUNNABLE;
    return true;
}

} // namespace

void __syncthreads() {
    if (fibers.empty() || !kernel_body) die("__syncthreads outside a launch");
    wait_as(AT_BARRIER);
}

void emu_warp_exchange(const void *mine, void *theirs, size_t bytes, unsigned mask, int lane_mask, int width) {
    if (fibers.empty() || !kernel_body) die("warp shuffle outside a launch");
    if (mask != 0xffffffffu || width != 32) die("warp shuffle with a partial mask or width (emulated: full warps only)");
    if (lane_mask < 0 || lane_mask > 31) die("warp shuffle: lane mask out of 0..31");
    if (bytes > sizeof warp_slots[0]) die("warp shuffle of more than 16 bytes");
    const unsigned base = current / 32 * 32;
    if (base + 32 > block_threads) die("warp shuffle in a partial warp (block size not a multiple of 32)");
    memcpy(warp_slots[current], mine, bytes);
    wait_as(AT_WARP_SYNC); // every lane has offered its value
    memcpy(theirs, warp_slots[base + ((current % 32) ^ (unsigned)lane_mask)], bytes);
    wait_as(AT_WARP_SYNC); // every lane has read: the slots may be reused
}

void emu_check_aligned16(const void *p) {
    if ((uintptr_t)p % 16 != 0) die("float4 access at an address that is not 16-byte aligned");
}

void emu_launch(const char *name, dim3 grid, dim3 block, const std::function<void()> &body) {
    kernel_name = name;
    const unsigned n = block.x * block.y * block.z;
    if (n == 0 || n > 1024) die("block size must be 1..1024 threads");
    if (grid.x == 0 || grid.y == 0 || grid.z == 0) die("empty grid (CUDA rejects it)");
    if (grid.y > 65535 || grid.z > 65535) die("grid.y and grid.z must be <= 65535");
    while (fibers.size() < n) {
        // one inaccessible page below each stack, so an overflow faults instead of writing into the
        // next thread's stack
        const size_t page = (size_t)sysconf(_SC_PAGESIZE);
        char *s = (char *)mmap(nullptr, STACK_BYTES + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (s == MAP_FAILED || mprotect(s, page, PROT_NONE) != 0) die("out of memory for thread stacks");
        fibers.push_back(fiber{context{}, s + page, DONE});
    }
    kernel_body = &body;
    block_threads = n;
    gridDim = grid;
    blockDim = block;
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                blockIdx.x = bx, blockIdx.y = by, blockIdx.z = bz;
                for (unsigned t = 0; t < n; t++) fiber_init(fibers[t]);
                // Passes: every released thread runs to its next barrier, shuffle or end; then
                // release() lets the next ones go (and aborts on a divergent barrier or shuffle).
                do {
                    for (unsigned t = 0; t < n; t++) {
                        if (fibers[t].state != RUNNABLE) continue;
                        set_thread(t);
                        enter_fiber(t);
                    }
                } while (release(n));
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
