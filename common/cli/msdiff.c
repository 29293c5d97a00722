// msdiff.c: the program's main: the command table, the usage and help printing, the services every
// command uses (cmd_parse, cmd_fail, cmd_backend, the checks of output paths), and the three commands
// that are part of the table itself (backends, version, help: a few lines each, and help needs the
// table). Each other command is its own file, common/cli/cmd_<name>.c, declared in commands.h.
//
// Each command parses its flags with cli.h, calls the library, and maps the outcome to an exit
// status: 0 success, 1 (CLI_FAIL) when the library fails ("msdiff: <msd_last_error()>"), 2
// (CLI_USAGE) for a bad command line (one line naming the flag and what it expects). Nothing here
// computes anything the library already does; the program only wires flags to it.
#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/core/backend.h"
#include "common/core/error.h"
#include "common/core/util.h"
#include "common/model/config.h"
#include "common/model/model.h"
#include "cli.h"
#include "commands.h"

#define MSD_VERSION "0.1.0"

// ---------------------------------------------------------------------------------------------------
// The command table

static int cmd_backends(int argc, char **argv);
static int cmd_version(int argc, char **argv);
static int cmd_help(int argc, char **argv);

struct command {
    const char *name, *summary, *help;
    bool lists_presets; // the help ends with the preset names
    int (*run)(int argc, char **argv);
};

static const struct command COMMANDS[] = {
    {"info", "print a network's config, parameter counts and multiply-adds per stage", HELP_INFO, true,
     cmd_info},
    {"init", "create a freshly initialised checkpoint from a preset", HELP_INIT, true, cmd_init},
    {"train", "train a (multistage) diffusion model on a data set, in a run folder", HELP_TRAIN, true,
     cmd_train},
    {"sample", "draw images from a checkpoint with heun, euler, dpm++2m or dpm-solver-3", HELP_SAMPLE, false,
     cmd_sample},
    {"cluster", "divide the noise range into stages (optimal denoiser, snr, timestep, similarity)",
     HELP_CLUSTER, false, cmd_cluster},
    {"classifier", "train or test the image classifier whose features msdiff eval compares", HELP_CLASSIFIER,
     false, cmd_classifier},
    {"eval", "sample quality: the Frechet distance of classifier features, and the held-out loss per stage",
     HELP_EVAL, false, cmd_eval},
    {"denoise", "apply a checkpoint's denoiser D(x; sigma) to images in a safetensors file", HELP_DENOISE,
     false, cmd_denoise},
    {"export", "write a checkpoint again, optionally in half precision (--fp16)", HELP_EXPORT, false,
     cmd_export},
    {"backends", "list the compute backends and whether this build and machine have them",
     "usage: msdiff backends\n\nList the compute backends (ref, fast, cuda) and whether this build and "
     "machine have them.\nNo flags.\n\nexample:\n  msdiff backends\n", false, cmd_backends},
    {"version", "print the version",
     "usage: msdiff version\n\nPrint the program's version. No flags.\n\nexample:\n  msdiff version\n", false,
     cmd_version},
    {"help", "list the commands, or print one command's help (msdiff help COMMAND)",
     "usage: msdiff help [COMMAND]\n\nWithout a command, list the commands; with one, print its flags, "
     "defaults and an\nexample (the same as msdiff COMMAND --help).\n\nexample:\n  msdiff help denoise\n",
     false, cmd_help},
};

static const struct command *find_command(const char *name) {
    for (int i = 0; i < COUNT(COMMANDS); i++)
        if (!strcmp(COMMANDS[i].name, name)) return &COMMANDS[i];
    return NULL;
}

static void usage(FILE *out) {
    fprintf(out,
            "msdiff %s: multi-stage diffusion models (shared encoder, one decoder per noise stage)\n"
            "\n"
            "usage: msdiff COMMAND [flags]   (msdiff help COMMAND shows a command's flags)\n"
            "\n"
            "commands:\n",
            MSD_VERSION);
    for (int i = 0; i < COUNT(COMMANDS); i++) fprintf(out, "  %-10s %s\n", COMMANDS[i].name, COMMANDS[i].summary);
    fprintf(out, "\nexit status: 0 success, 1 a failure (a file, a checkpoint, memory), 2 a bad command line;\n"
                 "train: 130 or 143 when SIGINT or SIGTERM stopped it (after saving)\n");
}

static int print_help(const struct command *c) {
    fputs(c->help, stdout);
    if (c->lists_presets) {
        printf("\npresets:");
        for (int i = 0; msd_preset_names[i]; i++) printf(" %s", msd_preset_names[i]);
        printf(" (msdiff info --preset NAME describes each)\n");
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------------
// What every command calls (declared in commands.h)

// A library call failed: its message names the file and what is wrong.
int cmd_fail(void) {
    fflush(stdout);
    fprintf(stderr, "msdiff: %s\n", msd_last_error());
    return CLI_FAIL;
}

// --backend NAME, or the fastest backend this build and CPU have when the flag is absent.
const struct msd_backend *cmd_backend(const char *cmd, const char *name) {
    if (!name) return msd_backend_default();
    const struct msd_backend *be = msd_backend_get(name);
    if (!be) cli_error(cmd, "--backend: %s", msd_last_error());
    return be;
}

int cmd_plan_batch(struct msd_model *m, int n) {
    if (msd_model_plan(m, n, false) == 0) return 0;
    return msd_set_error("%s: try a smaller --batch", msd_last_error());
}

// Parse a command's flags; *done is set when the command should return the value at once (help
// was printed, or the line was bad).
int cmd_parse(const char *cmd, int argc, char **argv, struct cli_opt *o, int n, bool *done) {
    int rc = cli_parse(cmd, argc, argv, o, n);
    *done = rc != 0;
    return rc == 1 ? print_help(find_command(cmd)) : rc;
}

// A folder that an output goes into: it exists, is a folder and can be written. `what` is the path
// the flag gave, for the message. 0 or -1 with a message.
static int writable_folder(const char *flag, const char *what, const char *folder) {
    struct stat st;
    if (stat(folder, &st) != 0)
        return msd_set_error("%s '%s': the folder '%s' does not exist (%s)", flag, what, folder, strerror(errno));
    if (!S_ISDIR(st.st_mode)) return msd_set_error("%s '%s': '%s' is not a folder", flag, what, folder);
    if (access(folder, W_OK) != 0)
        return msd_set_error("%s '%s': the folder '%s' is not writable (%s)", flag, what, folder, strerror(errno));
    return 0;
}

int cmd_check_out_file(const char *flag, const char *path, bool devices_ok) {
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return msd_set_error("%s '%s' is a folder; expected a file name", flag, path);
    // lstat: what a rename would replace is the entry itself, and /dev/stdout is a symbolic link that
    // may lead to a regular file
    if (lstat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
        if (!devices_ok)
            return msd_set_error("%s '%s' is a device, pipe or symbolic link; expected a regular file or a new "
                                 "name (the file is written beside it and renamed into place, which would replace "
                                 "the entry itself)", flag, path);
        if (access(path, W_OK) != 0) return msd_set_error("%s '%s' is not writable (%s)", flag, path, strerror(errno));
        return 0;
    }
    char *copy = xstrdup(path);
    int rc = writable_folder(flag, path, dirname(copy));
    free(copy);
    return rc;
}

int cmd_check_out_dir(const char *flag, const char *dir) {
    struct stat st;
    if (stat(dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode)) return msd_set_error("%s '%s' exists and is not a folder", flag, dir);
        return writable_folder(flag, dir, dir);
    }
    if (errno != ENOENT) return msd_set_error("%s '%s': %s", flag, dir, strerror(errno));
    char *copy = xstrdup(dir);
    int rc = writable_folder(flag, dir, dirname(copy)); // where it will be created
    free(copy);
    return rc;
}

// ---------------------------------------------------------------------------------------------------
// backends, version, help

static int cmd_backends(int argc, char **argv) {
    bool done;
    int rc = cmd_parse("backends", argc, argv, NULL, 0, &done);
    if (done) return rc;
    const char *names[] = {"ref", "fast", "cuda"};
    for (int i = 0; i < COUNT(names); i++) {
        const struct msd_backend *b = msd_backend_get(names[i]);
        printf("%-5s %s\n", names[i], b ? "available" : msd_last_error());
    }
    return 0;
}

static int cmd_version(int argc, char **argv) {
    bool done;
    int rc = cmd_parse("version", argc, argv, NULL, 0, &done);
    if (done) return rc;
    printf("msdiff %s\n", MSD_VERSION);
    return 0;
}

static int cmd_help(int argc, char **argv) {
    if (argc == 0) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[0], "-h") || !strcmp(argv[0], "--help")) return print_help(find_command("help"));
    const struct command *c = find_command(argv[0]);
    if (argc > 1 || !c) {
        fprintf(stderr, "msdiff help: %s '%s' (expected one command:", c ? "unexpected argument" : "unknown command",
                argv[c ? 1 : 0]);
        for (int i = 0; i < COUNT(COMMANDS); i++) fprintf(stderr, " %s", COMMANDS[i].name);
        fprintf(stderr, ")\n");
        return CLI_USAGE;
    }
    return print_help(c);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return CLI_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h")) return cmd_help(0, NULL);
    if (!strcmp(cmd, "--version")) return cmd_version(0, NULL);
    const struct command *c = find_command(cmd);
    if (!c) {
        fprintf(stderr, "msdiff: unknown command '%s' (expected one of:", cmd);
        for (int i = 0; i < COUNT(COMMANDS); i++) fprintf(stderr, " %s", COMMANDS[i].name);
        fprintf(stderr, "; msdiff help lists them)\n");
        return CLI_USAGE;
    }
    return c->run(argc - 2, argv + 2);
}
