// sampler.c: noise-level schedules and the four samplers (sampler.h says what each computes).
//
// Notation, in EDM's variables (alpha = 1): x the state at noise level sigma, D = D(x; sigma) the
// denoiser, eps = (x - D) / sigma the noise prediction, lambda = -log(sigma) the half log-SNR,
// h = lambda_next - lambda = log(sigma / sigma_next) > 0 the step in lambda. Every coefficient is
// a per-step scalar shared by the whole batch, computed on the host in double; the vector updates
// are backend axpby/copy calls, so the same code runs on any backend.
#include "sampler.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/core/error.h"
#include "precond.h"
#include "common/core/rng.h"
#include "common/core/util.h"

static const char *kind_name(enum msd_sampler_kind k) {
    switch (k) {
    case MSD_SAMPLER_EULER: return "euler";
    case MSD_SAMPLER_HEUN: return "heun";
    case MSD_SAMPLER_DPMPP_2M: return "dpm++2m";
    case MSD_SAMPLER_DPM_SOLVER_3: return "dpm-solver-3";
    }
    return "unknown";
}

// ===================================================================================================
// Schedules

struct msd_schedule_opts msd_schedule_opts_default(void) {
    return (struct msd_schedule_opts){
        .sigma_min = 0.002, .sigma_max = 80.0, .rho = 7.0, .vp_eps_s = 1e-3, .vp_t_end = 1e-4};
}

int msd_schedule(double *sigmas, int steps, enum msd_schedule_kind kind, const struct msd_schedule_opts *o) {
    const struct msd_schedule_opts def = msd_schedule_opts_default();
    if (!o) o = &def;
    if (steps < 1) return msd_set_error("schedule: steps is %d, expected at least 1", steps);
    switch (kind) {
    case MSD_SCHEDULE_EDM: {
        if (!(o->sigma_min > 0 && o->sigma_max > o->sigma_min && isfinite(o->sigma_max)))
            return msd_set_error("schedule edm: sigma_min %g, sigma_max %g; expected 0 < sigma_min < "
                                 "sigma_max < inf", o->sigma_min, o->sigma_max);
        if (!(o->rho > 0 && isfinite(o->rho)))
            return msd_set_error("schedule edm: rho is %g, expected a positive number", o->rho);
        // EDM eq. 5: uniform steps in sigma^(1/rho), then sigma_N = 0.
        const double a = pow(o->sigma_max, 1.0 / o->rho), b = pow(o->sigma_min, 1.0 / o->rho);
        for (int i = 0; i < steps; i++) {
            const double frac = steps > 1 ? (double)i / (steps - 1) : 0.0;
            sigmas[i] = pow(a + frac * (b - a), o->rho);
        }
        sigmas[steps] = 0.0;
        // Each option may be in range and the schedule still break in double precision: a tiny rho
        // makes sigma_max^(1/rho) overflow, a wide range makes b vanish beside a (a + (b - a) = 0), a
        // huge rho makes a and b equal. The samplers need strictly decreasing positive values, so a
        // broken schedule is refused here, with the options that made it.
        for (int i = 0; i < steps; i++) {
            if (isfinite(sigmas[i]) && sigmas[i] > 0 && (i == 0 || sigmas[i] < sigmas[i - 1])) continue;
            char after[48] = "";
            if (i > 0) snprintf(after, sizeof after, " after sigmas[%d] = %g", i - 1, sigmas[i - 1]);
            return msd_set_error("schedule edm: sigma_min %g, sigma_max %g and rho %g give sigmas[%d] = %g%s in %d "
                                 "steps; expected strictly decreasing positive values (sigma_max^(1/rho) = %g and "
                                 "sigma_min^(1/rho) = %g must be finite, positive and apart in double precision)",
                                 o->sigma_min, o->sigma_max, o->rho, i, sigmas[i], after, steps, a, b);
        }
        return 0;
    }
    case MSD_SCHEDULE_VP_TIME:
        if (!(o->vp_eps_s > 0 && o->vp_eps_s < 1))
            return msd_set_error("schedule vp-time: vp_eps_s is %g, expected 0 < eps_s < 1", o->vp_eps_s);
        // EDM generate.py, discretization 'vp': t_i uniform from 1 to eps_s, sigma_i = sigma(t_i), then 0.
        for (int i = 0; i < steps; i++) {
            const double frac = steps > 1 ? (double)i / (steps - 1) : 0.0;
            sigmas[i] = msd_vp_sigma(1.0 + frac * (o->vp_eps_s - 1.0));
        }
        sigmas[steps] = 0.0;
        return 0;
    case MSD_SCHEDULE_VP_LOGSNR: {
        if (!(o->vp_t_end > 0 && o->vp_t_end < 1))
            return msd_set_error("schedule vp-logsnr: vp_t_end is %g, expected 0 < t_end < 1", o->vp_t_end);
        // DPM-Solver get_time_steps('logSNR'): lambda uniform from lambda(t = 1) to lambda(t_end),
        // steps + 1 points, the last one the end sigma (no final 0). The endpoints are set exactly.
        const double s0 = msd_vp_sigma(1.0), s1 = msd_vp_sigma(o->vp_t_end);
        const double l0 = -log(s0), l1 = -log(s1);
        for (int i = 1; i < steps; i++) sigmas[i] = exp(-(l0 + (double)i / steps * (l1 - l0)));
        sigmas[0] = s0;
        sigmas[steps] = s1;
        return 0;
    }
    }
    return msd_set_error("schedule: unknown kind %d", (int)kind);
}

int msd_dpm3_steps(int nfe) {
    if (nfe < 1) return msd_set_error("dpm-solver-3: the evaluation budget is %d, expected at least 1", nfe);
    return nfe / 3 + 1;
}

// The order of step i (of K = nfe / 3 + 1) in DPM-Solver's 'fast' singlestep order-3 plan.
static int dpm3_order(int nfe, int i) {
    const int K = nfe / 3 + 1, rem = nfe % 3;
    if (rem == 0) return i < K - 2 ? 3 : (i == K - 2 ? 2 : 1); // [3, ..., 3, 2, 1]
    if (rem == 1) return i < K - 1 ? 3 : 1;                    // [3, ..., 3, 1]
    return i < K - 1 ? 3 : 2;                                  // [3, ..., 3, 2]
}

int msd_sampler_evals(enum msd_sampler_kind kind, int steps) {
    if (steps < 1) return msd_set_error("%s: steps is %d, expected at least 1", kind_name(kind), steps);
    switch (kind) {
    case MSD_SAMPLER_EULER:
    case MSD_SAMPLER_DPMPP_2M:
    case MSD_SAMPLER_DPM_SOLVER_3: return steps;
    case MSD_SAMPLER_HEUN: return 2 * steps - 1;
    }
    return msd_set_error("sampler: unknown kind %d", (int)kind);
}

// ===================================================================================================
// What every sampler shares: the backend, the batch shape, scratch tensors and the denoiser with
// its evaluation count.

struct run {
    const struct msd_backend *be;
    int N;
    size_t M, n;      // n = N M floats per tensor
    float *tmp[4];    // scratch: (N, M) each, backend memory
    msd_denoise_fn f;
    void *ctx;
    const struct msd_sample_opts *o;
    int done, total;  // evaluations made, and planned
};

// D <- D(x; sigma) through the callback, counted and reported. 0 or -1 with the message extended by
// where it happened.
static int denoise(struct run *r, float *D, const float *x, double sigma) {
    msd_clear_error(); // so that a callback failing without a message is not blamed on an older one
    if (r->f(r->ctx, D, x, sigma) != 0) {
        return msd_set_error("%s sampler: denoiser evaluation %d of %d at sigma %.6g failed: %s",
                             kind_name(r->o->kind), r->done + 1, r->total, sigma,
                             msd_last_error()[0] ? msd_last_error() : "the callback returned -1");
    }
    r->done++;
    if (r->o->progress) r->o->progress(r->o->progress_ctx, r->done, r->total);
    return 0;
}

// eps <- D(x; sigma) then eps = (x - D) / sigma, in place in eps.
static int noise_pred(struct run *r, float *eps, const float *x, double sigma) {
    if (denoise(r, eps, x, sigma)) return -1;
    r->be->axpby(eps, (float)(1.0 / sigma), x, (float)(-1.0 / sigma), r->n);
    return 0;
}

// ===================================================================================================
// Euler (DDIM): one Euler step of the probability-flow ODE dx/dsigma = (x - D) / sigma:
//   x_{i+1} = x_i + (sigma_{i+1} - sigma_i) (x_i - D(x_i; sigma_i)) / sigma_i
//           = (sigma_{i+1} / sigma_i) x_i + (1 - sigma_{i+1} / sigma_i) D,
// which is DDIM's update (Song et al. 2021, eq. 13; EDM section 3) and DPM-Solver-1.
static int sample_euler(struct run *r, float *x, const double *sigmas, int steps) {
    float *D = r->tmp[0];
    for (int i = 0; i < steps; i++) {
        const double ratio = sigmas[i + 1] / sigmas[i];
        if (denoise(r, D, x, sigmas[i])) return -1;
        r->be->axpby(x, (float)(1.0 - ratio), D, (float)ratio, r->n);
    }
    return 0;
}

// ===================================================================================================
// Heun, EDM Algorithm 2 (generate.py edm_sampler), stochastic when S_churn > 0:
//   gamma_i = min(S_churn / steps, sqrt(2) - 1) if S_min <= sigma_i <= S_max, else 0
//   sigma_hat = sigma_i (1 + gamma_i);  x_hat = x_i + sqrt(sigma_hat^2 - sigma_i^2) S_noise n_i,  n_i ~ N(0, I)
//   d = (x_hat - D(x_hat; sigma_hat)) / sigma_hat;   x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) d   (Euler)
//   if sigma_{i+1} > 0:  d' = (x_{i+1} - D(x_{i+1}; sigma_{i+1})) / sigma_{i+1}
//                        x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) (d + d') / 2          (trapezoid)
// The noise of sample n is drawn from its own seed: (seeds[n], MSD_STREAM_CHURN + i, j).
static int sample_heun(struct run *r, float *x, const double *sigmas, int steps) {
    const struct msd_backend *be = r->be;
    const struct msd_sample_opts *o = r->o;
    float *D = r->tmp[0], *d = r->tmp[1], *xn = r->tmp[2];
    for (int i = 0; i < steps; i++) {
        const double s = sigmas[i], s_next = sigmas[i + 1];
        const double gamma = (o->S_churn > 0 && o->S_min <= s && s <= o->S_max)
                                 ? fmin(o->S_churn / steps, sqrt(2.0) - 1.0) : 0.0;
        const double s_hat = s + gamma * s;
        if (gamma > 0) { // x_hat = x + sqrt(s_hat^2 - s^2) S_noise n
            float *noise = D; // D is free until the first evaluation
            for (int b = 0; b < r->N; b++)
                be->fill_normal(noise + (size_t)b * r->M, o->seeds[b], MSD_STREAM_CHURN + (uint64_t)i, r->M);
            be->axpby(x, (float)(sqrt(s_hat * s_hat - s * s) * o->S_noise), noise, 1.0f, r->n);
        }
        if (noise_pred(r, d, x, s_hat)) return -1; // d = (x_hat - D(x_hat; s_hat)) / s_hat
        const double dt = s_next - s_hat;
        if (s_next == 0) { // the last step to sigma = 0 stays Euler's (d' would divide by 0)
            be->axpby(x, (float)dt, d, 1.0f, r->n);
            continue;
        }
        be->copy(xn, x, r->n);
        be->axpby(xn, (float)dt, d, 1.0f, r->n);   // x_{i+1} = x_hat + dt d
        float *d_next = D; // d' = (x_{i+1} - D(x_{i+1}; s_next)) / s_next, in D's buffer
        if (noise_pred(r, d_next, xn, s_next)) return -1;
        be->axpby(x, (float)(0.5 * dt), d, 1.0f, r->n);
        be->axpby(x, (float)(0.5 * dt), d_next, 1.0f, r->n); // x_{i+1} = x_hat + dt (d + d') / 2
    }
    return 0;
}

// ===================================================================================================
// DPM-Solver++(2M), data prediction, multistep (Lu et al. 2022b, Algorithm 2; k-diffusion
// sample_dpmpp_2m). With h = lambda_{i+1} - lambda_i and D_i = D(x_i; sigma_i):
//   first step, and the step to sigma = 0:  x_{i+1} = (sigma_{i+1}/sigma_i) x_i - expm1(-h) D_i
//   otherwise, r = h_{i-1} / h:  D' = (1 + 1/(2r)) D_i - (1/(2r)) D_{i-1}
//                                x_{i+1} = (sigma_{i+1}/sigma_i) x_i - expm1(-h) D'
// (-expm1(-h) = 1 - sigma_{i+1}/sigma_i, so the first-order step is Euler's.)
static int sample_dpmpp_2m(struct run *r, float *x, const double *sigmas, int steps) {
    const struct msd_backend *be = r->be;
    float *D = r->tmp[0], *D_old = r->tmp[1];
    for (int i = 0; i < steps; i++) {
        if (denoise(r, D, x, sigmas[i])) return -1;
        if (sigmas[i + 1] == 0) { // h = inf: x_{i+1} = 0 x_i + 1 D_i
            be->copy(x, D, r->n);
        } else {
            const double ratio = sigmas[i + 1] / sigmas[i];
            const double h = log(sigmas[i] / sigmas[i + 1]), c = -expm1(-h);
            if (i == 0) {
                be->axpby(x, (float)c, D, (float)ratio, r->n);
            } else {
                const double h_last = log(sigmas[i - 1] / sigmas[i]), rr = h_last / h;
                be->axpby(x, (float)(c * (1.0 + 1.0 / (2.0 * rr))), D, (float)ratio, r->n);
                be->axpby(x, (float)(-c / (2.0 * rr)), D_old, 1.0f, r->n);
            }
        }
        float *t = D_old; D_old = D; D = t; // D_i becomes D_{i-1}
    }
    return 0;
}

// ===================================================================================================
// DPM-Solver, noise prediction, singlestep (Lu et al. 2022, Algorithms 1 (order 2) and 2 (order 3),
// dpm_solver.py's singlestep_dpm_solver_*_update with solver_type 'dpmsolver'), written for alpha = 1.
// A step from s = sigmas[i] to t = sigmas[i + 1] with h = lambda_t - lambda_s and intermediate
// levels sigma_{s_k} = exp(-(lambda_s + r_k h)); eps_s = eps(x_s, s):
//  order 1 (DDIM):  x_t = x_s - sigma_t expm1(h) eps_s
//  order 2 (r1 = 1/2):
//    u1 = x_s - sigma_{s1} expm1(r1 h) eps_s
//    x_t = x_s - sigma_t expm1(h) eps_s - (sigma_t / (2 r1)) expm1(h) (eps(u1, s1) - eps_s)
//  order 3 (r1 = 1/3, r2 = 2/3):
//    u1 = x_s - sigma_{s1} expm1(r1 h) eps_s;                        D1 = eps(u1, s1) - eps_s
//    u2 = x_s - sigma_{s2} expm1(r2 h) eps_s - (sigma_{s2} r2 / r1) (expm1(r2 h) / (r2 h) - 1) D1
//                                                                    D2 = eps(u2, s2) - eps_s
//    x_t = x_s - sigma_t expm1(h) eps_s - (sigma_t / r2) (expm1(h) / h - 1) D2
// Step i has the order dpm3_order(nfe, i); the K steps use exactly nfe evaluations.
static int sample_dpm_solver_3(struct run *r, float *x, const double *sigmas, int K) {
    const struct msd_backend *be = r->be;
    const size_t n = r->n;
    float *eps_s = r->tmp[0], *u = r->tmp[1], *D1 = r->tmp[2], *D2 = r->tmp[3];
    for (int i = 0; i < K; i++) {
        const int order = dpm3_order(r->o->steps, i);
        const double s = sigmas[i], t = sigmas[i + 1], h = log(s / t);
        const double phi_1 = expm1(h); // e^h - 1
        if (noise_pred(r, eps_s, x, s)) return -1;
        if (order == 1) {
            be->axpby(x, (float)(-t * phi_1), eps_s, 1.0f, n);
            continue;
        }
        if (order == 2) {
            const double r1 = 0.5, s1 = s * exp(-r1 * h);
            be->copy(u, x, n);
            be->axpby(u, (float)(-s1 * expm1(r1 * h)), eps_s, 1.0f, n);   // u1
            if (noise_pred(r, D1, u, s1)) return -1;
            be->axpby(D1, -1.0f, eps_s, 1.0f, n);                          // eps(u1, s1) - eps_s
            be->axpby(x, (float)(-t * phi_1), eps_s, 1.0f, n);
            be->axpby(x, (float)(-t / (2.0 * r1) * phi_1), D1, 1.0f, n);
            continue;
        }
        const double r1 = 1.0 / 3.0, r2 = 2.0 / 3.0;
        const double s1 = s * exp(-r1 * h), s2 = s * exp(-r2 * h);
        const double phi_12 = expm1(r2 * h), phi_22 = phi_12 / (r2 * h) - 1.0, phi_2 = phi_1 / h - 1.0;
        be->copy(u, x, n);
        be->axpby(u, (float)(-s1 * expm1(r1 * h)), eps_s, 1.0f, n);       // u1
        if (noise_pred(r, D1, u, s1)) return -1;
        be->axpby(D1, -1.0f, eps_s, 1.0f, n);                              // D1
        be->copy(u, x, n);
        be->axpby(u, (float)(-s2 * phi_12), eps_s, 1.0f, n);
        be->axpby(u, (float)(-s2 * r2 / r1 * phi_22), D1, 1.0f, n);        // u2
        if (noise_pred(r, D2, u, s2)) return -1;
        be->axpby(D2, -1.0f, eps_s, 1.0f, n);                              // D2
        be->axpby(x, (float)(-t * phi_1), eps_s, 1.0f, n);
        be->axpby(x, (float)(-t / r2 * phi_2), D2, 1.0f, n);              // x_t
    }
    return 0;
}

// ===================================================================================================
// The entry point: validate, allocate scratch, run the chosen sampler, release.

struct msd_sample_opts msd_sample_opts_default(enum msd_sampler_kind kind, int steps) {
    return (struct msd_sample_opts){.kind = kind, .steps = steps, .S_churn = 0.0, .S_min = 0.0,
                                    .S_max = INFINITY, .S_noise = 1.0};
}

// The schedule must be strictly decreasing and positive but for a final 0. 0 or -1 with a message.
static int check_schedule(const double *sigmas, int n_sigmas, bool final_zero_ok, const char *who) {
    for (int i = 0; i < n_sigmas; i++) {
        const bool last = i == n_sigmas - 1;
        if (!isfinite(sigmas[i]) || sigmas[i] < 0 || (sigmas[i] == 0 && !(last && final_zero_ok)))
            return msd_set_error("%s: sigmas[%d] is %g, expected a finite positive value%s", who, i, sigmas[i],
                                 last && final_zero_ok ? " or 0" : "");
        if (i > 0 && !(sigmas[i] < sigmas[i - 1]))
            return msd_set_error("%s: sigmas[%d] = %g does not decrease from sigmas[%d] = %g", who, i, sigmas[i],
                                 i - 1, sigmas[i - 1]);
    }
    return 0;
}

int msd_sample(const struct msd_backend *be, int N, size_t M, float *x, const double *sigmas, int n_sigmas,
               const struct msd_sample_opts *o, msd_denoise_fn f, void *ctx) {
    if (!be || !x || !sigmas || !o || !f)
        return msd_set_error("msd_sample: backend, x, sigmas, options and denoiser must not be NULL");
    const char *who = kind_name(o->kind);
    if (strcmp(who, "unknown") == 0) return msd_set_error("msd_sample: unknown sampler kind %d", (int)o->kind);
    if (N < 1 || M < 1) return msd_set_error("%s: batch shape (%d, %zu), expected N >= 1 and M >= 1", who, N, M);
    if (o->steps < 1) return msd_set_error("%s: steps is %d, expected at least 1", who, o->steps);
    const bool dpm3 = o->kind == MSD_SAMPLER_DPM_SOLVER_3;
    const int intervals = dpm3 ? msd_dpm3_steps(o->steps) : o->steps;
    if (n_sigmas != intervals + 1)
        return msd_set_error("%s: the schedule has %d values; steps %d needs %d%s", who, n_sigmas, o->steps,
                             intervals + 1, dpm3 ? " (msd_dpm3_steps(steps) intervals: steps is the NFE budget)" : "");
    if (check_schedule(sigmas, n_sigmas, !dpm3, who)) return -1;
    if (o->kind == MSD_SAMPLER_HEUN) {
        if (!(o->S_churn >= 0 && isfinite(o->S_churn) && o->S_noise >= 0 && isfinite(o->S_noise)))
            return msd_set_error("heun: S_churn %g and S_noise %g must be finite and >= 0", o->S_churn, o->S_noise);
        if (o->S_churn > 0 && !o->seeds)
            return msd_set_error("heun: S_churn is %g but no per-sample seeds were given for the churn noise",
                                 o->S_churn);
    }

    struct run r = {.be = be, .N = N, .M = M, .n = (size_t)N * M, .f = f, .ctx = ctx, .o = o};
    r.total = msd_sampler_evals(o->kind, o->steps);
    if (o->kind == MSD_SAMPLER_HEUN && sigmas[n_sigmas - 1] > 0) r.total++; // the last step is corrected too
    const int n_tmp = o->kind == MSD_SAMPLER_EULER ? 1 : o->kind == MSD_SAMPLER_DPMPP_2M ? 2 : dpm3 ? 4 : 3;
    for (int k = 0; k < n_tmp; k++)
        if (!(r.tmp[k] = be->alloc(r.n))) {
            msd_set_error("%s: cannot allocate %.1f MB of scratch on backend %s for a batch of %d x %zu", who,
                          n_tmp * r.n * 4.0 / 1e6, be->name, N, M);
            for (int j = 0; j < k; j++) be->release(r.tmp[j]);
            return -1;
        }

    int rc = -1;
    const int steps = n_sigmas - 1;
    switch (o->kind) {
    case MSD_SAMPLER_EULER: rc = sample_euler(&r, x, sigmas, steps); break;
    case MSD_SAMPLER_HEUN: rc = sample_heun(&r, x, sigmas, steps); break;
    case MSD_SAMPLER_DPMPP_2M: rc = sample_dpmpp_2m(&r, x, sigmas, steps); break;
    case MSD_SAMPLER_DPM_SOLVER_3: rc = sample_dpm_solver_3(&r, x, sigmas, steps); break;
    }
    for (int k = 0; k < n_tmp; k++) be->release(r.tmp[k]);
    if (rc) return -1;
    CHECK(r.done == r.total, "%s made %d evaluations, planned %d", who, r.done, r.total);
    return r.done;
}

// ===================================================================================================
// The initial latent

void msd_sample_latent(const struct msd_backend *be, float *x, int N, size_t M, const uint64_t *seeds,
                       double sigma_max) {
    // drawn where x lives; the float product equals the double product rounded once whenever
    // sigma_max is a float (80, the default, is)
    for (int n = 0; n < N; n++) be->fill_normal(x + (size_t)n * M, seeds[n], MSD_STREAM_LATENT, M);
    be->scale(x, x, (float)sigma_max, (size_t)N * M);
}
