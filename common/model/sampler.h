// sampler.h: noise-level schedules and the ODE/SDE samplers (euler, heun, dpm++2m, dpm-solver-3).
//
// Everything is written in EDM's variables: x is the EDM state (x = y + sigma n for data y), the
// denoiser is D(x; sigma), and the noise prediction is eps = (x - D) / sigma. A VP state is
// x_vp = x / sqrt(1 + sigma^2) (alpha = 1 / sqrt(1 + sigma^2), sigma_vp = alpha sigma), so VP
// solvers (DPM-Solver, written for alpha_t, sigma_t) become these formulas with alpha = 1 and
// lambda = log(alpha / sigma_vp) = -log(sigma). The probability-flow ODE is dx/dsigma = (x - D) / sigma.
//
// A sampler is one function, so that it reads top to bottom as its algorithm: it takes a denoiser
// callback and a precomputed schedule sigmas[0..n_sigmas). Vector work goes through the backend table
// only (x never visits the host), and each denoiser call covers the whole batch at one noise level, so
// a multistage model routes the batch to one decoder (msd_batch_denoise, precond.h, runs the decoder
// of that sigma's stage; a Heun step whose two evaluations straddle a boundary uses two decoders).
// What this file does not hold: the model (the callback wraps it), the stage boundaries, image output.
#ifndef MSD_SAMPLER_H
#define MSD_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#include "common/core/backend.h"
#include "common/core/rng.h"

// RNG streams (rng.h): the initial latent of sample n draws (seeds[n], MSD_STREAM_LATENT, j), j = pixel
// index; the churn noise of step i draws (seeds[n], MSD_STREAM_CHURN + i, j).

enum msd_sampler_kind { MSD_SAMPLER_EULER, MSD_SAMPLER_HEUN, MSD_SAMPLER_DPMPP_2M, MSD_SAMPLER_DPM_SOLVER_3 };
enum msd_schedule_kind { MSD_SCHEDULE_EDM, MSD_SCHEDULE_VP_TIME, MSD_SCHEDULE_VP_LOGSNR };

// ---------------------------------------------------------------------------------------------------
// Schedules

struct msd_schedule_opts {
    double sigma_min, sigma_max, rho; // EDM: 0.002, 80, 7
    double vp_eps_s;                  // VP time-uniform: last time (EDM generate.py's epsilon_s), 1e-3
    double vp_t_end;                  // VP logSNR-uniform: last time (DPM-Solver's t_0), 1e-4
};
// EDM's defaults above.
struct msd_schedule_opts msd_schedule_opts_default(void);

// Fill sigmas[0..steps] (steps + 1 values, strictly decreasing). o NULL means the defaults.
//  EDM:   sigma_i = (smax^(1/rho) + i/(steps-1) (smin^(1/rho) - smax^(1/rho)))^rho, i < steps;
//         sigmas[steps] = 0 (EDM generate.py).
//  VP_TIME (EDM's 'vp' discretization): t_i = 1 + i/(steps-1) (eps_s - 1), sigma_i = msd_vp_sigma(t_i),
//         i < steps; sigmas[steps] = 0.
//  VP_LOGSNR (DPM-Solver's 'logSNR' skip type): lambda = -log(sigma) uniform over steps + 1 points
//         from lambda(msd_vp_sigma(1)) to lambda(msd_vp_sigma(vp_t_end)). The LAST VALUE IS THE END
//         SIGMA, NOT 0 (about 3.2e-3 for t_end = 1e-4): the samples come out at that noise level,
//         as DPM-Solver's do (it does not denoise to zero by default).
// With steps = 1 the EDM and VP_TIME schedules are {sigma at the start, 0}.
// Returns 0, or -1 with a message (steps < 1, options out of range, or EDM options that are each in
// range but give no strictly decreasing schedule in double precision, e.g. sigma_min 1e-300 with rho 7,
// whose last step rounds to 0).
int msd_schedule(double *sigmas, int steps, enum msd_schedule_kind kind, const struct msd_schedule_opts *o);

// ---------------------------------------------------------------------------------------------------
// Samplers

// The denoiser: D(x; sigma) for a whole batch at one noise level. D, x: (N, M) backend memory.
// Returns 0, or -1 with the error message already set (the sampler adds where it happened).
typedef int (*msd_denoise_fn)(void *ctx, float *D, const float *x, double sigma);

struct msd_sample_opts {
    enum msd_sampler_kind kind;
    // The number of steps, i.e. schedule intervals (n_sigmas = steps + 1) for euler, heun and dpm++2m.
    // For dpm-solver-3 it is the budget of denoiser evaluations (NFE, the paper's 20), and the caller
    // builds the schedule with msd_dpm3_steps(steps) intervals (logSNR-uniform, as the paper's
    // CIFAR-10 runs), which the order plan then fills exactly.
    int steps;
    // Heun's stochastic churn (EDM Algorithm 2): S_churn, S_min, S_max, S_noise; EDM's defaults
    // 0, 0, inf, 1 make it the deterministic ODE solver. Ignored by the other samplers.
    double S_churn, S_min, S_max, S_noise;
    // N per-sample seeds: the churn noise of sample n at step i is
    // msd_rng_normal(seeds[n], MSD_STREAM_CHURN + i, j), so a sample does not depend on its batch.
    // Needed only when S_churn > 0 (NULL otherwise is fine).
    const uint64_t *seeds;
    // Called after every denoiser evaluation (NULL: none).
    void (*progress)(void *ctx, int evals_done, int evals_total);
    void *progress_ctx;
};
// The defaults above for `kind` and `steps` (no churn, no seeds, no progress).
struct msd_sample_opts msd_sample_opts_default(enum msd_sampler_kind kind, int steps);

// Run the sampler. x: (N, M) backend memory; in: the initial latent at sigmas[0] (see
// msd_sample_latent), out: the samples at sigmas[n_sigmas - 1] (0 for EDM/VP_TIME schedules). sigmas:
// host, strictly decreasing and positive except that the last may be 0 (not for dpm-solver-3, whose
// log-SNR steps need a positive end). Allocates its scratch (at most 4 N M floats) with be->alloc
// and releases it. Returns the number of denoiser evaluations made, or -1 with a message (bad
// arguments, a failed allocation, a failed denoiser call; x is then partly advanced).
int msd_sample(const struct msd_backend *be, int N, size_t M, float *x, const double *sigmas, int n_sigmas,
               const struct msd_sample_opts *o, msd_denoise_fn f, void *ctx);

// The initial latent as EDM draws it: x[n, j] = sigma_max * msd_rng_normal(seeds[n], MSD_STREAM_LATENT, j),
// i.e. N(0, sigma_max^2 I), uploaded row by row into backend memory x: (N, M). (The exact marginal at
// sigma_max is the data convolved with N(0, sigma_max^2); the difference is O(data / sigma_max), the
// approximation EDM and DPM-Solver make.)
void msd_sample_latent(const struct msd_backend *be, float *x, int N, size_t M, const uint64_t *seeds,
                       double sigma_max);

// Denoiser evaluations of a sampler for `steps` as msd_sample_opts.steps means it: euler and dpm++2m
// make steps; heun 2 steps - 1 for a schedule ending at 0 (the last step is Euler's; with a positive
// end sigma it corrects that step too and makes 2 steps); dpm-solver-3 makes exactly steps (the NFE).
// -1 with a message for steps < 1 or an unknown kind.
int msd_sampler_evals(enum msd_sampler_kind kind, int steps);

// DPM-Solver's 'fast' singlestep order-3 plan for an NFE budget: K = nfe / 3 + 1 steps with orders
// [3, ..., 3, 2, 1] (nfe % 3 == 0), [3, ..., 3, 1] (== 1) or [3, ..., 3, 2] (== 2). Returns K, the
// number of schedule intervals to build; -1 with a message for nfe < 1.
int msd_dpm3_steps(int nfe);

#endif
