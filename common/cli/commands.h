// commands.h: what the command files (common/cli/cmd_<name>.c) share with the program's main
// (common/cli/msdiff.c): each command's entry point and help text, and the services main offers them.
#ifndef MSD_COMMANDS_H
#define MSD_COMMANDS_H

#include <stdbool.h>

#include "common/core/backend.h"
#include "cli.h"

struct msd_config;
struct msd_model;

// The number of entries of an array (a flag table, a list of names).
#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

// A library call failed: print "msdiff: <msd_last_error()>" and return CLI_FAIL.
int cmd_fail(void);
// cli_parse, printing the command's help for -h/--help. *done is set when the caller should return rc.
int cmd_parse(const char *cmd, int argc, char **argv, struct cli_opt *o, int n, bool *done);
// The backend named by a --backend flag (NULL: the fastest available), or NULL after printing why.
const struct msd_backend *cmd_backend(const char *cmd, const char *name);
// msd_model_plan for a batch of n images, whose size the command's --batch sets: when the memory is
// not there, the library's message (size, batch, backend) gets "try a smaller --batch".
int cmd_plan_batch(struct msd_model *m, int n);
// Where an output flag writes, checked before a long computation so that it cannot end unable to save
// (a typo in a folder name is found at once). A file (--grid, --csv, --out): its folder exists, is a
// folder and is writable, and the path itself is not a folder. An existing device, pipe or symbolic
// link (/dev/null, /dev/stdout) is accepted when devices_ok (atomic.h's msd_atomic_file writes it in
// place) if it is writable, and refused otherwise: a writer that renames a temporary file into place
// would replace the entry itself. A folder (--outdir): it is a writable folder, or it does not exist
// yet and its parent is a writable folder (the command creates it when it writes). 0, or -1 with a
// message naming the flag, the path and what is wrong. Writability is what access(2) says: for root
// it catches a read-only file system but not permission bits.
int cmd_check_out_file(const char *flag, const char *path, bool devices_ok);
int cmd_check_out_dir(const char *flag, const char *dir);
// "unified" (one stage), "multistage" (shared encoder, one decoder per stage) or "separate": the kind
// of network msdiff info and msdiff init print (common/cli/cmd_info.c).
const char *cmd_kind_name(const struct msd_config *c);

// The commands, one file each: cmd_info(argc, argv) is `msdiff info`, with the words after "info".
// Each returns the program's exit status (0, CLI_FAIL or CLI_USAGE).
extern const char HELP_INFO[], HELP_INIT[], HELP_TRAIN[], HELP_SAMPLE[], HELP_CLUSTER[], HELP_CLASSIFIER[],
    HELP_EVAL[], HELP_DENOISE[], HELP_EXPORT[];
int cmd_info(int argc, char **argv);
int cmd_init(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_sample(int argc, char **argv);
int cmd_cluster(int argc, char **argv);
int cmd_classifier(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_denoise(int argc, char **argv);
int cmd_export(int argc, char **argv);

#endif
