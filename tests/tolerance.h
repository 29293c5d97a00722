// tolerance.h: the error bounds the tests hold the code to, with the reasoning for each.
//
// A bound here is derived from the arithmetic (for whole networks, from a budget whose reason and
// assumptions are written next to it), never widened to make a failing test pass. When a test fails,
// the bug is in the code (or the derivation below is wrong and gets a better argument).
#ifndef MSD_TOLERANCE_H
#define MSD_TOLERANCE_H

#include <math.h>
#include <stdbool.h>

// Unit roundoffs of float32 and float64, and their short names U and UD: the notation of every
// derivation in this file and in the suites that compose these bounds (they appear in every formula).
#define TOL_FLT_EPS 5.9604644775390625e-08 // 2^-24
#define TOL_DBL_EPS 1.1102230246251565e-16 // 2^-53
#define U TOL_FLT_EPS
#define UD TOL_DBL_EPS

// Finite-difference checks of ref/ backward ops.
// The forward runs in float32, the loss L = sum_i r_i y_i is accumulated in double. The checker uses
// the fourth-order central stencil (8 (L(+h) - L(-h)) - (L(+2h) - L(-2h))) / 12h: truncation error
// ~ h^4 |f^(5)| / 30, rounding error ~ u |y| sqrt(m) / h for the m outputs the perturbed entry
// touches (u = 2^-24, float32 outputs). Rounding dominates for float outputs, so the step is large:
// h = 5e-2 (relative to max(1, |x|)) puts both terms near 1e-5 of the gradient's scale for inputs,
// weights and r of order one (measured worst over all ops: 2e-4, the softmax and groupnorm). Errors
// are relative to max(|fd|, |analytic|), floored at FD_FLOOR times the tensor's largest gradient,
// so entries that are nearly zero are judged on the tensor's scale instead of their own. A wrong
// formula (a missing term, a transposed index, a wrong constant) gives errors of order one.
#define FD_STEP 5e-2
#define FD_FLOOR 1e-2
#define FD_TOL 1e-3

// ===================================================================================================
// fast/ and cuda/ against ref/, op by op (tests/test_fast.c, tests/test_fast_gemm.c,
// tests/test_cuda_*.c). Bounds are per element, from the arithmetic each side does; the suites compose
// these primitives for each op (the compositions over whole tensors, GroupNorm's statistics and
// attention, are in tests/opcheck.c).

// Higham's gamma_k = k u / (1 - k u), in float (gam) and double (gamd): k roundings in a row stay
// within gamma_k without dropping second-order terms. A sum of len terms in any order and grouping
// (FMA or not) is within gam(len) sum |terms| of the exact sum in float, within gamd(len) sum |terms|
// in double.
static inline double gam(double k) { return k * U / (1 - k * U); }
static inline double gamd(double k) { return k * UD / (1 - k * UD); }

// Two sums of the same len terms, each in double in its own order, each rounded once to float:
// |fl(Sa) - fl(Sb)| <= |Sa - Sb| + u |Sa| + u |Sb| <= 2 gamd(len) A + 2u (|want| + gamd(len) A) with
// A = sum |terms| and want = fl(Sb); the third gamd(len) A covers the u terms of that, and 2u(1 + 2u)
// the difference between |want| and |Sb|.
static inline double bound_double_sums(double want, double A, double len) {
    return 2 * U * (1 + 2 * U) * fabs(want) + 3 * gamd(len) * A;
}

// A parameter gradient D0 + fl(S) accumulated from one such sum on each side: the rounding of the
// addition adds u |D0 + S| on each side.
static inline double bound_accumulated(double want, double D0, double A, double len) {
    return bound_double_sums(want - D0, A, len) + 2 * U * (1 + 2 * U) * fabs(want);
}

// A value computed in double on each side, the two double results within dd of each other, each
// rounded once to float: |fl(a) - fl(b)| <= |a - b| + u |a| + u |b| <= (1 + u) dd + 2u (1 + 2u) |want|
// (|b| <= |want| / (1 - u)), plus 2^-149 where the results are subnormal floats (each rounding then
// errs by up to 2^-150, absolutely).
static inline double bound_rounded_pair(double want, double dd) {
    return (1 + U) * dd + 2 * U * (1 + 2 * U) * fabs(want) + 0x1p-149;
}

// ---------------------------------------------------------------------------------------------------
// GroupNorm's statistics: ref/, fast/ and cuda/ all sum in double, each in its own order, and round
// the mean and rstd to float once. Per group of M = (C/G) HW values, with A = mean |x| and ref's saved
// mean m and rstd r (floats):
// - mean: each side's double sum, the division included, is within gamd(M + 2) A of the exact mean,
//   and each rounds once: b_mean = d + u (2 |m| + d), d = 2 gamd(M + 2) A.
// - rstd: the two-pass variance on each side, sum (x - mu_side)^2 / M = var + (mu - mu_side)^2 plus
//   its rounding (relative gamd(M + 4)); then + eps, sqrt, the division and one float rounding on
//   each side: b_rstd = r (2u (1 + 2u) + 2 gamd(M + 6) + d^2 / (var + eps)), var the exact variance.
static inline double bound_gn_mean(double m, double A, double M) {
    const double d = 2 * gamd(M + 2) * A;
    return d + U * (2 * fabs(m) + d);
}
static inline double bound_gn_rstd(double r, double A, double var, double M, double eps) {
    const double d = 2 * gamd(M + 2) * A;
    return r * (2 * U * (1 + 2 * U) + 2 * gamd(M + 6) + d * d / (var + eps));
}

// ---------------------------------------------------------------------------------------------------
// SiLU (fast/elementwise.c against ref/elementwise.c), per element: b for y, bd for dx.
// fast: t = exp(-|x|) within 2 ulp (relative 4u); d = fl(1 + t) within 3u (t's error enters
// scaled by t/(1+t) <= 1/2); forward y = fl(x / d) (x >= 0: 4u) or fl(fl(x t) / d) (x < 0: 9u), and
// ref rounds once (u): |y - ref| <= 10u |y|. Backward: rd = fl(1/d) 4u, td = fl(t rd) 9u, so s and
// c = 1 - s within 9u; g = fl(x c + 1) within 9u |x c| + u |g|; fl(dy s) within 10u; the product
// and ref's rounding: |dx - ref| <= u |dy s| (13 |g| + 9 |x c|), coefficients raised by one to cover
// second-order terms. Where t is subnormal (|x| > 87) its error is absolute, up to 2^-150, and so is
// the rounding of a subnormal product (fl(x t), fl(dy s), amplified by |g|, and the results): the
// floor terms.
static inline void silu_bounds(double x, double dy, double y, double *b, double *bd) {
    const double t = exp(-fabs(x)), s = x >= 0 ? 1 / (1 + t) : t / (1 + t), c = 1 - s, g = 1 + x * c;
    *b = 10 * U * fabs(y) + (fabs(x) + 2) * 0x1p-149;
    *bd = U * fabs(dy * s) * (14 * fabs(g) + 10 * fabs(x * c)) + fabs(dy) * (fabs(g) + fabs(x) + 2) * 0x1p-147 +
          (fabs(g) + 2) * 0x1p-149;
}

// ---------------------------------------------------------------------------------------------------
// The GEMM-based ops (conv2d, linear, attention; fast/gemm.h). ref/ sums in double, so its result is
// the exact value rounded once to float: |ref - exact| <= u |ref|, u = 2^-24. fast/ sums in float: a
// term of a reduction of length K passes through at most L roundings, where (fast/gemm.h) the k range
// is cut into segments of kseg (the pixels of one sample for a weight gradient), each segment into
// P = ceil(kseg / KC) blocks of at most kc = ceil(kseg / P) terms accumulated by FMA in a register
// (kc roundings), each block added to C (one rounding per block, nb blocks in all), and with
// GEMM_KSPLIT one more rounding per thread for the partials: L = kc + nb + T. Higham's bound for any
// summation order then gives, elementwise,
//     |fast - ref| <= gamma(L) * mag + u |ref|,   gamma(L) = L u / (1 - L u)   (gam(L) above),
// where mag = sum |a_k b_k| (+ |bias|, + |the gradient the op accumulates into|) is computed by ref/
// itself on the absolute values of the inputs (its rounding is covered by a factor 1 + 2u). A
// gradient accumulated into D0 is rounded twice by ref/ (its sum to float, then the +=), which adds
// one to L. This bound is rigorous and is checked on the largest error. Rounding errors of a long sum
// behave like a random walk, so the typical error is far smaller: each rounding is at most
// u |partial sum| and has variance at most (u |s|)^2 / 3, hence rms error <= u sqrt(L / 3) mag. The
// relative L2 error is checked against twice that, gam_stat(L) = 2 u sqrt(L / 3) in place of
// gamma(L): sharp enough that one missing term of a reduction (an error of about mag / K) fails by
// orders of magnitude.
static inline double gam_stat(double L) { return 2.0 * U * sqrt(L / 3.0); }

// L for a reduction of K terms, cut in segments of kseg (0: one segment), in blocks of at most kc_max
// (GEMM_KC), with `threads` partials added on top (GEMM_KSPLIT: the thread count; 0 otherwise).
static inline double gemm_roundings(long K, long kseg, long kc_max, int threads) {
    if (kseg <= 0 || kseg > K) kseg = K;
    const long parts = (kseg + kc_max - 1) / kc_max, kc = (kseg + parts - 1) / parts;
    const long nb = (K + kseg - 1) / kseg * parts;
    return (double)(kc + nb + threads);
}

// The two bounds of one output of such a reduction: mag from ref's op on absolute values (a float),
// want_abs = |ref's output| (0 where it is not finite). bound_gemm is the rigorous per-element bound,
// bound_gemm_stat its statistical counterpart for the L2 norm of the error.
static inline double bound_gemm(double L, float mag, double want_abs) {
    return gam(L) * ((1.0 + 2 * U) * mag) + U * want_abs;
}
static inline double bound_gemm_stat(double L, float mag, double want_abs) {
    return gam_stat(L) * ((1.0 + 2 * U) * mag) + U * want_abs;
}

// ===================================================================================================
// Whole computations: the network D(x; sigma) and its gradients, one training step, one sampler run
// (tests/test_fast_net.c holds fast/ to ref/ with these; tests/test_model.c holds every backend to
// the PyTorch reference dumps with NET_D_TOL and NET_GRAD_TOL).
//
// NET_D_TOL, NET_GRAD_TOL: the budgets docs/DESIGN.md sets (Tests): max |D - D_ref| <= NET_D_TOL max |D_ref|
// (and |loss - loss_ref| <= NET_D_TOL |loss_ref|), and every gradient tensor g within NET_GRAD_TOL
// max |g_ref| of its reference. They are budgets with a reason, not rigorous bounds. The reason: every layer
// is a reduction whose float error is, in the rms sense, within gam_stat(L) of its scale (above);
// the widest reduction of the mini networks is a 3x3 conv over 192 channels (K = 1728, L = 254),
// so a layer adds at most ~1.1e-6 of its scale, and the ~40 layers from the input to D add such
// independent errors in quadrature, ~7e-6 of the activations' scale, with GroupNorm rescaling each
// block so that relative errors do not compound. A backward pass crosses the layers twice, and a
// weight gradient is a sum over N H W positions that cancels (its max is far below the sum of its
// terms' magnitudes), hence ten times more for gradients. A rigorous worst-case bound through 40
// layers, GroupNorm and softmax would multiply their condition numbers and be useless, while any
// real mistake (a wrong term, a wrong index, a missing layer, a buffer reused too early) shows as an
// error of order 1e-3 to 1 of the tensor's scale. The op-level bounds above are the rigorous ones;
// these catch what op checks cannot: the graph's wiring, per-sample scalars, the buffers of the
// arena. A float32 network matches a float64 reference (the dumps) or another float32 backend to
// the same budgets, so both suites use them.
#define NET_D_TOL 1e-5
#define NET_GRAD_TOL 1e-4

// Every element of a tensor within its network budget: err <= tol * max |ref|.
static inline bool net_within(double max_err, double max_ref, double tol) { return max_err <= tol * max_ref; }

// ---------------------------------------------------------------------------------------------------
// One training step (msd_train_step) on two backends from the same weights, Adam moments and EMA.
// Their gradients differ by at most dg = NET_GRAD_TOL max |g_ref| per tensor (checked first); Adam,
// EMA and nan_to_num are bit-identical across backends on the same inputs (tests/test_fast.c), so
// what follows bounds how a gradient difference dg moves each buffer, plus the rounding of both sides.
// Adam (common/core/backend.h): m' = fl(b1 m + (1-b1) g), v' = fl(b2 v + (1-b2) g^2) in float;
//   p' = fl(p - c m' / (sqrt(v' / bc2) + eps)) in double, c = lr / bc1, bc_i = 1 - b_i^t,
// with the float parameters lr, b1, b2, eps of the call (1 - b1 and 1 - b2 are exact in float).
// Write U(g) = c M(g) / (S(g) + eps), M = b1 m + (1-b1) g, S = sqrt((b2 v + (1-b2) g^2) / bc2): the
// exact update, the same function on both sides. Each side computes it within 4u Ux of the exact U,
// Ux >= |U| below: m' rounds b1 m, (1-b1) g and their sum in float (2u (1 + u) of c (|b1 m| +
// (1-b1) |g|) / (S + eps) <= Ux once divided), v' rounds positive terms (relative gam(3), half of it
// in S, relative to U), the rest is double; and each side rounds p' once.
//
// First step (t = 1, m = v = 0): M = (1-b1) g, bc1 = 1-b1, S = |g| (bc2 = 1-b2), so U(g) = lr f(g),
// f(g) = g / (|g| + eps), |f| < 1. For g1, g2 of the same sign,
//   f(g1) - f(g2) = eps (g1 - g2) / ((|g1| + eps)(|g2| + eps)),  so |f(g1) - f(g2)| <= |dg| / (|g2| + eps);
// of opposite signs (or one zero) |g2| <= |dg| and, f being odd, increasing and concave on g >= 0,
// |f(g1) - f(g2)| = f(|g1|) + f(|g2|) <= 2 f(|dg| / 2) = 2 |dg| / (|dg| + 2 eps) <= 2 |dg| / (|g2| + eps).
// With g2 = g_ref, both cases: |U(g_fast) - U(g_ref)| <= lr min(2, 2 dg / (|g_ref| + eps)).
static inline double adam_first_update_diff(double g_ref, double dg, double lr, double eps) {
    return lr * fmin(2.0, 2.0 * dg / (fabs(g_ref) + eps));
}

// Any step: over the interval |g - g_ref| <= dg, S >= Sn = sqrt((b2 v + (1-b2) gn^2) / bc2) with
// gn = max(0, |g_ref| - dg), and S >= q |g| with q = sqrt((1-b2) / bc2). Split M = b1 m + (1-b1) g:
//   |U| <= c |b1 m| / (Sn + eps) + c (1-b1) |g| / (q |g|)  =  Ux,  the second part at most c (1-b1) / q;
//   U' = c (1-b1) / (S + eps) - c M S' / (S + eps)^2,  S' = (1-b2) g / (bc2 S), |S'| <= q,
//   and c (1-b1) |g| |S'| / (S + eps)^2 <= c (1-b1) (q g / S)^2 / (S + eps) <= c (1-b1) / (S + eps), so
//   |U'| <= Lip = 2 c (1-b1) / (Sn + eps) + c |b1 m| q / (Sn + eps)^2.
// So |U(g_fast) - U(g_ref)| <= min(Lip dg, 2 Ux); at t = 1 with zero moments the sharper form above.
// *umax receives a bound on |U| for the rounding terms.
static inline double adam_update_diff(double m, double v, double g_ref, double dg, double lr, double b1,
                                      double b2, double eps, long t, double *umax) {
    if (t == 1 && m == 0 && v == 0) {
        *umax = lr;
        return adam_first_update_diff(g_ref, dg, lr, eps);
    }
    const double bc1 = 1 - pow(b1, (double)t), bc2 = 1 - pow(b2, (double)t), c = lr / bc1;
    const double q = sqrt((1 - b2) / bc2), gn = fmax(0.0, fabs(g_ref) - dg);
    const double Sn = sqrt((b2 * v + (1 - b2) * gn * gn) / bc2), bm = fabs(b1 * m);
    *umax = c * bm / (Sn + eps) + c * (1 - b1) / q;
    const double lip = 2 * c * (1 - b1) / (Sn + eps) + c * bm * q / ((Sn + eps) * (Sn + eps));
    return fmin(lip * dg, 2 * *umax);
}

// The weight after the step: both sides round their own p - U (u |.| each, 2^-150 below the normal
// range), and their U carry 4u umax each: |p'_fast - p'_ref| <= (1 + u)(diff + 8u umax) + 2u (1 + u) |p'_ref|
// + 2^-148, where diff and umax come from adam_update_diff and p'_ref is ref's weight after the step.
static inline double bound_adam_weight(double p_new_ref, double m, double v, double g_ref, double dg, double lr,
                                       double b1, double b2, double eps, long t) {
    double umax;
    const double diff = adam_update_diff(m, v, g_ref, dg, lr, b1, b2, eps, t, &umax);
    return (1 + U) * (diff + 8 * U * umax) + 2 * U * (1 + U) * fabs(p_new_ref) + 0x1p-148;
}

// The moments after the step, from the same m, v: b1 m is the same float on both sides, (1-b1) g
// differs by (1-b1) dg and is rounded on each side (u (1-b1) |g|, |g_fast| <= |g_ref| + dg), and so is
// the sum (u |m'|): |m'_fast - m'_ref| <= (1 + 3u)(1-b1) dg + 2u (1-b1) |g_ref| + 2u (1 + u) |m'_ref| + 2^-147.
static inline double bound_adam_m(double m_new_ref, double g_ref, double dg, double b1) {
    return (1 + 3 * U) * (1 - b1) * dg + 2 * U * (1 - b1) * fabs(g_ref) + 2 * U * (1 + U) * fabs(m_new_ref) +
           0x1p-147;
}
// v' = fl(b2 v + fl(fl((1-b2) g) g)): the exact parts differ by (1-b2) |g_f^2 - g_r^2| <=
// (1-b2) dg (2 |g_ref| + dg); the two products round within gam(2) (1-b2) g^2 on each side, the sum
// within u |v'|.
static inline double bound_adam_v(double v_new_ref, double g_ref, double dg, double b2) {
    const double gf = fabs(g_ref) + dg;
    return (1 + U) * ((1 - b2) * dg * (2 * fabs(g_ref) + dg) + gam(2) * (1 - b2) * (g_ref * g_ref + gf * gf)) +
           2 * U * (1 + U) * fabs(v_new_ref) + 0x1p-147;
}
// EMA after the step, from the same EMA E: ema' = fl(p' + fl(beta fl(E - p'))). The exact value
// (1 - beta) p' + beta E moves by (1 - beta) |dp| when p' moves by dp (<= bound_adam_weight); each
// side rounds E - p' (u |E - p'|, times beta), the product (u beta |E - p'|) and the sum (u |ema'|),
// on its own p' (|E - p'_fast| <= |E - p'_ref| + dp):
// |ema'_fast - ema'_ref| <= (1 - beta) dp + 2 gam(2) beta (|E - p'_ref| + dp) + 2u (|ema'_ref| + dp) + 2^-147.
static inline double bound_ema(double ema_new_ref, double E, double p_new_ref, double dp, double beta) {
    return (1 - beta) * dp + 2 * gam(2) * beta * (fabs(E - p_new_ref) + dp) + 2 * U * (fabs(ema_new_ref) + dp) +
           0x1p-147;
}

// ---------------------------------------------------------------------------------------------------
// A Heun run (common/model/sampler.c, EDM schedule, no churn) on two backends from the same latent. Each
// step i (sigma s -> s', dt = s' - s, float coefficients as the sampler passes them) computes
//   D = D(x; s); d = x / s - D / s; xn = x + dt d; D' = D(xn; s'); d' = xn / s' - D' / s';
//   x = x + (dt/2) d; x = x + (dt/2) d'          (the last step, to s' = 0, stops at x + dt d),
// every line one axpby, bit-identical on both backends for the same inputs. The denoiser is
// D = c_skip x + c_out F(c_in x). Between the backends, an evaluation differs by
//   D_fast(x_fast) - D_ref(x_ref) = eta + c_skip (x_fast - x_ref) + c_out (F(c_in x_fast) - F(c_in x_ref)),
// where |eta| <= delta = NET_D_TOL max |D| is the backend difference at one input (what the network
// check holds, and what covers the rounding of the same network at two nearby inputs). The c_skip
// part is propagated exactly: with e the error vector of x at the start of a step, every error in
// the step is alpha e + j with a scalar alpha and |j| <= beta, so a step maps |e| <= E to
// |alpha| E + beta; the triangle inequality is used only across the independent eta and rounding
// terms, never on e itself, so the contraction of the ODE (the error of x shrinks with sigma while
// c_skip ~ 0) is kept. Each axpby y = a x + b z rounds within gam(2) (|a x| + |b z|) on each side,
// with the magnitudes of ref's run plus the error so far.
// The F part is the ASSUMPTION: the network's own sensitivity to its input. Linearised, it adds
// -(sd / (sigma^2 + sd^2)) F' e to de/dsigma, so over the whole range of sigma it grows errors by at
// most exp(integral_0^inf sd / (sigma^2 + sd^2) dsigma ||F'||) = exp((pi/2) ||F'||). NET_ODE_GROWTH = 10
// = exp((pi/2) 1.47) assumes ||F'|| <= 1.47 along the trajectory (the gain of the network from its
// unit-variance input to its output, in the sup norm the errors are measured in). The test measures
// that assumption rather than trusting it: a run of the same sampler with every evaluation pushed by
// +delta in a fixed sign pattern (errors of the budget's size, aligned so that they accumulate) must
// stay within NET_ODE_GROWTH times heun_error_bound of the unpushed run.
#define NET_ODE_GROWTH 10.0

// Magnitudes of ref's run, per denoiser evaluation k in order (two per step, one for the last):
// max |x| of the input, max |D| of the output.
struct heun_magnitudes {
    const double *xmax, *dmax;
};

// The bound on max |x_fast - x_ref| at the end of the run, before NET_ODE_GROWTH: sigmas[0..steps]
// (the last 0), sd = sigma_data of the EDM preconditioning.
static inline double heun_error_bound(const double *sigmas, int steps, double sd, struct heun_magnitudes mag) {
    double E = 0;
    int k = 0;
    for (int i = 0; i < steps; i++) {
        const double s = sigmas[i], s2 = sigmas[i + 1];
        const double cs = (float)(sd * sd / (s * s + sd * sd)), ia = (float)(1.0 / s);
        const double X = mag.xmax[k], Dm = mag.dmax[k], delta = NET_D_TOL * Dm;
        k++;
        // d = ia x - ia D, D = cs x + eta
        const double ad = ia * (1 - cs);
        const double bd = ia * delta + 2 * gam(2) * ia * ((X + E) + (Dm + cs * E + delta));
        const double dM = ia * (X + Dm) + fabs(ad) * E + bd;
        if (s2 == 0) { // x = x + dt d
            const double dt = (float)(s2 - s);
            E = fabs(1 + dt * ad) * E + fabs(dt) * bd + 2 * gam(2) * (fabs(dt) * dM + X + E);
            break;
        }
        const double dt = (float)(s2 - s), h = (float)(0.5 * (s2 - s));
        const double cs2 = (float)(sd * sd / (s2 * s2 + sd * sd)), ia2 = (float)(1.0 / s2);
        const double X2 = mag.xmax[k], Dm2 = mag.dmax[k], delta2 = NET_D_TOL * Dm2;
        k++;
        // xn = x + dt d
        const double an = 1 + dt * ad, bn = fabs(dt) * bd + 2 * gam(2) * (fabs(dt) * dM + X + E);
        const double En = fabs(an) * E + bn;
        // d' = ia2 xn - ia2 D', D' = cs2 xn + eta'
        const double ad2 = ia2 * (1 - cs2) * an;
        const double bd2 = ia2 * ((1 - cs2) * bn + delta2) + 2 * gam(2) * ia2 * ((X2 + En) + (Dm2 + cs2 * En + delta2));
        const double d2M = ia2 * (X2 + Dm2) + fabs(ad2) * E + bd2;
        // x1 = x + h d; x = x1 + h d'
        const double a1 = 1 + h * ad, b1 = fabs(h) * bd + 2 * gam(2) * (fabs(h) * dM + X + E);
        const double X1 = X + fabs(h) * dM + fabs(a1) * E + b1;
        const double a = a1 + h * ad2, b = b1 + fabs(h) * bd2 + 2 * gam(2) * (fabs(h) * d2M + X1);
        E = fabs(a) * E + b;
    }
    return E;
}

#endif
