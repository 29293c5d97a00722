// ref/embedding.c: the positional embedding of the noise condition (DDPM++ in EDM's SongUNet).
//
// Contract of ref/: scalar C11, no intrinsics, no fast-math, readable first; no allocation.
//
// EDM's PositionalEmbedding(endpoint=True) with max_positions 10000 makes C/2 frequencies
//   f_i = (1/10000)^(i / (C/2 - 1)),  i = 0 .. C/2 - 1   (f_0 = 1, the last is 1/10000)
// and returns [cos(c f), sin(c f)]; SongUNet swaps the two halves, so the network sees
// [sin(c f), cos(c f)]: sin first. Nothing before this op has weights, so there is no backward.
// Computed in double and rounded once, as the float64 reference dumps are.
#include <math.h>

#include "ref.h"

void ref_posemb_forward(float *y, const float *c, int N, int C) {
    // y: (N, C)  c: (N)
    const int half = C / 2;
    for (int n = 0; n < N; n++) {
        for (int i = 0; i < half; i++) {
            double f = pow(1.0 / 10000.0, (double)i / (half - 1));
            double arg = (double)c[n] * f;
            y[(size_t)n * C + i] = (float)sin(arg);
            y[(size_t)n * C + half + i] = (float)cos(arg);
        }
    }
}
