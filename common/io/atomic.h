// atomic.h: how every file of the project is replaced atomically: write "<path>.tmp", fsync it, rename
// it over path, then sync the directory, so that a crash, a kill or a full disk leaves either the old
// file or the whole new one, never half of one. A kill can leave "<path>.tmp" behind; nothing ever
// reads a .tmp (a run folder removes those of its files when a run starts: common/cli/run.c).
// safetensors.c and png.c write their files piece by piece with the first two helpers; a text file
// written through stdio (the CSV and SVG files of msdiff cluster) uses msd_atomic_open/close; a file
// held whole in memory (run.json, log.csv) goes through msd_write_file_atomic.
#ifndef MSD_ATOMIC_H
#define MSD_ATOMIC_H

#include <stddef.h>
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

// Replace path with bytes[0..n) atomically and durably, through msd_atomic_open/close. 0, or -1 with
// their message; then the temporary file is removed and path is left as it was.
int msd_write_file_atomic(const char *path, const void *bytes, size_t n);

#endif
