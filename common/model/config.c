// config.c: the presets, the validator, the JSON form and the stage routing of config.h.
//
// Holds: the six named presets, msd_config_validate (every field, then a walk over the U-Net that
// checks each GroupNorm's channel count against its group count), msd_config_to_json and the strict
// msd_config_from_json (checkpoints carry the config as this JSON), and msd_config_stage_of.
// Does not hold: parameter tables, sizes or MAC counts of the network (those follow from the config
// elsewhere), or any command-line handling.
#include "config.h"

#include <cjson/cJSON.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/core/error.h"
#include "common/core/util.h"

// Upper limits that are not part of the model. No real network comes near them: EDM's largest
// (ImageNet 64, FFHQ) have model_channels 192 to 256 and channel_mult up to 4, the paper's CIFAR-10
// ones 128 and 2, with decoders of 16 to 192. They keep every channel count and fan-in far inside
// int (1024 * 16 * 3 channels), and a config read from a file that asks for terabytes is refused
// here, before anything is built. One tensor could still be large (a 3x3 conv of 16384 channels both
// ways); the total parameter count, and so every tensor, is bounded on the parameter table
// (MSD_MAX_PARAMS, model.h), where the sizes are computed, before any memory is allocated.
#define MAX_RESOLUTION 4096
#define MAX_IMG_CHANNELS 64
#define MAX_WIDTH MSD_MAX_WIDTH // model_channels and every decoder width
#define MAX_MULT 16             // channel_mult[l] and channel_mult_emb
#define MAX_BLOCKS 15           // the model keeps up to MSD_MAX_LEVELS * 16 skips
// Self-attention keeps an (N, HW, HW) matrix a block: at 256 x 256 that is 2^32 floats an image, and
// with the largest batch (2^16) the activation sizes stay far inside size_t. EDM attends at 16 (DDPM++)
// or at 32, 16 and 8 (ADM).
#define MAX_ATTN_RES 256

// ---------------------------------------------------------------------------------------------------
// Presets. Static storage zeroes every unlisted field and array slot, so a preset copied into a
// config leaves the unused slots 0, as msd_config_from_json does.

#define MS_BOUNDARIES {2.5103f, 7.6577f} // the paper's 3-stage boundaries in sigma
// Each network's fields but its stages (n_stages, dec_channels, boundaries): a unified preset and its
// multistage "-ms" twin are the same network with one decoder or with several.
#define CIFAR10_NET                                                                                    \
    .img_resolution = 32, .in_channels = 3, .out_channels = 3, .model_channels = 128, .n_levels = 3,   \
    .channel_mult = {2, 2, 2}, .num_blocks = 4, .n_attn = 1, .attn_resolutions = {16},                 \
    .channel_mult_emb = 4, .dropout = 0.13f, .gn_groups = 16, .gn_min_channels = 4,                    \
    .precond = MSD_PRECOND_EDM, .sigma_data = 0.5f
#define MINI_NET                                                                                       \
    .img_resolution = 28, .in_channels = 1, .out_channels = 1, .model_channels = 32, .n_levels = 3,    \
    .channel_mult = {1, 2, 2}, .num_blocks = 2, .n_attn = 1, .attn_resolutions = {14},                 \
    .channel_mult_emb = 4, .dropout = 0.1f, .gn_groups = 16, .gn_min_channels = 4,                     \
    .precond = MSD_PRECOND_EDM, .sigma_data = 0.5f
#define TINY_NET                                                                                       \
    .img_resolution = 8, .in_channels = 2, .out_channels = 2, .model_channels = 8, .n_levels = 2,      \
    .channel_mult = {1, 2}, .num_blocks = 1, .n_attn = 1, .attn_resolutions = {4},                     \
    .channel_mult_emb = 4, .dropout = 0.0f, .gn_groups = 16, .gn_min_channels = 4,                     \
    .precond = MSD_PRECOND_EDM, .sigma_data = 0.5f
static const struct { const char *name; struct msd_config c; } PRESETS[] = {
    {"cifar10", {CIFAR10_NET, .n_stages = 1, .dec_channels = {128}}},
    {"cifar10-ms", {CIFAR10_NET, .n_stages = 3, .dec_channels = {192, 128, 16}, .boundaries = MS_BOUNDARIES}},
    {"mini", {MINI_NET, .n_stages = 1, .dec_channels = {32}}},
    {"mini-ms", {MINI_NET, .n_stages = 3, .dec_channels = {48, 32, 8}, .boundaries = MS_BOUNDARIES}},
    {"tiny", {TINY_NET, .n_stages = 1, .dec_channels = {8}}},
    {"tiny-ms", {TINY_NET, .n_stages = 2, .dec_channels = {8, 4}, .boundaries = {1.0f}}},
};
#define N_PRESETS ((int)(sizeof PRESETS / sizeof PRESETS[0]))

const char *const msd_preset_names[] = {"cifar10", "cifar10-ms", "mini", "mini-ms", "tiny", "tiny-ms", NULL};

int msd_config_preset(struct msd_config *c, const char *name) {
    for (int i = 0; i < N_PRESETS; i++)
        if (name && strcmp(PRESETS[i].name, name) == 0) {
            *c = PRESETS[i].c;
            return 0;
        }
    return msd_set_error("unknown preset '%s' (expected one of: cifar10, cifar10-ms, mini, mini-ms, tiny, "
                         "tiny-ms)", name ? name : "(null)");
}

// ---------------------------------------------------------------------------------------------------
// Groups and stages

int msd_config_groups(const struct msd_config *c, int channels) {
    int g = channels / c->gn_min_channels;
    if (g > c->gn_groups) g = c->gn_groups;
    return g < 1 ? 1 : g;
}

// Boundaries are floats, so sigma is compared at float precision: the boundary written as 2.5103
// (stored as 2.51029992f) then still holds sigma = 2.5103 in stage 0. Values beyond the float range
// are clamped first (a double-to-float conversion out of range is undefined behaviour in C).
int msd_config_stage_of(const struct msd_config *c, double sigma) {
    if (!(sigma <= FLT_MAX)) return c->n_stages - 1; // huge or NaN: the last (highest-noise) stage
    float s = sigma < -FLT_MAX ? -FLT_MAX : (float)sigma;
    for (int i = 0; i < c->n_stages - 1; i++)
        if (s <= c->boundaries[i]) return i;
    return c->n_stages - 1;
}

// ---------------------------------------------------------------------------------------------------
// Validation. Every message starts with `who` ("config", or "config '<file>'" when parsing).

// One GroupNorm over `channels` channels in block `res`x`res`_`block` of `part` ("encoder",
// "decoder 2"); `what` says which of the block's norms ("input", "output"). Returns -1 on failure.
static int check_norm(const struct msd_config *c, const char *who, const char *part, int res,
                      const char *block, const char *what, int channels) {
    int g = msd_config_groups(c, channels);
    if (channels % g == 0) return 0;
    return msd_set_error("%s: %s block %dx%d_%s has %d %s channels, not divisible into %d GroupNorm "
                         "groups (groups = min(gn_groups, C/gn_min_channels) = min(%d, %d/%d)); change "
                         "the widths, gn_groups or gn_min_channels", who, part, res, res, block, channels,
                         what, g, c->gn_groups, channels, c->gn_min_channels);
}

// Walk the U-Net as EDM's SongUNet / the authors' MultistageUNet build it and check every GroupNorm:
// UNetBlock norms its input (norm0) and its output (norm1, and norm2 with attention: same width).
// A separate network per stage has the same encoder widths, so this walk covers it as well.
static int check_groupnorms(const struct msd_config *c, const char *who) {
    int skips[MSD_MAX_LEVELS * (MAX_BLOCKS + 1)], n_skips = 0; // encoder outputs, popped by decoders
    int cw = c->in_channels;
    char name[32];
    for (int l = 0; l < c->n_levels; l++) {
        int res = c->img_resolution >> l;
        if (l == 0) {
            cw = c->model_channels; // RxR_conv: a plain 3x3 conv, no norm
        } else if (check_norm(c, who, "encoder", res, "down", "input", cw)) { // RxR_down: cw -> cw
            return -1;
        }
        skips[n_skips++] = cw;
        for (int i = 0; i < c->num_blocks; i++) {
            int cout = c->model_channels * c->channel_mult[l];
            snprintf(name, sizeof name, "block%d", i);
            if (check_norm(c, who, "encoder", res, name, "input", cw) ||
                check_norm(c, who, "encoder", res, name, "output", cout))
                return -1;
            cw = cout;
            skips[n_skips++] = cw;
        }
    }
    const int enc_top = cw;
    for (int s = 0; s < c->n_stages; s++) {
        char part[32];
        snprintf(part, sizeof part, "decoder %d", s);
        int n = n_skips; // each decoder pops the full encoder stack
        cw = enc_top;
        for (int l = c->n_levels - 1; l >= 0; l--) {
            int res = c->img_resolution >> l;
            // in0/in1 (top level) and up (other levels) keep their input width: one check covers both norms
            if (l == c->n_levels - 1) {
                if (check_norm(c, who, part, res, "in0", "input", cw)) return -1;
            } else if (check_norm(c, who, part, res, "up", "input", cw)) {
                return -1;
            }
            for (int i = 0; i <= c->num_blocks; i++) {
                int cin = cw + skips[--n], cout = c->dec_channels[s] * c->channel_mult[l];
                snprintf(name, sizeof name, "block%d", i);
                if (check_norm(c, who, part, res, name, "input", cin) ||
                    check_norm(c, who, part, res, name, "output", cout))
                    return -1;
                cw = cout;
            }
        }
        // the head's RxR_aux_norm runs over the last block's output width, checked just above
    }
    return 0;
}

static int validate(const struct msd_config *c, const char *who) {
#define RANGE(field, lo, hi, why)                                                                    \
    if (c->field < (lo) || c->field > (hi))                                                          \
    return msd_set_error("%s: " #field " = %d, expected %d..%d%s", who, c->field, lo, hi, why)
    RANGE(img_resolution, 4, MAX_RESOLUTION, "");
    RANGE(in_channels, 1, MAX_IMG_CHANNELS, "");
    RANGE(out_channels, 1, MAX_IMG_CHANNELS, "");
    if (c->out_channels != c->in_channels)
        return msd_set_error("%s: out_channels = %d, expected in_channels = %d (a denoiser returns an "
                             "image like its input: D = c_skip x + c_out F)", who, c->out_channels,
                             c->in_channels);
    RANGE(model_channels, 4, MAX_WIDTH, " (the positional embedding needs C/2 - 1 > 0; no real network is wider)");
    if (c->model_channels % 2)
        return msd_set_error("%s: model_channels = %d, expected an even number (the positional "
                             "embedding is C/2 sines and C/2 cosines)", who, c->model_channels);
    RANGE(n_levels, 1, MSD_MAX_LEVELS, " (the length of channel_mult)");
    for (int l = 0; l < c->n_levels; l++)
        if (c->channel_mult[l] < 1 || c->channel_mult[l] > MAX_MULT)
            return msd_set_error("%s: channel_mult[%d] = %d, expected 1..%d", who, l, c->channel_mult[l],
                                 MAX_MULT);
    int halvings = 1 << (c->n_levels - 1);
    if (c->img_resolution % halvings)
        return msd_set_error("%s: img_resolution = %d is not divisible by 2^(n_levels-1) = %d: with %d "
                             "entries in channel_mult every level must halve the previous one evenly",
                             who, c->img_resolution, halvings, c->n_levels);
    RANGE(num_blocks, 1, MAX_BLOCKS, "");
    RANGE(n_attn, 0, MSD_MAX_LEVELS, " (the length of attn_resolutions)");
    for (int a = 0; a < c->n_attn; a++) {
        int r = c->attn_resolutions[a], found = 0;
        if (r > MAX_ATTN_RES)
            return msd_set_error("%s: attn_resolutions[%d] = %d, expected at most %d (self-attention keeps an "
                                 "(HW x HW) matrix an image)", who, a, r, MAX_ATTN_RES);
        for (int l = 0; l < c->n_levels; l++) found |= r == c->img_resolution >> l;
        if (!found)
            return msd_set_error("%s: attn_resolutions[%d] = %d is not a resolution of the network "
                                 "(img_resolution %d halved 0..%d times)", who, a, r, c->img_resolution,
                                 c->n_levels - 1);
        for (int b = 0; b < a; b++)
            if (c->attn_resolutions[b] == r)
                return msd_set_error("%s: attn_resolutions lists %d twice", who, r);
    }
    RANGE(channel_mult_emb, 1, MAX_MULT, "");
    if (!(c->dropout >= 0 && c->dropout < 1))
        return msd_set_error("%s: dropout = %g, expected a probability in [0, 1)", who, (double)c->dropout);
    RANGE(gn_groups, 1, MAX_WIDTH, "");
    RANGE(gn_min_channels, 1, MAX_WIDTH, "");
    RANGE(n_stages, 1, MSD_MAX_STAGES, " (the number of decoders)");
    for (int s = 0; s < c->n_stages; s++)
        if (c->dec_channels[s] < 4 || c->dec_channels[s] > MAX_WIDTH)
            return msd_set_error("%s: dec_channels[%d] (decoders[%d]) = %d, expected 4..%d", who, s, s,
                                 c->dec_channels[s], MAX_WIDTH);
    for (int s = 0; s + 1 < c->n_stages; s++) {
        double b = c->boundaries[s];
        if (!(isfinite(b) && b > 0))
            return msd_set_error("%s: boundaries[%d] = %g, expected a positive finite sigma", who, s, b);
        if (s > 0 && !(b > c->boundaries[s - 1]))
            return msd_set_error("%s: boundaries[%d] = %g is not above boundaries[%d] = %g: boundaries "
                                 "must be strictly increasing", who, s, b, s - 1,
                                 (double)c->boundaries[s - 1]);
    }
    if (c->precond != MSD_PRECOND_EDM && c->precond != MSD_PRECOND_VP)
        return msd_set_error("%s: precond = %d, expected MSD_PRECOND_EDM or MSD_PRECOND_VP", who,
                             (int)c->precond);
    if (!(isfinite(c->sigma_data) && c->sigma_data > 0))
        return msd_set_error("%s: sigma_data = %g, expected a positive finite number", who,
                             (double)c->sigma_data);
#undef RANGE
    return check_groupnorms(c, who);
}

int msd_config_validate(const struct msd_config *c) { return validate(c, "config"); }

// ---------------------------------------------------------------------------------------------------
// JSON. One table drives both directions, so writer and reader cannot disagree on a key or a type.

enum key_kind { K_INT, K_FLOAT, K_BOOL, K_PRECOND, K_INTS, K_FLOATS };
static const char *const KIND_NAME[] = {"an integer", "a number", "true or false", "\"edm\" or \"vp\"",
                                        "an array of integers", "an array of numbers"};
struct key {
    const char *name;
    enum key_kind kind;
    void *p;    // the field (the first element for arrays)
    int *count; // arrays: the field holding the length
    int max;    // arrays: capacity
};

// The keys of config c in JSON order; n_bounds holds the length of "boundaries", which the struct
// does not store (it is n_stages - 1).
#define N_KEYS 16
static void make_keys(struct key k[N_KEYS], struct msd_config *c, int *n_bounds) {
    const struct key t[N_KEYS] = {
        {"img_resolution", K_INT, &c->img_resolution, NULL, 0},
        {"in_channels", K_INT, &c->in_channels, NULL, 0},
        {"out_channels", K_INT, &c->out_channels, NULL, 0},
        {"model_channels", K_INT, &c->model_channels, NULL, 0},
        {"channel_mult", K_INTS, c->channel_mult, &c->n_levels, MSD_MAX_LEVELS},
        {"num_blocks", K_INT, &c->num_blocks, NULL, 0},
        {"attn_resolutions", K_INTS, c->attn_resolutions, &c->n_attn, MSD_MAX_LEVELS},
        {"channel_mult_emb", K_INT, &c->channel_mult_emb, NULL, 0},
        {"dropout", K_FLOAT, &c->dropout, NULL, 0},
        {"gn_groups", K_INT, &c->gn_groups, NULL, 0},
        {"gn_min_channels", K_INT, &c->gn_min_channels, NULL, 0},
        {"decoders", K_INTS, c->dec_channels, &c->n_stages, MSD_MAX_STAGES},
        {"boundaries", K_FLOATS, c->boundaries, n_bounds, MSD_MAX_STAGES - 1},
        {"separate", K_BOOL, &c->separate, NULL, 0},
        {"precond", K_PRECOND, &c->precond, NULL, 0},
        {"sigma_data", K_FLOAT, &c->sigma_data, NULL, 0},
    };
    memcpy(k, t, sizeof t);
}

// The shortest "%.Ng" (N <= 9; 9 digits always suffice for a float) that reads back as exactly f,
// as a double: cJSON then prints 0.13f as "0.13" rather than the double's 0.12999999523162842.
static double shortest_float(float f) {
    char buf[32];
    for (int digits = 1; digits < 9; digits++) {
        snprintf(buf, sizeof buf, "%.*g", digits, (double)f);
        if (strtof(buf, NULL) == f) return strtod(buf, NULL);
    }
    snprintf(buf, sizeof buf, "%.9g", (double)f);
    return strtod(buf, NULL);
}

char *msd_config_to_json(const struct msd_config *c) {
    CHECK(c->n_levels >= 0 && c->n_levels <= MSD_MAX_LEVELS && c->n_attn >= 0 &&
              c->n_attn <= MSD_MAX_LEVELS && c->n_stages >= 1 && c->n_stages <= MSD_MAX_STAGES,
          "array lengths out of range (n_levels %d, n_attn %d, n_stages %d)", c->n_levels, c->n_attn,
          c->n_stages);
    struct msd_config copy = *c; // make_keys wants writable fields; the copy is only read
    int n_bounds = c->n_stages - 1;
    struct key k[N_KEYS];
    make_keys(k, &copy, &n_bounds);
    cJSON *root = cJSON_CreateObject();
    CHECK(root != NULL, "out of memory");
    for (int i = 0; i < N_KEYS; i++) {
        cJSON *v = NULL;
        switch (k[i].kind) {
        case K_INT: v = cJSON_CreateNumber(*(int *)k[i].p); break;
        case K_FLOAT: v = cJSON_CreateNumber(shortest_float(*(float *)k[i].p)); break;
        case K_BOOL: v = cJSON_CreateBool(*(bool *)k[i].p); break;
        case K_PRECOND: v = cJSON_CreateString(copy.precond == MSD_PRECOND_VP ? "vp" : "edm"); break;
        case K_INTS: v = cJSON_CreateIntArray(k[i].p, *k[i].count); break;
        case K_FLOATS:
            v = cJSON_CreateArray();
            for (int j = 0; v && j < *k[i].count; j++)
                cJSON_AddItemToArray(v, cJSON_CreateNumber(shortest_float(((float *)k[i].p)[j])));
            break;
        }
        CHECK(v != NULL && cJSON_AddItemToObject(root, k[i].name, v), "out of memory");
    }
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    CHECK(text != NULL, "out of memory");
    // hand back memory from xmalloc, whatever allocator hooks cJSON may have been given
    size_t n = strlen(text) + 1;
    char *out = xmalloc(n);
    memcpy(out, text, n);
    cJSON_free(text);
    return out;
}

static const char *json_type(const cJSON *v) {
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return cJSON_IsNull(v) ? "null" : "something else";
}

// One scalar into *p (an int or a float), or -1 with a message naming the key (and index, when >= 0).
static int read_number(const cJSON *v, bool is_int, void *p, const char *who, const char *key, int idx) {
    char at[16] = "";
    if (idx >= 0) snprintf(at, sizeof at, "[%d]", idx);
    const char *want = is_int ? "an integer" : "a number";
    if (!cJSON_IsNumber(v))
        return msd_set_error("%s: key '%s'%s: expected %s, got %s", who, key, at, want, json_type(v));
    double d = v->valuedouble;
    if (is_int) {
        if (!(d >= -2147483648.0 && d <= 2147483647.0 && floor(d) == d))
            return msd_set_error("%s: key '%s'%s: expected an integer, got %g", who, key, at, d);
        *(int *)p = (int)d;
    } else {
        if (!(fabs(d) <= FLT_MAX))
            return msd_set_error("%s: key '%s'%s: %g is outside the float range", who, key, at, d);
        *(float *)p = (float)d;
    }
    return 0;
}

static int read_key(const cJSON *v, const struct key *k, const char *who) {
    switch (k->kind) {
    case K_INT: return read_number(v, true, k->p, who, k->name, -1);
    case K_FLOAT: return read_number(v, false, k->p, who, k->name, -1);
    case K_BOOL:
        if (!cJSON_IsBool(v))
            return msd_set_error("%s: key '%s': expected true or false, got %s", who, k->name, json_type(v));
        *(bool *)k->p = cJSON_IsTrue(v);
        return 0;
    case K_PRECOND:
        if (cJSON_IsString(v) && strcmp(v->valuestring, "edm") == 0) *(enum msd_precond *)k->p = MSD_PRECOND_EDM;
        else if (cJSON_IsString(v) && strcmp(v->valuestring, "vp") == 0) *(enum msd_precond *)k->p = MSD_PRECOND_VP;
        else if (cJSON_IsString(v))
            return msd_set_error("%s: key '%s': expected \"edm\" or \"vp\", got \"%s\"", who, k->name,
                                 v->valuestring);
        else return msd_set_error("%s: key '%s': expected \"edm\" or \"vp\", got %s", who, k->name, json_type(v));
        return 0;
    case K_INTS:
    case K_FLOATS: {
        if (!cJSON_IsArray(v))
            return msd_set_error("%s: key '%s': expected %s, got %s", who, k->name, KIND_NAME[k->kind],
                                 json_type(v));
        int n = cJSON_GetArraySize(v);
        if (n > k->max)
            return msd_set_error("%s: key '%s': %d entries, at most %d allowed", who, k->name, n, k->max);
        int j = 0;
        for (const cJSON *e = v->child; e; e = e->next, j++) {
            void *dst = k->kind == K_INTS ? (void *)((int *)k->p + j) : (void *)((float *)k->p + j);
            if (read_number(e, k->kind == K_INTS, dst, who, k->name, j)) return -1;
        }
        *k->count = n;
        return 0;
    }
    }
    return -1; // unreachable: every kind returns above
}

// Strict: every key exactly once, nothing else, each of its type; then validate. *out is written only
// on success. The result is built in a zeroed struct, so array slots past each length are 0 (as in
// the presets) and the round trip from a preset gives back the same struct field by field.
int msd_config_from_json(struct msd_config *out, const char *json, const char *where) {
    char who[320];
    snprintf(who, sizeof who, "config '%s'", where ? where : "(unnamed)");
    if (!json) return msd_set_error("%s: no JSON text", who);
    const long nul = msd_json_nul_escape(json);
    if (nul >= 0)
        return msd_set_error("%s: the JSON text holds \\u0000 at byte %ld, a NUL character that would cut its "
                             "string short", who, nul);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(json, &end, 1);
    if (!root) {
        size_t at = end ? (size_t)(end - json) : 0;
        return msd_set_error("%s: not valid JSON (error at byte %zu: \"%.24s\")", who, at, json + at);
    }
    struct msd_config c;
    memset(&c, 0, sizeof c);
    int n_bounds = 0, seen[N_KEYS] = {0}, rc = 0;
    struct key k[N_KEYS];
    make_keys(k, &c, &n_bounds);
    if (!cJSON_IsObject(root)) {
        rc = msd_set_error("%s: expected a JSON object, got %s", who, json_type(root));
        goto done;
    }
    for (const cJSON *v = root->child; v; v = v->next) {
        int i = 0;
        while (i < N_KEYS && strcmp(k[i].name, v->string) != 0) i++;
        if (i == N_KEYS) {
            char list[400] = "";
            for (int j = 0; j < N_KEYS; j++)
                snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", j ? ", " : "", k[j].name);
            rc = msd_set_error("%s: unknown key '%s' (expected the keys %s)", who, v->string, list);
            goto done;
        }
        if (seen[i]++) {
            rc = msd_set_error("%s: key '%s' appears twice", who, k[i].name);
            goto done;
        }
        if ((rc = read_key(v, &k[i], who))) goto done;
    }
    for (int i = 0; i < N_KEYS; i++)
        if (!seen[i]) {
            rc = msd_set_error("%s: key '%s' is missing (expected %s)", who, k[i].name, KIND_NAME[k[i].kind]);
            goto done;
        }
    if (c.n_stages >= 1 && n_bounds != c.n_stages - 1) {
        rc = msd_set_error("%s: key 'boundaries' has %d entries, expected %d: one fewer than 'decoders' "
                           "(%d stages)", who, n_bounds, c.n_stages - 1, c.n_stages);
        goto done;
    }
    if ((rc = validate(&c, who))) goto done;
    *out = c;
done:
    cJSON_Delete(root);
    return rc;
}
