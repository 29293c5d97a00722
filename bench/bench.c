// bench.c: `make bench`, the backends measured against each other and against the machine.
//
//   build/bench [--backends ref,fast,cuda] [--batch N] [--ref-batch N] [--threads T] [--quick] [--csv]
//               [--only ops|train|sample] [--preset NAME]
//
// Three sections, every backend that this build and machine have (or those named):
//   ops     per-op time at the `mini` layer shapes (batch 64): median milliseconds, GFLOP/s (2 flops
//           per multiply-add; memory-bound ops show GB/s instead, bytes read + written once) and the
//           percentage of the AVX2 FMA peak, which the bench measures first in the same run.
//   train   training steps per second and images/s for `mini` and `mini-ms` (msd_train_step on a
//           synthetic data set: random pixels, so no file is read), batch 64.
//   sample  the sampling forward D(x; sigma) (no gradients) in images/s per stage, and a whole Heun
//           sampler of 18 steps (35 evaluations) from the EDM schedule in samples/s.
// ref/ is the oracle, not a contender: it runs the train and sample sections at --ref-batch (default
// 8) images so that the bench finishes in minutes; its images/s scale with batch no better than
// linearly, so the ratio to fast/ at batch 64 is if anything in ref's favour.
//
// Peak: every thread runs 12 independent chains of _mm256_fmadd_ps in registers (FMA latency x 2 ports
// worth), all threads at once; peak = 16 flops x FMAs / the slowest thread's time, the best of 7.
// Timings: one warm-up, then repetitions until both --reps and a time budget are reached; the median
// is reported (min and max in the CSV). The header says the CPU, cores, threads and load average: a
// loaded machine gives slow numbers (2 OpenMP threads on 2 busy cores are far slower than 1).
#include <immintrin.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "common/core/backend.h"
#include "common/model/config.h"
#include "common/io/data.h"
#include "common/core/error.h"
#include "common/model/model.h"
#include "common/model/precond.h"
#include "common/core/rng.h"
#include "common/model/sampler.h"
#include "common/model/train.h"
#include "common/core/util.h"

static struct {
    const char *backends; // comma-separated, or NULL for all available
    int batch, ref_batch, reps;
    double budget; // seconds per measurement, at least
    bool csv;
    const char *only;
    const char *preset; // the train and sample sections' config, or NULL for mini and mini-ms
} opt = {NULL, 64, 8, 5, 1.0, false, NULL, NULL};

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

// ---------------------------------------------------------------------------------------------------
// The machine's peak

#define FMA4(a, b, c, d)                                                                            \
    a = _mm256_fmadd_ps(a, m, k), b = _mm256_fmadd_ps(b, m, k), c = _mm256_fmadd_ps(c, m, k),       \
    d = _mm256_fmadd_ps(d, m, k);                                                                   \
    __asm__ volatile("" : "+x"(a), "+x"(b), "+x"(c), "+x"(d))

__attribute__((target("avx2,fma"))) static double peak_once(long iters) {
    double flops = 0.0, slowest = 0.0;
#pragma omp parallel reduction(+ : flops) reduction(max : slowest)
    {
        const __m256 m = _mm256_set1_ps(0.999999f), k = _mm256_set1_ps(1e-6f);
        __m256 a0 = _mm256_set1_ps(1.0f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0;
        __m256 a6 = a0, a7 = a0, a8 = a0, a9 = a0, a10 = a0, a11 = a0;
#pragma omp barrier
        const double t0 = now();
        for (long i = 0; i < iters; i++) {
            FMA4(a0, a1, a2, a3);
            FMA4(a4, a5, a6, a7);
            FMA4(a8, a9, a10, a11);
        }
        slowest = now() - t0;
        flops += 16.0 * 12 * (double)iters;
    }
    return flops / slowest * 1e-9;
}

// The best of 7 (GFLOP/s), or 0 without AVX2/FMA.
static double peak_gflops(void) {
    if (!msd_cpu_has_avx2_fma()) return 0.0;
    double best = 0.0;
    for (int r = 0; r < 7; r++) {
        const double p = peak_once(20000000);
        if (p > best) best = p;
    }
    return best;
}

// ---------------------------------------------------------------------------------------------------
// Timing and reporting

struct timing {
    double med, lo, hi;
    int reps;
};

// f(ctx) after one warm-up, repeated until `reps` runs and opt.budget seconds are both reached (at
// most 99 runs; only 1 when that run takes longer than `single` seconds).
static struct timing timeit_reps(void (*f)(void *), void *ctx, const struct msd_backend *be, double single,
                                 int reps) {
    double t[99];
    f(ctx);
    be->sync();
    int n = 0;
    double total = 0.0;
    while (n < 99) {
        const double t0 = now();
        f(ctx);
        be->sync();
        t[n] = now() - t0;
        total += t[n++];
        if (t[0] > single) break;
        if (n >= reps && total >= opt.budget) break;
    }
    qsort(t, n, sizeof t[0], cmp_double);
    return (struct timing){t[n / 2], t[0], t[n - 1], n};
}

static struct timing timeit(void (*f)(void *), void *ctx, const struct msd_backend *be, double single) {
    return timeit_reps(f, ctx, be, single, opt.reps);
}

static double peak;

// One result line: flops (0 for none), bytes (0 for none), images (0 for none) per run.
static void report(const char *section, const char *backend, const char *what, int batch, struct timing t,
                   double flops, double bytes, double images) {
    const double gf = flops / t.med * 1e-9, gb = bytes / t.med * 1e-9, ips = images / t.med;
    // the measured peak is the CPU's: a percentage of it means nothing for the GPU
    const double pk = strcmp(backend, "cuda") == 0 ? 0.0 : peak;
    if (opt.csv) {
        printf("%s,%s,\"%s\",%d,%d,%.6g,%.6g,%.6g,%d,%.4g,%.4g,%.4g,%.4g\n", section, backend, what, batch,
               threads(), t.med * 1e3, t.lo * 1e3, t.hi * 1e3, t.reps, flops ? gf : NAN,
               flops && pk > 0 ? 100.0 * gf / pk : NAN, bytes ? gb : NAN, images ? ips : NAN);
        fflush(stdout);
        return;
    }
    char rate[48] = "";
    if (flops && pk > 0)
        snprintf(rate, sizeof rate, "%7.1f GFLOP/s %5.1f%%", gf, 100.0 * gf / pk);
    else if (flops)
        snprintf(rate, sizeof rate, "%7.1f GFLOP/s", gf);
    else if (bytes)
        snprintf(rate, sizeof rate, "%7.1f GB/s", gb);
    char img[32] = "";
    if (images) snprintf(img, sizeof img, "%9.2f images/s", ips);
    printf("  %-5s %-46s %10.3f ms  %-22s%s\n", backend, what, t.med * 1e3, rate, img);
    fflush(stdout);
}

static void section_title(const char *title) {
    if (!opt.csv) printf("\n%s\n", title);
}

// Device memory filled from the counter RNG with uniforms in [-1, 1].
static float *dev_random(const struct msd_backend *be, size_t n, uint64_t seed) {
    float *h = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) h[i] = 2.0f * msd_rng_uniform(seed, MSD_STREAM_TEST, i) - 1.0f;
    float *d = be->alloc(n);
    if (!d) {
        fprintf(stderr, "bench: out of %s memory for %zu floats\n", be->name, n);
        exit(1);
    }
    be->upload(d, h, n);
    free(h);
    return d;
}

// ---------------------------------------------------------------------------------------------------
// ops

struct opctx {
    const struct msd_backend *be;
    int N, C, H, W, OC, K, G;
    size_t n;
    float *x, *w, *b, *y, *dy, *dx, *dw, *db, *m, *v, *mean, *rstd;
};

static void conv_fwd(void *p) {
    struct opctx *c = p;
    c->be->conv2d_forward(c->y, c->x, c->w, c->b, c->N, c->C, c->H, c->W, c->OC, c->K);
}
static void conv_bwd(void *p) {
    struct opctx *c = p;
    c->be->conv2d_backward(c->dx, c->dw, c->db, c->dy, c->x, c->w, c->N, c->C, c->H, c->W, c->OC, c->K);
}
static void gn_fwd(void *p) {
    struct opctx *c = p;
    c->be->groupnorm_forward(c->y, c->mean, c->rstd, c->x, c->w, c->b, c->N, c->C, c->H * c->W, c->G, 1e-6f);
}
static void gn_bwd(void *p) {
    struct opctx *c = p;
    c->be->groupnorm_backward(c->dx, c->dw, c->db, c->dy, c->mean, c->rstd, c->x, c->w, c->N, c->C, c->H * c->W,
                              c->G);
}
static void silu_fwd(void *p) {
    struct opctx *c = p;
    c->be->silu_forward(c->y, c->x, c->n);
}
static void silu_bwd(void *p) {
    struct opctx *c = p;
    c->be->silu_backward(c->dx, c->dy, c->x, c->n);
}
static void attn_fwd(void *p) {
    struct opctx *c = p;
    c->be->attention_forward(c->y, c->w, c->x, c->N, c->C, c->H * c->W);
}
static void attn_bwd(void *p) {
    struct opctx *c = p;
    c->be->attention_backward(c->dx, c->dy, c->w, c->x, c->N, c->C, c->H * c->W);
}
static void lin_fwd(void *p) {
    struct opctx *c = p;
    c->be->linear_forward(c->y, c->x, c->w, c->b, c->N, c->C, c->OC);
}
static void lin_bwd(void *p) {
    struct opctx *c = p;
    c->be->linear_backward(c->dx, c->dw, c->db, c->dy, c->x, c->w, c->N, c->C, c->OC);
}
static void down_fwd(void *p) {
    struct opctx *c = p;
    c->be->down2_forward(c->y, c->x, c->N, c->C, c->H, c->W);
}
static void up_fwd(void *p) {
    struct opctx *c = p;
    c->be->up2_forward(c->y, c->x, c->N, c->C, c->H, c->W);
}
static void adam_step(void *p) {
    struct opctx *c = p;
    c->be->adam(c->x, c->m, c->v, c->dy, 1e-4f, 0.9f, 0.999f, 1e-8f, 10, c->n);
}
static void ema_step(void *p) {
    struct opctx *c = p;
    c->be->ema(c->y, c->x, 0.999f, c->n);
}

// Buffers big enough for every op below, shared by all of them.
static void op_buffers(struct opctx *c, size_t big, size_t wsize) {
    const struct msd_backend *be = c->be;
    c->x = dev_random(be, big, 1), c->y = dev_random(be, big, 2), c->dy = dev_random(be, big, 3);
    c->dx = dev_random(be, big, 4), c->w = dev_random(be, wsize, 5), c->dw = dev_random(be, wsize, 6);
    c->b = dev_random(be, 4096, 7), c->db = dev_random(be, 4096, 8), c->m = dev_random(be, wsize, 9);
    c->v = dev_random(be, wsize, 10), c->mean = dev_random(be, 1 << 16, 11), c->rstd = dev_random(be, 1 << 16, 12);
    be->fill(c->v, 0.5f, wsize); // Adam's second moment: positive
    be->fill(c->rstd, 1.0f, 1 << 16);
}

static void op_free(struct opctx *c) {
    float *all[] = {c->x, c->y, c->dy, c->dx, c->w, c->dw, c->b, c->db, c->m, c->v, c->mean, c->rstd};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) c->be->release(all[i]);
}

static void bench_ops(const struct msd_backend *be) {
    const int B = opt.batch;
    struct opctx c = {.be = be};
    // (B, 96, 28, 28) is the largest activation; attention's weights (B, 196, 196) the largest other
    // buffer; the mini network's parameters (1.75M) the largest weight vector.
    const size_t big = (size_t)B * 3 * 64 * 196 > (size_t)B * 96 * 784 ? (size_t)B * 3 * 64 * 196 : (size_t)B * 96 * 784;
    const size_t wsize = 1752993 > (size_t)B * 196 * 196 ? 1752993 : (size_t)B * 196 * 196;
    op_buffers(&c, big, wsize);
    // ref/ is the readable oracle: time it once per op, not for seconds.
    const double single = strcmp(be->name, "ref") == 0 ? 0.2 : 1e9;
    char what[96];

    const struct { int C, H, OC, K; const char *role; } convs[] = {
        {1, 28, 32, 3, "enc 28x28_conv"},   {32, 28, 32, 3, "28x28 block conv"},
        {64, 14, 64, 3, "14x14 block conv"}, {64, 7, 64, 3, "7x7 block conv"},
        {96, 28, 32, 3, "dec 28x28 conv0 (concat)"}, {64, 14, 192, 1, "14x14 qkv 1x1"},
    };
    for (size_t i = 0; i < sizeof convs / sizeof convs[0]; i++) {
        c.N = B, c.C = convs[i].C, c.H = c.W = convs[i].H, c.OC = convs[i].OC, c.K = convs[i].K;
        const double flops = 2.0 * B * c.OC * c.C * c.K * c.K * c.H * c.W;
        snprintf(what, sizeof what, "conv%dx%d fwd %d->%d %dx%d  (%s)", c.K, c.K, c.C, c.OC, c.H, c.H, convs[i].role);
        report("ops", be->name, what, B, timeit(conv_fwd, &c, be, single), flops, 0, 0);
        snprintf(what, sizeof what, "conv%dx%d bwd %d->%d %dx%d  (dx, dw, db)", c.K, c.K, c.C, c.OC, c.H, c.H);
        report("ops", be->name, what, B, timeit(conv_bwd, &c, be, single), 2 * flops, 0, 0);
    }
    c.N = B, c.C = 64, c.H = c.W = 14, c.G = 16;
    const double act = 4.0 * B * 64 * 196;
    report("ops", be->name, "groupnorm fwd 64 ch 14x14, 16 groups", B, timeit(gn_fwd, &c, be, single), 0, 2 * act, 0);
    report("ops", be->name, "groupnorm bwd 64 ch 14x14, 16 groups", B, timeit(gn_bwd, &c, be, single), 0, 3 * act, 0);
    c.n = (size_t)B * 32 * 784;
    report("ops", be->name, "silu fwd 32 ch 28x28", B, timeit(silu_fwd, &c, be, single), 0, 8.0 * c.n, 0);
    report("ops", be->name, "silu bwd 32 ch 28x28", B, timeit(silu_bwd, &c, be, single), 0, 12.0 * c.n, 0);
    c.C = 64, c.H = c.W = 14;
    const double aflops = 4.0 * B * 64 * 196.0 * 196.0;
    report("ops", be->name, "attention fwd 64 ch 14x14", B, timeit(attn_fwd, &c, be, single), aflops, 0, 0);
    report("ops", be->name, "attention bwd 64 ch 14x14", B, timeit(attn_bwd, &c, be, single), 2 * aflops, 0, 0);
    c.C = 128, c.OC = 128;
    const double lflops = 2.0 * B * 128 * 128;
    report("ops", be->name, "linear fwd 128->128 (mapping)", B, timeit(lin_fwd, &c, be, single), lflops, 0, 0);
    report("ops", be->name, "linear bwd 128->128", B, timeit(lin_bwd, &c, be, single), 2 * lflops, 0, 0);
    c.C = 32, c.H = c.W = 28;
    report("ops", be->name, "down2 fwd 32 ch 28x28", B, timeit(down_fwd, &c, be, single), 0, 5.0 * B * 32 * 196, 0);
    c.H = c.W = 14;
    report("ops", be->name, "up2 fwd 32 ch 14x14", B, timeit(up_fwd, &c, be, single), 0, 20.0 * B * 32 * 196, 0);
    c.n = 1752993;
    report("ops", be->name, "adam, 1.75M parameters (mini)", B, timeit(adam_step, &c, be, single), 0, 28.0 * c.n, 0);
    report("ops", be->name, "ema, 1.75M parameters", B, timeit(ema_step, &c, be, single), 0, 12.0 * c.n, 0);
    op_free(&c);
}

// ---------------------------------------------------------------------------------------------------
// train and sample

struct trainctx {
    struct msd_model *m;
    struct msd_train_state *st;
    const struct msd_dataset *data;
    struct msd_train_opts *o;
};
static void train_step(void *p) {
    struct trainctx *t = p;
    struct msd_step_info info;
    if (msd_train_step(t->m, t->st, t->data, t->o, &info) < 0) {
        fprintf(stderr, "bench: training step failed: %s\n", msd_last_error());
        exit(1);
    }
}

static int model_for(struct msd_model *m, const char *preset, const struct msd_backend *be) {
    struct msd_config cfg;
    if (msd_config_preset(&cfg, preset) < 0 || msd_model_create(m, &cfg, be) < 0) {
        fprintf(stderr, "bench: %s on %s: %s\n", preset, be->name, msd_last_error());
        return -1;
    }
    msd_model_init_weights(m, 1);
    return 0;
}

static void bench_train(const struct msd_backend *be, const char *preset) {
    const int B = strcmp(be->name, "ref") == 0 ? opt.ref_batch : opt.batch;
    struct msd_model m;
    if (model_for(&m, preset, be) < 0) return;
    struct msd_train_state st;
    struct msd_dataset data; // random pixels: no file to read, the same work as real images
    if (msd_data_random(&data, 1024, m.cfg.in_channels, m.cfg.img_resolution, 1) < 0) {
        fprintf(stderr, "bench: %s\n", msd_last_error());
        msd_model_free(&m);
        return;
    }
    struct msd_train_opts o;
    msd_train_defaults(&o);
    o.batch = B, o.lr_rampup = 0; // a constant learning rate: every step does the same work
    if (msd_model_plan(&m, B, true) < 0 || msd_train_state_init(&st, &m) < 0) {
        fprintf(stderr, "bench: %s on %s, batch %d: %s\n", preset, be->name, B, msd_last_error());
        msd_model_free(&m);
        msd_data_free(&data);
        return;
    }
    struct trainctx t = {&m, &st, &data, &o};
    // A multistage step trains one stage (its decoder) per step, picked at random: the median over the
    // steps timed is a typical step, and more steps are timed so that every stage shows up.
    const int reps = m.cfg.n_stages > 1 && opt.reps < 9 ? 9 : opt.reps;
    const double single = strcmp(be->name, "ref") == 0 ? 1.0 : 1e9;
    char what[96];
    snprintf(what, sizeof what, "train step %s (%d stage%s)", preset, m.cfg.n_stages, m.cfg.n_stages > 1 ? "s" : "");
    const struct timing tm = timeit_reps(train_step, &t, be, single, reps);
    report("train", be->name, what, B, tm, 0, 0, B);
    msd_train_state_free(&st, &m);
    msd_model_free(&m);
    msd_data_free(&data);
}

struct samplectx {
    struct msd_model *m;
    float *x, *D;
    double *sigmas; // (B)
    int B;
    double sigma;
    const double *schedule;
    int n_schedule;
};
static int denoise(void *ctx, float *D, const float *x, double sigma) {
    struct samplectx *s = ctx;
    for (int i = 0; i < s->B; i++) s->sigmas[i] = sigma;
    const struct msd_forward_opts fo = {false, 0};
    return msd_denoise_forward(s->m, msd_config_stage_of(&s->m->cfg, sigma), D, x, s->sigmas, &fo);
}
static void forward(void *p) {
    struct samplectx *s = p;
    if (denoise(s, s->D, s->x, s->sigma) < 0) {
        fprintf(stderr, "bench: forward failed: %s\n", msd_last_error());
        exit(1);
    }
}
static void heun(void *p) {
    struct samplectx *s = p;
    const size_t M = (size_t)s->m->cfg.in_channels * s->m->cfg.img_resolution * s->m->cfg.img_resolution;
    uint64_t *seeds = xmalloc((size_t)s->B * sizeof *seeds);
    for (int i = 0; i < s->B; i++) seeds[i] = (uint64_t)i;
    msd_sample_latent(s->m->be, s->x, s->B, M, seeds, s->schedule[0]);
    const struct msd_sample_opts so = msd_sample_opts_default(MSD_SAMPLER_HEUN, s->n_schedule - 1);
    if (msd_sample(s->m->be, s->B, M, s->x, s->schedule, s->n_schedule, &so, denoise, s) < 0) {
        fprintf(stderr, "bench: sampler failed: %s\n", msd_last_error());
        exit(1);
    }
    free(seeds);
}

static void bench_sample(const struct msd_backend *be, const char *preset) {
    const bool is_ref = strcmp(be->name, "ref") == 0;
    const int B = is_ref ? opt.ref_batch : opt.batch;
    struct msd_model m;
    if (model_for(&m, preset, be) < 0) return;
    if (msd_model_plan(&m, B, false) < 0) {
        fprintf(stderr, "bench: %s on %s, batch %d: %s\n", preset, be->name, B, msd_last_error());
        msd_model_free(&m);
        return;
    }
    const size_t M = (size_t)m.cfg.in_channels * m.cfg.img_resolution * m.cfg.img_resolution;
    double schedule[19];
    struct msd_schedule_opts so = msd_schedule_opts_default();
    msd_schedule(schedule, 18, MSD_SCHEDULE_EDM, &so);
    struct samplectx s = {&m, dev_random(be, (size_t)B * M, 20), dev_random(be, (size_t)B * M, 21),
                          xmalloc((size_t)B * sizeof(double)), B, 0.0, schedule, 19};
    struct msd_counts counts;
    msd_model_count(&m, &counts);
    const double single = is_ref ? 0.5 : 1e9;
    char what[96];
    for (int stage = 0; stage < m.cfg.n_stages; stage++) {
        // a sigma inside the stage: the geometric middle of its range (2x the boundary below the last)
        const double lo = stage ? m.cfg.boundaries[stage - 1] : 0.002, hi = stage < m.cfg.n_stages - 1 ? m.cfg.boundaries[stage] : 80.0;
        s.sigma = sqrt(lo * hi);
        snprintf(what, sizeof what, "sampling forward %s stage %d (sigma %.3g)", preset, stage, s.sigma);
        report("sample", be->name, what, B, timeit(forward, &s, be, single), 2.0 * (double)counts.macs[stage] * B, 0, B);
    }
    if (!is_ref) {
        snprintf(what, sizeof what, "heun 18 steps (35 evaluations) %s", preset);
        report("sample", be->name, what, B, timeit(heun, &s, be, 0.0), 0, 0, B);
    }
    be->release(s.x), be->release(s.D), free(s.sigmas);
    msd_model_free(&m);
}

// ---------------------------------------------------------------------------------------------------

static void usage(FILE *f) {
    fprintf(f,
            "usage: bench [--backends LIST] [--batch N] [--ref-batch N] [--reps N] [--budget S] [--quick]\n"
            "             [--only ops|train|sample] [--preset NAME] [--csv]\n\n"
            "Per-op time and GFLOP/s against the measured AVX2 FMA peak, training-step and sampling\n"
            "throughput for mini and mini-ms, on every backend this build and machine have.\n\n"
            "  --backends LIST  comma-separated: ref, fast, cuda (default: all available)\n"
            "  --batch N        images per op, step and forward (default 64)\n"
            "  --ref-batch N    the batch for ref's train and sample sections (default 8)\n"
            "  --reps N         timed runs per measurement, at least (default 5)\n"
            "  --budget S       seconds per measurement, at least (default 1)\n"
            "  --quick          --reps 3 --budget 0.2\n"
            "  --only SECTION   ops, train or sample\n"
            "  --preset NAME    train and sample this config only (default: mini and mini-ms)\n"
            "  --csv            machine-readable lines only (header lines start with '#')\n\n"
            "OMP_NUM_THREADS sets the thread count. Time on an idle machine: load slows OpenMP a lot.\n");
}

static int parse_int(const char *flag, const char *v, int *out) {
    char *end;
    const long x = v ? strtol(v, &end, 10) : 0;
    if (!v || *end || x < 1 || x > 100000) {
        fprintf(stderr, "bench: %s: expected a positive integer, got '%s'\n", flag, v ? v : "(nothing)");
        return -1;
    }
    *out = (int)x;
    return 0;
}

static bool wanted(const char *name) {
    if (!opt.backends) return true;
    const size_t n = strlen(name);
    for (const char *p = opt.backends; *p;) {
        const size_t len = strcspn(p, ",");
        if (len == n && strncmp(p, name, n) == 0) return true;
        p += len + (p[len] == ',');
    }
    return false;
}

static bool section(const char *name) { return !opt.only || strcmp(opt.only, name) == 0; }

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--csv")) {
            opt.csv = true;
        } else if (!strcmp(a, "--quick")) {
            opt.reps = 3, opt.budget = 0.2;
        } else if (!strcmp(a, "--backends") && v) {
            opt.backends = v, i++;
        } else if (!strcmp(a, "--only") && v && (!strcmp(v, "ops") || !strcmp(v, "train") || !strcmp(v, "sample"))) {
            opt.only = v, i++;
        } else if (!strcmp(a, "--preset") && v) {
            struct msd_config c;
            if (msd_config_preset(&c, v) < 0) {
                fprintf(stderr, "bench: --preset: %s\n", msd_last_error());
                return 2;
            }
            opt.preset = v, i++;
        } else if (!strcmp(a, "--batch")) {
            if (parse_int(a, v, &opt.batch)) return 2;
            i++;
        } else if (!strcmp(a, "--ref-batch")) {
            if (parse_int(a, v, &opt.ref_batch)) return 2;
            i++;
        } else if (!strcmp(a, "--reps")) {
            if (parse_int(a, v, &opt.reps)) return 2;
            i++;
        } else if (!strcmp(a, "--budget") && v && atof(v) >= 0) {
            opt.budget = atof(v), i++;
        } else {
            fprintf(stderr, "bench: unknown or incomplete flag '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    const char *names[] = {"ref", "fast", "cuda"};
    const struct msd_backend *bes[3];
    int nb = 0;
    for (int i = 0; i < 3; i++) {
        const struct msd_backend *be = msd_backend_get(names[i]);
        if (wanted(names[i]) && be) bes[nb++] = be;
        else if (opt.backends && wanted(names[i]))
            fprintf(stderr, "bench: backend %s is not available in this build or on this machine\n", names[i]);
    }
    if (!nb) return 1;

    char cpu[128] = "unknown CPU", load[64] = "?", host[64] = "?";
    FILE *f = fopen("/proc/cpuinfo", "r");
    for (char line[256]; f && fgets(line, sizeof line, f);)
        if (!strncmp(line, "model name", 10) && strchr(line, ':')) {
            snprintf(cpu, sizeof cpu, "%s", strchr(line, ':') + 2);
            cpu[strcspn(cpu, "\n")] = 0;
            break;
        }
    if (f) fclose(f);
    if ((f = fopen("/proc/loadavg", "r"))) {
        if (!fgets(load, sizeof load, f)) load[0] = 0;
        load[strcspn(load, "\n")] = 0;
        fclose(f);
    }
    gethostname(host, sizeof host);
    host[sizeof host - 1] = 0;
    peak = peak_gflops();
    char list[32] = "";
    for (int i = 0; i < nb; i++) snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? "," : "", bes[i]->name);
    const char *pfx = opt.csv ? "# " : "";
    printf("%smsdiff bench: %s, %ld cores online, %d OpenMP thread%s, backends %s, batch %d (ref %d)\n", pfx, cpu,
           sysconf(_SC_NPROCESSORS_ONLN), threads(), threads() == 1 ? "" : "s", list, opt.batch, opt.ref_batch);
    printf("%smachine %s, load average %s; AVX2 FMA peak %.1f GFLOP/s (measured, %d threads, best of 7)\n", pfx, host,
           load, peak, threads());
#ifdef MSD_HAVE_CUDA
    for (int i = 0; i < nb; i++)
        if (strcmp(bes[i]->name, "cuda") == 0) {
            char dev[256];
            msd_cuda_describe(dev, sizeof dev);
            printf("%scuda: %s; timed by the host clock around a synchronised stream\n", pfx, dev);
        }
#endif
    if (opt.csv)
        printf("section,backend,what,batch,threads,ms,ms_min,ms_max,reps,gflops,pct_peak,gbytes_per_s,images_per_s\n");

    if (section("ops")) {
        section_title("ops at the mini shapes (median time; GFLOP/s and % of peak, or GB/s for memory-bound ops)");
        for (int i = 0; i < nb; i++) bench_ops(bes[i]);
    }
    const char *presets[] = {opt.preset ? opt.preset : "mini", opt.preset ? NULL : "mini-ms"};
    if (section("train")) {
        section_title("training steps (synthetic data; a multistage step trains one stage, picked at random)");
        for (int p = 0; p < 2 && presets[p]; p++)
            for (int i = 0; i < nb; i++) bench_train(bes[i], presets[p]);
    }
    if (section("sample")) {
        section_title("sampling (forward D(x; sigma) without gradients; Heun 18 steps from the EDM schedule)");
        for (int p = 0; p < 2 && presets[p]; p++)
            for (int i = 0; i < nb; i++) bench_sample(bes[i], presets[p]);
    }
    return 0;
}
