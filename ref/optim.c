// ref/optim.c: the optimiser's ops: Adam, EMA, nan_to_num and the sum of squares (for norms).
//
// Contract of ref/: scalar C11, no intrinsics, no fast-math, readable first; reductions in double;
// only `#pragma omp parallel for` over independent outputs; no allocation.
#include <math.h>

#include "ref.h"

// Adam as torch.optim.Adam computes it (no weight decay, not amsgrad), step counted from 1:
//   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//   p -= (lr / (1 - b1^step)) * m / (sqrt(v) / sqrt(1 - b2^step) + eps)
void ref_adam(float *p, float *m, float *v, const float *g, float lr, float beta1, float beta2,
              float eps, long step, size_t n) {
    // p, m, v, g: (n)
    const double bc1 = 1.0 - pow(beta1, (double)step);
    const double bc2 = 1.0 - pow(beta2, (double)step);
    const double step_size = lr / bc1, sqrt_bc2 = sqrt(bc2);
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) {
        m[i] = beta1 * m[i] + (1.0f - beta1) * g[i];
        v[i] = beta2 * v[i] + (1.0f - beta2) * g[i] * g[i];
        double denom = sqrt((double)v[i]) / sqrt_bc2 + eps;
        p[i] = (float)(p[i] - step_size * m[i] / denom);
    }
}

// EDM updates its EMA with p_ema.copy_(p.lerp(p_ema, beta)): ema = p + beta (ema - p).
void ref_ema(float *ema, const float *p, float beta, size_t n) {
    // ema, p: (n)
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) ema[i] = p[i] + beta * (ema[i] - p[i]);
}

// torch.nan_to_num in place: NaN -> nan, +Inf -> posinf, -Inf -> neginf; finite values unchanged.
void ref_nan_to_num(float *x, float nan, float posinf, float neginf, size_t n) {
    // x: (n)
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) {
        if (isnan(x[i])) x[i] = nan;
        else if (isinf(x[i])) x[i] = x[i] > 0 ? posinf : neginf;
    }
}

// out[0] = sum_i x[i]^2, accumulated in double, rounded once.
void ref_sumsq(float *out, const float *x, size_t n) {
    // out: (1)  x: (n)
    double acc = 0.0;
#pragma omp parallel for reduction(+ : acc)
    for (size_t i = 0; i < n; i++) acc += (double)x[i] * x[i];
    out[0] = (float)acc;
}
