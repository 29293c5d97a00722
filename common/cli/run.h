// run.h: a training run in a folder: the loop around msd_train_step with progress lines, a CSV log,
// periodic checkpoints, resume and a clean stop on SIGINT or SIGTERM.
//
// The run folder holds:
//   run.json            what the run is: model config, training options, data spec, step target, and
//                       the save intervals ckpt_every and snapshot_every (a resume keeps them)
//   log.csv             its header, then one row per progress line: step, images, losses (overall and
//                       per stage, means since the previous row), lr, gradient norm, images/s, seconds
//   state.safetensors   the training state (weights, Adam moments, EMA, counters): --resume reads it
//   ema.safetensors     the EMA weights as a model checkpoint with EDM names: what `sample` uses
//   ema-step<step>.safetensors  snapshots, when asked for (their metadata says kimg)
// Every file is written atomically (common/io/atomic.h), so a crash or a kill never leaves a
// half-written one. log.csv is created with its header, durably, before the first step, and gets one
// whole row at a time. A save writes the EMA files before the state, so a state at step s means every
// file of step s is there. A kill at any point leaves a folder that resumes bit for bit (one killed
// before its first save has no state: the same new-run command starts it again): the resume removes
// the temporary files (*.tmp) a killed save left, and rewrites log.csv as its header and the rows up
// to the state's step.
#ifndef MSD_RUN_H
#define MSD_RUN_H

#include "common/io/data.h"
#include "common/model/model.h"
#include "common/model/train.h"

struct msd_run_opts {
    const char *dir;      // the run folder (created when missing)
    const char *data;     // the data spec, recorded in run.json
    long steps;           // the step count at which the run ends
    long ckpt_every;      // steps between checkpoints (state + EMA); the end always saves; 0 = only the end
    long snapshot_every;  // steps between kept EMA snapshots; 0 = none
    double log_seconds;   // a progress line at least this often (and at the end)
    bool quiet;           // no progress lines on stdout (the CSV is still written)
};

// Train until r->steps (continuing from st->step), saving as described. SIGINT and SIGTERM stop the
// run after the current step and a save. Returns
//   0                  the target was reached (also when a signal came during the last step)
//   SIGINT or SIGTERM  that signal stopped the run early, and the state it stopped at is saved
//   -1                 a failure, with a message (after saving the state from before a failing step
//                      as state-failed.safetensors, leaving the checkpoints alone)
// msdiff train exits with 128 + the signal (130, 143), as a shell does for a program the signal killed.
int msd_run_train(struct msd_model *m, struct msd_train_state *st, const struct msd_dataset *data,
                  const struct msd_train_opts *o, const struct msd_run_opts *r);

// Write run.json (with r's step target and save intervals) and log.csv (its header) for a new run.
// Fails if the folder already holds a run: use --resume.
int msd_run_create(const struct msd_model *m, const struct msd_train_opts *o, const struct msd_run_opts *r);

// The checkpoint that --model names: a run folder means its ema.safetensors, anything else is the
// path itself. Writes it into buf (size bytes) and returns buf.
const char *msd_run_model_path(const char *model, char *buf, size_t size);

// What DIR/run.json records for --resume. Every number is checked to be a whole number in the range
// of its msdiff train flag before it is converted.
struct msd_run_record {
    char *data;          // the data spec, malloc'd (free it)
    long steps;          // the step target, 1..10^9
    long ckpt_every;     // 1..10^9; 0 when run.json does not say (a folder of an older version, or a run
                         // created with 0): the caller's default applies
    long snapshot_every; // 0..10^9; 0 (none) when run.json does not say
};
// Read DIR/run.json. -1 with a message naming the file and the field.
int msd_run_read(const char *dir, struct msd_run_record *rec);
// Record r's step target and save intervals in DIR/run.json (a resume that trains further, or saves
// at another interval).
int msd_run_update(const char *dir, const struct msd_run_opts *r);

#endif
