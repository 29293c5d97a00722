// fd.h: the Frechet distance between Gaussian fits of two feature sets (the "FID" formula), and the
// dense symmetric linear algebra it needs: a Jacobi eigen-decomposition and the PSD square root.
//
// With (mu1, S1) and (mu2, S2) the means and covariances of two feature sets,
//
//     FD = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr( (S1^{1/2} S2 S1^{1/2})^{1/2} )
//
// This is the symmetric form of the usual tr(S1 + S2 - 2 (S1 S2)^{1/2}): S1 S2 is similar to
// S1^{1/2} S2 S1^{1/2} (conjugate by S1^{1/2}, or take limits when S1 is singular), so the two have the
// same eigenvalues and the traces of their square roots agree; the symmetric form needs only symmetric
// eigen-decompositions, never the square root of a non-symmetric matrix (scipy's sqrtm in the usual FID
// code, which returns complex parts from rounding that the code then drops).
//
// Everything here is double and single-threaded; the fit is O(n d^2), the rest O(d^3) per call.
// Sized for classifier features, d = 64..512: at d = 256 the FD takes 0.3 to 0.9 s and a fit of
// n = 10000 0.15 to 0.25 s (one core of a busy 2-core EPYC; the spread is the load). Inception's d = 2048 would take minutes with
// Jacobi; a tridiagonal QR solver (LAPACK's dsyevd) would be the step up then.
// Does not hold: the classifier, reading or writing feature files (bench/fd_check.py is the numpy
// cross-check, run by tests/test_fd.c on features the test writes as .npy).
#ifndef MSD_FD_H
#define MSD_FD_H

// Jacobi stops when the off-diagonal norm is at most this fraction of the Frobenius norm.
#define MSD_JACOBI_TOL 1e-15
// and gives up (an error) after this many sweeps; random matrices take 6 (d = 7) to 9 (d = 256).
#define MSD_JACOBI_MAX_SWEEPS 60
// An eigenvalue below -MSD_PSD_TOL * (the largest |eigenvalue|) is not rounding: the matrix is not
// positive semi-definite and the square root (and so the FD) is an error. Above it, a negative
// eigenvalue is rounding of a zero one (a covariance of rank < d) and is clamped to 0.
#define MSD_PSD_TOL 1e-9

// Fit a Gaussian to features: (n, d) row-major, one feature vector per row. mean: (d); cov: (d, d)
// row-major, the unbiased covariance sum_i (x_i - mean)(x_i - mean)^T / (n - 1), as numpy.cov and the
// usual FID code compute it. Two passes (the mean first, then the centred products, all in double), so
// features with a large common offset lose nothing. cov comes out exactly symmetric.
// 0, or -1 with a message: n < 2, d < 1, or a NaN/Inf feature (the message names its row and column;
// mean and cov are then unspecified).
int msd_gaussian_fit(const float *features, int n, int d, double *mean, double *cov);

// Eigen-decomposition of the symmetric a: (d, d) row-major, by the cyclic Jacobi method (fd.c). Only
// the upper triangle (j >= i) is read: the lower one is taken as its mirror. a is overwritten: it ends
// as the rotated, near-diagonal matrix V^T A V (the eigenvalues on its diagonal, unsorted).
// eigenvalues: (d), ascending. eigenvectors: (d, d) row-major, column j the unit eigenvector of
// eigenvalues[j], so that A V = V diag(eigenvalues) and V^T V = I; NULL when only eigenvalues are wanted
// (about two thirds of the time). 0, or -1 with a message: d < 1, a NaN/Inf entry, or no convergence
// within MSD_JACOBI_MAX_SWEEPS sweeps.
int msd_sym_eigen(double *a, int d, double *eigenvalues, double *eigenvectors);

// The PSD square root of the symmetric positive semi-definite a: (d, d) (upper triangle read, as
// msd_sym_eigen), into out: (d, d), symmetric: out = V diag(sqrt(lambda)) V^T. Negative eigenvalues down
// to -MSD_PSD_TOL * max |lambda| are rounding and are clamped to 0; below that, -1 with a message
// (not PSD). a is not changed; out may not alias it.
int msd_sym_sqrt(const double *a, int d, double *out);

// The Frechet distance above, into *fd. mu1, mu2: (d); cov1, cov2: (d, d) symmetric PSD (as
// msd_gaussian_fit gives them). A tiny negative *fd is rounding (two equal Gaussians give 0 up to about
// 1e-14 of tr(S1) + tr(S2)) and is returned as computed, not clamped. Accuracy: about 1e-13 of
// tr(S1) + tr(S2) for full-rank covariances. A covariance of rank < d from n <= d samples makes
// S1^{1/2} S2 S1^{1/2} singular: each zero eigenvalue comes out as +-E (E ~ 1e-14 of its norm) and
// its square root adds up to 2 sqrt(E) to *fd (about 1e-8 relative; numpy and scipy do the same). A
// dead feature (a constant column) is exact: its zero row and column are never rotated.
// 0, or -1 with a message: d < 1, a NaN/Inf entry (named), a covariance that is not symmetric (to 1e-12
// of its largest entry), cov1 not PSD, or S1^{1/2} cov2 S1^{1/2} not PSD (cov2 not PSD where cov1 is
// full rank). *fd is written only on success.
int msd_frechet_distance(const double *mu1, const double *cov1, const double *mu2, const double *cov2, int d,
                         double *fd);

#endif
