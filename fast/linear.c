// fast/linear.c: the fully connected layer, y = x w^T + b, on fast/gemm.c. Computes the functions of
// ref/linear.c; only the order of the float additions differs.
// Gradients: parameters accumulate (dw +=, db +=), activations are written (dx =).
//
// The three products, as GEMMs on strided views (struct gemm_mat: element (r, c) at p[r*rs + c*cs]):
//   y  (N, OUT)   = x (N, IN)     x w^T (IN, OUT)     w^T = {w, 1, IN}
//   dx (N, IN)    = dy (N, OUT)   x w (OUT, IN)
//   dw (OUT, IN) += dy^T (OUT, N) x x (N, IN)         dy^T = {dy, 1, OUT}
#include <string.h>

#include "gemm.h"

void fast_linear_forward(float *y, const float *x, const float *w, const float *b, int N, int IN,
                         int OUT) {
    // y: (N, OUT)  x: (N, IN)  w: (OUT, IN)  b: (OUT) or NULL
    // The bias runs along C's columns, not its rows: each row of y starts as b and the product is
    // added to it (one rounding, as in ref/ where the sum starts at b).
    if (b)
        for (int n = 0; n < N; n++) memcpy(y + (size_t)n * OUT, b, (size_t)OUT * sizeof(float));
    const struct gemm_mat A = {x, IN, 1}, B = {w, 1, IN};
    const struct gemm g = {.M = N, .N = OUT, .K = IN, .pack_a = gemm_pack_a_mat, .a = &A,
                           .pack_b = gemm_pack_b_mat, .b = &B, .c = {y, OUT, 0, 0}, .alpha = 1.0f,
                           .accumulate = b != NULL, .bias = NULL};
    gemm_run(&g, GEMM_PARALLEL);
}

// Forward was y[n, o] = b[o] + sum_i w[o, i] x[n, i], so
//   dx[n, i] = sum_o dy[n, o] w[o, i];  dw[o, i] += sum_n dy[n, o] x[n, i];  db[o] += sum_n dy[n, o]
void fast_linear_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                          const float *w, int N, int IN, int OUT) {
    // dx: (N, IN) or NULL  dw: (OUT, IN)  db: (OUT) or NULL  dy: (N, OUT)
    if (dx) {
        const struct gemm_mat A = {dy, OUT, 1}, B = {w, IN, 1};
        const struct gemm g = {.M = N, .N = IN, .K = OUT, .pack_a = gemm_pack_a_mat, .a = &A,
                               .pack_b = gemm_pack_b_mat, .b = &B, .c = {dx, IN, 0, 0}, .alpha = 1.0f,
                               .accumulate = false, .bias = NULL};
        gemm_run(&g, GEMM_PARALLEL);
    }
    const struct gemm_mat A = {dy, 1, OUT}, B = {x, IN, 1};
    const struct gemm g = {.M = OUT, .N = IN, .K = N, .pack_a = gemm_pack_a_mat, .a = &A,
                           .pack_b = gemm_pack_b_mat, .b = &B, .c = {dw, IN, 0, 0}, .alpha = 1.0f,
                           .accumulate = true, .bias = NULL};
    gemm_run(&g, GEMM_PARALLEL);
    if (db) { // N * OUT floats: nothing to gain from SIMD; summed in double like ref/
#pragma omp parallel for
        for (int o = 0; o < OUT; o++) {
            double acc = 0.0;
            for (int n = 0; n < N; n++) acc += dy[(size_t)n * OUT + o];
            db[o] += (float)acc;
        }
    }
}
