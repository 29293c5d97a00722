// fast.h: the AVX2+FMA / OpenMP backend's functions, one per op of struct msd_backend, each the
// namesake of a ref/ function (fast_conv2d_forward beside ref_conv2d_forward).
//
// Each op is documented once, in common/core/backend.h; the files of fast/ hold the code, with the same
// file names as ref/, and comment only what differs from ref/. Every function here needs a CPU with
// AVX2 and FMA: the program reaches them through msd_backend_fast, which msd_backend_get("fast")
// hands out only after checking the CPU. This header itself has no intrinsics (tests include it).
#ifndef MSD_FAST_H
#define MSD_FAST_H

#include <stddef.h>
#include <stdint.h>

// backend.c: memory (host memory, 64-byte aligned)
float *fast_alloc(size_t n);
void fast_release(float *p);
void fast_upload(float *dst, const float *host_src, size_t n);
void fast_download(float *host_dst, const float *src, size_t n);
void fast_copy(float *dst, const float *src, size_t n);
void fast_fill(float *x, float value, size_t n);
void fast_fill_normal(float *x, uint64_t seed, uint64_t stream, size_t n);
void fast_sync(void);

// conv.c, linear.c, attention.c (declared in fast/gemm.h too, with the GEMM kernels they share)
void fast_conv2d_forward(float *y, const float *x, const float *w, const float *b, int N, int C, int H,
                         int W, int OC, int K);
void fast_conv2d_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                          const float *w, int N, int C, int H, int W, int OC, int K);
void fast_linear_forward(float *y, const float *x, const float *w, const float *b, int N, int IN,
                         int OUT);
void fast_linear_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                          const float *w, int N, int IN, int OUT);
void fast_attention_forward(float *a, float *w, const float *qkv, int N, int C, int HW);
void fast_attention_backward(float *dqkv, const float *da, const float *w, const float *qkv, int N,
                             int C, int HW);

// resample.c
void fast_down2_forward(float *y, const float *x, int N, int C, int H, int W);
void fast_down2_backward(float *dx, const float *dy, int N, int C, int H, int W);
void fast_up2_forward(float *y, const float *x, int N, int C, int H, int W);
void fast_up2_backward(float *dx, const float *dy, int N, int C, int H, int W);

// norm.c
void fast_groupnorm_forward(float *y, float *mean, float *rstd, const float *x, const float *gamma,
                            const float *beta, int N, int C, int HW, int G, float eps);
void fast_groupnorm_backward(float *dx, float *dgamma, float *dbeta, const float *dy,
                             const float *mean, const float *rstd, const float *x,
                             const float *gamma, int N, int C, int HW, int G);

// embedding.c
void fast_posemb_forward(float *y, const float *c, int N, int C);

// dropout.c
void fast_dropout_forward(float *y, const float *x, float p, uint64_t seed, uint64_t stream, size_t n);
void fast_dropout_backward(float *dx, const float *dy, float p, uint64_t seed, uint64_t stream,
                           size_t n);

// elementwise.c
void fast_silu_forward(float *y, const float *x, size_t n);
void fast_silu_backward(float *dx, const float *dy, const float *x, size_t n);
void fast_concat_forward(float *y, const float *a, const float *b, int N, int CA, int CB, int HW);
void fast_concat_backward(float *da, float *db, const float *dy, int N, int CA, int CB, int HW);
void fast_add(float *y, const float *a, const float *b, size_t n);
void fast_scale(float *y, const float *x, float s, size_t n);
void fast_axpby(float *y, float a, const float *x, float b, size_t n);
void fast_bias_add_forward(float *y, const float *x, const float *bias, int N, int C, int HW);
void fast_bias_add_backward(float *dbias, const float *dy, int N, int C, int HW);
void fast_scale_rows(float *y, const float *x, const float *s, int N, size_t M);
void fast_combine_rows(float *y, const float *a, const float *x, const float *b, const float *z, int N,
                       size_t M);
void fast_sqerr_rows(float *out, const float *x, const float *z, int N, size_t M);
// Not an op of the table: y[i] = exp(x[i]) by the vector exp that SiLU uses, so that tests can
// measure it against expf. y, x: (n)
void fast_exp_array(float *y, const float *x, size_t n);

// optim.c
void fast_adam(float *p, float *m, float *v, const float *g, float lr, float beta1, float beta2,
               float eps, long step, size_t n);
void fast_ema(float *ema, const float *p, float beta, size_t n);
void fast_nan_to_num(float *x, float nan, float posinf, float neginf, size_t n);
void fast_sumsq(float *out, const float *x, size_t n);

// denoiser.c
void fast_posterior_mean(float *m, float *w, const float *z, const float *data, const float *sigma,
                         int N, int K, size_t M);

#endif
