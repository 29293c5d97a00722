// test_ref_forward.c: forward ops of ref/ against answers worked out by hand, the optimiser ops,
// the memory ops and the backend table itself.
#include <math.h>
#include <string.h>

#include "common/core/backend.h"
#include "common/core/error.h"
#include "common/core/rng.h"
#include "testutil.h"

static const struct msd_backend *be = &msd_backend_ref;

// Exact comparison for values the op must reproduce to the last bit or within a few ulps.
static void expect(const float *got, const double *want, size_t n, double tol, const char *what) {
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(fabs(got[i] - want[i]) <= tol * fmax(1.0, fabs(want[i])),
                      "%s: [%zu] got %.9g, want %.9g", what, i, got[i], want[i]);
}

// ---------------------------------------------------------------------------------------------------
// conv2d

// x = 1..9 in a 3x3 image, two output channels: an all-ones kernel with bias 0.5 (sum of the 3x3
// neighbourhood, zero outside) and the identity kernel (1 at the centre) with no bias term.
START_TEST(conv3x3_known) {
    float *x = tbuf_new(9), *w = tbuf_new(18), *b = tbuf_new(2), *y = tbuf_new(18);
    for (int i = 0; i < 9; i++) x[i] = (float)(i + 1);
    for (int i = 0; i < 9; i++) w[i] = 1.0f;
    w[9 + 4] = 1.0f;
    b[0] = 0.5f;
    be->conv2d_forward(y, x, w, b, 1, 1, 3, 3, 2, 3);
    // neighbourhood sums of [[1,2,3],[4,5,6],[7,8,9]]
    const double want[18] = {12.5, 21.5, 16.5, 27.5, 45.5, 33.5, 24.5, 39.5, 28.5,
                             1, 2, 3, 4, 5, 6, 7, 8, 9};
    expect(y, want, 18, 0, "conv2d 3x3");
    tbuf_check(y, 18, "y");
    tbuf_free(x), tbuf_free(w), tbuf_free(b), tbuf_free(y);
}
END_TEST

// 1x1 conv mixes channels per pixel: y[o] = sum_c w[o, c] x[c] + b[o]; two pixels, three channels.
START_TEST(conv1x1_known) {
    float x[6] = {1, 2, 3, 4, 5, 6}; // (1, 3, 1, 2): channel c holds pixels (2c+1, 2c+2)
    float w[6] = {1, 0, -1, 0.5f, 0.5f, 0.5f}, b[2] = {10, 0};
    float *y = tbuf_new(4);
    be->conv2d_forward(y, x, w, b, 1, 3, 1, 2, 2, 1);
    const double want[4] = {10 + 1 - 5, 10 + 2 - 6, 0.5 * (1 + 3 + 5), 0.5 * (2 + 4 + 6)};
    expect(y, want, 4, 0, "conv2d 1x1");
    tbuf_check(y, 4, "y");
    tbuf_free(y);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// resampling

START_TEST(resample_known) {
    float x[16];
    for (int i = 0; i < 16; i++) x[i] = (float)i; // 4x4: row r holds 4r .. 4r+3
    float *y = tbuf_new(4), *z = tbuf_new(16);
    be->down2_forward(y, x, 1, 1, 4, 4);
    const double down[4] = {(0 + 1 + 4 + 5) / 4.0, (2 + 3 + 6 + 7) / 4.0, (8 + 9 + 12 + 13) / 4.0,
                            (10 + 11 + 14 + 15) / 4.0};
    expect(y, down, 4, 0, "down2");
    be->up2_forward(z, y, 1, 1, 2, 2);
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 4; c++)
            ck_assert_msg(z[r * 4 + c] == y[(r / 2) * 2 + c / 2], "up2 [%d,%d]", r, c);
    tbuf_check(y, 4, "down2 y");
    tbuf_check(z, 16, "up2 y");
    tbuf_free(y), tbuf_free(z);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// groupnorm

// With gamma = 2, beta = 3 each group of the output has mean 3 and variance 4 var/(var + eps);
// the saved mean and rstd are the group's statistics.
START_TEST(groupnorm_moments) {
    const int N = 2, C = 6, HW = 10, G = 3, CG = 2;
    const uint64_t seed = 31;
    float *x = tbuf_new(N * C * HW), *y = tbuf_new(N * C * HW), *mean = tbuf_new(N * G),
          *rstd = tbuf_new(N * G), gamma[6], beta[6];
    fill_uniform(x, N * C * HW, seed, -2.0f, 5.0f);
    for (int c = 0; c < C; c++) gamma[c] = 2.0f, beta[c] = 3.0f;
    const float eps = 1e-6f;
    be->groupnorm_forward(y, mean, rstd, x, gamma, beta, N, C, HW, G, eps);
    for (int n = 0; n < N; n++)
        for (int g = 0; g < G; g++) {
            const float *xg = x + (n * C + g * CG) * HW, *yg = y + (n * C + g * CG) * HW;
            double mx = 0, vx = 0, my = 0, vy = 0;
            for (int i = 0; i < CG * HW; i++) mx += xg[i], my += yg[i];
            mx /= CG * HW, my /= CG * HW;
            for (int i = 0; i < CG * HW; i++)
                vx += (xg[i] - mx) * (xg[i] - mx), vy += (yg[i] - my) * (yg[i] - my);
            vx /= CG * HW, vy /= CG * HW;
            ck_assert_msg(fabs(my - 3) < 1e-5, "group (%d,%d): output mean %.8f, want 3", n, g, my);
            ck_assert_msg(fabs(vy - 4 * vx / (vx + eps)) < 1e-5, "group (%d,%d): output variance %.8f",
                          n, g, vy);
            ck_assert_msg(fabs(mean[n * G + g] - mx) < 1e-6, "saved mean %.8f, want %.8f",
                          mean[n * G + g], mx);
            ck_assert_msg(fabs(rstd[n * G + g] - 1 / sqrt(vx + eps)) < 1e-6 * rstd[n * G + g],
                          "saved rstd %.8f, want %.8f", rstd[n * G + g], 1 / sqrt(vx + eps));
        }
    tbuf_check(y, N * C * HW, "y"), tbuf_check(mean, N * G, "mean"), tbuf_check(rstd, N * G, "rstd");
    tbuf_free(x), tbuf_free(y), tbuf_free(mean), tbuf_free(rstd);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// linear, silu, posemb

START_TEST(linear_known) {
    float x[4] = {1, 2, 3, -1};                 // (2, 2)
    float w[6] = {1, 1, 2, -1, 0, 0.5f};        // (3, 2)
    float b[3] = {0, 1, -2};
    float *y = tbuf_new(6);
    be->linear_forward(y, x, w, b, 2, 2, 3);
    const double want[6] = {3, 1, -1, 2, 8, -2.5};
    expect(y, want, 6, 0, "linear");
    tbuf_check(y, 6, "y");
    tbuf_free(y);
}
END_TEST

START_TEST(silu_known) {
    float x[5] = {0, 1, -1, 30, -30};
    float *y = tbuf_new(5);
    be->silu_forward(y, x, 5);
    // x / (1 + e^-x): e^-1 = 0.36787944117144233
    const double want[5] = {0, 1 / 1.36787944117144233, -1 / (1 + 2.718281828459045), 30, 0};
    expect(y, want, 4, 1e-7, "silu");
    ck_assert_msg(fabsf(y[4]) < 1e-11f, "silu(-30) = %g, want ~ -2.8e-12", y[4]);
    tbuf_check(y, 5, "y");
    tbuf_free(y);
}
END_TEST

// C = 4: frequencies 1 and (1/10000)^(1/1); C = 8: (1/10000)^(i/3). Sin half first.
START_TEST(posemb_known) {
    float c[2] = {0.75f, -2.0f};
    float *y = tbuf_new(16);
    be->posemb_forward(y, c, 2, 4);
    const double want4[8] = {sin(0.75), sin(0.75e-4), cos(0.75), cos(0.75e-4),
                             sin(-2.0), sin(-2e-4),   cos(-2.0), cos(-2e-4)};
    expect(y, want4, 8, 1e-7, "posemb C=4");
    be->posemb_forward(y, c, 2, 8);
    for (int n = 0; n < 2; n++)
        for (int i = 0; i < 4; i++) {
            double f = pow(10.0, -4.0 * i / 3.0);
            ck_assert_msg(fabs(y[n * 8 + i] - sin(c[n] * f)) < 1e-7, "posemb C=8 sin [%d,%d]", n, i);
            ck_assert_msg(fabs(y[n * 8 + 4 + i] - cos(c[n] * f)) < 1e-7, "posemb C=8 cos [%d,%d]", n, i);
        }
    tbuf_check(y, 16, "y");
    tbuf_free(y);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// attention

// Softmax rows sum to one; with q = 0 every weight is 1/HW and a is the mean of v over positions;
// with one strongly matching key the weight concentrates on it.
START_TEST(attention_known) {
    const int N = 2, C = 3, HW = 5;
    float *qkv = tbuf_new(N * 3 * C * HW), *a = tbuf_new(N * C * HW), *w = tbuf_new(N * HW * HW);
    fill_uniform(qkv, N * 3 * C * HW, 41, -1, 1);
    be->attention_forward(a, w, qkv, N, C, HW);
    for (int r = 0; r < N * HW; r++) {
        double s = 0;
        for (int j = 0; j < HW; j++) s += w[r * HW + j];
        ck_assert_msg(fabs(s - 1) < 1e-6, "softmax row %d sums to %.9f", r, s);
    }
    for (int n = 0; n < N; n++) // q := 0 (channels 3c)
        for (int c = 0; c < C; c++)
            for (int p = 0; p < HW; p++) qkv[(n * 3 * C + 3 * c) * HW + p] = 0;
    be->attention_forward(a, w, qkv, N, C, HW);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            const float *v = qkv + (n * 3 * C + 3 * c + 2) * HW;
            double mean = 0;
            for (int p = 0; p < HW; p++) mean += v[p] / HW;
            for (int i = 0; i < HW; i++)
                ck_assert_msg(fabs(a[(n * C + c) * HW + i] - mean) < 1e-6, "uniform attention [%d,%d,%d]",
                              n, c, i);
        }
    // q = k = (1, 2, .., HW) on channel 0, zero elsewhere: logits[i, j] = (i+1)(j+1)/sqrt(3), so
    // the last query's weights are softmax_j(HW (j+1) / sqrt(3)), worked out here in double
    memset(qkv, 0, sizeof(float) * N * 3 * C * HW);
    for (int n = 0; n < N; n++)
        for (int p = 0; p < HW; p++) {
            qkv[(n * 3 * C + 0) * HW + p] = (float)(p + 1);     // q of channel 0
            qkv[(n * 3 * C + 1) * HW + p] = (float)(p + 1);     // k of channel 0
            qkv[(n * 3 * C + 2) * HW + p] = (float)(10 * p);   // v of channel 0
        }
    be->attention_forward(a, w, qkv, N, C, HW);
    double z = 0, want[5];
    for (int j = 0; j < HW; j++) z += want[j] = exp(HW * (j + 1) / sqrt(3.0));
    for (int j = 0; j < HW; j++) want[j] /= z;
    expect(w + (HW - 1) * HW, want, HW, 1e-6, "softmax of the last query");
    expect(w + (HW * HW) + (HW - 1) * HW, want, HW, 1e-6, "softmax of the last query, sample 1");
    tbuf_check(a, N * C * HW, "a"), tbuf_check(w, N * HW * HW, "w");
    tbuf_free(qkv), tbuf_free(a), tbuf_free(w);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// dropout

// p = 0 is the identity; at p = 0.5 the dropped fraction is within 5 standard errors of 0.5, kept
// values are doubled, the mask depends only on (seed, stream, index), and in place equals out of place.
START_TEST(dropout_mask) {
    const size_t n = 100000;
    float *x = tbuf_new(n), *y = tbuf_new(n), *z = tbuf_new(n);
    fill_uniform(x, n, 51, 0.5f, 1.5f); // never zero
    be->dropout_forward(y, x, 0.0f, 9, 5, n);
    ck_assert(memcmp(x, y, n * sizeof(float)) == 0);
    be->dropout_forward(y, x, 0.5f, 9, 5, n);
    size_t dropped = 0;
    for (size_t i = 0; i < n; i++) {
        if (y[i] == 0) dropped++;
        else ck_assert_msg(y[i] == 2 * x[i], "kept value [%zu] %.9g, want %.9g", i, y[i], 2 * x[i]);
        ck_assert_msg((y[i] == 0) == (msd_rng_uniform(9, 5, i) < 0.5f), "mask [%zu] not the RNG's", i);
    }
    double frac = (double)dropped / n, se = sqrt(0.25 / n);
    ck_assert_msg(fabs(frac - 0.5) < 5 * se, "dropped fraction %.5f, want 0.5 +- %.4f", frac, 5 * se);
    memcpy(z, x, n * sizeof(float));
    be->dropout_forward(z, z, 0.5f, 9, 5, n); // in place
    ck_assert(memcmp(y, z, n * sizeof(float)) == 0);
    be->dropout_forward(z, x, 0.5f, 9, 6, n); // another stream: another mask
    ck_assert(memcmp(y, z, n * sizeof(float)) != 0);
    tbuf_check(y, n, "y"), tbuf_check(z, n, "z");
    tbuf_free(x), tbuf_free(y), tbuf_free(z);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// concat and the elementwise ops

START_TEST(elementwise_known) {
    float a[4] = {1, 2, 3, 4}, b[6] = {5, 6, 7, 8, 9, 10};
    float *y = tbuf_new(10);
    be->concat_forward(y, a, b, 2, 1, 1, 2); // a, b: (2, 1, 2): sample by sample
    const double cat[8] = {1, 2, 5, 6, 3, 4, 7, 8};
    expect(y, cat, 8, 0, "concat (2, 1+1, 2)");
    be->concat_forward(y, a, b, 1, 2, 3, 2); // (1, 2+3, 2): all of a, then all of b
    const double cat2[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    expect(y, cat2, 10, 0, "concat (1, 2+3, 2)");
    be->add(y, a, a, 4);
    const double sum[4] = {2, 4, 6, 8};
    expect(y, sum, 4, 0, "add");
    be->scale(y, a, -0.5f, 4);
    const double sc[4] = {-0.5, -1, -1.5, -2};
    expect(y, sc, 4, 0, "scale");
    be->axpby(y, 2.0f, a, 3.0f, 4); // 2 a + 3 (-0.5 a) = 0.5 a
    const double ax[4] = {0.5, 1, 1.5, 2};
    expect(y, ax, 4, 0, "axpby");
    float bias[2] = {100, -100};
    be->bias_add_forward(y, b, bias, 1, 2, 3); // (1, 2, 3): channel 0 +100, channel 1 -100
    const double ba[6] = {105, 106, 107, -92, -91, -90};
    expect(y, ba, 6, 0, "bias_add");
    float db[2];
    be->bias_add_backward(db, b, 1, 2, 3);
    const double dbw[2] = {18, 27};
    expect(db, dbw, 2, 0, "bias_add backward");
    tbuf_check(y, 10, "y");
    tbuf_free(y);
}
END_TEST

// Per-sample rows: two samples of three values with their own scalars.
START_TEST(rows_known) {
    float x[6] = {1, 2, 3, 4, 5, 6}, z[6] = {1, 1, 1, 2, 2, 2}, s[2] = {2, -1}, t[2] = {0.5f, 3};
    float *y = tbuf_new(6), out[2];
    be->scale_rows(y, x, s, 2, 3);
    const double sr[6] = {2, 4, 6, -4, -5, -6};
    expect(y, sr, 6, 0, "scale_rows");
    be->combine_rows(y, s, x, t, z, 2, 3); // s[n] x + t[n] z
    const double cr[6] = {2.5, 4.5, 6.5, 2, 1, 0};
    expect(y, cr, 6, 0, "combine_rows");
    be->sqerr_rows(out, x, z, 2, 3);
    const double se[2] = {0 + 1 + 4, 4 + 9 + 16};
    expect(out, se, 2, 0, "sqerr_rows");
    tbuf_check(y, 6, "y");
    tbuf_free(y);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// optimiser ops

// Adam's bias correction makes the first steps move each weight by lr * g / (|g| + eps) when the
// gradient is constant: m / (1 - b1^t) = g and v / (1 - b2^t) = g^2 at every t.
START_TEST(adam_known) {
    const size_t n = 5;
    float p[5] = {1, -1, 0.5f, 0, 2}, m[5] = {0}, v[5] = {0}, g[5] = {0.1f, -2, 1e-3f, 0, 5};
    double want[5];
    for (size_t i = 0; i < n; i++) want[i] = p[i];
    const float lr = 1e-2f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
    for (long step = 1; step <= 3; step++) {
        be->adam(p, m, v, g, lr, b1, b2, eps, step, n);
        for (size_t i = 0; i < n; i++) want[i] -= lr * g[i] / (fabs(g[i]) + eps);
        expect(p, want, n, 2e-6, "adam with a constant gradient");
    }
    // a zero gradient after that still moves the weight (momentum), and decays m by b1
    float m_before = m[1];
    be->adam(p, m, v, (const float[5]){0}, lr, b1, b2, eps, 4, n);
    ck_assert_msg(fabsf(m[1] - b1 * m_before) < 1e-7f, "m decays by beta1: %.9g vs %.9g", m[1],
                  b1 * m_before);
}
END_TEST

START_TEST(ema_nan_sumsq_known) {
    float e[3] = {1, 2, 3}, p[3] = {3, 2, 1};
    be->ema(e, p, 0.75f, 3); // p + 0.75 (e - p)
    const double ew[3] = {1.5, 2, 2.5};
    expect(e, ew, 3, 0, "ema");
    float x[5] = {NAN, INFINITY, -INFINITY, -7.5f, 0};
    be->nan_to_num(x, 0.0f, 1e5f, -1e5f, 5);
    const double nw[5] = {0, 1e5, -1e5, -7.5, 0};
    expect(x, nw, 5, 0, "nan_to_num");
    float out[1];
    be->sumsq(out, (const float[3]){1, 2, 3}, 3);
    ck_assert_msg(out[0] == 14.0f, "sumsq(1,2,3) = %.9g", out[0]);
    // 10^6 copies of 0.1f: a float accumulator drifts by ~1e-3 relative; double gets it to rounding
    const size_t n = 1000000;
    float *big = tbuf_new(n);
    for (size_t i = 0; i < n; i++) big[i] = 0.1f;
    be->sumsq(out, big, n);
    double want = (double)n * (double)0.1f * (double)0.1f;
    ck_assert_msg(fabs(out[0] - want) <= 1e-7 * want, "sumsq of 1e6 x 0.1: %.9g, want %.9g", out[0], want);
    tbuf_free(big);
}
END_TEST

// ---------------------------------------------------------------------------------------------------
// memory ops and the table

START_TEST(memory_roundtrip) {
    const size_t n = 1000;
    float *host = tbuf_new(n), *back = tbuf_new(n);
    fill_normal(host, n, 61, 1.0f);
    float *d = be->alloc(n), *d2 = be->alloc(n);
    be->upload(d, host, n);
    be->copy(d2, d, n);
    be->download(back, d2, n);
    be->sync();
    ck_assert(memcmp(host, back, n * sizeof(float)) == 0);
    be->fill(d2, -3.5f, n);
    be->download(back, d2, n);
    for (size_t i = 0; i < n; i++) ck_assert_msg(back[i] == -3.5f, "fill [%zu] = %g", i, back[i]);
    tbuf_check(back, n, "download");
    be->release(d), be->release(d2);
    tbuf_free(host), tbuf_free(back);
}
END_TEST

START_TEST(backend_table) {
    ck_assert_ptr_eq(msd_backend_get("ref"), &msd_backend_ref);
    ck_assert_str_eq(msd_backend_get("ref")->name, "ref");
#define NONNULL(op) ck_assert_msg(msd_backend_ref.op != NULL, "ref lacks " #op);
    MSD_BACKEND_OPS(NONNULL)
#undef NONNULL
    msd_clear_error();
    ck_assert_ptr_null(msd_backend_get("gpu"));
    ck_assert_msg(strstr(msd_last_error(), "unknown backend 'gpu'") &&
                      strstr(msd_last_error(), "ref, fast or cuda"),
                  "message: %s", msd_last_error());
    ck_assert_ptr_null(msd_backend_get(NULL));
}
END_TEST

int main(void) {
    const TTest *tests[] = {
        conv3x3_known, conv1x1_known, resample_known, groupnorm_moments, linear_known, silu_known,
        posemb_known, attention_known, dropout_mask, elementwise_known, rows_known, adam_known,
        ema_nan_sumsq_known, memory_roundtrip, backend_table,
    };
    return run_tests("ref forward", 60, tests, TEST_COUNT(tests));
}
