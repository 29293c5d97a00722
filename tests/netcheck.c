// netcheck.c: a backend against ref/ on whole computations (see netcheck.h): the network per stage,
// two training steps, a Heun run.
//
// tests/test_fast.c and tests/test_fast_gemm.c (and tests/test_cuda_*.c) hold every op to rigorous
// per-element bounds; these checks hold what they cannot: the graph's wiring, the per-sample scalars,
// the activation arena, the training step and the sampler, on a real network (`mini-ms`) and the
// cheap `tiny-ms`. Weights: EDM's initialisation, then the layers EDM starts at 1e-5 (conv1, proj,
// aux_conv) scaled up to their xavier range, and the biases and GroupNorm scales moved off 0 and 1,
// so that no part of the network hides behind a near-zero weight. Every check prints one line (max
// error, the bound) and asserts once per tensor.
#include "netcheck.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/io/data.h"
#include "common/core/error.h"
#include "common/model/model.h"
#include "common/model/precond.h"
#include "common/core/rng.h"
#include "common/model/sampler.h"
#include "common/model/train.h"
#include "common/core/util.h"
#include "testutil.h"
#include "tolerance.h"

static const struct msd_backend *const ref = &msd_backend_ref;

// ---------------------------------------------------------------------------------------------------
// Two models with the same weights

struct nets {
    struct msd_config cfg;
    const struct msd_backend *be; // the backend under test
    struct msd_model r, b;        // on ref and on be
    int N;                        // planned batch
    size_t M;                     // floats per image
};

// EDM's initialisation from `seed`, then the 1e-5 layers times 1e5 (their xavier range), biases
// U(-0.1, 0.1) and GroupNorm scales 1 + U(-0.2, 0.2), uploaded to both models. Planned for batch N,
// with gradients when grad.
static void nets_create(struct nets *t, const struct msd_backend *be, const char *preset, int N, bool grad,
                        float dropout, uint64_t seed) {
    ck_assert_msg(msd_config_preset(&t->cfg, preset) == 0, "%s", msd_last_error());
    t->cfg.dropout = dropout;
    t->be = be;
    ck_assert_msg(msd_model_create(&t->r, &t->cfg, ref) == 0, "%s", msd_last_error());
    ck_assert_msg(msd_model_create(&t->b, &t->cfg, be) == 0, "%s", msd_last_error());
    ck_assert(t->r.n_floats == t->b.n_floats);
    t->N = N;
    t->M = (size_t)t->cfg.in_channels * t->cfg.img_resolution * t->cfg.img_resolution;
    ck_assert_msg(msd_model_plan(&t->r, N, grad) == 0 && msd_model_plan(&t->b, N, grad) == 0, "%s",
                  msd_last_error());
    msd_model_init_weights(&t->r, seed);
    float *w = xmalloc(t->r.n_floats * sizeof(float));
    ref->download(w, t->r.w, t->r.n_floats);
    int scaled = 0;
    for (int k = 0; k < t->r.n_params; k++) {
        const struct msd_param *p = &t->r.params[k];
        scaled += p->init == MSD_INIT_XAVIER && p->init_scale < 1e-3f;
        for (size_t i = 0; i < p->numel; i++) {
            const double u = 2.0 * msd_rng_uniform(seed, MSD_STREAM_TEST + 7, p->offset + i) - 1.0;
            float *x = &w[p->offset + i];
            if (p->init == MSD_INIT_XAVIER && p->init_scale < 1e-3f) *x = (float)(*x / p->init_scale);
            else if (p->init == MSD_INIT_ZERO) *x = (float)(0.1 * u);
            else if (p->init == MSD_INIT_ONE) *x = (float)(1.0 + 0.2 * u);
        }
    }
    ck_assert_msg(scaled > 0, "%s: no layer starts at 1e-5 scale (conv1, proj, aux_conv)", preset);
    ref->upload(t->r.w, w, t->r.n_floats);
    be->upload(t->b.w, w, t->b.n_floats);
    free(w);
}

static void nets_free(struct nets *t) { msd_model_free(&t->r), msd_model_free(&t->b); }

// n floats of backend memory of `be`, copied to a new host buffer (the caller frees).
static float *host_copy(const struct msd_backend *be, const float *p, size_t n) {
    float *h = xmalloc((n ? n : 1) * sizeof(float));
    be->download(h, p, n);
    return h;
}

static size_t first_nonfinite(const float *x, size_t n) {
    size_t i = 0;
    while (i < n && isfinite(x[i])) i++;
    return i;
}

// ---------------------------------------------------------------------------------------------------
// The comparison: both tensors finite, max |got - want| <= tol * max |want|, got from the backend
// called `name`, want from ref. Returns the worst error as a fraction of max |want| (0 when both are
// zero everywhere); asserts once. *max_err and *scale receive the error and max |want| when not NULL.
static double net_compare(const char *name, const char *what, const float *got, const float *want, size_t n,
                          double tol, double *max_err, double *scale) {
    const size_t bg = first_nonfinite(got, n), bw = first_nonfinite(want, n);
    ck_assert_msg(bg == n && bw == n, "%s: not finite: %s [%zu] = %g, ref [%zu] = %g", what, name, bg,
                  bg < n ? got[bg] : 0.0, bw, bw < n ? want[bw] : 0.0);
    double err = 0, sc = 0;
    size_t worst = 0;
    for (size_t i = 0; i < n; i++) {
        const double e = fabs((double)got[i] - want[i]);
        sc = fmax(sc, fabs(want[i]));
        if (e > err) err = e, worst = i;
    }
    ck_assert_msg(net_within(err, sc, tol), "%s: max err %.3g at [%zu] (%s %.9g, ref %.9g) > %.0e x max |ref| %.4g",
                  what, err, worst, name, n ? got[worst] : 0.0, n ? want[worst] : 0.0, tol, sc);
    if (max_err) *max_err = err;
    if (scale) *scale = sc;
    return sc > 0 ? err / sc : 0.0;
}

static void print_line(const char *name, const char *what, size_t n, double err, double scale, double tol) {
    printf("%s-net %-46s n=%-8zu max|ref| %-9.4g max err %.2e = %.2e of max|ref| (bound %.0e)\n", name, what, n,
           scale, err, scale > 0 ? err / scale : 0.0, tol);
}

// Every parameter gradient of the two models (downloaded as gr, gb), tensor by tensor against
// NET_GRAD_TOL; a tensor that ref leaves at zero (an idle decoder) must be zero on the backend too
// (its bound is 0). Prints one line: the worst tensor. dg, when not NULL, receives per parameter the
// bound NET_GRAD_TOL max |g_ref| that was checked.
static void compare_grads(const char *what, const struct nets *t, const float *gb, const float *gr, double *dg) {
    double worst = -1, werr = 0, wscale = 0;
    int wk = 0, idle = 0;
    for (int k = 0; k < t->r.n_params; k++) {
        const struct msd_param *p = &t->r.params[k];
        char name[256];
        snprintf(name, sizeof name, "%s %s", what, p->name);
        double err, scale;
        const double q =
            net_compare(t->be->name, name, gb + p->offset, gr + p->offset, p->numel, NET_GRAD_TOL, &err, &scale);
        idle += scale == 0;
        if (dg) dg[k] = NET_GRAD_TOL * scale;
        if (q > worst) worst = q, werr = err, wscale = scale, wk = k;
    }
    printf("%s-net %-46s %d tensors (%d zero on both), worst %s: max err %.2e = %.2e of max|ref| %.4g "
           "(bound %.0e)\n",
           t->be->name, what, t->r.n_params, idle, t->r.params[wk].name, werr, worst, wscale, NET_GRAD_TOL);
}

// ---------------------------------------------------------------------------------------------------
// (a) The network: D(x; sigma) for every stage, then its backward from a fixed dD: dx and every
// parameter gradient. N samples at N noise levels inside the stage (the per-sample scalars differ).

void netcheck_network(const struct msd_backend *be, const char *preset, int N, uint64_t seed) {
    struct nets t;
    ck_assert(N >= 1 && N <= 16);
    nets_create(&t, be, preset, N, true, 0.0f, seed);
    const size_t n = (size_t)N * t.M;
    float *y = xmalloc(n * sizeof(float)), *x = xmalloc(n * sizeof(float)), *dD = xmalloc(n * sizeof(float));
    float *bufs[2][4]; // [ref, be]: x, D, dx, dD in backend memory
    const struct msd_backend *side[2] = {ref, be};
    struct msd_model *m[2] = {&t.r, &t.b};
    for (int b = 0; b < 2; b++)
        for (int j = 0; j < 4; j++) ck_assert_ptr_nonnull(bufs[b][j] = side[b]->alloc(n));
    const struct msd_forward_opts o = {false, 0};
    for (int s = 0; s < t.cfg.n_stages; s++) {
        // noise levels spread geometrically inside the stage (the first stage from 0.3, the last up
        // to 4 times its lower boundary): where c_out is large enough that F shows in D
        const double lo = s > 0 ? t.cfg.boundaries[s - 1] : 0.3;
        const double hi = s < t.cfg.n_stages - 1 ? t.cfg.boundaries[s] : fmax(5.0, 4 * lo);
        double sigma[16];
        char sig[128] = "";
        for (int i = 0; i < N; i++) {
            sigma[i] = lo * pow(hi / lo, (i + 1.0) / (N + 1.0));
            ck_assert_int_eq(msd_config_stage_of(&t.cfg, sigma[i]), s);
            snprintf(sig + strlen(sig), sizeof sig - strlen(sig), "%s%.3g", i ? "," : "", sigma[i]);
        }
        fill_uniform(y, n, seed + 10 + s, -1, 1);
        fill_normal(x, n, seed + 20 + s, 1.0f);
        for (size_t i = 0; i < n; i++) x[i] = (float)(y[i] + sigma[i / t.M] * x[i]);
        fill_normal(dD, n, seed + 30 + s, 1.0f);
        for (int b = 0; b < 2; b++) {
            side[b]->upload(bufs[b][0], x, n);
            ck_assert_msg(msd_denoise_forward(m[b], s, bufs[b][1], bufs[b][0], sigma, &o) == 0, "%s: %s",
                          side[b]->name, msd_last_error());
            side[b]->fill(m[b]->grad, 0.0f, m[b]->n_floats);
            side[b]->upload(bufs[b][3], dD, n);
            msd_denoise_backward(m[b], s, bufs[b][2], bufs[b][3], &o);
        }
        char what[128];
        double err, scale;
        for (int j = 1; j < 3; j++) {
            float *hr = host_copy(ref, bufs[0][j], n), *hb = host_copy(be, bufs[1][j], n);
            const double tol = j == 1 ? NET_D_TOL : NET_GRAD_TOL;
            snprintf(what, sizeof what, "%s stage %d (sigma %s) %s", preset, s, sig, j == 1 ? "D" : "dx");
            net_compare(be->name, what, hb, hr, n, tol, &err, &scale);
            print_line(be->name, what, n, err, scale, tol);
            free(hr), free(hb);
        }
        float *gr = host_copy(ref, t.r.grad, t.r.n_floats), *gb = host_copy(be, t.b.grad, t.b.n_floats);
        snprintf(what, sizeof what, "%s stage %d gradients", preset, s);
        compare_grads(what, &t, gb, gr, NULL);
        free(gr), free(gb);
    }
    for (int b = 0; b < 2; b++)
        for (int j = 0; j < 4; j++) side[b]->release(bufs[b][j]);
    free(y), free(x), free(dD);
    nets_free(&t);
}

// ---------------------------------------------------------------------------------------------------
// (c) Training steps: msd_train_step on both backends from the same weights, data and options;
// the loss, the gradients, and then the weights, Adam moments and EMA after the step within the
// bounds tests/tolerance.h derives from the gradient bound. The first step starts from zero moments;
// the second starts both backends from ref's state after the first (so that the only difference is
// again the step's own), and trains another stage, whose decoder takes its first Adam step while
// the shared part takes its second.

// A training state on the host: weights, Adam moments, EMA, and the gradients of the last step
// (NULL unless asked for).
struct host_state {
    float *w, *m, *v, *ema, *g;
};

static struct host_state state_download(const struct msd_model *m, const struct msd_train_state *st, bool grad) {
    const struct msd_backend *be = m->be;
    return (struct host_state){host_copy(be, m->w, m->n_floats), host_copy(be, st->adam_m, m->n_floats),
                               host_copy(be, st->adam_v, m->n_floats), host_copy(be, st->ema, m->n_floats),
                               grad ? host_copy(be, m->grad, m->n_floats) : NULL};
}

static void state_free(struct host_state *h) { free(h->w), free(h->m), free(h->v), free(h->ema), free(h->g); }

// Every element of got (from the backend called `name`) within bound[i] of want, one assert; prints
// one line. With sat > 0, the elements whose bound is at least sat (Adam's bound saturates at 2 lr
// where the gradient is within its budget of 0, and the sign of the step may differ) are counted,
// and the worst error/bound of the others printed as well: how tightly the rest is held.
static void check_bounded(const char *name, const char *what, const float *got, const float *want,
                          const double *bound, size_t n, double sat) {
    double worst = 0, worst_in = 0, max_err = 0, max_bound = 0;
    size_t bad = n, wi = 0, nsat = 0;
    for (size_t i = 0; i < n; i++) {
        const double e = fabs((double)got[i] - want[i]);
        if (!(e <= bound[i]) && bad == n) bad = i;
        if (bound[i] > 0 && e / bound[i] > worst) worst = e / bound[i], wi = i;
        if (sat > 0 && bound[i] >= sat) nsat++;
        else if (bound[i] > 0) worst_in = fmax(worst_in, e / bound[i]);
        max_err = fmax(max_err, e), max_bound = fmax(max_bound, bound[i]);
    }
    ck_assert_msg(bad == n, "%s: [%zu] %s %.9g, ref %.9g: error %.3g > bound %.3g", what, bad, name,
                  got[bad < n ? bad : 0], want[bad < n ? bad : 0], bad < n ? fabs((double)got[bad] - want[bad]) : 0.0,
                  bad < n ? bound[bad] : 0.0);
    printf("%s-net %-46s n=%-8zu max err %.2e (max bound %.2e), worst err/bound %.3f at [%zu]", name, what, n,
           max_err, max_bound, worst, wi);
    if (sat > 0) printf("; %zu at the saturated bound, worst of the rest %.3f", nsat, worst_in);
    printf("\n");
}

// After one step on both: compare loss, gradients, then weights, moments and EMA from the state
// both started from (pre: identical on both sides). sr, ir: ref's; sb, ib: the backend's.
static void check_step(const char *what, struct nets *t, const struct host_state *pre, const struct msd_train_opts *o,
                       const struct msd_train_state *sr, const struct msd_train_state *sb,
                       const struct msd_step_info *ir, const struct msd_step_info *ib, double images_before) {
    const char *bn = t->be->name;
    char name[160];
    ck_assert_int_eq(ir->stage, ib->stage);
    ck_assert_msg(ir->lr > 0 && ir->lr == ib->lr, "%s: lr %g and %g (must be the same and positive)", what, ir->lr,
                  ib->lr);
    ck_assert_msg(isfinite(ir->loss) && isfinite(ib->loss), "%s: loss %g, %g", what, ir->loss, ib->loss);
    const double lerr = fabs(ib->loss - ir->loss);
    snprintf(name, sizeof name, "%s loss (stage %d)", what, ir->stage);
    ck_assert_msg(lerr <= NET_D_TOL * fabs(ir->loss), "%s: %s %.9g, ref %.9g: error %.3g > %.0e x |ref|", name, bn,
                  ib->loss, ir->loss, lerr, NET_D_TOL);
    printf("%s-net %-46s %s %.9g ref %.9g: err %.2e of |ref| (bound %.0e)\n", bn, name, bn, ib->loss, ir->loss,
           lerr / fabs(ir->loss), NET_D_TOL);
    struct host_state hr = state_download(&t->r, sr, true), hb = state_download(&t->b, sb, true);
    const size_t nf = t->r.n_floats;
    double *dg = xmalloc(t->r.n_params * sizeof(double));
    snprintf(name, sizeof name, "%s gradients", what);
    compare_grads(name, t, hb.g, hr.g, dg);
    // the gradient norm: | ||g_b|| - ||g_r|| | <= ||g_b - g_r|| <= sqrt(sum_tensors numel dg^2), plus
    // the rounding of each sumsq (bound_double_sums, relative) and of the host's sum and sqrt
    double bn2 = 0;
    for (int k = 0; k < t->r.n_params; k++) bn2 += (double)t->r.params[k].numel * dg[k] * dg[k];
    const double bnorm = sqrt(bn2) + (2 * gamd((double)nf) + 4 * U) * ir->grad_norm;
    snprintf(name, sizeof name, "%s gradient norm", what);
    ck_assert_msg(fabs(ib->grad_norm - ir->grad_norm) <= bnorm, "%s: %s %.9g, ref %.9g: error %.3g > bound %.3g",
                  name, bn, ib->grad_norm, ir->grad_norm, fabs(ib->grad_norm - ir->grad_norm), bnorm);
    printf("%s-net %-46s %s %.9g ref %.9g: err %.2e (bound %.2e)\n", bn, name, bn, ib->grad_norm, ir->grad_norm,
           fabs(ib->grad_norm - ir->grad_norm), bnorm);
    // per element bounds; untouched groups stay bit-identical (bound 0)
    double *bp = xmalloc(nf * sizeof(double)), *bm = xmalloc(nf * sizeof(double)), *bv = xmalloc(nf * sizeof(double));
    double *bema = xmalloc(nf * sizeof(double));
    const float lr = (float)ir->lr, b1 = (float)o->beta1, b2 = (float)o->beta2, eps = (float)o->eps;
    double halflife = o->ema_halflife; // train.h: beta = 0.5^(B / min(halflife, ratio * images seen))
    if (o->ema_rampup > 0) halflife = fmin(halflife, images_before * o->ema_rampup);
    const float beta = (float)pow(0.5, o->batch / fmax(halflife, 1e-8));
    for (int k = 0; k < t->r.n_params; k++) {
        const struct msd_param *p = &t->r.params[k];
        const int group = p->owner == MSD_OWNER_SHARED ? 0 : 1 + p->owner;
        const bool trained = p->owner == MSD_OWNER_SHARED || p->owner == ir->stage;
        const long step = sr->adam_steps[group];
        ck_assert_int_eq(step, sb->adam_steps[group]);
        for (size_t i = p->offset; i < p->offset + p->numel; i++) {
            if (!trained) {
                bp[i] = bm[i] = bv[i] = 0;
            } else {
                bp[i] = bound_adam_weight(hr.w[i], pre->m[i], pre->v[i], hr.g[i], dg[k], lr, b1, b2, eps, step);
                bm[i] = bound_adam_m(hr.m[i], hr.g[i], dg[k], b1);
                bv[i] = bound_adam_v(hr.v[i], hr.g[i], dg[k], b2);
            }
            bema[i] = bound_ema(hr.ema[i], pre->ema[i], hr.w[i], bp[i], beta);
        }
    }
    snprintf(name, sizeof name, "%s weights after Adam", what);
    check_bounded(bn, name, hb.w, hr.w, bp, nf, 2 * lr);
    snprintf(name, sizeof name, "%s Adam m", what);
    check_bounded(bn, name, hb.m, hr.m, bm, nf, 0);
    snprintf(name, sizeof name, "%s Adam v", what);
    check_bounded(bn, name, hb.v, hr.v, bv, nf, 0);
    snprintf(name, sizeof name, "%s EMA", what);
    check_bounded(bn, name, hb.ema, hr.ema, bema, nf, 0);
    // the step must have moved the weights it trained, by about lr: a check that Adam ran
    double moved = 0;
    for (size_t i = 0; i < nf; i++) moved = fmax(moved, fabs((double)hr.w[i] - pre->w[i]));
    ck_assert_msg(moved > 0.5 * lr && moved <= 2 * lr, "%s: the weights moved by %g, lr %g", what, moved, (double)lr);
    free(bp), free(bm), free(bv), free(bema), free(dg);
    state_free(&hr), state_free(&hb);
}

// Copy ref's training state (weights, moments, EMA, counters) into the backend's.
static void sync_state(struct nets *t, const struct msd_train_state *sr, struct msd_train_state *sb) {
    const size_t nf = t->r.n_floats;
    float *h = xmalloc(nf * sizeof(float));
    float *src[4] = {t->r.w, sr->adam_m, sr->adam_v, sr->ema}, *dst[4] = {t->b.w, sb->adam_m, sb->adam_v, sb->ema};
    for (int j = 0; j < 4; j++) ref->download(h, src[j], nf), t->be->upload(dst[j], h, nf);
    free(h);
    sb->step = sr->step, sb->images = sr->images;
    memcpy(sb->adam_steps, sr->adam_steps, sizeof sb->adam_steps);
}

void netcheck_train_steps(const struct msd_backend *be, const char *preset, int B, uint64_t seed) {
    struct nets t;
    nets_create(&t, be, preset, B, true, 0.1f, seed); // dropout on: the same masks on both backends
    const int last = t.cfg.n_stages - 1;
    ck_assert_msg(last >= 1, "%s: one stage; the second step needs another", preset);
    struct msd_dataset data;
    ck_assert_msg(msd_data_random(&data, 16, t.cfg.in_channels, t.cfg.img_resolution, seed + 1) == 0, "%s",
                  msd_last_error());
    struct msd_train_opts o;
    msd_train_defaults(&o);
    o.batch = B;
    o.lr_rampup = 0;                // the full lr ...
    o.policy = MSD_POLICY_UNIFORM;  // ... and a stage per step that the seed picks (below)
    // a seed whose first step trains stage 0 (the widest decoder) and whose second trains the last
    // stage (the cheapest), so that one decoder takes its first Adam step beside the shared part's
    // second
    double sig[8];
    for (o.seed = 1; !(msd_train_pick(&t.cfg, &o, 0, sig) == 0 && msd_train_pick(&t.cfg, &o, 1, sig) == last);
         o.seed++)
        ck_assert(o.seed < 1000);
    struct msd_train_state sr, sb;
    ck_assert(msd_train_state_init(&sr, &t.r) == 0 && msd_train_state_init(&sb, &t.b) == 0);
    // images seen before the first step: as if resumed, so that the lr (images / rampup, capped) and
    // the EMA's half-life (ema_rampup x images) are those of a run under way, not 0
    sr.images = sb.images = 1e4;
    for (int step = 0; step < 2; step++) {
        if (step > 0) sync_state(&t, &sr, &sb);
        struct host_state pre = state_download(&t.r, &sr, false);
        const double images_before = sr.images;
        struct msd_step_info ir, ib;
        ck_assert_msg(msd_train_step(&t.r, &sr, &data, &o, &ir) == 0, "ref: %s", msd_last_error());
        ck_assert_msg(msd_train_step(&t.b, &sb, &data, &o, &ib) == 0, "%s: %s", be->name, msd_last_error());
        char what[64];
        snprintf(what, sizeof what, "%s train step %d", preset, step + 1);
        check_step(what, &t, &pre, &o, &sr, &sb, &ir, &ib, images_before);
        state_free(&pre);
    }
    msd_train_state_free(&sr, &t.r), msd_train_state_free(&sb, &t.b);
    msd_data_free(&data);
    nets_free(&t);
}

// ---------------------------------------------------------------------------------------------------
// (d) Heun, the EDM schedule, no churn: the samples from the same latents on both backends. The
// bound: heun_error_bound (tests/tolerance.h) from the magnitudes of ref's run, times
// NET_ODE_GROWTH, the stated allowance for the network's own sensitivity to its input; that
// allowance is measured here too, by a third run (on the backend under test) whose every evaluation
// is pushed by the budget delta in a fixed sign pattern.

struct denoiser {
    struct msd_model *m;
    double *sigma;          // (N) all the evaluation's sigma
    int N, k, evals;        // batch, evaluations made, expected
    double *xmax, *dmax;    // (evals) max |x| of each evaluation's input, max |D| of its output
    float *host;            // (N M) staging
    const float *signs;     // backend memory (N M) of +-1, or NULL: push every D by delta times it
};

static double max_abs(const float *x, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs(x[i]));
    return m;
}

static int denoise(void *ctx, float *D, const float *x, double sigma) {
    struct denoiser *d = ctx;
    const struct msd_backend *be = d->m->be;
    const size_t n = (size_t)d->N * d->m->cfg.in_channels * d->m->cfg.img_resolution * d->m->cfg.img_resolution;
    for (int i = 0; i < d->N; i++) d->sigma[i] = sigma;
    const struct msd_forward_opts fo = {false, 0};
    const int stage = msd_config_stage_of(&d->m->cfg, sigma);
    if (msd_denoise_forward(d->m, stage, D, x, d->sigma, &fo) != 0) return -1;
    if (d->k >= d->evals) return msd_set_error("more than %d evaluations", d->evals);
    be->download(d->host, x, n);
    d->xmax[d->k] = max_abs(d->host, n);
    be->download(d->host, D, n);
    d->dmax[d->k] = max_abs(d->host, n);
    if (d->signs) be->axpby(D, (float)(NET_D_TOL * d->dmax[d->k]), d->signs, 1.0f, n);
    d->k++;
    return 0;
}

// A denoiser for `steps` Heun steps of N samples of M floats (the staging buffer is shared by copies).
static struct denoiser denoiser_new(int steps, int N, size_t M) {
    const int evals = 2 * steps - 1;
    return (struct denoiser){.sigma = xmalloc(N * sizeof(double)), .N = N, .evals = evals,
                             .xmax = xmalloc(evals * sizeof(double)), .dmax = xmalloc(evals * sizeof(double)),
                             .host = xmalloc((size_t)N * M * sizeof(float))};
}

// A copy with its own sigma and magnitudes, sharing the staging buffer.
static struct denoiser denoiser_copy(const struct denoiser *d) {
    struct denoiser c = *d;
    c.sigma = xmalloc(d->N * sizeof(double));
    c.xmax = xmalloc(d->evals * sizeof(double)), c.dmax = xmalloc(d->evals * sizeof(double));
    return c;
}

static void denoiser_free(struct denoiser *d, bool staging) {
    free(d->sigma), free(d->xmax), free(d->dmax);
    if (staging) free(d->host);
}

// One Heun run of the d->N samples from seeds 0..N-1; returns the samples on the host (the caller
// frees).
static float *heun_run(struct msd_model *m, const double *sigmas, int steps, struct denoiser *d) {
    const struct msd_backend *be = m->be;
    const int N = d->N;
    const size_t M = (size_t)m->cfg.in_channels * m->cfg.img_resolution * m->cfg.img_resolution;
    uint64_t *seeds = xmalloc(N * sizeof(uint64_t));
    for (int i = 0; i < N; i++) seeds[i] = (uint64_t)i;
    float *x = be->alloc((size_t)N * M);
    ck_assert_ptr_nonnull(x);
    msd_sample_latent(be, x, N, M, seeds, sigmas[0]);
    d->m = m, d->k = 0;
    const struct msd_sample_opts so = msd_sample_opts_default(MSD_SAMPLER_HEUN, steps);
    const int evals = msd_sample(be, N, M, x, sigmas, steps + 1, &so, denoise, d);
    ck_assert_msg(evals == d->evals, "%s: %d evaluations (%s)", be->name, evals, msd_last_error());
    float *out = host_copy(be, x, (size_t)N * M);
    be->release(x);
    free(seeds);
    return out;
}

void netcheck_heun(const struct msd_backend *be, const char *preset, int steps, int samples, uint64_t seed) {
    struct nets t;
    ck_assert(steps >= 1 && samples >= 1);
    nets_create(&t, be, preset, samples, false, 0.0f, seed);
    const size_t n = (size_t)samples * t.M;
    double *sigmas = xmalloc((steps + 1) * sizeof(double));
    ck_assert(msd_schedule(sigmas, steps, MSD_SCHEDULE_EDM, NULL) == 0);
    struct denoiser dr = denoiser_new(steps, samples, t.M), db = denoiser_copy(&dr), dp = denoiser_copy(&dr);
    float *xr = heun_run(&t.r, sigmas, steps, &dr), *xb = heun_run(&t.b, sigmas, steps, &db);
    // the pushed run: the backend again, every D + delta * (+-1 per element, fixed)
    float *signs = be->alloc(n);
    ck_assert_ptr_nonnull(signs);
    for (size_t i = 0; i < n; i++) dp.host[i] = (msd_rng_u32(seed + 1, MSD_STREAM_TEST + 9, i) & 1) ? 1.0f : -1.0f;
    be->upload(signs, dp.host, n);
    dp.signs = signs;
    float *xp = heun_run(&t.b, sigmas, steps, &dp);
    be->release(signs);
    const double E = heun_error_bound(sigmas, steps, t.cfg.sigma_data, (struct heun_magnitudes){dr.xmax, dr.dmax});
    ck_assert_msg(E > 0 && isfinite(E), "bound %g", E);
    // the measured growth: the pushed run against the unpushed one, in units of the bound
    char what[2][96];
    snprintf(what[0], sizeof what[0], "%s heun %d steps: ODE growth", preset, steps);
    snprintf(what[1], sizeof what[1], "%s heun %d steps, %d samples", preset, steps, samples);
    double perr, pscale;
    net_compare(be->name, "heun pushed run (finite)", xp, xb, n, INFINITY, &perr, &pscale);
    const double growth = perr / E;
    printf("%s-net %-46s max |x| %.4g, pushed run moved %.2e = %.3f x the linear bound %.2e (allowed %.0f)\n",
           be->name, what[0], pscale, perr, growth, E, NET_ODE_GROWTH);
    ck_assert_msg(growth <= NET_ODE_GROWTH,
                  "%s: the sampler grew errors of the budget's size %.3g x the linear bound %.3g: more than "
                  "NET_ODE_GROWTH %.0f, the assumption the bound rests on (tests/tolerance.h)",
                  what[0], growth, E, NET_ODE_GROWTH);
    double err, scale;
    char fin[128];
    snprintf(fin, sizeof fin, "%s (finite)", what[1]);
    net_compare(be->name, fin, xb, xr, n, INFINITY, &err, &scale);
    const double bound = NET_ODE_GROWTH * E;
    printf("%s-net %-46s n=%-8zu max|ref| %-9.4g max err %.2e (bound %.2e = %.0f x linear %.2e)\n", be->name, what[1],
           n, scale, err, bound, NET_ODE_GROWTH, E);
    ck_assert_msg(err <= bound, "%s: %s and ref samples differ by %.3g > bound %.3g", what[1], be->name, err, bound);
    free(xr), free(xb), free(xp), free(sigmas);
    denoiser_free(&dr, true), denoiser_free(&db, false), denoiser_free(&dp, false);
    nets_free(&t);
}
