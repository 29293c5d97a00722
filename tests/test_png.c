// test_png.c: the PNG reader, writer and grid writer (common/io/png.h).
//
// Holds: exact round trips of gray and RGB bytes through msd_png_write and back, both through
// msd_png_read and through a PNG-folder data set (which must load RGB as C = 3); the float -> byte
// rounding and clamping; grid geometry and contents read back with libpng's own simplified reader;
// every colour type and bit depth libpng can store (palette, tRNS, 1/4/16-bit, alpha, Adam7), made with
// libpng's full writer here, read as 8-bit gray or RGB; the writer's failure paths (no .tmp left);
// corrupt files, and random damage that must give 0 or -1 but never a crash.
// Temp files live in the suite's temporary directory (testutil.h).
#include <check.h>
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "common/io/data.h"
#include "common/core/error.h"
#include "common/io/png.h"
#include "common/core/rng.h"
#include "testutil.h"

static float byte_to_float(uint8_t b) { return (float)b / 127.5f - 1.0f; }

// n random bytes (seeded) and the floats that stand for them.
static void random_image(uint8_t *bytes, float *img, size_t n, uint64_t seed) {
    for (size_t i = 0; i < n; i++) {
        bytes[i] = (uint8_t)(msd_rng_u32(seed, MSD_STREAM_TEST, i) & 255);
        img[i] = byte_to_float(bytes[i]);
    }
}

// Read path with libpng's simplified API (not our reader) in `format`; checks the file's own colour.
static uint8_t *read_simple(const char *path, png_uint_32 format, int want_color, int *W, int *H) {
    png_image im;
    memset(&im, 0, sizeof im);
    im.version = PNG_IMAGE_VERSION;
    ck_assert_msg(png_image_begin_read_from_file(&im, path), "%s: %s", path, im.message);
    ck_assert_msg(((im.format & PNG_FORMAT_FLAG_COLOR) != 0) == want_color, "%s is stored as %s", path,
                  want_color ? "gray, expected RGB" : "RGB, expected gray");
    ck_assert_msg((im.format & PNG_FORMAT_FLAG_ALPHA) == 0, "%s has alpha", path);
    im.format = format;
    uint8_t *buf = malloc(PNG_IMAGE_SIZE(im));
    ck_assert_msg(buf && png_image_finish_read(&im, NULL, buf, 0, NULL), "%s: %s", path, im.message);
    *W = (int)im.width;
    *H = (int)im.height;
    return buf;
}

// ---------------------------------------------------------------------------------------------------
// Round trips

static void round_trip(int C, int H, int W, uint64_t seed) {
    size_t n = (size_t)C * H * W;
    uint8_t *bytes = malloc(n), *got = NULL;
    float *img = malloc(n * sizeof *img);
    random_image(bytes, img, n, seed);
    const char *path = test_path("rt.png"), *tmp = test_path("rt.png.tmp");
    ck_assert_msg(msd_png_write(path, img, C, H, W) == 0, "write: %s", msd_last_error());
    ck_assert_msg(!test_exists(tmp), "%s left behind", tmp);
    int c, h, w;
    ck_assert_msg(msd_png_read(path, &got, &c, &h, &w) == 0, "read: %s", msd_last_error());
    ck_assert_msg(c == C && h == H && w == W, "wrote %dx%dx%d, read %dx%dx%d", C, H, W, c, h, w);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(got[i] == bytes[i], "C=%d %dx%d seed %llu: byte %zu read %d, wrote %d", C, H, W,
                      (unsigned long long)seed, i, got[i], bytes[i]);
    // and the file as libpng's simplified reader sees it (interleaved)
    uint8_t *simple = read_simple(path, C == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB, C == 3, &w, &h);
    ck_assert_msg(w == W && h == H, "libpng reads %dx%d, wrote %dx%d", w, h, W, H);
    for (int i = 0; i < H * W; i++)
        for (int k = 0; k < C; k++)
            ck_assert_msg(simple[i * C + k] == bytes[(size_t)k * H * W + (size_t)i], "pixel %d channel %d", i, k);
    free(simple);
    free(got);
    free(img);
    free(bytes);
    remove(path);
}

START_TEST(round_trip_gray) {
    round_trip(1, 13, 13, 1);
    round_trip(1, 5, 9, 2); // not square
    round_trip(1, 1, 1, 3);
}
END_TEST

START_TEST(round_trip_rgb) {
    round_trip(3, 13, 13, 4);
    round_trip(3, 7, 2, 5);
}
END_TEST

// Three images written into a folder load as a data set with exactly those bytes and floats.
static void folder_round_trip(int C, const char *name) {
    enum { R = 11, N = 3 };
    size_t per = (size_t)C * R * R;
    uint8_t bytes[N * 3 * R * R];
    float img[N * 3 * R * R], back[N * 3 * R * R];
    random_image(bytes, img, N * per, 10 + (uint64_t)C);
    const char *dir = test_subdir(name);
    for (int k = 0; k < N; k++)
        ck_assert_msg(msd_png_write(test_pathf("%s/img%02d.png", dir, k), img + k * per, C, R, R) == 0, "%s",
                      msd_last_error());
    struct msd_dataset d;
    ck_assert_msg(msd_data_open(&d, dir) == 0, "%s", msd_last_error());
    ck_assert_msg(d.n == N && d.channels == C && d.res == R, "loaded %d of %dx%dx%d, wrote %d of %dx%dx%d",
                  d.n, d.channels, d.res, d.res, N, C, R, R);
    ck_assert_msg(memcmp(d.pixels, bytes, N * per) == 0, "C=%d: pixels differ after the round trip", C);
    msd_data_images(&d, back, 0, N);
    ck_assert_msg(memcmp(back, img, N * per * sizeof(float)) == 0, "C=%d: floats differ after the round trip", C);
    msd_data_free(&d);
}

START_TEST(folder_round_trip_gray) { folder_round_trip(1, "gray"); }
END_TEST

START_TEST(folder_round_trip_rgb) { folder_round_trip(3, "rgb"); }
END_TEST

START_TEST(rounding_and_clamping) {
    const float v[] = {-1.0f, 1.0f, 0.0f, -5.0f, 5.0f, NAN, INFINITY, -INFINITY,
                       0.4f / 127.5f - 1.0f, 0.6f / 127.5f - 1.0f, 254.4f / 127.5f - 1.0f, 254.6f / 127.5f - 1.0f,
                       1.0000001f, -1.0000001f};
    const uint8_t want[] = {0, 255, 128, 0, 255, 0, 255, 0, 0, 1, 254, 255, 255, 0};
    enum { N = sizeof want };
    _Static_assert(sizeof v / sizeof v[0] == N, "one expected byte per value");
    const char *path = test_path("round.png");
    ck_assert_msg(msd_png_write(path, v, 1, 1, N) == 0, "%s", msd_last_error());
    uint8_t *got;
    int c, h, w;
    ck_assert_msg(msd_png_read(path, &got, &c, &h, &w) == 0 && w == N, "%s", msd_last_error());
    for (int i = 0; i < N; i++)
        ck_assert_msg(got[i] == want[i], "value %d (%g) written as %d, want %d", i, (double)v[i], got[i], want[i]);
    free(got);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// Grids

static void check_grid(int n, int C, int R, int cols, int pad) {
    size_t per = (size_t)C * R * R;
    uint8_t *bytes = malloc(n * per);
    float *imgs = malloc(n * per * sizeof *imgs);
    for (size_t i = 0; i < n * per; i++) { // no byte 128 (the padding) inside images
        bytes[i] = (uint8_t)(i % 97 + (i % 97 >= 64 ? 100 : 0));
        imgs[i] = byte_to_float(bytes[i]);
    }
    const char *path = test_path("grid.png");
    ck_assert_msg(msd_png_grid(path, imgs, n, C, R, cols, pad) == 0, "%s", msd_last_error());
    int W, H, rows = (n + cols - 1) / cols;
    uint8_t *g = read_simple(path, C == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB, C == 3, &W, &H);
    ck_assert_msg(W == cols * R + (cols + 1) * pad && H == rows * R + (rows + 1) * pad,
                  "grid of %d in %d columns (R %d, pad %d) is %dx%d, want %dx%d", n, cols, R, pad, W, H,
                  cols * R + (cols + 1) * pad, rows * R + (rows + 1) * pad);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            int cy = (y - pad) / (R + pad), cx = (x - pad) / (R + pad); // cell
            int iy = (y - pad) % (R + pad), ix = (x - pad) % (R + pad); // position in it
            int k = cy * cols + cx;
            int inside = y >= pad && x >= pad && iy < R && ix < R && cx < cols && cy < rows && k < n;
            for (int c = 0; c < C; c++) {
                int want = inside ? bytes[(size_t)k * per + ((size_t)c * R + iy) * R + ix] : 128;
                ck_assert_msg(g[((size_t)y * W + x) * C + c] == want, "grid n=%d cols=%d pad=%d at (%d, %d) "
                              "channel %d: %d, want %d", n, cols, pad, y, x, c, g[((size_t)y * W + x) * C + c], want);
            }
        }
    free(g);
    free(imgs);
    free(bytes);
}

START_TEST(grid_layout) {
    check_grid(5, 1, 4, 3, 2); // a short last row: its empty cell is padding
    check_grid(4, 3, 3, 2, 0);
    check_grid(2, 3, 5, 4, 1); // fewer images than columns
    check_grid(1, 1, 28, 1, 2);
}
END_TEST

START_TEST(grid_bad_args) {
    const char *path = test_path("badgrid.png");
    float img[16] = {0};
    const struct { int n, C, R, cols, pad; const char *word; } bad[] = {
        {0, 1, 4, 1, 2, "at least 1 image"}, {1, 1, 4, 0, 2, "columns"}, {1, 1, 4, 1, -1, "padding"},
        {1, 2, 2, 1, 0, "channels"}, {1, 1, 0, 1, 0, "size"}, {100000, 1, 4, 100000, 0, "16384"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        msd_clear_error();
        int rc = msd_png_grid(path, img, bad[i].n, bad[i].C, bad[i].R, bad[i].cols, bad[i].pad);
        const char *msg = msd_last_error();
        ck_assert_msg(rc == -1, "case %zu accepted", i);
        ck_assert_msg(strstr(msg, path) && strstr(msg, bad[i].word), "case %zu: message '%s' lacks '%s'", i,
                      msg, bad[i].word);
        ck_assert_msg(!test_exists(path), "case %zu wrote a file", i);
    }
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// Reading what other writers store

// A PNG by libpng's full writer: rows of `rowbytes` packed bytes as libpng takes them for this colour
// type and depth (16-bit samples big-endian), an optional palette and tRNS.
struct raw_png {
    const char *what;
    int W, H, depth, ctype, interlace;
    const uint8_t *data;
    size_t rowbytes;
    const png_color *pal;
    int npal;
    const uint8_t *trns;
    int ntrns;
    int want_C;           // what our reader must give
    const uint8_t *want;  // want: (want_C, H, W)
};

static void write_raw_png(const char *path, const struct raw_png *p) {
    FILE *fp = fopen(path, "wb");
    ck_assert_msg(fp != NULL, "cannot create %s", path);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    png_bytep *rows = malloc((size_t)p->H * sizeof *rows);
    if (setjmp(png_jmpbuf(png))) ck_abort_msg("libpng failed writing the test file for %s", p->what);
    png_init_io(png, fp);
    png_set_IHDR(png, info, (png_uint_32)p->W, (png_uint_32)p->H, p->depth, p->ctype, p->interlace,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (p->pal) png_set_PLTE(png, info, p->pal, p->npal);
    if (p->trns) png_set_tRNS(png, info, p->trns, p->ntrns, NULL);
    png_write_info(png, info);
    for (int y = 0; y < p->H; y++) rows[y] = (png_bytep)p->data + (size_t)y * p->rowbytes;
    png_write_image(png, rows); // does the Adam7 passes itself
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    free(rows);
    fclose(fp);
}

START_TEST(read_formats) {
    static const png_color pal[4] = {{10, 20, 30}, {200, 100, 0}, {0, 0, 255}, {7, 8, 9}};
    static const uint8_t trns[4] = {0, 128, 255, 255};
    // gray 1-bit, 8 pixels: bits 1011 0001
    static const uint8_t g1[] = {0xB1}, g1_want[] = {255, 0, 255, 255, 0, 0, 0, 255};
    // gray 4-bit, 4 pixels: 0, 15, 5, 10 -> times 17
    static const uint8_t g4[] = {0x0F, 0x5A}, g4_want[] = {0, 255, 85, 170};
    // gray 16-bit, 3 pixels p * 257 -> p
    static const uint8_t g16[] = {0x00, 0x00, 0x7B, 0x7B, 0xFF, 0xFF}, g16_want[] = {0, 123, 255};
    // gray + alpha 8-bit: (g, a) pairs, alpha dropped
    static const uint8_t ga[] = {5, 0, 100, 255, 250, 17}, ga_want[] = {5, 100, 250};
    // RGB 16-bit, 2 pixels
    static const uint8_t rgb16[] = {0x01, 0x01, 0x02, 0x02, 0x03, 0x03, 0xFE, 0xFE, 0x80, 0x80, 0x00, 0x00};
    static const uint8_t rgb16_want[] = {1, 254, 2, 128, 3, 0}; // planar: R R, G G, B B
    // RGBA 8-bit, 2 pixels, alpha dropped
    static const uint8_t rgba[] = {1, 2, 3, 0, 4, 5, 6, 99}, rgba_want[] = {1, 4, 2, 5, 3, 6};
    // palette 8-bit, 3 pixels: indices 2, 0, 1
    static const uint8_t p8[] = {2, 0, 1}, p8_want[] = {0, 10, 200, 0, 20, 100, 255, 30, 0};
    // palette 2-bit with tRNS (transparency dropped), 4 pixels: indices 3, 1, 0, 2
    static const uint8_t p2[] = {0xD2}, p2_want[] = {7, 200, 10, 0, 8, 100, 20, 0, 9, 0, 30, 255};
    // RGB 8-bit, 9x7, Adam7 interlaced
    static uint8_t il[7 * 9 * 3], il_want[3 * 7 * 9];
    for (int i = 0; i < 7 * 9; i++)
        for (int c = 0; c < 3; c++) {
            il[i * 3 + c] = (uint8_t)(i * 3 + c * 50);
            il_want[c * 63 + i] = il[i * 3 + c];
        }
    const struct raw_png cases[] = {
        {"gray 1-bit", 8, 1, 1, PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE, g1, 1, NULL, 0, NULL, 0, 1, g1_want},
        {"gray 4-bit", 4, 1, 4, PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE, g4, 2, NULL, 0, NULL, 0, 1, g4_want},
        {"gray 16-bit", 3, 1, 16, PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE, g16, 6, NULL, 0, NULL, 0, 1, g16_want},
        {"gray+alpha", 3, 1, 8, PNG_COLOR_TYPE_GRAY_ALPHA, PNG_INTERLACE_NONE, ga, 6, NULL, 0, NULL, 0, 1, ga_want},
        {"RGB 16-bit", 2, 1, 16, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE, rgb16, 12, NULL, 0, NULL, 0, 3,
         rgb16_want},
        {"RGBA", 2, 1, 8, PNG_COLOR_TYPE_RGB_ALPHA, PNG_INTERLACE_NONE, rgba, 8, NULL, 0, NULL, 0, 3, rgba_want},
        {"palette 8-bit", 3, 1, 8, PNG_COLOR_TYPE_PALETTE, PNG_INTERLACE_NONE, p8, 3, pal, 4, NULL, 0, 3, p8_want},
        {"palette 2-bit + tRNS", 4, 1, 2, PNG_COLOR_TYPE_PALETTE, PNG_INTERLACE_NONE, p2, 1, pal, 4, trns, 4, 3,
         p2_want},
        {"RGB Adam7", 9, 7, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_ADAM7, il, 27, NULL, 0, NULL, 0, 3, il_want},
    };
    const char *path = test_path("format.png");
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const struct raw_png *p = &cases[k];
        write_raw_png(path, p);
        uint8_t *got;
        int C, H, W;
        ck_assert_msg(msd_png_read(path, &got, &C, &H, &W) == 0, "%s: %s", p->what, msd_last_error());
        ck_assert_msg(C == p->want_C && H == p->H && W == p->W, "%s: read %dx%dx%d, want %dx%dx%d", p->what, C,
                      H, W, p->want_C, p->H, p->W);
        for (int i = 0; i < C * H * W; i++)
            ck_assert_msg(got[i] == p->want[i], "%s: byte %d is %d, want %d", p->what, i, got[i], p->want[i]);
        free(got);
    }
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// Failures

START_TEST(write_failures) {
    float img[12] = {0};
    const char *path = test_path("no-such-dir/x.png");
    ck_assert(msd_png_write(path, img, 1, 2, 2) == -1);
    ck_assert_msg(strstr(msd_last_error(), path) && strstr(msd_last_error(), "cannot create"), "'%s'",
                  msd_last_error());
    // the target is a directory: the rename fails and the .tmp goes
    path = test_subdir("a-dir.png");
    ck_assert(msd_png_write(path, img, 3, 2, 2) == -1);
    ck_assert_msg(strstr(msd_last_error(), path) && strstr(msd_last_error(), "rename"), "'%s'", msd_last_error());
    const char *tmp = test_path("a-dir.png.tmp");
    ck_assert_msg(!test_exists(tmp), "%s left behind after a failed write", tmp);
    // bad arguments
    path = test_path("bad.png");
    ck_assert(msd_png_write(path, img, 2, 2, 2) == -1 && strstr(msd_last_error(), "channels"));
    ck_assert(msd_png_write(path, img, 1, 0, 2) == -1 && strstr(msd_last_error(), "size"));
    ck_assert(msd_png_write(path, img, 1, 2, 20000) == -1 && strstr(msd_last_error(), "16384"));
    ck_assert_msg(!test_exists(path), "a failed write left %s", path);
}
END_TEST

// A valid 16x16 RGB PNG's bytes into buf; returns its length.
static size_t good_png(uint8_t *buf, size_t cap) {
    float img[3 * 16 * 16];
    uint8_t bytes[3 * 16 * 16];
    random_image(bytes, img, sizeof bytes, 77);
    const char *path = test_path("good.png");
    ck_assert_msg(msd_png_write(path, img, 3, 16, 16) == 0, "%s", msd_last_error());
    size_t n;
    char *file = test_read_file(path, &n);
    ck_assert_msg(n > 100 && n < cap, "good.png is %zu bytes", n);
    memcpy(buf, file, n);
    free(file);
    return n;
}

// Write bytes as bad.png; msd_png_read fails naming the file and `word` (NULL: any message), and
// leaves its outputs empty.
static void expect_read_fails(const uint8_t *bytes, size_t n, const char *what, const char *word) {
    const char *path = test_path("bad.png");
    test_write_file(path, bytes, n);
    uint8_t *px = (uint8_t *)1;
    int C = 9, H = 9, W = 9;
    msd_clear_error();
    ck_assert_msg(msd_png_read(path, &px, &C, &H, &W) == -1, "%s: read succeeded", what);
    const char *msg = msd_last_error();
    ck_assert_msg(strstr(msg, path) != NULL, "%s: message '%s' does not name the file", what, msg);
    ck_assert_msg(!word || strstr(msg, word), "%s: message '%s' lacks '%s'", what, msg, word);
    ck_assert_msg(px == NULL && C == 0 && H == 0 && W == 0, "%s: outputs not cleared", what);
    printf("  (expected) %s\n", msg);
}

START_TEST(read_errors) {
    static uint8_t buf[8192], bad[8192];
    size_t n = good_png(buf, sizeof buf);
    expect_read_fails(buf, 0, "empty file", "empty");
    expect_read_fails((const uint8_t *)"GIF89a and more", 15, "not a PNG", "signature");
    expect_read_fails(buf, n / 2, "cut in half", "unexpected end of file");
    expect_read_fails(buf, n - 12, "no IEND", "unexpected end of file");
    // a damaged byte inside IDAT (zlib or the chunk CRC notices, whichever reads it first)
    memcpy(bad, buf, n);
    size_t at = 8;
    while (at + 4 <= n && memcmp(bad + at, "IDAT", 4) != 0) at++;
    ck_assert_msg(at + 14 < n, "no IDAT chunk in good.png");
    bad[at + 10] ^= 0x55;
    expect_read_fails(bad, n, "damaged IDAT", "IDAT");
    // an absurd width with a correct CRC: stopped by the size limit, not by an allocation
    memcpy(bad, buf, n);
    const uint8_t width[4] = {0x00, 0x10, 0x00, 0x00}; // 1048576, big-endian; IHDR's data starts at 16
    memcpy(bad + 16, width, 4);
    uint32_t crc = (uint32_t)crc32(0, bad + 12, 17);                 // over "IHDR" and its 13 data bytes
    for (int i = 0; i < 4; i++) bad[29 + i] = (uint8_t)(crc >> (24 - 8 * i));
    expect_read_fails(bad, n, "huge width", "limit");
    // not a file at all
    const char *path = test_subdir("dir.png");
    uint8_t *px;
    int C, H, W;
    ck_assert(msd_png_read(path, &px, &C, &H, &W) == -1 && strstr(msd_last_error(), "not a regular file"));
    path = test_path("missing.png");
    ck_assert(msd_png_read(path, &px, &C, &H, &W) == -1 && strstr(msd_last_error(), "No such file"));
}
END_TEST

// Random damage (flipped bytes, cut files) must give 0 or -1 and never crash; run under SANITIZE=1
// this also proves no read past a buffer.
START_TEST(random_damage_never_crashes) {
    static uint8_t buf[8192], bad[8192];
    size_t n = good_png(buf, sizeof buf);
    const char *path = test_path("damaged.png");
    int failed = 0, trials = 400;
    for (int t = 0; t < trials; t++) {
        memcpy(bad, buf, n);
        size_t len = n;
        uint32_t r = msd_rng_u32(99, MSD_STREAM_TEST, (uint64_t)t * 8);
        if (t % 4 == 3) len = 8 + r % (n - 8); // cut
        else
            for (int k = 0; k < 1 + (int)(r % 3); k++) { // flip 1 to 3 bytes past the signature
                uint32_t q = msd_rng_u32(99, MSD_STREAM_TEST, (uint64_t)t * 8 + 1 + (uint64_t)k);
                bad[8 + q % (n - 8)] ^= (uint8_t)(1 + (q >> 16) % 255);
            }
        test_write_file(path, bad, len);
        uint8_t *px;
        int C, H, W;
        int rc = msd_png_read(path, &px, &C, &H, &W);
        ck_assert_msg(rc == 0 || rc == -1, "trial %d: rc %d", t, rc);
        if (rc == 0) {
            ck_assert_msg((C == 1 || C == 3) && H > 0 && W > 0, "trial %d: %dx%dx%d", t, C, H, W);
            free(px);
        } else {
            ck_assert_msg(strstr(msd_last_error(), path) != NULL, "trial %d: '%s'", t, msd_last_error());
            failed++;
        }
    }
    printf("  random damage: %d of %d damaged files rejected, %d decoded, none crashed\n", failed, trials,
           trials - failed);
    ck_assert_msg(failed > trials / 2, "only %d of %d damaged files were rejected", failed, trials);
}
END_TEST

int main(void) {
    test_tmpdir_make("png"); // before the tests fork: they share it
    const TTest *tests[] = {
        round_trip_gray, round_trip_rgb, folder_round_trip_gray, folder_round_trip_rgb,
        rounding_and_clamping, grid_layout, grid_bad_args, read_formats, write_failures, read_errors,
        random_damage_never_crashes,
    };
    return run_tests("png", 60, tests, TEST_COUNT(tests));
}
