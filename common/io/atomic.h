// atomic.h: how every file of the project is replaced atomically: write "<path>.tmp", fsync it, rename
// it over path, then sync the directory, so that a crash or a kill leaves either the old file or the
// whole new one, never half of one. A kill can leave "<path>.tmp" behind; nothing ever reads a .tmp
// (a run folder removes those of its files when a run starts: common/cli/run.c).
// safetensors.c and png.c write their files piece by piece with these two helpers; a file held whole
// in memory (run.json, log.csv) goes through msd_write_file_atomic.
#ifndef MSD_ATOMIC_H
#define MSD_ATOMIC_H

#include <stddef.h>

// "<path>.tmp", malloc'd (the caller frees it): the temporary file a writer fills before the rename.
char *msd_tmp_path(const char *path);

// Sync the directory that holds path, which makes a rename into it durable. Best effort: the new file
// is complete either way, so a directory that cannot be opened or synced is not an error.
void msd_sync_parent_dir(const char *path);

// Replace path with bytes[0..n) atomically and durably (as above). 0, or -1 with a message naming the
// file and the step that failed; then the temporary file is removed and path is left as it was.
int msd_write_file_atomic(const char *path, const void *bytes, size_t n);

#endif
