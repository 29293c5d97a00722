// msdiff.c: the program's main. Subcommands dispatch to their own functions.
#include <stdio.h>
#include <string.h>

#include "backend.h"
#include "error.h"

#define MSD_VERSION "0.1.0"

static void usage(FILE *out) {
    fprintf(out,
            "msdiff %s: multi-stage diffusion models (shared encoder, one decoder per noise stage)\n"
            "\n"
            "usage: msdiff COMMAND [options]\n"
            "\n"
            "commands:\n"
            "  backends    list the compute backends and whether this build and machine have them\n"
            "  version     print the version\n"
            "  help        this text\n"
            "\n"
            "Training, sampling, stage clustering and model inspection arrive in later versions.\n",
            MSD_VERSION);
}

static int cmd_backends(void) {
    const char *names[] = {"ref", "fast", "cuda"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const struct msd_backend *b = msd_backend_get(names[i]);
        printf("%-5s %s\n", names[i], b ? "available" : msd_last_error());
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("msdiff %s\n", MSD_VERSION);
        return 0;
    }
    if (!strcmp(cmd, "backends")) return cmd_backends();
    fprintf(stderr, "msdiff: unknown command '%s' (expected one of: backends, version, help)\n", cmd);
    return 2;
}
