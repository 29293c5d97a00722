// fuzz_cli.c: the command-line number parsers (common/cli/cli.c): whole-word integers with a range,
// unsigned 64-bit seeds and doubles, and cli_parse over lists of them ("--seeds 1,2", "--sigmas ...")
// and over a double that may be inf.
// The input is split at NUL bytes into words.
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/cli/cli.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    char *buf = malloc(n + 1);
    if (!buf) return 0;
    memcpy(buf, data, n);
    buf[n] = '\0';
    char *words[16];
    int argc = 0;
    for (char *p = buf; p <= buf + n && argc < 16; p += strlen(p) + 1) words[argc++] = p;

    long long ll;
    uint64_t u;
    double x;
    cli_to_ll(words[0], -1000, 1000, &ll);
    cli_to_u64(words[0], &u);
    cli_to_double(words[0], &x);

    int steps = 0;
    uint64_t seed = 0;
    double sigma = 0, bound = 0;
    bool quiet = false;
    const char *name = NULL;
    struct cli_ints ints = {0};
    struct cli_doubles reals = {0};
    struct cli_opt opts[] = {
        {"--steps", CLI_INT, &steps, "a count >= 1", false, 1, 1000000, 0, false, false},
        {"--seed", CLI_U64, &seed, "a seed", false, 0, 0, 0, false, false},
        {"--sigma", CLI_DOUBLE, &sigma, "a noise level > 0", false, 0, 0, 0, false, false},
        {"--quiet", CLI_SWITCH, &quiet, NULL, false, 0, 0, 0, false, false},
        {"--out", CLI_STR, &name, "a folder", false, 0, 0, 0, false, false},
        {"--decoders", CLI_INTS, &ints, "widths", false, 1, 4096, 4, false, false},
        {"--boundaries", CLI_DOUBLES, &reals, "sigmas", false, 0, 0, 4, false, false},
        {"--s-max", CLI_DOUBLE, &bound, "a noise level or inf", false, 0, 0, 0, true, false},
    };
    cli_parse("fuzz", argc, words, opts, (int)(sizeof opts / sizeof opts[0]));
    free(buf);
    return 0;
}
