/*
 * qwen.c - `deltanet bench qwen`: a random model with the shapes of the smallest released
 * Qwen3.5 (width 1024, 24 layers in the 3:1 pattern, Gated DeltaNet heads 16 x 128 for keys and
 * values, attention 8 query heads and 2 KV heads of 256 with a quarter of the dims rotary, MLP
 * 3584, tied 248,320-token vocabulary: about 0.75 B parameters) with its matrices in bf16, as
 * `deltanet run` holds a checkpoint. Reported: prefill tokens/s at 512 and 4096 tokens, decode
 * tokens/s against context, and decode against its bound: every weight read once per token (the
 * 2-byte matrices, the tied embedding among them through the LM head) at the streaming-read rate
 * measured in the same run. Timing follows bench/bench.h (warm-up, then the median). The
 * decode steps also run with the model's profiling on (dn_model_set_profiling): the median time
 * per step of the Gated DeltaNet mixers, the attention mixers, the MLPs and the rest (embedding,
 * final norm, LM head), each against the read time of its own weights at the same rate, so the
 * growth with context is seen part by part (the attention mixers also read their KV cache).
 */
#include "bench.h"
#include "opts.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Parts of a decode step: the Gated DeltaNet mixers, the attention mixers, the MLPs, the rest. */
enum { PART_G, PART_A, PART_MLP, PART_OTHER, NPARTS };

/* Bytes each part reads per decode step: its matrices in bf16, its vectors in fp32; the LM head
 * (the tied embedding) goes to the rest. */
static void part_bytes(const dn_model *m, double bytes[NPARTS]) {
    const char *pat = dn_model_get_config(m)->layer_pattern;
    const size_t plen = strlen(pat);
    for (int p = 0; p < NPARTS; p++)
        bytes[p] = 0;
    for (int64_t i = 0; i < dn_model_num_tensors(m); i++) {
        dn_param_info t;
        dn_model_param_info(m, i, &t);
        const double b = (double)t.numel * (t.ndim == 2 ? 2 : 4);
        long long layer;
        int at = 0;
        if (sscanf(t.name, "model.layers.%lld.%n", &layer, &at) == 1 && at > 0) {
            if (!strncmp(t.name + at, "mlp.", 4) || strstr(t.name + at, "post_attention"))
                bytes[PART_MLP] += b;
            else /* the mixer and its input norm */
                bytes[pat[(size_t)layer % plen] == 'A' ? PART_A : PART_G] += b;
        } else if (!strcmp(t.name, "model.embed_tokens.weight") ||
                   !strcmp(t.name, "lm_head.weight"))
            bytes[PART_OTHER] += b;
    }
}

/* The random model: Qwen3.5-0.8B's text shape at the given width, layers and vocabulary. */
static dn_status random_model(dn_model **m, int64_t layers, int64_t width, int64_t vocab) {
    dn_model_config c = dn_model_config_default();
    c.vocab_size = vocab, c.hidden_size = width, c.num_hidden_layers = layers;
    c.intermediate_size = width * 7 / 2;
    snprintf(c.layer_pattern, sizeof c.layer_pattern, "GGGA");
    c.linear_num_key_heads = c.linear_num_value_heads = width / 64;
    c.linear_key_head_dim = c.linear_value_head_dim = 128;
    c.num_attention_heads = width / 128, c.num_key_value_heads = 2, c.head_dim = 256;
    c.partial_rotary_factor = 0.25, c.rope_theta = 1e7;
    c.tie_word_embeddings = 1, c.rms_norm_eps = 1e-6;
    dn_status st = dn_model_create(m, &c, 1);
    return st == DN_OK ? dn_model_set_weight_dtype(*m, DN_BF16) : st;
}

#define MAX_CTX 16

int dn_bench_qwen_main(int argc, char **argv) {
    int64_t layers = 24, width = 1024, vocab = 248320, threads = 0, reps = 5;
    int64_t ctxs[MAX_CTX] = {256, 512, 2048, 4096, 8192};
    int nctx = 5;
    const char *dir = NULL, *json = NULL;
    dn_dtype kv_dtype = DN_F32;
    int kv_set = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help")) {
            printf("usage: deltanet bench qwen [--model DIR] [--layers L] [--width D] [--vocab V]\n"
                   "                           [--contexts N,N,...] [--reps N] [--threads N]\n"
                   "                           [--kv-dtype f32|bf16|f16] [--json FILE]\n"
                   "Prefill and decode tokens/s of a Qwen3.5 model: a random one with the shape\n"
                   "of Qwen3.5-0.8B in bf16 (--layers, --width, --vocab change it), or the\n"
                   "checkpoint in DIR as `deltanet run` loads it. Each context is prefilled once\n"
                   "(timed), then decoded: 2 warm-up steps, then --reps rounds of one step of\n"
                   "every context, the median taken; against the bound of reading every weight\n"
                   "once per token (for a mixture of experts only the routed experts are read:\n"
                   "the bound is then a floor), and the decode step by part (profiled).\n"
                   "The KV cache is kept in the weights' type unless --kv-dtype says otherwise.\n");
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "bench qwen: %s needs a value\n", a);
            return 2;
        }
        const char *v = argv[++i];
        int r = 0;
        if (!strcmp(a, "--model"))
            dir = v;
        else if (!strcmp(a, "--json"))
            json = v;
        else if (!strcmp(a, "--kv-dtype"))
            r = opt_dtype("bench qwen", a, v, &kv_dtype), kv_set = 1;
        else if (!strcmp(a, "--contexts"))
            r = (nctx = opt_i64_list("bench qwen", a, v, 1, 1 << 20, ctxs, MAX_CTX)) < 0;
        else if (!strcmp(a, "--layers"))
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
    dn_model *m = NULL;
    if ((dir ? dn_model_load_hf(&m, dir) : random_model(&m, layers, width, vocab)) != DN_OK) {
        fprintf(stderr, "bench qwen: %s\n", dn_last_error());
        dn_model_free(m);
        return 1;
    }
    if (!kv_set) kv_dtype = dn_model_weight_dtype(m);
    const dn_model_config *c = dn_model_get_config(m);
    layers = c->num_hidden_layers, vocab = c->vocab_size;
    size_t wbytes = 0;
    dn_model_memory(m, &wbytes, NULL);
    /* the streaming-read rate, bytes/s: measured before each context's decode too, the best
     * kept (a bound taken from a moment of interference would flatter every fraction) */
    double bw = bench_measure_read_bandwidth((int)threads, 0.5) * 1e9;
    printf("%s\nthreads %d; KV cache %s\n", dn_build_info(), dn_get_num_threads(),
           dn_dtype_name(kv_dtype));
    printf("%s: width %lld, %lld layers (%s), vocab %lld%s, %.2f B parameters, %.2f GB of "
           "weights\n",
           dir ? dir : "random Qwen3.5-shaped model (bf16 matrices)", (long long)c->hidden_size,
           (long long)layers, c->layer_pattern, (long long)vocab,
           c->tie_word_embeddings ? " tied" : "", (double)dn_model_num_params(m) * 1e-9,
           (double)wbytes * 1e-9);
    int64_t maxT = 0;
    for (int i = 0; i < nctx; i++)
        maxT = ctxs[i] > maxT ? ctxs[i] : maxT;
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)maxT);
    float *logits = malloc(sizeof(float) * (size_t)vocab);
    double *mix = malloc(sizeof(double) * (size_t)layers);
    double *mlp = malloc(sizeof(double) * (size_t)layers);
    FILE *jf = json ? fopen(json, "w") : NULL;
    if (!tok || !logits || !mix || !mlp || (json && !jf)) {
        fprintf(stderr, "bench qwen: %s\n",
                json && !jf ? "cannot write the JSON file" : "out of memory");
        free(tok), free(logits), free(mix), free(mlp), dn_model_free(m);
        if (jf) fclose(jf);
        return 1;
    }
    for (int64_t i = 0; i < maxT; i++)
        tok[i] = (int32_t)((i * 7919 + 13) % vocab);
    const char *pat = c->layer_pattern;
    const size_t plen = strlen(pat);
    double pbytes[NPARTS];
    part_bytes(m, pbytes);
    double part_ms[MAX_CTX][NPARTS] = {{0}}, pre_s[MAX_CTX], dec_s[MAX_CTX];
    size_t kv_bytes[MAX_CTX] = {0}; /* the KV caches a decode step reads at each context */
    { /* a warm-up of every path (prefill, decode) before the first timed call */
        dn_model_state *w = NULL;
        int bad = dn_model_state_create(&w, m, 1, 32) != DN_OK ||
                  dn_model_step(m, w, logits, tok, maxT < 16 ? maxT : 16, 0) != DN_OK ||
                  dn_model_step(m, w, logits, tok, 1, 0) != DN_OK;
        dn_model_state_free(w);
        if (bad) {
            fprintf(stderr, "bench qwen: %s\n", dn_last_error());
            free(tok), free(logits), free(mix), free(mlp), dn_model_free(m);
            if (jf) fclose(jf);
            return 1;
        }
    }
    /* Every context's state is prefilled first (one timed call each); then the decode steps go
     * round by round, one step of every context per round, so that a burst of interference on
     * this shared machine lands on all contexts alike and the medians compare fairly. */
    int rc = 0;
    dn_model_state *sts[MAX_CTX] = {0};
    double *steps = malloc(sizeof(double) * (size_t)(nctx * (NPARTS + 1) * reps));
    if (!steps) rc = 1, fprintf(stderr, "bench qwen: out of memory\n");
    for (int i = 0; i < nctx && rc == 0; i++) {
        if (dn_model_state_create_ex(&sts[i], m, 1, ctxs[i] + reps + 64, kv_dtype) != DN_OK) {
            fprintf(stderr, "bench qwen: %s\n", dn_last_error());
            rc = 1;
            break;
        }
        const double t0 = dn_now_s();
        rc = dn_model_step(m, sts[i], logits, tok, ctxs[i], 0) != DN_OK;
        pre_s[i] = dn_now_s() - t0;
        /* two warm-up steps (the first may grow the KV caches) */
        const int32_t t1 = 17;
        for (int w = 0; w < 2 && rc == 0; w++)
            rc = dn_model_step(m, sts[i], logits, &t1, 1, 0) != DN_OK;
        if (rc == 0)
            fprintf(stderr, "  context %lld: prefill %.1f tok/s\n", (long long)ctxs[i],
                    (double)ctxs[i] / pre_s[i]);
    }
    for (int64_t r = 0; r < reps && rc == 0; r++) {
        const double b = bench_measure_read_bandwidth((int)threads, 0.2) * 1e9;
        bw = b > bw ? b : bw;
        for (int i = 0; i < nctx && rc == 0; i++) {
            double other = 0, part[NPARTS] = {0};
            const int32_t t1 = 17;
            rc = dn_model_set_profiling(m, 1) != DN_OK;
            const double t0 = dn_now_s();
            rc = rc || dn_model_step(m, sts[i], logits, &t1, 1, 0) != DN_OK;
            const double sec = dn_now_s() - t0;
            rc = rc || dn_model_profile(m, mix, mlp, &other) != DN_OK;
            if (rc) {
                fprintf(stderr, "bench qwen: %s\n", dn_last_error());
                break;
            }
            for (int64_t l = 0; l < layers; l++) {
                part[pat[(size_t)l % plen] == 'A' ? PART_A : PART_G] += mix[l];
                part[PART_MLP] += mlp[l];
            }
            part[PART_OTHER] = other;
            double *at = steps + (size_t)i * (NPARTS + 1) * (size_t)reps;
            at[r] = sec;
            for (int p = 0; p < NPARTS; p++)
                at[(size_t)(p + 1) * (size_t)reps + (size_t)r] = part[p] * 1e3;
        }
    }
    dn_model_set_profiling(m, 0);
    for (int i = 0; i < nctx; i++) {
        if (sts[i]) dn_model_state_bytes(sts[i], NULL, &kv_bytes[i]);
        if (rc == 0) {
            double *at = steps + (size_t)i * (NPARTS + 1) * (size_t)reps;
            dec_s[i] = dn_median(at, (int)reps);
            for (int p = 0; p < NPARTS; p++)
                part_ms[i][p] = dn_median(at + (size_t)(p + 1) * (size_t)reps, (int)reps);
        }
        dn_model_state_free(sts[i]);
    }
    free(steps);
    const double bound = bw / (double)wbytes;
    if (rc == 0) {
        printf("streaming read %.1f GB/s (best of the run): bound %.2f tokens/s\n", bw * 1e-9,
               bound);
        printf("  %8s %14s %14s %10s %12s %14s\n", "context", "prefill tok/s", "decode tok/s",
               "of bound", "KV cache MB", "of bound + KV");
        for (int i = 0; i < nctx; i++)
            printf("  %8lld %14.1f %14.2f %9.0f%% %12.1f %13.0f%%\n", (long long)ctxs[i],
                   (double)ctxs[i] / pre_s[i], 1.0 / dec_s[i], 100.0 / dec_s[i] / bound,
                   (double)kv_bytes[i] * 1e-6,
                   100.0 / dec_s[i] / (bw / ((double)wbytes + (double)kv_bytes[i])));
    }
    if (jf && rc == 0) {
        fprintf(jf,
                "{\"bench\": \"qwen\", \"model\": \"%s\", \"threads\": %d, \"read_GBs\": %.2f, "
                "\"weight_bytes\": %zu, \"bound_tok_s\": %.6g, \"kv_dtype\": \"%s\", \"points\": [",
                dir ? "checkpoint" : "random", dn_get_num_threads(), bw * 1e-9, wbytes, bound,
                dn_dtype_name(kv_dtype));
        for (int i = 0; i < nctx; i++)
            fprintf(jf,
                    "%s\n  {\"context\": %lld, \"prefill_s\": %.6g, \"decode_s\": %.6g, "
                    "\"kv_bytes\": %zu, \"gdn_ms\": %.4f, \"attn_ms\": %.4f, \"mlp_ms\": %.4f, "
                    "\"other_ms\": %.4f}",
                    i ? "," : "", (long long)ctxs[i], pre_s[i], dec_s[i], kv_bytes[i],
                    part_ms[i][PART_G], part_ms[i][PART_A], part_ms[i][PART_MLP],
                    part_ms[i][PART_OTHER]);
        fprintf(jf, "\n]}\n");
    }
    if (jf) fclose(jf);
    if (rc == 0) {
        static const char *names[NPARTS] = {"GDN mixers", "attn mixers", "MLPs", "embed+norm+head"};
        printf(
            "decode step by part (profiled, median ms per token; bound: its weights read once)\n");
        printf("  %-16s %8s", "part", "bound");
        for (int i = 0; i < nctx; i++)
            printf(" %8lld", (long long)ctxs[i]);
        printf(" %9s\n", "last/1st");
        for (int p = 0; p < NPARTS; p++) {
            printf("  %-16s %8.3f", names[p], pbytes[p] / bw * 1e3);
            for (int i = 0; i < nctx; i++)
                printf(" %8.3f", part_ms[i][p]);
            printf(" %8.2fx\n", part_ms[0][p] > 0 ? part_ms[nctx - 1][p] / part_ms[0][p] : 0.0);
        }
    }
    free(mix), free(mlp);
    free(tok), free(logits);
    dn_model_free(m);
    return rc;
}
