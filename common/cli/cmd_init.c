// cmd_init.c: `msdiff init`: a freshly initialised checkpoint from a preset, with the decoder widths,
// the stage boundaries and separate networks optionally changed by flags. The weights are EDM's
// initialisation from the counter RNG (msd_model_init_weights), so the same flags give the same file.
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "common/core/backend.h"
#include "common/core/error.h"
#include "common/io/checkpoint.h"
#include "common/model/config.h"
#include "common/model/model.h"
#include "commands.h"

const char HELP_INIT[] =
    "usage: msdiff init --preset NAME --out FILE [--seed S] [--decoders D0,D1,...]\n"
    "                   [--boundaries S1,S2,...] [--separate]\n"
    "\n"
    "Create a network from a preset, initialise its weights as EDM does (xavier uniform, biases 0,\n"
    "output layers scaled by 1e-5) from the counter RNG with seed S, and write it as a checkpoint.\n"
    "The same flags always give a byte-identical file.\n"
    "\n"
    "flags:\n"
    "  --preset NAME         the configuration to start from (required; listed below)\n"
    "  --out FILE            the checkpoint to write (required): a new name or a regular file in an\n"
    "                        existing folder; written atomically\n"
    "  --seed S              the RNG seed, a non-negative integer (default 0)\n"
    "  --decoders D0,...     decoder base widths, one per stage, low noise first; their number sets\n"
    "                        the number of stages (default: the preset's)\n"
    "  --boundaries S1,...   the sigma boundaries between stages, increasing, one fewer than the\n"
    "                        decoders (default: the preset's; needed when --decoders changes the\n"
    "                        number of stages)\n"
    "  --separate            one whole network per stage (mapping, encoder, decoder), nothing shared\n"
    "\n"
    "examples:\n"
    "  msdiff init --preset mini-ms --seed 1 --out mini-ms.safetensors\n"
    "  msdiff init --preset mini --decoders 48,32 --boundaries 3 --out two-stage.safetensors\n";

int cmd_init(int argc, char **argv) {
    const char *preset = NULL, *out = NULL;
    uint64_t seed = 0;
    struct cli_ints decs = {0};
    struct cli_doubles bounds = {0};
    bool separate = false, done;
    struct cli_opt o[] = {
        {.flag = "--preset", .type = CLI_STR, .dst = &preset, .expect = "a preset name", .required = true},
        {.flag = "--out", .type = CLI_STR, .dst = &out, .expect = "the checkpoint file to write",
         .required = true},
        {.flag = "--seed", .type = CLI_U64, .dst = &seed, .expect = "a non-negative integer seed"},
        {.flag = "--decoders", .type = CLI_INTS, .dst = &decs, .lo = 1, .hi = INT_MAX / 64,
         .max = MSD_MAX_STAGES, .expect = "comma-separated decoder widths, one per stage"},
        {.flag = "--boundaries", .type = CLI_DOUBLES, .dst = &bounds, .max = MSD_MAX_STAGES - 1,
         .expect = "comma-separated increasing sigma values, one fewer than the stages"},
        {.flag = "--separate", .type = CLI_SWITCH, .dst = &separate},
    };
    int rc = cmd_parse("init", argc, argv, o, COUNT(o), &done);
    if (done) return rc;
    struct msd_config cfg;
    if (msd_config_preset(&cfg, preset)) return cli_error("init", "--preset: %s", msd_last_error());
    if (decs.n) {
        if (decs.n != cfg.n_stages && !bounds.n && decs.n > 1)
            return cli_error("init", "--decoders gives %d stages but preset %s has %d: give --boundaries "
                             "with %d increasing sigma values", decs.n, preset, cfg.n_stages, decs.n - 1);
        // unused slots stay 0, as in a preset; the same stage count keeps the preset's boundaries
        memset(cfg.dec_channels, 0, sizeof cfg.dec_channels);
        for (int s = 0; s < decs.n; s++) cfg.dec_channels[s] = decs.v[s];
        if (decs.n != cfg.n_stages) memset(cfg.boundaries, 0, sizeof cfg.boundaries);
        cfg.n_stages = decs.n;
    }
    if (bounds.n) {
        if (bounds.n != cfg.n_stages - 1)
            return cli_error("init", "--boundaries has %d value%s, expected %d: one fewer than the %d stage%s%s",
                             bounds.n, bounds.n == 1 ? "" : "s", cfg.n_stages - 1, cfg.n_stages,
                             cfg.n_stages == 1 ? "" : "s", decs.n ? " of --decoders" : " of the preset");
        for (int s = 0; s < bounds.n; s++) {
            if (!(isfinite(bounds.v[s]) && bounds.v[s] > 0 && bounds.v[s] <= 1e30))
                return cli_error("init", "--boundaries: entry %d is %g; expected a finite sigma > 0 (at most 1e30)",
                                 s + 1, bounds.v[s]);
            cfg.boundaries[s] = (float)bounds.v[s];
        }
    }
    cfg.separate = cfg.separate || separate;
    if (msd_config_validate(&cfg))
        return cli_error("init", "preset %s with these flags is not a valid network: %s", preset, msd_last_error());

    if (cmd_check_out_file("--out", out, false) < 0) return cmd_fail();
    struct msd_model m;
    if (msd_model_create(&m, &cfg, &msd_backend_ref)) return cmd_fail();
    msd_model_init_weights(&m, seed);
    char seed_text[CLI_NUM_BUF];
    snprintf(seed_text, sizeof seed_text, "%llu", (unsigned long long)seed);
    const char *keys[] = {"preset", "seed"}, *values[] = {preset, seed_text};
    rc = msd_checkpoint_save(&m, out, keys, values, 2);
    struct msd_counts k;
    msd_model_count(&m, &k);
    msd_model_free(&m);
    if (rc) return cmd_fail();
    struct stat st;
    double mb = stat(out, &st) == 0 ? st.st_size / 1e6 : 0;
    char count[CLI_NUM_BUF];
    printf("wrote %s: preset %s, %s with %d stage%s, seed %s, %s parameters, %.2f MB\n", out, preset,
           cmd_kind_name(&cfg), cfg.n_stages, cfg.n_stages == 1 ? "" : "s", seed_text,
           cli_fmt_count(k.total, count), mb);
    return 0;
}
