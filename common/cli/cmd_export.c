// cmd_export.c: `msdiff export`: a checkpoint (or a run folder's EMA weights) written again with the
// same tensor names and config, in F32 or, with --fp16, in IEEE half precision, with a line saying how
// far the rounding moved the weights. The conversion is common/io/safetensors.c's.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>

#include "common/core/backend.h"
#include "common/io/checkpoint.h"
#include "common/io/safetensors.h"
#include "common/model/model.h"
#include "commands.h"
#include "run.h"

const char HELP_EXPORT[] =
    "usage: msdiff export --model FILE|RUN_DIR --out FILE [--fp16]\n"
    "\n"
    "Write a checkpoint's weights (a run folder means its ema.safetensors) as a new checkpoint with the\n"
    "same tensor names and config, in float32 or, with --fp16, in IEEE half precision: half the size,\n"
    "each weight rounded to the nearest half (ties to even). Loading converts back to float32. Prints\n"
    "how far the rounding moved the weights; a weight that F16 cannot hold (NaN, Inf, or beyond 65504\n"
    "once rounded) is an error and nothing is written.\n"
    "\n"
    "flags:\n"
    "  --model FILE|DIR  the checkpoint, or a run folder (required)\n"
    "  --out FILE        the checkpoint to write (required): a new name or a regular file in an\n"
    "                    existing folder; written atomically\n"
    "  --fp16            store F16 instead of F32\n"
    "\n"
    "example:\n"
    "  msdiff export --model runs/mini-ms --out mini-ms-fp16.safetensors --fp16\n";

int cmd_export(int argc, char **argv) {
    bool fp16 = false, done;
    const char *model = NULL, *out = NULL;
    struct cli_opt o[] = {
        {.flag = "--model", .type = CLI_STR, .dst = &model, .expect = "a checkpoint file or run folder",
         .required = true},
        {.flag = "--out", .type = CLI_STR, .dst = &out, .expect = "the checkpoint file to write", .required = true},
        {.flag = "--fp16", .type = CLI_SWITCH, .dst = &fp16},
    };
    int rc = cmd_parse("export", argc, argv, o, COUNT(o), &done);
    if (done) return rc;
    if (cmd_check_out_file("--out", out, false) < 0) return cmd_fail();
    char path[4096];
    struct stat sb;
    msd_run_model_path(model, path, sizeof path);
    struct msd_model m;
    if (msd_checkpoint_load(&m, path, &msd_backend_ref)) return cmd_fail();
    const char *keys[] = {"source"}, *values[] = {path};
    rc = msd_checkpoint_save_as(&m, out, fp16, keys, values, 1);
    if (rc == 0) {
        // What the rounding did: the largest relative change of a weight in F16's normal range, and how
        // many weights fell below it (stored as subnormals with an absolute step of 2^-24, or as 0).
        double worst = 0;
        long small = 0, zeroed = 0;
        const float *w = m.w; // the ref backend's memory is host memory
        for (size_t i = 0; fp16 && i < m.n_floats; i++) {
            uint16_t b;
            (void)msd_f32_to_f16(w[i], &b); // cannot fail: the write succeeded
            const float a = fabsf(w[i]);
            if (a >= 0x1p-14f) {
                double rel = fabs((double)fabsf(msd_f16_to_f32(b)) - a) / a;
                if (rel > worst) worst = rel;
            } else if (a > 0) {
                small++;
                zeroed += (b & 0x7fff) == 0;
            }
        }
        double mb = stat(out, &sb) == 0 ? sb.st_size / 1e6 : 0;
        char count[CLI_NUM_BUF];
        printf("wrote %s: %s parameters of %s as %s, %.2f MB\n", out, cli_fmt_count((uint64_t)m.n_floats, count),
               path, fp16 ? "F16" : "F32", mb);
        if (fp16)
            printf("rounding: largest relative change %.3g (weights >= 2^-14); %ld weights below 2^-14 kept "
                   "to 2^-24 steps, %ld of them now 0\n", worst, small, zeroed);
    }
    msd_model_free(&m);
    return rc ? cmd_fail() : 0;
}
