// data.h: training data sets held in memory as bytes, and the batches drawn from them.
//
// Three sources, chosen by a spec string (msd_data_open):
//   "fmnist"                 Fashion-MNIST training images, 60000 x 1 x 28 x 28, from MSD_FMNIST_DIR
//                            (Debian package dataset-fashion-mnist): train-images-idx3-ubyte.gz and
//                            train-labels-idx1-ubyte.gz (the same names without .gz are read too)
//   "fmnist:test"            the 10000 test images (t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz)
//   "fmnist:DIR", "fmnist:test:DIR"   the same files in another folder
//   "cifar10:DIR"            CIFAR-10 binary version: DIR/data_batch_1.bin .. data_batch_5.bin (or the
//                            same in DIR/cifar-10-batches-bin/), each record 1 label byte + 3072 pixel
//                            bytes (1024 R, 1024 G, 1024 B, row-major 32x32); 50000 x 3 x 32 x 32
//   "cifar10:test:DIR"       DIR/test_batch.bin
//   anything else            a folder of PNG files: every *.png (any case, dot-files skipped) sorted by
//                            name, all square and the same size, all gray or all RGB (alpha dropped,
//                            palette and 16-bit converted to 8-bit: see common/io/png.h); no labels
// Every file is validated with a message that names it, the field and the expected value.
//
// Pixels map to floats as p / 127.5 - 1 (computed in float: (float)p / 127.5f - 1.0f), so 0 -> -1 and
// 255 -> 1 exactly, and msd_png_write maps those floats back to the same bytes.
// Does not hold: any model code, or the device copy of a batch (the caller uploads it).
#ifndef MSD_DATA_H
#define MSD_DATA_H

#include <stdbool.h>
#include <stdint.h>

#include "common/core/rng.h" // MSD_STREAM_DATA, MSD_STREAM_XFLIP

#define MSD_FMNIST_DIR "/usr/share/datasets/fashion-mnist"
// Largest data set held in memory, in pixel bytes (n * channels * res * res). A file that declares
// more is taken as corrupt. CIFAR-10's training set is 153,600,000 bytes.
#define MSD_DATA_MAX_BYTES (1ull << 30)

struct msd_dataset {
    int n;             // images
    int channels, res; // every image is (channels, res, res)
    uint8_t *pixels;   // pixels: (n, channels, res, res), 0..255
    uint8_t *labels;   // labels: (n), class 0..9; NULL for PNG folders
    char source[512];  // what was opened ("Fashion-MNIST train, /usr/share/..."), for messages and logs
};

// Open the data set named by spec (see above). 0, or -1 with msd_set_error; *d is zeroed on failure.
int msd_data_open(struct msd_dataset *d, const char *spec);
// A data set of n random images of (channels, res, res) without labels, for tests and benchmarks:
// pixel i of the whole set is msd_rng_u32(seed, MSD_STREAM_TEST, i) & 255. 0, or -1 with a message
// (out of memory); *d is zeroed on failure and freed by msd_data_free.
int msd_data_random(struct msd_dataset *d, int n, int channels, int res, uint64_t seed);
// Free what msd_data_open allocated and zero *d (harmless on a zeroed or already freed *d).
void msd_data_free(struct msd_dataset *d);

// A training batch: out: (B, C, R, R) floats in [-1, 1] on the host.
// Image j of batch `step` is index msd_rng_u32(seed, MSD_STREAM_DATA, step * B + j) % n, drawn with
// replacement: a pure function of (seed, step, j), so a resumed run draws the same batches. With xflip,
// image j is mirrored left-right when msd_rng_u32(seed, MSD_STREAM_XFLIP, step * B + j) & 1.
void msd_data_batch(const struct msd_dataset *d, float *out, int B, uint64_t seed, uint64_t step,
                    bool xflip);

// Images [first, first + count) in order, out: (count, C, R, R) in [-1, 1] (held-out evaluation).
void msd_data_images(const struct msd_dataset *d, float *out, int first, int count);

#endif
