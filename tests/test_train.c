/*
 * test_train.c - the trainer's parts: AdamW against the formula in double, clipping and the decay
 * mask, the schedule, the data generators, a tiny model of every mixer overfitting a tiny batch,
 * and a run resumed from its state equal to an uninterrupted one to the last bit.
 */
#include "../tools/recall.h"
#include "test.h"

#include <unistd.h>

static dn_model_config tiny(const char *pattern) {
    dn_model_config c = dn_model_config_default();
    c.vocab_size = 32, c.hidden_size = 32, c.intermediate_size = 64, c.num_hidden_layers = 2;
    snprintf(c.layer_pattern, sizeof c.layer_pattern, "%s", pattern);
    c.linear_num_key_heads = 2, c.linear_num_value_heads = 2;
    c.linear_key_head_dim = 16, c.linear_value_head_dim = 16;
    c.num_attention_heads = 2, c.num_key_value_heads = 1, c.head_dim = 16;
    return c;
}

/* One AdamW step by hand in double on every element, with clipping active. */
static int test_adamw_formula(void) {
    int fails = 0;
    dn_model_config c = tiny("GA");
    dn_model *m = NULL;
    if (dn_model_create(&m, &c, 1) != DN_OK) return 1;
    const int64_t n = dn_model_num_params(m);
    dn_adamw_config oc = dn_adamw_config_default();
    oc.grad_clip = 0.5;
    dn_adamw *o = NULL;
    if (dn_adamw_create(&o, m, &oc) != DN_OK) return 1;
    rng r = {3};
    float *p = dn_model_params(m), *g = dn_model_grads(m);
    double *p0 = malloc(sizeof(double) * (size_t)n), *g0 = malloc(sizeof(double) * (size_t)n);
    uint8_t *decay = calloc((size_t)n, 1);
    for (int64_t t = 0; t < dn_model_num_tensors(m); t++) {
        dn_param_info ti;
        dn_model_param_info(m, t, &ti);
        memset(decay + ti.offset, ti.decay, (size_t)ti.numel);
        const int norm_like =
            strstr(ti.name, "norm") || strstr(ti.name, "A_log") || strstr(ti.name, "dt_bias");
        if (norm_like == ti.decay) {
            printf("    FAIL %s: decay flag %d\n", ti.name, ti.decay);
            fails++;
        }
    }
    double ss = 0;
    for (int64_t i = 0; i < n; i++) {
        p0[i] = p[i], g[i] = rng_uniform(&r, -1, 1), g0[i] = g[i];
        ss += g0[i] * g0[i];
    }
    double norm = 0;
    const double lr = 1e-2;
    if (dn_adamw_step(o, m, lr, &norm) != DN_OK) fails++;
    if (fabs(norm - sqrt(ss)) > 1e-9 * sqrt(ss)) {
        printf("    FAIL grad norm %.12g vs %.12g\n", norm, sqrt(ss));
        fails++;
    }
    const double clip = 0.5 / sqrt(ss);
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
        const double gi = g0[i] * clip, m1 = 0.1 * gi, m2 = 0.05 * gi * gi;
        const double mh = m1 / 0.1, vh = m2 / 0.05;
        double want = p0[i] - lr * (mh / (sqrt(vh) + 1e-8) + (decay[i] ? 0.1 * p0[i] : 0));
        worst = fmax(worst, fabs(want - p[i]) / (fabs(want) + 1e-3));
    }
    if (!(worst < 1e-6)) {
        printf("    FAIL adamw update: worst relative error %.3g\n", worst);
        fails++;
    }
    /* a non-finite gradient: rejected, nothing changes */
    memcpy(p0, p, 0);
    float keep = p[0];
    g[5] = NAN;
    if (dn_adamw_step(o, m, lr, NULL) != DN_ERR_ARG || p[0] != keep || dn_adamw_get_step(o) != 1)
        fails++;
    dn_adamw_config badc = oc;
    badc.beta2 = 1.0;
    dn_adamw *o2 = (dn_adamw *)(uintptr_t)1;
    if (dn_adamw_create(&o2, m, &badc) != DN_ERR_ARG || o2 != (dn_adamw *)(uintptr_t)1) fails++;
    free(p0), free(g0), free(decay);
    dn_adamw_free(o);
    dn_model_free(m);
    return fails;
}

static int test_lr_schedule(void) {
    int fails = 0;
    const double peak = 3e-3;
    fails += fabs(dn_lr_at(0, 10, 100, peak, 0.1) - peak / 10) > 1e-15;
    fails += fabs(dn_lr_at(9, 10, 100, peak, 0.1) - peak) > 1e-15;
    fails += fabs(dn_lr_at(10, 10, 100, peak, 0.1) - peak) > 1e-15;
    fails += fabs(dn_lr_at(55, 10, 100, peak, 0.1) - peak * 0.55) > 1e-12; /* half way */
    fails += fabs(dn_lr_at(100, 10, 100, peak, 0.1) - peak * 0.1) > 1e-15;
    fails += fabs(dn_lr_at(500, 10, 100, peak, 0.1) - peak * 0.1) > 1e-15;
    if (fails) printf("    FAIL schedule values\n");
    return fails;
}

static int test_mqar_data(void) {
    int fails = 0;
    const int64_t B = 4, T = 64, V = 100, D = 16;
    int32_t tok[4 * 64], tgt[4 * 64], tok2[4 * 64], tgt2[4 * 64];
    if (dn_mqar_batch(tok, tgt, B, T, V, D, 5, 9) != DN_OK) return 1;
    dn_mqar_batch(tok2, tgt2, B, T, V, D, 5, 9);
    if (memcmp(tok, tok2, sizeof tok) || memcmp(tgt, tgt2, sizeof tgt)) fails++;
    dn_mqar_batch(tok2, tgt2, B, T, V, D, 5, 10);
    if (!memcmp(tok, tok2, sizeof tok)) fails++; /* another index, another batch */
    for (int64_t b = 0; b < B; b++) {
        const int32_t *x = tok + b * T, *y = tgt + b * T;
        int count = 0;
        for (int64_t t = 0; t < T; t++) {
            if (t < 2 * D) {
                const int ok = t % 2 ? x[t] >= V / 2 && x[t] < V : x[t] >= 1 && x[t] < V / 2;
                if (!ok || y[t] != -1) fails++;
                if (t % 2 == 0)
                    for (int64_t j = 0; j < t; j += 2)
                        fails += x[j] == x[t]; /* keys distinct */
                continue;
            }
            if (y[t] < 0) continue;
            count++;
            int found = 0; /* the answer is the value paired with the query's key */
            for (int64_t j = 0; j < 2 * D; j += 2)
                if (x[j] == x[t]) found = y[t] == x[j + 1];
            if (!found || (t + 1 < T && x[t + 1] != y[t]) || (t - 2 * D) % 2) fails++;
        }
        if (count != D) fails++;
    }
    if (dn_mqar_batch(tok, tgt, B, 63, V, D, 1, 1) != DN_ERR_ARG) fails++; /* T < 4 D */
    if (dn_mqar_batch(tok, tgt, B, T, 30, D, 1, 1) != DN_ERR_ARG) fails++; /* too few keys */
    if (dn_mqar_batch(NULL, tgt, B, T, V, D, 1, 1) != DN_ERR_NULL) fails++;
    if (fails) printf("    FAIL mqar: %d checks\n", fails);
    return fails;
}

static int test_text_data(void) {
    int fails = 0;
    uint8_t text[1000];
    rng r = {12};
    for (int i = 0; i < 1000; i++) /* random bytes: every 50-byte window occurs once */
        text[i] = (uint8_t)(rng_next(&r) >> 56);
    dn_text_data *d = NULL;
    if (dn_text_data_from_memory(&d, text, sizeof text, 0.1) != DN_OK) return 1;
    if (dn_text_data_size(d, 0) != 900 || dn_text_data_size(d, 1) != 100) fails++;
    int32_t tok[3 * 50], tgt[3 * 50];
    for (int val = 0; val < 2; val++) {
        if (dn_text_data_batch(d, val, 1, 2, tok, tgt, 3, 50) != DN_OK) return fails + 1;
        for (int b = 0; b < 3; b++) {
            int start = -1;
            for (int i = 0; i < 1000; i++)
                if (text[i] == tok[b * 50]) {
                    int ok = i + 50 < 1000;
                    for (int t = 0; ok && t < 50; t++)
                        ok = text[i + t] == tok[b * 50 + t] && text[i + t + 1] == tgt[b * 50 + t];
                    if (ok) {
                        start = i;
                        break;
                    }
                }
            if (start < 0 || (val ? start < 900 : start + 50 >= 900)) fails++;
        }
    }
    if (dn_text_data_batch(d, 1, 1, 2, tok, tgt, 1, 100) != DN_ERR_SHAPE) fails++;
    if (dn_text_data_from_memory(&d, text, 10, 1.0) != DN_ERR_ARG) fails++;
    dn_text_data *nd = NULL;
    if (dn_text_data_load(&nd, "/nonexistent/file", 0.1) == DN_OK) fails++;
    dn_text_data_free(d);
    if (fails) printf("    FAIL text data: %d checks\n", fails);
    return fails;
}

/* Trains for `steps` on the fixed batch, from the state given; returns the last loss. */
static double train_steps(dn_model *m, dn_adamw *o, const int32_t *tok, const int32_t *tgt,
                          int64_t B, int64_t T, int64_t from, int64_t steps, double lr) {
    double loss = 0;
    int64_t nt = 0;
    for (int64_t s = from; s < from + steps; s++) {
        dn_model_zero_grad(m);
        int64_t cnt = 0;
        for (int64_t i = 0; i < B * T; i++)
            cnt += tgt[i] >= 0;
        if (dn_model_forward_backward(m, tok, tgt, B, T, 1.0f / (float)cnt, &loss, &nt) != DN_OK ||
            dn_adamw_step(o, m, dn_lr_at(s, 10, from + steps, lr, 0.1), NULL) != DN_OK)
            return INFINITY;
    }
    return loss / (double)nt;
}

static int test_overfit(void) {
    int fails = 0;
    const char *patterns[] = {"G", "D", "L", "M", "R", "S", "A", "GGGA"};
    for (int k = 0; k < (int)(sizeof patterns / sizeof patterns[0]); k++) {
        dn_model_config c = tiny(patterns[k]);
        dn_model *m = NULL;
        dn_adamw *o = NULL;
        dn_adamw_config oc = dn_adamw_config_default();
        oc.weight_decay = 0;
        if (dn_model_create(&m, &c, 4) != DN_OK || dn_adamw_create(&o, m, &oc) != DN_OK) return 1;
        const int64_t B = 2, T = 24;
        int32_t tok[48], tgt[48];
        rng r = {8};
        for (int i = 0; i < 48; i++)
            tok[i] = (int32_t)(rng_next(&r) % 32), tgt[i] = (int32_t)(rng_next(&r) % 32);
        const double first = train_steps(m, o, tok, tgt, B, T, 0, 1, 0.0);
        const double last = train_steps(m, o, tok, tgt, B, T, 1, 150, 1e-2);
        printf("    %-4s loss %.3f -> %.4f (per token, 150 steps)\n", patterns[k], first, last);
        if (!(last < 0.05)) {
            printf("    FAIL %s does not overfit a tiny batch\n", patterns[k]);
            fails++;
        }
        dn_adamw_free(o);
        dn_model_free(m);
    }
    return fails;
}

/* 20 steps, or 10 steps, the state copied out and into a fresh model and optimizer, 10 more:
 * the same parameters to the last bit. */
static int test_resume_in_memory(void) {
    dn_model_config c = tiny("GA");
    const int64_t B = 2, T = 20;
    int32_t tok[40], tgt[40];
    rng r = {2};
    for (int i = 0; i < 40; i++)
        tok[i] = (int32_t)(rng_next(&r) % 32), tgt[i] = (int32_t)(rng_next(&r) % 32);
    dn_adamw_config oc = dn_adamw_config_default();
    dn_model *a = NULL, *b = NULL, *b2 = NULL;
    dn_adamw *oa = NULL, *ob = NULL, *ob2 = NULL;
    dn_model_create(&a, &c, 1), dn_model_create(&b, &c, 1), dn_model_create(&b2, &c, 99);
    dn_adamw_create(&oa, a, &oc), dn_adamw_create(&ob, b, &oc), dn_adamw_create(&ob2, b2, &oc);
    const double la = train_steps(a, oa, tok, tgt, B, T, 0, 20, 3e-3);
    train_steps(b, ob, tok, tgt, B, T, 0, 10, 3e-3);
    const int64_t n = dn_model_num_params(b);
    float *m1, *m2, *n1, *n2;
    int64_t step;
    dn_adamw_state(ob, &step, &m1, &m2);
    dn_adamw_state(ob2, NULL, &n1, &n2);
    memcpy(dn_model_params(b2), dn_model_params(b), sizeof(float) * (size_t)n);
    memcpy(n1, m1, sizeof(float) * (size_t)n), memcpy(n2, m2, sizeof(float) * (size_t)n);
    dn_adamw_set_step(ob2, step);
    const double lb = train_steps(b2, ob2, tok, tgt, B, T, 10, 10, 3e-3);
    int fails = 0;
    /* the schedule of train_steps depends on (from + steps): both end at 20 */
    if (la != lb || memcmp(dn_model_params(a), dn_model_params(b2), sizeof(float) * (size_t)n)) {
        printf("    FAIL resumed run differs: loss %.17g vs %.17g\n", la, lb);
        fails++;
    }
    dn_adamw_free(oa), dn_adamw_free(ob), dn_adamw_free(ob2);
    dn_model_free(a), dn_model_free(b), dn_model_free(b2);
    return fails;
}

/* Sampling: greedy is the argmax; top-k and top-p keep only their candidates; frequencies follow
 * softmax(z / temperature) (20000 draws, each within 4 standard deviations); a seed reproduces;
 * NaN logits are never drawn; bad options are errors. */
static int test_sampling(void) {
    int fails = 0;
    const float z[5] = {1.0f, 3.0f, NAN, 2.0f, -1.0f};
    dn_sample_params p = dn_sample_params_default();
    uint64_t st = 1;
    int32_t t = -1;
    p.temperature = 0;
    if (dn_sample(&t, z, 5, &p, &st) != DN_OK || t != 1) fails++;
    p.temperature = 1.0, p.top_p = 1.0, p.top_k = 2;
    for (int i = 0; i < 2000; i++) {
        dn_sample(&t, z, 5, &p, &st);
        if (t != 1 && t != 3) fails++;
    }
    p.top_k = 0, p.top_p = 0.5; /* token 1 alone holds more than half the mass */
    for (int i = 0; i < 200; i++) {
        dn_sample(&t, z, 5, &p, &st);
        if (t != 1) fails++;
    }
    p.top_p = 1.0, p.temperature = 2.0;
    double w[5], sum = 0;
    for (int j = 0; j < 5; j++)
        sum += (w[j] = j == 2 ? 0 : exp(z[j] / 2.0));
    int count[5] = {0};
    const int n = 20000;
    for (int i = 0; i < n; i++) {
        dn_sample(&t, z, 5, &p, &st);
        if (t >= 0 && t < 5) count[t]++;
    }
    for (int j = 0; j < 5; j++) {
        const double q = w[j] / sum, sd = sqrt(n * q * (1 - q));
        if (fabs(count[j] - n * q) > 4 * sd + 1e-9) {
            printf("    FAIL token %d drawn %d times, expected %.0f +- %.0f\n", j, count[j], n * q,
                   sd);
            fails++;
        }
    }
    uint64_t s1 = 42, s2 = 42;
    for (int i = 0; i < 50; i++) {
        int32_t a, b;
        dn_sample(&a, z, 5, &p, &s1), dn_sample(&b, z, 5, &p, &s2);
        fails += a != b;
    }
    p.top_p = 0;
    if (dn_sample(&t, z, 5, &p, &st) != DN_ERR_ARG) fails++;
    p.top_p = 1, p.temperature = -1;
    if (dn_sample(&t, z, 5, &p, &st) != DN_ERR_ARG) fails++;
    const float allnan[2] = {NAN, NAN};
    p.temperature = 1;
    if (dn_sample(&t, allnan, 2, &p, &st) != DN_ERR_ARG) fails++;
    return fails;
}

/* ---- checkpoints ---- */

static void tmp_path(char *buf, size_t n, const char *tag) {
    snprintf(buf, n, "/tmp/dn_test_%ld_%s.safetensors", (long)getpid(), tag);
}

/* Saved and loaded: the same config, parameters, moments, step and extra JSON, bit for bit. */
static int test_checkpoint_roundtrip(void) {
    int fails = 0;
    dn_model_config c = tiny("GMAR");
    c.num_hidden_layers = 4;
    dn_model *m = NULL, *m2 = NULL;
    dn_adamw *o = NULL, *o2 = NULL;
    dn_adamw_config oc = dn_adamw_config_default();
    if (dn_model_create(&m, &c, 5) != DN_OK || dn_adamw_create(&o, m, &oc) != DN_OK) return 1;
    const int64_t B = 2, T = 12;
    int32_t tok[24], tgt[24];
    rng r = {6};
    for (int i = 0; i < 24; i++)
        tok[i] = (int32_t)(rng_next(&r) % 32), tgt[i] = (int32_t)(rng_next(&r) % 32);
    train_steps(m, o, tok, tgt, B, T, 0, 3, 1e-3);
    char path[128];
    tmp_path(path, sizeof path, "ckpt");
    const char *extra = "{\"step\": 3, \"note\": \"caf\\u00e9\"}";
    if (dn_checkpoint_save(path, m, o, extra) != DN_OK) {
        printf("    FAIL save: %s\n", dn_last_error());
        return 1;
    }
    char *x = NULL;
    if (dn_checkpoint_load(path, &m2, &o2, &oc, &x) != DN_OK) {
        printf("    FAIL load: %s\n", dn_last_error());
        return 1;
    }
    const int64_t n = dn_model_num_params(m);
    float *a1, *a2, *b1, *b2;
    int64_t sa, sb;
    dn_adamw_state(o, &sa, &a1, &a2), dn_adamw_state(o2, &sb, &b1, &b2);
    if (memcmp(dn_model_get_config(m), dn_model_get_config(m2), sizeof c) ||
        dn_model_num_params(m2) != n ||
        memcmp(dn_model_params(m), dn_model_params(m2), sizeof(float) * (size_t)n) ||
        memcmp(a1, b1, sizeof(float) * (size_t)n) || memcmp(a2, b2, sizeof(float) * (size_t)n) ||
        sa != sb || !x || strcmp(x, extra) != 0) {
        printf("    FAIL round trip differs (extra %s)\n", x ? x : "(none)");
        fails++;
    }
    free(x);
    /* the config as JSON, both ways */
    char *js = NULL;
    dn_model_config back;
    if (dn_model_config_to_json(&c, &js) != DN_OK ||
        dn_model_config_from_json(&back, js, strlen(js)) != DN_OK || memcmp(&back, &c, sizeof c)) {
        printf("    FAIL config JSON round trip\n");
        fails++;
    }
    free(js);
    const char *bad_cfg[] = {"{\"hidden_sise\": 64}",
                             "{\"hidden_size\": \"64\"}",
                             "{\"hidden_size\": -1}",
                             "{\"layer_pattern\": \"GX\"}",
                             "[1]",
                             "{\"hidden_size\": 64.5}",
                             "{"};
    for (size_t i = 0; i < sizeof bad_cfg / sizeof bad_cfg[0]; i++) {
        dn_model_config keep = back;
        if (dn_model_config_from_json(&back, bad_cfg[i], strlen(bad_cfg[i])) == DN_OK ||
            memcmp(&keep, &back, sizeof back)) {
            printf("    FAIL config %s accepted\n", bad_cfg[i]);
            fails++;
        }
    }
    remove(path);
    dn_adamw_free(o), dn_adamw_free(o2);
    dn_model_free(m), dn_model_free(m2);
    return fails;
}

/* 20 steps straight, or 10 steps, a checkpoint written and read back into a fresh process
 * state, 10 more: the same losses and parameters to the last bit. */
static int test_resume_from_file(void) {
    int fails = 0;
    dn_model_config c = tiny("GA");
    dn_adamw_config oc = dn_adamw_config_default();
    const int64_t B = 2, T = 20;
    int32_t tok[40], tgt[40];
    rng r = {2};
    for (int i = 0; i < 40; i++)
        tok[i] = (int32_t)(rng_next(&r) % 32), tgt[i] = (int32_t)(rng_next(&r) % 32);
    dn_model *a = NULL, *b = NULL, *b2 = NULL;
    dn_adamw *oa = NULL, *ob = NULL, *ob2 = NULL;
    dn_model_create(&a, &c, 1), dn_model_create(&b, &c, 1);
    dn_adamw_create(&oa, a, &oc), dn_adamw_create(&ob, b, &oc);
    const double la = train_steps(a, oa, tok, tgt, B, T, 0, 20, 3e-3);
    train_steps(b, ob, tok, tgt, B, T, 0, 10, 3e-3);
    char path[128];
    tmp_path(path, sizeof path, "resume");
    if (dn_checkpoint_save(path, b, ob, NULL) != DN_OK ||
        dn_checkpoint_load(path, &b2, &ob2, &oc, NULL) != DN_OK) {
        printf("    FAIL checkpoint: %s\n", dn_last_error());
        return 1;
    }
    const double lb = train_steps(b2, ob2, tok, tgt, B, T, 10, 10, 3e-3);
    const int64_t n = dn_model_num_params(a);
    if (la != lb || memcmp(dn_model_params(a), dn_model_params(b2), sizeof(float) * (size_t)n)) {
        printf("    FAIL resumed run differs: loss %.17g vs %.17g\n", la, lb);
        fails++;
    }
    remove(path);
    dn_adamw_free(oa), dn_adamw_free(ob), dn_adamw_free(ob2);
    dn_model_free(a), dn_model_free(b), dn_model_free(b2);
    return fails;
}

/* runs.tsv of a recall run without its seconds column (the only field a resumed run may change). */
static char *runs_without_seconds(const char *dir) {
    char path[256], line[2048];
    snprintf(path, sizeof path, "%s/runs.tsv", dir);
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    size_t cap = 1 << 16, len = 0;
    char *out = calloc(cap, 1);
    while (out && fgets(line, sizeof line, f)) {
        int field = 0;
        for (const char *p = line; *p && len + 1 < cap; p++) {
            if (*p == '\t') field++;
            if (field != 4) out[len++] = *p; /* field 4: seconds, with the tab before it */
        }
    }
    fclose(f);
    return out;
}

/* The models of a recall run in runs.tsv whose accuracy per slice is the mean of its four
 * quarters' (each quarter holds a quarter of the queries), all in [0, 1]; -1 on a malformed line.
 */
static int quarters_consistent(const char *dir) {
    char path[256], line[4096];
    snprintf(path, sizeof path, "%s/runs.tsv", dir);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int good = 0, n_eval = 8;
    if (!fgets(line, sizeof line, f)) good = -1; /* the settings line */
    while (good >= 0 && fgets(line, sizeof line, f)) {
        double v[64];
        int n = 0;
        char *p = line, *end;
        for (int field = 0; *p && *p != '\n'; field++) {
            if (field == 0) { /* the mixer letter */
                p = strchr(p, '\t');
                if (!p) break;
                p++;
                continue;
            }
            const double x = strtod(p, &end);
            if (end == p || n == 64) break;
            v[n++] = x, p = *end == '\t' ? end + 1 : end;
        }
        if (n != 6 + 5 * n_eval) { /* width, params, steps, seconds, state, loss; acc; quarters */
            good = -1;
            break;
        }
        int ok = 1;
        for (int e = 0; e < n_eval; e++) {
            const double *q = v + 6 + n_eval + 4 * e, acc = v[6 + e];
            ok &= fabs((q[0] + q[1] + q[2] + q[3]) / 4 - acc) < 1e-12;
            for (int h = 0; h < 4; h++)
                ok &= q[h] >= 0 && q[h] <= 1;
        }
        good += ok;
    }
    fclose(f);
    return good;
}

static void rm_recall_dir(const char *dir) {
    const char *files[] = {"runs.tsv",
                           "recall.txt",
                           "recall.json",
                           "recall.svg",
                           "train-G64.safetensors",
                           "train-A64.safetensors"};
    char path[256];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        remove(path);
    }
    rmdir(dir);
}

/* deltanet recall on a tiny setting in dir, with up to three more arguments (NULL: none). */
static int recall_call(const char *dir, const char *steps, const char *x1, const char *x2,
                       const char *x3) {
    const char *argv[24] = {"recall", "--vocab",      "512", "--steps",  steps,   "--batch-tokens",
                            "1024",   "--widths",     "64",  "--mixers", "GA",    "--eval-seqs",
                            "8",      "--ckpt-every", "3",   "--quiet",  "--out", dir};
    int argc = 18;
    const char *x[] = {x1, x2, x3};
    for (int i = 0; i < 3; i++)
        if (x[i]) argv[argc++] = x[i];
    return dn_recall_main(argc, (char **)argv);
}

/* deltanet recall stopped three times (inside a model, at a checkpoint step and at the start of
 * the next model) and resumed gives the same runs.tsv, bit for bit, as one run straight through;
 * a resume with other options (steps, the gates' decay range), or without a run to resume, is
 * refused. */
static int test_recall_resume(void) {
    int fails = 0;
    char a[128], b[128];
    snprintf(a, sizeof a, "/tmp/dn_test_%ld_recall_a", (long)getpid());
    snprintf(b, sizeof b, "/tmp/dn_test_%ld_recall_b", (long)getpid());
    CHECK(recall_call(a, "8", NULL, NULL, NULL) == 0, "recall run straight through failed");
    CHECK(recall_call(b, "8", "--resume", NULL, NULL) != 0, "--resume without a run accepted");
    int rc = recall_call(b, "8", "--stop-after", "5", NULL);    /* G stops at step 5 */
    rc |= recall_call(b, "8", "--resume", "--stop-after", "6"); /* G to 8, A stops at step 3 */
    rc |= recall_call(b, "8", "--resume", "--stop-after", "5"); /* A from 3 to the end */
    rc |= recall_call(b, "8", "--resume", NULL, NULL);          /* nothing left to train */
    CHECK(rc == 0, "stopped and resumed runs failed");
    char *ra = runs_without_seconds(a), *rb = runs_without_seconds(b);
    CHECK(ra && rb && strlen(ra) > 100 && !strcmp(ra, rb), "resumed runs differ:\n%s\n%s",
          ra ? ra : "?", rb ? rb : "?");
    CHECK(quarters_consistent(a) == 2, "runs.tsv: quarter accuracies missing or inconsistent");
    CHECK(recall_call(b, "9", "--resume", NULL, NULL) != 0, "resume with other options accepted");
    CHECK(recall_call(b, "8", "--resume", "--decay-init", "0.9,0.95") != 0,
          "resume with another gate initialisation accepted");
    free(ra), free(rb);
    rm_recall_dir(a), rm_recall_dir(b);
    return fails;
}

/* The numbers after the mixer letter on the line of `mixer` in dir/name (a runs.tsv or a
 * merged.tsv): their count, or -1 without such a line. */
static int tsv_row(const char *dir, const char *name, char mixer, double *v, int cap) {
    char path[256], line[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int n = -1;
    if (fgets(line, sizeof line, f)) /* the settings line */
        while (n < 0 && fgets(line, sizeof line, f)) {
            if (line[0] != mixer || line[1] != '\t') continue;
            char *p = line + 2, *end;
            for (n = 0; n < cap; n++) {
                v[n] = strtod(p, &end);
                if (end == p) break;
                p = end;
            }
        }
    fclose(f);
    return n;
}

/* deltanet recall --merge: two runs that differ in the seed give per slice the mean, lowest and
 * highest of their accuracies; the same seed twice, or runs of other options, are refused. */
static int test_recall_merge(void) {
    int fails = 0;
    char a[128], b[128], c[128], m[128];
    snprintf(a, sizeof a, "/tmp/dn_test_%ld_merge_a", (long)getpid());
    snprintf(b, sizeof b, "/tmp/dn_test_%ld_merge_b", (long)getpid());
    snprintf(c, sizeof c, "/tmp/dn_test_%ld_merge_c", (long)getpid());
    snprintf(m, sizeof m, "/tmp/dn_test_%ld_merge_m", (long)getpid());
    int rc = recall_call(a, "6", NULL, NULL, NULL);
    rc |= recall_call(b, "6", "--seed", "8", NULL);
    rc |= recall_call(c, "7", "--seed", "9", NULL);
    CHECK(rc == 0, "recall runs to merge failed");
    const char *ok[] = {"recall", "--merge", a, b, "--out", m, "--quiet"};
    CHECK(dn_recall_main(7, (char **)ok) == 0, "merge of two seeds failed");
    for (int k = 0; k < 2; k++) {
        const char mixer = "GA"[k];
        double ra[64], rb[64], rm[64];
        const int na = tsv_row(a, "runs.tsv", mixer, ra, 64),
                  nb = tsv_row(b, "runs.tsv", mixer, rb, 64),
                  nm = tsv_row(m, "merged.tsv", mixer, rm, 64);
        CHECK(na == 6 + 5 * 8 && nb == na && nm == 3 + 3 * 8, "%c: rows of %d, %d, %d numbers",
              mixer, na, nb, nm);
        if (na != 6 + 5 * 8 || nb != na || nm != 3 + 3 * 8) continue;
        CHECK(rm[2] == 2, "%c: %g seeds merged", mixer, rm[2]);
        for (int e = 0; e < 8; e++) { /* runs.tsv: 6 numbers, then the accuracies */
            const double x = ra[6 + e], y = rb[6 + e], *t = rm + 3 + 3 * e;
            CHECK(fabs(t[0] - (x + y) / 2) < 1e-15 && t[1] == fmin(x, y) && t[2] == fmax(x, y),
                  "%c slice %d: merged %g %g %g from %g and %g", mixer, e, t[0], t[1], t[2], x, y);
        }
    }
    const char *twice[] = {"recall", "--merge", a, a};
    CHECK(dn_recall_main(4, (char **)twice) != 0, "the same seed merged twice");
    const char *other[] = {"recall", "--merge", a, c};
    CHECK(dn_recall_main(4, (char **)other) != 0, "runs of other steps merged");
    const char *none[] = {"recall", "--merge"};
    CHECK(dn_recall_main(2, (char **)none) != 0, "merge of nothing accepted");
    rm_recall_dir(a), rm_recall_dir(b), rm_recall_dir(c);
    char path[256];
    snprintf(path, sizeof path, "%s/merged.txt", m), remove(path);
    snprintf(path, sizeof path, "%s/merged.tsv", m), remove(path);
    rmdir(m);
    return fails;
}

/* Malformed checkpoints: every truncation (in steps), flipped header bytes, a file of another
 * model, a model-only file asked for the optimizer, a missing file: errors, nothing returned. */
static int test_checkpoint_malformed(void) {
    int fails = 0;
    dn_model_config c = tiny("GA");
    dn_model *m = NULL;
    dn_adamw *o = NULL;
    dn_adamw_config oc = dn_adamw_config_default();
    dn_model_create(&m, &c, 1), dn_adamw_create(&o, m, &oc);
    char path[128];
    tmp_path(path, sizeof path, "bad");
    if (dn_checkpoint_save(path, m, NULL, NULL) != DN_OK) return 1;
    FILE *f = fopen(path, "rb");
    if (!f) return 1;
    fseek(f, 0, SEEK_END);
    const size_t len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(len), *cp = malloc(len);
    if (fread(buf, 1, len, f) != len) fails++;
    fclose(f);
    dn_model *const UNSET = (dn_model *)(uintptr_t)0x5a5a;
#define EXPECT_FAIL(what, call)                                                                    \
    do {                                                                                           \
        dn_model *mm = UNSET;                                                                      \
        dn_status st_ = (call);                                                                    \
        if (st_ == DN_OK || mm != UNSET) {                                                         \
            printf("    FAIL %s: accepted\n", what);                                               \
            fails++;                                                                               \
            if (st_ == DN_OK) dn_model_free(mm);                                                   \
        }                                                                                          \
    } while (0)
    for (size_t cut = 0; cut < len; cut += 1 + len / 97)
        EXPECT_FAIL("truncated", dn_checkpoint_parse(buf, cut, &mm, NULL, NULL, NULL));
    const uint64_t hlen = (uint64_t)buf[0] | (uint64_t)buf[1] << 8 | (uint64_t)buf[2] << 16;
    const char *needles[] = {"\"F32\"", "hidden_size\\\"", "deltanet-checkpoint", "\"shape\":[",
                             "model.norm.weight"};
    const char *repl[] = {"\"F16\"", "hidden_sise\\\"", "deltanet-checkpoinX", "\"shape\":[9",
                          "model.norm.weighX"};
    for (size_t k = 0; k < sizeof needles / sizeof needles[0]; k++) {
        memcpy(cp, buf, len);
        char *hdr = (char *)cp + 8, *at = NULL;
        for (size_t i = 0; i + strlen(needles[k]) <= hlen && !at; i++)
            if (!memcmp(hdr + i, needles[k], strlen(needles[k]))) at = hdr + i;
        if (!at) {
            printf("    FAIL test setup: %s not in the header\n", needles[k]);
            fails++;
            continue;
        }
        memcpy(at, repl[k], strlen(repl[k]));
        EXPECT_FAIL(repl[k], dn_checkpoint_parse(cp, len, &mm, NULL, NULL, NULL));
    }
    /* the optimizer asked of a model-only file; another model's file through its shape */
    dn_adamw *oo = NULL;
    EXPECT_FAIL("no optimizer state", dn_checkpoint_parse(buf, len, &mm, &oo, &oc, NULL));
    if (oo) fails++;
    EXPECT_FAIL("missing file",
                dn_checkpoint_load("/nonexistent/x.safetensors", &mm, NULL, NULL, NULL));
    EXPECT_FAIL("NULL optimizer config", dn_checkpoint_load(path, &mm, &oo, NULL, NULL));
#undef EXPECT_FAIL
    if (dn_checkpoint_save(path, m, o, "{not json") == DN_OK) fails++;
    remove(path);
    free(buf), free(cp);
    dn_adamw_free(o);
    dn_model_free(m);
    return fails;
}

const test_case dn_tests_train[] = {
    {"train_adamw_formula", test_adamw_formula},
    {"train_lr_schedule", test_lr_schedule},
    {"train_sampling", test_sampling},
    {"train_mqar_data", test_mqar_data},
    {"train_text_data", test_text_data},
    {"train_overfit_every_mixer", test_overfit},
    {"train_resume_in_memory", test_resume_in_memory},
    {"train_checkpoint_roundtrip", test_checkpoint_roundtrip},
    {"train_resume_from_file", test_resume_from_file},
    {"train_checkpoint_malformed", test_checkpoint_malformed},
    {"recall_resume", test_recall_resume},
    {"recall_merge", test_recall_merge},
    {NULL, NULL},
};
