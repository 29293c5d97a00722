// error.c: one message buffer per thread for the last failure (see error.h).
#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char last_error[1024];

int msd_set_error(const char *fmt, ...) {
    // formatted aside first, so that an argument may be msd_last_error() itself
    char msg[sizeof last_error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    memcpy(last_error, msg, sizeof msg);
    return -1;
}

const char *msd_last_error(void) { return last_error; }

void msd_clear_error(void) { last_error[0] = '\0'; }
