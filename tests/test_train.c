// test_train.c: the training step and its state: which stages the policies train and how often,
// that training lowers a held-out loss, that only the routed decoder moves, that a resumed run
// equals an uninterrupted one bit for bit, that a state file is checked before it is used and a
// state with a NaN is never saved, and what a run folder keeps when training goes wrong.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "common/cli/run.h"
#include "common/core/backend.h"
#include "common/core/error.h"
#include "common/model/model.h"
#include "common/model/precond.h"
#include "common/core/rng.h"
#include "common/io/checkpoint.h"
#include "common/io/safetensors.h"
#include "common/model/train.h"
#include "testutil.h"

static const struct msd_backend *be = &msd_backend_ref;

// The standard normal CDF.
static double Phi(double z) { return 0.5 * erfc(-z / sqrt(2.0)); }

// ---------------------------------------------------------------------------------------------------
// Stage frequencies

// Under the lognormal policy a step trains stage s with the probability that one draw of ln sigma ~
// N(P_mean, P_std^2) falls in (b_{s-1}, b_s]; under the uniform policy with 1/S. Over K steps each
// count must lie within 5 binomial standard deviations; every sigma of a batch lies in its stage.
static void check_frequencies(enum msd_policy policy, enum msd_precond pc) {
    struct msd_config c;
    ck_assert(msd_config_preset(&c, "mini-ms") == 0);
    c.precond = pc;
    struct msd_train_opts o;
    msd_train_defaults(&o);
    o.policy = policy;
    o.batch = 4;
    o.seed = 77;
    const int K = 20000;
    long count[MSD_MAX_STAGES] = {0};
    double sig[4];
    for (long step = 0; step < K; step++) {
        int s = msd_train_pick(&c, &o, step, sig);
        ck_assert_msg(s >= 0 && s < c.n_stages, "step %ld: stage %d (%s)", step, s, msd_last_error());
        for (int j = 0; j < o.batch; j++)
            ck_assert_msg(msd_config_stage_of(&c, sig[j]) == s, "step %ld: sigma %g not in stage %d", step, sig[j], s);
        count[s]++;
    }
    for (int s = 0; s < c.n_stages; s++) {
        double p;
        if (policy == MSD_POLICY_UNIFORM) {
            p = 1.0 / c.n_stages;
        } else if (pc == MSD_PRECOND_EDM) {
            double lo = s == 0 ? -INFINITY : (log(c.boundaries[s - 1]) - o.P_mean) / o.P_std;
            double hi = s == c.n_stages - 1 ? INFINITY : (log(c.boundaries[s]) - o.P_mean) / o.P_std;
            p = Phi(hi) - Phi(lo);
        } else { // VP: t ~ U(eps_t, 1), sigma increasing in t
            double lo = s == 0 ? MSD_VP_EPS_T : msd_vp_sigma_inv(c.boundaries[s - 1]);
            double hi = s == c.n_stages - 1 ? 1.0 : msd_vp_sigma_inv(c.boundaries[s]);
            p = (hi - lo) / (1.0 - MSD_VP_EPS_T);
        }
        double expect = K * p, sd = sqrt(K * p * (1 - p));
        printf("policy %s loss %s stage %d: %ld of %d steps, expected %.1f +- %.1f\n",
               policy == MSD_POLICY_UNIFORM ? "uniform" : "lognormal", pc == MSD_PRECOND_VP ? "vp" : "edm", s,
               count[s], K, expect, sd);
        ck_assert_msg(fabs(count[s] - expect) <= 5 * sd + 1, "stage %d: %ld steps, expected %.1f +- 5 x %.1f", s,
                      count[s], expect, sd);
    }
}

START_TEST(lognormal_frequencies) { check_frequencies(MSD_POLICY_LOGNORMAL, MSD_PRECOND_EDM); }
END_TEST
START_TEST(uniform_frequencies) { check_frequencies(MSD_POLICY_UNIFORM, MSD_PRECOND_EDM); }
END_TEST
START_TEST(vp_frequencies) { check_frequencies(MSD_POLICY_LOGNORMAL, MSD_PRECOND_VP); }
END_TEST

// Within a stage, rejection sampling keeps the law's shape: the mean of ln sigma over the batches of
// the middle stage matches the truncated normal's mean within 5 standard errors.
START_TEST(restricted_law) {
    struct msd_config c;
    ck_assert(msd_config_preset(&c, "mini-ms") == 0);
    struct msd_train_opts o;
    msd_train_defaults(&o);
    o.policy = MSD_POLICY_UNIFORM;
    o.batch = 8;
    double sum = 0, sumsq = 0, sig[8];
    long n = 0;
    for (long step = 0; step < 6000; step++)
        if (msd_train_pick(&c, &o, step, sig) == 1)
            for (int j = 0; j < o.batch; j++) sum += log(sig[j]), sumsq += log(sig[j]) * log(sig[j]), n++;
    const double a = (log(c.boundaries[0]) - o.P_mean) / o.P_std, b = (log(c.boundaries[1]) - o.P_mean) / o.P_std;
    const double phi_a = exp(-a * a / 2) / sqrt(2 * 3.14159265358979323846), phi_b = exp(-b * b / 2) / sqrt(2 * 3.14159265358979323846);
    const double want = o.P_mean + o.P_std * (phi_a - phi_b) / (Phi(b) - Phi(a));
    const double mean = sum / n, sd = sqrt(sumsq / n - mean * mean);
    ck_assert_msg(fabs(mean - want) < 5 * sd / sqrt((double)n), "mean ln sigma in stage 1: %.5f, want %.5f +- %.5f",
                  mean, want, 5 * sd / sqrt((double)n));
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// A small synthetic data set for the tiny network (8x8, 2 channels): each image is one of a few
// patterns (a bar in channel 0 at one of 8 rows, a bar in channel 1 at one of 8 columns), so that a
// few hundred steps can learn something measurable.

static void synthetic(struct msd_dataset *d, int n, uint64_t seed) {
    memset(d, 0, sizeof *d);
    d->n = n, d->channels = 2, d->res = 8;
    d->pixels = malloc((size_t)n * 2 * 64);
    for (int k = 0; k < n; k++) {
        int row = msd_rng_u32(seed, MSD_STREAM_TEST, 2 * k) % 8, col = msd_rng_u32(seed, MSD_STREAM_TEST, 2 * k + 1) % 8;
        uint8_t *img = d->pixels + (size_t)k * 128;
        for (int p = 0; p < 64; p++) {
            img[p] = p / 8 == row ? 255 : 0;
            img[64 + p] = p % 8 == col ? 255 : 0;
        }
    }
    snprintf(d->source, sizeof d->source, "synthetic bars (seed %llu)", (unsigned long long)seed);
}

static void tiny_model(struct msd_model *m, const char *preset, float dropout, uint64_t seed) {
    struct msd_config c;
    ck_assert(msd_config_preset(&c, preset) == 0);
    c.dropout = dropout;
    ck_assert_msg(msd_model_create(m, &c, be) == 0, "%s", msd_last_error());
    msd_model_init_weights(m, seed);
}

// What the two step tests below train: a tiny-ms model with its state and options.
struct trainer {
    struct msd_model m;
    struct msd_train_state st;
    struct msd_train_opts o;
};

// tiny-ms with dropout and weights from seed; the default options with batch `batch` and no
// learning-rate ramp-up; the state initialised and the model planned for the batch with gradients.
static void trainer_init(struct trainer *t, float dropout, uint64_t seed, int batch) {
    tiny_model(&t->m, "tiny-ms", dropout, seed);
    msd_train_defaults(&t->o);
    t->o.batch = batch;
    t->o.lr_rampup = 0;
    ck_assert(msd_train_state_init(&t->st, &t->m) == 0);
    ck_assert(msd_model_plan(&t->m, batch, true) == 0);
}

static void trainer_free(struct trainer *t) {
    msd_train_state_free(&t->st, &t->m);
    msd_model_free(&t->m);
}

// A few hundred steps on the bars lower the held-out loss at fixed noise levels in both stages.
START_TEST(training_lowers_heldout_loss) {
    struct msd_dataset train, held;
    synthetic(&train, 512, 1);
    synthetic(&held, 64, 2);
    struct trainer t;
    trainer_init(&t, 0.0f, 5, 16);
    t.o.lr = 2e-3;
    t.o.ema_halflife = 500;
    t.o.policy = MSD_POLICY_UNIFORM; // both decoders get steps
    const double sigmas[3] = {0.2, 0.8, 3.0}; // stages 0, 0, 1 (boundary 1.0)
    double before[3], after[3], after_ema[3];
    ck_assert(msd_eval_loss(&t.m, t.m.w, &held, 64, sigmas, 3, before) == 0);
    for (int k = 0; k < 300; k++) {
        struct msd_step_info info;
        ck_assert_msg(msd_train_step(&t.m, &t.st, &train, &t.o, &info) == 0, "%s", msd_last_error());
    }
    ck_assert(msd_eval_loss(&t.m, t.m.w, &held, 64, sigmas, 3, after) == 0);
    ck_assert(msd_eval_loss(&t.m, t.st.ema, &held, 64, sigmas, 3, after_ema) == 0);
    for (int k = 0; k < 3; k++) {
        printf("held-out loss at sigma %.1f: %.4f before, %.4f after 300 steps (EMA %.4f)\n", sigmas[k], before[k],
               after[k], after_ema[k]);
        ck_assert_msg(after[k] < 0.7 * before[k], "sigma %g: held-out loss %.4f -> %.4f", sigmas[k], before[k], after[k]);
        ck_assert_msg(after_ema[k] < before[k], "sigma %g: EMA held-out loss %.4f -> %.4f", sigmas[k], before[k],
                      after_ema[k]);
    }
    const long *steps = t.st.adam_steps;
    ck_assert_msg(steps[0] == 300 && steps[1] + steps[2] == 300 && steps[1] > 50 && steps[2] > 50,
                  "Adam step counts: shared %ld, decoder 0 %ld, decoder 1 %ld", steps[0], steps[1], steps[2]);
    trainer_free(&t);
    msd_data_free(&train);
    msd_data_free(&held);
}
END_TEST

// A step of stage s changes the shared weights and decoder s, and leaves every other decoder's
// weights and Adam moments exactly as they were.
START_TEST(only_the_routed_decoder_moves) {
    struct msd_dataset data;
    synthetic(&data, 64, 3);
    struct trainer t;
    trainer_init(&t, 0.1f, 6, 4);
    const struct msd_model *m = &t.m;
    float *before = malloc(m->n_floats * sizeof(float));
    for (int k = 0; k < 6; k++) {
        memcpy(before, m->w, m->n_floats * sizeof(float));
        struct msd_step_info info;
        ck_assert(msd_train_step(&t.m, &t.st, &data, &t.o, &info) == 0);
        for (int p = 0; p < m->n_params; p++) {
            const struct msd_param *q = &m->params[p];
            const int changed = memcmp(before + q->offset, m->w + q->offset, q->numel * sizeof(float)) != 0;
            if (q->owner != MSD_OWNER_SHARED && q->owner != info.stage)
                ck_assert_msg(!changed, "step %d (stage %d) changed %s", k, info.stage, q->name);
        }
    }
    free(before);
    trainer_free(&t);
    msd_data_free(&data);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// Resume

static void run_steps(struct msd_model *m, struct msd_train_state *st, const struct msd_dataset *d,
                      const struct msd_train_opts *o, long until) {
    ck_assert(msd_model_plan(m, o->batch, true) == 0);
    while (st->step < until) ck_assert_msg(msd_train_step(m, st, d, o, NULL) == 0, "%s", msd_last_error());
}

// N steps in one go, and N/2 steps, a save, a load into fresh memory and N/2 more, give the same
// weights, moments, EMA and counters bit for bit (dropout on, both stages visited, clipping on).
START_TEST(resume_is_exact) {
    struct msd_dataset data;
    synthetic(&data, 128, 4);
    struct msd_train_opts o;
    msd_train_defaults(&o);
    o.batch = 4;
    o.seed = 99;
    o.lr_rampup = 40;
    o.grad_clip = 5.0;
    o.xflip = true;
    o.policy = MSD_POLICY_UNIFORM;
    const long N = 12;
    struct msd_model a, b;
    struct msd_train_state sa, sb;
    tiny_model(&a, "tiny-ms", 0.2f, 8);
    ck_assert(msd_train_state_init(&sa, &a) == 0);
    run_steps(&a, &sa, &data, &o, N);
    tiny_model(&b, "tiny-ms", 0.2f, 8);
    ck_assert(msd_train_state_init(&sb, &b) == 0);
    run_steps(&b, &sb, &data, &o, N / 2);
    char dir[] = "/tmp/msd-train-XXXXXX", path[256];
    ck_assert(mkdtemp(dir) != NULL);
    snprintf(path, sizeof path, "%s/state.safetensors", dir);
    ck_assert_msg(msd_train_save(path, &b, &sb, &o) == 0, "%s", msd_last_error());
    msd_train_state_free(&sb, &b);
    msd_model_free(&b);
    struct msd_train_opts o2;
    ck_assert_msg(msd_train_load(path, &b, &sb, &o2, be) == 0, "%s", msd_last_error());
    ck_assert(o2.seed == o.seed && o2.batch == o.batch && o2.lr_rampup == o.lr_rampup && o2.grad_clip == o.grad_clip &&
              o2.xflip == o.xflip && o2.policy == o.policy);
    ck_assert_int_eq(sb.step, N / 2);
    run_steps(&b, &sb, &data, &o2, N);
    ck_assert_int_eq(sa.step, sb.step);
    ck_assert(sa.images == sb.images);
    for (int g = 0; g <= a.cfg.n_stages; g++) ck_assert_int_eq(sa.adam_steps[g], sb.adam_steps[g]);
    ck_assert_msg(sa.adam_steps[1] > 0 && sa.adam_steps[2] > 0, "both decoders should train: %ld %ld",
                  sa.adam_steps[1], sa.adam_steps[2]);
    const float *x[4] = {a.w, sa.adam_m, sa.adam_v, sa.ema}, *y[4] = {b.w, sb.adam_m, sb.adam_v, sb.ema};
    const char *names[4] = {"weights", "adam_m", "adam_v", "ema"};
    for (int i = 0; i < 4; i++)
        ck_assert_msg(memcmp(x[i], y[i], a.n_floats * sizeof(float)) == 0, "%s differ after resume", names[i]);
    unlink(path);
    rmdir(dir);
    msd_train_state_free(&sa, &a), msd_train_state_free(&sb, &b);
    msd_model_free(&a), msd_model_free(&b);
    msd_data_free(&data);
}
END_TEST

// A state file like `from` with one change: the metadata value `key` replaced by `value` (within the
// "train" JSON when train_key is set: there the field train_key, a string, or a number when `number`),
// or element `index` of the state tensor `tensor` set to `poke`. Everything else is copied as it is.
struct state_edit {
    const char *key, *train_key, *value;
    bool number;
    const char *tensor;
    size_t index;
    float poke;
};

static void edit_state(const char *from, const char *to, const struct state_edit *ed) {
    struct msd_st_file f;
    ck_assert_msg(msd_st_read(&f, from) == 0, "%s", msd_last_error());
    struct msd_st_entry e[4];
    const char *names[4] = {"weights", "adam_m", "adam_v", "ema"};
    for (int i = 0; i < 4; i++) {
        const struct msd_st_tensor *t = msd_st_find(&f, names[i]);
        ck_assert(t && t->ndim == 1);
        float *data = malloc((size_t)t->shape[0] * sizeof *data);
        ck_assert(data && msd_st_get_f32(&f, names[i], 1, t->shape, data) == 0);
        if (ed->tensor && !strcmp(ed->tensor, names[i])) {
            ck_assert((int64_t)ed->index < t->shape[0]);
            data[ed->index] = ed->poke;
        }
        e[i] = (struct msd_st_entry){names[i], 1, {t->shape[0]}, data};
    }
    const char *keys[16], *values[16];
    char *train_text = NULL;
    int n = 0;
    for (cJSON *m = f.metadata->child; m && n < 16; m = m->next, n++) {
        keys[n] = m->string, values[n] = m->valuestring;
        if (!ed->key || strcmp(m->string, ed->key)) continue;
        if (!ed->train_key) {
            values[n] = ed->value;
            continue;
        }
        cJSON *j = cJSON_Parse(m->valuestring);
        ck_assert(j && cJSON_GetObjectItemCaseSensitive(j, ed->train_key));
        cJSON *v = ed->number ? cJSON_CreateNumber(strtod(ed->value, NULL)) : cJSON_CreateString(ed->value);
        cJSON_ReplaceItemInObjectCaseSensitive(j, ed->train_key, v);
        values[n] = train_text = cJSON_PrintUnformatted(j);
        cJSON_Delete(j);
    }
    ck_assert_msg(msd_st_write(to, e, 4, keys, values, n) == 0, "%s", msd_last_error());
    for (int i = 0; i < 4; i++) free((void *)e[i].data);
    free(train_text);
    msd_st_free(&f);
}

// tiny-ms (weights from seed 3) with a fresh training state and the default options.
static void fresh_state(struct msd_model *m, struct msd_train_state *st, struct msd_train_opts *o) {
    msd_train_defaults(o);
    tiny_model(m, "tiny-ms", 0.0f, 3);
    ck_assert(msd_train_state_init(st, m) == 0);
}

// A fresh training state of tiny-ms (default options) saved in the test folder as name; its path.
static const char *save_fresh_state(const char *name) {
    struct msd_model m;
    struct msd_train_state st;
    struct msd_train_opts o;
    fresh_state(&m, &st, &o);
    const char *path = test_path(name);
    ck_assert_msg(msd_train_save(path, &m, &st, &o) == 0, "%s", msd_last_error());
    msd_train_state_free(&st, &m);
    msd_model_free(&m);
    return path;
}

static void rewrite_state(const char *from, const char *to, const char *key, const char *train_key,
                          const char *value) {
    edit_state(from, to, &(struct state_edit){.key = key, .train_key = train_key, .value = value});
}

// The counts and the seed of a state file are read as whole numbers in range, or refused with a
// message naming the field: a count past 2^53 would overflow at the next increment, a negative seed
// would wrap round to a huge one.
START_TEST(state_numbers_are_checked) {
    struct msd_model m;
    struct msd_train_state st;
    struct msd_train_opts o;
    const char *good = save_fresh_state("good.safetensors"), *bad = test_path("bad.safetensors");
    const struct { const char *key, *train_key, *value, *words; } cases[] = {
        {"adam_steps", NULL, "99999999999999999999,0,0", "adam_steps '99999999999999999999,0,0', expected 3"},
        {"adam_steps", NULL, "9007199254740993,0,0", "from 0 to 2^53"},
        {"adam_steps", NULL, "1,-1,0", "adam_steps '1,-1,0'"},
        {"adam_steps", NULL, "1, 2,0", "adam_steps '1, 2,0'"},
        {"step", NULL, "-1", "step '-1', expected a count"},
        {"step", NULL, "+4", "step '+4'"},
        {"step", NULL, "18446744073709551616", "step '18446744073709551616'"},
        {"images", NULL, "1e300", "images '1e300'"},
        {"train", "seed", "-1", "seed '-1'"},
        {"train", "seed", "18446744073709551616", "seed '18446744073709551616'"},
        // cJSON would read "uniform\u0000x" as "uniform": the escape is refused before it parses
        {"train", NULL, "{\"policy\": \"uniform\\u0000x\"}", "\"train\" holds \\u0000 at byte 19"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rewrite_state(good, bad, cases[i].key, cases[i].train_key, cases[i].value);
        ck_assert_msg(msd_train_load(bad, &m, &st, &o, be) == -1, "%s = %s loaded", cases[i].key, cases[i].value);
        ck_assert_msg(strstr(msd_last_error(), cases[i].words), "%s = %s: '%s' lacks '%s'", cases[i].key,
                      cases[i].value, msd_last_error(), cases[i].words);
    }
    // the largest values are accepted
    rewrite_state(good, bad, "adam_steps", NULL, "9007199254740992,0,7");
    ck_assert_msg(msd_train_load(bad, &m, &st, &o, be) == 0, "%s", msd_last_error());
    ck_assert(st.adam_steps[0] == 9007199254740992L && st.adam_steps[2] == 7);
    msd_train_state_free(&st, &m);
    msd_model_free(&m);
    rewrite_state(good, bad, "train", "seed", "18446744073709551615");
    ck_assert_msg(msd_train_load(bad, &m, &st, &o, be) == 0, "%s", msd_last_error());
    ck_assert(o.seed == UINT64_MAX);
    msd_train_state_free(&st, &m);
    msd_model_free(&m);
}
END_TEST

// A state file's batch is a count of images within msdiff train --batch's range: the activations
// planned on --resume are sized by it, so 10^9 would ask for terabytes.
START_TEST(state_batch_is_bounded) {
    struct msd_model m;
    struct msd_train_state st;
    struct msd_train_opts o;
    const char *good = save_fresh_state("good.safetensors"), *bad = test_path("bad.safetensors");
    const char *refused[] = {"1000000000", "65537", "0", "-4", "1e300"};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        edit_state(good, bad, &(struct state_edit){.key = "train", .train_key = "batch", .value = refused[i],
                                                   .number = true});
        ck_assert_msg(msd_train_load(bad, &m, &st, &o, be) == -1, "batch %s loaded", refused[i]);
        ck_assert_msg(strstr(msd_last_error(), "batch") && strstr(msd_last_error(), "from 1 to 65536") &&
                          strstr(msd_last_error(), bad), "batch %s: message '%s'", refused[i], msd_last_error());
        ck_assert_msg(m.params == NULL && st.adam_m == NULL, "batch %s: the model was left built", refused[i]);
    }
    edit_state(good, bad, &(struct state_edit){.key = "train", .train_key = "batch", .value = "65536", .number = true});
    ck_assert_msg(msd_train_load(bad, &m, &st, &o, be) == 0, "batch 65536: %s", msd_last_error());
    ck_assert_int_eq(o.batch, 65536);
    msd_train_state_free(&st, &m);
    msd_model_free(&m);
}
END_TEST

// ref with the largest allocation recorded (floats).
static size_t largest_alloc;
static float *recording_alloc(size_t n) {
    if (n > largest_alloc) largest_alloc = n;
    return msd_backend_ref.alloc(n);
}

// Every value of the state must be finite: a NaN in the weights, a moment or the EMA is refused with
// the file, the tensor, the element and the parameter it belongs to. A config that asks for more than
// the file holds is refused before its buffers are allocated: no allocation exceeds the file's size.
START_TEST(state_values_are_checked_before_use) {
    struct msd_model m;
    struct msd_train_state st;
    struct msd_train_opts o;
    fresh_state(&m, &st, &o);
    const char *good = test_path("good.safetensors"), *bad = test_path("bad.safetensors");
    ck_assert_msg(msd_train_save(good, &m, &st, &o) == 0, "%s", msd_last_error());
    const struct msd_param *p = &m.params[5]; // element 3 of parameter 5: its place in the flat buffers
    char param[160];
    snprintf(param, sizeof param, "(parameter '%s' element 3)", p->name);
    const size_t at = p->offset + 3;
    msd_train_state_free(&st, &m);
    msd_model_free(&m);
    const char *tensors[4] = {"weights", "adam_m", "adam_v", "ema"};
    const float values[4] = {NAN, INFINITY, NAN, -INFINITY};
    for (int i = 0; i < 4; i++) {
        edit_state(good, bad, &(struct state_edit){.tensor = tensors[i], .index = at, .poke = values[i]});
        ck_assert_msg(msd_train_load(bad, &m, &st, &o, be) == -1, "a %g in %s loaded", (double)values[i], tensors[i]);
        char want[256];
        snprintf(want, sizeof want, "training state '%s': tensor '%s' element %zu %s is %g", bad, tensors[i], at,
                 param, (double)values[i]);
        ck_assert_msg(strstr(msd_last_error(), want), "message '%s' lacks '%s'", msd_last_error(), want);
        ck_assert_msg(m.params == NULL && st.adam_m == NULL, "%s: the model was left built", tensors[i]);
    }
    // decoder 0 widened to 1024 (GroupNorm groups of 1024 channels keep the config valid)
    struct msd_config c;
    ck_assert(msd_config_preset(&c, "tiny-ms") == 0);
    c.dec_channels[0] = 1024, c.gn_min_channels = 1024;
    char *json = msd_config_to_json(&c);
    rewrite_state(good, bad, "config", NULL, json);
    free(json);
    struct msd_backend recording = msd_backend_ref;
    recording.alloc = recording_alloc;
    ck_assert_msg(msd_train_load(bad, &m, &st, &o, &recording) == -1, "a config of another network loaded");
    ck_assert_msg(strstr(msd_last_error(), "tensor 'weights' has shape"), "message '%s'", msd_last_error());
    size_t bytes;
    free(test_read_file(bad, &bytes));
    ck_assert_msg(largest_alloc * sizeof(float) <= bytes, "the load allocated %zu floats, the file has %zu bytes",
                  largest_alloc, bytes);
}
END_TEST

// A state or checkpoint with a NaN or an infinity is never saved: the message names the buffer, the
// element and the parameter, and the file already at the path keeps its bytes, with no temp file left.
START_TEST(saves_refuse_nonfinite_values) {
    struct msd_model m;
    struct msd_train_state st;
    struct msd_train_opts o;
    fresh_state(&m, &st, &o);
    const char *path = test_path("state.safetensors"), *ck = test_path("ema.safetensors");
    ck_assert_msg(msd_train_save(path, &m, &st, &o) == 0 && msd_checkpoint_save(&m, ck, NULL, NULL, 0) == 0, "%s",
                  msd_last_error());
    size_t n_before, n_ck;
    char *before = test_read_file(path, &n_before), *ck_before = test_read_file(ck, &n_ck);
    float *bufs[4] = {m.w, st.adam_m, st.adam_v, st.ema};
    const char *names[4] = {"weights", "adam_m", "adam_v", "ema"};
    const struct msd_param *p = &m.params[m.n_params - 1];
    for (int i = 0; i < 4; i++) {
        const float keep = bufs[i][p->offset + 1];
        bufs[i][p->offset + 1] = i % 2 ? INFINITY : NAN;
        ck_assert_msg(msd_train_save(path, &m, &st, &o) == -1, "a state with a bad %s was saved", names[i]);
        char want[256];
        snprintf(want, sizeof want, "tensor '%s' element %zu (parameter '%s' element 1) is %s", names[i],
                 p->offset + 1, p->name, i % 2 ? "inf" : "nan");
        ck_assert_msg(strstr(msd_last_error(), want) && strstr(msd_last_error(), "nothing was written"),
                      "message '%s' lacks '%s'", msd_last_error(), want);
        if (i == 0) { // the weights as a checkpoint, too
            ck_assert_msg(msd_checkpoint_save(&m, ck, NULL, NULL, 0) == -1, "a checkpoint with a NaN was saved");
            snprintf(want, sizeof want, "tensor '%s' element 1 is nan", p->name);
            ck_assert_msg(strstr(msd_last_error(), want), "message '%s' lacks '%s'", msd_last_error(), want);
        }
        bufs[i][p->offset + 1] = keep;
    }
    size_t n_after, n_ck_after;
    char *after = test_read_file(path, &n_after), *ck_after = test_read_file(ck, &n_ck_after);
    ck_assert_msg(n_after == n_before && !memcmp(before, after, n_before), "the state file changed");
    ck_assert_msg(n_ck_after == n_ck && !memcmp(ck_before, ck_after, n_ck), "the checkpoint changed");
    ck_assert_msg(!test_exists(test_pathf("%s.tmp", path)) && !test_exists(test_pathf("%s.tmp", ck)),
                  "a temp file was left behind");
    free(before), free(after), free(ck_before), free(ck_after);
    msd_train_state_free(&st, &m);
    msd_model_free(&m);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// A run folder (common/cli/run.h) when training goes wrong

// The output bias of every decoder at 3e38, finite but so large that D, and the loss, overflow.
static void blow_up(struct msd_model *m) {
    for (int s = 0; s < m->cfg.n_stages; s++)
        for (int c = 0; c < m->dec[s].aux_conv.cout; c++) m->w[m->dec[s].aux_conv.b + c] = 3e38f;
}

// ref, but only the next `allocations_left` allocations succeed: memory running out part way.
static int allocations_left;
static float *little_memory(size_t n) { return allocations_left-- > 0 ? msd_backend_ref.alloc(n) : NULL; }

// A step whose loss cannot be computed for want of memory (the denoiser's buffers, allocated at the
// first loss) says so, and is not reported as a loss of NaN; the weights are left alone.
START_TEST(step_out_of_memory_says_why) {
    struct trainer t;
    trainer_init(&t, 0.0f, 7, 4);
    struct msd_dataset data;
    synthetic(&data, 64, 9);
    struct msd_backend starved = msd_backend_ref;
    starved.alloc = little_memory;
    allocations_left = 2; // the step's batch (clean images and noise), then none for the denoiser
    float *before = malloc(t.m.n_floats * sizeof(float));
    ck_assert(before);
    memcpy(before, t.m.w, t.m.n_floats * sizeof(float));
    t.m.be = &starved;
    struct msd_step_info info;
    const int rc = msd_train_step(&t.m, &t.st, &data, &t.o, &info);
    t.m.be = &msd_backend_ref;
    const char *msg = msd_last_error();
    ck_assert_msg(rc == -1 && strstr(msg, "step 0: cannot allocate") && strstr(msg, "denoiser") &&
                      !strstr(msg, "the loss is"), "rc %d, message: %s", rc, msg);
    ck_assert_msg(!memcmp(before, t.m.w, t.m.n_floats * sizeof(float)), "the failed step changed the weights");
    free(before);
    msd_data_free(&data);
    trainer_free(&t);
}
END_TEST

// msd_run_train on the bars in `dir` up to `steps`, quietly; its result.
static int run_to(struct msd_model *m, struct msd_train_state *st, const struct msd_train_opts *o,
                  const char *dir, long steps) {
    struct msd_dataset data;
    synthetic(&data, 64, 9);
    const struct msd_run_opts r = {.dir = dir, .data = "bars", .steps = steps, .log_seconds = 1e9, .quiet = true};
    msd_clear_error();
    const int rc = msd_run_train(m, st, &data, o, &r);
    msd_data_free(&data);
    return rc;
}

// A failed step saves the state before it as state-failed.safetensors and says that state.safetensors
// is the last checkpoint only when there is one. A state gone non-finite in memory (here the EMA) is
// not saved: the run fails and the last checkpoint, state and EMA, keeps its bytes.
START_TEST(run_failures_keep_the_last_checkpoint) {
    struct trainer t;
    trainer_init(&t, 0.0f, 7, 4);
    const char *fresh = test_subdir("fresh"), *run = test_subdir("run");
    blow_up(&t.m);
    ck_assert_msg(run_to(&t.m, &t.st, &t.o, fresh, 3) == -1, "a step with an infinite loss passed");
    const char *msg = msd_last_error();
    ck_assert_msg(strstr(msg, "step 0: the loss is") && strstr(msg, "no checkpoint was saved before it") &&
                      !strstr(msg, "is the last checkpoint"), "message: %s", msg);
    ck_assert_msg(test_exists(test_pathf("%s/state-failed.safetensors", fresh)) &&
                      !test_exists(test_pathf("%s/state.safetensors", fresh)), "%s holds the wrong files", fresh);
    trainer_free(&t);

    trainer_init(&t, 0.0f, 7, 4);
    ck_assert_msg(run_to(&t.m, &t.st, &t.o, run, 1) == 0, "%s", msd_last_error());
    const char *state = test_pathf("%s/state.safetensors", run), *ema = test_pathf("%s/ema.safetensors", run);
    size_t n_state, n_ema, n;
    char *state_bytes = test_read_file(state, &n_state), *ema_bytes = test_read_file(ema, &n_ema), *now;
    t.st.ema[11] = NAN;
    ck_assert_msg(run_to(&t.m, &t.st, &t.o, run, 2) == -1, "a NaN in the EMA was saved");
    const char *why = msd_last_error();
    ck_assert_msg(strstr(why, "tensor 'ema' element 11") && strstr(why, "nothing was written"), "message: %s", why);
    now = test_read_file(state, &n);
    ck_assert_msg(n == n_state && !memcmp(now, state_bytes, n), "state.safetensors changed");
    free(now);
    now = test_read_file(ema, &n);
    ck_assert_msg(n == n_ema && !memcmp(now, ema_bytes, n), "ema.safetensors changed");
    free(now);
    trainer_free(&t);

    // resumed from the last checkpoint, a failing step names it
    ck_assert_msg(msd_train_load(state, &t.m, &t.st, &t.o, be) == 0, "%s", msd_last_error());
    blow_up(&t.m);
    ck_assert_msg(run_to(&t.m, &t.st, &t.o, run, 3) == -1, "a step with an infinite loss passed");
    ck_assert_msg(strstr(msd_last_error(), "step 1: the loss is") &&
                      strstr(msd_last_error(), "(state.safetensors is the last checkpoint)"), "message: %s",
                  msd_last_error());
    free(state_bytes), free(ema_bytes);
    trainer_free(&t);
}
END_TEST

int main(void) {
    test_tmpdir_make("train");
    const TTest *tests[] = {
        lognormal_frequencies, uniform_frequencies, vp_frequencies, restricted_law,
        only_the_routed_decoder_moves, resume_is_exact, training_lowers_heldout_loss,
        state_numbers_are_checked, state_batch_is_bounded, state_values_are_checked_before_use,
        saves_refuse_nonfinite_values, run_failures_keep_the_last_checkpoint, step_out_of_memory_says_why,
    };
    return run_tests("train", 300, tests, TEST_COUNT(tests));
}
