// atomic.c: the temporary path, the directory sync and the whole-file writer of atomic.h.
#include "atomic.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/core/error.h"
#include "common/core/util.h"

char *msd_tmp_path(const char *path) {
    size_t plen = strlen(path);
    char *tmp = xmalloc(plen + 5);
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    return tmp;
}

void msd_sync_parent_dir(const char *path) {
    char *dir = xstrdup(path);
    char *slash = strrchr(dir, '/');
    const char *d = dir;
    if (!slash) d = ".";
    else slash[slash == dir] = '\0'; // "a/b/x" -> "a/b", "/x" -> "/"
    int fd = open(d, O_RDONLY);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
    free(dir);
}

int msd_write_file_atomic(const char *path, const void *bytes, size_t n) {
    char *tmp = msd_tmp_path(path);
    const char *step = "create";
    FILE *f = fopen(tmp, "wb");
    int err = errno;
    if (f) {
        bool ok = (step = "write", fwrite(bytes, 1, n, f) == n) && (step = "flush", fflush(f) == 0) &&
                  (step = "fsync", fsync(fileno(f)) == 0);
        err = errno; // before fclose, which may set it again
        if (fclose(f) != 0 && ok) ok = false, step = "close", err = errno;
        if (ok && rename(tmp, path) != 0) ok = false, step = "rename", err = errno;
        if (ok) {
            msd_sync_parent_dir(path);
            free(tmp);
            return 0;
        }
    }
    int rc = msd_set_error("cannot write '%s': %s of '%s' failed: %s (hint: %s); '%s' left unchanged", path, step,
                           tmp, strerror(err), !strcmp(step, "rename") ? "is the target a folder?"
                                               : !strcmp(step, "create") ? "does the folder exist and is it writable?"
                                                                         : "is the disk full?", path);
    remove(tmp); // never leave a half-written file behind
    free(tmp);
    return rc;
}
