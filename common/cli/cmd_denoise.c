// cmd_denoise.c: `msdiff denoise`: a checkpoint's denoiser D(x; sigma) applied to the images of a
// safetensors file, all at one noise level, in batches of --batch images; the result is written as a
// safetensors file of the same shape. The denoiser is msd_denoise_forward (common/model/precond.c).
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/core/backend.h"
#include "common/core/error.h"
#include "common/core/util.h"
#include "common/io/checkpoint.h"
#include "common/io/safetensors.h"
#include "common/model/config.h"
#include "common/model/model.h"
#include "common/model/precond.h"
#include "commands.h"
#include "run.h"

const char HELP_DENOISE[] =
    "usage: msdiff denoise --model FILE|RUN_DIR --input X.safetensors --sigma S --out Y.safetensors\n"
    "                      [--backend B] [--batch N]\n"
    "\n"
    "Apply a checkpoint's denoiser D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) to noisy images,\n"
    "all at the noise level sigma (the stage whose range holds sigma does the work; dropout off).\n"
    "The input file must hold a tensor \"x\" (F32, F16 or BF16) of shape (N, C, R, R), with C and R\n"
    "the model's image channels and resolution, and only finite values. The output holds \"D\" (F32)\n"
    "of the same shape, with metadata \"sigma\" (the value) and \"model\" (the checkpoint path read).\n"
    "\n"
    "flags:\n"
    "  --model FILE|DIR  the checkpoint, or a run folder of msdiff train (its ema.safetensors)\n"
    "                    (required)\n"
    "  --input FILE      the safetensors file holding \"x\" (required)\n"
    "  --sigma S         the noise level, a finite number > 0 (required)\n"
    "  --out FILE        the safetensors file to write (required): a new name or a regular file in an\n"
    "                    existing folder; written atomically\n"
    "  --backend B       ref, fast or cuda (default: the fastest this build and CPU have)\n"
    "  --batch N         images per forward pass, a positive integer (default: all at once)\n"
    "\n"
    "example:\n"
    "  msdiff denoise --model mini.safetensors --input noisy.safetensors --sigma 2.5 --out D.safetensors\n";

// Run the denoiser over x in chunks of at most B images; D receives the results. 0 or -1.
static int denoise_chunks(struct msd_model *m, float *D, const float *x, int N, int B, double sigma) {
    const struct msd_backend *be = m->be;
    const size_t M = (size_t)m->cfg.in_channels * m->cfg.img_resolution * m->cfg.img_resolution;
    float *dx = be->alloc((size_t)B * M), *dD = be->alloc((size_t)B * M);
    double *sig = xmalloc((size_t)B * sizeof *sig);
    int rc = (dx && dD) ? 0 : msd_set_error("cannot allocate %.1f MB on backend %s for a batch of %d images",
                                             2.0 * B * M * 4 / 1e6, be->name, B);
    for (int i = 0; i < B; i++) sig[i] = sigma;
    const struct msd_forward_opts opts = {.train = false, .dropout_seed = 0};
    const int stage = msd_config_stage_of(&m->cfg, sigma); // every image is at sigma
    for (int start = 0; rc == 0 && start < N; start += B) {
        const int n = N - start < B ? N - start : B;
        if ((rc = cmd_plan_batch(m, n))) break; // re-plans only when n changes
        be->upload(dx, x + (size_t)start * M, (size_t)n * M);
        if ((rc = msd_denoise_forward(m, stage, dD, dx, sig, &opts))) break;
        be->download(D + (size_t)start * M, dD, (size_t)n * M);
    }
    if (dx) be->release(dx);
    if (dD) be->release(dD);
    free(sig);
    return rc;
}

int cmd_denoise(int argc, char **argv) {
    const char *model = NULL, *input = NULL, *out = NULL, *backend = NULL;
    double sigma = 0;
    int batch = 0;
    bool done;
    struct cli_opt o[] = {
        {.flag = "--model", .type = CLI_STR, .dst = &model, .expect = "a checkpoint or run folder", .required = true},
        {.flag = "--input", .type = CLI_STR, .dst = &input, .expect = "a safetensors file holding \"x\"",
         .required = true},
        {.flag = "--sigma", .type = CLI_DOUBLE, .dst = &sigma, .expect = "a finite noise level > 0",
         .required = true},
        {.flag = "--out", .type = CLI_STR, .dst = &out, .expect = "the safetensors file to write",
         .required = true},
        {.flag = "--backend", .type = CLI_STR, .dst = &backend, .expect = "ref, fast or cuda"},
        {.flag = "--batch", .type = CLI_INT, .dst = &batch, .lo = 1, .hi = INT_MAX,
         .expect = "a positive number of images per pass"},
    };
    int rc = cmd_parse("denoise", argc, argv, o, COUNT(o), &done);
    if (done) return rc;
    if (!(isfinite(sigma) && sigma > 0))
        return cli_error("denoise", "--sigma: expected a finite noise level > 0, got %g", sigma);
    const struct msd_backend *be = cmd_backend("denoise", backend);
    if (!be) return CLI_USAGE;
    if (cmd_check_out_file("--out", out, false) < 0) return cmd_fail();

    // the model: a checkpoint, or a run folder's EMA, named by the file actually read
    char path[4096];
    model = msd_run_model_path(model, path, sizeof path);
    struct msd_model m;
    if (msd_checkpoint_load(&m, model, be)) return cmd_fail();
    const struct msd_config *c = &m.cfg;
    struct msd_st_file f;
    if (msd_st_read_as(&f, input, "input")) {
        msd_model_free(&m);
        return cmd_fail();
    }
    // x must be (N, C, R, R) with the model's C and R
    const struct msd_st_tensor *t = msd_st_find(&f, "x");
    const int C = c->in_channels, R = c->img_resolution;
    if (!t) msd_set_error("input '%s' has no tensor \"x\" (expected \"x\" of shape [N, %d, %d, %d] for model '%s')",
                          input, C, R, R, model);
    else if (t->ndim != 4 || t->shape[1] != C || t->shape[2] != R || t->shape[3] != R || t->shape[0] < 1 ||
             t->shape[0] > INT_MAX) {
        char got[8 + MSD_ST_MAX_DIMS * 24] = "["; // room for every dimension at 20 digits
        for (int d = 0; d < t->ndim; d++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? ", " : "", (long long)t->shape[d]);
        snprintf(got + strlen(got), sizeof got - strlen(got), "]");
        msd_set_error("input '%s': tensor \"x\" has shape %s, expected [N, %d, %d, %d] with N >= 1 (N images of "
                      "%d channel%s, %dx%d, as model '%s' takes)", input, got, C, R, R, C, C == 1 ? "" : "s", R, R,
                      model);
        t = NULL;
    }
    if (!t) {
        msd_st_free(&f);
        msd_model_free(&m);
        return cmd_fail();
    }
    const int N = (int)t->shape[0];
    const int64_t shape[4] = {N, C, R, R};
    const size_t total = (size_t)N * C * R * R;
    float *x = xmalloc(total * sizeof(float)), *D = xmalloc(total * sizeof(float));
    rc = msd_st_get_f32(&f, "x", 4, shape, x);
    for (size_t i = 0; rc == 0 && i < total; i++) // a NaN in x would only come back as a NaN in D
        if (!isfinite(x[i]))
            rc = msd_set_error("input '%s': tensor \"x\" element %zu is %g; expected finite values", input, i,
                               (double)x[i]);
    msd_st_free(&f);
    const int B = batch > 0 && batch < N ? batch : N;
    if (rc == 0) rc = denoise_chunks(&m, D, x, N, B, sigma);
    const int stage = msd_config_stage_of(c, sigma), n_stages = c->n_stages;
    msd_model_free(&m);
    if (rc == 0) {
        char sigma_text[CLI_NUM_BUF];
        cli_fmt_real(sigma, false, sigma_text);
        const struct msd_st_entry e = {.name = "D", .ndim = 4, .shape = {N, C, R, R}, .data = D};
        const char *keys[] = {"sigma", "model"}, *values[] = {sigma_text, model};
        rc = msd_st_write(out, &e, 1, keys, values, 2);
        if (rc == 0)
            printf("wrote %s: D of shape [%d, %d, %d, %d] at sigma %s (stage %d of %d), model %s, backend %s, "
                   "batch %d\n", out, N, C, R, R, sigma_text, stage, n_stages, model, be->name, B);
    }
    free(x);
    free(D);
    return rc ? cmd_fail() : 0;
}
