// train.h: training a (multistage) denoiser: noise-level and stage sampling, one optimisation step,
// the training state and its file, and held-out evaluation.
//
// One step, as EDM's training loop does it (docs/METHOD.md, Preconditioning and losses; Training
// settings):
//   pick the stage and the batch's sigmas (policy below), draw images and noise from the counter RNG,
//   loss forward + backward through the shared part and that stage's decoder (the stage is passed
//   down explicitly, msd_loss(m, stage, ...)), nan_to_num on the
//   gradients, optional clipping, lr = lr_max * min(images_seen / rampup, 1), Adam on the groups that
//   received gradients (shared, and the stage's decoder; each keeps its own step count as PyTorch
//   does for a parameter without gradient), then EMA with beta = 0.5^(B / min(halflife, ratio *
//   images_seen)). images_seen counts the images before the step, as in EDM.
// Every random draw is a pure function of (seed, step, ...), so N steps in one run and N/2 + N/2
// with a resume give the same weights bit for bit on the same backend.
#ifndef MSD_TRAIN_H
#define MSD_TRAIN_H

#include <stdbool.h>
#include <stdint.h>

#include "common/io/data.h"
#include "model.h"

enum msd_policy {
    MSD_POLICY_LOGNORMAL, // EDM's: the stage of one draw from the loss's sigma law, then the whole
                          // batch from that law restricted to the stage (rejection sampling)
    MSD_POLICY_UNIFORM,   // score_sde's: a stage uniformly, then sigmas from the law restricted to it
};

// The largest batch: the range of msdiff train --batch, and what a state file may hold.
#define MSD_MAX_BATCH 65536

struct msd_train_opts {
    uint64_t seed;
    int batch;
    enum msd_policy policy;
    double P_mean, P_std;        // EDM loss: ln sigma ~ N(P_mean, P_std^2)  (-1.2, 1.2)
    double lr, beta1, beta2, eps; // Adam (1e-3, 0.9, 0.999, 1e-8)
    double lr_rampup;            // images over which lr ramps up from 0 (EDM: 10M)
    double ema_halflife;         // images (EDM: 500k)
    double ema_rampup;           // ratio (EDM: 0.05); 0 turns the ramp off
    double grad_clip;            // gradient-norm clipping; 0 = none (EDM)
    bool xflip;                  // mirror images at random
};
void msd_train_defaults(struct msd_train_opts *o);

// The training state besides the weights: step counters and the optimiser's and EMA's buffers.
struct msd_train_state {
    long step;                        // steps done
    double images;                    // images seen
    long adam_steps[1 + MSD_MAX_STAGES]; // per group: [0] shared, [1 + s] stage s
    float *adam_m, *adam_v, *ema;     // backend memory, m->n_floats each
    // working buffers of msd_train_step (not saved)
    float *scalar;                    // (1) backend: reductions
    float *y, *n;                     // (B, C, R, R) backend: clean images and unit noise
    float *host;                      // (B, C, R, R) host staging
    int B;
};
// Allocate and zero the state for m; EMA starts equal to the weights. -1 with a message on no memory.
int msd_train_state_init(struct msd_train_state *st, struct msd_model *m);
void msd_train_state_free(struct msd_train_state *st, struct msd_model *m);

// The stage and the sigmas (host, B of them) of step `step`. Pure function of its arguments.
// -1 with a message if rejection sampling cannot find a sigma in the stage (a stage of ~zero mass).
int msd_train_pick(const struct msd_config *c, const struct msd_train_opts *o, long step, double *sigmas);

// What one step did.
struct msd_step_info {
    int stage;
    double loss;      // the batch's loss (summed over pixels, averaged over the batch)
    double grad_norm; // of the gradients that were applied (after nan_to_num, before clipping)
    double lr;
};
// One training step on batch data of `data` (the model must be planned for o->batch with
// gradients). -1 with a message (non-finite loss, a bad stage).
int msd_train_step(struct msd_model *m, struct msd_train_state *st, const struct msd_dataset *data,
                   const struct msd_train_opts *o, struct msd_step_info *info);

// Held-out loss: images [0, count) of data, each at every sigma of sigmas[0..n_sigmas), fixed noise
// (seed 0), no dropout, weights w (m->w, or the EMA). losses[k] receives the mean loss at sigma k.
// The model must be planned (any batch size, gradients not needed); images go in chunks of it.
int msd_eval_loss(struct msd_model *m, const float *w, const struct msd_dataset *data, int count,
                  const double *sigmas, int n_sigmas, double *losses);

// The training state file: weights, Adam moments, EMA, counters, config and options, written
// atomically; loading checks everything against the model it is loaded into. Saving refuses a state
// with a NaN or an infinity in any of the four buffers (the message names the buffer, the element
// and its parameter) before any file is touched, so a run gone bad in memory never replaces a good
// state file.
int msd_train_save(const char *path, const struct msd_model *m, const struct msd_train_state *st,
                   const struct msd_train_opts *o);
// The same check alone: 0 when the weights, both moments and the EMA are finite, else -1 with the
// message msd_train_save would give for a state file at path. A run calls it before it writes any of
// its files (the EMA checkpoint goes first), so that nothing of a bad step is saved.
int msd_train_check_finite(const struct msd_model *m, const struct msd_train_state *st, const char *path);
// Load a state file written by msd_train_save: creates *m (on backend be) and *st, fills *o. The
// config builds the parameter table first; the four buffers are allocated only once the file holds
// each with that many elements. Every value must be finite and the batch within 1..MSD_MAX_BATCH.
// -1 with a message naming the file; *m and *st are then empty.
int msd_train_load(const char *path, struct msd_model *m, struct msd_train_state *st,
                   struct msd_train_opts *o, const struct msd_backend *be);

#endif
