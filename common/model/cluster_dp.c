// cluster_dp.c: the two exact dynamic programs of stage division (cluster.h): the constrained
// interval clustering behind the paper's Table 4 baselines (timestep, SNR), and the contiguous
// partition of a similarity matrix.
//
// Both cut a line of n points into k contiguous clusters. With best[c][b] = the best value of
// covering points [0, b) by clusters 0..c, the last cluster being [a, b):
//   best[c][b] = opt over allowed a of best[c - 1][a] + value(a, b)
// and the cuts are read back from the argument that won at each step (ties: the smallest a, i.e.
// the earliest cut). value(a, b) is O(1) from a prefix table, so each DP is O(k n^2).
#include "cluster.h"

#include <math.h>
#include <stdlib.h>

#include "common/core/error.h"
#include "common/core/util.h"

// Read the cluster starts back from arg[c][b] (the a that won for clusters 0..c covering [0, b)).
static void backtrack(const int *arg, int n, int k, int *starts) {
    int b = n;
    for (int c = k - 1; c >= 1; c--) {
        b = arg[(size_t)c * (n + 1) + b];
        starts[c] = b;
    }
    starts[0] = 0;
}

// ---------------------------------------------------------------------------------------------------
// Interval clustering (Go et al.; the paper's Table 4)

int msd_interval_dp(const double *f, int n, int k, int lo, int hi, int *starts, double *cost) {
    if (n < 1 || n > MSD_CLUSTER_MAX_GRID)
        return msd_set_error("interval DP: grid of %d points, expected 1..%d", n, MSD_CLUSTER_MAX_GRID);
    if (k < 1 || k > MSD_CLUSTER_MAX_STAGES || k > n)
        return msd_set_error("interval DP: %d clusters for %d points (expected 1..min(%d, points))", k, n,
                             MSD_CLUSTER_MAX_STAGES);
    if (lo < 1 || hi < lo) return msd_set_error("interval DP: cluster sizes [%d, %d], expected 1 <= lo <= hi", lo, hi);
    if ((long)(k - 1) * lo + 1 > n)
        return msd_set_error("interval DP: %d clusters of at least %d points and a first one do not fit in %d points",
                             k - 1, lo, n);
    const size_t W = (size_t)n + 1;
    // P[c][j] = sum_{i < j} |f[c] - f[i]|: the cost of [a, b) around its centre c is P[c][b] - P[c][a]
    double *P = xmalloc((size_t)n * W * sizeof *P);
    for (int c = 0; c < n; c++) {
        P[c * W] = 0;
        for (int i = 0; i < n; i++) P[c * W + i + 1] = P[c * W + i] + fabs(f[c] - f[i]);
    }
    double *best = xmalloc((size_t)k * W * sizeof *best);
    int *arg = xmalloc((size_t)k * W * sizeof *arg);
    for (size_t i = 0; i < (size_t)k * W; i++) best[i] = INFINITY, arg[i] = -1;
    // cluster 0: [0, b), any size >= 1
    for (int b = 1; b <= n; b++) best[b] = P[(size_t)(b / 2) * W + b] - P[(size_t)(b / 2) * W];
    for (int c = 1; c < k; c++)
        for (int b = 1; b <= n; b++) {
            const int a_lo = b - hi > 1 ? b - hi : 1, a_hi = b - lo;
            for (int a = a_lo; a <= a_hi; a++) {
                const double prev = best[(size_t)(c - 1) * W + a];
                if (prev == INFINITY) continue;
                const size_t centre = (size_t)(a + (b - a) / 2);
                const double v = prev + P[centre * W + b] - P[centre * W + a];
                if (v < best[c * W + b]) best[c * W + b] = v, arg[c * W + b] = a;
            }
        }
    const double total = best[(size_t)(k - 1) * W + n];
    int rc = 0;
    if (total == INFINITY)
        rc = msd_set_error("interval DP: no split of %d points into %d clusters with clusters 2..%d of %d..%d points",
                           n, k, k, lo, hi);
    else {
        backtrack(arg, n, k, starts);
        *cost = total;
    }
    free(P), free(best), free(arg);
    return rc;
}

int msd_cluster_interval(enum msd_interval_f f, int n, int k, double *bounds) {
    if (n < 1 || n > MSD_CLUSTER_MAX_GRID)
        return msd_set_error("interval clustering: grid of %d points, expected 1..%d", n, MSD_CLUSTER_MAX_GRID);
    if (k < 2 || k > MSD_CLUSTER_MAX_STAGES)
        return msd_set_error("interval clustering: %d stages, expected 2..%d", k, MSD_CLUSTER_MAX_STAGES);
    // Go et al.'s size constraint: clusters 2..k hold between n/2k and 3n/2k points
    const int lo = n / (2 * k), hi = (3 * n + 2 * k - 1) / (2 * k);
    if (lo < 1) return msd_set_error("interval clustering: a grid of %d points is too small for %d stages", n, k);
    double *v = xmalloc((size_t)n * sizeof *v);
    for (int j = 0; j < n; j++) {
        const double t = (double)(j + 1) / n;
        v[j] = f == MSD_INTERVAL_SNR ? msd_cluster_logsnr(t) : t;
    }
    int starts[MSD_CLUSTER_MAX_STAGES];
    double cost;
    int rc = msd_interval_dp(v, n, k, lo, hi, starts, &cost);
    free(v);
    if (rc < 0) return -1;
    for (int c = 1; c < k; c++) bounds[c - 1] = (double)(starts[c] + 1) / n;
    return 0;
}

// ---------------------------------------------------------------------------------------------------
// Contiguous partition of a similarity matrix

int msd_partition_dp(const double *S, int G, int k, int min_size, int *starts, double *score) {
    if (G < 1) return msd_set_error("partition DP: empty matrix");
    if (k < 1 || k > MSD_CLUSTER_MAX_STAGES)
        return msd_set_error("partition DP: %d clusters, expected 1..%d", k, MSD_CLUSTER_MAX_STAGES);
    if (min_size < 1) return msd_set_error("partition DP: minimum cluster size %d, expected >= 1", min_size);
    if ((long)k * min_size > G)
        return msd_set_error("partition DP: %d clusters of at least %d points do not fit in a grid of %d", k,
                             min_size, G);
    const size_t W = (size_t)G + 1;
    // Q[a][b] = sum of S over rows < a and columns < b: the block [a, b)^2 sums to
    // Q[b][b] - Q[a][b] - Q[b][a] + Q[a][a]
    double *Q = xcalloc(W * W, sizeof *Q);
    for (int a = 0; a < G; a++)
        for (int b = 0; b < G; b++)
            Q[(a + 1) * W + b + 1] = S[(size_t)a * G + b] + Q[a * W + b + 1] + Q[(a + 1) * W + b] - Q[a * W + b];
    double *best = xmalloc((size_t)k * W * sizeof *best);
    int *arg = xmalloc((size_t)k * W * sizeof *arg);
    for (size_t i = 0; i < (size_t)k * W; i++) best[i] = -INFINITY, arg[i] = -1;
    for (int c = 0; c < k; c++)
        for (int b = (c + 1) * min_size; b <= G; b++) {
            // cluster c is [a, b): cluster 0 starts at 0, the others after c clusters of >= min_size
            const int a_lo = c == 0 ? 0 : c * min_size, a_hi = c == 0 ? 0 : b - min_size;
            for (int a = a_lo; a <= a_hi; a++) {
                const double prev = c == 0 ? 0.0 : best[(size_t)(c - 1) * W + a];
                if (prev == -INFINITY) continue;
                const double len = b - a;
                const double block = Q[b * W + b] - Q[a * W + b] - Q[b * W + a] + Q[a * W + a];
                const double v = prev + block / (len * len);
                if (v > best[c * W + b]) best[c * W + b] = v, arg[c * W + b] = a;
            }
        }
    *score = best[(size_t)(k - 1) * W + G];
    backtrack(arg, G, k, starts);
    free(Q), free(best), free(arg);
    return 0;
}
