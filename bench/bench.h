/*
 * bench.h - benchmark entry points, linked into the `deltanet` tool as subcommands.
 */
#ifndef DN_BENCH_H
#define DN_BENCH_H

#include "deltanet.h"

/* `deltanet bench`: the linear-attention family forward (bench/gdn.c). */
int dn_bench_gdn_main(int argc, char **argv);
/* `deltanet bench attn`: causal softmax attention prefill and KV-cache decode (bench/attn.c). */
int dn_bench_attn_main(int argc, char **argv);
/* `deltanet bench ssm`: Mamba-1, Mamba-2, RWKV-4 and the short convolution (bench/ssm.c). */
int dn_bench_ssm_main(int argc, char **argv);
/* `deltanet bench bwd`: forward + backward of Gated DeltaNet and attention (bench/bwd.c). */
int dn_bench_bwd_main(int argc, char **argv);

#endif
