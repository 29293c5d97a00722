// fuzz_runjson.c: a run folder's run.json as --resume reads it (common/cli/run.c): the data spec, the
// step target and the save intervals.
#include <stdlib.h>

#include "common/cli/run.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    fuzz_write("run.json", data, n);
    struct msd_run_record rec;
    if (msd_run_read(fuzz_dir(), &rec) == 0) free(rec.data);
    return 0;
}
