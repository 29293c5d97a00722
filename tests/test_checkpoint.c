// test_checkpoint.c: model checkpoints (common/io/checkpoint.h) against EDM's names and against bad files.
//
// Holds: (1) the parameter names and shapes of the "tiny" and "tiny-ms" networks against the state_dict
// of EDM's SongUNet and the authors' MultistageUNet (the reference dumps in tests/data/, which hold
// every parameter of those classes under its state_dict name), both ways, and the exact tensor list of
// a saved checkpoint: those parameters, EDM's resample_filter buffers and the "config" metadata;
// (2) a round trip: weights and config bit-identical, a second save byte-identical, D(x; sigma) of the
// reloaded model bit-identical on both decoders; (3) one test per kind of bad file, each checking -1, a
// message that names the file and says what is wrong, and an empty model; (4) unknown preset names.
// Does not hold: the safetensors format itself (test_safetensors.c) or the network's numbers
// (test_model.c). Bad files are written by hand (write_image: 8-byte length, JSON, data) or through
// msd_st_write with crafted entries. Temp files live in the suite's temporary directory.
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/core/backend.h"
#include "common/io/checkpoint.h"
#include "common/model/config.h"
#include "common/core/error.h"
#include "common/model/model.h"
#include "common/model/precond.h"
#include "common/io/safetensors.h"
#include "testutil.h"

static const struct msd_backend *be = &msd_backend_ref;

#define SEED 20240611u // weights of every saved test model


// Two configs are equal when their JSON texts are: every field is written, floats in the shortest form
// that reads back exactly (memcmp would also compare padding).
static void assert_config_equal(const struct msd_config *a, const struct msd_config *b, const char *what) {
    char *ja = msd_config_to_json(a), *jb = msd_config_to_json(b);
    ck_assert_msg(strcmp(ja, jb) == 0, "%s: configs differ:\n  %s\n  %s", what, ja, jb);
    free(ja), free(jb);
}

// A model of `preset` with EDM's init from SEED, then perturbed at a working scale: EDM scales conv1,
// proj and aux_conv by 1e-5, which would leave the decoders nearly invisible in D.
static void make_model(struct msd_model *m, const char *preset) {
    struct msd_config cfg;
    ck_assert_msg(msd_config_preset(&cfg, preset) == 0, "%s", msd_last_error());
    ck_assert_msg(msd_model_create(m, &cfg, be) == 0, "%s: %s", preset, msd_last_error());
    msd_model_init_weights(m, SEED);
    perturb_weights(be, m->w, m->n_floats, SEED + 1, 0.1f);
}

// Save a valid checkpoint of `preset` at path.
static void save_preset(const char *preset, const char *path) {
    struct msd_model m;
    make_model(&m, preset);
    ck_assert_msg(msd_checkpoint_save(&m, path, NULL, NULL, 0) == 0, "save %s: %s", path, msd_last_error());
    msd_model_free(&m);
}

static char *preset_json(const char *preset) {
    struct msd_config cfg;
    ck_assert_msg(msd_config_preset(&cfg, preset) == 0, "%s", msd_last_error());
    return msd_config_to_json(&cfg);
}

// ---------------------------------------------------------------------------------------------------
// Files by hand. An image is a list of tensors with their bytes; write_image lays the bytes out in
// order and writes the header itself, so dtypes and offsets can be anything.

struct rt {
    char name[160];
    char dtype[8];
    int ndim;
    int64_t shape[MSD_ST_MAX_DIMS];
    const unsigned char *data;
    size_t bytes;
    bool fixed;           // write begin/end as the offsets instead of the running position
    uint64_t begin, end;
};

struct image {
    struct msd_st_file f; // owns the bytes the tensors point to
    int n;
    struct rt *t;         // room for n + 256 (tests append)
};

static void image_load(struct image *im, const char *path) {
    ck_assert_msg(msd_st_read(&im->f, path) == 0, "%s", msd_last_error());
    im->n = im->f.n_tensors;
    im->t = calloc((size_t)im->n + 256, sizeof *im->t);
    ck_assert(im->t != NULL);
    for (int i = 0; i < im->n; i++) {
        const struct msd_st_tensor *s = &im->f.tensors[i];
        struct rt *t = &im->t[i];
        snprintf(t->name, sizeof t->name, "%s", s->name);
        snprintf(t->dtype, sizeof t->dtype, "%s", s->dtype);
        t->ndim = s->ndim;
        memcpy(t->shape, s->shape, sizeof t->shape);
        t->data = im->f.data + s->begin;
        t->bytes = s->end - s->begin;
    }
}

static void image_free(struct image *im) {
    msd_st_free(&im->f);
    free(im->t);
}

static struct rt *image_find(struct image *im, const char *name) {
    for (int i = 0; i < im->n; i++)
        if (strcmp(im->t[i].name, name) == 0) return &im->t[i];
    ck_abort_msg("test bug: no tensor %s in the image", name);
    return NULL;
}

static void put_json_string(FILE *h, const char *s) {
    fputc('"', h);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') fputc('\\', h);
        fputc(*s, h);
    }
    fputc('"', h);
}

// The file: u64 LE header length, {"__metadata__":{"config": config} (omitted when config is NULL),
// the tensors}, spaces to 8-byte alignment, the bytes of every tensor in order.
static void write_image(const char *path, const struct rt *t, int n, const char *config) {
    char *hdr = NULL;
    size_t hl = 0;
    FILE *h = open_memstream(&hdr, &hl);
    ck_assert(h != NULL);
    fputc('{', h);
    if (config) {
        fputs("\"__metadata__\":{\"config\":", h);
        put_json_string(h, config);
        fputc('}', h);
    }
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        if (i || config) fputc(',', h);
        put_json_string(h, t[i].name);
        fprintf(h, ":{\"dtype\":\"%s\",\"shape\":[", t[i].dtype);
        for (int d = 0; d < t[i].ndim; d++) fprintf(h, "%s%lld", d ? "," : "", (long long)t[i].shape[d]);
        if (t[i].fixed)
            fprintf(h, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)t[i].begin,
                    (unsigned long long)t[i].end);
        else fprintf(h, "],\"data_offsets\":[%zu,%zu]}", off, off + t[i].bytes);
        off += t[i].bytes;
    }
    fputc('}', h);
    for (long len = ftell(h); len % 8 != 0; len++) fputc(' ', h);
    ck_assert(fclose(h) == 0);
    FILE *fp = fopen(path, "wb");
    ck_assert_msg(fp != NULL, "cannot create %s: %s", path, strerror(errno));
    unsigned char lb[8];
    for (int i = 0; i < 8; i++) lb[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    ck_assert(fwrite(lb, 1, 8, fp) == 8 && fwrite(hdr, 1, hl, fp) == hl);
    for (int i = 0; i < n; i++) ck_assert(fwrite(t[i].data, 1, t[i].bytes, fp) == t[i].bytes);
    ck_assert(fclose(fp) == 0);
    free(hdr);
}

// The same tensors through the library's writer (F32 only), leaving out the one named `drop`.
static void write_image_st(const char *path, const struct rt *t, int n, const char *config,
                           const char *drop) {
    struct msd_st_entry *e = calloc((size_t)n, sizeof *e);
    ck_assert(e != NULL);
    int k = 0;
    for (int i = 0; i < n; i++) {
        if (drop && strcmp(t[i].name, drop) == 0) continue;
        ck_assert_msg(strcmp(t[i].dtype, "F32") == 0, "test bug: %s is %s", t[i].name, t[i].dtype);
        e[k].name = t[i].name;
        e[k].ndim = t[i].ndim;
        memcpy(e[k].shape, t[i].shape, sizeof e[k].shape);
        e[k].data = (const float *)t[i].data; // f.data is malloc'd and offsets are multiples of 4
        k++;
    }
    ck_assert_msg(!drop || k == n - 1, "test bug: no tensor %s to drop", drop);
    const char *key = "config";
    ck_assert_msg(msd_st_write(path, e, k, &key, &config, config ? 1 : 0) == 0, "%s", msd_last_error());
    free(e);
}

// ref with the largest allocation recorded: whatever its config says, a load may allocate no more
// than the file holds (its tensors are checked against the config before the weights are allocated).
static size_t largest_alloc; // floats
static float *recording_alloc(size_t n) {
    if (n > largest_alloc) largest_alloc = n;
    return msd_backend_ref.alloc(n);
}

// Load path and expect -1, a message naming the file and holding every word of words (NULL-ended),
// an empty model, and no allocation larger than the file.
static void expect_load_fails(const char *path, const char *what, const char *const *words) {
    struct msd_model m;
    memset(&m, 0xab, sizeof m); // the loader must empty it whatever it held
    struct msd_backend recording = msd_backend_ref;
    recording.alloc = recording_alloc;
    largest_alloc = 0;
    msd_clear_error();
    int rc = msd_checkpoint_load(&m, path, &recording);
    const char *msg = msd_last_error();
    struct stat sb;
    const size_t bytes = stat(path, &sb) == 0 ? (size_t)sb.st_size : 0;
    ck_assert_msg(largest_alloc * sizeof(float) <= bytes, "%s: the load allocated %zu floats, the file has %zu "
                  "bytes", what, largest_alloc, bytes);
    ck_assert_msg(rc == -1, "%s: msd_checkpoint_load returned %d (message '%s')", what, rc, msg);
    ck_assert_msg(strstr(msg, path) != NULL, "%s: message '%s' does not name the file %s", what, msg, path);
    for (int i = 0; words[i]; i++)
        ck_assert_msg(strstr(msg, words[i]) != NULL, "%s: message '%s' lacks '%s'", what, msg, words[i]);
    ck_assert_msg(m.n_params == 0 && m.params == NULL && m.w == NULL && m.n_floats == 0,
                  "%s: *m not left empty (n_params %d)", what, m.n_params);
    msd_model_free(&m); // harmless on an empty model
}
#define EXPECT_LOAD_FAILS(path, what, ...)                                                             \
    expect_load_fails(path, what, (const char *const[]){__VA_ARGS__, NULL})

// ---------------------------------------------------------------------------------------------------
// 1. Names and shapes against EDM's state_dict

static bool ends_with(const char *s, const char *tail) {
    size_t n = strlen(s), k = strlen(tail);
    return n >= k && strcmp(s + n - k, tail) == 0;
}

static const char *shape_str(int ndim, const int64_t *s) {
    static char buf[2][96];
    static int k;
    k ^= 1;
    size_t n = (size_t)snprintf(buf[k], sizeof buf[k], "[");
    for (int d = 0; d < ndim; d++)
        n += (size_t)snprintf(buf[k] + n, sizeof buf[k] - n, "%s%lld", d ? ", " : "", (long long)s[d]);
    snprintf(buf[k] + n, sizeof buf[k] - n, "]");
    return buf[k];
}

// Does t have the shape of p? *ps gets p's shape in the reader's form (zero past ndim).
static bool same_shape(const struct msd_st_tensor *t, const struct msd_param *p, int64_t *ps) {
    memset(ps, 0, MSD_ST_MAX_DIMS * sizeof *ps);
    for (int d = 0; d < p->ndim; d++) ps[d] = p->shape[d];
    return t->ndim == p->ndim && memcmp(t->shape, ps, MSD_ST_MAX_DIMS * sizeof *ps) == 0;
}

static void check_names(const char *preset, const char *dump_file, int want_filter_blocks) {
    struct msd_st_file dump;
    char dump_path[256];
    snprintf(dump_path, sizeof dump_path, "tests/data/%s", dump_file); // run from the repository root
    ck_assert_msg(msd_st_read(&dump, dump_path) == 0, "%s", msd_last_error());
    struct msd_model m;
    make_model(&m, preset);

    // ours -> EDM: every parameter is in the state_dict with its shape, and our names are unique
    for (int i = 0; i < m.n_params; i++) {
        const struct msd_param *p = &m.params[i];
        const struct msd_st_tensor *t = msd_st_find(&dump, p->name);
        int64_t ps[MSD_ST_MAX_DIMS];
        ck_assert_msg(t != NULL, "%s: our parameter %s is not in %s", preset, p->name, dump_file);
        ck_assert_msg(same_shape(t, p, ps), "%s: %s is %s here, %s in the state_dict", preset, p->name,
                      shape_str(p->ndim, ps), shape_str(t->ndim, t->shape));
        ck_assert_msg(msd_model_find(&m, p->name) == p, "%s: the name %s appears twice in our table", preset,
                      p->name);
    }
    // EDM -> ours, and the resample filters EDM registers on every up/down block's conv0 and skip
    int n_dump = 0, n_filters = 0;
    char filters[16][200];
    for (int i = 0; i < dump.n_tensors; i++) {
        const char *name = dump.tensors[i].name;
        if (strncmp(name, "model.", 6) != 0) continue;
        n_dump++;
        ck_assert_msg(msd_model_find(&m, name) != NULL, "%s: state_dict tensor %s %s is missing here", preset,
                      name, shape_str(dump.tensors[i].ndim, dump.tensors[i].shape));
        if (!ends_with(name, ".conv0.weight")) continue;
        size_t blen = strlen(name) - strlen(".conv0.weight");
        char block[160];
        snprintf(block, sizeof block, "%.*s", (int)blen, name);
        if (!ends_with(block, "_down") && !ends_with(block, "_up")) continue;
        char skip_w[200];
        snprintf(skip_w, sizeof skip_w, "%s.skip.weight", block);
        ck_assert_msg(msd_st_find(&dump, skip_w) != NULL, "%s: resampling block %s has no %s in the dump",
                      preset, block, skip_w);
        ck_assert(n_filters + 2 <= 16);
        snprintf(filters[n_filters++], 200, "%s.conv0.resample_filter", block);
        snprintf(filters[n_filters++], 200, "%s.skip.resample_filter", block);
    }
    ck_assert_msg(m.n_params == n_dump, "%s: %d parameters here, %d model.* tensors in %s", preset, m.n_params,
                  n_dump, dump_file);
    ck_assert_msg(n_filters == 2 * want_filter_blocks, "%s: %d up/down blocks in %s, expected %d", preset,
                  n_filters / 2, dump_file, want_filter_blocks);

    // a saved checkpoint: exactly the parameters, the filters and the config
    const char *path = test_path("names.safetensors");
    ck_assert_msg(msd_checkpoint_save(&m, path, NULL, NULL, 0) == 0, "%s", msd_last_error());
    struct msd_st_file f;
    ck_assert_msg(msd_st_read(&f, path) == 0, "%s", msd_last_error());
    ck_assert_msg(f.n_tensors == n_dump + n_filters, "%s: the checkpoint has %d tensors, expected %d "
                  "parameters + %d resample filters", preset, f.n_tensors, n_dump, n_filters);
    for (int i = 0; i < f.n_tensors; i++) {
        const struct msd_st_tensor *t = &f.tensors[i];
        ck_assert_msg(strcmp(t->dtype, "F32") == 0, "%s: %s stored as %s", preset, t->name, t->dtype);
        const struct msd_st_tensor *d = msd_st_find(&dump, t->name);
        if (d) {
            ck_assert_msg(d->ndim == t->ndim && memcmp(d->shape, t->shape, sizeof d->shape) == 0,
                          "%s: saved %s %s, state_dict %s", preset, t->name, shape_str(t->ndim, t->shape),
                          shape_str(d->ndim, d->shape));
            continue;
        }
        int k = 0;
        while (k < n_filters && strcmp(filters[k], t->name) != 0) k++;
        ck_assert_msg(k < n_filters, "%s: saved tensor %s is neither a state_dict parameter nor a resample "
                      "filter of an up/down block", preset, t->name);
        float v[4];
        ck_assert_msg(msd_st_get_f32(&f, t->name, 4, (int64_t[]){1, 1, 2, 2}, v) == 0, "%s", msd_last_error());
        for (int j = 0; j < 4; j++)
            ck_assert_msg(v[j] == 0.25f, "%s: %s[%d] = %.9g, EDM's box filter is 0.25", preset, t->name, j,
                          (double)v[j]);
    }
    for (int k = 0; k < n_filters; k++)
        ck_assert_msg(msd_st_find(&f, filters[k]) != NULL, "%s: the checkpoint lacks EDM's buffer %s", preset,
                      filters[k]);
    ck_assert_msg(f.metadata != NULL && cJSON_GetArraySize(f.metadata) == 1 && msd_st_meta(&f, "config"),
                  "%s: __metadata__ should hold exactly \"config\"", preset);
    struct msd_config back;
    ck_assert_msg(msd_config_from_json(&back, msd_st_meta(&f, "config"), path) == 0, "%s", msd_last_error());
    assert_config_equal(&back, &m.cfg, preset);
    msd_st_free(&f);
    msd_st_free(&dump);
    msd_model_free(&m);
    remove(path);
}

START_TEST(names_unified) { check_names("tiny", "edm-tiny-unified.safetensors", 2); }
END_TEST

START_TEST(names_multistage) { check_names("tiny-ms", "edm-tiny-ms.safetensors", 3); }
END_TEST

// ---------------------------------------------------------------------------------------------------
// 2. Round trip

// D(x; sigma) for a batch of 2 at one sigma; returns a host copy (2 * C * R * R floats).
static float *denoise(struct msd_model *m, const float *x_host, size_t n, double sigma) {
    ck_assert_msg(msd_model_plan(m, 2, false) == 0, "%s", msd_last_error());
    float *x = be->alloc(n), *D = be->alloc(n), *out = malloc(n * sizeof *out);
    ck_assert(out != NULL);
    be->upload(x, x_host, n);
    const double s[2] = {sigma, sigma};
    struct msd_forward_opts o = {false, 0};
    ck_assert_msg(msd_denoise_forward(m, msd_config_stage_of(&m->cfg, sigma), D, x, s, &o) == 0, "%s",
                  msd_last_error());
    be->download(out, D, n);
    be->release(x), be->release(D);
    return out;
}

START_TEST(round_trip) {
    struct msd_model a, b;
    make_model(&a, "tiny-ms");
    const char *pa = test_path("a.safetensors"), *pb = test_path("b.safetensors");
    const char *key = "note", *val = "round trip \"quoted\"";
    ck_assert_msg(msd_checkpoint_save(&a, pa, &key, &val, 1) == 0, "save: %s", msd_last_error());
    ck_assert_msg(msd_checkpoint_load(&b, pa, be) == 0, "load: %s", msd_last_error());
    assert_config_equal(&b.cfg, &a.cfg, "reloaded config");

    // the same table, bit-identical weights
    ck_assert_msg(b.n_params == a.n_params && b.n_floats == a.n_floats, "table: %d params / %zu floats, "
                  "saved %d / %zu", b.n_params, b.n_floats, a.n_params, a.n_floats);
    for (int i = 0; i < a.n_params; i++)
        ck_assert_msg(!strcmp(a.params[i].name, b.params[i].name) && a.params[i].offset == b.params[i].offset,
                      "param %d: %s at %zu, saved %s at %zu", i, b.params[i].name, b.params[i].offset,
                      a.params[i].name, a.params[i].offset);
    float *wa = malloc(a.n_floats * sizeof *wa), *wb = malloc(a.n_floats * sizeof *wb);
    ck_assert(wa && wb);
    be->download(wa, a.w, a.n_floats);
    be->download(wb, b.w, b.n_floats);
    for (int i = 0; i < a.n_params; i++) {
        const struct msd_param *p = &a.params[i];
        ck_assert_msg(memcmp(wa + p->offset, wb + p->offset, p->numel * sizeof *wa) == 0,
                      "%s not bit-identical after save and load", p->name);
    }

    // the extra metadata survives; a second save is byte for byte the first
    struct msd_st_file f;
    ck_assert_msg(msd_st_read(&f, pa) == 0, "%s", msd_last_error());
    ck_assert_msg(msd_st_meta(&f, "note") && strcmp(msd_st_meta(&f, "note"), val) == 0,
                  "metadata 'note' is '%s', saved '%s'", msd_st_meta(&f, "note"), val);
    msd_st_free(&f);
    ck_assert_msg(msd_checkpoint_save(&b, pb, &key, &val, 1) == 0, "save again: %s", msd_last_error());
    size_t na, nb;
    unsigned char *fa = (unsigned char *)test_read_file(pa, &na), *fb = (unsigned char *)test_read_file(pb, &nb);
    size_t at = 0;
    while (at < na && at < nb && fa[at] == fb[at]) at++;
    ck_assert_msg(na == nb && at == na, "re-saved file differs: %zu and %zu bytes, first difference at "
                  "byte %zu", na, nb, at);
    free(fa), free(fb);

    // D(x; sigma) on both decoders: bit-identical
    const size_t n = (size_t)2 * a.cfg.in_channels * a.cfg.img_resolution * a.cfg.img_resolution;
    float *x = malloc(n * sizeof *x);
    ck_assert(x != NULL);
    fill_normal(x, n, SEED + 2, 1.0f);
    const double sigmas[2] = {0.7, 3.0};
    for (int c = 0; c < 2; c++) {
        ck_assert_msg(msd_config_stage_of(&a.cfg, sigmas[c]) == c, "sigma %g: not decoder %d", sigmas[c], c);
        float *da = denoise(&a, x, n, sigmas[c]), *db = denoise(&b, x, n, sigmas[c]);
        size_t k = 0;
        while (k < n && memcmp(&da[k], &db[k], sizeof *da) == 0) k++;
        ck_assert_msg(k == n, "sigma %g (decoder %d, seed %u): D differs at [%zu]: %.9g original, %.9g "
                      "reloaded", sigmas[c], c, SEED, k, (double)da[k], (double)db[k]);
        for (k = 0; k < n; k++)
            ck_assert_msg(isfinite(da[k]), "sigma %g: D[%zu] = %g", sigmas[c], k, (double)da[k]);
        free(da), free(db);
    }
    free(x), free(wa), free(wb);
    msd_model_free(&a);
    msd_model_free(&b);
    remove(pa), remove(pb);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// 3. Bad files. Each case makes a bad file from a valid checkpoint of `preset` (saved afresh for the
// case): corrupt() edits the tensors of its image (or its bytes) and writes the file, and the load
// must fail with a message that names the file and holds every one of `words` and of the words
// corrupt() adds (names it finds in the image). Each case is a test of its own (a loop test).

// Replace the first `from` in json by `to` (json is the output of msd_config_to_json; a new string).
static char *replace(const char *json, const char *from, const char *to) {
    const char *at = strstr(json, from);
    ck_assert_msg(at != NULL, "test bug: '%s' not in %s", from, json);
    size_t n = strlen(json) - strlen(from) + strlen(to) + 1;
    char *out = malloc(n);
    ck_assert(out != NULL);
    snprintf(out, n, "%.*s%s%s", (int)(at - json), json, to, at + strlen(from));
    return out;
}

// Where a byte position is counted from: the file's start, the middle of the header, the start and
// the middle of the data, the file's end.
enum landmark { FILE_START, HEADER_MIDDLE, DATA_START, DATA_MIDDLE, FILE_END };

struct bad_file {
    const char *path;     // where the bad file goes
    unsigned char *bytes; // the valid file
    size_t n;
    uint64_t hl;          // its header length
    struct image im;      // its tensors, to edit
    char *config;         // its config (the preset's JSON)
    const char *more[3];  // words the message must hold that only the image knows
    char text[2][32];     // room for words made up here
};

struct bad_case;
typedef void (*corrupt_fn)(struct bad_file *b, const struct bad_case *c);

struct bad_case {
    const char *what;      // what is wrong with the file
    const char *preset;    // the valid checkpoint it is made from
    corrupt_fn corrupt;    // how
    enum landmark from;    // a byte position: `at` bytes from `from`
    long long at;          // (or a tensor's index, or which variant)
    const char *tensor;    // the tensor it spoils
    const char *text;      // a dtype, a config, the config text to replace
    const char *with;      // what replaces `text`
    const float *values;   // a resample filter's four values
    const char *words[4];  // what the message must hold
};

static size_t position(const struct bad_file *b, enum landmark from, long long at) {
    const size_t data = 8 + (size_t)b->hl;
    const size_t base[] = {0, 8 + (size_t)b->hl / 2, data, data + (b->n - data) / 2, b->n};
    return (size_t)((long long)base[from] + at);
}

static void write_edited(struct bad_file *b) { write_image(b->path, b->im.t, b->im.n, b->config); }

// The file layer

// The file cut to its first `at` bytes from `from`.
static void cut(struct bad_file *b, const struct bad_case *c) {
    test_write_file(b->path, b->bytes, position(b, c->from, c->at));
}

// The header length (the first 8 bytes, little-endian) set to `at` bytes from `from`.
static void header_length(struct bad_file *b, const struct bad_case *c) {
    const uint64_t len = position(b, c->from, c->at);
    for (int i = 0; i < 8; i++) b->bytes[i] = (unsigned char)(len >> (8 * i));
    test_write_file(b->path, b->bytes, b->n);
}

// Tensor `at` moved back by one float: the same size, its first float is the last of the one before.
static void overlap(struct bad_file *b, const struct bad_case *c) {
    struct rt *t = b->im.t;
    const int k = (int)c->at;
    size_t off = 0;
    for (int i = 0; i < k; i++) off += t[i].bytes;
    t[k].fixed = true, t[k].begin = off - 4, t[k].end = off - 4 + t[k].bytes;
    b->more[0] = t[k].name, b->more[1] = t[k - 1].name;
    write_edited(b);
}

// The last tensor's offsets: variant `at` 0 just past the data, 1 far past it (below 2^53), 2 begin
// after end, 3 in range but 4 bytes short of what its shape needs.
static void last_offsets(struct bad_file *b, const struct bad_case *c) {
    struct rt *t = &b->im.t[b->im.n - 1];
    uint64_t total = 0;
    for (int i = 0; i < b->im.n; i++) total += b->im.t[i].bytes;
    const uint64_t far = 1000000000000000ull, begin[] = {total, far, total - t->bytes + 4, 0};
    const uint64_t end[] = {total + t->bytes, far + t->bytes, total - t->bytes, t->bytes - 4};
    t->fixed = true, t->begin = begin[c->at], t->end = end[c->at];
    b->more[0] = t->name;
    write_edited(b);
}

static void set_dtype(struct bad_file *b, const struct bad_case *c) {
    snprintf(image_find(&b->im, c->tensor)->dtype, sizeof b->im.t->dtype, "%s", c->text);
    write_edited(b);
}

// The model layer

// Through the library's writer, without the tensor.
static void drop(struct bad_file *b, const struct bad_case *c) {
    write_image_st(b->path, b->im.t, b->im.n, b->config, c->tensor);
}

// A conv 8 -> 16 stored transposed: the same byte count, so only the shape check can see it.
static void transpose(struct bad_file *b, const struct bad_case *c) {
    struct rt *t = image_find(&b->im, c->tensor);
    ck_assert_msg(t->ndim == 4 && t->shape[0] == 16 && t->shape[1] == 8, "test bug: %s is %s", c->tensor,
                  shape_str(t->ndim, t->shape));
    t->shape[0] = 8, t->shape[1] = 16;
    write_image_st(b->path, b->im.t, b->im.n, b->config, NULL);
}

// A bias one short, its data shortened with it: the message gives both shapes.
static void shorten(struct bad_file *b, const struct bad_case *c) {
    struct rt *u = image_find(&b->im, c->tensor);
    ck_assert(u->ndim == 1);
    snprintf(b->text[0], sizeof b->text[0], "[%lld]", (long long)u->shape[0]);
    u->shape[0]--, u->bytes -= 4;
    snprintf(b->text[1], sizeof b->text[1], "[%lld]", (long long)u->shape[0]);
    b->more[0] = b->text[1], b->more[1] = b->text[0];
    write_image_st(b->path, b->im.t, b->im.n, b->config, NULL);
}

// A matrix flattened to one dimension.
static void flatten(struct bad_file *b, const struct bad_case *c) {
    struct rt *v = image_find(&b->im, c->tensor);
    ck_assert(v->ndim == 2);
    v->shape[0] *= v->shape[1], v->ndim = 1;
    write_image_st(b->path, b->im.t, b->im.n, b->config, NULL);
}

// The tensors with `text` as the config (NULL: no __metadata__ at all), by hand or (config_st) through
// the library's writer.
static void config(struct bad_file *b, const struct bad_case *c) { write_image(b->path, b->im.t, b->im.n, c->text); }
static void config_st(struct bad_file *b, const struct bad_case *c) {
    write_image_st(b->path, b->im.t, b->im.n, c->text, NULL);
}

// The config with `text` replaced by `with`.
static void edit_config(struct bad_file *b, const struct bad_case *c) {
    char *cfg = replace(b->config, c->text, c->with);
    write_image(b->path, b->im.t, b->im.n, cfg);
    free(cfg);
}

// The config of the preset `text` over these tensors.
static void config_of(struct bad_file *b, const struct bad_case *c) {
    char *cfg = preset_json(c->text);
    write_image(b->path, b->im.t, b->im.n, cfg);
    free(cfg);
}

// tiny's tensors with tiny-ms's decoder 1 added (its parameters, not its filters), under tiny's config.
static void add_decoder1(struct bad_file *b, const struct bad_case *c) {
    (void)c;
    const char *ms = test_path("tiny-ms.safetensors");
    save_preset("tiny-ms", ms);
    struct image im;
    image_load(&im, ms);
    int n = b->im.n;
    for (int i = 0; i < im.n; i++)
        if (strncmp(im.t[i].name, "model.decs.1.", 13) == 0 && !strstr(im.t[i].name, "resample_filter")) {
            ck_assert(n < b->im.n + 256);
            b->im.t[n++] = im.t[i];
        }
    ck_assert_msg(n > b->im.n, "test bug: no decoder 1 in tiny-ms");
    write_image(b->path, b->im.t, n, b->config);
    image_free(&im);
    remove(ms);
}

// A resample filter with `values`, or (values NULL) the right values in the wrong shape [2, 2].
static void set_filter(struct bad_file *b, const struct bad_case *c) {
    struct rt *t = image_find(&b->im, c->tensor);
    if (c->values) t->data = (const unsigned char *)c->values;
    else t->ndim = 2, t->shape[0] = t->shape[1] = 2;
    write_edited(b);
}

// Element `at` of a tensor set to values[0] (a NaN, an infinity) in a copy of its bytes.
static void set_value(struct bad_file *b, const struct bad_case *c) {
    struct rt *t = image_find(&b->im, c->tensor);
    float *copy = malloc(t->bytes);
    ck_assert(copy != NULL && (size_t)c->at < t->bytes / sizeof *copy);
    memcpy(copy, t->data, t->bytes);
    copy[c->at] = c->values[0];
    t->data = (const unsigned char *)copy;
    write_edited(b);
    free(copy);
}

// A filter on a conv that does not resample: not a buffer EDM has.
static void stray_filter(struct bad_file *b, const struct bad_case *c) {
    struct rt *stray = &b->im.t[b->im.n];
    *stray = *image_find(&b->im, c->tensor);
    snprintf(stray->name, sizeof stray->name, "%s", c->text);
    write_image(b->path, b->im.t, b->im.n + 1, b->config);
}

#define CONV0 "model.enc.4x4_block0.conv0.weight"
#define FILTER0 "model.enc.4x4_down.conv0.resample_filter"
#define FILTER1 "model.decs.1.8x8_up.skip.resample_filter"
// EDM's box filter is 0.25 everywhere: three ways to miss it
static const float HALF[4] = {0.25f, 0.25f, 0.25f, 0.5f}, ONES[4] = {1, 1, 1, 1};
static const float NEG[4] = {0.25f, 0.25f, 0.25f, -0.25f};
static const float NAN1[1] = {NAN}, INF1[1] = {INFINITY}, NEG_INF1[1] = {-INFINITY};

static const struct bad_case BAD[] = {
    // the file layer: cut short (past the header the first tensor whose bytes are missing is out of
    // range: "truncated file?")
    {"cut to 0 bytes", "tiny-ms", cut, FILE_START, 0, .words = {"truncated"}},
    {"cut to 4 bytes", "tiny-ms", cut, FILE_START, 4, .words = {"truncated"}},
    {"cut to 7 bytes", "tiny-ms", cut, FILE_START, 7, .words = {"truncated"}},
    {"cut after the header length", "tiny-ms", cut, FILE_START, 8, .words = {"truncated"}},
    {"cut in the middle of the header", "tiny-ms", cut, HEADER_MIDDLE, 0, .words = {"truncated"}},
    {"cut after the header", "tiny-ms", cut, DATA_START, 0, .words = {"truncated"}},
    {"cut in the middle of the data", "tiny-ms", cut, DATA_MIDDLE, 0, .words = {"truncated"}},
    {"cut 4 bytes short", "tiny-ms", cut, FILE_END, -4, .words = {"truncated"}},
    {"cut 1 byte short", "tiny-ms", cut, FILE_END, -1, .words = {"truncated"}},
    // the header's length
    {"header length one byte past the end", "tiny", header_length, FILE_END, -7, .words = {"runs past the end"}},
    {"header length 2^40", "tiny", header_length, FILE_START, 1ll << 40, .words = {"absurd"}},
    // offsets
    {"tensor 5 overlapping tensor 4", "tiny", overlap, .at = 5, .words = {"overlap"}},
    {"last tensor just past the data", "tiny", last_offsets, .at = 0, .words = {"out of range"}},
    {"last tensor far past the data", "tiny", last_offsets, .at = 1, .words = {"out of range"}},
    {"last tensor's begin after its end", "tiny", last_offsets, .at = 2, .words = {"begin > end"}},
    {"last tensor 4 bytes short", "tiny", last_offsets, .at = 3, .words = {"size mismatch"}},
    // dtypes: I32 has the same 4 bytes per element; Q4 is not a safetensors dtype at all
    {"an I32 tensor", "tiny-ms", set_dtype, .tensor = CONV0, .text = "I32", .words = {CONV0, "dtype I32", "F32"}},
    {"an unknown dtype", "tiny-ms", set_dtype, .tensor = CONV0, .text = "Q4", .words = {CONV0, "unknown dtype"}},

    // the model layer: missing tensors, shapes
    {"a decoder's bias missing", "tiny-ms", drop, .tensor = "model.decs.1.8x8_aux_conv.bias",
     .words = {"no tensor", "model.decs.1.8x8_aux_conv.bias"}},
    {"a mapping layer missing", "tiny-ms", drop, .tensor = "model.map_layer0.weight",
     .words = {"no tensor", "model.map_layer0.weight"}},
    {"a skip conv missing", "tiny-ms", drop, .tensor = "model.enc.4x4_down.skip.weight",
     .words = {"no tensor", "model.enc.4x4_down.skip.weight"}},
    {"a conv transposed", "tiny-ms", transpose, .tensor = CONV0, .words = {CONV0, "[8, 16, 3, 3]", "[16, 8, 3, 3]"}},
    {"a bias one short", "tiny-ms", shorten, .tensor = "model.decs.0.8x8_block1.conv1.bias",
     .words = {"model.decs.0.8x8_block1.conv1.bias"}},
    {"a matrix flattened", "tiny-ms", flatten, .tensor = "model.map_layer1.weight",
     .words = {"model.map_layer1.weight", "[1024]", "[32, 32]"}},
    // the config metadata
    {"no metadata", "tiny", config, .text = NULL, .words = {"no \"config\""}},
    {"no metadata (library writer)", "tiny", config_st, .text = NULL, .words = {"no \"config\""}},
    {"truncated JSON", "tiny", config, .text = "{\"img_resolution\": 8, \"in_channels\": ",
     .words = {"not valid JSON"}},
    {"a preset name instead of JSON", "tiny", config, .text = "tiny", .words = {"not valid JSON"}},
    {"not an object", "tiny", config, .text = "[8, 2]", .words = {"expected a JSON object"}},
    // the config's values
    {"precond xyz", "tiny", edit_config, .text = "\"precond\":\"edm\"", .with = "\"precond\":\"xyz\"",
     .words = {"'precond'", "xyz", "\"edm\" or \"vp\""}},
    {"img_resolution a string", "tiny", edit_config, .text = "\"img_resolution\":8", .with = "\"img_resolution\":\"8\"",
     .words = {"'img_resolution'", "integer"}},
    {"an unknown key", "tiny", edit_config, .text = "\"img_resolution\":8", .with = "\"img_size\":8",
     .words = {"unknown key 'img_size'"}},
    {"model_channels odd", "tiny", edit_config, .text = "\"model_channels\":8", .with = "\"model_channels\":7",
     .words = {"model_channels", "even"}},
    {"separate missing", "tiny", edit_config, .text = "\"separate\":false,", .with = "",
     .words = {"'separate'", "missing"}},
    // a config that disagrees with the tensors: tiny-ms's over tiny's, the decoders model.decs.* are
    // missing; tiny's over tiny-ms's, model.dec.* is missing (the names differ, so the missing tensor
    // is what the loader meets first); tiny's over tiny's tensors plus a decoder; a decoder of another
    // width under the right names
    {"tiny-ms config, tiny tensors", "tiny", config_of, .text = "tiny-ms", .words = {"no tensor 'model.decs.0."}},
    {"tiny config, tiny-ms tensors", "tiny-ms", config_of, .text = "tiny", .words = {"no tensor 'model.dec."}},
    {"tiny config, extra decoder", "tiny", add_decoder1, .words = {"unexpected tensor 'model.decs.1."}},
    {"decoder 1 widened", "tiny-ms", edit_config, .text = "\"decoders\":[8,4]", .with = "\"decoders\":[8,8]",
     .words = {"model.decs.1.", "shape"}},
    // a config that asks for far more than the file holds: refused by the validator's limits, by the
    // parameter count, or by the first tensor it does not find, before any weight is allocated
    {"model_channels 2048", "tiny-ms", edit_config, .text = "\"model_channels\":8,\"channel_mult\":[1,2]",
     .with = "\"model_channels\":2048,\"channel_mult\":[8,8]", .words = {"model_channels = 2048", "4..1024"}},
    {"2.4G parameters", "tiny", edit_config, .text = "\"model_channels\":8,\"channel_mult\":[1,2]",
     .with = "\"model_channels\":1024,\"channel_mult\":[16,16]", .words = {"parameters, more than"}},
    {"decoder width 1024", "tiny", edit_config, .text = "\"gn_groups\":16,\"gn_min_channels\":4,\"decoders\":[8]",
     .with = "\"gn_groups\":8,\"gn_min_channels\":4,\"decoders\":[1024]", .words = {"model.dec.", "shape"}},
    {"separate, decoder width 1024", "tiny", edit_config,
     .text = "4,\"decoders\":[8],\"boundaries\":[],\"separate\":false",
     .with = "1024,\"decoders\":[1024],\"boundaries\":[],\"separate\":true", .words = {"no tensor 'model.nets.0."}},
    // weights that are not finite: the tensor and the first bad element
    {"a NaN weight", "tiny", set_value, .tensor = "model.enc.8x8_conv.weight", .at = 17, .values = NAN1,
     .words = {"tensor 'model.enc.8x8_conv.weight' element 17 is nan", "expected finite weights"}},
    {"an infinite bias", "tiny-ms", set_value, .tensor = "model.decs.1.8x8_aux_conv.bias", .at = 1, .values = INF1,
     .words = {"tensor 'model.decs.1.8x8_aux_conv.bias' element 1 is inf"}},
    {"a -inf GroupNorm scale", "tiny", set_value, .tensor = "model.dec.4x4_in0.norm0.weight", .at = 0,
     .values = NEG_INF1, .words = {"element 0 is -inf"}},
    // EDM's resample filters: wrong values, the wrong shape, and a filter where EDM has none
    {"filter 0 ending in 0.5", "tiny-ms", set_filter, .tensor = FILTER0, .values = HALF,
     .words = {FILTER0, "box filter", "0.25"}},
    {"filter 0 all ones", "tiny-ms", set_filter, .tensor = FILTER0, .values = ONES,
     .words = {FILTER0, "box filter", "0.25"}},
    {"filter 0 ending in -0.25", "tiny-ms", set_filter, .tensor = FILTER0, .values = NEG,
     .words = {FILTER0, "box filter", "0.25"}},
    {"filter 0 shaped [2, 2]", "tiny-ms", set_filter, .tensor = FILTER0, .words = {FILTER0, "[1, 1, 2, 2]"}},
    {"filter 1 ending in 0.5", "tiny-ms", set_filter, .tensor = FILTER1, .values = HALF,
     .words = {FILTER1, "box filter", "0.25"}},
    {"filter 1 all ones", "tiny-ms", set_filter, .tensor = FILTER1, .values = ONES,
     .words = {FILTER1, "box filter", "0.25"}},
    {"filter 1 ending in -0.25", "tiny-ms", set_filter, .tensor = FILTER1, .values = NEG,
     .words = {FILTER1, "box filter", "0.25"}},
    {"filter 1 shaped [2, 2]", "tiny-ms", set_filter, .tensor = FILTER1, .words = {FILTER1, "[1, 1, 2, 2]"}},
    {"a stray filter", "tiny-ms", stray_filter, .tensor = FILTER0, .text = "model.enc.4x4_block0.conv0.resample_filter",
     .words = {"unexpected tensor", "model.enc.4x4_block0.conv0.resample_filter"}},
};

START_TEST(bad_file) {
    const struct bad_case *c = &BAD[_i];
    const char *good = test_path("good.safetensors");
    struct bad_file b = {.path = test_path("bad.safetensors")};
    save_preset(c->preset, good);
    b.bytes = (unsigned char *)test_read_file(good, &b.n);
    for (int i = 7; i >= 0; i--) b.hl = (b.hl << 8) | b.bytes[i];
    ck_assert_msg(8 + b.hl < b.n, "test bug: header length %llu, file %zu", (unsigned long long)b.hl, b.n);
    image_load(&b.im, good);
    b.config = preset_json(c->preset);
    c->corrupt(&b, c);
    const char *words[8];
    int k = 0;
    for (int i = 0; i < 4 && c->words[i]; i++) words[k++] = c->words[i];
    for (int i = 0; i < 3 && b.more[i]; i++) words[k++] = b.more[i];
    words[k] = NULL;
    expect_load_fails(b.path, c->what, words);
    free(b.bytes), free(b.config);
    image_free(&b.im);
    remove(good), remove(b.path);
}
END_TEST

START_TEST(bad_path) {

    EXPECT_LOAD_FAILS(test_path("does-not-exist.safetensors"), "missing file", "cannot open");
    EXPECT_LOAD_FAILS(test_tmpdir(), "a directory", "checkpoint"); // fopen of a directory, or "not a regular file"
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// 4. Presets

START_TEST(unknown_preset) {
    struct msd_config c;
    const char *bad[] = {"tiny-xl", "", "TINY", NULL};
    for (int i = 0; i < 4; i++) {
        msd_clear_error();
        ck_assert_msg(msd_config_preset(&c, bad[i]) == -1, "preset '%s' accepted", bad[i] ? bad[i] : "NULL");
        const char *msg = msd_last_error();
        ck_assert_msg(strstr(msg, "unknown preset"), "message '%s' lacks 'unknown preset'", msg);
        if (bad[i] && bad[i][0])
            ck_assert_msg(strstr(msg, bad[i]), "message '%s' does not name '%s'", msg, bad[i]);
        for (int k = 0; msd_preset_names[k]; k++) {
            char quoted[64];
            snprintf(quoted, sizeof quoted, " %s", msd_preset_names[k]); // after a space: in the list
            ck_assert_msg(strstr(msg, quoted), "message '%s' does not list the preset %s", msg,
                          msd_preset_names[k]);
        }
    }
    for (int k = 0; msd_preset_names[k]; k++) // and every listed name is a preset
        ck_assert_msg(msd_config_preset(&c, msd_preset_names[k]) == 0, "%s: %s", msd_preset_names[k],
                      msd_last_error());
}
END_TEST

// ---------------------------------------------------------------------------------------------------

int main(void) {
    test_tmpdir_make("checkpoint"); // before the tests fork: they share it
    const TTest *tests[] = {names_unified, names_multistage, round_trip, bad_path, unknown_preset};
    const struct loop_test loops[] = {{bad_file, (int)TEST_COUNT(BAD)}};
    return run_test_suite(&(struct test_suite){.name = "checkpoint", .timeout_s = 60, .tests = tests,
                                               .n = TEST_COUNT(tests), .loops = loops, .n_loops = TEST_COUNT(loops)});
}
