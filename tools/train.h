/*
 * train.h - `deltanet train` (tools/train.c): options, one training run, its result. The recall
 * experiment drives the same run per mixer.
 */
#ifndef DN_TOOLS_TRAIN_H
#define DN_TOOLS_TRAIN_H

#include "deltanet.h"

typedef struct {
    dn_model_config model;
    dn_adamw_config opt;
    const char *task, *data, *out_dir;
    int64_t B, T, accum, steps, warmup, eval_every, eval_batches, threads;
    int64_t mqar_vocab, mqar_pairs;
    double decay_lo, decay_hi; /* --decay-init: 0, 0 for the default gate init */
    double lr, min_lr_ratio;
    uint64_t seed;
    int quiet, resume;
    int64_t save_every; /* checkpoint every N steps (0: only at the end and on a signal) */
    const char *config_path;
} train_options;

typedef struct {
    int64_t steps;
    double train_loss, val_loss, val_accuracy, tokens_per_s, mfu, seconds;
} train_result;

void train_options_default(train_options *o);
int train_parse(train_options *o, int argc, char **argv);
int train_run(const train_options *o, train_result *r);
double train_flops_per_token(const dn_model *m, int64_t T);
int dn_train_main(int argc, char **argv);

#endif
