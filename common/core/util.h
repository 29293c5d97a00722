// util.h: checked wrappers for the C library and the CHECK macro.
//
// Every call that can fail on user input or on the machine (allocation, opening and reading files)
// goes through a wrapper that names the call site and what to try. CHECK survives NDEBUG: it is for
// conditions that must hold in every build, and it aborts with the condition and a message.
//
// Errors that a user can cause (a bad flag, a corrupt file) are not CHECKs: library functions return
// -1 and set a message with msd_set_error() (common/core/error.h), and the program prints it.
#ifndef MSD_UTIL_H
#define MSD_UTIL_H

#include <stddef.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" { // also used by cuda/ (C++)
#endif

// Print "file:line: message" and abort. Used by CHECK and the wrappers below.
void msd_fatal(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4), noreturn));

#define CHECK(cond, ...)                                                                        \
    do {                                                                                        \
        if (!(cond)) msd_fatal(__FILE__, __LINE__, "CHECK(" #cond ") failed: " __VA_ARGS__);   \
    } while (0)

void *msd_malloc_at(size_t bytes, const char *file, int line);
void *msd_calloc_at(size_t count, size_t size, const char *file, int line);
FILE *msd_fopen_at(const char *path, const char *mode, const char *file, int line);
void msd_fread_at(void *dst, size_t size, size_t count, FILE *f, const char *file, int line);
char *msd_strdup_at(const char *s, const char *file, int line);
void msd_fwrite_at(const void *src, size_t size, size_t count, FILE *f, const char *file, int line);

// JSON read with cJSON: cJSON ends a string at an escaped NUL (\u0000) and does not say so, so that
// "edm\u0000x" reads as "edm". The byte offset of the first such escape in text, or -1 when there is
// none. (A raw NUL cannot be in a C string: the text simply ends there.)
long msd_json_nul_escape(const char *text);

#define xmalloc(bytes) msd_malloc_at((bytes), __FILE__, __LINE__)
#define xcalloc(count, size) msd_calloc_at((count), (size), __FILE__, __LINE__)
#define xfopen(path, mode) msd_fopen_at((path), (mode), __FILE__, __LINE__)
#define xfread(dst, size, count, f) msd_fread_at((dst), (size), (count), (f), __FILE__, __LINE__)
#define xstrdup(s) msd_strdup_at((s), __FILE__, __LINE__)
#define xfwrite(src, size, count, f) msd_fwrite_at((src), (size), (count), (f), __FILE__, __LINE__)

#ifdef __cplusplus
}
#endif

#endif
