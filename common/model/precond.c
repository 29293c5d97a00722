// precond.c: EDM and VP preconditioning around the raw U-Net, and the EDM/VP losses (precond.h).
//
// The network sees c_in x and c_noise; its output F is mixed with the input as c_skip x + c_out F.
// All four coefficients depend on sigma only, so they are computed per sample on the host (double)
// and applied with the backend's row ops. Backward is the same mixing transposed:
//   forward  D = c_skip x + c_out F(x_in),  x_in = c_in x
//   backward dF = c_out dD;  dx = c_skip dD + c_in dx_in
#include "precond.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/core/error.h"
#include "common/core/util.h"

// Buffers of the denoiser and the loss, for the planned batch size N. All backend memory but vec.
struct msd_dbufs {
    int N;
    float *vec;               // host staging for the (N) vectors
    // kept by msd_denoise_forward for msd_denoise_backward
    float *c_skip, *c_out, *c_in; // (N): the coefficients of the batch's sigmas
    float *x_in;              // (N, C, R, R): c_in x, the network's input
    // the denoiser's working buffers
    float *c_noise;           // (N)
    float *F, *dF, *dx_in;    // (N, C, R, R): the network's output, its gradient, dL/dx_in
    // the loss's: x = y + sigma n, D = D(x; sigma), dD = dL/dD, sq: (N) per-sample squared errors, and
    // a, b: (N) row coefficients for combine_rows
    float *x, *D, *dD;        // (N, C, R, R)
    float *sq, *a, *b;        // (N)
};

static size_t image_floats(const struct msd_model *m) {
    const struct msd_config *c = &m->cfg;
    return (size_t)c->in_channels * c->img_resolution * c->img_resolution;
}

void msd_denoiser_release(struct msd_model *m) {
    struct msd_dbufs *d = m->dbufs;
    if (!d) return;
    float **backend[] = {&d->c_skip, &d->c_out, &d->c_in, &d->c_noise, &d->a, &d->b, &d->x_in,
                         &d->F, &d->x, &d->D, &d->dF, &d->dx_in, &d->dD, &d->sq};
    for (size_t i = 0; i < sizeof backend / sizeof backend[0]; i++)
        if (*backend[i]) m->be->release(*backend[i]);
    free(d->vec);
    free(d);
    m->dbufs = NULL;
}

static struct msd_dbufs *dbufs(struct msd_model *m, int N) {
    if (m->dbufs && m->dbufs->N == N) return m->dbufs;
    msd_denoiser_release(m);
    struct msd_dbufs *d = xcalloc(1, sizeof *d);
    const size_t M = (size_t)N * image_floats(m);
    d->N = N;
    d->vec = xmalloc((size_t)N * sizeof(float));
    float **vecs[] = {&d->c_skip, &d->c_out, &d->c_in, &d->c_noise, &d->a, &d->b, &d->sq};
    for (size_t i = 0; i < sizeof vecs / sizeof vecs[0]; i++) *vecs[i] = m->be->alloc(N);
    float **imgs[] = {&d->x_in, &d->F, &d->x, &d->D, &d->dF, &d->dx_in, &d->dD};
    for (size_t i = 0; i < sizeof imgs / sizeof imgs[0]; i++) *imgs[i] = m->be->alloc(M);
    m->dbufs = d;
    for (size_t i = 0; i < sizeof vecs / sizeof vecs[0]; i++)
        if (!*vecs[i]) {
            msd_denoiser_release(m);
            msd_set_error("cannot allocate the denoiser's per-sample vectors at a batch of %d images on backend %s",
                          N, m->be->name);
            return NULL;
        }
    for (size_t i = 0; i < sizeof imgs / sizeof imgs[0]; i++)
        if (!*imgs[i]) {
            msd_denoiser_release(m);
            msd_set_error("cannot allocate %.1f MB for the denoiser's buffers at a batch of %d images on backend %s",
                          7 * M * 4.0 / 1e6, N, m->be->name);
            return NULL;
        }
    return d;
}

// ---------------------------------------------------------------------------------------------------
// Coefficients

double msd_vp_sigma(double t) {
    return sqrt(exp(0.5 * MSD_VP_BETA_D * t * t + MSD_VP_BETA_MIN * t) - 1.0);
}

double msd_vp_sigma_inv(double sigma) {
    // solve beta_d t^2 / 2 + beta_min t = log(1 + sigma^2) for t >= 0
    return (sqrt(MSD_VP_BETA_MIN * MSD_VP_BETA_MIN + 2.0 * MSD_VP_BETA_D * log1p(sigma * sigma)) -
            MSD_VP_BETA_MIN) / MSD_VP_BETA_D;
}

void msd_precond_coefs(const struct msd_config *c, double sigma, struct msd_coefs *k) {
    if (c->precond == MSD_PRECOND_VP) {
        k->c_skip = 1.0;
        k->c_out = -sigma;
        k->c_in = 1.0 / sqrt(sigma * sigma + 1.0);
        k->c_noise = (MSD_VP_M - 1) * msd_vp_sigma_inv(sigma);
        k->weight = 1.0 / (sigma * sigma);
        return;
    }
    const double sd = c->sigma_data, s2 = sigma * sigma + sd * sd;
    k->c_skip = sd * sd / s2;
    k->c_out = sigma * sd / sqrt(s2);
    k->c_in = 1.0 / sqrt(s2);
    k->c_noise = log(sigma) / 4.0;
    k->weight = s2 / (sigma * sd * sigma * sd);
}

// 0 when stage is one of the model's and every sigma[0..N) lies in it, else -1 with a message.
static int check_stage(const struct msd_config *c, int stage, const double *sigma, int N) {
    if (stage < 0 || stage >= c->n_stages)
        return msd_set_error("stage %d: the model has stages 0..%d", stage, c->n_stages - 1);
    for (int n = 0; n < N; n++) {
        const int s = msd_config_stage_of(c, sigma[n]);
        if (s != stage)
            return msd_set_error("batch spans stages: sigma[%d] = %g is in stage %d, the batch's stage is %d "
                                 "(a batch must share one decoder)", n, sigma[n], s, stage);
    }
    return 0;
}

int msd_batch_stage(const struct msd_config *c, const double *sigma, int N) {
    const int s = msd_config_stage_of(c, sigma[0]);
    return check_stage(c, s, sigma, N) < 0 ? -1 : s;
}

// Upload f(sigma_n) for every n into the backend vector dst.
static void upload_vec(struct msd_model *m, struct msd_dbufs *d, float *dst, const double *sigma,
                       double (*f)(const struct msd_coefs *, double), double extra) {
    for (int n = 0; n < d->N; n++) {
        struct msd_coefs k;
        msd_precond_coefs(&m->cfg, sigma[n], &k);
        d->vec[n] = (float)f(&k, extra);
    }
    m->be->upload(dst, d->vec, d->N);
}

static double get_c_skip(const struct msd_coefs *k, double x) { (void)x; return k->c_skip; }
static double get_c_out(const struct msd_coefs *k, double x) { (void)x; return k->c_out; }
static double get_c_in(const struct msd_coefs *k, double x) { (void)x; return k->c_in; }
static double get_c_noise(const struct msd_coefs *k, double x) { (void)x; return k->c_noise; }
static double get_weight_times(const struct msd_coefs *k, double x) { return k->weight * x; }

// ---------------------------------------------------------------------------------------------------
// Denoiser

int msd_denoise_forward(struct msd_model *m, int stage, float *D, const float *x, const double *sigma,
                        const struct msd_forward_opts *opts) {
    const int N = msd_model_batch(m);
    struct msd_dbufs *d = dbufs(m, N);
    if (!d) return -1;
    const size_t M = image_floats(m);
    if (check_stage(&m->cfg, stage, sigma, N) < 0) return -1;
    upload_vec(m, d, d->c_skip, sigma, get_c_skip, 0);
    upload_vec(m, d, d->c_out, sigma, get_c_out, 0);
    upload_vec(m, d, d->c_in, sigma, get_c_in, 0);
    upload_vec(m, d, d->c_noise, sigma, get_c_noise, 0);
    m->be->scale_rows(d->x_in, x, d->c_in, N, M);
    msd_unet_forward(m, stage, d->F, d->x_in, d->c_noise, opts);
    m->be->combine_rows(D, d->c_skip, x, d->c_out, d->F, N, M);
    return 0;
}

int msd_batch_denoise(void *ctx, float *D, const float *x, double sigma) {
    struct msd_batch_denoiser *d = ctx;
    for (int i = 0; i < d->n; i++) d->sigmas[i] = sigma;
    const int stage = msd_config_stage_of(&d->m->cfg, sigma); // the whole batch is at this sigma
    const struct msd_forward_opts opts = {false, 0};
    return msd_denoise_forward(d->m, stage, D, x, d->sigmas, &opts);
}

void msd_denoise_backward(struct msd_model *m, int stage, float *dx, const float *dD,
                          const struct msd_forward_opts *opts) {
    struct msd_dbufs *d = m->dbufs;
    CHECK(d != NULL && d->N == msd_model_batch(m), "msd_denoise_backward without msd_denoise_forward");
    CHECK(stage >= 0 && stage < m->cfg.n_stages, "stage %d of %d", stage, m->cfg.n_stages);
    const int N = d->N;
    const size_t M = image_floats(m);
    // D = c_skip x + c_out F(x_in), x_in = c_in x
    m->be->scale_rows(d->dF, dD, d->c_out, N, M);
    msd_unet_backward(m, stage, dx ? d->dx_in : NULL, d->dF, d->x_in, opts);
    if (dx) m->be->combine_rows(dx, d->c_skip, dD, d->c_in, d->dx_in, N, M);
}

// ---------------------------------------------------------------------------------------------------
// Loss

double msd_loss(struct msd_model *m, int stage, const float *y, const float *n, const double *sigma,
                bool backward, float *dx, double *per_sample, const struct msd_forward_opts *opts) {
    const int N = msd_model_batch(m);
    struct msd_dbufs *d = dbufs(m, N);
    if (!d) return NAN;
    const size_t M = image_floats(m);
    // x = y + sigma n
    for (int i = 0; i < N; i++) d->vec[i] = 1.0f;
    m->be->upload(d->a, d->vec, N);
    for (int i = 0; i < N; i++) d->vec[i] = (float)sigma[i];
    m->be->upload(d->b, d->vec, N);
    m->be->combine_rows(d->x, d->a, y, d->b, n, N, M);
    if (msd_denoise_forward(m, stage, d->D, d->x, sigma, opts) < 0) return NAN;
    // loss = (1/N) sum_n w_n ||D_n - y_n||^2, the squared errors summed in double per sample
    m->be->sqerr_rows(d->sq, d->D, y, N, M);
    m->be->download(d->vec, d->sq, N);
    double loss = 0.0;
    for (int i = 0; i < N; i++) {
        struct msd_coefs k;
        msd_precond_coefs(&m->cfg, sigma[i], &k);
        double term = k.weight * d->vec[i];
        if (per_sample) per_sample[i] = term;
        loss += term;
    }
    loss /= N;
    if (!backward) return loss;
    // dL/dD = (2 w_n / N) (D - y)
    upload_vec(m, d, d->a, sigma, get_weight_times, 2.0 / N);
    upload_vec(m, d, d->b, sigma, get_weight_times, -2.0 / N);
    m->be->combine_rows(d->dD, d->a, d->D, d->b, y, N, M);
    msd_denoise_backward(m, stage, dx, d->dD, opts);
    return loss;
}
