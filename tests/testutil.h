// testutil.h: what every test suite shares: guarded buffers, seeded fills, the comparison helper
// and the finite-difference checker; a temporary directory and whole-file helpers for the suites that
// touch files; running the built program with its output captured for the suites that test it from
// the outside.
//
// Inputs come from the project's own counter RNG with fixed seeds; every failure message prints the
// seed. Buffers handed to an op under test have guard regions on both sides that must come back
// intact, so an op that writes past its output is caught where it happens.
#ifndef MSD_TESTUTIL_H
#define MSD_TESTUTIL_H

#include <check.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

// ---------------------------------------------------------------------------------------------------
// Guarded host buffers: n usable floats, zeroed, with TEST_GUARD floats of a sentinel on each side.
#define TEST_GUARD 64
float *tbuf_new(size_t n);
// Fail the test (ck_assert_msg) if a guard was overwritten; `what` names the buffer.
void tbuf_check(const float *p, size_t n, const char *what);
void tbuf_free(float *p);
// The same for doubles.
double *dbuf_new(size_t n);
void dbuf_check(const double *p, size_t n, const char *what);
void dbuf_free(double *p);

// ---------------------------------------------------------------------------------------------------
// Seeded fills from the counter RNG (stream MSD_STREAM_TEST). Each call uses its own seed.
void fill_uniform(float *x, size_t n, uint64_t seed, float lo, float hi);
void fill_normal(float *x, size_t n, uint64_t seed, float std);
// Add N(0, std^2) draws (fill_normal with seed) to the n floats at w, which live in be's memory: how the
// suites move every weight of a freshly initialised network off its special starting values (zero
// biases, unit GroupNorm scales, the 1e-5 layers).
struct msd_backend;
void perturb_weights(const struct msd_backend *be, float *w, size_t n, uint64_t seed, float std);

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
// the test when it exceeds FD_TOL. It prints one line, the worst error, so that a run shows how far
// inside FD_TOL each gradient is.
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

// ---------------------------------------------------------------------------------------------------
// Running a suite. A suite's main() lists its tests and hands the list to run_tests, which makes the
// suite `name` of one test case holding them in order (a NULL entry is left out: a test this machine
// cannot run), gives each test timeout_s seconds (0: Check's default), runs them (each in a process of
// its own, Check's default), removes the temporary directory if the suite made one, and returns main's
// exit status: 0 when every test passed.
int run_tests(const char *name, int timeout_s, const TTest *const *tests, size_t n);
#define TEST_COUNT(list) (sizeof(list) / sizeof((list)[0]))

// The same with what some suites need besides: loop tests (Check runs loops[k].test once per _i in
// [0, loops[k].n), each its own test, after the plain ones), a function run before each test in the
// test's process (a checked fixture), and the tests run in this process instead of forked (a CUDA
// context does not survive fork).
struct loop_test {
    const TTest *test;
    int n;
};
struct test_suite {
    const char *name;
    int timeout_s;
    const TTest *const *tests;
    size_t n;
    const struct loop_test *loops;
    size_t n_loops;
    void (*setup)(void);
    bool no_fork;
};
int run_test_suite(const struct test_suite *s);

// ---------------------------------------------------------------------------------------------------
// Temporary files. A suite makes one directory /tmp/msd-test-<suite>-XXXXXX before its tests run, and
// run_tests removes it, with whatever the tests left in it, at the end. Make it in the parent process,
// in main() before run_tests: Check forks every test, and the forked tests inherit the name. Never
// remove it from inside a test.
//
// Paths come back in TEST_PATHS rotating static buffers of TEST_PATH_MAX bytes: a test may hold up to
// TEST_PATHS of them at once (two in one expression are fine), and copies one it keeps for longer.
// test_tmpdir*, test_path and test_pathf work outside a test too (in main(), to prepare data); the
// other helpers fail through ck_assert and belong inside tests (Check refuses ck_assert elsewhere).

#define TEST_PATHS 64
#define TEST_PATH_MAX 512

// Create the directory (exits the program with a message when it cannot); returns its path. A second
// call returns the same directory.
const char *test_tmpdir_make(const char *suite);
// The directory test_tmpdir_make created.
const char *test_tmpdir(void);
// Remove the directory and everything in it (a no-op when none was made).
void test_tmpdir_remove(void);

// <tmpdir>/<name>, in a rotating buffer. name may hold slashes ("sub/file.png").
const char *test_path(const char *name);
// A printf-formatted path (or any short string), in the same rotating buffers: test_pathf("%s/%s",
// dir, name), test_pathf("%s.tmp", path).
const char *test_pathf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
// Create the folder <tmpdir>/<name> (fails the test when it cannot, or when it exists); its path.
const char *test_subdir(const char *name);

// Whether path names anything (stat succeeds).
bool test_exists(const char *path);
// The whole file at path, with a '\0' after its last byte (text can be used as a string); *len gets
// the size when len is not NULL. Fails the test when the file cannot be read. The caller frees.
char *test_read_file(const char *path, size_t *len);
// Create or replace the file at path with bytes[0..n); fails the test when it cannot.
void test_write_file(const char *path, const void *bytes, size_t n);
// Remove path and, when it is a folder, everything in it (symbolic links are removed, not followed).
void test_remove_tree(const char *path);

// ---------------------------------------------------------------------------------------------------
// Running a program with its output captured: the suites that test ./msdiff from the outside (they
// run from the repository root, where make builds ./msdiff). stdout and stderr go to files in the
// temporary directory, so test_tmpdir_make must have run.

struct test_run {
    int status;      // the exit status, or 128 + the signal that ended it
    char *out, *err; // everything it wrote to stdout and stderr, NUL-terminated
    char line[1024]; // the command line, for messages
};

// Start argv[0] (a path) with argv (NULL-terminated), stdout and stderr to the files out and err
// (created or truncated); returns at once with its pid. On Linux the child is killed when the test
// that started it dies. A child that cannot open out or err exits with 126, one that cannot start
// argv[0] with 127.
pid_t test_spawn(const char *const *argv, const char *out, const char *err);
// fork() for a test: this process's buffers flushed first (so that nothing is written twice), the
// test failed when the fork fails, and the child killed with its parent (Linux). The pid, 0 in the child.
pid_t test_fork(void);
// The "step" metadata of a training state file (the step it was saved at).
long test_state_step(const char *path);
// The status a waitpid status stands for: the exit status, or 128 + the signal.
int test_exit_status(int wait_status);
// Run argv to completion (as test_spawn); fails the test when it could not be started. Free the
// result with test_run_free.
struct test_run test_run_argv(const char *const *argv);
void test_run_free(struct test_run *r);
// Run the built ./msdiff with the arguments: MSDIFF("info", "--preset", "mini"). MSDIFF(NULL) runs
// it with no arguments at all.
#define MSDIFF(...) test_run_argv((const char *const[]){"./msdiff", __VA_ARGS__, NULL})
// Run argv as test_run_argv does and expect it to succeed (test_expect_ok); its output is not kept.
void test_run_ok(const char *const *argv);
#define MSDIFF_OK(...) test_run_ok((const char *const[]){"./msdiff", __VA_ARGS__, NULL})

// The run exited with 0 (the message shows its stdout and stderr).
void test_expect_ok(const struct test_run *r);
// The run failed: exit status `status` (-1: any failure, 1..127, not a crash), and exactly one line on
// stderr holding every string of needles (NULL-terminated).
void test_expect_fail(const struct test_run *r, int status, const char *const *needles);
#define TEST_EXPECT_FAIL(r, status, ...) test_expect_fail(r, status, (const char *const[]){__VA_ARGS__, NULL})

#endif
