// atomic.c: the temporary path and the directory sync of atomic.h.
#include "atomic.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
