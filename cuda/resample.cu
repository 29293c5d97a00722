// cuda/resample.cu: 2x down- and upsampling with EDM's box filter [1, 1], one thread per output.
//
// What differs from ref/resample.c: nothing; the four-term sums are in double as there, so the results
// are ref's bit for bit.
#include "cuda.cuh"

namespace MSD_CUDA_NS {

// y[n, c, h, v] = (x[2h, 2v] + x[2h, 2v+1] + x[2h+1, 2v] + x[2h+1, 2v+1]) / 4; i runs over y.
__global__ static void down2_forward_kernel(float *y, const float *x, int H, int W, size_t n) {
    const int Ho = H / 2, Wo = W / 2;
    CU_FOR(i, n) {
        size_t nc = i / ((size_t)Ho * Wo);
        int h = (int)(i / Wo % Ho), v = (int)(i % Wo);
        const float *xc = x + nc * H * W;
        double s = (double)xc[(2 * h) * W + 2 * v] + xc[(2 * h) * W + 2 * v + 1] +
                   xc[(2 * h + 1) * W + 2 * v] + xc[(2 * h + 1) * W + 2 * v + 1];
        y[i] = (float)(0.25 * s);
    }
}
void cu_down2_forward(float *y, const float *x, int N, int C, int H, int W) {
    const size_t n = (size_t)N * C * (H / 2) * (W / 2);
    if (n) launch("down2_forward", down2_forward_kernel, grid_for(n), CU_THREADS, y, x, H, W, n);
}

// Forward was y[h, v] = mean of x over its 2x2 block, so every x in the block gets dy[h, v] / 4; i runs
// over dx.
__global__ static void down2_backward_kernel(float *dx, const float *dy, int H, int W, size_t n) {
    const int Wo = W / 2;
    CU_FOR(i, n) {
        size_t nc = i / ((size_t)H * W);
        int h = (int)(i / W % H), v = (int)(i % W);
        dx[i] = 0.25f * dy[nc * (H / 2) * Wo + (h / 2) * Wo + v / 2];
    }
}
void cu_down2_backward(float *dx, const float *dy, int N, int C, int H, int W) {
    const size_t n = (size_t)N * C * H * W;
    if (n) launch("down2_backward", down2_backward_kernel, grid_for(n), CU_THREADS, dx, dy, H, W, n);
}

// y[n, c, h, v] = x[n, c, h/2, v/2]; i runs over y (2H x 2W per channel).
__global__ static void up2_forward_kernel(float *y, const float *x, int H, int W, size_t n) {
    const int Ho = 2 * H, Wo = 2 * W;
    CU_FOR(i, n) {
        size_t nc = i / ((size_t)Ho * Wo);
        int h = (int)(i / Wo % Ho), v = (int)(i % Wo);
        y[i] = x[nc * H * W + (h / 2) * W + v / 2];
    }
}
void cu_up2_forward(float *y, const float *x, int N, int C, int H, int W) {
    const size_t n = (size_t)N * C * 4 * H * W;
    if (n) launch("up2_forward", up2_forward_kernel, grid_for(n), CU_THREADS, y, x, H, W, n);
}

// Forward copied x[h, v] to the four pixels of its 2x2 block, so dx[h, v] is their dy summed; i runs
// over dx.
__global__ static void up2_backward_kernel(float *dx, const float *dy, int H, int W, size_t n) {
    const int Wo = 2 * W;
    CU_FOR(i, n) {
        size_t nc = i / ((size_t)H * W);
        int h = (int)(i / W % H), v = (int)(i % W);
        const float *dyc = dy + nc * 4 * H * W;
        double s = (double)dyc[(2 * h) * Wo + 2 * v] + dyc[(2 * h) * Wo + 2 * v + 1] +
                   dyc[(2 * h + 1) * Wo + 2 * v] + dyc[(2 * h + 1) * Wo + 2 * v + 1];
        dx[i] = (float)s;
    }
}
void cu_up2_backward(float *dx, const float *dy, int N, int C, int H, int W) {
    const size_t n = (size_t)N * C * H * W;
    if (n) launch("up2_backward", up2_backward_kernel, grid_for(n), CU_THREADS, dx, dy, H, W, n);
}

} // namespace MSD_CUDA_NS
