// test_fast_net.c: fast/ against ref/ on whole computations (docs/DESIGN.md, Tests): the network
// D(x; sigma) and its gradients for every stage (tiny-ms, batch 3, and mini-ms, batch 2), two
// training steps of mini-ms, and a Heun run of mini-ms, each on both backends from the same weights
// and inputs. The checks and their bounds are tests/netcheck.c's (shared with tests/test_cuda_net.c);
// this file picks the backend, the presets, batches and seeds. The suite is skipped, saying why, on a
// CPU without AVX2/FMA.
#include <stdio.h>

#include "common/core/backend.h"
#include "common/core/error.h"
#include "netcheck.h"
#include "testutil.h"

static const struct msd_backend *fast; // set in main when the CPU has AVX2/FMA

START_TEST(network_tiny_ms) { netcheck_network(fast, "tiny-ms", 3, 100); }
END_TEST

// (`mini` is the encoder and stage 1's decoder of `mini-ms`: covered here.)
START_TEST(network_mini_ms) { netcheck_network(fast, "mini-ms", 2, 200); }
END_TEST

// first step stage 0, second stage 2
START_TEST(train_steps_mini_ms) { netcheck_train_steps(fast, "mini-ms", 2, 300); }
END_TEST

// 18 steps of the EDM schedule, 4 samples
START_TEST(heun_mini_ms) { netcheck_heun(fast, "mini-ms", 18, 4, 400); }
END_TEST

int main(void) {
    if (!msd_cpu_has_avx2_fma()) {
        printf("test_fast_net: SKIPPED: this CPU lacks AVX2/FMA, so there is no fast backend to hold to ref\n");
        return 0;
    }
    fast = msd_backend_get("fast");
    if (!fast) {
        printf("test_fast_net: FAILED: no fast backend on an AVX2/FMA CPU: %s\n", msd_last_error());
        return 1;
    }
    const TTest *tests[] = {network_tiny_ms, network_mini_ms, train_steps_mini_ms, heun_mini_ms};
    return run_tests("fast against ref: whole computations", 900, tests, TEST_COUNT(tests));
}
