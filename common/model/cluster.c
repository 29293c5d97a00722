// cluster.c: the data-driven stage divisions of cluster.h: the paper's Algorithm 1 on the optimal
// denoiser, its thresholds, the similarity matrix; the t / sigma / log-SNR conversions and the
// images in either pixel scale. The two dynamic programs are in cluster_dp.c.
//
// The expensive step is the posterior mean of each query over the whole data set; it goes through
// the backend's posterior_mean op in batches, everything else is host arithmetic on (M)-vectors.
#include "cluster.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/core/error.h"
#include "precond.h"
#include "common/core/rng.h"
#include "common/core/util.h"

// ---------------------------------------------------------------------------------------------------
// Conversions

double msd_cluster_sigma(double t) { return msd_vp_sigma(t); }
double msd_cluster_time(double sigma) { return msd_vp_sigma_inv(sigma); }

double msd_cluster_logsnr(double t) {
    // 1/s_t^2 = exp(beta_d t^2 / 2 + beta_min t), so SNR = s^2 / (1 - s^2) = 1 / sigma^2
    return -log(expm1(0.5 * MSD_VP_BETA_D * t * t + MSD_VP_BETA_MIN * t));
}

// ---------------------------------------------------------------------------------------------------
// Images

void msd_cluster_images(float *out, const struct msd_dataset *d, int count, enum msd_pixels px) {
    CHECK(count >= 0 && count <= d->n, "%d images of a data set of %d", count, d->n);
    const size_t total = (size_t)count * d->channels * d->res * d->res;
    for (size_t i = 0; i < total; i++)
        out[i] = px == MSD_PIXELS_01 ? (float)d->pixels[i] / 255.0f : (float)d->pixels[i] / 127.5f - 1.0f;
}

// ---------------------------------------------------------------------------------------------------
// Draws and options

struct msd_cluster_opts msd_cluster_opts_default(void) {
    return (struct msd_cluster_opts){
        .K = 2000, .eta = 2.0 / 255.0, .tmin = 1e-3, .tmax = 1.0, .seed = 0, .batch = 32};
}

void msd_cluster_draw(uint64_t seed, long k, int n, size_t M, double tmin, double tmax, double *t, int *image,
                      float *eps) {
    *t = tmin + (tmax - tmin) * (double)msd_rng_uniform(seed, MSD_STREAM_CLUSTER_T, (uint64_t)k);
    *image = (int)(msd_rng_u32(seed, MSD_STREAM_CLUSTER_IMAGE, (uint64_t)k) % (uint32_t)n);
    if (eps)
        for (size_t i = 0; i < M; i++) eps[i] = msd_rng_normal(seed, MSD_STREAM_CLUSTER_NOISE, (uint64_t)k * M + i);
}

static int check_common(int n, size_t M, const struct msd_cluster_opts *o) {
    if (n < 1) return msd_set_error("clustering needs a data set of at least 1 image, got %d", n);
    if (M < 1) return msd_set_error("clustering needs images of at least 1 pixel");
    if (!(o->eta > 0 && isfinite(o->eta))) return msd_set_error("eta must be a finite tolerance > 0, got %g", o->eta);
    if (o->batch < 1) return msd_set_error("batch must be >= 1, got %d", o->batch);
    return 0;
}

// Backend buffers for batches of B queries against n images.
struct pm_buffers {
    const struct msd_backend *be;
    float *data;  // (n, M) the images
    float *z, *m; // (B, M) queries and their posterior means
    float *w;     // (B, n) scratch weights
    float *sigma; // (B)
};

static void pm_release(struct pm_buffers *b) {
    float *all[] = {b->data, b->z, b->m, b->w, b->sigma};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (all[i]) b->be->release(all[i]);
}

static int pm_alloc(struct pm_buffers *b, const struct msd_backend *be, const float *images, int n, size_t M,
                    int B) {
    memset(b, 0, sizeof *b);
    b->be = be;
    b->data = be->alloc((size_t)n * M);
    b->z = be->alloc((size_t)B * M);
    b->m = be->alloc((size_t)B * M);
    b->w = be->alloc((size_t)B * n);
    b->sigma = be->alloc((size_t)B);
    if (!b->data || !b->z || !b->m || !b->w || !b->sigma) {
        pm_release(b);
        return msd_set_error("cannot allocate %.1f MB on backend %s for the posterior means of %d queries over %d "
                             "images of %zu pixels", 4.0 * ((double)n * M + 2.0 * B * M + (double)B * n + B) / 1e6,
                             be->name, B, n, M);
    }
    be->upload(b->data, images, (size_t)n * M);
    return 0;
}

// m_host: (N, M) <- the posterior means of z_host: (N, M) at the noise levels sigma: (N), N <= B.
static void pm_run(struct pm_buffers *b, float *m_host, const float *z_host, const float *sigma, int N, int n,
                   size_t M) {
    const struct msd_backend *be = b->be;
    be->upload(b->z, z_host, (size_t)N * M);
    be->upload(b->sigma, sigma, (size_t)N);
    be->posterior_mean(b->m, b->w, b->z, b->data, b->sigma, N, n, M);
    be->download(m_host, b->m, (size_t)N * M);
}

// ---------------------------------------------------------------------------------------------------
// Algorithm 1

static int by_time(const void *pa, const void *pb) {
    const struct msd_cluster_sample *a = pa, *b = pb;
    if (a->t != b->t) return a->t < b->t ? -1 : 1;
    return (a->k > b->k) - (a->k < b->k);
}

int msd_cluster_denoiser(const struct msd_backend *be, const float *images, int n, size_t M,
                         const struct msd_cluster_opts *o, struct msd_cluster_sample *out) {
    if (check_common(n, M, o) < 0) return -1;
    if (o->K < 2) return msd_set_error("Algorithm 1 needs K >= 2 samples, got %d", o->K);
    if (!(o->tmin > 0 && o->tmin < o->tmax && o->tmax <= 1))
        return msd_set_error("the time range must satisfy 0 < tmin < tmax <= 1, got [%g, %g]", o->tmin, o->tmax);
    const int B = o->batch < o->K ? o->batch : o->K;
    struct pm_buffers buf;
    if (pm_alloc(&buf, be, images, n, M, B) < 0) return -1;

    // ybar: the mean image, the optimal denoiser's t = 1 limit
    double *ybar = xcalloc(M, sizeof *ybar);
    for (int j = 0; j < n; j++)
        for (size_t i = 0; i < M; i++) ybar[i] += images[(size_t)j * M + i];
    for (size_t i = 0; i < M; i++) ybar[i] /= n;

    float *eps = xmalloc((size_t)B * M * sizeof *eps), *z = xmalloc((size_t)B * M * sizeof *z);
    float *m = xmalloc((size_t)B * M * sizeof *m), *sig = xmalloc((size_t)B * sizeof *sig);
    for (int first = 0; first < o->K; first += B) {
        const int N = o->K - first < B ? o->K - first : B;
        for (int j = 0; j < N; j++) {
            struct msd_cluster_sample *s = &out[first + j];
            s->k = first + j;
            msd_cluster_draw(o->seed, s->k, n, M, o->tmin, o->tmax, &s->t, &s->image, eps + (size_t)j * M);
            s->sigma = msd_cluster_sigma(s->t);
            sig[j] = (float)s->sigma;
            const float *y = images + (size_t)s->image * M;
            for (size_t i = 0; i < M; i++) z[(size_t)j * M + i] = (float)(y[i] + s->sigma * eps[(size_t)j * M + i]);
        }
        pm_run(&buf, m, z, sig, N, n, M);
        for (int j = 0; j < N; j++) {
            struct msd_cluster_sample *s = &out[first + j];
            const float *y = images + (size_t)s->image * M, *mj = m + (size_t)j * M;
            const double tol = o->eta * s->sigma; // |m - y| / sigma < eta  <=>  |m - y| < eta sigma
            long near0 = 0, near1 = 0;
            for (size_t i = 0; i < M; i++) {
                near0 += fabs((double)mj[i] - y[i]) < tol;
                near1 += fabs((double)mj[i] - ybar[i]) < tol;
            }
            s->S0 = (double)near0 / M;
            s->S1 = (double)near1 / M;
        }
        if (o->progress) o->progress(o->progress_ctx, first + N, o->K);
    }
    free(eps), free(z), free(m), free(sig), free(ybar);
    pm_release(&buf);
    qsort(out, (size_t)o->K, sizeof *out, by_time);
    return 0;
}

int msd_cluster_thresholds(const struct msd_cluster_sample *s, int K, double alpha, double *t1, double *t2) {
    if (!(alpha > 0 && alpha <= 1)) return msd_set_error("alpha must lie in (0, 1], got %g", alpha);
    if (K < 1) return msd_set_error("no samples to threshold");
    // t1: the last prefix whose mean S0 is >= alpha
    int i1 = -1, i2 = -1;
    double sum = 0;
    for (int i = 0; i < K; i++) {
        sum += s[i].S0;
        if (sum >= alpha * (i + 1)) i1 = i;
    }
    // t2: the first suffix whose mean S1 is >= alpha (scanned from the end, the last hit wins)
    sum = 0;
    for (int i = K - 1; i >= 0; i--) {
        sum += s[i].S1;
        if (sum >= alpha * (K - i)) i2 = i;
    }
    if (i1 < 0 || i2 < 0)
        return msd_set_error("no threshold reaches alpha = %g: the %s sample (t = %.4f) has %s = %.4f < alpha; "
                             "lower alpha or raise eta", alpha, i1 < 0 ? "first" : "last",
                             i1 < 0 ? s[0].t : s[K - 1].t, i1 < 0 ? "S0" : "S1", i1 < 0 ? s[0].S0 : s[K - 1].S1);
    *t1 = s[i1].t;
    *t2 = s[i2].t;
    return 0;
}

// ---------------------------------------------------------------------------------------------------
// The similarity matrix

int msd_cluster_similarity(const struct msd_backend *be, const float *images, int n, size_t M, const double *t,
                           int G, int samples, const struct msd_cluster_opts *o, double *S) {
    if (check_common(n, M, o) < 0) return -1;
    if (G < 2) return msd_set_error("the similarity matrix needs a grid of >= 2 times, got %d", G);
    if (samples < 1) return msd_set_error("the similarity matrix needs >= 1 sample, got %d", samples);
    for (int a = 0; a < G; a++)
        if (!(t[a] > 0 && t[a] <= 1))
            return msd_set_error("grid time %d is %g, expected 0 < t <= 1", a, t[a]);
    // Each draw's G queries go through the backend in chunks of at most `batch`.
    const int B = o->batch < G ? o->batch : G;
    struct pm_buffers buf;
    if (pm_alloc(&buf, be, images, n, M, B) < 0) return -1;
    float *eps = xmalloc(M * sizeof *eps), *z = xmalloc((size_t)B * M * sizeof *z);
    float *m = xmalloc((size_t)G * M * sizeof *m), *sig = xmalloc((size_t)B * sizeof *sig);
    long *agree = xcalloc((size_t)G * G, sizeof *agree);
    for (int j = 0; j < samples; j++) {
        double unused_t;
        int image;
        msd_cluster_draw(o->seed, j, n, M, 0, 1, &unused_t, &image, eps);
        const float *y = images + (size_t)image * M;
        for (int first = 0; first < G; first += B) {
            const int N = G - first < B ? G - first : B;
            for (int q = 0; q < N; q++) {
                const double sigma = msd_cluster_sigma(t[first + q]);
                sig[q] = (float)sigma;
                for (size_t i = 0; i < M; i++) z[(size_t)q * M + i] = (float)(y[i] + sigma * eps[i]);
            }
            pm_run(&buf, m + (size_t)first * M, z, sig, N, n, M);
            if (o->progress) o->progress(o->progress_ctx, (long)j * G + first + N, (long)samples * G);
        }
        for (int a = 0; a < G; a++)
            for (int b = a; b < G; b++) {
                const float *ma = m + (size_t)a * M, *mb = m + (size_t)b * M;
                long c = 0;
                for (size_t i = 0; i < M; i++) c += fabs((double)ma[i] - mb[i]) < o->eta;
                agree[(size_t)a * G + b] += c;
            }
    }
    for (int a = 0; a < G; a++)
        for (int b = a; b < G; b++)
            S[(size_t)a * G + b] = S[(size_t)b * G + a] = (double)agree[(size_t)a * G + b] / ((double)samples * M);
    free(eps), free(z), free(m), free(sig), free(agree);
    pm_release(&buf);
    return 0;
}
