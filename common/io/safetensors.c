// safetensors.c: the strict reader, the float32 getter and the atomic writer of safetensors.h.
//
// Holds: whole-file loading with checked reads, validation of every header field before use, F16/BF16
// to F32 conversion, and a writer that builds the JSON header by hand (cJSON's printer would write large
// offsets in exponent notation, which other readers reject) and goes through "<path>.tmp", fsync, rename.
// Does not hold: mmap, dtypes other than F32 on write, or any model-specific naming.
#include "safetensors.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/core/bf16.h"
#include "common/core/error.h"
#include "common/core/util.h"
#include "common/io/atomic.h"

// Data is copied byte for byte into host floats, so the host must be little-endian like the format.
#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__)
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors.c assumes a little-endian host");
#endif
_Static_assert(sizeof(float) == 4, "safetensors.c assumes 4-byte IEEE floats");

// Where the compiler does not say, check at run time (cheap, once per call).
static int host_is_little_endian(void) { const uint16_t one = 1; return *(const unsigned char *)&one == 1; }

#define MAX_HEADER_BYTES (100u * 1000u * 1000u) // a real header is KBs; more means a corrupt length
#define MAX_JSON_INT 9007199254740992.0         // 2^53: larger integers are not exact in a double

// The dtypes of the format and their element sizes in bytes.
static const struct { const char *name; size_t size; } DTYPES[] = {
    {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4}, {"I16", 2}, {"I8", 1},
    {"U64", 8}, {"U32", 4}, {"U16", 2}, {"U8", 1}, {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1},
};
#define N_DTYPES ((int)(sizeof DTYPES / sizeof DTYPES[0]))

static size_t dtype_size(const char *name) {
    for (int i = 0; i < N_DTYPES; i++)
        if (strcmp(DTYPES[i].name, name) == 0) return DTYPES[i].size;
    return 0;
}

// Set the error as "<what> '<path>': <message>" for file f ("checkpoint 'a.safetensors': ..."). Returns -1.
static int st_error(const struct msd_st_file *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int st_error(const struct msd_st_file *f, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return msd_set_error("%s '%s': %s", f->what, f->path, msg);
}

// The same for a file being written, which the writer knows only by its path.
static int wr_error(const char *path, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int wr_error(const char *path, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return msd_set_error("safetensors file '%s': %s", path, msg);
}

// "[8, 2, 3, 3]" into buf (8 dims of up to 20 digits fit in 200 bytes).
static const char *fmt_shape(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
    return buf;
}

// prod(shape) * elem into *bytes; 0 on overflow. Any zero dim makes the tensor empty, whatever the rest.
static int shape_bytes(int ndim, const int64_t *shape, size_t elem, size_t *bytes) {
    for (int i = 0; i < ndim; i++)
        if (shape[i] == 0) {
            *bytes = 0;
            return 1;
        }
    size_t n = elem;
    for (int i = 0; i < ndim; i++) {
        if ((uint64_t)shape[i] > SIZE_MAX / n) return 0;
        n *= (size_t)shape[i];
    }
    *bytes = n;
    return 1;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

// A repeated name in names[0..n) (sorted copy), or NULL.
static const char *find_duplicate(const char *const *names, int n) {
    if (n < 2) return NULL;
    const char **s = xmalloc((size_t)n * sizeof *s);
    memcpy(s, names, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, cmp_str);
    const char *dup = NULL;
    for (int i = 1; i < n && !dup; i++)
        if (strcmp(s[i - 1], s[i]) == 0) dup = s[i];
    free(s);
    return dup;
}

// ---------------------------------------------------------------------------------------------------
// Reading

// A JSON number that is an exact non-negative integer below 2^53, into *out.
static int json_uint(const cJSON *e, uint64_t *out) {
    if (!cJSON_IsNumber(e)) return 0;
    double v = e->valuedouble;
    if (!isfinite(v) || v < 0 || v > MAX_JSON_INT || floor(v) != v) return 0;
    *out = (uint64_t)v;
    return 1;
}

// Fill t from one header entry {"dtype", "shape", "data_offsets"}; data_len bounds the offsets.
static int parse_tensor(const struct msd_st_file *f, const cJSON *item, struct msd_st_tensor *t) {
    const size_t data_len = f->data_len;
    const char *name = item->string;
    if (!cJSON_IsObject(item))
        return st_error(f, "tensor '%s': the entry is not a JSON object {dtype, shape, data_offsets}",
                        name);

    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    if (!cJSON_IsString(dtype))
        return st_error(f, "tensor '%s': \"dtype\" is missing or not a string (expected e.g. \"F32\")",
                        name);
    size_t elem = dtype_size(dtype->valuestring);
    if (elem == 0)
        return st_error(f, "tensor '%s': unknown dtype \"%.20s\" (expected F32, F16, BF16, F64, I8..I64, "
                        "U8..U64, BOOL, F8_E4M3 or F8_E5M2)", name, dtype->valuestring);
    snprintf(t->dtype, sizeof t->dtype, "%s", dtype->valuestring);

    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(item, "shape");
    if (!cJSON_IsArray(shape))
        return st_error(f, "tensor '%s': \"shape\" is missing or not an array (expected e.g. [8, 2])",
                        name);
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > MSD_ST_MAX_DIMS)
        return st_error(f, "tensor '%s': shape has %d dims, more than the %d supported", name, ndim,
                        MSD_ST_MAX_DIMS);
    t->ndim = ndim;
    int d = 0;
    for (const cJSON *e = shape->child; e; e = e->next, d++) {
        uint64_t v;
        if (!json_uint(e, &v))
            return st_error(f, "tensor '%s': shape dim %d is not a non-negative integer", name, d);
        t->shape[d] = (int64_t)v;
    }

    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    uint64_t begin, end;
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 || !json_uint(offs->child, &begin) ||
        !json_uint(offs->child->next, &end))
        return st_error(f, "tensor '%s': \"data_offsets\" is missing or not two non-negative integers "
                        "[begin, end]", name);
    if (begin > end)
        return st_error(f, "tensor '%s': data_offsets [%llu, %llu] has begin > end", name,
                        (unsigned long long)begin, (unsigned long long)end);
    if (end > data_len)
        return st_error(f, "tensor '%s': data_offsets [%llu, %llu] out of range: end is past the end "
                        "of the data buffer (%zu bytes; truncated file?)", name,
                        (unsigned long long)begin, (unsigned long long)end, data_len);
    t->begin = (size_t)begin;
    t->end = (size_t)end;

    char sh[200];
    size_t need;
    if (!shape_bytes(ndim, t->shape, elem, &need))
        return st_error(f, "tensor '%s': shape %s of %s is too large (its byte size overflows)", name,
                        fmt_shape(sh, sizeof sh, ndim, t->shape), t->dtype);
    if (end - begin != need)
        return st_error(f, "tensor '%s': data_offsets [%llu, %llu] hold %llu bytes, but dtype %s and "
                        "shape %s need %zu (size mismatch)", name, (unsigned long long)begin,
                        (unsigned long long)end, (unsigned long long)(end - begin), t->dtype,
                        fmt_shape(sh, sizeof sh, ndim, t->shape), need);
    return 0;
}

// "__metadata__" must be an object whose values are all strings.
static int check_metadata(const struct msd_st_file *f, const cJSON *meta) {
    if (!cJSON_IsObject(meta))
        return st_error(f, "\"__metadata__\" is not a JSON object (expected {\"key\": \"string\", ...})");
    for (const cJSON *e = meta->child; e; e = e->next)
        if (!cJSON_IsString(e))
            return st_error(f, "\"__metadata__\" value of key '%s' is not a string", e->string);
    return 0;
}

static int cmp_by_offset(const void *a, const void *b) {
    const struct msd_st_tensor *x = *(const struct msd_st_tensor *const *)a;
    const struct msd_st_tensor *y = *(const struct msd_st_tensor *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return (x->end > y->end) - (x->end < y->end);
}

// Names must be unique (JSON allows repeated keys) and byte ranges must not overlap. Sorting an array
// of pointers keeps both checks O(n log n) for checkpoints with thousands of tensors.
static int check_names_and_overlaps(const struct msd_st_file *f) {
    if (f->n_tensors < 2) return 0;
    const char **names = xmalloc((size_t)f->n_tensors * sizeof *names);
    const struct msd_st_tensor **p = xmalloc((size_t)f->n_tensors * sizeof *p);
    for (int i = 0; i < f->n_tensors; i++) {
        names[i] = f->tensors[i].name;
        p[i] = &f->tensors[i];
    }
    const char *dup = find_duplicate(names, f->n_tensors);
    int rc = dup ? st_error(f, "duplicate tensor name '%s' in the header", dup) : 0;
    free(names);
    qsort(p, (size_t)f->n_tensors, sizeof *p, cmp_by_offset);
    const struct msd_st_tensor *prev = NULL; // the last non-empty range seen
    for (int i = 0; i < f->n_tensors && rc == 0; i++) {
        if (p[i]->begin == p[i]->end) continue; // empty tensors occupy no bytes
        if (prev && p[i]->begin < prev->end)
            rc = st_error(f, "tensors '%s' [%zu, %zu) and '%s' [%zu, %zu) overlap in the data buffer",
                          prev->name, prev->begin, prev->end, p[i]->name, p[i]->begin, p[i]->end);
        prev = p[i];
    }
    free(p);
    return rc;
}

// cJSON ends a string at its first NUL, raw or escaped as \u0000, and does not say so: "F32\u0000junk"
// would pass as the dtype F32, and "a\u0000b" as the tensor name "a". So before parsing, every string
// of the header is scanned for one, and the message says where that string sits.

// The string whose opening quote is hdr[*i]: *i is left on its closing quote (or at n). Whether it
// holds a NUL byte or a \u0000 escape.
static bool scan_string(const char *hdr, size_t n, size_t *i) {
    bool nul = false;
    size_t k = *i + 1;
    for (; k < n && hdr[k] != '"'; k++) {
        if (hdr[k] == '\0') nul = true;
        if (hdr[k] != '\\' || k + 1 >= n) continue;
        if (k + 5 < n && !memcmp(hdr + k + 1, "u0000", 5)) nul = true;
        k++; // the escaped character, so that \" does not end the string
    }
    *i = k;
    return nul;
}

// A key as written in the header, shortened for a message.
struct raw_key { const char *s; int len; };
#define SHOWN(k) ((k).len < 64 ? (k).len : 64), (k).s

static int check_strings(const struct msd_st_file *f, const char *hdr, size_t n) {
    // One entry per open container: is it an object, is a key due, the last key read. The header is
    // {name: {field: value, ...}, "__metadata__": {key: value, ...}}, so depth 1 keys are tensor names
    // and depth 2 keys a tensor's fields or metadata keys; deeper containers are followed, not told apart.
    enum { MAX_DEPTH = 4 };
    struct { bool object, want_key; struct raw_key key; } at[MAX_DEPTH + 1] = {0};
    int depth = 0;
    for (size_t i = 0; i < n; i++) {
        const int d = depth < MAX_DEPTH ? depth : MAX_DEPTH;
        switch (hdr[i]) {
        case '{':
        case '[':
            if (++depth <= MAX_DEPTH) at[depth].object = at[depth].want_key = hdr[i] == '{';
            continue;
        case '}':
        case ']': depth -= depth > 0; continue;
        case ':': at[d].want_key = false; continue;
        case ',': at[d].want_key = at[d].object; continue;
        case '"': break;
        default: continue;
        }
        const size_t start = i + 1;
        const bool nul = scan_string(hdr, n, &i);
        const struct raw_key str = {hdr + start, (int)(i - start)};
        const bool is_key = at[d].object && at[d].want_key;
        if (is_key) at[d].key = str;
        if (!nul) continue;
        const char *why = "holds a NUL character (\\u0000), which would cut it short";
        const bool meta = d == 2 && at[1].key.len == 12 && !memcmp(at[1].key.s, "__metadata__", 12);
        if (d == 1 && is_key) return st_error(f, "the tensor name \"%.*s\" %s", SHOWN(str), why);
        if (meta && is_key) return st_error(f, "the __metadata__ key \"%.*s\" %s", SHOWN(str), why);
        if (meta) return st_error(f, "__metadata__ value of key '%.*s' %s", SHOWN(at[2].key), why);
        if (d == 2 && is_key)
            return st_error(f, "tensor '%.*s': the field name \"%.*s\" %s", SHOWN(at[1].key), SHOWN(str), why);
        if (d == 2)
            return st_error(f, "tensor '%.*s': \"%.*s\" \"%.*s\" %s", SHOWN(at[1].key), SHOWN(at[2].key), SHOWN(str),
                            why);
        return st_error(f, "the string \"%.*s\" in the header %s", SHOWN(str), why);
    }
    return 0;
}
#undef SHOWN

// Parse and validate the header text hdr[0..n) (NUL-terminated at n) into f.
static int parse_header(struct msd_st_file *f, const char *hdr, size_t n) {
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(hdr, n, &end, 0);
    if (!root)
        return st_error(f, "the header is not valid JSON (parse error near byte %zu of %zu)",
                        end && end >= hdr ? (size_t)(end - hdr) : (size_t)0, n);
    int rc = 0;
    // The writer pads with spaces; anything else after the object is garbage.
    for (const char *c = end; c < hdr + n && rc == 0; c++)
        if (*c != ' ' && *c != '\t' && *c != '\n' && *c != '\r')
            rc = st_error(f, "the header has trailing bytes after the JSON object (at byte %zu of %zu)",
                          (size_t)(c - hdr), n);
    if (rc == 0 && !cJSON_IsObject(root))
        rc = st_error(f, "the header is not a JSON object (expected {\"name\": {...}, ...})");

    cJSON *meta = NULL;
    if (rc == 0) {
        int n_items = cJSON_GetArraySize(root);
        f->tensors = xcalloc((size_t)n_items, sizeof *f->tensors);
        for (cJSON *e = root->child; e && rc == 0; e = e->next) {
            if (strcmp(e->string, "__metadata__") == 0) {
                if (meta) rc = st_error(f, "\"__metadata__\" appears twice in the header");
                else if ((rc = check_metadata(f, e)) == 0) meta = e;
                continue;
            }
            struct msd_st_tensor *t = &f->tensors[f->n_tensors++];
            size_t len = strlen(e->string);
            t->name = xmalloc(len + 1);
            memcpy(t->name, e->string, len + 1);
            rc = parse_tensor(f, e, t);
        }
    }
    if (rc == 0) rc = check_names_and_overlaps(f);
    if (rc == 0 && meta) f->metadata = cJSON_DetachItemViaPointer(root, meta);
    cJSON_Delete(root);
    return rc;
}

// Read exactly n bytes or set an error naming what was being read.
static int read_exact(FILE *fp, void *dst, size_t n, const struct msd_st_file *f, const char *what) {
    if (n == 0 || fread(dst, 1, n, fp) == n) return 0;
    return st_error(f, "truncated or unreadable while reading the %s (%zu bytes): %s", what, n,
                    ferror(fp) ? strerror(errno) : "unexpected end of file");
}

// Read the length, the header (into *hdr, NUL-terminated) and the data buffer of the open file fp.
static int load(FILE *fp, struct msd_st_file *f, char **hdr, size_t *hdr_len) {
    struct stat st;
    if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode)) return st_error(f, "not a regular file");
    uint64_t size = (uint64_t)st.st_size;
    if (size < 8)
        return st_error(f, "truncated: the file is %llu bytes, shorter than the 8-byte header length",
                        (unsigned long long)size);
    unsigned char lb[8];
    if (read_exact(fp, lb, 8, f, "header length") != 0) return -1;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | lb[i]; // little-endian u64, whatever the host
    if (n > MAX_HEADER_BYTES)
        return st_error(f, "header length %llu is absurd (more than 100 MB; not a safetensors file?)",
                        (unsigned long long)n);
    if (n > size - 8)
        return st_error(f, "truncated: header length %llu runs past the end of the file (%llu bytes "
                        "after the length field)", (unsigned long long)n, (unsigned long long)(size - 8));
    if (size - 8 - n > SIZE_MAX)
        return st_error(f, "the data buffer (%llu bytes) does not fit in memory on this host",
                        (unsigned long long)(size - 8 - n));
    *hdr_len = (size_t)n;
    *hdr = xmalloc(*hdr_len + 1);
    if (read_exact(fp, *hdr, *hdr_len, f, "JSON header") != 0) return -1;
    (*hdr)[n] = '\0';
    f->data_len = (size_t)(size - 8 - n);
    f->data = xmalloc(f->data_len);
    return read_exact(fp, f->data, f->data_len, f, "data buffer");
}

int msd_st_read_as(struct msd_st_file *f, const char *path, const char *what) {
    memset(f, 0, sizeof *f);
    f->path = xstrdup(path);
    snprintf(f->what, sizeof f->what, "%s", what);
    FILE *fp = NULL;
    char *hdr = NULL;
    size_t hdr_len = 0;
    int rc = 0;
    if (!host_is_little_endian()) rc = st_error(f, "this host is big-endian; safetensors data is little-endian");
    else if (!(fp = fopen(path, "rb"))) rc = st_error(f, "cannot open: %s (hint: check the path)", strerror(errno));
    if (rc == 0) rc = load(fp, f, &hdr, &hdr_len);
    if (fp) fclose(fp);
    if (rc == 0) rc = check_strings(f, hdr, hdr_len);
    if (rc == 0) rc = parse_header(f, hdr, hdr_len);
    free(hdr);
    if (rc != 0) msd_st_free(f); // leave *f zeroed: nothing for the caller to free
    return rc;
}

int msd_st_read(struct msd_st_file *f, const char *path) { return msd_st_read_as(f, path, "safetensors file"); }

void msd_st_free(struct msd_st_file *f) {
    for (int i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
    free(f->tensors);
    cJSON_Delete(f->metadata);
    free(f->data);
    free(f->path);
    memset(f, 0, sizeof *f);
}

// A linear scan: models look up a few hundred names once at load time.
const struct msd_st_tensor *msd_st_find(const struct msd_st_file *f, const char *name) {
    for (int i = 0; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i].name, name) == 0) return &f->tensors[i];
    return NULL;
}

const char *msd_st_meta(const struct msd_st_file *f, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(f->metadata, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

// ---------------------------------------------------------------------------------------------------
// Conversion to float32

// IEEE half: 1 sign, 5 exponent (bias 15), 10 mantissa bits.
float msd_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    if (exp == 0x1f) bits = sign | 0x7f800000u | (man << 13);        // inf, or NaN with its payload
    else if (exp != 0) bits = sign | ((exp + 112u) << 23) | (man << 13); // normal: rebias 15 -> 127
    else {
        float v = ldexpf((float)man, -24); // zero or subnormal: man * 2^-24, exact in float
        return sign ? -v : v;
    }
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

// bfloat16 is the top half of a float32.
// The tensor `name` when it has this shape and a dtype that converts to float32, else NULL with a message.
static const struct msd_st_tensor *float_tensor(const struct msd_st_file *f, const char *name, int ndim,
                                                const int64_t *shape) {
    char want[200], got[200];
    if (ndim < 0 || ndim > MSD_ST_MAX_DIMS) {
        st_error(f, "tensor '%s': asked for %d dims (expected 0 to %d)", name, ndim, MSD_ST_MAX_DIMS);
        return NULL;
    }
    fmt_shape(want, sizeof want, ndim, shape);
    const struct msd_st_tensor *t = msd_st_find(f, name);
    if (!t) {
        st_error(f, "no tensor '%s' (expected shape %s)", name, want);
        return NULL;
    }
    if (t->ndim != ndim || (ndim > 0 && memcmp(t->shape, shape, (size_t)ndim * sizeof *shape) != 0)) {
        st_error(f, "tensor '%s' has shape %s (dtype %s), expected shape %s", name,
                 fmt_shape(got, sizeof got, t->ndim, t->shape), t->dtype, want);
        return NULL;
    }
    if (strcmp(t->dtype, "F32") && strcmp(t->dtype, "F16") && strcmp(t->dtype, "BF16")) {
        st_error(f, "tensor '%s' has dtype %s, expected F32, F16 or BF16 (shape %s)", name, t->dtype, want);
        return NULL;
    }
    return t;
}

int msd_st_check_f32(const struct msd_st_file *f, const char *name, int ndim, const int64_t *shape) {
    return float_tensor(f, name, ndim, shape) ? 0 : -1;
}

int msd_st_get_f32(const struct msd_st_file *f, const char *name, int ndim, const int64_t *shape,
                   float *dst) {
    const struct msd_st_tensor *t = float_tensor(f, name, ndim, shape);
    if (!t) return -1;
    const unsigned char *src = f->data + t->begin;
    size_t bytes = t->end - t->begin;
    if (strcmp(t->dtype, "F32") == 0) {
        if (bytes) memcpy(dst, src, bytes); // dst may be NULL for an empty tensor
    } else {
        int half = t->dtype[0] == 'F';
        for (size_t i = 0; i < bytes / 2; i++) {
            uint16_t h = (uint16_t)(src[2 * i] | (src[2 * i + 1] << 8)); // memcpy-free: begin may be odd
            dst[i] = half ? msd_f16_to_f32(h) : msd_bf16_to_f32(h);
        }
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------------
// Writing

// Round to half precision in two ranges, each a scaling by a power of two (exact) and one rint
// (round to nearest, ties to even, the default mode):
//   |x| < 2^-14, F16's subnormals: bits = rint(|x| 2^24), a multiple of the step 2^-24. A result of
//     1024 is the smallest normal, 2^-14, whose bits are 0x0400 as well.
//   otherwise |x| = f 2^E with f in [1, 2): mantissa m = rint(f 1024) in [1024, 2048]; 2048 means
//     the rounding carried into the next binade. bits = (E + 15) << 10 | (m - 1024).
int msd_f32_to_f16(float x, uint16_t *bits) {
    if (!isfinite(x)) return -1;
    const uint16_t sign = signbit(x) ? 0x8000u : 0;
    const float a = fabsf(x);
    if (a < 0x1p-14f) {
        *bits = sign | (uint16_t)rintf(ldexpf(a, 24));
        return 0;
    }
    int e;
    (void)frexpf(a, &e); // a = f' 2^e with f' in [0.5, 1), so E = e - 1
    int E = e - 1;
    long m = lrintf(ldexpf(a, 10 - E)); // f 1024
    if (m == 2048) m = 1024, E++;
    if (E > 15) return -1;
    *bits = sign | (uint16_t)((E + 15) << 10) | (uint16_t)(m - 1024);
    return 0;
}

// A JSON string literal: quote, backslash and control bytes escaped; other bytes (UTF-8) as they are.
static void put_json_string(FILE *h, const char *s) {
    fputc('"', h);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(h, "\\%c", c);
        else if (c < 0x20) fprintf(h, "\\u%04x", c);
        else fputc(c, h);
    }
    fputc('"', h);
}

// Check the arguments and build the padded header into *hdr (malloc'd, *hdr_len bytes); *sizes gets each
// entry's byte count.
static int build_header(const char *path, const struct msd_st_entry *e, int n, bool f16, const char *const *keys,
                        const char *const *vals, int n_meta, char **hdr, size_t *hdr_len, size_t *sizes) {
    if (n < 0 || (n > 0 && !e) || n_meta < 0 || (n_meta > 0 && (!keys || !vals)))
        return wr_error(path, "write: bad arguments (n_entries %d, n_meta %d, or a NULL array)", n, n_meta);
    const char **names = xmalloc((size_t)(n + 1) * sizeof *names);
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        char sh[200];
        if (!e[i].name || !e[i].name[0] || strcmp(e[i].name, "__metadata__") == 0)
            rc = wr_error(path, "write: entry %d has a NULL, empty or reserved name", i);
        else if (e[i].ndim < 0 || e[i].ndim > MSD_ST_MAX_DIMS)
            rc = wr_error(path, "write: tensor '%s' has %d dims (expected 0 to %d)", e[i].name, e[i].ndim,
                          MSD_ST_MAX_DIMS);
        for (int d = 0; rc == 0 && d < e[i].ndim; d++)
            if (e[i].shape[d] < 0)
                rc = wr_error(path, "write: tensor '%s' has a negative dim in shape %s", e[i].name,
                              fmt_shape(sh, sizeof sh, e[i].ndim, e[i].shape));
        if (rc == 0 && !shape_bytes(e[i].ndim, e[i].shape, f16 ? 2 : 4, &sizes[i]))
            rc = wr_error(path, "write: tensor '%s' shape %s is too large (byte size overflows)", e[i].name,
                          fmt_shape(sh, sizeof sh, e[i].ndim, e[i].shape));
        if (rc == 0 && sizes[i] > 0 && !e[i].data)
            rc = wr_error(path, "write: tensor '%s' has NULL data", e[i].name);
        names[i] = e[i].name;
    }
    for (int i = 0; i < n_meta && rc == 0; i++)
        if (!keys[i] || !vals[i]) rc = wr_error(path, "write: metadata pair %d has a NULL key or value", i);
    const char *dup = NULL;
    if (rc == 0 && (dup = find_duplicate(names, n)) != NULL)
        rc = wr_error(path, "write: duplicate tensor name '%s'", dup);
    if (rc == 0 && (dup = find_duplicate(keys, n_meta)) != NULL)
        rc = wr_error(path, "write: duplicate metadata key '%s'", dup);
    free(names);
    if (rc != 0) return rc;

    // The header is written by hand, not by cJSON's printer, so that offsets stay exact integers.
    FILE *h = open_memstream(hdr, hdr_len);
    CHECK(h != NULL, "open_memstream: %s", strerror(errno));
    fputc('{', h);
    if (n_meta > 0) {
        fputs("\"__metadata__\":{", h);
        for (int i = 0; i < n_meta; i++) {
            if (i) fputc(',', h);
            put_json_string(h, keys[i]);
            fputc(':', h);
            put_json_string(h, vals[i]);
        }
        fputc('}', h);
    }
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        if (i || n_meta > 0) fputc(',', h);
        put_json_string(h, e[i].name);
        fprintf(h, ":{\"dtype\":\"%s\",\"shape\":[", f16 ? "F16" : "F32");
        for (int d = 0; d < e[i].ndim; d++) fprintf(h, "%s%lld", d ? "," : "", (long long)e[i].shape[d]);
        fprintf(h, "],\"data_offsets\":[%zu,%zu]}", off, off + sizes[i]);
        off += sizes[i];
    }
    fputc('}', h);
    for (long len = ftell(h); (8 + len) % 8 != 0; len++) fputc(' ', h); // data starts 8-byte aligned
    CHECK(fclose(h) == 0, "building the header in memory failed");
    return 0;
}

int msd_st_write(const char *path, const struct msd_st_entry *entries, int n_entries,
                 const char *const *meta_keys, const char *const *meta_values, int n_meta) {
    return msd_st_write_as(path, entries, n_entries, false, meta_keys, meta_values, n_meta);
}

int msd_st_write_as(const char *path, const struct msd_st_entry *entries, int n_entries, bool f16,
                    const char *const *meta_keys, const char *const *meta_values, int n_meta) {
    if (!host_is_little_endian())
        return wr_error(path, "this host is big-endian; safetensors data is little-endian");
    char *hdr = NULL;
    size_t hdr_len = 0;
    size_t *sizes = xcalloc(n_entries > 0 ? (size_t)n_entries : 1, sizeof *sizes);
    if (build_header(path, entries, n_entries, f16, meta_keys, meta_values, n_meta, &hdr, &hdr_len, sizes) != 0) {
        free(sizes);
        return -1;
    }
    // F16 entries are converted before anything is created, so a value F16 cannot hold fails the
    // write without touching the disk.
    unsigned char **half = xcalloc(n_entries > 0 ? (size_t)n_entries : 1, sizeof *half);
    for (int i = 0; i < n_entries; i++) {
        if (!f16 || !sizes[i]) continue;
        half[i] = xmalloc(sizes[i]);
        for (size_t k = 0; k < sizes[i] / 2; k++) {
            uint16_t b;
            if (msd_f32_to_f16(entries[i].data[k], &b) < 0) {
                int rc = wr_error(path, "write: tensor '%s' element %zu is %g, which F16 cannot hold (finite, "
                                  "|x| <= 65504 expected); nothing was written", entries[i].name, k,
                                  (double)entries[i].data[k]);
                for (int j = 0; j <= i; j++) free(half[j]);
                free(half);
                free(sizes);
                free(hdr);
                return rc;
            }
            half[i][2 * k] = (unsigned char)(b & 0xff), half[i][2 * k + 1] = (unsigned char)(b >> 8);
        }
    }
    char *tmp = msd_tmp_path(path);

    int rc = 0;
    const char *step = "create";
    FILE *fp = fopen(tmp, "wb");
    if (!fp) {
        rc = wr_error(path, "write: cannot create '%s': %s (hint: does the directory exist and is it "
                      "writable?)", tmp, strerror(errno));
        goto done;
    }
    unsigned char lb[8];
    for (int i = 0; i < 8; i++) lb[i] = (unsigned char)((uint64_t)hdr_len >> (8 * i)); // little-endian u64
    step = "write";
    if (fwrite(lb, 1, 8, fp) != 8 || fwrite(hdr, 1, hdr_len, fp) != hdr_len) goto io_fail;
    for (int i = 0; i < n_entries; i++)
        if (sizes[i] && fwrite(half[i] ? (const void *)half[i] : (const void *)entries[i].data, 1, sizes[i], fp) !=
                            sizes[i])
            goto io_fail;
    step = "flush";
    if (fflush(fp) != 0) goto io_fail;
    step = "fsync";
    if (fsync(fileno(fp)) != 0) goto io_fail;
    step = "close";
    int closed = fclose(fp);
    fp = NULL;
    if (closed != 0) goto io_fail;
    step = "rename";
    if (rename(tmp, path) != 0) goto io_fail;
    msd_sync_parent_dir(path);
    goto done;
io_fail:
    rc = wr_error(path, "write: %s of '%s' failed: %s (hint: %s); '%s' left unchanged", step, tmp,
                  strerror(errno), strcmp(step, "rename") == 0 ? "is the target a directory?"
                                                               : "is the disk full?", path);
    if (fp) fclose(fp);
    remove(tmp); // never leave a half-written file behind
done:
    for (int i = 0; i < n_entries; i++) free(half[i]);
    free(half);
    free(tmp);
    free(sizes);
    free(hdr);
    return rc;
}
