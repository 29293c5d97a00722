// fuzz.c: the helpers of fuzz.h.
#include "fuzz.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const char *fuzz_dir(void) {
    static char dir[256];
    if (!dir[0]) {
        const char *tmp = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/msdiff-fuzz-%ld", tmp && *tmp ? tmp : "/tmp", (long)getpid());
        if (mkdir(dir, 0700) != 0 && access(dir, W_OK) != 0) {
            perror(dir);
            abort();
        }
    }
    return dir;
}

const char *fuzz_path(const char *name) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", fuzz_dir(), name);
    return path;
}

const char *fuzz_write(const char *name, const uint8_t *data, size_t n) {
    const char *path = fuzz_path(name);
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f) != 0) {
        perror(path);
        abort();
    }
    return path;
}
