// testutil.h: what every test suite shares: guarded buffers, seeded fills, the comparison helper
// and the finite-difference checker.
//
// Inputs come from the project's own counter RNG with fixed seeds; every failure message prints the
// seed. Buffers handed to an op under test have guard regions on both sides that must come back
// intact, so an op that writes past its output is caught where it happens.
#ifndef MSD_TESTUTIL_H
#define MSD_TESTUTIL_H

#include <check.h>
#include <stddef.h>
#include <stdint.h>

// ---------------------------------------------------------------------------------------------------
// Guarded host buffers: n usable floats with TEST_GUARD floats of a sentinel on each side.
#define TEST_GUARD 64
float *tbuf_new(size_t n);
// Fail the test (ck_assert_msg) if a guard was overwritten; `what` names the buffer.
void tbuf_check(const float *p, size_t n, const char *what);
void tbuf_free(float *p);

// ---------------------------------------------------------------------------------------------------
// Seeded fills from the counter RNG (stream MSD_STREAM_TEST). Each call uses its own seed.
void fill_uniform(float *x, size_t n, uint64_t seed, float lo, float hi);
void fill_normal(float *x, size_t n, uint64_t seed, float std);

// ---------------------------------------------------------------------------------------------------
// Comparison: got against want, elementwise. NaN/Inf agreement is checked first (a NaN where the
// oracle has a number is a failure whatever the tolerance), then the numbers.
struct cmp_result {
    size_t n;
    size_t nonfinite_mismatch; // positions where exactly one side is NaN/Inf, or they differ in kind
    double max_abs;            // max |got - want|
    double max_rel;            // max |got - want| / max(|want|, tiny)
    double rel_l2;             // ||got - want|| / ||want||
    size_t worst;              // index of max_abs
};
struct cmp_result compare(const float *got, const float *want, size_t n);
// Assert got matches want with max |got - want| <= abs_tol * max(1, max |want|) and no NaN/Inf
// disagreement; the message names `what`, the seed, the worst index and the first mismatches.
void assert_close(const float *got, const float *want, size_t n, double abs_tol, uint64_t seed,
                  const char *what);

// ---------------------------------------------------------------------------------------------------
// Finite differences. An op under test is wrapped as fd_forward: it reads its inputs through ctx and
// writes its output (nout floats). The checker forms the loss L = sum_i r[i] * out[i] in double,
// perturbs entries of one input tensor x by +-FD_STEP (relative to max(1, |x|)), and compares
// (L(x+h) - L(x-h)) / (2h) against the analytic gradient `grad` (what the op's backward produced for
// dy = r). Up to max_entries entries are checked (all of them when the tensor is smaller), chosen
// with `seed`. Returns the worst error |fd - an| / (max(|fd|, |an|) + 1e-3 * max |an|), and fails
// the test when it exceeds FD_TOL. The line it prints is what the closing note of an op quotes.
typedef void (*fd_forward)(void *ctx, float *out);
double fd_check(const char *what, fd_forward f, void *ctx, const float *r, size_t nout, float *x,
                const float *grad, size_t nx, int max_entries, uint64_t seed);

// ---------------------------------------------------------------------------------------------------
// Whole-op gradient check. An op's tensors are listed with their gradient buffers; `backward` runs
// the op's forward (to fill what it saves) and then its backward with dy = the given weights.
// The check: (1) the gradient convention: a second backward call doubles every parameter gradient
// exactly (they accumulate) and leaves every input gradient as it was (they are written, so a
// sentinel in the buffer before the first call must not survive); (2) each tensor's gradient against
// fd_check; (3) the guard regions of every buffer. Every buffer must come from tbuf_new.
struct grad_tensor {
    const char *name; // "dx", "dw", ...
    float *x;         // the tensor, perturbed by the finite differences
    float *grad;      // where backward leaves its gradient
    size_t n;
    int is_param;     // parameters accumulate, inputs are written
};
typedef void (*op_backward)(void *ctx, const float *dy);
// Returns the worst finite-difference error over all tensors.
double check_op_gradients(const char *op, fd_forward forward, op_backward backward, void *ctx,
                          float *out, size_t nout, struct grad_tensor *t, int nt, uint64_t seed);

// Run a suite with Check; the exit status says whether anything failed.
int run_suite(Suite *s);

#endif
