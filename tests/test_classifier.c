// test_classifier.c: the image classifier of common/eval/classifier.h and `msdiff classifier`.
//
// Holds: (1) the whole network's gradients (every parameter tensor and the input) against finite
// differences on a tiny configuration with the ref backend, the gradient convention, and the host
// softmax cross-entropy against finite differences; (2) training: a few dozen Adam steps on a small
// synthetic labelled set lower the loss and learn it; (3) save and load: weights, config and outputs
// bit for bit, a second save byte-identical; (4) fast (and cuda, where there is one) against ref on the
// shipped 1x28x28 configuration: logits, features and every gradient within the network budgets of
// tests/tolerance.h; (5) one test per kind of bad file, each with a message that names the file and
// what is wrong, and an atomic save that leaves a good file alone; (6) the program: train and test on
// a tiny Fashion-MNIST-format set written here, and bad command lines.
// Every random input comes from the counter RNG with a fixed seed printed on failure.
#include <check.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/core/backend.h"
#include "common/eval/classifier.h"
#include "common/core/error.h"
#include "common/io/png.h"
#include "common/core/rng.h"
#include "common/io/safetensors.h"
#include "testutil.h"
#include "tolerance.h"

static const struct msd_backend *ref = &msd_backend_ref;

#define SEED 20250101u

// A tiny network: 2 x 8 x 8 images, widths 4 and 8 in 2 groups, 12 features, 5 classes. Its last
// GroupNorm still sees 16 values per group (4 channels x 2 x 2), so the finite differences stay smooth.
static struct msd_classifier_config tiny_cfg(void) {
    return (struct msd_classifier_config){
        .in_channels = 2, .res = 8, .c1 = 4, .c2 = 8, .groups = 2, .features = 12, .classes = 5};
}

// Create on be, initialise from seed, then push every parameter by N(0, 0.1) so that biases and
// GroupNorm's affine are not at their special starting values (0 and 1).
static void make(struct msd_classifier *c, const struct msd_classifier_config *cfg,
                 const struct msd_backend *be, uint64_t seed) {
    ck_assert_msg(msd_classifier_create(c, cfg, be) == 0, "%s", msd_last_error());
    msd_classifier_init(c, seed);
    perturb_weights(be, c->w, c->n_floats, seed + 1, 0.1f);
}

static size_t image_floats(const struct msd_classifier_config *g) {
    return (size_t)g->in_channels * g->res * g->res;
}

// ---------------------------------------------------------------------------------------------------
// 1. Gradients

struct fd_ctx {
    struct msd_classifier *c;
    const float *x;
};

static void fd_logits(void *ctx, float *out) {
    struct fd_ctx *t = ctx;
    msd_classifier_forward(t->c, out, NULL, t->x);
}

// L = sum r . logits; every parameter tensor (a few entries each) and the input against central
// differences (testutil.h's fd_check, FD_TOL), after checking the convention: a second backward doubles
// every parameter gradient exactly and writes the same input gradient.
START_TEST(gradients_match_finite_differences) {
    const struct msd_classifier_config cfg = tiny_cfg();
    struct msd_classifier c;
    make(&c, &cfg, ref, SEED);
    const int N = 3, K = cfg.classes;
    const size_t M = image_floats(&cfg);
    ck_assert_msg(msd_classifier_plan(&c, N, true) == 0, "%s", msd_last_error());
    float *x = tbuf_new(N * M), *dx = tbuf_new(N * M), *r = tbuf_new((size_t)N * K);
    float *logits = tbuf_new((size_t)N * K), *feat = tbuf_new((size_t)N * cfg.features);
    fill_uniform(x, N * M, SEED + 2, -1.0f, 1.0f);
    fill_uniform(r, (size_t)N * K, SEED + 3, -1.0f, 1.0f);

    msd_classifier_forward(&c, logits, feat, x);
    ref->fill(c.grad, 0.0f, c.n_floats);
    for (size_t i = 0; i < N * M; i++) dx[i] = 1e30f; // must be overwritten
    msd_classifier_backward(&c, dx, r);
    float *g1 = malloc(c.n_floats * sizeof *g1), *dx1 = malloc(N * M * sizeof *dx1);
    ck_assert(g1 && dx1);
    memcpy(g1, c.grad, c.n_floats * sizeof *g1);
    memcpy(dx1, dx, N * M * sizeof *dx1);
    msd_classifier_backward(&c, dx, r);
    for (size_t i = 0; i < c.n_floats; i++)
        ck_assert_msg(c.grad[i] == 2 * g1[i], "parameter gradient [%zu] did not accumulate: %g after two calls, "
                      "%g after one", i, c.grad[i], g1[i]);
    for (size_t i = 0; i < N * M; i++)
        ck_assert_msg(dx[i] == dx1[i], "dx[%zu] is %g after a second call, %g after the first: it must be "
                      "written, not accumulated", i, dx[i], dx1[i]);
    for (size_t i = 0; i < c.n_floats; i++) ck_assert_msg(isfinite(g1[i]), "gradient [%zu] is %g", i, g1[i]);

    struct fd_ctx ctx = {&c, x};
    char what[128];
    for (int k = 0; k < c.n_params; k++) {
        const struct msd_param *p = &c.params[k];
        snprintf(what, sizeof what, "classifier %s", p->name);
        fd_check(what, fd_logits, &ctx, r, (size_t)N * K, c.w + p->offset, g1 + p->offset, p->numel, 4,
                 SEED + 10 + k);
    }
    fd_check("classifier input x", fd_logits, &ctx, r, (size_t)N * K, x, dx1, N * M, 8, SEED + 9);
    tbuf_check(x, N * M, "x"), tbuf_check(dx, N * M, "dx"), tbuf_check(r, (size_t)N * K, "r");
    tbuf_check(logits, (size_t)N * K, "logits"), tbuf_check(feat, (size_t)N * cfg.features, "features");
    tbuf_free(x), tbuf_free(dx), tbuf_free(r), tbuf_free(logits), tbuf_free(feat);
    free(g1), free(dx1);
    msd_classifier_free(&c);
}
END_TEST

// The host loss: dlogits against the fourth-order central difference of the double loss (steps of
// 2^-8, exact in float for these logits), the correct count against a direct argmax, and the value
// against log(K) for equal logits.
START_TEST(softmax_xent_gradient) {
    enum { N = 4, K = 7 };
    float z[N * K], dz[N * K];
    uint8_t y[N] = {0, 6, 3, 3};
    fill_uniform(z, N * K, SEED + 4, -3.0f, 3.0f);
    int correct;
    msd_softmax_xent(z, y, N, K, dz, &correct);
    int want_correct = 0;
    for (int n = 0; n < N; n++) {
        int best = 0;
        for (int k = 1; k < K; k++)
            if (z[n * K + k] > z[n * K + best]) best = k;
        want_correct += best == y[n];
    }
    ck_assert_int_eq(correct, want_correct);
    const float h = 1.0f / 256;
    double worst = 0;
    for (int i = 0; i < N * K; i++) {
        const float z0 = z[i];
        double L[4];
        const float steps[4] = {h, -h, 2 * h, -2 * h};
        for (int s = 0; s < 4; s++) {
            z[i] = z0 + steps[s];
            L[s] = msd_softmax_xent(z, y, N, K, NULL, NULL);
        }
        z[i] = z0;
        const double fd = (8 * (L[0] - L[1]) - (L[2] - L[3])) / (12.0 * h);
        const double err = fabs(fd - dz[i]) / (fmax(fabs(fd), fabs(dz[i])) + 1e-6);
        worst = fmax(worst, err);
        ck_assert_msg(err < 1e-4, "dlogits[%d]: fd %.9g, analytic %.9g (seed %u)", i, fd, dz[i], SEED + 4);
    }
    printf("fd softmax cross-entropy: worst rel err %.2e over %d logits\n", worst, N * K);
    for (int i = 0; i < N * K; i++) z[i] = 0.5f;
    const double L = msd_softmax_xent(z, y, N, K, NULL, NULL);
    ck_assert_msg(fabs(L - log((double)K)) < 1e-12, "equal logits: loss %.17g, want log %d", L, K);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// 2. Training

// n images of 1 x 8 x 8 in 4 classes: class k has a bright 4x4 block in quadrant k of a noisy
// background (pixels 0..95), so a few dozen steps can learn it.
static void quadrants(struct msd_dataset *d, int n, uint64_t seed) {
    memset(d, 0, sizeof *d);
    d->n = n, d->channels = 1, d->res = 8;
    d->pixels = malloc((size_t)n * 64);
    d->labels = malloc((size_t)n);
    if (!d->pixels || !d->labels) { // also used in main(), outside any test: no ck_assert here
        fprintf(stderr, "test_classifier: out of memory\n");
        exit(1);
    }
    for (int i = 0; i < n; i++) {
        const int k = (int)(msd_rng_u32(seed, MSD_STREAM_TEST, (uint64_t)i) % 4);
        d->labels[i] = (uint8_t)k;
        for (int p = 0; p < 64; p++) {
            const int row = p / 8, col = p % 8;
            const bool in = row / 4 == k / 2 && col / 4 == k % 2;
            d->pixels[i * 64 + p] =
                in ? 255 : (uint8_t)(msd_rng_u32(seed, MSD_STREAM_TEST, (uint64_t)n + (uint64_t)i * 64 + p) % 96);
        }
    }
    snprintf(d->source, sizeof d->source, "synthetic quadrants (seed %llu)", (unsigned long long)seed);
}

START_TEST(training_lowers_the_loss) {
    const struct msd_classifier_config cfg = {
        .in_channels = 1, .res = 8, .c1 = 8, .c2 = 8, .groups = 2, .features = 16, .classes = 4};
    struct msd_dataset d;
    quadrants(&d, 96, SEED);
    struct msd_classifier c;
    ck_assert_msg(msd_classifier_create(&c, &cfg, ref) == 0, "%s", msd_last_error());
    msd_classifier_init(&c, SEED);
    const int B = 16, steps = 36;
    ck_assert_msg(msd_classifier_plan(&c, B, true) == 0, "%s", msd_last_error());
    double acc0, loss0, acc1, loss1;
    ck_assert_msg(msd_classifier_evaluate(&c, &d, &acc0, &loss0) == 0, "%s", msd_last_error());
    float *x = malloc((size_t)B * 64 * sizeof *x);
    for (int s = 0; s < steps; s++) {
        const int first = (s * B) % d.n;
        msd_data_images(&d, x, first, B);
        struct msd_cls_step info;
        ck_assert_msg(msd_classifier_train_step(&c, x, d.labels + first, 3e-3f, &info) == 0, "%s", msd_last_error());
        ck_assert_msg(isfinite(info.loss) && info.correct >= 0 && info.correct <= B, "step %d: loss %g, %d right", s,
                      info.loss, info.correct);
    }
    ck_assert_int_eq(c.adam_step, steps);
    ck_assert_msg(msd_classifier_evaluate(&c, &d, &acc1, &loss1) == 0, "%s", msd_last_error());
    printf("training: %d steps of %d: loss %.4f -> %.4f, accuracy %.1f%% -> %.1f%% (%s)\n", steps, B, loss0, loss1,
           100 * acc0, 100 * acc1, d.source);
    ck_assert_msg(loss1 < 0.25 * loss0, "loss %.4f -> %.4f: expected at least a fourfold drop", loss0, loss1);
    ck_assert_msg(acc1 >= 0.95, "accuracy after training %.3f, expected >= 0.95", acc1);
    // a non-finite loss is refused and leaves the weights alone
    float *before = malloc(c.n_floats * sizeof *before);
    memcpy(before, c.w, c.n_floats * sizeof *before);
    x[0] = NAN;
    ck_assert(msd_classifier_train_step(&c, x, d.labels, 3e-3f, NULL) == -1);
    ck_assert_msg(strstr(msd_last_error(), "loss") != NULL, "message: %s", msd_last_error());
    ck_assert_msg(memcmp(before, c.w, c.n_floats * sizeof *before) == 0, "a NaN loss changed the weights");
    free(before), free(x);
    msd_data_free(&d);
    msd_classifier_free(&c);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// 3. Save and load

static char *config_json(const struct msd_classifier *c) { return msd_classifier_config_to_json(&c->cfg); }

START_TEST(save_load_round_trip) {
    const struct msd_classifier_config cfg = tiny_cfg();
    struct msd_classifier a, b;
    make(&a, &cfg, ref, SEED);
    enum { N = 4 };
    const size_t M = image_floats(&cfg);
    ck_assert(msd_classifier_plan(&a, N, true) == 0);
    float *x = malloc(N * M * sizeof *x);
    fill_uniform(x, N * M, SEED + 5, -1, 1);
    const uint8_t labels[N] = {0, 1, 4, 2};
    ck_assert_msg(msd_classifier_train_step(&a, x, labels, 1e-3f, NULL) == 0, "%s", msd_last_error());
    const char *path = test_path("round.safetensors"), *again = test_path("again.safetensors");
    const char *keys[] = {"test_accuracy", "data"}, *values[] = {"0.5", "synthetic"};
    ck_assert_msg(msd_classifier_save(&a, path, keys, values, 2) == 0, "%s", msd_last_error());
    ck_assert_msg(msd_classifier_load(&b, path, ref) == 0, "%s", msd_last_error());
    char *ja = config_json(&a), *jb = config_json(&b);
    ck_assert_msg(strcmp(ja, jb) == 0, "configs differ: %s vs %s", ja, jb);
    free(ja), free(jb);
    ck_assert(a.n_floats == b.n_floats);
    ck_assert_msg(memcmp(a.w, b.w, a.n_floats * sizeof(float)) == 0, "weights differ after the round trip");
    // the same outputs, bit for bit
    ck_assert(msd_classifier_plan(&b, N, false) == 0);
    float *la = malloc(N * 5 * sizeof *la), *lb = malloc(N * 5 * sizeof *lb);
    float *fa = malloc(N * 12 * sizeof *fa), *fb = malloc(N * 12 * sizeof *fb);
    ck_assert(msd_classifier_predict(&a, la, fa, x, N) == 0 && msd_classifier_predict(&b, lb, fb, x, N) == 0);
    ck_assert_msg(memcmp(la, lb, N * 5 * sizeof *la) == 0, "logits differ after the round trip");
    ck_assert_msg(memcmp(fa, fb, N * 12 * sizeof *fa) == 0, "features differ after the round trip");
    // the metadata, and a second save of the loaded model gives the same bytes
    struct msd_st_file f;
    ck_assert_msg(msd_st_read(&f, path) == 0, "%s", msd_last_error());
    ck_assert_int_eq(f.n_tensors, MSD_CLS_PARAMS);
    const char *arch = msd_st_meta(&f, "architecture"), *acc = msd_st_meta(&f, "test_accuracy");
    ck_assert_msg(arch && strstr(arch, "conv3x3 2->4") && strstr(arch, "linear 12->5"), "architecture: %s",
                  arch ? arch : "(none)");
    ck_assert_msg(acc && !strcmp(acc, "0.5"), "test_accuracy: %s", acc ? acc : "(none)");
    ck_assert(msd_st_meta(&f, "classifier") != NULL);
    msd_st_free(&f);
    ck_assert_msg(msd_classifier_save(&b, again, keys, values, 2) == 0, "%s", msd_last_error());
    size_t n1, n2;
    char *b1 = test_read_file(path, &n1), *b2 = test_read_file(again, &n2);
    ck_assert_msg(n1 == n2 && memcmp(b1, b2, n1) == 0, "a loaded and re-saved classifier differs from its file");
    free(b1), free(b2), free(x), free(la), free(lb), free(fa), free(fb);
    msd_classifier_free(&a);
    msd_classifier_free(&b);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// 4. Backends against ref

// max |got - want| <= tol max |want| over a tensor, with the numbers printed.
static void expect_within(const char *be_name, const char *what, const float *got, const float *want, size_t n,
                          double tol) {
    const struct cmp_result r = compare(got, want, n);
    double scale = 0;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(want[i]));
    printf("%s-vs-ref classifier %-14s max err %.3g (%.2e of max |ref| %.3g; budget %.0e)\n", be_name, what, r.max_abs,
           r.max_abs / fmax(scale, 1e-30), scale, tol);
    ck_assert_msg(r.nonfinite_mismatch == 0, "%s %s: %zu NaN/Inf disagreements", be_name, what, r.nonfinite_mismatch);
    ck_assert_msg(net_within(r.max_abs, scale, tol), "%s %s: max err %.3g at [%zu] (%g vs %g) > %.0e x %.3g (seed %u)",
                  be_name, what, r.max_abs, r.worst, got[r.worst], want[r.worst], tol, scale, SEED);
}

// The shipped configuration (1 x 28 x 28, widths 32 and 64, 128 features), N = 3: logits and features
// within NET_D_TOL, every gradient tensor and dx within NET_GRAD_TOL of ref (tests/tolerance.h: the
// budgets of whole networks; this one has 6 weighted layers, the widest reduction the fc layer's 3136).
static void check_backend(const char *name) {
    const struct msd_backend *be = msd_backend_get(name);
    if (!be) {
        printf("%s-vs-ref classifier: skipped (%s)\n", name, msd_last_error());
        return;
    }
    struct msd_classifier_config cfg;
    msd_classifier_defaults(&cfg, 1, 28);
    struct msd_classifier r, o;
    make(&r, &cfg, ref, SEED + 20);
    ck_assert_msg(msd_classifier_create(&o, &cfg, be) == 0, "%s", msd_last_error());
    be->upload(o.w, r.w, r.n_floats);
    const int N = 3, K = cfg.classes, F = cfg.features;
    const size_t M = image_floats(&cfg);
    ck_assert(msd_classifier_plan(&r, N, true) == 0 && msd_classifier_plan(&o, N, true) == 0);
    float *x = malloc(N * M * sizeof *x), *dl = malloc((size_t)N * K * sizeof *dl);
    fill_uniform(x, N * M, SEED + 21, -1, 1);
    fill_uniform(dl, (size_t)N * K, SEED + 22, -1, 1);
    float *xo = be->alloc(N * M), *dlo = be->alloc((size_t)N * K), *lo = be->alloc((size_t)N * K);
    float *fo = be->alloc((size_t)N * F), *dxo = be->alloc(N * M);
    be->upload(xo, x, N * M);
    be->upload(dlo, dl, (size_t)N * K);
    float *lr = malloc((size_t)N * K * sizeof *lr), *fr = malloc((size_t)N * F * sizeof *fr);
    float *dxr = malloc(N * M * sizeof *dxr);
    msd_classifier_forward(&r, lr, fr, x);
    msd_classifier_forward(&o, lo, fo, xo);
    ref->fill(r.grad, 0.0f, r.n_floats);
    be->fill(o.grad, 0.0f, o.n_floats);
    msd_classifier_backward(&r, dxr, dl);
    msd_classifier_backward(&o, dxo, dlo);
    float *h = malloc(o.n_floats * sizeof *h);
    be->download(h, lo, (size_t)N * K);
    expect_within(name, "logits", h, lr, (size_t)N * K, NET_D_TOL);
    be->download(h, fo, (size_t)N * F);
    expect_within(name, "features", h, fr, (size_t)N * F, NET_D_TOL);
    be->download(h, dxo, N * M);
    expect_within(name, "dx", h, dxr, N * M, NET_GRAD_TOL);
    be->download(h, o.grad, o.n_floats);
    for (int k = 0; k < r.n_params; k++) {
        const struct msd_param *p = &r.params[k];
        char what[64];
        snprintf(what, sizeof what, "d%s", p->name);
        expect_within(name, what, h + p->offset, r.grad + p->offset, p->numel, NET_GRAD_TOL);
    }
    float *bufs[] = {xo, dlo, lo, fo, dxo};
    for (int i = 0; i < 5; i++) be->release(bufs[i]);
    free(x), free(dl), free(lr), free(fr), free(dxr), free(h);
    msd_classifier_free(&r);
    msd_classifier_free(&o);
}

START_TEST(fast_matches_ref) { check_backend("fast"); }
END_TEST
START_TEST(cuda_matches_ref) { check_backend("cuda"); }
END_TEST

// ---------------------------------------------------------------------------------------------------
// 5. Bad files

// A classifier file written by hand: the tiny net's tensors, minus `skip`, with `reshape` given the
// shape [1, numel], plus a tensor "extra" when asked, and `json` as the "classifier" metadata (none
// when NULL).
static void write_variant(const char *path, const struct msd_classifier *c, const char *skip, const char *reshape,
                          bool extra, const char *json) {
    struct msd_st_entry e[MSD_CLS_PARAMS + 1];
    int n = 0;
    for (int i = 0; i < c->n_params; i++) {
        const struct msd_param *p = &c->params[i];
        if (skip && !strcmp(p->name, skip)) continue;
        e[n] = (struct msd_st_entry){.name = p->name, .ndim = p->ndim, .data = c->w + p->offset};
        for (int k = 0; k < p->ndim; k++) e[n].shape[k] = p->shape[k];
        if (reshape && !strcmp(p->name, reshape)) {
            e[n].ndim = 2;
            e[n].shape[0] = 1, e[n].shape[1] = (int64_t)p->numel, e[n].shape[2] = e[n].shape[3] = 0;
        }
        n++;
    }
    static const float one = 1.0f;
    if (extra) e[n++] = (struct msd_st_entry){.name = "extra", .ndim = 1, .shape = {1}, .data = &one};
    const char *keys[] = {"classifier"}, *values[] = {json};
    ck_assert_msg(msd_st_write(path, e, n, keys, values, json ? 1 : 0) == 0, "%s", msd_last_error());
}

// Loading path fails with a message holding the path and every needle, and leaves *c empty.
static void expect_load_fails(const char *path, const char *needle1, const char *needle2) {
    struct msd_classifier c;
    msd_clear_error();
    ck_assert_msg(msd_classifier_load(&c, path, ref) == -1, "loading %s succeeded", path);
    const char *msg = msd_last_error();
    ck_assert_msg(strstr(msg, path) != NULL, "the message does not name the file %s: %s", path, msg);
    ck_assert_msg(!needle1 || strstr(msg, needle1), "the message lacks '%s': %s", needle1, msg);
    ck_assert_msg(!needle2 || strstr(msg, needle2), "the message lacks '%s': %s", needle2, msg);
    ck_assert_msg(c.w == NULL && c.n_floats == 0 && c.acts == NULL, "a failed load left a classifier behind");
    printf("bad file: %s\n", msg);
}

START_TEST(bad_files) {
    const struct msd_classifier_config cfg = tiny_cfg();
    struct msd_classifier c;
    make(&c, &cfg, ref, SEED);
    char *good_json = config_json(&c);
    const char *good = test_path("good.safetensors");
    ck_assert(msd_classifier_save(&c, good, NULL, NULL, 0) == 0);

    expect_load_fails(test_path("absent.safetensors"), NULL, NULL);
    write_variant(test_path("nometa.safetensors"), &c, NULL, NULL, false, NULL);
    expect_load_fails(test_path("nometa.safetensors"), "no \"classifier\" in __metadata__", NULL);
    write_variant(test_path("res30.safetensors"), &c, NULL, NULL, false,
                  "{\"in_channels\":2,\"res\":30,\"c1\":4,\"c2\":8,\"groups\":2,\"features\":12,\"classes\":5}");
    expect_load_fails(test_path("res30.safetensors"), "res is 30", "multiple of 4");
    write_variant(test_path("groups.safetensors"), &c, NULL, NULL, false,
                  "{\"in_channels\":2,\"res\":8,\"c1\":4,\"c2\":8,\"groups\":3,\"features\":12,\"classes\":5}");
    expect_load_fails(test_path("groups.safetensors"), "groups 3", "divide");
    write_variant(test_path("nofield.safetensors"), &c, NULL, NULL, false, "{\"in_channels\":2}");
    expect_load_fails(test_path("nofield.safetensors"), "\"classifier\".res", "missing");
    write_variant(test_path("nul.safetensors"), &c, NULL, NULL, false, "{\"in_channels\": 2\\u0000}");
    expect_load_fails(test_path("nul.safetensors"), "\"classifier\" holds \\u0000 at byte 17", NULL);
    write_variant(test_path("notjson.safetensors"), &c, NULL, NULL, false, "[1, 2");
    expect_load_fails(test_path("notjson.safetensors"), "not a JSON object", NULL);
    // a tensor missing, in a message that calls the file a classifier
    const char *missing = test_path("missing.safetensors");
    write_variant(missing, &c, "fc.bias", NULL, false, good_json);
    expect_load_fails(missing, "fc.bias", test_pathf("classifier '%s': ", missing));
    write_variant(test_path("shape.safetensors"), &c, NULL, "head.weight", false, good_json);
    expect_load_fails(test_path("shape.safetensors"), "head.weight", NULL);
    write_variant(test_path("extra.safetensors"), &c, NULL, NULL, true, good_json);
    expect_load_fails(test_path("extra.safetensors"), "unexpected tensor 'extra'", NULL);
    // a truncated file
    size_t len;
    char *bytes = test_read_file(good, &len);
    const char *cut = test_path("cut.safetensors");
    test_write_file(cut, bytes, len / 2);
    expect_load_fails(cut, test_pathf("classifier '%s': ", cut), "truncated");
    // a NaN weight: refused by the save, and by the load of a file that holds one anyway
    const char *nan_file = test_path("nan.safetensors");
    char *with_nan = test_read_file(good, NULL);
    struct msd_st_file f;
    ck_assert_msg(msd_st_read(&f, good) == 0, "%s", msd_last_error());
    const struct msd_st_tensor *t = msd_st_find(&f, "fc.weight");
    ck_assert(t != NULL && !strcmp(t->dtype, "F32"));
    const float nan = NAN;
    memcpy(with_nan + (len - f.data_len) + t->begin + 3 * sizeof(float), &nan, sizeof nan); // element 3
    msd_st_free(&f);
    test_write_file(nan_file, with_nan, len);
    free(with_nan);
    expect_load_fails(nan_file, "tensor 'fc.weight' element 3 is nan", "expected finite weights");
    c.w[c.params[0].offset + 2] = INFINITY;
    ck_assert_msg(msd_classifier_save(&c, test_path("inf.safetensors"), NULL, NULL, 0) == -1,
                  "a weight of inf was saved");
    ck_assert_msg(strstr(msd_last_error(), "element 2 is inf") && !test_exists(test_path("inf.safetensors")),
                  "%s", msd_last_error());
    msd_classifier_init(&c, SEED);

    // a save that fails (its temp file cannot be created) leaves the existing file as it was
    ck_assert(mkdir(test_pathf("%s.tmp", good), 0777) == 0);
    msd_classifier_init(&c, SEED + 1);
    ck_assert_msg(msd_classifier_save(&c, good, NULL, NULL, 0) == -1, "a save through a blocked temp file succeeded");
    ck_assert_msg(strstr(msd_last_error(), good) != NULL, "save message: %s", msd_last_error());
    size_t len2;
    char *after = test_read_file(good, &len2);
    ck_assert_msg(len2 == len && memcmp(after, bytes, len) == 0, "a failed save changed %s", good);
    free(after), free(bytes), free(good_json);
    msd_classifier_free(&c);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// 6. The program, on a tiny Fashion-MNIST-format set: fm8/ holds IDX files of 8 x 8 quadrant images
// (64 to train on, 32 to test), written uncompressed (data.h reads those too).

static void put_be32(FILE *f, uint32_t v) {
    const unsigned char b[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16), (unsigned char)(v >> 8),
                                (unsigned char)v};
    fwrite(b, 1, 4, f);
}

static int write_idx(const char *dir, const char *prefix, int n, uint64_t seed) {
    struct msd_dataset d;
    quadrants(&d, n, seed);
    char path[600];
    snprintf(path, sizeof path, "%s/%s-images-idx3-ubyte", dir, prefix);
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    put_be32(f, 0x00000803), put_be32(f, (uint32_t)n), put_be32(f, 8), put_be32(f, 8);
    fwrite(d.pixels, 1, (size_t)n * 64, f);
    fclose(f);
    snprintf(path, sizeof path, "%s/%s-labels-idx1-ubyte", dir, prefix);
    if (!(f = fopen(path, "wb"))) return -1;
    put_be32(f, 0x00000801), put_be32(f, (uint32_t)n);
    fwrite(d.labels, 1, (size_t)n, f);
    fclose(f);
    msd_data_free(&d);
    return 0;
}

// The suite's temporary directory with fm8/ and a one-image PNG folder png/ (no labels). In the parent.
static void setup_files(void) {
    test_tmpdir_make("classifier");
    const char *fm = test_path("fm8"), *png = test_path("png");
    float img[64] = {0};
    if (mkdir(fm, 0777) || write_idx(fm, "train", 64, 7) || write_idx(fm, "t10k", 32, 8) || mkdir(png, 0777) ||
        msd_png_write(test_pathf("%s/a.png", png), img, 1, 8, 8)) {
        fprintf(stderr, "test_classifier: cannot write the test data in %s\n", test_tmpdir());
        exit(1);
    }
}

// The "NN.NN%" after `after` in text, into out[16].
static void percent_after(const char *text, const char *after, char *out) {
    const char *p = strstr(text, after);
    ck_assert_msg(p != NULL, "no '%s' in: %s", after, text);
    p += strlen(after);
    size_t n = strcspn(p, "%");
    ck_assert(n < 15);
    memcpy(out, p, n);
    out[n] = '\0';
}

START_TEST(program_train_and_test) {
    const char *data = test_pathf("fmnist:%s", test_path("fm8")), *tdata = test_pathf("fmnist:test:%s", test_path("fm8"));
    const char *model = test_path("c8.safetensors");
    struct test_run r = MSDIFF("classifier", "train", "--data", data, "--epochs", "3", "--batch", "16", "--lr", "3e-3",
                               "--seed", "1", "--backend", "ref", "--out", model, "--log-seconds", "0.001");
    test_expect_ok(&r);
    ck_assert_msg(strstr(r.out, "img/s") && strstr(r.out, "loss"), "no progress line: %s", r.out);
    char acc_train[16], acc_test[16];
    percent_after(r.out, "test accuracy ", acc_train);
    test_run_free(&r);
    struct msd_st_file f;
    ck_assert_msg(msd_st_read(&f, model) == 0, "%s", msd_last_error());
    const char *cmd = msd_st_meta(&f, "command"), *acc = msd_st_meta(&f, "test_accuracy");
    const char *dat = msd_st_meta(&f, "data"), *arch = msd_st_meta(&f, "architecture");
    ck_assert_msg(cmd && strstr(cmd, "msdiff classifier train") && strstr(cmd, "--epochs 3"), "command: %s",
                  cmd ? cmd : "(none)");
    ck_assert_msg(acc && dat && strstr(dat, "fm8") && arch && strstr(arch, "conv3x3 1->32"), "metadata lacks "
                  "test_accuracy, data or architecture");
    char want[16];
    snprintf(want, sizeof want, "%.2f", 100 * strtod(acc, NULL));
    ck_assert_msg(!strcmp(want, acc_train), "metadata test_accuracy %s, printed %s%%", acc, acc_train);
    msd_st_free(&f);
    r = MSDIFF("classifier", "test", "--model", model, "--data", tdata, "--backend", "ref", "--batch", "5");
    test_expect_ok(&r);
    percent_after(r.out, "accuracy ", acc_test);
    ck_assert_msg(!strcmp(acc_test, acc_train), "test says %s%%, train said %s%%", acc_test, acc_train);
    ck_assert_msg(strtod(acc_test, NULL) >= 90.0, "accuracy %s%% on the quadrants after 3 epochs", acc_test);
    printf("program: classifier on fm8 test accuracy %s%%\n", acc_test);
    test_run_free(&r);
    r = MSDIFF("classifier", "--help");
    test_expect_ok(&r);
    ck_assert(strstr(r.out, "msdiff classifier train") && strstr(r.out, "msdiff classifier test"));
    test_run_free(&r);
}
END_TEST

START_TEST(program_bad_input) {
    const char *data = test_pathf("fmnist:%s", test_path("fm8")), *out = test_path("bad.safetensors");
    struct test_run r = MSDIFF("classifier");
    TEST_EXPECT_FAIL(&r, 2, "train or test");
    test_run_free(&r);
    r = MSDIFF("classifier", "fit");
    TEST_EXPECT_FAIL(&r, 2, "fit", "train or test");
    test_run_free(&r);
    r = MSDIFF("classifier", "train", "--data", data);
    TEST_EXPECT_FAIL(&r, 2, "--out");
    test_run_free(&r);
    r = MSDIFF("classifier", "train", "--data", data, "--out", out, "--epochs", "0");
    TEST_EXPECT_FAIL(&r, 2, "--epochs");
    test_run_free(&r);
    r = MSDIFF("classifier", "train", "--data", data, "--out", out, "--lr", "-1");
    TEST_EXPECT_FAIL(&r, 2, "--lr");
    test_run_free(&r);
    r = MSDIFF("classifier", "train", "--data", test_pathf("fmnist:test:%s", test_path("fm8")), "--out", out);
    TEST_EXPECT_FAIL(&r, 2, "--test-data");
    test_run_free(&r);
    r = MSDIFF("classifier", "train", "--data", data, "--out", test_path("no-dir/c.safetensors"));
    TEST_EXPECT_FAIL(&r, 1, "no-dir", "does not exist");
    test_run_free(&r);
    r = MSDIFF("classifier", "train", "--data", test_path("png"), "--test-data", test_path("png"), "--out", out);
    TEST_EXPECT_FAIL(&r, 1, "no labels");
    test_run_free(&r);
    r = MSDIFF("classifier", "train", "--data", data, "--out", out, "--batch", "65");
    TEST_EXPECT_FAIL(&r, 1, "--batch 65", "64 training images");
    test_run_free(&r);
    ck_assert_msg(!test_exists(out), "a failed classifier train wrote %s", out);
    r = MSDIFF("classifier", "test", "--model", test_path("absent.safetensors"), "--data", data);
    TEST_EXPECT_FAIL(&r, 1, "absent.safetensors");
    test_run_free(&r);
    r = MSDIFF("classifier", "test", "--data", data);
    TEST_EXPECT_FAIL(&r, 2, "--model");
    test_run_free(&r);
}
END_TEST

int main(void) {
    setup_files();
    const TTest *tests[] = {
        gradients_match_finite_differences, softmax_xent_gradient, training_lowers_the_loss,
        save_load_round_trip, fast_matches_ref, cuda_matches_ref, bad_files, program_train_and_test,
        program_bad_input,
    };
    return run_tests("classifier", 300, tests, TEST_COUNT(tests));
}
