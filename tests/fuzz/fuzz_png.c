// fuzz_png.c: reading a PNG image through libpng (common/io/png.c): gray, RGB, alpha, palette and
// 16-bit images, and everything a corrupt file can claim.
#include <stdlib.h>

#include "common/io/png.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    uint8_t *pixels = NULL;
    int C, H, W;
    if (msd_png_read(fuzz_write("i.png", data, n), &pixels, &C, &H, &W) == 0) free(pixels);
    return 0;
}
