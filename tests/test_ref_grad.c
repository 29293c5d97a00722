// test_ref_grad.c: every ref/ op with a backward pass, checked against finite differences.
//
// For each op and each shape (a regular one and an awkward one: odd channel counts, 7x7 maps,
// batch 1) the analytic gradient of every input and parameter is compared with a fourth-order central
// difference of L = sum r * y accumulated in double (tests/testutil.c, check_op_gradients), after the
// gradient convention is checked (parameters accumulate, inputs are written). Each line printed is
// "fd <op> <tensor> worst rel err ...", so that a run shows how far inside FD_TOL each gradient is.
#include <stdio.h>

#include "common/core/backend.h"
#include "common/core/rng.h"
#include "testutil.h"

static const struct msd_backend *be = &msd_backend_ref;

static float *tensor(size_t n, uint64_t seed) {
    float *p = tbuf_new(n);
    fill_uniform(p, n, seed, -1.0f, 1.0f);
    return p;
}

// The tensors of a layer y = f(x; w, b): x, w and (with a bias) b in [-1, 1] from seed, seed + 1 and
// seed + 2, their gradient buffers, and the list check_op_gradients takes (x written, w and b
// accumulated).
struct layer {
    float *x, *w, *b, *dx, *dw, *db;
    struct grad_tensor t[3];
    int nt;
};

static void layer_new(struct layer *l, size_t nx, size_t nw, size_t nb, int bias, uint64_t seed) {
    l->x = tensor(nx, seed), l->dx = tbuf_new(nx);
    l->w = tensor(nw, seed + 1), l->dw = tbuf_new(nw);
    l->b = bias ? tensor(nb, seed + 2) : NULL, l->db = bias ? tbuf_new(nb) : NULL;
    l->t[0] = (struct grad_tensor){"x", l->x, l->dx, nx, 0};
    l->t[1] = (struct grad_tensor){"w", l->w, l->dw, nw, 1};
    l->t[2] = (struct grad_tensor){"b", l->b, l->db, nb, 1};
    l->nt = bias ? 3 : 2;
}

static void layer_free(struct layer *l) {
    tbuf_free(l->x), tbuf_free(l->w), tbuf_free(l->b), tbuf_free(l->dx), tbuf_free(l->dw), tbuf_free(l->db);
}

// ---------------------------------------------------------------------------------------------------
// conv2d

struct conv_ctx {
    int N, C, H, W, OC, K;
    struct layer l;
};

static void conv_fwd(void *p, float *y) {
    struct conv_ctx *c = p;
    be->conv2d_forward(y, c->l.x, c->l.w, c->l.b, c->N, c->C, c->H, c->W, c->OC, c->K);
}

static void conv_bwd(void *p, const float *dy) {
    struct conv_ctx *c = p;
    be->conv2d_backward(c->l.dx, c->l.dw, c->l.db, dy, c->l.x, c->l.w, c->N, c->C, c->H, c->W, c->OC, c->K);
}

static void check_conv(int N, int C, int H, int W, int OC, int K, int bias, uint64_t seed) {
    struct conv_ctx c = {N, C, H, W, OC, K, {0}};
    const size_t ny = (size_t)N * OC * H * W;
    layer_new(&c.l, (size_t)N * C * H * W, (size_t)OC * C * K * K, OC, bias, seed);
    float *y = tbuf_new(ny);
    char name[96];
    snprintf(name, sizeof name, "conv2d K=%d %s (%d,%d,%d,%d)->%d", K, bias ? "bias" : "nobias", N, C,
             H, W, OC);
    check_op_gradients(name, conv_fwd, conv_bwd, &c, y, ny, c.l.t, c.l.nt, seed);
    layer_free(&c.l), tbuf_free(y);
}

START_TEST(grad_conv2d) {
    check_conv(2, 4, 6, 5, 8, 3, 1, 100);
    check_conv(1, 3, 7, 7, 5, 3, 1, 110); // odd channels, 7x7, batch 1
    check_conv(3, 5, 4, 4, 3, 1, 1, 120); // 1x1 (the skip, qkv and proj convs)
    check_conv(1, 3, 7, 7, 2, 3, 0, 130); // no bias
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// resampling

struct resample_ctx {
    int N, C, H, W, up;
    float *x, *dx;
};

static void resample_fwd(void *p, float *y) {
    struct resample_ctx *c = p;
    if (c->up) be->up2_forward(y, c->x, c->N, c->C, c->H, c->W);
    else be->down2_forward(y, c->x, c->N, c->C, c->H, c->W);
}

static void resample_bwd(void *p, const float *dy) {
    struct resample_ctx *c = p;
    if (c->up) be->up2_backward(c->dx, dy, c->N, c->C, c->H, c->W);
    else be->down2_backward(c->dx, dy, c->N, c->C, c->H, c->W);
}

static void check_resample(int up, int N, int C, int H, int W, uint64_t seed) {
    struct resample_ctx c = {N, C, H, W, up, NULL, NULL};
    size_t nx = (size_t)N * C * H * W, ny = up ? nx * 4 : nx / 4;
    c.x = tensor(nx, seed);
    c.dx = tbuf_new(nx);
    float *y = tbuf_new(ny);
    struct grad_tensor t[] = {{"x", c.x, c.dx, nx, 0}};
    char name[96];
    snprintf(name, sizeof name, "%s (%d,%d,%d,%d)", up ? "up2" : "down2", N, C, H, W);
    check_op_gradients(name, resample_fwd, resample_bwd, &c, y, ny, t, 1, seed);
    tbuf_free(c.x), tbuf_free(c.dx), tbuf_free(y);
}

START_TEST(grad_resample) {
    check_resample(0, 2, 3, 8, 6, 200);
    check_resample(0, 1, 5, 14, 14, 210); // 14x14 -> 7x7, as in the mini U-Net
    check_resample(1, 2, 3, 4, 5, 220);
    check_resample(1, 1, 5, 7, 7, 230); // 7x7 -> 14x14
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// groupnorm

struct gn_ctx {
    int N, C, HW, G;
    float *x, *gamma, *beta, *dx, *dgamma, *dbeta, *mean, *rstd;
};

static void gn_fwd(void *p, float *y) {
    struct gn_ctx *c = p;
    be->groupnorm_forward(y, c->mean, c->rstd, c->x, c->gamma, c->beta, c->N, c->C, c->HW, c->G, 1e-6f);
}

static void gn_bwd(void *p, const float *dy) {
    struct gn_ctx *c = p;
    float *y = tbuf_new((size_t)c->N * c->C * c->HW);
    gn_fwd(p, y); // fills mean and rstd
    be->groupnorm_backward(c->dx, c->dgamma, c->dbeta, dy, c->mean, c->rstd, c->x, c->gamma, c->N,
                           c->C, c->HW, c->G);
    tbuf_free(y);
}

static void check_gn(int N, int C, int HW, int G, uint64_t seed) {
    struct gn_ctx c = {N, C, HW, G, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    size_t nx = (size_t)N * C * HW;
    c.x = tensor(nx, seed);
    c.gamma = tensor(C, seed + 1);
    c.beta = tensor(C, seed + 2);
    c.dx = tbuf_new(nx);
    c.dgamma = tbuf_new(C);
    c.dbeta = tbuf_new(C);
    c.mean = tbuf_new((size_t)N * G);
    c.rstd = tbuf_new((size_t)N * G);
    float *y = tbuf_new(nx);
    struct grad_tensor t[] = {
        {"x", c.x, c.dx, nx, 0}, {"gamma", c.gamma, c.dgamma, C, 1}, {"beta", c.beta, c.dbeta, C, 1}};
    char name[96];
    snprintf(name, sizeof name, "groupnorm G=%d (%d,%d,%d)", G, N, C, HW);
    check_op_gradients(name, gn_fwd, gn_bwd, &c, y, nx, t, 3, seed);
    tbuf_check(c.mean, (size_t)N * G, "mean");
    tbuf_check(c.rstd, (size_t)N * G, "rstd");
    tbuf_free(c.x), tbuf_free(c.gamma), tbuf_free(c.beta), tbuf_free(c.dx), tbuf_free(c.dgamma);
    tbuf_free(c.dbeta), tbuf_free(c.mean), tbuf_free(c.rstd), tbuf_free(y);
}

START_TEST(grad_groupnorm) {
    check_gn(2, 8, 16, 2, 300);
    check_gn(1, 12, 49, 3, 310); // 7x7, groups of 4 channels as min(16, C/4) gives
    check_gn(2, 5, 9, 1, 320);   // one group over an odd channel count
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// linear

struct linear_ctx {
    int N, IN, OUT;
    struct layer l;
};

static void linear_fwd(void *p, float *y) {
    struct linear_ctx *c = p;
    be->linear_forward(y, c->l.x, c->l.w, c->l.b, c->N, c->IN, c->OUT);
}

static void linear_bwd(void *p, const float *dy) {
    struct linear_ctx *c = p;
    be->linear_backward(c->l.dx, c->l.dw, c->l.db, dy, c->l.x, c->l.w, c->N, c->IN, c->OUT);
}

static void check_linear(int N, int IN, int OUT, int bias, uint64_t seed) {
    struct linear_ctx c = {N, IN, OUT, {0}};
    const size_t ny = (size_t)N * OUT;
    layer_new(&c.l, (size_t)N * IN, (size_t)OUT * IN, OUT, bias, seed);
    float *y = tbuf_new(ny);
    char name[96];
    snprintf(name, sizeof name, "linear %s (%d,%d)->%d", bias ? "bias" : "nobias", N, IN, OUT);
    check_op_gradients(name, linear_fwd, linear_bwd, &c, y, ny, c.l.t, c.l.nt, seed);
    layer_free(&c.l), tbuf_free(y);
}

START_TEST(grad_linear) {
    check_linear(4, 8, 32, 1, 400);
    check_linear(1, 7, 5, 1, 410);
    check_linear(3, 5, 9, 0, 420);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// silu, dropout, bias_add: ops on one input tensor

struct unary_ctx {
    int kind; // 0 silu, 1 dropout, 2 bias_add (x is the bias, the base tensor is fixed)
    int N, C, HW;
    float p;
    float *x, *dx, *base;
};

static void unary_fwd(void *p, float *y) {
    struct unary_ctx *c = p;
    size_t n = (size_t)c->N * c->C * c->HW;
    if (c->kind == 0) be->silu_forward(y, c->x, n);
    if (c->kind == 1) be->dropout_forward(y, c->x, c->p, 77, MSD_STREAM_DROPOUT_TEST, n);
    if (c->kind == 2) be->bias_add_forward(y, c->base, c->x, c->N, c->C, c->HW);
}

static void unary_bwd(void *p, const float *dy) {
    struct unary_ctx *c = p;
    size_t n = (size_t)c->N * c->C * c->HW;
    if (c->kind == 0) be->silu_backward(c->dx, dy, c->x, n);
    if (c->kind == 1) be->dropout_backward(c->dx, dy, c->p, 77, MSD_STREAM_DROPOUT_TEST, n);
    if (c->kind == 2) be->bias_add_backward(c->dx, dy, c->N, c->C, c->HW);
}

static void check_unary(int kind, int N, int C, int HW, uint64_t seed) {
    static const char *names[] = {"silu", "dropout p=0.3", "bias_add"};
    struct unary_ctx c = {kind, N, C, HW, 0.3f, NULL, NULL, NULL};
    size_t ny = (size_t)N * C * HW, nx = kind == 2 ? (size_t)N * C : ny;
    c.x = tbuf_new(nx);
    fill_uniform(c.x, nx, seed, -4.0f, 4.0f); // silu's curvature lives in [-4, 4]
    c.dx = tbuf_new(nx);
    c.base = tensor(ny, seed + 1);
    float *y = tbuf_new(ny);
    struct grad_tensor t[] = {{kind == 2 ? "bias" : "x", c.x, c.dx, nx, 0}};
    char name[96];
    snprintf(name, sizeof name, "%s (%d,%d,%d)", names[kind], N, C, HW);
    check_op_gradients(name, unary_fwd, unary_bwd, &c, y, ny, t, 1, seed);
    tbuf_free(c.x), tbuf_free(c.dx), tbuf_free(c.base), tbuf_free(y);
}

START_TEST(grad_elementwise) {
    for (int kind = 0; kind < 3; kind++) {
        check_unary(kind, 2, 4, 16, 500 + 10 * kind);
        check_unary(kind, 1, 3, 49, 505 + 10 * kind);
    }
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// concat (its backward is the split)

struct concat_ctx {
    int N, CA, CB, HW;
    float *a, *b, *da, *db;
};

static void concat_fwd(void *p, float *y) {
    struct concat_ctx *c = p;
    be->concat_forward(y, c->a, c->b, c->N, c->CA, c->CB, c->HW);
}

static void concat_bwd(void *p, const float *dy) {
    struct concat_ctx *c = p;
    be->concat_backward(c->da, c->db, dy, c->N, c->CA, c->CB, c->HW);
}

static void check_concat(int N, int CA, int CB, int HW, uint64_t seed) {
    struct concat_ctx c = {N, CA, CB, HW, NULL, NULL, NULL, NULL};
    size_t na = (size_t)N * CA * HW, nb = (size_t)N * CB * HW;
    c.a = tensor(na, seed);
    c.b = tensor(nb, seed + 1);
    c.da = tbuf_new(na);
    c.db = tbuf_new(nb);
    float *y = tbuf_new(na + nb);
    struct grad_tensor t[] = {{"a", c.a, c.da, na, 0}, {"b", c.b, c.db, nb, 0}};
    char name[96];
    snprintf(name, sizeof name, "concat (%d,%d+%d,%d)", N, CA, CB, HW);
    check_op_gradients(name, concat_fwd, concat_bwd, &c, y, na + nb, t, 2, seed);
    tbuf_free(c.a), tbuf_free(c.b), tbuf_free(c.da), tbuf_free(c.db), tbuf_free(y);
}

START_TEST(grad_concat) {
    check_concat(2, 4, 8, 16, 600);
    check_concat(1, 3, 5, 49, 610);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// attention core

struct attn_ctx {
    int N, C, HW;
    float *qkv, *dqkv, *w;
};

static void attn_fwd(void *p, float *a) {
    struct attn_ctx *c = p;
    be->attention_forward(a, c->w, c->qkv, c->N, c->C, c->HW);
}

static void attn_bwd(void *p, const float *da) {
    struct attn_ctx *c = p;
    float *a = tbuf_new((size_t)c->N * c->C * c->HW);
    attn_fwd(p, a); // fills the saved weights
    be->attention_backward(c->dqkv, da, c->w, c->qkv, c->N, c->C, c->HW);
    tbuf_free(a);
}

static void check_attn(int N, int C, int HW, uint64_t seed) {
    struct attn_ctx c = {N, C, HW, NULL, NULL, NULL};
    size_t nqkv = (size_t)N * 3 * C * HW, na = (size_t)N * C * HW;
    c.qkv = tbuf_new(nqkv);
    fill_uniform(c.qkv, nqkv, seed, -1.5f, 1.5f); // logits of order one: a softmax far from uniform
    c.dqkv = tbuf_new(nqkv);
    c.w = tbuf_new((size_t)N * HW * HW);
    float *a = tbuf_new(na);
    struct grad_tensor t[] = {{"qkv", c.qkv, c.dqkv, nqkv, 0}};
    char name[96];
    snprintf(name, sizeof name, "attention (%d,%d,%d)", N, C, HW);
    check_op_gradients(name, attn_fwd, attn_bwd, &c, a, na, t, 1, seed);
    tbuf_check(c.w, (size_t)N * HW * HW, "attention weights");
    tbuf_free(c.qkv), tbuf_free(c.dqkv), tbuf_free(c.w), tbuf_free(a);
}

START_TEST(grad_attention) {
    check_attn(2, 4, 16, 700);
    check_attn(1, 5, 49, 710); // odd channels, 7x7 positions, batch 1
}
END_TEST

int main(void) {
    const TTest *tests[] = {
        grad_conv2d, grad_resample, grad_groupnorm, grad_linear, grad_elementwise, grad_concat,
        grad_attention,
    };
    return run_tests("ref gradients", 120, tests, TEST_COUNT(tests));
}
