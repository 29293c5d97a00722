// cuda/linear.cu: fully connected layer, y = x w^T + b (torch's weight layout (OUT, IN)), as three
// GEMMs on gemm.cuh's tiled kernel (the bias gradient is one more column of dw's). Computes the
// functions of ref/linear.c.
// Gradients: parameters accumulate (dw +=, db +=), activations are written (dx =).
//
//   forward  y (N, OUT)    = x (N, IN)      x w^T (IN, OUT)    A = x, B = w read along IN
//   dx       dx (N, IN)    = dy (N, OUT)    x w (OUT, IN)      A = dy, B = w read along OUT
//   dw       dw (OUT, IN) += dy^T (OUT, N)  x x (N, IN)        A = dy, B = x read along N
//
// What differs from ref/linear.c: each output is a float sum over k ascending (gemm.cuh), not a double
// one, and the bias is added to the float sum; dw's reduction over N may be split into chunks
// (partials in cu_scratch(), added in chunk order in double). db is dw's GEMM column of ones beside x,
// summed the same way.
#include <limits.h>

#include "gemm.cuh"

namespace MSD_CUDA_NS {

static void check_dims(int N, int IN, int OUT) {
    CHECK(N >= 0 && IN >= 0 && OUT >= 0, "linear: negative dimension");
    CHECK((long)N * IN <= INT_MAX / 2 && (long)N * OUT <= INT_MAX / 2 && (long)IN * OUT <= INT_MAX / 2,
          "linear: (%d, %d) -> %d is too large for 32-bit indices", N, IN, OUT);
}

// y[n, o] = b[o] + sum_i w[o, i] x[n, i]
void cu_linear_forward(float *y, const float *x, const float *w, const float *b, int N, int IN,
                       int OUT) {
    // y: (N, OUT)  x: (N, IN)  w: (OUT, IN)  b: (OUT) or NULL
    check_dims(N, IN, OUT);
    const out_rows out = {y, b, OUT, 0, false};
    gemm("linear_forward", pick_tiles(N, OUT, true), mat_k(x, IN, N), mat_k(w, IN, OUT), out, N, OUT, IN,
         IN, 1);
}

// Forward was y[n, o] = b[o] + sum_i w[o, i] x[n, i], so
//   dx[n, i] = sum_o dy[n, o] w[o, i];  dw[o, i] += sum_n dy[n, o] x[n, i];  db[o] += sum_n dy[n, o]
void cu_linear_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                        const float *w, int N, int IN, int OUT) {
    // dx: (N, IN) or NULL  dw: (OUT, IN)  db: (OUT) or NULL  dy: (N, OUT)
    check_dims(N, IN, OUT);
    if (dx) {
        const out_rows out = {dx, NULL, IN, 0, false};
        gemm("linear_backward_dx", pick_tiles(N, IN, true), mat_k(dy, OUT, N), mat_mn(w, IN, IN), out, N,
             IN, OUT, OUT, 1);
    }
    // db rides on dw's GEMM as a column of ones beside x: [dw | db] += dy^T [x | 1]
    const size_t part_n = split_scratch_floats(OUT, IN + (db ? 1 : 0), N);
    gemm_accumulate_split("linear_backward_dw", dw, db, part_n ? cu_scratch(part_n) : NULL, mat_mn(dy, OUT, OUT),
                          mat_mn(x, IN, IN, db != NULL), OUT, IN, N);
}

} // namespace MSD_CUDA_NS
