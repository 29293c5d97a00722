// data.c: the loaders (Fashion-MNIST IDX, CIFAR-10 binary, PNG folders) and batch drawing of data.h.
//
// Holds: spec parsing, strict readers that check every header field before allocating and every read
// after, and the byte -> float conversion with the optional left-right flip.
// Does not hold: PNG decoding (png.c), any device code.
//
// Every loader fills *d step by step and returns -1 at the first problem; msd_data_open then frees
// whatever was allocated and zeroes *d, so the loaders need no cleanup of d themselves.
#include "data.h"

#include <zlib.h>

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "common/core/error.h"
#include "png.h"
#include "common/core/rng.h"
#include "common/core/util.h"

#define PATH_CAP 4096
#define SPECS                                                                                         \
    "fmnist, fmnist:test, fmnist:DIR, fmnist:test:DIR, cifar10:DIR, cifar10:test:DIR or a folder of *.png files"

// Set the error as "<kind> '<path>': <message>". Returns -1.
static int file_error(const char *kind, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int file_error(const char *kind, const char *path, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return msd_set_error("%s '%s': %s", kind, path, msg);
}

// "dir/name" into buf (cap bytes). 0, or -1 when it does not fit.
static int join(char *buf, size_t cap, const char *dir, const char *name) {
    int len = snprintf(buf, cap, "%s/%s", dir, name);
    if (len < 0 || (size_t)len >= cap)
        return msd_set_error("data set: the path '%s/%s' is too long (more than %zu bytes)", dir, name, cap - 1);
    return 0;
}

// d->source, "what was opened" (a long path is cut short: it is for messages and logs).
static void set_source(struct msd_dataset *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_source(struct msd_dataset *d, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->source, sizeof d->source, fmt, ap);
    va_end(ap);
}

static bool exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

// ---------------------------------------------------------------------------------------------------
// Fashion-MNIST: IDX files, big-endian headers. Images: u32 magic 0x00000803, u32 n, u32 rows, u32 cols,
// then n * rows * cols bytes. Labels: u32 magic 0x00000801, u32 n, then n bytes. Read through zlib,
// whose gzread also reads files that are not compressed.

#define IDX_IMAGES 0x00000803u
#define IDX_LABELS 0x00000801u
#define FM "Fashion-MNIST"

static uint32_t be32(const unsigned char *b) {
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | (uint32_t)b[3];
}

// Read exactly n bytes of `what` from gz into dst. 0, or -1 naming the file, the field and the counts.
static int gz_exact(gzFile gz, const char *path, void *dst, size_t n, const char *what) {
    size_t got = 0;
    while (got < n) {
        size_t want = n - got < (1u << 30) ? n - got : (1u << 30); // gzread takes an unsigned count
        int r = gzread(gz, (unsigned char *)dst + got, (unsigned)want);
        if (r < 0) {
            int errnum = 0;
            const char *zmsg = gzerror(gz, &errnum);
            size_t plen = strlen(path); // zlib's message is "<path>: <what>": keep the what
            if (strncmp(zmsg, path, plen) == 0 && strncmp(zmsg + plen, ": ", 2) == 0) zmsg += plen + 2;
            return file_error(FM, path, "cannot read the %s: %s (corrupt file?)", what,
                              errnum == Z_ERRNO ? strerror(errno) : zmsg);
        }
        if (r == 0) break;
        got += (size_t)r;
    }
    if (got < n) {
        int errnum = 0;
        gzerror(gz, &errnum);
        return file_error(FM, path, "truncated: expected %zu bytes of %s, got %zu%s", n, what, got,
                          errnum == Z_BUF_ERROR ? " (the compressed stream ends early)" : "");
    }
    return 0;
}

// The file DIR/base.gz into path, or DIR/base when only the uncompressed file is there.
static int find_idx(char *path, size_t cap, const char *dir, const char *base, bool default_dir) {
    char name[64], plain[PATH_CAP];
    snprintf(name, sizeof name, "%s.gz", base);
    if (join(path, cap, dir, name) || join(plain, sizeof plain, dir, base)) return -1;
    if (exists(path)) return 0;
    int err = errno;
    if (exists(plain)) {
        snprintf(path, cap, "%s", plain);
        return 0;
    }
    if (default_dir)
        return file_error(FM, path, "cannot open: %s (hint: install the Debian package dataset-fashion-mnist)",
                          strerror(err));
    return file_error(FM, path, "cannot open: %s (hint: fmnist:DIR wants the files of the Debian package "
                      "dataset-fashion-mnist, e.g. %s, in DIR; with that package installed, plain "
                      "'fmnist' needs no folder)", strerror(err), name);
}

static int read_fmnist(struct msd_dataset *d, const char *dir, bool test, bool default_dir) {
    const char *prefix = test ? "t10k" : "train";
    char ipath[PATH_CAP], lpath[PATH_CAP], base[64];
    snprintf(base, sizeof base, "%s-images-idx3-ubyte", prefix);
    if (find_idx(ipath, sizeof ipath, dir, base, default_dir)) return -1;
    snprintf(base, sizeof base, "%s-labels-idx1-ubyte", prefix);
    if (find_idx(lpath, sizeof lpath, dir, base, default_dir)) return -1;

    int rc = -1;
    gzFile gl = NULL, gi = gzopen(ipath, "rb");
    if (!gi) {
        file_error(FM, ipath, "cannot open: %s", strerror(errno));
        goto done;
    }
    unsigned char h[16];
    if (gz_exact(gi, ipath, h, sizeof h, "header (magic, count, rows, cols)")) goto done;
    uint32_t magic = be32(h), n = be32(h + 4), rows = be32(h + 8), cols = be32(h + 12);
    if (magic != IDX_IMAGES) {
        file_error(FM, ipath, "magic number is 0x%08x, expected 0x%08x (IDX images)%s", magic, IDX_IMAGES,
                   magic == IDX_LABELS ? "; this is a labels file" : "");
        goto done;
    }
    if (n == 0) {
        file_error(FM, ipath, "the header declares 0 images, expected at least 1 (empty data set)");
        goto done;
    }
    if (rows != cols || rows == 0) {
        file_error(FM, ipath, "the header declares images of %u rows x %u cols, expected square images of "
                   "at least 1x1", rows, cols);
        goto done;
    }
    // rows <= MSD_PNG_MAX_SIDE = 2^14 keeps n * rows * cols below 2^60: no overflow in the product
    uint64_t bytes = rows > MSD_PNG_MAX_SIDE ? UINT64_MAX : (uint64_t)n * rows * cols;
    if (bytes > MSD_DATA_MAX_BYTES) {
        file_error(FM, ipath, "the header declares %u images of %ux%u, more than the limit of %llu pixel "
                   "bytes (corrupt header?)", n, rows, cols, (unsigned long long)MSD_DATA_MAX_BYTES);
        goto done;
    }

    gl = gzopen(lpath, "rb");
    if (!gl) {
        file_error(FM, lpath, "cannot open: %s", strerror(errno));
        goto done;
    }
    unsigned char hl[8];
    if (gz_exact(gl, lpath, hl, sizeof hl, "header (magic, count)")) goto done;
    uint32_t lmagic = be32(hl), nl = be32(hl + 4);
    if (lmagic != IDX_LABELS) {
        file_error(FM, lpath, "magic number is 0x%08x, expected 0x%08x (IDX labels)%s", lmagic, IDX_LABELS,
                   lmagic == IDX_IMAGES ? "; this is an images file" : "");
        goto done;
    }
    if (nl != n) {
        file_error(FM, lpath, "count mismatch: the header declares %u labels but '%s' declares %u images",
                   nl, ipath, n);
        goto done;
    }

    d->pixels = malloc((size_t)bytes);
    d->labels = malloc(n);
    if (!d->pixels || !d->labels) {
        file_error(FM, ipath, "out of memory for %u images of %ux%u", n, rows, cols);
        goto done;
    }
    if (gz_exact(gi, ipath, d->pixels, (size_t)bytes, "pixels")) goto done;
    if (gz_exact(gl, lpath, d->labels, n, "labels")) goto done;
    unsigned char extra;
    const char *longer = gzread(gi, &extra, 1) != 0 ? ipath : gzread(gl, &extra, 1) != 0 ? lpath : NULL;
    if (longer) {
        file_error(FM, longer, "unexpected data after the %u items the header declares (corrupt header?)", n);
        goto done;
    }
    for (uint32_t i = 0; i < n; i++)
        if (d->labels[i] > 9) {
            file_error(FM, lpath, "label %u at index %u, expected 0..9", d->labels[i], i);
            goto done;
        }
    d->n = (int)n;
    d->channels = 1;
    d->res = (int)rows;
    set_source(d, "Fashion-MNIST %s, %s", test ? "test" : "train", dir);
    rc = 0;
done:
    if (gi) gzclose(gi);
    if (gl) gzclose(gl);
    return rc;
}

// ---------------------------------------------------------------------------------------------------
// CIFAR-10, binary version: records of 1 label byte + 3072 pixel bytes, the pixels already planar
// (1024 R, 1024 G, 1024 B, each a row-major 32x32 plane), i.e. exactly our (3, 32, 32) layout.

#define CIFAR_RES 32
#define CIFAR_PIXELS (3 * CIFAR_RES * CIFAR_RES)
#define CIFAR_RECORD (1 + CIFAR_PIXELS)
#define CF "CIFAR-10"

static int read_cifar(struct msd_dataset *d, const char *dir, bool test) {
    static const char *const train_files[] = {"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin",
                                              "data_batch_4.bin", "data_batch_5.bin"};
    static const char *const test_files[] = {"test_batch.bin"};
    const char *const *names = test ? test_files : train_files;
    const int nf = test ? 1 : 5;
    const char *expect = test ? "test_batch.bin" : "data_batch_1.bin .. data_batch_5.bin";

    struct stat st;
    if (stat(dir, &st) != 0)
        return file_error(CF " folder", dir, "cannot open: %s (hint: cifar10:DIR wants the folder of the "
                          "binary version, cifar-10-batches-bin, holding %s)", strerror(errno), expect);
    if (!S_ISDIR(st.st_mode)) return file_error(CF " folder", dir, "not a directory");
    // The archive unpacks into cifar-10-batches-bin/: its parent folder is accepted too.
    char base[PATH_CAP], path[PATH_CAP];
    snprintf(base, sizeof base, "%s", dir);
    if (join(path, sizeof path, dir, names[0])) return -1;
    if (!exists(path)) {
        char sub[PATH_CAP];
        if (join(sub, sizeof sub, dir, "cifar-10-batches-bin") || join(path, sizeof path, sub, names[0]))
            return -1;
        if (exists(path)) snprintf(base, sizeof base, "%s", sub);
    }

    uint64_t total = 0; // records in all files
    for (int f = 0; f < nf; f++) {
        if (join(path, sizeof path, base, names[f])) return -1;
        if (stat(path, &st) != 0)
            return file_error(CF, path, "missing batch file: %s (expected %s in '%s', the CIFAR-10 binary "
                              "version)", strerror(errno), expect, base);
        if (!S_ISREG(st.st_mode)) return file_error(CF, path, "not a regular file");
        if (st.st_size == 0)
            return file_error(CF, path, "empty file, expected records of %d bytes (1 label byte + %d pixel "
                              "bytes)", CIFAR_RECORD, CIFAR_PIXELS);
        if (st.st_size % CIFAR_RECORD != 0)
            return file_error(CF, path, "size %lld bytes is not a multiple of %d (1 label byte + %d pixel "
                              "bytes per image): truncated, or not the binary version?",
                              (long long)st.st_size, CIFAR_RECORD, CIFAR_PIXELS);
        total += (uint64_t)st.st_size / CIFAR_RECORD;
    }
    if (total * CIFAR_PIXELS > MSD_DATA_MAX_BYTES)
        return file_error(CF " folder", base, "%llu images are more than the limit of %llu pixel bytes",
                          (unsigned long long)total, (unsigned long long)MSD_DATA_MAX_BYTES);
    d->pixels = malloc((size_t)total * CIFAR_PIXELS);
    d->labels = malloc((size_t)total);
    if (!d->pixels || !d->labels)
        return file_error(CF " folder", base, "out of memory for %llu images", (unsigned long long)total);

    unsigned char rec[CIFAR_RECORD];
    size_t k = 0; // records read so far, over all files
    for (int f = 0; f < nf; f++) {
        if (join(path, sizeof path, base, names[f])) return -1;
        FILE *fp = fopen(path, "rb");
        if (!fp) return file_error(CF, path, "cannot open: %s", strerror(errno));
        if (stat(path, &st) != 0) st.st_size = 0; // (cannot fail after the loop above but for a race)
        size_t records = (size_t)st.st_size / CIFAR_RECORD;
        for (size_t r = 0; r < records; r++, k++) {
            size_t got = fread(rec, 1, CIFAR_RECORD, fp);
            if (got != CIFAR_RECORD || k >= total) {
                fclose(fp);
                return file_error(CF, path, "truncated: record %zu: read %zu of %d bytes (did the file "
                                  "change while it was read?)", r, got, CIFAR_RECORD);
            }
            if (rec[0] > 9) {
                fclose(fp);
                return file_error(CF, path, "record %zu has label %u, expected 0..9", r, rec[0]);
            }
            d->labels[k] = rec[0];
            memcpy(d->pixels + k * CIFAR_PIXELS, rec + 1, CIFAR_PIXELS);
        }
        fclose(fp);
    }
    if (k != total) return file_error(CF " folder", base, "read %zu records, expected %llu (did the files "
                                      "change while they were read?)", k, (unsigned long long)total);
    d->n = (int)total;
    d->channels = 3;
    d->res = CIFAR_RES;
    set_source(d, "CIFAR-10 %s, %s", test ? "test" : "train", base);
    return 0;
}

// ---------------------------------------------------------------------------------------------------
// A folder of PNG files

#define PF "PNG folder"

static bool png_name(const char *name) {
    size_t n = strlen(name);
    return name[0] != '.' && n > 4 && strcasecmp(name + n - 4, ".png") == 0;
}

static int cmp_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static const char *kind_name(int C) { return C == 1 ? "gray" : "RGB"; }

static int read_png_folder(struct msd_dataset *d, const char *dir) {
    struct stat st;
    if (stat(dir, &st) != 0)
        return msd_set_error("data set '%s': %s (expected %s)", dir, strerror(errno), SPECS);
    if (!S_ISDIR(st.st_mode))
        return msd_set_error("data set '%s': not a directory (expected %s)", dir, SPECS);
    DIR *dp = opendir(dir);
    if (!dp) return file_error(PF, dir, "cannot open: %s", strerror(errno));
    char **names = NULL;
    int n = 0, cap = 0, rc = -1;
    errno = 0;
    for (struct dirent *de; (de = readdir(dp)) != NULL; errno = 0) {
        if (!png_name(de->d_name)) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 256;
            char **grown = realloc(names, (size_t)cap * sizeof *names);
            CHECK(grown != NULL, "realloc of %d file names failed", cap);
            names = grown;
        }
        names[n++] = xstrdup(de->d_name);
    }
    int err = errno;
    closedir(dp);
    uint8_t *px = NULL;
    if (err) {
        file_error(PF, dir, "cannot list: %s", strerror(err));
        goto done;
    }
    if (n == 0) {
        file_error(PF, dir, "empty folder: no *.png files");
        goto done;
    }
    qsort(names, (size_t)n, sizeof *names, cmp_names);

    char path[PATH_CAP];
    size_t per = 0; // bytes per image
    for (int i = 0; i < n; i++) {
        int C, H, W;
        if (join(path, sizeof path, dir, names[i]) || msd_png_read(path, &px, &C, &H, &W)) goto done;
        if (W != H) {
            file_error(PF, dir, "'%s' is %dx%d (width x height), expected square images", names[i], W, H);
            goto done;
        }
        if (i == 0) {
            per = (size_t)C * (size_t)W * (size_t)W;
            if ((uint64_t)n * per > MSD_DATA_MAX_BYTES) {
                file_error(PF, dir, "%d images of %dx%dx%d are more than the limit of %llu pixel bytes", n,
                           C, W, W, (unsigned long long)MSD_DATA_MAX_BYTES);
                goto done;
            }
            d->pixels = malloc((size_t)n * per);
            if (!d->pixels) {
                file_error(PF, dir, "out of memory for %d images of %dx%dx%d", n, C, W, W);
                goto done;
            }
            d->channels = C;
            d->res = W;
        } else if (C != d->channels) {
            file_error(PF, dir, "'%s' is %s but '%s' is %s (gray and RGB images may not mix)", names[0],
                       kind_name(d->channels), names[i], kind_name(C));
            goto done;
        } else if (W != d->res) {
            file_error(PF, dir, "'%s' is %dx%d but '%s' is %dx%d (every image must have the same size)",
                       names[0], d->res, d->res, names[i], W, H);
            goto done;
        }
        memcpy(d->pixels + (size_t)i * per, px, per);
        free(px);
        px = NULL;
    }
    d->n = n;
    set_source(d, "PNG folder %s", dir);
    rc = 0;
done:
    free(px);
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    return rc;
}

// ---------------------------------------------------------------------------------------------------
// Opening

// Does spec name `name` ("name" or "name:...")? Then *test and *dir (NULL: none given) are set from
// "name", "name:test", "name:DIR" or "name:test:DIR".
static bool parse_spec(const char *spec, const char *name, bool *test, const char **dir) {
    size_t len = strlen(name);
    if (strncmp(spec, name, len) != 0 || (spec[len] != '\0' && spec[len] != ':')) return false;
    *test = false;
    *dir = NULL;
    if (spec[len] == '\0') return true;
    const char *rest = spec + len + 1;
    if (strcmp(rest, "test") == 0) {
        *test = true;
        return true;
    }
    if (strncmp(rest, "test:", 5) == 0) {
        *test = true;
        rest += 5;
    }
    *dir = rest; // may be "": the caller says so
    return true;
}

int msd_data_open(struct msd_dataset *d, const char *spec) {
    memset(d, 0, sizeof *d);
    if (!spec || !*spec) return msd_set_error("data set: empty name (expected %s)", SPECS);
    bool test;
    const char *dir;
    int rc;
    if (parse_spec(spec, "fmnist", &test, &dir)) {
        if (dir && !*dir) return msd_set_error("data set '%s': empty folder name after ':'", spec);
        rc = read_fmnist(d, dir ? dir : MSD_FMNIST_DIR, test, dir == NULL);
    } else if (parse_spec(spec, "cifar10", &test, &dir)) {
        if (!dir || !*dir)
            return msd_set_error("data set '%s': CIFAR-10 needs its folder: cifar10:DIR or cifar10:test:DIR "
                                 "(the binary version, cifar-10-batches-bin)", spec);
        rc = read_cifar(d, dir, test);
    } else {
        rc = read_png_folder(d, spec);
    }
    if (rc != 0) msd_data_free(d);
    return rc;
}

int msd_data_random(struct msd_dataset *d, int n, int channels, int res, uint64_t seed) {
    memset(d, 0, sizeof *d);
    const size_t bytes = (size_t)n * channels * res * res;
    if (n < 1 || channels < 1 || res < 1 || !(d->pixels = malloc(bytes)))
        return msd_set_error("random data set: cannot hold %d images of %dx%dx%d", n, channels, res, res);
    d->n = n, d->channels = channels, d->res = res;
    for (size_t i = 0; i < bytes; i++) d->pixels[i] = (uint8_t)(msd_rng_u32(seed, MSD_STREAM_TEST, i) & 255);
    snprintf(d->source, sizeof d->source, "%d random images (seed %llu)", n, (unsigned long long)seed);
    return 0;
}

void msd_data_free(struct msd_dataset *d) {
    free(d->pixels);
    free(d->labels);
    memset(d, 0, sizeof *d);
}

// ---------------------------------------------------------------------------------------------------
// Batches

// One image px: (C, R, R) bytes -> out: (C, R, R) floats, mirrored left-right when flip.
static void image_to_float(float *out, const uint8_t *px, int C, int R, bool flip) {
    for (int cy = 0; cy < C * R; cy++) { // every row of every channel
        const uint8_t *row = px + (size_t)cy * (size_t)R;
        float *o = out + (size_t)cy * (size_t)R;
        for (int x = 0; x < R; x++) o[x] = (float)row[flip ? R - 1 - x : x] / 127.5f - 1.0f;
    }
}

void msd_data_batch(const struct msd_dataset *d, float *out, int B, uint64_t seed, uint64_t step,
                    bool xflip) {
    CHECK(d->n > 0 && d->pixels != NULL, "msd_data_batch on an empty data set");
    CHECK(B >= 0, "batch size %d", B);
    size_t per = (size_t)d->channels * (size_t)d->res * (size_t)d->res;
    for (int j = 0; j < B; j++) {
        uint64_t k = step * (uint64_t)B + (uint64_t)j;
        uint32_t idx = msd_rng_u32(seed, MSD_STREAM_DATA, k) % (uint32_t)d->n;
        bool flip = xflip && (msd_rng_u32(seed, MSD_STREAM_XFLIP, k) & 1u);
        image_to_float(out + (size_t)j * per, d->pixels + (size_t)idx * per, d->channels, d->res, flip);
    }
}

void msd_data_images(const struct msd_dataset *d, float *out, int first, int count) {
    CHECK(first >= 0 && count >= 0 && (int64_t)first + count <= d->n,
          "images [%d, %d) of a data set of %d", first, first + count, d->n);
    size_t per = (size_t)d->channels * (size_t)d->res * (size_t)d->res;
    for (int j = 0; j < count; j++)
        image_to_float(out + (size_t)j * per, d->pixels + (size_t)(first + j) * per, d->channels, d->res,
                       false);
}
