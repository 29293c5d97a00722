// test_eval.c: `msdiff eval` from the outside, on small sets: the Frechet distance of a set of images
// with itself is ~0, it is symmetric in the two sets, a set against another set of the same kind is
// far closer than against noise, and the FD the program prints is the one computed here through the
// library (classifier features, Gaussian fits, common/eval/fd.h) on the same images. With a model, eval
// samples and reports the held-out loss of every stage. Bad input fails with a clear message. The
// shipped classifier and the shipped diffusion model (models/) are checked on Fashion-MNIST.
//
// The classifier is a freshly initialised one for 1 x 8 x 8 images, written by this suite: its features
// are a fixed random function of the image, which is all the FD needs. The model is tiny-ms with one
// channel (PNG folders hold gray or RGB images), also freshly initialised.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/core/backend.h"
#include "common/io/checkpoint.h"
#include "common/eval/classifier.h"
#include "common/model/config.h"
#include "common/io/data.h"
#include "common/core/error.h"
#include "common/eval/fd.h"
#include "common/model/model.h"
#include "common/model/precond.h"
#include "common/io/png.h"
#include "common/core/rng.h"
#include "common/io/safetensors.h"
#include "common/core/util.h"
#include "testutil.h"

enum { C = 1, R = 8, SET = 300 }; // image shape (PNG holds 1 or 3 channels), images per folder

static char cls_file[TEST_PATH_MAX], smooth_a[TEST_PATH_MAX], smooth_b[TEST_PATH_MAX], noise[TEST_PATH_MAX];
static char model_file[TEST_PATH_MAX], noise28[TEST_PATH_MAX];

// "Images" of one kind: smooth blobs (a random centre and width per image); noise: pixels uniform.
static void write_folder(const char *dir, uint64_t seed, bool smooth, int R) {
    float *img = xmalloc((size_t)C * R * R * sizeof(float));
    for (int k = 0; k < SET; k++) {
        const double cx = 2 + (R - 4) * msd_rng_uniform(seed, MSD_STREAM_TEST, 4 * k),
                     cy = 2 + (R - 4) * msd_rng_uniform(seed, MSD_STREAM_TEST, 4 * k + 1),
                     w = 1 + 2 * msd_rng_uniform(seed, MSD_STREAM_TEST, 4 * k + 2);
        for (int c = 0; c < C; c++)
            for (int i = 0; i < R * R; i++) {
                const double d2 = (i / R - cy) * (i / R - cy) + (i % R - cx) * (i % R - cx);
                img[c * R * R + i] = smooth ? (float)(2 * exp(-d2 / (2 * w * w)) - 1)
                                            : 2 * msd_rng_uniform(seed + 1, MSD_STREAM_TEST, (uint64_t)k * C * R * R + c * R * R + i) - 1;
            }
        char path[TEST_PATH_MAX + 32];
        snprintf(path, sizeof path, "%s/img%04d.png", dir, k);
        if (msd_png_write(path, img, C, R, R) < 0) {
            fprintf(stderr, "test_eval: %s\n", msd_last_error());
            exit(1);
        }
    }
    free(img);
}

// The "FD x.xxxx" number of a text run.
static double fd_of(const struct test_run *r) {
    const char *p = strstr(r->out, "FD ");
    ck_assert_msg(p != NULL, "no FD line in:\n%s", r->out);
    return atof(p + 3);
}

static double eval_fd(const char *images, const char *ref) {
    struct test_run r = MSDIFF("eval", "--images", images, "--ref", ref, "--classifier", cls_file, "--n", "1000",
                               "--backend", "ref");
    test_expect_ok(&r);
    const double fd = fd_of(&r);
    test_run_free(&r);
    return fd;
}

START_TEST(self_symmetric_and_far_from_noise) {
    const double self = eval_fd(smooth_a, smooth_a), ab = eval_fd(smooth_a, smooth_b), ba = eval_fd(smooth_b, smooth_a),
                 an = eval_fd(smooth_a, noise);
    printf("eval FD: A with itself %.3g, A vs B %.4f, B vs A %.4f, A vs noise %.4f\n", self, ab, ba, an);
    ck_assert_msg(fabs(self) < 1e-4 * an, "FD of a set with itself: %g (against noise %g)", self, an);
    ck_assert_msg(fabs(ab - ba) <= 2e-4 * fabs(ab) + 1e-4, "FD(A, B) %.6f != FD(B, A) %.6f", ab, ba);
    ck_assert_msg(ab > 0 && ab < 0.2 * an, "two sets of blobs (FD %g) should be far closer than blobs and noise (%g)",
                  ab, an);
}
END_TEST

// The printed FD against the library's on the same images, computed here: classifier features,
// Gaussian fits, the Frechet distance.
START_TEST(matches_the_library) {
    struct msd_dataset a, b;
    ck_assert_msg(msd_data_open(&a, smooth_a) == 0 && msd_data_open(&b, noise) == 0, "%s", msd_last_error());
    struct msd_classifier c;
    ck_assert_msg(msd_classifier_load(&c, cls_file, &msd_backend_ref) == 0, "%s", msd_last_error());
    ck_assert_msg(msd_classifier_plan(&c, 64, false) == 0, "%s", msd_last_error());
    const int F = c.cfg.features, M = C * R * R;
    float *xa = xmalloc((size_t)SET * M * sizeof(float)), *xb = xmalloc((size_t)SET * M * sizeof(float));
    float *fa = xmalloc((size_t)SET * F * sizeof(float)), *fb = xmalloc((size_t)SET * F * sizeof(float));
    msd_data_images(&a, xa, 0, SET), msd_data_images(&b, xb, 0, SET);
    ck_assert(msd_classifier_predict(&c, NULL, fa, xa, SET) == 0 && msd_classifier_predict(&c, NULL, fb, xb, SET) == 0);
    double *mu1 = xmalloc(F * sizeof(double)), *mu2 = xmalloc(F * sizeof(double));
    double *s1 = xmalloc((size_t)F * F * sizeof(double)), *s2 = xmalloc((size_t)F * F * sizeof(double)), fd;
    ck_assert(msd_gaussian_fit(fa, SET, F, mu1, s1) == 0 && msd_gaussian_fit(fb, SET, F, mu2, s2) == 0);
    ck_assert_msg(msd_frechet_distance(mu1, s1, mu2, s2, F, &fd) == 0, "%s", msd_last_error());
    const double printed = eval_fd(smooth_a, noise);
    printf("eval FD A vs noise: printed %.4f, library %.6f\n", printed, fd);
    ck_assert_msg(fabs(printed - fd) <= 1e-4 * fabs(fd) + 1e-4, "printed %.6f, library %.6f", printed, fd);
    free(xa), free(xb), free(fa), free(fb), free(mu1), free(mu2), free(s1), free(s2);
    msd_classifier_free(&c);
    msd_data_free(&a), msd_data_free(&b);
}
END_TEST

// With a model: sampling, the FD, the held-out loss of each stage, and --json.
START_TEST(model_json) {
    struct test_run r = MSDIFF("eval", "--model", model_file, "--ref", smooth_a, "--classifier", cls_file, "--n", "40",
                               "--steps", "4", "--loss-images", "20", "--json", "--backend", "fast");
    test_expect_ok(&r);
    printf("eval --json: %s", r.out);
    ck_assert_msg(strstr(r.out, "\"fd\":") && strstr(r.out, "\"generated\":40") && strstr(r.out, "\"stage\":1") &&
                      strstr(r.out, "\"loss_images\":20"),
                  "unexpected JSON: %s", r.out);
    const double fd = atof(strstr(r.out, "\"fd\":") + 5);
    ck_assert_msg(isfinite(fd) && fd > 0, "FD of an untrained model's samples against blobs: %g", fd);
    test_run_free(&r);
}
END_TEST

// The shipped classifier on Fashion-MNIST: training images against test images are close, noise is
// far (a sanity check that the feature space separates images from noise), and a set against itself
// is ~0.
START_TEST(fmnist_shipped_classifier) {
    const char *cls = "models/classifier-fmnist.safetensors";
    struct test_run r = MSDIFF("eval", "--images", "fmnist", "--data", "fmnist", "--n", "1000", "--classifier", cls,
                               "--backend", "fast");
    test_expect_ok(&r);
    const double train_test = fd_of(&r);
    test_run_free(&r);
    r = MSDIFF("eval", "--images", noise28, "--data", "fmnist", "--n", "1000", "--classifier", cls, "--backend", "fast");
    test_expect_ok(&r);
    const double noise_test = fd_of(&r);
    test_run_free(&r);
    r = MSDIFF("eval", "--images", "fmnist:test", "--data", "fmnist", "--n", "1000", "--classifier", cls, "--backend", "fast");
    test_expect_ok(&r);
    const double self = fd_of(&r);
    test_run_free(&r);
    printf("eval FD with the shipped classifier (1000 images each; the noise folder holds 300): train vs test %.4f, noise vs test %.2f, "
           "test vs itself %.2g\n", train_test, noise_test, self);
    ck_assert_msg(train_test > 0 && train_test < 0.05 * noise_test, "FD(train, test) %g should be far below FD(noise, test) %g",
                  train_test, noise_test);
    ck_assert_msg(fabs(self) < 1e-6 * noise_test, "FD(test, test) = %g", self);
}
END_TEST

// The shipped diffusion model, what make demo samples (models/mini-ms-fmnist.safetensors): stored as
// F16, the mini-ms network with the clustered boundaries of models/README.md, finite weights, and a
// trained denoiser. On 16 test images y at sigma 0.5 and 2, D(y + sigma eps) must be far closer to y
// than the noisy input is (mean squared error sigma^2) and than the same network freshly initialised
// is (D ~ c_skip x there, an error of about 0.5 y + noise).
static double shipped_mse(struct msd_model *m, const float *y, int n, size_t M, double sigma, double *noisy) {
    float *x = xmalloc((size_t)n * M * sizeof(float)), *D = xmalloc((size_t)n * M * sizeof(float));
    double sig[16], e_noisy = 0, e_d = 0;
    for (size_t i = 0; i < (size_t)n * M; i++) x[i] = y[i] + (float)sigma * msd_rng_normal(7, MSD_STREAM_TEST, i);
    for (int k = 0; k < n; k++) sig[k] = sigma;
    const struct msd_backend *be = m->be;
    float *dx = be->alloc((size_t)n * M), *dD = be->alloc((size_t)n * M);
    ck_assert(dx && dD && msd_model_plan(m, n, false) == 0);
    be->upload(dx, x, (size_t)n * M);
    const struct msd_forward_opts o = {.train = false};
    ck_assert_msg(msd_denoise_forward(m, msd_config_stage_of(&m->cfg, sigma), dD, dx, sig, &o) == 0, "%s",
                  msd_last_error());
    be->download(D, dD, (size_t)n * M);
    for (size_t i = 0; i < (size_t)n * M; i++) {
        e_noisy += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
        e_d += ((double)D[i] - y[i]) * ((double)D[i] - y[i]);
    }
    be->release(dx);
    be->release(dD);
    free(x);
    free(D);
    *noisy = e_noisy / ((double)n * M);
    return e_d / ((double)n * M);
}

START_TEST(shipped_diffusion_model) {
    const char *path = "models/mini-ms-fmnist.safetensors";
    struct msd_st_file f;
    ck_assert_msg(msd_st_read(&f, path) == 0, "%s", msd_last_error());
    for (int i = 0; i < f.n_tensors; i++)
        ck_assert_msg(!strcmp(f.tensors[i].dtype, "F16"), "%s: %s is %s, expected F16", path, f.tensors[i].name,
                      f.tensors[i].dtype);
    msd_st_free(&f);
    const struct msd_backend *be = msd_cpu_has_avx2_fma() ? &msd_backend_fast : &msd_backend_ref;
    struct msd_model m, fresh;
    ck_assert_msg(msd_checkpoint_load(&m, path, be) == 0, "%s", msd_last_error());
    ck_assert_msg(m.n_floats == 4325179 && m.cfg.n_stages == 3 && m.cfg.dec_channels[0] == 48 &&
                      m.cfg.dec_channels[1] == 32 && m.cfg.dec_channels[2] == 8,
                  "%s: %zu parameters, %d stages (expected mini-ms: 4325179, 3)", path, m.n_floats, m.cfg.n_stages);
    ck_assert_msg(fabs(m.cfg.boundaries[0] - 1.12483) < 1e-5 && fabs(m.cfg.boundaries[1] - 6.40736) < 1e-5,
                  "%s: boundaries %g, %g", path, (double)m.cfg.boundaries[0], (double)m.cfg.boundaries[1]);
    float *w = xmalloc(m.n_floats * sizeof(float));
    be->download(w, m.w, m.n_floats);
    for (size_t i = 0; i < m.n_floats; i++) ck_assert_msg(isfinite(w[i]), "%s: weight %zu is %g", path, i, (double)w[i]);
    free(w);
    ck_assert(msd_model_create(&fresh, &m.cfg, be) == 0);
    msd_model_init_weights(&fresh, 0);

    struct msd_dataset d;
    ck_assert_msg(msd_data_open(&d, "fmnist:test") == 0, "%s", msd_last_error());
    enum { n = 16 };
    const size_t M = 28 * 28;
    float *y = xmalloc(n * M * sizeof(float));
    msd_data_images(&d, y, 0, n);
    for (int k = 0; k < 2; k++) {
        const double sigma = k ? 2.0 : 0.5;
        double noisy, noisy2;
        const double e = shipped_mse(&m, y, n, M, sigma, &noisy), e0 = shipped_mse(&fresh, y, n, M, sigma, &noisy2);
        printf("shipped model at sigma %g: mean squared error %.4f (noisy input %.4f, untrained network %.4f)\n",
               sigma, e, noisy, e0);
        ck_assert_msg(e < 0.25 * noisy && e < 0.5 * e0, "sigma %g: D's error %g is not far below the noisy "
                      "input's %g and the untrained network's %g", sigma, e, noisy, e0);
    }
    free(y);
    msd_data_free(&d);
    msd_model_free(&fresh);
    msd_model_free(&m);
}
END_TEST

START_TEST(errors) {
    struct test_run r = MSDIFF("eval", "--ref", smooth_a, "--classifier", cls_file);
    TEST_EXPECT_FAIL(&r, 2, "--model", "--images");
    test_run_free(&r);
    r = MSDIFF("eval", "--images", smooth_a, "--ref", smooth_b, "--classifier", test_path("missing.safetensors"));
    TEST_EXPECT_FAIL(&r, 1, "missing.safetensors");
    test_run_free(&r);
    r = MSDIFF("eval", "--images", smooth_a, "--data", "fmnist", "--classifier", cls_file); // 1x28x28 reference
    TEST_EXPECT_FAIL(&r, 1, "classifier", "1 x 8 x 8");
    test_run_free(&r);
}
END_TEST

int main(void) {
    test_tmpdir_make("eval");
    snprintf(cls_file, sizeof cls_file, "%s", test_path("cls.safetensors"));
    snprintf(model_file, sizeof model_file, "%s", test_path("tiny.safetensors"));
    snprintf(smooth_a, sizeof smooth_a, "%s", test_path("a"));
    snprintf(smooth_b, sizeof smooth_b, "%s", test_path("b"));
    snprintf(noise, sizeof noise, "%s", test_path("noise"));
    snprintf(noise28, sizeof noise28, "%s", test_path("noise28"));
    const char *dirs[] = {smooth_a, smooth_b, noise, noise28};
    for (int i = 0; i < 4; i++)
        if (mkdir(dirs[i], 0777) < 0) {
            fprintf(stderr, "test_eval: cannot create %s\n", dirs[i]);
            return 1;
        }
    write_folder(smooth_a, 11, true, R);
    write_folder(smooth_b, 22, true, R);
    write_folder(noise, 33, false, R);
    write_folder(noise28, 44, false, 28);
    // the classifier: freshly initialised for 2 x 8 x 8 images
    struct msd_classifier_config cfg;
    msd_classifier_defaults(&cfg, C, R);
    struct msd_classifier c;
    if (msd_classifier_create(&c, &cfg, &msd_backend_ref) < 0 ||
        (msd_classifier_init(&c, 5), msd_classifier_save(&c, cls_file, NULL, NULL, 0)) < 0) {
        fprintf(stderr, "test_eval: %s\n", msd_last_error());
        return 1;
    }
    msd_classifier_free(&c);
    // the model: tiny-ms with one channel
    struct msd_config mc;
    struct msd_model m;
    if (msd_config_preset(&mc, "tiny-ms") < 0) return fprintf(stderr, "test_eval: %s\n", msd_last_error()), 1;
    mc.in_channels = mc.out_channels = C;
    if (msd_model_create(&m, &mc, &msd_backend_ref) < 0 ||
        (msd_model_init_weights(&m, 3), msd_checkpoint_save(&m, model_file, NULL, NULL, 0)) < 0)
        return fprintf(stderr, "test_eval: %s\n", msd_last_error()), 1;
    msd_model_free(&m);

    const bool fast = msd_cpu_has_avx2_fma(); // the shipped classifier's check runs on the fast backend
    if (!fast)
        printf("eval: the Fashion-MNIST check is skipped: it runs the shipped classifier on the fast backend, "
               "and this CPU lacks AVX2/FMA\n");
    const TTest *tests[] = {self_symmetric_and_far_from_noise, matches_the_library, model_json, errors,
                            fast ? fmnist_shipped_classifier : NULL, shipped_diffusion_model};
    return run_tests("eval", 300, tests, TEST_COUNT(tests));
}
