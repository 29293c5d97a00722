// ref/elementwise.c: SiLU, channel concat/split, add, scale, axpby, per-(sample, channel) bias, and
// the per-sample row ops (scale_rows, combine_rows, sqerr_rows).
//
// Contract of ref/: scalar C11, no intrinsics, no fast-math, readable first; reductions in double;
// only `#pragma omp parallel for` over independent outputs; no allocation.
// Gradients: activations are written (dx =). None of these ops has parameters.
#include <math.h>
#include <string.h>

#include "ref.h"

// ---------------------------------------------------------------------------------------------------
// SiLU (swish): y = x * sigmoid(x)

void ref_silu_forward(float *y, const float *x, size_t n) {
    // y, x: (n)
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) y[i] = (float)(x[i] / (1.0 + exp(-(double)x[i])));
}

// Forward was y = x s(x) with s the sigmoid, s' = s (1 - s), so dy/dx = s (1 + x (1 - s)).
void ref_silu_backward(float *dx, const float *dy, const float *x, size_t n) {
    // dx, dy, x: (n)
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) {
        double s = 1.0 / (1.0 + exp(-(double)x[i]));
        dx[i] = (float)(dy[i] * s * (1.0 + x[i] * (1.0 - s)));
    }
}

// ---------------------------------------------------------------------------------------------------
// Channel concat: y[n] = [a[n], b[n]]. Its backward splits dy back into the two parts.

void ref_concat_forward(float *y, const float *a, const float *b, int N, int CA, int CB, int HW) {
    // y: (N, CA+CB, HW)  a: (N, CA, HW)  b: (N, CB, HW)
    const size_t sa = (size_t)CA * HW, sb = (size_t)CB * HW;
    for (int n = 0; n < N; n++) {
        memcpy(y + n * (sa + sb), a + n * sa, sa * sizeof(float));
        memcpy(y + n * (sa + sb) + sa, b + n * sb, sb * sizeof(float));
    }
}

// Forward copied a and b into the two channel ranges of y; the gradient copies them back.
void ref_concat_backward(float *da, float *db, const float *dy, int N, int CA, int CB, int HW) {
    // da: (N, CA, HW) or NULL  db: (N, CB, HW) or NULL  dy: (N, CA+CB, HW)
    const size_t sa = (size_t)CA * HW, sb = (size_t)CB * HW;
    for (int n = 0; n < N; n++) {
        if (da) memcpy(da + n * sa, dy + n * (sa + sb), sa * sizeof(float));
        if (db) memcpy(db + n * sb, dy + n * (sa + sb) + sa, sb * sizeof(float));
    }
}

// ---------------------------------------------------------------------------------------------------
// Linear combinations. Their gradients are themselves (the graph calls scale/axpby going back).

void ref_add(float *y, const float *a, const float *b, size_t n) {
    // y, a, b: (n)
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) y[i] = a[i] + b[i];
}

void ref_scale(float *y, const float *x, float s, size_t n) {
    // y, x: (n)
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) y[i] = s * x[i];
}

void ref_axpby(float *y, float a, const float *x, float b, size_t n) {
    // y, x: (n); y = a x + b y
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) y[i] = a * x[i] + b * y[i];
}

// ---------------------------------------------------------------------------------------------------
// Per-(sample, channel) bias: how a UNetBlock adds its embedding, affine(emb)[:, :, None, None].

void ref_bias_add_forward(float *y, const float *x, const float *bias, int N, int C, int HW) {
    // y, x: (N, C, HW)  bias: (N, C)
#pragma omp parallel for
    for (long nc = 0; nc < (long)N * C; nc++)
        for (int p = 0; p < HW; p++) y[(size_t)nc * HW + p] = x[(size_t)nc * HW + p] + bias[nc];
}

// Forward was y[n, c, p] = x[n, c, p] + bias[n, c], so dx = dy (the graph reuses dy) and
// dbias[n, c] = sum_p dy[n, c, p].
void ref_bias_add_backward(float *dbias, const float *dy, int N, int C, int HW) {
    // dbias: (N, C)  dy: (N, C, HW)
#pragma omp parallel for
    for (long nc = 0; nc < (long)N * C; nc++) {
        double acc = 0.0;
        for (int p = 0; p < HW; p++) acc += dy[(size_t)nc * HW + p];
        dbias[nc] = (float)acc;
    }
}

// ---------------------------------------------------------------------------------------------------
// Per-sample rows: the preconditioning c_in x, c_skip x + c_out F, and the loss (D - y)^2.

void ref_scale_rows(float *y, const float *x, const float *s, int N, size_t M) {
    // y, x: (N, M)  s: (N)
#pragma omp parallel for
    for (int n = 0; n < N; n++)
        for (size_t i = 0; i < M; i++) y[(size_t)n * M + i] = s[n] * x[(size_t)n * M + i];
}

void ref_combine_rows(float *y, const float *a, const float *x, const float *b, const float *z, int N,
                      size_t M) {
    // y, x, z: (N, M)  a, b: (N)
#pragma omp parallel for
    for (int n = 0; n < N; n++)
        for (size_t i = 0; i < M; i++) {
            size_t k = (size_t)n * M + i;
            y[k] = (float)((double)a[n] * x[k] + (double)b[n] * z[k]);
        }
}

void ref_sqerr_rows(float *out, const float *x, const float *z, int N, size_t M) {
    // out: (N)  x, z: (N, M)
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        double acc = 0.0;
        for (size_t i = 0; i < M; i++) {
            double d = (double)x[(size_t)n * M + i] - z[(size_t)n * M + i];
            acc += d * d;
        }
        out[n] = (float)acc;
    }
}
