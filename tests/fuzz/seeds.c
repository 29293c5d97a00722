// seeds.c: writes the seed corpora of the fuzz harnesses (tests/fuzz/run.sh runs it), one folder
// per harness under the folder given, from real files of every kind the parsers read:
//   safetensors, checkpoint  checkpoints (F32 and F16) of a 4-channel two-stage network and of the
//                            tiny and tiny-ms presets; for safetensors also a file of the other
//                            dtypes (BF16, F64, I32, U8), which no checkpoint of msdiff holds
//   state                    the 4-channel network's training state after one real training step
//   config                   every preset's config JSON
//   runjson                  the run.json of a new run
//   idx                      the first images and labels of Fashion-MNIST's test set, gzip and plain
//                            (when the data set is installed; else a valid 3-image set made here)
//   cifar                    two records in the CIFAR-10 binary format
//   png                      gray and RGB images written by msd_png_write
//   cli                      command-line words, NUL-separated
// Usage: seeds DIR
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "common/cli/run.h"
#include "common/core/backend.h"
#include "common/core/error.h"
#include "common/io/checkpoint.h"
#include "common/io/data.h"
#include "common/io/png.h"
#include "common/model/config.h"
#include "common/model/model.h"
#include "common/model/train.h"

static const char *root;

static const char *path_of(const char *harness, const char *name) {
    static char path[1024];
    snprintf(path, sizeof path, "%s/%s", root, harness);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/%s/%s", root, harness, name);
    return path;
}

static void fail(const char *what) {
    fprintf(stderr, "seeds: %s: %s\n", what, msd_last_error());
    exit(1);
}

static void write_bytes(const char *harness, const char *name, const void *data, size_t n) {
    const char *path = path_of(harness, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n || fclose(f) != 0) {
        perror(path);
        exit(1);
    }
}

// A file's bytes (malloc'd), or NULL.
static unsigned char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    unsigned char *buf = NULL;
    size_t cap = 0;
    *n = 0;
    for (;;) {
        if (*n == cap && !(buf = realloc(buf, cap = cap ? 2 * cap : 4096))) exit(1);
        size_t got = fread(buf + *n, 1, cap - *n, f);
        if (!got) break;
        *n += got;
    }
    fclose(f);
    return buf;
}

static void copy_file(const char *from, const char *harness, const char *name) {
    size_t n;
    unsigned char *b = slurp(from, &n);
    if (!b) {
        perror(from);
        exit(1);
    }
    write_bytes(harness, name, b, n);
    free(b);
}

// The smallest network the validator accepts, so that the fuzzer's inputs stay a few kilobytes: one
// level of 4 channels at 4x4, no attention, two stages of 4 channels.
static struct msd_config micro(void) {
    struct msd_config c;
    if (msd_config_preset(&c, "tiny-ms")) fail("tiny-ms");
    c.img_resolution = 4, c.in_channels = c.out_channels = 1, c.model_channels = 4;
    c.n_levels = 1, c.channel_mult[0] = 1, c.n_attn = 0, c.channel_mult_emb = 1;
    c.dec_channels[0] = c.dec_channels[1] = 4;
    if (msd_config_validate(&c)) fail("micro config");
    return c;
}

static void checkpoint(const char *name, const struct msd_config *c) {
    struct msd_model m;
    if (msd_model_create(&m, c, &msd_backend_ref)) fail(name);
    msd_model_init_weights(&m, 1);
    for (int f16 = 0; f16 < 2; f16++) {
        char file[64];
        snprintf(file, sizeof file, "%s%s.safetensors", name, f16 ? "-f16" : "");
        const char *path = path_of("checkpoint", file);
        if (msd_checkpoint_save_as(&m, path, f16, NULL, NULL, 0)) fail(path);
        copy_file(path, "safetensors", file);
    }
    msd_model_free(&m);
}

// Checkpoints of the micro network and the tiny presets, and a training state of the micro network
// after one step.
static void networks(void) {
    struct msd_config c = micro();
    checkpoint("micro-ms", &c);
    const char *presets[] = {"tiny", "tiny-ms"};
    for (int p = 0; p < 2; p++) {
        struct msd_config t;
        if (msd_config_preset(&t, presets[p])) fail(presets[p]);
        checkpoint(presets[p], &t);
    }

    struct msd_model m;
    struct msd_train_state st;
    struct msd_train_opts o;
    struct msd_dataset data;
    struct msd_step_info info;
    msd_train_defaults(&o);
    o.batch = 2;
    if (msd_model_create(&m, &c, &msd_backend_ref)) fail("micro");
    msd_model_init_weights(&m, 1);
    if (msd_model_plan(&m, o.batch, true) || msd_train_state_init(&st, &m)) fail("plan");
    if (msd_data_random(&data, 4, c.in_channels, c.img_resolution, 1)) fail("data");
    if (msd_train_step(&m, &st, &data, &o, &info)) fail("step");
    if (msd_train_save(path_of("state", "micro-ms-step1.safetensors"), &m, &st, &o)) fail("state");

    struct msd_run_opts r = {.dir = path_of("runjson", "run"), .data = "fmnist", .steps = 400,
                             .ckpt_every = 40, .log_seconds = 5};
    if (msd_run_create(&m, &o, &r)) fail("run.json");
    copy_file(path_of("runjson", "run/run.json"), "runjson", "run.json");
    msd_data_free(&data);
    msd_train_state_free(&st, &m);
    msd_model_free(&m);
}

static void configs(void) {
    for (int k = 0; msd_preset_names[k]; k++) {
        struct msd_config c;
        if (msd_config_preset(&c, msd_preset_names[k])) fail(msd_preset_names[k]);
        char *json = msd_config_to_json(&c);
        if (!json) fail("config json");
        write_bytes("config", msd_preset_names[k], json, strlen(json));
        free(json);
    }
}

// The fuzz_idx input: a 4-byte little-endian length, the images file, the labels file.
static void idx_seed(const char *name, const unsigned char *img, uint32_t ni, const unsigned char *lab, size_t nl) {
    size_t n = 4 + ni + nl;
    unsigned char *b = malloc(n);
    if (!b) exit(1);
    for (int i = 0; i < 4; i++) b[i] = (unsigned char)(ni >> (8 * i));
    memcpy(b + 4, img, ni);
    memcpy(b + 4 + ni, lab, nl);
    write_bytes("idx", name, b, n);
    free(b);
}

// The first `count` images of Fashion-MNIST's test set (or made-up pixels when it is not installed),
// as plain IDX files and gzip-compressed ones.
static void idx(void) {
    enum { count = 3, px = 28 * 28 };
    unsigned char img[16 + count * px], lab[8 + count];
    const unsigned char ih[16] = {0, 0, 8, 3, 0, 0, 0, count, 0, 0, 0, 28, 0, 0, 0, 28};
    const unsigned char lh[8] = {0, 0, 8, 1, 0, 0, 0, count};
    memcpy(img, ih, 16);
    memcpy(lab, lh, 8);
    gzFile gi = gzopen(MSD_FMNIST_DIR "/t10k-images-idx3-ubyte.gz", "rb");
    gzFile gl = gzopen(MSD_FMNIST_DIR "/t10k-labels-idx1-ubyte.gz", "rb");
    unsigned char skip[16];
    int real = gi && gl && gzread(gi, skip, 16) == 16 && gzread(gi, img + 16, count * px) == count * px &&
               gzread(gl, skip, 8) == 8 && gzread(gl, lab + 8, count) == count;
    if (gi) gzclose(gi);
    if (gl) gzclose(gl);
    if (!real)
        for (int i = 0; i < count * px; i++) img[16 + i] = (unsigned char)(i * 7), lab[8 + i % count] = (unsigned char)(i % count);
    idx_seed("plain", img, sizeof img, lab, sizeof lab);

    // the same two files gzip-compressed, through zlib's in-memory gzip format
    unsigned char zi[sizeof img + 256], zl[sizeof lab + 256];
    size_t nzi = sizeof zi, nzl = sizeof zl;
    const unsigned char *src[2] = {img, lab};
    size_t srcn[2] = {sizeof img, sizeof lab};
    unsigned char *dst[2] = {zi, zl};
    size_t *dstn[2] = {&nzi, &nzl};
    for (int k = 0; k < 2; k++) {
        z_stream z = {0};
        if (deflateInit2(&z, 9, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) exit(1);
        z.next_in = (unsigned char *)src[k], z.avail_in = (uInt)srcn[k];
        z.next_out = dst[k], z.avail_out = (uInt)*dstn[k];
        if (deflate(&z, Z_FINISH) != Z_STREAM_END) exit(1);
        *dstn[k] = z.total_out;
        deflateEnd(&z);
    }
    idx_seed("gzip", zi, (uint32_t)nzi, zl, nzl);
}

static void cifar(void) {
    enum { rec = 1 + 3072 };
    unsigned char b[2 * rec];
    for (int i = 0; i < 2 * rec; i++) b[i] = (unsigned char)(i * 13 + 5);
    b[0] = 3, b[rec] = 9; // labels
    write_bytes("cifar", "two-records", b, sizeof b);
}

static void pngs(void) {
    float img[3 * 5 * 7];
    for (int i = 0; i < 3 * 5 * 7; i++) img[i] = (float)(i % 11) / 5.0f - 1.0f;
    if (msd_png_write(path_of("png", "gray.png"), img, 1, 5, 7)) fail("png");
    if (msd_png_write(path_of("png", "rgb.png"), img, 3, 5, 7)) fail("png");
}

// Words of a command line, NUL-separated as fuzz_cli.c splits them.
static const char cli_steps[] = "--steps\0" "12\0" "--seed\0" "7\0" "--quiet";
static const char cli_lists[] = "--decoders\0" "48,32,8\0" "--boundaries\0" "2.5103,7.6577";
static const char cli_double[] = "-1.5e-3\0" "--sigma\0" "0.002";

// A safetensors file written byte by byte, with tensors of the dtypes the writer never uses: BF16 (1.0,
// -2.0), F64 (0.5), I32 and U8, and a metadata entry.
static void dtypes(void) {
    static const char header[] =
        "{\"__metadata__\":{\"format\":\"pt\"},"
        "\"a\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]},"
        "\"b\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[8,16]},"
        "\"c\":{\"dtype\":\"I32\",\"shape\":[1,1],\"data_offsets\":[16,20]},"
        "\"d\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[20,24]}}";
    static const unsigned char data[24] = {0x80, 0x3f, 0x00, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xe0, 0x3f,
                                           7, 0, 0, 0, 1, 2, 3, 4};
    const size_t h = sizeof header - 1, padded = (h + 7) / 8 * 8;
    unsigned char file[8 + sizeof header + 8 + sizeof data];
    for (int i = 0; i < 8; i++) file[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    memcpy(file + 8, header, h);
    memset(file + 8 + h, ' ', padded - h);
    memcpy(file + 8 + padded, data, sizeof data);
    write_bytes("safetensors", "dtypes.safetensors", file, 8 + padded + sizeof data);
}

static void cli(void) {
    write_bytes("cli", "steps", cli_steps, sizeof cli_steps - 1);
    write_bytes("cli", "lists", cli_lists, sizeof cli_lists - 1);
    write_bytes("cli", "double", cli_double, sizeof cli_double - 1);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: seeds DIR\n");
        return 2;
    }
    root = argv[1];
    mkdir(root, 0755);
    networks();
    dtypes();
    configs();
    idx();
    cifar();
    pngs();
    cli();
    return 0;
}
