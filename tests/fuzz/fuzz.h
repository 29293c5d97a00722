// fuzz.h: what the libFuzzer harnesses of tests/fuzz/ share.
//
// Every parser of msdiff reads a file by its path, so a harness writes the fuzzer's bytes to a file of
// its own (under $TMPDIR, named by the process id so that parallel jobs do not collide) and calls the
// parser on that path, exactly as the program does. A harness asserts nothing itself: the sanitizers
// (address, undefined) and libFuzzer's limits on memory and time are the checks; a parser may refuse
// any input, but it must do so with an error, not a crash, a leak, undefined behaviour or an
// allocation beyond the limit (-malloc_limit_mb, see the Makefile's fuzz target).
#ifndef MSD_FUZZ_H
#define MSD_FUZZ_H

#include <stddef.h>
#include <stdint.h>

// A folder private to this process (created once), and path = that folder + "/" + name.
const char *fuzz_dir(void);
const char *fuzz_path(const char *name);
// Write data[0..n) to fuzz_path(name) and return that path (aborts when the write fails: that is the
// harness's fault, not the parser's).
const char *fuzz_write(const char *name, const uint8_t *data, size_t n);

#endif
