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
// summed the same way, where the tiles have a spare column for it; else in double over eight
// interleaved subsequences of the samples, which are then added in order.
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

// db where it cannot ride on dw's GEMM (gemm.cuh's bias_column_free). Forward was y[n, o] = b[o] +
// sum_i w[o, i] x[n, i], so db[o] += sum_n dy[n, o]. Block: 32 outputs
// o (lane l = threadIdx % 32) times 8 interleaved sample sets r = threadIdx / 32, n = r, r + 8, ...;
// the 8 partial sums meet in shared memory and are added in order of r.  dy: (N, OUT)
__global__ static void linear_bias_grad_kernel(float *db, const float *dy, int N, int OUT) {
    __shared__ double part[8][32];
    const int l = threadIdx.x % 32, r = threadIdx.x / 32, o = blockIdx.x * 32 + l;
    double acc = 0.0;
    if (o < OUT)
        for (int n = r; n < N; n += 8) acc += dy[(size_t)n * OUT + o];
    part[r][l] = acc;
    __syncthreads();
    if (r == 0 && o < OUT) {
        double sum = 0.0;
        for (int q = 0; q < 8; q++) sum += part[q][l];
        db[o] += (float)sum;
    }
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
    // db rides on dw's GEMM as a column of ones beside x, [dw | db] += dy^T [x | 1], where it is free
    const bool db_column = db && bias_column_free(OUT, IN);
    const size_t part_n = split_scratch_floats(OUT, IN + (db_column ? 1 : 0), N);
    gemm_accumulate_split("linear_backward_dw", dw, db_column ? db : NULL, part_n ? cu_scratch(part_n) : NULL,
                          mat_mn(dy, OUT, OUT), mat_mn(x, IN, IN, true), OUT, IN, N);
    if (db && !db_column && OUT > 0)
        launch("linear_bias_grad", linear_bias_grad_kernel, (unsigned)cdiv(OUT, 32), GEMM_THREADS, db, dy, N,
               OUT);
}

} // namespace MSD_CUDA_NS
