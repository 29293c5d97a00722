#!/usr/bin/env python3
# bench/fd_check.py: the Frechet distance between two feature sets computed by numpy, an independent
# check of common/eval/fd.c (msdiff's Gaussian fit, Jacobi eigen-decomposition and symmetric square root).
#
#     /usr/bin/python3 bench/fd_check.py FEATURES1.npy FEATURES2.npy [--want FD] [--rtol 1e-6]
#
# Each file is a 2-D .npy array (n, d), float32 or float64, one feature vector per row (numpy.save
# writes them; tests/test_fd.c writes its own). Prints
#     fd = <value>           numpy.cov and numpy.linalg.eigh (LAPACK): the symmetric form
#                            ||mu1 - mu2||^2 + tr S1 + tr S2 - 2 tr((S1^{1/2} S2 S1^{1/2})^{1/2})
#     fd_eigvals = <value>   the usual FID form, tr((S1 S2)^{1/2}) from the eigenvalues of the
#                            non-symmetric S1 S2 (numpy.linalg.eigvals, LAPACK's dgeev)
#     fd_sqrtm = <value>     scipy.linalg.sqrtm(S1 S2) as pytorch-fid does it, when scipy is installed
# and, with --want, whether FD = want to --rtol relative (exit 1 when not). This is how msdiff's C
# computation is compared: tests/test_fd.c writes two feature sets as .npy, computes the FD with
# common/eval/fd.c, runs this script on the same files with --want and reads the `fd =` line.
# Exit status: 0, 1 (--want disagrees), 2 (bad arguments or files), 77 (numpy missing: a skip).
# Not part of make check by itself; tests/test_fd.c runs it when /usr/bin/python3 has numpy.
import argparse
import importlib.util
import sys

try:
    import numpy as np
except ImportError as e:
    print(f"fd_check: numpy is not installed for {sys.executable} ({e}); the cross-check needs it", file=sys.stderr)
    sys.exit(77)


def fail(msg):
    print(f"fd_check: {msg}", file=sys.stderr)
    sys.exit(2)


def load(path):
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        fail(f"cannot read {path}: {e}")
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        fail(f"{path}: shape {x.shape}, want (n, d) with n >= 2 and d >= 1")
    if not np.all(np.isfinite(x)):
        r, c = np.argwhere(~np.isfinite(x))[0]
        fail(f"{path}: row {r}, column {c} is {x[r, c]}")
    return x


def fit(x):
    """-> (mean (d), unbiased covariance (d, d)), in float64."""
    x = x.astype(np.float64)
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def psd_sqrt(a):
    """S^{1/2} of a symmetric PSD matrix by eigh, negative rounding eigenvalues clamped to 0."""
    lam, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(lam, 0.0, None))) @ v.T


def fd_symmetric(mu1, s1, mu2, s2):
    r = psd_sqrt(s1)
    m = r @ s2 @ r
    lam = np.linalg.eigvalsh((m + m.T) / 2)
    trsqrt = np.sqrt(np.clip(lam, 0.0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * trsqrt)


def fd_eigvals(mu1, s1, mu2, s2):
    lam = np.linalg.eigvals(s1 @ s2).real  # the imaginary parts are rounding
    trsqrt = np.sqrt(np.clip(lam, 0.0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * trsqrt)


def fd_sqrtm(mu1, s1, mu2, s2):
    import scipy.linalg  # the caller checked that it is there
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def main():
    ap = argparse.ArgumentParser(description="Frechet distance of two .npy feature sets, by numpy")
    ap.add_argument("features1")
    ap.add_argument("features2")
    ap.add_argument("--want", type=float, help="compare the FD with this value (e.g. msdiff's)")
    ap.add_argument("--rtol", type=float, default=1e-6, help="relative tolerance for --want (default 1e-6)")
    args = ap.parse_args()

    x1, x2 = load(args.features1), load(args.features2)
    if x1.shape[1] != x2.shape[1]:
        fail(f"feature dimensions differ: {x1.shape[1]} and {x2.shape[1]}")
    print(f"fd_check: numpy {np.__version__}; {args.features1} {x1.shape} {x1.dtype}, "
          f"{args.features2} {x2.shape} {x2.dtype}")
    mu1, s1 = fit(x1)
    mu2, s2 = fit(x2)
    fd = fd_symmetric(mu1, s1, mu2, s2)
    print(f"fd = {fd:.17g}")
    print(f"fd_eigvals = {fd_eigvals(mu1, s1, mu2, s2):.17g}")
    if importlib.util.find_spec("scipy") is not None:
        print(f"fd_sqrtm = {fd_sqrtm(mu1, s1, mu2, s2):.17g}")
    else:
        print("fd_sqrtm: skipped, scipy is not installed")
    if args.want is not None:
        rel = abs(fd - args.want) / max(abs(fd), 1e-300)
        ok = rel <= args.rtol
        print(f"want = {args.want:.17g}: relative difference {rel:.3g}, tolerance {args.rtol:g}: "
              f"{'OK' if ok else 'MISMATCH'}")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
