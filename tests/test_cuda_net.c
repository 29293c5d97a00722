// test_cuda_net.c: cuda/ against ref/ on whole computations (DESIGN.md section 8): the network
// D(x; sigma) and its gradients for every stage, two training steps, and a Heun run, each on both
// backends from the same weights and inputs. The checks and their bounds are tests/netcheck.c's
// (shared with tests/test_fast_net.c): cuda/'s arithmetic differs from fast's only in the order of its
// sums, and its Adam, EMA and nan_to_num are bit-identical to ref's (cuda/optim.cu), so the same
// network budgets and the Adam, EMA and sampler bounds derived from them (tests/tolerance.h) apply.
//
// Built twice (Makefile, "The CUDA suites run twice"):
//   - plain: the backend "cuda" on the device, the same work as test_fast_net (tiny-ms batch 3 and
//     mini-ms batch 2 per stage, two mini-ms training steps, Heun on mini-ms, 18 steps, 4 samples);
//     skipped, saying why, where there is no device. Tests run in the suite's own process (CK_NOFORK):
//     a CUDA context does not survive fork, and msd_backend_get("cuda") makes one in main.
//   - -DTEST_CUDA_EMU: the same kernels on the CPU emulator (cuda/emu.h), forked as every suite:
//     the networks of tiny-ms and mini-ms per stage as on the device (so the GEMM tiles meet the
//     real layer shapes), the training steps and the 4-sample Heun run on tiny-ms (on mini-ms they
//     would take minutes here). About 30 s.
#include <stdio.h>

#include "common/core/backend.h"
#include "common/core/error.h"
#include "netcheck.h"
#include "testutil.h"

#ifdef TEST_CUDA_EMU
extern const struct msd_backend msd_backend_cuda_emu;
#endif

static const struct msd_backend *cuda; // set in main

START_TEST(network_tiny_ms) { netcheck_network(cuda, "tiny-ms", 3, 100); }
END_TEST
#if !(defined(TEST_CUDA_EMU) && defined(__SANITIZE_ADDRESS__))
START_TEST(network_mini_ms) { netcheck_network(cuda, "mini-ms", 2, 200); }
END_TEST
#endif
// Training steps: the first trains stage 0, the second the last stage. Heun: 18 steps of the EDM
// schedule, 4 samples.
#ifdef TEST_CUDA_EMU
START_TEST(train_steps_tiny_ms) { netcheck_train_steps(cuda, "tiny-ms", 2, 300); }
END_TEST
START_TEST(heun_tiny_ms) { netcheck_heun(cuda, "tiny-ms", 18, 4, 400); }
END_TEST
#else
START_TEST(train_steps_mini_ms) { netcheck_train_steps(cuda, "mini-ms", 2, 300); }
END_TEST
START_TEST(heun_mini_ms) { netcheck_heun(cuda, "mini-ms", 18, 4, 400); }
END_TEST
#endif

int main(void) {
#ifdef TEST_CUDA_EMU
    cuda = &msd_backend_cuda_emu;
    Suite *s = suite_create("cuda (emulated) against ref: whole computations");
#else
    cuda = msd_backend_get("cuda");
    if (!cuda) {
        printf("test_cuda_net: skipped: %s\n", msd_last_error());
        return 0;
    }
    Suite *s = suite_create("cuda against ref: whole computations");
#endif
    TCase *tc = tcase_create("network, training step, sampler");
    tcase_add_test(tc, network_tiny_ms);
#if defined(TEST_CUDA_EMU) && defined(__SANITIZE_ADDRESS__)
    // under the sanitizers the emulated mini-ms network takes minutes; the plain build checks it
    printf("test_cuda_net: the emulated mini-ms network is left to the build without sanitizers\n");
#else
    tcase_add_test(tc, network_mini_ms);
#endif
#ifdef TEST_CUDA_EMU
    tcase_add_test(tc, train_steps_tiny_ms);
    tcase_add_test(tc, heun_tiny_ms);
#else
    tcase_add_test(tc, train_steps_mini_ms);
    tcase_add_test(tc, heun_mini_ms);
#endif
    tcase_set_timeout(tc, 900); // (the emulated run takes seconds, several times that under the sanitizers)
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
#ifndef TEST_CUDA_EMU
    srunner_set_fork_status(sr, CK_NOFORK); // the CUDA context made in main does not survive fork
#endif
    srunner_run_all(sr, CK_NORMAL);
    const int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
