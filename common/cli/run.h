// run.h: a training run in a folder: the loop around msd_train_step with progress lines, a CSV log,
// periodic checkpoints, resume and a clean stop on SIGINT.
//
// The run folder holds:
//   run.json            what the run is: model config, training options, data spec, step target
//   log.csv             one row per progress line: step, images, losses (overall and per stage,
//                       means since the previous row), lr, gradient norm, images/s, seconds
//   state.safetensors   the training state (weights, Adam moments, EMA, counters): --resume reads it
//   ema.safetensors     the EMA weights as a model checkpoint with EDM names: what `sample` uses
//   ema-step<step>.safetensors  snapshots, when asked for (their metadata says kimg)
// Every file is written atomically, so a crash or a kill never leaves a half-written one.
#ifndef MSD_RUN_H
#define MSD_RUN_H

#include "common/io/data.h"
#include "common/model/model.h"
#include "common/model/train.h"

struct msd_run_opts {
    const char *dir;      // the run folder (created when missing)
    const char *data;     // the data spec, recorded in run.json
    long steps;           // the step count at which the run ends
    long ckpt_every;      // steps between checkpoints (state + EMA); the end always saves
    long snapshot_every;  // steps between kept EMA snapshots; 0 = none
    double log_seconds;   // a progress line at least this often (and at the end)
    bool quiet;           // no progress lines on stdout (the CSV is still written)
};

// Train until r->steps (continuing from st->step), saving as described. Returns 0 when the target
// is reached or SIGINT asked to stop (after saving), -1 with a message otherwise (after saving the
// state from before the failing step as state-failed.safetensors, leaving the checkpoints alone).
int msd_run_train(struct msd_model *m, struct msd_train_state *st, const struct msd_dataset *data,
                  const struct msd_train_opts *o, const struct msd_run_opts *r);

// Write run.json for a new run (fails if the folder already holds a run: use --resume).
int msd_run_create(const struct msd_model *m, const struct msd_train_opts *o, const struct msd_run_opts *r);

// The checkpoint that --model names: a run folder means its ema.safetensors, anything else is the
// path itself. Writes it into buf (size bytes) and returns buf.
const char *msd_run_model_path(const char *model, char *buf, size_t size);

// Read the data spec and step target recorded in DIR/run.json (for --resume without them).
// *data is malloc'd. -1 with a message.
int msd_run_read(const char *dir, char **data, long *steps);
// Record a new step target in DIR/run.json (a resume that trains further).
int msd_run_set_steps(const char *dir, long steps);

#endif
