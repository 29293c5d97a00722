// msdiff.c: the program's main: the command table, each command's help text, and the commands
// (info, init, denoise, backends, version, help).
//
// Each command parses its flags with cli.h, calls the library, and maps the outcome to an exit
// status: 0 success, 1 (CLI_FAIL) when the library fails ("msdiff: <msd_last_error()>"), 2
// (CLI_USAGE) for a bad command line (one line naming the flag and what it expects). Nothing here
// computes anything the library already does; the file only wires flags to it.
#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/core/backend.h"
#include "common/io/checkpoint.h"
#include "cli.h"
#include "commands.h"
#include "common/model/config.h"
#include "common/core/error.h"
#include "common/model/model.h"
#include "common/model/precond.h"
#include "run.h"
#include "common/io/safetensors.h"
#include "common/core/util.h"

#define MSD_VERSION "0.1.0"
#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

// A library call failed: its message names the file and what is wrong.
int cmd_fail(void) {
    fflush(stdout);
    fprintf(stderr, "msdiff: %s\n", msd_last_error());
    return CLI_FAIL;
}

// ---------------------------------------------------------------------------------------------------
// Help texts

static const char HELP_INFO[] =
    "usage: msdiff info (--preset NAME | --model FILE) [--json]\n"
    "\n"
    "Print a network's configuration, its parameter counts (total, shared, and per stage: decoder s of\n"
    "a unified or multistage network, network s of separate ones) and the forward multiply-adds per\n"
    "image of each stage (every weighted conv and linear layer and the two attention matmuls).\n"
    "\n"
    "flags:\n"
    "  --preset NAME   a built-in configuration (listed below)\n"
    "  --model FILE    a checkpoint (.safetensors) written by msdiff; its config is read from the file\n"
    "                  and its weights are loaded and checked\n"
    "  --json          print the same as one JSON object\n"
    "Exactly one of --preset and --model is required.\n"
    "\n"
    "examples:\n"
    "  msdiff info --preset cifar10-ms\n"
    "  msdiff info --model mini.safetensors --json\n";

static const char HELP_INIT[] =
    "usage: msdiff init --preset NAME --out FILE [--seed S] [--decoders D0,D1,...]\n"
    "                   [--boundaries S1,S2,...] [--separate]\n"
    "\n"
    "Create a network from a preset, initialise its weights as EDM does (xavier uniform, biases 0,\n"
    "output layers scaled by 1e-5) from the counter RNG with seed S, and write it as a checkpoint.\n"
    "The same flags always give a byte-identical file.\n"
    "\n"
    "flags:\n"
    "  --preset NAME         the configuration to start from (required; listed below)\n"
    "  --out FILE            the checkpoint to write (required); written atomically\n"
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

static const char HELP_DENOISE[] =
    "usage: msdiff denoise --model FILE --input X.safetensors --sigma S --out Y.safetensors\n"
    "                      [--backend B] [--batch N]\n"
    "\n"
    "Apply a checkpoint's denoiser D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) to noisy images,\n"
    "all at the noise level sigma (the stage whose range holds sigma does the work; dropout off).\n"
    "The input file must hold a tensor \"x\" (F32, F16 or BF16) of shape (N, C, R, R), with C and R\n"
    "the model's image channels and resolution. The output holds \"D\" (F32) of the same shape, with\n"
    "metadata \"sigma\" (the value) and \"model\" (the checkpoint path).\n"
    "\n"
    "flags:\n"
    "  --model FILE     the checkpoint (required)\n"
    "  --input FILE     the safetensors file holding \"x\" (required)\n"
    "  --sigma S        the noise level, a finite number > 0 (required)\n"
    "  --out FILE       the safetensors file to write (required); written atomically\n"
    "  --backend B      ref, fast or cuda (default: the fastest this build and CPU have)\n"
    "  --batch N        images per forward pass, a positive integer (default: all at once)\n"
    "\n"
    "example:\n"
    "  msdiff denoise --model mini.safetensors --input noisy.safetensors --sigma 2.5 --out D.safetensors\n";

static const char HELP_EXPORT[] =
    "usage: msdiff export --model FILE|RUN_DIR --out FILE [--fp16]\n"
    "\n"
    "Write a checkpoint's weights (a run folder means its ema.safetensors) as a new checkpoint with the\n"
    "same tensor names and config, in float32 or, with --fp16, in IEEE half precision: half the size,\n"
    "each weight rounded to the nearest half (ties to even). Loading converts back to float32. Prints\n"
    "how far the rounding moved the weights; a weight that F16 cannot hold (NaN, Inf, or beyond 65504\n"
    "once rounded) is an error and nothing is written.\n"
    "\n"
    "flags:\n"
    "  --model FILE|DIR  the checkpoint, or a run folder (required)\n"
    "  --out FILE        the checkpoint to write (required); written atomically\n"
    "  --fp16            store F16 instead of F32\n"
    "\n"
    "example:\n"
    "  msdiff export --model runs/mini-ms --out mini-ms-fp16.safetensors --fp16\n";

// ---------------------------------------------------------------------------------------------------
// The command table

static int cmd_info(int argc, char **argv);
static int cmd_init(int argc, char **argv);
static int cmd_denoise(int argc, char **argv);
static int cmd_export(int argc, char **argv);
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
    fprintf(out, "\nexit status: 0 success, 1 a failure (a file, a checkpoint, memory), 2 a bad command line\n");
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

// Parse a command's flags; *done is set when the command should return the value at once (help
// was printed, or the line was bad).
const struct msd_backend *cmd_backend(const char *cmd, const char *name) {
    if (!name) return msd_backend_default();
    const struct msd_backend *be = msd_backend_get(name);
    if (!be) cli_error(cmd, "--backend: %s", msd_last_error());
    return be;
}

int cmd_parse(const char *cmd, int argc, char **argv, struct cli_opt *o, int n, bool *done) {
    int rc = cli_parse(cmd, argc, argv, o, n);
    *done = rc != 0;
    return rc == 1 ? print_help(find_command(cmd)) : rc;
}

// ---------------------------------------------------------------------------------------------------
// info

static const char *mode_name(const struct msd_config *c) {
    return c->separate ? "separate" : c->n_stages == 1 ? "unified" : "multistage";
}

// The sigma range of stage s in words: "sigma <= 2.5103", "2.5103 < sigma <= 7.6577", ...
static void stage_range(const struct msd_config *c, int s, char *buf, size_t n) {
    char lo[CLI_NUM_BUF], hi[CLI_NUM_BUF];
    if (c->n_stages == 1) snprintf(buf, n, "all sigma");
    else if (s == 0) snprintf(buf, n, "sigma <= %s", cli_fmt_real(c->boundaries[0], true, hi));
    else if (s == c->n_stages - 1) snprintf(buf, n, "sigma > %s", cli_fmt_real(c->boundaries[s - 1], true, lo));
    else
        snprintf(buf, n, "%s < sigma <= %s", cli_fmt_real(c->boundaries[s - 1], true, lo),
                 cli_fmt_real(c->boundaries[s], true, hi));
}

static void print_ints(const char *label, const int *v, int n, const char *suffix) {
    printf("  %-16s", label);
    for (int i = 0; i < n; i++) printf("%s%d", i ? ", " : "", v[i]);
    printf("%s\n", suffix);
}

static void print_info_text(const char *source, const struct msd_config *c, const struct msd_counts *k) {
    char a[CLI_NUM_BUF], b[CLI_NUM_BUF], range[96];
    const int S = c->n_stages;
    printf("%s\n", source);
    if (c->separate) printf("  %-16s%s: %d whole networks, nothing shared\n", "kind", mode_name(c), S);
    else if (S == 1) printf("  %-16s%s: one network for every noise level\n", "kind", mode_name(c));
    else printf("  %-16s%s: shared mapping and encoder, %d decoders\n", "kind", mode_name(c), S);
    printf("  %-16s%dx%d, %d image channel%s\n", "resolution", c->img_resolution, c->img_resolution,
           c->in_channels, c->in_channels == 1 ? "" : "s");
    printf("  %-16s%d\n", "encoder width", c->model_channels);
    print_ints("decoder widths", c->dec_channels, S, S > 1 ? " (stage 0 = lowest noise first)" : "");
    print_ints("channel_mult", c->channel_mult, c->n_levels, "");
    printf("  %-16s%d per level (%d in each decoder level)\n", "num_blocks", c->num_blocks, c->num_blocks + 1);
    printf("  %-16s", "attention at");
    for (int i = 0; i < c->n_attn; i++) printf("%s%dx%d", i ? ", " : "", c->attn_resolutions[i], c->attn_resolutions[i]);
    printf("%s\n", c->n_attn ? "" : "none");
    printf("  %-16s%d (channel_mult_emb %d)\n", "embedding width", c->model_channels * c->channel_mult_emb,
           c->channel_mult_emb);
    printf("  %-16s%s\n", "dropout", cli_fmt_real(c->dropout, true, a));
    printf("  %-16smin(%d, C/%d) groups\n", "groupnorm", c->gn_groups, c->gn_min_channels);
    printf("  %-16s%s, sigma_data %s\n", "precond", c->precond == MSD_PRECOND_VP ? "VP" : "EDM",
           cli_fmt_real(c->sigma_data, true, a));
    printf("  %-16s", "boundaries");
    if (S == 1) printf("none (one stage)");
    for (int s = 0; s + 1 < S; s++) printf("%s%s", s ? ", " : "sigma ", cli_fmt_real(c->boundaries[s], true, a));
    printf("\n\n%-18s%15s total\n", "parameters", cli_fmt_count(k->total, a));
    printf("  %-16s%15s (%s)\n", "shared", cli_fmt_count(k->shared, a),
           c->separate ? "separate networks share nothing" : "mapping and encoder");
    for (int s = 0; s < S; s++) {
        char label[32];
        snprintf(label, sizeof label, "%s %d", c->separate ? "network" : "decoder", s);
        printf("  %-16s%15s (stage %d runs %s parameters)\n", label, cli_fmt_count(k->stage[s], a), s,
               cli_fmt_count(k->shared + k->stage[s], b));
    }
    printf("\nforward multiply-adds per image\n");
    for (int s = 0; s < S; s++) {
        char label[32];
        snprintf(label, sizeof label, "stage %d", s);
        stage_range(c, s, range, sizeof range);
        printf("  %-16s%15s MAC (%.2f GMAC)   %s\n", label, cli_fmt_count(k->macs[s], a),
               k->macs[s] / 1e9, range);
    }
}

static void print_info_json(const char *key, const char *value, const struct msd_model *m,
                            const struct msd_counts *k) {
    const struct msd_config *c = &m->cfg;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, key, value);
    cJSON_AddStringToObject(root, "kind", mode_name(c));
    char *text = msd_config_to_json(c);
    cJSON *cfg = cJSON_Parse(text);
    free(text);
    CHECK(cfg != NULL, "msd_config_to_json wrote JSON that does not parse");
    cJSON_AddItemToObject(root, "config", cfg);
    cJSON *p = cJSON_AddObjectToObject(root, "parameters");
    cJSON_AddNumberToObject(p, "total", (double)k->total);
    cJSON_AddNumberToObject(p, "shared", (double)k->shared);
    cJSON *st = cJSON_AddArrayToObject(p, "stages");
    cJSON *macs = cJSON_AddArrayToObject(root, "macs_per_image");
    for (int s = 0; s < c->n_stages; s++) {
        cJSON_AddItemToArray(st, cJSON_CreateNumber((double)k->stage[s]));
        cJSON_AddItemToArray(macs, cJSON_CreateNumber((double)k->macs[s])); // exact below 2^53
    }
    char *out = cJSON_Print(root);
    CHECK(out != NULL, "out of memory printing JSON");
    printf("%s\n", out);
    cJSON_free(out);
    cJSON_Delete(root);
}

static int cmd_info(int argc, char **argv) {
    const char *preset = NULL, *model = NULL;
    bool json = false, done;
    struct cli_opt o[] = {
        {.flag = "--preset", .type = CLI_STR, .dst = &preset, .expect = "a preset name"},
        {.flag = "--model", .type = CLI_STR, .dst = &model, .expect = "a checkpoint file"},
        {.flag = "--json", .type = CLI_SWITCH, .dst = &json},
    };
    int rc = cmd_parse("info", argc, argv, o, COUNT(o), &done);
    if (done) return rc;
    if (!preset == !model) return cli_error("info", "give exactly one of --preset NAME or --model FILE");
    struct msd_model m;
    char source[1100];
    if (preset) {
        struct msd_config cfg;
        if (msd_config_preset(&cfg, preset)) return cli_error("info", "--preset: %s", msd_last_error());
        if (msd_model_create(&m, &cfg, &msd_backend_ref)) return cmd_fail();
        snprintf(source, sizeof source, "preset %s", preset);
    } else {
        if (msd_checkpoint_load(&m, model, &msd_backend_ref)) return cmd_fail();
        snprintf(source, sizeof source, "checkpoint %s", model);
    }
    struct msd_counts k;
    msd_model_count(&m, &k);
    if (json) print_info_json(preset ? "preset" : "checkpoint", preset ? preset : model, &m, &k);
    else print_info_text(source, &m.cfg, &k);
    msd_model_free(&m);
    return 0;
}

// ---------------------------------------------------------------------------------------------------
// init

static int cmd_init(int argc, char **argv) {
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
           mode_name(&cfg), cfg.n_stages, cfg.n_stages == 1 ? "" : "s", seed_text,
           cli_fmt_count(k.total, count), mb);
    return 0;
}

// ---------------------------------------------------------------------------------------------------
// export

static int cmd_export(int argc, char **argv) {
    const char *model = NULL, *out = NULL;
    bool fp16 = false, done;
    struct cli_opt o[] = {
        {.flag = "--model", .type = CLI_STR, .dst = &model, .expect = "a checkpoint file or run folder",
         .required = true},
        {.flag = "--out", .type = CLI_STR, .dst = &out, .expect = "the checkpoint file to write", .required = true},
        {.flag = "--fp16", .type = CLI_SWITCH, .dst = &fp16},
    };
    int rc = cmd_parse("export", argc, argv, o, COUNT(o), &done);
    if (done) return rc;
    char path[4096];
    struct stat sb;
    msd_run_model_path(model, path, sizeof path);
    struct msd_model m;
    if (msd_checkpoint_load(&m, path, &msd_backend_ref)) return cmd_fail();
    const char *keys[] = {"source"}, *values[] = {path};
    rc = msd_checkpoint_save_as(&m, out, fp16, keys, values, 1);
    if (rc == 0) {
        // What the rounding did: the largest relative change of a weight in F16's normal range, and how
        // many weights fell below it (stored as subnormals with an absolute step of 2^-24, or as 0).
        double worst = 0;
        long small = 0, zeroed = 0;
        const float *w = m.w; // the ref backend's memory is host memory
        for (size_t i = 0; fp16 && i < m.n_floats; i++) {
            uint16_t b;
            (void)msd_f32_to_f16(w[i], &b); // cannot fail: the write succeeded
            const float a = fabsf(w[i]);
            if (a >= 0x1p-14f) {
                double rel = fabs((double)fabsf(msd_f16_to_f32(b)) - a) / a;
                if (rel > worst) worst = rel;
            } else if (a > 0) {
                small++;
                zeroed += (b & 0x7fff) == 0;
            }
        }
        double mb = stat(out, &sb) == 0 ? sb.st_size / 1e6 : 0;
        char count[CLI_NUM_BUF];
        printf("wrote %s: %s parameters of %s as %s, %.2f MB\n", out, cli_fmt_count((uint64_t)m.n_floats, count),
               path, fp16 ? "F16" : "F32", mb);
        if (fp16)
            printf("rounding: largest relative change %.3g (weights >= 2^-14); %ld weights below 2^-14 kept "
                   "to 2^-24 steps, %ld of them now 0\n", worst, small, zeroed);
    }
    msd_model_free(&m);
    return rc ? cmd_fail() : 0;
}

// ---------------------------------------------------------------------------------------------------
// denoise

// Run the denoiser over x in chunks of at most B images; D receives the results. 0 or -1.
static int denoise_chunks(struct msd_model *m, float *D, const float *x, int N, int B, double sigma) {
    const struct msd_backend *be = m->be;
    const size_t M = (size_t)m->cfg.in_channels * m->cfg.img_resolution * m->cfg.img_resolution;
    float *dx = be->alloc((size_t)B * M), *dD = be->alloc((size_t)B * M);
    double *sig = xmalloc((size_t)B * sizeof *sig);
    int rc = (dx && dD) ? 0 : msd_set_error("cannot allocate %.1f MB on backend %s for a batch of %d images",
                                             2.0 * B * M * 4 / 1e6, be->name, B);
    for (int i = 0; i < B; i++) sig[i] = sigma;
    const struct msd_forward_opts opts = {.train = false, .dropout_seed = 0};
    const int stage = msd_config_stage_of(&m->cfg, sigma); // every image is at sigma
    for (int start = 0; rc == 0 && start < N; start += B) {
        const int n = N - start < B ? N - start : B;
        if ((rc = msd_model_plan(m, n, false))) break; // re-plans only when n changes
        be->upload(dx, x + (size_t)start * M, (size_t)n * M);
        if ((rc = msd_denoise_forward(m, stage, dD, dx, sig, &opts))) break;
        be->download(D + (size_t)start * M, dD, (size_t)n * M);
    }
    if (dx) be->release(dx);
    if (dD) be->release(dD);
    free(sig);
    return rc;
}

static int cmd_denoise(int argc, char **argv) {
    const char *model = NULL, *input = NULL, *out = NULL, *backend = NULL;
    double sigma = 0;
    int batch = 0;
    bool done;
    struct cli_opt o[] = {
        {.flag = "--model", .type = CLI_STR, .dst = &model, .expect = "a checkpoint file", .required = true},
        {.flag = "--input", .type = CLI_STR, .dst = &input, .expect = "a safetensors file holding \"x\"",
         .required = true},
        {.flag = "--sigma", .type = CLI_DOUBLE, .dst = &sigma, .expect = "a finite noise level > 0",
         .required = true},
        {.flag = "--out", .type = CLI_STR, .dst = &out, .expect = "the safetensors file to write",
         .required = true},
        {.flag = "--backend", .type = CLI_STR, .dst = &backend, .expect = "ref, fast or cuda"},
        {.flag = "--batch", .type = CLI_INT, .dst = &batch, .lo = 1, .hi = INT_MAX,
         .expect = "a positive number of images per pass"},
    };
    int rc = cmd_parse("denoise", argc, argv, o, COUNT(o), &done);
    if (done) return rc;
    if (!(isfinite(sigma) && sigma > 0))
        return cli_error("denoise", "--sigma: expected a finite noise level > 0, got %g", sigma);
    const struct msd_backend *be = cmd_backend("denoise", backend);
    if (!be) return CLI_USAGE;

    struct msd_model m;
    if (msd_checkpoint_load(&m, model, be)) return cmd_fail();
    const struct msd_config *c = &m.cfg;
    struct msd_st_file f;
    if (msd_st_read(&f, input)) {
        msd_model_free(&m);
        return cmd_fail();
    }
    // x must be (N, C, R, R) with the model's C and R
    const struct msd_st_tensor *t = msd_st_find(&f, "x");
    const int C = c->in_channels, R = c->img_resolution;
    if (!t) msd_set_error("input '%s' has no tensor \"x\" (expected \"x\" of shape [N, %d, %d, %d] for model '%s')",
                          input, C, R, R, model);
    else if (t->ndim != 4 || t->shape[1] != C || t->shape[2] != R || t->shape[3] != R || t->shape[0] < 1 ||
             t->shape[0] > INT_MAX) {
        char got[8 + MSD_ST_MAX_DIMS * 24] = "["; // room for every dimension at 20 digits
        for (int d = 0; d < t->ndim; d++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? ", " : "", (long long)t->shape[d]);
        snprintf(got + strlen(got), sizeof got - strlen(got), "]");
        msd_set_error("input '%s': tensor \"x\" has shape %s, expected [N, %d, %d, %d] with N >= 1 (N images of "
                      "%d channel%s, %dx%d, as model '%s' takes)", input, got, C, R, R, C, C == 1 ? "" : "s", R, R,
                      model);
        t = NULL;
    }
    if (!t) {
        msd_st_free(&f);
        msd_model_free(&m);
        return cmd_fail();
    }
    const int N = (int)t->shape[0];
    const int64_t shape[4] = {N, C, R, R};
    const size_t total = (size_t)N * C * R * R;
    float *x = xmalloc(total * sizeof(float)), *D = xmalloc(total * sizeof(float));
    rc = msd_st_get_f32(&f, "x", 4, shape, x);
    msd_st_free(&f);
    const int B = batch > 0 && batch < N ? batch : N;
    if (rc == 0) rc = denoise_chunks(&m, D, x, N, B, sigma);
    const int stage = msd_config_stage_of(c, sigma), n_stages = c->n_stages;
    msd_model_free(&m);
    if (rc == 0) {
        char sigma_text[CLI_NUM_BUF];
        cli_fmt_real(sigma, false, sigma_text);
        const struct msd_st_entry e = {.name = "D", .ndim = 4, .shape = {N, C, R, R}, .data = D};
        const char *keys[] = {"sigma", "model"}, *values[] = {sigma_text, model};
        rc = msd_st_write(out, &e, 1, keys, values, 2);
        if (rc == 0)
            printf("wrote %s: D of shape [%d, %d, %d, %d] at sigma %s (stage %d of %d), model %s, backend %s, "
                   "batch %d\n", out, N, C, R, R, sigma_text, stage, n_stages, model, be->name, B);
    }
    free(x);
    free(D);
    return rc ? cmd_fail() : 0;
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
