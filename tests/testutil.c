// testutil.c: guarded buffers, seeded fills, comparison and finite differences, temporary files and
// running a program (see testutil.h).
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h> // PR_SET_PDEATHSIG: a child never outlives a killed test
#endif

#include "common/core/backend.h"
#include "common/core/error.h"
#include "common/core/rng.h"
#include "common/core/util.h"
#include "common/io/safetensors.h"
#include "tolerance.h"

// ---------------------------------------------------------------------------------------------------
// Guarded buffers, of floats or doubles. Layout: [head][guard][data ... n elements][guard]; the head
// (16 bytes, so that the data stays aligned) holds n, so free and check need only the pointer. The
// sentinel is a NaN with a payload no computation produces.

enum { HEAD = 16 };
static const uint32_t GUARD_BITS = 0x7fc0beefu;
static const uint64_t DGUARD_BITS = 0x7ff8dead0000beefull;

static void *guarded_new(size_t n, size_t size, const void *sentinel) {
    unsigned char *base = xmalloc(HEAD + (n + 2 * TEST_GUARD) * size), *p = base + HEAD + TEST_GUARD * size;
    memcpy(base, &n, sizeof n);
    for (size_t i = 0; i < TEST_GUARD; i++) {
        memcpy(p - (i + 1) * size, sentinel, size);
        memcpy(p + (n + i) * size, sentinel, size);
    }
    memset(p, 0, n * size); // 0.0 in either type
    return p;
}

static void guarded_check(const void *p, size_t n, size_t size, const void *sentinel, const char *what) {
    const unsigned char *q = p;
    for (size_t i = 0; i < TEST_GUARD; i++) {
        ck_assert_msg(!memcmp(q - (i + 1) * size, sentinel, size),
                      "%s: guard before the buffer overwritten at offset -%zu", what, i + 1);
        ck_assert_msg(!memcmp(q + (n + i) * size, sentinel, size),
                      "%s: guard after the buffer overwritten at offset n+%zu (n=%zu)", what, i, n);
    }
}

static void guarded_free(void *p, size_t size) {
    if (p) free((unsigned char *)p - HEAD - TEST_GUARD * size);
}

float *tbuf_new(size_t n) { return guarded_new(n, sizeof(float), &GUARD_BITS); }
void tbuf_check(const float *p, size_t n, const char *what) { guarded_check(p, n, sizeof(float), &GUARD_BITS, what); }
void tbuf_free(float *p) { guarded_free(p, sizeof(float)); }

double *dbuf_new(size_t n) { return guarded_new(n, sizeof(double), &DGUARD_BITS); }
void dbuf_check(const double *p, size_t n, const char *what) {
    guarded_check(p, n, sizeof(double), &DGUARD_BITS, what);
}
void dbuf_free(double *p) { guarded_free(p, sizeof(double)); }

// ---------------------------------------------------------------------------------------------------
// Fills

void fill_uniform(float *x, size_t n, uint64_t seed, float lo, float hi) {
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * msd_rng_uniform(seed, MSD_STREAM_TEST, i);
}

void fill_normal(float *x, size_t n, uint64_t seed, float std) {
    for (size_t i = 0; i < n; i++) x[i] = std * msd_rng_normal(seed, MSD_STREAM_TEST, i);
}

void perturb_weights(const struct msd_backend *be, float *w, size_t n, uint64_t seed, float std) {
    float *h = xmalloc(n * sizeof *h), *d = xmalloc(n * sizeof *d);
    be->download(h, w, n);
    fill_normal(d, n, seed, std);
    for (size_t i = 0; i < n; i++) h[i] += d[i];
    be->upload(w, h, n);
    free(h), free(d);
}

// ---------------------------------------------------------------------------------------------------
// Comparison

struct cmp_result compare(const float *got, const float *want, size_t n) {
    struct cmp_result r = {.n = n};
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double g = got[i], w = want[i];
        if (!isfinite(g) || !isfinite(w)) {
            // both NaN, or the same infinity, is agreement
            int same = (isnan(g) && isnan(w)) || (isinf(g) && isinf(w) && (g > 0) == (w > 0));
            if (!same) r.nonfinite_mismatch++;
            continue;
        }
        double d = fabs(g - w);
        if (d > r.max_abs) {
            r.max_abs = d;
            r.worst = i;
        }
        double rel = d / fmax(fabs(w), 1e-30);
        if (rel > r.max_rel) r.max_rel = rel;
        num += d * d;
        den += w * w;
    }
    r.rel_l2 = den > 0 ? sqrt(num / den) : sqrt(num);
    return r;
}

void assert_close(const float *got, const float *want, size_t n, double abs_tol, uint64_t seed,
                  const char *what) {
    struct cmp_result r = compare(got, want, n);
    double scale = 1.0;
    for (size_t i = 0; i < n; i++)
        if (isfinite(want[i])) scale = fmax(scale, fabs(want[i]));
    char first[256] = "";
    size_t used = 0, shown = 0;
    for (size_t i = 0; i < n && shown < 3; i++) {
        int bad = !(isfinite(got[i]) && isfinite(want[i])) ? (isnan(got[i]) != isnan(want[i]))
                                                           : fabs((double)got[i] - want[i]) > abs_tol * scale;
        if (bad && used < sizeof first) {
            used += snprintf(first + used, sizeof first - used, " [%zu] got %.9g want %.9g;", i, got[i],
                             want[i]);
            shown++;
        }
    }
    ck_assert_msg(r.nonfinite_mismatch == 0, "%s (seed %llu): %zu NaN/Inf disagreements;%s", what,
                  (unsigned long long)seed, r.nonfinite_mismatch, first);
    ck_assert_msg(r.max_abs <= abs_tol * scale,
                  "%s (seed %llu): max abs err %.3g > %.3g (x scale %.3g) at [%zu] (got %.9g want %.9g); "
                  "max rel %.3g, rel L2 %.3g; first mismatches:%s",
                  what, (unsigned long long)seed, r.max_abs, abs_tol, scale, r.worst, got[r.worst],
                  want[r.worst], r.max_rel, r.rel_l2, first);
}

// ---------------------------------------------------------------------------------------------------
// Finite differences

static double weighted_sum(const float *r, const float *out, size_t n) {
    double acc = 0.0;
    for (size_t i = 0; i < n; i++) acc += (double)r[i] * out[i];
    return acc;
}

// L at x[j] = v, restoring nothing (the caller restores).
static double loss_at(fd_forward f, void *ctx, const float *r, float *out, size_t nout, float *x,
                      size_t j, float v) {
    x[j] = v;
    f(ctx, out);
    return weighted_sum(r, out, nout);
}

double fd_check(const char *what, fd_forward f, void *ctx, const float *r, size_t nout, float *x,
                const float *grad, size_t nx, int max_entries, uint64_t seed) {
    float *out = xmalloc(nout * sizeof(float));
    double scale = 0.0;
    for (size_t j = 0; j < nx; j++) scale = fmax(scale, fabs(grad[j]));
    const size_t count = nx < (size_t)max_entries ? nx : (size_t)max_entries;
    double worst = 0.0;
    size_t worst_j = 0;
    double worst_fd = 0.0;
    for (size_t k = 0; k < count; k++) {
        size_t j = count == nx ? k : msd_rng_u32(seed, MSD_STREAM_TEST + 1, k) % nx;
        const float x0 = x[j];
        const double h = FD_STEP * fmax(1.0, fabs(x0));
        // Fourth-order central difference: f' ~ (8 (f(+h) - f(-h)) - (f(+2h) - f(-2h))) / 12h.
        // The perturbed values are rounded to float; the actual steps taken are used below.
        const float p1 = (float)(x0 + h), m1 = (float)(x0 - h);
        const float p2 = (float)(x0 + 2 * h), m2 = (float)(x0 - 2 * h);
        double lp1 = loss_at(f, ctx, r, out, nout, x, j, p1);
        double lm1 = loss_at(f, ctx, r, out, nout, x, j, m1);
        double lp2 = loss_at(f, ctx, r, out, nout, x, j, p2);
        double lm2 = loss_at(f, ctx, r, out, nout, x, j, m2);
        x[j] = x0;
        // With unequal rounded steps the stencil is solved for the actual offsets: take the two
        // second-order estimates d1, d2 and extrapolate d = d1 + (d1 - d2) / 3 (exact when h2 = 2 h1).
        double d1 = (lp1 - lm1) / ((double)p1 - m1);
        double d2 = (lp2 - lm2) / ((double)p2 - m2);
        double fd = d1 + (d1 - d2) / 3.0;
        double an = grad[j];
        double err = fabs(fd - an) / (fmax(fabs(fd), fabs(an)) + FD_FLOOR * scale + 1e-30);
        if (err > worst) {
            worst = err;
            worst_j = j;
            worst_fd = fd;
        }
    }
    f(ctx, out); // leave the context's output as at x
    free(out);
    printf("fd %-48s worst rel err %.2e over %zu of %zu entries\n", what, worst, count, nx);
    ck_assert_msg(worst <= FD_TOL,
                  "%s (seed %llu): finite difference disagrees at [%zu]: fd %.9g, analytic %.9g, "
                  "rel err %.3g > %.3g",
                  what, (unsigned long long)seed, worst_j, worst_fd, (double)grad[worst_j], worst, FD_TOL);
    return worst;
}

double check_op_gradients(const char *op, fd_forward forward, op_backward backward, void *ctx,
                          float *out, size_t nout, struct grad_tensor *t, int nt, uint64_t seed) {
    float *r = tbuf_new(nout);
    fill_uniform(r, nout, seed ^ 0x5eedu, -1.0f, 1.0f);
    // (1) the convention: parameters accumulate from zero, inputs are overwritten
    for (int k = 0; k < nt; k++)
        for (size_t i = 0; i < t[k].n; i++) t[k].grad[i] = t[k].is_param ? 0.0f : 1e30f;
    backward(ctx, r);
    float **first = xmalloc(nt * sizeof(float *));
    for (int k = 0; k < nt; k++) {
        first[k] = xmalloc(t[k].n * sizeof(float));
        memcpy(first[k], t[k].grad, t[k].n * sizeof(float));
    }
    backward(ctx, r);
    for (int k = 0; k < nt; k++) {
        for (size_t i = 0; i < t[k].n; i++) {
            if (t[k].is_param)
                ck_assert_msg(t[k].grad[i] == 2 * first[k][i],
                              "%s %s (seed %llu): parameter gradient does not accumulate: [%zu] %.9g after "
                              "two calls, %.9g after one",
                              op, t[k].name, (unsigned long long)seed, i, t[k].grad[i], first[k][i]);
            else
                ck_assert_msg(t[k].grad[i] == first[k][i] && fabsf(first[k][i]) < 1e29f,
                              "%s %s (seed %llu): input gradient not written: [%zu] %.9g then %.9g", op,
                              t[k].name, (unsigned long long)seed, i, first[k][i], t[k].grad[i]);
        }
    }
    // (2) finite differences on every tensor
    double worst = 0.0;
    for (int k = 0; k < nt; k++) {
        char what[160];
        snprintf(what, sizeof what, "%s %s", op, t[k].name);
        double e = fd_check(what, forward, ctx, r, nout, t[k].x, first[k], t[k].n, 256, seed + k);
        worst = fmax(worst, e);
        free(first[k]);
    }
    free(first);
    // (3) guards
    tbuf_check(r, nout, "dy");
    tbuf_check(out, nout, "y");
    for (int k = 0; k < nt; k++) {
        tbuf_check(t[k].x, t[k].n, t[k].name);
        tbuf_check(t[k].grad, t[k].n, t[k].name);
    }
    tbuf_free(r);
    return worst;
}

// ---------------------------------------------------------------------------------------------------
// Running a suite

int run_test_suite(const struct test_suite *t) {
    Suite *s = suite_create(t->name);
    TCase *tc = tcase_create(t->name);
    if (t->timeout_s > 0) tcase_set_timeout(tc, t->timeout_s);
    if (t->setup) tcase_add_checked_fixture(tc, t->setup, NULL);
    for (size_t i = 0; i < t->n; i++)
        if (t->tests[i]) tcase_add_test(tc, t->tests[i]);
    for (size_t i = 0; i < t->n_loops; i++) tcase_add_loop_test(tc, t->loops[i].test, 0, t->loops[i].n);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    if (t->no_fork) srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    const int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    test_tmpdir_remove();
    return failed ? 1 : 0;
}

int run_tests(const char *name, int timeout_s, const TTest *const *tests, size_t n) {
    return run_test_suite(&(struct test_suite){.name = name, .timeout_s = timeout_s, .tests = tests, .n = n});
}

// ---------------------------------------------------------------------------------------------------
// Temporary files

static char tmpdir[256];

const char *test_tmpdir_make(const char *suite) {
    if (tmpdir[0]) return tmpdir;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/msd-test-%s-XXXXXX", suite);
    if (!mkdtemp(tmpdir)) {
        fprintf(stderr, "test_%s: mkdtemp %s failed: %s\n", suite, tmpdir, strerror(errno));
        exit(1);
    }
    return tmpdir;
}

const char *test_tmpdir(void) {
    if (!tmpdir[0]) {
        fprintf(stderr, "test bug: the temporary directory is used before test_tmpdir_make\n");
        abort();
    }
    return tmpdir;
}

void test_tmpdir_remove(void) {
    if (!tmpdir[0]) return;
    test_remove_tree(tmpdir);
    tmpdir[0] = '\0';
}

static char *next_path_buffer(void) {
    static char buf[TEST_PATHS][TEST_PATH_MAX];
    static unsigned k;
    return buf[k++ % TEST_PATHS];
}

const char *test_pathf(const char *fmt, ...) {
    char *p = next_path_buffer();
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(p, TEST_PATH_MAX, fmt, ap);
    va_end(ap);
    if (n < 0 || n >= TEST_PATH_MAX) { // not ck_assert: this may run before the tests, in main()
        fprintf(stderr, "test bug: a path of %d bytes: %s...\n", n, p);
        abort();
    }
    return p;
}

const char *test_path(const char *name) { return test_pathf("%s/%s", test_tmpdir(), name); }

const char *test_subdir(const char *name) {
    const char *p = test_path(name);
    ck_assert_msg(mkdir(p, 0755) == 0, "mkdir %s: %s", p, strerror(errno));
    return p;
}

bool test_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

char *test_read_file(const char *path, size_t *len) {
    FILE *fp = fopen(path, "rb");
    ck_assert_msg(fp != NULL, "cannot open %s: %s", path, strerror(errno));
    ck_assert_msg(fseek(fp, 0, SEEK_END) == 0, "cannot seek in %s", path);
    long n = ftell(fp);
    ck_assert_msg(n >= 0 && fseek(fp, 0, SEEK_SET) == 0, "cannot tell the size of %s", path);
    char *s = malloc((size_t)n + 1);
    ck_assert_msg(s != NULL && fread(s, 1, (size_t)n, fp) == (size_t)n, "cannot read %s (%ld bytes)", path, n);
    s[n] = '\0';
    fclose(fp);
    if (len) *len = (size_t)n;
    return s;
}

void test_write_file(const char *path, const void *bytes, size_t n) {
    FILE *fp = fopen(path, "wb");
    ck_assert_msg(fp != NULL, "cannot create test file %s: %s", path, strerror(errno));
    ck_assert_msg(n == 0 || fwrite(bytes, 1, n, fp) == n, "short write to %s", path);
    ck_assert_msg(fclose(fp) == 0, "close of %s failed", path);
}

void test_remove_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st) < 0) return;
    if (!S_ISDIR(st.st_mode)) {
        unlink(path);
        return;
    }
    DIR *d = opendir(path);
    if (d) {
        char sub[1024];
        for (struct dirent *e; (e = readdir(d));) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
            test_remove_tree(sub);
        }
        closedir(d);
    }
    rmdir(path);
}

// ---------------------------------------------------------------------------------------------------
// Running a program

pid_t test_fork(void) {
    fflush(NULL); // what this process buffered must not be written twice
    pid_t pid = fork();
    ck_assert_msg(pid >= 0, "fork failed: %s", strerror(errno));
#ifdef __linux__
    if (pid == 0) prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
    return pid;
}

long test_state_step(const char *path) {
    struct msd_st_file f;
    ck_assert_msg(msd_st_read(&f, path) == 0, "%s", msd_last_error());
    const char *s = msd_st_meta(&f, "step");
    ck_assert_msg(s != NULL, "%s has no step metadata", path);
    long step = strtol(s, NULL, 10);
    msd_st_free(&f);
    return step;
}

pid_t test_spawn(const char *const *argv, const char *out, const char *err) {
    pid_t pid = test_fork();
    if (pid == 0) {
        int fo = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644), fe = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fo < 0 || fe < 0 || dup2(fo, 1) < 0 || dup2(fe, 2) < 0) _exit(126);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    return pid;
}

int test_exit_status(int st) { return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st); }

struct test_run test_run_argv(const char *const *argv) {
    struct test_run r = {0};
    size_t len = 0;
    for (int i = 0; argv[i] && len < sizeof r.line; i++)
        len += (size_t)snprintf(r.line + len, sizeof r.line - len, "%s%s", i ? " " : "", argv[i]);
    // not from test_path: every run would use up two of its buffers
    char out[TEST_PATH_MAX], err[TEST_PATH_MAX];
    snprintf(out, sizeof out, "%s/stdout.txt", test_tmpdir());
    snprintf(err, sizeof err, "%s/stderr.txt", test_tmpdir());
    pid_t pid = test_spawn(argv, out, err);
    int st;
    ck_assert_msg(waitpid(pid, &st, 0) == pid, "waitpid failed: %s", strerror(errno));
    r.status = test_exit_status(st);
    ck_assert_msg(r.status != 127, "could not run %s (run the tests from the repository root after make)",
                  argv[0]);
    r.out = test_read_file(out, NULL);
    r.err = test_read_file(err, NULL);
    return r;
}

void test_run_free(struct test_run *r) {
    free(r->out);
    free(r->err);
    r->out = r->err = NULL;
}

void test_expect_ok(const struct test_run *r) {
    ck_assert_msg(r->status == 0, "'%s' exited with %d, want 0; stdout: %s; stderr: %s", r->line, r->status,
                  r->out, r->err);
}

void test_run_ok(const char *const *argv) {
    struct test_run r = test_run_argv(argv);
    test_expect_ok(&r);
    test_run_free(&r);
}

void test_expect_fail(const struct test_run *r, int status, const char *const *needles) {
    char want[32];
    if (status < 0) snprintf(want, sizeof want, "a failure (1..127)");
    else snprintf(want, sizeof want, "%d", status);
    ck_assert_msg(status < 0 ? r->status != 0 && r->status < 128 : r->status == status,
                  "'%s' exited with %d, want %s; stderr: %s", r->line, r->status, want, r->err);
    for (int i = 0; needles[i]; i++)
        ck_assert_msg(strstr(r->err, needles[i]), "'%s': stderr does not name '%s': %s", r->line, needles[i],
                      r->err);
    ck_assert_msg(r->err[0] && strchr(r->err, '\n') == r->err + strlen(r->err) - 1,
                  "'%s': want one line on stderr, got: %s", r->line, r->err);
}
