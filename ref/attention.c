// ref/attention.c: the core of EDM's self-attention, one head, on the interleaved qkv tensor.
//
// Contract of ref/: scalar C11, no intrinsics, no fast-math, readable first; reductions in double;
// only `#pragma omp parallel for` over independent outputs; no allocation.
// Gradients: activations are written (dqkv =); this op has no parameters.
//
// EDM's UNetBlock makes qkv with a 1x1 conv to 3C channels and reads it as (N, C, 3, HW): channel
// c*3 + j of qkv is q (j = 0), k (j = 1) or v (j = 2) of channel c. With s = 1 / sqrt(C):
//   logits[i, j] = s * sum_c q[c, i] k[c, j]           (query position i, key position j)
//   w[i, j]      = softmax over j of logits[i, j]       (saved for backward)
//   a[c, i]      = sum_j w[i, j] v[c, j]
// The 1x1 convs around it (qkv, proj) are ordinary conv2d calls in the graph.
#include <math.h>

#include "ref.h"

// The channel of qkv that holds q (j = 0), k (1) or v (2) for channel c, sample n.
static inline const float *qkv_row(const float *qkv, int n, int c, int j, int C, int HW) {
    return qkv + ((size_t)n * 3 * C + (size_t)c * 3 + j) * HW;
}

void ref_attention_forward(float *a, float *w, const float *qkv, int N, int C, int HW) {
    // a: (N, C, HW)  w: (N, HW, HW)  qkv: (N, 3C, HW)
    const double s = 1.0 / sqrt((double)C);
#pragma omp parallel for collapse(2)
    for (int n = 0; n < N; n++) {
        for (int i = 0; i < HW; i++) {
            float *wi = w + ((size_t)n * HW + i) * HW;
            double max = -INFINITY;
            for (int j = 0; j < HW; j++) { // logits, kept in w for now
                double dot = 0.0;
                for (int c = 0; c < C; c++)
                    dot += (double)qkv_row(qkv, n, c, 0, C, HW)[i] * qkv_row(qkv, n, c, 1, C, HW)[j];
                wi[j] = (float)(dot * s);
                if (wi[j] > max) max = wi[j];
            }
            double sum = 0.0; // softmax with the row maximum subtracted
            for (int j = 0; j < HW; j++) sum += exp(wi[j] - max);
            for (int j = 0; j < HW; j++) wi[j] = (float)(exp(wi[j] - max) / sum);
            for (int c = 0; c < C; c++) {
                const float *v = qkv_row(qkv, n, c, 2, C, HW);
                double acc = 0.0;
                for (int j = 0; j < HW; j++) acc += (double)wi[j] * v[j];
                a[((size_t)n * C + c) * HW + i] = (float)acc;
            }
        }
    }
}

// Forward was a[c, i] = sum_j w[i, j] v[c, j] with w = softmax_j(s q^T k). Going back:
//   dv[c, j] = sum_i w[i, j] da[c, i]
//   dw[i, j] = sum_c da[c, i] v[c, j]                              (gradient at w)
//   dl[i, j] = w[i, j] (dw[i, j] - r[i]),  r[i] = sum_j w[i, j] dw[i, j]     (softmax backward)
//   dq[c, i] = s sum_j dl[i, j] k[c, j];   dk[c, j] = s sum_i dl[i, j] q[c, i]
// dl is (HW, HW); rather than take scratch for it, each pass below recomputes the row or column of
// it that it needs, keeping only r (HW doubles on the stack).
static double grad_w(const float *da, const float *qkv, int n, int i, int j, int C, int HW) {
    double acc = 0.0; // dw[i, j]
    for (int c = 0; c < C; c++)
        acc += (double)da[((size_t)n * C + c) * HW + i] * qkv_row(qkv, n, c, 2, C, HW)[j];
    return acc;
}

void ref_attention_backward(float *dqkv, const float *da, const float *w, const float *qkv, int N,
                            int C, int HW) {
    // dqkv: (N, 3C, HW)  da: (N, C, HW)  w: (N, HW, HW)  qkv: (N, 3C, HW)
    const double s = 1.0 / sqrt((double)C);
    double r[HW];
    for (int n = 0; n < N; n++) {
        const float *wn = w + (size_t)n * HW * HW; // wn[i * HW + j] = w[n, i, j]
        float *dq0 = dqkv + (size_t)n * 3 * C * HW; // rows 3c, 3c+1, 3c+2: dq, dk, dv of channel c
#pragma omp parallel for
        for (int i = 0; i < HW; i++) {
            double acc = 0.0;
            for (int j = 0; j < HW; j++) acc += wn[(size_t)i * HW + j] * grad_w(da, qkv, n, i, j, C, HW);
            r[i] = acc;
        }
#pragma omp parallel for
        for (int i = 0; i < HW; i++) { // dq: a row of dl at a time
            double dl[HW];
            for (int j = 0; j < HW; j++)
                dl[j] = wn[(size_t)i * HW + j] * (grad_w(da, qkv, n, i, j, C, HW) - r[i]);
            for (int c = 0; c < C; c++) {
                const float *k = qkv_row(qkv, n, c, 1, C, HW);
                double acc = 0.0;
                for (int j = 0; j < HW; j++) acc += dl[j] * k[j];
                dq0[(size_t)(3 * c + 0) * HW + i] = (float)(s * acc);
            }
        }
#pragma omp parallel for
        for (int j = 0; j < HW; j++) { // dk: a column of dl at a time; dv alongside
            double dl[HW];
            for (int i = 0; i < HW; i++)
                dl[i] = wn[(size_t)i * HW + j] * (grad_w(da, qkv, n, i, j, C, HW) - r[i]);
            for (int c = 0; c < C; c++) {
                const float *q = qkv_row(qkv, n, c, 0, C, HW);
                const float *dac = da + ((size_t)n * C + c) * HW;
                double acc_k = 0.0, acc_v = 0.0;
                for (int i = 0; i < HW; i++) {
                    acc_k += dl[i] * q[i];
                    acc_v += (double)wn[(size_t)i * HW + j] * dac[i];
                }
                dq0[(size_t)(3 * c + 1) * HW + j] = (float)(s * acc_k);
                dq0[(size_t)(3 * c + 2) * HW + j] = (float)acc_v;
            }
        }
    }
}
