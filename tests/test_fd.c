// test_fd.c: the Gaussian fit, Jacobi eigen-decomposition, PSD square root and Frechet distance
// (common/eval/fd.h).
//
// Holds: eigen-decompositions of random symmetric matrices (d = 1, 2, 7, 64) held to A V = V Lambda
// and V^T V = I, with the lower triangle poisoned (only the upper is read), and of matrices with known
// (repeated, zero, negative) eigenvalues; square roots of random SPD and rank-deficient PSD matrices
// (R R = A) and the clamping of rounding-negative eigenvalues; known Frechet distances (diagonal and
// commuting covariances, full rank and singular, the 1-D and the 2-D non-commuting closed forms, a
// Gaussian with itself, a dead feature); the fit against a long-double reference and against exact
// answers (n = 2, a large common offset); FD(X, X), FD(A, B) = FD(B, A), and same-distribution samples
// against shifted and rescaled ones; the error paths; d = 256 at the size msdiff eval uses, timed; and
// the cross-check with numpy: bench/fd_check.py on the same feature files (.npy, written here), when
// /usr/bin/python3 has numpy (skipped, saying why, when not). Prints every error next to its bound, so
// that a run shows the margins.
// Not tested: the "did not converge" error (no matrix found that needs more than 9 sweeps).
//
// Tolerances (u = 2^-53). Jacobi is backward stable: the computed V, Lambda are exact for A + E with
// ||E||_F of order c d u ||A||_F after a fixed number of sweeps (Golub & Van Loan 8.5; c ~ the sweeps,
// about 10), and the computed V is orthogonal to about the same. At d = 64 that is ~7e-14; measured:
// 2e-15 (residual) and 2e-14 (orthogonality). TOL_EIG = 1e-12 is 14 times the estimate, for the sweep
// count c is itself an estimate. The FD sums d square roots of eigenvalues, each eigenvalue good to
// ~c d u ||M||: for full-rank covariances that is 1e-12 of tr S1 + tr S2 at d <= 64 (TOL_FD). A zero
// eigenvalue is the exception: its square root turns an error E into sqrt(E) (fd_known_diagonal
// derives that bound). The fit accumulates n products per entry in double: n u ~ 1e-13 for n = 1000
// (TOL_FIT 1e-12).
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/core/error.h"
#include "common/eval/fd.h"
#include "common/core/rng.h"
#include "testutil.h"

#define TOL_EIG 1e-12
#define TOL_FD 1e-12
#define TOL_FIT 1e-12
// C against numpy: different algorithms, both in double. The full-rank sets agree to about 1e-11; the
// rank-deficient one (n < d) to about 1e-8, where each side's zero eigenvalues come out as +-E and their
// square roots reach the FD (fd_known_diagonal derives that). 1e-6 leaves two orders of magnitude over
// that for another machine's LAPACK; a real disagreement (a wrong term, a missing factor) is of order one.
#define TOL_NUMPY 1e-6
#ifndef PYTHON // (-DPYTHON=... builds a suite that runs another interpreter: how the skip paths were tried)
#define PYTHON "/usr/bin/python3"
#endif
#define FD_CHECK "bench/fd_check.py"

// ---------------------------------------------------------------------------------------------------
// Matrices for the tests, all (d, d) row-major double, from the counter RNG.

static double normal(uint64_t seed, uint64_t i) { return msd_rng_normal(seed, MSD_STREAM_TEST, i); }

static void random_symmetric(double *a, int d, uint64_t seed) {
    for (int i = 0; i < d; i++)
        for (int j = i; j < d; j++) a[i * d + j] = a[j * d + i] = normal(seed, (uint64_t)(i * d + j));
}

// A random orthogonal q by modified Gram-Schmidt on its rows, done twice (independent of the code
// under test; rows, so the loops run along memory: orthonormal rows make the columns orthonormal too).
static void random_orthogonal(double *q, int d, uint64_t seed) {
    for (int i = 0; i < d * d; i++) q[i] = normal(seed, (uint64_t)i);
    for (int j = 0; j < d; j++) { // row j
        double *qj = q + (size_t)j * d;
        for (int pass = 0; pass < 2; pass++) {
            for (int k = 0; k < j; k++) {
                const double *qk = q + (size_t)k * d;
                double dot = 0.0;
                for (int i = 0; i < d; i++) dot += qk[i] * qj[i];
                for (int i = 0; i < d; i++) qj[i] -= dot * qk[i];
            }
            double norm = 0.0;
            for (int i = 0; i < d; i++) norm += qj[i] * qj[i];
            norm = sqrt(norm);
            for (int i = 0; i < d; i++) qj[i] /= norm;
        }
    }
}

// a = q diag(lambda) q^T
static void with_eigenvalues(double *a, const double *q, const double *lambda, int d) {
    for (int i = 0; i < d; i++)
        for (int j = 0; j < d; j++) {
            double sum = 0.0;
            for (int k = 0; k < d; k++) sum += q[i * d + k] * lambda[k] * q[j * d + k];
            a[i * d + j] = sum;
        }
    for (int i = 0; i < d; i++) // exactly symmetric
        for (int j = i + 1; j < d; j++) a[j * d + i] = a[i * d + j];
}

// c = a b, all (d, d)
static void matmul(double *c, const double *a, const double *b, int d) {
    for (int i = 0; i < d; i++)
        for (int j = 0; j < d; j++) {
            double sum = 0.0;
            for (int k = 0; k < d; k++) sum += a[i * d + k] * b[k * d + j];
            c[i * d + j] = sum;
        }
}

// a = b b^T / r + shift I with b: (d, r) random: SPD for shift > 0, PSD of rank min(r, d) for shift 0.
static void random_psd(double *a, int d, int r, double shift, uint64_t seed) {
    for (int i = 0; i < d; i++)
        for (int j = i; j < d; j++) {
            double sum = 0.0;
            for (int k = 0; k < r; k++)
                sum += normal(seed, (uint64_t)(i * r + k)) * normal(seed, (uint64_t)(j * r + k));
            a[i * d + j] = a[j * d + i] = sum / r + (i == j ? shift : 0.0);
        }
}

static double frobenius(const double *a, size_t n) {
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) sum += a[i] * a[i];
    return sqrt(sum);
}

static double trace(const double *a, int d) {
    double t = 0.0;
    for (int i = 0; i < d; i++) t += a[i * d + i];
    return t;
}

static double seconds_on(clockid_t clock) {
    struct timespec t;
    clock_gettime(clock, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

// Wall time and this thread's CPU time: on a shared machine the two differ, and both are printed.
struct stopwatch {
    double wall, cpu;
};
static struct stopwatch stopwatch_now(void) {
    return (struct stopwatch){seconds_on(CLOCK_MONOTONIC), seconds_on(CLOCK_THREAD_CPUTIME_ID)};
}
static struct stopwatch stopwatch_since(struct stopwatch t0) {
    struct stopwatch t = stopwatch_now();
    return (struct stopwatch){t.wall - t0.wall, t.cpu - t0.cpu};
}

// ---------------------------------------------------------------------------------------------------
// Eigen-decomposition

// Decompose a (its lower triangle poisoned with NaN first: only the upper may be read) and hold the
// result to A V = V Lambda, V^T V = I, ascending eigenvalues, and the trace and Frobenius invariants.
// Returns the residual ||A V - V Lambda||_F / ||A||_F.
static double check_eigen(const double *a, int d, uint64_t seed, const char *what) {
    size_t dd = (size_t)d * d;
    double *work = dbuf_new(dd), *lam = dbuf_new((size_t)d), *v = dbuf_new(dd);
    memcpy(work, a, dd * sizeof *work);
    for (int i = 0; i < d; i++)
        for (int j = 0; j < i; j++) work[i * d + j] = NAN;
    msd_clear_error();
    ck_assert_msg(msd_sym_eigen(work, d, lam, v) == 0, "%s d=%d seed %llu: %s", what, d, (unsigned long long)seed,
                  msd_last_error());
    dbuf_check(work, dd, "a");
    dbuf_check(lam, (size_t)d, "eigenvalues");
    dbuf_check(v, dd, "eigenvectors");

    double norm = frobenius(a, dd), res2 = 0.0, orth = 0.0, sum = 0.0, sum2 = 0.0;
    for (int i = 0; i < d; i++)
        for (int j = 0; j < d; j++) {
            double av = 0.0, vtv = 0.0;
            for (int k = 0; k < d; k++) {
                av += a[i * d + k] * v[k * d + j];
                vtv += v[k * d + i] * v[k * d + j];
            }
            double r = av - v[i * d + j] * lam[j];
            res2 += r * r;
            orth = fmax(orth, fabs(vtv - (i == j ? 1.0 : 0.0)));
        }
    for (int j = 0; j < d; j++) {
        ck_assert_msg(isfinite(lam[j]), "%s d=%d seed %llu: eigenvalue %d is %g", what, d, (unsigned long long)seed,
                      j, lam[j]);
        ck_assert_msg(j == 0 || lam[j - 1] <= lam[j], "%s d=%d: eigenvalues not ascending at %d: %g > %g", what, d,
                      j, lam[j - 1], lam[j]);
        sum += lam[j];
        sum2 += lam[j] * lam[j];
    }
    double res = norm > 0 ? sqrt(res2) / norm : sqrt(res2);
    double scale = fmax(norm, 1e-300);
    ck_assert_msg(res <= TOL_EIG, "%s d=%d seed %llu: ||A V - V Lambda||_F / ||A||_F = %.3g > %g", what, d,
                  (unsigned long long)seed, res, TOL_EIG);
    ck_assert_msg(orth <= TOL_EIG, "%s d=%d seed %llu: max |V^T V - I| = %.3g > %g", what, d,
                  (unsigned long long)seed, orth, TOL_EIG);
    ck_assert_msg(fabs(sum - trace(a, d)) <= TOL_EIG * scale * sqrt(d),
                  "%s d=%d: sum of eigenvalues %.17g, trace %.17g", what, d, sum, trace(a, d));
    ck_assert_msg(fabs(sqrt(sum2) - norm) <= TOL_EIG * scale, "%s d=%d: sqrt(sum lambda^2) %.17g, ||A||_F %.17g",
                  what, d, sqrt(sum2), norm);
    printf("  eigen %s d=%d: ||AV - V Lambda||_F/||A||_F = %.2e, max|V^T V - I| = %.2e, lambda in [%.4g, %.4g]\n",
           what, d, res, orth, lam[0], lam[d - 1]);
    dbuf_free(work), dbuf_free(lam), dbuf_free(v);
    return res;
}

// The dimensions of the random matrices: 1 and 2 (the smallest cases), 7 (odd), 64.
static const int DIMS[] = {1, 2, 7, 64};

START_TEST(eigen_random_symmetric) {
    for (size_t k = 0; k < TEST_COUNT(DIMS); k++) {
        double *a = malloc((size_t)DIMS[k] * DIMS[k] * sizeof *a);
        random_symmetric(a, DIMS[k], 100 + k);
        check_eigen(a, DIMS[k], 100 + k, "random");
        free(a);
    }
}
END_TEST

// Known spectra: Q diag(lambda) Q^T with repeated, zero and negative eigenvalues; the eigenvalues come
// back sorted to TOL_EIG of the largest. Also the zero matrix, the identity and an unsorted diagonal
// (no rotation at all: the eigenvectors are a permutation).
START_TEST(eigen_known_spectra) {
    enum { D = 64 };
    static double q[D * D], a[D * D], lam[D], want[D], got[D], work[D * D], v[D * D];
    const int dims[] = {7, D};
    for (size_t k = 0; k < 2; k++) {
        int d = dims[k];
        random_orthogonal(q, d, 200 + k);
        for (int i = 0; i < d; i++) lam[i] = i % 3 == 0 ? 2.0 : i % 3 == 1 ? -0.5 * i : 0.0; // repeats
        with_eigenvalues(a, q, lam, d);
        check_eigen(a, d, 200 + k, "known spectrum");
        memcpy(want, lam, (size_t)d * sizeof *lam);
        for (int i = 1; i < d; i++) // insertion sort of the expected values
            for (int j = i; j > 0 && want[j - 1] > want[j]; j--) {
                double t = want[j];
                want[j] = want[j - 1];
                want[j - 1] = t;
            }
        memcpy(work, a, (size_t)d * d * sizeof *a);
        ck_assert_msg(msd_sym_eigen(work, d, got, NULL) == 0, "%s", msd_last_error()); // eigenvalues only
        double big = fabs(want[0]) > fabs(want[d - 1]) ? fabs(want[0]) : fabs(want[d - 1]), worst = 0.0;
        for (int i = 0; i < d; i++) worst = fmax(worst, fabs(got[i] - want[i]));
        ck_assert_msg(worst <= TOL_EIG * big, "known spectrum d=%d: worst eigenvalue error %.3g (largest %g)", d,
                      worst, big);
        printf("  eigen known spectrum d=%d (eigenvalues only): worst error %.2e of max |lambda| %g\n", d, worst, big);
    }
    // zero, identity, an unsorted diagonal
    int d = 5;
    memset(a, 0, sizeof a);
    check_eigen(a, d, 0, "zero");
    for (int i = 0; i < d; i++) a[i * d + i] = 1.0;
    check_eigen(a, d, 0, "identity");
    const double diag[5] = {3.0, -1.0, 2.0, 0.0, -7.0}, sorted[5] = {-7.0, -1.0, 0.0, 2.0, 3.0};
    const int from[5] = {4, 1, 3, 2, 0}; // sorted[j] = diag[from[j]]
    memset(a, 0, sizeof a);
    for (int i = 0; i < d; i++) a[i * d + i] = diag[i];
    memcpy(work, a, sizeof a);
    ck_assert(msd_sym_eigen(work, d, got, v) == 0);
    for (int j = 0; j < d; j++) {
        ck_assert_msg(got[j] == sorted[j], "diagonal: eigenvalue %d is %g, want %g", j, got[j], sorted[j]);
        for (int i = 0; i < d; i++)
            ck_assert_msg(v[i * d + j] == (i == from[j] ? 1.0 : 0.0), "diagonal: V[%d][%d] = %g", i, j, v[i * d + j]);
    }
}
END_TEST

START_TEST(eigen_errors) {
    double a[9] = {1, 2, 3, 2, 5, 6, 3, 6, 9}, lam[3];
    ck_assert(msd_sym_eigen(a, 0, lam, NULL) == -1 && strstr(msd_last_error(), "dimension 0"));
    a[5] = INFINITY; // [1][2], upper
    ck_assert_msg(msd_sym_eigen(a, 3, lam, NULL) == -1 && strstr(msd_last_error(), "[1][2] is +Inf"), "'%s'",
                  msd_last_error());
    printf("  (expected) %s\n", msd_last_error());
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// Square root

// r = sqrt(a): exactly symmetric, r r = a to TOL_EIG of ||a||_F, r PSD. Returns ||r r - a||_F / ||a||_F.
static double check_sqrt(const double *a, int d, const char *what) {
    size_t dd = (size_t)d * d;
    double *r = dbuf_new(dd), *rr = malloc(dd * sizeof *rr), *lam = malloc((size_t)d * sizeof *lam);
    double *copy = malloc(dd * sizeof *copy);
    memcpy(copy, a, dd * sizeof *copy);
    ck_assert_msg(msd_sym_sqrt(a, d, r) == 0, "%s d=%d: %s", what, d, msd_last_error());
    dbuf_check(r, dd, "sqrt out");
    ck_assert_msg(memcmp(copy, a, dd * sizeof *a) == 0, "%s d=%d: msd_sym_sqrt changed its input", what, d);
    for (int i = 0; i < d; i++)
        for (int j = 0; j < i; j++)
            ck_assert_msg(r[i * d + j] == r[j * d + i], "%s d=%d: sqrt not symmetric at [%d][%d]", what, d, i, j);
    matmul(rr, r, r, d);
    for (size_t i = 0; i < dd; i++) rr[i] -= a[i];
    double err = frobenius(rr, dd) / frobenius(a, dd);
    ck_assert_msg(err <= TOL_EIG, "%s d=%d: ||sqrt(A)^2 - A||_F / ||A||_F = %.3g > %g", what, d, err, TOL_EIG);
    memcpy(copy, r, dd * sizeof *copy);
    ck_assert(msd_sym_eigen(copy, d, lam, NULL) == 0);
    ck_assert_msg(lam[0] >= -TOL_EIG * lam[d - 1], "%s d=%d: sqrt has eigenvalue %g (largest %g)", what, d, lam[0],
                  lam[d - 1]);
    printf("  sqrt %s d=%d: ||sqrt(A)^2 - A||_F/||A||_F = %.2e, smallest eigenvalue of sqrt(A) %.3g\n", what, d, err,
           lam[0]);
    dbuf_free(r), free(rr), free(lam), free(copy);
    return err;
}

START_TEST(sqrt_spd_and_psd) {
    for (size_t k = 0; k < TEST_COUNT(DIMS); k++) {
        double *a = malloc((size_t)DIMS[k] * DIMS[k] * sizeof *a);
        random_psd(a, DIMS[k], DIMS[k] + 3, 0.01, 300 + k);
        check_sqrt(a, DIMS[k], "SPD");
        free(a);
    }
    // rank 5 of 16 (a covariance of 6 samples): its zero eigenvalues come out as +-rounding
    double a[16 * 16];
    random_psd(a, 16, 5, 0.0, 310);
    check_sqrt(a, 16, "rank-5 PSD");
    // d = 1: sqrt(6.25) = 2.5 exactly
    double one = 6.25, r1 = 0.0;
    ck_assert(msd_sym_sqrt(&one, 1, &r1) == 0 && r1 == 2.5);
}
END_TEST

// Known roots: Q diag(4, 9, 0.25, 0, -1e-13) Q^T has the root Q diag(2, 3, 0.5, 0, 0) Q^T (the -1e-13 is
// within MSD_PSD_TOL of 9, so rounding: clamped); Q diag(1, -0.01) Q^T is not PSD: an error.
START_TEST(sqrt_known_and_clamped) {
    enum { D = 5 };
    double q[D * D], a[D * D], want[D * D], r[D * D];
    const double lam[D] = {4, 9, 0.25, 0, -1e-13}, root[D] = {2, 3, 0.5, 0, 0};
    random_orthogonal(q, D, 320);
    with_eigenvalues(a, q, lam, D);
    with_eigenvalues(want, q, root, D);
    ck_assert_msg(msd_sym_sqrt(a, D, r) == 0, "%s", msd_last_error());
    double worst = 0.0;
    for (int i = 0; i < D * D; i++) worst = fmax(worst, fabs(r[i] - want[i]));
    ck_assert_msg(worst <= TOL_EIG * 3, "known root: worst entry error %.3g", worst);
    printf("  sqrt known root (eigenvalue -1e-13 clamped): worst entry error %.2e\n", worst);
    const double bad[2] = {1, -0.01};
    random_orthogonal(q, 2, 321);
    with_eigenvalues(a, q, bad, 2);
    ck_assert(msd_sym_sqrt(a, 2, r) == -1);
    ck_assert_msg(strstr(msd_last_error(), "not positive semi-definite") && strstr(msd_last_error(), "-0.01"), "'%s'",
                  msd_last_error());
    printf("  (expected) %s\n", msd_last_error());
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// Frechet distance: known answers

static double fd_of(const double *mu1, const double *c1, const double *mu2, const double *c2, int d) {
    double *out = dbuf_new(1);
    msd_clear_error();
    ck_assert_msg(msd_frechet_distance(mu1, c1, mu2, c2, d, out) == 0, "d=%d: %s", d, msd_last_error());
    dbuf_check(out, 1, "fd");
    double fd = out[0];
    dbuf_free(out);
    return fd;
}

// Diagonal covariances diag(a), diag(b): FD = ||mu1 - mu2||^2 + sum (sqrt a_i - sqrt b_i)^2. Then both
// rotated by the same Q (they commute, so the answer is the same) so that Jacobi has work to do.
// With every variance positive the FD is good to TOL_FD of tr S1 + tr S2. With a zero variance in b
// (S2 singular), S1^{1/2} S2 S1^{1/2} has a zero eigenvalue that comes out as +-E, the eigenvalue error
// E ~ (MSD_JACOBI_TOL + c d u) ||M||_F (c ~ 10, the sweeps), and its square root adds up to 2 sqrt(E) to
// the FD: ~1e-6 here, whatever the algorithm (numpy's eigh does the same: the rank-deficient
// cross-check). Unrotated, the zero is exact (nothing rotates it) and so is the FD.
START_TEST(fd_known_diagonal) {
    enum { D = 24 };
    static double mu1[D], mu2[D], ca[D], cb[D], c1[D * D], c2[D * D], q[D * D];
    for (int singular = 0; singular < 2; singular++) {
        double want = 0.0, scale = 0.0, max_a = 0.0, norm_b = 0.0;
        for (int i = 0; i < D; i++) {
            mu1[i] = normal(400, (uint64_t)i);
            mu2[i] = normal(401, (uint64_t)i);
            ca[i] = 0.1 + msd_rng_uniform(402, MSD_STREAM_TEST, (uint64_t)i) * 3;
            cb[i] = singular && i == 3 ? 0.0 : 0.1 + msd_rng_uniform(403, MSD_STREAM_TEST, (uint64_t)i) * 3;
            want += (mu1[i] - mu2[i]) * (mu1[i] - mu2[i]) + (sqrt(ca[i]) - sqrt(cb[i])) * (sqrt(ca[i]) - sqrt(cb[i]));
            scale += ca[i] + cb[i];
            max_a = fmax(max_a, ca[i]);
            norm_b += cb[i] * cb[i];
        }
        double eig_err = (MSD_JACOBI_TOL + 10 * D * 1.1102230246251565e-16) * max_a * sqrt(norm_b); // E above
        for (int rotated = 0; rotated < 2; rotated++) {
            for (int i = 0; i < D * D; i++) q[i] = (i / D == i % D); // the identity first: plain diagonal
            if (rotated) random_orthogonal(q, D, 404);
            with_eigenvalues(c1, q, ca, D);
            with_eigenvalues(c2, q, cb, D);
            double fd = fd_of(mu1, c1, mu2, c2, D), err = fabs(fd - want);
            double bound = TOL_FD * scale + (singular && rotated ? 2 * sqrt(eig_err) : 0.0);
            const char *what = rotated ? (singular ? "commuting, S2 singular" : "commuting (Q diag Q^T)")
                                       : (singular ? "diagonal, S2 singular" : "diagonal");
            ck_assert_msg(err <= bound, "%s: FD %.17g, want %.17g (error %.3g, bound %.3g)", what, fd, want, err,
                          bound);
            printf("  FD %s d=%d: %.15g, closed form %.15g, error %.2e (bound %.1e)\n", what, D, fd, want, err, bound);
        }
    }
}
END_TEST

// 1-D: FD = (m1 - m2)^2 + (s1 - s2)^2 with variances s1^2, s2^2. 2-D, not commuting: for 2x2 PSD S1 S2
// (eigenvalues l1, l2 >= 0), tr((S1 S2)^{1/2}) = sqrt(l1) + sqrt(l2) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2)).
START_TEST(fd_known_small) {
    double m1 = 0.3, m2 = -1.2, v1 = 2.25, v2 = 0.16; // sigma 1.5 and 0.4
    double fd = fd_of(&m1, &v1, &m2, &v2, 1), want = 1.5 * 1.5 + 1.1 * 1.1;
    ck_assert_msg(fabs(fd - want) <= TOL_FD * want, "1-D: FD %.17g, want %.17g", fd, want);
    printf("  FD 1-D: %.17g, closed form %.17g\n", fd, want);

    const double mu1[2] = {1, 2}, mu2[2] = {0.5, -1};
    const double s1[4] = {2.0, 0.7, 0.7, 1.0}, s2[4] = {0.5, -0.3, -0.3, 3.0}; // S1 S2 != S2 S1
    double p[4];
    matmul(p, s1, s2, 2);
    double det1 = s1[0] * s1[3] - s1[1] * s1[2], det2 = s2[0] * s2[3] - s2[1] * s2[2];
    double trsqrt = sqrt(p[0] + p[3] + 2.0 * sqrt(det1 * det2));
    want = (0.5 * 0.5 + 3.0 * 3.0) + trace(s1, 2) + trace(s2, 2) - 2.0 * trsqrt;
    fd = fd_of(mu1, s1, mu2, s2, 2);
    ck_assert_msg(fabs(fd - want) <= TOL_FD * (trace(s1, 2) + trace(s2, 2)), "2-D: FD %.17g, want %.17g", fd, want);
    printf("  FD 2-D non-commuting: %.17g, closed form %.17g, difference %.2e\n", fd, want, fd - want);
}
END_TEST

// A Gaussian with itself: FD = 0 up to rounding, which may be negative and is returned as it is.
START_TEST(fd_gaussian_with_itself) {
    enum { D = 64 };
    static double mu[D], c[D * D];
    for (int i = 0; i < D; i++) mu[i] = normal(500, (uint64_t)i);
    random_psd(c, D, D + 10, 0.0, 501);
    double fd = fd_of(mu, c, mu, c, D), tr = trace(c, D);
    ck_assert_msg(fabs(fd) <= TOL_FD * 2 * tr, "FD of a Gaussian with itself %.3g, tr S %.6g", fd, tr);
    printf("  FD Gaussian with itself d=%d: %.3e (tr S = %.4g, |FD| / 2 tr S = %.2e)\n", D, fd, tr,
           fabs(fd) / (2 * tr));
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// Gaussian fit

// Reference fit in long double, the textbook two loops.
static void fit_reference(const float *x, int n, int d, double *mean, double *cov) {
    long double *m = calloc((size_t)d, sizeof *m);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < d; j++) m[j] += x[(size_t)i * d + j];
    for (int j = 0; j < d; j++) m[j] /= n;
    for (int j = 0; j < d; j++)
        for (int k = 0; k < d; k++) {
            long double s = 0;
            for (int i = 0; i < n; i++) s += (x[(size_t)i * d + j] - m[j]) * (x[(size_t)i * d + k] - m[k]);
            cov[j * d + k] = (double)(s / (n - 1));
        }
    for (int j = 0; j < d; j++) mean[j] = (double)m[j];
    free(m);
}

// features: (n, d): x = A z + offset, A random (d, d) / sqrt(d), z standard normal; `shift` added to every
// coordinate, `scale` multiplies A z.
static void make_features(float *x, int n, int d, uint64_t seed, double shift, double scale) {
    double *a = malloc((size_t)d * d * sizeof *a), *z = malloc((size_t)d * sizeof *z);
    for (int i = 0; i < d * d; i++) a[i] = normal(1000, (uint64_t)i) / sqrt(d) + (i / d == i % d ? 0.5 : 0.0);
    for (int s = 0; s < n; s++) {
        for (int k = 0; k < d; k++) z[k] = normal(seed, (uint64_t)s * d + k);
        for (int j = 0; j < d; j++) {
            double sum = 0.0;
            for (int k = 0; k < d; k++) sum += a[j * d + k] * z[k];
            x[(size_t)s * d + j] = (float)(scale * sum + shift + 0.1 * j);
        }
    }
    free(a), free(z);
}

START_TEST(fit_against_reference) {
    const struct { int n, d; } cases[] = {{2, 3}, {37, 5}, {1000, 33}, {131, 1}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        int n = cases[k].n, d = cases[k].d;
        float *x = malloc((size_t)n * d * sizeof *x);
        make_features(x, n, d, 600 + k, 0.0, 1.0);
        double *mean = dbuf_new((size_t)d), *cov = dbuf_new((size_t)d * d);
        double *rm = malloc((size_t)d * sizeof *rm), *rc = malloc((size_t)d * d * sizeof *rc);
        ck_assert_msg(msd_gaussian_fit(x, n, d, mean, cov) == 0, "n=%d d=%d: %s", n, d, msd_last_error());
        dbuf_check(mean, (size_t)d, "mean");
        dbuf_check(cov, (size_t)d * d, "cov");
        fit_reference(x, n, d, rm, rc);
        double em = 0.0, ec = 0.0, big = 0.0;
        for (int j = 0; j < d; j++) em = fmax(em, fabs(mean[j] - rm[j]) / fmax(1.0, fabs(rm[j])));
        for (int i = 0; i < d * d; i++) big = fmax(big, fabs(rc[i]));
        for (int i = 0; i < d * d; i++) ec = fmax(ec, fabs(cov[i] - rc[i]) / big);
        for (int i = 0; i < d; i++)
            for (int j = 0; j < i; j++) ck_assert_msg(cov[i * d + j] == cov[j * d + i], "cov not symmetric");
        ck_assert_msg(em <= TOL_FIT && ec <= TOL_FIT, "n=%d d=%d: mean error %.3g, cov error %.3g (of max %g)", n, d,
                      em, ec, big);
        printf("  fit n=%d d=%d against long double: mean %.2e, cov %.2e (of its largest entry)\n", n, d, em, ec);
        if (n == 2) // exact: mean (x + y) / 2, cov (x - y)(x - y)^T / 2
            for (int i = 0; i < d; i++)
                for (int j = 0; j < d; j++) {
                    double di = (double)x[i] - x[d + i], dj = (double)x[j] - x[d + j];
                    ck_assert_msg(fabs(cov[i * d + j] - di * dj / 2) <= 1e-15 * fabs(di * dj),
                                  "n=2: cov[%d][%d] = %.17g, want %.17g", i, j, cov[i * d + j], di * dj / 2);
                }
        free(x), free(rm), free(rc), dbuf_free(mean), dbuf_free(cov);
    }
}
END_TEST

// A large common offset: column j = 1e6 + s_i (j + 1), s_i = +-1 alternating, n even. mean = 1e6, cov_jk =
// (j + 1)(k + 1) n / (n - 1) exactly (the floats are exact). One-pass E[x^2] - E[x]^2 would lose ~1e-4 here.
START_TEST(fit_large_offset) {
    enum { N = 1000, D = 4 };
    static float x[N * D];
    for (int i = 0; i < N; i++)
        for (int j = 0; j < D; j++) x[i * D + j] = 1e6f + (i % 2 ? -1.0f : 1.0f) * (float)(j + 1);
    double mean[D], cov[D * D], worst = 0.0;
    ck_assert(msd_gaussian_fit(x, N, D, mean, cov) == 0);
    for (int j = 0; j < D; j++) ck_assert_msg(mean[j] == 1e6, "mean[%d] = %.17g", j, mean[j]);
    for (int j = 0; j < D; j++)
        for (int k = 0; k < D; k++) {
            double want = (j + 1.0) * (k + 1.0) * N / (N - 1.0);
            worst = fmax(worst, fabs(cov[j * D + k] - want) / want);
        }
    ck_assert_msg(worst <= 1e-15, "offset 1e6: worst relative covariance error %.3g", worst);
    printf("  fit with offset 1e6: worst relative covariance error %.2e\n", worst);
}
END_TEST

START_TEST(fit_errors) {
    float x[6 * 7] = {0};
    double mean[7], cov[49];
    ck_assert(msd_gaussian_fit(x, 1, 7, mean, cov) == -1 && strstr(msd_last_error(), "at least 2"));
    printf("  (expected) %s\n", msd_last_error());
    ck_assert(msd_gaussian_fit(x, 0, 7, mean, cov) == -1 && strstr(msd_last_error(), "at least 2"));
    ck_assert(msd_gaussian_fit(x, 6, 0, mean, cov) == -1 && strstr(msd_last_error(), "dimension 0"));
    x[3 * 7 + 5] = NAN;
    ck_assert(msd_gaussian_fit(x, 6, 7, mean, cov) == -1);
    ck_assert_msg(strstr(msd_last_error(), "row 3, column 5 is NaN"), "'%s'", msd_last_error());
    printf("  (expected) %s\n", msd_last_error());
    x[3 * 7 + 5] = 0.0f;
    x[5 * 7 + 0] = -INFINITY;
    ck_assert(msd_gaussian_fit(x, 6, 7, mean, cov) == -1);
    ck_assert_msg(strstr(msd_last_error(), "row 5, column 0 is -Inf"), "'%s'", msd_last_error());
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// Frechet distance of feature sets

struct gauss {
    int d;
    double *mean, *cov;
};

static struct gauss fit(const float *x, int n, int d) {
    struct gauss g = {d, malloc((size_t)d * sizeof(double)), malloc((size_t)d * d * sizeof(double))};
    ck_assert_msg(msd_gaussian_fit(x, n, d, g.mean, g.cov) == 0, "%s", msd_last_error());
    return g;
}

static void gauss_free(struct gauss *g) { free(g->mean), free(g->cov); }

static double fd_gauss(const struct gauss *a, const struct gauss *b) {
    return fd_of(a->mean, a->cov, b->mean, b->cov, a->d);
}

START_TEST(fd_features) {
    enum { N = 4000, D = 16 };
    static float x[N * D], y[N * D], shifted[N * D], scaled[N * D];
    make_features(x, N, D, 700, 0.0, 1.0);
    make_features(y, N, D, 701, 0.0, 1.0);       // the same distribution
    make_features(shifted, N, D, 702, 0.25, 1.0); // mean + 0.25 per coordinate: ||dmu||^2 = 1
    make_features(scaled, N, D, 703, 0.0, 1.3);   // covariance * 1.69
    struct gauss gx = fit(x, N, D), gy = fit(y, N, D), gs = fit(shifted, N, D), gc = fit(scaled, N, D);
    double tr = trace(gx.cov, D);

    double self = fd_gauss(&gx, &gx);
    ck_assert_msg(fabs(self) <= TOL_FD * 2 * tr, "FD(X, X) = %.3g, tr S = %g", self, tr);
    double xy = fd_gauss(&gx, &gy), yx = fd_gauss(&gy, &gx);
    ck_assert_msg(fabs(xy - yx) <= 1e-9 * xy, "FD(X, Y) = %.17g but FD(Y, X) = %.17g", xy, yx);
    double xs = fd_gauss(&gx, &gs), sx = fd_gauss(&gs, &gx), xc = fd_gauss(&gx, &gc);
    ck_assert_msg(fabs(xs - sx) <= 1e-9 * xs, "FD(X, shifted) = %.17g but FD(shifted, X) = %.17g", xs, sx);
    ck_assert_msg(xy < 0.1 * xs && xy < 0.1 * xc, "same distribution FD %g is not far below shifted %g / rescaled %g",
                  xy, xs, xc);
    printf("  FD(X, X) = %.3e (tr S = %.4g); FD(X, Y) - FD(Y, X) = %.2e (relative %.2e)\n", self, tr, xy - yx,
           fabs(xy - yx) / xy);
    printf("  FD n=%d d=%d: same distribution %.4g, mean shifted (||dmu||^2 = 1) %.4g, covariance x1.69 %.4g\n", N,
           D, xy, xs, xc);
    gauss_free(&gx), gauss_free(&gy), gauss_free(&gs), gauss_free(&gc);
}
END_TEST

// A dead feature (a constant column, as a ReLU unit that never fires) gives an exactly zero row and
// column in the covariance; nothing rotates them, so the FD is exactly that of the other columns plus
// (c1 - c2)^2 for the two constants, to TOL_FD: no square root of a rounding-level eigenvalue.
START_TEST(fd_dead_feature) {
    enum { N = 500, D = 12, DEAD = 5 };
    static float x[N * D], y[N * D], xs[N * (D - 1)], ys[N * (D - 1)];
    make_features(x, N, D, 450, 0.0, 1.0);
    make_features(y, N, D, 451, 0.2, 1.1);
    for (int i = 0; i < N; i++) {
        x[i * D + DEAD] = 0.0f;
        y[i * D + DEAD] = 0.75f;
        for (int j = 0, k = 0; j < D; j++)
            if (j != DEAD) {
                xs[i * (D - 1) + k] = x[i * D + j];
                ys[i * (D - 1) + k++] = y[i * D + j];
            }
    }
    double m1[D], c1[D * D], m2[D], c2[D * D];
    ck_assert(msd_gaussian_fit(x, N, D, m1, c1) == 0 && msd_gaussian_fit(y, N, D, m2, c2) == 0);
    for (int j = 0; j < D; j++)
        ck_assert_msg(c1[DEAD * D + j] == 0.0 && c2[j * D + DEAD] == 0.0, "dead column: covariance [%d][%d] not 0",
                      DEAD, j);
    double fd = fd_of(m1, c1, m2, c2, D);
    ck_assert(msd_gaussian_fit(xs, N, D - 1, m1, c1) == 0 && msd_gaussian_fit(ys, N, D - 1, m2, c2) == 0);
    double want = fd_of(m1, c1, m2, c2, D - 1) + 0.75 * 0.75;
    ck_assert_msg(fabs(fd - want) <= TOL_FD * (trace(c1, D - 1) + trace(c2, D - 1)),
                  "dead feature: FD %.17g, without the column + 0.75^2 %.17g", fd, want);
    printf("  FD with a dead feature d=%d: %.15g, without it + 0.75^2: %.15g, difference %.2e\n", D, fd, want,
           fd - want);
}
END_TEST

START_TEST(fd_errors) {
    double mu1[3] = {0, 0, 0}, mu2[3] = {1, 1, 1}, fd = 0.0;
    double c1[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1}, c2[9] = {2, 0.5, 0, 0.5, 2, 0, 0, 0, 2};
    ck_assert(msd_frechet_distance(mu1, c1, mu2, c2, 0, &fd) == -1 && strstr(msd_last_error(), "dimension 0"));
    mu2[2] = NAN;
    ck_assert(msd_frechet_distance(mu1, c1, mu2, c2, 3, &fd) == -1);
    ck_assert_msg(strstr(msd_last_error(), "mu2[2] is NaN"), "'%s'", msd_last_error());
    printf("  (expected) %s\n", msd_last_error());
    mu2[2] = 1;
    c1[1 * 3 + 2] = c1[2 * 3 + 1] = INFINITY;
    ck_assert(msd_frechet_distance(mu1, c1, mu2, c2, 3, &fd) == -1);
    ck_assert_msg(strstr(msd_last_error(), "cov1[1][2] is +Inf"), "'%s'", msd_last_error());
    c1[1 * 3 + 2] = c1[2 * 3 + 1] = 0;
    c2[0 * 3 + 1] = 0.6; // [1][0] stays 0.5
    ck_assert(msd_frechet_distance(mu1, c1, mu2, c2, 3, &fd) == -1);
    ck_assert_msg(strstr(msd_last_error(), "cov2 is not symmetric") && strstr(msd_last_error(), "[0][1]"), "'%s'",
                  msd_last_error());
    printf("  (expected) %s\n", msd_last_error());
    c2[0 * 3 + 1] = 0.5;
    c1[8] = -0.5; // cov1 not PSD
    ck_assert(msd_frechet_distance(mu1, c1, mu2, c2, 3, &fd) == -1);
    ck_assert_msg(strstr(msd_last_error(), "cov1") && strstr(msd_last_error(), "not positive semi-definite"), "'%s'",
                  msd_last_error());
    printf("  (expected) %s\n", msd_last_error());
    c1[8] = 1;
    c2[8] = -0.5; // cov2 not PSD, cov1 = I
    ck_assert(msd_frechet_distance(mu1, c1, mu2, c2, 3, &fd) == -1);
    ck_assert_msg(strstr(msd_last_error(), "cov2") && strstr(msd_last_error(), "not positive semi-definite"), "'%s'",
                  msd_last_error());
    printf("  (expected) %s\n", msd_last_error());
    ck_assert_msg(fd == 0.0, "a failed call wrote *fd = %g", fd);
}
END_TEST

// d = 256, n = 10000 per set (what msdiff eval will fit): the fit and the FD timed, and the FD checked
// against the commuting closed form at the same d (C1 = Q diag(a) Q^T, C2 = Q diag(b) Q^T).
START_TEST(fd_d256_timed) {
    enum { N = 10000, D = 256 };
    float *x = malloc((size_t)N * D * sizeof *x);
    for (size_t i = 0; i < (size_t)N * D; i++) // column j has standard deviation 1 + j / D
        x[i] = msd_rng_normal(800, MSD_STREAM_TEST, i) * (1.0f + (float)(i % D) / D);
    double *mean = malloc(D * sizeof *mean), *cov = malloc((size_t)D * D * sizeof *cov);
    struct stopwatch t0 = stopwatch_now();
    ck_assert(msd_gaussian_fit(x, N, D, mean, cov) == 0);
    struct stopwatch t_fit = stopwatch_since(t0);

    static double q[D * D], c1[D * D], c2[D * D], mu1[D], mu2[D], a[D], b[D];
    double want = 0.0, scale = 0.0;
    for (int i = 0; i < D; i++) {
        mu1[i] = normal(801, (uint64_t)i);
        mu2[i] = normal(802, (uint64_t)i);
        a[i] = 0.01 + msd_rng_uniform(803, MSD_STREAM_TEST, (uint64_t)i);
        b[i] = 0.01 + msd_rng_uniform(804, MSD_STREAM_TEST, (uint64_t)i);
        want += (mu1[i] - mu2[i]) * (mu1[i] - mu2[i]) + (sqrt(a[i]) - sqrt(b[i])) * (sqrt(a[i]) - sqrt(b[i]));
        scale += a[i] + b[i];
    }
    random_orthogonal(q, D, 805);
    with_eigenvalues(c1, q, a, D);
    with_eigenvalues(c2, q, b, D);
    t0 = stopwatch_now();
    double fd = fd_of(mu1, c1, mu2, c2, D);
    struct stopwatch t_fd = stopwatch_since(t0);
    // d = 256: the eigenvalue errors are ~4x those at 64 (d u ||A||), still far below 1e-11 of tr
    ck_assert_msg(fabs(fd - want) <= 1e-11 * scale, "d=256 commuting: FD %.17g, want %.17g", fd, want);
    double self = fd_of(mean, cov, mean, cov, D);
    ck_assert_msg(fabs(self) <= 1e-11 * 2 * trace(cov, D), "d=256 FD(X, X) = %.3g", self);
    printf("  d=256: fit of n=%d %.3f s (CPU %.3f s); FD %.3f s (CPU %.3f s)\n", N, t_fit.wall, t_fit.cpu, t_fd.wall,
           t_fd.cpu);
    printf("  d=256: commuting closed form: FD %.12g, want %.12g (relative %.2e); FD(X, X) = %.2e of tr S %.4g\n", fd,
           want, fabs(fd - want) / want, self, trace(cov, D));
    // about 0.4 s of CPU on one core; 3 s is 7x that (a machine far slower, or Jacobi near its sweep limit)
    ck_assert_msg(t_fd.cpu < 3.0, "the FD at d=256 took %.2f s of CPU (about 0.4 s expected)", t_fd.cpu);
    free(x), free(mean), free(cov);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// The numpy cross-check: bench/fd_check.py on the same features.

// features: (n, d) as a NumPy .npy file, version 1.0: magic, version, header length (u16 little-endian),
// a Python dict literal padded with spaces to a 64-byte boundary and ended by '\n', then the raw floats.
static void write_npy(const char *path, const float *x, int n, int d) {
    const uint16_t probe = 1;
    unsigned char little;
    memcpy(&little, &probe, 1);
    char dict[128];
    int len = snprintf(dict, sizeof dict, "{'descr': '%cf4', 'fortran_order': False, 'shape': (%d, %d), }",
                       little ? '<' : '>', n, d);
    int hlen = len + 1;
    hlen += (64 - (10 + hlen) % 64) % 64;
    size_t total = 10 + (size_t)hlen + (size_t)n * d * sizeof(float);
    unsigned char *buf = malloc(total);
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    buf[8] = (unsigned char)(hlen & 255);
    buf[9] = (unsigned char)(hlen >> 8);
    memset(buf + 10, ' ', (size_t)hlen);
    memcpy(buf + 10, dict, (size_t)len);
    buf[10 + hlen - 1] = '\n';
    memcpy(buf + 10 + hlen, x, (size_t)n * d * sizeof(float));
    test_write_file(path, buf, total);
    free(buf);
}

// Returns 1 when compared, 0 when skipped (the reason printed).
static int cross_check(const char *what, int n1, int n2, int d, double shift, double scale) {
    float *x = malloc((size_t)n1 * d * sizeof *x), *y = malloc((size_t)n2 * d * sizeof *y);
    make_features(x, n1, d, 900 + (uint64_t)d, 0.0, 1.0);
    make_features(y, n2, d, 950 + (uint64_t)d, shift, scale);
    char p1[TEST_PATH_MAX], p2[TEST_PATH_MAX];
    snprintf(p1, sizeof p1, "%s/%s-1.npy", test_tmpdir(), what);
    snprintf(p2, sizeof p2, "%s/%s-2.npy", test_tmpdir(), what);
    write_npy(p1, x, n1, d);
    write_npy(p2, y, n2, d);
    struct gauss g1 = fit(x, n1, d), g2 = fit(y, n2, d);
    double fd = fd_gauss(&g1, &g2);
    gauss_free(&g1), gauss_free(&g2), free(x), free(y);

    char want[64], rtol[32];
    snprintf(want, sizeof want, "%.17g", fd);
    snprintf(rtol, sizeof rtol, "%g", TOL_NUMPY);
    struct test_run r =
        test_run_argv((const char *const[]){PYTHON, FD_CHECK, p1, p2, "--want", want, "--rtol", rtol, NULL});
    if (r.status == 77) { // numpy missing: the script says so on stderr
        printf("  numpy cross-check: skipped: %s", r.err);
        test_run_free(&r);
        return 0;
    }
    // 0: agrees, 1: disagrees (judged again here, with both numbers in the message)
    ck_assert_msg(r.status == 0 || r.status == 1, "'%s' exited with %d:\n%s%s", r.line, r.status, r.out, r.err);
    const char *line = strstr(r.out, "\nfd = ");
    double np_fd = NAN;
    ck_assert_msg(line && sscanf(line, "\nfd = %lf", &np_fd) == 1, "no 'fd = ' line in: %s", r.out);
    double rel = fabs(fd - np_fd) / fabs(np_fd);
    ck_assert_msg(rel <= TOL_NUMPY, "%s: msdiff FD %.17g, numpy %.17g (relative %.3g > %g)", what, fd, np_fd, rel,
                  TOL_NUMPY);
    ck_assert_msg(r.status == 0, "%s: fd_check.py disagrees although the numbers agree:\n%s", what, r.out);
    const char *alt = strstr(r.out, "\nfd_eigvals = ");
    double np_eig = NAN;
    if (alt) sscanf(alt, "\nfd_eigvals = %lf", &np_eig);
    printf("  numpy cross-check %s (n %d, %d; d %d): msdiff %.15g, numpy eigh %.15g (relative %.2e), "
           "numpy eigvals(S1 S2) %.15g\n", what, n1, n2, d, fd, np_fd, rel, np_eig);
    test_run_free(&r);
    return 1;
}

START_TEST(numpy_cross_check) {
    if (access(PYTHON, X_OK) != 0) {
        printf("  numpy cross-check: skipped: %s is not there\n", PYTHON);
        return;
    }
    ck_assert_msg(test_exists(FD_CHECK), "%s not found (run the suite from the repository root, as make check does)",
                  FD_CHECK);
    if (!cross_check("d64", 2000, 1500, 64, 0.1, 1.2)) return; // different distributions
    cross_check("d64-same", 2000, 2000, 64, 0.0, 1.0);          // same distribution: a small FD
    cross_check("d256", 3000, 3000, 256, -0.05, 0.9);            // the size msdiff eval uses
    cross_check("d128-rank-deficient", 100, 90, 128, 0.0, 1.1);  // n < d: singular covariances
    printf("  numpy cross-check: msdiff's FD agrees with numpy to %g relative\n", TOL_NUMPY);
}
END_TEST

int main(void) {
    test_tmpdir_make("fd"); // before the tests fork: they share it
    const TTest *tests[] = {
        eigen_random_symmetric, eigen_known_spectra, eigen_errors, sqrt_spd_and_psd, sqrt_known_and_clamped,
        fd_known_diagonal, fd_dead_feature, fd_known_small, fd_gaussian_with_itself, fit_against_reference,
        fit_large_offset, fit_errors, fd_features, fd_errors, fd_d256_timed, numpy_cross_check,
    };
    return run_tests("fd", 60, tests, TEST_COUNT(tests));
}
