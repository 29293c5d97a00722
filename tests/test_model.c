// test_model.c: the U-Net against the outside world: parameter and multiply-add counts of the
// paper's networks, and the reference dumps of EDM's and the authors' own PyTorch classes
// (tests/data/README.md): D(x; sigma), the EDM loss and every gradient, for a unified and a
// multistage network, on every backend this machine has (ref, and fast with AVX2/FMA), within the
// network budgets of tests/tolerance.h (NET_D_TOL, NET_GRAD_TOL); the check of the stage a caller
// passes to the denoiser; and the parameter table built before, and without, any parameter memory,
// with its limit on the parameter count.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/core/backend.h"
#include "common/io/checkpoint.h"
#include "common/core/error.h"
#include "common/model/model.h"
#include "common/model/precond.h"
#include "common/io/safetensors.h"
#include "testutil.h"
#include "tolerance.h"

// ---------------------------------------------------------------------------------------------------
// Counts (docs/METHOD.md, Architecture; measured on the authors' PyTorch classes)

static void check_counts(const char *preset, size_t params, const uint64_t *macs) {
    struct msd_config cfg;
    ck_assert_msg(msd_config_preset(&cfg, preset) == 0, "%s", msd_last_error());
    struct msd_model m;
    ck_assert_msg(msd_model_create(&m, &cfg, &msd_backend_ref) == 0, "%s: %s", preset, msd_last_error());
    struct msd_counts c;
    msd_model_count(&m, &c);
    ck_assert_msg(c.total == params, "%s: %zu parameters, want %zu", preset, c.total, params);
    size_t sum = c.shared;
    for (int s = 0; s < cfg.n_stages; s++) {
        sum += c.stage[s];
        ck_assert_msg(c.macs[s] == macs[s], "%s stage %d: %llu MAC, want %llu", preset, s,
                      (unsigned long long)c.macs[s], (unsigned long long)macs[s]);
    }
    ck_assert_msg(sum == c.total, "%s: shared + stages = %zu, total %zu", preset, sum, c.total);
    msd_model_free(&m);
}

START_TEST(paper_counts) {
    check_counts("cifar10", 55732739, (uint64_t[]){21190213632ull});
    check_counts("cifar10-ms", 128792233, (uint64_t[]){35750150144ull, 21190213632ull, 7725498368ull});
    check_counts("mini", 1752993, (uint64_t[]){340216960ull});
    check_counts("mini-ms", 4325179, (uint64_t[]){604495232ull, 340216960ull, 120481792ull});
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// Building and allocating: the parameter table comes first and costs no backend memory, so a loader
// can compare it with a file before anything is sized by the config.

static int n_allocs;
static size_t alloc_floats;
static float *counting_alloc(size_t n) {
    n_allocs++, alloc_floats += n;
    return msd_backend_ref.alloc(n);
}

START_TEST(build_then_alloc) {
    struct msd_backend counting = msd_backend_ref;
    counting.alloc = counting_alloc;
    const char *presets[] = {"cifar10", "cifar10-ms", "mini-ms", "tiny-ms"};
    for (int i = 0; i < 4; i++) {
        for (int separate = 0; separate < 2; separate++) {
            struct msd_config cfg;
            ck_assert(msd_config_preset(&cfg, presets[i]) == 0);
            cfg.separate = separate;
            struct msd_model a, b;
            n_allocs = 0, alloc_floats = 0;
            ck_assert_msg(msd_model_build(&a, &cfg, &counting) == 0, "%s: %s", presets[i], msd_last_error());
            ck_assert_msg(n_allocs == 0 && a.w == NULL, "%s: the build allocated %d buffers", presets[i], n_allocs);
            ck_assert_msg(a.n_floats <= MSD_MAX_PARAMS, "%s: %zu parameters", presets[i], a.n_floats);
            ck_assert_msg(msd_model_create(&b, &cfg, &msd_backend_ref) == 0, "%s", msd_last_error());
            ck_assert_msg(a.n_params == b.n_params && a.n_floats == b.n_floats, "%s: the built table differs",
                          presets[i]);
            for (int k = 0; k < a.n_params; k++)
                ck_assert(!strcmp(a.params[k].name, b.params[k].name) && a.params[k].offset == b.params[k].offset);
            ck_assert_msg(msd_model_alloc(&a) == 0, "%s", msd_last_error());
            ck_assert_msg(n_allocs == 1 && alloc_floats == a.n_floats && a.w != NULL,
                          "%s: alloc made %d allocations of %zu floats in all, want one of %zu", presets[i], n_allocs,
                          alloc_floats, a.n_floats);
            msd_model_free(&a);
            msd_model_free(&b);
        }
    }
}
END_TEST

// Widths within the config's limits that make 24.8G parameters: the build refuses them, names the
// count and the limit, allocates nothing and leaves the model empty. Just under the limit is built.
START_TEST(parameter_limit) {
    struct msd_backend counting = msd_backend_ref;
    counting.alloc = counting_alloc;
    struct msd_config cfg;
    ck_assert(msd_config_preset(&cfg, "tiny") == 0);
    cfg.model_channels = 1024, cfg.channel_mult[0] = cfg.channel_mult[1] = 16;
    ck_assert_msg(msd_config_validate(&cfg) == 0, "%s", msd_last_error());
    struct msd_model m;
    n_allocs = 0;
    ck_assert_msg(msd_model_build(&m, &cfg, &counting) == -1, "24.8G parameters built");
    ck_assert_msg(strstr(msd_last_error(), "24773696514 parameters, more than the 1073741824"), "message: %s",
                  msd_last_error());
    ck_assert_msg(n_allocs == 0 && m.params == NULL && m.n_floats == 0, "the model was left built");
    // channel_mult [4, 4]: 4096 channels, 1663326210 parameters, still too many; [3, 3] (in 8 GroupNorm
    // groups, which 3072 channels need) gives 3072 channels and 968629826, which is built as a table
    cfg.channel_mult[0] = cfg.channel_mult[1] = 4;
    ck_assert_msg(msd_model_build(&m, &cfg, &counting) == -1 && strstr(msd_last_error(), "1663326210 parameters"),
                  "[4, 4]: %s", msd_last_error());
    cfg.channel_mult[0] = cfg.channel_mult[1] = 3, cfg.gn_groups = 8;
    ck_assert_msg(msd_model_build(&m, &cfg, &counting) == 0, "[3, 3]: %s", msd_last_error());
    ck_assert_msg(m.n_floats == 968629826 && n_allocs == 0, "[3, 3]: %zu parameters, %d allocations", m.n_floats,
                  n_allocs);
    msd_model_free(&m);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// Reference dumps, on every backend (docs/DESIGN.md, The PyTorch reference dumps): ref, and fast where the CPU
// has AVX2/FMA.

static const char *data_path(const char *file) {
    static char path[256];
    snprintf(path, sizeof path, "tests/data/%s", file);
    return path;
}

static float *read_tensor(const struct msd_st_file *f, const char *name, size_t *n) {
    const struct msd_st_tensor *t = msd_st_find(f, name);
    ck_assert_msg(t != NULL, "%s: no tensor %s", f->path, name);
    size_t count = 1;
    for (int d = 0; d < t->ndim; d++) count *= (size_t)t->shape[d];
    float *x = tbuf_new(count);
    ck_assert_msg(msd_st_get_f32(f, name, t->ndim, t->shape, x) == 0, "%s", msd_last_error());
    if (n) *n = count;
    return x;
}

// max |got - want| <= tol * max |want| (tests/tolerance.h: NET_D_TOL for D and the loss, NET_GRAD_TOL
// for gradients), asserted once; returns the error as a fraction of max |want|.
static double check_rel(const float *got, const float *want, size_t n, double tol, const char *what) {
    double scale = 0, err = 0;
    size_t worst = 0;
    for (size_t i = 0; i < n; i++) {
        scale = fmax(scale, fabs(want[i]));
        double e = fabs((double)got[i] - want[i]);
        if (!(e <= err)) err = e, worst = i; // NaN counts as the worst
    }
    ck_assert_msg(net_within(err, scale, tol), "%s: max abs err %.3g > %.0e x max |ref| %.3g at [%zu] (got %.9g, ref %.9g)",
                  what, err, tol, scale, worst, got[worst], want[worst]);
    return scale > 0 ? err / scale : 0.0;
}

// The backend of loop iteration i (0 ref, 1 fast), or NULL (with a line saying why) when this
// machine lacks it.
static const struct msd_backend *backend_of(int i, const char *test) {
    if (i == 0) return &msd_backend_ref;
    if (!msd_cpu_has_avx2_fma()) {
        printf("model %s on fast: SKIPPED, this CPU lacks AVX2/FMA (fast/ cannot run here)\n", test);
        return NULL;
    }
    const struct msd_backend *b = msd_backend_get("fast");
    ck_assert_msg(b != NULL, "%s", msd_last_error());
    return b;
}

static void check_reference(const struct msd_backend *be, const char *file, const char *preset, int expect_stages) {
    struct msd_st_file f;
    ck_assert_msg(msd_st_read(&f, data_path(file)) == 0, "%s", msd_last_error());
    struct msd_config cfg;
    ck_assert(msd_config_preset(&cfg, preset) == 0);
    ck_assert_int_eq(cfg.n_stages, expect_stages);
    struct msd_model m;
    ck_assert_msg(msd_model_create(&m, &cfg, be) == 0, "%s", msd_last_error());
    ck_assert_msg(msd_model_load_tensors(&m, &f) == 0, "%s", msd_last_error());
    size_t ny;
    float *y = read_tensor(&f, "y", &ny), *noise = read_tensor(&f, "n", NULL);
    const int N = 3;
    ck_assert(msd_model_plan(&m, N, true) == 0);
    const double sigmas[2] = {0.3, 5.0};
    // host: x, D, dx, g; backend: the same, and y and the noise for the loss
    float *x = tbuf_new(ny), *D = tbuf_new(ny), *dx = tbuf_new(ny), *g = tbuf_new(m.n_floats);
    float *bx = be->alloc(ny), *bD = be->alloc(ny), *bdx = be->alloc(ny), *by = be->alloc(ny), *bn = be->alloc(ny);
    ck_assert(bx && bD && bdx && by && bn);
    be->upload(by, y, ny), be->upload(bn, noise, ny);
    struct msd_forward_opts o = {false, 0};
    for (int c = 0; c < 2; c++) {
        char name[200], what[256];
        double sigma[3] = {sigmas[c], sigmas[c], sigmas[c]};
        for (size_t i = 0; i < ny; i++) x[i] = (float)(y[i] + sigmas[c] * noise[i]);
        // D(y + sigma n; sigma)
        be->upload(bx, x, ny);
        const int stage = msd_config_stage_of(&cfg, sigmas[c]);
        ck_assert(msd_denoise_forward(&m, stage, bD, bx, sigma, &o) == 0);
        be->download(D, bD, ny);
        snprintf(name, sizeof name, "case%d.D", c);
        float *Dref = read_tensor(&f, name, NULL);
        snprintf(what, sizeof what, "%s %s on %s", file, name, be->name);
        const double eD = check_rel(D, Dref, ny, NET_D_TOL, what);
        // loss and gradients
        be->fill(m.grad, 0.0f, m.n_floats);
        double loss = msd_loss(&m, stage, by, bn, sigma, true, bdx, NULL, &o);
        be->download(dx, bdx, ny);
        snprintf(name, sizeof name, "case%d.loss", c);
        float *lref = read_tensor(&f, name, NULL);
        const double eL = fabs(loss - lref[0]) / fabs(lref[0]);
        ck_assert_msg(eL <= NET_D_TOL, "%s %s on %s: %.9g, ref %.9g", file, name, be->name, loss, lref[0]);
        snprintf(name, sizeof name, "case%d.grad.x", c);
        float *gx = read_tensor(&f, name, NULL);
        snprintf(what, sizeof what, "%s %s on %s", file, name, be->name);
        const double ex = check_rel(dx, gx, ny, NET_GRAD_TOL, what);
        be->download(g, m.grad, m.n_floats);
        double eg = 0;
        const char *worst = "";
        for (int k = 0; k < m.n_params; k++) {
            const struct msd_param *p = &m.params[k];
            snprintf(name, sizeof name, "case%d.grad.%s", c, p->name);
            float *gref = read_tensor(&f, name, NULL);
            snprintf(what, sizeof what, "%s %s on %s", file, name, be->name);
            const double e = check_rel(g + p->offset, gref, p->numel, NET_GRAD_TOL, what);
            if (e > eg) eg = e, worst = p->name;
            if (p->owner != MSD_OWNER_SHARED && p->owner != stage) {
                size_t i = 0;
                while (i < p->numel && g[p->offset + i] == 0.0f) i++;
                ck_assert_msg(i == p->numel, "%s: inactive decoder has gradient %g at [%zu]", what,
                              i < p->numel ? g[p->offset + i] : 0.0, i);
            }
            tbuf_free(gref);
        }
        printf("model %s %s on %-4s: D %.2e, loss %.2e (bound %.0e); dx %.2e, worst gradient %.2e in %s "
               "(bound %.0e), as fractions of max |ref|\n",
               file, c ? "case1" : "case0", be->name, eD, eL, NET_D_TOL, ex, eg, worst, NET_GRAD_TOL);
        tbuf_free(Dref), tbuf_free(lref), tbuf_free(gx);
    }
    float *dev[] = {bx, bD, bdx, by, bn};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) be->release(dev[i]);
    tbuf_free(x), tbuf_free(D), tbuf_free(dx), tbuf_free(g), tbuf_free(y), tbuf_free(noise);
    msd_model_free(&m);
    msd_st_free(&f);
}

// Loop tests: iteration 0 on ref, 1 on fast.
START_TEST(reference_unified) {
    const struct msd_backend *b = backend_of(_i, "reference_unified");
    if (b) check_reference(b, "edm-tiny-unified.safetensors", "tiny", 1);
}
END_TEST

START_TEST(reference_multistage) {
    const struct msd_backend *b = backend_of(_i, "reference_multistage");
    if (b) check_reference(b, "edm-tiny-ms.safetensors", "tiny-ms", 2);
}
END_TEST

// The caller names the stage and the denoiser checks it: a batch with a sigma outside the stage, or a
// stage the model does not have, is refused with a message (tiny-ms: stage 0 up to sigma 1, stage 1
// above), by msd_denoise_forward and by msd_loss; msd_batch_stage refuses a batch that spans stages.
START_TEST(stage_is_checked) {
    const struct msd_backend *b = &msd_backend_ref;
    struct msd_config cfg;
    ck_assert(msd_config_preset(&cfg, "tiny-ms") == 0);
    struct msd_model m;
    ck_assert_msg(msd_model_create(&m, &cfg, b) == 0, "%s", msd_last_error());
    msd_model_init_weights(&m, 1);
    ck_assert(msd_model_plan(&m, 2, true) == 0);
    const size_t n = 2 * (size_t)cfg.in_channels * cfg.img_resolution * cfg.img_resolution;
    float *x = b->alloc(n), *D = b->alloc(n), *noise = b->alloc(n);
    ck_assert(x && D && noise);
    b->fill(x, 0.25f, n), b->fill(noise, 1.0f, n);
    const struct msd_forward_opts o = {false, 0};
    const double mixed[2] = {0.5, 3.0}, high[2] = {3.0, 2.0};
    ck_assert_int_eq(msd_batch_stage(&cfg, mixed, 2), -1);
    ck_assert_msg(strstr(msd_last_error(), "sigma[1] = 3 is in stage 1") != NULL, "%s", msd_last_error());
    ck_assert_int_eq(msd_batch_stage(&cfg, high, 2), 1);
    ck_assert_int_eq(msd_denoise_forward(&m, 0, D, x, mixed, &o), -1);
    ck_assert_msg(strstr(msd_last_error(), "sigma[1] = 3 is in stage 1, the batch's stage is 0") != NULL, "%s",
                  msd_last_error());
    ck_assert_int_eq(msd_denoise_forward(&m, 0, D, x, high, &o), -1);
    ck_assert_msg(strstr(msd_last_error(), "sigma[0] = 3 is in stage 1") != NULL, "%s", msd_last_error());
    ck_assert_int_eq(msd_denoise_forward(&m, 2, D, x, high, &o), -1);
    ck_assert_msg(strstr(msd_last_error(), "stage 2: the model has stages 0..1") != NULL, "%s", msd_last_error());
    ck_assert_int_eq(msd_denoise_forward(&m, -1, D, x, high, &o), -1);
    ck_assert_msg(isnan(msd_loss(&m, 0, x, noise, high, true, NULL, NULL, &o)), "msd_loss ran with a wrong stage");
    ck_assert_msg(msd_denoise_forward(&m, 1, D, x, high, &o) == 0, "%s", msd_last_error());
    ck_assert_msg(isfinite(msd_loss(&m, 1, x, noise, high, true, NULL, NULL, &o)), "%s", msd_last_error());
    b->release(x), b->release(D), b->release(noise);
    msd_model_free(&m);
}
END_TEST

int main(void) {
    const TTest *tests[] = {paper_counts, build_then_alloc, parameter_limit, stage_is_checked};
    const struct loop_test loops[] = {{reference_unified, 2}, {reference_multistage, 2}};
    return run_test_suite(&(struct test_suite){.name = "model", .timeout_s = 120, .tests = tests,
                                               .n = TEST_COUNT(tests), .loops = loops, .n_loops = TEST_COUNT(loops)});
}
