// test_cuda_net.c: cuda/ against ref/ on whole computations (docs/DESIGN.md, Tests): the network
// D(x; sigma) and its gradients for every stage, two training steps, and a Heun run, each on both
// backends from the same weights and inputs. The checks and their bounds are tests/netcheck.c's
// (shared with tests/test_fast_net.c): cuda/'s arithmetic differs from fast's only in the order of its
// sums, and its Adam, EMA and nan_to_num are bit-identical to ref's (cuda/optim.cu), so the same
// network budgets and the Adam, EMA and sampler bounds derived from them (tests/tolerance.h) apply.
//
// Built twice (Makefile, "The CUDA suites run twice"; tests/cudacheck.h):
//   - plain: the backend "cuda" on the device, the same work as test_fast_net (tiny-ms batch 3 and
//     mini-ms batch 2 per stage, two mini-ms training steps, Heun on mini-ms, 18 steps, 4 samples);
//     skipped, saying why, where there is no device. Tests run in the suite's own process: a CUDA
//     context does not survive fork, and msd_backend_get("cuda") makes one before the tests run.
//   - -DTEST_CUDA_EMU: the same kernels on the CPU emulator (cuda/emu.h), forked as every suite:
//     the networks of tiny-ms and mini-ms per stage as on the device (so the GEMM tiles meet the
//     real layer shapes), the training steps and the 4-sample Heun run on tiny-ms (on mini-ms they
//     would take minutes here). About 30 s.
#include <stdio.h>

#include "cudacheck.h"
#include "netcheck.h"
#include "testutil.h"

#ifdef TEST_CUDA_EMU
#define STEPS_PRESET "tiny-ms"
#else
#define STEPS_PRESET "mini-ms"
#endif

START_TEST(network_tiny_ms) { netcheck_network(cu, "tiny-ms", 3, 100); }
END_TEST

START_TEST(network_mini_ms) {
#if defined(TEST_CUDA_EMU) && defined(__SANITIZE_ADDRESS__)
    // under the sanitizers the emulated mini-ms network takes minutes; the plain build checks it
    printf("test_cuda_net: the emulated mini-ms network is left to the build without sanitizers\n");
#else
    netcheck_network(cu, "mini-ms", 2, 200);
#endif
}
END_TEST

// Training steps: the first trains stage 0, the second the last stage. Heun: 18 steps of the EDM
// schedule, 4 samples.
START_TEST(train_steps) { netcheck_train_steps(cu, STEPS_PRESET, 2, 300); }
END_TEST

START_TEST(heun) { netcheck_heun(cu, STEPS_PRESET, 18, 4, 400); }
END_TEST

int main(void) {
    const TTest *tests[] = {network_tiny_ms, network_mini_ms, train_steps, heun};
    return cuda_run_tests("test_cuda_net", CUDA_SUITE_BACKEND, tests, TEST_COUNT(tests));
}
