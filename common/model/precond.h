// precond.h: preconditioning (EDM and VP), the denoiser D(x; sigma) built on the raw network, and
// the training losses, forward and backward.
//
//   D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma))
//   EDM: c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2),
//        c_in = 1 / sqrt(sigma^2 + sd^2), c_noise = ln(sigma) / 4                 (sd = sigma_data)
//   VP:  c_skip = 1, c_out = -sigma, c_in = 1 / sqrt(sigma^2 + 1), c_noise = (M - 1) t(sigma)
// Loss (both): (1/N) sum_n w(sigma_n) ||D(y_n + sigma_n n_n; sigma_n) - y_n||^2 with
//   EDM: w = (sigma^2 + sd^2) / (sigma sd)^2;   VP: w = 1 / sigma^2.
// A batch shares one stage, whose decoder runs: the caller decides it once (the training step picks it
// with the sigmas, a sampler's evaluation takes the stage of its sigma) and passes it to the forward
// pass, the backward pass and the loss, which check that every sigma of the batch lies in it.
// Per-sample scalars are computed on the host in double and uploaded as (N) vectors.
//
// What the forward pass keeps for the backward pass, in the model's denoiser buffers (m->dbufs): the
// per-sample c_skip, c_out and c_in of the batch's sigmas and the network's input c_in x; the network
// keeps its own activations in its arena (model.h). So msd_denoise_backward must follow the
// msd_denoise_forward of the same batch, with the same stage and opts.
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

// D: (N, C, R, R) <- x: (N, C, R, R), both backend memory; sigma: (N) host, all in stage `stage`. The
// model must be planned for N. Keeps what msd_denoise_backward needs. -1 with a message when the stage
// is not one of the model's or a sigma lies outside it.
int msd_denoise_forward(struct msd_model *m, int stage, float *D, const float *x, const double *sigma,
                        const struct msd_forward_opts *opts);
// A sampler's denoiser (sampler.h's msd_denoise_fn) over a model: every image of the batch at one
// sigma, run by the decoder of that sigma's stage (msd_config_stage_of), no dropout. ctx is a struct
// msd_batch_denoiser whose sigmas has room for n values.
struct msd_batch_denoiser {
    struct msd_model *m;
    double *sigmas; // (n) host scratch, all set to the evaluation's sigma
    int n;          // images in the batch (the model's planned batch)
};
int msd_batch_denoise(void *ctx, float *D, const float *x, double sigma);
// dD: (N, C, R, R) -> dx (written, or NULL) and parameter gradients (accumulated: the shared part and
// decoder `stage`). Follows msd_denoise_forward of the same batch, stage and opts.
void msd_denoise_backward(struct msd_model *m, int stage, float *dx, const float *dD,
                          const struct msd_forward_opts *opts);

// The loss of clean images y with noise n at levels sigma (all backend memory but sigma; every sigma in
// stage `stage`), summed over pixels and averaged over the batch. With backward, also accumulates the
// parameter gradients and writes dL/dx (the noisy input y + sigma n) into dx unless it is NULL.
// Returns the loss, or NAN with a message when a sigma lies outside the stage. per_sample (host, N, or
// NULL) receives each sample's term.
double msd_loss(struct msd_model *m, int stage, const float *y, const float *n, const double *sigma,
                bool backward, float *dx, double *per_sample, const struct msd_forward_opts *opts);

// Free the denoiser's buffers (msd_model_free calls it).
void msd_denoiser_release(struct msd_model *m);

#endif
