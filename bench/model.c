/*
 * model.c - `deltanet bench model`: the language models end to end. Training steps (forward +
 * backward + AdamW) of the Transformer, Gated DeltaNet and the 3:1 hybrid at one width, as
 * tokens/s and model FLOPs utilisation against the FMA peak measured in the same run; then
 * decode tokens/s of each against the context length (prefill to the context, then one token
 * at a time), where the recurrent model's cost is flat and the Transformer's grows.
 *
 * Model FLOPs per token: tools/train.c's count (every weight twice per token, attention scores
 * over T/2 keys, the delta rule's 4 K x V products per value head), times 3 for training.
 * Timing follows bench/bench.h: warm-up, then the median of the timed calls.
 */
#include "bench.h"
#include "train.h"

#include <string.h>

typedef struct {
    dn_model *m;
    dn_adamw *opt;
    const int32_t *tok, *tgt;
    int64_t B, T;
} step_ctx;

static dn_status train_step(void *arg) {
    step_ctx *c = arg;
    dn_model_zero_grad(c->m);
    dn_status st = dn_model_forward_backward(c->m, c->tok, c->tgt, c->B, c->T,
                                             1.0f / (float)(c->B * c->T), NULL, NULL);
    return st != DN_OK ? st : dn_adamw_step(c->opt, c->m, 1e-4, NULL);
}

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

static dn_model_config bench_config(const char *pattern, int64_t width, int64_t layers) {
    dn_model_config c = dn_model_config_default();
    c.hidden_size = width, c.num_hidden_layers = layers;
    c.intermediate_size = (width * 8 / 3 + 63) / 64 * 64; /* SwiGLU's 8/3, rounded to 64 */
    snprintf(c.layer_pattern, sizeof c.layer_pattern, "%s", pattern);
    const int64_t heads = width / 128 > 0 ? width / 128 : 1;
    c.num_attention_heads = c.num_key_value_heads = heads, c.head_dim = width / heads;
    c.linear_num_key_heads = c.linear_num_value_heads = heads;
    c.linear_key_head_dim = c.linear_value_head_dim = width / heads;
    return c;
}

int dn_bench_model_main(int argc, char **argv) {
    int64_t width = 512, layers = 4, B = 8, T = 512, threads = 0;
    int reps = 3, decode = 1;
    const char *patterns = "A,G,GGGA";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help")) {
            printf("usage: deltanet bench model [--width D] [--layers L] [--batch B] [--seq T]\n"
                   "                            [--patterns A,G,GGGA] [--reps N] [--threads N]\n"
                   "                            [--no-decode]\n"
                   "Training tokens/s and model FLOPs utilisation against the FMA peak measured\n"
                   "in the same run (default width 512, 4 layers, 8 x 512 tokens per step), then\n"
                   "decode tokens/s against context length.\n");
            return 0;
        }
        if (!strcmp(argv[i], "--no-decode")) {
            decode = 0;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "bench model: %s needs a value\n", argv[i]);
            return 2;
        }
        const char *a = argv[i], *v = argv[++i];
        const long long n = atoll(v);
        if (!strcmp(a, "--patterns"))
            patterns = v;
        else if (n < 1) {
            fprintf(stderr, "bench model: %s takes a positive integer\n", a);
            return 2;
        } else if (!strcmp(a, "--width"))
            width = n;
        else if (!strcmp(a, "--layers"))
            layers = n;
        else if (!strcmp(a, "--batch"))
            B = n;
        else if (!strcmp(a, "--seq"))
            T = n;
        else if (!strcmp(a, "--reps"))
            reps = (int)n;
        else if (!strcmp(a, "--threads"))
            threads = n;
        else {
            fprintf(stderr, "bench model: unknown option %s\n", a);
            return 2;
        }
    }
    if (threads > 0) dn_set_num_threads((int)threads);
    const double peak = bench_measure_fma_peak((int)threads, 0.5);
    printf("%s\nmatrix products: %s; threads %d; measured FMA peak %.1f GFLOP/s\n", dn_build_info(),
           dn_matmul_backend(), dn_get_num_threads(), peak);
    printf("training step (forward + backward + AdamW), width %lld, %lld layers, %lld x %lld "
           "tokens, byte vocabulary:\n",
           (long long)width, (long long)layers, (long long)B, (long long)T);
    printf("  %-6s %10s %12s %10s %10s %8s\n", "model", "params", "s/step", "tokens/s", "GFLOP/s",
           "MFU");
    char list[256];
    snprintf(list, sizeof list, "%s", patterns);
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)(B * T)),
            *tgt = malloc(sizeof(int32_t) * (size_t)(B * T));
    for (int64_t i = 0; i < B * T; i++)
        tok[i] = (int32_t)((i * 7919) % 256), tgt[i] = (int32_t)((i * 104729 + 3) % 256);
    for (char *pat = strtok(list, ","); pat; pat = strtok(NULL, ",")) {
        dn_model_config c = bench_config(pat, width, layers);
        dn_model *m = NULL;
        dn_adamw *opt = NULL;
        dn_adamw_config oc = dn_adamw_config_default();
        if (dn_model_create(&m, &c, 1) != DN_OK || dn_adamw_create(&opt, m, &oc) != DN_OK) {
            fprintf(stderr, "bench model: %s\n", dn_last_error());
            return 1;
        }
        step_ctx sc = {m, opt, tok, tgt, B, T};
        const double s = bench_time(train_step, &sc, BENCH_WARMUP, reps);
        if (s < 0) {
            fprintf(stderr, "bench model: %s\n", dn_last_error());
            return 1;
        }
        const double flops = train_flops_per_token(m, T) * (double)(B * T);
        printf("  %-6s %10lld %12.3f %10.0f %10.1f %7.1f%%\n", pat,
               (long long)dn_model_num_params(m), s, (double)(B * T) / s, flops / s * 1e-9,
               100.0 * flops / s * 1e-9 / peak);
        fflush(stdout);
        if (decode) {
            const int64_t ctxs[] = {256, 1024, 4096};
            dn_model_state *st = NULL;
            float *logits = malloc(sizeof(float) * (size_t)(T * c.vocab_size));
            printf("         decode tokens/s at context");
            for (int k = 0; k < 3; k++) {
                if (!st && dn_model_state_create(&st, m, 1, 4096 + 64) != DN_OK) break;
                /* prefill to the context in pieces of T, then time single steps */
                while (dn_model_state_len(st) < ctxs[k]) {
                    const int64_t n =
                        ctxs[k] - dn_model_state_len(st) < T ? ctxs[k] - dn_model_state_len(st) : T;
                    if (dn_model_step(m, st, logits, tok, n, 0) != DN_OK) break;
                }
                decode_ctx dc = {m, st, logits, 65};
                /* each timed step adds a token: the contexts move by 16 + reps tokens at most */
                const double ds = bench_time(decode_step, &dc, 8, 8);
                printf("  %lld: %.1f", (long long)ctxs[k], ds > 0 ? 1.0 / ds : 0.0);
                fflush(stdout);
            }
            size_t fixed = 0, kv = 0;
            if (st) dn_model_state_bytes(st, &fixed, &kv);
            printf("   (state %.0f KiB fixed + %.0f KiB KV cache at %lld tokens)\n",
                   (double)fixed / 1024, (double)kv / 1024,
                   (long long)(st ? dn_model_state_len(st) : 0));
            dn_model_state_free(st);
            free(logits);
        }
        dn_adamw_free(opt);
        dn_model_free(m);
    }
    free(tok), free(tgt);
    return 0;
}
