// fd.c: Gaussian fit, Jacobi eigen-decomposition, PSD square root and Frechet distance (fd.h).
//
// The cyclic Jacobi method (Jacobi 1846; Golub & Van Loan, Matrix Computations, section 8.5; Numerical
// Recipes section 11.1). A symmetric A is driven to diagonal form by plane rotations. The rotation J in
// the (p, q) plane (J_pp = J_qq = c, J_pq = s, J_qp = -s, the identity elsewhere) is chosen so that
// A' = J^T A J has a'_pq = 0:
//
//     theta = (a_qq - a_pp) / (2 a_pq),   t = sign(theta) / (|theta| + sqrt(theta^2 + 1)),
//     c = 1 / sqrt(t^2 + 1),   s = t c                      (t = tan of the angle, the root |t| <= 1)
//     a'_pp = a_pp - t a_pq,   a'_qq = a_qq + t a_pq,   a'_pq = a'_qp = 0
//     a'_pk = a'_kp = c a_pk - s a_qk,   a'_qk = a'_kq = s a_pk + c a_qk      (k != p, q)
//
// Each rotation moves a_pq^2 from the off-diagonal to the diagonal: off(A')^2 = off(A)^2 - 2 a_pq^2,
// with off(A)^2 = sum_{i != j} a_ij^2, while ||A||_F stays the same. A sweep rotates every pair p < q
// once in row order; the off-diagonal norm falls quadratically once it is small (Schonhage, Wilkinson),
// so random matrices take 8 sweeps at d = 64 and 9 at d = 256. The eigenvalues are then the diagonal,
// and the product of the rotations, V = J_1 J_2 ..., holds the eigenvectors in its columns (A V = V Lambda).
// Rounding stays small relative to each entry (a rotation of tiny angle changes an entry by a tiny
// multiple of itself), so the iteration reaches any off-diagonal level: MSD_JACOBI_TOL is 1e-15 of
// ||A||_F, near the rounding of the diagonal itself.
//
// Threshold variant: a pair with |a_pq| <= MSD_JACOBI_TOL ||A||_F / d is skipped. If every pair is
// below that, off(A) < MSD_JACOBI_TOL ||A||_F, so skipping never stops convergence; it saves the
// rotations of the last sweep, whose entries are already negligible.
//
// Storage: A is kept full (both triangles) so that a rotation updates two contiguous rows, p and q,
// and then copies row q into column q (column p once per p: jacobi_rotate says why); the work copy has
// a padded row stride (msd_sym_eigen says why). V is kept transposed (W = V^T, eigenvectors in rows)
// so that its update is two contiguous rows as well; it is transposed into the caller's layout at the
// end. Cost per sweep: d^2/2 rotations of about 6d flops for A and 6d for W. d = 256 on one core of a
// busy 2-core EPYC (best of 5): 0.13 s without eigenvectors, 0.2 s with them; the Frechet distance
// (one of each, and two d^3 products) 0.3 to 0.7 s depending on the load.
// Does not hold: reading features (the caller's), the classifier.
#include "fd.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/core/error.h"
#include "common/core/util.h"

static const char *nonfinite_name(double x) { return isnan(x) ? "NaN" : x > 0 ? "+Inf" : "-Inf"; }

// ---------------------------------------------------------------------------------------------------
// Gaussian fit

// Rows of features centred at a time (double), so the centred copy stays small: (ROWS, d).
enum { FIT_ROWS = 128 };

int msd_gaussian_fit(const float *features, int n, int d, double *mean, double *cov) {
    // features: (n, d); mean: (d); cov: (d, d)
    if (n < 2)
        return msd_set_error("Gaussian fit: %d feature vector(s); a covariance needs at least 2", n);
    if (d < 1) return msd_set_error("Gaussian fit: feature dimension %d; it must be at least 1", d);

    // Pass 1: the mean, and every feature finite.
    for (int j = 0; j < d; j++) mean[j] = 0.0;
    for (int i = 0; i < n; i++) {
        const float *x = features + (size_t)i * (size_t)d;
        for (int j = 0; j < d; j++) {
            if (!isfinite(x[j]))
                return msd_set_error("Gaussian fit: feature row %d, column %d is %s (features are %d x %d)", i,
                                     j, nonfinite_name(x[j]), n, d);
            mean[j] += x[j];
        }
    }
    for (int j = 0; j < d; j++) mean[j] /= n;

    // Pass 2: cov = sum_i (x_i - mean)(x_i - mean)^T, upper triangle, a block of rows at a time (the
    // block and a cov row stay in cache). Single-threaded: n = 10000, d = 256 takes about 0.15 s, and an
    // OpenMP loop per block was 4x slower than that on a busy 2-core machine.
    memset(cov, 0, (size_t)d * (size_t)d * sizeof *cov);
    double *xc = xmalloc((size_t)FIT_ROWS * (size_t)d * sizeof *xc); // xc: (FIT_ROWS, d), centred
    for (int i0 = 0; i0 < n; i0 += FIT_ROWS) {
        int nb = n - i0 < FIT_ROWS ? n - i0 : FIT_ROWS;
        for (int b = 0; b < nb; b++)
            for (int j = 0; j < d; j++)
                xc[(size_t)b * d + j] = (double)features[(size_t)(i0 + b) * d + j] - mean[j];
        for (int r = 0; r < d; r++) {
            double *c = cov + (size_t)r * d;
            int b = 0;
            for (; b + 4 <= nb; b += 4) { // four samples per pass over the row: a quarter of the loads
                const double *x0 = xc + (size_t)b * d, *x1 = x0 + d, *x2 = x1 + d, *x3 = x2 + d;
                double y0 = x0[r], y1 = x1[r], y2 = x2[r], y3 = x3[r];
                for (int s = r; s < d; s++) c[s] += (y0 * x0[s] + y1 * x1[s]) + (y2 * x2[s] + y3 * x3[s]);
            }
            for (; b < nb; b++) {
                const double *x = xc + (size_t)b * d;
                double xr = x[r];
                for (int s = r; s < d; s++) c[s] += xr * x[s];
            }
        }
    }
    free(xc);
    for (int r = 0; r < d; r++)
        for (int s = r; s < d; s++) {
            cov[(size_t)r * d + s] /= (n - 1);
            cov[(size_t)s * d + r] = cov[(size_t)r * d + s];
        }
    return 0;
}

// ---------------------------------------------------------------------------------------------------
// Jacobi eigen-decomposition

// One rotation zeroing a[p][q] (p < q), the formulas at the top. a: (d, ld) full symmetric (but for
// column p, see below), ld >= d; w: (d, d) = V^T, or NULL.
static void jacobi_rotate(double *a, double *w, int d, int ld, int p, int q) {
    double *ap = a + (size_t)p * ld, *aq = a + (size_t)q * ld;
    double apq = ap[q], app = ap[p], aqq = aq[q];
    // |theta| <= 2 ||A||_F / (2 * MSD_JACOBI_TOL ||A||_F / d) ~ 1e18 here (smaller pairs are skipped),
    // so theta^2 cannot overflow.
    double theta = (aqq - app) / (2.0 * apq);
    double t = (theta >= 0.0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1.0));
    double c = 1.0 / sqrt(t * t + 1.0), s = t * c;
    // rows p and q: a'_pk = c a_pk - s a_qk, a'_qk = s a_pk + c a_qk (the k = p, q entries are set below)
    for (int k = 0; k < d; k++) {
        double x = ap[k], y = aq[k];
        ap[k] = c * x - s * y;
        aq[k] = s * x + c * y;
    }
    ap[p] = app - t * apq;
    aq[q] = aqq + t * apq;
    ap[q] = aq[p] = 0.0;
    // column q is the mirror of row q. Column p is left stale: within a sweep's run of rotations
    // (p, q), q = p+1..d-1, nothing reads it (each rotation reads rows p and q, and row q's entry in
    // column p only at k = p, whose result is overwritten above), so the sweep writes it once when p is
    // done (jacobi_sweep). That halves the strided writes, the slowest part.
    for (int k = 0; k < d; k++) a[(size_t)k * ld + q] = aq[k];
    if (w) { // V' = V J: columns p and q of V, rows p and q of W = V^T, the same combination
        double *wp = w + (size_t)p * d, *wq = w + (size_t)q * d;
        for (int k = 0; k < d; k++) {
            double x = wp[k], y = wq[k];
            wp[k] = c * x - s * y;
            wq[k] = s * x + c * y;
        }
    }
}

// One cyclic sweep: every pair p < q in row order, pairs with |a_pq| <= skip left alone.
static void jacobi_sweep(double *a, double *w, int d, int ld, double skip) {
    for (int p = 0; p < d - 1; p++) {
        const double *ap = a + (size_t)p * ld;
        for (int q = p + 1; q < d; q++)
            if (fabs(ap[q]) > skip) jacobi_rotate(a, w, d, ld, p, q);
        for (int k = 0; k < d; k++) a[(size_t)k * ld + p] = ap[k]; // column p from row p, once
    }
}

// sqrt(sum_{i != j} a_ij^2) of the full symmetric a: (d, ld).
static double off_norm(const double *a, int d, int ld) {
    double sum = 0.0;
    for (int i = 0; i < d; i++)
        for (int j = i + 1; j < d; j++) sum += a[(size_t)i * ld + j] * a[(size_t)i * ld + j];
    return sqrt(2.0 * sum);
}

int msd_sym_eigen(double *a, int d, double *eigenvalues, double *eigenvectors) {
    // a: (d, d), upper triangle read; eigenvalues: (d); eigenvectors: (d, d) or NULL
    if (d < 1) return msd_set_error("symmetric eigen-decomposition: dimension %d; it must be at least 1", d);
    double norm2 = 0.0;
    for (int i = 0; i < d; i++)
        for (int j = i; j < d; j++) {
            double x = a[(size_t)i * d + j];
            if (!isfinite(x))
                return msd_set_error("symmetric eigen-decomposition (d = %d): entry [%d][%d] is %s", d, i, j,
                                     nonfinite_name(x));
            a[(size_t)j * d + i] = x; // the lower triangle is the mirror of the upper
            norm2 += (i == j ? 1.0 : 2.0) * x * x;
        }
    if (!isfinite(norm2))
        return msd_set_error("symmetric eigen-decomposition (d = %d): the Frobenius norm overflows (entries "
                             "near 1e154 or larger); scale the matrix", d);
    double frob = sqrt(norm2), tol = MSD_JACOBI_TOL * frob, skip = tol / d;

    double *w = NULL; // w: (d, d) = V^T, from the identity
    if (eigenvectors) {
        w = xcalloc((size_t)d * (size_t)d, sizeof *w);
        for (int i = 0; i < d; i++) w[(size_t)i * d + i] = 1.0;
    }
    // The work copy x: (d, ld). Its row stride is an odd number of 64-byte lines, so that the column
    // writes of a rotation spread over the cache's sets; with ld = d = 256 they would all land in two
    // sets of L1 and the decomposition runs about 2x slower.
    int ld = (d + 7) / 8 * 8;
    if (ld / 8 % 2 == 0) ld += 8;
    double *x = xmalloc((size_t)d * (size_t)ld * sizeof *x);
    for (int i = 0; i < d; i++) memcpy(x + (size_t)i * ld, a + (size_t)i * d, (size_t)d * sizeof *x);
    int sweep = 0;
    double off = off_norm(x, d, ld);
    while (off > tol && sweep < MSD_JACOBI_MAX_SWEEPS) {
        jacobi_sweep(x, w, d, ld, skip);
        sweep++;
        off = off_norm(x, d, ld);
    }
    for (int i = 0; i < d; i++) memcpy(a + (size_t)i * d, x + (size_t)i * ld, (size_t)d * sizeof *x);
    free(x);
    if (off > tol) {
        free(w);
        return msd_set_error("symmetric eigen-decomposition (d = %d): Jacobi did not converge in %d sweeps "
                             "(off-diagonal norm %.3g of the Frobenius norm, want <= %.0e)",
                             d, MSD_JACOBI_MAX_SWEEPS, off / frob, MSD_JACOBI_TOL);
    }

    // Sort ascending (insertion sort on an index: d is small next to the d^3 above).
    int *order = xmalloc((size_t)d * sizeof *order);
    for (int i = 0; i < d; i++) {
        double lambda = a[(size_t)i * d + i];
        int k = i;
        for (; k > 0 && a[(size_t)order[k - 1] * d + order[k - 1]] > lambda; k--) order[k] = order[k - 1];
        order[k] = i;
    }
    for (int j = 0; j < d; j++) eigenvalues[j] = a[(size_t)order[j] * d + order[j]];
    if (eigenvectors)
        for (int j = 0; j < d; j++) // column j of V is row order[j] of W
            for (int i = 0; i < d; i++) eigenvectors[(size_t)i * d + j] = w[(size_t)order[j] * d + i];
    free(order);
    free(w);
    return 0;
}

// ---------------------------------------------------------------------------------------------------
// PSD square root

// The eigenvalues of a PSD matrix up to rounding: -1 with a message if one is below -MSD_PSD_TOL
// times the largest |lambda| (`what` names the matrix), else negatives are clamped to 0 in place.
static int clamp_psd(double *lambda, int d, const char *what) {
    double big = 0.0;
    for (int i = 0; i < d; i++) big = fmax(big, fabs(lambda[i]));
    for (int i = 0; i < d; i++) {
        if (lambda[i] < -MSD_PSD_TOL * big)
            return msd_set_error("%s (d = %d) is not positive semi-definite: eigenvalue %.6g, the largest "
                                 "|eigenvalue| %.6g (rounding would stay above %.0e of it)",
                                 what, d, lambda[i], big, MSD_PSD_TOL);
        if (lambda[i] < 0.0) lambda[i] = 0.0;
    }
    return 0;
}

int msd_sym_sqrt(const double *a, int d, double *out) {
    // a: (d, d), upper triangle read; out: (d, d)
    if (d < 1) return msd_set_error("symmetric square root: dimension %d; it must be at least 1", d);
    size_t dd = (size_t)d * (size_t)d;
    double *work = xmalloc(dd * sizeof *work), *v = xmalloc(dd * sizeof *v), *lam = xmalloc((size_t)d * sizeof *lam);
    memcpy(work, a, dd * sizeof *work);
    int rc = msd_sym_eigen(work, d, lam, v);
    if (rc == 0) rc = clamp_psd(lam, d, "square root: the matrix");
    if (rc == 0) {
        // work = V diag(sqrt(lambda)): (d, d); out = work V^T, the upper triangle, mirrored
        for (int i = 0; i < d; i++)
            for (int k = 0; k < d; k++) work[(size_t)i * d + k] = v[(size_t)i * d + k] * sqrt(lam[k]);
        for (int i = 0; i < d; i++)
            for (int j = i; j < d; j++) {
                const double *wi = work + (size_t)i * d, *vj = v + (size_t)j * d;
                double sum = 0.0;
                for (int k = 0; k < d; k++) sum += wi[k] * vj[k];
                out[(size_t)i * d + j] = out[(size_t)j * d + i] = sum;
            }
    }
    free(lam);
    free(v);
    free(work);
    return rc;
}

// ---------------------------------------------------------------------------------------------------
// Frechet distance

// x: (n) all finite, or -1 naming `what` and the index.
static int check_finite(const double *x, size_t n, const char *what, int d) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) {
            if (n == (size_t)d)
                return msd_set_error("Frechet distance: %s[%zu] is %s", what, i, nonfinite_name(x[i]));
            return msd_set_error("Frechet distance: %s[%zu][%zu] is %s", what, i / (size_t)d, i % (size_t)d,
                                 nonfinite_name(x[i]));
        }
    return 0;
}

// cov: (d, d) symmetric to 1e-12 of its largest |entry|, or -1 naming the worst pair.
static int check_symmetric(const double *cov, int d, const char *what) {
    double big = 0.0, worst = 0.0;
    int wi = 0, wj = 0;
    for (size_t i = 0; i < (size_t)d * (size_t)d; i++) big = fmax(big, fabs(cov[i]));
    for (int i = 0; i < d; i++)
        for (int j = i + 1; j < d; j++) {
            double diff = fabs(cov[(size_t)i * d + j] - cov[(size_t)j * d + i]);
            if (diff > worst) worst = diff, wi = i, wj = j;
        }
    if (worst > 1e-12 * big)
        return msd_set_error("Frechet distance: %s is not symmetric: [%d][%d] = %.17g but [%d][%d] = %.17g", what,
                             wi, wj, cov[(size_t)wi * d + wj], wj, wi, cov[(size_t)wj * d + wi]);
    return 0;
}

// c = a b; a, b, c: (d, d). Rows times rows (i-k-j), so the inner loop runs along memory.
static void matmul(double *c, const double *a, const double *b, int d) {
    memset(c, 0, (size_t)d * d * sizeof *c);
    for (int i = 0; i < d; i++)
        for (int k = 0; k < d; k++) {
            const double aik = a[(size_t)i * d + k];
            const double *bk = b + (size_t)k * d;
            double *ci = c + (size_t)i * d;
            for (int j = 0; j < d; j++) ci[j] += aik * bk[j];
        }
}

// The message of a failed inner call, under a prefix (msd_set_error cannot take its own buffer).
static int rethrow(const char *prefix) {
    char inner[512];
    snprintf(inner, sizeof inner, "%s", msd_last_error());
    return msd_set_error("Frechet distance: %s: %s", prefix, inner);
}

int msd_frechet_distance(const double *mu1, const double *cov1, const double *mu2, const double *cov2, int d,
                         double *fd) {
    // mu1, mu2: (d); cov1, cov2: (d, d)
    if (d < 1) return msd_set_error("Frechet distance: dimension %d; it must be at least 1", d);
    size_t dd = (size_t)d * (size_t)d;
    if (check_finite(mu1, (size_t)d, "mu1", d) || check_finite(mu2, (size_t)d, "mu2", d) ||
        check_finite(cov1, dd, "cov1", d) || check_finite(cov2, dd, "cov2", d) ||
        check_symmetric(cov1, d, "cov1") || check_symmetric(cov2, d, "cov2"))
        return -1;

    double diff2 = 0.0, tr1 = 0.0, tr2 = 0.0;
    for (int i = 0; i < d; i++) {
        diff2 += (mu1[i] - mu2[i]) * (mu1[i] - mu2[i]);
        tr1 += cov1[(size_t)i * d + i];
        tr2 += cov2[(size_t)i * d + i];
    }

    // r = S1^{1/2}; m = r S2 r, symmetrised (the products round differently on each side); its
    // eigenvalues are those of S1 S2, and tr(m^{1/2}) = sum sqrt(eigenvalues).
    double *r = xmalloc(dd * sizeof *r), *t = xmalloc(dd * sizeof *t), *m = xmalloc(dd * sizeof *m);
    double *lam = xmalloc((size_t)d * sizeof *lam);
    int rc = msd_sym_sqrt(cov1, d, r);
    if (rc != 0) rc = rethrow("cov1");
    if (rc == 0) {
        matmul(t, cov2, r, d); // t = S2 r
        matmul(m, r, t, d);    // m = r t
        for (int i = 0; i < d; i++)
            for (int j = i + 1; j < d; j++)
                m[(size_t)i * d + j] = 0.5 * (m[(size_t)i * d + j] + m[(size_t)j * d + i]);
        rc = msd_sym_eigen(m, d, lam, NULL);
        if (rc != 0) rc = rethrow("S1^{1/2} S2 S1^{1/2}");
    }
    if (rc == 0 && clamp_psd(lam, d, "S1^{1/2} S2 S1^{1/2}") != 0) rc = rethrow("cov2 (through cov1)");
    if (rc == 0) {
        double trsqrt = 0.0;
        for (int i = 0; i < d; i++) trsqrt += sqrt(lam[i]);
        *fd = diff2 + tr1 + tr2 - 2.0 * trsqrt;
    }
    free(lam);
    free(m);
    free(t);
    free(r);
    return rc;
}
