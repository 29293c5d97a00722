// precond.h: preconditioning (EDM and VP), the denoiser D(x; sigma) built on the raw network, and
// the training losses, forward and backward.
//
//   D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma))
//   EDM: c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2),
//        c_in = 1 / sqrt(sigma^2 + sd^2), c_noise = ln(sigma) / 4                 (sd = sigma_data)
//   VP:  c_skip = 1, c_out = -sigma, c_in = 1 / sqrt(sigma^2 + 1), c_noise = (M - 1) t(sigma)
// Loss (both): (1/N) sum_n w(sigma_n) ||D(y_n + sigma_n n_n; sigma_n) - y_n||^2 with
//   EDM: w = (sigma^2 + sd^2) / (sigma sd)^2;   VP: w = 1 / sigma^2.
// The batch must share one stage: its decoder is the stage of its noise level (config.h).
// Per-sample scalars are computed on the host in double and uploaded as (N) vectors.
#ifndef MSD_PRECOND_H
#define MSD_PRECOND_H

#include <stdbool.h>

#include "model.h"

// EDM's VP schedule constants (VPPrecond): beta_d, beta_min, M, epsilon_t.
#define MSD_VP_BETA_D 19.9
#define MSD_VP_BETA_MIN 0.1
#define MSD_VP_M 1000
#define MSD_VP_EPS_T 1e-5

struct msd_coefs {
    double c_skip, c_out, c_in, c_noise, weight;
};
void msd_precond_coefs(const struct msd_config *c, double sigma, struct msd_coefs *k);
// VP: sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1), and its inverse.
double msd_vp_sigma(double t);
double msd_vp_sigma_inv(double sigma);

// The stage shared by sigma[0..N), or -1 with a message when the batch spans stages.
int msd_batch_stage(const struct msd_config *c, const double *sigma, int N);

// D: (N, C, R, R) <- x: (N, C, R, R), both backend memory; sigma: (N) host. The model must be planned
// for N. Keeps what msd_denoise_backward needs. -1 with a message when the batch spans stages.
int msd_denoise_forward(struct msd_model *m, float *D, const float *x, const double *sigma,
                        const struct msd_forward_opts *o);
// A sampler's denoiser (common/model/sampler.h's msd_denoise_fn) over a model: every image of the batch at
// one sigma, no dropout. ctx is a struct msd_batch_denoiser whose sigmas has room for n values.
struct msd_batch_denoiser {
    struct msd_model *m;
    double *sigmas; // (n) host scratch, all set to the evaluation's sigma
    int n;          // images in the batch (the model's planned batch)
};
int msd_batch_denoise(void *ctx, float *D, const float *x, double sigma);
// dD: (N, C, R, R) -> dx (written, or NULL) and parameter gradients (accumulated).
void msd_denoise_backward(struct msd_model *m, float *dx, const float *dD,
                          const struct msd_forward_opts *o);

// The loss of clean images y with noise n at levels sigma (all backend memory but sigma), summed over
// pixels and averaged over the batch. With backward, also accumulates the parameter gradients and
// writes dL/dx (the noisy input y + sigma n) into dx unless it is NULL. Returns the loss, or NAN with
// a message when the batch spans stages. per_sample (host, N, or NULL) receives each sample's term.
double msd_loss(struct msd_model *m, const float *y, const float *n, const double *sigma, bool backward,
                float *dx, double *per_sample, const struct msd_forward_opts *o);

// Free the denoiser's buffers (msd_model_free calls it).
void msd_denoiser_release(struct msd_model *m);

#endif
