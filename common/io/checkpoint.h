// checkpoint.h: model checkpoints as safetensors files.
//
// A checkpoint holds every parameter under its EDM state_dict name ("model.enc.28x28_conv.weight"),
// the constant resample filters EDM registers as buffers ("...conv0.resample_filter", (1, 1, 2, 2),
// all 1/4), and the config as JSON in __metadata__ "config". A unified checkpoint therefore loads into
// EDM's SongUNet (under EDMPrecond) and a multistage one into the authors' MultistageUNet.
// Training state (Adam moments, step counts, RNG position) is a separate file (training code).
#ifndef MSD_CHECKPOINT_H
#define MSD_CHECKPOINT_H

#include "common/model/model.h"
#include "safetensors.h"

// Write m's parameters and config to path atomically. Extra metadata pairs may be given (n_meta 0).
// A weight that is NaN or infinite fails the save, naming the tensor and element, before any file is
// touched (loading would refuse it).
int msd_checkpoint_save(const struct msd_model *m, const char *path, const char *const *meta_keys,
                        const char *const *meta_values, int n_meta);
// The same with every tensor stored as F16 when f16 is set (half the file; loading converts back).
int msd_checkpoint_save_as(const struct msd_model *m, const char *path, bool f16, const char *const *meta_keys,
                           const char *const *meta_values, int n_meta);

// Create *m from the checkpoint at path (its config, then its weights) on backend be. The config
// builds the parameter table only; the file must hold every parameter (msd_model_load_tensors) before
// the weights are allocated, so a config that asks for more than the file holds allocates nothing.
// -1 with a message that names the file and what is wrong; *m is then empty.
int msd_checkpoint_load(struct msd_model *m, const char *path, const struct msd_backend *be);

// Copy the weights of an open file into an existing model. Every parameter must be present with its
// exact shape; any other tensor under "model." must be a resample filter of a resampling conv with
// the value 1/4 everywhere (tensors outside "model." are ignored: reference dumps carry test data).
// Every weight must be finite: the message of a NaN or an infinity names the tensor and its first bad
// element. All of this is checked before m->w changes; on -1 it is left as it was.
int msd_model_load_tensors(struct msd_model *m, const struct msd_st_file *f);

#endif
