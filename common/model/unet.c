// unet.c: the U-Net's forward and backward passes over the backend table, and the activation arena
// they run in.
//
// Every tensor operation here is a call through m->be, so the same code runs on ref, fast and cuda.
// Structure and names come from model.c; this file only moves data through the layers.
//
// What is kept from the forward pass (per block, struct msd_block_act): conv outputs that cannot be
// recomputed cheaply, attention tensors and normalisation statistics. Normalised and activated
// inputs, resampled inputs and decoder concatenations are recomputed in the backward pass into
// shared scratch buffers (t1..t3), which costs a few elementwise passes and saves most of the memory.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/core/error.h"
#include "model.h"
#include "common/core/rng.h"
#include "common/core/util.h"

#define GN_EPS 1e-6f
#define SKIP_SCALE 0.70710678118654752f // EDM's skip_scale = sqrt(1/2)

struct msd_acts {
    int N;
    bool with_grad;
    float *arena;
    size_t size;
    // mapping network: (N, C) and (N, E)
    float *pe, *l0, *s0, *l1, *emb;
    float *conv_in_out;      // (N, model_channels, R, R): skip 0
    float *head_mean, *head_rstd;
    float *cat;              // a decoder block's input: concat(x, skip)
    float *t1, *t2, *t3;     // forward/recompute scratch, each `big` floats
    const float *x_in;       // the forward pass's input, kept for the backward pass
    // backward only
    float *g1, *g2, *g3, *dcur, *dnext, *dcat; // each `big` floats
    float *demb, *demb_tmp, *ds0; // (N, E)
    float *deb;              // (N, max cout)
    int n_skips;
    float *dskip[MSD_MAX_LEVELS * 16];
};

// ---------------------------------------------------------------------------------------------------
// Planning: one pass counts, a second assigns pointers into the single backend allocation.

struct plan {
    float *base; // NULL while counting
    size_t used;
};

static float *take(struct plan *p, size_t n) {
    float *ptr = p->base ? p->base + p->used : NULL;
    p->used += (n + 15) & ~(size_t)15; // 64-byte aligned pieces
    return ptr;
}

static size_t hw(int res) { return (size_t)res * res; }

// The largest tensor any block or head touches: every scratch buffer has this size.
static size_t biggest(const struct msd_model *m, int N) {
    size_t big = (size_t)N * m->cfg.model_channels * hw(m->cfg.img_resolution);
    for (int s = 0; s < m->cfg.n_stages; s++) {
        for (int pass = 0; pass < 2; pass++) {
            const struct msd_block *blocks = pass ? m->dec[s].blocks : m->enc[m->cfg.separate ? s : 0].blocks;
            int nb = pass ? m->dec[s].n_blocks : m->enc[m->cfg.separate ? s : 0].n_blocks;
            for (int i = 0; i < nb; i++) {
                const struct msd_block *k = &blocks[i];
                size_t r = hw(k->res_in) > hw(k->res_out) ? hw(k->res_in) : hw(k->res_out);
                size_t a = (size_t)N * k->cin * r, b = (size_t)N * 3 * k->cout * hw(k->res_out);
                if (a > big) big = a;
                if (b > big) big = b;
            }
        }
        size_t head = (size_t)N * m->dec[s].aux_norm.c * hw(m->cfg.img_resolution);
        if (head > big) big = head;
    }
    return big;
}

// Block i of each of `count` structures (decoders of all stages, or encoders) shares one set of
// activation buffers, sized for the largest of them.
static void plan_block(struct plan *p, struct msd_block **ks, int count, int N) {
    size_t g0 = 0, g1 = 0, g2 = 0, co = 0, out = 0, qkv = 0, attw = 0;
    bool attn = false;
    for (int j = 0; j < count; j++) {
        const struct msd_block *k = ks[j];
        size_t o = (size_t)N * k->cout * hw(k->res_out);
#define MAX(a, b) ((a) > (b) ? (a) : (b))
        g0 = MAX(g0, (size_t)N * k->norm0.groups);
        g1 = MAX(g1, (size_t)N * k->norm1.groups);
        g2 = MAX(g2, (size_t)N * k->norm2.groups);
        co = MAX(co, (size_t)N * k->cout);
        out = MAX(out, o);
        if (k->attn) {
            attn = true;
            qkv = MAX(qkv, 3 * o);
            attw = MAX(attw, (size_t)N * hw(k->res_out) * hw(k->res_out));
        }
#undef MAX
    }
    struct msd_block_act a = {0};
    a.mean0 = take(p, g0), a.rstd0 = take(p, g0);
    a.mean1 = take(p, g1), a.rstd1 = take(p, g1);
    a.emb_bias = take(p, co);
    a.h = take(p, out);
    a.out = take(p, out);
    a.o = a.out;
    if (attn) {
        a.mean2 = take(p, g2), a.rstd2 = take(p, g2);
        a.o = take(p, out);
        a.qkv = take(p, qkv);
        a.attw = take(p, attw);
        a.a = take(p, out);
    }
    for (int j = 0; j < count; j++) ks[j]->act = a;
}

static void plan_all(struct msd_model *m, struct plan *p, struct msd_acts *A, int N, bool with_grad) {
    const struct msd_config *c = &m->cfg;
    const size_t C = c->model_channels, E = C * c->channel_mult_emb, R2 = hw(c->img_resolution);
    const size_t big = biggest(m, N);
    A->pe = take(p, N * C);
    A->l0 = take(p, N * E), A->s0 = take(p, N * E), A->l1 = take(p, N * E), A->emb = take(p, N * E);
    A->conv_in_out = take(p, N * C * R2);
    A->head_mean = take(p, (size_t)N * c->gn_groups), A->head_rstd = take(p, (size_t)N * c->gn_groups);
    A->cat = take(p, big);
    A->t1 = take(p, big), A->t2 = take(p, big), A->t3 = take(p, big);
    struct msd_block *ks[MSD_MAX_STAGES];
    const struct msd_encoder *e0 = &m->enc[0];
    for (int i = 0; i < e0->n_blocks; i++) {
        for (int e = 0; e < m->n_encoders; e++) ks[e] = &m->enc[e].blocks[i];
        plan_block(p, ks, m->n_encoders, N);
    }
    for (int i = 0; i < m->dec[0].n_blocks; i++) {
        for (int s = 0; s < c->n_stages; s++) ks[s] = &m->dec[s].blocks[i];
        plan_block(p, ks, c->n_stages, N);
    }
    if (!with_grad) return;
    A->g1 = take(p, big), A->g2 = take(p, big), A->g3 = take(p, big);
    A->dcur = take(p, big), A->dnext = take(p, big), A->dcat = take(p, big);
    A->demb = take(p, N * E), A->demb_tmp = take(p, N * E), A->ds0 = take(p, N * E);
    size_t max_cout = 0;
    for (int s = 0; s < c->n_stages; s++)
        for (int i = 0; i < m->dec[s].n_blocks; i++)
            if ((size_t)m->dec[s].blocks[i].cout > max_cout) max_cout = m->dec[s].blocks[i].cout;
    for (int i = 0; i < e0->n_blocks; i++)
        if ((size_t)e0->blocks[i].cout > max_cout) max_cout = e0->blocks[i].cout;
    A->deb = take(p, N * max_cout);
    // one gradient buffer per skip: skip 0 is conv_in's output, skip i+1 encoder block i's
    A->n_skips = e0->n_blocks + 1;
    A->dskip[0] = take(p, N * C * R2);
    for (int i = 0; i < e0->n_blocks; i++) {
        const struct msd_block *k = &e0->blocks[i];
        A->dskip[i + 1] = take(p, (size_t)N * k->cout * hw(k->res_out));
    }
}

int msd_model_batch(const struct msd_model *m) { return m->acts ? m->acts->N : 0; }

int msd_model_plan(struct msd_model *m, int N, bool with_grad) {
    struct msd_acts *A = m->acts;
    if (A && A->N == N && (A->with_grad || !with_grad) && (m->grad || !with_grad)) return 0;
    if (A) {
        m->be->release(A->arena);
        free(A);
        m->acts = NULL;
    }
    if (N <= 0) return 0;
    A = xcalloc(1, sizeof *A);
    struct plan p = {NULL, 0};
    plan_all(m, &p, A, N, with_grad);
    A->size = p.used;
    A->arena = m->be->alloc(p.used);
    if (!A->arena) {
        free(A);
        return msd_set_error("cannot allocate %.1f MB of activations for batch %d (try a smaller --batch)",
                             p.used * 4.0 / 1e6, N);
    }
    p = (struct plan){A->arena, 0};
    plan_all(m, &p, A, N, with_grad);
    A->N = N;
    A->with_grad = with_grad;
    A->arena = p.base;
    A->size = p.used;
    m->acts = A;
    if (with_grad && !m->grad) {
        m->grad = m->be->alloc(m->n_floats);
        if (!m->grad) return msd_set_error("cannot allocate %.1f MB of gradients", m->n_floats * 4.0 / 1e6);
        m->be->fill(m->grad, 0.0f, m->n_floats);
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------------
// Layers: thin wrappers that turn a layer's parameter offsets into pointers.

#define W(off) (m->w + (off))
#define G(off) (m->grad + (off))

static void conv_fwd(struct msd_model *m, const struct msd_conv *c, float *y, const float *x, int N, int res) {
    m->be->conv2d_forward(y, x, W(c->w), W(c->b), N, c->cin, res, res, c->cout, c->k);
}

static void conv_bwd(struct msd_model *m, const struct msd_conv *c, float *dx, const float *dy,
                     const float *x, int N, int res) {
    m->be->conv2d_backward(dx, G(c->w), G(c->b), dy, x, W(c->w), N, c->cin, res, res, c->cout, c->k);
}

static void norm_fwd(struct msd_model *m, const struct msd_norm *g, float *y, float *mean, float *rstd,
                     const float *x, int N, int res) {
    m->be->groupnorm_forward(y, mean, rstd, x, W(g->w), W(g->b), N, g->c, (int)hw(res), g->groups, GN_EPS);
}

static void norm_bwd(struct msd_model *m, const struct msd_norm *g, float *dx, const float *dy,
                     const float *mean, const float *rstd, const float *x, int N, int res) {
    m->be->groupnorm_backward(dx, G(g->w), G(g->b), dy, mean, rstd, x, W(g->w), N, g->c, (int)hw(res),
                              g->groups);
}

static void resample_fwd(struct msd_model *m, enum msd_resample rs, float *y, const float *x, int N,
                         int C, int res_in) {
    if (rs == MSD_RESAMPLE_DOWN) m->be->down2_forward(y, x, N, C, res_in, res_in);
    else m->be->up2_forward(y, x, N, C, res_in, res_in);
}

static void resample_bwd(struct msd_model *m, enum msd_resample rs, float *dx, const float *dy, int N,
                         int C, int res_in) {
    if (rs == MSD_RESAMPLE_DOWN) m->be->down2_backward(dx, dy, N, C, res_in, res_in);
    else m->be->up2_backward(dx, dy, N, C, res_in, res_in);
}

static bool dropout_on(const struct msd_model *m, const struct msd_forward_opts *o) {
    return o->train && m->cfg.dropout > 0.0f;
}

static uint64_t dropout_stream(const struct msd_block *k) { return MSD_STREAM_DROPOUT + k->dropout_id; }

// ---------------------------------------------------------------------------------------------------
// UNetBlock

// The residual branch's input to conv0: silu(norm0(x)), resampled when the block resamples.
// Leaves silu's input in t1 (the backward pass needs it) and returns conv0's input (t2 or t3).
static float *block_conv0_input(struct msd_model *m, struct msd_block *k, const float *x, int N) {
    struct msd_acts *A = m->acts;
    const size_t n_in = (size_t)N * k->cin * hw(k->res_in);
    norm_fwd(m, &k->norm0, A->t1, k->act.mean0, k->act.rstd0, x, N, k->res_in);
    m->be->silu_forward(A->t2, A->t1, n_in);
    if (k->resample == MSD_RESAMPLE_NONE) return A->t2;
    resample_fwd(m, k->resample, A->t3, A->t2, N, k->cin, k->res_in);
    return A->t3;
}

// conv1's input: dropout(silu(norm1(h))); silu's input is left in t2. Returns t1.
static float *block_conv1_input(struct msd_model *m, struct msd_block *k, int N,
                                const struct msd_forward_opts *o) {
    struct msd_acts *A = m->acts;
    const size_t n_out = (size_t)N * k->cout * hw(k->res_out);
    norm_fwd(m, &k->norm1, A->t2, k->act.mean1, k->act.rstd1, k->act.h, N, k->res_out);
    m->be->silu_forward(A->t1, A->t2, n_out);
    if (dropout_on(m, o))
        m->be->dropout_forward(A->t1, A->t1, m->cfg.dropout, o->dropout_seed, dropout_stream(k), n_out);
    return A->t1;
}

// The skip path's input: x, or x resampled into t3.
static const float *block_skip_input(struct msd_model *m, struct msd_block *k, const float *x, int N) {
    if (k->resample == MSD_RESAMPLE_NONE) return x;
    resample_fwd(m, k->resample, m->acts->t3, x, N, k->cin, k->res_in);
    return m->acts->t3;
}

// x: (N, cin, res_in, res_in) -> k->act.out: (N, cout, res_out, res_out). emb: (N, E).
static void block_forward(struct msd_model *m, struct msd_block *k, const float *x, const float *emb,
                          int N, const struct msd_forward_opts *o) {
    struct msd_acts *A = m->acts;
    const struct msd_backend *be = m->be;
    const int r = k->res_out;
    const size_t n_out = (size_t)N * k->cout * hw(r);
    // h = conv0(silu(norm0(x))) + affine(emb)[:, :, None, None]
    conv_fwd(m, &k->conv0, k->act.h, block_conv0_input(m, k, x, N), N, r);
    be->linear_forward(k->act.emb_bias, emb, W(k->affine.w), W(k->affine.b), N, k->affine.in, k->affine.out);
    be->bias_add_forward(k->act.h, k->act.h, k->act.emb_bias, N, k->cout, (int)hw(r));
    // o = (conv1(dropout(silu(norm1(h)))) + skip(x)) * sqrt(1/2)
    float *in1 = block_conv1_input(m, k, N, o);
    conv_fwd(m, &k->conv1, A->t2, in1, N, r);
    const float *skip = x;
    if (k->has_skip) {
        conv_fwd(m, &k->skip, A->t1, block_skip_input(m, k, x, N), N, r);
        skip = A->t1;
    }
    be->add(k->act.o, A->t2, skip, n_out);
    be->scale(k->act.o, k->act.o, SKIP_SCALE, n_out);
    if (!k->attn) return;
    // out = (proj(attention(qkv(norm2(o)))) + o) * sqrt(1/2)
    norm_fwd(m, &k->norm2, A->t1, k->act.mean2, k->act.rstd2, k->act.o, N, r);
    conv_fwd(m, &k->qkv, k->act.qkv, A->t1, N, r);
    be->attention_forward(k->act.a, k->act.attw, k->act.qkv, N, k->cout, (int)hw(r));
    conv_fwd(m, &k->proj, A->t1, k->act.a, N, r);
    be->add(k->act.out, A->t1, k->act.o, n_out);
    be->scale(k->act.out, k->act.out, SKIP_SCALE, n_out);
}

// dout: (N, cout, res_out, res_out) (unchanged) -> dx: (N, cin, res_in, res_in) written; parameter
// gradients accumulate; demb accumulates this block's share. Each step names the forward line it
// inverts.
static void block_backward(struct msd_model *m, struct msd_block *k, float *dx, const float *dout,
                           const float *x, const float *emb, int N, const struct msd_forward_opts *o) {
    struct msd_acts *A = m->acts;
    const struct msd_backend *be = m->be;
    const int r = k->res_out;
    const size_t n_out = (size_t)N * k->cout * hw(r), n_in = (size_t)N * k->cin * hw(k->res_in);
    const float *d_o = dout; // gradient at o
    if (k->attn) {
        // out = (proj(a) + o) s: both terms get dout * s
        be->scale(A->g1, dout, SKIP_SCALE, n_out);
        conv_bwd(m, &k->proj, A->g2, A->g1, k->act.a, N, r);                   // g2 = da
        be->attention_backward(A->g3, A->g2, k->act.attw, k->act.qkv, N, k->cout, (int)hw(r));
        norm_fwd(m, &k->norm2, A->t1, k->act.mean2, k->act.rstd2, k->act.o, N, r); // recompute
        conv_bwd(m, &k->qkv, A->g2, A->g3, A->t1, N, r);                      // g2 = d norm2(o)
        norm_bwd(m, &k->norm2, A->g3, A->g2, k->act.mean2, k->act.rstd2, k->act.o, N, r);
        be->axpby(A->g1, 1.0f, A->g3, 1.0f, n_out);                           // g1 = d o
        d_o = A->g1;
    }
    // o = (conv1(...) + skip(x)) s: both terms get d_o * s (into g1)
    be->scale(A->g1, d_o, SKIP_SCALE, n_out);
    float *in1 = block_conv1_input(m, k, N, o);                               // recompute; t2 = norm1(h)
    conv_bwd(m, &k->conv1, A->g2, A->g1, in1, N, r);
    if (dropout_on(m, o))
        be->dropout_backward(A->g2, A->g2, m->cfg.dropout, o->dropout_seed, dropout_stream(k), n_out);
    be->silu_backward(A->g2, A->g2, A->t2, n_out);
    norm_bwd(m, &k->norm1, A->g3, A->g2, k->act.mean1, k->act.rstd1, k->act.h, N, r); // g3 = dh
    // h = conv0(..) + emb_bias: the bias gets the spatial sum, affine passes it on to emb
    be->bias_add_backward(A->deb, A->g3, N, k->cout, (int)hw(r));
    be->linear_backward(A->demb_tmp, G(k->affine.w), G(k->affine.b), A->deb, emb, W(k->affine.w), N,
                        k->affine.in, k->affine.out);
    be->axpby(A->demb, 1.0f, A->demb_tmp, 1.0f, (size_t)N * k->affine.in);
    // conv0(resample(silu(norm0(x)))): recompute conv0's input, then go back through it
    float *in0 = block_conv0_input(m, k, x, N);                                // t1 = norm0(x)
    conv_bwd(m, &k->conv0, A->g2, A->g3, in0, N, r);
    float *dsilu = A->g2;
    if (k->resample != MSD_RESAMPLE_NONE) {
        resample_bwd(m, k->resample, A->g3, A->g2, N, k->cin, k->res_in);
        dsilu = A->g3;
    }
    be->silu_backward(dsilu, dsilu, A->t1, n_in);
    norm_bwd(m, &k->norm0, dx, dsilu, k->act.mean0, k->act.rstd0, x, N, k->res_in);
    // the skip path adds its gradient to dx
    if (!k->has_skip) {
        be->axpby(dx, 1.0f, A->g1, 1.0f, n_in);
        return;
    }
    const float *xs = block_skip_input(m, k, x, N);
    conv_bwd(m, &k->skip, A->g2, A->g1, xs, N, r);
    const float *dxs = A->g2;
    if (k->resample != MSD_RESAMPLE_NONE) {
        resample_bwd(m, k->resample, A->g3, A->g2, N, k->cin, k->res_in);
        dxs = A->g3;
    }
    be->axpby(dx, 1.0f, dxs, 1.0f, n_in);
}

// ---------------------------------------------------------------------------------------------------
// The whole network

static struct msd_encoder *encoder_of(struct msd_model *m, int stage) {
    return &m->enc[m->cfg.separate ? stage : 0];
}

// The output of skip j: conv_in's for j = 0, encoder block j-1's after.
static const float *skip_of(struct msd_model *m, const struct msd_encoder *e, int j) {
    return j == 0 ? m->acts->conv_in_out : e->blocks[j - 1].act.out;
}

// A decoder block's input: x, or concat(x, skip j) built in acts->cat.
static const float *dec_input(struct msd_model *m, const struct msd_encoder *e, const struct msd_block *k,
                              const float *x, int j, int N) {
    if (!k->cat_channels) return x;
    m->be->concat_forward(m->acts->cat, x, skip_of(m, e, j), N, k->cin - k->cat_channels, k->cat_channels,
                          (int)hw(k->res_in));
    return m->acts->cat;
}

void msd_unet_forward(struct msd_model *m, int stage, float *out, const float *x_in,
                      const float *c_noise, const struct msd_forward_opts *o) {
    struct msd_acts *A = m->acts;
    const struct msd_backend *be = m->be;
    const int N = A->N, R = m->cfg.img_resolution;
    struct msd_encoder *e = encoder_of(m, stage);
    struct msd_decoder *d = &m->dec[stage];
    A->x_in = x_in;
    // mapping: emb = silu(map1(silu(map0(posemb(c_noise)))))
    be->posemb_forward(A->pe, c_noise, N, e->map0.in);
    be->linear_forward(A->l0, A->pe, W(e->map0.w), W(e->map0.b), N, e->map0.in, e->map0.out);
    be->silu_forward(A->s0, A->l0, (size_t)N * e->map0.out);
    be->linear_forward(A->l1, A->s0, W(e->map1.w), W(e->map1.b), N, e->map1.in, e->map1.out);
    be->silu_forward(A->emb, A->l1, (size_t)N * e->map1.out);
    // encoder: every output is a skip
    conv_fwd(m, &e->conv_in, A->conv_in_out, x_in, N, R);
    const float *x = A->conv_in_out;
    for (int i = 0; i < e->n_blocks; i++) {
        block_forward(m, &e->blocks[i], x, A->emb, N, o);
        x = e->blocks[i].act.out;
    }
    // decoder: blocks that concatenate pop the skips from the last
    int j = e->n_blocks + 1;
    for (int i = 0; i < d->n_blocks; i++) {
        struct msd_block *k = &d->blocks[i];
        const float *in = dec_input(m, e, k, x, k->cat_channels ? --j : j, N);
        block_forward(m, k, in, A->emb, N, o);
        x = k->act.out;
    }
    // head: aux_conv(silu(aux_norm(x)))
    const size_t n = (size_t)N * d->aux_norm.c * hw(R);
    norm_fwd(m, &d->aux_norm, A->t1, A->head_mean, A->head_rstd, x, N, R);
    be->silu_forward(A->t2, A->t1, n);
    conv_fwd(m, &d->aux_conv, out, A->t2, N, R);
}

void msd_unet_backward(struct msd_model *m, int stage, float *dx_in, const float *dout,
                       const struct msd_forward_opts *o) {
    struct msd_acts *A = m->acts;
    const struct msd_backend *be = m->be;
    const int N = A->N, R = m->cfg.img_resolution;
    struct msd_encoder *e = encoder_of(m, stage);
    struct msd_decoder *d = &m->dec[stage];
    CHECK(A->with_grad, "msd_unet_backward needs a plan made with gradients");
    const size_t E = e->map1.out;
    be->fill(A->demb, 0.0f, (size_t)N * E);
    // head: out = aux_conv(silu(aux_norm(x_last)))
    const float *x_last = d->blocks[d->n_blocks - 1].act.out;
    const size_t n = (size_t)N * d->aux_norm.c * hw(R);
    norm_fwd(m, &d->aux_norm, A->t1, A->head_mean, A->head_rstd, x_last, N, R);
    be->silu_forward(A->t2, A->t1, n);
    conv_bwd(m, &d->aux_conv, A->g2, dout, A->t2, N, R);
    be->silu_backward(A->g2, A->g2, A->t1, n);
    norm_bwd(m, &d->aux_norm, A->dcur, A->g2, A->head_mean, A->head_rstd, x_last, N, R);
    // decoder, last block first; a block that concatenated splits its input gradient into the
    // previous block's part and its skip's part
    int j = 0; // the last decoder block popped skip 0; going backwards the skips come in order
    for (int i = d->n_blocks - 1; i >= 0; i--) {
        struct msd_block *k = &d->blocks[i];
        const float *prev = i > 0 ? d->blocks[i - 1].act.out : e->blocks[e->n_blocks - 1].act.out;
        const float *in = dec_input(m, e, k, prev, j, N);
        block_backward(m, k, k->cat_channels ? A->dcat : A->dnext, A->dcur, in, A->emb, N, o);
        if (k->cat_channels) {
            be->concat_backward(A->dnext, A->dskip[j], A->dcat, N, k->cin - k->cat_channels,
                                k->cat_channels, (int)hw(k->res_in));
            j++;
        }
        float *t = A->dcur;
        A->dcur = A->dnext;
        A->dnext = t;
    }
    // the decoder's input was the encoder's last output, which is also the last skip
    const int last = e->n_blocks;
    const struct msd_block *kl = &e->blocks[last - 1];
    be->axpby(A->dskip[last], 1.0f, A->dcur, 1.0f, (size_t)N * kl->cout * hw(kl->res_out));
    // encoder, last block first: block i's output is skip i+1, its input skip i
    for (int i = e->n_blocks - 1; i >= 0; i--) {
        struct msd_block *k = &e->blocks[i];
        block_backward(m, k, A->dnext, A->dskip[i + 1], skip_of(m, e, i), A->emb, N, o);
        be->axpby(A->dskip[i], 1.0f, A->dnext, 1.0f, (size_t)N * k->cin * hw(k->res_in));
    }
    conv_bwd(m, &e->conv_in, dx_in, A->dskip[0], A->x_in, N, R);
    // mapping: emb = silu(l1), l1 = map1(s0), s0 = silu(l0), l0 = map0(pe)
    be->silu_backward(A->demb, A->demb, A->l1, (size_t)N * E);
    be->linear_backward(A->ds0, G(e->map1.w), G(e->map1.b), A->demb, A->s0, W(e->map1.w), N,
                        e->map1.in, e->map1.out);
    be->silu_backward(A->ds0, A->ds0, A->l0, (size_t)N * e->map0.out);
    be->linear_backward(NULL, G(e->map0.w), G(e->map0.b), A->ds0, A->pe, W(e->map0.w), N, e->map0.in,
                        e->map0.out);
}
