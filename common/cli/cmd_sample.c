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
#define GRID_PAD 2 // pixels between and around the images of --grid

const char HELP_SAMPLE[] =
    "usage: msdiff sample --model FILE|RUN_DIR (--grid OUT.png | --outdir DIR) [--seeds 0-63] [flags]\n"
    "\n"
    "Draw one image per seed from a checkpoint (a run folder means its ema.safetensors). Every denoiser\n"
    "evaluation runs the whole batch at one noise level, through the decoder of that level's stage.\n"
    "Every flag, the output folders and the model's image format (1 or 3 channels, for PNG) are checked\n"
    "before sampling starts.\n"
    "\n"
    "flags:\n"
    "  --model FILE|DIR      a checkpoint, or a run folder of msdiff train (required)\n"
    "  --grid OUT.png        write all images as one grid (a new name or a regular file in an existing\n"
    "                        folder)\n"
    "  --outdir DIR          write one PNG per seed: DIR/seed000123.png (created if its parent exists)\n"
    "  --seeds LIST          seeds as comma-separated values and ranges, e.g. 0-63 or 0-7,42 (default\n"
    "                        0-63; no empty entries)\n"
    "  --sampler S           heun (default), euler, dpm++2m, dpm-solver-3\n"
    "  --steps N             schedule steps (default 18: 35 evaluations with heun); for dpm-solver-3 the\n"
    "                        number of evaluations (default 20)\n"
    "  --schedule K          edm (default), vp-time, vp-logsnr (default for dpm-solver-3)\n"
    "  --sigma-min X, --sigma-max X, --rho X   the edm schedule only (defaults 0.002, 80, 7): noise\n"
    "                        levels in [1e-30, 1e30], rho > 0, and together a strictly decreasing\n"
    "                        schedule in double precision\n"
    "  --churn X             Heun's S_churn >= 0 (default 0: the deterministic ODE); --s-min, --s-max,\n"
    "                        --s-noise as in EDM (defaults 0, inf, 1; --s-max may be inf, --s-noise\n"
    "                        in (0, 10]); heun only\n"
    "  --batch B             images per batch (default 64)\n"
    "  --cols C              grid columns (default: the square root of the count, rounded up)\n"
    "  --backend B           ref, fast or cuda (default: the fastest available)\n"
    "\n"
    "examples:\n"
    "  msdiff sample --model runs/mini-ms --seeds 0-63 --grid samples.png\n"
    "  msdiff sample --model model.safetensors --sampler dpm-solver-3 --steps 20 --outdir out/\n";

// "0-63", "0-7,42,100-103" -> seeds: comma-separated entries, each a value or an increasing range of
// decimal digits; an empty entry ("1,", ",1", "1,,2") is refused, as a typo rather than nothing. -1 after
// printing why.
static int parse_seeds(const char *text, uint64_t **seeds, int *n) {
    *seeds = xmalloc(MAX_SEEDS * sizeof **seeds);
    *n = 0;
    const char *p = text;
    for (int entry = 1;; entry++) {
        const size_t len = strcspn(p, ",");
        if (len == 0)
            return cli_error("sample", "--seeds: entry %d of '%s' is empty; expected ranges and values like 0-63 "
                             "or 0-7,42", entry, text), -1;
        char *end;
        errno = 0;
        unsigned long long a = strtoull(p, &end, 10), b = a;
        if (end == p || errno || *p < '0' || *p > '9') goto bad; // strtoull takes "-3" and " 3"
        if (*end == '-') {
            const char *q = end + 1;
            b = strtoull(q, &end, 10);
            if (end == q || errno || *q < '0' || *q > '9' || b < a) goto bad;
        }
        if (end != p + len) goto bad; // trailing text in the entry
        for (unsigned long long s = a;; s++) {
            if (*n == MAX_SEEDS) return cli_error("sample", "--seeds: more than %d seeds", MAX_SEEDS), -1;
            (*seeds)[(*n)++] = s;
            if (s == b) break; // not s <= b: b may be the largest value
        }
        if (p[len] == '\0') return 0;
        p += len + 1;
    }
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

// Noise levels on the command line: the sampler hands sigma and 1/sigma to float kernels and scales the
// latent by sigma_max, so a level must keep those, and their products with images of |x| up to about
// 10 sigma, far inside float's normal range (1.2e-38 to 3.4e38). 1e-300 would make 1/sigma infinite.
#define SIGMA_LO 1e-30
#define SIGMA_HI 1e30
#define SIGMA_RANGE "[1e-30, 1e30]"
#define S_NOISE_HI 10.0 // EDM's S_noise is 1 to 1.007; a factor beyond 10 only blows the churn noise up

static bool in_range(double v, double lo, double hi) { return v >= lo && v <= hi; }

// The schedule's and Heun's flags, each against its range and the sampler or schedule it applies to,
// before anything is loaded. 0, or CLI_USAGE after a message naming the flag.
static int check_sampler_flags(const struct cli_opt *o, int n, enum msd_sampler_kind kind,
                               enum msd_schedule_kind sched, const struct msd_schedule_opts *so, double churn,
                               double s_min, double s_max, double s_noise) {
    const char *edm_only[] = {"--sigma-min", "--sigma-max", "--rho"};
    const char *heun_only[] = {"--churn", "--s-min", "--s-max", "--s-noise"};
    for (int i = 0; i < COUNT(edm_only); i++)
        if (sched != MSD_SCHEDULE_EDM && cli_given(o, n, edm_only[i]))
            return cli_error("sample", "%s applies to --schedule edm only (the VP schedules have fixed ends)",
                             edm_only[i]);
    for (int i = 0; i < COUNT(heun_only); i++)
        if (kind != MSD_SAMPLER_HEUN && cli_given(o, n, heun_only[i]))
            return cli_error("sample", "%s applies to --sampler heun only (EDM's stochastic sampler)", heun_only[i]);
    if (!in_range(so->sigma_min, SIGMA_LO, SIGMA_HI))
        return cli_error("sample", "--sigma-min: expected a noise level in " SIGMA_RANGE ", got %g", so->sigma_min);
    if (!in_range(so->sigma_max, SIGMA_LO, SIGMA_HI) || !(so->sigma_max > so->sigma_min))
        return cli_error("sample", "--sigma-max: expected a noise level in " SIGMA_RANGE " above --sigma-min %g, "
                         "got %g", so->sigma_min, so->sigma_max);
    if (!(so->rho > 0))
        return cli_error("sample", "--rho: expected a finite exponent > 0 (EDM's 7), got %g", so->rho);
    if (!(churn >= 0))
        return cli_error("sample", "--churn: expected a finite S_churn >= 0 (0: the deterministic ODE), got %g", churn);
    if (!in_range(s_min, 0, SIGMA_HI))
        return cli_error("sample", "--s-min: expected a noise level in [0, 1e30], got %g", s_min);
    if (!(s_max >= s_min))
        return cli_error("sample", "--s-max: expected a noise level >= --s-min %g, or inf, got %g", s_min, s_max);
    if (!(s_noise > 0 && s_noise <= S_NOISE_HI))
        return cli_error("sample", "--s-noise: expected a factor in (0, %g] (EDM's 1), got %g", S_NOISE_HI, s_noise);
    return 0;
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
        {.flag = "--sigma-min", .type = CLI_DOUBLE, .dst = &so.sigma_min, .expect = "a noise level in " SIGMA_RANGE},
        {.flag = "--sigma-max", .type = CLI_DOUBLE, .dst = &so.sigma_max, .expect = "a noise level in " SIGMA_RANGE},
        {.flag = "--rho", .type = CLI_DOUBLE, .dst = &so.rho, .expect = "an exponent > 0"},
        {.flag = "--churn", .type = CLI_DOUBLE, .dst = &churn, .expect = "S_churn >= 0"},
        {.flag = "--s-min", .type = CLI_DOUBLE, .dst = &s_min, .expect = "a noise level >= 0"},
        {.flag = "--s-max", .type = CLI_DOUBLE, .dst = &s_max, .expect = "a noise level >= --s-min", .inf_ok = true},
        {.flag = "--s-noise", .type = CLI_DOUBLE, .dst = &s_noise, .expect = "a factor in (0, 10]"},
        {.flag = "--batch", .type = CLI_INT, .dst = &batch, .expect = "a batch size 1..4096", .lo = 1, .hi = 4096},
        {.flag = "--cols", .type = CLI_INT, .dst = &cols, .expect = "a column count >= 1", .lo = 1, .hi = 1000},
        {.flag = "--backend", .type = CLI_STR, .dst = &backend, .expect = "ref, fast or cuda"},
    };
    bool done;
    int rc = cmd_parse("sample", argc, argv, o, COUNT(o), &done);
    if (done) return rc;
    if (!grid && !outdir) return cli_error("sample", "give --grid OUT.png and/or --outdir DIR");
    enum msd_sampler_kind kind = MSD_SAMPLER_HEUN;
    enum msd_schedule_kind sched = MSD_SCHEDULE_EDM;
    if (parse_kind(sampler, &kind)) return CLI_USAGE;
    if (kind == MSD_SAMPLER_DPM_SOLVER_3) sched = MSD_SCHEDULE_VP_LOGSNR;
    if (schedule && parse_schedule(schedule, &sched)) return CLI_USAGE;
    if (check_sampler_flags(o, COUNT(o), kind, sched, &so, churn, s_min, s_max, s_noise)) return CLI_USAGE;
    if (!steps) steps = kind == MSD_SAMPLER_DPM_SOLVER_3 ? 20 : 18;
    // the schedule: dpm-solver-3 spends its evaluation budget over msd_dpm3_steps intervals
    const int intervals = kind == MSD_SAMPLER_DPM_SOLVER_3 ? msd_dpm3_steps(steps) : steps;
    double *sigmas = xmalloc((size_t)(intervals + 1) * sizeof *sigmas);
    if (msd_schedule(sigmas, intervals, sched, &so) < 0) {
        free(sigmas);
        if (sched != MSD_SCHEDULE_EDM)
            return cli_error("sample", "--schedule %s: %s", schedule ? schedule : "(the sampler's)", msd_last_error());
        return cli_error("sample", "--sigma-min, --sigma-max and --rho with --steps %d: %s", steps, msd_last_error());
    }
    uint64_t *seeds;
    int n_seeds;
    if (parse_seeds(seeds_text, &seeds, &n_seeds) < 0) // seeds is allocated even then
        return free(seeds), free(sigmas), CLI_USAGE;
    const struct msd_backend *be = cmd_backend("sample", backend);
    if (!be) return free(seeds), free(sigmas), CLI_USAGE;
    // where the images go, before the model is loaded and long before they exist
    if ((grid && cmd_check_out_file("--grid", grid, false) < 0) ||
        (outdir && cmd_check_out_dir("--outdir", outdir) < 0))
        return free(seeds), free(sigmas), cmd_fail();
    // the model: a checkpoint, or a run folder's EMA
    char path[4096];
    msd_run_model_path(model, path, sizeof path);
    struct msd_model m;
    if (msd_checkpoint_load(&m, path, be) < 0) return free(seeds), free(sigmas), cmd_fail();
    // what the PNG writers would refuse after sampling is refused now
    const int C = m.cfg.in_channels, R = m.cfg.img_resolution;
    if (!cols) cols = (int)ceil(sqrt((double)n_seeds));
    const long long rows = (n_seeds - 1) / cols + 1, grid_w = (long long)cols * (R + GRID_PAD) + GRID_PAD,
                    grid_h = rows * (R + GRID_PAD) + GRID_PAD;
    if (C != 1 && C != 3)
        rc = msd_set_error("model '%s' makes images of %d channels; --grid and --outdir write PNG, which holds 1 "
                           "(gray) or 3 (RGB)", path, C);
    else if (grid && (grid_w > MSD_PNG_MAX_SIDE || grid_h > MSD_PNG_MAX_SIDE))
        rc = msd_set_error("--grid '%s': %d images of %dx%d in %d columns make %lldx%lld pixels, more than %d on a "
                           "side; give fewer --seeds, another --cols, or --outdir instead", grid, n_seeds, R, R, cols,
                           grid_w, grid_h, MSD_PNG_MAX_SIDE);
    else if (outdir && mkdir(outdir, 0777) < 0 && errno != EEXIST)
        rc = msd_set_error("cannot create --outdir '%s': %s", outdir, strerror(errno));
    if (rc < 0) {
        msd_model_free(&m);
        return free(seeds), free(sigmas), cmd_fail();
    }
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
        if ((rc = cmd_plan_batch(&m, n)) < 0) break;
        msd_sample_latent(be, x, n, M, seeds + first, sigmas[0]);
        if ((evals = msd_sample(be, n, M, x, sigmas, intervals + 1, &so2, msd_batch_denoise, &d)) < 0) rc = -1;
        else be->download(images + (size_t)first * M, x, (size_t)n * M);
    }
    for (int i = 0; rc == 0 && outdir && i < n_seeds; i++) {
        snprintf(path, sizeof path, "%s/seed%06llu.png", outdir, (unsigned long long)seeds[i]);
        rc = msd_png_write(path, images + (size_t)i * M, C, R, R);
    }
    if (rc == 0 && grid) rc = msd_png_grid(grid, images, n_seeds, C, R, cols, GRID_PAD);
    if (rc == 0)
        printf("wrote %d images%s%s%s%s (%s, %d evaluations per batch)\n", n_seeds, grid ? " to " : "",
               grid ? grid : "", outdir ? (grid ? " and to " : " to ") : "", outdir ? outdir : "", sampler, evals);
    if (x) be->release(x);
    free(images), free(d.sigmas), free(seeds), free(sigmas);
    msd_model_free(&m);
    return rc == 0 ? 0 : cmd_fail();
}
