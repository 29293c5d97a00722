// opcheck.c: the op conformance suites' buffer pool, NaN/Inf injection and tensor-wide bounds (see
// opcheck.h).
#include "opcheck.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/core/rng.h"
#include "common/core/util.h"
#include "../ref/ref.h"
#include "testutil.h"
#include "tolerance.h"

// ---------------------------------------------------------------------------------------------------
// The pool

#define POOL_MAX 128

static struct {
    float *p;
    size_t n;
} pool[POOL_MAX];
static int npool;

float *pool_buf(size_t n) {
    ck_assert_int_lt(npool, POOL_MAX);
    pool[npool].n = n;
    return pool[npool++].p = tbuf_new(n);
}

float *pool_input(size_t n, uint64_t seed, float lo, float hi) {
    float *p = pool_buf(n);
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) p[i] = (lo + (hi - lo) * msd_rng_uniform(seed, MSD_STREAM_TEST, i)) * (4.0f / 3.0f);
    return p;
}

float *pool_uniform(size_t n, uint64_t seed, float lo, float hi) {
    float *p = pool_buf(n);
    fill_uniform(p, n, seed, lo, hi);
    return p;
}

float *pool_filled(size_t n, float v) {
    float *p = pool_buf(n);
    for (size_t i = 0; i < n; i++) p[i] = v;
    return p;
}

float *pool_copy(const float *x, size_t n) {
    if (!x) return NULL;
    float *p = pool_buf(n);
    memcpy(p, x, n * sizeof(float));
    return p;
}

float *pool_abs(const float *x, size_t n) {
    if (!x) return NULL;
    float *p = pool_buf(n);
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) p[i] = fabsf(x[i]);
    return p;
}

float *pool_plus_abs(const float *mag, const float *acc0, size_t n) {
    float *p = pool_buf(n);
    for (size_t i = 0; i < n; i++) p[i] = mag[i] + fabsf(acc0[i]);
    return p;
}

float *pool_plane(const float *dqkv, int j, int N, int C, int HW) {
    float *p = pool_buf((size_t)N * C * HW);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            memcpy(p + ((size_t)n * C + c) * HW, dqkv + ((size_t)n * 3 * C + 3 * c + j) * HW, HW * sizeof(float));
    return p;
}

void pool_done(void) {
    for (int i = 0; i < npool; i++) {
        char what[32];
        snprintf(what, sizeof what, "host buffer %d", i);
        tbuf_check(pool[i].p, pool[i].n, what);
        tbuf_free(pool[i].p);
    }
    npool = 0;
}

void pool_reset(void) {
    for (int i = 0; i < npool; i++) tbuf_free(pool[i].p);
    npool = 0;
}

double *doubles(size_t n) { return xcalloc(n ? n : 1, sizeof(double)); }

// ---------------------------------------------------------------------------------------------------
// Non-finite values

void inject(float *x, size_t n, uint64_t seed) {
    const float bad[3] = {NAN, INFINITY, -INFINITY};
    for (size_t k = 0; k < 3 && k < n; k++) x[msd_rng_u32(seed, MSD_STREAM_TEST + 2, k) % n] = bad[k];
}

int value_kind(double v) { return isnan(v) ? 0 : isinf(v) ? (v > 0 ? 1 : 2) : 3; }

size_t nonfinite_count(const float *x, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += !isfinite(x[i]);
    return k;
}

// ---------------------------------------------------------------------------------------------------
// GEMM outputs

void gemm_bounds(double *b, double *s, const float *want, const float *mag, double L, size_t n) {
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) {
        const double w = isfinite(want[i]) ? fabs(want[i]) : 0.0;
        b[i] = bound_gemm(L, mag[i], w);
        s[i] = bound_gemm_stat(L, mag[i], w);
    }
}

// ---------------------------------------------------------------------------------------------------
// GroupNorm

struct gn_ref groupnorm_reference(int N, int C, int HW, int G, uint64_t seed, bool nf) {
    const size_t n = (size_t)N * C * HW, ng = (size_t)N * G;
    struct gn_ref g = {.x = pool_input(n, seed, -1, 3),
                       .gamma = pool_input(C, seed + 1, -1.5f, 1.5f),
                       .beta = pool_input(C, seed + 2, -1, 1),
                       .dy = pool_input(n, seed + 3, -1, 1),
                       .dg0 = pool_input(C, seed + 4, -1, 1),
                       .db0 = pool_input(C, seed + 5, -1, 1)};
    if (nf) inject(g.x, n, seed + 6), inject(g.dy, n, seed + 7);
    g.y = pool_buf(n), g.mean = pool_buf(ng), g.rstd = pool_buf(ng);
    ref_groupnorm_forward(g.y, g.mean, g.rstd, g.x, g.gamma, g.beta, N, C, HW, G, GN_EPS);
    g.dx = pool_buf(n), g.dgamma = pool_copy(g.dg0, C), g.dbeta = pool_copy(g.db0, C);
    ref_groupnorm_backward(g.dx, g.dgamma, g.dbeta, g.dy, g.mean, g.rstd, g.x, g.gamma, N, C, HW, G);
    return g;
}

// One group: x and dy at its first value, gamma at its first channel.
static struct gn_moments groupnorm_moments(const float *x, const float *dy, const float *gamma, double m, double r,
                                           size_t M, int HW) {
    struct gn_moments s = {0};
    double mu = 0;
    for (size_t i = 0; i < M; i++) s.A += fabs(x[i]) / M, mu += (double)x[i] / M;
    for (size_t i = 0; i < M; i++) s.var += (x[i] - mu) * (x[i] - mu) / M;
    for (size_t i = 0; i < M; i++) {
        const double dg = (double)dy[i] * gamma[i / HW], xh = (x[i] - m) * r;
        s.MG += dg / M, s.MGX += dg * xh / M, s.A1 += fabs(dg) / M, s.A2 += fabs(dg * xh) / M;
    }
    return s;
}

void groupnorm_shared_bounds(double *bm, double *br, struct gn_moments *mom, double *bg, double *bb,
                             const struct gn_ref *g, int N, int C, int HW, int G) {
    const int CG = C / G;
    const size_t M = (size_t)CG * HW, ng = (size_t)N * G;
#pragma omp parallel for
    for (size_t q = 0; q < ng; q++) {
        const size_t base = q * M;
        mom[q] = groupnorm_moments(g->x + base, g->dy + base, g->gamma + q % G * CG, g->mean[q], g->rstd[q], M, HW);
        bm[q] = bound_gn_mean(g->mean[q], mom[q].A, (double)M);
        br[q] = bound_gn_rstd(g->rstd[q], mom[q].A, mom[q].var, (double)M, GN_EPS);
    }
#pragma omp parallel for
    for (int c = 0; c < C; c++) {
        double Ag = 0, Ab = 0;
        for (int s = 0; s < N; s++)
            for (int p = 0; p < HW; p++) {
                const size_t j = ((size_t)s * C + c) * HW + p, q = (size_t)s * G + c / CG;
                Ag += fabs(g->dy[j] * ((g->x[j] - (double)g->mean[q]) * g->rstd[q])), Ab += fabs(g->dy[j]);
            }
        bg[c] = bound_accumulated(g->dgamma[c], g->dg0[c], Ag, (double)N * HW + 4);
        bb[c] = bound_accumulated(g->dbeta[c], g->db0[c], Ab, (double)N * HW + 4);
    }
}

// ---------------------------------------------------------------------------------------------------
// Attention

static struct attn_bounds attn_bounds_new(int N, int C, int HW) {
    const size_t nw = (size_t)N * HW * HW, na = (size_t)N * C * HW;
    return (struct attn_bounds){doubles(nw), doubles(na), doubles(na), doubles(na), doubles(na)};
}

void attn_bounds_free(struct attn_bounds *b) { free(b->w), free(b->a), free(b->dv), free(b->dq), free(b->dk); }

// One set of bounds (growth g) into B.
static void attention_bounds(growth_fn g, const struct attn_rounding *p, const float *qkv, const float *wr,
                             const float *da, const float *ar, const float *dqkvr, int N, int C, int HW,
                             struct attn_bounds *B) {
    const double s = 1.0 / sqrt((double)C);
    const size_t HH = (size_t)HW * HW, ld = 3 * (size_t)HW;
#pragma omp parallel for schedule(dynamic, 1)
    for (int n = 0; n < N; n++) {
        double *rho = xmalloc(HH * sizeof(double)), *dW = xmalloc(HH * sizeof(double));
        double *D = xmalloc(HH * sizeof(double)), *dl = xmalloc(HH * sizeof(double)), *F = xmalloc(HH * sizeof(double));
        double *l = xmalloc(HW * sizeof(double));
        const float *q = qkv + (size_t)n * 3 * C * HW, *k = q + HW, *v = q + 2 * HW; // row c at +3c HW
        const float *w = wr + (size_t)n * HH, *dan = da + (size_t)n * C * HW;
        for (int i = 0; i < HW; i++) { // logits, dW and their errors; rho
            double Ei = 0.0, mi = -INFINITY;
            for (int j = 0; j < HW; j++) {
                double dot = 0.0, mag = 0.0, dd = 0.0, dm = 0.0;
                for (int c = 0; c < C; c++) {
                    dot += (double)q[c * ld + i] * k[c * ld + j], mag += fabs((double)q[c * ld + i] * k[c * ld + j]);
                    dd += (double)dan[(size_t)c * HW + i] * v[c * ld + j];
                    dm += fabs((double)dan[(size_t)c * HW + i] * v[c * ld + j]);
                }
                l[j] = s * dot;
                Ei = fmax(Ei, g(p->L_logits) * p->scale * s * mag + 2 * U * fabs(l[j]));
                mi = fmax(mi, l[j]);
                dW[(size_t)i * HW + j] = dd;
                D[(size_t)i * HW + j] = g(p->L_dW) * dm;
            }
            for (int j = 0; j < HW; j++) {
                double T = 2 * Ei;
                if (p->rounds_shift) T += U * fabs(l[j] - mi);
                T = T + p->T[0] + p->T[1] + p->T[2];
                rho[(size_t)i * HW + j] = expm1(T) / (1 - T);
            }
        }
        for (int i = 0; i < HW; i++) { // softmax backward: r, dl, F
            double r = 0.0, R = 0.0, Rm = 0.0;
            for (int j = 0; j < HW; j++) {
                const size_t ij = (size_t)i * HW + j;
                r += w[ij] * dW[ij], R += w[ij] * D[ij], Rm += w[ij] * fabs(dW[ij]);
            }
            R += p->r_growth * Rm;
            for (int j = 0; j < HW; j++) {
                const size_t ij = (size_t)i * HW + j;
                dl[ij] = w[ij] * (dW[ij] - r);
                F[ij] = w[ij] * (D[ij] + R) + 2 * U * w[ij] * fabs(dW[ij] - r);
                B->w[n * HH + ij] = rho[ij] * w[ij] + p->w_floor;
            }
        }
        for (int c = 0; c < C; c++) { // a, dv, dq, dk
            const size_t ci = ((size_t)n * C + c) * HW, qi = (size_t)n * 3 * C * HW + 3 * (size_t)c * HW;
            for (int i = 0; i < HW; i++) {
                double ba = 0.0, bam = 0.0, bdv = 0.0, bq = 0.0, bqm = 0.0, bk = 0.0, bkm = 0.0;
                for (int j = 0; j < HW; j++) {
                    const size_t ij = (size_t)i * HW + j, ji = (size_t)j * HW + i;
                    ba += fabs(v[c * ld + j]) * rho[ij] * w[ij];
                    bam += fabs(v[c * ld + j]) * (1 + rho[ij]) * w[ij];
                    bdv += w[ji] * fabs(dan[(size_t)c * HW + j]); // dv[c, i] = sum_j da[c, j] w[j, i]
                    bq += fabs(k[c * ld + j]) * F[ij], bqm += fabs(k[c * ld + j] * dl[ij]);
                    bk += fabs(q[c * ld + j]) * F[ji], bkm += fabs(q[c * ld + j] * dl[ji]);
                }
                B->a[ci + i] = ba + g(p->L_a) * bam + U * fabs(ar[ci + i]);
                B->dv[ci + i] = g(p->L_dv) * bdv + U * fabs(dqkvr[qi + 2 * HW + i]);
                B->dq[ci + i] = s * bq + g(p->L_dqk) * s * bqm + 2 * U * fabs(dqkvr[qi + i]);
                B->dk[ci + i] = s * bk + g(p->L_dqk) * s * bkm + 2 * U * fabs(dqkvr[qi + HW + i]);
            }
        }
        free(rho), free(dW), free(D), free(dl), free(F), free(l);
    }
}

void attention_bounds_both(struct attn_bounds *bm, struct attn_bounds *bs, attn_rounding_fn rounding,
                           const float *qkv, const float *w, const float *da, const float *a, const float *dqkv, int N,
                           int C, int HW, bool nonfinite) {
    const size_t nq = (size_t)N * 3 * C * HW, na = (size_t)N * C * HW, nw = (size_t)N * HW * HW;
    if (nonfinite)
        ck_assert_msg(nonfinite_count(w, nw) && nonfinite_count(a, na) && nonfinite_count(dqkv, nq),
                      "attention: no NaN/Inf reached w, a, dqkv");
    const struct attn_rounding pm = rounding(gam, C, HW), ps = rounding(gam_stat, C, HW);
    *bm = attn_bounds_new(N, C, HW), *bs = attn_bounds_new(N, C, HW);
    attention_bounds(gam, &pm, qkv, w, da, a, dqkv, N, C, HW, bm);
    attention_bounds(gam_stat, &ps, qkv, w, da, a, dqkv, N, C, HW, bs);
}
