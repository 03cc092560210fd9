/*
 * qwen.c - `deltanet bench qwen`: a random model with the shapes of the smallest released
 * Qwen3.5 (width 1024, 24 layers in the 3:1 pattern, Gated DeltaNet heads 16 x 128 for keys and
 * values, attention 8 query heads and 2 KV heads of 256 with a quarter of the dims rotary, MLP
 * 3584, tied 248,320-token vocabulary: about 0.75 B parameters) with its matrices in bf16, as
 * `deltanet run` holds a checkpoint. Reported: prefill tokens/s at 512 and 4096 tokens, decode
 * tokens/s against context, and decode against its bound: every weight read once per token (the
 * 2-byte matrices, the tied embedding among them through the LM head) at the streaming-read rate
 * measured in the same run. Timing follows bench/bench.h (warm-up, then the median).
 */
#include "bench.h"
#include "opts.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    dn_model *m;
    dn_model_state *s;
    float *logits;
    int32_t tok;
} decode_ctx;

static dn_status decode_step(void *arg) {
    decode_ctx *c = arg;
    return dn_model_step(c->m, c->s, c->logits, &c->tok, 1, 0);
}

int dn_bench_qwen_main(int argc, char **argv) {
    int64_t layers = 24, width = 1024, vocab = 248320, threads = 0, reps = 5;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help")) {
            printf(
                "usage: deltanet bench qwen [--layers L] [--width D] [--vocab V] [--reps N]\n"
                "                           [--threads N]\n"
                "A random Qwen3.5-0.8B-shaped model in bf16: prefill and decode tokens/s, decode\n"
                "against the bound of reading every weight once per token.\n");
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "bench qwen: %s needs a value\n", a);
            return 2;
        }
        const char *v = argv[++i];
        int r;
        if (!strcmp(a, "--layers"))
            r = opt_i64("bench qwen", a, v, 1, 256, &layers);
        else if (!strcmp(a, "--width"))
            r = opt_i64("bench qwen", a, v, 128, 16384, &width);
        else if (!strcmp(a, "--vocab"))
            r = opt_i64("bench qwen", a, v, 256, 1 << 22, &vocab);
        else if (!strcmp(a, "--reps"))
            r = opt_i64("bench qwen", a, v, 1, 1000, &reps);
        else if (!strcmp(a, "--threads"))
            r = opt_i64("bench qwen", a, v, 1, 1024, &threads);
        else {
            fprintf(stderr, "bench qwen: unknown option %s\n", a);
            return 2;
        }
        if (r) return 2;
    }
    if (threads > 0) dn_set_num_threads((int)threads);
    dn_model_config c = dn_model_config_default();
    c.vocab_size = vocab, c.hidden_size = width, c.num_hidden_layers = layers;
    c.intermediate_size = width * 7 / 2;
    snprintf(c.layer_pattern, sizeof c.layer_pattern, "GGGA");
    c.linear_num_key_heads = c.linear_num_value_heads = width / 64;
    c.linear_key_head_dim = c.linear_value_head_dim = 128;
    c.num_attention_heads = width / 128, c.num_key_value_heads = 2, c.head_dim = 256;
    c.partial_rotary_factor = 0.25, c.rope_theta = 1e7;
    c.tie_word_embeddings = 1, c.rms_norm_eps = 1e-6;
    dn_model *m = NULL;
    if (dn_model_create(&m, &c, 1) != DN_OK || dn_model_set_weight_dtype(m, DN_BF16) != DN_OK) {
        fprintf(stderr, "bench qwen: %s\n", dn_last_error());
        dn_model_free(m);
        return 1;
    }
    size_t wbytes = 0;
    dn_model_memory(m, &wbytes, NULL);
    const double bw = bench_measure_read_bandwidth((int)threads, 0.5) * 1e9; /* bytes/s */
    printf("%s\nthreads %d; streaming read %.1f GB/s\n", dn_build_info(), dn_get_num_threads(),
           bw * 1e-9);
    printf("random Qwen3.5-shaped model: width %lld, %lld layers (GGGA), vocab %lld tied, %.2f B "
           "parameters, %.2f GB of weights (bf16 matrices)\n",
           (long long)width, (long long)layers, (long long)vocab,
           (double)dn_model_num_params(m) * 1e-9, (double)wbytes * 1e-9);
    const double bound = bw / (double)wbytes;
    int64_t maxT = 8192 + 64;
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)maxT);
    float *logits = malloc(sizeof(float) * (size_t)vocab);
    for (int64_t i = 0; i < maxT; i++)
        tok[i] = (int32_t)((i * 7919 + 13) % vocab);
    const int64_t ctxs[] = {256, 512, 2048, 4096, 8192};
    printf("  %8s %14s %14s %14s %10s\n", "context", "prefill tok/s", "decode tok/s", "bound tok/s",
           "of bound");
    int rc = 0;
    for (size_t i = 0; i < sizeof ctxs / sizeof ctxs[0] && rc == 0; i++) {
        dn_model_state *st = NULL;
        if (dn_model_state_create(&st, m, 1, ctxs[i] + 64) != DN_OK) {
            fprintf(stderr, "bench qwen: %s\n", dn_last_error());
            rc = 1;
            break;
        }
        const double t0 = dn_now_s();
        if (dn_model_step(m, st, logits, tok, ctxs[i], 0) != DN_OK) {
            fprintf(stderr, "bench qwen: %s\n", dn_last_error());
            rc = 1;
        }
        const double pre = dn_now_s() - t0;
        decode_ctx dc = {m, st, logits, 17};
        const double s = rc ? -1 : bench_time(decode_step, &dc, 2, (int)reps);
        if (s > 0)
            printf("  %8lld %14.1f %14.2f %14.2f %9.0f%%\n", (long long)ctxs[i],
                   (double)ctxs[i] / pre, 1.0 / s, bound, 100.0 / s / bound);
        fflush(stdout);
        dn_model_state_free(st);
    }
    free(tok), free(logits);
    dn_model_free(m);
    return rc;
}
