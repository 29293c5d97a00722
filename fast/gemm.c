// fast/gemm.c: the SGEMM driver, its 4x24 AVX2+FMA micro-kernel, the packers of plain strided
// operands, and the per-thread scratch. fast/gemm.h says what each computes.
//
// The BLIS structure, with B packed panel by panel: C is cut into tasks (a range of rows x at most
// GEMM_NC columns); a task walks the k blocks, and for each block packs one 24-column panel of B at
// a time into a buffer that stays in L1 and runs the kernel over every 4-row panel of A with it. A
// is packed once, before the tasks, and shared (from L2). GEMM_KSPLIT instead gives each thread a
// run of k blocks and a private C and adds the partials at the end. Timings that chose this shape
// (Zen 3, one thread): packing B a whole block at a time cost ~25% of a 3x3 conv (the packed block
// went out to L2 and back); panel by panel it is under 10%.
#include "gemm.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "common/core/util.h"

#define MR GEMM_MR
#define NR GEMM_NR

static inline int imin(int a, int b) { return a < b ? a : b; }
static inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------------------------------
// Scratch and threads

#define MAX_THREADS 256
static struct {
    float *p;
    size_t n;
} scratch[SLOT_COUNT][MAX_THREADS];

int fast_thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

int fast_max_threads(void) {
#ifdef _OPENMP
    int t = omp_get_max_threads();
    return t < MAX_THREADS ? t : MAX_THREADS;
#else
    return 1;
#endif
}

static bool in_parallel(void) {
#ifdef _OPENMP
    return omp_in_parallel();
#else
    return true; // no threads: every mode runs serially
#endif
}

float *fast_scratch(enum fast_slot slot, size_t n) {
    const int t = fast_thread_id();
    CHECK(t < MAX_THREADS, "thread %d: fast/ keeps scratch for %d threads at most", t, MAX_THREADS);
    if (scratch[slot][t].n < n) {
        free(scratch[slot][t].p);
        size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
        float *p = aligned_alloc(64, bytes);
        CHECK(p != NULL, "out of memory for %zu bytes of fast/ scratch", bytes);
        scratch[slot][t].p = p;
        scratch[slot][t].n = bytes / sizeof(float);
    }
    return scratch[slot][t].p;
}

// ---------------------------------------------------------------------------------------------------
// Packers of struct gemm_mat operands

// Lanes [0, n) of a mask (n may be <= 0 or >= 8).
static inline __m256i lanes_below(int n) {
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx);
}

// Four rows with k contiguous (row r at p + r*rs): 4x8 blocks transposed in registers.
static void pack_a_rows4(float *d, const float *p, ptrdiff_t rs, int kc) {
    int k = 0;
    for (; k + 8 <= kc; k += 8) {
        __m256 r0 = _mm256_loadu_ps(p + k), r1 = _mm256_loadu_ps(p + rs + k);
        __m256 r2 = _mm256_loadu_ps(p + 2 * rs + k), r3 = _mm256_loadu_ps(p + 3 * rs + k);
        __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
        __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
        __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee);
        __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee);
        float *o = d + (size_t)k * MR; // u0: k, k+4; u1: k+1, k+5; u2: k+2, k+6; u3: k+3, k+7
        _mm256_storeu_ps(o, _mm256_permute2f128_ps(u0, u1, 0x20));
        _mm256_storeu_ps(o + 8, _mm256_permute2f128_ps(u2, u3, 0x20));
        _mm256_storeu_ps(o + 16, _mm256_permute2f128_ps(u0, u1, 0x31));
        _mm256_storeu_ps(o + 24, _mm256_permute2f128_ps(u2, u3, 0x31));
    }
    for (; k < kc; k++)
        for (int r = 0; r < MR; r++) d[(size_t)k * MR + r] = p[r * rs + k];
}

void gemm_pack_a_mat(float *dst, const void *src, int i0, int m, int k0, int kc) {
    const struct gemm_mat *A = src;
    for (int q = 0; q * MR < m; q++) {
        float *d = dst + (size_t)q * MR * kc;
        const int rows = imin(MR, m - q * MR);
        const float *p = A->p + (ptrdiff_t)(i0 + q * MR) * A->rs + (ptrdiff_t)k0 * A->cs;
        if (rows == MR && A->cs == 1) {
            pack_a_rows4(d, p, A->rs, kc);
        } else if (rows == MR && A->rs == 1) { // the four rows of one k are adjacent
            for (int k = 0; k < kc; k++) _mm_storeu_ps(d + (size_t)k * MR, _mm_loadu_ps(p + k * A->cs));
        } else {
            for (int k = 0; k < kc; k++)
                for (int r = 0; r < MR; r++) d[(size_t)k * MR + r] = r < rows ? p[r * A->rs + k * A->cs] : 0.0f;
        }
    }
}

// NR columns with k contiguous (column c at p + c*cs), `cols` of them real: 8x8 blocks transposed.
static void pack_b_cols(float *d, const float *p, ptrdiff_t cs, int cols, int kc) {
    int k = 0;
    for (; k + 8 <= kc; k += 8) {
        for (int g = 0; g < NR / 8; g++) {
            __m256 r[8];
            for (int l = 0; l < 8; l++) {
                const int c = g * 8 + l;
                r[l] = c < cols ? _mm256_loadu_ps(p + c * cs + k) : _mm256_setzero_ps();
            }
            transpose8x8(r);
            for (int l = 0; l < 8; l++) _mm256_store_ps(d + (size_t)(k + l) * NR + g * 8, r[l]);
        }
    }
    for (; k < kc; k++)
        for (int c = 0; c < NR; c++) d[(size_t)k * NR + c] = c < cols ? p[c * cs + k] : 0.0f;
}

void gemm_pack_b_mat(float *dst, const void *src, int j0, int n, int k0, int kc) {
    const struct gemm_mat *B = src;
    for (int q = 0; q * NR < n; q++) {
        float *d = dst + (size_t)q * NR * kc;
        const int cols = imin(NR, n - q * NR);
        const float *p = B->p + (ptrdiff_t)k0 * B->rs + (ptrdiff_t)(j0 + q * NR) * B->cs;
        if (B->cs == 1) { // a row of the panel is contiguous
            const __m256i m0 = lanes_below(cols), m1 = lanes_below(cols - 8), m2 = lanes_below(cols - 16);
            for (int k = 0; k < kc; k++) {
                const float *s = p + k * B->rs;
                float *o = d + (size_t)k * NR;
                if (cols == NR) {
                    _mm256_store_ps(o, _mm256_loadu_ps(s));
                    _mm256_store_ps(o + 8, _mm256_loadu_ps(s + 8));
                    _mm256_store_ps(o + 16, _mm256_loadu_ps(s + 16));
                } else { // masked lanes are not read and come back zero
                    _mm256_store_ps(o, _mm256_maskload_ps(s, m0));
                    _mm256_store_ps(o + 8, _mm256_maskload_ps(s + 8, m1));
                    _mm256_store_ps(o + 16, _mm256_maskload_ps(s + 16, m2));
                }
            }
        } else if (B->rs == 1) {
            pack_b_cols(d, p, B->cs, cols, kc);
        } else {
            for (int k = 0; k < kc; k++)
                for (int c = 0; c < NR; c++) d[(size_t)k * NR + c] = c < cols ? p[k * B->rs + c * B->cs] : 0.0f;
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// The micro-kernel: a 4 x 24 tile of C = the packed A panel (4 x kc) times the packed B panel
// (kc x 24), then the epilogue C = alpha * acc + base, base = (C or 0) + bias, in one FMA.

static inline ptrdiff_t col_offset(const struct gemm_out *o, int j) {
    return o->seg ? (ptrdiff_t)(j / o->seg) * o->segstride + j % o->seg : j;
}

// The offset of column j in C when columns [j, j + n) are contiguous there, else -1.
static inline ptrdiff_t panel_offset(const struct gemm_out *o, int j, int n) {
    if (!o->seg) return j;
    const int r = j % o->seg;
    return r + n <= o->seg ? (ptrdiff_t)(j / o->seg) * o->segstride + r : -1;
}

struct epilogue {
    const struct gemm_out *o;
    float alpha;
    bool load_c;       // start from what C holds, else from 0
    const float *bias; // per row of C, or NULL
};

#define FMA_ROW(r, c0, c1, c2)                                                                      \
    do {                                                                                            \
        const __m256 ar = _mm256_broadcast_ss(a + (r));                                             \
        c0 = _mm256_fmadd_ps(ar, b0, c0);                                                           \
        c1 = _mm256_fmadd_ps(ar, b1, c1);                                                           \
        c2 = _mm256_fmadd_ps(ar, b2, c2);                                                           \
    } while (0)

#define STORE_ROW(r, c0, c1, c2)                                                                    \
    do {                                                                                            \
        float *row = cp + (r) * o->rs;                                                              \
        __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0;                                          \
        if (e->load_c) s0 = _mm256_loadu_ps(row), s1 = _mm256_loadu_ps(row + 8),                    \
                       s2 = _mm256_loadu_ps(row + 16);                                              \
        if (e->bias) {                                                                              \
            const __m256 vb = _mm256_set1_ps(e->bias[i0 + (r)]);                                    \
            s0 = _mm256_add_ps(s0, vb), s1 = _mm256_add_ps(s1, vb), s2 = _mm256_add_ps(s2, vb);     \
        }                                                                                           \
        _mm256_storeu_ps(row, _mm256_fmadd_ps(va, c0, s0));                                         \
        _mm256_storeu_ps(row + 8, _mm256_fmadd_ps(va, c1, s1));                                     \
        _mm256_storeu_ps(row + 16, _mm256_fmadd_ps(va, c2, s2));                                    \
    } while (0)

// coff: the offset in C of column j0 when the tile's nr columns are contiguous there, else -1.
static void kernel_4x24(int kc, const float *restrict a, const float *restrict b, int i0, int j0, int mr,
                        int nr, ptrdiff_t coff, const struct epilogue *e) {
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c02 = c00, c10 = c00, c11 = c00, c12 = c00;
    __m256 c20 = c00, c21 = c00, c22 = c00, c30 = c00, c31 = c00, c32 = c00;
    for (int k = 0; k < kc; k++) {
        const __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8), b2 = _mm256_load_ps(b + 16);
        FMA_ROW(0, c00, c01, c02);
        FMA_ROW(1, c10, c11, c12);
        FMA_ROW(2, c20, c21, c22);
        FMA_ROW(3, c30, c31, c32);
        a += MR;
        b += NR;
    }
    const struct gemm_out *o = e->o;
    const __m256 va = _mm256_set1_ps(e->alpha);
    if (mr == MR && nr == NR && coff >= 0) {
        float *cp = o->p + (ptrdiff_t)i0 * o->rs + coff;
        STORE_ROW(0, c00, c01, c02);
        STORE_ROW(1, c10, c11, c12);
        STORE_ROW(2, c20, c21, c22);
        STORE_ROW(3, c30, c31, c32);
        return;
    }
    // A tile at the edge of C, or one whose columns cross a segment: element by element.
    _Alignas(32) float t[MR][NR];
    const __m256 acc[MR][3] = {{c00, c01, c02}, {c10, c11, c12}, {c20, c21, c22}, {c30, c31, c32}};
    for (int r = 0; r < MR; r++)
        for (int v = 0; v < 3; v++) _mm256_store_ps(&t[r][8 * v], acc[r][v]);
    for (int r = 0; r < mr; r++) {
        float *row = o->p + (ptrdiff_t)(i0 + r) * o->rs;
        for (int c = 0; c < nr; c++) {
            float *dst = row + col_offset(o, j0 + c);
            float base = e->load_c ? *dst : 0.0f;
            if (e->bias) base += e->bias[i0 + r];
            *dst = fmaf(e->alpha, t[r][c], base);
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// k blocks: the reduction is cut into segments of kseg, each segment into ceil(len / KC) blocks of
// nearly equal length (so a 288-long reduction runs as 2 x 144, not 256 + 32).

struct kblocks {
    int seg, nseg, parts, last_len, parts_last, n;
};

static struct kblocks kblocks_make(int K, int kseg) {
    struct kblocks kb;
    kb.seg = kseg > 0 && kseg < K ? kseg : K;
    kb.nseg = ceil_div(K, kb.seg);
    kb.last_len = K - (kb.nseg - 1) * kb.seg;
    kb.parts = ceil_div(kb.seg, GEMM_KC);
    kb.parts_last = ceil_div(kb.last_len, GEMM_KC);
    kb.n = (kb.nseg - 1) * kb.parts + kb.parts_last;
    return kb;
}

static void kblock(const struct kblocks *kb, int b, int *k0, int *kc) {
    int s, q, len, P;
    if (b < (kb->nseg - 1) * kb->parts) {
        s = b / kb->parts, q = b % kb->parts, len = kb->seg, P = kb->parts;
    } else {
        s = kb->nseg - 1, q = b - (kb->nseg - 1) * kb->parts, len = kb->last_len, P = kb->parts_last;
    }
    const int lo = (int)((long)q * len / P), hi = (int)((long)(q + 1) * len / P);
    *k0 = s * kb->seg + lo;
    *kc = hi - lo;
}

// ---------------------------------------------------------------------------------------------------
// Tiles mode (GEMM_SERIAL, GEMM_PARALLEL)

struct tiling {
    int Mp;       // M rounded up to MR: the packed A holds Mp rows
    int rpc, cpc; // panels per task: rows (of MR), columns (of NR)
    int nrc, ncc; // task grid: row chunks x column chunks
};

// Block b of the packed A, rows from i0 (a multiple of MR), for a block starting at k0 of length kc.
static inline const float *a_panel(const float *Ap, const struct tiling *t, int k0, int kc, int i0) {
    return Ap + (size_t)t->Mp * k0 + (size_t)i0 * kc;
}

static void pack_a_job(const struct gemm *g, const struct kblocks *kb, const struct tiling *t, float *Ap,
                       int job) {
    const int b = job / t->nrc, i0 = (job % t->nrc) * t->rpc * MR;
    int k0, kc;
    kblock(kb, b, &k0, &kc);
    g->pack_a(Ap + (size_t)t->Mp * k0 + (size_t)i0 * kc, g->a, i0, imin(t->rpc * MR, g->M - i0), k0, kc);
}

// One task: for each k block, each 24-column panel of B is packed and meets every row panel of
// the task's A before the next is packed.
static void tile_task(const struct gemm *g, const struct kblocks *kb, const struct tiling *t,
                      const float *Ap, float *Bp, int task) {
    const int i0 = (task % t->nrc) * t->rpc * MR, j0 = (task / t->nrc) * t->cpc * NR;
    const int m = imin(t->rpc * MR, g->M - i0), n = imin(t->cpc * NR, g->N - j0);
    for (int b = 0; b < kb->n; b++) {
        int k0, kc;
        kblock(kb, b, &k0, &kc);
        const struct epilogue e = {&g->c, g->alpha, b > 0 || g->accumulate, b == 0 ? g->bias : NULL};
        for (int j = j0; j < j0 + n; j += NR) {
            const int nr = imin(NR, j0 + n - j);
            g->pack_b(Bp, g->b, j, nr, k0, kc);
            const ptrdiff_t coff = panel_offset(&g->c, j, nr);
            for (int ip = 0; ip * MR < m; ip++)
                kernel_4x24(kc, a_panel(Ap, t, k0, kc, i0 + ip * MR), Bp, i0 + ip * MR, j,
                            imin(MR, m - ip * MR), nr, coff, &e);
        }
    }
}

static void run_tiles(const struct gemm *g, const struct kblocks *kb, bool par) {
    struct tiling t;
    t.Mp = ceil_div(g->M, MR) * MR;
    const int rpanels = t.Mp / MR, cpanels = ceil_div(g->N, NR);
    t.rpc = rpanels;
    t.cpc = imin(GEMM_NC / NR, cpanels);
    // Enough tasks for the threads to balance: narrower column chunks first (free), then row
    // chunks (each row chunk packs its columns of B again).
    const int want = par ? 4 * fast_max_threads() : 1;
    for (;;) {
        t.nrc = ceil_div(rpanels, t.rpc), t.ncc = ceil_div(cpanels, t.cpc);
        if (t.nrc * t.ncc >= want) break;
        if (t.cpc > 2) t.cpc = ceil_div(t.cpc, 2);
        else if (t.rpc > 1) t.rpc = ceil_div(t.rpc, 2);
        else if (t.cpc > 1) t.cpc = 1;
        else break;
    }
    float *Ap = fast_scratch(SLOT_A, (size_t)t.Mp * g->K); // every k block, all rows
    const int jobs = kb->n * t.nrc, tasks = t.nrc * t.ncc;
    const size_t bsize = (size_t)GEMM_KC * NR;
    if (!par) {
        float *Bp = fast_scratch(SLOT_B, bsize);
        for (int j = 0; j < jobs; j++) pack_a_job(g, kb, &t, Ap, j);
        for (int k = 0; k < tasks; k++) tile_task(g, kb, &t, Ap, Bp, k);
        return;
    }
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int j = 0; j < jobs; j++) pack_a_job(g, kb, &t, Ap, j);
        float *Bp = fast_scratch(SLOT_B, bsize);
#pragma omp for schedule(dynamic, 1)
        for (int k = 0; k < tasks; k++) tile_task(g, kb, &t, Ap, Bp, k);
    }
}

// ---------------------------------------------------------------------------------------------------
// K-split mode: thread t takes blocks [n t / T, n (t+1) / T) into a private dense C (M x N), the
// first block written, the others added; then C = (C or 0) + bias + alpha * (sum of the partials).

static void ksplit_part(const struct gemm *g, const struct kblocks *kb, int b0, int b1, float *Cp) {
    const int Mp = ceil_div(g->M, MR) * MR;
    float *Ap = fast_scratch(SLOT_A, (size_t)Mp * GEMM_KC);
    float *Bp = fast_scratch(SLOT_B, (size_t)GEMM_KC * NR);
    const struct gemm_out po = {Cp, g->N, 0, 0};
    for (int b = b0; b < b1; b++) {
        int k0, kc;
        kblock(kb, b, &k0, &kc);
        g->pack_a(Ap, g->a, 0, g->M, k0, kc);
        const struct epilogue e = {&po, 1.0f, b > b0, NULL};
        for (int j = 0; j < g->N; j += NR) {
            const int nr = imin(NR, g->N - j);
            g->pack_b(Bp, g->b, j, nr, k0, kc);
            for (int ip = 0; ip * MR < g->M; ip++)
                kernel_4x24(kc, Ap + (size_t)ip * MR * kc, Bp, ip * MR, j, imin(MR, g->M - ip * MR), nr, j, &e);
        }
    }
}

// Row i of C from the partials part[0..nt) (NULL: a thread that had no block).
static void ksplit_row(const struct gemm *g, float *const *part, int nt, int i) {
    float *row = g->c.p + (ptrdiff_t)i * g->c.rs;
    const size_t off = (size_t)i * g->N;
    const float bias = g->bias ? g->bias[i] : 0.0f;
    const __m256 va = _mm256_set1_ps(g->alpha);
    int j = 0;
    for (; j + 8 <= g->N; j += 8) {
        __m256 s = _mm256_setzero_ps();
        bool first = true;
        for (int u = 0; u < nt; u++) {
            if (!part[u]) continue;
            const __m256 p = _mm256_loadu_ps(part[u] + off + j);
            s = first ? p : _mm256_add_ps(s, p);
            first = false;
        }
        __m256 base = g->accumulate ? _mm256_loadu_ps(row + j) : _mm256_setzero_ps();
        base = _mm256_add_ps(base, _mm256_set1_ps(bias));
        _mm256_storeu_ps(row + j, _mm256_fmadd_ps(va, s, base));
    }
    for (; j < g->N; j++) {
        float s = 0.0f;
        bool first = true;
        for (int u = 0; u < nt; u++) {
            if (!part[u]) continue;
            s = first ? part[u][off + j] : s + part[u][off + j];
            first = false;
        }
        row[j] = fmaf(g->alpha, s, (g->accumulate ? row[j] : 0.0f) + bias);
    }
}

// Serially (par false) it is the same walk by one thread: a private C of M x N instead of the
// whole of A packed at once, which for a weight gradient would be a copy of dy.
static void run_ksplit(const struct gemm *g, const struct kblocks *kb, bool par) {
    CHECK(g->c.seg == 0, "GEMM_KSPLIT writes a plain C");
    float *part[MAX_THREADS] = {0};
    if (!par) {
        part[0] = fast_scratch(SLOT_C, (size_t)g->M * g->N);
        ksplit_part(g, kb, 0, kb->n, part[0]);
        for (int i = 0; i < g->M; i++) ksplit_row(g, part, 1, i);
        return;
    }
    int nt = 1;
#pragma omp parallel
    {
        const int t = fast_thread_id();
#ifdef _OPENMP
#pragma omp single
        nt = omp_get_num_threads();
#endif
        const int b0 = (int)((long)kb->n * t / nt), b1 = (int)((long)kb->n * (t + 1) / nt);
        if (b1 > b0) {
            part[t] = fast_scratch(SLOT_C, (size_t)g->M * g->N);
            ksplit_part(g, kb, b0, b1, part[t]);
        }
#pragma omp barrier
#pragma omp for schedule(static)
        for (int i = 0; i < g->M; i++) ksplit_row(g, part, nt, i);
    }
}

// ---------------------------------------------------------------------------------------------------

void gemm_run(const struct gemm *g, enum gemm_mode mode) {
    if (g->M <= 0 || g->N <= 0) return;
    if (g->K <= 0) { // an empty sum: C = (C or 0) + bias
        for (int i = 0; i < g->M; i++)
            for (int j = 0; j < g->N; j++) {
                float *c = g->c.p + (ptrdiff_t)i * g->c.rs + col_offset(&g->c, j);
                *c = (g->accumulate ? *c : 0.0f) + (g->bias ? g->bias[i] : 0.0f);
            }
        return;
    }
    const struct kblocks kb = kblocks_make(g->K, g->kseg);
    const bool par = mode != GEMM_SERIAL && !in_parallel() && fast_max_threads() > 1;
    if (mode == GEMM_KSPLIT && kb.n > 1) run_ksplit(g, &kb, par);
    else run_tiles(g, &kb, par);
}
