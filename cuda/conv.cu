// cuda/conv.cu: 2D convolution (stride 1, "same" zero padding P = K/2, K = 1 or 3, NCHW) as implicit
// GEMMs on gemm.cuh's tiled kernel (the bias gradient is one more column of dw's). Computes the
// functions of ref/conv.c.
// Gradients: parameters accumulate (dw +=, db +=), activations are written (dx =).
//
// With the batch folded into the columns (column j = n*HW + p, p the pixel, KK = K*K) every pass is
// one GEMM, as in fast/conv.c:
//   forward  y (OC, N*HW)    = w (OC, C*KK)           x im2col(x)   (C*KK, N*HW)
//   dx       dx (C, N*HW)    = flip(w)^T (C, OC*KK)   x im2col(dy)  (OC*KK, N*HW)
//   dw       dw (OC, C*KK)  += dy (OC, N*HW)          x im2col(x)^T (N*HW, C*KK)
// where im2col(x)[(c, t), (n, p)] = x[n, c, p + off(t)], zero outside the image (off(t) the flat
// offset of tap t = i*K + j: (i - P)*W + (j - P)), and flip(w)^T[c, (o, t)] = w[o, c, KK-1-t]. Neither
// im2col nor flip(w)^T exists in memory: the loaders below compute the index of every element as they
// load a tile. db rides on the dw GEMM as one more column of im2col(x)^T, all ones, where the tiles
// have a spare column for it (gemm.cuh's bias_column_free; else two small kernels sum it):
//   [dw | db] (OC, C*KK + 1) += dy (OC, N*HW) x [im2col(x)^T | 1] (N*HW, C*KK + 1).
//
// What differs from ref/conv.c:
//   - Order and precision of the sums: each output is a float sum over k ascending (gemm.cuh), not a
//     double one; dw's reduction over N*HW may be split into chunks (partials in cu_scratch(), added
//     in chunk order in double), and the bias is added to the float sum.
//   - A tap that falls in the padding contributes 0 * (the other factor) where ref/ skips it; the two
//     differ only when that factor is Inf or NaN (w for y and dx, dy for dw): here the term is NaN,
//     in ref/ it is absent. NaN/Inf in x (for y, dw) or dy (for dx) propagate as in ref/.
//   - db is dw's GEMM column of ones: a float sum within each reduction chunk, chunks added in double;
//     or, where that column would cost a tile, summed in double per (channel, group of samples), the
//     groups then added in order.
#include <limits.h>

#include "gemm.cuh"

namespace MSD_CUDA_NS {

// ---------------------------------------------------------------------------------------------------
// Loaders for the activations (gemm.cuh describes the interface).

// B = im2col(x): element (mn = j = n*HW + p, k = c*KK + t) is x[n, c, p + off(t)], zero where the tap
// leaves the image.  x: (N, C, H, W), cols = N*HW. Contiguous along j, so MN_FAST: each thread keeps
// one column j for the whole reduction, whose image position (and which taps stay inside) it works
// out once in begin().
template <int KS> struct im2col {
    static const tile_order order = MN_FAST;
    static const int KK = KS * KS, P = KS / 2;
    const float *x;
    int H, W, HW, CHW, cols;
    int base;      // offset of x[n, 0, p] for this thread's column
    unsigned taps; // bit t: tap t of this column reads inside the image (0 for a column >= cols)
    int krow;      // this thread's first k within a step

    im2col(const float *x_, int N, int C, int H_, int W_)
        : x(x_), H(H_), W(W_), HW(H_ * W_), CHW(C * H_ * W_), cols(N * H_ * W_), base(0), taps(0),
          krow(0) {}

    template <int BMN> __device__ void begin(int mn0, int, int tid) {
        const int j = mn0 + tid % BMN;
        krow = tid / BMN;
        taps = 0;
        base = 0;
        if (j < cols) {
            const int n = j / HW, p = j - n * HW, h = p / W, v = p - h * W;
            base = n * CHW + p;
            for (int t = 0; t < KK; t++) {
                const int hh = h + t / KS - P, vv = v + t % KS - P;
                if (hh >= 0 && hh < H && vv >= 0 && vv < W) taps |= 1u << t;
            }
        }
    }
    template <int BMN> __device__ void load(float (&r)[tile_share<BMN>::n], int k0, int kend) const {
        CU_UNROLL
        for (int i = 0; i < tile_share<BMN>::n; i++) {
            const int k = k0 + krow + i * (GEMM_THREADS / BMN), c = k / KK, t = k - c * KK;
            const bool in = k < kend && (taps >> t & 1u);
            r[i] = in ? x[base + c * HW + (t / KS - P) * W + (t % KS - P)] : 0.0f;
        }
    }
};

// A = flip(w)^T for dx: element (mn = c, k = o*KK + t) is w[o, c, KK-1-t], zero for c >= C or k >= kend.
// w: (OC, C, KS, KS). K_FAST, as mat_k: each thread one k offset within a step, rows 32 apart; the
// weights are small and stay in cache, so the scattered reads cost little.
template <int KS> struct flip_t {
    static const tile_order order = K_FAST;
    static const int KK = KS * KS;
    const float *w;
    int C;
    int koff, mnb; // this thread's k offset and first row (channel c)

    flip_t(const float *w_, int C_) : w(w_), C(C_), koff(0), mnb(0) {}
    template <int BMN> __device__ void begin(int mn0, int, int tid) {
        koff = tid % GEMM_BK;
        mnb = mn0 + tid / GEMM_BK;
    }
    template <int BMN> __device__ void load(float (&r)[tile_share<BMN>::n], int k0, int kend) const {
        const int k = k0 + koff, o = k / KK, t = k - o * KK;
        const float *wo = w + (size_t)o * C * KK + (KK - 1 - t); // w[o, 0, KK-1-t]
        CU_UNROLL
        for (int i = 0; i < tile_share<BMN>::n; i++) {
            const int c = mnb + i * (GEMM_THREADS / GEMM_BK);
            r[i] = k < kend && c < C ? wo[c * KK] : 0.0f;
        }
    }
};

// B = im2col(x)^T for dw: element (mn = j = c*KK + t, k = n*HW + p) is x[n, c, p + off(t)], zero
// where the tap leaves the image.  x: (N, C, H, W), cols = C*KK. Contiguous along k, so K_FAST: each
// thread keeps one k offset within a step and its columns j for the whole reduction; the pixel
// (n, h, v) of its k steps forward by BK per load, without divisions. With ONES, one more column
// j = C*KK holds 1 at every k < kend (so that the GEMM's column C*KK is the row sums of A: db; a GEMM
// with N = C*KK computes it in a tile's spare column, if any, and stores nothing). With KS = 1
// (cols = C) and no ONES this is also A = dy viewed as (OC, N*HW).
template <int KS, bool ONES> struct im2col_t {
    static const tile_order order = K_FAST;
    static const int KK = KS * KS, P = KS / 2, E = 4; // E: the most elements a thread holds per step
    static const unsigned NO_TAP = 15;                 // tap code of a column >= cols: never inside
    static const unsigned ONE_TAP = 14;                // tap code of the column of ones: inside for k < kend
    const float *x;
    int H, W, HW, CHW, cols; // cols: the columns of x (C*KK), without the column of ones
    int koff, n, h, v; // this thread's k offset within a step, and the pixel of its next k
    int j0;            // KS = 1: the thread's first column (channel); the others are 32 channels on
    unsigned tcode;    // KS = 3: per column i, bits [4i, 4i + 4): its tap t, or NO_TAP

    // KS = 3: per column i of the thread, c*HW + off(t), in shared memory: one 16-byte row per
    // thread, written and read by that thread alone (so no barrier), because beside a 128 x 128
    // tile's 64 accumulators there are no registers left for them. One 128-bit read per step. (One
    // table per instantiation: a GEMM may have only one im2col_t<3, ONES> operand.)
    __device__ static int (*col_offsets())[E] {
        alignas(16) __shared__ int offs[GEMM_THREADS][E];
        return offs;
    }

    im2col_t(const float *x_, int C, int H_, int W_)
        : x(x_), H(H_), W(W_), HW(H_ * W_), CHW(C * H_ * W_), cols(C * KS * KS), koff(0), n(0), h(0), v(0),
          j0(0), tcode(0) {}

    template <int BMN> __device__ void begin(int mn0, int kbeg, int tid) {
        koff = tid % GEMM_BK;
        const int k = kbeg + koff, p = k % HW;
        n = k / HW, h = p / W, v = KS == 1 ? p : p % W; // with KS = 1, v is the pixel and h unused
        j0 = mn0 + tid / GEMM_BK;
        tcode = 0;
        if (KS != 1) {
            CU_UNROLL
            for (int i = 0; i < tile_share<BMN>::n; i++) {
                const int j = j0 + i * (GEMM_THREADS / GEMM_BK), c = j / KK, t = j - c * KK;
                col_offsets()[tid][i] = j < cols ? c * HW + (t / KS - P) * W + (t % KS - P) : 0;
                tcode |= (j < cols ? (unsigned)t : ONES && j == cols ? ONE_TAP : NO_TAP) << (4 * i);
            }
        }
    }
    // Bit t: tap t of pixel (h, v) reads inside the image (bits 9 and up clear; KS = 1: bit 0).
    __device__ unsigned inside_taps() const {
        if (KS == 1) return 1u;
        const unsigned rows = (h > 0 ? 0x007u : 0u) | 0x038u | (h + 1 < H ? 0x1C0u : 0u);
        const unsigned cols3 = (v > 0 ? 0x049u : 0u) | 0x092u | (v + 1 < W ? 0x124u : 0u);
        return rows & cols3;
    }
    template <int BMN> __device__ void load(float (&r)[tile_share<BMN>::n], int k0, int kend) {
        const unsigned taps = k0 + koff < kend ? inside_taps() | 1u << ONE_TAP : 0u;
        const int at = n * CHW + (KS == 1 ? v : h * W + v);
        const int *offs = col_offsets()[threadIdx.x];
        CU_UNROLL
        for (int i = 0; i < tile_share<BMN>::n; i++) {
            const int j = j0 + i * (GEMM_THREADS / GEMM_BK); // KS = 1: channel j, offset j*HW
            if (KS == 1) {
                r[i] = !(taps & 1u) ? 0.0f : j < cols ? x[at + j * HW] : ONES && j == cols ? 1.0f : 0.0f;
            } else {
                const unsigned code = tcode >> (4 * i) & 15u;
                r[i] = !(taps >> code & 1u) ? 0.0f : ONES && code == ONE_TAP ? 1.0f : x[at + offs[i]];
            }
        }
        if (KS == 1) { // the pixel BK further on
            for (v += GEMM_BK; v >= HW; n++) v -= HW;
        } else {
            for (v += GEMM_BK; v >= W;) {
                v -= W;
                if (++h == H) h = 0, n++;
            }
        }
    }
};

// C[m, j] -> y[n, m, p] (j = n*HW + p), plus bias[m] when bias is not NULL.  y: (N, M, H, W)
struct out_conv {
    float *y;
    const float *bias; // (M) or NULL
    int M, HW;

    __device__ int col(int j) const {
        const int n = j / HW;
        return n * M * HW + (j - n * HW);
    }
    __device__ void put(int m, int c, int, float v) const { y[c + m * HW] = bias ? v + bias[m] : v; }
};

// ---------------------------------------------------------------------------------------------------
// The bias gradient where it cannot ride on dw's GEMM (gemm.cuh's bias_column_free)

// db, in two passes. First part[o * S + s] = sum over samples [s*G, min(N, (s+1)*G)) and pixels of
// dy[n, o, p], in double, one block per (o, s) = (blockIdx.x, blockIdx.y); then db[o] += the S parts
// in order. G is chosen so that a block sums a few thousand elements.  dy: (N, OC, HW)
__global__ static void bias_grad_part_kernel(double *part, const float *dy, int N, int OC, int HW, int G) {
    const int o = blockIdx.x, s = blockIdx.y, n0 = s * G, count = (N - n0 < G ? N - n0 : G) * HW;
    double acc = 0.0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) {
        const int n = n0 + i / HW, p = i % HW;
        acc += dy[((size_t)n * OC + o) * HW + p];
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) part[(size_t)o * gridDim.y + s] = acc;
}
__global__ static void bias_grad_finish_kernel(float *db, const double *part, int OC, int S) {
    CU_FOR(o, (size_t)OC) {
        double acc = 0.0;
        for (int s = 0; s < S; s++) acc += part[o * S + s];
        db[o] += (float)acc;
    }
}
static const int BIAS_GRAD_ELEMS = 4096; // per block of bias_grad_part_kernel, about
static int bias_grad_group(int N, int HW) {
    const int g = BIAS_GRAD_ELEMS / HW;
    return g < 1 ? 1 : g > N ? N : g;
}

// ---------------------------------------------------------------------------------------------------
// The ops

static void check_dims(int N, int C, int H, int W, int OC, int K) {
    CHECK(K == 1 || K == 3, "conv2d: kernel %d (1 or 3)", K);
    CHECK(N >= 0 && C >= 0 && H >= 0 && W >= 0 && OC >= 0, "conv2d: negative dimension");
    CHECK((long)N * (C > OC ? C : OC) * H * W <= INT_MAX / 2 && (long)OC * C * K * K <= INT_MAX / 2,
          "conv2d: (%d, %d, %d, %d) -> %d is too large for 32-bit indices", N, C, H, W, OC);
}

template <int KS>
static void conv_forward(float *y, const float *x, const float *w, const float *b, int N, int C, int H,
                         int W, int OC) {
    // y: (N, OC, H, W)  x: (N, C, H, W)  w: (OC, C, KS, KS)  b: (OC) or NULL
    const int HW = H * W, KK = KS * KS, cols = N * HW;
    const out_conv out = {y, b, OC, HW};
    gemm("conv2d_forward", pick_tiles(OC, cols, true), mat_k(w, C * KK, OC), im2col<KS>(x, N, C, H, W),
         out, OC, cols, C * KK, C * KK, 1);
}

void cu_conv2d_forward(float *y, const float *x, const float *w, const float *b, int N, int C, int H,
                       int W, int OC, int K) {
    check_dims(N, C, H, W, OC, K);
    if (K == 3) conv_forward<3>(y, x, w, b, N, C, H, W, OC);
    else conv_forward<1>(y, x, w, b, N, C, H, W, OC);
}

// Forward was y[n, o, p] = b[o] + sum_{c, t} w[o, c, t] x[n, c, p + off(t)], so
//   dx[n, c, p] = sum_{o, t} w[o, c, t] dy[n, o, p - off(t)] = sum_{o, t} w[o, c, KK-1-t] dy[n, o, p + off(t)]
//   dw[o, c, t] += sum_{n, p} dy[n, o, p] x[n, c, p + off(t)];   db[o] += sum_{n, p} dy[n, o, p]
// (off(KK-1-t) = -off(t): the taps are symmetric about the centre.) dw's split partials, then db's
// (where db is not dw's column of ones), share cu_scratch() one after the other in stream order.
template <int KS>
static void conv_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                          const float *w, int N, int C, int H, int W, int OC) {
    // dx: (N, C, H, W) or NULL  dw: (OC, C, KS, KS)  db: (OC) or NULL  dy: (N, OC, H, W)
    const int HW = H * W, KK = KS * KS, cols = N * HW;
    if (dx) {
        const out_conv out = {dx, NULL, C, HW};
        gemm("conv2d_backward_dx", pick_tiles(C, cols, true), flip_t<KS>(w, C), im2col<KS>(dy, N, OC, H, W), out,
             C, cols, OC * KK, OC * KK, 1);
    }
    const bool db_column = db && bias_column_free(OC, C * KK);
    const int G = bias_grad_group(N, HW), S = (int)cdiv(N, G); // db's sample groups, without the column
    const size_t part_n = split_scratch_floats(OC, C * KK + (db_column ? 1 : 0), cols),
                 db_n = db && !db_column ? 2 * (size_t)OC * S : 0; // S doubles per channel
    const size_t need = part_n > db_n ? part_n : db_n;
    float *scratch = need ? cu_scratch(need) : NULL;
    gemm_accumulate_split("conv2d_backward_dw", dw, db_column ? db : NULL, scratch, im2col_t<1, false>(dy, OC, H, W),
                          im2col_t<KS, true>(x, C, H, W), OC, C * KK, cols);
    if (db && !db_column) {
        double *part = (double *)(void *)scratch; // cudaMalloc memory: aligned for doubles
        launch("conv2d_bias_grad", bias_grad_part_kernel, dim3((unsigned)OC, (unsigned)S), CU_THREADS, part,
               dy, N, OC, HW, G);
        launch("conv2d_bias_grad_finish", bias_grad_finish_kernel, grid_for((size_t)OC), CU_THREADS, db,
               (const double *)part, OC, S);
    }
}

void cu_conv2d_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                        const float *w, int N, int C, int H, int W, int OC, int K) {
    check_dims(N, C, H, W, OC, K);
    if ((long)N * H * W == 0 || OC == 0) { // no terms: dw and db keep their values, dx is zero
        if (dx) cu_fill(dx, 0.0f, (size_t)N * C * H * W);
        return;
    }
    if (K == 3) conv_backward<3>(dx, dw, db, dy, x, w, N, C, H, W, OC);
    else conv_backward<1>(dx, dw, db, dy, x, w, N, C, H, W, OC);
}

} // namespace MSD_CUDA_NS
