// safetensors.h: read and write safetensors files: checkpoints, training states, tensors in and out.
//
// The format: an 8-byte little-endian u64 header length N, N bytes of a JSON object, then the data
// buffer. The object maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]}, with
// offsets in bytes relative to the start of the data buffer, plus an optional "__metadata__" object
// whose values are strings (msdiff keeps its config there as JSON text).
//
// What this file holds: a strict reader that loads the whole file into memory and validates every
// length, offset, dtype and shape before anything uses them (a corrupt file gives -1 and a message that
// names the file and what is wrong, never a crash); a float32 getter that converts F16/BF16 and checks
// the expected shape; and an atomic writer of F32 or F16 tensors (temp file, fsync, rename).
// Every tensor of a file that reads lies inside its data buffer with exactly the bytes its dtype and
// shape need, and no two overlap: so the tensors of a file hold at most as many elements as the file
// has bytes, and a loader that has checked a file's tensors against what it expects may allocate
// for them without trusting any other number in the file.
// What it does not hold: memory mapping, lazy loading, writing BF16 or integer dtypes, or knowledge of
// which tensors a model needs (the model code asks for them by name and shape).
// Little-endian hosts only, checked at compile time where the compiler says, and at run time.
#ifndef MSD_SAFETENSORS_H
#define MSD_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#define MSD_ST_MAX_DIMS 8

// One tensor of a loaded file. Its bytes are f->data[begin, end), in the stored dtype.
struct msd_st_tensor {
    char *name;
    char dtype[8];                  // "F32", "F16", "BF16", ... (the longest, "F8_E4M3", fits)
    int ndim;                       // 0 (a scalar) to MSD_ST_MAX_DIMS
    int64_t shape[MSD_ST_MAX_DIMS]; // shape[0..ndim), the rest 0
    size_t begin, end;              // byte offsets into data, validated: end <= data_len
};

// A loaded file. Tensors are in header order; metadata is the "__metadata__" object or NULL.
struct msd_st_file {
    char *path;
    char what[32];                 // what the file is, for messages: "checkpoint", "input", ...
    int n_tensors;
    struct msd_st_tensor *tensors; // [n_tensors]
    cJSON *metadata;               // may be NULL; every value is a string
    unsigned char *data;           // the data buffer (everything after the header), [data_len]
    size_t data_len;
};

// Load and validate the file at path. 0, or -1 with msd_set_error (then *f is zeroed, nothing to free).
// Every message, of the read and of the getters below, starts "<what> '<path>': ", so that it says
// what the file is for ("checkpoint", "training state", "input"); msd_st_read says "safetensors file".
// A string of the header (a tensor name, a dtype, a metadata key or value) that holds a NUL character
// (raw or as \u0000) is refused: the parser would end it there, and "F32\u0000junk" would read as F32.
int msd_st_read_as(struct msd_st_file *f, const char *path, const char *what);
int msd_st_read(struct msd_st_file *f, const char *path);
// Free what msd_st_read allocated and zero *f. Safe on a zeroed struct and twice.
void msd_st_free(struct msd_st_file *f);
// The tensor called name, or NULL when absent (no error is set).
const struct msd_st_tensor *msd_st_find(const struct msd_st_file *f, const char *name);
// Copy tensor name into dst (prod(shape) floats) as float32, converting from F16/BF16 if stored so.
// -1 with a message naming the file, the tensor, the expected and the found shape/dtype when it is
// missing, has another shape (exactly ndim and shape[0..ndim) must match) or a dtype that is not
// F32/F16/BF16.
int msd_st_get_f32(const struct msd_st_file *f, const char *name, int ndim, const int64_t *shape,
                   float *dst);
// The checks of msd_st_get_f32 without the copy: 0 when the tensor is there with this shape and a
// dtype the getter converts, else -1 with the getter's message. Lets a loader compare a whole file
// with what it expects before it allocates anything.
int msd_st_check_f32(const struct msd_st_file *f, const char *name, int ndim, const int64_t *shape);
// The "__metadata__" string value under key, or NULL (no metadata, or no such key).
const char *msd_st_meta(const struct msd_st_file *f, const char *key);

// One tensor to write: float32 data of prod(shape[0..ndim)) elements (data may be NULL when that is 0).
struct msd_st_entry {
    const char *name;
    int ndim;
    int64_t shape[MSD_ST_MAX_DIMS];
    const float *data;
};

// x rounded to the nearest IEEE half (ties to even), as its bits. -1 when x is NaN, infinite or
// rounds beyond F16's largest finite value, 65504.
int msd_f32_to_f16(float x, uint16_t *bits);
// The float32 value of IEEE half bits h (exact: every half is a float).
float msd_f16_to_f32(uint16_t h);

// Write entries (in order, contiguous, F32) and n_meta string pairs as "__metadata__" (n_meta may be
// 0) to path, atomically: write "<path>.tmp", fflush, fsync, fclose, rename over path. On any failure
// the temp file is removed, path is left as it was, and -1 is returned with a message.
int msd_st_write(const char *path, const struct msd_st_entry *entries, int n_entries,
                 const char *const *meta_keys, const char *const *meta_values, int n_meta);
// The same, storing every tensor as F16 when f16 is set: each value rounded to the nearest half (ties
// to even). A value that F16 cannot hold (NaN, Inf, or beyond 65504 once rounded) fails the write
// before any file is created, with a message naming the tensor and element.
int msd_st_write_as(const char *path, const struct msd_st_entry *entries, int n_entries, bool f16,
                    const char *const *meta_keys, const char *const *meta_values, int n_meta);

#endif
