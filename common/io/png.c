// png.c: the PNG reader, writer and grid writer of png.h, on libpng's full API.
//
// libpng reports errors by longjmp to a setjmp in the caller. Here each setjmp lives in a small function
// (read_body, write_body) whose state is all in a struct passed by pointer, so nothing the C standard
// leaves indeterminate after a longjmp (non-volatile locals changed after setjmp) is ever read; the
// caller then frees what the struct holds, whichever way the body ended. libpng's message is copied
// into that struct by on_error, and ours names the file around it.
// Does not hold: the mapping of folders to data sets (data.c).
#include "png.h"

#include <png.h>

#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/core/error.h"
#include "common/core/util.h"
#include "common/io/atomic.h"

// ---------------------------------------------------------------------------------------------------
// libpng callbacks

struct png_msg {
    char text[256];    // the error
    char warning[256]; // the last warning before it ("" if none): often the reason behind the error
};

static void on_error(png_structp png, png_const_charp msg) {
    struct png_msg *m = png_get_error_ptr(png);
    snprintf(m->text, sizeof m->text, "%s", msg);
    png_longjmp(png, 1);
}

// Warnings (a bad CRC in an ancillary chunk, an unknown chunk) leave a usable image: stay quiet, but
// keep the last one for the message should an error follow ("Image width exceeds user limit in IHDR"
// comes as a warning before the error "Invalid IHDR data").
static void on_warning(png_structp png, png_const_charp msg) {
    struct png_msg *m = png_get_error_ptr(png);
    snprintf(m->warning, sizeof m->warning, "%s", msg);
}

// ---------------------------------------------------------------------------------------------------
// Reading

// libpng's own reader says only "Read Error" for a short file; say which.
static void read_data(png_structp png, png_bytep data, size_t n) {
    FILE *fp = png_get_io_ptr(png);
    if (fread(data, 1, n, fp) != n)
        png_error(png, ferror(fp) ? "read error" : "unexpected end of file");
}

struct reader {
    FILE *fp;
    png_structp png;
    png_infop info;
    png_bytep *rows; // H pointers into buf
    uint8_t *buf;    // buf: (H, W, C) interleaved, as libpng delivers it
    int C, H, W;
    struct png_msg msg;
};

// Decode r->fp (positioned after the 8 signature bytes) into r->buf. Changes nothing but *r.
static int read_body(struct reader *r, const char *path) {
    if (setjmp(png_jmpbuf(r->png)))
        return msd_set_error("PNG '%s': libpng: %s%s%s%s (corrupt or truncated file?)", path, r->msg.text,
                             r->msg.warning[0] ? " (after: " : "", r->msg.warning, r->msg.warning[0] ? ")" : "");
    png_set_read_fn(r->png, r->fp, read_data);
    png_set_sig_bytes(r->png, 8);
    png_set_user_limits(r->png, MSD_PNG_MAX_SIDE, MSD_PNG_MAX_SIDE);
    png_read_info(r->png, r->info);
    int depth = png_get_bit_depth(r->png, r->info), ctype = png_get_color_type(r->png, r->info);
    if (ctype == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(r->png); // (adds alpha for tRNS)
    if (ctype == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(r->png);
    if (depth == 16) png_set_scale_16(r->png); // rounds: v16 = p * 257 gives p back
    png_set_strip_alpha(r->png);               // a no-op when there is no alpha
    png_set_interlace_handling(r->png);
    png_read_update_info(r->png, r->info);

    png_uint_32 w = png_get_image_width(r->png, r->info), h = png_get_image_height(r->png, r->info);
    int ch = png_get_channels(r->png, r->info), bits = png_get_bit_depth(r->png, r->info);
    if ((ch != 1 && ch != 3) || bits != 8)
        return msd_set_error("PNG '%s': decodes to %d channel(s) of %d bits, expected 8-bit gray or RGB",
                             path, ch, bits);
    size_t bytes = (size_t)w * h * (size_t)ch; // w, h <= MSD_PNG_MAX_SIDE (the user limits above)
    if (bytes > MSD_PNG_MAX_BYTES)
        return msd_set_error("PNG '%s': %ux%u pixels (%zu bytes) is more than the limit of %u bytes",
                             path, (unsigned)w, (unsigned)h, bytes, MSD_PNG_MAX_BYTES);
    CHECK(png_get_rowbytes(r->png, r->info) == (size_t)w * (size_t)ch, "libpng row size");
    r->buf = malloc(bytes);
    r->rows = malloc(h * sizeof *r->rows);
    if (!r->buf || !r->rows)
        return msd_set_error("PNG '%s': out of memory for %ux%u pixels", path, (unsigned)w, (unsigned)h);
    for (png_uint_32 y = 0; y < h; y++) r->rows[y] = r->buf + (size_t)y * w * (size_t)ch;
    png_read_image(r->png, r->rows);
    png_read_end(r->png, NULL); // checks the rest of the file up to IEND
    r->C = ch;
    r->H = (int)h;
    r->W = (int)w;
    return 0;
}

int msd_png_read(const char *path, uint8_t **pixels, int *C, int *H, int *W) {
    *pixels = NULL;
    *C = *H = *W = 0;
    struct stat st;
    if (stat(path, &st) != 0) return msd_set_error("PNG '%s': cannot open: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return msd_set_error("PNG '%s': not a regular file", path);
    struct reader r;
    memset(&r, 0, sizeof r);
    r.fp = fopen(path, "rb");
    if (!r.fp) return msd_set_error("PNG '%s': cannot open: %s", path, strerror(errno));

    int rc;
    unsigned char sig[8];
    size_t got = fread(sig, 1, sizeof sig, r.fp);
    if (got < sizeof sig || png_sig_cmp(sig, 0, sizeof sig) != 0) {
        rc = msd_set_error("PNG '%s': not a PNG file (%s)", path,
                           got == 0 ? "the file is empty" : "its first 8 bytes are not the PNG signature");
        goto done;
    }
    r.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &r.msg, on_error, on_warning);
    if (r.png) r.info = png_create_info_struct(r.png);
    if (!r.png || !r.info) {
        rc = msd_set_error("PNG '%s': libpng could not allocate its structures", path);
        goto done;
    }
    rc = read_body(&r, path);
    if (rc == 0) {
        // interleaved (H, W, C) -> planar (C, H, W)
        size_t plane = (size_t)r.H * (size_t)r.W;
        uint8_t *p = malloc(plane * (size_t)r.C);
        if (!p) {
            rc = msd_set_error("PNG '%s': out of memory for %dx%d pixels", path, r.W, r.H);
            goto done;
        }
        for (size_t i = 0; i < plane; i++)
            for (int c = 0; c < r.C; c++) p[(size_t)c * plane + i] = r.buf[i * (size_t)r.C + (size_t)c];
        *pixels = p;
        *C = r.C;
        *H = r.H;
        *W = r.W;
    }
done:
    png_destroy_read_struct(&r.png, &r.info, NULL); // accepts NULLs
    free(r.rows);
    free(r.buf);
    fclose(r.fp);
    return rc;
}

// ---------------------------------------------------------------------------------------------------
// Writing

// x in [-1, 1] -> byte, rounding half up; out-of-range values clamp and NaN becomes 0 (black).
static uint8_t to_byte(float x) {
    if (!(x > -1.0f)) return 0;
    if (x >= 1.0f) return 255;
    return (uint8_t)floorf((x + 1.0f) * 127.5f + 0.5f);
}

struct writer {
    FILE *fp;
    png_structp png;
    png_infop info;
    png_bytep *rows; // H pointers into the interleaved bytes
    struct png_msg msg;
};

// Encode the rows into w->fp. Changes nothing but what libpng holds in *w.
static int write_body(struct writer *w, const char *path, const char *tmp, int C, int H, int W) {
    if (setjmp(png_jmpbuf(w->png)))
        return msd_set_error("PNG '%s': writing '%s' failed: %s (hint: is the disk full?)", path, tmp,
                             w->msg.text);
    png_init_io(w->png, w->fp);
    png_set_IHDR(w->png, w->info, (png_uint_32)W, (png_uint_32)H, 8,
                 C == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(w->png, w->info);
    png_write_image(w->png, w->rows);
    png_write_end(w->png, NULL);
    return 0;
}

int msd_png_write(const char *path, const float *img, int C, int H, int W) {
    if (C != 1 && C != 3)
        return msd_set_error("PNG '%s': %d channels, expected 1 (gray) or 3 (RGB)", path, C);
    if (H < 1 || W < 1 || H > MSD_PNG_MAX_SIDE || W > MSD_PNG_MAX_SIDE)
        return msd_set_error("PNG '%s': size %dx%d (width x height), expected 1 to %d on each side", path,
                             W, H, MSD_PNG_MAX_SIDE);
    // img: (C, H, W) planar -> buf: (H, W, C) interleaved bytes
    size_t plane = (size_t)H * (size_t)W;
    uint8_t *buf = xmalloc(plane * (size_t)C);
    for (int c = 0; c < C; c++)
        for (size_t i = 0; i < plane; i++) buf[i * (size_t)C + (size_t)c] = to_byte(img[(size_t)c * plane + i]);

    struct writer w;
    memset(&w, 0, sizeof w);
    w.rows = xmalloc((size_t)H * sizeof *w.rows);
    for (int y = 0; y < H; y++) w.rows[y] = buf + (size_t)y * (size_t)W * (size_t)C;
    char *tmp = msd_tmp_path(path);

    int rc = 0;
    w.fp = fopen(tmp, "wb");
    if (!w.fp) {
        rc = msd_set_error("PNG '%s': cannot create '%s': %s (hint: does the directory exist and is it "
                           "writable?)", path, tmp, strerror(errno));
        goto done;
    }
    w.png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &w.msg, on_error, on_warning);
    if (w.png) w.info = png_create_info_struct(w.png);
    if (!w.png || !w.info) rc = msd_set_error("PNG '%s': libpng could not allocate its structures", path);
    else rc = write_body(&w, path, tmp, C, H, W);

    const char *step = NULL; // the step after encoding that failed, with its errno
    int err = 0;
    if (rc == 0 && fflush(w.fp) != 0) step = "flush";
    else if (rc == 0 && fsync(fileno(w.fp)) != 0) step = "fsync";
    if (step) err = errno;
    if (fclose(w.fp) != 0 && rc == 0 && !step) {
        step = "close";
        err = errno;
    }
    if (rc == 0 && !step && rename(tmp, path) != 0) {
        step = "rename";
        err = errno;
    }
    if (step)
        rc = msd_set_error("PNG '%s': %s of '%s' failed: %s (hint: %s)", path, step, tmp, strerror(err),
                           strcmp(step, "rename") == 0 ? "is the target a directory?" : "is the disk full?");
    if (rc == 0) msd_sync_parent_dir(path);
    else remove(tmp); // never leave a half-written file behind
done:
    png_destroy_write_struct(&w.png, &w.info); // accepts NULLs
    free(tmp);
    free(w.rows);
    free(buf);
    return rc;
}

// ---------------------------------------------------------------------------------------------------
// Grids

int msd_png_grid(const char *path, const float *imgs, int n, int C, int R, int cols, int pad) {
    if (n < 1 || R < 1 || cols < 1 || pad < 0)
        return msd_set_error("PNG grid '%s': %d images of %dx%d in %d columns with padding %d; expected at "
                             "least 1 image, a size and columns of at least 1, padding of at least 0",
                             path, n, R, R, cols, pad);
    if (C != 1 && C != 3)
        return msd_set_error("PNG grid '%s': %d channels, expected 1 (gray) or 3 (RGB)", path, C);
    int rows = (n - 1) / cols + 1;
    long long gw = (long long)cols * R + (long long)(cols + 1) * pad;
    long long gh = (long long)rows * R + (long long)(rows + 1) * pad;
    if (gw > MSD_PNG_MAX_SIDE || gh > MSD_PNG_MAX_SIDE)
        return msd_set_error("PNG grid '%s': %d images of %dx%d in %d columns make %lldx%lld pixels, more "
                             "than %d on a side (hint: fewer images or another column count)",
                             path, n, R, R, cols, gw, gh, MSD_PNG_MAX_SIDE);
    int W = (int)gw, H = (int)gh;
    size_t plane = (size_t)H * (size_t)W, img_plane = (size_t)R * (size_t)R;
    float *g = xmalloc(plane * (size_t)C * sizeof *g); // g: (C, H, W)
    for (size_t i = 0; i < plane * (size_t)C; i++) g[i] = MSD_PNG_GRID_PAD_VALUE;
    for (int k = 0; k < n; k++) {
        int y0 = pad + (k / cols) * (R + pad), x0 = pad + (k % cols) * (R + pad);
        for (int c = 0; c < C; c++)
            for (int y = 0; y < R; y++)
                memcpy(g + (size_t)c * plane + (size_t)(y0 + y) * (size_t)W + (size_t)x0,
                       imgs + ((size_t)k * (size_t)C + (size_t)c) * img_plane + (size_t)y * (size_t)R,
                       (size_t)R * sizeof *g);
    }
    int rc = msd_png_write(path, g, C, H, W);
    free(g);
    return rc;
}
