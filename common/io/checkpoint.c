// checkpoint.c: saving and loading models (checkpoint.h).
#include "checkpoint.h"

#include <stdlib.h>
#include <string.h>

#include "common/core/error.h"
#include "common/core/util.h"

// EDM's Conv2d registers resample_filter = outer([1,1],[1,1]) / 4 as a buffer on every conv that
// resamples: conv0 and skip of the down and up blocks. Calls f(name, ctx) for each.
static void block_filters(const char *prefix, const struct msd_block *blocks, int n,
                          void (*f)(const char *name, void *ctx), void *ctx) {
    char name[160];
    for (int i = 0; i < n; i++) {
        if (blocks[i].resample == MSD_RESAMPLE_NONE) continue;
        snprintf(name, sizeof name, "%s%s.conv0.resample_filter", prefix, blocks[i].name);
        f(name, ctx);
        snprintf(name, sizeof name, "%s%s.skip.resample_filter", prefix, blocks[i].name);
        f(name, ctx);
    }
}

static void for_each_resample_filter(const struct msd_model *m, void (*f)(const char *name, void *ctx),
                                     void *ctx) {
    for (int e = 0; e < m->n_encoders; e++)
        block_filters(m->enc[e].prefix, m->enc[e].blocks, m->enc[e].n_blocks, f, ctx);
    for (int s = 0; s < m->cfg.n_stages; s++)
        block_filters(m->dec[s].prefix, m->dec[s].blocks, m->dec[s].n_blocks, f, ctx);
}

struct save_ctx {
    struct msd_st_entry *entries;
    int n;
};

static const float quarter_filter[4] = {0.25f, 0.25f, 0.25f, 0.25f};

static void add_filter(const char *name, void *ctx) {
    struct save_ctx *s = ctx;
    struct msd_st_entry *e = &s->entries[s->n++];
    e->name = xstrdup(name);
    e->ndim = 4;
    e->shape[0] = e->shape[1] = 1;
    e->shape[2] = e->shape[3] = 2;
    e->data = quarter_filter;
}

int msd_checkpoint_save(const struct msd_model *m, const char *path, const char *const *meta_keys,
                        const char *const *meta_values, int n_meta) {
    return msd_checkpoint_save_as(m, path, false, meta_keys, meta_values, n_meta);
}

int msd_checkpoint_save_as(const struct msd_model *m, const char *path, bool f16, const char *const *meta_keys,
                           const char *const *meta_values, int n_meta) {
    float *host = xmalloc(m->n_floats * sizeof(float));
    m->be->download(host, m->w, m->n_floats);
    // loading refuses a NaN or an infinity, so saving one would only make a file nothing can read
    if (msd_params_check_finite(m->params, m->n_params, host, "checkpoint", path, ", nothing was written") < 0) {
        free(host);
        return -1;
    }
    struct save_ctx s = {xcalloc((size_t)m->n_params * 2, sizeof(struct msd_st_entry)), 0};
    for (int i = 0; i < m->n_params; i++) {
        const struct msd_param *p = &m->params[i];
        struct msd_st_entry *e = &s.entries[s.n++];
        e->name = xstrdup(p->name);
        e->ndim = p->ndim;
        for (int d = 0; d < p->ndim; d++) e->shape[d] = p->shape[d];
        e->data = host + p->offset;
    }
    for_each_resample_filter(m, add_filter, &s);
    char *config = msd_config_to_json(&m->cfg);
    const char **keys = xmalloc((size_t)(n_meta + 1) * sizeof *keys);
    const char **values = xmalloc((size_t)(n_meta + 1) * sizeof *values);
    keys[0] = "config";
    values[0] = config;
    for (int i = 0; i < n_meta; i++) keys[i + 1] = meta_keys[i], values[i + 1] = meta_values[i];
    int rc = msd_st_write_as(path, s.entries, s.n, f16, keys, values, n_meta + 1);
    for (int i = 0; i < s.n; i++) free((char *)s.entries[i].name);
    free(s.entries);
    free(keys);
    free(values);
    free(config);
    free(host);
    return rc;
}

// ---------------------------------------------------------------------------------------------------
// Loading

struct filter_check {
    const struct msd_st_file *f;
    int found, bad;
    char bad_name[160];
};

static void check_filter(const char *name, void *ctx) {
    struct filter_check *c = ctx;
    const struct msd_st_tensor *t = msd_st_find(c->f, name);
    if (!t) return; // reference dumps list parameters only
    float v[4];
    int64_t shape[4] = {1, 1, 2, 2};
    c->found++;
    if (msd_st_get_f32(c->f, name, 4, shape, v) < 0 || v[0] != 0.25f || v[1] != 0.25f || v[2] != 0.25f ||
        v[3] != 0.25f) {
        if (!c->bad) snprintf(c->bad_name, sizeof c->bad_name, "%s", name);
        c->bad++;
    }
}

struct filter_match {
    const char *name;
    int hit;
};

static void match_filter(const char *name, void *ctx) {
    struct filter_match *q = ctx;
    q->hit |= strcmp(name, q->name) == 0;
}

// Every parameter present with its shape and a float dtype, the resample filters right, and nothing
// else under "model.": all of it from the file's header and four floats a filter, so that a config
// that does not match the file fails here, before any memory is sized by it.
static int check_tensors(const struct msd_model *m, const struct msd_st_file *f) {
    for (int i = 0; i < m->n_params; i++) {
        const struct msd_param *p = &m->params[i];
        int64_t shape[4];
        for (int d = 0; d < p->ndim; d++) shape[d] = p->shape[d];
        if (msd_st_check_f32(f, p->name, p->ndim, shape) < 0)
            return -1; // the message names the file, the tensor and both shapes
    }
    struct filter_check fc = {f, 0, 0, ""};
    for_each_resample_filter(m, check_filter, &fc);
    if (fc.bad)
        return msd_set_error("%s '%s': tensor '%s' is not EDM's box filter (expected shape [1, 1, 2, 2] with every "
                             "value 0.25)", f->what, f->path, fc.bad_name);
    // every other tensor under "model." must be one of ours
    int ours = 0;
    for (int i = 0; i < f->n_tensors; i++)
        if (!strncmp(f->tensors[i].name, "model.", 6)) ours++;
    if (ours == m->n_params + fc.found) return 0;
    for (int i = 0; i < f->n_tensors; i++) {
        const char *name = f->tensors[i].name;
        if (strncmp(name, "model.", 6) || msd_model_find(m, name)) continue;
        struct filter_match q = {name, 0};
        for_each_resample_filter(m, match_filter, &q);
        if (q.hit) continue; // one of ours, counted in fc.found
        return msd_set_error("%s '%s': unexpected tensor '%s': the config in the file does not have it (is the "
                             "config metadata from another network?)", f->what, f->path, name);
    }
    return 0;
}

// Copy the checked parameters into m->w. A NaN or an infinity is refused: a network with one gives NaN
// everywhere it reaches, which sampling would turn into black images without a word.
static int copy_weights(struct msd_model *m, const struct msd_st_file *f) {
    float *host = xmalloc(m->n_floats * sizeof(float));
    for (int i = 0; i < m->n_params; i++) {
        const struct msd_param *p = &m->params[i];
        int64_t shape[4];
        for (int d = 0; d < p->ndim; d++) shape[d] = p->shape[d];
        if (msd_st_get_f32(f, p->name, p->ndim, shape, host + p->offset) < 0) {
            free(host);
            return -1;
        }
    }
    if (msd_params_check_finite(m->params, m->n_params, host, f->what, f->path, "") < 0) {
        free(host);
        return -1;
    }
    m->be->upload(m->w, host, m->n_floats);
    free(host);
    return 0;
}

int msd_model_load_tensors(struct msd_model *m, const struct msd_st_file *f) {
    return check_tensors(m, f) < 0 ? -1 : copy_weights(m, f);
}

// The network is built from the file's config as a table only; its weights are allocated once the
// file is known to hold every one of them (so their number is bounded by the file's size).
int msd_checkpoint_load(struct msd_model *m, const char *path, const struct msd_backend *be) {
    memset(m, 0, sizeof *m);
    struct msd_st_file f;
    if (msd_st_read_as(&f, path, "checkpoint") < 0) return -1;
    const char *json = msd_st_meta(&f, "config");
    struct msd_config cfg;
    int rc = 0;
    if (!json)
        rc = msd_set_error("checkpoint '%s': no \"config\" in __metadata__ (expected the network config as JSON, "
                           "as msdiff init and train write it)", path);
    if (rc == 0 && msd_config_from_json(&cfg, json, path) < 0) rc = -1;
    // the model's own messages (its size, the memory it lacks) get the file's name
    if (rc == 0 && msd_model_build(m, &cfg, be) < 0) rc = msd_set_error("checkpoint '%s': %s", path, msd_last_error());
    if (rc == 0 && check_tensors(m, &f) < 0) rc = -1;
    if (rc == 0 && msd_model_alloc(m) < 0) rc = msd_set_error("checkpoint '%s': %s", path, msd_last_error());
    if (rc == 0 && copy_weights(m, &f) < 0) rc = -1;
    if (rc < 0) msd_model_free(m); // harmless when nothing was built
    msd_st_free(&f);
    return rc;
}
