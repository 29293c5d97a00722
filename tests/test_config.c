// test_config.c: the network config. Every preset validates and survives the JSON round trip exactly;
// stage routing at and around the boundaries; each validation rule and each JSON error is reported
// with a message that names the offending field or key.
#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/model/config.h"
#include "common/core/error.h"
#include "common/core/util.h"
#include "testutil.h"

// The first field where a and b differ, written to buf ("" when equal). Whole arrays are compared,
// unused slots included: presets and the JSON reader both leave them 0. Floats are compared as bit
// patterns so that exactness means exactness (-0 vs 0, NaN payloads).
static const char *config_diff(const struct msd_config *a, const struct msd_config *b, char *buf, size_t n) {
#define INT_FIELD(f)                                                                                 \
    if (a->f != b->f) return snprintf(buf, n, #f ": %d vs %d", (int)a->f, (int)b->f), buf
#define FLOAT_FIELD(f)                                                                               \
    if (memcmp(&a->f, &b->f, sizeof(float)))                                                        \
    return snprintf(buf, n, #f ": %.9g vs %.9g", (double)a->f, (double)b->f), buf
    INT_FIELD(img_resolution); INT_FIELD(in_channels); INT_FIELD(out_channels);
    INT_FIELD(model_channels); INT_FIELD(n_levels); INT_FIELD(num_blocks); INT_FIELD(n_attn);
    INT_FIELD(channel_mult_emb); INT_FIELD(gn_groups); INT_FIELD(gn_min_channels);
    INT_FIELD(n_stages); INT_FIELD(separate); INT_FIELD(precond);
    FLOAT_FIELD(dropout); FLOAT_FIELD(sigma_data);
    for (int i = 0; i < MSD_MAX_LEVELS; i++) { INT_FIELD(channel_mult[i]); INT_FIELD(attn_resolutions[i]); }
    for (int i = 0; i < MSD_MAX_STAGES; i++) { INT_FIELD(dec_channels[i]); FLOAT_FIELD(boundaries[i]); }
#undef INT_FIELD
#undef FLOAT_FIELD
    buf[0] = '\0';
    return buf;
}

static struct msd_config preset(const char *name) {
    struct msd_config c;
    ck_assert_msg(msd_config_preset(&c, name) == 0, "preset '%s': %s", name, msd_last_error());
    return c;
}

// to_json then from_json must give back c field by field.
static void assert_round_trip(const struct msd_config *c, const char *what) {
    char *json = msd_config_to_json(c);
    ck_assert_msg(json != NULL, "%s: to_json returned NULL", what);
    struct msd_config back;
    int rc = msd_config_from_json(&back, json, what);
    ck_assert_msg(rc == 0, "%s: from_json failed: %s\nJSON: %s", what, msd_last_error(), json);
    char diff[200];
    ck_assert_msg(config_diff(c, &back, diff, sizeof diff)[0] == '\0', "%s: round trip changed %s\nJSON: %s",
                  what, diff, json);
    free(json);
}

START_TEST(presets_validate_and_round_trip) {
    int n = 0;
    for (const char *const *name = msd_preset_names; *name; name++, n++) {
        struct msd_config c = preset(*name);
        ck_assert_msg(msd_config_validate(&c) == 0, "preset '%s' does not validate: %s", *name,
                      msd_last_error());
        assert_round_trip(&c, *name);
        // the other values of the flags and floats that need all 9 digits also come back exactly
        c.precond = MSD_PRECOND_VP;
        c.separate = c.n_stages > 1;
        c.dropout = nextafterf(0.1f, 1.0f);
        c.sigma_data = 1.0f / 3.0f;
        for (int s = 0; s + 1 < c.n_stages; s++) c.boundaries[s] = nextafterf(c.boundaries[s], 0.0f);
        ck_assert_msg(msd_config_validate(&c) == 0, "variant of '%s': %s", *name, msd_last_error());
        assert_round_trip(&c, *name);
    }
    ck_assert_msg(n == 6, "msd_preset_names lists %d presets, want 6", n);
}
END_TEST

START_TEST(preset_values) {
    struct msd_config c = preset("cifar10-ms");
    ck_assert_msg(c.img_resolution == 32 && c.in_channels == 3 && c.model_channels == 128 &&
                      c.n_levels == 3 && c.num_blocks == 4 && c.n_attn == 1 && c.attn_resolutions[0] == 16,
                  "cifar10-ms: wrong shape");
    ck_assert_msg(c.n_stages == 3 && c.dec_channels[0] == 192 && c.dec_channels[1] == 128 &&
                      c.dec_channels[2] == 16, "cifar10-ms: decoders %d [%d, %d, %d], want 3 [192, 128, 16]",
                  c.n_stages, c.dec_channels[0], c.dec_channels[1], c.dec_channels[2]);
    ck_assert_msg(c.boundaries[0] == 2.5103f && c.boundaries[1] == 7.6577f && c.dropout == 0.13f,
                  "cifar10-ms: boundaries %.9g %.9g dropout %.9g", (double)c.boundaries[0],
                  (double)c.boundaries[1], (double)c.dropout);
    c = preset("tiny-ms");
    ck_assert_msg(c.n_stages == 2 && c.dec_channels[0] == 8 && c.dec_channels[1] == 4 && c.boundaries[0] == 1.0f,
                  "tiny-ms: %d stages, decoders [%d, %d], boundary %g", c.n_stages, c.dec_channels[0],
                  c.dec_channels[1], (double)c.boundaries[0]);
    // floats are written in their shortest exact form
    char *json = msd_config_to_json(&c);
    ck_assert_msg(strstr(json, "\"boundaries\":[1]") && strstr(json, "\"precond\":\"edm\"") &&
                      strstr(json, "\"separate\":false") && strstr(json, "\"decoders\":[8,4]"),
                  "tiny-ms JSON: %s", json);
    free(json);
    c = preset("mini");
    json = msd_config_to_json(&c);
    ck_assert_msg(strstr(json, "\"dropout\":0.1,") && strstr(json, "\"sigma_data\":0.5"), "mini JSON: %s", json);
    free(json);
}
END_TEST

START_TEST(unknown_preset) {
    struct msd_config c;
    ck_assert_msg(msd_config_preset(&c, "cifar100") == -1, "unknown preset accepted");
    const char *want = "unknown preset 'cifar100' (expected one of: cifar10, cifar10-ms, mini, mini-ms, tiny, tiny-ms)";
    ck_assert_msg(strcmp(msd_last_error(), want) == 0, "message '%s', want '%s'", msd_last_error(), want);
}
END_TEST

START_TEST(stage_routing) {
    struct msd_config c = preset("mini-ms");
    const struct { double sigma; int stage; } mini[] = {
        {0.002, 0}, {1.0, 0}, {2.5103, 0}, {2.5104, 1}, {5.0, 1}, {7.6577, 1}, {7.6578, 2}, {80.0, 2},
        {1e300, 2}, {INFINITY, 2},
    };
    for (size_t i = 0; i < sizeof mini / sizeof mini[0]; i++) {
        int s = msd_config_stage_of(&c, mini[i].sigma);
        ck_assert_msg(s == mini[i].stage, "mini-ms: sigma %.9g -> stage %d, want %d", mini[i].sigma, s,
                      mini[i].stage);
    }
    c = preset("tiny-ms");
    const struct { double sigma; int stage; } tiny[] = {{0.0, 0}, {0.002, 0}, {1.0, 0}, {1.0001, 1}, {80.0, 1}};
    for (size_t i = 0; i < sizeof tiny / sizeof tiny[0]; i++) {
        int s = msd_config_stage_of(&c, tiny[i].sigma);
        ck_assert_msg(s == tiny[i].stage, "tiny-ms: sigma %.9g -> stage %d, want %d", tiny[i].sigma, s,
                      tiny[i].stage);
    }
    c = preset("mini");
    for (double sigma = 0.002; sigma < 100; sigma *= 3)
        ck_assert_msg(msd_config_stage_of(&c, sigma) == 0, "unified: sigma %g not in stage 0", sigma);
}
END_TEST

START_TEST(groupnorm_groups) {
    struct msd_config c = preset("mini");
    const int want[][2] = {{2, 1}, {4, 1}, {8, 2}, {40, 10}, {64, 16}, {256, 16}, {88, 16}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        int g = msd_config_groups(&c, want[i][0]);
        ck_assert_msg(g == want[i][1], "groups(%d) = %d, want %d", want[i][0], g, want[i][1]);
    }
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// Validation: each case breaks one field of a valid preset; the message must name `field`.

static void bad_res(struct msd_config *c) { c->n_levels = 4; c->channel_mult[3] = 2; } // 28 % 8 != 0
static void bad_dropout(struct msd_config *c) { c->dropout = 1.0f; }
static void bad_dropout_nan(struct msd_config *c) { c->dropout = NAN; }
static void bad_bounds_order(struct msd_config *c) { c->boundaries[0] = 7.6577f; c->boundaries[1] = 2.5103f; }
static void bad_bounds_equal(struct msd_config *c) { c->boundaries[1] = c->boundaries[0]; }
static void bad_bounds_neg(struct msd_config *c) { c->boundaries[0] = -1.0f; }
static void bad_bounds_inf(struct msd_config *c) { c->boundaries[1] = INFINITY; }
static void bad_in(struct msd_config *c) { c->in_channels = 0; }
static void bad_out(struct msd_config *c) { c->out_channels = 65; }
static void bad_mc_small(struct msd_config *c) { c->model_channels = 2; }
static void bad_mc_odd(struct msd_config *c) { c->model_channels = 33; }
static void bad_levels(struct msd_config *c) { c->n_levels = 0; }
static void bad_mult(struct msd_config *c) { c->channel_mult[1] = 0; }
static void bad_blocks(struct msd_config *c) { c->num_blocks = 0; }
static void bad_attn(struct msd_config *c) { c->attn_resolutions[0] = 10; }
static void bad_attn_n(struct msd_config *c) { c->n_attn = -1; }
static void bad_emb(struct msd_config *c) { c->channel_mult_emb = 0; }
static void bad_groups(struct msd_config *c) { c->gn_groups = 0; }
static void bad_min_ch(struct msd_config *c) { c->gn_min_channels = 0; }
static void bad_stages(struct msd_config *c) { c->n_stages = MSD_MAX_STAGES + 1; }
static void bad_dec(struct msd_config *c) { c->dec_channels[1] = 2; }
static void bad_sigma_data(struct msd_config *c) { c->sigma_data = 0.0f; }
static void bad_precond(struct msd_config *c) { c->precond = (enum msd_precond)7; }
static void bad_small_res(struct msd_config *c) { c->img_resolution = 2; c->n_levels = 1; c->n_attn = 0; }
// beyond the widths no real network has (config.c): each tensor and the count of them stay bounded
static void bad_mc_wide(struct msd_config *c) { c->model_channels = 1026; }
static void bad_dec_wide(struct msd_config *c) { c->dec_channels[0] = 1032; }
static void bad_mult_big(struct msd_config *c) { c->channel_mult[2] = 17; }
static void bad_emb_big(struct msd_config *c) { c->channel_mult_emb = 17; }
static void bad_attn_big(struct msd_config *c) { c->img_resolution = 512; c->attn_resolutions[0] = 512; }

START_TEST(validation_names_the_field) {
    const struct { void (*breaks)(struct msd_config *); const char *field; } cases[] = {
        {bad_res, "img_resolution"}, {bad_small_res, "img_resolution"}, {bad_dropout, "dropout"},
        {bad_dropout_nan, "dropout"}, {bad_bounds_order, "boundaries"}, {bad_bounds_equal, "boundaries"},
        {bad_bounds_neg, "boundaries"}, {bad_bounds_inf, "boundaries"}, {bad_in, "in_channels"},
        {bad_out, "out_channels"}, {bad_mc_small, "model_channels"}, {bad_mc_odd, "model_channels"},
        {bad_levels, "n_levels"}, {bad_mult, "channel_mult"}, {bad_blocks, "num_blocks"},
        {bad_attn, "attn_resolutions"}, {bad_attn_n, "n_attn"}, {bad_emb, "channel_mult_emb"},
        {bad_groups, "gn_groups"}, {bad_min_ch, "gn_min_channels"}, {bad_stages, "n_stages"},
        {bad_dec, "dec_channels"}, {bad_sigma_data, "sigma_data"}, {bad_precond, "precond"},
        {bad_mc_wide, "model_channels = 1026, expected 4..1024"},
        {bad_dec_wide, "dec_channels[0] (decoders[0]) = 1032"},
        {bad_mult_big, "channel_mult[2] = 17, expected 1..16"}, {bad_emb_big, "channel_mult_emb = 17"},
        {bad_attn_big, "attn_resolutions[0] = 512, expected at most 256"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct msd_config c = preset("mini-ms");
        cases[i].breaks(&c);
        msd_clear_error();
        ck_assert_msg(msd_config_validate(&c) == -1, "case %zu (%s): broken config accepted", i, cases[i].field);
        ck_assert_msg(strstr(msd_last_error(), cases[i].field) != NULL, "case %zu: message '%s' does not name '%s'",
                      i, msd_last_error(), cases[i].field);
    }
}
END_TEST

// The largest widths the limits allow are valid configs (the parameter count is bounded on the table,
// test_model.c), and so is self-attention at 256 x 256.
START_TEST(largest_widths_validate) {
    struct msd_config c = preset("mini-ms");
    c.model_channels = 1024, c.channel_mult_emb = 16;
    for (int l = 0; l < c.n_levels; l++) c.channel_mult[l] = 16;
    for (int s = 0; s < c.n_stages; s++) c.dec_channels[s] = 1024;
    ck_assert_msg(msd_config_validate(&c) == 0, "the widest config: %s", msd_last_error());
    c = preset("tiny");
    c.img_resolution = 256, c.attn_resolutions[0] = 256;
    ck_assert_msg(msd_config_validate(&c) == 0, "attention at 256: %s", msd_last_error());
}
END_TEST

// A GroupNorm whose channels do not split into its groups, in the encoder and in one decoder only.
START_TEST(groupnorm_divisibility) {
    // encoder: widths 40 and 120; 120 channels get min(16, 30) = 16 groups and 120 % 16 = 8
    struct msd_config c = preset("mini");
    c.model_channels = 40;
    c.dec_channels[0] = 40;
    c.n_levels = 2;
    c.channel_mult[0] = 1;
    c.channel_mult[1] = 3;
    c.channel_mult[2] = 0;
    ck_assert_msg(msd_config_validate(&c) == -1, "120 channels in 16 groups accepted");
    const char *e = msd_last_error();
    ck_assert_msg(strstr(e, "encoder block 14x14_block0 has 120 output channels") && strstr(e, "gn_groups"),
                  "message: %s", e);
    // decoder 2 only: width 12 gives a 7x7 block input of 24 + 64 = 88 channels, 16 groups, 88 % 16 = 8
    c = preset("mini-ms");
    c.dec_channels[2] = 12;
    ck_assert_msg(msd_config_validate(&c) == -1, "88 channels in 16 groups accepted");
    e = msd_last_error();
    ck_assert_msg(strstr(e, "decoder 2 block 7x7_block1 has 88 input channels") && strstr(e, "gn_groups"),
                  "message: %s", e);
    // the same widths in 4 groups everywhere are fine: every width is a multiple of 4
    c.gn_groups = 4;
    ck_assert_msg(msd_config_validate(&c) == 0, "4 groups everywhere rejected: %s", msd_last_error());
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// JSON errors: each is -1 with `where` and the key in the message, and leaves *out untouched.

// The JSON of mini-ms after `edit` (a cJSON edit), parsed; returns from_json's result.
static int parse_edited(void (*edit)(cJSON *), struct msd_config *out) {
    struct msd_config c = preset("mini-ms");
    char *json = msd_config_to_json(&c);
    cJSON *root = cJSON_Parse(json);
    ck_assert_msg(root != NULL, "to_json wrote invalid JSON: %s", json);
    free(json);
    edit(root);
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    int rc = msd_config_from_json(out, text, "edited.json");
    cJSON_free(text);
    return rc;
}
static void del_dropout(cJSON *r) { cJSON_DeleteItemFromObjectCaseSensitive(r, "dropout"); }
static void str_blocks(cJSON *r) { cJSON_ReplaceItemInObjectCaseSensitive(r, "num_blocks", cJSON_CreateString("2")); }
static void frac_blocks(cJSON *r) { cJSON_ReplaceItemInObjectCaseSensitive(r, "num_blocks", cJSON_CreateNumber(2.5)); }
static void add_unknown(cJSON *r) { cJSON_AddNumberToObject(r, "learning_rate", 1e-3); }
static void dup_key(cJSON *r) { cJSON_AddNumberToObject(r, "gn_groups", 16); }
static void long_mult(cJSON *r) {
    const int m[7] = {1, 1, 1, 1, 1, 1, 1};
    cJSON_ReplaceItemInObjectCaseSensitive(r, "channel_mult", cJSON_CreateIntArray(m, 7));
}
static void str_in_mult(cJSON *r) { cJSON_ReplaceItemInArray(cJSON_GetObjectItem(r, "channel_mult"), 1, cJSON_CreateString("x")); }
static void num_separate(cJSON *r) { cJSON_ReplaceItemInObjectCaseSensitive(r, "separate", cJSON_CreateNumber(0)); }
static void bad_precond_str(cJSON *r) { cJSON_ReplaceItemInObjectCaseSensitive(r, "precond", cJSON_CreateString("ve")); }
static void short_bounds(cJSON *r) { cJSON_DeleteItemFromArray(cJSON_GetObjectItem(r, "boundaries"), 1); }
static void big_dropout(cJSON *r) { cJSON_ReplaceItemInObjectCaseSensitive(r, "dropout", cJSON_CreateNumber(1.5)); }
static void huge_sigma(cJSON *r) { cJSON_ReplaceItemInObjectCaseSensitive(r, "sigma_data", cJSON_CreateNumber(1e40)); }

START_TEST(json_errors_name_the_key) {
    const struct { void (*edit)(cJSON *); const char *key; } cases[] = {
        {del_dropout, "'dropout' is missing"}, {str_blocks, "'num_blocks'"}, {frac_blocks, "'num_blocks'"},
        {add_unknown, "'learning_rate'"}, {dup_key, "'gn_groups' appears twice"}, {long_mult, "'channel_mult'"},
        {str_in_mult, "'channel_mult'[1]"}, {num_separate, "'separate'"}, {bad_precond_str, "'precond'"},
        {short_bounds, "'boundaries'"}, {big_dropout, "dropout"}, {huge_sigma, "'sigma_data'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct msd_config out = preset("tiny"), before = out;
        int rc = parse_edited(cases[i].edit, &out);
        const char *e = msd_last_error();
        ck_assert_msg(rc == -1, "case %zu (%s): accepted", i, cases[i].key);
        ck_assert_msg(strstr(e, cases[i].key) && strstr(e, "edited.json"),
                      "case %zu: message '%s' does not name %s and the file", i, e, cases[i].key);
        char diff[200];
        ck_assert_msg(config_diff(&out, &before, diff, sizeof diff)[0] == '\0',
                      "case %zu: failed parse changed the output (%s)", i, diff);
    }
    // text that is not JSON, not an object, or has trailing garbage
    const char *bad[] = {"{\"img_resolution\": 28,", "[1, 2]", "{} x", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct msd_config out;
        ck_assert_msg(msd_config_from_json(&out, bad[i], "bad.json") == -1, "'%s' accepted", bad[i]);
        ck_assert_msg(strstr(msd_last_error(), "bad.json") != NULL, "'%s': message '%s' lacks the file name",
                      bad[i], msd_last_error());
    }
    struct msd_config out;
    ck_assert_msg(msd_config_from_json(&out, "{\"img_resolution\": 28,", "bad.json") == -1 &&
                      strstr(msd_last_error(), "not valid JSON"), "message: %s", msd_last_error());
    // an escaped NUL would cut a string short in cJSON ("edm\u0000x" read as "edm"): refused, naming the
    // byte; an escaped backslash before "u0000" is no NUL
    ck_assert_msg(msd_config_from_json(&out, "{\"precond\": \"edm\\u0000x\"}", "nul.json") == -1 &&
                      strstr(msd_last_error(), "nul.json") && strstr(msd_last_error(), "\\u0000 at byte 16"),
                  "message: %s", msd_last_error());
    ck_assert(msd_json_nul_escape("{\"a\": \"\\\\u0000\"}") == -1 && msd_json_nul_escape("\\u0000") == 0);
    ck_assert_msg(msd_config_from_json(&out, "{}", "empty.json") == -1 &&
                      strstr(msd_last_error(), "'img_resolution' is missing"), "message: %s", msd_last_error());
}
END_TEST

int main(void) {
    const TTest *tests[] = {
        presets_validate_and_round_trip, preset_values, unknown_preset, stage_routing, groupnorm_groups,
        validation_names_the_field, largest_widths_validate, groupnorm_divisibility, json_errors_name_the_key,
    };
    return run_tests("config", 0, tests, TEST_COUNT(tests));
}
