// ref/conv.c: 2D convolution, stride 1, "same" zero padding, kernel 1 or 3, optional bias.
//
// Contract of ref/: scalar C11, no intrinsics, no fast-math, readable first; reductions in double;
// only `#pragma omp parallel for` over independent outputs; no allocation.
// Gradients: parameters accumulate (dw +=, db +=), activations are written (dx =).
//
// Every loop below walks one output row at a time, accumulating it in a row of doubles (on the
// stack, W <= 4096) one kernel tap at a time; the taps that would read outside the image are skipped
// by clipping the loop ranges (tap_range) instead of testing every pixel. The arithmetic is the
// definition; only the order of the loops is chosen so that the innermost runs along a row.
#include "ref.h"

// For output index p of a length-n axis and kernel tap t (offset t - P), the input index is
// p + t - P. The outputs whose input lies inside [0, n) are [lo, hi).
static void tap_range(int t, int P, int n, int *lo, int *hi) {
    *lo = P - t > 0 ? P - t : 0;
    *hi = n + P - t < n ? n + P - t : n;
}

// y[n, o, h, v] = b[o] + sum_{c, i, j} w[o, c, i, j] * x[n, c, h + i - P, v + j - P],  P = K/2,
// where x outside the image is zero.
void ref_conv2d_forward(float *y, const float *x, const float *w, const float *b, int N, int C, int H,
                        int W, int OC, int K) {
    // y: (N, OC, H, W)  x: (N, C, H, W)  w: (OC, C, K, K)  b: (OC) or NULL
    const int P = K / 2;
#pragma omp parallel for collapse(2)
    for (int n = 0; n < N; n++) {
        for (int o = 0; o < OC; o++) {
            for (int h = 0; h < H; h++) {
                double acc[W]; // the output row y[n, o, h, :]
                for (int v = 0; v < W; v++) acc[v] = b ? b[o] : 0.0;
                for (int c = 0; c < C; c++) {
                    const float *xc = x + ((size_t)n * C + c) * H * W;
                    const float *wc = w + ((size_t)o * C + c) * K * K;
                    for (int i = 0; i < K; i++) {
                        const int hh = h + i - P;
                        if (hh < 0 || hh >= H) continue;
                        for (int j = 0; j < K; j++) {
                            int lo, hi;
                            tap_range(j, P, W, &lo, &hi);
                            const double wij = wc[i * K + j];
                            const float *xr = xc + (size_t)hh * W + (j - P);
                            for (int v = lo; v < hi; v++) acc[v] += wij * xr[v];
                        }
                    }
                }
                float *yr = y + (((size_t)n * OC + o) * H + h) * W;
                for (int v = 0; v < W; v++) yr[v] = (float)acc[v];
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
                    double acc[W]; // the row dx[n, c, hh, :]
                    for (int v = 0; v < W; v++) acc[v] = 0.0;
                    for (int o = 0; o < OC; o++) {
                        const float *dyo = dy + ((size_t)n * OC + o) * HW;
                        const float *wc = w + ((size_t)o * C + c) * K * K;
                        for (int i = 0; i < K; i++) {
                            const int h = hh - i + P; // the output row that tap i of row h reads hh from
                            if (h < 0 || h >= H) continue;
                            for (int j = 0; j < K; j++) {
                                int lo, hi; // vv with v = vv - j + P inside [0, W)
                                tap_range(K - 1 - j, P, W, &lo, &hi);
                                const double wij = wc[i * K + j];
                                const float *dyr = dyo + (size_t)h * W - (j - P);
                                for (int vv = lo; vv < hi; vv++) acc[vv] += wij * dyr[vv];
                            }
                        }
                    }
                    float *dxr = dx + ((size_t)n * C + c) * HW + (size_t)hh * W;
                    for (int vv = 0; vv < W; vv++) dxr[vv] = (float)acc[vv];
                }
            }
        }
    }
#pragma omp parallel for collapse(2)
    for (int o = 0; o < OC; o++) {
        for (int c = 0; c < C; c++) {
            for (int i = 0; i < K; i++) {
                for (int j = 0; j < K; j++) {
                    int lo, hi;
                    tap_range(j, P, W, &lo, &hi);
                    double acc[W]; // per-column partial sums, added up at the end: a row at a time
                    for (int v = 0; v < W; v++) acc[v] = 0.0;
                    for (int n = 0; n < N; n++) {
                        const float *dyo = dy + ((size_t)n * OC + o) * HW;
                        const float *xc = x + ((size_t)n * C + c) * HW;
                        for (int h = 0; h < H; h++) {
                            const int hh = h + i - P;
                            if (hh < 0 || hh >= H) continue;
                            const float *xr = xc + (size_t)hh * W + (j - P);
                            for (int v = lo; v < hi; v++) acc[v] += (double)dyo[(size_t)h * W + v] * xr[v];
                        }
                    }
                    double sum = 0.0;
                    for (int v = 0; v < W; v++) sum += acc[v];
                    dw[(((size_t)o * C + c) * K + i) * K + j] += (float)sum;
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
