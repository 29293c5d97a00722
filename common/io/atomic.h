// atomic.h: what the file writers of common/io (safetensors.c, png.c) share to replace a file
// atomically: they write "<path>.tmp", fsync it, rename it over path, then sync the directory, so that
// a crash or a kill leaves either the old file or the whole new one, never half of one.
#ifndef MSD_ATOMIC_H
#define MSD_ATOMIC_H

// "<path>.tmp", malloc'd (the caller frees it): the temporary file a writer fills before the rename.
char *msd_tmp_path(const char *path);

// Sync the directory that holds path, which makes a rename into it durable. Best effort: the new file
// is complete either way, so a directory that cannot be opened or synced is not an error.
void msd_sync_parent_dir(const char *path);

#endif
