// backend.h: the table of operations every backend implements (ref/, fast/, cuda/).
//
// The model, the training loop, the samplers and the clustering call only through this table, so
// they run unchanged on any backend, and tensors never leave backend memory behind their back.
// ref/ is the oracle; fast/ and cuda/ compute the same functions and are tested against it.
//
// Conventions, once for every op:
// - Tensors are float32, NCHW, contiguous, in the backend's memory (alloc/upload/download). Shapes
//   are plain ints passed after the pointers; every pointer carries a shape comment.
// - Argument order: outputs, then saved-for-backward, then inputs, then parameters, then dimensions.
//   Backward: (input gradients, parameter gradients, output gradient, saved..., inputs..., dims).
// - GRADIENT CONVENTION: parameter gradients ACCUMULATE (`dw += ...`), so that one fill() of the
//   gradient buffer starts a step and several uses of a weight add up; activation gradients are
//   WRITTEN (`dx = ...`). Where an activation feeds two consumers (residual and skip paths) the graph
//   code accumulates the two contributions itself (axpby). A NULL input-gradient pointer means
//   "not needed" (e.g. dx of the first layer); a NULL bias means "no bias".
// - Ops never allocate; scratch, when an op needs it, is passed in by the caller.
// - Forward ops may be called in place (y == x) only where the comment says so.
#ifndef MSD_BACKEND_H
#define MSD_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" { // cuda/ is C++ (CUDA), and shares this table
#endif

struct msd_backend {
    const char *name;

    // ---------------------------------------------------------------------------------------------
    // Memory. n counts floats. upload/download move between host and backend memory; copy and fill
    // stay in backend memory (copy's ranges are the same or do not overlap: cuda's device copy
    // does not promise memmove's order). sync waits for queued work (a no-op on the CPU); download
    // waits for the work that writes what it reads.
    float *(*alloc)(size_t n);
    void (*release)(float *p);
    void (*upload)(float *dst, const float *host_src, size_t n);
    void (*download)(float *host_dst, const float *src, size_t n);
    void (*copy)(float *dst, const float *src, size_t n);
    void (*fill)(float *x, float value, size_t n);
    // x[i] = msd_rng_normal(seed, stream, i) (common/core/rng.h): standard normal noise drawn where the
    // tensor lives, so that a training step's noise never crosses from the host. x: (n)
    void (*fill_normal)(float *x, uint64_t seed, uint64_t stream, size_t n);
    void (*sync)(void);

    // ---------------------------------------------------------------------------------------------
    // conv2d: stride 1, "same" zero padding (K/2), K = 1 or 3. ref skips the taps that fall in the
    // padding; fast and cuda multiply them by zero as a GEMM does (and as PyTorch does), so a NaN or
    // Inf weight, or an Inf in dy, reaches outputs through the padding there and not in ref.
    // y: (N, OC, H, W)  x: (N, C, H, W)  w: (OC, C, K, K)  b: (OC) or NULL
    void (*conv2d_forward)(float *y, const float *x, const float *w, const float *b, int N, int C,
                           int H, int W, int OC, int K);
    // dx: (N, C, H, W) written or NULL; dw: (OC, C, K, K) +=; db: (OC) += or NULL; dy: (N, OC, H, W)
    void (*conv2d_backward)(float *dx, float *dw, float *db, const float *dy, const float *x,
                            const float *w, int N, int C, int H, int W, int OC, int K);

    // ---------------------------------------------------------------------------------------------
    // Resampling with EDM's box filter [1, 1]. H and W are the sizes of x (the input).
    // down2: y: (N, C, H/2, W/2), the mean of each 2x2 block of x: (N, C, H, W); H, W even.
    void (*down2_forward)(float *y, const float *x, int N, int C, int H, int W);
    // dx: (N, C, H, W) written; dy: (N, C, H/2, W/2)
    void (*down2_backward)(float *dx, const float *dy, int N, int C, int H, int W);
    // up2: y: (N, C, 2H, 2W), nearest neighbour (the transposed box filter times 4); x: (N, C, H, W)
    void (*up2_forward)(float *y, const float *x, int N, int C, int H, int W);
    // dx: (N, C, H, W) written; dy: (N, C, 2H, 2W)
    void (*up2_backward)(float *dx, const float *dy, int N, int C, int H, int W);

    // ---------------------------------------------------------------------------------------------
    // groupnorm over G groups of C/G channels each (C % G == 0), biased variance, then a per-channel
    // affine. y: (N, C, HW)  mean, rstd: (N, G) saved  x: (N, C, HW)  gamma, beta: (C)
    void (*groupnorm_forward)(float *y, float *mean, float *rstd, const float *x, const float *gamma,
                              const float *beta, int N, int C, int HW, int G, float eps);
    // dx: (N, C, HW) written; dgamma, dbeta: (C) +=
    void (*groupnorm_backward)(float *dx, float *dgamma, float *dbeta, const float *dy,
                               const float *mean, const float *rstd, const float *x,
                               const float *gamma, int N, int C, int HW, int G);

    // ---------------------------------------------------------------------------------------------
    // linear: y = x w^T + b.  y: (N, OUT)  x: (N, IN)  w: (OUT, IN)  b: (OUT) or NULL
    void (*linear_forward)(float *y, const float *x, const float *w, const float *b, int N, int IN,
                           int OUT);
    // dx: (N, IN) written or NULL; dw: (OUT, IN) +=; db: (OUT) += or NULL
    void (*linear_backward)(float *dx, float *dw, float *db, const float *dy, const float *x,
                            const float *w, int N, int IN, int OUT);

    // ---------------------------------------------------------------------------------------------
    // silu: y = x * sigmoid(x). y, x: (n); in place allowed in forward.
    void (*silu_forward)(float *y, const float *x, size_t n);
    // dx: (n) written (may equal dy); x: the forward input
    void (*silu_backward)(float *dx, const float *dy, const float *x, size_t n);

    // ---------------------------------------------------------------------------------------------
    // attention core, one head, on EDM's interleaved qkv layout: channel (c*3 + j) of qkv holds
    // q (j = 0), k (j = 1), v (j = 2) of channel c.
    // w[n, i, j] = softmax_j( sum_c q[n, c, i] k[n, c, j] / sqrt(C) );  a[n, c, i] = sum_j w[n, i, j] v[n, c, j]
    // a: (N, C, HW)  w: (N, HW, HW) saved  qkv: (N, 3C, HW)
    void (*attention_forward)(float *a, float *w, const float *qkv, int N, int C, int HW);
    // dqkv: (N, 3C, HW) written; da: (N, C, HW)
    void (*attention_backward)(float *dqkv, const float *da, const float *w, const float *qkv, int N,
                               int C, int HW);

    // ---------------------------------------------------------------------------------------------
    // positional embedding of the noise condition (forward only; nothing before it has weights).
    // freqs f_i = (1/10000)^(i / (C/2 - 1)), i < C/2;  y[n] = [sin(c[n] f), cos(c[n] f)]  (sin first)
    // y: (N, C)  c: (N); C even and >= 4
    void (*posemb_forward)(float *y, const float *c, int N, int C);

    // ---------------------------------------------------------------------------------------------
    // dropout: element i is kept when msd_rng_uniform(seed, stream, i) >= p, and then scaled by
    // 1/(1-p); backward regenerates the same mask. y, x: (n); in place allowed; 0 <= p < 1.
    void (*dropout_forward)(float *y, const float *x, float p, uint64_t seed, uint64_t stream,
                            size_t n);
    // dx: (n) written (may equal dy)
    void (*dropout_backward)(float *dx, const float *dy, float p, uint64_t seed, uint64_t stream,
                             size_t n);

    // ---------------------------------------------------------------------------------------------
    // channel concat: y[n] = [a[n], b[n]].  y: (N, CA+CB, HW)  a: (N, CA, HW)  b: (N, CB, HW)
    void (*concat_forward)(float *y, const float *a, const float *b, int N, int CA, int CB, int HW);
    // the backward of concat is the split: da, db written (either may be NULL); dy: (N, CA+CB, HW)
    void (*concat_backward)(float *da, float *db, const float *dy, int N, int CA, int CB, int HW);

    // ---------------------------------------------------------------------------------------------
    // elementwise, all (n), in place allowed:
    // add: y = a + b;  scale: y = s x;  axpby: y = a x + b y (y is read and written)
    void (*add)(float *y, const float *a, const float *b, size_t n);
    void (*scale)(float *y, const float *x, float s, size_t n);
    void (*axpby)(float *y, float a, const float *x, float b, size_t n);
    // per-(sample, channel) bias: y[n, c, :] = x[n, c, :] + bias[n, c]
    // y, x: (N, C, HW) (in place allowed)  bias: (N, C)
    void (*bias_add_forward)(float *y, const float *x, const float *bias, int N, int C, int HW);
    // dx is dy itself (the graph reuses it); dbias[n, c] = sum over HW of dy, written (an activation)
    // dbias: (N, C)  dy: (N, C, HW)
    void (*bias_add_backward)(float *dbias, const float *dy, int N, int C, int HW);

    // ---------------------------------------------------------------------------------------------
    // Per-sample rows: a tensor viewed as (N, M), M = C*H*W, scaled by per-sample scalars. These
    // carry the preconditioning, the loss and the sampler updates. Linear, so each is its own
    // backward. In place allowed.
    // scale_rows: y[n, i] = s[n] x[n, i].  y, x: (N, M)  s: (N)
    void (*scale_rows)(float *y, const float *x, const float *s, int N, size_t M);
    // combine_rows: y[n, i] = a[n] x[n, i] + b[n] z[n, i].  y, x, z: (N, M)  a, b: (N)
    void (*combine_rows)(float *y, const float *a, const float *x, const float *b, const float *z,
                         int N, size_t M);
    // sqerr_rows: out[n] = sum_i (x[n, i] - z[n, i])^2, accumulated in double.  out: (N)  x, z: (N, M)
    void (*sqerr_rows)(float *out, const float *x, const float *z, int N, size_t M);

    // ---------------------------------------------------------------------------------------------
    // Optimiser. Adam as PyTorch computes it (no weight decay), with the bias corrections of step
    // `step` (1 for the first update):
    //   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
    //   p -= (lr / (1 - b1^step)) * m / (sqrt(v) / sqrt(1 - b2^step) + eps)
    // p, m, v: (n) updated; g: (n)
    void (*adam)(float *p, float *m, float *v, const float *g, float lr, float beta1, float beta2,
                 float eps, long step, size_t n);
    // EMA as EDM writes it (p.lerp(ema, beta)): ema = p + beta (ema - p).  ema, p: (n)
    void (*ema)(float *ema, const float *p, float beta, size_t n);
    // x = nan_to_num(x): NaN -> nan, +Inf -> posinf, -Inf -> neginf.  x: (n) in place
    void (*nan_to_num)(float *x, float nan, float posinf, float neginf, size_t n);
    // out[0] = sum of x^2, accumulated in double.  out: (1) in backend memory  x: (n)
    void (*sumsq)(float *out, const float *x, size_t n);

    // ---------------------------------------------------------------------------------------------
    // The optimal denoiser of an empirical data set {y_k} (docs/METHOD.md, The optimal denoiser;
    // common/model/cluster.h): the posterior mean of y given z = y + sigma_n eps, y uniform over the
    // K images. In the VP notation x_t = s_t z, and these weights equal
    // exp(-||x_t - s_t y_k||^2 / (2 (s_t sigma_t)^2)).
    //   d[n, k] = ||z[n] - y_k||^2 (double);  w[n, k] = exp(-(d[n, k] - min_k d[n, k]) / (2 sigma[n]^2))
    //   m[n] = sum_k w[n, k] y_k / sum_k w[n, k]
    // The minimum is subtracted (log-sum-exp), so the nearest image has weight 1 and nothing
    // underflows to 0/0 at small sigma. Sums in double.
    // m: (N, M) written  w: (N, K) scratch, written (the shifted weights)  z: (N, M)
    // data: (K, M) the images y_k  sigma: (N) one noise level > 0 per query
    void (*posterior_mean)(float *m, float *w, const float *z, const float *data, const float *sigma,
                           int N, int K, size_t M);
};

// Every op of the table, in order. Each backend builds its table from this list
// (`#define REF_OP(op) .op = ref_##op,`), so an op that a backend lacks is an undeclared identifier,
// a build error rather than a NULL pointer found at run time; the assertion below keeps the list and
// the struct in step.
#define MSD_BACKEND_OPS(X) X(alloc) X(release) X(upload) X(download) X(copy) X(fill) X(fill_normal) X(sync) \
    X(conv2d_forward) X(conv2d_backward) X(down2_forward) X(down2_backward) X(up2_forward) \
    X(up2_backward) X(groupnorm_forward) X(groupnorm_backward) X(linear_forward) \
    X(linear_backward) X(silu_forward) X(silu_backward) X(attention_forward) X(attention_backward) \
    X(posemb_forward) X(dropout_forward) X(dropout_backward) X(concat_forward) X(concat_backward) \
    X(add) X(scale) X(axpby) X(bias_add_forward) X(bias_add_backward) X(scale_rows) \
    X(combine_rows) X(sqerr_rows) X(adam) X(ema) X(nan_to_num) X(sumsq) \
    X(posterior_mean)
#define MSD_COUNT_OP(op) +1
#ifdef __cplusplus
#define MSD_STATIC_ASSERT static_assert
#else
#define MSD_STATIC_ASSERT _Static_assert
#endif
MSD_STATIC_ASSERT(sizeof(struct msd_backend) ==
                   sizeof(const char *) + (0 MSD_BACKEND_OPS(MSD_COUNT_OP)) * sizeof(void (*)(void)),
               "MSD_BACKEND_OPS must list every op of struct msd_backend");

// The backends this build knows, by name ("ref", "fast", "cuda"). Returns NULL and sets
// msd_last_error() for an unknown name or a backend that this build or machine lacks ("fast" needs a
// CPU with AVX2 and FMA: the message says "this CPU lacks AVX2/FMA").
const struct msd_backend *msd_backend_get(const char *name);

// The fastest backend this build and machine have: cuda, then fast, then ref. Falling back to ref
// for want of AVX2/FMA prints a one-line notice to stderr, once per process.
const struct msd_backend *msd_backend_default(void);

// Whether this CPU (and OS) can run fast/: AVX2 and FMA.
bool msd_cpu_has_avx2_fma(void);
// msd_backend_get and msd_backend_default as on a CPU with or without AVX2/FMA (avx2_fma), so that
// tests can take the fallback path on any machine.
const struct msd_backend *msd_backend_get_for_cpu(const char *name, bool avx2_fma);
const struct msd_backend *msd_backend_default_for_cpu(bool avx2_fma);

extern const struct msd_backend msd_backend_ref;
// The AVX2+FMA backend (fast/): linked into every build, usable only on a CPU with AVX2 and FMA, so
// reach it through msd_backend_get("fast"), which checks.
extern const struct msd_backend msd_backend_fast;
// The CUDA backend (cuda/), in builds made with nvcc (MSD_HAVE_CUDA): reach it through
// msd_backend_get("cuda"), which checks for a device with msd_cuda_probe (1 when usable; else 0 and
// the reason in `why`).
extern const struct msd_backend msd_backend_cuda;
int msd_cuda_probe(char *why, size_t len);
// One line about the device for benchmark headers (name, SMs, memory, versions).
void msd_cuda_describe(char *buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif
