// atomic.c: the temporary path, the directory sync and the two writers of atomic.h.
#include "atomic.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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

int msd_atomic_open(struct msd_atomic_file *a, const char *path) {
    // lstat, not stat: a rename replaces a symbolic link itself, and /dev/stdout is a link that may
    // lead to a regular file
    struct stat st;
    const bool in_place = lstat(path, &st) == 0 && !S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode);
    a->path = xstrdup(path);
    a->tmp = in_place ? NULL : msd_tmp_path(path);
    a->f = fopen(in_place ? path : a->tmp, "w");
    if (a->f) return 0;
    int rc = msd_set_error("cannot write '%s': cannot create '%s': %s", path, in_place ? path : a->tmp,
                           strerror(errno));
    free(a->path), free(a->tmp);
    a->path = a->tmp = NULL;
    return rc;
}

int msd_atomic_close(struct msd_atomic_file *a) {
    const char *step = NULL;
    int err = 0;
    // A write that failed earlier (ENOSPC, EFBIG) left its bytes in the buffer, so the flush tries them
    // again and fails with the same reason.
    errno = 0;
    if (fflush(a->f) != 0 || ferror(a->f)) step = "write", err = errno;
    else if (a->tmp && fsync(fileno(a->f)) != 0) step = "fsync", err = errno;
    if (fclose(a->f) != 0 && !step) step = "close", err = errno;
    if (!step && a->tmp && rename(a->tmp, a->path) != 0) step = "rename", err = errno;
    int rc = 0;
    if (step) {
        if (a->tmp) remove(a->tmp); // never leave a half-written file behind
        rc = msd_set_error("cannot write '%s': %s of '%s' failed: %s%s", a->path, step, a->tmp ? a->tmp : a->path,
                           err ? strerror(err) : "an earlier write failed", a->tmp ? "; the file is left as it was"
                                                                               : "");
    } else if (a->tmp) msd_sync_parent_dir(a->path);
    free(a->path), free(a->tmp);
    a->f = NULL, a->path = a->tmp = NULL;
    return rc;
}

int msd_write_file_atomic(const char *path, const void *bytes, size_t n) {
    struct msd_atomic_file a;
    if (msd_atomic_open(&a, path) < 0) return -1;
    fwrite(bytes, 1, n, a.f); // a short write leaves the stream's error flag set: msd_atomic_close reports it
    return msd_atomic_close(&a);
}
