// fuzz_state.c: loading a training state file (common/model/train.c): the config, the options and
// counters in the metadata (steps, seeds, Adam step counts, batch), and the weights, moments and EMA.
#include "common/core/backend.h"
#include "common/model/model.h"
#include "common/model/train.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    struct msd_model m;
    struct msd_train_state st;
    struct msd_train_opts o;
    if (msd_train_load(fuzz_write("s.safetensors", data, n), &m, &st, &o, &msd_backend_ref) == 0) {
        msd_train_state_free(&st, &m);
        msd_model_free(&m);
    }
    return 0;
}
