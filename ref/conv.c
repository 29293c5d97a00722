// ref/conv.c: 2D convolution, stride 1, "same" zero padding, kernel 1 or 3, optional bias.
//
// Contract of ref/: scalar C11, no intrinsics, no fast-math, readable first; reductions in double;
// only `#pragma omp parallel for` over independent outputs; no allocation.
// Gradients: parameters accumulate (dw +=, db +=), activations are written (dx =).
#include "ref.h"

// y[n, o, h, w] = b[o] + sum_{c, i, j} w[o, c, i, j] * x[n, c, h + i - P, w + j - P],  P = K/2,
// where x outside the image is zero.
void ref_conv2d_forward(float *y, const float *x, const float *w, const float *b, int N, int C, int H,
                        int W, int OC, int K) {
    // y: (N, OC, H, W)  x: (N, C, H, W)  w: (OC, C, K, K)  b: (OC) or NULL
    const int P = K / 2;
#pragma omp parallel for collapse(2)
    for (int n = 0; n < N; n++) {
        for (int o = 0; o < OC; o++) {
            for (int h = 0; h < H; h++) {
                for (int v = 0; v < W; v++) {
                    double acc = b ? b[o] : 0.0;
                    for (int c = 0; c < C; c++) {
                        const float *xc = x + ((size_t)n * C + c) * H * W;
                        const float *wc = w + ((size_t)o * C + c) * K * K;
                        for (int i = 0; i < K; i++) {
                            int hh = h + i - P;
                            if (hh < 0 || hh >= H) continue;
                            for (int j = 0; j < K; j++) {
                                int vv = v + j - P;
                                if (vv < 0 || vv >= W) continue;
                                acc += (double)wc[i * K + j] * xc[hh * W + vv];
                            }
                        }
                    }
                    y[(((size_t)n * OC + o) * H + h) * W + v] = (float)acc;
                }
            }
        }
    }
}

// Forward was y[n, o, h, v] += w[o, c, i, j] * x[n, c, h + i - P, v + j - P], so
//   dx[n, c, hh, vv] = sum_{o, i, j} dy[n, o, hh - i + P, vv - j + P] * w[o, c, i, j]
//   dw[o, c, i, j]  += sum_{n, h, v} dy[n, o, h, v] * x[n, c, h + i - P, v + j - P]
//   db[o]           += sum_{n, h, v} dy[n, o, h, v]
// Each loop nest below owns its outputs, so each parallelises without races.
void ref_conv2d_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                         const float *w, int N, int C, int H, int W, int OC, int K) {
    // dx: (N, C, H, W) or NULL  dw: (OC, C, K, K)  db: (OC) or NULL  dy: (N, OC, H, W)
    const int P = K / 2;
    const size_t HW = (size_t)H * W;
    if (dx) {
#pragma omp parallel for collapse(2)
        for (int n = 0; n < N; n++) {
            for (int c = 0; c < C; c++) {
                for (int hh = 0; hh < H; hh++) {
                    for (int vv = 0; vv < W; vv++) {
                        double acc = 0.0;
                        for (int o = 0; o < OC; o++) {
                            const float *dyo = dy + ((size_t)n * OC + o) * HW;
                            const float *wc = w + ((size_t)o * C + c) * K * K;
                            for (int i = 0; i < K; i++) {
                                int h = hh - i + P;
                                if (h < 0 || h >= H) continue;
                                for (int j = 0; j < K; j++) {
                                    int v = vv - j + P;
                                    if (v < 0 || v >= W) continue;
                                    acc += (double)dyo[h * W + v] * wc[i * K + j];
                                }
                            }
                        }
                        dx[((size_t)n * C + c) * HW + hh * W + vv] = (float)acc;
                    }
                }
            }
        }
    }
#pragma omp parallel for collapse(2)
    for (int o = 0; o < OC; o++) {
        for (int c = 0; c < C; c++) {
            for (int i = 0; i < K; i++) {
                for (int j = 0; j < K; j++) {
                    double acc = 0.0;
                    for (int n = 0; n < N; n++) {
                        const float *dyo = dy + ((size_t)n * OC + o) * HW;
                        const float *xc = x + ((size_t)n * C + c) * HW;
                        for (int h = 0; h < H; h++) {
                            int hh = h + i - P;
                            if (hh < 0 || hh >= H) continue;
                            for (int v = 0; v < W; v++) {
                                int vv = v + j - P;
                                if (vv < 0 || vv >= W) continue;
                                acc += (double)dyo[h * W + v] * xc[hh * W + vv];
                            }
                        }
                    }
                    dw[(((size_t)o * C + c) * K + i) * K + j] += (float)acc;
                }
            }
        }
    }
    if (db) {
#pragma omp parallel for
        for (int o = 0; o < OC; o++) {
            double acc = 0.0;
            for (int n = 0; n < N; n++)
                for (size_t p = 0; p < HW; p++) acc += dy[((size_t)n * OC + o) * HW + p];
            db[o] += (float)acc;
        }
    }
}
