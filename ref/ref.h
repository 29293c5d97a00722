// ref.h: the scalar reference backend's functions, one per op of struct msd_backend.
//
// Each is documented once, in common/core/backend.h, where the table lists it with its shapes; the files
// of ref/ hold the code, one family of ops per file. fast/ may call these for ops that have no
// profitable SIMD form, and tests call them through msd_backend_ref.
#ifndef MSD_REF_H
#define MSD_REF_H

#include <stddef.h>
#include <stdint.h>

// backend.c: memory
float *ref_alloc(size_t n);
void ref_release(float *p);
void ref_upload(float *dst, const float *host_src, size_t n);
void ref_download(float *host_dst, const float *src, size_t n);
void ref_copy(float *dst, const float *src, size_t n);
void ref_fill(float *x, float value, size_t n);
void ref_fill_normal(float *x, uint64_t seed, uint64_t stream, size_t n);
void ref_sync(void);

// conv.c
void ref_conv2d_forward(float *y, const float *x, const float *w, const float *b, int N, int C, int H,
                        int W, int OC, int K);
void ref_conv2d_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                         const float *w, int N, int C, int H, int W, int OC, int K);

// resample.c
void ref_down2_forward(float *y, const float *x, int N, int C, int H, int W);
void ref_down2_backward(float *dx, const float *dy, int N, int C, int H, int W);
void ref_up2_forward(float *y, const float *x, int N, int C, int H, int W);
void ref_up2_backward(float *dx, const float *dy, int N, int C, int H, int W);

// norm.c
void ref_groupnorm_forward(float *y, float *mean, float *rstd, const float *x, const float *gamma,
                           const float *beta, int N, int C, int HW, int G, float eps);
void ref_groupnorm_backward(float *dx, float *dgamma, float *dbeta, const float *dy,
                            const float *mean, const float *rstd, const float *x, const float *gamma,
                            int N, int C, int HW, int G);

// linear.c
void ref_linear_forward(float *y, const float *x, const float *w, const float *b, int N, int IN,
                        int OUT);
void ref_linear_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                         const float *w, int N, int IN, int OUT);

// attention.c
void ref_attention_forward(float *a, float *w, const float *qkv, int N, int C, int HW);
void ref_attention_backward(float *dqkv, const float *da, const float *w, const float *qkv, int N,
                            int C, int HW);

// embedding.c
void ref_posemb_forward(float *y, const float *c, int N, int C);

// dropout.c
void ref_dropout_forward(float *y, const float *x, float p, uint64_t seed, uint64_t stream, size_t n);
void ref_dropout_backward(float *dx, const float *dy, float p, uint64_t seed, uint64_t stream,
                          size_t n);

// elementwise.c
void ref_silu_forward(float *y, const float *x, size_t n);
void ref_silu_backward(float *dx, const float *dy, const float *x, size_t n);
void ref_concat_forward(float *y, const float *a, const float *b, int N, int CA, int CB, int HW);
void ref_concat_backward(float *da, float *db, const float *dy, int N, int CA, int CB, int HW);
void ref_add(float *y, const float *a, const float *b, size_t n);
void ref_scale(float *y, const float *x, float s, size_t n);
void ref_axpby(float *y, float a, const float *x, float b, size_t n);
void ref_bias_add_forward(float *y, const float *x, const float *bias, int N, int C, int HW);
void ref_bias_add_backward(float *dbias, const float *dy, int N, int C, int HW);
void ref_scale_rows(float *y, const float *x, const float *s, int N, size_t M);
void ref_combine_rows(float *y, const float *a, const float *x, const float *b, const float *z, int N,
                      size_t M);
void ref_sqerr_rows(float *out, const float *x, const float *z, int N, size_t M);

// optim.c
void ref_adam(float *p, float *m, float *v, const float *g, float lr, float beta1, float beta2,
              float eps, long step, size_t n);
void ref_ema(float *ema, const float *p, float beta, size_t n);
void ref_nan_to_num(float *x, float nan, float posinf, float neginf, size_t n);
void ref_sumsq(float *out, const float *x, size_t n);

// denoiser.c
void ref_posterior_mean(float *m, float *w, const float *z, const float *data, const float *sigma, int N,
                        int K, size_t M);

#endif
