/*
 * run.c - `deltanet run MODEL_DIR -p TEXT` (and `--chat`): a Hugging Face Qwen3.5, Qwen3.5-MoE
 * or Qwen3-Next checkpoint directory (dn_model_load_hf, dn_tokenizer_load) run on the CPU: the
 * prompt in one prefill (the chunkwise form), then token by token from the Gated DeltaNet states
 * and the attention layers' KV cache, the text streamed as it is decoded; prefill and decode
 * tokens/s at the end (--json: one record on standard output instead of the text).
 */
#include "run.h"
#include "opts.h"

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
    printf("usage: deltanet run MODEL_DIR [-p TEXT | --chat] [options]\n"
           "Runs the text model of a Hugging Face Qwen3.5 / Qwen3.5-MoE / Qwen3-Next checkpoint\n"
           "directory (config.json, safetensors, tokenizer.json) on the CPU.\n"
           "  -p, --prompt TEXT     complete TEXT as it is (no chat template)\n"
           "  --chat                interactive chat (ChatML turns; an empty line ends)\n"
           "  --system TEXT         the system message of --chat\n"
           "  -n, --tokens N        tokens to generate per answer (default 128)\n"
           "  --temperature X       0 is greedy (default 0.7)\n"
           "  --top-k N             keep the N most likely (default 20; 0: all)\n"
           "  --top-p X             nucleus (default 0.8)\n"
           "  --seed N              sampling seed (default 1)\n"
           "  --max-len N           longest context (default 4096)\n"
           "  --kv-dtype T          KV cache storage: f32, bf16, f16 (default: the weights' type,\n"
           "                        bf16 for a bf16 checkpoint, as transformers runs it)\n"
           "  --threads N\n"
           "  --json                print one JSON record (text, token counts, tokens/s)\n");
}

typedef struct {
    dn_model *m;
    dn_model_state *st;
    dn_tokenizer *tok;
    float *logits;
    int64_t V;
    dn_sample_params sp;
    uint64_t rng;
    int32_t stop[3];
    int json;
    double prefill_s, decode_s;
    int64_t prefilled, decoded;
} run_ctx;

static int is_stop(const run_ctx *c, int32_t id) {
    for (int i = 0; i < 3; i++)
        if (c->stop[i] >= 0 && id == c->stop[i]) return 1;
    return 0;
}

/* Feeds ids, then samples up to n tokens, streaming them (unless json); the generated ids are
 * appended to *out (grown). Returns 0, or 1 on an error (printed). */
static int generate(run_ctx *c, const int32_t *ids, int64_t n_ids, int64_t n, int32_t **out,
                    int64_t *n_out) {
    if (n_ids > 0) {
        const double t0 = now_s();
        if (dn_model_step(c->m, c->st, c->logits, ids, n_ids, 0) != DN_OK) {
            fprintf(stderr, "run: %s\n", dn_last_error());
            return 1;
        }
        c->prefill_s += now_s() - t0, c->prefilled += n_ids;
    }
    const double t0 = now_s();
    for (int64_t i = 0; i < n; i++) {
        int32_t next;
        if (dn_sample(&next, c->logits, c->V, &c->sp, &c->rng) != DN_OK) {
            fprintf(stderr, "\nrun: %s\n", dn_last_error());
            return 1;
        }
        if (is_stop(c, next)) break;
        int32_t *grown = realloc(*out, sizeof(int32_t) * (size_t)(*n_out + 1));
        if (!grown) {
            fprintf(stderr, "\nrun: out of memory\n");
            return 1;
        }
        *out = grown, (*out)[(*n_out)++] = next;
        const char *bytes;
        size_t nb;
        if (!c->json && !dn_tokenizer_is_special(c->tok, next) &&
            dn_tokenizer_token_bytes(c->tok, next, &bytes, &nb) == DN_OK) {
            fwrite(bytes, 1, nb, stdout);
            fflush(stdout);
        }
        /* the token joins the state even when it is the last one asked for: a chat's next
         * turn continues from it */
        if (dn_model_step(c->m, c->st, c->logits, &next, 1, 0) != DN_OK) {
            fprintf(stderr, "\nrun: %s\n", dn_last_error());
            return 1;
        }
        c->decoded++;
    }
    c->decode_s += now_s() - t0;
    return 0;
}

static void json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

int dn_run_main(int argc, char **argv) {
    const char *dir = NULL, *prompt = NULL, *system = NULL;
    int chat = 0, json = 0;
    int64_t n_new = 128, threads = 0, max_len = 4096, n = 0;
    uint64_t seed = 1;
    dn_dtype kv_dtype = DN_F32;
    int kv_set = 0;
    dn_sample_params sp = dn_sample_params_default();
    sp.temperature = 0.7, sp.top_k = 20, sp.top_p = 0.8;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage();
            return 0;
        }
        if (a[0] != '-') {
            if (dir) {
                fprintf(stderr, "run: one model directory only (got %s and %s)\n", dir, a);
                return 2;
            }
            dir = a;
            continue;
        }
        if (!strcmp(a, "--chat")) {
            chat = 1;
            continue;
        }
        if (!strcmp(a, "--json")) {
            json = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "run: %s needs a value (see --help)\n", a);
            return 2;
        }
        const char *v = argv[++i];
        int r = 0;
        if (!strcmp(a, "-p") || !strcmp(a, "--prompt"))
            prompt = v;
        else if (!strcmp(a, "--system"))
            system = v;
        else if (!strcmp(a, "-n") || !strcmp(a, "--tokens"))
            r = opt_i64("run", a, v, 1, 10000000, &n_new);
        else if (!strcmp(a, "--temperature"))
            r = opt_f64("run", a, v, 0, 100, &sp.temperature);
        else if (!strcmp(a, "--top-k"))
            r = opt_i64("run", a, v, 0, 1000000000, &sp.top_k);
        else if (!strcmp(a, "--top-p"))
            r = opt_f64("run", a, v, 1e-9, 1, &sp.top_p);
        else if (!strcmp(a, "--seed")) {
            r = opt_i64("run", a, v, 0, INT64_MAX, &n);
            if (!r) seed = (uint64_t)n;
        } else if (!strcmp(a, "--max-len"))
            r = opt_i64("run", a, v, 2, (int64_t)1 << 24, &max_len);
        else if (!strcmp(a, "--threads"))
            r = opt_i64("run", a, v, 1, 1024, &threads);
        else if (!strcmp(a, "--kv-dtype")) {
            r = opt_dtype("run", a, v, &kv_dtype);
            kv_set = 1;
        } else {
            fprintf(stderr, "run: unknown option %s (see --help)\n", a);
            return 2;
        }
        if (r) return 2;
    }
    if (!dir || (!prompt && !chat) || (prompt && chat)) {
        fprintf(stderr, "run: give a model directory and one of -p TEXT or --chat (see --help)\n");
        return 2;
    }
    if (threads > 0) dn_set_num_threads((int)threads);

    run_ctx c = {0};
    c.sp = sp, c.rng = seed, c.json = json;
    const double t_load = now_s();
    if (dn_tokenizer_load(&c.tok, dir) != DN_OK || dn_model_load_hf(&c.m, dir) != DN_OK) {
        fprintf(stderr, "run: %s\n", dn_last_error());
        dn_tokenizer_free(c.tok);
        return 1;
    }
    const double load_s = now_s() - t_load;
    c.V = dn_model_get_config(c.m)->vocab_size;
    c.stop[0] = dn_tokenizer_eos_id(c.tok);
    c.stop[1] = dn_tokenizer_token_id(c.tok, "<|im_end|>");
    c.stop[2] = dn_tokenizer_token_id(c.tok, "<|endoftext|>");
    c.logits = malloc(sizeof(float) * (size_t)c.V);
    int rc = 0;
    int32_t *ids = NULL, *out = NULL;
    int64_t n_ids = 0, n_out = 0;
    if (!kv_set) kv_dtype = dn_model_weight_dtype(c.m);
    if (!c.logits || dn_model_state_create_ex(&c.st, c.m, 1, max_len, kv_dtype) != DN_OK) {
        fprintf(stderr, "run: %s\n", c.logits ? dn_last_error() : "out of memory");
        rc = 1;
        goto done;
    }
    if (prompt) {
        if (dn_tokenizer_encode(c.tok, prompt, strlen(prompt), 0, &ids, &n_ids) != DN_OK) {
            fprintf(stderr, "run: %s\n", dn_last_error());
            rc = 1;
            goto done;
        }
        if (n_ids == 0 || n_ids + n_new + 1 > max_len) {
            fprintf(stderr,
                    "run: the prompt has %lld tokens; with -n %lld it must fit --max-len "
                    "%lld and not be empty\n",
                    (long long)n_ids, (long long)n_new, (long long)max_len);
            rc = 2;
            goto done;
        }
        if (!json) {
            fwrite(prompt, 1, strlen(prompt), stdout);
            fflush(stdout);
        }
        rc = generate(&c, ids, n_ids, n_new, &out, &n_out);
    } else {
        /* each turn feeds only what is new: the state holds the conversation so far */
        char line[8192];
        int first = 1;
        while (rc == 0 && printf("> ") >= 0 && fflush(stdout) == 0 &&
               fgets(line, sizeof line, stdin) && line[0] != '\n') {
            line[strcspn(line, "\n")] = 0;
            dn_chat_message msgs[2] = {{"system", system ? system : ""}, {"user", line}};
            const int with_system = first && system;
            free(ids), ids = NULL;
            if (dn_tokenizer_chat(c.tok, msgs + !with_system, 1 + with_system, 1, &ids, &n_ids) !=
                DN_OK) {
                fprintf(stderr, "run: %s\n", dn_last_error());
                rc = 1;
                break;
            }
            /* the previous answer's end marker closes that turn before the new one */
            int32_t *turn = malloc(sizeof(int32_t) * (size_t)(n_ids + 2));
            int64_t nt = 0;
            if (!turn) {
                rc = 1;
                break;
            }
            if (!first && c.stop[1] >= 0) {
                turn[nt++] = c.stop[1];
                const int32_t nl = dn_tokenizer_token_id(c.tok, "\xc4\x8a"); /* "\n" */
                if (nl >= 0) turn[nt++] = nl;
            }
            memcpy(turn + nt, ids, sizeof(int32_t) * (size_t)n_ids);
            nt += n_ids;
            if (dn_model_state_len(c.st) + nt + n_new + 1 > max_len) {
                fprintf(stderr, "run: the conversation would pass --max-len %lld\n",
                        (long long)max_len);
                free(turn);
                break;
            }
            rc = generate(&c, turn, nt, n_new, &out, &n_out);
            free(turn);
            printf("\n");
            first = 0;
        }
    }
    if (rc == 0) {
        const double pre = c.prefill_s > 0 ? (double)c.prefilled / c.prefill_s : 0,
                     dec = c.decode_s > 0 ? (double)c.decoded / c.decode_s : 0;
        if (json) {
            char *text = NULL;
            size_t len = 0;
            if (dn_tokenizer_decode(c.tok, out, n_out, DN_TOK_SKIP_SPECIAL, &text, &len) != DN_OK) {
                fprintf(stderr, "run: %s\n", dn_last_error());
                rc = 1;
                goto done;
            }
            printf("{\"model\": ");
            json_string(stdout, dir);
            printf(", \"prompt_tokens\": %lld, \"generated_tokens\": %lld, \"load_s\": %.3f, "
                   "\"prefill_tokens_per_s\": %.2f, \"decode_tokens_per_s\": %.2f, "
                   "\"kv_dtype\": \"%s\", \"text\": ",
                   (long long)c.prefilled, (long long)n_out, load_s, pre, dec,
                   dn_dtype_name(kv_dtype));
            json_string(stdout, text);
            printf("}\n");
            free(text);
        } else
            fprintf(stderr,
                    "\n[load %.1f s; prefill %lld tokens: %.1f tokens/s; decode %lld tokens: "
                    "%.2f tokens/s; KV cache %s]\n",
                    load_s, (long long)c.prefilled, pre, (long long)c.decoded, dec,
                    dn_dtype_name(kv_dtype));
    }
done:
    free(ids), free(out), free(c.logits);
    dn_model_state_free(c.st);
    dn_model_free(c.m);
    dn_tokenizer_free(c.tok);
    return rc;
}
