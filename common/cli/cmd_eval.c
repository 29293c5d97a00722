// cmd_eval.c: `msdiff eval`: sample quality as a Frechet distance between the classifier's features
// of generated images and of held-out images (common/eval/fd.h, common/eval/classifier.h), and the held-out
// denoising loss per stage (msd_eval_loss).
//
// The generated set is either sampled here (Heun, the EDM schedule, one image per seed 0..n-1, so the
// same command gives the same images on any backend up to rounding) or read from a folder of PNGs.
// The reference set is the held-out split of --data (fmnist -> fmnist:test), or --ref.
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "common/io/checkpoint.h"
#include "common/eval/classifier.h"
#include "commands.h"
#include "common/io/data.h"
#include "common/core/error.h"
#include "common/eval/fd.h"
#include "common/model/model.h"
#include "common/model/precond.h"
#include "run.h"
#include "common/model/sampler.h"
#include "common/model/train.h"
#include "common/core/util.h"

#define LOSS_SIGMAS 3 // noise levels per stage for the held-out loss
#define DEFAULT_CLASSIFIER "models/classifier-fmnist.safetensors" // beside the program, as make leaves it

const char HELP_EVAL[] =
    "usage: msdiff eval (--model FILE|RUN_DIR | --images DIR) [--data fmnist] [--n 10000] [flags]\n"
    "\n"
    "Sample quality of a model: the Frechet distance (FD) between Gaussian fits of the classifier's\n"
    "penultimate features of generated images and of held-out images, and the held-out denoising loss\n"
    "of each stage. Lower is better for both.\n"
    "\n"
    "flags:\n"
    "  --model FILE|DIR      a checkpoint or a run folder (its ema.safetensors): sample --n images with\n"
    "                        Heun (seeds 0..n-1) and measure the held-out loss\n"
    "  --images SPEC         measure these images instead of sampling (no loss then): a folder of PNG\n"
    "                        files, or any data spec (fmnist: the training images, a baseline)\n"
    "  --data SPEC           the data set the model learnt (default fmnist); the reference images are\n"
    "                        its held-out split (fmnist -> fmnist:test, cifar10:DIR -> cifar10:test:DIR)\n"
    "  --ref SPEC            another reference set (any data spec, e.g. a folder of PNGs)\n"
    "  --n N                 images to generate or read, and reference images to use (default 10000)\n"
    "  --classifier FILE     the feature network (default: models/classifier-fmnist.safetensors in the\n"
    "                        folder of the msdiff program, else in the current folder)\n"
    "  --steps N             Heun steps (default 18: 35 evaluations)\n"
    "  --batch B             images per batch when sampling (default 256)\n"
    "  --loss-images N       held-out images for the loss (default 2000; 0 skips the loss)\n"
    "  --json                print one JSON object instead of text\n"
    "  --backend B           ref, fast or cuda (default: the fastest available)\n"
    "\n"
    "examples:\n"
    "  msdiff eval --model runs/mini-ms --data fmnist --n 10000\n"
    "  msdiff eval --images samples/ --data fmnist --json\n";

// The held-out split of a training data spec: "fmnist" -> "fmnist:test", "fmnist:DIR" ->
// "fmnist:test:DIR", "cifar10:DIR" -> "cifar10:test:DIR"; a spec that is already a test split, or
// a folder, stays as it is.
static void held_out_spec(const char *data, char *out, size_t n) {
    if (!strcmp(data, "fmnist")) snprintf(out, n, "fmnist:test");
    else if (!strncmp(data, "fmnist:", 7) && strncmp(data, "fmnist:test", 11))
        snprintf(out, n, "fmnist:test:%s", data + 7);
    else if (!strncmp(data, "cifar10:", 8) && strncmp(data, "cifar10:test", 12))
        snprintf(out, n, "cifar10:test:%s", data + 8);
    else snprintf(out, n, "%s", data);
}

// The default classifier: DEFAULT_CLASSIFIER in the folder of the running program (/proc/self/exe;
// make builds msdiff at the repository root, beside models/), so that eval works from any folder; else
// the same path from the current folder. Into buf (n bytes); 0, or -1 with a message saying where it
// looked when it is in neither place.
static int default_classifier(char *buf, size_t n) {
    struct stat st;
    char exe[4096];
    const ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    char *slash = len > 0 ? (exe[len] = '\0', strrchr(exe, '/')) : NULL;
    if (slash) {
        *slash = '\0';
        snprintf(buf, n, "%s/%s", exe, DEFAULT_CLASSIFIER);
        if (stat(buf, &st) == 0) return 0;
    }
    snprintf(buf, n, "%s", DEFAULT_CLASSIFIER);
    if (stat(buf, &st) == 0) return 0;
    return msd_set_error("eval: no --classifier given, and the default %s is neither in the program's folder (%s) "
                         "nor in the current folder; give --classifier FILE (msdiff classifier train writes one)",
                         DEFAULT_CLASSIFIER, slash ? exe : "unknown");
}

// n images from model m: seeds 0..n-1, Heun over the EDM schedule of `steps` steps. images: (n, M) host.
static int sample_images(struct msd_model *m, float *images, int n, int steps, int batch, bool quiet) {
    const struct msd_backend *be = m->be;
    const size_t M = (size_t)m->cfg.in_channels * m->cfg.img_resolution * m->cfg.img_resolution;
    const int B = batch < n ? batch : n;
    double *sigmas = xmalloc((size_t)(steps + 1) * sizeof *sigmas);
    struct msd_schedule_opts so = msd_schedule_opts_default();
    uint64_t *seeds = xmalloc((size_t)n * sizeof *seeds);
    for (int i = 0; i < n; i++) seeds[i] = (uint64_t)i;
    float *x = be->alloc((size_t)B * M);
    struct msd_batch_denoiser d = {m, xmalloc((size_t)B * sizeof(double)), 0};
    struct msd_sample_opts o = msd_sample_opts_default(MSD_SAMPLER_HEUN, steps);
    int rc = msd_schedule(sigmas, steps, MSD_SCHEDULE_EDM, &so);
    if (rc == 0 && !x) rc = msd_set_error("cannot allocate a batch of %d images on backend %s", B, be->name);
    for (int first = 0; rc == 0 && first < n; first += B) {
        const int k = n - first < B ? n - first : B;
        d.n = k;
        o.seeds = seeds + first;
        if ((rc = cmd_plan_batch(m, k)) < 0) break;
        msd_sample_latent(be, x, k, M, seeds + first, sigmas[0]);
        if (msd_sample(be, k, M, x, sigmas, steps + 1, &o, msd_batch_denoise, &d) < 0) rc = -1;
        else be->download(images + (size_t)first * M, x, (size_t)k * M);
        if (!quiet) fprintf(stderr, "\reval: sampled %d of %d images", first + k, n);
    }
    if (!quiet) fputc('\n', stderr);
    if (x) be->release(x);
    free(d.sigmas), free(seeds), free(sigmas);
    return rc;
}

// FD between the classifier features of a (n_a images) and b (n_b images), host images in [-1, 1].
static int feature_fd(struct msd_classifier *c, const float *a, int n_a, const float *b, int n_b, double *fd) {
    const int F = c->cfg.features;
    float *fa = xmalloc((size_t)n_a * F * sizeof(float)), *fb = xmalloc((size_t)n_b * F * sizeof(float));
    double *mu_a = xmalloc((size_t)F * sizeof(double)), *mu_b = xmalloc((size_t)F * sizeof(double));
    double *cov_a = xmalloc((size_t)F * F * sizeof(double)), *cov_b = xmalloc((size_t)F * F * sizeof(double));
    int rc = msd_classifier_predict(c, NULL, fa, a, n_a);
    if (rc == 0) rc = msd_classifier_predict(c, NULL, fb, b, n_b);
    if (rc == 0) rc = msd_gaussian_fit(fa, n_a, F, mu_a, cov_a);
    if (rc == 0) rc = msd_gaussian_fit(fb, n_b, F, mu_b, cov_b);
    if (rc == 0) rc = msd_frechet_distance(mu_a, cov_a, mu_b, cov_b, F, fd);
    free(fa), free(fb), free(mu_a), free(mu_b), free(cov_a), free(cov_b);
    return rc;
}

int cmd_eval(int argc, char **argv) {
    const char *model = NULL, *images_dir = NULL, *data = "fmnist", *ref = NULL, *backend = NULL;
    const char *cls_path = NULL;
    char cls_buf[4200];
    int n = 10000, steps = 18, batch = 256, loss_images = 2000;
    bool json = false;
    struct cli_opt o[] = {
        {.flag = "--model", .type = CLI_STR, .dst = &model, .expect = "a checkpoint or run folder"},
        {.flag = "--images", .type = CLI_STR, .dst = &images_dir, .expect = "a folder of PNG files or a data spec"},
        {.flag = "--data", .type = CLI_STR, .dst = &data, .expect = "a data spec such as fmnist"},
        {.flag = "--ref", .type = CLI_STR, .dst = &ref, .expect = "a data spec"},
        {.flag = "--n", .type = CLI_INT, .dst = &n, .expect = "an image count 2..100000", .lo = 2, .hi = 100000},
        {.flag = "--classifier", .type = CLI_STR, .dst = &cls_path, .expect = "a classifier file"},
        {.flag = "--steps", .type = CLI_INT, .dst = &steps, .expect = "a step count 1..1000", .lo = 1, .hi = 1000},
        {.flag = "--batch", .type = CLI_INT, .dst = &batch, .expect = "a batch size 1..4096", .lo = 1, .hi = 4096},
        {.flag = "--loss-images", .type = CLI_INT, .dst = &loss_images, .expect = "an image count >= 0", .lo = 0,
         .hi = 1000000},
        {.flag = "--json", .type = CLI_SWITCH, .dst = &json},
        {.flag = "--backend", .type = CLI_STR, .dst = &backend, .expect = "ref, fast or cuda"},
    };
    bool done;
    int rc = cmd_parse("eval", argc, argv, o, COUNT(o), &done);
    if (done) return rc;
    if (!model == !images_dir) return cli_error("eval", "give exactly one of --model and --images");
    const struct msd_backend *be = cmd_backend("eval", backend);
    if (!be) return CLI_USAGE;
    if (!cls_path) {
        if (default_classifier(cls_buf, sizeof cls_buf) < 0) return cmd_fail();
        cls_path = cls_buf;
    }

    // the reference images, the classifier, and the generated images
    char ref_spec[600];
    if (ref) snprintf(ref_spec, sizeof ref_spec, "%s", ref);
    else held_out_spec(data, ref_spec, sizeof ref_spec);
    struct msd_dataset rd = {0}, gd = {0};
    struct msd_classifier c = {0};
    struct msd_model m = {0};
    bool have_model = false;
    float *gen = NULL, *refimg = NULL;
    int n_gen = n, n_ref = 0;
    double fd = NAN, losses[MSD_MAX_STAGES][LOSS_SIGMAS], stage_loss[MSD_MAX_STAGES];
    double loss_sigmas[MSD_MAX_STAGES][LOSS_SIGMAS];
    rc = msd_data_open(&rd, ref_spec);
    if (rc == 0) rc = msd_classifier_load(&c, cls_path, be);
    if (rc == 0 && (rd.channels != c.cfg.in_channels || rd.res != c.cfg.res))
        rc = msd_set_error("eval: the reference images (%s) are %d x %d x %d, the classifier %s takes %d x %d x %d",
                           ref_spec, rd.channels, rd.res, rd.res, cls_path, c.cfg.in_channels, c.cfg.res, c.cfg.res);
    const size_t M = rc == 0 ? (size_t)rd.channels * rd.res * rd.res : 0;
    if (rc == 0) {
        n_ref = n < rd.n ? n : rd.n;
        refimg = xmalloc((size_t)n_ref * M * sizeof(float));
        msd_data_images(&rd, refimg, 0, n_ref);
    }
    if (rc == 0 && images_dir) {
        rc = msd_data_open(&gd, images_dir);
        if (rc == 0 && (gd.channels != rd.channels || gd.res != rd.res))
            rc = msd_set_error("eval: the images in %s are %d x %d x %d, the reference images %d x %d x %d",
                               images_dir, gd.channels, gd.res, gd.res, rd.channels, rd.res, rd.res);
        if (rc == 0 && gd.n < 2) rc = msd_set_error("eval: %s holds %d image(s); the FD needs at least 2", images_dir, gd.n);
        if (rc == 0) {
            n_gen = n < gd.n ? n : gd.n;
            gen = xmalloc((size_t)n_gen * M * sizeof(float));
            msd_data_images(&gd, gen, 0, n_gen);
        }
    } else if (rc == 0) {
        char path[4096];
        msd_run_model_path(model, path, sizeof path);
        rc = msd_checkpoint_load(&m, path, be);
        have_model = rc == 0;
        if (rc == 0 && (m.cfg.in_channels != rd.channels || m.cfg.img_resolution != rd.res))
            rc = msd_set_error("eval: the model %s makes %d x %d x %d images, the reference images are %d x %d x %d",
                               path, m.cfg.in_channels, m.cfg.img_resolution, m.cfg.img_resolution, rd.channels,
                               rd.res, rd.res);
        if (rc == 0) {
            gen = xmalloc((size_t)n_gen * M * sizeof(float));
            rc = sample_images(&m, gen, n_gen, steps, batch, json);
        }
    }
    if (rc == 0) rc = msd_classifier_plan(&c, 256 < n_gen ? 256 : n_gen, false);
    if (rc == 0) rc = feature_fd(&c, gen, n_gen, refimg, n_ref, &fd);

    // the held-out loss: LOSS_SIGMAS noise levels spread geometrically inside each stage's range
    // (clipped to EDM's [0.002, 80])
    const int stages = have_model ? m.cfg.n_stages : 0;
    const int count = loss_images < rd.n ? loss_images : rd.n;
    for (int s = 0; rc == 0 && count > 0 && s < stages; s++) {
        const double lo = s ? m.cfg.boundaries[s - 1] : 0.002, hi = s < stages - 1 ? m.cfg.boundaries[s] : 80.0;
        for (int k = 0; k < LOSS_SIGMAS; k++)
            loss_sigmas[s][k] = lo * pow(hi / lo, (k + 0.5) / LOSS_SIGMAS);
        if ((rc = msd_model_plan(&m, 250 < count ? 250 : count, false)) < 0) break;
        rc = msd_eval_loss(&m, m.w, &rd, count, loss_sigmas[s], LOSS_SIGMAS, losses[s]);
        stage_loss[s] = 0;
        for (int k = 0; k < LOSS_SIGMAS; k++) stage_loss[s] += losses[s][k] / LOSS_SIGMAS;
    }

    if (rc == 0 && json) { // built with cJSON, so that any path comes out as a valid JSON string
        cJSON *j = cJSON_CreateObject();
        cJSON_AddNumberToObject(j, "fd", fd);
        cJSON_AddNumberToObject(j, "generated", n_gen);
        cJSON_AddNumberToObject(j, "reference", n_ref);
        cJSON_AddStringToObject(j, "reference_data", ref_spec);
        cJSON_AddStringToObject(j, "classifier", cls_path);
        cJSON_AddStringToObject(j, "source", images_dir ? images_dir : model);
        if (have_model) {
            cJSON_AddStringToObject(j, "sampler", "heun");
            cJSON_AddNumberToObject(j, "steps", steps);
        }
        if (stages && count > 0) {
            cJSON_AddNumberToObject(j, "loss_images", count);
            cJSON *arr = cJSON_AddArrayToObject(j, "stages");
            for (int s = 0; s < stages; s++) {
                cJSON *e = cJSON_CreateObject();
                cJSON_AddNumberToObject(e, "stage", s);
                cJSON_AddNumberToObject(e, "loss", stage_loss[s]);
                cJSON_AddItemToObject(e, "sigmas", cJSON_CreateDoubleArray(loss_sigmas[s], LOSS_SIGMAS));
                cJSON_AddItemToObject(e, "losses", cJSON_CreateDoubleArray(losses[s], LOSS_SIGMAS));
                cJSON_AddItemToArray(arr, e);
            }
        }
        char *text = cJSON_PrintUnformatted(j);
        printf("%s\n", text);
        free(text);
        cJSON_Delete(j);
    } else if (rc == 0) {
        printf("FD %.4f: %d %s images against %d of %s (features of %s)\n", fd, n_gen,
               images_dir ? "given" : "generated", n_ref, rd.source, cls_path);
        if (have_model) printf("sampler: heun, %d steps, seeds 0-%d\n", steps, n_gen - 1);
        for (int s = 0; s < stages && count > 0; s++) {
            printf("held-out loss, stage %d: %.5f (mean over sigma", s, stage_loss[s]);
            for (int k = 0; k < LOSS_SIGMAS; k++) printf(" %.4g%s", loss_sigmas[s][k], k < LOSS_SIGMAS - 1 ? "," : "");
            printf("; %d images)\n", count);
        }
    }
    free(gen), free(refimg);
    msd_data_free(&rd), msd_data_free(&gd);
    if (c.w) msd_classifier_free(&c);
    if (have_model) msd_model_free(&m);
    return rc == 0 ? 0 : cmd_fail();
}
