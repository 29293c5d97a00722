// cmd_info.c: `msdiff info`: a network's configuration (from a preset or a checkpoint), its parameter
// counts (total, shared, per stage) and the forward multiply-adds per image of each stage, as text or
// as one JSON object. The counts themselves are msd_model_count (common/model/model.c); this file
// holds the flags and the printing.
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/core/backend.h"
#include "common/core/error.h"
#include "common/core/util.h"
#include "common/io/checkpoint.h"
#include "common/model/config.h"
#include "common/model/model.h"
#include "commands.h"
#include "run.h"

const char HELP_INFO[] =
    "usage: msdiff info (--preset NAME | --model FILE|RUN_DIR) [--json]\n"
    "\n"
    "Print a network's configuration, its parameter counts (total, shared, and per stage: decoder s of\n"
    "a unified or multistage network, network s of separate ones) and the forward multiply-adds per\n"
    "image of each stage (every weighted conv and linear layer and the two attention matmuls).\n"
    "\n"
    "flags:\n"
    "  --preset NAME     a built-in configuration (listed below)\n"
    "  --model FILE|DIR  a checkpoint (.safetensors) written by msdiff, or a run folder of msdiff train\n"
    "                    (its ema.safetensors); the config is read from the file and the weights are\n"
    "                    loaded and checked\n"
    "  --json            print the same as one JSON object\n"
    "Exactly one of --preset and --model is required.\n"
    "\n"
    "examples:\n"
    "  msdiff info --preset cifar10-ms\n"
    "  msdiff info --model mini.safetensors --json\n";

const char *cmd_kind_name(const struct msd_config *c) {
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
    if (c->separate) printf("  %-16s%s: %d whole networks, nothing shared\n", "kind", cmd_kind_name(c), S);
    else if (S == 1) printf("  %-16s%s: one network for every noise level\n", "kind", cmd_kind_name(c));
    else printf("  %-16s%s: shared mapping and encoder, %d decoders\n", "kind", cmd_kind_name(c), S);
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
    cJSON_AddStringToObject(root, "kind", cmd_kind_name(c));
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

int cmd_info(int argc, char **argv) {
    const char *preset = NULL, *model = NULL;
    bool json = false, done;
    struct cli_opt o[] = {
        {.flag = "--preset", .type = CLI_STR, .dst = &preset, .expect = "a preset name"},
        {.flag = "--model", .type = CLI_STR, .dst = &model, .expect = "a checkpoint or run folder"},
        {.flag = "--json", .type = CLI_SWITCH, .dst = &json},
    };
    int rc = cmd_parse("info", argc, argv, o, COUNT(o), &done);
    if (done) return rc;
    if (!preset == !model) return cli_error("info", "give exactly one of --preset NAME or --model FILE|RUN_DIR");
    struct msd_model m;
    char source[4200], path[4096];
    if (preset) {
        struct msd_config cfg;
        if (msd_config_preset(&cfg, preset)) return cli_error("info", "--preset: %s", msd_last_error());
        if (msd_model_build(&m, &cfg, &msd_backend_ref)) return cmd_fail(); // counting needs only the table
        snprintf(source, sizeof source, "preset %s", preset);
    } else { // a checkpoint, or a run folder's EMA, named by the file actually read
        model = msd_run_model_path(model, path, sizeof path);
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
