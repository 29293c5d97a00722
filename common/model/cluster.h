// cluster.h: stage division (timestep clustering; docs/METHOD.md, Stage division): where to cut the
// noise range into stages, by every method the paper compares.
//
//   denoiser     the paper's Algorithm 1 on the optimal denoiser of an empirical data set: K samples
//                (y, eps, t); S0 = the fraction of pixels where the optimal epsilon-denoiser is within
//                eta of the true noise (its t = 0 limit), S1 = within eta of the t = 1 limit (the data
//                mean); t1 and t2 where the running means of S0 (from below) and S1 (from above) fall
//                to alpha.
//   timestep     the constrained interval DP of Table 4 (Go et al.) on f(t) = t
//   snr          the same DP on f(t) = log-SNR(t)
//   similarity   a matrix of how often two times' posterior means agree, cut into contiguous clusters
//                by an exact DP maximising sum_c (1/|C|^2) sum_{a,b in C} S_ab
//
// Times are VP times t in (0, 1] with score_sde's schedule (beta_min 0.1, beta_max 20), which is EDM's
// VP schedule (beta_d 19.9): sigma(t) = sqrt(exp(9.95 t^2 + 0.1 t) - 1) = msd_vp_sigma(t), and the VP
// forward process x_t = s_t (y + sigma_t eps). The posterior means are computed in that EDM form,
// z = y + sigma eps, by the backend op posterior_mean (common/core/backend.h), so the long part runs on
// any backend.
//
// Randomness: sample k of Algorithm 1 (and of the similarity matrix) is a pure function of
// (seed, k): see msd_cluster_draw.
//
// Holds: the algorithms, the conversions between t, sigma and log-SNR, images in either pixel scale.
// Does not hold: printing, CSV, SVG or PNG output, flags (common/cli/cmd_cluster.c).
#ifndef MSD_CLUSTER_H
#define MSD_CLUSTER_H

#include <stddef.h>
#include <stdint.h>

#include "common/core/backend.h"
#include "common/core/rng.h" // MSD_STREAM_CLUSTER_*
#include "common/io/data.h"


// Most stages any method returns (the network's MSD_MAX_STAGES is smaller; this is for experiments).
#define MSD_CLUSTER_MAX_STAGES 64
// Largest grid of the interval DP: its cost table holds (n + 1)^2 doubles (32 MB at this size).
#define MSD_CLUSTER_MAX_GRID 2000

// ---------------------------------------------------------------------------------------------------
// Conversions (VP schedule; docs/METHOD.md, Preconditioning and losses, and Stage division)

// sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1), the EDM noise level of VP time t.
double msd_cluster_sigma(double t);
// Its inverse: the VP time of noise level sigma.
double msd_cluster_time(double sigma);
// log-SNR(t) = 2 (log s_t - log sqrt(1 - s_t^2)) = -log sigma(t)^2, computed with expm1 so that it
// stays accurate at small t.
double msd_cluster_logsnr(double t);

// ---------------------------------------------------------------------------------------------------
// Images

// Pixel scales: [0, 1] (p / 255, the authors' notebook) or [-1, 1] (p / 127.5 - 1, msdiff's training).
enum msd_pixels { MSD_PIXELS_01, MSD_PIXELS_PM1 };

// Images [0, count) of d as floats in the scale px: out: (count, C, R, R) host memory.
void msd_cluster_images(float *out, const struct msd_dataset *d, int count, enum msd_pixels px);

// ---------------------------------------------------------------------------------------------------
// The paper's Algorithm 1 (optimal-denoiser clustering)

// What progress callbacks receive: `done` of `total` posterior means computed so far.
typedef void (*msd_cluster_progress)(void *ctx, long done, long total);

struct msd_cluster_opts {
    int K;              // samples (y, eps, t), >= 2
    double eta;         // agreement tolerance per pixel, > 0, in the units of the images' scale
    double tmin, tmax;  // t ~ U[tmin, tmax], 0 < tmin < tmax <= 1
    uint64_t seed;
    int batch;          // queries per posterior_mean call (>= 1; memory: batch x n floats of weights)
    msd_cluster_progress progress; // or NULL
    void *progress_ctx;
};
// The defaults: K 2000, eta 2/255, t in [1e-3, 1], seed 0, batch 32, no progress.
struct msd_cluster_opts msd_cluster_opts_default(void);

// One sample of Algorithm 1, as it is reported.
struct msd_cluster_sample {
    double t, sigma; // its time and noise level
    double S0, S1;   // the fractions of pixels within eta of the t = 0 and t = 1 limits
    int k;           // its index among the draws (msd_cluster_draw)
    int image;       // the data image y it used
};

// Sample k: t = tmin + (tmax - tmin) u with u = msd_rng_uniform(seed, MSD_STREAM_CLUSTER_T, k);
// image = msd_rng_u32(seed, MSD_STREAM_CLUSTER_IMAGE, k) % n; eps[i] = msd_rng_normal(seed,
// MSD_STREAM_CLUSTER_NOISE, k * M + i) for i < M (eps: (M), or NULL to skip the noise).
void msd_cluster_draw(uint64_t seed, long k, int n, size_t M, double tmin, double tmax, double *t, int *image,
                      float *eps);

// Algorithm 1 over the n images (n, M) (host memory, in the scale eta refers to): for each sample,
// z = y + sigma(t) eps, m = posterior mean of z over all n images (backend op), and per pixel
//   S0: |m - y| / sigma < eta      (the optimal epsilon-denoiser against the true noise)
//   S1: |m - ybar| / sigma < eta   (against the t = 1 limit; ybar = the mean image of the set)
// out: (K) the samples sorted by t (ties by k). 0, or -1 with a message (bad options, no memory).
int msd_cluster_denoiser(const struct msd_backend *be, const float *images, int n, size_t M,
                         const struct msd_cluster_opts *o, struct msd_cluster_sample *out);

// The paper's thresholds on samples sorted by t: t1 = the largest sample time tau such that the mean
// of S0 over the samples with t <= tau is >= alpha; t2 = the smallest tau such that the mean of S1 over
// the samples with t >= tau is >= alpha. 0, or -1 with a message when no tau qualifies for either
// (alpha too high for these samples); alpha in (0, 1].
int msd_cluster_thresholds(const struct msd_cluster_sample *s, int K, double alpha, double *t1, double *t2);

// ---------------------------------------------------------------------------------------------------
// The interval DP of the paper's Table 4 (constrained interval clustering of Go et al.)

// Split f[0..n) into k contiguous clusters minimising sum over clusters of sum_j |f[c] - f[j]|, c the
// cluster's point at offset len/2 (integer division). Cluster 0 holds any number >= 1 of points,
// clusters 1..k-1 between lo and hi (1 <= lo <= hi). starts[0..k): each cluster's first index
// (starts[0] = 0); *cost the minimum. Ties go to the earliest cut. 0, or -1 with a message when no
// split satisfies the sizes. n <= MSD_CLUSTER_MAX_GRID.
int msd_interval_dp(const double *f, int n, int k, int lo, int hi, int *starts, double *cost);

enum msd_interval_f { MSD_INTERVAL_TIMESTEP, MSD_INTERVAL_SNR };

// The paper's baselines: grid t_j = j / n, j = 1..n, clusters 2..k holding between floor(n / 2k) and
// ceil(3n / 2k) points, f(t) = t (timestep) or log-SNR(t) (snr). bounds: (k - 1) the t of the first
// point of clusters 2..k. n = 1000, k = 3 gives timestep 0.334, 0.667 and snr 0.348, 0.709.
int msd_cluster_interval(enum msd_interval_f f, int n, int k, double *bounds);

// ---------------------------------------------------------------------------------------------------
// The similarity-matrix method

// S: (G, G). For each of `samples` draws (y, eps) (msd_cluster_draw, its t unused) the posterior means
// m_a at every grid time t[a] (same y and eps: z_a = y + sigma(t_a) eps); S_ab = the fraction of pixels
// with |m_a - m_b| < eta, averaged over the draws. Symmetric, S_aa = 1. G >= 2, samples >= 1.
// 0, or -1 with a message. opts supplies eta, seed, progress (K and the t range are unused).
int msd_cluster_similarity(const struct msd_backend *be, const float *images, int n, size_t M, const double *t,
                           int G, int samples, const struct msd_cluster_opts *o, double *S);

// Split 0..G-1 into k contiguous clusters, each of at least min_size points, maximising
// sum_c (1/|C_c|^2) sum_{a,b in C_c} S_ab exactly (S: (G, G)). starts[0..k), *score the maximum.
// Ties go to the earliest cut. 0, or -1 with a message when k * min_size > G.
int msd_partition_dp(const double *S, int G, int k, int min_size, int *starts, double *score);

#endif
