// bench_conv.c: the machine's AVX2 FMA peak and the GEMM-based ops of fast/ (conv2d forward and
// backward, attention) at the `mini` shapes, batch 64: median time, GFLOP/s and percentage of the
// peak measured in the same run. An experiment for issue 6, built by hand (not by make):
//
//   make BUILD=/tmp/b-fastg /tmp/b-fastg/libmsdiff.a
//   gcc -std=c11 -O3 -mavx2 -mfma -fopenmp -D_POSIX_C_SOURCE=200809L bench/bench_conv.c
//       /tmp/b-fastg/libmsdiff.a -lcjson -lpng -lz -lm -o /tmp/bench_conv
//   /tmp/bench_conv [reps] [--ref]      (OMP_NUM_THREADS sets the threads; --ref also times ref/)
//
// Peak: each thread runs 12 independent chains of _mm256_fmadd_ps on registers (enough to cover
// FMA latency x 2 pipes), all threads at once; peak = 16 flops x FMAs / the slowest thread's time.
// Every timing is the median of `reps` runs after one warm-up, with the min and max beside it.
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/rng.h"
#include "../fast/gemm.h"
#include "../ref/ref.h"

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

// 12 chains in named registers; the empty asm makes each FMA's result live without adding code.
#define CHAINS 12
#define FMA4(a, b, c, d)                                                                            \
    a = _mm256_fmadd_ps(a, m, k), b = _mm256_fmadd_ps(b, m, k), c = _mm256_fmadd_ps(c, m, k),       \
    d = _mm256_fmadd_ps(d, m, k);                                                                   \
    __asm__ volatile("" : "+x"(a), "+x"(b), "+x"(c), "+x"(d))
static double peak_gflops(long iters) {
    double flops = 0.0, worst = 0.0;
#pragma omp parallel reduction(+ : flops) reduction(max : worst)
    {
        const __m256 m = _mm256_set1_ps(0.999999f), k = _mm256_set1_ps(1e-6f);
        __m256 a0 = _mm256_set1_ps(1.0f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0;
        __m256 a6 = a0, a7 = a0, a8 = a0, a9 = a0, a10 = a0, a11 = a0;
#pragma omp barrier
        const double t0 = omp_get_wtime();
        for (long i = 0; i < iters; i++) {
            FMA4(a0, a1, a2, a3);
            FMA4(a4, a5, a6, a7);
            FMA4(a8, a9, a10, a11);
        }
        const double t = omp_get_wtime() - t0;
        flops += 16.0 * CHAINS * (double)iters;
        worst = t;
    }
    return flops / worst * 1e-9;
}

static float *rnd(size_t n, uint64_t seed) {
    float *p = aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
    for (size_t i = 0; i < n; i++) p[i] = 2.0f * msd_rng_uniform(seed, 0, i) - 1.0f;
    return p;
}

struct stats {
    double med, lo, hi;
};

// Times f(ctx) reps times after one warm-up.
static struct stats timeit(void (*f)(void *), void *ctx, int reps) {
    double t[64];
    if (reps > 64) reps = 64;
    f(ctx);
    for (int r = 0; r < reps; r++) {
        const double t0 = omp_get_wtime();
        f(ctx);
        t[r] = omp_get_wtime() - t0;
    }
    qsort(t, reps, sizeof t[0], cmp_double);
    return (struct stats){t[reps / 2], t[0], t[reps - 1]};
}

struct conv {
    int N, C, H, W, OC, K;
    float *x, *w, *b, *y, *dx, *dw, *db;
};
static void conv_fwd(void *p) {
    struct conv *c = p;
    fast_conv2d_forward(c->y, c->x, c->w, c->b, c->N, c->C, c->H, c->W, c->OC, c->K);
}
static void conv_bwd(void *p) {
    struct conv *c = p;
    fast_conv2d_backward(c->dx, c->dw, c->db, c->y, c->x, c->w, c->N, c->C, c->H, c->W, c->OC, c->K);
}
static void conv_fwd_ref(void *p) {
    struct conv *c = p;
    ref_conv2d_forward(c->y, c->x, c->w, c->b, c->N, c->C, c->H, c->W, c->OC, c->K);
}

struct attn {
    int N, C, HW;
    float *qkv, *a, *w, *dqkv;
};
static void attn_fwd(void *p) {
    struct attn *c = p;
    fast_attention_forward(c->a, c->w, c->qkv, c->N, c->C, c->HW);
}
static void attn_bwd(void *p) {
    struct attn *c = p;
    fast_attention_backward(c->dqkv, c->a, c->w, c->qkv, c->N, c->C, c->HW);
}

static void report(const char *what, double flop, struct stats s, double peak) {
    const double gf = flop / s.med * 1e-9;
    printf("%-44s %8.3f ms (min %7.3f max %7.3f)  %7.1f GFLOP/s  %5.1f%% of peak\n", what, s.med * 1e3,
           s.lo * 1e3, s.hi * 1e3, gf, 100.0 * gf / peak);
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 11;
    if (reps < 1) reps = 1;
    const int with_ref = argc > 2 && strcmp(argv[2], "--ref") == 0;
    double pk[7];
    for (int r = 0; r < 7; r++) pk[r] = peak_gflops(20000000);
    qsort(pk, 7, sizeof pk[0], cmp_double);
    const double peak = pk[6]; // the best of 7: the peak is what the machine can do when left alone
    char load[64] = "?";
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (!fgets(load, sizeof load, f)) load[0] = 0;
        load[strcspn(load, "\n")] = 0;
        fclose(f);
    }
    printf("bench_conv: %d threads, AVX2 FMA peak %.1f GFLOP/s (best of 7; median %.1f, worst %.1f), %d reps, "
           "loadavg %s\n", omp_get_max_threads(), peak, pk[3], pk[0], reps, load);

    const struct { int N, C, H, W, OC, K; } shapes[] = {
        {64, 32, 28, 28, 32, 3}, {64, 64, 14, 14, 64, 3}, {64, 64, 7, 7, 64, 3}, {64, 96, 28, 28, 32, 3},
        {64, 128, 7, 7, 64, 3},  {64, 192, 14, 14, 64, 3}, {64, 1, 28, 28, 32, 3}, {64, 64, 14, 14, 192, 1},
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        struct conv c = {shapes[i].N, shapes[i].C, shapes[i].H, shapes[i].W, shapes[i].OC, shapes[i].K,
                         NULL, NULL, NULL, NULL, NULL, NULL, NULL};
        const size_t HW = (size_t)c.H * c.W, KK = (size_t)c.K * c.K;
        c.x = rnd((size_t)c.N * c.C * HW, 1), c.w = rnd((size_t)c.OC * c.C * KK, 2), c.b = rnd(c.OC, 3);
        c.y = rnd((size_t)c.N * c.OC * HW, 4), c.dx = rnd((size_t)c.N * c.C * HW, 5);
        c.dw = rnd((size_t)c.OC * c.C * KK, 6), c.db = rnd(c.OC, 7);
        const double flop = 2.0 * c.N * c.OC * c.C * KK * HW;
        char name[96];
        snprintf(name, sizeof name, "conv%dx%d fwd (%d,%d,%d,%d)->%d", c.K, c.K, c.N, c.C, c.H, c.W, c.OC);
        report(name, flop, timeit(conv_fwd, &c, reps), peak);
        snprintf(name, sizeof name, "conv%dx%d bwd (%d,%d,%d,%d)->%d", c.K, c.K, c.N, c.C, c.H, c.W, c.OC);
        report(name, 2 * flop, timeit(conv_bwd, &c, reps), peak);
        if (with_ref) {
            snprintf(name, sizeof name, "  ref conv%dx%d fwd", c.K, c.K);
            report(name, flop, timeit(conv_fwd_ref, &c, 3), peak);
        }
        free(c.x), free(c.w), free(c.b), free(c.y), free(c.dx), free(c.dw), free(c.db);
    }
    const struct { int N, C, HW; } as[] = {{64, 64, 196}, {8, 256, 256}};
    for (size_t i = 0; i < sizeof as / sizeof as[0]; i++) {
        struct attn c = {as[i].N, as[i].C, as[i].HW, NULL, NULL, NULL, NULL};
        const size_t na = (size_t)c.N * c.C * c.HW;
        c.qkv = rnd(3 * na, 8), c.a = rnd(na, 9), c.w = rnd((size_t)c.N * c.HW * c.HW, 10), c.dqkv = rnd(3 * na, 11);
        const double flop = 4.0 * c.N * c.C * (double)c.HW * c.HW;
        char name[96];
        snprintf(name, sizeof name, "attention fwd (%d,%d,%d)", c.N, c.C, c.HW);
        report(name, flop, timeit(attn_fwd, &c, reps), peak);
        snprintf(name, sizeof name, "attention bwd (%d,%d,%d)", c.N, c.C, c.HW);
        report(name, 2 * flop, timeit(attn_bwd, &c, reps), peak);
        free(c.qkv), free(c.a), free(c.w), free(c.dqkv);
    }
    for (int r = 0; r < 7; r++) pk[r] = peak_gflops(20000000);
    qsort(pk, 7, sizeof pk[0], cmp_double);
    printf("peak again at the end: %.1f GFLOP/s (best of 7; median %.1f); the %% columns use the first\n", pk[6],
           pk[3]);
    return 0;
}
