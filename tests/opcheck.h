// opcheck.h: what the op conformance suites share (tests/test_fast.c and tests/test_fast_gemm.c for
// fast/, tests/test_cuda_*.c for cuda/, every op against ref/ on the same inputs): a pool of guarded
// host buffers that a check fills, uses and hands back in one call; NaN/Inf injection; and the error
// bounds that are composed over whole tensors (GEMM outputs, GroupNorm's statistics, attention),
// whose per-element primitives and derivations are in tests/tolerance.h.
#ifndef MSD_OPCHECK_H
#define MSD_OPCHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// ---------------------------------------------------------------------------------------------------
// The pool: every buffer a check takes from it is a tbuf_new buffer (testutil.h: guard regions on
// both sides), registered so that pool_done() checks every guard and frees them all. A check calls
// pool_done() once at its end.

float *pool_buf(size_t n); // n zeros
// Uniform in [lo, hi] times 4/3, rounded to float: the uniform draws are multiples of 2^-24, whose
// float sums would mostly be exact; scaled, the values carry full 24-bit significands and the rounding
// of every operation shows.
float *pool_input(size_t n, uint64_t seed, float lo, float hi);
float *pool_uniform(size_t n, uint64_t seed, float lo, float hi); // uniform in [lo, hi] (fill_uniform)
float *pool_filled(size_t n, float v);
float *pool_copy(const float *x, size_t n); // NULL stays NULL (a missing bias)
// |x| elementwise (NULL stays NULL): the magnitudes a bound is made of, run through ref's own op.
float *pool_abs(const float *x, size_t n);
// mag + |acc0|: the bound's scale for a gradient accumulated into acc0.
float *pool_plus_abs(const float *mag, const float *acc0, size_t n);
// The rows j (0 q, 1 k, 2 v) of attention's dqkv: (N, 3C, HW) gathered into (N, C, HW).
float *pool_plane(const float *dqkv, int j, int N, int C, int HW);
// Check every guard (the test fails naming the buffer) and free every buffer.
void pool_done(void);
// Free every buffer without checking (what a failed test left behind, where tests share a process).
void pool_reset(void);

// n doubles, zeroed, for a bound (the caller frees).
double *doubles(size_t n);

// ---------------------------------------------------------------------------------------------------
// Non-finite values

// NaN, +Inf and -Inf at three seeded positions (fewer when n < 3).
void inject(float *x, size_t n, uint64_t seed);
// 0 NaN, 1 +Inf, 2 -Inf, 3 finite: two values agree in kind when these are equal.
int value_kind(double v);
size_t nonfinite_count(const float *x, size_t n);

// ---------------------------------------------------------------------------------------------------
// Bounds over tensors

// For an output that is one reduction with chains of L roundings (tolerance.h): b[i] = bound_gemm,
// s[i] = bound_gemm_stat, from mag (ref's op on the absolute values) and want (ref's output).
void gemm_bounds(double *b, double *s, const float *want, const float *mag, double L, size_t n);

// GroupNorm. A check's inputs, from seed .. seed + 5 (pool_input): x (N, C, HW) in [-1, 3] (a mean
// away from zero), gamma in [-1.5, 1.5], beta, dy (N, C, HW), and the values dgamma and dbeta accumulate
// into (dg0, db0), all in [-1, 1] but x and gamma; NaN and Inf injected into x and dy when nf. Then
// ref's outputs on them: y, the saved mean and rstd (N, G), and from those statistics dx, and dgamma and
// dbeta accumulated into copies of dg0 and db0. eps: GN_EPS.
#define GN_EPS 1e-6f
struct gn_ref {
    float *x, *gamma, *beta, *dy, *dg0, *db0;      // the inputs
    float *y, *mean, *rstd, *dx, *dgamma, *dbeta; // ref's outputs
};
struct gn_ref groupnorm_reference(int N, int C, int HW, int G, uint64_t seed, bool nf);

// The moments of one group of M = (C/G) HW values that the bounds are made of, in double, from the
// inputs and ref's saved mean m and rstd r, with xh = (x - m) r and dg = dy gamma.
struct gn_moments {
    double A;       // mean |x|
    double var;     // the variance about the exact mean
    double MG, MGX; // means of dg and of dg xh
    double A1, A2;  // means of |dg| and of |dg xh|
};
// The bounds that hold for any backend that sums in double as ref does (fast/ and cuda/ both): per
// group q (N G of them) bm[q] = bound_gn_mean, br[q] = bound_gn_rstd (tolerance.h), and mom[q] the
// moments, for the backend's own bounds of y and dx; per channel (C) bg and bb for dgamma and dbeta,
// D0 + one double sum over the N HW positions of the channel on each side: bound_accumulated with
// A = sum |dy xh| and sum |dy|.
void groupnorm_shared_bounds(double *bm, double *br, struct gn_moments *mom, double *bg, double *bb,
                             const struct gn_ref *g, int N, int C, int HW, int G);

// Attention's bounds. The derivation (a backend's own file states its rounding counts, which fill
// struct attn_rounding): with g = gam (rigorous) or gam_stat (for the L2 norm), s = 1/sqrt(C),
// M_ij = s sum_c |q_ci k_cj|:
// - logits: |l - l_ref| <= E_ij = g(L_logits) scale M_ij + 2u |l_ij| (ref rounds once too).
// - w: a softmax moves by a factor within exp(+-2 E_i), E_i = max_j E_ij, when its logits move by E_i;
//   the backend's own evaluation adds the relative errors u |l_ij - max_j l_ij| (where it rounds the
//   shifted logits) and T[0..2]; the relative factors multiply, and (1 + d1)...(1 + dn) and its
//   inverse stay within T_ij = 2 E_i + those of 1 to first order, bounded by rho = expm1(T) / (1 - T):
//   |w - w_ref| <= rho_ij w_ij + w_floor.
// - a = v w^T on the perturbed w: sum_j |v_cj| rho_ij w_ij + g(L_a) sum_j |v_cj| (1 + rho_ij) w_ij + u |a|.
// Backward, on the same saved w:
// - dv = da w: g(L_dv) sum_i w_ij |da_ci| + u |dv|.
// - dW = da^T v: D_ij = g(L_dW) sum_c |da_ci v_cj|; r_i = sum_j w_ij dW_ij errs by
//   R_i = sum_j w_ij D_ij + r_growth sum_j w_ij |dW_ij|; dl = w (dW - r) by
//   F_ij = w_ij (D_ij + R_i) + 2u w_ij |dW_ij - r_i|.
// - dq = s k dl^T: s sum_j |k_cj| F_ij + g(L_dqk) s sum_j |k_cj dl_ij| + 2u |dq|; dk alike.
// Products of two error terms (relative size below 1e-9) are dropped.
typedef double (*growth_fn)(double L); // gam or gam_stat

struct attn_rounding {
    double L_logits, scale; // the logits' chain length, and 1 + 2u where mag is a rounded sum (else 1)
    double L_dW;            // dW's chain length
    bool rounds_shift;      // the softmax rounds l - max in float
    double T[3];            // the softmax's other relative errors, added to T_ij in this order
    double r_growth;        // R_i's factor on sum_j w_ij |dW_ij|
    double L_a, L_dv, L_dqk;
    double w_floor;         // w's absolute floor (an exp flushed or rounded below the normal range)
};

struct attn_bounds {
    double *w, *a, *dv, *dq, *dk; // per element: w (N, HW, HW), the others (N, C, HW)
};
// The bounds for ref's outputs w, a (forward) and dqkv (backward from da), per element, made here: the
// rigorous ones (g = gam) into *bm, the statistical ones (gam_stat) into *bs, with the rounding counts
// rounding(g, C, HW) of the backend under test. attn_bounds_free frees them.
// nonfinite: NaN or Inf were put into qkv, and must have reached ref's w, a and dqkv (else the check
// of their agreement proves nothing).
typedef struct attn_rounding (*attn_rounding_fn)(growth_fn g, int C, int HW);
void attention_bounds_both(struct attn_bounds *bm, struct attn_bounds *bs, attn_rounding_fn rounding,
                           const float *qkv, const float *w, const float *da, const float *a, const float *dqkv, int N,
                           int C, int HW, bool nonfinite);
void attn_bounds_free(struct attn_bounds *b);

#endif
