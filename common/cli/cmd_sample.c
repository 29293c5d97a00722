// cmd_sample.c: `msdiff sample`: images from a checkpoint with one of the samplers, as PNG files.
// Each image is a pure function of its seed (latent and churn noise are drawn per seed), so the same
// seed gives the same image whatever the batch size, on every backend up to rounding.
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/io/checkpoint.h"
#include "commands.h"
#include "common/core/error.h"
#include "common/model/model.h"
#include "common/io/png.h"
#include "common/model/precond.h"
#include "run.h"
#include "common/model/sampler.h"
#include "common/core/util.h"

#define MAX_SEEDS 100000

const char HELP_SAMPLE[] =
    "usage: msdiff sample --model FILE|RUN_DIR (--grid OUT.png | --outdir DIR) [--seeds 0-63] [flags]\n"
    "\n"
    "Draw one image per seed from a checkpoint (a run folder means its ema.safetensors). Every denoiser\n"
    "evaluation runs the whole batch at one noise level, through the decoder of that level's stage.\n"
    "\n"
    "flags:\n"
    "  --model FILE|DIR      a checkpoint, or a run folder of msdiff train (required)\n"
    "  --grid OUT.png        write all images as one grid\n"
    "  --outdir DIR          write one PNG per seed: DIR/seed000123.png\n"
    "  --seeds LIST          seeds as ranges and values, e.g. 0-63 or 0-7,42 (default 0-63)\n"
    "  --sampler S           heun (default), euler, dpm++2m, dpm-solver-3\n"
    "  --steps N             schedule steps (default 18: 35 evaluations with heun); for dpm-solver-3 the\n"
    "                        number of evaluations (default 20)\n"
    "  --schedule K          edm (default), vp-time, vp-logsnr (default for dpm-solver-3)\n"
    "  --sigma-min X, --sigma-max X, --rho X   EDM schedule (defaults 0.002, 80, 7)\n"
    "  --churn X             Heun's S_churn (default 0: the deterministic ODE); --s-min, --s-max,\n"
    "                        --s-noise as in EDM (defaults 0, inf, 1)\n"
    "  --batch B             images per batch (default 64)\n"
    "  --cols C              grid columns (default: the square root of the count, rounded up)\n"
    "  --backend B           ref, fast or cuda (default: the fastest available)\n"
    "\n"
    "examples:\n"
    "  msdiff sample --model runs/mini-ms --seeds 0-63 --grid samples.png\n"
    "  msdiff sample --model model.safetensors --sampler dpm-solver-3 --steps 20 --outdir out/\n";

// "0-63", "0-7,42,100-103" -> seeds. -1 after printing why.
static int parse_seeds(const char *text, uint64_t **seeds, int *n) {
    *seeds = xmalloc(MAX_SEEDS * sizeof **seeds);
    *n = 0;
    const char *p = text;
    while (*p) {
        char *end;
        errno = 0;
        unsigned long long a = strtoull(p, &end, 10), b = a;
        if (end == p || errno || *p < '0' || *p > '9') goto bad; // strtoull takes "-3" and " 3"
        if (*end == '-') {
            p = end + 1;
            b = strtoull(p, &end, 10);
            if (end == p || errno || *p < '0' || *p > '9' || b < a) goto bad;
        }
        for (unsigned long long s = a;; s++) {
            if (*n == MAX_SEEDS) return cli_error("sample", "--seeds: more than %d seeds", MAX_SEEDS), -1;
            (*seeds)[(*n)++] = s;
            if (s == b) break; // not s <= b: b may be the largest value
        }
        if (*end == ',') end++;
        else if (*end) goto bad;
        p = end;
    }
    if (*n > 0) return 0;
bad:
    cli_error("sample", "--seeds: expected ranges and values like 0-63 or 0-7,42, got '%s'", text);
    return -1;
}

struct progress {
    int done_images, total_images, batch_images;
};

static void show_progress(void *ctx, int evals, int total) {
    const struct progress *p = ctx;
    const int width = 30, filled = total ? width * evals / total : width;
    fprintf(stderr, "\rsampling [%.*s%*s] images %d-%d of %d, evaluation %d/%d", filled,
            "##############################", width - filled, "", p->done_images + 1,
            p->done_images + p->batch_images, p->total_images, evals, total);
    if (evals == total) fputc(p->done_images + p->batch_images == p->total_images ? '\n' : ' ', stderr);
}

static int parse_kind(const char *s, enum msd_sampler_kind *k) {
    const char *names[] = {"euler", "heun", "dpm++2m", "dpm-solver-3"};
    const enum msd_sampler_kind kinds[] = {MSD_SAMPLER_EULER, MSD_SAMPLER_HEUN, MSD_SAMPLER_DPMPP_2M,
                                           MSD_SAMPLER_DPM_SOLVER_3};
    for (int i = 0; i < 4; i++)
        if (!strcmp(s, names[i])) return *k = kinds[i], 0;
    return cli_error("sample", "--sampler: expected heun, euler, dpm++2m or dpm-solver-3, got '%s'", s);
}

static int parse_schedule(const char *s, enum msd_schedule_kind *k) {
    if (!strcmp(s, "edm")) *k = MSD_SCHEDULE_EDM;
    else if (!strcmp(s, "vp-time")) *k = MSD_SCHEDULE_VP_TIME;
    else if (!strcmp(s, "vp-logsnr")) *k = MSD_SCHEDULE_VP_LOGSNR;
    else return cli_error("sample", "--schedule: expected edm, vp-time or vp-logsnr, got '%s'", s);
    return 0;
}

int cmd_sample(int argc, char **argv) {
    const char *model = NULL, *grid = NULL, *outdir = NULL, *seeds_text = "0-63", *sampler = "heun";
    const char *schedule = NULL, *backend = NULL;
    int steps = 0, batch = 64, cols = 0;
    struct msd_schedule_opts so = msd_schedule_opts_default();
    double churn = 0, s_min = 0, s_max = INFINITY, s_noise = 1;
    struct cli_opt o[] = {
        {.flag = "--model", .type = CLI_STR, .dst = &model, .expect = "a checkpoint or run folder", .required = true},
        {.flag = "--grid", .type = CLI_STR, .dst = &grid, .expect = "a PNG file"},
        {.flag = "--outdir", .type = CLI_STR, .dst = &outdir, .expect = "a folder"},
        {.flag = "--seeds", .type = CLI_STR, .dst = &seeds_text, .expect = "seeds like 0-63"},
        {.flag = "--sampler", .type = CLI_STR, .dst = &sampler, .expect = "heun, euler, dpm++2m, dpm-solver-3"},
        {.flag = "--steps", .type = CLI_INT, .dst = &steps, .expect = "a step count 1..10000", .lo = 1, .hi = 10000},
        {.flag = "--schedule", .type = CLI_STR, .dst = &schedule, .expect = "edm, vp-time or vp-logsnr"},
        {.flag = "--sigma-min", .type = CLI_DOUBLE, .dst = &so.sigma_min, .expect = "a noise level > 0"},
        {.flag = "--sigma-max", .type = CLI_DOUBLE, .dst = &so.sigma_max, .expect = "a noise level > sigma-min"},
        {.flag = "--rho", .type = CLI_DOUBLE, .dst = &so.rho, .expect = "a positive exponent"},
        {.flag = "--churn", .type = CLI_DOUBLE, .dst = &churn, .expect = "S_churn >= 0"},
        {.flag = "--s-min", .type = CLI_DOUBLE, .dst = &s_min, .expect = "a noise level >= 0"},
        {.flag = "--s-max", .type = CLI_DOUBLE, .dst = &s_max, .expect = "a noise level"},
        {.flag = "--s-noise", .type = CLI_DOUBLE, .dst = &s_noise, .expect = "a factor > 0"},
        {.flag = "--batch", .type = CLI_INT, .dst = &batch, .expect = "a batch size 1..4096", .lo = 1, .hi = 4096},
        {.flag = "--cols", .type = CLI_INT, .dst = &cols, .expect = "a column count >= 1", .lo = 1, .hi = 1000},
        {.flag = "--backend", .type = CLI_STR, .dst = &backend, .expect = "ref, fast or cuda"},
    };
    bool done;
    int rc = cmd_parse("sample", argc, argv, o, COUNT(o), &done);
    if (done) return rc;
    if (!grid && !outdir) return cli_error("sample", "give --grid OUT.png and/or --outdir DIR");
    if (!(churn >= 0) || !(s_noise > 0) || !(s_min >= 0))
        return cli_error("sample", "--churn and --s-min must be >= 0, --s-noise > 0");
    enum msd_sampler_kind kind = MSD_SAMPLER_HEUN;
    enum msd_schedule_kind sched = MSD_SCHEDULE_EDM;
    if (parse_kind(sampler, &kind)) return CLI_USAGE;
    if (kind == MSD_SAMPLER_DPM_SOLVER_3) sched = MSD_SCHEDULE_VP_LOGSNR;
    if (schedule && parse_schedule(schedule, &sched)) return CLI_USAGE;
    if (!steps) steps = kind == MSD_SAMPLER_DPM_SOLVER_3 ? 20 : 18;
    uint64_t *seeds;
    int n_seeds;
    if (parse_seeds(seeds_text, &seeds, &n_seeds) < 0) return free(seeds), CLI_USAGE; // allocated even then
    const struct msd_backend *be = cmd_backend("sample", backend);
    if (!be) return free(seeds), CLI_USAGE;
    // the schedule: dpm-solver-3 spends its evaluation budget over msd_dpm3_steps intervals
    const int intervals = kind == MSD_SAMPLER_DPM_SOLVER_3 ? msd_dpm3_steps(steps) : steps;
    double *sigmas = xmalloc((size_t)(intervals + 1) * sizeof *sigmas);
    if (msd_schedule(sigmas, intervals, sched, &so) < 0) {
        free(seeds), free(sigmas);
        return cli_error("sample", "%s", msd_last_error());
    }
    // the model: a checkpoint, or a run folder's EMA
    char path[4096];
    msd_run_model_path(model, path, sizeof path);
    struct msd_model m;
    if (msd_checkpoint_load(&m, path, be) < 0) return free(seeds), free(sigmas), cmd_fail();
    if (outdir && mkdir(outdir, 0777) < 0 && errno != EEXIST) {
        msd_set_error("cannot create --outdir '%s': %s", outdir, strerror(errno));
        msd_model_free(&m);
        return free(seeds), free(sigmas), cmd_fail();
    }
    const int C = m.cfg.in_channels, R = m.cfg.img_resolution;
    const size_t M = (size_t)C * R * R;
    const int B = batch < n_seeds ? batch : n_seeds;
    float *images = xmalloc((size_t)n_seeds * M * sizeof(float));
    float *x = be->alloc((size_t)B * M);
    struct msd_batch_denoiser d = {&m, xmalloc((size_t)B * sizeof(double)), 0};
    struct progress p = {0, n_seeds, 0};
    struct msd_sample_opts so2 = msd_sample_opts_default(kind, steps);
    so2.S_churn = churn, so2.S_min = s_min, so2.S_max = s_max, so2.S_noise = s_noise;
    so2.progress = show_progress, so2.progress_ctx = &p;
    rc = x ? 0 : msd_set_error("cannot allocate a batch of %d images on backend %s", B, be->name);
    int evals = 0;
    for (int first = 0; rc == 0 && first < n_seeds; first += B) {
        const int n = n_seeds - first < B ? n_seeds - first : B;
        d.n = p.batch_images = n;
        p.done_images = first;
        so2.seeds = seeds + first;
        if ((rc = msd_model_plan(&m, n, false)) < 0) break;
        msd_sample_latent(be, x, n, M, seeds + first, sigmas[0]);
        if ((evals = msd_sample(be, n, M, x, sigmas, intervals + 1, &so2, msd_batch_denoise, &d)) < 0) rc = -1;
        else be->download(images + (size_t)first * M, x, (size_t)n * M);
    }
    for (int i = 0; rc == 0 && outdir && i < n_seeds; i++) {
        snprintf(path, sizeof path, "%s/seed%06llu.png", outdir, (unsigned long long)seeds[i]);
        rc = msd_png_write(path, images + (size_t)i * M, C, R, R);
    }
    if (rc == 0 && grid) {
        if (!cols) cols = (int)ceil(sqrt((double)n_seeds));
        rc = msd_png_grid(grid, images, n_seeds, C, R, cols, 2);
    }
    if (rc == 0)
        printf("wrote %d images%s%s%s%s (%s, %d evaluations per batch)\n", n_seeds, grid ? " to " : "",
               grid ? grid : "", outdir ? (grid ? " and to " : " to ") : "", outdir ? outdir : "", sampler, evals);
    if (x) be->release(x);
    free(images), free(d.sigmas), free(seeds), free(sigmas);
    msd_model_free(&m);
    return rc == 0 ? 0 : cmd_fail();
}
