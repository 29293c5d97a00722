// cuda/attention.cu: the attention core, one head, on EDM's interleaved qkv (the formulas are in
// ref/attention.c). Gradients: activations are written (dqkv =); this op has no parameters.
//
// Per sample, with s = 1/sqrt(C) and q, k, v the (C, HW) planes of qkv (row c of q at qkv + 3c HW,
// of k at + HW, of v at + 2 HW; row stride 3 HW):
//   forward   w (HW, HW) = s q^T k  (the logits, written into w);  w = softmax of each row, in place;
//             a (C, HW) = v w^T
//   backward  dv = da w;  dW (HW, HW) = da^T v;  dl = w * (dW - rowsum(w * dW))  (in place);
//             dq = s k dl^T;  dk = s q dl
// Each product is one launch of bgemm_kernel, a batched tiled matrix product: blocks of 256 threads,
// grid (columns / 64, rows / 64, samples) with the samples in launches of at most 65535 (grid.z),
// each block a 64 x 64 tile of one sample's output, each thread 4 x 4 outputs, 32-deep slices of
// both operands staged in shared memory. Each row op (softmax_rows_kernel,
// softmax_backward_rows_kernel) runs one block (32..256 threads) per row of w. The backward keeps dW
// and then dl in scratch: N HW HW floats (cu_scratch).
//
// What differs from ref/attention.c:
// - The five products sum in float: each output is one chain of fused multiply-adds (fmaf: one
//   rounding per term, in the order of the reduction index), where ref sums in double and rounds
//   once. The emulator runs the same fmaf chain, so its products equal the device's bit for bit. The
//   scale s (in double, as ref's) multiplies the finished float sum, rounded once to float. So an
//   output passes through L roundings: logits L = C + 1, a L = HW, dv L = HW, dW L = C,
//   dq, dk L = HW + 1 (plus dl's rounding, below).
// - The softmax and its backward are ref's, in double, from the float logits (respectively from the
//   float dW): the maximum skips NaN as ref's `if (l > max)` does (fmaxf), the sums run in
//   block_sum's tree order instead of ref's chain. dl is rounded to float (ref keeps it in double)
//   before the dq and dk products.
// - exp is the device's (CUDA: within 1 double ulp) or the host's (emulator), so w can differ from
//   ref's in the last float bit where exp's result sits on a float rounding boundary.
#include <math.h>

#include "cuda.cuh"

namespace MSD_CUDA_NS {

// ---------------------------------------------------------------------------------------------------
// The batched product: out_b[m, n] = alpha sum_k A_b(m, k) B_b(k, n) for b < gridDim.z, m < M, n < N.
// A and B are views with one contiguous index: A(m, k) = A[m lda + k] when A_KC ("k contiguous"),
// else A[k lda + m]; B(k, n) = B[n ldb + k] when B_KC, else B[k ldb + n]. out_b[m, n] = out[m ldo + n].
// The batch strides (a_batch, ...) step from one sample to the next.

#define AT_BM 64   // rows of the output tile
#define AT_BN 64   // columns of the output tile
#define AT_BK 32   // depth of a shared-memory slice
#define AT_PAD 4   // row padding of the slices (keeps rows 16-byte aligned, spreads banks)

template <bool A_KC, bool B_KC>
__global__ static void __launch_bounds__(256)
bgemm_kernel(float *out, size_t o_batch, int ldo, const float *A, size_t a_batch, int lda,
             const float *B, size_t b_batch, int ldb, int M, int N, int K, double alpha) {
    // As[k][m] = A(m0 + m, k0 + k), Bs[k][n] = B(k0 + k, n0 + n), zero outside the matrices
    alignas(16) __shared__ float As[AT_BK][AT_BM + AT_PAD];
    alignas(16) __shared__ float Bs[AT_BK][AT_BN + AT_PAD];
    const int t = threadIdx.x, tx = t % 16, ty = t / 16; // thread (tx, ty): rows ty*4.., columns tx*4..
    const int m0 = blockIdx.y * AT_BM, n0 = blockIdx.x * AT_BN;
    A += blockIdx.z * a_batch;
    B += blockIdx.z * b_batch;
    out += blockIdx.z * o_batch;

    float acc[4][4];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;

    for (int k0 = 0; k0 < K; k0 += AT_BK) {
        // Stage the slices; consecutive threads read consecutive addresses of the contiguous index.
        // A zero pads k >= K on both sides, so padded terms are 0 * 0 and change no sum.
        for (int e = t; e < AT_BK * AT_BM; e += 256) {
            const int kk = A_KC ? e % AT_BK : e / AT_BM, mm = A_KC ? e / AT_BK : e % AT_BM;
            const int m = m0 + mm, k = k0 + kk;
            As[kk][mm] = m < M && k < K ? A[A_KC ? (size_t)m * lda + k : (size_t)k * lda + m] : 0.0f;
        }
        for (int e = t; e < AT_BK * AT_BN; e += 256) {
            const int kk = B_KC ? e % AT_BK : e / AT_BN, nn = B_KC ? e / AT_BK : e % AT_BN;
            const int n = n0 + nn, k = k0 + kk;
            Bs[kk][nn] = n < N && k < K ? B[B_KC ? (size_t)n * ldb + k : (size_t)k * ldb + n] : 0.0f;
        }
        __syncthreads();
        for (int kk = 0; kk < AT_BK; kk++) {
            float a[4], b[4];
            for (int i = 0; i < 4; i++) a[i] = As[kk][ty * 4 + i];
            for (int j = 0; j < 4; j++) b[j] = Bs[kk][tx * 4 + j];
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads(); // the slices are overwritten next round
    }
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) {
            const int m = m0 + ty * 4 + i, n = n0 + tx * 4 + j;
            if (m < M && n < N) out[(size_t)m * ldo + n] = (float)((double)acc[i][j] * alpha);
        }
}

// Launch bgemm_kernel over `batch` samples, in grid slices of at most 65535 samples (grid.z).
template <bool A_KC, bool B_KC>
static void bgemm(const char *name, float *out, size_t o_batch, int ldo, const float *A, size_t a_batch,
                  int lda, const float *B, size_t b_batch, int ldb, int M, int N, int K, double alpha,
                  int batch) {
    for (int b0 = 0; b0 < batch; b0 += 65535) {
        const unsigned nb = (unsigned)(batch - b0 < 65535 ? batch - b0 : 65535);
        const dim3 grid((unsigned)((N + AT_BN - 1) / AT_BN), (unsigned)((M + AT_BM - 1) / AT_BM), nb);
        launch(name, bgemm_kernel<A_KC, B_KC>, grid, 256, out + b0 * o_batch, o_batch, ldo,
               A + b0 * a_batch, a_batch, lda, B + b0 * b_batch, b_batch, ldb, M, N, K, alpha);
    }
}

// ---------------------------------------------------------------------------------------------------
// Row operations on w: one block per row, threads a power of two (32..256) striding over the row.

// w[i, :] = softmax(l[i, :]) in place: the row maximum (NaN skipped, -inf for an all-NaN row, as ref),
// then exp(l - max) / sum in double, rounded once.
__global__ static void softmax_rows_kernel(float *w, int HW) {
    // w: (rows, HW): the logits in, the weights out; row blockIdx.x
    float *row = w + (size_t)blockIdx.x * HW;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < HW; j += blockDim.x) mx = fmaxf(mx, row[j]);
    const double lmax = block_max(mx);
    double sum = 0.0;
    for (int j = threadIdx.x; j < HW; j += blockDim.x) sum += exp(row[j] - lmax);
    sum = block_sum(sum);
    for (int j = threadIdx.x; j < HW; j += blockDim.x) row[j] = (float)(exp(row[j] - lmax) / sum);
}

// Forward was w[i, j] = exp(l[i, j] - max) / sum_j' exp(l[i, j'] - max), so with dW the gradient at w,
//   dl[i, j] = w[i, j] (dW[i, j] - r[i]),  r[i] = sum_j w[i, j] dW[i, j].
__global__ static void softmax_backward_rows_kernel(float *dl, const float *w, int HW) {
    // dl: (rows, HW): dW in, dl out; w: (rows, HW) the saved weights; row blockIdx.x
    float *d = dl + (size_t)blockIdx.x * HW;
    const float *wr = w + (size_t)blockIdx.x * HW;
    double r = 0.0;
    for (int j = threadIdx.x; j < HW; j += blockDim.x) r += (double)wr[j] * d[j];
    r = block_sum(r);
    for (int j = threadIdx.x; j < HW; j += blockDim.x) d[j] = (float)(wr[j] * (d[j] - r));
}


// ---------------------------------------------------------------------------------------------------
// The op

void cu_attention_forward(float *a, float *w, const float *qkv, int N, int C, int HW) {
    // a: (N, C, HW)  w: (N, HW, HW)  qkv: (N, 3C, HW)
    if (N <= 0 || C <= 0 || HW <= 0) return;
    const double s = 1.0 / sqrt((double)C);
    const size_t na = (size_t)C * HW, nq = 3 * na, nw = (size_t)HW * HW;
    const int ld = 3 * HW; // row stride of the q, k and v planes
    const float *q = qkv, *k = qkv + HW, *v = qkv + 2 * HW;
    // w[i, j] = s sum_c q[c, i] k[c, j]: A(i, c) = q[c ld + i], B(c, j) = k[c ld + j]
    bgemm<false, false>("attention_logits", w, nw, HW, q, nq, ld, k, nq, ld, HW, HW, C, s, N);
    CHECK((size_t)N * HW <= 0x7fffffff, "attention: %d x %d rows exceed one grid", N, HW);
    launch("attention_softmax", softmax_rows_kernel, (unsigned)(N * HW), reduce_threads((size_t)HW), w, HW);
    // a[c, i] = sum_j v[c, j] w[i, j]: A(c, j) = v[c ld + j], B(j, i) = w[i HW + j]
    bgemm<true, true>("attention_av", a, na, HW, v, nq, ld, w, nw, HW, C, HW, HW, 1.0, N);
}

// Forward was a = v w^T with w = softmax(s q^T k) (the gradient formulas: ref/attention.c).
void cu_attention_backward(float *dqkv, const float *da, const float *w, const float *qkv, int N,
                           int C, int HW) {
    // dqkv: (N, 3C, HW)  da: (N, C, HW)  w: (N, HW, HW)  qkv: (N, 3C, HW)
    if (N <= 0 || C <= 0 || HW <= 0) return;
    const double s = 1.0 / sqrt((double)C);
    const size_t na = (size_t)C * HW, nq = 3 * na, nw = (size_t)HW * HW;
    const int ld = 3 * HW;
    const float *q = qkv, *k = qkv + HW, *v = qkv + 2 * HW;
    float *dq = dqkv, *dk = dqkv + HW, *dv = dqkv + 2 * HW;
    float *dl = cu_scratch((size_t)N * nw); // (N, HW, HW): dW, then dl in place
    // dv[c, j] = sum_i da[c, i] w[i, j]: A(c, i) = da[c HW + i], B(i, j) = w[i HW + j]
    bgemm<true, false>("attention_dv", dv, nq, ld, da, na, HW, w, nw, HW, C, HW, HW, 1.0, N);
    // dW[i, j] = sum_c da[c, i] v[c, j]: A(i, c) = da[c HW + i], B(c, j) = v[c ld + j]
    bgemm<false, false>("attention_dw", dl, nw, HW, da, na, HW, v, nq, ld, HW, HW, C, 1.0, N);
    // dl = w * (dW - rowsum(w * dW))
    CHECK((size_t)N * HW <= 0x7fffffff, "attention: %d x %d rows exceed one grid", N, HW);
    launch("attention_softmax_backward", softmax_backward_rows_kernel, (unsigned)(N * HW), reduce_threads((size_t)HW),
           dl, w, HW);
    // dq[c, i] = s sum_j k[c, j] dl[i, j]: A(c, j) = k[c ld + j], B(j, i) = dl[i HW + j]
    bgemm<true, true>("attention_dq", dq, nq, ld, k, nq, ld, dl, nw, HW, C, HW, HW, s, N);
    // dk[c, j] = s sum_i q[c, i] dl[i, j]: A(c, i) = q[c ld + i], B(i, j) = dl[i HW + j]
    bgemm<true, false>("attention_dk", dk, nq, ld, q, nq, ld, dl, nw, HW, C, HW, HW, s, N);
}

} // namespace MSD_CUDA_NS
