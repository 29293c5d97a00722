// fast/embedding.c: the positional embedding of the noise condition (see ref/embedding.c).
//
// Left to ref: the op makes N x C values (64 x 32 for `mini`) once per forward pass, a few
// microseconds of sin and cos in double, and no vector form would show in a training step. Calling
// ref also keeps the embedding bit-identical across the two backends.
#include "../ref/ref.h"
#include "fast.h"

void fast_posemb_forward(float *y, const float *c, int N, int C) { ref_posemb_forward(y, c, N, C); }
