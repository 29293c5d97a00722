// backend.c: choosing a backend by name at run time.
#include "backend.h"

#include <string.h>

#include "error.h"

const struct msd_backend *msd_backend_get(const char *name) {
    if (!name) return msd_set_error("backend: no name given (expected ref, fast or cuda)"), NULL;
    if (strcmp(name, "ref") == 0) return &msd_backend_ref;
    if (strcmp(name, "fast") == 0 || strcmp(name, "cuda") == 0) {
        msd_set_error("backend '%s' is not available in this build (only 'ref' is built so far)", name);
        return NULL;
    }
    msd_set_error("unknown backend '%s' (expected ref, fast or cuda)", name);
    return NULL;
}

const struct msd_backend *msd_backend_default(void) {
    const char *order[] = {"cuda", "fast"};
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++) {
        const struct msd_backend *b = msd_backend_get(order[i]);
        if (b) return b;
    }
    msd_clear_error();
    return &msd_backend_ref;
}
