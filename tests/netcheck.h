// netcheck.h: a backend against ref/ on whole computations (docs/DESIGN.md, Tests): the network
// D(x; sigma) and its gradients for every stage, two training steps, and a Heun sampler run, each on
// both backends from the same weights and inputs. tests/test_fast_net.c runs them for fast/,
// tests/test_cuda_net.c for cuda/ (on the device, and on the CPU emulator).
//
// Every check prints one line, "<backend>-net <what> ...", with the max error and its bound, and
// fails the running Check test (ck_assert) when the bound is exceeded. The bounds are
// tests/tolerance.h's network budgets (NET_D_TOL, NET_GRAD_TOL) and what follows from them for Adam,
// the EMA and the sampler, derived there; they hold for any backend whose arithmetic differs from
// ref's only in the order of its sums and whose Adam, EMA and nan_to_num are bit-identical to ref's
// (fast/ and cuda/ both). Call these from inside a Check test.
#ifndef MSD_NETCHECK_H
#define MSD_NETCHECK_H

#include <stdint.h>

#include "common/core/backend.h"

// (a) D(x; sigma) and its backward (dx and every parameter gradient) for every stage of `preset`,
// N samples (1..16) at N noise levels inside the stage, on ref and on `be`. Weights and inputs from
// `seed`.
void netcheck_network(const struct msd_backend *be, const char *preset, int N, uint64_t seed);

// (c) Two msd_train_step calls of batch B with dropout on, on ref and on `be`: the loss, the
// gradients and their norm, then the weights, Adam moments and EMA after each step. The first step
// trains stage 0 (the widest decoder) from zero moments; the second starts both from ref's state and
// trains the last stage (the cheapest decoder: its first Adam step beside the shared part's second).
// The preset needs two stages or more. Weights from `seed`, the data set from seed + 1.
void netcheck_train_steps(const struct msd_backend *be, const char *preset, int B, uint64_t seed);

// (d) Heun, `steps` steps of the EDM schedule, no churn: `samples` samples from the latents of seeds
// 0..samples-1 on ref and on `be`, within NET_ODE_GROWTH x heun_error_bound; the growth factor is
// measured by a third run on `be` whose every evaluation is pushed by the budget. Weights from
// `seed`, the push's sign pattern from seed + 1.
void netcheck_heun(const struct msd_backend *be, const char *preset, int steps, int samples, uint64_t seed);

#endif
