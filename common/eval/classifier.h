// classifier.h: a small convolutional image classifier, built, trained and run with the backend
// ops alone (ref, fast, cuda), so that msdiff trains its own feature network for the Frechet
// distance of `msdiff eval`.
//
// The network, for C x R x R images with R divisible by 4 (defaults: c1 = 32, c2 = 64, FEAT = 128,
// 8 GroupNorm groups, 10 classes; the shipped Fashion-MNIST model is 1 x 28 x 28):
//   conv0  3x3 C  -> c1, GroupNorm, SiLU            (N, c1, R, R)
//   conv1  3x3 c1 -> c1, GroupNorm, SiLU, down2     (N, c1, R/2, R/2)
//   conv2  3x3 c1 -> c2, GroupNorm, SiLU, down2     (N, c2, R/4, R/4)
//   conv3  3x3 c2 -> c2, GroupNorm, SiLU            (N, c2, R/4, R/4)
//   fc     linear over the flattened map, c2 (R/4)^2 -> FEAT, SiLU   -> the features (N, FEAT)
//   head   linear FEAT -> classes                                     -> the logits (N, classes)
// The features are the penultimate activations: what a Frechet distance compares. Inputs are
// images in [-1, 1] as common/io/data.h maps pixels (p / 127.5 - 1), the range the samplers produce.
//
// Memory, as in model.h: one buffer each for parameters, gradients and Adam's two moments, laid out
// by a parameter table (struct msd_param: name, shape, offset, init rule); one activation arena
// planned for a batch size that keeps every layer's output for the backward pass (the net is small:
// about 1 MB per image at 28 x 28).
// The loss is softmax cross-entropy averaged over the batch, computed on the host from the
// downloaded logits (N x classes floats); its gradient goes back up the same way.
//
// Does not hold: the data loop of a training run, the learning-rate schedule, the command line
// (common/cli/cmd_classifier.c), or the Frechet distance itself.
#ifndef MSD_CLASSIFIER_H
#define MSD_CLASSIFIER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/core/backend.h"
#include "common/io/data.h"
#include "common/model/model.h" // struct msd_param, msd_conv, msd_norm, msd_linear: the same parameter table

#define MSD_CLS_CONVS 4 // conv0..conv3
#define MSD_CLS_PARAMS (4 * MSD_CLS_CONVS + 4) // conv and norm weight and bias each, fc and head

struct msd_classifier_config {
    int in_channels, res; // images (in_channels, res, res); res % 4 == 0
    int c1, c2;           // conv widths at R and at R/2, R/4
    int groups;           // GroupNorm groups; divides c1 and c2
    int features;         // FEAT, the width of the penultimate layer
    int classes;          // logits
};
// The defaults above for images of (in_channels, res, res).
void msd_classifier_defaults(struct msd_classifier_config *cfg, int in_channels, int res);
// 0, or -1 with a message that names the field and the accepted range.
int msd_classifier_validate(const struct msd_classifier_config *cfg);
// The config as a JSON object (caller frees), as stored in a file's __metadata__ "classifier", and
// back (source names the file in messages; every field must be present and valid).
char *msd_classifier_config_to_json(const struct msd_classifier_config *cfg);
int msd_classifier_config_from_json(struct msd_classifier_config *cfg, const char *json, const char *source);
// One line describing the layers ("conv3x3 1->32 ... linear 128->10"), into buf[n].
void msd_classifier_describe(const struct msd_classifier_config *cfg, char *buf, size_t n);

struct msd_cls_acts; // the activation arena (classifier.c)

struct msd_classifier {
    struct msd_classifier_config cfg;
    const struct msd_backend *be;
    int n_params;
    struct msd_param params[MSD_CLS_PARAMS]; // "conv0.weight", ..., "head.bias"
    size_t n_floats;                         // total parameter count
    struct msd_conv conv[MSD_CLS_CONVS];
    struct msd_norm norm[MSD_CLS_CONVS];
    struct msd_linear fc, head;
    float *w;              // parameters (backend memory), n_floats
    float *grad;           // gradients (backend memory), with a plan that has with_grad
    float *adam_m, *adam_v; // Adam's moments (backend memory), zeroed by msd_classifier_plan(.., true)
    long adam_step;        // Adam steps taken
    struct msd_cls_acts *acts;
};

// Build the parameter table for cfg (validated first) and allocate the parameters on backend be
// (contents undefined until init or load). -1 with a message on a bad config or no memory.
int msd_classifier_create(struct msd_classifier *c, const struct msd_classifier_config *cfg,
                          const struct msd_backend *be);
void msd_classifier_free(struct msd_classifier *c);
// Weights xavier-uniform (as model.c: parameter i of the buffer draws (seed, MSD_STREAM_INIT, i)),
// biases 0, GroupNorm scales 1. Resets Adam (moments 0, step 0) when it is planned for training.
void msd_classifier_init(struct msd_classifier *c, uint64_t seed);
// Plan the activation arena for batch N (re-plans when N or with_grad changes); with_grad also
// allocates the gradients and Adam's moments (zeroed the first time). -1 with a message on no memory.
int msd_classifier_plan(struct msd_classifier *c, int N, bool with_grad);
int msd_classifier_batch(const struct msd_classifier *c); // 0 when unplanned

// ---------------------------------------------------------------------------------------------------
// Passes on backend memory. N is the planned batch size.

// x: (N, C, R, R) -> logits: (N, classes) and features: (N, FEAT), either may be NULL (the arena
// keeps both). Keeps what the backward pass needs, x included: leave x unchanged until then.
void msd_classifier_forward(struct msd_classifier *c, float *logits, float *features, const float *x);
// dlogits: (N, classes) -> dx: (N, C, R, R) written (or NULL), and parameter gradients accumulated
// into c->grad (a plan with_grad). Must follow msd_classifier_forward.
void msd_classifier_backward(struct msd_classifier *c, float *dx, const float *dlogits);

// Softmax cross-entropy on the host, in double: returns the mean over the N rows of
// -log softmax(logits[n])[labels[n]]; dlogits (or NULL) gets its gradient (softmax - onehot) / N;
// *correct (or NULL) the number of rows whose largest logit (the first, on ties) is the label.
// logits, dlogits: (N, K)  labels: (N), each < K.
double msd_softmax_xent(const float *logits, const uint8_t *labels, int N, int K, float *dlogits,
                        int *correct);

// ---------------------------------------------------------------------------------------------------
// Host-level use

struct msd_cls_step {
    double loss; // the batch's mean cross-entropy
    int correct; // rows classified right (before the update)
};
// One Adam step (beta1 0.9, beta2 0.999, eps 1e-8, no weight decay) at learning rate lr on a batch
// x: (N, C, R, R) host images in [-1, 1] with labels (N) (N the planned batch, planned with_grad).
// -1 with a message when the loss is not finite; the weights are then left as they were.
int msd_classifier_train_step(struct msd_classifier *c, const float *x, const uint8_t *labels, float lr,
                              struct msd_cls_step *info);

// Logits (n, classes) and/or features (n, FEAT) of n host images x: (n, C, R, R), either output may be
// NULL; any n >= 0, run in chunks of the planned batch (the last chunk padded). The entry point of
// msdiff eval. 0, or -1 with a message (unplanned, no memory).
int msd_classifier_predict(struct msd_classifier *c, float *logits, float *features, const float *x, int n);

// Accuracy (fraction right) and mean cross-entropy over every image of a labelled data set whose
// images are the classifier's size. Either output may be NULL. -1 with a message (no labels, another
// size, unplanned).
int msd_classifier_evaluate(struct msd_classifier *c, const struct msd_dataset *d, double *accuracy,
                            double *loss);

// ---------------------------------------------------------------------------------------------------
// Files: safetensors with every parameter under its table name (F32), the config as JSON in
// __metadata__ "classifier", a one-line "architecture", and n_meta further string pairs (data,
// command, test_accuracy, ...). Written atomically (temp file, fsync, rename).
int msd_classifier_save(const struct msd_classifier *c, const char *path, const char *const *meta_keys,
                        const char *const *meta_values, int n_meta);
// Create *c from the file at path on backend be. -1 with a message naming the file and what is wrong
// (not a classifier file, a bad config, a tensor missing or of another shape, a tensor it does not
// have); *c is then empty.
int msd_classifier_load(struct msd_classifier *c, const char *path, const struct msd_backend *be);

#endif
