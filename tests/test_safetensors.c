// test_safetensors.c: the safetensors reader and writer (common/io/safetensors.h).
//
// Holds: a bit-exact round trip with metadata, the 8-byte data alignment, loading the reference dumps
// of tests/data/ (the tests run from the repository root), one test per kind of corrupt file
// (each checks the -1 and a word of the message) and per kind of string with a NUL in it, messages
// that say what the file is, the float32 getter's shape and dtype errors, F16 and
// BF16 conversion of known values, rounding to F16 (known values, every half, nearest-ness) and F16
// writes, and the atomic writer's failure paths (no .tmp and no file left).
// Does not hold: model-specific checkpoint contents (the model tests check those names and shapes).
// Temp files live in the suite's temporary directory (testutil.h).
#include <check.h>
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/core/error.h"
#include "common/core/rng.h"
#include "common/io/safetensors.h"
#include "testutil.h"

// A safetensors file by hand into buf: u64 little-endian strlen(header), the header, data[0..data_len).
static size_t raw_image(unsigned char *buf, size_t cap, const char *header, const void *data,
                        size_t data_len) {
    size_t hl = strlen(header);
    ck_assert_msg(8 + hl + data_len <= cap, "test bug: a %zu-byte image", 8 + hl + data_len);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, header, hl);
    if (data_len) memcpy(buf + 8 + hl, data, data_len);
    return 8 + hl + data_len;
}

static void write_raw(const char *path, const char *header, const void *data, size_t data_len) {
    unsigned char buf[1024];
    test_write_file(path, buf, raw_image(buf, sizeof buf, header, data, data_len));
}

// Write bytes[0..n) as a file, read it, and check -1, a message with `word` and the path, a zeroed *f.
static void expect_fail_bytes(const void *bytes, size_t n, const char *what, const char *word) {
    const char *path = test_path("corrupt.safetensors");
    test_write_file(path, bytes, n);
    struct msd_st_file f;
    msd_clear_error();
    int rc = msd_st_read(&f, path);
    ck_assert_msg(rc == -1, "msd_st_read accepted %s (rc %d)", what, rc);
    const char *msg = msd_last_error();
    ck_assert_msg(strstr(msg, word) != NULL, "%s: message '%s' lacks '%s'", what, msg, word);
    ck_assert_msg(strstr(msg, path) != NULL, "message '%s' does not name the file %s", msg, path);
    ck_assert_msg(f.n_tensors == 0 && f.tensors == NULL && f.data == NULL && f.path == NULL,
                  "*f not zeroed after a failed read");
    msd_st_free(&f); // harmless on a zeroed struct
    remove(path);
}

// The same for a file with this header and data_len zero bytes of data.
static void expect_read_fails(const char *header, size_t data_len, const char *word) {
    unsigned char buf[1024], zeros[64] = {0};
    ck_assert_msg(data_len <= sizeof zeros, "test bug: data_len %zu", data_len);
    expect_fail_bytes(buf, raw_image(buf, sizeof buf, header, zeros, data_len), header, word);
}

// ---------------------------------------------------------------------------------------------------
// Round trip and alignment

START_TEST(test_round_trip) {
    // values chosen to catch any conversion: -0, a NaN payload, inf, a denormal, ordinary numbers
    uint32_t special[6] = {0x80000000u, 0x7fc12345u, 0x7f800000u, 0x00000001u, 0x3f800000u, 0xc2f6e979u};
    float w[2 * 3 * 3 * 3], b[6], s = 0.25f;
    memcpy(b, special, sizeof b);
    for (int i = 0; i < 54; i++) w[i] = (float)i * 0.37f - 9.0f;
    struct msd_st_entry e[4] = {
        {"net.w", 4, {2, 3, 3, 3}, w}, {"net.b", 1, {6}, b}, // w: (2, 3, 3, 3), b: (6)
        {"scale", 0, {0}, &s}, {"empty", 2, {0, 5}, NULL},   // a scalar and an empty (0, 5)
    };
    const char *keys[2] = {"config", "note"}, *vals[2] = {"{\"a\": [1, 2]}", "quote \" back \\ nl \n tab \t"};
    const char *path = test_path("rt.safetensors"), *tmp = test_path("rt.safetensors.tmp");
    ck_assert_msg(msd_st_write(path, e, 4, keys, vals, 2) == 0, "write failed: %s", msd_last_error());
    ck_assert_msg(!test_exists(tmp), "%s left behind after a successful write", tmp);

    struct msd_st_file f;
    ck_assert_msg(msd_st_read(&f, path) == 0, "read back failed: %s", msd_last_error());
    ck_assert_msg(f.n_tensors == 4, "read %d tensors, wrote 4", f.n_tensors);
    for (int i = 0; i < 4; i++) {
        const struct msd_st_tensor *t = &f.tensors[i];
        ck_assert_msg(strcmp(t->name, e[i].name) == 0, "tensor %d is '%s', wrote '%s' (order lost)", i,
                      t->name, e[i].name);
        ck_assert_msg(strcmp(t->dtype, "F32") == 0, "tensor '%s' dtype %s, wrote F32", t->name, t->dtype);
        ck_assert_msg(t->ndim == e[i].ndim, "tensor '%s' ndim %d, wrote %d", t->name, t->ndim, e[i].ndim);
        for (int d = 0; d < t->ndim; d++)
            ck_assert_msg(t->shape[d] == e[i].shape[d], "tensor '%s' dim %d is %lld, wrote %lld", t->name, d,
                          (long long)t->shape[d], (long long)e[i].shape[d]);
    }
    float w2[54], b2[6], s2 = 0;
    ck_assert_msg(msd_st_get_f32(&f, "net.w", 4, (int64_t[]){2, 3, 3, 3}, w2) == 0, "%s", msd_last_error());
    ck_assert_msg(msd_st_get_f32(&f, "net.b", 1, (int64_t[]){6}, b2) == 0, "%s", msd_last_error());
    ck_assert_msg(msd_st_get_f32(&f, "scale", 0, NULL, &s2) == 0, "%s", msd_last_error());
    ck_assert_msg(msd_st_get_f32(&f, "empty", 2, (int64_t[]){0, 5}, NULL) == 0, "%s", msd_last_error());
    ck_assert_msg(memcmp(w, w2, sizeof w) == 0, "net.w not bit-identical after the round trip");
    ck_assert_msg(memcmp(b, b2, sizeof b) == 0, "net.b (-0, NaN payload, inf, denormal) not bit-identical");
    ck_assert_msg(memcmp(&s, &s2, 4) == 0, "scalar 'scale' read %g, wrote %g", (double)s2, (double)s);
    for (int i = 0; i < 2; i++) {
        const char *v = msd_st_meta(&f, keys[i]);
        ck_assert_msg(v && strcmp(v, vals[i]) == 0, "metadata '%s' read '%s', wrote '%s'", keys[i],
                      v ? v : "(null)", vals[i]);
    }
    msd_st_free(&f);
    msd_st_free(&f); // twice is safe
    remove(path);
}
END_TEST

START_TEST(test_data_aligned) {
    // names of every length mod 8, with and without metadata, so every amount of padding occurs
    float x[3] = {1, 2, 3};
    const char *path = test_path("align.safetensors");
    char name[16];
    const char *k[1] = {"m"}, *v[1] = {"v"};
    for (int len = 1; len <= 9; len++)
        for (int n_meta = 0; n_meta <= 1; n_meta++) {
            memset(name, 'a', (size_t)len);
            name[len] = '\0';
            struct msd_st_entry e = {name, 1, {3}, x};
            ck_assert_msg(msd_st_write(path, &e, 1, k, v, n_meta) == 0, "write: %s", msd_last_error());
            FILE *fp = fopen(path, "rb");
            ck_assert_msg(fp != NULL, "cannot reopen %s", path);
            unsigned char lb[8];
            ck_assert_msg(fread(lb, 1, 8, fp) == 8, "short file %s", path);
            fclose(fp);
            uint64_t n = 0;
            for (int i = 7; i >= 0; i--) n = (n << 8) | lb[i];
            ck_assert_msg((8 + n) % 8 == 0, "name length %d, n_meta %d: data starts at byte %llu, not "
                          "8-byte aligned", len, n_meta, (unsigned long long)(8 + n));
            struct msd_st_file f;
            ck_assert_msg(msd_st_read(&f, path) == 0, "padded file unreadable: %s", msd_last_error());
            ck_assert_msg(f.data_len == sizeof x, "data_len %zu, expected %zu", f.data_len, sizeof x);
            msd_st_free(&f);
        }
    remove(path);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// The reference dumps

// tests/data/<name> (relative to the repository root, where the tests run).
static const char *testdata(char *buf, size_t cap, const char *name) {
    snprintf(buf, cap, "tests/data/%s", name);
    ck_assert_msg(test_exists(buf), "test data %s is missing from tests/data/ (run the tests from the repository "
                  "root)", name);
    return buf;
}

static void check_reference_file(const char *name, int n_tensors, uint32_t first_weight_bits) {
    char path[512];
    testdata(path, sizeof path, name);
    struct msd_st_file f;
    ck_assert_msg(msd_st_read(&f, path) == 0, "cannot load %s: %s", path, msd_last_error());
    ck_assert_msg(f.n_tensors == n_tensors, "%s: %d tensors, expected %d", path, f.n_tensors, n_tensors);
    const struct msd_st_tensor *t = msd_st_find(&f, "model.enc.8x8_conv.weight");
    ck_assert_msg(t != NULL, "%s: no model.enc.8x8_conv.weight", path);
    ck_assert_msg(t->ndim == 4 && t->shape[0] == 8 && t->shape[1] == 2 && t->shape[2] == 3 &&
                      t->shape[3] == 3,
                  "%s: model.enc.8x8_conv.weight is not [8, 2, 3, 3]", path);
    float w[8 * 2 * 3 * 3];
    ck_assert_msg(msd_st_get_f32(&f, t->name, 4, (int64_t[]){8, 2, 3, 3}, w) == 0, "%s", msd_last_error());
    uint32_t bits;
    memcpy(&bits, &w[0], 4);
    ck_assert_msg(bits == first_weight_bits, "%s: first weight has bits 0x%08x, expected 0x%08x", path, bits,
                  first_weight_bits);
    const char *sig = msd_st_meta(&f, "sigmas");
    ck_assert_msg(sig && strcmp(sig, "[0.3, 5.0]") == 0, "%s: metadata sigmas is '%s', expected '[0.3, 5.0]'",
                  path, sig ? sig : "(null)");
    ck_assert_msg(msd_st_meta(&f, "config") != NULL, "%s: no metadata 'config'", path);

    // Rewrite every tensor with our writer and read it back: the same bytes under the same names.
    struct msd_st_entry *e = calloc((size_t)f.n_tensors, sizeof *e);
    ck_assert_msg(e != NULL, "calloc failed");
    for (int i = 0; i < f.n_tensors; i++) {
        ck_assert_msg(strcmp(f.tensors[i].dtype, "F32") == 0, "%s: %s is %s, expected F32", path,
                      f.tensors[i].name, f.tensors[i].dtype);
        e[i].name = f.tensors[i].name;
        e[i].ndim = f.tensors[i].ndim;
        memcpy(e[i].shape, f.tensors[i].shape, sizeof e[i].shape);
        e[i].data = (const float *)(const void *)(f.data + f.tensors[i].begin); // begin is 4-aligned in F32
    }
    const char *keys[1] = {"sigmas"}, *vals[1] = {sig};
    const char *out = test_path("rewrite.safetensors");
    ck_assert_msg(msd_st_write(out, e, f.n_tensors, keys, vals, 1) == 0, "rewrite: %s", msd_last_error());
    struct msd_st_file g;
    ck_assert_msg(msd_st_read(&g, out) == 0, "reading the rewrite: %s", msd_last_error());
    ck_assert_msg(g.n_tensors == f.n_tensors, "rewrite has %d tensors, expected %d", g.n_tensors,
                  f.n_tensors);
    for (int i = 0; i < f.n_tensors; i++) {
        const struct msd_st_tensor *a = &f.tensors[i], *b = &g.tensors[i];
        ck_assert_msg(strcmp(a->name, b->name) == 0 && a->end - a->begin == b->end - b->begin &&
                          memcmp(f.data + a->begin, g.data + b->begin, a->end - a->begin) == 0,
                      "rewrite differs at tensor %d '%s'", i, a->name);
    }
    msd_st_free(&g);
    free(e);
    msd_st_free(&f);
    remove(out);
}

START_TEST(test_reference_unified) { check_reference_file("edm-tiny-unified.safetensors", 434, 3171182598u); }
END_TEST

START_TEST(test_reference_multistage) { check_reference_file("edm-tiny-ms.safetensors", 722, 3196539264u); }
END_TEST

// ---------------------------------------------------------------------------------------------------
// Corrupt files: each must give -1 and a message that says what is wrong

START_TEST(test_truncated_file) { expect_fail_bytes("\x10\0\0\0\0", 5, "a 5-byte file", "truncated"); }
END_TEST

START_TEST(test_header_length_past_end) {
    unsigned char buf[8 + 10] = {0xe8, 0x03}; // claims a 1000-byte header, has 10 bytes
    memcpy(buf + 8, "{}        ", 10);
    expect_fail_bytes(buf, sizeof buf, "a header length past the end of file", "header length");
    unsigned char huge[16] = {0, 0, 0, 0, 0, 0, 0, 0x40, '{', '}', ' ', ' ', ' ', ' ', ' ', ' '}; // 2^62
    expect_fail_bytes(huge, sizeof huge, "a 2^62-byte header length", "absurd");
}
END_TEST

START_TEST(test_header_not_json) { expect_read_fails("{\"a\": {\"dtype\": ", 0, "not valid JSON"); }
END_TEST

START_TEST(test_overlapping_offsets) {
    expect_read_fails("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                      "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 16, "overlap");
}
END_TEST

START_TEST(test_offset_out_of_range) {
    expect_read_fails("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, "out of range");
}
END_TEST

START_TEST(test_wrong_dtype) {
    expect_read_fails("{\"a\":{\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "dtype");
}
END_TEST

START_TEST(test_size_mismatch) {
    expect_read_fails("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "shape");
}
END_TEST

// The other ways a header can be wrong, one loop iteration (and forked test) each.
static const struct { const char *header; size_t data_len; const char *word; } MORE_CORRUPT[] = {
    {"[1, 2]", 0, "not a JSON object"},
    {"{}  x", 0, "trailing"},
    {"{\"a\": 3}", 0, "not a JSON object"},
    {"{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "dtype"},
    {"{\"a\":{\"dtype\":7,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "dtype"},
    {"{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, "shape"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":\"2\",\"data_offsets\":[0,8]}}", 8, "shape"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "data_offsets"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "shape dim 0"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,8]}}", 8, "shape dim 0"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]}}", 8, "9 dims"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8, "data_offsets"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8.5]}}", 8, "data_offsets"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", 8, "data_offsets"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", 8, "begin > end"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4503599627370496,4503599627370496],\"data_offsets\":[0,8]}}", 8,
     "overflow"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "duplicate"},
    {"{\"__metadata__\":{\"k\":1}}", 0, "__metadata__"},
    {"{\"__metadata__\":[\"k\"]}", 0, "__metadata__"},
    {"{\"__metadata__\":{},\"__metadata__\":{}}", 0, "twice"},
};

START_TEST(test_more_corrupt_headers) {
    expect_read_fails(MORE_CORRUPT[_i].header, MORE_CORRUPT[_i].data_len, MORE_CORRUPT[_i].word);
}
END_TEST

// Random damage to a valid file never crashes the reader (run under SANITIZE=1 to mean it): it either
// fails with a message or loads a file whose every tensor lies inside the data buffer.
START_TEST(test_random_damage_never_crashes) {
    const uint64_t seed = 20240611;
    float x[12];
    for (int i = 0; i < 12; i++) x[i] = (float)i;
    struct msd_st_entry e[3] = {{"a.w", 2, {2, 3}, x}, {"a.b", 1, {2}, x + 6}, {"c", 0, {0}, x + 8}};
    const char *k[1] = {"config"}, *v[1] = {"{\"sigmas\": [0.3, 5.0]}"};
    const char *path = test_path("damaged.safetensors");
    ck_assert_msg(msd_st_write(path, e, 3, k, v, 1) == 0, "write: %s", msd_last_error());
    unsigned char good[1024], bad[1024];
    FILE *fp = fopen(path, "rb");
    ck_assert_msg(fp != NULL, "cannot reopen %s", path);
    size_t n = fread(good, 1, sizeof good, fp);
    fclose(fp);
    const char *near = "0123456789[]{},:\"-.e ";
    uint64_t idx = 0;
    for (int it = 0; it < 2000; it++) {
        memcpy(bad, good, n);
        size_t len = n, hdr_end = 8 + (size_t)good[0] + ((size_t)good[1] << 8);
        uint32_t kind = msd_rng_u32(seed, MSD_STREAM_TEST, idx++) % 3;
        if (kind == 0) { // truncate anywhere
            len = msd_rng_u32(seed, MSD_STREAM_TEST, idx++) % n;
        } else { // 1 to 4 bytes of the length or header: JSON-ish characters or any byte
            int count = 1 + (int)(msd_rng_u32(seed, MSD_STREAM_TEST, idx++) % 4);
            for (int c = 0; c < count; c++) {
                size_t at = msd_rng_u32(seed, MSD_STREAM_TEST, idx++) % hdr_end;
                uint32_t r = msd_rng_u32(seed, MSD_STREAM_TEST, idx++);
                bad[at] = kind == 1 ? (unsigned char)near[r % strlen(near)] : (unsigned char)r;
            }
        }
        test_write_file(path, bad, len);
        struct msd_st_file f;
        msd_clear_error();
        int rc = msd_st_read(&f, path);
        ck_assert_msg(rc == 0 || (rc == -1 && msd_last_error()[0] != '\0'),
                      "seed %llu iteration %d: rc %d with message '%s'", (unsigned long long)seed, it, rc,
                      msd_last_error());
        for (int i = 0; rc == 0 && i < f.n_tensors; i++)
            ck_assert_msg(f.tensors[i].begin <= f.tensors[i].end && f.tensors[i].end <= f.data_len,
                          "seed %llu iteration %d: tensor '%s' outside the data buffer",
                          (unsigned long long)seed, it, f.tensors[i].name);
        msd_st_free(&f);
    }
    remove(path);
}
END_TEST

START_TEST(test_missing_and_odd_files) {
    struct msd_st_file f;
    const char *path = test_path("does-not-exist.safetensors");
    ck_assert_msg(msd_st_read(&f, path) == -1, "a missing file was accepted");
    ck_assert_msg(strstr(msd_last_error(), "cannot open") && strstr(msd_last_error(), path),
                  "message '%s' lacks 'cannot open' and the path", msd_last_error());
    ck_assert_msg(msd_st_read(&f, test_tmpdir()) == -1, "a directory was accepted as a file");
    ck_assert_msg(strstr(msd_last_error(), "regular file"), "message '%s' lacks 'regular file'",
                  msd_last_error());
}
END_TEST

// A string of the header that holds a NUL, escaped as \u0000: cJSON would end the string there, so
// "F32\u0000junk" would pass as the dtype F32 and "a\u0000b" as the tensor name "a". Each is refused,
// and the message says which string it is. (A raw NUL byte: test_nul_byte_in_header.)
#define A_TENSOR "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}"
static const struct { const char *header; const char *words[3]; } NUL_STRINGS[] = {
    {"{\"a\":{\"dtype\":\"F32\\u0000\",\"shape\":[2],\"data_offsets\":[0,8]}}", {"tensor 'a'", "\"dtype\"", "NUL"}},
    {"{\"a\":{\"dtype\":\"F32\\u0000junk\",\"shape\":[2],\"data_offsets\":[0,8]}}", {"tensor 'a'", "F32\\u0000junk"}},
    {"{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", {"tensor name", "a\\u0000b", "NUL"}},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"dtype\\u0000\":\"I8\"}}",
     {"tensor 'a'", "field name \"dtype\\u0000\"", "NUL"}},
    {"{\"__metadata__\":{\"config\\u0000\":\"{}\"}," A_TENSOR "}", {"__metadata__ key \"config\\u0000\"", "NUL"}},
    {"{\"__metadata__\":{\"config\":\"{}\\u0000{}\"}," A_TENSOR "}", {"__metadata__ value of key 'config'", "NUL"}},
    // an escaped backslash and then the escape: the string holds "b\" and a NUL
    {"{\"__metadata__\":{\"k\":\"b\\\\\\u0000\"}," A_TENSOR "}", {"__metadata__ value of key 'k'", "NUL"}},
};

START_TEST(test_nul_in_header_strings) {
    const char *path = test_path("nul.safetensors");
    unsigned char zeros[8] = {0};
    write_raw(path, NUL_STRINGS[_i].header, zeros, sizeof zeros);
    struct msd_st_file f;
    ck_assert_msg(msd_st_read(&f, path) == -1, "accepted %s", NUL_STRINGS[_i].header);
    for (int k = 0; k < 3 && NUL_STRINGS[_i].words[k]; k++)
        ck_assert_msg(strstr(msd_last_error(), NUL_STRINGS[_i].words[k]), "%s: message '%s' lacks '%s'",
                      NUL_STRINGS[_i].header, msd_last_error(), NUL_STRINGS[_i].words[k]);
    ck_assert_msg(strstr(msd_last_error(), path), "message '%s' does not name the file", msd_last_error());
    remove(path);
}
END_TEST

// The same with a raw NUL byte in the dtype (the header's length counts it: it is not the end); and
// the text \u0000 with its backslash escaped, which is no NUL, reads back as those six characters.
START_TEST(test_nul_byte_in_header) {
    static const char header[] = "{\"a\":{\"dtype\":\"F32\0\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    unsigned char buf[256] = {0};
    const size_t hl = sizeof header - 1; // the NUL inside counted, the terminator not
    buf[0] = (unsigned char)hl;
    memcpy(buf + 8, header, hl);
    expect_fail_bytes(buf, 8 + hl + 8, "a raw NUL in a dtype", "tensor 'a': \"dtype\"");

    const char *path = test_path("backslash.safetensors");
    unsigned char zeros[8] = {0};
    write_raw(path, "{\"__metadata__\":{\"k\":\"\\\\u0000\"}," A_TENSOR "}", zeros, sizeof zeros);
    struct msd_st_file f;
    ck_assert_msg(msd_st_read(&f, path) == 0, "an escaped backslash before u0000 refused: %s", msd_last_error());
    ck_assert_msg(msd_st_meta(&f, "k") && !strcmp(msd_st_meta(&f, "k"), "\\u0000"), "metadata k reads '%s'",
                  msd_st_meta(&f, "k"));
    msd_st_free(&f);
    remove(path);
}
END_TEST
#undef A_TENSOR

// ---------------------------------------------------------------------------------------------------
// The float32 getter

// Write a small file and read it into *f; returns its path.
static const char *read_small(struct msd_st_file *f) {
    float x[6] = {1, 2, 3, 4, 5, 6};
    struct msd_st_entry e = {"layer.weight", 2, {3, 2}, x};
    const char *path = test_path("small.safetensors");
    ck_assert_msg(msd_st_write(path, &e, 1, NULL, NULL, 0) == 0, "write: %s", msd_last_error());
    ck_assert_msg(msd_st_read(f, path) == 0, "read: %s", msd_last_error());
    return path;
}

// msd_st_get_f32 of `name` as `shape` (ndim dimensions, at most 6 floats) fails (`what` says why it
// should), with a message that holds every one of words (NULL-ended).
static void expect_get_fails(const struct msd_st_file *f, const char *name, int ndim, const int64_t *shape,
                             const char *what, const char *const *words) {
    float y[6];
    ck_assert_msg(msd_st_get_f32(f, name, ndim, shape, y) == -1, "%s: the get succeeded", what);
    for (int i = 0; words[i]; i++)
        ck_assert_msg(strstr(msd_last_error(), words[i]), "%s: message '%s' lacks '%s'", what, msd_last_error(),
                      words[i]);
}

// A missing tensor: the message names it, its expected shape and the file.
START_TEST(test_get_missing_tensor) {
    struct msd_st_file f;
    const char *path = read_small(&f);
    ck_assert_msg(msd_st_find(&f, "layer.bias") == NULL, "msd_st_find found a tensor that is not there");
    expect_get_fails(&f, "layer.bias", 1, (int64_t[]){2}, "a missing tensor",
                     (const char *const[]){"layer.bias", "[2]", path, NULL});
    ck_assert_msg(msd_st_meta(&f, "anything") == NULL, "metadata found in a file without any");
    msd_st_free(&f);
    remove(path);
}
END_TEST

// The wrong shape: the message names the tensor, the expected and the found shapes and the dtype.
START_TEST(test_get_wrong_shape) {
    struct msd_st_file f;
    const char *path = read_small(&f);
    expect_get_fails(&f, "layer.weight", 2, (int64_t[]){2, 3}, "[2, 3] for [3, 2]",
                     (const char *const[]){"layer.weight", "[2, 3]", "[3, 2]", "F32", NULL});
    expect_get_fails(&f, "layer.weight", 1, (int64_t[]){6}, "[6] for [3, 2]", (const char *const[]){"[6]", NULL});
    msd_st_free(&f);
    remove(path);
}
END_TEST

// Messages say what the file is: "<what> '<path>': " for msd_st_read_as, "safetensors file" for
// msd_st_read and the writer, never "checkpoint" for a file that is none (a denoiser's input). The
// check without the copy fails with the getter's message and passes where the getter does.
static void expect_prefix(const char *prefix) {
    ck_assert_msg(!strncmp(msd_last_error(), prefix, strlen(prefix)), "message '%s' does not start with \"%s\"",
                  msd_last_error(), prefix);
    ck_assert_msg(!strstr(msd_last_error(), "checkpoint"), "message '%s' calls the file a checkpoint",
                  msd_last_error());
}

START_TEST(test_messages_name_the_file_kind) {
    struct msd_st_file f;
    const char *path = read_small(&f);
    ck_assert(msd_st_get_f32(&f, "x", 1, (int64_t[]){2}, NULL) == -1);
    expect_prefix(test_pathf("safetensors file '%s': no tensor 'x'", path));
    msd_st_free(&f);
    ck_assert_msg(msd_st_read_as(&f, path, "input") == 0, "%s", msd_last_error());
    ck_assert(msd_st_get_f32(&f, "x", 1, (int64_t[]){2}, NULL) == -1);
    expect_prefix(test_pathf("input '%s': no tensor 'x'", path));
    ck_assert(msd_st_check_f32(&f, "layer.weight", 2, (int64_t[]){2, 3}) == -1);
    expect_prefix(test_pathf("input '%s': tensor 'layer.weight' has shape [3, 2]", path));
    ck_assert_msg(msd_st_check_f32(&f, "layer.weight", 2, (int64_t[]){3, 2}) == 0, "%s", msd_last_error());
    msd_st_free(&f);
    test_write_file(path, "\x10\0\0", 3);
    ck_assert(msd_st_read_as(&f, path, "input") == -1);
    expect_prefix(test_pathf("input '%s': truncated", path));
    const char *blocked = test_pathf("%s/under-a-file.safetensors", path);
    ck_assert(msd_st_write(blocked, NULL, 0, NULL, NULL, 0) == -1);
    expect_prefix(test_pathf("safetensors file '%s': write: cannot create", blocked));
    remove(path);
}
END_TEST

// A valid tensor the getter cannot convert to float32.
START_TEST(test_get_unconvertible_dtype) {
    const char *path = test_path("i32.safetensors");
    int32_t v[2] = {7, -7};
    write_raw(path, "{\"ids\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]}}", v, sizeof v);
    struct msd_st_file f;
    ck_assert_msg(msd_st_read(&f, path) == 0, "an I32 tensor is valid: %s", msd_last_error());
    expect_get_fails(&f, "ids", 1, (int64_t[]){2}, "I32 read as float32", (const char *const[]){"dtype I32", NULL});
    msd_st_free(&f);
    remove(path);
}
END_TEST

// Known half and bfloat16 bit patterns, each with its exact float32 value.
START_TEST(test_f16_bf16_conversion) {
    const uint16_t h[10] = {0x3c00, 0xc000, 0x3555, 0x7bff, 0x0001, 0x03ff, 0x0400, 0x8000, 0x7c00, 0xfc00};
    const float hf[10] = {1.0f, -2.0f, 0.333251953125f, 65504.0f, 5.9604644775390625e-08f,
                          6.097555160522461e-05f, 6.103515625e-05f, -0.0f, INFINITY, -INFINITY};
    const uint16_t bf[4] = {0x3f80, 0xc040, 0x4049, 0x7fc0};
    const float bff[3] = {1.0f, -3.0f, 3.140625f};
    unsigned char data[2 * 14 + 2]; // one pad byte first so the BF16 tensor starts at an odd offset
    for (int i = 0; i < 10; i++) { // little-endian halves
        data[2 * i] = (unsigned char)(h[i] & 0xff);
        data[2 * i + 1] = (unsigned char)(h[i] >> 8);
    }
    data[20] = 0;
    for (int i = 0; i < 4; i++) {
        data[21 + 2 * i] = (unsigned char)(bf[i] & 0xff);
        data[22 + 2 * i] = (unsigned char)(bf[i] >> 8);
    }
    const char *path = test_path("half.safetensors");
    write_raw(path, "{\"h\":{\"dtype\":\"F16\",\"shape\":[2,5],\"data_offsets\":[0,20]},"
                    "\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[21,29]}}", data, 29);
    struct msd_st_file f;
    ck_assert_msg(msd_st_read(&f, path) == 0, "read: %s", msd_last_error());
    float y[10];
    ck_assert_msg(msd_st_get_f32(&f, "h", 2, (int64_t[]){2, 5}, y) == 0, "%s", msd_last_error());
    for (int i = 0; i < 10; i++)
        ck_assert_msg(memcmp(&y[i], &hf[i], 4) == 0, "F16 0x%04x gave %.10g, expected %.10g", h[i],
                      (double)y[i], (double)hf[i]);
    ck_assert_msg(msd_st_get_f32(&f, "b", 1, (int64_t[]){4}, y) == 0, "%s", msd_last_error());
    for (int i = 0; i < 3; i++)
        ck_assert_msg(y[i] == bff[i], "BF16 0x%04x gave %.10g, expected %.10g", bf[i], (double)y[i],
                      (double)bff[i]);
    ck_assert_msg(isnan(y[3]), "BF16 0x7fc0 gave %g, expected NaN", (double)y[3]);
    msd_st_free(&f);
    remove(path);
}
END_TEST

// Rounding to F16, at values whose nearest half is known from the format alone (10 mantissa bits,
// exponent bias 15, subnormal step 2^-24), the ties included, which go to the even mantissa.
START_TEST(test_f32_to_f16_known) {
    struct { float x; uint16_t h; } k[] = {
        {1.0f, 0x3c00},          {-2.0f, 0xc000},          {65504.0f, 0x7bff},       {65519.0f, 0x7bff},
        {0x1p-24f, 0x0001},      {0x1p-25f, 0x0000},       {0x3p-26f, 0x0001},       {0x1p-14f, 0x0400},
        {0x1p-14f - 0x1p-25f, 0x0400}, {0x1p-14f - 0x3p-25f, 0x03fe},
        {1.0f + 0x1p-11f, 0x3c00}, {1.0f + 0x3p-11f, 0x3c02}, {1.0f + 0x1p-12f, 0x3c00},
        {0.1f, 0x2e66},          {-0.0f, 0x8000},          {0x1p-30f, 0x0000},       {2047.0f, 0x67ff},
        {2049.0f, 0x6800},       {2051.0f, 0x6802},
    };
    for (int i = 0; i < (int)(sizeof k / sizeof k[0]); i++) {
        uint16_t h = 0xdead;
        ck_assert_msg(msd_f32_to_f16(k[i].x, &h) == 0 && h == k[i].h, "%a gave 0x%04x, expected 0x%04x",
                      (double)k[i].x, h, k[i].h);
    }
    const float bad[] = {65520.0f, -65520.0f, 1e9f, INFINITY, -INFINITY, NAN};
    for (int i = 0; i < 6; i++) {
        uint16_t h;
        ck_assert_msg(msd_f32_to_f16(bad[i], &h) == -1, "%g has no F16 value but was accepted", (double)bad[i]);
    }
}
END_TEST

// Every finite half survives the trip half -> float -> half, and every float rounds to a nearest
// half: no finite half lies closer (checked against both neighbours, over random floats of every
// binade F16 covers).
START_TEST(test_f32_to_f16_exhaustive) {
    for (uint32_t h = 0; h <= 0xffff; h++) {
        if ((h & 0x7c00) == 0x7c00) continue; // Inf and NaN
        uint16_t back;
        float x = msd_f16_to_f32((uint16_t)h);
        ck_assert_msg(msd_f32_to_f16(x, &back) == 0 && back == h, "0x%04x -> %a -> 0x%04x", h, (double)x, back);
    }
    uint64_t s = 12345;
    for (int i = 0; i < 200000; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        float x = ldexpf((float)((s >> 40) & 0xffffff) / 0x1p24f + 1.0f, (int)((s >> 20) % 42) - 26);
        if (s & 1) x = -x;
        uint16_t h;
        if (msd_f32_to_f16(x, &h) < 0) {
            ck_assert_msg(fabsf(x) >= 65520.0f, "%a refused but F16 holds it", (double)x);
            continue;
        }
        double d = fabs((double)msd_f16_to_f32(h) - x);
        for (int step = -1; step <= 1; step += 2) {
            uint16_t n = (uint16_t)((h & 0x7fff) + step) | (h & 0x8000);
            if ((h & 0x7fff) == 0 && step < 0) continue;
            if ((n & 0x7c00) == 0x7c00) continue;
            ck_assert_msg(fabs((double)msd_f16_to_f32(n) - x) >= d, "%a: 0x%04x is nearer than 0x%04x",
                          (double)x, n, h);
        }
    }
}
END_TEST

// An F16 write: the file says F16, holds 2 bytes a value, and reads back as the rounded values; a value
// F16 cannot hold fails the write before any file exists, and leaves an older file as it was.
START_TEST(test_write_f16) {
    float x[5] = {1.0f, 0.1f, -3.0e-6f, 1.0f + 0x1p-11f, 65504.0f}, y[5];
    struct msd_st_entry e = {"x", 1, {5}, x};
    const char *path = test_path("f16.safetensors");
    ck_assert_msg(msd_st_write_as(path, &e, 1, true, NULL, NULL, 0) == 0, "%s", msd_last_error());
    struct msd_st_file f;
    ck_assert_msg(msd_st_read(&f, path) == 0, "read: %s", msd_last_error());
    const struct msd_st_tensor *t = msd_st_find(&f, "x");
    ck_assert_msg(t && !strcmp(t->dtype, "F16") && t->end - t->begin == 10, "stored as %s, %zu bytes",
                  t ? t->dtype : "?", t ? t->end - t->begin : 0);
    ck_assert_msg(msd_st_get_f32(&f, "x", 1, (int64_t[]){5}, y) == 0, "%s", msd_last_error());
    const float want[5] = {1.0f, 0.0999755859375f, -0x32p-24f, 1.0f, 65504.0f};
    for (int i = 0; i < 5; i++)
        ck_assert_msg(y[i] == want[i], "x[%d] = %a read back as %a, expected %a", i, (double)x[i], (double)y[i],
                      (double)want[i]);
    msd_st_free(&f);
    x[2] = 7e4f;
    ck_assert_msg(msd_st_write_as(path, &e, 1, true, NULL, NULL, 0) == -1, "70000 was written as F16");
    ck_assert_msg(strstr(msd_last_error(), "F16") && strstr(msd_last_error(), "'x' element 2"),
                  "message '%s' does not name the tensor, element and F16", msd_last_error());
    ck_assert_msg(!test_exists(test_path("f16.safetensors.tmp")), "a temp file was left behind");
    ck_assert_msg(msd_st_read(&f, path) == 0 && msd_st_get_f32(&f, "x", 1, (int64_t[]){5}, y) == 0 &&
                      y[2] == want[2], "the earlier file was disturbed");
    msd_st_free(&f);
    remove(path);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// The atomic writer

// How many entries the temp directory holds (besides . and ..).
static int count_dir_entries(void) {
    DIR *d = opendir(test_tmpdir());
    ck_assert_msg(d != NULL, "cannot list %s", test_tmpdir());
    int n = 0;
    for (struct dirent *de; (de = readdir(d)) != NULL;)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) n++;
    closedir(d);
    return n;
}

START_TEST(test_atomic_write_leaves_no_tmp) {
    float x[2] = {1, 2}, y[2];
    struct msd_st_entry e = {"x", 1, {2}, x};
    const char *path = test_path("atomic.safetensors"), *tmp = test_path("atomic.safetensors.tmp");
    int before = count_dir_entries();
    for (int round = 0; round < 2; round++) { // the second write replaces the first
        x[0] = (float)round;
        ck_assert_msg(msd_st_write(path, &e, 1, NULL, NULL, 0) == 0, "round %d: %s", round, msd_last_error());
        ck_assert_msg(!test_exists(tmp), "round %d: %s left behind", round, tmp);
        ck_assert_msg(count_dir_entries() == before + 1, "round %d: expected exactly one new file", round);
    }
    struct msd_st_file f;
    ck_assert_msg(msd_st_read(&f, path) == 0, "read: %s", msd_last_error());
    ck_assert_msg(msd_st_get_f32(&f, "x", 1, (int64_t[]){2}, y) == 0 && y[0] == 1.0f,
                  "the overwrite did not take: x[0] = %g, expected 1", (double)y[0]);
    msd_st_free(&f);
    remove(path);
}
END_TEST

// msd_st_write of e[0..n) (with the metadata keys[0..n_meta), vals) to path fails (`what` says why it
// should), with a message that holds `word`, and leaves neither path nor path.tmp behind.
static void expect_write_fails(const char *path, const struct msd_st_entry *e, int n, int n_meta, const char *what,
                               const char *word) {
    const char *keys[2] = {"k", "k"}, *vals[2] = {"a", "b"}, *tmp = test_pathf("%s.tmp", path);
    ck_assert_msg(msd_st_write(path, e, n, keys, vals, n_meta) == -1, "%s: the write succeeded", what);
    ck_assert_msg(strstr(msd_last_error(), word), "%s: message '%s' lacks '%s'", what, msd_last_error(), word);
    ck_assert_msg(!test_exists(path) && !test_exists(tmp), "%s: a file was left at %s or %s", what, path, tmp);
}

START_TEST(test_write_unwritable_dir) {
    // A path under a regular file: no one can create it, root included (a chmod'd directory would not
    // stop root, which is how CI containers often run).
    float x[1] = {1};
    struct msd_st_entry e = {"x", 1, {1}, x};
    const char *blocker = test_path("not-a-dir"), *path = test_path("not-a-dir/ckpt.safetensors");
    test_write_file(blocker, "x", 1);
    expect_write_fails(path, &e, 1, 0, "writing under a regular file", "cannot create");
    ck_assert_msg(strstr(msd_last_error(), path), "message '%s' lacks the path", msd_last_error());
    remove(blocker);
}
END_TEST

START_TEST(test_write_rename_fails) {
    // The target is a non-empty directory: the temp file is written, the rename fails, the temp goes
    // (the directory is still there, undisturbed).
    float x[1] = {1};
    struct msd_st_entry e = {"x", 1, {1}, x};
    const char *dir = test_subdir("target-dir"), *inner = test_path("target-dir/keep");
    test_write_file(inner, "k", 1);
    ck_assert_msg(msd_st_write(dir, &e, 1, NULL, NULL, 0) == -1, "renaming over a directory succeeded");
    ck_assert_msg(strstr(msd_last_error(), "rename"), "message '%s' lacks 'rename'", msd_last_error());
    ck_assert_msg(!test_exists(test_pathf("%s.tmp", dir)), "%s.tmp left behind after a failed rename", dir);
    ck_assert_msg(test_exists(inner), "the directory at the target was disturbed");
    remove(inner);
    rmdir(dir);
}
END_TEST

START_TEST(test_write_bad_entries) {
    float x[2] = {1, 2};
    const char *path = test_path("bad.safetensors");
    struct msd_st_entry dup[2] = {{"x", 1, {2}, x}, {"x", 1, {2}, x}};
    struct msd_st_entry nine = {"x", 9, {1, 1, 1, 1, 1, 1, 1, 1}, x};
    struct msd_st_entry null_data = {"x", 1, {2}, NULL};
    struct msd_st_entry neg = {"x", 2, {2, -1}, x};
    expect_write_fails(path, dup, 2, 0, "two tensors named x", "duplicate tensor");
    expect_write_fails(path, &nine, 1, 0, "9 dimensions", "9 dims");
    expect_write_fails(path, &null_data, 1, 0, "NULL data", "NULL data");
    expect_write_fails(path, &neg, 1, 0, "a negative dimension", "negative");
    expect_write_fails(path, dup, 1, 2, "two metadata keys k", "duplicate metadata");
}
END_TEST

// ---------------------------------------------------------------------------------------------------

int main(void) {
    test_tmpdir_make("safetensors"); // before the tests fork: they share it
    const TTest *tests[] = {
        test_round_trip, test_data_aligned, test_reference_unified, test_reference_multistage,
        test_truncated_file, test_header_length_past_end, test_header_not_json, test_overlapping_offsets,
        test_offset_out_of_range, test_wrong_dtype, test_size_mismatch, test_random_damage_never_crashes,
        test_missing_and_odd_files, test_get_missing_tensor, test_get_wrong_shape,
        test_get_unconvertible_dtype, test_f16_bf16_conversion, test_f32_to_f16_known,
        test_f32_to_f16_exhaustive, test_write_f16, test_atomic_write_leaves_no_tmp,
        test_write_unwritable_dir, test_write_rename_fails, test_write_bad_entries, test_nul_byte_in_header,
        test_messages_name_the_file_kind,
    };
    const struct loop_test loops[] = {{test_more_corrupt_headers, (int)TEST_COUNT(MORE_CORRUPT)},
                                      {test_nul_in_header_strings, (int)TEST_COUNT(NUL_STRINGS)}};
    return run_test_suite(&(struct test_suite){.name = "safetensors", .timeout_s = 0, .tests = tests,
                                               .n = TEST_COUNT(tests), .loops = loops, .n_loops = TEST_COUNT(loops)});
}
