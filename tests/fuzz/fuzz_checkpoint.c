// fuzz_checkpoint.c: loading a model checkpoint (common/io/checkpoint.c): the config in the metadata,
// its validation, the model it sizes and every tensor checked against the parameter table.
#include "common/core/backend.h"
#include "common/io/checkpoint.h"
#include "common/model/model.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    struct msd_model m;
    if (msd_checkpoint_load(&m, fuzz_write("c.safetensors", data, n), &msd_backend_ref) == 0) msd_model_free(&m);
    return 0;
}
