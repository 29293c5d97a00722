// ref/resample.c: 2x down- and upsampling with EDM's box filter [1, 1].
//
// Contract of ref/: scalar C11, no intrinsics, no fast-math, readable first; reductions in double;
// only `#pragma omp parallel for` over independent outputs; no allocation.
//
// EDM resamples with the normalised 2x2 filter f = [1,1]^T [1,1] / 4: downsampling is a depthwise
// convolution with f at stride 2 (the mean of each 2x2 block), upsampling a depthwise transposed
// convolution with 4f at stride 2 (each pixel copied into a 2x2 block: nearest neighbour).
// Each is the other's transpose up to the factor 4, which the backward passes below make visible.
#include "ref.h"

// y[n, c, h, v] = (x[2h, 2v] + x[2h, 2v+1] + x[2h+1, 2v] + x[2h+1, 2v+1]) / 4
void ref_down2_forward(float *y, const float *x, int N, int C, int H, int W) {
    // y: (N, C, H/2, W/2)  x: (N, C, H, W)
    const int Ho = H / 2, Wo = W / 2;
#pragma omp parallel for
    for (long nc = 0; nc < (long)N * C; nc++) {
        const float *xc = x + (size_t)nc * H * W;
        float *yc = y + (size_t)nc * Ho * Wo;
        for (int h = 0; h < Ho; h++)
            for (int v = 0; v < Wo; v++) {
                double s = (double)xc[(2 * h) * W + 2 * v] + xc[(2 * h) * W + 2 * v + 1] +
                           xc[(2 * h + 1) * W + 2 * v] + xc[(2 * h + 1) * W + 2 * v + 1];
                yc[h * Wo + v] = (float)(0.25 * s);
            }
    }
}

// Forward was y[h, v] = mean of x over its 2x2 block, so every x in the block gets dy[h, v] / 4.
void ref_down2_backward(float *dx, const float *dy, int N, int C, int H, int W) {
    // dx: (N, C, H, W)  dy: (N, C, H/2, W/2)
    const int Wo = W / 2;
#pragma omp parallel for
    for (long nc = 0; nc < (long)N * C; nc++) {
        float *dxc = dx + (size_t)nc * H * W;
        const float *dyc = dy + (size_t)nc * (H / 2) * Wo;
        for (int h = 0; h < H; h++)
            for (int v = 0; v < W; v++) dxc[h * W + v] = 0.25f * dyc[(h / 2) * Wo + v / 2];
    }
}

// y[n, c, h, v] = x[n, c, h/2, v/2]
void ref_up2_forward(float *y, const float *x, int N, int C, int H, int W) {
    // y: (N, C, 2H, 2W)  x: (N, C, H, W)
    const int Ho = 2 * H, Wo = 2 * W;
#pragma omp parallel for
    for (long nc = 0; nc < (long)N * C; nc++) {
        const float *xc = x + (size_t)nc * H * W;
        float *yc = y + (size_t)nc * Ho * Wo;
        for (int h = 0; h < Ho; h++)
            for (int v = 0; v < Wo; v++) yc[h * Wo + v] = xc[(h / 2) * W + v / 2];
    }
}

// Forward copied x[h, v] to the four pixels of its 2x2 block, so dx[h, v] is their dy summed.
void ref_up2_backward(float *dx, const float *dy, int N, int C, int H, int W) {
    // dx: (N, C, H, W)  dy: (N, C, 2H, 2W)
    const int Wo = 2 * W;
#pragma omp parallel for
    for (long nc = 0; nc < (long)N * C; nc++) {
        float *dxc = dx + (size_t)nc * H * W;
        const float *dyc = dy + (size_t)nc * (2 * H) * Wo;
        for (int h = 0; h < H; h++)
            for (int v = 0; v < W; v++) {
                double s = (double)dyc[(2 * h) * Wo + 2 * v] + dyc[(2 * h) * Wo + 2 * v + 1] +
                           dyc[(2 * h + 1) * Wo + 2 * v] + dyc[(2 * h + 1) * Wo + 2 * v + 1];
                dxc[h * W + v] = (float)s;
            }
    }
}
