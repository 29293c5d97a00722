// cuda/embedding.cu: the positional embedding of the noise condition, one thread per (n, i).
//
// What differs from ref/embedding.c: on the emulator nothing; on the device, CUDA's double pow, sin
// and cos (within 2 ulp of the true value) instead of glibc's, so a float result can differ by an ulp
// where the double value lies next to a rounding boundary.
#include "cuda.cuh"

namespace MSD_CUDA_NS {

// y[n] = [sin(c[n] f), cos(c[n] f)] with f_i = (1/10000)^(i / (C/2 - 1)); j runs over (n, i).
__global__ static void posemb_forward_kernel(float *y, const float *c, int C, size_t n) {
    const int half = C / 2;
    CU_FOR(j, n) {
        size_t s = j / half;
        int i = (int)(j % half);
        double f = pow(1.0 / 10000.0, (double)i / (half - 1));
        double arg = (double)c[s] * f;
        y[s * C + i] = (float)sin(arg);
        y[s * C + half + i] = (float)cos(arg);
    }
}
void cu_posemb_forward(float *y, const float *c, int N, int C) {
    const size_t n = (size_t)N * (C / 2);
    if (n) launch("posemb_forward", posemb_forward_kernel, grid_for(n), CU_THREADS, y, c, C, n);
}

} // namespace MSD_CUDA_NS
