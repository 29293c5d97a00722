// cuda/gemm.cuh: the one tiled fp32 GEMM kernel that conv.cu and linear.cu build on, its plain-matrix
// operands and outputs, the choice of tile size and reduction split, and the fixed-order sum of
// split partials.
//
//   C[m, n] = sum_{k in [0, K)} A[m, k] B[k, n],    m < M, n < N
//
// A and B are never materialised: an operand is a small struct (a "loader") that knows where element
// (row or column, k) lives and loads its share of a tile, with zeros outside the matrix; conv.cu's
// loaders compute the im2col index on the fly. An output struct knows where C[m, n] goes.
//
// The kernel (gemm_kernel): 256 threads compute a BM x BN block of C (128 x 128, 128 x 64, 64 x 128,
// 64 x 64 or 32 x 128), each a TM x TN = (BM/16) x (BN/16) register tile; the reduction walks K in
// steps of BK = 8 through two shared-memory buffers (the next step is loaded from global memory into
// registers while the current one is multiplied, then stored into the other buffer: one barrier per
// step). Blocks along z take
// consecutive chunks of K (split-K); each chunk's sums go to their own slice of the output (partials
// in cu_scratch()), which sum_partials then adds up in a fixed order, so results never depend on
// scheduling. No atomics anywhere.
//
// Order of sums, versus ref/ (which accumulates each output in double, k ascending): each thread sums
// its outputs in float, k ascending within its chunk, one fused multiply-add per term on the device
// (the emulator rounds the product and the sum separately); chunk sums are added in double.
#ifndef MSD_CUDA_GEMM_CUH
#define MSD_CUDA_GEMM_CUH

#include "cuda.cuh"

// Loops with compile-time trip counts that must be unrolled so that the register tiles they index
// stay in registers (nvcc's pragma; g++ unrolls at will and would warn about the unknown pragma).
#ifdef MSD_CUDA_EMU
#define CU_UNROLL
#else
#define CU_UNROLL _Pragma("unroll")
#endif

namespace MSD_CUDA_NS {

static const int GEMM_THREADS = 256; // 16 x 16 threads
static const int GEMM_BK = 8;        // reduction step per shared-memory buffer
static const int GEMM_PAD = 4;       // floats of padding per shared row: conflict-free stores, and
                                     // rows stay 16-byte aligned so fragment reads are 128-bit
static const int GEMM_SMS = 132;     // streaming multiprocessors of an H100 SXM (for grid sizing)

// The elements of a tile that one thread loads (and keeps in registers between the global load and
// the shared store): a BMN x BK tile over 256 threads.
template <int BMN> struct tile_share {
    static const int n = BMN * GEMM_BK / GEMM_THREADS; // 1, 2 or 4
};

// How a loader spreads a tile over the threads, chosen so that a warp's global loads are coalesced:
//   K_FAST  (the operand is contiguous along k):  thread t holds k = t % BK,  mn = t / BK + 32 i
//   MN_FAST (contiguous along the rows/columns): thread t holds mn = t % BMN, k = t / BMN + (256/BMN) i
// Either way the tile lands in shared memory as S[k][mn]; with GEMM_PAD = 4 both patterns store
// without bank conflicts (K_FAST: a warp writes banks 4k + mn, k < 8, mn < 4).
enum tile_order { K_FAST, MN_FAST };

template <tile_order ORDER, int BMN>
__device__ static inline void stash(float (*s)[BMN + GEMM_PAD], const float (&r)[tile_share<BMN>::n],
                                    int tid) {
    CU_UNROLL
    for (int i = 0; i < tile_share<BMN>::n; i++) {
        if (ORDER == K_FAST)
            s[tid % GEMM_BK][tid / GEMM_BK + i * (GEMM_THREADS / GEMM_BK)] = r[i];
        else
            s[tid / BMN + i * (GEMM_THREADS / BMN)][tid % BMN] = r[i];
    }
}

// ---------------------------------------------------------------------------------------------------
// Plain-matrix loaders. Every loader has the same three members:
//   order                          its tile_order;
//   begin<BMN>(mn0, kbeg, tid)     set up this thread's part of the tiles at rows/columns [mn0, +BMN);
//   load<BMN>(r, k0, kend)         this thread's elements of the tile at k0 (zero where mn or k is
//                                  out of range, k >= kend); called for k0 = kbeg, kbeg + BK, ... in turn.

// Element (mn, k) at p[mn * ld + k], mn < rows: contiguous along k.
struct mat_k {
    static const tile_order order = K_FAST;
    const float *p;
    int ld, rows;
    int koff, mnb; // this thread's k offset and first row

    mat_k(const float *p_, int ld_, int rows_) : p(p_), ld(ld_), rows(rows_), koff(0), mnb(0) {}
    template <int BMN> __device__ void begin(int mn0, int, int tid) {
        koff = tid % GEMM_BK;
        mnb = mn0 + tid / GEMM_BK;
    }
    template <int BMN> __device__ void load(float (&r)[tile_share<BMN>::n], int k0, int kend) const {
        const int k = k0 + koff;
        CU_UNROLL
        for (int i = 0; i < tile_share<BMN>::n; i++) {
            const int mn = mnb + i * (GEMM_THREADS / GEMM_BK);
            r[i] = k < kend && mn < rows ? p[mn * ld + k] : 0.0f;
        }
    }
};

// Element (mn, k) at p[k * ld + mn], mn < cols: contiguous along mn. With `ones`, one more column
// mn = cols holds 1 at every k < kend (a GEMM's column there is then the row sums of the other
// operand: a bias gradient).
struct mat_mn {
    static const tile_order order = MN_FAST;
    const float *p;
    int ld, cols;
    bool ones;
    int mn, krow; // this thread's row/column and first k offset

    mat_mn(const float *p_, int ld_, int cols_, bool ones_ = false)
        : p(p_), ld(ld_), cols(cols_), ones(ones_), mn(0), krow(0) {}
    template <int BMN> __device__ void begin(int mn0, int, int tid) {
        mn = mn0 + tid % BMN;
        krow = tid / BMN;
    }
    template <int BMN> __device__ void load(float (&r)[tile_share<BMN>::n], int k0, int kend) const {
        CU_UNROLL
        for (int i = 0; i < tile_share<BMN>::n; i++) {
            const int k = k0 + krow + i * (GEMM_THREADS / BMN);
            r[i] = k >= kend ? 0.0f : mn < cols ? p[k * ld + mn] : ones && mn == cols ? 1.0f : 0.0f;
        }
    }
};

// ---------------------------------------------------------------------------------------------------
// Outputs. col(n) is computed once per column of the thread's tile; put(m, col(n), n, v) stores.

// C[m, n] -> y[z * zstride + m * ld + n] (z = blockIdx.z, the reduction chunk), plus bias[n] when
// bias is not NULL; added to what y holds when `accumulate` (parameter gradients).
struct out_rows {
    float *y;
    const float *bias; // (N) or NULL
    int ld;
    size_t zstride;
    bool accumulate;

    __device__ int col(int n) const { return n; }
    __device__ void put(int m, int c, int n, float v) const {
        float *q = y + blockIdx.z * zstride + (size_t)m * ld + c;
        if (bias) v += bias[n];
        *q = accumulate ? *q + v : v;
    }
};

// A parameter gradient, C = [dw | db] (M x (ncols + 1)) or dw alone (M x ncols): C[m, n] -> w[m * ncols
// + n] for n < ncols, -> b[m] for n = ncols (the bias gradient, when the B operand has that column
// of ones), both + z * zstride (z = blockIdx.z, the reduction chunk); added to what they hold when
// `accumulate`. Split partials use one slice per chunk: w = the slice, b = the slice + M * ncols.
struct out_grad {
    float *w, *b;
    int ncols;
    size_t zstride;
    bool accumulate;

    __device__ int col(int n) const { return n; }
    __device__ void put(int m, int, int n, float v) const {
        float *q = (n < ncols ? w + (size_t)m * ncols + n : b + m) + blockIdx.z * zstride;
        *q = accumulate ? *q + v : v;
    }
};

// ---------------------------------------------------------------------------------------------------
// The kernel.

// Row (column) of entry i of the T-entry register tile of the thread at ty (tx): groups of four
// consecutive rows, the second group (T = 8) 64 rows further, so that a warp's 16 tx read 64
// consecutive floats of a shared row (two wavefronts per 128-bit read) and each thread's four are one
// 128-bit read; with T = 2, two consecutive rows (one 64-bit read).
template <int T> __device__ static inline int frag_pos(int i, int t) {
    return T >= 4 ? (i / 4) * 64 + t * 4 + i % 4 : t * T + i;
}

// C over blocks of BM x BN: blockIdx.x walks N, blockIdx.y walks M, blockIdx.z the reduction chunks
// [z * kchunk, min(K, (z + 1) * kchunk)) (kchunk a multiple of BK). Every thread reaches every
// barrier: the loop bounds are the same for the whole block, out-of-range elements are guarded loads.
// Blocks per SM the register budget is sized for: 2 (128 registers) for the tiles of 8192 outputs
// and more, 4 (64) for 64 x 64, 3 (80) for 32 x 128, whose dw loaders need more than 64.
template <int BM, int BN, class LA, class LB, class OUT>
__global__ static void __launch_bounds__(GEMM_THREADS, BM * BN > 64 * 64 ? 2 : BM == 64 ? 4 : 3)
    gemm_kernel(LA a, LB b, OUT out, int M, int N, int K, int kchunk) {
    const int TM = BM / 16, TN = BN / 16;
    alignas(16) __shared__ float As[2][GEMM_BK][BM + GEMM_PAD]; // As[buf][k][m]
    alignas(16) __shared__ float Bs[2][GEMM_BK][BN + GEMM_PAD]; // Bs[buf][k][n]
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int kbeg = blockIdx.z * kchunk, kend = K - kbeg < kchunk ? K : kbeg + kchunk;

    a.template begin<BM>(m0, kbeg, tid);
    b.template begin<BN>(n0, kbeg, tid);
    float ra[tile_share<BM>::n], rb[tile_share<BN>::n];
    a.template load<BM>(ra, kbeg, kend);
    b.template load<BN>(rb, kbeg, kend);
    stash<LA::order, BM>(As[0], ra, tid);
    stash<LB::order, BN>(Bs[0], rb, tid);
    __syncthreads();

    float acc[TM][TN];
    CU_UNROLL
    for (int i = 0; i < TM; i++) {
        CU_UNROLL
        for (int j = 0; j < TN; j++) acc[i][j] = 0.0f;
    }
    int buf = 0;
    for (int k0 = kbeg; k0 < kend; k0 += GEMM_BK) {
        const bool more = k0 + GEMM_BK < kend; // the same for every thread
        if (more) { // the next step's elements, in flight during the products below
            a.template load<BM>(ra, k0 + GEMM_BK, kend);
            b.template load<BN>(rb, k0 + GEMM_BK, kend);
        }
        CU_UNROLL
        for (int kk = 0; kk < GEMM_BK; kk++) {
            float fa[TM], fb[TN];
            CU_UNROLL
            for (int i = 0; i < TM; i++) fa[i] = As[buf][kk][frag_pos<TM>(i, ty)];
            CU_UNROLL
            for (int j = 0; j < TN; j++) fb[j] = Bs[buf][kk][frag_pos<TN>(j, tx)];
            CU_UNROLL
            for (int i = 0; i < TM; i++) {
                CU_UNROLL
                for (int j = 0; j < TN; j++) acc[i][j] += fa[i] * fb[j];
            }
        }
        if (more) { // nobody reads buf ^ 1 now: the barrier below the previous step saw to that
            stash<LA::order, BM>(As[buf ^ 1], ra, tid);
            stash<LB::order, BN>(Bs[buf ^ 1], rb, tid);
        }
        __syncthreads();
        buf ^= 1;
    }

    int cols[TN];
    CU_UNROLL
    for (int j = 0; j < TN; j++) {
        const int n = n0 + frag_pos<TN>(j, tx);
        cols[j] = n < N ? out.col(n) : 0;
    }
    CU_UNROLL
    for (int i = 0; i < TM; i++) {
        const int m = m0 + frag_pos<TM>(i, ty);
        CU_UNROLL
        for (int j = 0; j < TN; j++) {
            const int n = n0 + frag_pos<TN>(j, tx);
            if (m < M && n < N) out.put(m, cols[j], n, acc[i][j]);
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Host side: tile choice, reduction split, launch.

enum gemm_tiles { TILES_128x128, TILES_128x64, TILES_64x128, TILES_64x64, TILES_32x128 };

static inline long cdiv(long a, long b) { return (a + b - 1) / b; }
static inline int tile_m(gemm_tiles t) {
    return t == TILES_128x128 || t == TILES_128x64 ? 128 : t == TILES_32x128 ? 32 : 64;
}
static inline int tile_n(gemm_tiles t) {
    return t == TILES_128x128 || t == TILES_64x128 || t == TILES_32x128 ? 128 : 64;
}
static inline gemm_tiles tiles_of(int bm, int bn) {
    return bm == 128 ? (bn == 128 ? TILES_128x128 : TILES_128x64)
                     : (bn == 128 ? TILES_64x128 : TILES_64x64);
}

// The tile size for an M x N output: 128 rows (columns) unless M (N) fits in 64; then, if `fill` and
// the grid would leave SMs idle (fewer than 1.5 blocks per SM), halve the larger side until it does
// not or both are 64. The 128 x 128 tile does the most products per shared-memory read. M <= 32
// (the output convolutions' 1 or 3 channels, mini's 32) takes 32 x 128, which wastes less of the
// tile on absent rows.
static inline gemm_tiles pick_tiles(int M, int N, bool fill) {
    if (M <= 32) return TILES_32x128;
    int bm = M <= 64 ? 64 : 128, bn = N <= 64 ? 64 : 128;
    while (fill && cdiv(M, bm) * cdiv(N, bn) < GEMM_SMS * 3 / 2 && (bm > 64 || bn > 64)) {
        if (bm >= bn) bm = 64;
        else bn = 64;
    }
    return tiles_of(bm, bn);
}

// How many chunks to split a reduction of length K into, when the M x N output alone gives `tiles`
// blocks: enough for about two waves of blocks at two per SM, no chunk shorter than GEMM_MIN_CHUNK,
// and at most GEMM_MAX_PARTIALS floats of partials. Sets *kchunk (a multiple of BK).
static const long GEMM_MIN_CHUNK = 256, GEMM_MAX_PARTIALS = 1L << 24;
static inline int pick_splits(long tiles, long K, long MN, int *kchunk) {
    long s = 4 * GEMM_SMS / tiles;
    if (s > K / GEMM_MIN_CHUNK) s = K / GEMM_MIN_CHUNK;
    if (s > GEMM_MAX_PARTIALS / MN) s = GEMM_MAX_PARTIALS / MN;
    if (s < 1) s = 1;
    long c = cdiv(cdiv(K, s), GEMM_BK) * GEMM_BK;
    if (c < GEMM_BK) c = GEMM_BK;
    *kchunk = (int)c;
    return K > 0 ? (int)cdiv(K, c) : 1; // chunks of length c cover K (never more than s of them)
}

// One launch of the kernel with BM x BN tiles: the grid covers C in tiles, z = the reduction chunks.
template <int BM, int BN, class LA, class LB, class OUT>
static void gemm_launch(const char *name, LA a, LB b, OUT out, int M, int N, int K, int kchunk, int splits) {
    launch(name, gemm_kernel<BM, BN, LA, LB, OUT>,
           dim3((unsigned)cdiv(N, BN), (unsigned)cdiv(M, BM), (unsigned)splits), dim3(GEMM_THREADS), a, b, out,
           M, N, K, kchunk);
}

// C = A B over an M x N x K problem with the given tiles, the reduction split into `splits` chunks of
// `kchunk` (splits = 1, kchunk >= K for none).
template <class LA, class LB, class OUT>
static void gemm(const char *name, gemm_tiles t, LA a, LB b, OUT out, int M, int N, int K, int kchunk,
                 int splits) {
    if (M <= 0 || N <= 0) return;
    switch (t) {
    case TILES_128x128: gemm_launch<128, 128>(name, a, b, out, M, N, K, kchunk, splits); break;
    case TILES_128x64: gemm_launch<128, 64>(name, a, b, out, M, N, K, kchunk, splits); break;
    case TILES_64x128: gemm_launch<64, 128>(name, a, b, out, M, N, K, kchunk, splits); break;
    case TILES_64x64: gemm_launch<64, 64>(name, a, b, out, M, N, K, kchunk, splits); break;
    case TILES_32x128: gemm_launch<32, 128>(name, a, b, out, M, N, K, kchunk, splits); break;
    }
}

// dst[i] += sum_{s < S} part[s * n + i] for i < n1, dst2[i - n1] += the same for n1 <= i < n: in
// double, rounded once. Block: 32 outputs i (lane l = threadIdx % 32) times 8 interleaved chunk sets
// r = threadIdx / 32 (s = r, r + 8, ...), so that a warp reads 128 contiguous bytes per load and
// every thread has S / 8 loads in flight rather than one output's S loads in a chain; the 8
// partial sums meet in shared memory and are added in order of r.
static const int SUM_PARTIALS_SETS = 8;
__global__ static void sum_partials_kernel(float *dst, size_t n1, float *dst2, const float *part, int S, size_t n) {
    __shared__ double sets[SUM_PARTIALS_SETS][32];
    const int l = threadIdx.x % 32, r = threadIdx.x / 32;
    const size_t i = (size_t)blockIdx.x * 32 + l;
    double acc = 0.0;
    if (i < n)
        for (int s = r; s < S; s += SUM_PARTIALS_SETS) acc += part[(size_t)s * n + i];
    sets[r][l] = acc;
    __syncthreads();
    if (r == 0 && i < n) {
        double sum = 0.0;
        for (int q = 0; q < SUM_PARTIALS_SETS; q++) sum += sets[q][l];
        float *d = i < n1 ? dst + i : dst2 + (i - n1);
        *d += (float)sum;
    }
}
static inline void sum_partials(float *dst, size_t n1, float *dst2, const float *part, int S, size_t n) {
    if (n)
        launch("sum_partials", sum_partials_kernel, (unsigned)cdiv((long)n, 32), 32 * SUM_PARTIALS_SETS, dst, n1,
               dst2, part, S, n);
}

// A parameter gradient dw (M x ncols, row-major) += A B, and db (M) += the column ncols of A B when
// db is not NULL (B must then have that column: ones, so that it holds the row sums of A), split
// over the reduction when the output alone cannot fill the device: partials in cu_scratch()
// (split_scratch_floats(...) of them, which the caller reserves together with its other scratch
// needs; N = ncols + 1 with db), then added in chunk order. The tiles are chosen by the output's
// shape alone (the split supplies the blocks).
static inline int split_plan(int M, int N, int K, gemm_tiles *t, int *kchunk) {
    *t = pick_tiles(M, N, false);
    return pick_splits(cdiv(M, tile_m(*t)) * cdiv(N, tile_n(*t)), K, (long)M * N, kchunk);
}
static inline size_t split_scratch_floats(int M, int N, int K) {
    if ((long)M * N == 0) return 0;
    gemm_tiles t;
    int kchunk;
    const int s = split_plan(M, N, K, &t, &kchunk);
    return s > 1 ? (size_t)s * M * N : 0;
}
// Whether db as a column of ones costs the dw GEMM nothing: the tiles for M x (ncols + 1) span no
// more columns than those for M x ncols (the column lands in the last tile's spare columns). Where
// ncols fills its tiles exactly (e.g. 64: 128-wide tiles instead of 64), the column would add a tile
// or widen them all, so the callers sum db with a kernel of their own instead.
static inline bool bias_column_free(int M, int ncols) {
    const long a = tile_n(pick_tiles(M, ncols, false)), b = tile_n(pick_tiles(M, ncols + 1, false));
    return ncols > 0 && cdiv(ncols + 1, b) * b <= cdiv(ncols, a) * a;
}
template <class LA, class LB>
static void gemm_accumulate_split(const char *name, float *dw, float *db, float *scratch, LA a, LB b, int M,
                                  int ncols, int K) {
    const int N = ncols + (db ? 1 : 0);
    if ((long)M * N == 0) return;
    gemm_tiles t;
    int kchunk;
    const int s = split_plan(M, N, K, &t, &kchunk);
    if (s == 1) {
        const out_grad out = {dw, db, ncols, 0, true};
        gemm(name, t, a, b, out, M, N, K, kchunk, 1);
    } else {
        const size_t nw = (size_t)M * ncols;
        const out_grad out = {scratch, scratch + nw, ncols, (size_t)M * N, false};
        gemm(name, t, a, b, out, M, N, K, kchunk, s);
        sum_partials(dw, nw, db, scratch, s, (size_t)M * N);
    }
}

} // namespace MSD_CUDA_NS

#endif
