// error.h: the error message of the last failed library call.
//
// Library functions that can fail on user input (a flag, a config value, a data file, a checkpoint)
// return -1 or NULL and leave a message here that names the file, the field and the expected value.
// The program prints it; tests read it to check that the message says the right thing.
#ifndef MSD_ERROR_H
#define MSD_ERROR_H

// Set the message (printf format). Always returns -1, so `return msd_set_error(...)` reads well.
// An argument may be msd_last_error() itself: msd_set_error("checkpoint '%s': %s", path,
// msd_last_error()) adds context to the message of a call that failed underneath.
int msd_set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
// The message of the last failure in this thread ("" when none).
const char *msd_last_error(void);
void msd_clear_error(void);

#endif
