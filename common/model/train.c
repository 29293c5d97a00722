// train.c: sigma and stage sampling, one training step, held-out loss, the training state file.
// See train.h for the algorithm; the run folder, logging and signals are in run.c.
#include "train.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/core/error.h"
#include "precond.h"
#include "common/core/rng.h"
#include "common/io/safetensors.h"
#include "common/core/util.h"

void msd_train_defaults(struct msd_train_opts *o) {
    *o = (struct msd_train_opts){
        .seed = 0,
        .batch = 64,
        .policy = MSD_POLICY_LOGNORMAL,
        .P_mean = -1.2,
        .P_std = 1.2,
        .lr = 1e-3,
        .beta1 = 0.9,
        .beta2 = 0.999,
        .eps = 1e-8,
        .lr_rampup = 10e6,
        .ema_halflife = 500e3,
        .ema_rampup = 0.05,
        .grad_clip = 0.0,
        .xflip = false,
    };
}

// ---------------------------------------------------------------------------------------------------
// Parameter groups: [0] the shared part, [1 + s] stage s. The parameter table lays each group out
// contiguously (model.c builds the shared part first, then one decoder or network per stage).

static void group_range(const struct msd_model *m, int g, size_t *off, size_t *n) {
    const int owner = g == 0 ? MSD_OWNER_SHARED : g - 1;
    size_t lo = SIZE_MAX, hi = 0, count = 0;
    for (int k = 0; k < m->n_params; k++) {
        const struct msd_param *p = &m->params[k];
        if (p->owner != owner) continue;
        if (p->offset < lo) lo = p->offset;
        if (p->offset + p->numel > hi) hi = p->offset + p->numel;
        count += p->numel;
    }
    if (count == 0) lo = hi = 0;
    CHECK(hi - lo == count, "parameter group %d is not contiguous", g);
    *off = lo;
    *n = count;
}

// ---------------------------------------------------------------------------------------------------
// State

int msd_train_state_init(struct msd_train_state *st, struct msd_model *m) {
    memset(st, 0, sizeof *st);
    const struct msd_backend *be = m->be;
    st->adam_m = be->alloc(m->n_floats);
    st->adam_v = be->alloc(m->n_floats);
    st->ema = be->alloc(m->n_floats);
    st->scalar = be->alloc(1);
    if (!st->adam_m || !st->adam_v || !st->ema || !st->scalar) {
        msd_train_state_free(st, m);
        return msd_set_error("cannot allocate %.1f MB for Adam's moments and the EMA",
                             3.0 * m->n_floats * 4 / 1e6);
    }
    be->fill(st->adam_m, 0.0f, m->n_floats);
    be->fill(st->adam_v, 0.0f, m->n_floats);
    be->copy(st->ema, m->w, m->n_floats);
    return 0;
}

void msd_train_state_free(struct msd_train_state *st, struct msd_model *m) {
    float *bufs[] = {st->adam_m, st->adam_v, st->ema, st->scalar, st->y, st->n};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) m->be->release(bufs[i]);
    free(st->host);
    memset(st, 0, sizeof *st);
}

// ---------------------------------------------------------------------------------------------------
// Noise levels and stages

// Streams of a step: the kind in the low 8 bits, the step above, so every step draws afresh.
static uint64_t step_stream(int kind, long step) { return (uint64_t)kind | ((uint64_t)step << 8); }

// One draw from the loss's sigma law: EDM ln sigma ~ N(P_mean, P_std^2); VP t ~ U(eps_t, 1).
static double draw_sigma(const struct msd_config *c, const struct msd_train_opts *o, uint64_t stream,
                         uint64_t index) {
    if (c->precond == MSD_PRECOND_VP) {
        double u = msd_rng_uniform(o->seed, stream, index);
        return msd_vp_sigma(1.0 + u * (MSD_VP_EPS_T - 1.0));
    }
    return exp(o->P_mean + o->P_std * msd_rng_normal(o->seed, stream, index));
}

#define MAX_TRIES (1u << 24) // rejection attempts per sample before giving up

int msd_train_pick(const struct msd_config *c, const struct msd_train_opts *o, long step, double *sigmas) {
    const uint64_t stream = step_stream(MSD_STREAM_SIGMA, step);
    int stage;
    uint32_t first = 0; // the first attempt index that rejection sampling uses for sample 0
    if (o->policy == MSD_POLICY_UNIFORM) {
        stage = (int)(msd_rng_u32(o->seed, stream, (uint64_t)1 << 62) % (uint32_t)c->n_stages);
    } else {
        sigmas[0] = draw_sigma(c, o, stream, 0); // its stage is the batch's, and it is sample 0
        stage = msd_config_stage_of(c, sigmas[0]);
        first = 1;
    }
    // draw j of sample n is index (n << 32) + j: independent draws, no matter how many are rejected
    for (int n = first ? 1 : 0; n < o->batch; n++) {
        uint32_t tries = 0;
        do {
            if (++tries > MAX_TRIES)
                return msd_set_error("stage %d has almost no mass under the sigma law (no sigma in it after %u "
                                     "draws): check --boundaries against P_mean/P_std",
                                     stage, MAX_TRIES);
            sigmas[n] = draw_sigma(c, o, stream, ((uint64_t)n << 32) + tries - 1);
        } while (msd_config_stage_of(c, sigmas[n]) != stage);
    }
    return stage;
}

// ---------------------------------------------------------------------------------------------------
// One step

static int ensure_batch_buffers(struct msd_model *m, struct msd_train_state *st, int B) {
    const size_t M = (size_t)m->cfg.in_channels * m->cfg.img_resolution * m->cfg.img_resolution;
    if (st->B == B) return 0;
    if (st->y) m->be->release(st->y);
    if (st->n) m->be->release(st->n);
    free(st->host);
    st->y = m->be->alloc((size_t)B * M);
    st->n = m->be->alloc((size_t)B * M);
    st->host = xmalloc((size_t)B * M * sizeof(float));
    st->B = st->y && st->n ? B : 0; // remembered only when complete
    if (!st->B) return msd_set_error("cannot allocate the batch (%d images) on backend %s", B, m->be->name);
    return 0;
}

int msd_train_step(struct msd_model *m, struct msd_train_state *st, const struct msd_dataset *data,
                   const struct msd_train_opts *o, struct msd_step_info *info) {
    const struct msd_backend *be = m->be;
    const int B = o->batch;
    const size_t M = (size_t)m->cfg.in_channels * m->cfg.img_resolution * m->cfg.img_resolution;
    if (msd_model_batch(m) != B) return msd_set_error("train: the model is planned for batch %d, not %d",
                                                      msd_model_batch(m), B);
    if (ensure_batch_buffers(m, st, B) < 0) return -1;
    double *sigmas = xmalloc((size_t)B * sizeof *sigmas);
    const int stage = msd_train_pick(&m->cfg, o, st->step, sigmas);
    if (stage < 0) {
        free(sigmas);
        return -1;
    }
    // clean images and unit noise of this step
    msd_data_batch(data, st->host, B, o->seed, (uint64_t)st->step, o->xflip);
    be->upload(st->y, st->host, (size_t)B * M);
    be->fill_normal(st->n, o->seed, step_stream(MSD_STREAM_NOISE, st->step), (size_t)B * M);
    // loss and gradients; the weights are untouched until the loss is known to be finite
    be->fill(m->grad, 0.0f, m->n_floats);
    const struct msd_forward_opts fo = {true, o->seed + 0x9E3779B97F4A7C15ull * (uint64_t)(st->step + 1)};
    msd_clear_error();
    const double loss = msd_loss(m, stage, st->y, st->n, sigmas, true, NULL, NULL, &fo);
    free(sigmas);
    if (!isfinite(loss) && msd_last_error()[0]) // the loss could not be computed (memory ran out): say why
        return msd_set_error("step %ld: %s; the weights are left as before this step", st->step, msd_last_error());
    if (!isfinite(loss))
        return msd_set_error("step %ld: the loss is %g (stage %d); the weights are left as before this step",
                             st->step, loss, stage);
    // the groups that received gradients: the shared part (empty when separate) and the stage's
    size_t off[2], n[2];
    const int groups[2] = {0, 1 + stage};
    group_range(m, 0, &off[0], &n[0]);
    group_range(m, 1 + stage, &off[1], &n[1]);
    double sq = 0.0;
    for (int g = 0; g < 2; g++) {
        if (!n[g]) continue;
        be->nan_to_num(m->grad + off[g], 0.0f, 1e5f, -1e5f, n[g]);
        float s;
        be->sumsq(st->scalar, m->grad + off[g], n[g]);
        be->download(&s, st->scalar, 1);
        sq += s;
    }
    const double norm = sqrt(sq);
    if (o->grad_clip > 0 && norm > o->grad_clip)
        for (int g = 0; g < 2; g++)
            if (n[g]) be->scale(m->grad + off[g], m->grad + off[g], (float)(o->grad_clip / norm), n[g]);
    // Adam with the ramped learning rate (images seen before this step, as EDM)
    const double lr = o->lr * fmin(st->images / fmax(o->lr_rampup, 1e-8), 1.0);
    for (int g = 0; g < 2; g++) {
        if (!n[g]) continue;
        const long t = ++st->adam_steps[groups[g]];
        be->adam(m->w + off[g], st->adam_m + off[g], st->adam_v + off[g], m->grad + off[g], (float)lr,
                 (float)o->beta1, (float)o->beta2, (float)o->eps, t, n[g]);
    }
    // EMA of every weight (idle decoders too, as EDM's loop over all parameters does)
    double halflife = o->ema_halflife;
    if (o->ema_rampup > 0) halflife = fmin(halflife, st->images * o->ema_rampup);
    const double beta = pow(0.5, B / fmax(halflife, 1e-8));
    be->ema(st->ema, m->w, (float)beta, m->n_floats);
    st->images += B;
    st->step++;
    if (info) *info = (struct msd_step_info){stage, loss, norm, lr};
    return 0;
}

// ---------------------------------------------------------------------------------------------------
// Held-out loss

int msd_eval_loss(struct msd_model *m, const float *w, const struct msd_dataset *data, int count,
                  const double *sigmas, int n_sigmas, double *losses) {
    const struct msd_backend *be = m->be;
    const int B = msd_model_batch(m);
    const size_t M = (size_t)m->cfg.in_channels * m->cfg.img_resolution * m->cfg.img_resolution;
    if (B <= 0) return msd_set_error("eval: the model is not planned");
    if (count <= 0 || count > data->n)
        return msd_set_error("eval: %d held-out images requested, the data set has %d", count, data->n);
    float *host = xmalloc((size_t)B * M * sizeof(float));
    float *y = be->alloc((size_t)B * M), *n = be->alloc((size_t)B * M);
    double *sig = xmalloc((size_t)B * sizeof *sig), *per = xmalloc((size_t)B * sizeof *per);
    float *saved = m->w;
    m->w = (float *)w; // evaluate with these weights (the EMA, say); restored below
    const struct msd_forward_opts fo = {false, 0};
    int rc = (y && n) ? 0 : msd_set_error("eval: cannot allocate a batch of %d images", B);
    for (int k = 0; rc == 0 && k < n_sigmas; k++) {
        const int stage = msd_config_stage_of(&m->cfg, sigmas[k]); // every image of the chunk is at sigma k
        double sum = 0;
        for (int first = 0; rc == 0 && first < count; first += B) {
            // a short last chunk is padded with images from the start and only its real ones counted
            const int real = count - first < B ? count - first : B;
            for (int j = 0; j < B; j++) msd_data_images(data, host + (size_t)j * M, (first + j) % count, 1);
            be->upload(y, host, (size_t)B * M);
            for (int j = 0; j < B; j++)
                for (size_t i = 0; i < M; i++)
                    host[(size_t)j * M + i] = msd_rng_normal(0, MSD_STREAM_EVAL, ((uint64_t)((first + j) % count) * M) + i);
            be->upload(n, host, (size_t)B * M);
            for (int j = 0; j < B; j++) sig[j] = sigmas[k];
            if (isnan(msd_loss(m, stage, y, n, sig, false, NULL, per, &fo))) {
                if (!msd_last_error()[0]) msd_set_error("held-out loss is NaN at sigma %g", sigmas[k]);
                rc = -1;
                break;
            }
            for (int j = 0; j < real; j++) sum += per[j];
        }
        losses[k] = sum / count;
    }
    m->w = saved;
    if (y) be->release(y);
    if (n) be->release(n);
    free(host), free(sig), free(per);
    return rc;
}

// ---------------------------------------------------------------------------------------------------
// The training state file

static char *opts_to_json(const struct msd_train_opts *o) {
    cJSON *j = cJSON_CreateObject();
    char seed[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)o->seed);
    cJSON_AddStringToObject(j, "seed", seed); // a string: JSON numbers lose 64-bit integers
    cJSON_AddNumberToObject(j, "batch", o->batch);
    cJSON_AddStringToObject(j, "policy", o->policy == MSD_POLICY_UNIFORM ? "uniform" : "lognormal");
    cJSON_AddNumberToObject(j, "P_mean", o->P_mean);
    cJSON_AddNumberToObject(j, "P_std", o->P_std);
    cJSON_AddNumberToObject(j, "lr", o->lr);
    cJSON_AddNumberToObject(j, "beta1", o->beta1);
    cJSON_AddNumberToObject(j, "beta2", o->beta2);
    cJSON_AddNumberToObject(j, "eps", o->eps);
    cJSON_AddNumberToObject(j, "lr_rampup", o->lr_rampup);
    cJSON_AddNumberToObject(j, "ema_halflife", o->ema_halflife);
    cJSON_AddNumberToObject(j, "ema_rampup", o->ema_rampup);
    cJSON_AddNumberToObject(j, "grad_clip", o->grad_clip);
    cJSON_AddBoolToObject(j, "xflip", o->xflip);
    char *text = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    CHECK(text != NULL, "out of memory printing the training options");
    return text;
}

// A whole number from the state file's metadata: decimal digits only (no sign, no space), at most max.
// *end gets the first character after the digits. false when s does not start with a digit or the
// number is above max (or above what strtoull holds).
static bool read_digits(const char *s, unsigned long long max, unsigned long long *out, const char **end) {
    *out = 0;
    *end = s;
    if (*s < '0' || *s > '9') return false;
    errno = 0;
    char *e;
    const unsigned long long v = strtoull(s, &e, 10);
    *end = e;
    if (errno == ERANGE || v > max) return false;
    *out = v;
    return true;
}

// Step counts are bounded by 2^53: far beyond any run, every count stays exact in a double (images
// seen are kept as one), and incrementing one can never overflow a long.
#define MAX_STATE_COUNT (1ull << 53)

static int opts_from_json(struct msd_train_opts *o, const char *text, const char *path) {
    const long nul = msd_json_nul_escape(text);
    if (nul >= 0)
        return msd_set_error("training state '%s': __metadata__ \"train\" holds \\u0000 at byte %ld, a NUL "
                             "character that would cut its string short", path, nul);
    cJSON *j = cJSON_Parse(text);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return msd_set_error("training state '%s': __metadata__ \"train\" is not a JSON object", path);
    }
    msd_train_defaults(o);
    struct { const char *key; double *dst; } nums[] = {
        {"P_mean", &o->P_mean}, {"P_std", &o->P_std}, {"lr", &o->lr}, {"beta1", &o->beta1},
        {"beta2", &o->beta2}, {"eps", &o->eps}, {"lr_rampup", &o->lr_rampup},
        {"ema_halflife", &o->ema_halflife}, {"ema_rampup", &o->ema_rampup}, {"grad_clip", &o->grad_clip}};
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < sizeof nums / sizeof nums[0]; i++) {
        cJSON *v = cJSON_GetObjectItemCaseSensitive(j, nums[i].key);
        if (!cJSON_IsNumber(v))
            rc = msd_set_error("training state '%s': \"train\".%s missing or not a number", path, nums[i].key);
        else *nums[i].dst = v->valuedouble;
    }
    cJSON *seed = cJSON_GetObjectItemCaseSensitive(j, "seed"), *batch = cJSON_GetObjectItemCaseSensitive(j, "batch");
    cJSON *policy = cJSON_GetObjectItemCaseSensitive(j, "policy"), *xflip = cJSON_GetObjectItemCaseSensitive(j, "xflip");
    if (rc == 0 && (!cJSON_IsString(seed) || !cJSON_IsNumber(batch) || !cJSON_IsString(policy) ||
                    !cJSON_IsBool(xflip)))
        rc = msd_set_error("training state '%s': \"train\" needs seed (string), batch (number), policy and xflip",
                           path);
    // the range of msdiff train --batch: the activations planned for the batch are sized by it
    if (rc == 0 && !(batch->valuedouble >= 1 && batch->valuedouble <= MSD_MAX_BATCH))
        rc = msd_set_error("training state '%s': \"train\" batch %g, expected a whole number of images from 1 to %d "
                           "(the range of msdiff train --batch)", path, batch->valuedouble, MSD_MAX_BATCH);
    const char *end = NULL;
    unsigned long long seed_value = 0;
    if (rc == 0 && (!read_digits(seed->valuestring, UINT64_MAX, &seed_value, &end) || *end ||
                    batch->valuedouble != batch->valueint))
        rc = msd_set_error("training state '%s': \"train\" seed '%s' or batch %g is not a whole number", path,
                           seed->valuestring, batch->valuedouble);
    if (rc == 0 && !(o->lr > 0 && isfinite(o->lr) && o->beta1 >= 0 && o->beta1 < 1 && o->beta2 >= 0 &&
                     o->beta2 < 1 && o->eps > 0 && o->P_std > 0 && isfinite(o->P_mean) && o->lr_rampup >= 0 &&
                     o->ema_halflife > 0 && o->ema_rampup >= 0 && o->grad_clip >= 0))
        rc = msd_set_error("training state '%s': \"train\" has a value out of range (lr > 0, betas in [0, 1), "
                           "eps > 0, P_std > 0, lr_rampup >= 0, ema_halflife > 0, ema_rampup >= 0, "
                           "grad_clip >= 0)", path);
    if (rc == 0) {
        o->seed = seed_value;
        o->batch = batch->valueint;
        o->xflip = cJSON_IsTrue(xflip);
        if (!strcmp(policy->valuestring, "uniform")) o->policy = MSD_POLICY_UNIFORM;
        else if (!strcmp(policy->valuestring, "lognormal")) o->policy = MSD_POLICY_LOGNORMAL;
        else rc = msd_set_error("training state '%s': policy '%s', expected lognormal or uniform", path,
                                policy->valuestring);
    }
    cJSON_Delete(j);
    return rc;
}

// The four buffers of the state file, each m->n_floats long, in the order of the file.
static const char *const STATE_TENSORS[4] = {"weights", "adam_m", "adam_v", "ema"};

// x (host, the state tensor `name` of model m) has no NaN and no infinity, or -1 with a message that
// names the file, the tensor, the first bad element and the parameter it belongs to, then `then`.
static int check_finite(const struct msd_model *m, const float *x, const char *path, const char *name,
                        const char *then) {
    size_t i = 0;
    while (i < m->n_floats && isfinite(x[i])) i++;
    if (i == m->n_floats) return 0;
    int k = 0;
    while (k + 1 < m->n_params && m->params[k + 1].offset <= i) k++; // the table lays offsets out in order
    return msd_set_error("training state '%s': tensor '%s' element %zu (parameter '%s' element %zu) is %g; "
                         "expected finite values%s", path, name, i, m->params[k].name, i - m->params[k].offset,
                         (double)x[i], then);
}

int msd_train_check_finite(const struct msd_model *m, const struct msd_train_state *st, const char *path) {
    float *host = xmalloc(m->n_floats * sizeof(float));
    const float *src[4] = {m->w, st->adam_m, st->adam_v, st->ema};
    int rc = 0;
    for (int i = 0; rc == 0 && i < 4; i++) {
        m->be->download(host, src[i], m->n_floats);
        rc = check_finite(m, host, path, STATE_TENSORS[i], "; nothing was written");
    }
    free(host);
    return rc;
}

int msd_train_save(const char *path, const struct msd_model *m, const struct msd_train_state *st,
                   const struct msd_train_opts *o) {
    const size_t N = m->n_floats;
    float *host = xmalloc(4 * N * sizeof(float));
    const float *src[4] = {m->w, st->adam_m, st->adam_v, st->ema};
    struct msd_st_entry e[4];
    for (int i = 0; i < 4; i++) {
        m->be->download(host + i * N, src[i], N);
        e[i] = (struct msd_st_entry){STATE_TENSORS[i], 1, {(int64_t)N}, host + i * N};
        // loading refuses a NaN or an infinity, so a state holding one must never replace a good file
        if (check_finite(m, host + i * N, path, STATE_TENSORS[i], "; nothing was written") < 0) {
            free(host);
            return -1;
        }
    }
    char step[32], images[32], adam[16 * (1 + MSD_MAX_STAGES)] = "";
    snprintf(step, sizeof step, "%ld", st->step);
    snprintf(images, sizeof images, "%.17g", st->images);
    for (int g = 0; g <= m->cfg.n_stages; g++)
        snprintf(adam + strlen(adam), sizeof adam - strlen(adam), "%s%ld", g ? "," : "", st->adam_steps[g]);
    char *config = msd_config_to_json(&m->cfg), *train = opts_to_json(o);
    const char *keys[] = {"config", "train", "step", "images", "adam_steps"};
    const char *values[] = {config, train, step, images, adam};
    int rc = msd_st_write(path, e, 4, keys, values, 5);
    free(config), free(train), free(host);
    return rc;
}

// The network is built from the file's config as a table only; the four buffers of its size are
// allocated once the file is known to hold each of them with that many elements.
int msd_train_load(const char *path, struct msd_model *m, struct msd_train_state *st,
                   struct msd_train_opts *o, const struct msd_backend *be) {
    memset(m, 0, sizeof *m);
    memset(st, 0, sizeof *st);
    struct msd_st_file f;
    if (msd_st_read_as(&f, path, "training state") < 0) return -1;
    const char *config = msd_st_meta(&f, "config"), *train = msd_st_meta(&f, "train");
    const char *step = msd_st_meta(&f, "step"), *images = msd_st_meta(&f, "images");
    const char *adam = msd_st_meta(&f, "adam_steps");
    struct msd_config cfg;
    int rc = 0;
    if (!config || !train || !step || !images || !adam)
        rc = msd_set_error("training state '%s': __metadata__ lacks one of config, train, step, images, "
                           "adam_steps (is it a model checkpoint rather than a state file?)", path);
    if (rc == 0 && (msd_config_from_json(&cfg, config, path) < 0 || opts_from_json(o, train, path) < 0))
        rc = -1;
    // the model's own messages (its size, the memory it lacks) get the file's name
    if (rc == 0 && msd_model_build(m, &cfg, be) < 0)
        rc = msd_set_error("training state '%s': %s", path, msd_last_error());
    for (int i = 0; rc == 0 && i < 4; i++)
        rc = msd_st_check_f32(&f, STATE_TENSORS[i], 1, (int64_t[]){(int64_t)m->n_floats});
    if (rc == 0 && (msd_model_alloc(m) < 0 || msd_train_state_init(st, m) < 0))
        rc = msd_set_error("training state '%s': %s", path, msd_last_error());
    if (rc == 0) {
        const char *end;
        unsigned long long count;
        if (!read_digits(step, MAX_STATE_COUNT, &count, &end) || *end)
            rc = msd_set_error("training state '%s': step '%s', expected a count from 0 to 2^53", path, step);
        st->step = (long)count;
        char *images_end;
        st->images = strtod(images, &images_end);
        if (rc == 0 && (*images_end || !(st->images >= 0) || st->images > (double)MAX_STATE_COUNT))
            rc = msd_set_error("training state '%s': images '%s', expected a count from 0 to 2^53", path, images);
        const char *p = adam;
        for (int g = 0; rc == 0 && g <= cfg.n_stages; g++) {
            if (!read_digits(p, MAX_STATE_COUNT, &count, &end) || (g < cfg.n_stages ? *end != ',' : *end != '\0'))
                rc = msd_set_error("training state '%s': adam_steps '%s', expected %d comma-separated counts "
                                   "from 0 to 2^53", path, adam, cfg.n_stages + 1);
            st->adam_steps[g] = (long)count;
            p = end + 1;
        }
    }
    float *host = rc == 0 ? xmalloc(m->n_floats * sizeof(float)) : NULL;
    float *dst[4] = {m->w, st->adam_m, st->adam_v, st->ema};
    for (int i = 0; rc == 0 && i < 4; i++) {
        rc = msd_st_get_f32(&f, STATE_TENSORS[i], 1, (int64_t[]){(int64_t)m->n_floats}, host);
        if (rc == 0) rc = check_finite(m, host, path, STATE_TENSORS[i], "");
        if (rc == 0) be->upload(dst[i], host, m->n_floats);
    }
    free(host);
    msd_st_free(&f);
    if (rc < 0) {
        if (m->params) msd_train_state_free(st, m), msd_model_free(m);
        return -1;
    }
    return 0;
}
