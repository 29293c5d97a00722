// png.h: PNG files through libpng: reading 8-bit gray or RGB images, writing single images and grids.
//
// Images cross this interface in msdiff's layout, planar (C, H, W), C = 1 (gray) or 3 (RGB). Floats
// are in [-1, 1]; a byte p stands for p / 127.5 - 1, and a float x is written as the byte
// floor((x + 1) * 127.5 + 0.5) after clamping x to [-1, 1] (NaN is written as -1, black).
// Writes are atomic: "<path>.tmp", fsync, rename, so a crash never leaves a half-written PNG.
// Reading converts whatever the file holds to 8-bit gray or RGB: palette -> RGB, 1/2/4-bit gray -> 8-bit,
// 16-bit -> 8-bit (scaled, rounded), alpha and tRNS transparency dropped (not composited), gamma and
// colour-space chunks ignored (the stored values are taken as they are).
// Does not hold: data set logic (common/io/data.h reads folders of PNGs through msd_png_read).
#ifndef MSD_PNG_H
#define MSD_PNG_H

#include <stdint.h>

// Largest width or height read or written, and the largest decoded image in bytes. A larger header
// is taken for a corrupt file rather than an attempt to allocate gigabytes.
#define MSD_PNG_MAX_SIDE 16384
#define MSD_PNG_MAX_BYTES (1u << 28)

// The padding between and around the images of a grid, in [-1, 1]: 0 is mid-gray (byte 128), which
// stands apart from both black-background (Fashion-MNIST) and white-background images.
#define MSD_PNG_GRID_PAD_VALUE 0.0f

// Read path as 8-bit gray (*C = 1) or RGB (*C = 3) into *pixels, (C, H, W), malloc'd (the caller
// frees it). 0, or -1 with a message that names the file (*pixels NULL and *C, *H, *W 0).
int msd_png_read(const char *path, uint8_t **pixels, int *C, int *H, int *W);

// Write img: (C, H, W) in [-1, 1] as an 8-bit gray (C = 1) or RGB (C = 3) PNG, atomically.
// 0, or -1 with a message naming the file (the target is then left as it was and no .tmp remains).
int msd_png_write(const char *path, const float *img, int C, int H, int W);

// Write a grid of the n images imgs: (n, C, R, R) in rows of `cols` (the last row may be short; its
// empty cells are padding), with `pad` pixels of MSD_PNG_GRID_PAD_VALUE between the images and around
// the grid: width cols * R + (cols + 1) * pad, height rows * R + (rows + 1) * pad, rows = ceil(n / cols).
int msd_png_grid(const char *path, const float *imgs, int n, int C, int R, int cols, int pad);

#endif
