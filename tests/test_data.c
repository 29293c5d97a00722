// test_data.c: the data set loaders and batch drawing (common/io/data.h).
//
// Holds: Fashion-MNIST from the Debian package (counts, 6000/1000 images per class, every byte against
// an independent `gzip -dc` of the files), hand-made IDX, CIFAR-10 and PNG-folder data sets, batch
// reproducibility and the index/flip formula, and one test per kind of bad input, each checking the
// -1, the file name and a word of the message, and that *d came back zeroed.
// Does not hold: PNG encoding details (test_png.c).
// Temp files live in the suite's temporary directory (testutil.h), a subfolder per test.
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "common/io/data.h"
#include "common/core/error.h"
#include "common/io/png.h"
#include "common/core/rng.h"
#include "testutil.h"

// The file dir/name holds bytes[0..n).
static void write_bytes(const char *dir, const char *name, const void *bytes, size_t n) {
    test_write_file(test_pathf("%s/%s", dir, name), bytes, n);
}

// An IDX file dir/name: big-endian magic and dims, then n bytes of data; gzip-compressed when gz.
static void write_idx(const char *dir, const char *name, uint32_t magic, const uint32_t *dims, int ndims,
                      const uint8_t *data, size_t n, int gz) {
    unsigned char buf[64 * 1024];
    size_t len = 0;
    uint32_t words[4] = {magic, 0, 0, 0};
    for (int i = 0; i < ndims; i++) words[1 + i] = dims[i];
    for (int w = 0; w <= ndims; w++)
        for (int b = 0; b < 4; b++) buf[len++] = (unsigned char)(words[w] >> (24 - 8 * b));
    ck_assert_msg(len + n <= sizeof buf, "test bug: IDX of %zu bytes", len + n);
    if (n) memcpy(buf + len, data, n);
    len += n;
    if (!gz) {
        write_bytes(dir, name, buf, len);
        return;
    }
    const char *path = test_pathf("%s/%s", dir, name);
    gzFile g = gzopen(path, "wb");
    ck_assert_msg(g != NULL, "gzopen %s", path);
    ck_assert_msg(gzwrite(g, buf, (unsigned)len) == (int)len, "gzwrite %s", path);
    ck_assert_msg(gzclose(g) == Z_OK, "gzclose %s", path);
}

// A small Fashion-MNIST-like pair in dir: n images of r x r (byte (i * 7 + k) % 256) and labels i % 10.
static void write_fmnist(const char *dir, const char *prefix, uint32_t n, uint32_t r, int gz) {
    static uint8_t px[16384], lb[1024];
    ck_assert_msg(n * r * r <= sizeof px && n <= sizeof lb, "test bug: too many pixels");
    for (uint32_t i = 0; i < n * r * r; i++) px[i] = (uint8_t)((i / (r * r)) * 7 + i % (r * r));
    for (uint32_t i = 0; i < n; i++) lb[i] = (uint8_t)(i % 10);
    char name[128];
    snprintf(name, sizeof name, "%s-images-idx3-ubyte%s", prefix, gz ? ".gz" : "");
    write_idx(dir, name, 0x803, (uint32_t[]){n, r, r}, 3, px, n * r * r, gz);
    snprintf(name, sizeof name, "%s-labels-idx1-ubyte%s", prefix, gz ? ".gz" : "");
    write_idx(dir, name, 0x801, (uint32_t[]){n}, 1, lb, n, gz);
}

static void assert_zeroed(const struct msd_dataset *d, const char *spec) {
    ck_assert_msg(d->n == 0 && d->channels == 0 && d->res == 0 && d->pixels == NULL && d->labels == NULL &&
                      d->source[0] == '\0', "'%s': *d not zeroed after a failed open", spec);
}

// msd_data_open(spec) fails, and the message holds `name` (a file) and `word`.
static void expect_fail(const char *spec, const char *name, const char *word) {
    struct msd_dataset d;
    memset(&d, 0x5a, sizeof d); // garbage in: it must come back zeroed
    msd_clear_error();
    int rc = msd_data_open(&d, spec);
    const char *msg = msd_last_error();
    ck_assert_msg(rc == -1, "'%s' opened (rc %d), expected a failure with '%s'", spec, rc, word);
    ck_assert_msg(strstr(msg, name) != NULL, "'%s': message '%s' does not name '%s'", spec, msg, name);
    ck_assert_msg(strstr(msg, word) != NULL, "'%s': message '%s' lacks '%s'", spec, msg, word);
    assert_zeroed(&d, spec);
    printf("  (expected) %s\n", msg);
}

static void open_ok(struct msd_dataset *d, const char *spec) {
    ck_assert_msg(msd_data_open(d, spec) == 0, "'%s': %s", spec, msd_last_error());
}

// The whole decompressed file, by gzip in a separate process (not through zlib): *n bytes, malloc'd.
static uint8_t *gunzip_all(const char *path, size_t *n) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "gzip -dc '%s'", path);
    FILE *p = popen(cmd, "r");
    ck_assert_msg(p != NULL, "popen(%s) failed", cmd);
    size_t cap = 1 << 20, len = 0;
    uint8_t *buf = malloc(cap);
    for (size_t got; (got = fread(buf + len, 1, cap - len, p)) > 0;) {
        len += got;
        if (len == cap) buf = realloc(buf, cap *= 2);
        ck_assert_msg(buf != NULL, "out of memory reading %s", path);
    }
    ck_assert_msg(pclose(p) == 0, "%s failed (is gzip installed?)", cmd);
    *n = len;
    return buf;
}

// ---------------------------------------------------------------------------------------------------
// Fashion-MNIST from the Debian package

#define FM_DIR MSD_FMNIST_DIR

static void check_fmnist(const char *spec, const char *prefix, int n_want) {
    struct msd_dataset d;
    ck_assert_msg(msd_data_open(&d, spec) == 0, "'%s': %s\n(CI installs the Debian package "
                  "dataset-fashion-mnist; install it here too)", spec, msd_last_error());
    ck_assert_msg(d.n == n_want && d.channels == 1 && d.res == 28, "'%s': %d images of %dx%dx%d, expected "
                  "%d of 1x28x28", spec, d.n, d.channels, d.res, d.res, n_want);
    ck_assert_msg(d.labels != NULL, "'%s': no labels", spec);
    int count[10] = {0};
    for (int i = 0; i < d.n; i++) {
        ck_assert_msg(d.labels[i] <= 9, "'%s': label %d at %d", spec, d.labels[i], i);
        count[d.labels[i]]++;
    }
    for (int c = 0; c < 10; c++)
        ck_assert_msg(count[c] == n_want / 10, "'%s': class %d has %d images, expected %d", spec, c,
                      count[c], n_want / 10);
    ck_assert_msg(strstr(d.source, FM_DIR) != NULL, "source '%s' does not name the folder", d.source);

    // every byte against gzip's own decompression, past the 16- and 8-byte headers
    char path[512];
    size_t len;
    snprintf(path, sizeof path, "%s/%s-images-idx3-ubyte.gz", FM_DIR, prefix);
    uint8_t *raw = gunzip_all(path, &len);
    ck_assert_msg(len == 16 + (size_t)n_want * 784, "gzip -dc %s gave %zu bytes", path, len);
    ck_assert_msg(memcmp(raw + 16, d.pixels, (size_t)n_want * 784) == 0, "'%s': pixels differ from gzip -dc",
                  spec);
    // and a known position as floats: image n-1, row 14, column 10
    float img[784];
    msd_data_images(&d, img, d.n - 1, 1);
    uint8_t p = raw[16 + (size_t)(n_want - 1) * 784 + 14 * 28 + 10];
    ck_assert_msg(img[14 * 28 + 10] == (float)p / 127.5f - 1.0f, "pixel (%d, 14, 10) is %g, file has %d",
                  n_want - 1, (double)img[14 * 28 + 10], p);
    free(raw);
    snprintf(path, sizeof path, "%s/%s-labels-idx1-ubyte.gz", FM_DIR, prefix);
    raw = gunzip_all(path, &len);
    ck_assert_msg(len == 8 + (size_t)n_want && memcmp(raw + 8, d.labels, (size_t)n_want) == 0,
                  "'%s': labels differ from gzip -dc", spec);
    free(raw);
    msd_data_free(&d);
    msd_data_free(&d); // twice is safe
}

START_TEST(fmnist_train) { check_fmnist("fmnist", "train", 60000); }
END_TEST

START_TEST(fmnist_test) { check_fmnist("fmnist:test", "t10k", 10000); }
END_TEST

START_TEST(fmnist_explicit_dir) { check_fmnist("fmnist:test:" FM_DIR, "t10k", 10000); }
END_TEST

// ---------------------------------------------------------------------------------------------------
// Batches (on the Fashion-MNIST test set)

START_TEST(batch_reproducible) {
    struct msd_dataset d;
    open_ok(&d, "fmnist:test");
    enum { B = 16, P = 784 };
    const size_t n = (size_t)B * P, bytes = n * sizeof(float);
    float *a = tbuf_new(n), *b = tbuf_new(2 * n), *one = tbuf_new(P); // guarded
    msd_data_batch(&d, a, B, 1234, 77, false);
    msd_data_batch(&d, b, B, 1234, 77, false);
    ck_assert_msg(memcmp(a, b, bytes) == 0, "same seed and step gave different batches");
    msd_data_batch(&d, b, B, 1234, 78, false);
    ck_assert_msg(memcmp(a, b, bytes) != 0, "steps 77 and 78 gave the same batch");
    msd_data_batch(&d, b, B, 1235, 77, false);
    ck_assert_msg(memcmp(a, b, bytes) != 0, "seeds 1234 and 1235 gave the same batch");
    // image j is the documented index, exactly p / 127.5 - 1, in [-1, 1]
    for (int j = 0; j < B; j++) {
        uint32_t idx = msd_rng_u32(1234, MSD_STREAM_DATA, 77ull * B + (uint64_t)j) % (uint32_t)d.n;
        msd_data_images(&d, one, (int)idx, 1);
        ck_assert_msg(memcmp(a + j * P, one, P * sizeof(float)) == 0, "batch image %d is not data image %u", j,
                      idx);
        for (int i = 0; i < P; i++) {
            float want = (float)d.pixels[(size_t)idx * P + (size_t)i] / 127.5f - 1.0f;
            ck_assert_msg(a[j * P + i] == want && a[j * P + i] >= -1.0f && a[j * P + i] <= 1.0f,
                          "batch image %d pixel %d is %g, expected %g", j, i, (double)a[j * P + i], (double)want);
        }
    }
    // the draw depends on step * B + j alone: images 16.. of a batch of 32 at step 38 (draws 1216 + 16 ..)
    // are the batch of 16 at step 77 (draws 1232 ..)
    msd_data_batch(&d, b, 2 * B, 1234, 38, false);
    ck_assert_msg(memcmp(a, b + 16 * P, bytes) == 0, "the draw is not a function of step * B + j alone");
    tbuf_check(a, n, "batch a");
    tbuf_check(b, 2 * n, "batch b");
    tbuf_check(one, P, "one image");
    tbuf_free(a);
    tbuf_free(b);
    tbuf_free(one);
    msd_data_free(&d);
}
END_TEST

START_TEST(batch_xflip) {
    struct msd_dataset d;
    open_ok(&d, "fmnist:test");
    enum { B = 64, R = 28, P = 784 };
    float *plain = tbuf_new((size_t)B * P), *flipped = tbuf_new((size_t)B * P);
    msd_data_batch(&d, plain, B, 9, 5, false);
    msd_data_batch(&d, flipped, B, 9, 5, true);
    int n_flipped = 0;
    for (int j = 0; j < B; j++) {
        int flip = msd_rng_u32(9, MSD_STREAM_XFLIP, 5ull * B + (uint64_t)j) & 1;
        n_flipped += flip;
        for (int y = 0; y < R; y++)
            for (int x = 0; x < R; x++) {
                float want = plain[j * P + y * R + (flip ? R - 1 - x : x)];
                ck_assert_msg(flipped[j * P + y * R + x] == want, "image %d (flip %d) at (%d, %d): %g, want %g",
                              j, flip, y, x, (double)flipped[j * P + y * R + x], (double)want);
            }
    }
    ck_assert_msg(n_flipped > 0 && n_flipped < B, "%d of %d images flipped: the test needs both kinds",
                  n_flipped, B);
    tbuf_check(plain, (size_t)B * P, "plain batch");
    tbuf_check(flipped, (size_t)B * P, "flipped batch");
    tbuf_free(plain);
    tbuf_free(flipped);
    msd_data_free(&d);
}
END_TEST

START_TEST(images_in_order) {
    const char *dir = test_subdir("order");
    write_fmnist(dir, "train", 5, 4, 0); // uncompressed files are read too
    struct msd_dataset d;
    char spec[600];
    snprintf(spec, sizeof spec, "fmnist:%s", dir);
    open_ok(&d, spec);
    ck_assert_msg(d.n == 5 && d.channels == 1 && d.res == 4, "got %d of %dx%d", d.n, d.res, d.res);
    float *out = tbuf_new(3 * 16);
    msd_data_images(&d, out, 2, 3);
    for (int i = 0; i < 3 * 16; i++) {
        float want = (float)(uint8_t)((2 + i / 16) * 7 + i % 16) / 127.5f - 1.0f;
        ck_assert_msg(out[i] == want, "value %d is %g, want %g", i, (double)out[i], (double)want);
    }
    tbuf_check(out, 3 * 16, "images 2..4");
    tbuf_free(out);
    for (int i = 0; i < 5; i++) ck_assert_msg(d.labels[i] == i % 10, "label %d is %d", i, d.labels[i]);
    msd_data_free(&d);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// Fashion-MNIST errors

START_TEST(fmnist_missing) {
    char spec[600];
    snprintf(spec, sizeof spec, "fmnist:%s/nowhere", test_tmpdir());
    expect_fail(spec, "train-images-idx3-ubyte.gz", "dataset-fashion-mnist");
    snprintf(spec, sizeof spec, "fmnist:test:%s/nowhere", test_tmpdir());
    expect_fail(spec, "t10k-images-idx3-ubyte.gz", "dataset-fashion-mnist");
    expect_fail("fmnist:", "fmnist:", "empty folder name");
}
END_TEST

START_TEST(fmnist_labels_missing) {
    const char *dir = test_subdir("nolabels");
    write_fmnist(dir, "train", 3, 4, 1);
    remove(test_pathf("%s/train-labels-idx1-ubyte.gz", dir));
    expect_fail(test_pathf("fmnist:%s", dir), "train-labels-idx1-ubyte.gz", "cannot open");
}
END_TEST

// Bad images files, each next to a good labels file: the header (magic and up to 3 dims), `bytes` zero
// bytes of pixels, and `labels` labels. Each case is its own test (a loop test).
static const struct bad_idx {
    const char *name;
    uint32_t magic, dims[3];
    int ndims;
    size_t bytes;
    uint32_t labels;
    const char *file, *word;
} BAD_IDX[] = {
    {"trunc", 0x803, {10, 4, 4}, 3, 100, 10, "train-images", "truncated: expected 160 bytes of pixels, got 100"},
    {"trunchdr", 0x803, {0}, 0, 0, 1, "train-images", "truncated: expected 16 bytes of header"}, // magic only
    {"magic", 0x801, {3, 4, 4}, 3, 48, 3, "train-images", "expected 0x00000803 (IDX images)"},
    {"count", 0x803, {10, 4, 4}, 3, 160, 9, "train-labels", "count mismatch: the header declares 9 labels"},
    {"square", 0x803, {2, 4, 5}, 3, 40, 2, "train-images", "expected square images"},
    {"absurd", 0x803, {0x7fffffffu, 28, 28}, 3, 0, 1, "train-images", "more than the limit"},
    {"absurd2", 0x803, {1, 0xffffffffu, 0xffffffffu}, 3, 0, 1, "train-images", "more than the limit"},
    {"zero", 0x803, {0, 28, 28}, 3, 0, 0, "train-images", "declares 0 images"},
    {"trailing", 0x803, {2, 4, 4}, 3, 33, 2, "train-images", "unexpected data after the 2 items"},
};

START_TEST(fmnist_bad_images) {
    const struct bad_idx *c = &BAD_IDX[_i];
    const char *dir = test_subdir(c->name);
    static uint8_t zeros[4096], labels[256];
    write_idx(dir, "train-images-idx3-ubyte.gz", c->magic, c->dims, c->ndims, zeros, c->bytes, 1);
    write_idx(dir, "train-labels-idx1-ubyte.gz", 0x801, (uint32_t[]){c->labels}, 1, labels, c->labels, 1);
    expect_fail(test_pathf("fmnist:%s", dir), c->file, c->word);
}
END_TEST

// The gzip stream itself cut short (the last half of the compressed file gone).
START_TEST(fmnist_truncated_stream) {
    const char *dir = test_subdir("cut");
    write_fmnist(dir, "train", 40, 16, 1);
    const char *path = test_pathf("%s/train-images-idx3-ubyte.gz", dir);
    struct stat st;
    ck_assert_msg(stat(path, &st) == 0 && truncate(path, st.st_size / 2) == 0, "cannot cut %s", path);
    expect_fail(test_pathf("fmnist:%s", dir), "train-images-idx3-ubyte.gz", "truncated");
}
END_TEST

START_TEST(fmnist_corrupt_stream) {
    const char *dir = test_subdir("corrupt");
    write_fmnist(dir, "train", 3, 4, 1);
    // a gzip header followed by bytes that are not a deflate stream
    const unsigned char bad[] = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    write_bytes(dir, "train-images-idx3-ubyte.gz", bad, sizeof bad);
    expect_fail(test_pathf("fmnist:%s", dir), "train-images-idx3-ubyte.gz", "cannot read");
}
END_TEST

START_TEST(fmnist_labels_wrong_magic) {
    const char *dir = test_subdir("lmagic");
    write_fmnist(dir, "train", 3, 4, 1);
    write_idx(dir, "train-labels-idx1-ubyte.gz", 0x803, (uint32_t[]){3}, 1, (uint8_t[3]){0}, 3, 1);
    expect_fail(test_pathf("fmnist:%s", dir), "train-labels-idx1-ubyte.gz", "expected 0x00000801 (IDX labels)");
}
END_TEST

START_TEST(fmnist_bad_label) {
    const char *dir = test_subdir("label");
    write_fmnist(dir, "train", 3, 4, 1);
    write_idx(dir, "train-labels-idx1-ubyte.gz", 0x801, (uint32_t[]){3}, 1, (uint8_t[]){1, 10, 2}, 3, 1);
    expect_fail(test_pathf("fmnist:%s", dir), "train-labels-idx1-ubyte.gz", "label 10 at index 1, expected 0..9");
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// CIFAR-10

// dir/name with n records: label (k + 3) % 10, pixel i of record k = (k * 31 + i) % 256.
static void write_cifar(const char *dir, const char *name, int n, int first_record) {
    static uint8_t buf[8 * 3073];
    ck_assert_msg(n <= 8, "test bug");
    for (int r = 0; r < n; r++) {
        int k = first_record + r;
        buf[r * 3073] = (uint8_t)((k + 3) % 10);
        for (int i = 0; i < 3072; i++) buf[r * 3073 + 1 + i] = (uint8_t)((k * 31 + i) % 256);
    }
    write_bytes(dir, name, buf, (size_t)n * 3073);
}

static void check_cifar(const struct msd_dataset *d, int n) {
    ck_assert_msg(d->n == n && d->channels == 3 && d->res == 32, "%d images of %dx%dx%d, want %d of 3x32x32",
                  d->n, d->channels, d->res, d->res, n);
    for (int k = 0; k < n; k++) {
        ck_assert_msg(d->labels[k] == (k + 3) % 10, "record %d label %d", k, d->labels[k]);
        for (int i = 0; i < 3072; i++) // R plane, G plane, B plane: already (3, 32, 32)
            ck_assert_msg(d->pixels[(size_t)k * 3072 + (size_t)i] == (k * 31 + i) % 256, "record %d byte %d", k, i);
    }
}

START_TEST(cifar_train_and_test) {
    const char *dir = test_subdir("cifar");
    char spec[600];
    int counts[5] = {1, 2, 1, 1, 1}, first = 0;
    for (int f = 0; f < 5; f++) {
        char name[32];
        snprintf(name, sizeof name, "data_batch_%d.bin", f + 1);
        write_cifar(dir, name, counts[f], first);
        first += counts[f];
    }
    write_cifar(dir, "test_batch.bin", 3, 0);
    struct msd_dataset d;
    snprintf(spec, sizeof spec, "cifar10:%s", dir);
    open_ok(&d, spec);
    check_cifar(&d, 6);
    msd_data_free(&d);
    snprintf(spec, sizeof spec, "cifar10:test:%s", dir);
    open_ok(&d, spec);
    check_cifar(&d, 3);
    ck_assert_msg(strstr(d.source, "test") != NULL, "source '%s'", d.source);
    msd_data_free(&d);
    // the parent of cifar-10-batches-bin/ is accepted too
    dir = test_subdir("cifar-parent");
    const char *sub = test_subdir("cifar-parent/cifar-10-batches-bin");
    write_cifar(sub, "test_batch.bin", 2, 0);
    snprintf(spec, sizeof spec, "cifar10:test:%s", dir);
    open_ok(&d, spec);
    check_cifar(&d, 2);
    msd_data_free(&d);
}
END_TEST

START_TEST(cifar_wrong_size) {
    const char *dir = test_subdir("cifar-size");
    char spec[600];
    static uint8_t buf[3073 * 2 + 5];
    write_bytes(dir, "test_batch.bin", buf, sizeof buf);
    snprintf(spec, sizeof spec, "cifar10:test:%s", dir);
    expect_fail(spec, "test_batch.bin", "not a multiple of 3073");
}
END_TEST

START_TEST(cifar_missing_batch) {
    const char *dir = test_subdir("cifar-missing");
    char spec[600];
    for (int f = 1; f <= 4; f++) {
        char name[32];
        snprintf(name, sizeof name, "data_batch_%d.bin", f);
        write_cifar(dir, name, 1, 0);
    }
    snprintf(spec, sizeof spec, "cifar10:%s", dir);
    expect_fail(spec, "data_batch_5.bin", "missing");
    snprintf(spec, sizeof spec, "cifar10:%s/nowhere", test_tmpdir());
    expect_fail(spec, "nowhere", "cifar-10-batches-bin");
    expect_fail("cifar10", "cifar10", "needs its folder");
    expect_fail("cifar10:test", "cifar10:test", "needs its folder");
}
END_TEST

START_TEST(cifar_empty_and_bad_label) {
    const char *dir = test_subdir("cifar-empty");
    char spec[600];
    write_bytes(dir, "test_batch.bin", "", 0);
    snprintf(spec, sizeof spec, "cifar10:test:%s", dir);
    expect_fail(spec, "test_batch.bin", "empty");
    static uint8_t rec[2 * 3073];
    rec[3073] = 11; // the second record's label
    write_bytes(dir, "test_batch.bin", rec, sizeof rec);
    expect_fail(spec, "test_batch.bin", "record 1 has label 11");
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// PNG folders (the round trip of pixel values is in test_png.c)

// dir/name: a C x H x W image whose bytes are (seed + i) % 256.
static void put_png(const char *dir, const char *name, int C, int H, int W, int seed) {
    static float img[3 * 64 * 64];
    ck_assert_msg(C * H * W <= (int)(sizeof img / sizeof img[0]), "test bug");
    for (int i = 0; i < C * H * W; i++) img[i] = (float)((seed + i) % 256) / 127.5f - 1.0f;
    ck_assert_msg(msd_png_write(test_pathf("%s/%s", dir, name), img, C, H, W) == 0, "%s", msd_last_error());
}

START_TEST(png_folder_loads_sorted) {
    const char *dir = test_subdir("pngs");
    put_png(dir, "b.png", 3, 8, 8, 20);
    put_png(dir, "a.png", 3, 8, 8, 10);
    put_png(dir, "c.PNG", 3, 8, 8, 30);
    put_png(dir, ".hidden.png", 1, 5, 7, 0); // dot-files are skipped (a gray non-square one would fail)
    write_bytes(dir, "notes.txt", "x", 1);   // so are other files
    struct msd_dataset d;
    open_ok(&d, dir);
    ck_assert_msg(d.n == 3 && d.channels == 3 && d.res == 8, "%d images of %dx%dx%d", d.n, d.channels, d.res,
                  d.res);
    ck_assert_msg(d.labels == NULL, "a PNG folder has no labels");
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < 192; i++)
            ck_assert_msg(d.pixels[k * 192 + i] == (10 * (k + 1) + i) % 256, "image %d byte %d: %d", k, i,
                          d.pixels[k * 192 + i]);
    ck_assert_msg(strstr(d.source, dir) != NULL, "source '%s'", d.source);
    msd_data_free(&d);
}
END_TEST

// Bad PNG folders: up to two files, each a PNG of C x H x W (put_png) or, with `text`, that text; the
// last one cut 20 bytes short when `cut`. The message names `name` (the folder itself when NULL) and
// says `word`. Each case is its own test (a loop test).
static const struct bad_folder {
    const char *dir;
    struct {
        const char *name;
        int C, H, W;
        const char *text;
    } files[2];
    bool cut;
    const char *name, *word;
} BAD_FOLDERS[] = {
    {"empty", {{"readme.txt", .text = "x"}}, false, NULL, "empty folder: no *.png files"},
    {"notpng", {{"a.png", 1, 4, 4, NULL}, {"x.png", .text = "hello, this is text"}}, false, "x.png",
     "not a PNG file"},
    {"corruptpng", {{"a.png", 1, 32, 32, NULL}, {"b.png", 1, 32, 32, NULL}}, true, "b.png", "truncated"},
    {"sizes", {{"a.png", 1, 28, 28, NULL}, {"b.png", 1, 32, 32, NULL}}, false, "'a.png' is 28x28 but 'b.png' is 32x32",
     "same size"},
    {"mixed", {{"a.png", 1, 8, 8, NULL}, {"b.png", 3, 8, 8, NULL}}, false, "'a.png' is gray but 'b.png' is RGB",
     "may not mix"},
    {"nonsquare", {{"a.png", 3, 6, 8, NULL}}, false, "a.png", "expected square images"},
};

START_TEST(png_folder_bad) {
    const struct bad_folder *c = &BAD_FOLDERS[_i];
    const char *dir = test_subdir(c->dir), *last = NULL;
    for (int k = 0; k < 2 && c->files[k].name; k++) {
        last = c->files[k].name;
        if (c->files[k].text) write_bytes(dir, last, c->files[k].text, strlen(c->files[k].text));
        else put_png(dir, last, c->files[k].C, c->files[k].H, c->files[k].W, 0);
    }
    if (c->cut) {
        const char *path = test_pathf("%s/%s", dir, last);
        struct stat st;
        ck_assert_msg(stat(path, &st) == 0 && truncate(path, st.st_size - 20) == 0, "cannot cut %s", path);
    }
    expect_fail(dir, c->name ? c->name : dir, c->word);
}
END_TEST

// msd_data_random: the documented pixels (the counter RNG's TEST stream over the whole set), every
// byte value reachable, no labels; a shape it cannot hold is an error that names the shape.
START_TEST(random_data_set) {
    struct msd_dataset d;
    ck_assert_msg(msd_data_random(&d, 5, 3, 7, 42) == 0, "%s", msd_last_error());
    ck_assert(d.n == 5 && d.channels == 3 && d.res == 7 && d.labels == NULL);
    const size_t bytes = 5 * 3 * 7 * 7;
    size_t wrong = bytes;
    int lo = 255, hi = 0;
    for (size_t i = 0; i < bytes; i++) {
        if (d.pixels[i] != (msd_rng_u32(42, MSD_STREAM_TEST, i) & 255) && wrong == bytes) wrong = i;
        lo = d.pixels[i] < lo ? d.pixels[i] : lo, hi = d.pixels[i] > hi ? d.pixels[i] : hi;
    }
    ck_assert_msg(wrong == bytes, "pixel %zu is not the documented draw", wrong);
    ck_assert_msg(lo < 8 && hi > 247, "pixels span only [%d, %d] in %zu draws", lo, hi, bytes);
    msd_data_free(&d);
    ck_assert_int_eq(msd_data_random(&d, 0, 1, 28, 1), -1);
    ck_assert_ptr_null(d.pixels);
    ck_assert_msg(strstr(msd_last_error(), "0 images of 1x28x28") != NULL, "%s", msd_last_error());
}
END_TEST

START_TEST(png_folder_nonexistent) {
    const char *path = test_path("does-not-exist");
    expect_fail(path, path, "No such file or directory");
    path = test_path("plainfile");
    test_write_file(path, "x", 1);
    expect_fail(path, path, "not a directory");
    expect_fail("", "data set", "empty name");
}
END_TEST

int main(void) {
    test_tmpdir_make("data"); // before the tests fork: they share it
    const TTest *tests[] = {
        fmnist_train, fmnist_test, fmnist_explicit_dir, batch_reproducible, batch_xflip, images_in_order,
        fmnist_missing, fmnist_labels_missing, fmnist_truncated_stream, fmnist_corrupt_stream,
        fmnist_labels_wrong_magic, fmnist_bad_label, cifar_train_and_test, cifar_wrong_size,
        cifar_missing_batch, cifar_empty_and_bad_label, png_folder_loads_sorted, png_folder_nonexistent,
        random_data_set,
    };
    const struct loop_test loops[] = {{fmnist_bad_images, (int)TEST_COUNT(BAD_IDX)},
                                      {png_folder_bad, (int)TEST_COUNT(BAD_FOLDERS)}};
    return run_test_suite(&(struct test_suite){.name = "data", .timeout_s = 120, .tests = tests,
                                               .n = TEST_COUNT(tests), .loops = loops, .n_loops = TEST_COUNT(loops)});
}
