// fuzz_cifar.c: the CIFAR-10 binary format (common/io/data.c): records of 1 label byte and 3072
// pixel bytes, as the test batch file.
#include <stdio.h>

#include "common/io/data.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    fuzz_write("test_batch.bin", data, n);
    char spec[600];
    snprintf(spec, sizeof spec, "cifar10:test:%s", fuzz_dir());
    struct msd_dataset d;
    if (msd_data_open(&d, spec) == 0) msd_data_free(&d);
    return 0;
}
