// backend.c: choosing a backend by name at run time, and the CPU check that guards fast/.
#include "backend.h"

#include <stdio.h>
#include <string.h>

#include "error.h"

// libgcc's feature bits count AVX2 and FMA only when the OS also saves the YMM registers (XGETBV), so
// this is the whole check that fast/ needs.
bool msd_cpu_has_avx2_fma(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return false;
#endif
}

const struct msd_backend *msd_backend_get_for_cpu(const char *name, bool avx2_fma) {
    if (!name) return msd_set_error("backend: no name given (expected ref, fast or cuda)"), NULL;
    if (strcmp(name, "ref") == 0) return &msd_backend_ref;
    if (strcmp(name, "fast") == 0) {
        if (avx2_fma) return &msd_backend_fast;
        msd_set_error("backend 'fast' needs AVX2 and FMA, and this CPU lacks AVX2/FMA (use --backend ref)");
        return NULL;
    }
    if (strcmp(name, "cuda") == 0) {
#ifdef MSD_HAVE_CUDA
        char why[256];
        if (msd_cuda_probe(why, sizeof why)) return &msd_backend_cuda;
        msd_set_error("backend 'cuda' cannot run here: %s (use --backend fast or ref)", why);
#else
        msd_set_error("backend 'cuda' is not in this build: nvcc was not found when it was built "
                      "(install the CUDA toolkit and rebuild, or use --backend fast or ref)");
#endif
        return NULL;
    }
    msd_set_error("unknown backend '%s' (expected ref, fast or cuda)", name);
    return NULL;
}

const struct msd_backend *msd_backend_get(const char *name) {
    return msd_backend_get_for_cpu(name, msd_cpu_has_avx2_fma());
}

const struct msd_backend *msd_backend_default_for_cpu(bool avx2_fma) {
    static bool noticed; // the fallback is announced once per process
    const struct msd_backend *b = msd_backend_get_for_cpu("cuda", avx2_fma);
    if (!b) b = msd_backend_get_for_cpu("fast", avx2_fma);
    if (!b) {
        if (!noticed)
            fprintf(stderr, "msdiff: this CPU lacks AVX2/FMA, so the fast backend is off: using ref (slow)\n");
        noticed = true;
        b = &msd_backend_ref;
    }
    msd_clear_error();
    return b;
}

const struct msd_backend *msd_backend_default(void) { return msd_backend_default_for_cpu(msd_cpu_has_avx2_fma()); }
