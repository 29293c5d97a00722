// fast/resample.c: 2x down- and upsampling with EDM's box filter [1, 1] (see ref/resample.c).
//
// What differs from ref/resample.c: 8 outputs per step along a row, with masked loads and stores for
// the rest of a row (7x7 and 14x14 maps are mostly rest). The four-value sums of down2 forward and
// up2 backward run in float as (x[2h, 2v] + x[2h+1, 2v]) + (x[2h, 2v+1] + x[2h+1, 2v+1]) where ref
// sums in double: two roundings more (the bound is in tests/test_fast.c). down2 backward and up2
// forward copy values (times 1/4, exact) and are bit-identical to ref.
#include "fast.h"
#include "simd.h"

// The k <= 8 sums of 2x2 blocks whose top-left corners are r0[0], r0[2], ..: k columns of the row
// pair (r0, r1), read with masks below 16 values so that nothing past the row is touched.
static inline __m256 blocksum8(const float *r0, const float *r1, size_t k) {
    __m256 a, b, c, d;
    if (k == 8) {
        a = _mm256_loadu_ps(r0), b = _mm256_loadu_ps(r0 + 8);
        c = _mm256_loadu_ps(r1), d = _mm256_loadu_ps(r1 + 8);
    } else {
        const __m256i m0 = fast_mask8(2 * k < 8 ? 2 * k : 8), m1 = fast_mask8(2 * k > 8 ? 2 * k - 8 : 0);
        a = _mm256_maskload_ps(r0, m0), b = _mm256_maskload_ps(r0 + 8, m1);
        c = _mm256_maskload_ps(r1, m0), d = _mm256_maskload_ps(r1 + 8, m1);
    }
    // hadd pairs neighbours within 128-bit halves: (s0 01, s0 23, s1 01, s1 23 | s0 45, s0 67, ..);
    // the 64-bit permute puts the eight sums in column order.
    const __m256 h = _mm256_hadd_ps(_mm256_add_ps(a, c), _mm256_add_ps(b, d));
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(h), _MM_SHUFFLE(3, 1, 2, 0)));
}

// Each of the k <= 8 values of v twice (v0 v0 v1 v1 ..) into o[0 .. 2k), on rows o and o2.
static inline void dup_store(float *o, float *o2, __m256 v, size_t k) {
    const __m256 lo = _mm256_unpacklo_ps(v, v), hi = _mm256_unpackhi_ps(v, v);
    const __m256 first = _mm256_permute2f128_ps(lo, hi, 0x20), second = _mm256_permute2f128_ps(lo, hi, 0x31);
    if (k == 8) {
        _mm256_storeu_ps(o, first), _mm256_storeu_ps(o + 8, second);
        _mm256_storeu_ps(o2, first), _mm256_storeu_ps(o2 + 8, second);
    } else {
        const __m256i m0 = fast_mask8(2 * k < 8 ? 2 * k : 8), m1 = fast_mask8(2 * k > 8 ? 2 * k - 8 : 0);
        _mm256_maskstore_ps(o, m0, first), _mm256_maskstore_ps(o + 8, m1, second);
        _mm256_maskstore_ps(o2, m0, first), _mm256_maskstore_ps(o2 + 8, m1, second);
    }
}

static inline __m256 load_k(const float *p, size_t k) {
    return k == 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, fast_mask8(k));
}

static inline void store_k(float *p, __m256 v, size_t k) {
    if (k == 8) _mm256_storeu_ps(p, v);
    else _mm256_maskstore_ps(p, fast_mask8(k), v);
}

void fast_down2_forward(float *y, const float *x, int N, int C, int H, int W) {
    const int Ho = H / 2, Wo = W / 2;
    const __m256 quarter = _mm256_set1_ps(0.25f);
#pragma omp parallel for if ((size_t)N * C * H * W >= FAST_PAR_MIN)
    for (long nc = 0; nc < (long)N * C; nc++) {
        const float *xc = x + (size_t)nc * H * W;
        float *yc = y + (size_t)nc * Ho * Wo;
        for (int h = 0; h < Ho; h++)
            for (int v = 0; v < Wo; v += 8) {
                const size_t k = Wo - v < 8 ? (size_t)(Wo - v) : 8;
                const float *r0 = xc + (size_t)(2 * h) * W + 2 * v;
                store_k(yc + (size_t)h * Wo + v, _mm256_mul_ps(quarter, blocksum8(r0, r0 + W, k)), k);
            }
    }
}

void fast_down2_backward(float *dx, const float *dy, int N, int C, int H, int W) {
    const int Wo = W / 2;
    const __m256 quarter = _mm256_set1_ps(0.25f);
#pragma omp parallel for if ((size_t)N * C * H * W >= FAST_PAR_MIN)
    for (long nc = 0; nc < (long)N * C; nc++) {
        float *dxc = dx + (size_t)nc * H * W;
        const float *dyc = dy + (size_t)nc * (H / 2) * Wo;
        for (int h = 0; h < H / 2; h++)
            for (int v = 0; v < Wo; v += 8) {
                const size_t k = Wo - v < 8 ? (size_t)(Wo - v) : 8;
                float *o = dxc + (size_t)(2 * h) * W + 2 * v;
                dup_store(o, o + W, _mm256_mul_ps(quarter, load_k(dyc + (size_t)h * Wo + v, k)), k);
            }
    }
}

void fast_up2_forward(float *y, const float *x, int N, int C, int H, int W) {
    const int Wo = 2 * W;
#pragma omp parallel for if ((size_t)N * C * H * W >= FAST_PAR_MIN / 4)
    for (long nc = 0; nc < (long)N * C; nc++) {
        const float *xc = x + (size_t)nc * H * W;
        float *yc = y + (size_t)nc * 4 * H * W;
        for (int h = 0; h < H; h++)
            for (int v = 0; v < W; v += 8) {
                const size_t k = W - v < 8 ? (size_t)(W - v) : 8;
                float *o = yc + (size_t)(2 * h) * Wo + 2 * v;
                dup_store(o, o + Wo, load_k(xc + (size_t)h * W + v, k), k);
            }
    }
}

void fast_up2_backward(float *dx, const float *dy, int N, int C, int H, int W) {
    const int Wo = 2 * W;
#pragma omp parallel for if ((size_t)N * C * H * W >= FAST_PAR_MIN / 4)
    for (long nc = 0; nc < (long)N * C; nc++) {
        float *dxc = dx + (size_t)nc * H * W;
        const float *dyc = dy + (size_t)nc * 4 * H * W;
        for (int h = 0; h < H; h++)
            for (int v = 0; v < W; v += 8) {
                const size_t k = W - v < 8 ? (size_t)(W - v) : 8;
                const float *r0 = dyc + (size_t)(2 * h) * Wo + 2 * v;
                store_k(dxc + (size_t)h * W + v, blocksum8(r0, r0 + Wo, k), k);
            }
    }
}
