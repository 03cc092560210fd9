/*
 * generate.c - `deltanet generate CHECKPOINT -p PROMPT`: loads a trained byte-level model, feeds
 * the prompt in one prefill (the chunkwise form), then samples token by token from the fixed
 * states (and the KV cache of attention layers), streaming the bytes; prints prefill and decode
 * tokens/s at the end.
 */
#include "generate.h"
#include "opts.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void usage(void) {
    printf("usage: deltanet generate CHECKPOINT [options]\n"
           "Text from a model trained by `deltanet train` (byte vocabulary).\n"
           "  -p, --prompt TEXT     the prompt (default: a newline)\n"
           "  -n, --tokens N        bytes to generate (default 200)\n"
           "  --temperature X       0 is greedy (default 0.8)\n"
           "  --top-k N             keep the N most likely (default 0: all)\n"
           "  --top-p X             nucleus: the smallest set holding X of the mass (0.95)\n"
           "  --seed N              sampling seed (default 1)\n"
           "  --threads N\n");
}

int dn_generate_main(int argc, char **argv) {
    const char *path = NULL, *prompt = "\n";
    int64_t n_new = 200, threads = 0;
    uint64_t seed = 1;
    dn_sample_params sp = dn_sample_params_default();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage();
            return 0;
        }
        if (a[0] != '-') {
            if (path) {
                fprintf(stderr, "generate: one checkpoint only (got %s and %s)\n", path, a);
                return 2;
            }
            path = a;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "generate: %s needs a value (see --help)\n", a);
            return 2;
        }
        const char *v = argv[++i];
        int64_t n = 0;
        int r = 0;
        if (!strcmp(a, "-p") || !strcmp(a, "--prompt"))
            prompt = v;
        else if (!strcmp(a, "-n") || !strcmp(a, "--tokens"))
            r = opt_i64("generate", a, v, 1, 10000000, &n_new);
        else if (!strcmp(a, "--temperature"))
            r = opt_f64("generate", a, v, 0, 100, &sp.temperature);
        else if (!strcmp(a, "--top-k"))
            r = opt_i64("generate", a, v, 0, 1000000000, &sp.top_k);
        else if (!strcmp(a, "--top-p"))
            r = opt_f64("generate", a, v, 1e-9, 1, &sp.top_p);
        else if (!strcmp(a, "--seed")) {
            r = opt_i64("generate", a, v, 0, INT64_MAX, &n);
            if (!r) seed = (uint64_t)n;
        } else if (!strcmp(a, "--threads"))
            r = opt_i64("generate", a, v, 1, 1024, &threads);
        else {
            fprintf(stderr, "generate: unknown option %s (see --help)\n", a);
            return 2;
        }
        if (r) return 2;
    }
    if (!path) {
        usage();
        return 2;
    }
    if (threads > 0) dn_set_num_threads((int)threads);
    dn_model *m = NULL;
    if (dn_checkpoint_load(path, &m, NULL, NULL, NULL) != DN_OK) {
        fprintf(stderr, "generate: %s\n", dn_last_error());
        return 1;
    }
    const int64_t V = dn_model_get_config(m)->vocab_size;
    if (V != 256) {
        fprintf(stderr,
                "generate: %s has a vocabulary of %lld, not the 256 bytes of a text model\n", path,
                (long long)V);
        dn_model_free(m);
        return 1;
    }
    const int64_t np = (int64_t)strlen(prompt) > 0 ? (int64_t)strlen(prompt) : 1;
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)np);
    float *logits = malloc(sizeof(float) * (size_t)V);
    dn_model_state *st = NULL;
    int rc = 0;
    if (!tok || !logits || dn_model_state_create(&st, m, 1, np + n_new) != DN_OK) {
        fprintf(stderr, "generate: %s\n", tok && logits ? dn_last_error() : "out of memory");
        rc = 1;
        goto done;
    }
    for (int64_t i = 0; i < np; i++)
        tok[i] = (unsigned char)(prompt[0] ? prompt[i] : '\n');
    fwrite(prompt, 1, strlen(prompt), stdout);
    fflush(stdout);
    double t0 = now_s();
    if (dn_model_step(m, st, logits, tok, np, 0) != DN_OK) {
        fprintf(stderr, "generate: %s\n", dn_last_error());
        rc = 1;
        goto done;
    }
    const double prefill_s = now_s() - t0;
    uint64_t rng = seed;
    t0 = now_s();
    int64_t made = 0;
    for (; made < n_new; made++) {
        int32_t next;
        if (dn_sample(&next, logits, V, &sp, &rng) != DN_OK) {
            fprintf(stderr, "\ngenerate: %s\n", dn_last_error());
            rc = 1;
            break;
        }
        fputc(next, stdout);
        fflush(stdout);
        if (made + 1 < n_new && dn_model_step(m, st, logits, &next, 1, 0) != DN_OK) {
            fprintf(stderr, "\ngenerate: %s\n", dn_last_error());
            rc = 1;
            break;
        }
    }
    const double decode_s = now_s() - t0;
    size_t fixed = 0, kv = 0;
    dn_model_state_bytes(st, &fixed, &kv);
    fprintf(stderr,
            "\n[prefill %lld tokens: %.0f tokens/s; decode %lld tokens: %.1f tokens/s; state %.0f "
            "KiB fixed + %.0f KiB KV cache]\n",
            (long long)np, (double)np / prefill_s, (long long)made,
            made > 1 ? (double)(made - 1) / decode_s : 0.0, (double)fixed / 1024,
            (double)kv / 1024);
done:
    dn_model_state_free(st);
    free(tok), free(logits);
    dn_model_free(m);
    return rc;
}
