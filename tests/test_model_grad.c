// test_model_grad.c: the whole network's gradient against finite differences.
//
// For a small multistage network with dropout on (fixed masks), every parameter tensor and the
// input get a directional derivative check: along a random direction v, the fourth-order central
// difference of the loss (accumulated in double from the float32 network output) must match the
// analytic g . v to 1e-3 relative. Parameters of the decoders that the batch's noise level does not
// route to must get exactly zero gradient. EDM and VP preconditioning; multistage and separate.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/core/backend.h"
#include "common/core/error.h"
#include "common/model/model.h"
#include "common/model/precond.h"
#include "common/core/rng.h"
#include "testutil.h"

static const struct msd_backend *be = &msd_backend_ref;

#define NET_FD_TOL 1e-3 // the whole network's bound on a directional derivative's relative error (directional)

struct net {
    struct msd_model m;
    int N;
    size_t M; // floats per image
    double sigma[2];
    int stage; // the stage of both sigmas, whose decoder runs
    float *x, *y, *D, *dD, *dx, *w, *g; // host copies (ref memory is host memory)
    struct msd_forward_opts o;
};

// L = (1/N) sum_n w_n ||D(x_n; sigma_n) - y_n||^2, accumulated in double on the host.
static double loss_of(struct net *t) {
    ck_assert_msg(msd_denoise_forward(&t->m, t->stage, t->D, t->x, t->sigma, &t->o) == 0, "%s", msd_last_error());
    double L = 0;
    for (int n = 0; n < t->N; n++) {
        struct msd_coefs k;
        msd_precond_coefs(&t->m.cfg, t->sigma[n], &k);
        double sq = 0;
        for (size_t i = 0; i < t->M; i++) {
            double d = (double)t->D[n * t->M + i] - t->y[n * t->M + i];
            sq += d * d;
        }
        L += k.weight * sq;
    }
    return L / t->N;
}

// Analytic gradients: dD = (2 w_n / N) (D - y), then back through the network.
static void backward(struct net *t) {
    loss_of(t);
    for (int n = 0; n < t->N; n++) {
        struct msd_coefs k;
        msd_precond_coefs(&t->m.cfg, t->sigma[n], &k);
        for (size_t i = 0; i < t->M; i++)
            t->dD[n * t->M + i] = (float)(2 * k.weight / t->N * ((double)t->D[n * t->M + i] - t->y[n * t->M + i]));
    }
    be->fill(t->m.grad, 0.0f, t->m.n_floats);
    msd_denoise_backward(&t->m, t->stage, t->dx, t->dD, &t->o);
}

// The derivative of L along v from a least-squares fit: with u_k = k / K (k = 1..K), the odd part
// d_k = L(u_k h) - L(-u_k h) = 2 (c1 u_k h + c3 (u_k h)^3 + c5 (u_k h)^5) + rounding is fitted for
// (c1, c3, c5) and c1 returned. Fitting K pairs instead of differencing two or three averages the
// rounding of the float32 network down by about sqrt(K), and the quintic term absorbs truncation.
#define FIT_PAIRS 16
static double fitted_slope(struct net *t, float *x, const float *x0, const float *v, size_t n, double h) {
    double A[3][3] = {{0}}, b[3] = {0};
    for (int k = 1; k <= FIT_PAIRS; k++) {
        const double u = (double)k / FIT_PAIRS;
        double L[2];
        for (int side = 0; side < 2; side++) {
            const double step = (side ? -u : u) * h;
            for (size_t i = 0; i < n; i++) x[i] = (float)(x0[i] + step * v[i]);
            L[side] = loss_of(t);
        }
        const double d = (L[0] - L[1]) / 2, basis[3] = {u, u * u * u, u * u * u * u * u};
        for (int r = 0; r < 3; r++) {
            b[r] += basis[r] * d;
            for (int c = 0; c < 3; c++) A[r][c] += basis[r] * basis[c];
        }
    }
    memcpy(x, x0, n * sizeof(float));
    // solve the 3x3 normal equations by Gaussian elimination (well conditioned for u in (0, 1])
    for (int p = 0; p < 3; p++)
        for (int r = p + 1; r < 3; r++) {
            const double f = A[r][p] / A[p][p];
            for (int c = p; c < 3; c++) A[r][c] -= f * A[p][c];
            b[r] -= f * b[p];
        }
    double c[3];
    for (int r = 2; r >= 0; r--) {
        c[r] = b[r];
        for (int k = r + 1; k < 3; k++) c[r] -= A[r][k] * c[k];
        c[r] /= A[r][r];
    }
    return c[0] / h;
}

// Directional check of tensor x (n floats, gradient g) along a random direction v scaled to the
// tensor's own magnitude, with the bound NET_FD_TOL sets: |fd - g.v| <= 1e-3 max(|fd|, |g.v|).
// The network runs in float32, so the loss carries rounding of ~1e-8 of its size (measured: a few
// 1e-6 on a loss of 240), and a difference quotient resolves a derivative only when the steps change
// the loss by much more than that. Two choices follow, both from quantities known beforehand:
// - The step h makes the first-order change h |g.v| about 5e-4 of the loss, within [0.01, 0.2] of
//   the tensor's scale; the fit over 16 step pairs (fitted_slope) then leaves ~1e-4 of rounding.
//   Tensors with little influence get long steps, over which the loss is nearly linear in them.
// - A random direction can be nearly orthogonal to the gradient; g.v is then a small difference of
//   large terms and the check would measure rounding. Such directions (|g.v| below half its
//   typical size |g||v|/sqrt(n)) are redrawn from the next seed.
static double directional(struct net *t, const char *what, float *x, const float *g, size_t n, uint64_t seed,
                          double L0) {
    double rms = 0, gg = 0;
    for (size_t i = 0; i < n; i++) rms += (double)x[i] * x[i], gg += (double)g[i] * g[i];
    rms = sqrt(rms / n);
    const double scale = fmax(rms, 0.05);
    float *x0 = malloc(n * sizeof(float)), *v = malloc(n * sizeof(float));
    memcpy(x0, x, n * sizeof(float));
    double an = 0;
    for (int draw = 0; draw < 20; draw++, seed += 1000003) {
        double vv = 0;
        an = 0;
        for (size_t i = 0; i < n; i++) {
            v[i] = (float)(scale * msd_rng_normal(seed, MSD_STREAM_TEST, i));
            an += (double)g[i] * v[i];
            vv += (double)v[i] * v[i];
        }
        if (fabs(an) >= 0.5 * sqrt(gg * vv / n)) break;
    }
    const double h = fmin(fmax(5e-4 * fabs(L0) / fmax(fabs(an), 1e-30), 1e-2), 0.2);
    const double fd = fitted_slope(t, x, x0, v, n, h);
    double err = fabs(fd - an) / fmax(fmax(fabs(fd), fabs(an)), 1e-30);
    free(x0), free(v);
    ck_assert_msg(err <= NET_FD_TOL, "%s (seed %llu): directional derivative fd %.9g, analytic %.9g, rel err %.3g "
                  "(step %.3g, loss %.6g)",
                  what, (unsigned long long)seed, fd, an, err, h, L0);
    return err;
}

// Weights at a working scale (EDM's 1e-5 starts would hide most of the network from the check):
// xavier bounds for weights, 1 + U(-0.2, 0.2) for norm scales, U(-0.1, 0.1) for biases.
static void working_weights(struct msd_model *m, uint64_t seed) {
    for (int k = 0; k < m->n_params; k++) {
        const struct msd_param *p = &m->params[k];
        for (size_t i = 0; i < p->numel; i++) {
            double u = 2.0 * msd_rng_uniform(seed, MSD_STREAM_INIT, p->offset + i) - 1.0;
            double v = p->init == MSD_INIT_XAVIER ? sqrt(6.0 / (p->fan_in + p->fan_out)) * u
                       : p->init == MSD_INIT_ONE  ? 1.0 + 0.2 * u
                                                  : 0.1 * u;
            m->w[p->offset + i] = (float)v;
        }
    }
}

static void check_network(enum msd_precond pc, bool separate, double sigma, uint64_t seed) {
    struct net t;
    memset(&t, 0, sizeof t);
    struct msd_config cfg;
    ck_assert(msd_config_preset(&cfg, "tiny-ms") == 0);
    cfg.dropout = 0.2f;
    cfg.precond = pc;
    cfg.separate = separate;
    ck_assert_msg(msd_model_create(&t.m, &cfg, be) == 0, "%s", msd_last_error());
    t.N = 2;
    t.M = (size_t)cfg.in_channels * cfg.img_resolution * cfg.img_resolution;
    ck_assert(msd_model_plan(&t.m, t.N, true) == 0);
    working_weights(&t.m, seed);
    t.sigma[0] = sigma;
    t.sigma[1] = sigma * 0.9;
    t.stage = msd_config_stage_of(&cfg, sigma);
    t.o = (struct msd_forward_opts){true, seed};
    const size_t nx = t.N * t.M;
    t.x = tbuf_new(nx), t.y = tbuf_new(nx), t.D = tbuf_new(nx), t.dD = tbuf_new(nx), t.dx = tbuf_new(nx);
    t.g = tbuf_new(t.m.n_floats);
    fill_uniform(t.y, nx, seed + 1, -1, 1);
    fill_normal(t.x, nx, seed + 2, (float)sigma);
    for (size_t i = 0; i < nx; i++) t.x[i] += t.y[i];
    backward(&t);
    memcpy(t.g, t.m.grad, t.m.n_floats * sizeof(float));
    const double L0 = loss_of(&t);
    const int stage = t.stage;
    char what[160];
    double worst = 0;
    snprintf(what, sizeof what, "%s%s stage %d input x", pc == MSD_PRECOND_VP ? "VP" : "EDM",
             separate ? " separate" : "", stage);
    float *gx = malloc(nx * sizeof(float));
    memcpy(gx, t.dx, nx * sizeof(float));
    worst = fmax(worst, directional(&t, what, t.x, gx, nx, seed + 3, L0));
    free(gx);
    int checked = 0, zero = 0;
    for (int k = 0; k < t.m.n_params; k++) {
        const struct msd_param *p = &t.m.params[k];
        const float *g = t.g + p->offset;
        if (p->owner != MSD_OWNER_SHARED && p->owner != stage) {
            for (size_t i = 0; i < p->numel; i++)
                ck_assert_msg(g[i] == 0.0f, "%s: gradient %g in a stage that sigma %g does not use", p->name,
                              g[i], sigma);
            zero++;
            continue;
        }
        snprintf(what, sizeof what, "%s%s stage %d %s", pc == MSD_PRECOND_VP ? "VP" : "EDM",
                 separate ? " separate" : "", stage, p->name);
        worst = fmax(worst, directional(&t, what, t.m.w + p->offset, g, p->numel, seed + 10 + k, L0));
        checked++;
    }
    printf("network fd %s%s stage %d: %d tensors + input checked, worst rel err %.2e; %d inactive "
           "tensors exactly zero\n",
           pc == MSD_PRECOND_VP ? "VP" : "EDM", separate ? " separate" : "", stage, checked, worst, zero);
    ck_assert(zero > 0);
    tbuf_free(t.x), tbuf_free(t.y), tbuf_free(t.D), tbuf_free(t.dD), tbuf_free(t.dx), tbuf_free(t.g);
    msd_model_free(&t.m);
}

// Each run covers one decoder; together they cover both decoders, both preconditionings and both
// ways of sharing.
START_TEST(edm_multistage_low_noise) { check_network(MSD_PRECOND_EDM, false, 0.4, 1000); }
END_TEST
START_TEST(vp_multistage_high_noise) { check_network(MSD_PRECOND_VP, false, 4.0, 4000); }
END_TEST
START_TEST(edm_separate_high_noise) { check_network(MSD_PRECOND_EDM, true, 4.0, 5000); }
END_TEST

int main(void) {
    const TTest *tests[] = {edm_multistage_low_noise, vp_multistage_high_noise, edm_separate_high_noise};
    return run_tests("network gradients", 300, tests, TEST_COUNT(tests));
}
