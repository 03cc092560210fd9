/*
 * deltanet - the command-line tool. Subcommands:
 *   compare the Transformer against the linear family, measured (default with no subcommand)
 *   bench   benchmarks of the ops (gdn, attn, ssm, bwd, matmul, model)
 *   train   a language model (Gated DeltaNet, attention, hybrid) on text or MQAR
 *   recall  the MQAR in-context recall experiment, one model per mixer
 *   generate text from a trained checkpoint
 *   info    build, SIMD level, threads and the measured FMA peak
 */
#include "bench.h"
#include "compare.h"
#include "generate.h"
#include "recall.h"
#include "run.h"
#include "train.h"

#include <stdio.h>
#include <string.h>

static void usage(void) {
    printf(
        "usage: deltanet <command> [options]\n"
        "  compare      softmax attention against Gated DeltaNet and its relatives, measured:\n"
        "               prefill cost, decode cost and state bytes, memory capacity; tables,\n"
        "               SVG charts and JSON (deltanet compare --help)\n"
        "  bench [gdn]  Gated DeltaNet (and family) forward: decode and prefill speed against\n"
        "               the machine's measured FMA peak (deltanet bench --help for options)\n"
        "  bench attn   causal softmax attention: tiled prefill, and KV-cache decode against\n"
        "               the measured copy bandwidth (deltanet bench attn --help)\n"
        "  bench ssm    Mamba-1, Mamba-2, RWKV-4 and the short convolution: prefill and\n"
        "               decode tokens/s\n"
        "  bench bwd    training step (forward + backward) of Gated DeltaNet and attention\n"
        "               against length\n"
        "  bench matmul dense products at projection shapes: the built-in kernel against the\n"
        "               BLAS, as GFLOP/s and fractions of the FMA peak\n"
        "  bench model  language models: training tokens/s and MFU, decode tokens/s\n"
        "               against context (deltanet bench model --help)\n"
        "  train        a language model (Gated DeltaNet, attention or a hybrid) trained on\n"
        "               byte-level text or MQAR recall (deltanet train --help)\n"
        "  run          a Hugging Face Qwen3.5 / Qwen3.5-MoE / Qwen3-Next checkpoint on the CPU:\n"
        "               prompt completion or chat (deltanet run --help)\n"
        "  info    what this build and machine provide\n"
        "With no command, runs `compare` with its defaults.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) return dn_compare_main(argc, argv);
    if (!strcmp(argv[1], "compare")) return dn_compare_main(argc - 1, argv + 1);
    if (!strcmp(argv[1], "bench")) {
        if (argc > 2 && !strcmp(argv[2], "attn")) return dn_bench_attn_main(argc - 2, argv + 2);
        if (argc > 2 && !strcmp(argv[2], "gdn")) return dn_bench_gdn_main(argc - 2, argv + 2);
        if (argc > 2 && !strcmp(argv[2], "ssm")) return dn_bench_ssm_main(argc - 2, argv + 2);
        if (argc > 2 && !strcmp(argv[2], "bwd")) return dn_bench_bwd_main(argc - 2, argv + 2);
        if (argc > 2 && !strcmp(argv[2], "model")) return dn_bench_model_main(argc - 2, argv + 2);
        if (argc > 2 && !strcmp(argv[2], "qwen")) return dn_bench_qwen_main(argc - 2, argv + 2);
        if (argc > 2 && !strcmp(argv[2], "matmul")) return dn_bench_matmul_main(argc - 2, argv + 2);
        return dn_bench_gdn_main(argc - 1, argv + 1);
    }
    if (!strcmp(argv[1], "train")) return dn_train_main(argc - 1, argv + 1);
    if (!strcmp(argv[1], "recall")) return dn_recall_main(argc - 1, argv + 1);
    if (!strcmp(argv[1], "generate")) return dn_generate_main(argc - 1, argv + 1);
    if (!strcmp(argv[1], "run")) return dn_run_main(argc - 1, argv + 1);
    if (!strcmp(argv[1], "info")) {
        printf("%s\n", dn_build_info());
        printf("best SIMD level: %s, threads: %d\n", dn_isa_name(dn_isa_best()),
               dn_get_num_threads());
        printf("measured fp32 FMA peak: %.1f GFLOP/s\n", bench_measure_fma_peak(0, 0.3));
        return 0;
    }
    if (!strcmp(argv[1], "help") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage();
        return 0;
    }
    fprintf(stderr, "deltanet: unknown command '%s'\n", argv[1]);
    usage();
    return 2;
}
