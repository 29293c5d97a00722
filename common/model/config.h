// config.h: the network configuration: the U-Net's shape, its stages and their decoders.
//
// One struct describes every variant the paper compares: a unified network (one stage), a
// multistage network (one shared mapping + encoder, one decoder per stage, each with its own base
// width) and separate networks (one whole network per stage, nothing shared). Presets give the
// paper's and msdiff's standard configurations by name. The config travels inside every checkpoint
// as JSON (__metadata__ "config"), so a checkpoint alone says what network it holds.
#ifndef MSD_CONFIG_H
#define MSD_CONFIG_H

#include <stdbool.h>

#define MSD_MAX_LEVELS 6
#define MSD_MAX_STAGES 8
#define MSD_MAX_WIDTH 1024 // the widest model_channels and decoder width (reasons in config.c)

enum msd_precond { MSD_PRECOND_EDM, MSD_PRECOND_VP };

struct msd_config {
    int img_resolution;                // H = W of the images
    int in_channels, out_channels;     // image channels (equal for a denoiser)
    int model_channels;                // the encoder's base width (EDM's model_channels)
    int n_levels;                      // resolutions: img_resolution >> level, level < n_levels
    int channel_mult[MSD_MAX_LEVELS];  // width of level l = base width * channel_mult[l]
    int num_blocks;                    // residual blocks per level (decoders have one more)
    int n_attn;
    int attn_resolutions[MSD_MAX_LEVELS]; // resolutions with self-attention, e.g. {16}
    int channel_mult_emb;              // embedding width = model_channels * channel_mult_emb
    float dropout;                     // dropout probability inside the residual blocks
    int gn_groups;                     // GroupNorm groups = min(gn_groups, C / gn_min_channels)
    int gn_min_channels;
    int n_stages;                      // 1 = unified
    int dec_channels[MSD_MAX_STAGES];  // decoder base width per stage (low noise first)
    float boundaries[MSD_MAX_STAGES];  // n_stages - 1 sigma boundaries, increasing: stage s
                                       // covers (boundaries[s-1], boundaries[s]]
    bool separate;                     // one whole network per stage, nothing shared
    enum msd_precond precond;          // EDM (default) or VP preconditioning
    float sigma_data;                  // EDM's sigma_data (0.5)
};

// Fill *c with the named preset: "cifar10", "cifar10-ms", "mini", "mini-ms", "tiny", "tiny-ms".
// Returns -1 and sets msd_last_error() for an unknown name (the message lists the known ones).
int msd_config_preset(struct msd_config *c, const char *name);
// The names of all presets, NULL-terminated.
extern const char *const msd_preset_names[];

// Check every field for a value the network can be built with (positive sizes, resolutions that
// halve evenly, GroupNorm groups that divide every channel count, increasing boundaries, ...).
// Returns -1 with a message naming the field, its value and what is expected.
int msd_config_validate(const struct msd_config *c);

// The config as a JSON object text (malloc'd; the caller frees), and back. Parsing validates and
// names the offending key in its message; `where` (a file name) goes into the message.
char *msd_config_to_json(const struct msd_config *c);
int msd_config_from_json(struct msd_config *c, const char *json, const char *where);

// The stage whose sigma range holds sigma: the first s with sigma <= boundaries[s], else the last.
int msd_config_stage_of(const struct msd_config *c, double sigma);

// GroupNorm groups for C channels: min(gn_groups, C / gn_min_channels), at least 1.
int msd_config_groups(const struct msd_config *c, int channels);

#endif
