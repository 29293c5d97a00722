// model.h: the multistage DDPM++ U-Net: its structure, its parameter table and its forward and
// backward passes over the backend table.
//
// The structure follows EDM's SongUNet (DDPM++ settings: positional embedding, standard encoder and
// decoder, box resample filter) and the paper authors' MultistageUNet, layer for layer and name for
// name, so that checkpoints load into those PyTorch classes:
//   mapping:  emb = silu(map_layer1(silu(map_layer0(posemb(c_noise)))))          (shared)
//   encoder:  RxR_conv, then per level [RxR_down] + num_blocks x RxR_block{i}   (shared)
//   decoder:  per level [RxR_in0, RxR_in1 | RxR_up] + (num_blocks+1) x RxR_block{i} taking
//             concat(x, skip), then RxR_aux_norm -> silu -> RxR_aux_conv        (one per stage)
// A unified model is one stage; "separate" gives every stage its own mapping and encoder too.
//
// Memory (docs/DESIGN.md, Memory): one buffer each for parameters, gradients, Adam moments and EMA,
// laid out by the parameter table; one activation arena planned for a batch size. The forward pass
// keeps per block only what cannot be recomputed cheaply (conv outputs, attention tensors,
// normalisation statistics); the backward pass recomputes the rest (normalised and activated inputs,
// resampled inputs, concatenations) in shared scratch buffers.
#ifndef MSD_MODEL_H
#define MSD_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/core/backend.h"
#include "config.h"

// ---------------------------------------------------------------------------------------------------
// The parameter table

#define MSD_OWNER_SHARED (-1)

enum msd_init {
    MSD_INIT_XAVIER, // EDM's xavier_uniform: sqrt(6 / (fan_in + fan_out)) * U(-1, 1) * init_scale
    MSD_INIT_ZERO,   // biases
    MSD_INIT_ONE,    // GroupNorm weights
};

struct msd_param {
    char name[96];       // EDM state_dict name, e.g. "model.enc.28x28_conv.weight"
    int ndim;
    int shape[4];
    size_t offset, numel; // in floats, into every buffer the table lays out
    enum msd_init init;
    float init_scale;     // 1, 1e-5 (conv1, proj, aux_conv) or sqrt(0.2) (qkv)
    int fan_in, fan_out;
    int owner;            // MSD_OWNER_SHARED, or the stage whose decoder (or network) holds it
};

// ---------------------------------------------------------------------------------------------------
// Layers: offsets of their parameters in the buffers, and their sizes

struct msd_conv { size_t w, b; int cin, cout, k; };
struct msd_norm { size_t w, b; int c, groups; };
struct msd_linear { size_t w, b; int in, out; };

enum msd_resample { MSD_RESAMPLE_NONE, MSD_RESAMPLE_DOWN, MSD_RESAMPLE_UP };

// Activations a block keeps from its forward pass for its backward pass (pointers into the arena).
struct msd_block_act {
    float *mean0, *rstd0, *mean1, *rstd1, *mean2, *rstd2; // (N, groups)
    float *emb_bias; // (N, cout): affine(emb)
    float *h;        // (N, cout, Ho, Wo): conv0(...) + emb_bias, norm1's input
    float *resid;    // (N, cout, Ho, Wo): the residual part's output, (conv1(..) + skip(x)) sqrt(1/2);
                     // attention's input, and == out without attention
    float *qkv;      // (N, 3 cout, Ho*Wo)   attention blocks only
    float *attw;     // (N, Ho*Wo, Ho*Wo)
    float *a;        // (N, cout, Ho*Wo)
    float *out;      // (N, cout, Ho, Wo): the block's output
};

// EDM's UNetBlock.
struct msd_block {
    char name[32];         // "28x28_block0", "14x14_down", "7x7_in0", ...
    int cin, cout;
    int res_in, res_out;   // H = W of the input and of the output
    enum msd_resample resample;
    bool attn;             // self-attention after the residual part
    bool has_skip;         // a 1x1 conv on the residual path (cin != cout or resampling)
    int cat_channels;      // decoder blocks: channels of the skip concatenated to the input, else 0
    int dropout_id;        // dropout stream offset, unique in the model
    struct msd_norm norm0, norm1, norm2;
    struct msd_conv conv0, conv1, skip, qkv, proj;
    struct msd_linear affine;
    struct msd_block_act act;
};

// Mapping network and encoder: shared by all stages (one), or one per stage (separate).
struct msd_encoder {
    char prefix[64];            // of the encoder's blocks: "model.enc." or "model.nets.{s}.enc."
    struct msd_linear map0, map1;
    struct msd_conv conv_in;    // RxR_conv: in_channels -> model_channels
    int n_blocks;
    struct msd_block *blocks;   // downs and blocks in order; output k+1 is skip k+1 (skip 0 = conv_in)
};

struct msd_decoder {
    char prefix[64];            // "model.dec.", "model.decs.{s}." or "model.nets.{s}.dec."
    int n_blocks;
    struct msd_block *blocks;
    struct msd_norm aux_norm;
    struct msd_conv aux_conv;
};

// ---------------------------------------------------------------------------------------------------
// The model

struct msd_acts;  // the activation arena (unet.c)
struct msd_dbufs; // the denoiser's buffers (precond.c)

struct msd_model {
    struct msd_config cfg;
    const struct msd_backend *be;
    int n_params;                // entries of the table
    struct msd_param *params;
    size_t n_floats;             // total parameter count
    float *w;                    // parameters (backend memory), n_floats
    float *grad;                 // gradients (backend memory), allocated by msd_model_plan(.., true)
    int n_encoders;              // 1, or n_stages when separate
    struct msd_encoder enc[MSD_MAX_STAGES];
    struct msd_decoder dec[MSD_MAX_STAGES];
    struct msd_acts *acts;       // planned for a batch size
    struct msd_dbufs *dbufs;     // preconditioning and loss buffers, sized with acts
};

// The most parameters a network may have: 2^30 floats, 4 GiB of weights and 20 GiB with the gradients,
// Adam's moments and the EMA that training keeps. No real model comes near: EDM's largest networks
// (ImageNet 64) have about 300M, the paper's CIFAR-10 ones 56M (unified) to 168M (three separate
// networks). It is checked on the parameter table, before anything of that size is allocated.
#define MSD_MAX_PARAMS ((size_t)1 << 30)

// Build the structure and the parameter table for cfg (validated first) on backend be, without any
// parameter memory (m->w stays NULL): a loader compares this table with a file's tensors before it
// allocates. -1 with a message, *m empty, on a bad config or one above MSD_MAX_PARAMS parameters.
int msd_model_build(struct msd_model *m, const struct msd_config *cfg, const struct msd_backend *be);
// Allocate the parameter buffer of a built model (contents undefined until init or load). -1 with a
// message when memory runs out; the model stays built (msd_model_free frees it).
int msd_model_alloc(struct msd_model *m);
// msd_model_build, then msd_model_alloc: -1 with a message and *m empty when either fails.
int msd_model_create(struct msd_model *m, const struct msd_config *cfg, const struct msd_backend *be);
void msd_model_free(struct msd_model *m);
// EDM initialisation from the counter RNG: parameter i of the buffer draws (seed, MSD_STREAM_INIT, i).
void msd_model_init_weights(struct msd_model *m, uint64_t seed);
// The same rule for any parameter table (the classifier's too): host (n_floats) gets every parameter's
// initial values, xavier-uniform ones from (seed, MSD_STREAM_INIT, offset + i), the others 0 or 1.
void msd_params_init(const struct msd_param *params, int n_params, float *host, uint64_t seed);
// Every value of every parameter of a table (host, laid out by the table) finite, or -1 with
// "<what> '<path>': tensor '<name>' element <i> is <value>; expected finite weights<then>". A network with
// a NaN or an infinity gives NaN wherever it reaches, so neither loading nor saving lets one through.
int msd_params_check_finite(const struct msd_param *params, int n_params, const float *host, const char *what,
                            const char *path, const char *then);
// Plan the activation arena for batch size N (re-plans when N changes); with_grad also allocates the
// gradient buffer and the backward scratch. -1 with a message when memory runs out: the size asked
// for, the batch and the backend; what to do about it (a smaller --batch, or not, on --resume) is the
// command's to add.
int msd_model_plan(struct msd_model *m, int N, bool with_grad);

// The batch size the activations are planned for (0 when unplanned).
int msd_model_batch(const struct msd_model *m);

const struct msd_param *msd_model_find(const struct msd_model *m, const char *name);

// Counts for `msdiff info`: parameters held by the shared part and by each stage, and forward
// multiply-adds per image for each stage (every weighted conv and linear, and the two attention
// matmuls; resampling and elementwise work are not counted).
struct msd_counts {
    size_t shared;
    size_t stage[MSD_MAX_STAGES];
    size_t total;
    uint64_t macs[MSD_MAX_STAGES];
};
void msd_model_count(const struct msd_model *m, struct msd_counts *out);

// ---------------------------------------------------------------------------------------------------
// The raw network F(x_in; c_noise) for one stage and a batch that shares it.

struct msd_forward_opts {
    bool train;            // dropout on (when cfg.dropout > 0)
    uint64_t dropout_seed; // masks are drawn from (dropout_seed, MSD_STREAM_DROPOUT + block id, i)
};

// out: (N, out_channels, R, R)  x_in: (N, in_channels, R, R)  c_noise: (N), all backend memory.
// N must be the planned batch size. Keeps in the activation arena what the backward pass needs.
void msd_unet_forward(struct msd_model *m, int stage, float *out, const float *x_in,
                      const float *c_noise, const struct msd_forward_opts *opts);
// dout: (N, out_channels, R, R) -> dx_in (written, or NULL) and parameter gradients accumulated into
// m->grad (the shared part and decoder `stage` only). Must follow msd_unet_forward with the same
// stage, x_in and opts (it reads the activations that call left in the arena). dout is left unchanged.
void msd_unet_backward(struct msd_model *m, int stage, float *dx_in, const float *dout, const float *x_in,
                       const struct msd_forward_opts *opts);

#endif
