// cudacheck.h: what the CUDA conformance suites share (tests/test_cuda_*.c): the backend under test,
// device buffers with guard regions and a poisoned start, the comparison against ref's output that
// prints one line per check, and the suite runner.
//
// The Makefile builds every tests/test_cuda*.c twice (the section "The CUDA suites run twice"):
//   build/tests/test_cuda_<x>_emu  -DTEST_CUDA_EMU: the kernels on cuda/emu.h's CPU emulator (every CUDA
//                                  thread a fiber on one core, about 1 GFLOP/s); always runs, on the
//                                  cases marked ANY: batch 1-3, the awkward shapes, one real shape per
//                                  op;
//   build/tests/test_cuda_<x>      the device: every case, the real mini and cifar10 shapes at batch 64
//                                  and 128 included (MSD_TEST_SMALL=1: the emulator's cases only, for
//                                  compute-sanitizer). Without nvcc at build time or a device at run
//                                  time it prints "test_cuda_<x>: skipped: <why>" and exits 0.
//
// What is held bit for bit and what to a bound: an op whose cuda/ kernel does ref's operations in
// ref's order and precision must match bit for bit. Where the device may round differently from the
// emulator (a double exp or sin that is the device's own, a multiply-add that nvcc may fuse where the
// kernel does not force __fmul_rn/__fadd_rn), the emulator must still match bit for bit (g++ on
// x86-64 without -mfma never fuses, and calls the same libm as ref), and the device is held to a
// bound. Sums in another order are held to bounds on both, summation-order-independent ones where
// the order is the kernel's choice (a float reduction of L terms, any order and grouping, FMA or
// not: tests/tolerance.h's bound_gemm with that L). Each check prints one line, "<backend> <op>
// <shape> ...", with max |error|, relative L2 and the worst error/bound, so that a run shows how far
// inside its bound each op is.
//
// This file is compiled into every suite, CUDA or not: it reaches cuda/ only through the backend table.
#ifndef MSD_CUDACHECK_H
#define MSD_CUDACHECK_H

#include <check.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/core/backend.h"
#include "opcheck.h"

// The backend a suite tests: the emulated kernels (built with -DTEST_CUDA_EMU) or the device's.
#ifdef TEST_CUDA_EMU
extern const struct msd_backend msd_backend_cuda_emu;
#define CUDA_SUITE_BACKEND (&msd_backend_cuda_emu)
enum { ON_DEVICE = 0 };
#else
#define CUDA_SUITE_BACKEND NULL // msd_backend_get("cuda")
enum { ON_DEVICE = 1 };
#endif

extern const struct msd_backend *cu; // the backend under test ("cuda" or "cuda-emu"), set by cuda_run_tests

// Run a suite's tests (testutil.h's run_test_suite) on `emu`, or, with emu NULL, on the device: when
// there is none it prints "<name>: skipped: <why>" and returns 0. On the device the tests run in this
// process (a CUDA context does not survive fork); before each test whatever a failed one left behind is
// freed. Prints the suite's time at the end.
int cuda_run_tests(const char *name, const struct msd_backend *emu, const TTest *const *tests, size_t n);

// A case runs everywhere (ANY) or on the device only (DEV: too slow for the emulator's one core;
// BIG: a length of 2^25, for the memory ops and the plain elementwise ops alone, whose ref/ side is
// cheap). skip(flag): whether this run leaves the case out.
enum { ANY = 0, DEV = 1, BIG = 2 };
bool skip(int flag);

// Lengths of the elementwise ops: vector tails, one element, a grid-stride loop that wraps (cuda.cuh
// caps a launch at 4096 blocks of 256 threads, 2^20 threads: 2^20 + 3 leaves three for a second
// turn), and the real sizes of the mini and cifar10 activations at batch 64 and 128.
struct cuda_length {
    size_t n;
    int flag;
};
extern const struct cuda_length LENGTHS[];
extern const size_t NLEN;

// ---------------------------------------------------------------------------------------------------
// Device buffers. Layout: [DGUARD guard floats][n floats][DGUARD guard floats], the guards uploaded
// with a sentinel NaN that done() downloads and checks. The middle starts 320 bytes into the
// allocation: 64-byte aligned (what the arenas guarantee, common/model/unet.c), not 128 or 256, so a
// kernel may assume no more alignment than the graph gives it. An output is first filled with
// another NaN, the poison: an element the op fails to write shows as a NaN where ref has a number.
// Host buffers come from the pool (opcheck.h).

float *dout(size_t n);                  // an output (or a written gradient): poisoned
float *dput(const float *h, size_t n);  // an input: host values uploaded (NULL stays NULL: a missing bias)
float *dget(const float *d, size_t n);  // what a device buffer holds, in a new pool buffer
// Check every guard, device and host, and free everything.
void done(void);

float from_bits(uint32_t b);
uint32_t bits_of(float f);

// ---------------------------------------------------------------------------------------------------
// The comparison, named by a printf format. NaN/Inf agreement first, at every position. Then, with
// bound NULL, every value bit-identical; otherwise |got[i] - want[i]| <= bound[i] wherever want and
// the bound are finite, and the relative L2 error within that of bl2 (the statistical bounds of the
// GEMM-like ops; NULL: the bounds themselves, which the per-element check already implies). nf: NaN
// or Inf were injected into the inputs (the L2 check is left out).
void match(uint64_t seed, bool nf, const float *got, const float *want, const double *bound, const double *bl2,
           size_t n, const char *fmt, ...) __attribute__((format(printf, 8, 9)));

// Bit for bit on the emulator, to `bound` on the device (see the top of the file).
static inline const double *device_bound(const double *bound) { return ON_DEVICE ? bound : NULL; }

// For an output that is a float reduction of L terms in the kernel's order: bound_gemm (rigorous, per
// element) and bound_gemm_stat (for the L2 norm), tests/tolerance.h; mag is ref's op on |inputs|.
void match_sum(uint64_t seed, bool nf, const float *got, const float *want, const float *mag, double L, size_t n,
               const char *fmt, ...) __attribute__((format(printf, 8, 9)));

// Seconds on the monotonic clock (the slow checks print their time).
double now(void);

#endif
