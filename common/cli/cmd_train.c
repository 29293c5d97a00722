// cmd_train.c: `msdiff train`: flags to a model, a data set, training options and a run folder.
// The loop itself is common/cli/run.c; one step is common/model/train.c.
#include <errno.h>
#include <float.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "commands.h"
#include "common/model/config.h"
#include "common/io/data.h"
#include "common/core/error.h"
#include "run.h"
#include "common/model/train.h"
#include "common/core/util.h"

const char HELP_TRAIN[] =
    "usage: msdiff train --out RUN_DIR --steps N [--preset NAME] [--data SPEC] [--batch B] [flags]\n"
    "       msdiff train --out RUN_DIR --resume [--steps N]\n"
    "\n"
    "Train a diffusion model with EDM's (or VP's) loss. A multistage preset trains its shared encoder on\n"
    "every batch and one decoder per batch, the decoder of the batch's noise level. The run folder gets\n"
    "run.json, log.csv, state.safetensors (for --resume) and ema.safetensors (for msdiff sample), all\n"
    "written atomically: a run killed at any point resumes. Ctrl-C (SIGINT) or SIGTERM stops after the\n"
    "current step and saves; --resume continues exactly (the same weights, bit for bit, as an\n"
    "uninterrupted run on the same backend). run.json keeps the step target and the save intervals,\n"
    "which --resume uses unless --steps, --ckpt-every or --snapshot-every is given again (and kept).\n"
    "\n"
    "flags:\n"
    "  --out DIR             the run folder (required)\n"
    "  --steps N             train until N steps are done (required for a new run)\n"
    "  --preset NAME         the network (default mini-ms; listed below)\n"
    "  --data SPEC           fmnist (default), fmnist:test, fmnist:DIR, cifar10:DIR, or a folder of PNGs\n"
    "  --batch B             images per step (default 64)\n"
    "  --resume              continue the run in --out from its state.safetensors\n"
    "  --decoders D0,...     decoder widths per stage, 4..1024 (sets the number of stages)\n"
    "  --boundaries S1,...   sigma boundaries between stages, increasing (one fewer than the stages)\n"
    "  --separate            one whole network per stage (the paper's 'separate' baseline)\n"
    "  --policy P            lognormal (EDM: stages in proportion to the loss's sigma law; default) or\n"
    "                        uniform (score_sde: every stage equally often)\n"
    "  --loss L              edm (default) or vp (EDM's VP loss and preconditioning)\n"
    "  --seed S              seed of every random draw (default 0)\n"
    "  --backend B           ref, fast or cuda (default: the fastest available)\n"
    "  --lr X                Adam's learning rate (default 1e-3)\n"
    "  --lr-rampup IMAGES    images over which lr ramps up from 0 (default 200000; EDM's 10M is sized\n"
    "                        for runs of 200M images)\n"
    "  --ema-halflife IMAGES EMA half-life (default 500000, ramped as 0.05 x images seen)\n"
    "  --clip X              clip the gradient norm at X (default 0: off, as EDM)\n"
    "  --dropout P           dropout probability (default: the preset's)\n"
    "  --xflip               mirror training images at random\n"
    "  --ckpt-every N        save state and EMA every N steps (default: a tenth of the target, at most\n"
    "                        1000; an interval given is kept by a resume)\n"
    "  --snapshot-every N    also keep ema-step<N>.safetensors every N steps (default 0: none; a resume\n"
    "                        keeps the run's)\n"
    "  --log-seconds S       progress line at least every S seconds (default 5)\n"
    "  --quiet               no progress lines (log.csv is still written)\n"
    "\n"
    "exit status: 0 the target step was reached (\"done: ...\"), 1 a failure, 2 a bad command line,\n"
    "130 or 143 stopped by SIGINT or SIGTERM after saving (\"interrupted at step N ...\" on stderr)\n"
    "\n"
    "examples:\n"
    "  msdiff train --preset mini-ms --steps 2000 --batch 64 --out runs/mini-ms\n"
    "  msdiff train --out runs/mini-ms --resume --steps 4000\n"
    "  msdiff train --preset mini --data cifar10:/data/cifar --steps 100 --out runs/c --loss vp\n";

// --ckpt-every's default: a tenth of the run, from 1 to 1000 steps.
static long default_ckpt_every(long target) { return target / 10 < 1 ? 1 : target / 10 > 1000 ? 1000 : target / 10; }

static int parse_policy(const char *s, enum msd_policy *p) {
    if (!strcmp(s, "lognormal")) *p = MSD_POLICY_LOGNORMAL;
    else if (!strcmp(s, "uniform")) *p = MSD_POLICY_UNIFORM;
    else return cli_error("train", "--policy: expected lognormal or uniform, got '%s'", s);
    return 0;
}

int cmd_train(int argc, char **argv) {
    const char *out = NULL, *preset = "mini-ms", *data = NULL, *policy = NULL, *loss = NULL, *backend = NULL;
    int batch = 64;
    int steps = 0, ckpt_every = 0, snapshot_every = 0;
    uint64_t seed = 0;
    bool resume = false, separate = false, xflip = false, quiet = false;
    double lr = 1e-3, lr_rampup = 200e3, ema_halflife = 500e3, clip = 0, dropout = -1, log_seconds = 5;
    struct cli_ints decoders = {0};
    struct cli_doubles bounds = {0};
    struct cli_opt o[] = {
        {.flag = "--out", .type = CLI_STR, .dst = &out, .expect = "a run folder", .required = true},
        {.flag = "--steps", .type = CLI_INT, .dst = &steps, .expect = "a step count >= 1", .lo = 1, .hi = 1000000000},
        {.flag = "--preset", .type = CLI_STR, .dst = &preset, .expect = "a preset name"},
        {.flag = "--data", .type = CLI_STR, .dst = &data, .expect = "a data spec"},
        {.flag = "--batch", .type = CLI_INT, .dst = &batch, .expect = "a batch size 1..65536", .lo = 1,
         .hi = MSD_MAX_BATCH},
        {.flag = "--resume", .type = CLI_SWITCH, .dst = &resume},
        {.flag = "--decoders", .type = CLI_INTS, .dst = &decoders, .expect = "decoder widths", .lo = 4,
         .hi = MSD_MAX_WIDTH, .max = MSD_MAX_STAGES},
        {.flag = "--boundaries", .type = CLI_DOUBLES, .dst = &bounds, .expect = "sigma boundaries",
         .max = MSD_MAX_STAGES - 1},
        {.flag = "--separate", .type = CLI_SWITCH, .dst = &separate},
        {.flag = "--policy", .type = CLI_STR, .dst = &policy, .expect = "lognormal or uniform"},
        {.flag = "--loss", .type = CLI_STR, .dst = &loss, .expect = "edm or vp"},
        {.flag = "--seed", .type = CLI_U64, .dst = &seed, .expect = "a non-negative integer"},
        {.flag = "--backend", .type = CLI_STR, .dst = &backend, .expect = "ref, fast or cuda"},
        {.flag = "--lr", .type = CLI_DOUBLE, .dst = &lr, .expect = "a learning rate > 0"},
        {.flag = "--lr-rampup", .type = CLI_DOUBLE, .dst = &lr_rampup, .expect = "an image count >= 0"},
        {.flag = "--ema-halflife", .type = CLI_DOUBLE, .dst = &ema_halflife, .expect = "an image count > 0"},
        {.flag = "--clip", .type = CLI_DOUBLE, .dst = &clip, .expect = "a norm >= 0"},
        {.flag = "--dropout", .type = CLI_DOUBLE, .dst = &dropout, .expect = "a probability in [0, 1)"},
        {.flag = "--xflip", .type = CLI_SWITCH, .dst = &xflip},
        {.flag = "--ckpt-every", .type = CLI_INT, .dst = &ckpt_every, .expect = "a step count >= 1", .lo = 1,
         .hi = 1000000000},
        {.flag = "--snapshot-every", .type = CLI_INT, .dst = &snapshot_every, .expect = "a step count >= 0",
         .lo = 0, .hi = 1000000000},
        {.flag = "--log-seconds", .type = CLI_DOUBLE, .dst = &log_seconds, .expect = "seconds > 0"},
        {.flag = "--quiet", .type = CLI_SWITCH, .dst = &quiet},
    };
    bool done;
    int rc = cmd_parse("train", argc, argv, o, COUNT(o), &done);
    if (done) return rc;
    const int n = COUNT(o);
    if (!(lr > 0) || !(ema_halflife > 0) || !(clip >= 0) || !(log_seconds > 0) || !(lr_rampup >= 0) ||
        !isfinite(lr) || !isfinite(ema_halflife) || !isfinite(clip) || !isfinite(lr_rampup) || !isfinite(log_seconds))
        return cli_error("train", "--lr, --ema-halflife and --log-seconds must be finite and > 0, --clip and "
                                  "--lr-rampup finite and >= 0");
    if (cli_given(o, n, "--dropout") && !(dropout >= 0 && dropout < 1))
        return cli_error("train", "--dropout: expected a probability in [0, 1), got %g", dropout);
    const struct msd_backend *be = cmd_backend("train", backend);
    if (!be) return CLI_USAGE;

    struct msd_model m;
    struct msd_train_state st;
    struct msd_train_opts to;
    char *data_spec = NULL;
    long target = steps, ckpt = ckpt_every, snap = snapshot_every;
    if (resume) {
        // everything but the length of the run and how it is watched comes from the run folder
        const char *fixed[] = {"--preset", "--data", "--batch", "--decoders", "--boundaries", "--separate",
                               "--policy", "--loss", "--seed", "--lr", "--lr-rampup", "--ema-halflife",
                               "--clip", "--dropout", "--xflip"};
        for (int i = 0; i < COUNT(fixed); i++)
            if (cli_given(o, n, fixed[i]))
                return cli_error("train", "%s cannot change when resuming: the run folder fixes it", fixed[i]);
        struct msd_run_record rec;
        if (msd_run_read(out, &rec) < 0) return cmd_fail();
        data_spec = rec.data;
        // the recorded target and intervals unless given again (a run that was not given --ckpt-every, or
        // a run.json of an older version, has no ckpt_every: it reads as 0, and the default applies)
        if (!cli_given(o, n, "--steps")) target = rec.steps;
        if (!cli_given(o, n, "--ckpt-every")) ckpt = rec.ckpt_every;
        if (!cli_given(o, n, "--snapshot-every")) snap = rec.snapshot_every;
        char path[4096];
        snprintf(path, sizeof path, "%s/state.safetensors", out);
        if (access(path, F_OK) != 0 && errno == ENOENT) { // run.json without a state: stopped before a save
            free(data_spec);
            msd_set_error("the run in %s has no state.safetensors yet: it stopped before its first checkpoint; "
                          "start it again with the command that created it (without --resume)", out);
            return cmd_fail();
        }
        if (msd_train_load(path, &m, &st, &to, be) < 0) {
            free(data_spec);
            return cmd_fail();
        }
        if (target <= st.step) {
            const long at = st.step;
            msd_train_state_free(&st, &m);
            msd_model_free(&m);
            free(data_spec);
            return cli_error("train", "the run in %s is already at step %ld, the target is %ld; give a larger "
                             "--steps to continue it", out, at, target);
        }
        // recorded: what was chosen, never the default (which follows the target when a resume extends it)
        const struct msd_run_opts now = {.steps = target, .ckpt_every = ckpt, .snapshot_every = snap};
        if ((target != rec.steps || ckpt != rec.ckpt_every || snap != rec.snapshot_every) &&
            msd_run_update(out, &now) < 0) {
            msd_train_state_free(&st, &m);
            msd_model_free(&m);
            free(data_spec);
            return cmd_fail();
        }
        printf("resuming %s at step %ld (%.0f images seen), training to step %ld on backend %s\n", out, st.step,
               st.images, target, be->name);
    } else {
        if (!cli_given(o, n, "--steps"))
            return cli_error("train", "--steps is required for a new run (or add --resume)");
        struct msd_config cfg;
        if (msd_config_preset(&cfg, preset) < 0) return cli_error("train", "--preset: %s", msd_last_error());
        if (decoders.n) {
            if (decoders.n != cfg.n_stages && decoders.n > 1 && !bounds.n)
                return cli_error("train", "--decoders changes the number of stages to %d: give --boundaries too",
                                 decoders.n);
            cfg.n_stages = decoders.n;
            for (int s = 0; s < decoders.n; s++) cfg.dec_channels[s] = decoders.v[s];
        }
        if (bounds.n) {
            if (bounds.n != cfg.n_stages - 1)
                return cli_error("train", "--boundaries: %d values for %d stages, expected %d", bounds.n,
                                 cfg.n_stages, cfg.n_stages - 1);
            for (int s = 0; s < bounds.n; s++) {
                if (!(fabs(bounds.v[s]) <= FLT_MAX))
                    return cli_error("train", "--boundaries: %g is out of range", bounds.v[s]);
                cfg.boundaries[s] = (float)bounds.v[s];
            }
        }
        if (separate) cfg.separate = true;
        if (cli_given(o, n, "--dropout")) cfg.dropout = (float)dropout;
        if (loss && strcmp(loss, "edm") && strcmp(loss, "vp"))
            return cli_error("train", "--loss: expected edm or vp, got '%s'", loss);
        if (loss && !strcmp(loss, "vp")) cfg.precond = MSD_PRECOND_VP;
        if (msd_config_validate(&cfg) < 0) return cli_error("train", "%s", msd_last_error());
        msd_train_defaults(&to);
        to.seed = seed;
        to.batch = batch;
        if (policy && parse_policy(policy, &to.policy)) return CLI_USAGE;
        to.lr = lr;
        to.lr_rampup = lr_rampup;
        to.ema_halflife = ema_halflife;
        to.grad_clip = clip;
        to.xflip = xflip;
        data_spec = xstrdup(data ? data : "fmnist");
        if (msd_model_create(&m, &cfg, be) < 0) {
            free(data_spec);
            return cmd_fail();
        }
        msd_model_init_weights(&m, seed);
        if (msd_train_state_init(&st, &m) < 0) {
            msd_model_free(&m);
            free(data_spec);
            return cmd_fail();
        }
    }
    struct msd_dataset ds;
    rc = msd_data_open(&ds, data_spec);
    if (rc == 0 && (ds.channels != m.cfg.in_channels || ds.res != m.cfg.img_resolution)) {
        rc = msd_set_error("data '%s' has %dx%dx%d images, the network takes %dx%dx%d (choose a preset that "
                           "matches, e.g. mini for 28x28x1, cifar10 for 32x32x3)",
                           data_spec, ds.channels, ds.res, ds.res, m.cfg.in_channels, m.cfg.img_resolution,
                           m.cfg.img_resolution);
        msd_data_free(&ds);
    }
    struct msd_run_opts r = {
        .dir = out,
        .data = data_spec,
        .steps = target,
        .ckpt_every = ckpt,
        .snapshot_every = snap,
        .log_seconds = log_seconds,
        .quiet = quiet,
    };
    // The batch's memory is planned here, before the run folder changes, where it is known whether the
    // batch can change: a new run's is --batch, a resumed run's is fixed by its state.
    if (rc == 0 && msd_model_plan(&m, to.batch, true) < 0) {
        rc = resume ? msd_set_error("%s: the run's batch of %d images is fixed by its state (%s/state.safetensors), "
                                    "so resume on a backend or a machine with more free memory", msd_last_error(),
                                    to.batch, out)
                    : msd_set_error("%s: try a smaller --batch", msd_last_error());
    }
    if (rc == 0 && !resume) {
        rc = msd_run_create(&m, &to, &r); // ckpt_every 0 (not chosen) is recorded as none
        if (rc == 0)
            printf("training %s (%s, %d stage%s) on %s: %ld steps of %d images, backend %s, run folder %s\n",
                   preset, m.cfg.separate ? "separate" : m.cfg.n_stages > 1 ? "multistage" : "unified",
                   m.cfg.n_stages, m.cfg.n_stages > 1 ? "s" : "", ds.source, target, to.batch, be->name, out);
    }
    if (!r.ckpt_every) r.ckpt_every = default_ckpt_every(target); // not chosen: follows this target
    if (rc == 0) rc = msd_run_train(&m, &st, &ds, &to, &r);
    if (rc == 0 && !quiet) printf("done: step %ld, %.0f images; sample with: msdiff sample --model %s/ema.safetensors\n",
                                  st.step, st.images, out);
    if (rc > 0) { // a signal stopped the run, and it is saved: not done, and not a failure either
        fflush(stdout);
        fprintf(stderr, "msdiff train: interrupted at step %ld by %s: state saved in '%s'; continue with --resume\n",
                st.step, rc == SIGINT ? "SIGINT" : "SIGTERM", out);
    }
    msd_data_free(&ds);
    msd_train_state_free(&st, &m);
    msd_model_free(&m);
    free(data_spec);
    // a stop by a signal exits as a shell reports a program that signal killed: 128 + its number
    return rc == 0 ? 0 : rc > 0 ? 128 + rc : cmd_fail();
}
