// fuzz_idx.c: Fashion-MNIST's IDX files, gzip-compressed or not (common/io/data.c). The input is
// both files: a 4-byte little-endian length k, then k bytes of the images file, then the labels file.
#include <stdio.h>
#include <string.h>

#include "common/io/data.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    if (n < 4) return 0;
    uint32_t k = (uint32_t)data[0] | (uint32_t)data[1] << 8 | (uint32_t)data[2] << 16 | (uint32_t)data[3] << 24;
    data += 4, n -= 4;
    if (k > n) k = (uint32_t)n;
    fuzz_write("train-images-idx3-ubyte.gz", data, k); // gzread reads an uncompressed file as it is
    fuzz_write("train-labels-idx1-ubyte.gz", data + k, n - k);
    char spec[600];
    snprintf(spec, sizeof spec, "fmnist:%s", fuzz_dir());
    struct msd_dataset d;
    if (msd_data_open(&d, spec) == 0) msd_data_free(&d);
    return 0;
}
