// classifier.c: the image classifier of classifier.h: its parameter table, activation arena, forward
// and backward passes over the backend table, the host-side loss, Adam steps, prediction in chunks,
// and its safetensors file.
//
// Every tensor operation is a call through c->be, so the same code runs on ref, fast and cuda; only
// the loss (N x classes numbers) is computed on the host.
#include "classifier.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/core/arena.h"
#include "common/core/error.h"
#include "common/core/rng.h"
#include "common/io/safetensors.h"
#include "common/core/util.h"

#define GN_EPS 1e-5f // PyTorch's GroupNorm default
#define ADAM_BETA1 0.9f
#define ADAM_BETA2 0.999f
#define ADAM_EPS 1e-8f

// Limits that keep every size computed from a config far inside int (the fc layer's fan-in is
// c2 (R/4)^2 <= 1024 * 128^2) and labels inside a byte.
#define MAX_CHANNELS 64
#define MAX_RES 512
#define MAX_WIDTH 1024
#define MAX_FEATURES 8192
#define MAX_CLASSES 256

// ---------------------------------------------------------------------------------------------------
// Config

void msd_classifier_defaults(struct msd_classifier_config *cfg, int in_channels, int res) {
    *cfg = (struct msd_classifier_config){
        .in_channels = in_channels, .res = res, .c1 = 32, .c2 = 64, .groups = 8, .features = 128, .classes = 10};
}

int msd_classifier_validate(const struct msd_classifier_config *cfg) {
    const struct { const char *name; int v, lo, hi; } f[] = {
        {"in_channels", cfg->in_channels, 1, MAX_CHANNELS}, {"res", cfg->res, 4, MAX_RES},
        {"c1", cfg->c1, 1, MAX_WIDTH}, {"c2", cfg->c2, 1, MAX_WIDTH}, {"groups", cfg->groups, 1, MAX_WIDTH},
        {"features", cfg->features, 1, MAX_FEATURES}, {"classes", cfg->classes, 2, MAX_CLASSES}};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (f[i].v < f[i].lo || f[i].v > f[i].hi)
            return msd_set_error("classifier config: %s is %d, expected %d..%d", f[i].name, f[i].v, f[i].lo,
                                 f[i].hi);
    if (cfg->res % 4)
        return msd_set_error("classifier config: res is %d, expected a multiple of 4 (the net halves it twice)",
                             cfg->res);
    if (cfg->c1 % cfg->groups || cfg->c2 % cfg->groups)
        return msd_set_error("classifier config: groups %d must divide c1 (%d) and c2 (%d)", cfg->groups,
                             cfg->c1, cfg->c2);
    return 0;
}

// The fields, in the order of the JSON object.
#define CFG_FIELDS(X) X(in_channels) X(res) X(c1) X(c2) X(groups) X(features) X(classes)

char *msd_classifier_config_to_json(const struct msd_classifier_config *cfg) {
    cJSON *j = cJSON_CreateObject();
#define ADD(f) cJSON_AddNumberToObject(j, #f, cfg->f);
    CFG_FIELDS(ADD)
#undef ADD
    char *text = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    CHECK(text != NULL, "out of memory printing the classifier config");
    return text;
}

int msd_classifier_config_from_json(struct msd_classifier_config *cfg, const char *json, const char *source) {
    const long nul = msd_json_nul_escape(json);
    if (nul >= 0)
        return msd_set_error("classifier '%s': __metadata__ \"classifier\" holds \\u0000 at byte %ld, a NUL "
                             "character that would cut its string short", source, nul);
    cJSON *j = cJSON_Parse(json);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return msd_set_error("classifier '%s': __metadata__ \"classifier\" is not a JSON object (expected "
                             "{\"in_channels\": 1, \"res\": 28, ...})", source);
    }
    memset(cfg, 0, sizeof *cfg);
    int rc = 0;
#define GET(f)                                                                                           \
    if (rc == 0) {                                                                                       \
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, #f);                                        \
        if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || fabs(v->valuedouble) > 1e9) \
            rc = msd_set_error("classifier '%s': \"classifier\".%s is missing or not a whole number",     \
                               source, #f);                                                              \
        else cfg->f = (int)v->valuedouble;                                                               \
    }
    CFG_FIELDS(GET)
#undef GET
    cJSON_Delete(j);
    if (rc == 0 && msd_classifier_validate(cfg) < 0)
        rc = msd_set_error("classifier '%s': %s", source, msd_last_error());
    return rc;
}

void msd_classifier_describe(const struct msd_classifier_config *g, char *buf, size_t n) {
    const int r4 = g->res / 4;
    snprintf(buf, n,
             "input %dx%dx%d in [-1, 1]; conv3x3 %d->%d GN SiLU; conv3x3 %d->%d GN SiLU down2; conv3x3 %d->%d "
             "GN SiLU down2; conv3x3 %d->%d GN SiLU; flatten %d -> linear %d SiLU (features); linear %d->%d "
             "(logits); GroupNorm %d groups",
             g->in_channels, g->res, g->res, g->in_channels, g->c1, g->c1, g->c1, g->c1, g->c2, g->c2, g->c2,
             g->c2 * r4 * r4, g->features, g->features, g->classes, g->groups);
}

// ---------------------------------------------------------------------------------------------------
// Structure: conv layer i maps cin[i] -> cout[i] channels at resolution res[i]; layers 1 and 2 end
// in a down2.

struct layer_dims { int cin, cout, res; };

static struct layer_dims dims(const struct msd_classifier_config *g, int i) {
    switch (i) {
    case 0: return (struct layer_dims){g->in_channels, g->c1, g->res};
    case 1: return (struct layer_dims){g->c1, g->c1, g->res};
    case 2: return (struct layer_dims){g->c1, g->c2, g->res / 2};
    default: return (struct layer_dims){g->c2, g->c2, g->res / 4};
    }
}

static size_t add_param(struct msd_classifier *c, const char *name, int ndim, const int *shape,
                        enum msd_init init, int fan_in, int fan_out) {
    CHECK(c->n_params < MSD_CLS_PARAMS, "classifier parameter table full");
    struct msd_param *p = &c->params[c->n_params++];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = ndim;
    p->numel = 1;
    for (int i = 0; i < ndim; i++) p->shape[i] = shape[i], p->numel *= (size_t)shape[i];
    p->offset = c->n_floats;
    c->n_floats += p->numel;
    p->init = init;
    p->init_scale = 1;
    p->fan_in = fan_in;
    p->fan_out = fan_out;
    p->owner = MSD_OWNER_SHARED;
    return p->offset;
}

int msd_classifier_create(struct msd_classifier *c, const struct msd_classifier_config *cfg,
                          const struct msd_backend *be) {
    memset(c, 0, sizeof *c);
    if (msd_classifier_validate(cfg) < 0) return -1;
    c->cfg = *cfg;
    c->be = be;
    char n[32];
    for (int i = 0; i < MSD_CLS_CONVS; i++) {
        const struct layer_dims d = dims(cfg, i);
        struct msd_conv *cv = &c->conv[i];
        *cv = (struct msd_conv){0, 0, d.cin, d.cout, 3};
        snprintf(n, sizeof n, "conv%d.weight", i);
        cv->w = add_param(c, n, 4, (int[]){d.cout, d.cin, 3, 3}, MSD_INIT_XAVIER, d.cin * 9, d.cout * 9);
        snprintf(n, sizeof n, "conv%d.bias", i);
        cv->b = add_param(c, n, 1, (int[]){d.cout}, MSD_INIT_ZERO, 0, 0);
        struct msd_norm *nm = &c->norm[i];
        *nm = (struct msd_norm){0, 0, d.cout, cfg->groups};
        snprintf(n, sizeof n, "norm%d.weight", i);
        nm->w = add_param(c, n, 1, (int[]){d.cout}, MSD_INIT_ONE, 0, 0);
        snprintf(n, sizeof n, "norm%d.bias", i);
        nm->b = add_param(c, n, 1, (int[]){d.cout}, MSD_INIT_ZERO, 0, 0);
    }
    const int flat = cfg->c2 * (cfg->res / 4) * (cfg->res / 4);
    c->fc = (struct msd_linear){0, 0, flat, cfg->features};
    c->fc.w = add_param(c, "fc.weight", 2, (int[]){cfg->features, flat}, MSD_INIT_XAVIER, flat, cfg->features);
    c->fc.b = add_param(c, "fc.bias", 1, (int[]){cfg->features}, MSD_INIT_ZERO, 0, 0);
    c->head = (struct msd_linear){0, 0, cfg->features, cfg->classes};
    c->head.w = add_param(c, "head.weight", 2, (int[]){cfg->classes, cfg->features}, MSD_INIT_XAVIER,
                          cfg->features, cfg->classes);
    c->head.b = add_param(c, "head.bias", 1, (int[]){cfg->classes}, MSD_INIT_ZERO, 0, 0);
    CHECK(c->n_params == MSD_CLS_PARAMS, "classifier table has %d parameters", c->n_params);
    c->w = be->alloc(c->n_floats);
    if (!c->w) {
        const size_t nf = c->n_floats;
        memset(c, 0, sizeof *c);
        return msd_set_error("cannot allocate %.1f MB for the classifier's %zu parameters on backend %s",
                             nf * 4.0 / 1e6, nf, be->name);
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------------
// The activation arena: every layer's output is kept for the backward pass.

struct msd_cls_acts {
    int N;
    bool with_grad;
    float *arena;       // backend memory holding everything below but the host buffers
    const float *x;     // the forward pass's input: (N, C, R, R)
    float *h[MSD_CLS_CONVS];    // conv i's output: (N, cout, res, res)
    float *mean[MSD_CLS_CONVS]; // groupnorm i's statistics: (N, groups)
    float *rstd[MSD_CLS_CONVS];
    float *g[MSD_CLS_CONVS];    // groupnorm i's output, SiLU's input: (N, cout, res, res)
    float *a[MSD_CLS_CONVS];    // SiLU's output: (N, cout, res, res)
    float *p1, *p2;     // down2(a[1]): (N, c1, R/2, R/2); down2(a[2]): (N, c2, R/4, R/4)
    float *fpre, *feat; // fc's output and its SiLU, the features: (N, FEAT)
    float *logits;      // (N, classes)
    float *xb;          // an uploaded batch: (N, C, R, R)
    // with_grad only
    float *dlogits;     // (N, classes)
    float *d0, *d1;     // backward ping-pong, each the largest activation
    float *host_logits, *host_dlogits; // host memory: (N, classes) each
};

static size_t act_size(const struct msd_classifier_config *g, int i, int N) {
    const struct layer_dims d = dims(g, i);
    return (size_t)N * d.cout * d.res * d.res;
}

static void plan_all(const struct msd_classifier *c, struct msd_arena_plan *p, struct msd_cls_acts *A,
                     int N, bool with_grad) {
    const struct msd_classifier_config *g = &c->cfg;
    const size_t M = (size_t)g->in_channels * g->res * g->res;
    size_t big = (size_t)N * g->features;
    for (int i = 0; i < MSD_CLS_CONVS; i++) {
        const size_t s = act_size(g, i, N);
        A->h[i] = msd_arena_take(p, s);
        A->mean[i] = msd_arena_take(p, (size_t)N * g->groups);
        A->rstd[i] = msd_arena_take(p, (size_t)N * g->groups);
        A->g[i] = msd_arena_take(p, s);
        A->a[i] = msd_arena_take(p, s);
        if (s > big) big = s;
    }
    A->p1 = msd_arena_take(p, act_size(g, 1, N) / 4);
    A->p2 = msd_arena_take(p, act_size(g, 2, N) / 4);
    A->fpre = msd_arena_take(p, (size_t)N * g->features);
    A->feat = msd_arena_take(p, (size_t)N * g->features);
    A->logits = msd_arena_take(p, (size_t)N * g->classes);
    A->xb = msd_arena_take(p, (size_t)N * M);
    if ((size_t)N * M > big) big = (size_t)N * M;
    if (with_grad) {
        A->dlogits = msd_arena_take(p, (size_t)N * g->classes);
        A->d0 = msd_arena_take(p, big);
        A->d1 = msd_arena_take(p, big);
    }
}

static void release_acts(struct msd_classifier *c) {
    struct msd_cls_acts *A = c->acts;
    if (!A) return;
    if (A->arena) c->be->release(A->arena);
    free(A->host_logits);
    free(A->host_dlogits);
    free(A);
    c->acts = NULL;
}

int msd_classifier_plan(struct msd_classifier *c, int N, bool with_grad) {
    CHECK(N >= 0, "batch %d", N);
    if (c->acts && c->acts->N == N && c->acts->with_grad == with_grad) return 0;
    release_acts(c);
    if (N == 0) return 0;
    const struct msd_backend *be = c->be;
    if (with_grad && !c->grad) {
        c->grad = be->alloc(c->n_floats);
        c->adam_m = be->alloc(c->n_floats);
        c->adam_v = be->alloc(c->n_floats);
        if (!c->grad || !c->adam_m || !c->adam_v)
            return msd_set_error("cannot allocate %.1f MB for the classifier's gradients and Adam moments on "
                                 "backend %s", 3.0 * c->n_floats * 4 / 1e6, be->name);
        be->fill(c->adam_m, 0.0f, c->n_floats);
        be->fill(c->adam_v, 0.0f, c->n_floats);
        c->adam_step = 0;
    }
    struct msd_cls_acts *A = xcalloc(1, sizeof *A);
    struct msd_arena_plan p = {NULL, 0};
    plan_all(c, &p, A, N, with_grad);
    const size_t total = p.used;
    p = (struct msd_arena_plan){be->alloc(total), 0};
    if (!p.base) {
        free(A);
        return msd_set_error("cannot allocate %.1f MB of classifier activations for batch %d on backend %s",
                             total * 4.0 / 1e6, N, be->name);
    }
    plan_all(c, &p, A, N, with_grad);
    A->arena = p.base;
    A->N = N;
    A->with_grad = with_grad;
    c->acts = A;
    // rows are independent (every op is per sample), so a short last chunk may leave stale rows:
    // zeros at first, never uninitialised memory
    be->fill(A->xb, 0.0f, (size_t)N * c->cfg.in_channels * c->cfg.res * c->cfg.res);
    if (with_grad) {
        A->host_logits = xmalloc((size_t)N * c->cfg.classes * sizeof(float));
        A->host_dlogits = xmalloc((size_t)N * c->cfg.classes * sizeof(float));
    }
    return 0;
}

int msd_classifier_batch(const struct msd_classifier *c) { return c->acts ? c->acts->N : 0; }

void msd_classifier_free(struct msd_classifier *c) {
    if (!c->be) return;
    release_acts(c);
    float *bufs[] = {c->w, c->grad, c->adam_m, c->adam_v};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) c->be->release(bufs[i]);
    memset(c, 0, sizeof *c);
}

void msd_classifier_init(struct msd_classifier *c, uint64_t seed) {
    float *host = xmalloc(c->n_floats * sizeof(float));
    msd_params_init(c->params, c->n_params, host, seed);
    c->be->upload(c->w, host, c->n_floats);
    free(host);
    if (c->adam_m) {
        c->be->fill(c->adam_m, 0.0f, c->n_floats);
        c->be->fill(c->adam_v, 0.0f, c->n_floats);
    }
    c->adam_step = 0;
}

// ---------------------------------------------------------------------------------------------------
// Forward

void msd_classifier_forward(struct msd_classifier *c, float *logits, float *features, const float *x) {
    const struct msd_backend *be = c->be;
    struct msd_cls_acts *A = c->acts;
    CHECK(A != NULL, "msd_classifier_forward before msd_classifier_plan");
    const int N = A->N, G = c->cfg.groups;
    const float *w = c->w;
    A->x = x;
    const float *in = x;
    for (int i = 0; i < MSD_CLS_CONVS; i++) {
        const struct layer_dims d = dims(&c->cfg, i);
        const int HW = d.res * d.res;
        const struct msd_conv *cv = &c->conv[i];
        const struct msd_norm *nm = &c->norm[i];
        be->conv2d_forward(A->h[i], in, w + cv->w, w + cv->b, N, d.cin, d.res, d.res, d.cout, 3);
        be->groupnorm_forward(A->g[i], A->mean[i], A->rstd[i], A->h[i], w + nm->w, w + nm->b, N, d.cout, HW, G,
                              GN_EPS);
        be->silu_forward(A->a[i], A->g[i], (size_t)N * d.cout * HW);
        in = A->a[i];
        if (i == 1 || i == 2) { // halve the resolution: the next layer reads p1 or p2
            float *p = i == 1 ? A->p1 : A->p2;
            be->down2_forward(p, A->a[i], N, d.cout, d.res, d.res);
            in = p;
        }
    }
    // a[3]: (N, c2, R/4, R/4) is contiguous, so it is already the flattened (N, c2 (R/4)^2)
    be->linear_forward(A->fpre, A->a[3], w + c->fc.w, w + c->fc.b, N, c->fc.in, c->fc.out);
    be->silu_forward(A->feat, A->fpre, (size_t)N * c->fc.out);
    be->linear_forward(A->logits, A->feat, w + c->head.w, w + c->head.b, N, c->head.in, c->head.out);
    if (logits) be->copy(logits, A->logits, (size_t)N * c->cfg.classes);
    if (features) be->copy(features, A->feat, (size_t)N * c->cfg.features);
}

// ---------------------------------------------------------------------------------------------------
// Backward: the forward pass in reverse, through d0 and d1 in turn. Each step's comment quotes the
// forward line it inverts.

void msd_classifier_backward(struct msd_classifier *c, float *dx, const float *dlogits) {
    const struct msd_backend *be = c->be;
    struct msd_cls_acts *A = c->acts;
    CHECK(A != NULL && A->with_grad && c->grad != NULL, "msd_classifier_backward needs a plan with gradients");
    const int N = A->N, G = c->cfg.groups;
    const float *w = c->w;
    float *gr = c->grad;
    float *cur = A->d0, *other = A->d1, *t;
#define SWAP() (t = cur, cur = other, other = t)
    // logits = linear(feat; head): dfeat into cur
    be->linear_backward(cur, gr + c->head.w, gr + c->head.b, dlogits, A->feat, w + c->head.w, N, c->head.in,
                        c->head.out);
    // feat = silu(fpre): in place
    be->silu_backward(cur, cur, A->fpre, (size_t)N * c->fc.out);
    // fpre = linear(a[3]; fc): da[3] into other
    be->linear_backward(other, gr + c->fc.w, gr + c->fc.b, cur, A->a[3], w + c->fc.w, N, c->fc.in, c->fc.out);
    SWAP(); // cur = da[3]
    for (int i = MSD_CLS_CONVS - 1; i >= 0; i--) {
        const struct layer_dims d = dims(&c->cfg, i);
        const int HW = d.res * d.res;
        const struct msd_conv *cv = &c->conv[i];
        const struct msd_norm *nm = &c->norm[i];
        // a[i] = silu(g[i]): in place
        be->silu_backward(cur, cur, A->g[i], (size_t)N * d.cout * HW);
        // g[i] = groupnorm(h[i]): dh into other
        be->groupnorm_backward(other, gr + nm->w, gr + nm->b, cur, A->mean[i], A->rstd[i], A->h[i], w + nm->w,
                               N, d.cout, HW, G);
        SWAP(); // cur = dh[i]
        // h[i] = conv(in[i]): in[i] is x, a[0], p1 = down2(a[1]) or p2 = down2(a[2])
        const float *in = i == 0 ? A->x : i == 1 ? A->a[0] : i == 2 ? A->p1 : A->p2;
        float *din = i == 0 ? dx : other;
        be->conv2d_backward(din, gr + cv->w, gr + cv->b, cur, in, w + cv->w, N, d.cin, d.res, d.res, d.cout, 3);
        if (i == 0) break;
        SWAP(); // cur = d in[i]
        if (i == 2 || i == 3) {
            // in[i] = down2(a[i - 1]) at twice this resolution: da[i - 1] into other
            const struct layer_dims up = dims(&c->cfg, i - 1);
            be->down2_backward(other, cur, N, up.cout, up.res, up.res);
            SWAP();
        }
    }
#undef SWAP
}

// ---------------------------------------------------------------------------------------------------
// The loss

double msd_softmax_xent(const float *logits, const uint8_t *labels, int N, int K, float *dlogits,
                        int *correct) {
    double total = 0.0;
    int right = 0;
    for (int n = 0; n < N; n++) {
        const float *z = logits + (size_t)n * K;
        CHECK(labels[n] < K, "label %d of row %d is not below the %d classes", labels[n], n, K);
        int best = 0;
        for (int k = 1; k < K; k++)
            if (z[k] > z[best]) best = k;
        right += best == labels[n];
        // log-sum-exp shifted by the largest logit, so nothing overflows
        double sum = 0.0;
        for (int k = 0; k < K; k++) sum += exp((double)z[k] - z[best]);
        const double lse = z[best] + log(sum);
        total += lse - z[labels[n]];
        if (dlogits)
            for (int k = 0; k < K; k++) {
                // L = (1/N) sum_n (lse_n - z[n, y_n]), so dL/dz[n, k] = (softmax_k - [k == y_n]) / N
                const double p = exp((double)z[k] - lse);
                dlogits[(size_t)n * K + k] = (float)((p - (k == labels[n])) / N);
            }
    }
    if (correct) *correct = right;
    return N > 0 ? total / N : 0.0;
}

// ---------------------------------------------------------------------------------------------------
// Host-level use

int msd_classifier_train_step(struct msd_classifier *c, const float *x, const uint8_t *labels, float lr,
                              struct msd_cls_step *info) {
    const struct msd_backend *be = c->be;
    struct msd_cls_acts *A = c->acts;
    if (!A || !A->with_grad) return msd_set_error("classifier train step: not planned for training");
    const int N = A->N, K = c->cfg.classes;
    for (int n = 0; n < N; n++)
        if (labels[n] >= K)
            return msd_set_error("classifier train step: label %d of image %d, expected 0..%d", labels[n], n,
                                 K - 1);
    be->upload(A->xb, x, (size_t)N * c->cfg.in_channels * c->cfg.res * c->cfg.res);
    msd_classifier_forward(c, NULL, NULL, A->xb);
    be->download(A->host_logits, A->logits, (size_t)N * K);
    int correct;
    const double loss = msd_softmax_xent(A->host_logits, labels, N, K, A->host_dlogits, &correct);
    if (!isfinite(loss))
        return msd_set_error("classifier step %ld: the loss is %g; the weights are left as before this step",
                             c->adam_step + 1, loss);
    be->upload(A->dlogits, A->host_dlogits, (size_t)N * K);
    be->fill(c->grad, 0.0f, c->n_floats);
    msd_classifier_backward(c, NULL, A->dlogits);
    be->adam(c->w, c->adam_m, c->adam_v, c->grad, lr, ADAM_BETA1, ADAM_BETA2, ADAM_EPS, ++c->adam_step,
             c->n_floats);
    if (info) *info = (struct msd_cls_step){loss, correct};
    return 0;
}

int msd_classifier_predict(struct msd_classifier *c, float *logits, float *features, const float *x, int n) {
    const struct msd_backend *be = c->be;
    struct msd_cls_acts *A = c->acts;
    if (!A) return msd_set_error("classifier predict: not planned (call msd_classifier_plan first)");
    const int B = A->N, K = c->cfg.classes, F = c->cfg.features;
    const size_t M = (size_t)c->cfg.in_channels * c->cfg.res * c->cfg.res;
    for (int first = 0; first < n; first += B) {
        const int real = n - first < B ? n - first : B;
        // the rows past `real` hold an earlier chunk or zeros: each row's result depends on its row only
        be->upload(A->xb, x + (size_t)first * M, (size_t)real * M);
        msd_classifier_forward(c, NULL, NULL, A->xb);
        if (logits) be->download(logits + (size_t)first * K, A->logits, (size_t)real * K);
        if (features) be->download(features + (size_t)first * F, A->feat, (size_t)real * F);
    }
    return 0;
}

int msd_classifier_evaluate(struct msd_classifier *c, const struct msd_dataset *d, double *accuracy,
                            double *loss) {
    const struct msd_classifier_config *g = &c->cfg;
    if (!d->labels) return msd_set_error("data '%s' has no labels: a classifier is evaluated on a labelled set "
                                         "(fmnist:test, cifar10:test:DIR)", d->source);
    if (d->channels != g->in_channels || d->res != g->res)
        return msd_set_error("data '%s' has %dx%dx%d images, the classifier takes %dx%dx%d", d->source,
                             d->channels, d->res, d->res, g->in_channels, g->res, g->res);
    const int B = msd_classifier_batch(c);
    if (B <= 0) return msd_set_error("classifier evaluate: not planned (call msd_classifier_plan first)");
    const size_t M = (size_t)g->in_channels * g->res * g->res;
    float *x = xmalloc((size_t)B * M * sizeof(float)), *z = xmalloc((size_t)B * g->classes * sizeof(float));
    double sum = 0.0;
    long right = 0;
    int rc = 0;
    for (int first = 0; rc == 0 && first < d->n; first += B) {
        const int real = d->n - first < B ? d->n - first : B;
        msd_data_images(d, x, first, real);
        rc = msd_classifier_predict(c, z, NULL, x, real);
        for (int n = 0; rc == 0 && n < real; n++)
            if (d->labels[first + n] >= g->classes)
                rc = msd_set_error("data '%s': label %d of image %d, the classifier has %d classes", d->source,
                                   d->labels[first + n], first + n, g->classes);
        if (rc) break;
        int ok;
        sum += msd_softmax_xent(z, d->labels + first, real, g->classes, NULL, &ok) * real;
        right += ok;
    }
    free(x);
    free(z);
    if (rc) return rc;
    if (accuracy) *accuracy = d->n ? (double)right / d->n : 0.0;
    if (loss) *loss = d->n ? sum / d->n : 0.0;
    return 0;
}

// ---------------------------------------------------------------------------------------------------
// Files

int msd_classifier_save(const struct msd_classifier *c, const char *path, const char *const *meta_keys,
                        const char *const *meta_values, int n_meta) {
    float *host = xmalloc(c->n_floats * sizeof(float));
    c->be->download(host, c->w, c->n_floats);
    if (msd_params_check_finite(c->params, c->n_params, host, "classifier", path, ", nothing was written") < 0) {
        free(host);
        return -1;
    }
    struct msd_st_entry e[MSD_CLS_PARAMS];
    for (int i = 0; i < c->n_params; i++) {
        const struct msd_param *p = &c->params[i];
        e[i] = (struct msd_st_entry){.name = p->name, .ndim = p->ndim, .data = host + p->offset};
        for (int k = 0; k < p->ndim; k++) e[i].shape[k] = p->shape[k];
    }
    char *config = msd_classifier_config_to_json(&c->cfg), arch[512];
    msd_classifier_describe(&c->cfg, arch, sizeof arch);
    const char **keys = xmalloc((size_t)(n_meta + 2) * sizeof *keys);
    const char **values = xmalloc((size_t)(n_meta + 2) * sizeof *values);
    keys[0] = "classifier", values[0] = config;
    keys[1] = "architecture", values[1] = arch;
    for (int i = 0; i < n_meta; i++) keys[i + 2] = meta_keys[i], values[i + 2] = meta_values[i];
    const int rc = msd_st_write(path, e, c->n_params, keys, values, n_meta + 2);
    free(keys);
    free(values);
    free(config);
    free(host);
    return rc;
}

static const struct msd_param *find_param(const struct msd_classifier *c, const char *name) {
    for (int i = 0; i < c->n_params; i++)
        if (!strcmp(c->params[i].name, name)) return &c->params[i];
    return NULL;
}

int msd_classifier_load(struct msd_classifier *c, const char *path, const struct msd_backend *be) {
    memset(c, 0, sizeof *c);
    struct msd_st_file f;
    if (msd_st_read_as(&f, path, "classifier") < 0) return -1;
    const char *json = msd_st_meta(&f, "classifier");
    struct msd_classifier_config cfg;
    int rc = 0;
    if (!json)
        rc = msd_set_error("classifier '%s': no \"classifier\" in __metadata__ (expected the classifier config "
                           "as JSON, as msdiff classifier train writes it; is this a diffusion checkpoint?)",
                           path);
    if (rc == 0 && (msd_classifier_config_from_json(&cfg, json, path) < 0 || msd_classifier_create(c, &cfg, be) < 0))
        rc = -1;
    float *host = rc == 0 ? xmalloc(c->n_floats * sizeof(float)) : NULL;
    for (int i = 0; rc == 0 && i < c->n_params; i++) {
        const struct msd_param *p = &c->params[i];
        int64_t shape[4];
        for (int k = 0; k < p->ndim; k++) shape[k] = p->shape[k];
        rc = msd_st_get_f32(&f, p->name, p->ndim, shape, host + p->offset); // names file, tensor, shapes
    }
    if (rc == 0) rc = msd_params_check_finite(c->params, c->n_params, host, "classifier", path, "");
    for (int i = 0; rc == 0 && i < f.n_tensors; i++)
        if (!find_param(c, f.tensors[i].name))
            rc = msd_set_error("classifier '%s': unexpected tensor '%s' (the config in the file has %d tensors: "
                               "conv0..conv3, norm0..norm3, fc and head, each .weight and .bias)",
                               path, f.tensors[i].name, MSD_CLS_PARAMS);
    if (rc == 0) be->upload(c->w, host, c->n_floats);
    free(host);
    msd_st_free(&f);
    if (rc < 0) msd_classifier_free(c);
    return rc;
}
