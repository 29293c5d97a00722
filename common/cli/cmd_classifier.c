// cmd_classifier.c: `msdiff classifier train` and `msdiff classifier test`: training the feature
// network of msdiff eval (common/eval/classifier.h) on a labelled data set, and measuring its accuracy.
// The network, its step and its file are in common/eval/classifier.c; this file holds the epoch loop
// (shuffling, the learning-rate schedule, progress lines) and the flags.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "common/eval/classifier.h"
#include "commands.h"
#include "common/io/data.h"
#include "common/core/error.h"
#include "common/core/rng.h"
#include "common/core/util.h"

#define PI 3.14159265358979323846

// Streams of the training loop (common/core/rng.h keeps the others): the epoch's shuffle draws index
// (epoch << 32) + i, the mirroring of batch position k of epoch e draws (e << 32) + k. Far above the
// per-step streams of diffusion training and beside the 1..3 << 48 blocks of rng.h.
#define STREAM_CLS_SHUFFLE ((uint64_t)4 << 48)
#define STREAM_CLS_XFLIP (STREAM_CLS_SHUFFLE + 1)

const char HELP_CLASSIFIER[] =
    "usage: msdiff classifier train --out FILE [--data SPEC] [--epochs E] [--batch B] [--lr LR] [flags]\n"
    "       msdiff classifier test --model FILE [--data SPEC] [--backend B] [--batch B]\n"
    "\n"
    "The image classifier whose penultimate features msdiff eval compares (a Frechet distance), trained\n"
    "by msdiff itself with its own backend ops: conv3x3 C->32, GroupNorm, SiLU; conv3x3 32->32 + GN +\n"
    "SiLU, down2; conv3x3 32->64 + GN + SiLU, down2; conv3x3 64->64 + GN + SiLU; linear over the\n"
    "flattened map to 128 features + SiLU; linear to 10 logits. Softmax cross-entropy, Adam.\n"
    "\n"
    "train: E epochs over the labelled training set, each in a new random order (from --seed), with the\n"
    "learning rate decaying from LR to 0 along a cosine over the whole run; then the accuracy on the\n"
    "test set, which goes into the file's metadata with the data, the command line and the architecture.\n"
    "The file is written atomically: a failed or interrupted run leaves an existing FILE as it was.\n"
    "  --out FILE            the classifier to write (.safetensors; required)\n"
    "  --data SPEC           labelled training data: fmnist (default), fmnist:DIR, cifar10:DIR\n"
    "  --test-data SPEC      labelled test data (default: the test split of --data: fmnist:test, ...)\n"
    "  --epochs E            passes over the training set (default 4)\n"
    "  --batch B             images per step (default 128)\n"
    "  --lr LR               Adam's peak learning rate (default 2e-3)\n"
    "  --seed S              initial weights, order and mirroring (default 0)\n"
    "  --xflip               mirror each training image left-right with probability 1/2\n"
    "  --backend B           ref, fast or cuda (default: the fastest available)\n"
    "  --log-seconds S       progress line at least every S seconds (default 10)\n"
    "\n"
    "test: accuracy and mean cross-entropy of a classifier file on a labelled set.\n"
    "  --model FILE          the classifier (required)\n"
    "  --data SPEC           labelled data (default fmnist:test)\n"
    "  --batch B             images per forward pass (default 256)\n"
    "  --backend B           ref, fast or cuda (default: the fastest available)\n"
    "\n"
    "examples:\n"
    "  msdiff classifier train --data fmnist --epochs 4 --batch 128 --lr 2e-3 --seed 0 \\\n"
    "                          --out models/classifier-fmnist.safetensors\n"
    "  msdiff classifier test --model models/classifier-fmnist.safetensors --data fmnist:test\n";

static double now_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void fmt_duration(double s, char *buf, size_t n) {
    if (!isfinite(s) || s < 0) snprintf(buf, n, "?");
    else if (s < 60) snprintf(buf, n, "%.0fs", s);
    else if (s < 3600) snprintf(buf, n, "%dm%02ds", (int)(s / 60), (int)s % 60);
    else snprintf(buf, n, "%dh%02dm", (int)(s / 3600), (int)(s / 60) % 60);
}

// The test split that goes with a training spec: fmnist -> fmnist:test, fmnist:DIR -> fmnist:test:DIR,
// cifar10:DIR -> cifar10:test:DIR. NULL when there is none (a spec that is already a test split, a
// PNG folder); the caller then asks for --test-data.
static char *test_spec_of(const char *spec) {
    char buf[4200];
    if (!strcmp(spec, "fmnist")) return xstrdup("fmnist:test");
    if (!strncmp(spec, "fmnist:test", 11) || !strncmp(spec, "cifar10:test", 12)) return NULL;
    if (!strncmp(spec, "fmnist:", 7) && strlen(spec) < 4000) {
        snprintf(buf, sizeof buf, "fmnist:test:%s", spec + 7);
        return xstrdup(buf);
    }
    if (!strncmp(spec, "cifar10:", 8) && strlen(spec) < 4000) {
        snprintf(buf, sizeof buf, "cifar10:test:%s", spec + 8);
        return xstrdup(buf);
    }
    return NULL;
}

// Open spec and check that it has labels (and, when want_channels > 0, the given image size).
static int open_labelled(struct msd_dataset *d, const char *spec, const char *flag, int want_channels, int want_res) {
    if (msd_data_open(d, spec) < 0) return -1;
    if (!d->labels) {
        msd_data_free(d);
        return msd_set_error("%s '%s': the data set has no labels (a folder of PNGs); expected fmnist, "
                             "fmnist:test, fmnist:DIR, cifar10:DIR or cifar10:test:DIR", flag, spec);
    }
    if (want_channels > 0 && (d->channels != want_channels || d->res != want_res)) {
        const int c = d->channels, r = d->res;
        msd_data_free(d);
        return msd_set_error("%s '%s' has %dx%dx%d images, expected %dx%dx%d (the classifier's input)", flag, spec,
                             c, r, r, want_channels, want_res, want_res);
    }
    return 0;
}

// Fisher-Yates order of epoch e: perm[0..n) a permutation of 0..n-1, a pure function of (seed, e).
static void epoch_order(int *perm, int n, uint64_t seed, int epoch) {
    for (int i = 0; i < n; i++) perm[i] = i;
    for (int i = n - 1; i > 0; i--) {
        const uint32_t j = msd_rng_u32(seed, STREAM_CLS_SHUFFLE, ((uint64_t)epoch << 32) + (uint64_t)i) %
                           (uint32_t)(i + 1);
        const int t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

// Image img: (C, R, R) mirrored left-right in place.
static void mirror(float *img, int C, int R) {
    for (int row = 0; row < C * R; row++)
        for (int a = 0, b = R - 1; a < b; a++, b--) {
            const float t = img[row * R + a];
            img[row * R + a] = img[row * R + b];
            img[row * R + b] = t;
        }
}

struct train_flags {
    const char *out, *data, *test_data, *backend;
    int epochs, batch;
    double lr, log_seconds;
    uint64_t seed;
    bool xflip;
};

// The epoch loop: E epochs of n / B steps (the last partial batch of an epoch is dropped; the next
// epoch's order differs). lr at step t of T: lr_max (1 + cos(pi t / T)) / 2.
static int train_loop(struct msd_classifier *c, const struct msd_dataset *d, const struct train_flags *f) {
    const int B = f->batch, C = d->channels, R = d->res;
    const size_t M = (size_t)C * R * R;
    const long per_epoch = d->n / B, total = per_epoch * f->epochs;
    int *perm = xmalloc((size_t)d->n * sizeof *perm);
    float *x = xmalloc((size_t)B * M * sizeof(float));
    uint8_t *labels = xmalloc((size_t)B);
    const double t0 = now_seconds();
    double t_last = t0, loss_sum = 0, epoch_loss = 0;
    long since = 0, right_since = 0, epoch_right = 0, step = 0;
    int rc = 0;
    for (int e = 0; rc == 0 && e < f->epochs; e++) {
        epoch_order(perm, d->n, f->seed, e);
        epoch_loss = 0;
        epoch_right = 0;
        for (long s = 0; rc == 0 && s < per_epoch; s++, step++) {
            for (int j = 0; j < B; j++) {
                const int idx = perm[s * B + j];
                msd_data_images(d, x + (size_t)j * M, idx, 1);
                labels[j] = d->labels[idx];
                const uint64_t k = ((uint64_t)e << 32) + (uint64_t)(s * B + j);
                if (f->xflip && (msd_rng_u32(f->seed, STREAM_CLS_XFLIP, k) & 1u)) mirror(x + (size_t)j * M, C, R);
            }
            const double lr = f->lr * 0.5 * (1.0 + cos(PI * (double)step / (double)total));
            struct msd_cls_step info;
            if ((rc = msd_classifier_train_step(c, x, labels, (float)lr, &info))) break;
            loss_sum += info.loss, epoch_loss += info.loss;
            right_since += info.correct, epoch_right += info.correct;
            since++;
            const double t = now_seconds();
            if (t - t_last >= f->log_seconds || step + 1 == total) {
                char eta[32];
                fmt_duration((t - t0) / (step + 1) * (total - step - 1), eta, sizeof eta);
                printf("epoch %d/%d  step %ld/%ld  loss %.4f  train acc %.2f%%  lr %.3g  %.0f img/s  ETA %s\n", e + 1,
                       f->epochs, step + 1, total, loss_sum / since, 100.0 * right_since / ((double)since * B), lr,
                       (double)since * B / (t - t_last), eta);
                fflush(stdout);
                t_last = t, loss_sum = 0, since = 0, right_since = 0;
            }
        }
        if (rc == 0)
            printf("epoch %d/%d done: mean loss %.4f, train accuracy %.2f%% (while training), %.0f s so far\n", e + 1,
                   f->epochs, epoch_loss / per_epoch, 100.0 * epoch_right / ((double)per_epoch * B),
                   now_seconds() - t0);
    }
    free(perm), free(x), free(labels);
    return rc;
}

// "msdiff classifier train ..." as typed (arguments with spaces quoted), for the file's metadata.
static char *command_line(int argc, char **argv) {
    size_t len = strlen("msdiff classifier train") + 1;
    for (int i = 0; i < argc; i++) len += strlen(argv[i]) + 3;
    char *s = xmalloc(len);
    strcpy(s, "msdiff classifier train");
    for (int i = 0; i < argc; i++) {
        const bool quote = strchr(argv[i], ' ') != NULL || argv[i][0] == '\0';
        strcat(s, quote ? " '" : " ");
        strcat(s, argv[i]);
        if (quote) strcat(s, "'");
    }
    return s;
}

static int classifier_train(int argc, char **argv) {
    struct train_flags f = {.data = "fmnist", .epochs = 4, .batch = 128, .lr = 2e-3, .log_seconds = 10};
    struct cli_opt o[] = {
        {.flag = "--out", .type = CLI_STR, .dst = &f.out, .expect = "the classifier file to write", .required = true},
        {.flag = "--data", .type = CLI_STR, .dst = &f.data, .expect = "a labelled data spec"},
        {.flag = "--test-data", .type = CLI_STR, .dst = &f.test_data, .expect = "a labelled data spec"},
        {.flag = "--epochs", .type = CLI_INT, .dst = &f.epochs, .expect = "an epoch count 1..1000", .lo = 1, .hi = 1000},
        {.flag = "--batch", .type = CLI_INT, .dst = &f.batch, .expect = "a batch size 1..65536", .lo = 1, .hi = 65536},
        {.flag = "--lr", .type = CLI_DOUBLE, .dst = &f.lr, .expect = "a learning rate > 0"},
        {.flag = "--seed", .type = CLI_U64, .dst = &f.seed, .expect = "a non-negative integer"},
        {.flag = "--xflip", .type = CLI_SWITCH, .dst = &f.xflip},
        {.flag = "--backend", .type = CLI_STR, .dst = &f.backend, .expect = "ref, fast or cuda"},
        {.flag = "--log-seconds", .type = CLI_DOUBLE, .dst = &f.log_seconds, .expect = "seconds > 0"},
    };
    bool done;
    int rc = cmd_parse("classifier", argc, argv, o, COUNT(o), &done);
    if (done) return rc;
    if (!(isfinite(f.lr) && f.lr > 0 && f.lr < 1e3))
        return cli_error("classifier", "--lr: expected a finite learning rate > 0, got %g", f.lr);
    if (!(isfinite(f.log_seconds) && f.log_seconds > 0))
        return cli_error("classifier", "--log-seconds: expected a finite number of seconds > 0, got %g", f.log_seconds);
    const struct msd_backend *be = cmd_backend("classifier", f.backend);
    if (!be) return CLI_USAGE;
    char *test_spec = f.test_data ? xstrdup(f.test_data) : test_spec_of(f.data);
    if (!test_spec)
        return cli_error("classifier", "--data '%s' has no test split that msdiff knows: give --test-data SPEC",
                         f.data);
    // everything that can fail before training is checked first: a run must not end unable to save
    struct msd_dataset train = {0}, test = {0};
    struct msd_classifier c = {0};
    struct msd_classifier_config cfg;
    rc = cmd_check_out_file("--out", f.out, false);
    if (rc == 0) rc = open_labelled(&train, f.data, "--data", 0, 0);
    if (rc == 0) rc = open_labelled(&test, test_spec, "--test-data", train.channels, train.res);
    if (rc == 0 && train.n < f.batch)
        rc = msd_set_error("--batch %d is larger than the %d training images of '%s'", f.batch, train.n, f.data);
    if (rc == 0) {
        msd_classifier_defaults(&cfg, train.channels, train.res);
        if (msd_classifier_create(&c, &cfg, be) < 0) rc = msd_set_error("--data '%s': %s", f.data, msd_last_error());
    }
    if (rc < 0) {
        msd_data_free(&train);
        msd_data_free(&test);
        free(test_spec);
        return cmd_fail();
    }
    msd_classifier_init(&c, f.seed);
    char arch[512], count[CLI_NUM_BUF];
    msd_classifier_describe(&cfg, arch, sizeof arch);
    printf("training a classifier on %s (%d images, %d classes) for %d epochs of %d steps, batch %d, lr %g "
           "(cosine to 0), seed %llu, backend %s\n%s; %s parameters\n",
           train.source, train.n, cfg.classes, f.epochs, train.n / f.batch, f.batch, f.lr,
           (unsigned long long)f.seed, be->name, arch, cli_fmt_count(c.n_floats, count));
    const double t0 = now_seconds();
    rc = msd_classifier_plan(&c, f.batch, true);
    if (rc == 0) rc = train_loop(&c, &train, &f);
    const double train_s = now_seconds() - t0;
    double acc = 0, loss = 0;
    if (rc == 0) rc = msd_classifier_evaluate(&c, &test, &acc, &loss);
    if (rc == 0) {
        printf("test accuracy %.2f%% (%ld of %d images of %s), mean cross-entropy %.4f; training took %.0f s\n",
               100 * acc, lround(acc * test.n), test.n, test.source, loss, train_s);
        char acc_text[32], loss_text[32], secs[32], epochs[16], batch[16], lr[32], seed[32];
        snprintf(acc_text, sizeof acc_text, "%.4f", acc);
        snprintf(loss_text, sizeof loss_text, "%.4f", loss);
        snprintf(secs, sizeof secs, "%.0f", train_s);
        snprintf(epochs, sizeof epochs, "%d", f.epochs);
        snprintf(batch, sizeof batch, "%d", f.batch);
        snprintf(lr, sizeof lr, "%g", f.lr);
        snprintf(seed, sizeof seed, "%llu", (unsigned long long)f.seed);
        char *cmdline = command_line(argc, argv);
        const char *keys[] = {"data", "test_data", "test_accuracy", "test_loss", "command", "epochs", "batch", "lr",
                              "seed", "xflip", "backend", "train_seconds"};
        const char *values[] = {train.source, test.source, acc_text, loss_text, cmdline, epochs, batch, lr, seed,
                                f.xflip ? "true" : "false", be->name, secs};
        rc = msd_classifier_save(&c, f.out, keys, values, COUNT(keys));
        free(cmdline);
        struct stat st;
        if (rc == 0)
            printf("wrote %s: %.2f MB, test accuracy %.2f%%\n", f.out,
                   stat(f.out, &st) == 0 ? st.st_size / 1e6 : 0.0, 100 * acc);
    }
    msd_classifier_free(&c);
    msd_data_free(&train), msd_data_free(&test);
    free(test_spec);
    return rc ? cmd_fail() : 0;
}

static int classifier_test(int argc, char **argv) {
    const char *model = NULL, *data = "fmnist:test", *backend = NULL;
    int batch = 256;
    struct cli_opt o[] = {
        {.flag = "--model", .type = CLI_STR, .dst = &model, .expect = "a classifier file", .required = true},
        {.flag = "--data", .type = CLI_STR, .dst = &data, .expect = "a labelled data spec"},
        {.flag = "--batch", .type = CLI_INT, .dst = &batch, .expect = "a batch size 1..65536", .lo = 1, .hi = 65536},
        {.flag = "--backend", .type = CLI_STR, .dst = &backend, .expect = "ref, fast or cuda"},
    };
    bool done;
    int rc = cmd_parse("classifier", argc, argv, o, COUNT(o), &done);
    if (done) return rc;
    const struct msd_backend *be = cmd_backend("classifier", backend);
    if (!be) return CLI_USAGE;
    struct msd_classifier c;
    if (msd_classifier_load(&c, model, be) < 0) return cmd_fail();
    struct msd_dataset d;
    if (open_labelled(&d, data, "--data", c.cfg.in_channels, c.cfg.res) < 0) {
        msd_classifier_free(&c);
        return cmd_fail();
    }
    double acc = 0, loss = 0;
    rc = msd_classifier_plan(&c, batch < d.n ? batch : d.n, false);
    if (rc == 0) rc = msd_classifier_evaluate(&c, &d, &acc, &loss);
    if (rc == 0)
        printf("accuracy %.2f%% (%ld of %d images of %s), mean cross-entropy %.4f; model %s, backend %s\n", 100 * acc,
               lround(acc * d.n), d.n, d.source, loss, model, be->name);
    msd_data_free(&d);
    msd_classifier_free(&c);
    return rc ? cmd_fail() : 0;
}

int cmd_classifier(int argc, char **argv) {
    if (argc >= 1 && !strcmp(argv[0], "train")) return classifier_train(argc - 1, argv + 1);
    if (argc >= 1 && !strcmp(argv[0], "test")) return classifier_test(argc - 1, argv + 1);
    if (argc >= 1 && (!strcmp(argv[0], "-h") || !strcmp(argv[0], "--help"))) {
        fputs(HELP_CLASSIFIER, stdout);
        return 0;
    }
    return cli_error("classifier", "%s: expected train or test (msdiff classifier --help)",
                     argc ? argv[0] : "no subcommand");
}
