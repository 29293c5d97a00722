// atomic.h: what the file writers share to replace a file atomically: they write "<path>.tmp", fsync
// it, rename it over path, then sync the directory, so that a crash, a kill or a full disk leaves
// either the old file or the whole new one, never half of one. safetensors.c and png.c use the two
// pieces; a writer of text through stdio (the CSV and SVG files of msdiff cluster) uses the whole.
#ifndef MSD_ATOMIC_H
#define MSD_ATOMIC_H

#include <stdio.h>

// "<path>.tmp", malloc'd (the caller frees it): the temporary file a writer fills before the rename.
char *msd_tmp_path(const char *path);

// Sync the directory that holds path, which makes a rename into it durable. Best effort: the new file
// is complete either way, so a directory that cannot be opened or synced is not an error.
void msd_sync_parent_dir(const char *path);

// A file written through stdio and put in place whole: msd_atomic_open, fprintf to f, then
// msd_atomic_close. A path that names an existing device, pipe or symbolic link (/dev/null, a FIFO,
// /dev/stdout) is written in place, through the link: renaming over it would replace the entry itself.
struct msd_atomic_file {
    FILE *f;
    char *path; // the destination, copied
    char *tmp;  // "<path>.tmp", or NULL when path is written in place
};
// Open for writing. 0, or -1 with a message naming the file and the reason (strerror).
int msd_atomic_open(struct msd_atomic_file *a, const char *path);
// Flush, fsync, close and rename into place. On any failure (a write that failed on the way, a full
// disk at the flush) the temporary file is removed and path is left as it was. 0, or -1 with a
// message naming path, the step that failed and the reason.
int msd_atomic_close(struct msd_atomic_file *a);

#endif
