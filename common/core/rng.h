// rng.h: the counter-based random number generator (Philox4x32-10) and the draws built on it.
//
// Every random number in msdiff (initial weights, training noise, sigmas, dropout masks, mini-batch
// order) is a pure function of (seed, stream, index). No generator state is carried around, so
// ref/, fast/ and cuda/ draw identical numbers in any order and in parallel, and a resumed run
// continues exactly where it stopped. The functions are static inline so that CUDA kernels can use
// the very same code (MSD_HD marks them __host__ __device__ under nvcc).
//
// Philox4x32-10 (Salmon, Moraes, Dror, Shaw, SC'11): a 128-bit counter and a 64-bit key go through
// ten rounds of two 32x32->64 multiplies, the high halves xored with the other words and the key,
// the key bumped by the Weyl constants between rounds. tests/test_rng.c checks it against the
// known-answer vectors published with Random123.
//
// Mapping used here:   key = (seed low 32, seed high 32)
//                      counter = (block low 32, block high 32, stream low 32, stream high 32)
// where block = index / 4 and the draw takes word index % 4 of that block's output.
#ifndef MSD_RNG_H
#define MSD_RNG_H

#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define MSD_HD __host__ __device__
#else
#define MSD_HD
#endif

// Streams: one per purpose, so that the same seed gives independent numbers to each.
enum msd_stream {
    MSD_STREAM_TEST = 1,     // tests and benchmarks filling inputs
    MSD_STREAM_INIT = 2,     // weight initialisation (index = offset in the parameter buffer)
    MSD_STREAM_DROPOUT_TEST = 3, // dropout masks drawn by the tests
    MSD_STREAM_DATA = 4,     // training batches: image j of batch `step` draws index step * B + j
    MSD_STREAM_XFLIP = 5,    // left-right mirroring of that image: same index
    MSD_STREAM_LATENT = 6,   // a sample's initial latent: (its seed, this stream, pixel)
    MSD_STREAM_SIGMA = 7,    // training noise levels: stream = kind | step << 8
    MSD_STREAM_NOISE = 8,    // training noise: stream = kind | step << 8
    MSD_STREAM_EVAL = 9,     // held-out evaluation noise
};
// Dropout masks: stream = MSD_STREAM_DROPOUT + block id (any number of blocks fits below 1 << 48).
#define MSD_STREAM_DROPOUT ((uint64_t)3 << 48)
// Heun's churn noise of step i: (the sample's seed, MSD_STREAM_CHURN + i, pixel). Far above the
// per-step training streams (kind | step << 8), so no step count reaches into another purpose.
#define MSD_STREAM_CHURN ((uint64_t)1 << 48)
// Stage clustering (common/model/cluster.h): the t, the data image and the noise of sample k.
#define MSD_STREAM_CLUSTER ((uint64_t)2 << 48)
#define MSD_STREAM_CLUSTER_T (MSD_STREAM_CLUSTER + 0)
#define MSD_STREAM_CLUSTER_IMAGE (MSD_STREAM_CLUSTER + 1)
#define MSD_STREAM_CLUSTER_NOISE (MSD_STREAM_CLUSTER + 2)

// One Philox4x32-10 block: out = philox(ctr, key).
MSD_HD static inline void msd_philox4x32_10(uint32_t out[4], const uint32_t ctr[4],
                                            const uint32_t key[2]) {
    const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u; // round multipliers
    const uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u; // key bumps (golden ratio, sqrt(3) - 1)
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        if (round > 0) { k0 += W0; k1 += W1; }
        uint64_t p0 = (uint64_t)M0 * c0; // hi0:lo0
        uint64_t p1 = (uint64_t)M1 * c2; // hi1:lo1
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

// The four 32-bit words of the block that holds draw `index`.
MSD_HD static inline void msd_rng_block(uint32_t out[4], uint64_t seed, uint64_t stream,
                                        uint64_t index) {
    uint64_t block = index >> 2;
    uint32_t ctr[4] = {(uint32_t)block, (uint32_t)(block >> 32), (uint32_t)stream,
                       (uint32_t)(stream >> 32)};
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    msd_philox4x32_10(out, ctr, key);
}

// The raw 32-bit word for (seed, stream, index).
MSD_HD static inline uint32_t msd_rng_u32(uint64_t seed, uint64_t stream, uint64_t index) {
    uint32_t out[4];
    msd_rng_block(out, seed, stream, index);
    return out[index & 3];
}

// Uniform in [0, 1): the top 24 bits, so every value is exactly representable in float.
MSD_HD static inline float msd_rng_uniform(uint64_t seed, uint64_t stream, uint64_t index) {
    return (float)(msd_rng_u32(seed, stream, index) >> 8) * (1.0f / 16777216.0f);
}

// Standard normal by Box-Muller. Draws 4b..4b+3 share one Philox block: words (0, 1) give draws
// 4b (cos) and 4b+1 (sin), words (2, 3) give 4b+2 and 4b+3. u1 is taken in (0, 1] so log(u1) is
// finite. Computed in double and rounded once, so that backends with slightly different float
// log/sin/cos still agree on the float result.
MSD_HD static inline float msd_rng_normal(uint64_t seed, uint64_t stream, uint64_t index) {
    uint32_t out[4];
    msd_rng_block(out, seed, stream, index);
    unsigned pair = (unsigned)(index & 3) >> 1;
    double u1 = ((out[2 * pair] >> 8) + 1.0) * (1.0 / 16777216.0);     // (0, 1]
    double u2 = (out[2 * pair + 1] >> 8) * (1.0 / 16777216.0);         // [0, 1)
    double r = sqrt(-2.0 * log(u1));
    double angle = 6.283185307179586476925287 * u2;
    return (float)((index & 1) ? r * sin(angle) : r * cos(angle));
}

#endif
