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
// The backward pass keeps its gradients in three more scratch buffers (g1..g3). The code never uses
// t1..g3 by those names alone: each intermediate gets a local name for what it holds (norm0_x,
// d_norm1_h, ...) pointing at the buffer it lives in, declared where it is produced; a buffer whose
// content is spent is reused under the name of its new content.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/core/arena.h"
#include "common/core/error.h"
#include "common/core/rng.h"
#include "common/core/util.h"
#include "model.h"

#define GN_EPS 1e-6f
#define SKIP_SCALE 0.70710678118654752f // EDM's skip_scale = sqrt(1/2)

struct msd_acts {
    int N;
    bool with_grad;
    float *arena;
    size_t size;
    // mapping network, emb = silu(l1), l1 = map1(s0), s0 = silu(l0), l0 = map0(pe): pe (N, C), the
    // others (N, E)
    float *pe, *l0, *s0, *l1, *emb;
    float *conv_in_out;      // (N, model_channels, R, R): skip 0
    float *head_mean, *head_rstd; // aux_norm's statistics: (N, groups)
    float *cat;              // a decoder block's input: concat(x, skip)
    float *t1, *t2, *t3;     // forward/recompute scratch, each `big` floats
    // backward only
    float *g1, *g2, *g3;     // gradient scratch of a block or the head, each `big` floats
    float *d_ping, *d_pong;  // gradients at the decoder's running activation, alternating between
                             // a block's output and its input; each `big` floats
    float *d_cat;            // a concatenating block's input gradient, `big` floats
    float *d_emb;            // (N, E): dL/demb, every block's share summed
    float *d_emb_part;       // (N, E): one block's share
    float *d_s0;             // (N, E): dL/ds0
    float *d_emb_bias;       // (N, max cout): dL/d affine(emb) of one block
    int n_skips;
    float *dskip[MSD_MAX_LEVELS * 16]; // dL/d skip j, same shape as skip j
};

// ---------------------------------------------------------------------------------------------------
// Planning: one pass counts, a second assigns pointers into the single backend allocation
// (common/core/arena.h).

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
static void plan_block(struct msd_arena_plan *p, struct msd_block **ks, int count, int N) {
    size_t g0 = 0, g1 = 0, g2 = 0, co = 0, out = 0, qkv = 0, attw = 0;
    bool attn = false;
    for (int j = 0; j < count; j++) {
        const struct msd_block *k = ks[j];
        size_t n_out = (size_t)N * k->cout * hw(k->res_out);
#define MAX(a, b) ((a) > (b) ? (a) : (b))
        g0 = MAX(g0, (size_t)N * k->norm0.groups);
        g1 = MAX(g1, (size_t)N * k->norm1.groups);
        g2 = MAX(g2, (size_t)N * k->norm2.groups);
        co = MAX(co, (size_t)N * k->cout);
        out = MAX(out, n_out);
        if (k->attn) {
            attn = true;
            qkv = MAX(qkv, 3 * n_out);
            attw = MAX(attw, (size_t)N * hw(k->res_out) * hw(k->res_out));
        }
#undef MAX
    }
    struct msd_block_act a = {0};
    a.mean0 = msd_arena_take(p, g0), a.rstd0 = msd_arena_take(p, g0);
    a.mean1 = msd_arena_take(p, g1), a.rstd1 = msd_arena_take(p, g1);
    a.emb_bias = msd_arena_take(p, co);
    a.h = msd_arena_take(p, out);
    a.out = msd_arena_take(p, out);
    a.resid = a.out;
    if (attn) {
        a.mean2 = msd_arena_take(p, g2), a.rstd2 = msd_arena_take(p, g2);
        a.resid = msd_arena_take(p, out);
        a.qkv = msd_arena_take(p, qkv);
        a.attw = msd_arena_take(p, attw);
        a.a = msd_arena_take(p, out);
    }
    for (int j = 0; j < count; j++) ks[j]->act = a;
}

static void plan_all(struct msd_model *m, struct msd_arena_plan *p, struct msd_acts *A, int N,
                     bool with_grad) {
    const struct msd_config *c = &m->cfg;
    const size_t C = c->model_channels, E = C * c->channel_mult_emb, R2 = hw(c->img_resolution);
    const size_t big = biggest(m, N);
    A->pe = msd_arena_take(p, N * C);
    A->l0 = msd_arena_take(p, N * E), A->s0 = msd_arena_take(p, N * E);
    A->l1 = msd_arena_take(p, N * E), A->emb = msd_arena_take(p, N * E);
    A->conv_in_out = msd_arena_take(p, N * C * R2);
    A->head_mean = msd_arena_take(p, (size_t)N * c->gn_groups);
    A->head_rstd = msd_arena_take(p, (size_t)N * c->gn_groups);
    A->cat = msd_arena_take(p, big);
    A->t1 = msd_arena_take(p, big), A->t2 = msd_arena_take(p, big), A->t3 = msd_arena_take(p, big);
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
    A->g1 = msd_arena_take(p, big), A->g2 = msd_arena_take(p, big), A->g3 = msd_arena_take(p, big);
    A->d_ping = msd_arena_take(p, big), A->d_pong = msd_arena_take(p, big), A->d_cat = msd_arena_take(p, big);
    A->d_emb = msd_arena_take(p, N * E), A->d_emb_part = msd_arena_take(p, N * E);
    A->d_s0 = msd_arena_take(p, N * E);
    size_t max_cout = 0;
    for (int s = 0; s < c->n_stages; s++)
        for (int i = 0; i < m->dec[s].n_blocks; i++)
            if ((size_t)m->dec[s].blocks[i].cout > max_cout) max_cout = m->dec[s].blocks[i].cout;
    for (int i = 0; i < e0->n_blocks; i++)
        if ((size_t)e0->blocks[i].cout > max_cout) max_cout = e0->blocks[i].cout;
    A->d_emb_bias = msd_arena_take(p, N * max_cout);
    // one gradient buffer per skip: skip 0 is conv_in's output, skip i+1 encoder block i's
    A->n_skips = e0->n_blocks + 1;
    A->dskip[0] = msd_arena_take(p, N * C * R2);
    for (int i = 0; i < e0->n_blocks; i++) {
        const struct msd_block *k = &e0->blocks[i];
        A->dskip[i + 1] = msd_arena_take(p, (size_t)N * k->cout * hw(k->res_out));
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
    struct msd_arena_plan p = {NULL, 0};
    plan_all(m, &p, A, N, with_grad);
    A->size = p.used;
    A->arena = m->be->alloc(p.used);
    if (!A->arena) {
        free(A);
        // no hint here: whether the batch can change is the caller's to say (a resumed run's cannot)
        return msd_set_error("cannot allocate %.1f MB of activations for a batch of %d images on backend %s",
                             p.used * 4.0 / 1e6, N, m->be->name);
    }
    p = (struct msd_arena_plan){A->arena, 0};
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

static bool dropout_on(const struct msd_model *m, const struct msd_forward_opts *opts) {
    return opts->train && m->cfg.dropout > 0.0f;
}

static uint64_t dropout_stream(const struct msd_block *k) { return MSD_STREAM_DROPOUT + k->dropout_id; }

// ---------------------------------------------------------------------------------------------------
// UNetBlock
//
//   h     = conv0(resample(silu(norm0(x)))) + affine(emb)[:, :, None, None]
//   resid = (conv1(dropout(silu(norm1(h)))) + skip(resample(x))) * sqrt(1/2)   (skip: 1x1 conv or identity)
//   out   = (proj(attention(qkv(norm2(resid)))) + resid) * sqrt(1/2)          (attention blocks; else resid)
// The three helpers below compute the inputs of conv0, conv1 and skip; the forward pass calls them once
// and the backward pass again, to recompute what it did not keep. Each writes into scratch buffers
// the caller names, and returns (or writes) the conv's input.

// conv0's input, silu(norm0(x)) resampled when the block resamples. x: (N, cin, res_in, res_in).
// norm0_x receives norm0(x) (silu's input, which the backward pass needs) and silu0 silu(norm0(x)),
// both shaped like x; resampled: (N, cin, res_out, res_out) receives its resampled copy, and is left
// alone when the block does not resample. Returns silu0 or resampled.
static const float *block_conv0_input(struct msd_model *m, struct msd_block *k, float *norm0_x, float *silu0,
                                      float *resampled, const float *x, int N) {
    const size_t n_in = (size_t)N * k->cin * hw(k->res_in);
    norm_fwd(m, &k->norm0, norm0_x, k->act.mean0, k->act.rstd0, x, N, k->res_in);
    m->be->silu_forward(silu0, norm0_x, n_in);
    if (k->resample == MSD_RESAMPLE_NONE) return silu0;
    resample_fwd(m, k->resample, resampled, silu0, N, k->cin, k->res_in);
    return resampled;
}

// conv1's input conv1_in = dropout(silu(norm1(h))), and norm1_h = norm1(h) (silu's input, which the
// backward pass needs); both (N, cout, res_out, res_out).
static void block_conv1_input(struct msd_model *m, struct msd_block *k, float *conv1_in, float *norm1_h,
                              int N, const struct msd_forward_opts *opts) {
    const size_t n_out = (size_t)N * k->cout * hw(k->res_out);
    norm_fwd(m, &k->norm1, norm1_h, k->act.mean1, k->act.rstd1, k->act.h, N, k->res_out);
    m->be->silu_forward(conv1_in, norm1_h, n_out);
    if (dropout_on(m, opts))
        m->be->dropout_forward(conv1_in, conv1_in, m->cfg.dropout, opts->dropout_seed, dropout_stream(k),
                               n_out);
}

// The skip path's input: x, or x resampled into resampled: (N, cin, res_out, res_out). Returns which.
static const float *block_skip_input(struct msd_model *m, struct msd_block *k, float *resampled,
                                     const float *x, int N) {
    if (k->resample == MSD_RESAMPLE_NONE) return x;
    resample_fwd(m, k->resample, resampled, x, N, k->cin, k->res_in);
    return resampled;
}

// x: (N, cin, res_in, res_in) -> k->act.out: (N, cout, res_out, res_out). emb: (N, E).
static void block_forward(struct msd_model *m, struct msd_block *k, const float *x, const float *emb,
                          int N, const struct msd_forward_opts *opts) {
    struct msd_acts *A = m->acts;
    const struct msd_backend *be = m->be;
    const int r = k->res_out;
    const size_t n_out = (size_t)N * k->cout * hw(r);
    // h = conv0(resample(silu(norm0(x)))) + affine(emb)[:, :, None, None]
    float *norm0_x = A->t1, *silu0 = A->t2, *silu0_resampled = A->t3;
    const float *conv0_in = block_conv0_input(m, k, norm0_x, silu0, silu0_resampled, x, N);
    conv_fwd(m, &k->conv0, k->act.h, conv0_in, N, r);
    be->linear_forward(k->act.emb_bias, emb, W(k->affine.w), W(k->affine.b), N, k->affine.in, k->affine.out);
    be->bias_add_forward(k->act.h, k->act.h, k->act.emb_bias, N, k->cout, (int)hw(r));
    // resid = (conv1(dropout(silu(norm1(h)))) + skip(x)) * sqrt(1/2)
    float *conv1_in = A->t1, *norm1_h = A->t2;
    block_conv1_input(m, k, conv1_in, norm1_h, N, opts);
    float *conv1_out = A->t2; // norm1_h is spent
    conv_fwd(m, &k->conv1, conv1_out, conv1_in, N, r);
    const float *skip_out = x;
    if (k->has_skip) {
        float *skip_conv_out = A->t1, *x_resampled = A->t3; // conv1_in and silu0_resampled are spent
        conv_fwd(m, &k->skip, skip_conv_out, block_skip_input(m, k, x_resampled, x, N), N, r);
        skip_out = skip_conv_out;
    }
    be->add(k->act.resid, conv1_out, skip_out, n_out);
    be->scale(k->act.resid, k->act.resid, SKIP_SCALE, n_out);
    if (!k->attn) return;
    // out = (proj(attention(qkv(norm2(resid)))) + resid) * sqrt(1/2)
    float *norm2_resid = A->t1;
    norm_fwd(m, &k->norm2, norm2_resid, k->act.mean2, k->act.rstd2, k->act.resid, N, r);
    conv_fwd(m, &k->qkv, k->act.qkv, norm2_resid, N, r);
    be->attention_forward(k->act.a, k->act.attw, k->act.qkv, N, k->cout, (int)hw(r));
    float *proj_out = A->t1; // norm2_resid is spent
    conv_fwd(m, &k->proj, proj_out, k->act.a, N, r);
    be->add(k->act.out, proj_out, k->act.resid, n_out);
    be->scale(k->act.out, k->act.out, SKIP_SCALE, n_out);
}

// dout: (N, cout, res_out, res_out) (unchanged) -> dx: (N, cin, res_in, res_in) written; parameter
// gradients accumulate, and so does d_emb: (N, E), which receives this block's share of dL/demb.
// x and emb are the forward pass's inputs. Each step quotes the forward line it inverts.
static void block_backward(struct msd_model *m, struct msd_block *k, float *dx, float *d_emb,
                           const float *dout, const float *x, const float *emb, int N,
                           const struct msd_forward_opts *opts) {
    struct msd_acts *A = m->acts;
    const struct msd_backend *be = m->be;
    const int r = k->res_out;
    const size_t n_out = (size_t)N * k->cout * hw(r), n_in = (size_t)N * k->cin * hw(k->res_in);
    const float *d_resid = dout; // without attention, out is resid
    if (k->attn) {
        // out = (proj_out + resid) s, proj_out = proj(a): both terms get dout s
        float *d_proj_out = A->g1;
        be->scale(d_proj_out, dout, SKIP_SCALE, n_out);
        float *d_a = A->g2;
        conv_bwd(m, &k->proj, d_a, d_proj_out, k->act.a, N, r);
        // a = attention(qkv)
        float *d_qkv = A->g3;
        be->attention_backward(d_qkv, d_a, k->act.attw, k->act.qkv, N, k->cout, (int)hw(r));
        // qkv = conv_qkv(norm2(resid)): recompute norm2(resid)
        float *norm2_resid = A->t1;
        norm_fwd(m, &k->norm2, norm2_resid, k->act.mean2, k->act.rstd2, k->act.resid, N, r);
        float *d_norm2_resid = A->g2; // d_a is spent
        conv_bwd(m, &k->qkv, d_norm2_resid, d_qkv, norm2_resid, N, r);
        float *d_resid_via_norm2 = A->g3; // d_qkv is spent
        norm_bwd(m, &k->norm2, d_resid_via_norm2, d_norm2_resid, k->act.mean2, k->act.rstd2, k->act.resid,
                 N, r);
        // resid feeds out twice, through the shortcut (gradient dout s, in d_proj_out) and through norm2
        float *d_resid_sum = d_proj_out;
        be->axpby(d_resid_sum, 1.0f, d_resid_via_norm2, 1.0f, n_out);
        d_resid = d_resid_sum;
    }
    // resid = (conv1_out + skip_out) s: both terms get d_resid s
    float *d_conv1_out = A->g1;
    be->scale(d_conv1_out, d_resid, SKIP_SCALE, n_out);
    const float *d_skip_out = d_conv1_out;
    // conv1_out = conv1(conv1_in): recompute conv1_in = dropout(silu(norm1(h))) and norm1(h)
    float *conv1_in = A->t1, *norm1_h = A->t2;
    block_conv1_input(m, k, conv1_in, norm1_h, N, opts);
    float *d_conv1_in = A->g2;
    conv_bwd(m, &k->conv1, d_conv1_in, d_conv1_out, conv1_in, N, r);
    // conv1_in = dropout(silu1), silu1 = silu(norm1_h)
    float *d_silu1 = d_conv1_in;
    if (dropout_on(m, opts))
        be->dropout_backward(d_silu1, d_conv1_in, m->cfg.dropout, opts->dropout_seed, dropout_stream(k),
                             n_out);
    float *d_norm1_h = d_silu1;
    be->silu_backward(d_norm1_h, d_silu1, norm1_h, n_out);
    float *d_h = A->g3;
    norm_bwd(m, &k->norm1, d_h, d_norm1_h, k->act.mean1, k->act.rstd1, k->act.h, N, r);
    // h = conv0(conv0_in) + emb_bias[:, :, None, None], emb_bias = affine(emb): the bias gets the
    // spatial sum, affine passes it on to emb
    be->bias_add_backward(A->d_emb_bias, d_h, N, k->cout, (int)hw(r));
    be->linear_backward(A->d_emb_part, G(k->affine.w), G(k->affine.b), A->d_emb_bias, emb, W(k->affine.w), N,
                        k->affine.in, k->affine.out);
    be->axpby(d_emb, 1.0f, A->d_emb_part, 1.0f, (size_t)N * k->affine.in);
    // conv0_in = resample(silu0), silu0 = silu(norm0_x), norm0_x = norm0(x): recompute them
    float *norm0_x = A->t1, *silu0 = A->t2, *silu0_resampled = A->t3;
    const float *conv0_in = block_conv0_input(m, k, norm0_x, silu0, silu0_resampled, x, N);
    float *d_conv0_in = A->g2;
    conv_bwd(m, &k->conv0, d_conv0_in, d_h, conv0_in, N, r);
    float *d_silu0 = d_conv0_in; // without resampling, conv0_in is silu0
    if (k->resample != MSD_RESAMPLE_NONE) {
        d_silu0 = A->g3; // d_h is spent
        resample_bwd(m, k->resample, d_silu0, d_conv0_in, N, k->cin, k->res_in);
    }
    float *d_norm0_x = d_silu0;
    be->silu_backward(d_norm0_x, d_silu0, norm0_x, n_in);
    norm_bwd(m, &k->norm0, dx, d_norm0_x, k->act.mean0, k->act.rstd0, x, N, k->res_in);
    // skip_out = x (no skip conv): its gradient adds to dx as it is
    if (!k->has_skip) {
        be->axpby(dx, 1.0f, d_skip_out, 1.0f, n_in);
        return;
    }
    // skip_out = skip(skip_in), skip_in = resample(x): recompute skip_in
    float *x_resampled = A->t3; // silu0_resampled is spent
    const float *skip_in = block_skip_input(m, k, x_resampled, x, N);
    float *d_skip_in = A->g2;
    conv_bwd(m, &k->skip, d_skip_in, d_skip_out, skip_in, N, r);
    float *d_x_via_skip = d_skip_in; // without resampling, skip_in is x
    if (k->resample != MSD_RESAMPLE_NONE) {
        d_x_via_skip = A->g3; // d_silu0 is spent
        resample_bwd(m, k->resample, d_x_via_skip, d_skip_in, N, k->cin, k->res_in);
    }
    be->axpby(dx, 1.0f, d_x_via_skip, 1.0f, n_in);
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

// A decoder block's input: x, or concat(x, skip j) built in cat (`big` floats). Returns which.
static const float *dec_input(struct msd_model *m, const struct msd_encoder *e, const struct msd_block *k,
                              float *cat, const float *x, int j, int N) {
    if (!k->cat_channels) return x;
    m->be->concat_forward(cat, x, skip_of(m, e, j), N, k->cin - k->cat_channels, k->cat_channels,
                          (int)hw(k->res_in));
    return cat;
}

// The head's conv input silu_out = silu(aux_norm(x)), and aux_norm_x = aux_norm(x) (silu's input,
// which the backward pass needs). x, aux_norm_x, silu_out: (N, aux_norm.c, R, R).
static void head_conv_input(struct msd_model *m, const struct msd_decoder *d, float *silu_out,
                            float *aux_norm_x, const float *x, int N) {
    const struct msd_acts *A = m->acts;
    const int R = m->cfg.img_resolution;
    norm_fwd(m, &d->aux_norm, aux_norm_x, A->head_mean, A->head_rstd, x, N, R);
    m->be->silu_forward(silu_out, aux_norm_x, (size_t)N * d->aux_norm.c * hw(R));
}

void msd_unet_forward(struct msd_model *m, int stage, float *out, const float *x_in,
                      const float *c_noise, const struct msd_forward_opts *opts) {
    struct msd_acts *A = m->acts;
    const struct msd_backend *be = m->be;
    const int N = A->N, R = m->cfg.img_resolution;
    struct msd_encoder *e = encoder_of(m, stage);
    struct msd_decoder *d = &m->dec[stage];
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
        block_forward(m, &e->blocks[i], x, A->emb, N, opts);
        x = e->blocks[i].act.out;
    }
    // decoder: blocks that concatenate pop the skips from the last
    int j = e->n_blocks + 1;
    for (int i = 0; i < d->n_blocks; i++) {
        struct msd_block *k = &d->blocks[i];
        const float *in = dec_input(m, e, k, A->cat, x, k->cat_channels ? --j : j, N);
        block_forward(m, k, in, A->emb, N, opts);
        x = k->act.out;
    }
    // head: out = aux_conv(silu(aux_norm(x)))
    float *aux_norm_x = A->t1, *aux_conv_in = A->t2;
    head_conv_input(m, d, aux_conv_in, aux_norm_x, x, N);
    conv_fwd(m, &d->aux_conv, out, aux_conv_in, N, R);
}

void msd_unet_backward(struct msd_model *m, int stage, float *dx_in, const float *dout, const float *x_in,
                       const struct msd_forward_opts *opts) {
    struct msd_acts *A = m->acts;
    const struct msd_backend *be = m->be;
    const int N = A->N, R = m->cfg.img_resolution;
    struct msd_encoder *e = encoder_of(m, stage);
    struct msd_decoder *d = &m->dec[stage];
    CHECK(A->with_grad, "msd_unet_backward needs a plan made with gradients");
    const size_t E = e->map1.out;
    be->fill(A->d_emb, 0.0f, (size_t)N * E);
    // head: out = aux_conv(aux_conv_in), aux_conv_in = silu(aux_norm_x), aux_norm_x = aux_norm(x_last):
    // recompute aux_conv_in and aux_norm_x
    const float *x_last = d->blocks[d->n_blocks - 1].act.out;
    float *aux_norm_x = A->t1, *aux_conv_in = A->t2;
    head_conv_input(m, d, aux_conv_in, aux_norm_x, x_last, N);
    float *d_aux_conv_in = A->g2;
    conv_bwd(m, &d->aux_conv, d_aux_conv_in, dout, aux_conv_in, N, R);
    float *d_aux_norm_x = d_aux_conv_in;
    be->silu_backward(d_aux_norm_x, d_aux_conv_in, aux_norm_x, (size_t)N * d->aux_norm.c * hw(R));
    // d_x: the gradient at x, the decoder loop's running activation (block i's output); block i
    // writes the gradient at its input, the previous block's output, into d_x_prev
    float *d_x = A->d_ping, *d_x_prev = A->d_pong;
    norm_bwd(m, &d->aux_norm, d_x, d_aux_norm_x, A->head_mean, A->head_rstd, x_last, N, R);
    // decoder, last block first; a block that concatenated splits its input gradient into the
    // previous block's part and its skip's part
    int j = 0; // the last decoder block popped skip 0; going backwards the skips come in order
    for (int i = d->n_blocks - 1; i >= 0; i--) {
        struct msd_block *k = &d->blocks[i];
        const float *x_prev = i > 0 ? d->blocks[i - 1].act.out : e->blocks[e->n_blocks - 1].act.out;
        const float *in = dec_input(m, e, k, A->cat, x_prev, j, N);
        block_backward(m, k, k->cat_channels ? A->d_cat : d_x_prev, A->d_emb, d_x, in, A->emb, N, opts);
        if (k->cat_channels) {
            be->concat_backward(d_x_prev, A->dskip[j], A->d_cat, N, k->cin - k->cat_channels,
                                k->cat_channels, (int)hw(k->res_in));
            j++;
        }
        float *spent = d_x;
        d_x = d_x_prev;
        d_x_prev = spent;
    }
    // the decoder's input was the encoder's last output, which is also the last skip
    const int last = e->n_blocks;
    const struct msd_block *kl = &e->blocks[last - 1];
    be->axpby(A->dskip[last], 1.0f, d_x, 1.0f, (size_t)N * kl->cout * hw(kl->res_out));
    // encoder, last block first: block i's output is skip i+1, its input skip i
    float *d_block_in = d_x_prev;
    for (int i = e->n_blocks - 1; i >= 0; i--) {
        struct msd_block *k = &e->blocks[i];
        block_backward(m, k, d_block_in, A->d_emb, A->dskip[i + 1], skip_of(m, e, i), A->emb, N, opts);
        be->axpby(A->dskip[i], 1.0f, d_block_in, 1.0f, (size_t)N * k->cin * hw(k->res_in));
    }
    conv_bwd(m, &e->conv_in, dx_in, A->dskip[0], x_in, N, R);
    // mapping: emb = silu(l1), l1 = map1(s0), s0 = silu(l0), l0 = map0(pe)
    float *d_l1 = A->d_emb;
    be->silu_backward(d_l1, A->d_emb, A->l1, (size_t)N * E);
    be->linear_backward(A->d_s0, G(e->map1.w), G(e->map1.b), d_l1, A->s0, W(e->map1.w), N, e->map1.in,
                        e->map1.out);
    float *d_l0 = A->d_s0;
    be->silu_backward(d_l0, A->d_s0, A->l0, (size_t)N * e->map0.out);
    be->linear_backward(NULL, G(e->map0.w), G(e->map0.b), d_l0, A->pe, W(e->map0.w), N, e->map0.in,
                        e->map0.out);
}
