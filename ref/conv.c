// ref/conv.c: 2D convolution, stride 1, 'same' zero padding, kernel K = 1 or 3, optional bias.
//
// Contract of ref/: scalar C11, no intrinsics, no fast-math, readable first; reductions in double;
// only `#pragma omp parallel for` over independent outputs; no allocation.
// Gradients: parameters accumulate (dw +=, db +=), activations are written (dx =).
//
// Each function is its formula, one output element at a time. The padding P = (K - 1) / 2 keeps the
// image size; x is zero outside the image, so a term that would read there is left out of the sum
// (the loop bounds skip it) rather than added as a product with zero, which would turn a -0 bias into
// +0 and an infinite weight into NaN. The same three sums as GEMMs, with loops tuned for the cache and
// AVX2, are in fast/conv.c (its header writes them as GEMMs over im2col) and fast/gemm.c.
#include "ref.h"

// The offset of t[n, c, i, j] in a row-major tensor t of shape (N, C, H, W).
static inline size_t at(int n, int c, int i, int j, int C, int H, int W) {
    return (((size_t)n * C + c) * H + i) * W + j;
}
static inline int imax(int a, int b) { return a > b ? a : b; }
static inline int imin(int a, int b) { return a < b ? a : b; }

// y[n, o, i, j] = b[o] + sum_{c, u, v} w[o, c, u, v] * x[n, c, i + u - P, j + v - P]
// (x zero outside the image), summed in the order c, u, v.
void ref_conv2d_forward(float *y, const float *x, const float *w, const float *b, int N, int C, int H,
                        int W, int OC, int K) {
    // y: (N, OC, H, W)  x: (N, C, H, W)  w: (OC, C, K, K)  b: (OC) or NULL
    const int P = (K - 1) / 2;
#pragma omp parallel for collapse(3)
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++)
            for (int i = 0; i < H; i++) {
                // the taps that read inside the image: rows 0 <= i + u - P < H, columns 0 <= j + v - P < W
                const int u0 = imax(0, P - i), u1 = imin(K, H + P - i);
                for (int j = 0; j < W; j++) {
                    const int v0 = imax(0, P - j), v1 = imin(K, W + P - j);
                    double acc = b ? b[o] : 0.0;
                    for (int c = 0; c < C; c++)
                        for (int u = u0; u < u1; u++)
                            for (int v = v0; v < v1; v++)
                                acc += (double)w[at(o, c, u, v, C, K, K)] *
                                       x[at(n, c, i + u - P, j + v - P, C, H, W)];
                    y[at(n, o, i, j, OC, H, W)] = (float)acc;
                }
            }
}

// Forward was y[n, o, i, j] = b[o] + sum_{c, u, v} w[o, c, u, v] * x[n, c, i + u - P, j + v - P]:
// each input, weight and bias gets the dy of every output it enters, times its factor there. Each
// loop nest below owns its outputs, so each parallelises without races.
void ref_conv2d_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                         const float *w, int N, int C, int H, int W, int OC, int K) {
    // dx: (N, C, H, W) or NULL  dw: (OC, C, K, K)  db: (OC) or NULL  dy: (N, OC, H, W)
    const int P = (K - 1) / 2;
    // x[n, c, p, q] enters y[n, o, p - u + P, q - v + P] (i = p - u + P, j = q - v + P in the forward
    // line) with the factor w[o, c, u, v], for every o, u, v whose output lies inside the image:
    //   dx[n, c, p, q] = sum_{o, u, v} dy[n, o, p - u + P, q - v + P] * w[o, c, u, v]
    if (dx) {
#pragma omp parallel for collapse(3)
        for (int n = 0; n < N; n++)
            for (int c = 0; c < C; c++)
                for (int p = 0; p < H; p++) {
                    // the taps whose output lies inside the image: rows 0 <= p - u + P < H, columns
                    // 0 <= q - v + P < W
                    const int u0 = imax(0, p + P - H + 1), u1 = imin(K, p + P + 1);
                    for (int q = 0; q < W; q++) {
                        const int v0 = imax(0, q + P - W + 1), v1 = imin(K, q + P + 1);
                        double acc = 0.0;
                        for (int o = 0; o < OC; o++)
                            for (int u = u0; u < u1; u++)
                                for (int v = v0; v < v1; v++)
                                    acc += (double)w[at(o, c, u, v, C, K, K)] *
                                           dy[at(n, o, p - u + P, q - v + P, OC, H, W)];
                        dx[at(n, c, p, q, C, H, W)] = (float)acc;
                    }
                }
    }
    // w[o, c, u, v] enters every y[n, o, i, j] with the factor x[n, c, i + u - P, j + v - P]:
    //   dw[o, c, u, v] += sum_{n, i, j} dy[n, o, i, j] * x[n, c, i + u - P, j + v - P]
    // The sum is grouped by output column j: W partial sums of N * H terms each (n, then i), then
    // their sum, which keeps every running sum shorter than one over all N * H * W terms.
#pragma omp parallel for collapse(4)
    for (int o = 0; o < OC; o++)
        for (int c = 0; c < C; c++)
            for (int u = 0; u < K; u++)
                for (int v = 0; v < K; v++) {
                    // the outputs whose tap (u, v) reads inside the image: rows 0 <= i + u - P < H,
                    // columns 0 <= j + v - P < W
                    const int i0 = imax(0, P - u), i1 = imin(H, H + P - u);
                    const int j0 = imax(0, P - v), j1 = imin(W, W + P - v);
                    double acc = 0.0;
                    for (int j = j0; j < j1; j++) {
                        double column = 0.0;
                        for (int n = 0; n < N; n++)
                            for (int i = i0; i < i1; i++)
                                column += (double)dy[at(n, o, i, j, OC, H, W)] *
                                          x[at(n, c, i + u - P, j + v - P, C, H, W)];
                        acc += column;
                    }
                    dw[at(o, c, u, v, C, K, K)] += (float)acc;
                }
    // b[o] enters every y[n, o, i, j] with the factor 1:
    //   db[o] += sum_{n, i, j} dy[n, o, i, j]
    if (db) {
#pragma omp parallel for
        for (int o = 0; o < OC; o++) {
            double acc = 0.0;
            for (int n = 0; n < N; n++)
                for (int i = 0; i < H; i++)
                    for (int j = 0; j < W; j++) acc += dy[at(n, o, i, j, OC, H, W)];
            db[o] += (float)acc;
        }
    }
}
