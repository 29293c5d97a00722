// commands.h: what the subcommand files share with the program's main (common/cli/msdiff.c).
#ifndef MSD_COMMANDS_H
#define MSD_COMMANDS_H

#include <stdbool.h>

#include "common/core/backend.h"
#include "cli.h"

// A library call failed: print "msdiff: <msd_last_error()>" and return CLI_FAIL.
int cmd_fail(void);
// cli_parse, printing the command's help for -h/--help. *done is set when the caller should return rc.
int cmd_parse(const char *cmd, int argc, char **argv, struct cli_opt *o, int n, bool *done);
// The backend named by a --backend flag (NULL: the fastest available), or NULL after printing why.
const struct msd_backend *cmd_backend(const char *cmd, const char *name);

extern const char HELP_TRAIN[], HELP_SAMPLE[], HELP_CLUSTER[], HELP_CLASSIFIER[], HELP_EVAL[];
int cmd_train(int argc, char **argv);
int cmd_sample(int argc, char **argv);
int cmd_cluster(int argc, char **argv);
int cmd_classifier(int argc, char **argv);
int cmd_eval(int argc, char **argv);

#endif
