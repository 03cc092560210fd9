/*
 * test_train.c - the trainer's parts: AdamW against the formula in double, clipping and the decay
 * mask, the schedule, the data generators, a tiny model of every mixer overfitting a tiny batch,
 * and a run resumed from its state equal to an uninterrupted one to the last bit.
 */
#include "test.h"

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

const test_case dn_tests_train[] = {
    {"train_adamw_formula", test_adamw_formula},
    {"train_lr_schedule", test_lr_schedule},
    {"train_sampling", test_sampling},
    {"train_mqar_data", test_mqar_data},
    {"train_text_data", test_text_data},
    {"train_overfit_every_mixer", test_overfit},
    {"train_resume_in_memory", test_resume_in_memory},
    {NULL, NULL},
};
