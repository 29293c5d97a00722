// fuzz_safetensors.c: the safetensors reader (common/io/safetensors.c): header length, JSON header,
// dtypes, shapes, offsets, metadata, and the conversion of every tensor to float32.
#include <stdlib.h>

#include "common/io/safetensors.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    struct msd_st_file f;
    if (msd_st_read(&f, fuzz_write("t.safetensors", data, n)) != 0) return 0;
    for (int i = 0; i < f.n_tensors; i++) { // a file that loads must convert: every tensor, F32/F16/BF16
        const struct msd_st_tensor *t = &f.tensors[i];
        size_t count = 1;
        for (int d = 0; d < t->ndim; d++) count *= (size_t)t->shape[d];
        float *dst = malloc(count ? count * sizeof *dst : 1);
        if (dst) msd_st_get_f32(&f, t->name, t->ndim, t->shape, dst);
        free(dst);
    }
    msd_st_meta(&f, "config");
    msd_st_free(&f);
    return 0;
}
