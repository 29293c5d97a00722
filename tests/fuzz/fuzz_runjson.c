// fuzz_runjson.c: a run folder's run.json as --resume reads it (common/cli/run.c): the data spec and
// the step target.
#include <stdlib.h>

#include "common/cli/run.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    fuzz_write("run.json", data, n);
    char *spec = NULL;
    long steps = 0;
    if (msd_run_read(fuzz_dir(), &spec, &steps) == 0) free(spec);
    return 0;
}
