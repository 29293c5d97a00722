// model.c: building the U-Net's structure and parameter table from a config, initialising the
// weights, and counting parameters and multiply-adds.
//
// The walk over levels below is EDM's SongUNet constructor (and the authors' MultistageUNet, which
// repeats the decoder once per stage with its own width). Every parameter gets its state_dict name,
// shape, offset, init rule and owner here; nothing else in msdiff invents a name.
// The forward and backward passes are in unet.c; the activation arena in unet.c as well.
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/core/error.h"
#include "precond.h"
#include "common/core/rng.h"
#include "common/core/util.h"

// ---------------------------------------------------------------------------------------------------
// The parameter table under construction

struct builder {
    struct msd_model *m;
    int cap;
    char prefix[64]; // "model.", "model.enc.", "model.decs.2." ...
    int owner;
};

static size_t add_param(struct builder *b, const char *name, int ndim, const int *shape,
                        enum msd_init init, float scale, int fan_in, int fan_out) {
    struct msd_model *m = b->m;
    if (m->n_params == b->cap) {
        b->cap = b->cap ? 2 * b->cap : 256;
        struct msd_param *p = realloc(m->params, (size_t)b->cap * sizeof *p);
        CHECK(p != NULL, "out of memory growing the parameter table");
        m->params = p;
    }
    struct msd_param *p = &m->params[m->n_params++];
    memset(p, 0, sizeof *p);
    int len = snprintf(p->name, sizeof p->name, "%s%s", b->prefix, name);
    CHECK(len < (int)sizeof p->name, "parameter name too long: %s%s", b->prefix, name);
    p->ndim = ndim;
    p->numel = 1;
    for (int i = 0; i < ndim; i++) {
        p->shape[i] = shape[i];
        p->numel *= (size_t)shape[i];
    }
    p->offset = m->n_floats;
    m->n_floats += p->numel;
    p->init = init;
    p->init_scale = scale;
    p->fan_in = fan_in;
    p->fan_out = fan_out;
    p->owner = b->owner;
    return p->offset;
}

// EDM's Conv2d: weight (cout, cin, k, k), xavier with fan_in = cin k k, fan_out = cout k k; bias 0.
static struct msd_conv make_conv(struct builder *b, const char *name, int cin, int cout, int k,
                                 float scale) {
    char n[80];
    struct msd_conv c = {0, 0, cin, cout, k};
    snprintf(n, sizeof n, "%s.weight", name);
    c.w = add_param(b, n, 4, (int[]){cout, cin, k, k}, MSD_INIT_XAVIER, scale, cin * k * k, cout * k * k);
    snprintf(n, sizeof n, "%s.bias", name);
    c.b = add_param(b, n, 1, (int[]){cout}, MSD_INIT_ZERO, 1, 0, 0);
    return c;
}

// EDM's Linear: weight (out, in), xavier with fan_in = in, fan_out = out; bias 0.
static struct msd_linear make_linear(struct builder *b, const char *name, int in, int out) {
    char n[80];
    struct msd_linear l = {0, 0, in, out};
    snprintf(n, sizeof n, "%s.weight", name);
    l.w = add_param(b, n, 2, (int[]){out, in}, MSD_INIT_XAVIER, 1, in, out);
    snprintf(n, sizeof n, "%s.bias", name);
    l.b = add_param(b, n, 1, (int[]){out}, MSD_INIT_ZERO, 1, 0, 0);
    return l;
}

// EDM's GroupNorm: weight 1, bias 0; groups = min(gn_groups, C / gn_min_channels).
static struct msd_norm make_norm(struct builder *b, const char *name, int c) {
    char n[80];
    struct msd_norm g = {0, 0, c, msd_config_groups(&b->m->cfg, c)};
    snprintf(n, sizeof n, "%s.weight", name);
    g.w = add_param(b, n, 1, (int[]){c}, MSD_INIT_ONE, 1, 0, 0);
    snprintf(n, sizeof n, "%s.bias", name);
    g.b = add_param(b, n, 1, (int[]){c}, MSD_INIT_ZERO, 1, 0, 0);
    return g;
}

// EDM's UNetBlock with the DDPM++ settings: one head, skip_scale sqrt(1/2), eps 1e-6, resample_proj,
// no adaptive scale; conv1 and proj start near zero (1e-5), qkv at sqrt(0.2).
static struct msd_block make_block(struct builder *b, const char *name, int cin, int cout, int res_in,
                                   enum msd_resample rs, bool attn, int cat_channels, int dropout_id) {
    struct msd_block k;
    memset(&k, 0, sizeof k);
    snprintf(k.name, sizeof k.name, "%s", name);
    k.cin = cin;
    k.cout = cout;
    k.res_in = res_in;
    k.res_out = rs == MSD_RESAMPLE_DOWN ? res_in / 2 : rs == MSD_RESAMPLE_UP ? res_in * 2 : res_in;
    k.resample = rs;
    k.attn = attn;
    k.has_skip = cin != cout || rs != MSD_RESAMPLE_NONE;
    k.cat_channels = cat_channels;
    k.dropout_id = dropout_id;
    const int emb = b->m->cfg.model_channels * b->m->cfg.channel_mult_emb;
    char n[80];
#define SUB(part) (snprintf(n, sizeof n, "%s." part, name), n)
    k.norm0 = make_norm(b, SUB("norm0"), cin);
    k.conv0 = make_conv(b, SUB("conv0"), cin, cout, 3, 1);
    k.affine = make_linear(b, SUB("affine"), emb, cout);
    k.norm1 = make_norm(b, SUB("norm1"), cout);
    k.conv1 = make_conv(b, SUB("conv1"), cout, cout, 3, 1e-5f);
    if (k.has_skip) k.skip = make_conv(b, SUB("skip"), cin, cout, 1, 1);
    if (attn) {
        k.norm2 = make_norm(b, SUB("norm2"), cout);
        k.qkv = make_conv(b, SUB("qkv"), cout, 3 * cout, 1, sqrtf(0.2f));
        k.proj = make_conv(b, SUB("proj"), cout, cout, 1, 1e-5f);
    }
#undef SUB
    return k;
}

static bool attn_at(const struct msd_config *c, int res) {
    for (int i = 0; i < c->n_attn; i++)
        if (c->attn_resolutions[i] == res) return true;
    return false;
}

// Mapping network and encoder. Returns the channel counts of the skips in *skips (push order).
static void build_encoder(struct builder *b, struct msd_encoder *e, int *skips, int *n_skips,
                          int *dropout_id) {
    const struct msd_config *c = &b->m->cfg;
    const int emb = c->model_channels * c->channel_mult_emb;
    char base[sizeof b->prefix], n[80];
    memcpy(base, b->prefix, sizeof base);
    e->map0 = make_linear(b, "map_layer0", c->model_channels, emb);
    e->map1 = make_linear(b, "map_layer1", emb, emb);
    CHECK(strlen(base) + 5 < sizeof b->prefix, "prefix too long");
    snprintf(b->prefix, sizeof b->prefix, "%.58senc.", base);
    memcpy(e->prefix, b->prefix, sizeof e->prefix);
    e->blocks = xcalloc((size_t)c->n_levels * (c->num_blocks + 1), sizeof *e->blocks);
    e->n_blocks = 0;
    *n_skips = 0;
    int cout = c->in_channels;
    for (int level = 0; level < c->n_levels; level++) {
        const int res = c->img_resolution >> level;
        if (level == 0) {
            snprintf(n, sizeof n, "%dx%d_conv", res, res);
            e->conv_in = make_conv(b, n, cout, c->model_channels, 3, 1);
            cout = c->model_channels;
        } else {
            snprintf(n, sizeof n, "%dx%d_down", res, res);
            e->blocks[e->n_blocks++] =
                make_block(b, n, cout, cout, res * 2, MSD_RESAMPLE_DOWN, false, 0, (*dropout_id)++);
        }
        skips[(*n_skips)++] = cout;
        for (int i = 0; i < c->num_blocks; i++) {
            const int cin = cout;
            cout = c->model_channels * c->channel_mult[level];
            snprintf(n, sizeof n, "%dx%d_block%d", res, res, i);
            e->blocks[e->n_blocks++] =
                make_block(b, n, cin, cout, res, MSD_RESAMPLE_NONE, attn_at(c, res), 0, (*dropout_id)++);
            skips[(*n_skips)++] = cout;
        }
    }
    snprintf(b->prefix, sizeof b->prefix, "%s", base);
}

// One decoder of base width d. skips: the encoder's skip channels (consumed from the end).
static void build_decoder(struct builder *b, struct msd_decoder *dec, int d, const int *skips,
                          int n_skips, int *dropout_id) {
    const struct msd_config *c = &b->m->cfg;
    char n[80];
    memcpy(dec->prefix, b->prefix, sizeof dec->prefix);
    dec->blocks = xcalloc((size_t)c->n_levels * (c->num_blocks + 3), sizeof *dec->blocks);
    dec->n_blocks = 0;
    int cout = skips[n_skips - 1]; // the encoder's last width
    int top = n_skips;
    for (int level = c->n_levels - 1; level >= 0; level--) {
        const int res = c->img_resolution >> level;
        if (level == c->n_levels - 1) {
            snprintf(n, sizeof n, "%dx%d_in0", res, res);
            dec->blocks[dec->n_blocks++] =
                make_block(b, n, cout, cout, res, MSD_RESAMPLE_NONE, true, 0, (*dropout_id)++);
            snprintf(n, sizeof n, "%dx%d_in1", res, res);
            dec->blocks[dec->n_blocks++] =
                make_block(b, n, cout, cout, res, MSD_RESAMPLE_NONE, false, 0, (*dropout_id)++);
        } else {
            snprintf(n, sizeof n, "%dx%d_up", res, res);
            dec->blocks[dec->n_blocks++] =
                make_block(b, n, cout, cout, res / 2, MSD_RESAMPLE_UP, false, 0, (*dropout_id)++);
        }
        for (int i = 0; i <= c->num_blocks; i++) {
            const int skip = skips[--top];
            const int cin = cout + skip;
            cout = d * c->channel_mult[level];
            snprintf(n, sizeof n, "%dx%d_block%d", res, res, i);
            bool attn = i == c->num_blocks && attn_at(c, res);
            dec->blocks[dec->n_blocks++] =
                make_block(b, n, cin, cout, res, MSD_RESAMPLE_NONE, attn, skip, (*dropout_id)++);
        }
        if (level == 0) {
            snprintf(n, sizeof n, "%dx%d_aux_norm", res, res);
            dec->aux_norm = make_norm(b, n, cout);
            snprintf(n, sizeof n, "%dx%d_aux_conv", res, res);
            dec->aux_conv = make_conv(b, n, cout, c->out_channels, 3, 1e-5f);
        }
    }
    CHECK(top == 0, "decoder consumed %d of %d skips", n_skips - top, n_skips);
}

int msd_model_build(struct msd_model *m, const struct msd_config *cfg, const struct msd_backend *be) {
    memset(m, 0, sizeof *m);
    if (msd_config_validate(cfg) < 0) return -1;
    m->cfg = *cfg;
    m->be = be;
    struct builder b = {m, 0, "", MSD_OWNER_SHARED};
    int skips[MSD_MAX_LEVELS * 16], n_skips = 0, dropout_id = 0;
    CHECK(cfg->n_levels * (cfg->num_blocks + 1) <= (int)(sizeof skips / sizeof skips[0]),
          "too many blocks for the skip list");
    const char *dec_fmt = cfg->n_stages == 1 ? "model.dec." : "model.decs.%d.";
    if (!cfg->separate) {
        m->n_encoders = 1;
        snprintf(b.prefix, sizeof b.prefix, "model.");
        build_encoder(&b, &m->enc[0], skips, &n_skips, &dropout_id);
        for (int s = 0; s < cfg->n_stages; s++) {
            b.owner = s;
            snprintf(b.prefix, sizeof b.prefix, dec_fmt, s);
            build_decoder(&b, &m->dec[s], cfg->dec_channels[s], skips, n_skips, &dropout_id);
        }
    } else {
        // Separate networks: model.nets.{s}. holds a whole SongUNet (map_layer*, enc., dec.).
        m->n_encoders = cfg->n_stages;
        for (int s = 0; s < cfg->n_stages; s++) {
            b.owner = s;
            snprintf(b.prefix, sizeof b.prefix, "model.nets.%d.", s);
            build_encoder(&b, &m->enc[s], skips, &n_skips, &dropout_id);
            snprintf(b.prefix, sizeof b.prefix, "model.nets.%d.dec.", s);
            build_decoder(&b, &m->dec[s], cfg->dec_channels[s], skips, n_skips, &dropout_id);
        }
    }
    if (m->n_floats > MSD_MAX_PARAMS) {
        const size_t n = m->n_floats;
        msd_model_free(m);
        return msd_set_error("the config's network has %zu parameters, more than the %zu (%zu GiB of float32) "
                             "msdiff takes: its widths (model_channels, decoders, channel_mult) are too large", n,
                             MSD_MAX_PARAMS, MSD_MAX_PARAMS * sizeof(float) >> 30);
    }
    return 0;
}

int msd_model_alloc(struct msd_model *m) {
    CHECK(m->params && !m->w, "msd_model_alloc wants a built model without parameter memory");
    m->w = m->be->alloc(m->n_floats);
    if (!m->w)
        return msd_set_error("cannot allocate %.1f MB for the %zu parameters on backend %s", m->n_floats * 4.0 / 1e6,
                             m->n_floats, m->be->name);
    return 0;
}

int msd_model_create(struct msd_model *m, const struct msd_config *cfg, const struct msd_backend *be) {
    if (msd_model_build(m, cfg, be) < 0) return -1;
    if (msd_model_alloc(m) < 0) {
        msd_model_free(m);
        return -1;
    }
    return 0;
}

void msd_model_free(struct msd_model *m) {
    if (!m->params) return;
    for (int e = 0; e < m->n_encoders; e++) free(m->enc[e].blocks);
    for (int s = 0; s < m->cfg.n_stages; s++) free(m->dec[s].blocks);
    if (m->w) m->be->release(m->w);
    if (m->grad) m->be->release(m->grad);
    msd_model_plan(m, 0, false); // releases the arena
    msd_denoiser_release(m);
    free(m->params);
    memset(m, 0, sizeof *m);
}

const struct msd_param *msd_model_find(const struct msd_model *m, const char *name) {
    for (int i = 0; i < m->n_params; i++)
        if (strcmp(m->params[i].name, name) == 0) return &m->params[i];
    return NULL;
}

void msd_params_init(const struct msd_param *params, int n_params, float *host, uint64_t seed) {
    for (int k = 0; k < n_params; k++) {
        const struct msd_param *p = &params[k];
        float *w = host + p->offset;
        if (p->init == MSD_INIT_XAVIER) {
            const double bound = sqrt(6.0 / (p->fan_in + p->fan_out)) * p->init_scale;
            for (size_t i = 0; i < p->numel; i++)
                w[i] = (float)(bound * (2.0 * msd_rng_uniform(seed, MSD_STREAM_INIT, p->offset + i) - 1.0));
        } else {
            const float v = p->init == MSD_INIT_ONE ? 1.0f : 0.0f;
            for (size_t i = 0; i < p->numel; i++) w[i] = v;
        }
    }
}

int msd_params_check_finite(const struct msd_param *params, int n_params, const float *host, const char *what,
                            const char *path, const char *then) {
    for (int i = 0; i < n_params; i++) {
        const struct msd_param *p = &params[i];
        for (size_t k = 0; k < p->numel; k++)
            if (!isfinite(host[p->offset + k]))
                return msd_set_error("%s '%s': tensor '%s' element %zu is %g; expected finite weights%s", what, path,
                                     p->name, k, (double)host[p->offset + k], then);
    }
    return 0;
}

void msd_model_init_weights(struct msd_model *m, uint64_t seed) {
    float *host = xmalloc(m->n_floats * sizeof(float));
    msd_params_init(m->params, m->n_params, host, seed);
    m->be->upload(m->w, host, m->n_floats);
    free(host);
}

// ---------------------------------------------------------------------------------------------------
// Counting

static uint64_t conv_macs(const struct msd_conv *c, int res) {
    return (uint64_t)c->cout * c->cin * c->k * c->k * res * res;
}

static uint64_t block_macs(const struct msd_block *k) {
    const int r = k->res_out;
    uint64_t macs = conv_macs(&k->conv0, r) + (uint64_t)k->affine.in * k->affine.out +
                    conv_macs(&k->conv1, r);
    if (k->has_skip) macs += conv_macs(&k->skip, r);
    if (k->attn) {
        const uint64_t hw = (uint64_t)r * r;
        macs += conv_macs(&k->qkv, r) + conv_macs(&k->proj, r) + 2 * hw * hw * k->cout;
    }
    return macs;
}

void msd_model_count(const struct msd_model *m, struct msd_counts *out) {
    memset(out, 0, sizeof *out);
    for (int k = 0; k < m->n_params; k++) {
        const struct msd_param *p = &m->params[k];
        if (p->owner == MSD_OWNER_SHARED) out->shared += p->numel;
        else out->stage[p->owner] += p->numel;
        out->total += p->numel;
    }
    const int R = m->cfg.img_resolution;
    for (int s = 0; s < m->cfg.n_stages; s++) {
        const struct msd_encoder *e = &m->enc[m->cfg.separate ? s : 0];
        const struct msd_decoder *d = &m->dec[s];
        uint64_t macs = (uint64_t)e->map0.in * e->map0.out + (uint64_t)e->map1.in * e->map1.out +
                        conv_macs(&e->conv_in, R) + conv_macs(&d->aux_conv, R);
        for (int i = 0; i < e->n_blocks; i++) macs += block_macs(&e->blocks[i]);
        for (int i = 0; i < d->n_blocks; i++) macs += block_macs(&d->blocks[i]);
        out->macs[s] = macs;
    }
}
