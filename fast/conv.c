// fast/conv.c: 2D convolution (stride 1, "same" zero padding, K = 1 or 3) as implicit GEMMs on
// fast/gemm.c. Computes the functions of ref/conv.c; only the order of the float additions differs.
// Gradients: parameters accumulate (dw +=, db +=), activations are written (dx =).
//
// With the batch folded into the columns (column j = n*H*W + p, p the pixel) every pass is one GEMM:
//   forward  y (OC, N*HW)    = w (OC, C*KK)           x im2col(x) (C*KK, N*HW)
//   dx       dx (C, N*HW)    = flip(w)^T (C, OC*KK)   x im2col(dy) (OC*KK, N*HW)
//   dw       dw (OC, C*KK)  += dy (OC, N*HW)          x im2col(x)^T (N*HW, C*KK)
// where im2col(x)[(c, t), (n, p)] = x[n, c, p + offset of tap t], zero outside the image, and
// flip(w)^T[c, (o, t)] = w[o, c, KK-1-t] (the transposed convolution: tap t of dy pairs with the
// mirrored tap of w). No im2col buffer exists: the packers read x (or dy) straight into the kernel's
// panels, the taps that fall in the padding coming from masked loads as zeros. A tap that falls in
// the padding therefore contributes 0 * (the other factor) where ref/ skips it; the two differ only
// when that factor is Inf or NaN (w for y and dx, dy for dw): here the term is NaN, in ref/ it is
// absent. NaN/Inf in the activations themselves (x for y and dw, dy for dx) propagate exactly as in
// ref/ (tests/test_fast_gemm.c checks both).
#include <limits.h>

#include "common/core/util.h"
#include "gemm.h"

#define NR GEMM_NR
#define MR GEMM_MR

static inline int imin(int a, int b) { return a < b ? a : b; }

// An activation read through im2col: x: (N, C, H, W), kernel K (1 or 3).
struct conv_src {
    const float *x;
    int N, C, H, W, K;
};

// The flat offset of tap t (row i = t / K, column j = t % K) from the pixel it serves.
static inline int tap_offset(const struct conv_src *s, int t) {
    const int P = s->K / 2;
    return (t / s->K - P) * s->W + (t % s->K - P);
}

// Lanes with 0 <= i < n.
static inline __m256i in_range(__m256i i, int n) {
    return _mm256_and_si256(_mm256_cmpgt_epi32(i, _mm256_set1_epi32(-1)), _mm256_cmpgt_epi32(_mm256_set1_epi32(n), i));
}

// h of an unused lane: every tap's row condition fails for it, so its mask is off.
#define FAR_OUTSIDE (INT_MIN / 2)

// Lanes [0, n) of a mask (n may be <= 0 or >= 8).
static inline __m256i lanes_below(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// 8 floats at p, zero where the mask is off. vmaskmovps is slow on some CPUs (Zen 3: about twice a
// load and an and), so where all 8 addresses lie inside the tensor (inside: the caller checked the
// whole range it reads) the lanes are loaded and then masked.
static inline __m256 load_masked(const float *p, __m256i m, bool inside) {
    return inside ? _mm256_and_ps(_mm256_loadu_ps(p), _mm256_castsi256_ps(m)) : _mm256_maskload_ps(p, m);
}

// Whether reading [lo, hi) (offsets from s->x) stays inside x.
static inline bool inside_x(const struct conv_src *s, long lo, long hi) {
    return lo >= 0 && hi <= (long)s->N * s->C * s->H * s->W;
}

// ---------------------------------------------------------------------------------------------------
// B = im2col(x): rows k = c*KK + t, columns j = n*HW + p. Panels of 24 pixels; the 24 lanes' tap
// masks are computed once per panel and serve every channel. A panel inside one sample is read from
// one base (lane l at base + l), one that crosses into the next sample from two bases on
// complementary masks; only maps smaller than a panel need gathers.
static void pack_im2col(float *dst, const void *src, int j0, int ncols, int k0, int kc) {
    const struct conv_src *s = src;
    const int HW = s->H * s->W, KK = s->K * s->K, P = s->K / 2;
    const int chw = s->C * HW; // fits an int: checked by the callers
    int offs[9];
    for (int t = 0; t < KK; t++) offs[t] = tap_offset(s, t);
    // the rows of this block read channels [c_lo, c_hi] at tap offsets within +-reach
    const long c_lo = k0 / KK, c_hi = (k0 + kc - 1) / KK, reach = (long)P * s->W + P;
    int jn = j0 / HW, jh = j0 % HW / s->W, jv = j0 % s->W; // the pixel of the next lane
    for (int q = 0; q * NR < ncols; q++) {
        const int cols = imin(NR, ncols - q * NR);
        _Alignas(32) int hh[NR], vv[NR], base[NR];
        for (int l = 0; l < NR; l++) {
            if (l < cols) {
                hh[l] = jh, vv[l] = jv, base[l] = jn * chw + jh * s->W + jv;
                if (++jv == s->W && (jv = 0, ++jh == s->H)) jh = 0, jn++;
            } else {
                hh[l] = FAR_OUTSIDE, vv[l] = 0, base[l] = base[l - 1];
            }
        }
        __m256i mk[9][3]; // each tap's mask: its row condition and its column condition
        for (int g = 0; g < 3; g++) {
            const __m256i h = _mm256_load_si256((const __m256i *)(hh + 8 * g));
            const __m256i v = _mm256_load_si256((const __m256i *)(vv + 8 * g));
            __m256i rm[3], cm[3];
            for (int i = 0; i < s->K; i++) rm[i] = in_range(_mm256_add_epi32(h, _mm256_set1_epi32(i - P)), s->H);
            for (int j = 0; j < s->K; j++) cm[j] = in_range(_mm256_add_epi32(v, _mm256_set1_epi32(j - P)), s->W);
            for (int t = 0; t < KK; t++) mk[t][g] = _mm256_and_si256(rm[t / s->K], cm[t % s->K]);
        }
        float *d = dst + (size_t)q * NR * kc;
        int c = (int)c_lo, t = k0 % KK;
        int split = 1; // lanes [0, split) continue lane 0's address; the rest, lane split's
        while (split < cols && base[split] - base[0] == split) split++;
        if (split == cols) { // one sample
            const float *x0 = s->x + base[0];
            const bool in = inside_x(s, base[0] + c_lo * HW - reach, base[0] + c_hi * HW + reach + NR);
            for (int k = 0; k < kc; k++) {
                const float *p = x0 + (size_t)c * HW + offs[t];
                for (int g = 0; g < 3; g++) _mm256_store_ps(d + 8 * g, load_masked(p + 8 * g, mk[t][g], in));
                d += NR;
                if (++t == KK) t = 0, c++;
            }
        } else if (base[cols - 1] - base[split] == cols - 1 - split) { // two samples
            __m256i m0[9][3], m1[9][3];
            for (int g = 0; g < 3; g++) {
                const __m256i lo = lanes_below(split - 8 * g);
                for (int u = 0; u < KK; u++)
                    m0[u][g] = _mm256_and_si256(mk[u][g], lo), m1[u][g] = _mm256_andnot_si256(lo, mk[u][g]);
            }
            const long b1 = (long)base[split] - split;
            const float *x0 = s->x + base[0], *x1 = s->x + b1;
            const bool in = inside_x(s, base[0] + c_lo * HW - reach, b1 + c_hi * HW + reach + NR);
            for (int k = 0; k < kc; k++) {
                const size_t o = (size_t)c * HW + offs[t];
                for (int g = 0; g < 3; g++)
                    _mm256_store_ps(d + 8 * g, _mm256_or_ps(load_masked(x0 + o + 8 * g, m0[t][g], in),
                                                            load_masked(x1 + o + 8 * g, m1[t][g], in)));
                d += NR;
                if (++t == KK) t = 0, c++;
            }
        } else { // a panel over three or more samples (maps smaller than 24 pixels): gathers
            __m256i ib[3];
            for (int g = 0; g < 3; g++) ib[g] = _mm256_load_si256((const __m256i *)(base + 8 * g));
            for (int k = 0; k < kc; k++) {
                const __m256i o = _mm256_set1_epi32(c * HW + offs[t]);
                for (int g = 0; g < 3; g++)
                    _mm256_store_ps(d + 8 * g, _mm256_mask_i32gather_ps(_mm256_setzero_ps(), s->x,
                                                                        _mm256_add_epi32(ib[g], o),
                                                                        _mm256_castsi256_ps(mk[t][g]), 4));
                d += NR;
                if (++t == KK) t = 0, c++;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// B = im2col(x)^T for dw: rows k = n*HW + p (a block never leaves one sample: kseg = HW), columns
// (c, t) = c*KK + t. k runs along x's rows, so 8 pixels of 8 columns are loaded and transposed.
static void pack_im2col_t(float *dst, const void *src, int j0, int ncols, int k0, int kc) {
    const struct conv_src *s = src;
    const int HW = s->H * s->W, KK = s->K * s->K, P = s->K / 2;
    const int n = k0 / HW, p0 = k0 % HW;
    const float *xs = s->x + (size_t)n * s->C * HW + p0;
    int offs[9];
    for (int t = 0; t < KK; t++) offs[t] = tap_offset(s, t);
    const long reach = (long)P * s->W + P, at = (long)n * s->C * HW + p0;
    const bool in = inside_x(s, at + (long)(j0 / KK) * HW - reach,
                             at + (long)((j0 + ncols - 1) / KK) * HW + reach + (kc + 7) / 8 * 8);
    // (h, v) of the chunk's first pixel, stepped by 8 without divisions; the packer runs once per
    // 24-column panel, so this set-up is paid per panel and must stay cheap
    int hb = p0 / s->W, vb = p0 % s->W;
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), Wv = _mm256_set1_epi32(s->W);
    for (int kk = 0; kk < kc; kk += 8) {
        const int rows = imin(8, kc - kk);
        __m256i h = _mm256_set1_epi32(hb), v = _mm256_add_epi32(_mm256_set1_epi32(vb), iota);
        for (;;) { // lanes past the end of a row move to the next (once for W >= 8)
            const __m256i wrap = _mm256_cmpgt_epi32(v, _mm256_sub_epi32(Wv, _mm256_set1_epi32(1)));
            if (_mm256_testz_si256(wrap, wrap)) break;
            h = _mm256_sub_epi32(h, wrap); // wrap is -1 where v >= W
            v = _mm256_sub_epi32(v, _mm256_and_si256(wrap, Wv));
        }
        for (vb += 8; vb >= s->W; vb -= s->W) hb++;
        h = _mm256_blendv_epi8(_mm256_set1_epi32(FAR_OUTSIDE), h, lanes_below(rows));
        __m256i rm[3], cm[3], mk[9]; // the taps' row and column conditions, then each tap's
        for (int i = 0; i < s->K; i++) rm[i] = in_range(_mm256_add_epi32(h, _mm256_set1_epi32(i - P)), s->H);
        for (int j = 0; j < s->K; j++) cm[j] = in_range(_mm256_add_epi32(v, _mm256_set1_epi32(j - P)), s->W);
        for (int t = 0; t < KK; t++) mk[t] = _mm256_and_si256(rm[t / s->K], cm[t % s->K]);
        for (int q = 0; q * NR < ncols; q++) {
            float *d = dst + (size_t)q * NR * kc + (size_t)kk * NR;
            const int col0 = j0 + q * NR, cols = imin(NR, ncols - q * NR);
            int c = col0 / KK, t = col0 % KK;
            for (int g = 0; g < 3; g++) {
                __m256 r[8];
                for (int l = 0; l < 8; l++) {
                    if (g * 8 + l < cols) {
                        r[l] = load_masked(xs + (size_t)c * HW + kk + offs[t], mk[t], in);
                        if (++t == KK) t = 0, c++;
                    } else {
                        r[l] = _mm256_setzero_ps();
                    }
                }
                transpose8x8(r);
                for (int l = 0; l < rows; l++) _mm256_store_ps(d + (size_t)l * NR + 8 * g, r[l]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// A operands

// flip(w)^T for dx: A[c, (o, t)] = w[o, c, KK-1-t].  w: (OC, C, K, K)
struct wflip {
    const float *w;
    int C, KK;
};

static void pack_wflip(float *dst, const void *src, int i0, int m, int k0, int kc) {
    const struct wflip *s = src;
    for (int q = 0; q * MR < m; q++) {
        float *d = dst + (size_t)q * MR * kc;
        const int rows = imin(MR, m - q * MR), c0 = i0 + q * MR;
        for (int k = 0; k < kc; k++) {
            const int o = (k0 + k) / s->KK, t = (k0 + k) % s->KK;
            for (int r = 0; r < MR; r++)
                d[(size_t)k * MR + r] = r < rows ? s->w[((size_t)o * s->C + c0 + r) * s->KK + s->KK - 1 - t] : 0.0f;
        }
    }
}

// dy for dw: A[o, n*HW + p] = dy[n, o, p]; a block stays inside one sample.  dy: (N, OC, HW)
struct dy_rows {
    const float *dy;
    int OC, HW;
};

static void pack_dy_rows(float *dst, const void *src, int i0, int m, int k0, int kc) {
    const struct dy_rows *s = src;
    const int n = k0 / s->HW, p = k0 % s->HW;
    const struct gemm_mat A = {s->dy + (size_t)n * s->OC * s->HW + p, s->HW, 1};
    gemm_pack_a_mat(dst, &A, i0, m, 0, kc);
}

// ---------------------------------------------------------------------------------------------------

static void check_dims(int N, int C, int H, int W, int OC, int K) {
    CHECK(K == 1 || K == 3, "conv2d: kernel %d (1 or 3)", K);
    CHECK((long)N * (C > OC ? C : OC) * H * W <= INT_MAX / 2,
          "conv2d: (%d, %d, %d, %d) -> %d is too large for 32-bit indices", N, C, H, W, OC);
}

void fast_conv2d_forward(float *y, const float *x, const float *w, const float *b, int N, int C, int H,
                         int W, int OC, int K) {
    // y: (N, OC, H, W)  x: (N, C, H, W)  w: (OC, C, K, K)  b: (OC) or NULL
    check_dims(N, C, H, W, OC, K);
    const int HW = H * W;
    const struct conv_src B = {x, N, C, H, W, K};
    const struct gemm_mat A = {w, (ptrdiff_t)C * K * K, 1};
    const struct gemm g = {.M = OC, .N = N * HW, .K = C * K * K, .pack_a = gemm_pack_a_mat, .a = &A,
                           .pack_b = pack_im2col, .b = &B, .c = {y, HW, HW, (ptrdiff_t)OC * HW},
                           .alpha = 1.0f, .accumulate = false, .bias = b};
    gemm_run(&g, GEMM_PARALLEL);
}

// Forward was y[n, o, p] = b[o] + sum_{c, t} w[o, c, t] x[n, c, p + off(t)], so
//   dx[n, c, p] = sum_{o, t} w[o, c, t] dy[n, o, p - off(t)] = sum_{o, t} w[o, c, KK-1-t] dy[n, o, p + off(t)]
//   dw[o, c, t] += sum_{n, p} dy[n, o, p] x[n, c, p + off(t)];   db[o] += sum_{n, p} dy[n, o, p]
void fast_conv2d_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                          const float *w, int N, int C, int H, int W, int OC, int K) {
    // dx: (N, C, H, W) or NULL  dw: (OC, C, K, K)  db: (OC) or NULL  dy: (N, OC, H, W)
    check_dims(N, C, H, W, OC, K);
    const int HW = H * W, KK = K * K;
    if (dx) {
        const struct conv_src B = {dy, N, OC, H, W, K};
        const struct wflip A = {w, C, KK};
        const struct gemm g = {.M = C, .N = N * HW, .K = OC * KK, .pack_a = pack_wflip, .a = &A,
                               .pack_b = pack_im2col, .b = &B, .c = {dx, HW, HW, (ptrdiff_t)C * HW},
                               .alpha = 1.0f, .accumulate = false, .bias = NULL};
        gemm_run(&g, GEMM_PARALLEL);
    }
    const struct dy_rows A = {dy, OC, HW};
    const struct conv_src B = {x, N, C, H, W, K};
    const struct gemm g = {.M = OC, .N = C * KK, .K = N * HW, .kseg = HW, .pack_a = pack_dy_rows, .a = &A,
                           .pack_b = pack_im2col_t, .b = &B, .c = {dw, (ptrdiff_t)C * KK, 0, 0},
                           .alpha = 1.0f, .accumulate = true, .bias = NULL};
    gemm_run(&g, GEMM_KSPLIT);
    if (db) { // memory-bound: summed in double, like ref/
#pragma omp parallel for
        for (int o = 0; o < OC; o++) {
            __m256d s0 = _mm256_setzero_pd(), s1 = s0;
            double tail = 0.0;
            for (int n = 0; n < N; n++) {
                const float *r = dy + ((size_t)n * OC + o) * HW;
                int p = 0;
                for (; p + 8 <= HW; p += 8) {
                    const __m256 v = _mm256_loadu_ps(r + p);
                    s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
                    s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
                }
                for (; p < HW; p++) tail += r[p];
            }
            _Alignas(32) double l[4];
            _mm256_store_pd(l, _mm256_add_pd(s0, s1));
            db[o] += (float)(l[0] + l[1] + l[2] + l[3] + tail);
        }
    }
}
