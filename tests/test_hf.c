/*
 * test_hf.c - Hugging Face Qwen3.5 checkpoints (src/model/hf.c): tiny random models written by
 * transformers (tools/make_qwen_fixture.py, committed under tests/fixtures/) load, and give
 * transformers' logits for a prompt and for 32 greedy decode steps, and the same greedy tokens;
 * malformed directories (missing, extra or mis-shaped tensor, truncated shard, bad index, bad
 * config) are errors naming what is wrong.
 *
 * Tolerance: both sides compute in fp32 from the same weights (stored in bf16 / fp16, widened
 * exactly), so the difference is fp32 rounding in different orders (transformers' chunked delta
 * rule and matmuls against ours): about 1e-6 relative per operation, grown through 4 layers.
 * 2e-4 of the largest logit's magnitude holds that with a wide margin; a wrong convention (a norm
 * without its 1 + w, a gate ordering, rotary pairing, a swapped head group) moves logits by 1e-2
 * or more (checked by mutating the loaded weights below).
 */
#include "../src/model/json.h"
#include "../src/model/safetensors.h"
#include "run.h"
#include "test.h"

#include <dirent.h>
#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

#define FIXTURES "tests/fixtures"
#define TOL 2e-4

typedef struct {
    int32_t tokens[64], generated[64];
    int64_t T, S, V;
    float *logits, *step_logits;
    dn_st *f;
} reference;

static int load_reference(const char *dir, reference *r) {
    char path[512];
    snprintf(path, sizeof path, "%s/reference.safetensors", dir);
    memset(r, 0, sizeof *r);
    if (dn_st_open(path, &r->f) != DN_OK) {
        printf("    FAIL %s: %s\n", path, dn_last_error());
        return 1;
    }
    const dn_st_tensor *tok = dn_st_find(r->f, "tokens"), *lg = dn_st_find(r->f, "logits"),
                       *gen = dn_st_find(r->f, "generated"), *sl = dn_st_find(r->f, "step_logits");
    if (!tok || !lg || !gen || !sl || tok->numel > 64 || gen->numel > 64 || lg->ndim != 2) {
        printf("    FAIL %s: not the fixture's layout\n", path);
        return 1;
    }
    r->T = tok->numel, r->S = gen->numel, r->V = lg->shape[1];
    memcpy(r->tokens, tok->data, (size_t)r->T * 4);
    memcpy(r->generated, gen->data, (size_t)r->S * 4);
    r->logits = falloc(r->T * r->V), r->step_logits = falloc(r->S * r->V);
    memcpy(r->logits, lg->data, (size_t)(r->T * r->V) * 4);
    memcpy(r->step_logits, sl->data, (size_t)(r->S * r->V) * 4);
    return 0;
}

static void free_reference(reference *r) {
    free(r->logits), free(r->step_logits);
    dn_st_close(r->f);
}

/* max |a - b| over n, relative to max |b| (at least 1) */
static double rel_diff(const float *a, const float *b, int64_t n) {
    double d = 0, mb = 1;
    for (int64_t i = 0; i < n; i++) {
        const double e = fabs((double)a[i] - (double)b[i]);
        d = e > d || e != e ? e : d;
        mb = fabs((double)b[i]) > mb ? fabs((double)b[i]) : mb;
    }
    return d / mb;
}

static int64_t argmax(const float *z, int64_t n) {
    int64_t b = 0;
    for (int64_t i = 1; i < n; i++)
        if (z[i] > z[b]) b = i;
    return b;
}

/* Prefill logits, then decode: the prompt in one step, then one token at a time. */
static int parity(const char *name, double *worst_prefill, double *worst_decode) {
    int fails = 0;
    char dir[256];
    snprintf(dir, sizeof dir, "%s/%s", FIXTURES, name);
    reference r;
    if (load_reference(dir, &r)) return 1;
    dn_model *m = NULL;
    if (dn_model_load_hf(&m, dir) != DN_OK) {
        printf("    FAIL %s: %s\n", dir, dn_last_error());
        free_reference(&r);
        return 1;
    }
    const int64_t V = r.V, T = r.T, S = r.S;
    CHECK(dn_model_get_config(m)->vocab_size == V, "%s: vocab", name);
    float *logits = falloc(T * V);
    CHECK(dn_model_logits(m, logits, r.tokens, 1, T) == DN_OK, "%s", dn_last_error());
    *worst_prefill = rel_diff(logits, r.logits, T * V);
    CHECK(*worst_prefill < TOL, "%s prefill: logits differ by %.3g of the largest", name,
          *worst_prefill);

    dn_model_state *st = NULL;
    CHECK(dn_model_state_create(&st, m, 1, T + S + 1) == DN_OK, "%s", dn_last_error());
    float *last = falloc(V);
    *worst_decode = 0;
    if (st && dn_model_step(m, st, last, r.tokens, T, 0) == DN_OK) {
        /* the state's prefill gives the forward's last row, and the greedy tokens follow */
        const double d0 = rel_diff(last, r.logits + (T - 1) * V, V);
        CHECK(d0 < TOL, "%s: the prefill step's last logits differ by %.3g", name, d0);
        for (int64_t i = 0; i < S; i++) {
            CHECK(argmax(last, V) == r.generated[i], "%s: greedy token %lld is %lld, not %d", name,
                  (long long)i, (long long)argmax(last, V), r.generated[i]);
            if (dn_model_step(m, st, last, &r.generated[i], 1, 0) != DN_OK) {
                CHECK(0, "%s decode: %s", name, dn_last_error());
                break;
            }
            const double d = rel_diff(last, r.step_logits + i * V, V);
            *worst_decode = d > *worst_decode ? d : *worst_decode;
        }
        CHECK(*worst_decode < TOL, "%s decode: logits differ by %.3g of the largest", name,
              *worst_decode);
    } else
        CHECK(0, "%s prefill step: %s", name, dn_last_error());

    /* a 16-bit checkpoint keeps its matrices in 16 bits: about 2 bytes a parameter, no
     * gradients, and no training */
    size_t pb = 0;
    dn_model_memory(m, &pb, NULL);
    const int is16 = strcmp(name, "qwen3_5_moe") != 0; /* the MoE fixture is fp32 */
    const double per = (double)pb / (double)dn_model_num_params(m);
    CHECK(is16 ? per < 2.2 : per == 8.0, "%s: %.2f bytes per parameter", name, per);
    if (is16) {
        int32_t tgt[64];
        for (int64_t i = 0; i < T; i++)
            tgt[i] = r.tokens[(i + 1) % T];
        double loss = 0;
        CHECK(dn_model_forward_backward(m, r.tokens, tgt, 1, T, 1.0f, &loss, NULL) ==
                  DN_ERR_UNSUPPORTED,
              "%s: training 16-bit weights was not refused", name);
    }

    /* the test can fail: a zero-centred norm read as a plain weight moves the logits */
    float *p = dn_model_params(m);
    for (int64_t t = 0; t < dn_model_num_tensors(m); t++) {
        dn_param_info ti;
        dn_model_param_info(m, t, &ti);
        if (strstr(ti.name, "q_norm"))
            for (int64_t i = 0; i < ti.numel; i++)
                p[ti.offset + i] -= 1.0f;
    }
    dn_model_logits(m, logits, r.tokens, 1, T);
    CHECK(rel_diff(logits, r.logits, T * V) > 100 * TOL, "%s: a mutated q_norm went unnoticed",
          name);
    printf("    %s: prefill %.2g, decode %.2g of the largest logit; %lld greedy tokens\n", name,
           *worst_prefill, *worst_decode, (long long)S);
    dn_model_state_free(st);
    free(last), free(logits);
    dn_model_free(m);
    free_reference(&r);
    return fails;
}

static int test_hf_parity(void) {
    int fails = 0;
    double a, b;
    fails += parity("qwen3_5_text", &a, &b);
    fails += parity("qwen3_5_vl", &a, &b);
    fails += parity("qwen3_5_moe", &a, &b);
    fails += parity("qwen3_next", &a, &b);
    return fails;
}

/* ---- malformed directories: a copy of a fixture with one thing wrong ---- */

static char tmp_root[256];

static void rm_rf(const char *path) {
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        char p[512];
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
                snprintf(p, sizeof p, "%s/%s", path, e->d_name);
                rm_rf(p);
            }
        closedir(d);
        rmdir(path);
    } else
        unlink(path);
}

static int copy_file(const char *from, const char *to, long truncate_to) {
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    int rc = !a || !b;
    char buf[65536];
    size_t n;
    long total = 0;
    while (!rc && (n = fread(buf, 1, sizeof buf, a)) > 0) {
        if (truncate_to >= 0 && total + (long)n > truncate_to) n = (size_t)(truncate_to - total);
        rc = fwrite(buf, 1, n, b) != n;
        total += (long)n;
        if (truncate_to >= 0 && total >= truncate_to) break;
    }
    if (a) fclose(a);
    if (b) fclose(b);
    return rc;
}

/* A fresh copy of fixture `name` in the temporary directory; its path in dst. */
static int copy_fixture(const char *name, char *dst, size_t cap) {
    static int k;
    snprintf(dst, cap, "%s/case%d", tmp_root, k++);
    if (mkdir(dst, 0755)) return 1;
    char src[256], a[512], b[512];
    snprintf(src, sizeof src, "%s/%s", FIXTURES, name);
    DIR *d = opendir(src);
    struct dirent *e;
    int rc = !d;
    while (!rc && (e = readdir(d)))
        if (e->d_name[0] != '.') {
            snprintf(a, sizeof a, "%s/%s", src, e->d_name);
            snprintf(b, sizeof b, "%s/%s", dst, e->d_name);
            rc = copy_file(a, b, -1);
        }
    if (d) closedir(d);
    return rc;
}

static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *s = calloc(1, 1 << 20);
    size_t n = fread(s, 1, (1 << 20) - 1, f);
    s[n] = 0;
    fclose(f);
    return s;
}

/* Replaces the first occurrence of `what` in dir/file by `with`. */
static int edit(const char *dir, const char *file, const char *what, const char *with) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    char *s = read_text(path);
    char *at = s ? strstr(s, what) : NULL;
    if (!at) {
        free(s);
        return 1;
    }
    FILE *f = fopen(path, "wb");
    fwrite(s, 1, (size_t)(at - s), f);
    fputs(with, f);
    fputs(at + strlen(what), f);
    fclose(f);
    free(s);
    return 0;
}

/* Rewrites dir/model.safetensors without tensor `drop` (or with an extra tensor `add`). */
static int rewrite_weights(const char *dir, const char *drop, const char *add) {
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    dn_st *f = NULL;
    if (dn_st_open(path, &f) != DN_OK) return 1;
    dn_st_entry *e = calloc(f->n_tensors + 1, sizeof *e);
    uint8_t **copies = calloc(f->n_tensors + 1, sizeof *copies);
    size_t n = 0;
    for (size_t i = 0; i < f->n_tensors; i++) {
        const dn_st_tensor *t = &f->tensors[i];
        if (drop && !strcmp(t->name, drop)) continue;
        copies[n] = malloc(t->bytes ? t->bytes : 1);
        memcpy(copies[n], t->data, t->bytes);
        e[n] = (dn_st_entry){t->name, t->dtype, t->ndim, t->shape, copies[n]};
        n++;
    }
    static const int64_t shape[1] = {4};
    static const float four[4] = {1, 2, 3, 4};
    if (add) e[n++] = (dn_st_entry){add, DN_ST_F32, 1, shape, four};
    char out[512];
    snprintf(out, sizeof out, "%s/new.safetensors", dir);
    int rc = dn_st_write(out, e, n, NULL, NULL, 0) != DN_OK;
    for (size_t i = 0; i < f->n_tensors; i++)
        free(copies[i]);
    free(copies), free(e);
    dn_st_close(f);
    return rc || rename(out, path);
}

static int expect_error(const char *dir, dn_status want, const char *needle, const char *what) {
    int fails = 0;
    dn_model *m = (dn_model *)(uintptr_t)0x1;
    const dn_status st = dn_model_load_hf(&m, dir);
    CHECK(st == want, "%s: status %s, expected %s (%s)", what, dn_status_str(st),
          dn_status_str(want), dn_last_error());
    CHECK(m == (dn_model *)(uintptr_t)0x1, "%s: the output was written", what);
    CHECK(!needle || strstr(dn_last_error(), needle), "%s: message '%s' does not name '%s'", what,
          dn_last_error(), needle);
    return fails;
}

static int test_hf_malformed(void) {
    int fails = 0;
    const char *t = getenv("TMPDIR");
    snprintf(tmp_root, sizeof tmp_root, "%s/dn_test_hf.XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(tmp_root)) return printf("    FAIL mkdtemp: %s\n", strerror(errno)), 1;
    char d[512], p[640];

    CHECK(dn_model_load_hf(NULL, FIXTURES "/qwen3_5_vl") == DN_ERR_NULL, "NULL out");
    fails += expect_error(tmp_root, DN_ERR_IO, "config.json", "no config.json");

    copy_fixture("qwen3_5_vl", d, sizeof d);
    rewrite_weights(d, "model.language_model.layers.1.linear_attn.A_log", NULL);
    fails += expect_error(d, DN_ERR_FORMAT, "layers.1.linear_attn.A_log", "missing tensor");

    copy_fixture("qwen3_5_vl", d, sizeof d);
    rewrite_weights(d, NULL, "model.language_model.layers.0.linear_attn.bias");
    fails += expect_error(d, DN_ERR_FORMAT, "layers.0.linear_attn.bias", "extra tensor");

    copy_fixture("qwen3_5_vl", d, sizeof d); /* the vision tower and mtp weights are skipped */
    rewrite_weights(d, NULL, "mtp.fc.weight");
    dn_model *m = NULL;
    CHECK(dn_model_load_hf(&m, d) == DN_OK, "mtp tensor: %s", dn_last_error());
    dn_model_free(m);

    copy_fixture("qwen3_5_vl", d, sizeof d);
    edit(d, "config.json", "\"intermediate_size\": 96", "\"intermediate_size\": 97");
    fails += expect_error(d, DN_ERR_FORMAT, "mlp.gate_proj.weight has shape [96, 64]",
                          "mis-shaped tensor");

    copy_fixture("qwen3_5_vl", d, sizeof d);
    edit(d, "config.json", "\"full_attention\"\n", "\"sliding_attention\"\n");
    fails += expect_error(d, DN_ERR_FORMAT, "layer_types[3]", "unknown layer type");

    copy_fixture("qwen3_5_vl", d, sizeof d);
    edit(d, "config.json", "\"num_hidden_layers\": 4", "\"num_hidden_layers\": 5");
    fails += expect_error(d, DN_ERR_FORMAT, "layer_types has 4 entries", "layer count");

    copy_fixture("qwen3_5_vl", d, sizeof d);
    edit(d, "config.json", "\"model_type\": \"qwen3_5\"", "\"model_type\": \"llama\"");
    fails += expect_error(d, DN_ERR_UNSUPPORTED, "llama", "another model type");

    copy_fixture("qwen3_next", d, sizeof d); /* the fused projection of another width */
    edit(d, "config.json", "\"linear_value_head_dim\": 24", "\"linear_value_head_dim\": 16");
    fails += expect_error(d, DN_ERR_FORMAT, "in_proj_qkvz.weight must be", "fused shape");

    copy_fixture("qwen3_next", d, sizeof d);
    edit(d, "config.json", "\"mlp_only_layers\": [\n    1\n  ]", "\"mlp_only_layers\": [7]");
    fails += expect_error(d, DN_ERR_FORMAT, "mlp_only_layers[0]", "mlp_only_layers out of range");

    copy_fixture("qwen3_5_moe", d, sizeof d);
    edit(d, "config.json", "\"num_experts_per_tok\": 2", "\"num_experts_per_tok\": 5");
    fails += expect_error(d, DN_ERR_ARG, "num_experts_per_tok", "top-k above the experts");

    { /* a model with experts refuses to train, and generates */
        dn_model *mm = NULL;
        CHECK(dn_model_load_hf(&mm, FIXTURES "/qwen3_5_moe") == DN_OK, "%s", dn_last_error());
        int32_t tok[4] = {1, 2, 3, 4}, tgt[4] = {2, 3, 4, 5};
        double loss = 0;
        CHECK(mm && dn_model_forward_backward(mm, tok, tgt, 1, 4, 1.0f, &loss, NULL) ==
                        DN_ERR_UNSUPPORTED,
              "training an MoE model: %s", dn_last_error());
        CHECK(mm && dn_model_forward_backward(mm, tok, tgt, 1, 4, 0.0f, &loss, NULL) == DN_OK &&
                  loss > 0,
              "an MoE model's loss: %s", dn_last_error());
        dn_model_free(mm);
    }

    copy_fixture("qwen3_5_vl", d, sizeof d);
    edit(d, "config.json", "\"rope_type\": \"default\"", "\"rope_type\": \"yarn\"");
    fails += expect_error(d, DN_ERR_UNSUPPORTED, "yarn", "rope type");

    copy_fixture("qwen3_5_vl", d, sizeof d);
    edit(d, "config.json", "\"vocab_size\": 311", "\"vocab_size\": \"311\"");
    fails += expect_error(d, DN_ERR_FORMAT, "vocab_size", "vocab_size a string");

    copy_fixture("qwen3_5_vl", d, sizeof d);
    edit(d, "config.json", "{", "[");
    fails += expect_error(d, DN_ERR_FORMAT, "config.json", "config not JSON");

    copy_fixture("qwen3_5_text", d, sizeof d);
    snprintf(p, sizeof p, "%s/model-00003-of-00008.safetensors", d);
    copy_file(FIXTURES "/qwen3_5_text/model-00003-of-00008.safetensors", p, 20000);
    fails += expect_error(d, DN_ERR_FORMAT, "model-00003-of-00008", "truncated shard");

    copy_fixture("qwen3_5_text", d, sizeof d);
    snprintf(p, sizeof p, "%s/model-00008-of-00008.safetensors", d);
    unlink(p);
    fails += expect_error(d, DN_ERR_IO, "model-00008-of-00008", "missing shard");

    copy_fixture("qwen3_5_text", d, sizeof d);
    edit(d, "model.safetensors.index.json", "\"model.embed_tokens.weight\": \"model-00001",
         "\"model.embed_tokens.weight\": \"model-00002");
    fails += expect_error(d, DN_ERR_FORMAT, "embed_tokens", "index names the wrong shard");

    copy_fixture("qwen3_5_text", d, sizeof d);
    edit(d, "model.safetensors.index.json", "model-00001-of-00008.safetensors\"",
         "../model-00001-of-00008.safetensors\"");
    fails += expect_error(d, DN_ERR_FORMAT, NULL, "index path outside the directory");

    copy_fixture("qwen3_5_text", d, sizeof d); /* untied, yet lm_head.weight dropped */
    edit(d, "model.safetensors.index.json", "\"lm_head.weight\"", "\"lm_head.weightX\"");
    fails += expect_error(d, DN_ERR_FORMAT, NULL, "index of a tensor not in its shard");

    rm_rf(tmp_root);
    return fails;
}

/* `deltanet run` end to end on a model with a real tokenizer: the prompt's ids are those of
 * Hugging Face's tokenizers, and greedy decoding gives transformers' tokens and text. */
/* Runs `deltanet run` with argv, standard input from the text `in` (NULL: unchanged), and returns
 * its exit status; its standard output's last line that opens a JSON object is loaded into *rec. */
static int run_captured(int argc, char **argv, const char *in, dn_json **rec) {
    char out_path[256], in_path[256];
    const char *t = getenv("TMPDIR");
    snprintf(out_path, sizeof out_path, "%s/dn_test_run.XXXXXX", t && *t ? t : "/tmp");
    snprintf(in_path, sizeof in_path, "%s/dn_test_in.XXXXXX", t && *t ? t : "/tmp");
    const int fd = mkstemp(out_path), ifd = in ? mkstemp(in_path) : -1;
    if (fd < 0 || (in && ifd < 0)) return -1;
    if (in && write(ifd, in, strlen(in)) != (ssize_t)strlen(in)) return -1;
    if (in) lseek(ifd, 0, SEEK_SET);
    fflush(stdout);
    const int saved = dup(1), saved_in = in ? dup(0) : -1;
    dup2(fd, 1);
    if (in) dup2(ifd, 0);
    clearerr(stdin);
    const int rc = dn_run_main(argc, argv);
    fflush(stdout);
    dup2(saved, 1), close(saved), close(fd);
    if (in) dup2(saved_in, 0), close(saved_in), close(ifd), unlink(in_path), clearerr(stdin);
    /* the record: the text after the last "> " prompt of a chat, or the whole output */
    size_t n = 0;
    FILE *f = fopen(out_path, "rb");
    char *all = NULL;
    if (f) {
        fseek(f, 0, SEEK_END);
        n = (size_t)ftell(f);
        fseek(f, 0, SEEK_SET);
        all = malloc(n + 1);
        if (all && fread(all, 1, n, f) != n) n = 0;
        fclose(f);
    }
    unlink(out_path);
    *rec = NULL;
    if (all) {
        all[n] = 0;
        const char *j = strrchr(all, '{') ? strstr(all, "{\"model\"") : NULL;
        if (j) dn_json_parse(j, strlen(j), &*rec);
        free(all);
    }
    return rc;
}

static int test_hf_run(void) {
    int fails = 0;
    const char *dir = FIXTURES "/qwen3_5_run";
    dn_json *ref = NULL;
    if (dn_json_load(FIXTURES "/qwen3_5_run/reference.json", 1 << 20, &ref) != DN_OK)
        return printf("    FAIL %s\n", dn_last_error()), 1;
    const char *prompt = NULL, *text = NULL;
    const dn_json *pids = NULL, *gen = NULL;
    dn_json_get_str(ref, "prompt", &prompt, NULL, 1);
    dn_json_get_str(ref, "text", &text, NULL, 1);
    dn_json_get_typed(ref, "prompt_ids", DN_JSON_ARRAY, &pids, 1);
    dn_json_get_typed(ref, "generated", DN_JSON_ARRAY, &gen, 1);
    if (!prompt || !text || !pids || !gen) {
        dn_json_free(ref);
        return printf("    FAIL reference.json: %s\n", dn_last_error()), 1;
    }
    dn_tokenizer *tok = NULL;
    int32_t *ids = NULL;
    int64_t n = 0;
    CHECK(dn_tokenizer_load(&tok, dir) == DN_OK &&
              dn_tokenizer_encode(tok, prompt, strlen(prompt), 0, &ids, &n) == DN_OK,
          "%s", dn_last_error());
    CHECK(n == (int64_t)dn_json_len(pids), "prompt: %lld ids, tokenizers gave %zu", (long long)n,
          dn_json_len(pids));
    for (int64_t i = 0; i < n && i < (int64_t)dn_json_len(pids); i++)
        CHECK(ids[i] == dn_json_at(pids, (size_t)i)->u.i, "prompt id %lld", (long long)i);
    free(ids);
    dn_tokenizer_free(tok);

    /* the command, its standard output captured */
    char ntok[16];
    snprintf(ntok, sizeof ntok, "%d", 12);
    char *argv[] = {"run", (char *)dir,     "-p", (char *)prompt, "-n",
                    ntok,  "--temperature", "0",  "--json",       NULL};
    dn_json *rec = NULL;
    const int rc = run_captured(9, argv, NULL, &rec);
    CHECK(rc == 0, "deltanet run returned %d", rc);
    CHECK(rec != NULL, "its JSON record: %s", dn_last_error());
    const char *got = NULL;
    int64_t made = -1, fed = -1;
    if (rec) {
        dn_json_get_str(rec, "text", &got, NULL, 1);
        dn_json_get_int(rec, "generated_tokens", &made, 1);
        dn_json_get_int(rec, "prompt_tokens", &fed, 1);
    }
    CHECK(made == (int64_t)dn_json_len(gen), "%lld tokens generated, transformers %zu",
          (long long)made, dn_json_len(gen));
    CHECK(fed == n, "%lld prompt tokens fed", (long long)fed);
    CHECK(got && !strcmp(got, text), "text '%s', transformers '%s'", got ? got : "(none)", text);
    dn_json_free(rec);
    dn_json_free(ref);

    char *bad[] = {"run", (char *)dir, NULL};
    CHECK(dn_run_main(2, bad) == 2, "run without -p or --chat");
    char *missing[] = {"run", FIXTURES "/none", "-p", "x", NULL};
    CHECK(dn_run_main(4, missing) == 1, "run on a missing directory");
    return fails;
}

/* --chat: one user turn, greedy, gives the tokens of -p over the same turn in ChatML (the
 * prompt's special tokens are matched in the text as the tokenizer's added tokens). */
static int test_hf_chat(void) {
    int fails = 0;
    const char *dir = FIXTURES "/qwen3_5_run";
    char *chat[] = {"run", (char *)dir, "--chat", "-n", "6", "--temperature", "0", "--json", NULL};
    char *plain[] = {"run",
                     (char *)dir,
                     "-p",
                     "<|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\n",
                     "-n",
                     "6",
                     "--temperature",
                     "0",
                     "--json",
                     NULL};
    dn_json *a = NULL, *b = NULL;
    CHECK(run_captured(8, chat, "hello there\n\n", &a) == 0 && a, "run --chat: no record (%s)",
          dn_last_error());
    CHECK(run_captured(9, plain, NULL, &b) == 0 && b, "run -p: no record (%s)", dn_last_error());
    if (a && b) {
        const char *ta = NULL, *tb = NULL;
        int64_t na = -1, nb = -1, pa = -1, pb = -1;
        dn_json_get_str(a, "text", &ta, NULL, 1), dn_json_get_str(b, "text", &tb, NULL, 1);
        dn_json_get_int(a, "generated_tokens", &na, 1),
            dn_json_get_int(b, "generated_tokens", &nb, 1);
        dn_json_get_int(a, "prompt_tokens", &pa, 1), dn_json_get_int(b, "prompt_tokens", &pb, 1);
        CHECK(na > 0 && na == nb && pa == pb && ta && tb && !strcmp(ta, tb),
              "chat: %lld tokens after %lld, '%s'; -p: %lld after %lld, '%s'", (long long)na,
              (long long)pa, ta ? ta : "", (long long)nb, (long long)pb, tb ? tb : "");
    }
    dn_json_free(a), dn_json_free(b);
    return fails;
}

const test_case dn_tests_hf[] = {
    {"hf_qwen3_5_parity", test_hf_parity},
    {"hf_qwen3_5_malformed", test_hf_malformed},
    {"hf_run", test_hf_run},
    {"hf_run_chat", test_hf_chat},
    {NULL, NULL},
};
