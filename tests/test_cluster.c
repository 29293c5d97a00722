// test_cluster.c: stage division (common/model/cluster.h, ref/denoiser.c, msdiff cluster).
//
// - The Table 4 baselines reproduce the paper's numbers, in the library and from the program.
// - The posterior mean against closed forms: two images (the weight is a logistic function of the
//   difference of the squared distances), identical images (m is that image, exactly), and 60,000
//   images at t = 1e-3 where the unshifted weights would all underflow (0/0).
// - Both dynamic programs against brute-force enumeration on small random grids.
// - Algorithm 1 where its answer is known: identical images (S0 = S1 = 1 for every sample, so t1 is the
//   last sample time and t2 the first) and two constant images (every pixel of m equal, S0 and S1 each
//   0 or 1 by a closed-form logistic weight).
// - The program: its output files and every bad flag a user is likely to type.
// Fixed seeds throughout; the program runs as ./msdiff from the repository root.
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/core/backend.h"
#include "common/model/cluster.h"
#include "common/core/error.h"
#include "common/io/png.h"
#include "common/core/rng.h"
#include "testutil.h"
#include "tolerance.h"

static const struct msd_backend *be = &msd_backend_ref;

// The posterior mean is a convex combination of the images, m = sum_k w_k y_k / sum_k w_k, with the
// weights stored as float (relative error 2^-24 each, and they enter numerator and denominator alike)
// and m rounded to float once: |m - exact| <= (1 + 1/2 + rounding of the double sums) 2^-24 max |y|.
// Four units of float roundoff bound it with room for the double sums.
#define PM_TOL (4 * TOL_FLT_EPS)

// ---------------------------------------------------------------------------------------------------
// Conversions and the Table 4 baselines

START_TEST(conversions) {
    // the paper's CIFAR-10 boundary t1 = 0.4420 is sigma 2.5103
    ck_assert_msg(fabs(msd_cluster_sigma(0.4420) - 2.5103) < 5e-5, "sigma(0.4420) = %.6f", msd_cluster_sigma(0.4420));
    // (the paper's second pair, docs/METHOD.md (Numbers the tests check), does not match: sigma(0.6308) = 7.4046,
    // and 7.6577 is t = 0.6360)
    printf("sigma(0.4420) = %.4f, sigma(0.6308) = %.4f, t(7.6577) = %.4f\n", msd_cluster_sigma(0.4420),
           msd_cluster_sigma(0.6308), msd_cluster_time(7.6577));
    for (double t = 1e-3; t <= 1.0; t += 0.0371) {
        const double s = msd_cluster_sigma(t);
        ck_assert_msg(fabs(msd_cluster_time(s) - t) < 1e-12, "t(sigma(%g)) = %.17g", t, msd_cluster_time(s));
        ck_assert_msg(fabs(msd_cluster_logsnr(t) + 2 * log(s)) < 1e-9 * fmax(1, fabs(msd_cluster_logsnr(t))),
                      "log-SNR(%g) = %.17g, -2 log sigma = %.17g", t, msd_cluster_logsnr(t), -2 * log(s));
    }
    // log-SNR from s_t as docs/METHOD.md (The Table 4 baselines: interval DP) writes it: 2 (log s - log sqrt(1 - s^2)),
    // log s = -t^2 19.9/4 - t 0.1/2
    const double t = 0.3, ls = -t * t * 19.9 / 4 - t * 0.1 / 2, s2 = exp(2 * ls);
    ck_assert_msg(fabs(msd_cluster_logsnr(t) - 2 * (ls - 0.5 * log(1 - s2))) < 1e-12, "log-SNR(0.3) = %.17g",
                  msd_cluster_logsnr(t));
}
END_TEST

START_TEST(table4_library) {
    double b[2];
    ck_assert_int_eq(msd_cluster_interval(MSD_INTERVAL_SNR, 1000, 3, b), 0);
    printf("interval DP, snr: t1 = %.4f, t2 = %.4f (Table 4: 0.348, 0.709)\n", b[0], b[1]);
    ck_assert_msg(fabs(b[0] - 0.348) < 1e-12 && fabs(b[1] - 0.709) < 1e-12, "snr: %.17g %.17g", b[0], b[1]);
    ck_assert_int_eq(msd_cluster_interval(MSD_INTERVAL_TIMESTEP, 1000, 3, b), 0);
    printf("interval DP, timestep: t1 = %.4f, t2 = %.4f (docs/METHOD.md, The Table 4 baselines: 0.334, 0.667)\n", b[0],
           b[1]);
    ck_assert_msg(fabs(b[0] - 0.334) < 1e-12 && fabs(b[1] - 0.667) < 1e-12, "timestep: %.17g %.17g", b[0], b[1]);
    // bad sizes are messages, not crashes
    ck_assert_int_eq(msd_cluster_interval(MSD_INTERVAL_SNR, 4, 3, b), -1);
    ck_assert_int_eq(msd_cluster_interval(MSD_INTERVAL_SNR, MSD_CLUSTER_MAX_GRID + 1, 3, b), -1);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// The posterior mean against closed forms

// A problem: N queries z (N, M) at noise levels sigma (N) against K images data (K, M); the backend
// gives the mean m (N, M) and the weights w (N, K), want holds the closed form.
struct pm_problem {
    int N, K;
    size_t M;
    float *data, *z, *sigma, *m, *w, *want;
};

static struct pm_problem pm_new(int N, int K, size_t M) {
    return (struct pm_problem){N, K, M, tbuf_new((size_t)K * M), tbuf_new(N * M), tbuf_new(N), tbuf_new(N * M),
                               tbuf_new((size_t)N * K), tbuf_new(N * M)};
}

static void pm_run(struct pm_problem *p) { be->posterior_mean(p->m, p->w, p->z, p->data, p->sigma, p->N, p->K, p->M); }

// The guards of what the backend wrote, then everything freed.
static void pm_free(struct pm_problem *p) {
    tbuf_check(p->m, p->N * p->M, "m"), tbuf_check(p->w, (size_t)p->N * p->K, "w");
    tbuf_free(p->data), tbuf_free(p->z), tbuf_free(p->sigma), tbuf_free(p->m), tbuf_free(p->w), tbuf_free(p->want);
}

// Two images a, b: w_b / w_a = exp(-(d_b - d_a) / (2 sigma^2)), so m = a + (b - a) p with
// p = 1 / (1 + exp((d_b - d_a) / (2 sigma^2))), a logistic function of the difference of the squared
// distances. Queries from near a to near b and beyond, sigma from saturated (p = 0 or 1) to flat.
START_TEST(posterior_two_images) {
    const int N = 12, K = 2;
    const size_t M = 37;
    const uint64_t seed = 11;
    struct pm_problem p = pm_new(N, K, M);
    fill_uniform(p.data, K * M, seed, 0, 1);
    const float *a = p.data, *b = p.data + M;
    for (int n = 0; n < N; n++) {
        const double u = -0.25 + 1.5 * n / (N - 1); // position along a -> b
        for (size_t i = 0; i < M; i++)
            p.z[n * M + i] =
                (float)(a[i] + u * (b[i] - a[i]) + 0.05 * msd_rng_normal(seed, MSD_STREAM_TEST, n * M + i));
        p.sigma[n] = (float)(0.02 * pow(10.0, 3.0 * (n % 6) / 5.0)); // 0.02 .. 20
    }
    pm_run(&p);
    for (int n = 0; n < N; n++) {
        const float *z = p.z + n * M, *w = p.w + n * K;
        double da = 0, db = 0;
        for (size_t i = 0; i < M; i++) {
            da += ((double)z[i] - a[i]) * ((double)z[i] - a[i]);
            db += ((double)z[i] - b[i]) * ((double)z[i] - b[i]);
        }
        const double s2 = 2.0 * p.sigma[n] * p.sigma[n], q = 1.0 / (1.0 + exp((db - da) / s2));
        for (size_t i = 0; i < M; i++) p.want[n * M + i] = (float)(a[i] + (b[i] - (double)a[i]) * q);
        // the saved weights: the nearer image has weight 1, the other the ratio
        const double far = exp(-fabs(db - da) / s2);
        const int near = da <= db ? 0 : 1;
        ck_assert_msg(w[near] == 1.0f, "query %d: nearer image's weight %g, want 1", n, w[near]);
        ck_assert_msg(fabs(w[1 - near] - far) <= TOL_FLT_EPS * far + 1e-45,
                      "query %d: farther image's weight %g, want %g", n, w[1 - near], far);
    }
    assert_close(p.m, p.want, N * M, PM_TOL, seed, "posterior mean of two images");
    pm_free(&p);
}
END_TEST

// K copies of one image: every weight is 1 and m is that image, exactly, at any sigma and any query.
START_TEST(posterior_identical_images) {
    const int N = 5, K = 50;
    const size_t M = 29;
    const uint64_t seed = 12;
    struct pm_problem p = pm_new(N, K, M);
    fill_uniform(p.data, M, seed, -1, 1);
    for (int k = 1; k < K; k++) memcpy(p.data + k * M, p.data, M * sizeof *p.data);
    fill_normal(p.z, N * M, seed + 1, 3.0f);
    const float sig[5] = {1e-3f, 0.1f, 1.0f, 80.0f, 1e4f};
    memcpy(p.sigma, sig, sizeof sig);
    pm_run(&p);
    for (int n = 0; n < N; n++)
        for (size_t i = 0; i < M; i++)
            ck_assert_msg(p.m[n * M + i] == p.data[i], "sigma %g pixel %zu: m = %.9g, the image is %.9g", sig[n], i,
                          p.m[n * M + i], p.data[i]);
    for (int i = 0; i < N * K; i++) ck_assert_msg(p.w[i] == 1.0f, "weight %d is %g, want 1", i, p.w[i]);
    pm_free(&p);
}
END_TEST

// 60,000 images of 784 pixels in [0, 1] at t = 1e-3 (sigma 0.0105). Query 0 is a noisy copy of image
// j0: m must be image j0 itself. Query 1 is the midpoint of images j1 and j2: its smallest squared
// distance is ~33, so every unshifted exponent is below -1e5 and exp() gives 0/0; with the minimum
// subtracted the two images share the weight by the two-image logistic and all others have weight 0.
START_TEST(posterior_logsumexp_60000) {
    const int K = 60000, N = 2, j0 = 123, j1 = 4567, j2 = 59999;
    const size_t M = 784;
    const uint64_t seed = 13;
    struct pm_problem p = pm_new(N, K, M);
    const float *data = p.data, *z1 = p.z + M; // z1: the midpoint query
    fill_uniform(p.data, (size_t)K * M, seed, 0, 1);
    const double s = msd_cluster_sigma(1e-3);
    for (size_t i = 0; i < M; i++) {
        p.z[i] = (float)(data[j0 * M + i] + s * msd_rng_normal(seed, MSD_STREAM_TEST, i));
        p.z[M + i] = (float)(0.5 * ((double)data[j1 * M + i] + data[j2 * M + i]));
    }
    p.sigma[0] = p.sigma[1] = (float)s;
    pm_run(&p);
    double d1 = 0, d2 = 0, dmin = INFINITY;
    for (size_t i = 0; i < M; i++) {
        d1 += ((double)z1[i] - data[j1 * M + i]) * ((double)z1[i] - data[j1 * M + i]);
        d2 += ((double)z1[i] - data[j2 * M + i]) * ((double)z1[i] - data[j2 * M + i]);
    }
    for (int k = 0; k < K; k++) {
        double d = 0;
        for (size_t i = 0; i < M; i++) d += ((double)z1[i] - data[k * M + i]) * ((double)z1[i] - data[k * M + i]);
        dmin = fmin(dmin, d);
    }
    const double s2 = 2.0 * p.sigma[1] * p.sigma[1], naive = -dmin / s2;
    printf("log-sum-exp at t = 1e-3, 60000 images: sigma %.5f, largest unshifted exponent %.4g (exp: %g)\n", s,
           naive, exp(naive));
    ck_assert_msg(exp(naive) == 0.0, "the test should make the unshifted weights underflow: exponent %g", naive);
    const double q = 1.0 / (1.0 + exp((d2 - d1) / s2));
    for (size_t i = 0; i < M; i++) {
        ck_assert_msg(p.m[i] == data[j0 * M + i], "noisy copy: pixel %zu is %.9g, image %d has %.9g", i, p.m[i], j0,
                      data[j0 * M + i]);
        p.want[M + i] = (float)(data[j1 * M + i] + (data[j2 * M + i] - (double)data[j1 * M + i]) * q);
        p.want[i] = data[j0 * M + i];
    }
    assert_close(p.m, p.want, N * M, PM_TOL, seed, "posterior mean at t = 1e-3 over 60000 images");
    for (int k = 0; k < K; k++)
        if (k != j1 && k != j2)
            ck_assert_msg(p.w[K + k] == 0.0f, "image %d has weight %g for the midpoint", k, p.w[K + k]);
    pm_free(&p);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// The dynamic programs against brute force

// Visit every way to cut n points into k contiguous clusters: cuts[1..k) strictly increasing in (0, n).
typedef double (*partition_value)(const int *starts, int k, int n, const void *ctx); // NAN = not allowed
static void enumerate(int *starts, int c, int k, int n, partition_value f, const void *ctx, bool minimise,
                      double *best) {
    if (c == k) {
        const double v = f(starts, k, n, ctx);
        if (!isnan(v) && (minimise ? v < *best : v > *best)) *best = v;
        return;
    }
    for (int s = starts[c - 1] + 1; s < n; s++) {
        starts[c] = s;
        enumerate(starts, c + 1, k, n, f, ctx, minimise, best);
    }
}

struct interval_problem {
    const double *f;
    int lo, hi;
};

// The interval DP's objective, straight from its definition; NAN when a size constraint fails.
static double interval_cost(const int *starts, int k, int n, const void *ctx) {
    const struct interval_problem *p = ctx;
    double total = 0;
    for (int c = 0; c < k; c++) {
        const int a = starts[c], b = c + 1 < k ? starts[c + 1] : n, len = b - a;
        if (len < 1 || (c > 0 && (len < p->lo || len > p->hi))) return NAN;
        for (int j = a; j < b; j++) total += fabs(p->f[a + len / 2] - p->f[j]);
    }
    return total;
}

START_TEST(interval_dp_brute_force) {
    const uint64_t seed = 21;
    int trials = 0, infeasible = 0;
    for (int trial = 0; trial < 300; trial++) {
        const uint64_t idx = (uint64_t)trial * 8;
        const int n = 2 + (int)(msd_rng_u32(seed, MSD_STREAM_TEST, idx) % 11); // 2..12
        const int k = 1 + (int)(msd_rng_u32(seed, MSD_STREAM_TEST, idx + 1) % 4);
        const int lo = 1 + (int)(msd_rng_u32(seed, MSD_STREAM_TEST, idx + 2) % 3);
        const int hi = lo + (int)(msd_rng_u32(seed, MSD_STREAM_TEST, idx + 3) % 4);
        if (k > n) continue;
        double f[12];
        for (int j = 0; j < n; j++) f[j] = msd_rng_normal(seed + 1 + trial, MSD_STREAM_TEST, j); // not monotone
        const struct interval_problem p = {f, lo, hi};
        int starts[8] = {0};
        double want = INFINITY, got = NAN;
        enumerate(starts, 1, k, n, interval_cost, &p, true, &want);
        int rc = msd_interval_dp(f, n, k, lo, hi, starts, &got);
        trials++;
        if (want == INFINITY) {
            ck_assert_msg(rc == -1, "trial %d (seed %llu): n %d k %d sizes %d..%d has no split, DP returned %g",
                          trial, (unsigned long long)seed, n, k, lo, hi, got);
            infeasible++;
            continue;
        }
        ck_assert_msg(rc == 0, "trial %d: %s", trial, msd_last_error());
        ck_assert_msg(fabs(got - want) <= 1e-12 * fmax(1, want), "trial %d (seed %llu) n %d k %d sizes %d..%d: "
                      "DP %.17g, brute force %.17g", trial, (unsigned long long)seed, n, k, lo, hi, got, want);
        const double again = interval_cost(starts, k, n, &p); // the cuts it returned achieve it
        ck_assert_msg(fabs(again - want) <= 1e-12 * fmax(1, want), "trial %d: its cuts cost %.17g, not %.17g",
                      trial, again, want);
    }
    printf("interval DP: %d random problems match brute force (%d without a feasible split)\n", trials, infeasible);
    ck_assert_msg(infeasible > 0 && infeasible < trials, "the trials should include feasible and infeasible sizes");
}
END_TEST

struct partition_problem {
    const double *S;
    int G, min_size;
};

static double partition_score(const int *starts, int k, int n, const void *ctx) {
    const struct partition_problem *p = ctx;
    double total = 0;
    for (int c = 0; c < k; c++) {
        const int a = starts[c], b = c + 1 < k ? starts[c + 1] : n;
        if (b - a < p->min_size) return NAN;
        double block = 0;
        for (int i = a; i < b; i++)
            for (int j = a; j < b; j++) block += p->S[i * p->G + j];
        total += block / ((double)(b - a) * (b - a));
    }
    return total;
}

START_TEST(partition_dp_brute_force) {
    const uint64_t seed = 22;
    int trials = 0;
    for (int trial = 0; trial < 300; trial++) {
        const uint64_t idx = (uint64_t)trial * 8;
        const int G = 1 + (int)(msd_rng_u32(seed, MSD_STREAM_TEST, idx) % 11); // 1..11
        const int k = 1 + (int)(msd_rng_u32(seed, MSD_STREAM_TEST, idx + 1) % 4);
        const int min_size = 1 + (int)(msd_rng_u32(seed, MSD_STREAM_TEST, idx + 2) % 3);
        double S[11 * 11];
        for (int a = 0; a < G; a++)
            for (int b = a; b < G; b++) // symmetric, unit diagonal, entries in [0, 1] like a similarity
                S[a * G + b] = S[b * G + a] =
                    a == b ? 1.0 : msd_rng_uniform(seed + 1 + trial, MSD_STREAM_TEST, a * G + b);
        const struct partition_problem p = {S, G, min_size};
        int starts[8] = {0};
        double want = -INFINITY, got = NAN;
        if (k <= G) enumerate(starts, 1, k, G, partition_score, &p, false, &want);
        int rc = msd_partition_dp(S, G, k, min_size, starts, &got);
        if ((long)k * min_size > G) {
            ck_assert_msg(rc == -1, "trial %d: %d clusters of >= %d in %d points should be refused", trial, k,
                          min_size, G);
            continue;
        }
        trials++;
        ck_assert_msg(rc == 0, "trial %d: %s", trial, msd_last_error());
        ck_assert_msg(fabs(got - want) <= 1e-12 * fmax(1, fabs(want)), "trial %d (seed %llu) G %d k %d min %d: DP "
                      "%.17g, brute force %.17g", trial, (unsigned long long)seed, G, k, min_size, got, want);
        const double again = partition_score(starts, k, G, &p);
        ck_assert_msg(fabs(again - want) <= 1e-12 * fmax(1, fabs(want)), "trial %d: its cuts score %.17g, not %.17g",
                      trial, again, want);
    }
    printf("partition DP: %d random problems match brute force\n", trials);
    ck_assert_int_gt(trials, 100);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// Algorithm 1

// Hand-made samples: the thresholds follow their definitions, and alpha beyond reach is a message.
START_TEST(thresholds) {
    const double S0[6] = {1, 1, 0.7, 0.2, 0.9, 0.1}, S1[6] = {0, 0.1, 0.5, 0.8, 1, 1};
    struct msd_cluster_sample s[6];
    for (int i = 0; i < 6; i++) s[i] = (struct msd_cluster_sample){.t = 0.1 * (i + 1), .S0 = S0[i], .S1 = S1[i]};
    double t1, t2;
    // prefix means of S0: 1, 1, 0.9, 0.725, 0.76, 0.65; suffix means of S1: 1, 1, 0.933, 0.825, 0.68, 0.567
    ck_assert_int_eq(msd_cluster_thresholds(s, 6, 0.9, &t1, &t2), 0);
    ck_assert_msg(t1 == s[2].t && t2 == s[3].t, "alpha 0.9: t1 %g t2 %g", t1, t2);
    ck_assert_int_eq(msd_cluster_thresholds(s, 6, 0.75, &t1, &t2), 0);
    ck_assert_msg(t1 == s[4].t && t2 == s[2].t, "alpha 0.75: t1 %g t2 %g (the last qualifying prefix wins)", t1,
                  t2);
    ck_assert_int_eq(msd_cluster_thresholds(s, 6, 0.5, &t1, &t2), 0);
    ck_assert_msg(t1 == s[5].t && t2 == s[0].t, "alpha 0.5: t1 %g t2 %g", t1, t2);
    s[0].S0 = 0.5;
    ck_assert_int_eq(msd_cluster_thresholds(s, 6, 0.9, &t1, &t2), -1);
    ck_assert_msg(strstr(msd_last_error(), "alpha"), "message: %s", msd_last_error());
    ck_assert_int_eq(msd_cluster_thresholds(s, 6, 0.0, &t1, &t2), -1);
    ck_assert_int_eq(msd_cluster_thresholds(s, 6, 1.5, &t1, &t2), -1);
}
END_TEST

// The samples are the draws msd_cluster_draw documents, sorted by t.
static void check_draws(const struct msd_cluster_sample *s, const struct msd_cluster_opts *o, int n) {
    for (int i = 0; i < o->K; i++) {
        double t;
        int image;
        msd_cluster_draw(o->seed, s[i].k, n, 0, o->tmin, o->tmax, &t, &image, NULL);
        ck_assert_msg(s[i].t == t && s[i].image == image && s[i].sigma == msd_cluster_sigma(t),
                      "sample %d (k %d): t %g image %d, the draw gives t %g image %d", i, s[i].k, s[i].t, s[i].image,
                      t, image);
        ck_assert_msg(t >= o->tmin && t <= o->tmax, "t %g outside [%g, %g]", t, o->tmin, o->tmax);
        if (i) ck_assert_msg(s[i - 1].t <= s[i].t, "samples not sorted by t at %d", i);
    }
}

// Identical images: m = y = ybar for every query, so S0 = S1 = 1 for every sample; then every prefix
// and every suffix mean is 1 >= alpha, so t1 is the last sample's time and t2 the first's (the
// stages cross: the CLI reports that as an error, the library returns what the definition gives).
START_TEST(algorithm1_identical_images) {
    const int n = 4;
    const size_t M = 48;
    float *images = tbuf_new(n * M);
    fill_uniform(images, M, 31, 0, 1);
    for (int j = 1; j < n; j++) memcpy(images + j * M, images, M * sizeof *images);
    struct msd_cluster_opts o = msd_cluster_opts_default();
    o.K = 60, o.seed = 5, o.batch = 7;
    struct msd_cluster_sample s[60];
    ck_assert_msg(msd_cluster_denoiser(be, images, n, M, &o, s) == 0, "%s", msd_last_error());
    check_draws(s, &o, n);
    for (int i = 0; i < o.K; i++)
        ck_assert_msg(s[i].S0 == 1 && s[i].S1 == 1, "sample %d (t %g): S0 %g S1 %g, want 1 and 1", i, s[i].t, s[i].S0,
                      s[i].S1);
    double t1, t2;
    ck_assert_int_eq(msd_cluster_thresholds(s, o.K, 1.0, &t1, &t2), 0);
    ck_assert_msg(t1 == s[o.K - 1].t && t2 == s[0].t, "t1 %g (want %g), t2 %g (want %g)", t1, s[o.K - 1].t, t2, s[0].t);
    tbuf_check(images, n * M, "images");
    tbuf_free(images);
}
END_TEST

// Two constant images u 1 and v 1 (every pixel u, or every pixel v). For a sample with image y = u 1
// and noise eps, z = y + sigma eps and the other image's weight is the logistic
//   p = 1 / (1 + exp((d_other - d_own) / (2 sigma^2)))
// so every pixel of m is u + (v - u) p, and S0 = [|v - u| p < eta sigma], S1 = [|m - (u + v)/2| < eta
// sigma]: each 0 or 1. With |v - u| = 0.5 and eta = 2/255, S0 is 1 at small t (p ~ 0), 0 in the middle,
// and 1 again once eta sigma > 0.25 (t > ~0.83), where S1 is 1 as well.
START_TEST(algorithm1_two_constant_images) {
    const int n = 2;
    const size_t M = 16;
    const float u = 0.2f, v = 0.7f;
    float images[2 * 16];
    for (size_t i = 0; i < M; i++) images[i] = u, images[M + i] = v;
    struct msd_cluster_opts o = msd_cluster_opts_default();
    o.K = 400, o.seed = 9;
    struct msd_cluster_sample *s = malloc(o.K * sizeof *s);
    ck_assert_msg(msd_cluster_denoiser(be, images, n, M, &o, s) == 0, "%s", msd_last_error());
    check_draws(s, &o, n);
    int borderline = 0, ones0 = 0, ones1 = 0;
    float eps[16];
    for (int i = 0; i < o.K; i++) {
        double t;
        int image;
        msd_cluster_draw(o.seed, s[i].k, n, M, o.tmin, o.tmax, &t, &image, eps);
        const double own = image ? v : u, other = image ? u : v, sigma = msd_cluster_sigma(t), sf = (float)sigma;
        double d_own = 0, d_other = 0;
        for (size_t j = 0; j < M; j++) {
            const double z = (float)(own + sigma * eps[j]); // as the library forms the query
            d_own += (z - own) * (z - own);
            d_other += (z - other) * (z - other);
        }
        const double p = 1.0 / (1.0 + exp((d_other - d_own) / (2 * sf * sf)));
        const double m = own + (other - own) * p, tol = o.eta * sigma;
        const double e0 = fabs(m - own), e1 = fabs(m - 0.5 * ((double)u + v));
        // m is float: skip the rare sample whose error sits within rounding of the tolerance
        if (fabs(e0 - tol) < 1e-6 || fabs(e1 - tol) < 1e-6) {
            borderline++;
            continue;
        }
        ck_assert_msg(s[i].S0 == (e0 < tol) && s[i].S1 == (e1 < tol), "sample k %d (t %.4f, image %d): S0 %g S1 %g, "
                      "closed form %d %d (p = %.6g)", s[i].k, t, image, s[i].S0, s[i].S1, e0 < tol, e1 < tol, p);
        ones0 += e0 < tol, ones1 += e1 < tol;
        if (t < 0.1) ck_assert_msg(s[i].S0 == 1 && s[i].S1 == 0, "t %.4f: S0 %g S1 %g", t, s[i].S0, s[i].S1);
        if (t > 0.9) ck_assert_msg(s[i].S0 == 1 && s[i].S1 == 1, "t %.4f: S0 %g S1 %g", t, s[i].S0, s[i].S1);
    }
    printf("Algorithm 1, two constant images: %d samples match the closed form (%d with S0 = 1, %d with S1 = 1), "
           "%d borderline skipped\n", o.K - borderline, ones0, ones1, borderline);
    ck_assert_msg(borderline < o.K / 50, "%d borderline samples", borderline);
    ck_assert_msg(ones0 > 0 && ones0 < o.K - borderline, "S0 should take both values");
    free(s);
}
END_TEST

// Similarity over identical images: every posterior mean is the image, so S is all ones, and any
// partition scores one per cluster. Over distinct images S is symmetric with a unit diagonal.
START_TEST(similarity_matrix) {
    const int n = 5, G = 7;
    const size_t M = 36;
    float *images = tbuf_new(n * M);
    fill_uniform(images, M, 41, 0, 1);
    for (int j = 1; j < n; j++) memcpy(images + j * M, images, M * sizeof *images);
    double t[7], S[49];
    for (int a = 0; a < G; a++) t[a] = 0.01 + 0.98 * a / (G - 1);
    struct msd_cluster_opts o = msd_cluster_opts_default();
    o.batch = 3; // more than one backend call per draw
    ck_assert_int_eq(msd_cluster_similarity(be, images, n, M, t, G, 3, &o, S), 0);
    for (int i = 0; i < G * G; i++) ck_assert_msg(S[i] == 1.0, "identical images: S[%d] = %g", i, S[i]);
    int starts[3];
    double score;
    ck_assert_int_eq(msd_partition_dp(S, G, 3, 2, starts, &score), 0);
    ck_assert_msg(fabs(score - 3) < 1e-12, "score %g, want 3", score);
    fill_uniform(images, n * M, 42, 0, 1);
    ck_assert_int_eq(msd_cluster_similarity(be, images, n, M, t, G, 3, &o, S), 0);
    double off = 0;
    for (int a = 0; a < G; a++)
        for (int b = 0; b < G; b++) {
            ck_assert_msg(S[a * G + b] == S[b * G + a] && S[a * G + b] >= 0 && S[a * G + b] <= 1, "S[%d, %d] = %g",
                          a, b, S[a * G + b]);
            if (a == b) ck_assert_msg(S[a * G + a] == 1, "S[%d, %d] = %g", a, a, S[a * G + a]);
            else off += S[a * G + b];
        }
    ck_assert_msg(off < G * (G - 1) - 1e-9, "distinct images: the means should disagree somewhere");
    ck_assert_int_eq(msd_cluster_similarity(be, images, n, M, t, 1, 3, &o, S), -1);
    tbuf_free(images);
}
END_TEST

START_TEST(bad_options) {
    float images[8] = {0};
    struct msd_cluster_sample s[4];
    struct msd_cluster_opts o = msd_cluster_opts_default();
    o.K = 1;
    ck_assert_int_eq(msd_cluster_denoiser(be, images, 2, 4, &o, s), -1);
    ck_assert_msg(strstr(msd_last_error(), "K >= 2"), "%s", msd_last_error());
    o.K = 4, o.eta = 0;
    ck_assert_int_eq(msd_cluster_denoiser(be, images, 2, 4, &o, s), -1);
    ck_assert_msg(strstr(msd_last_error(), "eta"), "%s", msd_last_error());
    o.eta = 0.01, o.tmin = 0.5, o.tmax = 0.5;
    ck_assert_int_eq(msd_cluster_denoiser(be, images, 2, 4, &o, s), -1);
    ck_assert_msg(strstr(msd_last_error(), "tmin < tmax"), "%s", msd_last_error());
    o.tmin = 0;
    ck_assert_int_eq(msd_cluster_denoiser(be, images, 2, 4, &o, s), -1);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// The program: ./msdiff cluster with the arguments, its output captured (testutil.h).
#define CLUSTER(...) MSDIFF("cluster", __VA_ARGS__)

// The boundaries line for the t values: sigma(t) as msdiff cluster prints them.
static void boundaries_line(char *buf, size_t n, const double *t, int nb) {
    size_t used = (size_t)snprintf(buf, n, "--boundaries ");
    for (int i = 0; i < nb; i++)
        used += (size_t)snprintf(buf + used, n - used, "%s%.6g", i ? "," : "", msd_cluster_sigma(t[i]));
}

static int count_lines(const char *s) {
    int lines = 0;
    for (; *s; s++) lines += *s == '\n';
    return lines;
}

START_TEST(cli_table4) {
    struct test_run r = CLUSTER("--method", "snr");
    ck_assert_msg(r.status == 0, "exit %d: %s", r.status, r.err);
    char want[128];
    const double snr[2] = {0.348, 0.709}, ts[2] = {0.334, 0.667};
    boundaries_line(want, sizeof want, snr, 2);
    ck_assert_msg(strstr(r.out, "t1 = 0.3480") && strstr(r.out, "t2 = 0.7090") && strstr(r.out, want),
                  "snr output lacks t1 = 0.3480, t2 = 0.7090 or '%s':\n%s", want, r.out);
    printf("msdiff cluster --method snr:\n%s", r.out);
    test_run_free(&r);
    r = CLUSTER("--method", "timestep", "--csv", test_path("ts.csv"));
    ck_assert_msg(r.status == 0, "exit %d: %s", r.status, r.err);
    boundaries_line(want, sizeof want, ts, 2);
    ck_assert_msg(strstr(r.out, "t1 = 0.3340") && strstr(r.out, "t2 = 0.6670") && strstr(r.out, want),
                  "timestep output lacks t1 = 0.3340, t2 = 0.6670 or '%s':\n%s", want, r.out);
    // the printed sigmas go back to the same t (what msdiff train receives)
    const char *line = strstr(r.out, "--boundaries ");
    double s1, s2;
    ck_assert_msg(sscanf(line, "--boundaries %lf,%lf", &s1, &s2) == 2, "cannot read: %s", line);
    ck_assert_msg(fabs(msd_cluster_time(s1) - 0.334) < 1e-5 && fabs(msd_cluster_time(s2) - 0.667) < 1e-5,
                  "sigma %g %g are t %g %g", s1, s2, msd_cluster_time(s1), msd_cluster_time(s2));
    test_run_free(&r);
    // the CSV: header and 1000 grid points, the stage changing at j = 334 and 667
    char *csv = test_read_file(test_path("ts.csv"), NULL);
    ck_assert_msg(!strncmp(csv, "j,t,sigma,f,stage\n", 18), "csv header: %.40s", csv);
    ck_assert_msg(strstr(csv, "\n333,") && strstr(strstr(csv, "\n333,"), ",0\n334,") && strstr(csv, ",1\n667,") &&
                      strstr(csv, "\n1000,"), "csv stages do not change at 334 and 667");
    free(csv);
}
END_TEST

// A folder of six random 8x8 gray PNGs as a data set: <tmpdir>/data (the outputs stay out of it).
static const char *write_pngs(void) {
    const char *dir = test_path("data");
    mkdir(dir, 0777); // (the tests share the folder: it may be there already)
    float img[64];
    for (int j = 0; j < 6; j++) {
        fill_uniform(img, 64, 50 + j, -1, 1);
        ck_assert_int_eq(msd_png_write(test_pathf("%s/img%d.png", dir, j), img, 1, 8, 8), 0);
    }
    return dir;
}

START_TEST(cli_denoiser_outputs) {
    const char *data = write_pngs();
    struct test_run r = CLUSTER("--method", "denoiser", "--data", data, "--K", "40", "--alpha", "0.8", "--csv",
                                test_path("s.csv"), "--plot", test_path("s.svg"), "--quiet", "--backend", "ref");
    ck_assert_msg(r.status == 0, "exit %d: %s\n%s", r.status, r.err, r.out);
    printf("msdiff cluster --method denoiser on 6 random 8x8 images:\n%s", r.out);
    double t1, t2, s1, s2;
    const char *p1 = strstr(r.out, "t1 = "), *p2 = strstr(r.out, "t2 = "), *pb = strstr(r.out, "--boundaries ");
    ck_assert_msg(p1 && p2 && pb && sscanf(p1, "t1 = %lf", &t1) == 1 && sscanf(p2, "t2 = %lf", &t2) == 1 &&
                      sscanf(pb, "--boundaries %lf,%lf", &s1, &s2) == 2, "output:\n%s", r.out);
    ck_assert_msg(t1 < t2 && fabs(msd_cluster_time(s1) - t1) < 1e-4 && fabs(msd_cluster_time(s2) - t2) < 1e-4,
                  "t1 %g t2 %g sigma %g %g", t1, t2, s1, s2);
    test_run_free(&r);
    char *buf = test_read_file(test_path("s.csv"), NULL);
    const int lines = count_lines(buf);
    ck_assert_msg(!strncmp(buf, "k,image,t,sigma,S0,S1\n", 22) && lines == 41, "csv: %d lines, header %.30s", lines,
                  buf);
    free(buf);
    buf = test_read_file(test_path("s.svg"), NULL);
    ck_assert_msg(!strncmp(buf, "<svg xmlns=", 11) && strstr(buf, "</svg>\n") && strstr(buf, "t1 = ") &&
                      strstr(buf, "VP time t"), "svg: %.80s", buf);
    free(buf);
    // a progress line goes to stderr unless --quiet
    r = CLUSTER("--method", "denoiser", "--data", data, "--K", "8", "--alpha", "0.5");
    ck_assert_msg(strstr(r.err, "posterior means 8/8 (100%)"), "progress: %s", r.err);
    test_run_free(&r);
}
END_TEST

START_TEST(cli_similarity_outputs) {
    const char *data = write_pngs();
    struct test_run r = CLUSTER("--method", "similarity", "--data", data, "--grid", "6", "--K", "2", "--stages", "2",
                                "--heatmap", test_path("h.png"), "--csv", test_path("m.csv"), "--quiet");
    ck_assert_msg(r.status == 0, "exit %d: %s\n%s", r.status, r.err, r.out);
    ck_assert_msg(strstr(r.out, "t1 = ") && !strstr(r.out, "t2 = ") && strstr(r.out, "--boundaries "), "%s", r.out);
    test_run_free(&r);
    uint8_t *px;
    int C, H, W;
    ck_assert_int_eq(msd_png_read(test_path("h.png"), &px, &C, &H, &W), 0);
    ck_assert_msg(C == 3 && H == 6 * 85 && W == 6 * 85, "heat map %dx%dx%d", C, H, W);
    free(px);
    char *buf = test_read_file(test_path("m.csv"), NULL);
    const int lines = count_lines(buf);
    ck_assert_msg(!strncmp(buf, "a,b,t_a,t_b,S\n", 14) && lines == 37, "matrix csv: %d lines", lines);
    free(buf);
}
END_TEST

// ./msdiff cluster with the arguments under a file size limit of `blocks` (sh's ulimit -f) with SIGXFSZ
// ignored, so that a write beyond the limit fails with EFBIG as a write to a full disk fails with
// ENOSPC, for any user, root included.
static struct test_run cluster_limited(int blocks, const char *args) {
    const char *cmd = test_pathf("ulimit -f %d; trap '' XFSZ; exec ./msdiff cluster %s", blocks, args);
    return test_run_argv((const char *const[]){"/bin/sh", "-c", cmd, NULL});
}

// The CSV and SVG files are written whole or not at all: a write that fails leaves the old file as it
// was and no temporary file, with the reason in the message; a missing folder fails before any work.
START_TEST(cli_outputs_whole_or_nothing) {
    const char *csv = test_path("old.csv"), *svg = test_path("old.svg"), *old = "an older file\n";
    test_write_file(csv, old, strlen(old));
    test_write_file(svg, old, strlen(old));
    // 2 blocks (1 or 2 KiB) hold the program's few lines of output but not the 1001 lines of the CSV
    struct test_run r = cluster_limited(2, test_pathf("--method snr --csv %s", csv));
    TEST_EXPECT_FAIL(&r, 1, csv, strerror(EFBIG), "left as it was");
    test_run_free(&r);
    char *text = test_read_file(csv, NULL);
    ck_assert_msg(!strcmp(text, old) && !test_exists(test_pathf("%s.tmp", csv)), "a failed --csv changed %s to "
                  "'%.40s' or left %s.tmp", csv, text, csv);
    free(text);
    const char *data = write_pngs();
    r = cluster_limited(2, test_pathf("--method denoiser --data %s --K 8 --alpha 0.5 --quiet --plot %s", data, svg));
    TEST_EXPECT_FAIL(&r, 1, svg, strerror(EFBIG));
    test_run_free(&r);
    text = test_read_file(svg, NULL);
    ck_assert_msg(!strcmp(text, old) && !test_exists(test_pathf("%s.tmp", svg)), "a failed --plot changed %s or "
                  "left %s.tmp", svg, svg);
    free(text);
    // a device is written in place, and its error comes with the reason
    if (test_exists("/dev/full")) {
        r = CLUSTER("--method", "timestep", "--csv", "/dev/full");
        TEST_EXPECT_FAIL(&r, 1, "/dev/full", strerror(ENOSPC));
        test_run_free(&r);
    }
    // a folder that does not exist: refused before the posterior means (no progress line)
    const char *missing = test_path("no-such-dir/s.csv");
    r = CLUSTER("--method", "denoiser", "--data", data, "--K", "8", "--alpha", "0.5", "--csv", missing);
    TEST_EXPECT_FAIL(&r, 1, "--csv", missing, "does not exist");
    ck_assert_msg(!strstr(r.err, "posterior means"), "the folder was checked after the work: %s", r.err);
    test_run_free(&r);
    // and a good write replaces the old file whole, with no temporary file left
    r = CLUSTER("--method", "snr", "--csv", csv);
    test_expect_ok(&r);
    test_run_free(&r);
    text = test_read_file(csv, NULL);
    ck_assert_msg(!strncmp(text, "j,t,sigma,f,stage\n", 18) && count_lines(text) == 1001 &&
                  !test_exists(test_pathf("%s.tmp", csv)), "--csv wrote %d lines: %.40s", count_lines(text), text);
    free(text);
}
END_TEST

// A bad command line: exit 2 and one line on stderr naming `needle`.
static void usage_error(const char *needle, const char *const *args) {
    const char *argv[24] = {"./msdiff", "cluster"};
    int argc = 2;
    for (int i = 0; args[i] && argc < 23; i++) argv[argc++] = args[i];
    struct test_run r = test_run_argv(argv);
    TEST_EXPECT_FAIL(&r, 2, needle);
    test_run_free(&r);
}
#define USAGE_ERROR(needle, ...) usage_error(needle, (const char *const[]){__VA_ARGS__, NULL})

START_TEST(cli_bad_flags) {
    const char *data = write_pngs();
    USAGE_ERROR("--method", NULL);
    USAGE_ERROR("expected denoiser, snr, timestep or similarity", "--method", "kmeans");
    USAGE_ERROR("--alpha", "--method", "denoiser", "--alpha", "0");
    USAGE_ERROR("(0, 1]", "--method", "denoiser", "--alpha", "1.01");
    USAGE_ERROR("--alpha", "--method", "denoiser", "--alpha", "nan");
    USAGE_ERROR("at least 2 samples", "--method", "denoiser", "--K", "1");
    USAGE_ERROR("--K", "--method", "denoiser", "--K", "-3");
    USAGE_ERROR("--eta", "--method", "denoiser", "--eta", "0");
    USAGE_ERROR("--eta", "--method", "denoiser", "--eta", "-0.1");
    USAGE_ERROR("tmin < tmax", "--method", "denoiser", "--tmin", "0.6", "--tmax", "0.4");
    USAGE_ERROR("0 < tmin", "--method", "denoiser", "--tmin", "0");
    USAGE_ERROR("tmax <= 1", "--method", "denoiser", "--tmax", "1.5");
    USAGE_ERROR("01 ([0, 1]) or pm1", "--method", "denoiser", "--pixels", "255");
    USAGE_ERROR("--stages does not apply to --method denoiser", "--method", "denoiser", "--stages", "4");
    USAGE_ERROR("has 6 images", "--method", "denoiser", "--data", data, "--images", "7", "--quiet");
    USAGE_ERROR("--images", "--method", "denoiser", "--images", "1");
    USAGE_ERROR("--alpha does not apply to --method snr", "--method", "snr", "--alpha", "0.9");
    USAGE_ERROR("--data does not apply", "--method", "timestep", "--data", "fmnist");
    USAGE_ERROR("--plot does not apply", "--method", "snr", "--plot", "x.svg");
    USAGE_ERROR("--heatmap does not apply", "--method", "denoiser", "--heatmap", "x.png");
    USAGE_ERROR("too small for 3 stages", "--method", "snr", "--grid", "5");
    USAGE_ERROR("--stages", "--method", "snr", "--stages", "1");
    USAGE_ERROR("--min-size 2", "--method", "similarity", "--grid", "4", "--stages", "3", "--min-size", "2");
    USAGE_ERROR("gpu", "--method", "similarity", "--backend", "gpu");
    // a data set that cannot be read is a failure (exit 1), not a usage error
    struct test_run r = CLUSTER("--method", "denoiser", "--data", test_path("nonexistent"));
    ck_assert_msg(r.status == 1 && strstr(r.err, "nonexistent"), "exit %d: %s", r.status, r.err);
    test_run_free(&r);
    // help names every flag and the defaults
    r = CLUSTER("--help");
    ck_assert_msg(r.status == 0 && strstr(r.out, "--alpha A") && strstr(r.out, "default 0.9") &&
                      strstr(r.out, "default 2000"), "help:\n%s", r.out);
    test_run_free(&r);
}
END_TEST

int main(void) {
    test_tmpdir_make("cluster"); // before the tests fork: the program's tests share it
    const TTest *tests[] = {
        conversions, table4_library, posterior_two_images, posterior_identical_images,
        posterior_logsumexp_60000, interval_dp_brute_force, partition_dp_brute_force, thresholds,
        algorithm1_identical_images, algorithm1_two_constant_images, similarity_matrix, bad_options,
        cli_table4, cli_denoiser_outputs, cli_similarity_outputs, cli_bad_flags, cli_outputs_whole_or_nothing,
    };
    return run_tests("cluster", 120, tests, TEST_COUNT(tests));
}
