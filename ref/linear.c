// ref/linear.c: fully connected layer, y = x w^T + b (torch's weight layout (OUT, IN)).
//
// Contract of ref/: scalar C11, no intrinsics, no fast-math, readable first; reductions in double;
// only `#pragma omp parallel for` over independent outputs; no allocation.
// Gradients: parameters accumulate (dw +=, db +=), activations are written (dx =).
#include "ref.h"

// y[n, o] = b[o] + sum_i w[o, i] x[n, i]
void ref_linear_forward(float *y, const float *x, const float *w, const float *b, int N, int IN,
                        int OUT) {
    // y: (N, OUT)  x: (N, IN)  w: (OUT, IN)  b: (OUT) or NULL
#pragma omp parallel for collapse(2)
    for (int n = 0; n < N; n++) {
        for (int o = 0; o < OUT; o++) {
            double acc = b ? b[o] : 0.0;
            for (int i = 0; i < IN; i++) acc += (double)w[(size_t)o * IN + i] * x[(size_t)n * IN + i];
            y[(size_t)n * OUT + o] = (float)acc;
        }
    }
}

// Forward was y[n, o] = b[o] + sum_i w[o, i] x[n, i], so
//   dx[n, i] = sum_o dy[n, o] w[o, i];  dw[o, i] += sum_n dy[n, o] x[n, i];  db[o] += sum_n dy[n, o]
void ref_linear_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                         const float *w, int N, int IN, int OUT) {
    // dx: (N, IN) or NULL  dw: (OUT, IN)  db: (OUT) or NULL  dy: (N, OUT)
    if (dx) {
#pragma omp parallel for collapse(2)
        for (int n = 0; n < N; n++) {
            for (int i = 0; i < IN; i++) {
                double acc = 0.0;
                for (int o = 0; o < OUT; o++) acc += (double)dy[(size_t)n * OUT + o] * w[(size_t)o * IN + i];
                dx[(size_t)n * IN + i] = (float)acc;
            }
        }
    }
#pragma omp parallel for
    for (int o = 0; o < OUT; o++) {
        for (int i = 0; i < IN; i++) {
            double acc = 0.0;
            for (int n = 0; n < N; n++) acc += (double)dy[(size_t)n * OUT + o] * x[(size_t)n * IN + i];
            dw[(size_t)o * IN + i] += (float)acc;
        }
        if (db) {
            double acc = 0.0;
            for (int n = 0; n < N; n++) acc += dy[(size_t)n * OUT + o];
            db[o] += (float)acc;
        }
    }
}
