// cmd_cluster.c: `msdiff cluster`: where to cut the noise range into stages (docs/METHOD.md, Stage
// division), by the paper's optimal-denoiser Algorithm 1, the Table 4 baselines (timestep, snr) or the
// similarity matrix. Prints the boundaries in VP t and in EDM sigma and a `--boundaries` line for
// msdiff train; writes the per-sample values as CSV, an SVG plot of S0 and S1 against t, and the
// similarity matrix as a PNG heat map. The algorithms are common/model/cluster.h; this file holds
// flags and output only.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/model/cluster.h"
#include "commands.h"
#include "common/model/config.h"
#include "common/io/atomic.h"
#include "common/io/data.h"
#include "common/core/error.h"
#include "common/io/png.h"
#include "common/core/util.h"

const char HELP_CLUSTER[] =
    "usage: msdiff cluster --method denoiser|snr|timestep|similarity [flags]\n"
    "\n"
    "Divide the noise range into stages (the paper's Algorithm 1 and Table 4). Prints each boundary in\n"
    "VP time t and in EDM sigma (sigma(t) = sqrt(exp(9.95 t^2 + 0.1 t) - 1)), and a line\n"
    "'--boundaries S1,S2' to pass to msdiff train.\n"
    "\n"
    "methods:\n"
    "  denoiser     the paper's Algorithm 1: K samples (y from the data, eps, t ~ U[tmin, tmax]); the\n"
    "               posterior mean m over the whole data set (the optimal denoiser); S0 = fraction of\n"
    "               pixels with |m - y| / sigma < eta, S1 = with |m - ybar| / sigma < eta. t1 = the\n"
    "               largest t whose running mean of S0 from below is >= alpha, t2 = the smallest t whose\n"
    "               running mean of S1 from above is >= alpha. Three stages.\n"
    "  snr          Table 4's interval DP on log-SNR(t) over t_j = j/n (t1 = 0.348, t2 = 0.709)\n"
    "  timestep     the same on t (t1 = 0.334, t2 = 0.667)\n"
    "  similarity   S_ab = fraction of pixels where the posterior means at grid times a and b agree\n"
    "               within eta (same y and eps), averaged over K draws; cut into --stages contiguous\n"
    "               clusters maximising sum_c (1/|C|^2) sum_{a,b in C} S_ab (exact DP); boundaries at\n"
    "               the midpoints between clusters\n"
    "\n"
    "flags:\n"
    "  --method M        denoiser, snr, timestep or similarity (required)\n"
    "  --data SPEC       denoiser, similarity: fmnist (default), fmnist:test, fmnist:DIR, cifar10:DIR or\n"
    "                    a folder of PNGs\n"
    "  --images N        use the first N images of the data set (default: all; at least 2)\n"
    "  --K N             denoiser: samples (default 2000); similarity: draws of (y, eps) (default 8)\n"
    "  --alpha A         denoiser: the threshold, in (0, 1] (default 0.9)\n"
    "  --eta E           denoiser, similarity: per-pixel tolerance > 0 (default two gray levels: 2/255\n"
    "                    with --pixels 01, 4/255 with --pixels pm1)\n"
    "  --tmin T, --tmax T  denoiser: the range of t, 0 < tmin < tmax <= 1 (defaults 0.001 and 1);\n"
    "                    similarity: the range of the grid\n"
    "  --pixels P        01 (pixels in [0, 1], as the authors; default) or pm1 ([-1, 1], as training)\n"
    "  --stages S        snr, timestep, similarity: the number of stages, 2..64 (default 3; msdiff train\n"
    "                    takes up to 8)\n"
    "  --grid G          snr, timestep: grid points n, 2 x stages..2000 (default 1000, the paper's);\n"
    "                    similarity: grid times, 2..1000 (default 40)\n"
    "  --min-size N      similarity: the fewest grid times in a cluster (default grid / (2 stages), the\n"
    "                    interval DP's lower bound; 1 lets single times form clusters)\n"
    "  --seed S          the RNG seed for the samples (default 0)\n"
    "  --csv FILE        denoiser: k,image,t,sigma,S0,S1 per sample sorted by t; similarity: the matrix\n"
    "                    (a,b,t_a,t_b,S); snr, timestep: j,t,sigma,f,stage per grid point\n"

    "  --plot FILE.svg   denoiser: S0 and S1 against t, their running means and the boundaries\n"
    "  --heatmap FILE.png  similarity: the matrix as a heat map, the clusters marked\n"
    "  --batch B         denoiser, similarity: queries per backend call (default 32)\n"
    "  --backend B       ref, fast or cuda (default: the fastest available)\n"
    "  --quiet           no progress line\n"
    "\n"
    "Outputs: the folder of each of --csv, --plot and --heatmap must exist (checked before any work).\n"
    "Each file is written whole or not at all; --csv and --plot may name a device such as /dev/stdout,\n"
    "which is written in place.\n"
    "\n"
    "Cost: each sample is one posterior mean over the data set: 60,000 Fashion-MNIST images take about\n"
    "0.1 s per sample on the ref backend (so the default K 2000 takes a few minutes).\n"
    "\n"
    "examples:\n"
    "  msdiff cluster --method snr\n"
    "  msdiff cluster --method denoiser --data fmnist --K 2000 --alpha 0.9 --plot s.svg --csv s.csv\n"
    "  msdiff cluster --method similarity --grid 40 --K 8 --heatmap sim.png\n";

enum method { DENOISER, SNR, TIMESTEP, SIMILARITY };

struct args {
    enum method method;
    const char *data, *csv, *plot, *heatmap, *backend;
    int images, K, stages, grid, min_size, batch;
    double alpha, eta, tmin, tmax;
    enum msd_pixels pixels;
    uint64_t seed;
    bool quiet;
};

// ---------------------------------------------------------------------------------------------------
// Progress with an ETA on stderr: on a terminal one line rewritten twice a second, elsewhere (a log
// file) a line every 10 seconds.

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

struct progress {
    double start, last;
    bool tty;
};

static void fmt_time(char *buf, size_t n, double s) {
    const long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else snprintf(buf, n, "%ld:%02ld", t / 60, t % 60);
}

static void show_progress(void *ctx, long done, long total) {
    struct progress *p = ctx;
    const double t = now();
    if (done < total && t - p->last < (p->tty ? 0.5 : 10.0)) return;
    p->last = t;
    char el[32], eta[32];
    fmt_time(el, sizeof el, t - p->start);
    fmt_time(eta, sizeof eta, done ? (t - p->start) * (double)(total - done) / (double)done : 0);
    fprintf(stderr, "%sposterior means %ld/%ld (%.0f%%), %s elapsed, ETA %s%s", p->tty ? "\r" : "", done, total,
            100.0 * (double)done / (double)total, el, eta, p->tty && done < total ? "   " : "\n");
}

// ---------------------------------------------------------------------------------------------------
// Output files (CSV, SVG) go through common/io/atomic.h: written whole or not at all, so a full disk
// leaves the old file (or none) and a message with the reason, never a truncated one.

// ---------------------------------------------------------------------------------------------------
// Printing the boundaries

static void print_boundaries(const double *t, int nb) {
    for (int i = 0; i < nb; i++)
        printf("t%d = %.4f   sigma %.4f\n", i + 1, t[i], msd_cluster_sigma(t[i]));
    printf("stages (VP t):");
    for (int i = 0; i <= nb; i++)
        printf("%s%s%.4g, %.4g]", i ? " " : " ", i ? "(" : "[", i ? t[i - 1] : 0.0, i < nb ? t[i] : 1.0);
    printf("\n--boundaries ");
    for (int i = 0; i < nb; i++) printf("%s%.6g", i ? "," : "", msd_cluster_sigma(t[i]));
    printf("\n");
}

// ---------------------------------------------------------------------------------------------------
// SVG plot of Algorithm 1

static const char *const BLUE = "#1f77b4", *const ORANGE = "#ff7f0e";

static int write_plot(const char *path, const struct msd_cluster_sample *s, int K, double alpha, double t1,
                      double t2, double eta, bool have_t) {
    struct msd_atomic_file out;
    if (msd_atomic_open(&out, path) < 0) return -1;
    FILE *f = out.f;
    const double W = 820, H = 500, L = 70, R = 20, T = 50, B = 60, pw = W - L - R, ph = H - T - B;
#define X(t) (L + (t) * pw)
#define Y(v) (T + (1 - (v)) * ph)
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f "
               "%.0f\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" "
               "fill=\"white\"/>\n", W, H, W, H);
    fprintf(f, "<text x=\"%.0f\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">Optimal-denoiser clustering "
               "(Algorithm 1): K = %d, alpha = %g, eta = %.4g</text>\n", W / 2, K, alpha, eta);
    // grid, ticks and labels
    for (int i = 0; i <= 10; i++) {
        const double v = i / 10.0;
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", X(v), Y(0), X(v), Y(1));
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", X(0), Y(v), X(1), Y(v));
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n", X(v), Y(0), X(v),
                Y(0) + 5);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n", X(0) - 5, Y(v), X(0),
                Y(v));
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%.1f</text>\n", X(v), Y(0) + 19, v);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.1f</text>\n", X(0) - 8, Y(v) + 4, v);
    }
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"black\"/>\n", L, T,
            pw, ph);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">VP time t (EDM sigma(t) = sqrt(exp(9.95 t^2 + "
               "0.1 t) - 1))</text>\n", X(0.5), H - 15);
    fprintf(f, "<text transform=\"translate(18 %.1f) rotate(-90)\" text-anchor=\"middle\">fraction of pixels "
               "within eta</text>\n", Y(0.5));
    // alpha and the samples
    fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"gray\" stroke-dasharray=\"2 3\"/>\n",
            X(0), Y(alpha), X(1), Y(alpha));
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" fill=\"gray\" text-anchor=\"end\">alpha</text>\n", X(1) - 4, Y(alpha) - 4);
    const double r = K > 2000 ? 1.2 : 1.8;
    for (int which = 0; which < 2; which++) {
        fprintf(f, "<g fill=\"%s\" fill-opacity=\"0.45\">\n", which ? ORANGE : BLUE);
        for (int i = 0; i < K; i++)
            fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"%.1f\"/>\n", X(s[i].t), Y(which ? s[i].S1 : s[i].S0), r);
        fprintf(f, "</g>\n");
    }
    // the running means the thresholds read: S0 from below, S1 from above
    double sum = 0;
    fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", BLUE);
    for (int i = 0; i < K; i++) sum += s[i].S0, fprintf(f, "%.1f,%.1f ", X(s[i].t), Y(sum / (i + 1)));
    fprintf(f, "\"/>\n<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", ORANGE);
    sum = 0;
    for (int i = K - 1; i >= 0; i--) sum += s[i].S1, fprintf(f, "%.1f,%.1f ", X(s[i].t), Y(sum / (K - i)));
    fprintf(f, "\"/>\n");
    // the boundaries
    for (int b = 0; have_t && b < 2; b++) {
        const double t = b ? t2 : t1;
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#d62728\" stroke-width=\"1.5\" "
                   "stroke-dasharray=\"6 4\"/>\n", X(t), Y(0), X(t), Y(1));
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" fill=\"#d62728\" text-anchor=\"%s\">t%d = %.4f (sigma %.3f)</text>\n",
                X(t) + (b ? 5 : -5), T + 16 + 16 * b, b ? "start" : "end", b + 1, t, msd_cluster_sigma(t));
    }
    // legend
    const char *names[] = {"S0 (near the true noise)", "S1 (near the data mean)", "running mean of S0 from t = 0",
                           "running mean of S1 from t = 1"};
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"235\" height=\"82\" fill=\"white\" fill-opacity=\"0.85\" "
               "stroke=\"#999\"/>\n", X(0.665), Y(0.205));
    for (int i = 0; i < 4; i++) {
        const double y = Y(0.205) + 16 + 17 * i, x = X(0.665) + 14;
        if (i < 2) fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"%s\"/>\n", x, y, i ? ORANGE : BLUE);
        else
            fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\"/>\n",
                    x - 8, y, x + 8, y, i == 3 ? ORANGE : BLUE);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">%s</text>\n", x + 14, y + 4, names[i]);
    }
    fprintf(f, "</svg>\n");
#undef X
#undef Y
    return msd_atomic_close(&out);
}

// ---------------------------------------------------------------------------------------------------
// Heat map of the similarity matrix: viridis-like colours, white lines where clusters start

static void colour(double v, float rgb[3]) {
    static const double stops[5][3] = {{68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}};
    v = v < 0 ? 0 : v > 1 ? 1 : v;
    const double x = v * 4;
    const int i = x >= 4 ? 3 : (int)x;
    const double u = x - i;
    for (int c = 0; c < 3; c++) {
        const double byte = floor(stops[i][c] + u * (stops[i + 1][c] - stops[i][c]) + 0.5);
        rgb[c] = (float)byte / 127.5f - 1.0f;
    }
}

static int write_heatmap(const char *path, const double *S, int G, const int *starts, int k) {
    const int cell = G >= 512 ? 1 : 512 / G, side = G * cell;
    float *img = xmalloc((size_t)3 * side * side * sizeof *img);
    const size_t plane = (size_t)side * side;
    for (int y = 0; y < side; y++)
        for (int x = 0; x < side; x++) {
            float rgb[3];
            colour(S[(size_t)(y / cell) * G + x / cell], rgb);
            for (int c = 0; c < 3; c++) img[c * plane + (size_t)y * side + x] = rgb[c];
        }
    for (int c = 1; c < k; c++) { // a line along the first row and column of each cluster after the first
        const int p = starts[c] * cell;
        for (int q = 0; q < side; q++)
            for (int ch = 0; ch < 3; ch++)
                img[ch * plane + (size_t)p * side + q] = img[ch * plane + (size_t)q * side + p] = 1.0f;
    }
    int rc = msd_png_write(path, img, 3, side, side);
    free(img);
    return rc;
}

// ---------------------------------------------------------------------------------------------------
// The methods

static int run_interval(const struct args *a) {
    double t[MSD_CLUSTER_MAX_STAGES];
    const bool snr = a->method == SNR;
    if (msd_cluster_interval(snr ? MSD_INTERVAL_SNR : MSD_INTERVAL_TIMESTEP, a->grid, a->stages, t) < 0)
        return cmd_fail();
    printf("method %s: Table 4's interval DP on %s over t_j = j/%d, j = 1..%d; %d stages, stages 2..%d of "
           "%d..%d points\n", snr ? "snr" : "timestep", snr ? "log-SNR(t)" : "t", a->grid, a->grid, a->stages,
           a->stages, a->grid / (2 * a->stages), (3 * a->grid + 2 * a->stages - 1) / (2 * a->stages));
    print_boundaries(t, a->stages - 1);
    if (a->csv) {
        struct msd_atomic_file out;
        if (msd_atomic_open(&out, a->csv) < 0) return cmd_fail();
        fprintf(out.f, "j,t,sigma,f,stage\n");
        for (int j = 1, s = 0; j <= a->grid; j++) {
            const double tj = (double)j / a->grid;
            while (s < a->stages - 1 && j >= (int)lround(t[s] * a->grid)) s++; // t[s] starts stage s + 1
            fprintf(out.f, "%d,%.17g,%.17g,%.17g,%d\n", j, tj, msd_cluster_sigma(tj),
                    snr ? msd_cluster_logsnr(tj) : tj, s);
        }
        if (msd_atomic_close(&out) < 0) return cmd_fail();
        printf("wrote %s\n", a->csv);
    }
    return 0;
}

// The images a method clusters: n images of M floats each, and where they came from in words.
struct images {
    float *x; // x: (n, M), malloc'd
    int n;
    size_t M;
    char source[700];
};

// The images of --data (the first --images of them) in the scale of --pixels, into *im.
// 0, or the exit status after printing why: CLI_FAIL (the data), CLI_USAGE (--images).
static int load_images(const struct args *a, struct images *im) {
    struct msd_dataset ds;
    im->x = NULL;
    if (msd_data_open(&ds, a->data) < 0) return cmd_fail();
    const int n = im->n = a->images ? a->images : ds.n;
    if (n > ds.n || n < 2) {
        int rc = cli_error("cluster", "--images %d: the data set %s has %d images; expected 2..%d", n, ds.source,
                           ds.n, ds.n);
        msd_data_free(&ds);
        return rc;
    }
    const size_t M = im->M = (size_t)ds.channels * ds.res * ds.res;
    snprintf(im->source, sizeof im->source, "%d of the %d images of %s (%dx%dx%d)", n, ds.n, ds.source, ds.channels,
             ds.res, ds.res);
    im->x = malloc((size_t)n * M * sizeof *im->x);
    if (im->x) msd_cluster_images(im->x, &ds, n, a->pixels);
    else msd_set_error("cannot allocate %.1f MB for %d images", 4.0 * n * M / 1e6, n);
    msd_data_free(&ds);
    return im->x ? 0 : cmd_fail();
}

static struct msd_cluster_opts opts_of(const struct args *a, struct progress *p) {
    struct msd_cluster_opts o = msd_cluster_opts_default();
    o.K = a->K, o.eta = a->eta, o.tmin = a->tmin, o.tmax = a->tmax, o.seed = a->seed, o.batch = a->batch;
    p->start = p->last = now(), p->tty = isatty(fileno(stderr));
    if (!a->quiet) o.progress = show_progress, o.progress_ctx = p;
    return o;
}

static const char *pixels_name(enum msd_pixels px) { return px == MSD_PIXELS_01 ? "[0, 1]" : "[-1, 1]"; }

static int run_denoiser(const struct args *a, const struct msd_backend *be) {
    struct images im;
    int rc = load_images(a, &im);
    if (rc) return rc;
    struct progress p;
    const struct msd_cluster_opts o = opts_of(a, &p);
    struct msd_cluster_sample *s = xmalloc((size_t)a->K * sizeof *s);
    rc = msd_cluster_denoiser(be, im.x, im.n, im.M, &o, s);
    free(im.x);
    if (rc < 0) return free(s), cmd_fail();
    const double secs = now() - p.start;
    printf("method denoiser (the paper's Algorithm 1): K %d samples, alpha %g, eta %.6g, t ~ U[%g, %g], pixels in "
           "%s, seed %llu\ndata: %s\nbackend %s: %d posterior means in %.1f s (%.3f s each)\n", a->K, a->alpha,
           a->eta, a->tmin, a->tmax, pixels_name(a->pixels), (unsigned long long)a->seed, im.source, be->name, a->K,
           secs, secs / a->K);
    double t[2];
    bool have_t = msd_cluster_thresholds(s, a->K, a->alpha, &t[0], &t[1]) == 0;
    char why[600] = "";
    if (!have_t) snprintf(why, sizeof why, "%s", msd_last_error());
    else if (t[0] >= t[1])
        snprintf(why, sizeof why, "t1 = %.4f >= t2 = %.4f: the low- and high-noise regions overlap, so there is no "
                 "middle stage; raise --alpha or lower --eta", t[0], t[1]);
    if (a->csv) {
        struct msd_atomic_file out;
        if (msd_atomic_open(&out, a->csv) < 0) return free(s), cmd_fail();
        fprintf(out.f, "k,image,t,sigma,S0,S1\n");
        for (int i = 0; i < a->K; i++)
            fprintf(out.f, "%d,%d,%.17g,%.17g,%.17g,%.17g\n", s[i].k, s[i].image, s[i].t, s[i].sigma, s[i].S0,
                    s[i].S1);
        if (msd_atomic_close(&out) < 0) return free(s), cmd_fail();
        printf("wrote %s\n", a->csv);
    }
    if (a->plot) {
        if (write_plot(a->plot, s, a->K, a->alpha, t[0], t[1], a->eta, have_t) < 0) return free(s), cmd_fail();
        printf("wrote %s\n", a->plot);
    }
    free(s);
    if (why[0]) return msd_set_error("%s", why), cmd_fail();
    print_boundaries(t, 2);
    return 0;
}

static int run_similarity(const struct args *a, const struct msd_backend *be) {
    const int G = a->grid, k = a->stages, min_size = a->min_size ? a->min_size : G / (2 * k) > 1 ? G / (2 * k) : 1;
    if ((long)k * min_size > G)
        return cli_error("cluster", "--stages %d with --min-size %d needs a grid of at least %d times, got --grid %d",
                         k, min_size, k * min_size, G);
    struct images im;
    int rc = load_images(a, &im);
    if (rc) return rc;
    double *t = xmalloc((size_t)G * sizeof *t), *S = xmalloc((size_t)G * G * sizeof *S);
    for (int i = 0; i < G; i++) t[i] = a->tmin + (a->tmax - a->tmin) * i / (G - 1);
    struct progress p;
    const struct msd_cluster_opts o = opts_of(a, &p);
    rc = msd_cluster_similarity(be, im.x, im.n, im.M, t, G, a->K, &o, S);
    free(im.x);
    int starts[MSD_CLUSTER_MAX_STAGES];
    double score = 0, b[MSD_CLUSTER_MAX_STAGES];
    if (rc == 0) rc = msd_partition_dp(S, G, k, min_size, starts, &score);
    if (rc < 0) return free(t), free(S), cmd_fail();
    const double secs = now() - p.start;
    printf("method similarity: a %d x %d matrix over t in [%g, %g], %d draws of (y, eps), eta %.6g, pixels in %s, "
           "seed %llu\ndata: %s\nbackend %s: %ld posterior means in %.1f s\n", G, G, a->tmin, a->tmax, a->K, a->eta,
           pixels_name(a->pixels), (unsigned long long)a->seed, im.source, be->name, (long)G * a->K, secs);
    printf("partition into %d clusters of >= %d grid times, score %.6f of %d:", k, min_size, score, k);
    for (int c = 0; c < k; c++) printf(" [%d, %d)", starts[c], c + 1 < k ? starts[c + 1] : G);
    printf("\n");
    for (int c = 1; c < k; c++) b[c - 1] = 0.5 * (t[starts[c] - 1] + t[starts[c]]); // midway between clusters
    print_boundaries(b, k - 1);
    if (a->csv) {
        struct msd_atomic_file out;
        if (msd_atomic_open(&out, a->csv) < 0) return free(t), free(S), cmd_fail();
        fprintf(out.f, "a,b,t_a,t_b,S\n");
        for (int i = 0; i < G; i++)
            for (int j = 0; j < G; j++)
                fprintf(out.f, "%d,%d,%.17g,%.17g,%.17g\n", i, j, t[i], t[j], S[(size_t)i * G + j]);
        if (msd_atomic_close(&out) < 0) return free(t), free(S), cmd_fail();
        printf("wrote %s\n", a->csv);
    }
    if (a->heatmap) {
        if (write_heatmap(a->heatmap, S, G, starts, k) < 0) return free(t), free(S), cmd_fail();
        printf("wrote %s (row and column a = grid time t_a, top left t = %g; white lines start clusters)\n",
               a->heatmap, a->tmin);
    }
    free(t), free(S);
    return 0;
}

// ---------------------------------------------------------------------------------------------------
// Flags

// Which methods each optional flag applies to (bit 1 << method); giving one to another method is an
// error rather than a silent no-op.
#define ALL ((1 << DENOISER) | (1 << SNR) | (1 << TIMESTEP) | (1 << SIMILARITY))
#define DATA ((1 << DENOISER) | (1 << SIMILARITY))
#define DP ((1 << SNR) | (1 << TIMESTEP) | (1 << SIMILARITY))
static const struct { const char *flag; int methods; } APPLIES[] = {
    {"--data", DATA}, {"--images", DATA}, {"--K", DATA}, {"--alpha", 1 << DENOISER}, {"--eta", DATA},
    {"--tmin", DATA}, {"--tmax", DATA}, {"--pixels", DATA}, {"--stages", DP}, {"--grid", DP},
    {"--min-size", 1 << SIMILARITY}, {"--seed", DATA}, {"--csv", ALL}, {"--plot", 1 << DENOISER},
    {"--heatmap", 1 << SIMILARITY}, {"--batch", DATA}, {"--backend", DATA}, {"--quiet", DATA},
};

int cmd_cluster(int argc, char **argv) {
    const char *method = NULL, *pixels = "01";
    struct args a = {.data = "fmnist", .K = 0, .stages = 3, .alpha = 0.9, .tmin = 1e-3, .tmax = 1, .batch = 32};
    struct cli_opt o[] = {
        {.flag = "--method", .type = CLI_STR, .dst = &method, .expect = "denoiser, snr, timestep or similarity",
         .required = true},
        {.flag = "--data", .type = CLI_STR, .dst = &a.data, .expect = "a data spec"},
        {.flag = "--images", .type = CLI_INT, .dst = &a.images, .expect = "an image count >= 2", .lo = 2,
         .hi = 1 << 30},
        {.flag = "--K", .type = CLI_INT, .dst = &a.K, .expect = "a sample count", .lo = 1, .hi = 100000000},
        {.flag = "--alpha", .type = CLI_DOUBLE, .dst = &a.alpha, .expect = "a threshold in (0, 1]"},
        {.flag = "--eta", .type = CLI_DOUBLE, .dst = &a.eta, .expect = "a tolerance > 0"},
        {.flag = "--tmin", .type = CLI_DOUBLE, .dst = &a.tmin, .expect = "a time in (0, 1)"},
        {.flag = "--tmax", .type = CLI_DOUBLE, .dst = &a.tmax, .expect = "a time in (0, 1]"},
        {.flag = "--pixels", .type = CLI_STR, .dst = &pixels, .expect = "01 or pm1"},
        {.flag = "--stages", .type = CLI_INT, .dst = &a.stages, .expect = "a stage count 2..64", .lo = 2,
         .hi = MSD_CLUSTER_MAX_STAGES},
        {.flag = "--grid", .type = CLI_INT, .dst = &a.grid, .expect = "a grid size", .lo = 2,
         .hi = MSD_CLUSTER_MAX_GRID},
        {.flag = "--min-size", .type = CLI_INT, .dst = &a.min_size, .expect = "a cluster size >= 1", .lo = 1,
         .hi = MSD_CLUSTER_MAX_GRID},
        {.flag = "--seed", .type = CLI_U64, .dst = &a.seed, .expect = "a non-negative integer"},
        {.flag = "--csv", .type = CLI_STR, .dst = &a.csv, .expect = "a CSV file to write"},
        {.flag = "--plot", .type = CLI_STR, .dst = &a.plot, .expect = "an SVG file to write"},
        {.flag = "--heatmap", .type = CLI_STR, .dst = &a.heatmap, .expect = "a PNG file to write"},
        {.flag = "--batch", .type = CLI_INT, .dst = &a.batch, .expect = "queries per call 1..4096", .lo = 1,
         .hi = 4096},
        {.flag = "--backend", .type = CLI_STR, .dst = &a.backend, .expect = "ref, fast or cuda"},
        {.flag = "--quiet", .type = CLI_SWITCH, .dst = &a.quiet},
    };
    bool done;
    int rc = cmd_parse("cluster", argc, argv, o, COUNT(o), &done);
    if (done) return rc;
    const char *names[] = {"denoiser", "snr", "timestep", "similarity"};
    int mi = -1;
    for (int i = 0; i < 4; i++)
        if (!strcmp(method, names[i])) mi = i;
    if (mi < 0)
        return cli_error("cluster", "--method: expected denoiser, snr, timestep or similarity, got '%s'", method);
    a.method = (enum method)mi;
    for (int i = 0; i < COUNT(o); i++)
        for (int j = 0; j < COUNT(APPLIES); j++)
            if (o[i].seen && !strcmp(o[i].flag, APPLIES[j].flag) && !(APPLIES[j].methods & (1 << mi)))
                return cli_error("cluster", "%s does not apply to --method %s", o[i].flag, method);
    bool seen_eta = false, seen_grid = false;
    for (int i = 0; i < COUNT(o); i++) {
        if (!strcmp(o[i].flag, "--eta")) seen_eta = o[i].seen;
        if (!strcmp(o[i].flag, "--grid")) seen_grid = o[i].seen;
    }
    if (!strcmp(pixels, "01")) a.pixels = MSD_PIXELS_01;
    else if (!strcmp(pixels, "pm1")) a.pixels = MSD_PIXELS_PM1;
    else return cli_error("cluster", "--pixels: expected 01 ([0, 1]) or pm1 ([-1, 1]), got '%s'", pixels);
    if (!seen_eta) a.eta = (a.pixels == MSD_PIXELS_01 ? 2.0 : 4.0) / 255.0; // two gray levels either way
    if (!(a.alpha > 0 && a.alpha <= 1))
        return cli_error("cluster", "--alpha: expected a threshold in (0, 1], got %g", a.alpha);
    if (!(a.eta > 0 && isfinite(a.eta)))
        return cli_error("cluster", "--eta: expected a finite tolerance > 0, got %g", a.eta);
    if (!(a.tmin > 0 && a.tmin < a.tmax && a.tmax <= 1))
        return cli_error("cluster", "--tmin %g, --tmax %g: expected 0 < tmin < tmax <= 1", a.tmin, a.tmax);
    if (!a.K) a.K = a.method == DENOISER ? 2000 : 8;
    if (a.method == DENOISER && a.K < 2)
        return cli_error("cluster", "--K: Algorithm 1 needs at least 2 samples, got %d", a.K);
    if (!seen_grid) a.grid = a.method == SIMILARITY ? 40 : 1000;
    if ((a.method == SNR || a.method == TIMESTEP) && a.grid < 2 * a.stages)
        return cli_error("cluster", "--grid %d is too small for %d stages: the interval DP needs at least %d points",
                         a.grid, a.stages, 2 * a.stages);
    if (a.method == SIMILARITY && a.grid > 1000)
        return cli_error("cluster", "--grid: at most 1000 times for the similarity matrix, got %d", a.grid);
    // the outputs' folders before the minutes of posterior means; CSV and SVG may go to a device
    // (--csv /dev/stdout), the PNG heat map is renamed into place and may not
    if ((a.csv && cmd_check_out_file("--csv", a.csv, true) < 0) ||
        (a.plot && cmd_check_out_file("--plot", a.plot, true) < 0) ||
        (a.heatmap && cmd_check_out_file("--heatmap", a.heatmap, false) < 0))
        return cmd_fail();
    if (a.method == SNR || a.method == TIMESTEP) return run_interval(&a);
    const struct msd_backend *be = cmd_backend("cluster", a.backend);
    if (!be) return CLI_USAGE;
    return a.method == DENOISER ? run_denoiser(&a, be) : run_similarity(&a, be);
}
