// fast/gemm.h: the packed, register-blocked SGEMM that every matrix-shaped op of fast/ runs on
// (conv2d, linear, attention), its per-thread scratch, and the fast_ functions of fast/conv.c,
// fast/linear.c and fast/attention.c (fast/fast.h declares them for the backend table as well).
//
// What it computes: C (M x N) = alpha * A (M x K) B (K x N), written or added to C, plus an optional
// per-row bias. A and B are never read in place: a packing function copies a block of each into the
// micro-kernel's layout, so one kernel serves every layout the ops need (transposed operands,
// implicit im2col with the 3x3 taps and zero padding, dy spanning a batch). C's columns may run over
// a batch: column j lands at (j / seg) * segstride + j % seg, which is how a convolution over N
// samples becomes one GEMM with N*H*W columns.
//
// Arithmetic: float throughout (that is what makes it fast). Each output accumulates the products
// of one block of at most GEMM_KC consecutive k in a register (one FMA, one rounding, per term), then
// adds the block into C (one rounding per block). GEMM_KSPLIT adds one partial per thread on top.
// tests/test_fast_gemm.c derives its error bounds from exactly this structure.
#ifndef MSD_FAST_GEMM_H
#define MSD_FAST_GEMM_H

#include <stdbool.h>
#include <stddef.h>

// Micro-kernel: a 4 x 24 tile of C in 12 ymm accumulators (4 rows x 3 vectors of 8).
#define GEMM_MR 4
#define GEMM_NR 24
// Longest run of k accumulated in registers; a reduction longer than this is split into equal blocks.
#define GEMM_KC 256
// Columns of C per task at most (a multiple of GEMM_NR): the task's C tile stays in L2 from one k
// block to the next.
#define GEMM_NC 240

// A packing function copies rows [i0, i0 + m) x k [k0, k0 + kc) of A into ceil(m / MR) panels of
// MR x kc (panel q at dst + q*MR*kc, element (r, k) at [k*MR + r], rows past m zero), or for B,
// k [k0, k0 + kc) x columns [i0, i0 + m) into ceil(m / NR) panels (panel q at dst + q*NR*kc,
// element (k, c) at [k*NR + c], columns past m zero). src is the operand's description.
typedef void (*gemm_pack_fn)(float *dst, const void *src, int i0, int m, int k0, int kc);

// A plain strided matrix: element (r, c) at p[r*rs + c*cs] (a transpose swaps rs and cs).
struct gemm_mat {
    const float *p;
    ptrdiff_t rs, cs;
};
// Packers for struct gemm_mat operands (vectorised when rows or columns are contiguous).
void gemm_pack_a_mat(float *dst, const void *src, int i0, int m, int k0, int kc);
void gemm_pack_b_mat(float *dst, const void *src, int i0, int m, int k0, int kc);

// Where C lives: element (i, j) at p[i*rs + (j / seg)*segstride + j % seg]; seg = 0: one segment.
struct gemm_out {
    float *p;
    ptrdiff_t rs;
    int seg;
    ptrdiff_t segstride;
};

struct gemm {
    int M, N, K;
    int kseg;                 // k blocks never straddle a multiple of kseg (0: no constraint)
    gemm_pack_fn pack_a;      // A: (M, K)
    const void *a;
    gemm_pack_fn pack_b;      // B: (K, N)
    const void *b;
    struct gemm_out c;        // C: (M, N)
    float alpha;
    bool accumulate;          // C += alpha A B; otherwise C = alpha A B
    const float *bias;        // (M) added to every row, or NULL
};

enum gemm_mode {
    GEMM_SERIAL,   // in the calling thread only (safe inside an OpenMP parallel region)
    GEMM_PARALLEL, // OpenMP over tiles of C; the whole of A is packed once and shared
    GEMM_KSPLIT,   // OpenMP over k blocks, one private C per thread, added up at the end: for a
                   // small C and a long reduction (the weight gradient of a convolution)
};
// Run the GEMM. GEMM_PARALLEL and GEMM_KSPLIT called from inside a parallel region run serially.
void gemm_run(const struct gemm *g, enum gemm_mode mode);

// ---------------------------------------------------------------------------------------------------
// Scratch. The op table passes no scratch, so fast/ keeps one buffer per (slot, thread), grown on
// demand and kept for the life of the program (freed by nothing; LeakSanitizer sees them from the
// static table, so they are not reported). The calling thread's buffer of at least n floats, 64-byte
// aligned; contents undefined. Not reentrant across host threads: one op runs at a time.
enum fast_slot { SLOT_A, SLOT_B, SLOT_C, SLOT_OP, SLOT_COUNT };
float *fast_scratch(enum fast_slot slot, size_t n);
// The OpenMP thread number and team limit (0 and 1 without OpenMP).
int fast_thread_id(void);
int fast_max_threads(void);

// ---------------------------------------------------------------------------------------------------
// Not an op: y[i] = exp(x[i]) by fast_exp8 (simd.h), as the softmax computes it, for the tests. y, x: (n)
void fast_softmax_exp(float *y, const float *x, size_t n);
// The relative error bound of the softmax's exp over [-87.33, 0], in units of 2^-24 (tests measure it).
#define FAST_EXP_ULPS 4

// ---------------------------------------------------------------------------------------------------
// Inline vector helpers, for the files of fast/ (built with -mavx2 -mfma); tests that include this
// header for the declarations above see none of it.
#ifdef __AVX2__
#include <immintrin.h>

// In-register transposes for the packers.

// Rows r[0..7] of an 8x8 block become its columns, in place.
static inline void transpose8x8(__m256 r[8]) {
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xee);
    __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xee);
    __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xee);
    __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xee);
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
    r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
    r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
    r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
    r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// The softmax's exp is fast_exp8 (simd.h), the one vector exp of fast/.
#endif // __AVX2__

// The ops conv.c, linear.c and attention.c define are declared with all the others in fast.h.
#include "fast.h"

#endif
