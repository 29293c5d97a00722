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
    float *w = malloc(m->n_floats * sizeof *w), *d = malloc(m->n_floats * sizeof *d);
    ck_assert(w && d);
    be->download(w, m->w, m->n_floats);
    fill_normal(d, m->n_floats, SEED + 1, 0.1f);
    for (size_t i = 0; i < m->n_floats; i++) w[i] += d[i];
    be->upload(m->w, w, m->n_floats);
    free(w), free(d);
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

// Load path and expect -1, a message naming the file and holding every word of words (NULL-ended),
// and an empty model.
static void expect_load_fails(const char *path, const char *what, const char *const *words) {
    struct msd_model m;
    memset(&m, 0xab, sizeof m); // the loader must empty it whatever it held
    msd_clear_error();
    int rc = msd_checkpoint_load(&m, path, be);
    const char *msg = msd_last_error();
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
// 3. Bad files: the file layer

START_TEST(bad_truncated) {
    const char *good = test_path("good.safetensors"), *cut = test_path("cut.safetensors");
    save_preset("tiny-ms", good);
    size_t n;
    unsigned char *b = (unsigned char *)test_read_file(good, &n);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | b[i];
    ck_assert_msg(8 + hl < n, "test bug: header length %llu, file %zu", (unsigned long long)hl, n);
    const size_t data = n - 8 - (size_t)hl;
    const size_t h = 8 + (size_t)hl; // where the data starts
    const size_t lengths[] = {0, 4, 7, 8, 8 + (size_t)hl / 2, h, h + data / 2, n - 4, n - 1};
    for (int i = 0; i < (int)(sizeof lengths / sizeof lengths[0]); i++) {
        test_write_file(cut, b, lengths[i]);
        char what[96];
        snprintf(what, sizeof what, "cut at %zu of %zu bytes", lengths[i], n);
        // past the header the first tensor whose bytes are missing is out of range: "truncated file?"
        EXPECT_LOAD_FAILS(cut, what, "truncated");
    }
    free(b);
    remove(good), remove(cut);
}
END_TEST

START_TEST(bad_header_length) {
    const char *good = test_path("good.safetensors"), *bad = test_path("bad.safetensors");
    save_preset("tiny", good);
    size_t n;
    unsigned char *b = (unsigned char *)test_read_file(good, &n);
    const uint64_t lens[2] = {(uint64_t)n - 7, 1ull << 40}; // one byte past the end; absurd
    const char *word[2] = {"runs past the end", "absurd"};
    for (int c = 0; c < 2; c++) {
        for (int i = 0; i < 8; i++) b[i] = (unsigned char)(lens[c] >> (8 * i));
        test_write_file(bad, b, n);
        EXPECT_LOAD_FAILS(bad, word[c], word[c]);
    }
    free(b);
    remove(good), remove(bad);
}
END_TEST

START_TEST(bad_overlapping_offsets) {
    const char *good = test_path("good.safetensors"), *bad = test_path("bad.safetensors");
    save_preset("tiny", good);
    struct image im;
    image_load(&im, good);
    char *config = preset_json("tiny");
    // tensor 5 moved back by one float: the same size, its first float is the last of tensor 4
    size_t off = 0;
    for (int i = 0; i < 5; i++) off += im.t[i].bytes;
    im.t[5].fixed = true, im.t[5].begin = off - 4, im.t[5].end = off - 4 + im.t[5].bytes;
    write_image(bad, im.t, im.n, config);
    EXPECT_LOAD_FAILS(bad, "overlap", "overlap", im.t[5].name, im.t[4].name);
    free(config);
    image_free(&im);
    remove(good), remove(bad);
}
END_TEST

START_TEST(bad_offsets_out_of_range) {
    const char *good = test_path("good.safetensors"), *bad = test_path("bad.safetensors");
    save_preset("tiny", good);
    struct image im;
    image_load(&im, good);
    char *config = preset_json("tiny");
    size_t total = 0;
    for (int i = 0; i < im.n; i++) total += im.t[i].bytes;
    struct rt *t = &im.t[im.n - 1];
    struct { uint64_t begin, end; const char *word; } cases[] = {
        {total, total + t->bytes, "out of range"},                          // just past the end
        {1000000000000000ull, 1000000000000000ull + t->bytes, "out of range"}, // far past, below 2^53
        {total - t->bytes + 4, total - t->bytes, "begin > end"},
        {0, t->bytes - 4, "size mismatch"}, // in range but not the bytes its shape needs
    };
    for (int c = 0; c < (int)(sizeof cases / sizeof cases[0]); c++) {
        t->fixed = true, t->begin = cases[c].begin, t->end = cases[c].end;
        write_image(bad, im.t, im.n, config);
        EXPECT_LOAD_FAILS(bad, cases[c].word, cases[c].word, t->name);
    }
    free(config);
    image_free(&im);
    remove(good), remove(bad);
}
END_TEST

START_TEST(bad_dtype) {
    const char *good = test_path("good.safetensors"), *bad = test_path("bad.safetensors");
    save_preset("tiny-ms", good);
    struct image im;
    image_load(&im, good);
    char *config = preset_json("tiny-ms");
    const char *name = "model.enc.4x4_block0.conv0.weight";
    struct rt *t = image_find(&im, name);
    snprintf(t->dtype, sizeof t->dtype, "I32"); // the same 4 bytes per element
    write_image(bad, im.t, im.n, config);
    EXPECT_LOAD_FAILS(bad, "I32 tensor", name, "dtype I32", "F32");
    snprintf(t->dtype, sizeof t->dtype, "Q4"); // not a safetensors dtype at all
    write_image(bad, im.t, im.n, config);
    EXPECT_LOAD_FAILS(bad, "unknown dtype", name, "unknown dtype");
    free(config);
    image_free(&im);
    remove(good), remove(bad);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// 3. Bad files: the model layer

START_TEST(bad_missing_tensor) {
    const char *good = test_path("good.safetensors"), *bad = test_path("bad.safetensors");
    save_preset("tiny-ms", good);
    struct image im;
    image_load(&im, good);
    char *config = preset_json("tiny-ms");
    const char *names[] = {"model.decs.1.8x8_aux_conv.bias", "model.map_layer0.weight",
                           "model.enc.4x4_down.skip.weight"};
    for (int i = 0; i < 3; i++) {
        write_image_st(bad, im.t, im.n, config, names[i]);
        EXPECT_LOAD_FAILS(bad, names[i], "no tensor", names[i]);
    }
    free(config);
    image_free(&im);
    remove(good), remove(bad);
}
END_TEST

START_TEST(bad_shape) {
    const char *good = test_path("good.safetensors"), *bad = test_path("bad.safetensors");
    save_preset("tiny-ms", good);
    struct image im;
    image_load(&im, good);
    char *config = preset_json("tiny-ms");
    // the conv 8 -> 16 stored transposed: the same byte count, so only the shape check can see it
    const char *name = "model.enc.4x4_block0.conv0.weight";
    struct rt *t = image_find(&im, name);
    ck_assert_msg(t->ndim == 4 && t->shape[0] == 16 && t->shape[1] == 8, "test bug: %s is %s", name,
                  shape_str(t->ndim, t->shape));
    t->shape[0] = 8, t->shape[1] = 16;
    write_image_st(bad, im.t, im.n, config, NULL);
    EXPECT_LOAD_FAILS(bad, "transposed", name, "[8, 16, 3, 3]", "[16, 8, 3, 3]");
    t->shape[0] = 16, t->shape[1] = 8;
    // a bias one short (its data shortened with it), and a matrix flattened to one dimension
    const char *bias = "model.decs.0.8x8_block1.conv1.bias";
    struct rt *u = image_find(&im, bias);
    ck_assert(u->ndim == 1);
    char want[32];
    snprintf(want, sizeof want, "[%lld]", (long long)u->shape[0]);
    u->shape[0]--, u->bytes -= 4;
    write_image_st(bad, im.t, im.n, config, NULL);
    char got[32];
    snprintf(got, sizeof got, "[%lld]", (long long)u->shape[0]);
    EXPECT_LOAD_FAILS(bad, "short bias", bias, got, want);
    u->shape[0]++, u->bytes += 4;
    const char *mat = "model.map_layer1.weight";
    struct rt *v = image_find(&im, mat);
    ck_assert(v->ndim == 2);
    v->shape[0] *= v->shape[1], v->ndim = 1;
    write_image_st(bad, im.t, im.n, config, NULL);
    EXPECT_LOAD_FAILS(bad, "flattened", mat, "[1024]", "[32, 32]");
    free(config);
    image_free(&im);
    remove(good), remove(bad);
}
END_TEST

START_TEST(bad_config_metadata) {
    const char *good = test_path("good.safetensors"), *bad = test_path("bad.safetensors");
    save_preset("tiny", good);
    struct image im;
    image_load(&im, good);
    write_image(bad, im.t, im.n, NULL); // no __metadata__ at all
    EXPECT_LOAD_FAILS(bad, "no metadata", "no \"config\"");
    write_image_st(bad, im.t, im.n, NULL, NULL);
    EXPECT_LOAD_FAILS(bad, "no metadata (library writer)", "no \"config\"");
    write_image(bad, im.t, im.n, "{\"img_resolution\": 8, \"in_channels\": ");
    EXPECT_LOAD_FAILS(bad, "truncated JSON", "not valid JSON");
    write_image(bad, im.t, im.n, "tiny");
    EXPECT_LOAD_FAILS(bad, "a preset name instead of JSON", "not valid JSON");
    write_image(bad, im.t, im.n, "[8, 2]");
    EXPECT_LOAD_FAILS(bad, "not an object", "expected a JSON object");
    image_free(&im);
    remove(good), remove(bad);
}
END_TEST

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

START_TEST(bad_config_values) {
    const char *good = test_path("good.safetensors"), *bad = test_path("bad.safetensors");
    save_preset("tiny", good);
    struct image im;
    image_load(&im, good);
    char *json = preset_json("tiny");
    struct { const char *from, *to, *words[3]; } cases[] = {
        {"\"precond\":\"edm\"", "\"precond\":\"xyz\"", {"'precond'", "xyz", "\"edm\" or \"vp\""}},
        {"\"img_resolution\":8", "\"img_resolution\":\"8\"", {"'img_resolution'", "integer", NULL}},
        {"\"img_resolution\":8", "\"img_size\":8", {"unknown key 'img_size'", NULL, NULL}},
        {"\"model_channels\":8", "\"model_channels\":7", {"model_channels", "even", NULL}},
        {"\"separate\":false,", "", {"'separate'", "missing", NULL}},
    };
    for (int c = 0; c < (int)(sizeof cases / sizeof cases[0]); c++) {
        char *cfg = replace(json, cases[c].from, cases[c].to);
        write_image(bad, im.t, im.n, cfg);
        const char *w[4] = {cases[c].words[0], cases[c].words[1], cases[c].words[2], NULL};
        expect_load_fails(bad, cfg, w);
        free(cfg);
    }
    free(json);
    image_free(&im);
    remove(good), remove(bad);
}
END_TEST

START_TEST(bad_config_disagrees) {
    const char *uni = test_path("tiny.safetensors"), *ms = test_path("tiny-ms.safetensors");
    const char *bad = test_path("bad.safetensors");
    save_preset("tiny", uni);
    save_preset("tiny-ms", ms);
    struct image iu, im;
    image_load(&iu, uni);
    image_load(&im, ms);
    char *cfg_uni = preset_json("tiny"), *cfg_ms = preset_json("tiny-ms");

    // the config of tiny-ms over the tensors of tiny: the decoders model.decs.* are missing
    write_image(bad, iu.t, iu.n, cfg_ms);
    EXPECT_LOAD_FAILS(bad, "tiny-ms config, tiny tensors", "no tensor 'model.decs.0.");
    // the config of tiny over the tensors of tiny-ms: model.dec.* is missing (the names differ, so
    // the missing tensor is what the loader meets first)
    write_image(bad, im.t, im.n, cfg_uni);
    EXPECT_LOAD_FAILS(bad, "tiny config, tiny-ms tensors", "no tensor 'model.dec.");
    // the config of tiny over tiny's tensors plus decoder 1 of tiny-ms: "unexpected tensor"
    int n = iu.n;
    for (int i = 0; i < im.n; i++)
        if (strncmp(im.t[i].name, "model.decs.1.", 13) == 0 && !strstr(im.t[i].name, "resample_filter")) {
            ck_assert(n < iu.n + 256);
            iu.t[n++] = im.t[i];
        }
    ck_assert_msg(n > iu.n, "test bug: no decoder 1 in tiny-ms");
    write_image(bad, iu.t, n, cfg_uni);
    EXPECT_LOAD_FAILS(bad, "tiny config, extra decoder", "unexpected tensor 'model.decs.1.");
    // a decoder of another width under the right names: shapes differ
    char *wide = replace(cfg_ms, "\"decoders\":[8,4]", "\"decoders\":[8,8]");
    write_image(bad, im.t, im.n, wide);
    EXPECT_LOAD_FAILS(bad, "decoder 1 widened", "model.decs.1.", "shape");
    free(wide), free(cfg_uni), free(cfg_ms);
    image_free(&iu), image_free(&im);
    remove(uni), remove(ms), remove(bad);
}
END_TEST

START_TEST(bad_resample_filter) {
    const char *good = test_path("good.safetensors"), *bad = test_path("bad.safetensors");
    save_preset("tiny-ms", good);
    struct image im;
    image_load(&im, good);
    char *config = preset_json("tiny-ms");
    const char *names[] = {"model.enc.4x4_down.conv0.resample_filter",
                           "model.decs.1.8x8_up.skip.resample_filter"};
    static const float wrong[3][4] = {{0.25f, 0.25f, 0.25f, 0.5f}, {1, 1, 1, 1}, {0.25f, 0.25f, 0.25f, -0.25f}};
    for (int i = 0; i < 2; i++) {
        struct rt *t = image_find(&im, names[i]);
        const unsigned char *keep = t->data;
        for (int v = 0; v < 3; v++) {
            t->data = (const unsigned char *)wrong[v];
            write_image(bad, im.t, im.n, config);
            EXPECT_LOAD_FAILS(bad, names[i], names[i], "box filter", "0.25");
        }
        t->data = keep;
        // the right values in the wrong shape [2, 2]
        t->ndim = 2, t->shape[0] = t->shape[1] = 2;
        write_image(bad, im.t, im.n, config);
        EXPECT_LOAD_FAILS(bad, names[i], names[i], "[1, 1, 2, 2]");
        t->ndim = 4, t->shape[0] = t->shape[1] = 1, t->shape[2] = t->shape[3] = 2;
    }
    // a filter on a conv that does not resample is not a buffer EDM has
    struct rt *f = image_find(&im, names[0]);
    im.t[im.n] = *f;
    snprintf(im.t[im.n].name, sizeof im.t[im.n].name, "model.enc.4x4_block0.conv0.resample_filter");
    write_image(bad, im.t, im.n + 1, config);
    EXPECT_LOAD_FAILS(bad, "stray filter", "unexpected tensor", im.t[im.n].name);
    free(config);
    image_free(&im);
    remove(good), remove(bad);
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
    Suite *s = suite_create("checkpoint");
    TCase *tc = tcase_create("checkpoint");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, names_unified);
    tcase_add_test(tc, names_multistage);
    tcase_add_test(tc, round_trip);
    tcase_add_test(tc, bad_truncated);
    tcase_add_test(tc, bad_header_length);
    tcase_add_test(tc, bad_overlapping_offsets);
    tcase_add_test(tc, bad_offsets_out_of_range);
    tcase_add_test(tc, bad_dtype);
    tcase_add_test(tc, bad_missing_tensor);
    tcase_add_test(tc, bad_shape);
    tcase_add_test(tc, bad_config_metadata);
    tcase_add_test(tc, bad_config_values);
    tcase_add_test(tc, bad_config_disagrees);
    tcase_add_test(tc, bad_resample_filter);
    tcase_add_test(tc, bad_path);
    tcase_add_test(tc, unknown_preset);
    suite_add_tcase(s, tc);
    int rc = run_suite(s);
    test_tmpdir_remove();
    return rc;
}
