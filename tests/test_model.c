/*
 * test_model.c - the language model layer: logits against an independent double reference
 * (tests/model_ref.c), every parameter's gradient against central finite differences of that
 * reference in double, the config checks, bad input, and run-to-run reproducibility.
 */
#include "model_ref.h"
#include "test.h"

/* Tiny configurations: every mixer, grouped heads, the attention options, hybrids. */
static dn_model_config tiny(int which) {
    dn_model_config c = dn_model_config_default();
    c.vocab_size = 11, c.hidden_size = 16, c.intermediate_size = 24, c.num_hidden_layers = 2;
    c.linear_num_key_heads = 2, c.linear_num_value_heads = 4;
    c.linear_key_head_dim = 8, c.linear_value_head_dim = 6;
    c.num_attention_heads = 4, c.num_key_value_heads = 2, c.head_dim = 8;
    c.initializer_range = 0.3; /* large enough that every path shapes the loss */
    switch (which) {
    case 0: /* one layer: the gradient error of the mixer alone */
        strcpy(c.layer_pattern, "G"), c.tie_word_embeddings = 0, c.num_hidden_layers = 1;
        break;
    case 1: strcpy(c.layer_pattern, "A"), c.partial_rotary_factor = 0.5; break;
    case 2:
        strcpy(c.layer_pattern, "GGA"), c.num_hidden_layers = 3;
        c.attn_output_gate = 0, c.attn_qk_norm = 0;
        break;
    case 4: /* DeltaNet and linear attention on the same skeleton, and Gated DeltaNet */
        strcpy(c.layer_pattern, "DLG"), c.num_hidden_layers = 3;
        break;
    case 5: /* Mamba-2 (2 groups of B and C over 4 heads) */ strcpy(c.layer_pattern, "M"); break;
    case 6: /* Mamba-2 in a hybrid, one group */
        strcpy(c.layer_pattern, "MA"), c.linear_num_key_heads = 1;
        break;
    case 7: /* RWKV-4, and beside Gated DeltaNet */ strcpy(c.layer_pattern, "RG"); break;
    case 8: /* Mamba-1 (state 4, dt rank 3), and beside attention */
        strcpy(c.layer_pattern, "SA"), c.mamba_state_size = 4, c.mamba_dt_rank = 3;
        break;
    case 9: /* attention with the short convolution over q, k, v (gated, q/k norms) */
        strcpy(c.layer_pattern, "A"), c.attn_conv_kernel_dim = 3;
        break;
    case 10: /* the same without norms or gate, width 4, one key/value head, beside G */
        strcpy(c.layer_pattern, "GA"), c.attn_conv_kernel_dim = 4, c.num_key_value_heads = 1;
        c.attn_output_gate = 0, c.attn_qk_norm = 0;
        break;
    default: /* 3: one key head shared by every value head, conv width 2, no rotary dims */
        strcpy(c.layer_pattern, "AG"), c.linear_num_key_heads = 1, c.linear_conv_kernel_dim = 2;
        c.partial_rotary_factor = 0.0, c.num_key_value_heads = 1;
        break;
    }
    return c;
}
#define N_TINY 11

/* A model whose zero-initialised norms and fixed gate parameters are moved off their initial
 * values, so that their gradients are tested at a generic point. */
static dn_model *make_model(const dn_model_config *c, uint64_t seed) {
    dn_model *m = NULL;
    if (dn_model_create(&m, c, seed) != DN_OK) {
        printf("    FAIL dn_model_create: %s\n", dn_last_error());
        return NULL;
    }
    rng r = {seed * 7 + 1};
    float *p = dn_model_params(m);
    for (int64_t t = 0; t < dn_model_num_tensors(m); t++) {
        dn_param_info ti;
        dn_model_param_info(m, t, &ti);
        if (ti.ndim == 1)
            for (int64_t i = 0; i < ti.numel; i++)
                p[ti.offset + i] += rng_uniform(&r, -0.3f, 0.3f);
    }
    return m;
}

static void random_tokens(rng *r, int32_t *tok, int32_t *tgt, int64_t n, int64_t vocab) {
    for (int64_t i = 0; i < n; i++) {
        tok[i] = (int32_t)(rng_next(r) % (uint64_t)vocab);
        tgt[i] = rng_next(r) % 5 == 0 ? -1 : (int32_t)(rng_next(r) % (uint64_t)vocab);
    }
}

static const int64_t shapes[][2] = {{2, 5}, {1, 37}, {3, 1}};

static int test_model_logits(void) {
    int fails = 0;
    for (int w = 0; w < N_TINY; w++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            dn_model_config c = tiny(w);
            dn_model *m = make_model(&c, 11 + (uint64_t)w);
            if (!m) return 1;
            const int64_t B = shapes[s][0], T = shapes[s][1], N = B * T, Vo = c.vocab_size;
            rng r = {100 + s};
            int32_t *tok = malloc(sizeof(int32_t) * (size_t)N),
                    *tgt = malloc(sizeof(int32_t) * (size_t)N);
            random_tokens(&r, tok, tgt, N, Vo);
            const int64_t np = dn_model_num_params(m);
            double *pd = malloc(sizeof(double) * (size_t)np),
                   *zr = malloc(sizeof(double) * (size_t)(N * Vo));
            for (int64_t i = 0; i < np; i++)
                pd[i] = dn_model_params(m)[i];
            ref_model rm = {m, pd};
            const double lref = ref_model_forward(&rm, zr, tok, tgt, B, T);
            float *z = falloc(N * Vo), *zref = falloc(N * Vo);
            poison(z, N * Vo);
            for (int64_t i = 0; i < N * Vo; i++)
                zref[i] = (float)zr[i];
            char what[300];
            snprintf(what, sizeof what, "logits %s B=%lld T=%lld", c.layer_pattern, (long long)B,
                     (long long)T);
            if (dn_model_logits(m, z, tok, B, T) != DN_OK) {
                printf("    FAIL %s: %s\n", what, dn_last_error());
                fails++;
            } else
                fails += check_close(what, z, zref, N * Vo, 5e-5); /* worst seen 1.4e-5 */
            double loss = 0;
            int64_t nt = -1, want = 0;
            for (int64_t i = 0; i < N; i++)
                want += tgt[i] >= 0;
            if (dn_model_forward_backward(m, tok, tgt, B, T, 0.0f, &loss, &nt) != DN_OK ||
                nt != want || !(fabs(loss - lref) <= 2e-5 * fabs(lref) + 1e-6)) {
                printf("    FAIL loss %s: %.9g vs reference %.9g (targets %lld of %lld)\n", what,
                       loss, lref, (long long)nt, (long long)want);
                fails++;
            }
            free(tok), free(tgt), free(pd), free(zr), free(z), free(zref);
            dn_model_free(m);
        }
    return fails;
}

/*
 * Gradients: for every tensor, 6 single elements and one random direction u, the library's
 * gradient (fp32 forward and backward) against (L(p + h u) - L(p - h u)) / 2h of the double
 * reference at the same point, h = 1e-4 (truncation ~h^2 L''' and rounding ~1e-16 L / h are
 * both below 1e-8 here). The library computes in fp32: one Gated DeltaNet layer over 37 tokens
 * is 9e-6 from the double gradient, stacks of two or three layers 7e-5 (the error grows with
 * the depth the gradient crosses, the same with the op's double reference in place of its fast
 * path), attention alone 1e-6. The bound, 2e-4 of the scale of the compared quantity (the
 * tensor's largest gradient for an element, sum |g_i u_i| for a direction), is 3x the worst seen.
 */
static int grad_case(int which, int64_t B, int64_t T) {
    int fails = 0;
    dn_model_config c = tiny(which);
    dn_model *m = make_model(&c, 23 + (uint64_t)which);
    if (!m) return 1;
    const int64_t N = B * T, np = dn_model_num_params(m);
    rng r = {5 + (uint64_t)which};
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)N), *tgt = malloc(sizeof(int32_t) * (size_t)N);
    random_tokens(&r, tok, tgt, N, c.vocab_size);
    dn_model_zero_grad(m);
    double loss;
    if (dn_model_forward_backward(m, tok, tgt, B, T, 1.0f, &loss, NULL) != DN_OK) {
        printf("    FAIL forward_backward: %s\n", dn_last_error());
        dn_model_free(m);
        free(tok), free(tgt);
        return 1;
    }
    const float *g = dn_model_grads(m);
    double *pd = malloc(sizeof(double) * (size_t)np), *u = malloc(sizeof(double) * (size_t)np);
    for (int64_t i = 0; i < np; i++)
        pd[i] = dn_model_params(m)[i];
    ref_model rm = {m, pd};
    const double h = 1e-4;
    double worst = 0;
    const char *worst_name = "";
    for (int64_t t = 0; t < dn_model_num_tensors(m); t++) {
        dn_param_info ti;
        dn_model_param_info(m, t, &ti);
        double gmax = 0;
        for (int64_t i = 0; i < ti.numel; i++)
            gmax = fmax(gmax, fabs(g[ti.offset + i]));
        for (int e = 0; e <= 6; e++) {
            /* e < 6: one element; e == 6: a random direction over the whole tensor */
            memset(u, 0, sizeof(double) * (size_t)np);
            double an = 0, scale = 0;
            if (e < 6) {
                const int64_t i = ti.offset + (int64_t)(rng_next(&r) % (uint64_t)ti.numel);
                u[i] = 1, an = g[i], scale = gmax;
            } else
                for (int64_t i = ti.offset; i < ti.offset + ti.numel; i++) {
                    u[i] = rng_uniform(&r, -1, 1);
                    an += g[i] * u[i], scale += fabs(g[i] * u[i]);
                }
            for (int64_t i = 0; i < np; i++)
                pd[i] += h * u[i];
            const double lp = ref_model_forward(&rm, NULL, tok, tgt, B, T);
            for (int64_t i = 0; i < np; i++)
                pd[i] -= 2 * h * u[i];
            const double lm = ref_model_forward(&rm, NULL, tok, tgt, B, T);
            for (int64_t i = 0; i < np; i++)
                pd[i] += h * u[i];
            const double fd = (lp - lm) / (2 * h), err = fabs(fd - an) / (scale + 1e-9);
            if (err > worst) worst = err, worst_name = ti.name;
            if (!(err <= 2e-4)) {
                printf("    FAIL grad %s %s B=%lld T=%lld (%s): library %.9g, finite "
                       "differences %.9g (error %.2g of scale %.3g)\n",
                       c.layer_pattern, ti.name, (long long)B, (long long)T,
                       e < 6 ? "element" : "direction", an, fd, err, scale);
                fails++;
            }
        }
    }
    printf("    %-4s B=%lld T=%-3lld worst relative error %.2g (%s)\n", c.layer_pattern,
           (long long)B, (long long)T, worst, worst_name);
    free(tok), free(tgt), free(pd), free(u);
    dn_model_free(m);
    return fails;
}

static int test_model_grad(void) {
    int fails = 0;
    for (int w = 0; w < N_TINY; w++) {
        fails += grad_case(w, 2, 5);
        fails += grad_case(w, 1, 37);
    }
    return fails;
}

static int test_model_config_errors(void) {
    int fails = 0;
    dn_model_config c;
    dn_model *m = (dn_model *)(uintptr_t)1;
#define EXPECT_REJECT(desc, stmt)                                                                  \
    do {                                                                                           \
        c = tiny(2);                                                                               \
        stmt;                                                                                      \
        m = (dn_model *)(uintptr_t)1;                                                              \
        dn_status st = dn_model_create(&m, &c, 1);                                                 \
        if (st == DN_OK || m != (dn_model *)(uintptr_t)1) {                                        \
            printf("    FAIL config %s accepted\n", desc);                                         \
            fails++;                                                                               \
            if (st == DN_OK) dn_model_free(m);                                                     \
        }                                                                                          \
    } while (0)
    EXPECT_REJECT("vocab_size 0", c.vocab_size = 0);
    EXPECT_REJECT("hidden_size -1", c.hidden_size = -1);
    EXPECT_REJECT("layers 0", c.num_hidden_layers = 0);
    EXPECT_REJECT("layers too many", c.num_hidden_layers = DN_MODEL_MAX_LAYERS + 1);
    EXPECT_REJECT("pattern empty", c.layer_pattern[0] = 0);
    EXPECT_REJECT("pattern letter", strcpy(c.layer_pattern, "GX"));
    EXPECT_REJECT("pattern unterminated", memset(c.layer_pattern, 'G', sizeof c.layer_pattern));
    EXPECT_REJECT("heads not grouped", c.num_attention_heads = 3);
    EXPECT_REJECT("value heads not grouped", c.linear_num_value_heads = 3);
    EXPECT_REJECT("conv width 5", c.linear_conv_kernel_dim = 5);
    EXPECT_REJECT("attention conv width 1", c.attn_conv_kernel_dim = 1);
    EXPECT_REJECT("attention conv width 5", c.attn_conv_kernel_dim = 5);
    EXPECT_REJECT("attention conv width -2", c.attn_conv_kernel_dim = -2);
    EXPECT_REJECT("eps NaN", c.rms_norm_eps = NAN);
    EXPECT_REJECT("rotary factor 2", c.partial_rotary_factor = 2);
    EXPECT_REJECT("head_dim 512", c.head_dim = 512);
    if (dn_model_create(NULL, &c, 1) != DN_ERR_NULL) fails++;
    if (dn_model_create(&m, NULL, 1) != DN_ERR_NULL) fails++;
    dn_model_free(NULL);
    return fails;
}

/* Tokens or targets out of range and bad shapes: rejected, gradients unchanged. */
static int test_model_bad_input(void) {
    int fails = 0;
    dn_model_config c = tiny(2);
    dn_model *m = make_model(&c, 3);
    if (!m) return 1;
    int32_t tok[8] = {1, 2, 3, 4, 5, 6, 7, 8}, tgt[8] = {2, 3, 4, 5, 6, 7, 8, -1};
    float *g = dn_model_grads(m);
    for (int64_t i = 0; i < dn_model_num_params(m); i++)
        g[i] = 0.25f;
    double loss = 123;
    struct {
        const char *what;
        int64_t B, T, idx;
        int32_t tokv, tgtv;
    } cases[] = {{"token -1", 2, 4, 3, -1, 0},
                 {"token = vocab", 2, 4, 0, 11, 0},
                 {"target = vocab", 2, 4, 7, 1, 11},
                 {"target -2", 2, 4, 5, 1, -2},
                 {"B = 0", 0, 4, -1, 0, 0},
                 {"T = -1", 2, -1, -1, 0, 0},
                 {"B*T overflow", INT64_MAX / 2, 4, -1, 0, 0}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        int32_t t2[8], g2[8];
        memcpy(t2, tok, sizeof tok), memcpy(g2, tgt, sizeof tgt);
        if (cases[k].idx >= 0) t2[cases[k].idx] = cases[k].tokv, g2[cases[k].idx] = cases[k].tgtv;
        dn_status st =
            dn_model_forward_backward(m, t2, g2, cases[k].B, cases[k].T, 1.0f, &loss, NULL);
        int changed = loss != 123;
        for (int64_t i = 0; i < dn_model_num_params(m); i++)
            changed |= g[i] != 0.25f;
        if (st == DN_OK || changed) {
            printf("    FAIL %s: status %s, outputs %s\n", cases[k].what, dn_status_str(st),
                   changed ? "changed" : "unchanged");
            fails++;
        }
    }
    if (dn_model_forward_backward(m, NULL, tgt, 2, 4, 1.0f, &loss, NULL) != DN_ERR_NULL) fails++;
    if (dn_model_forward_backward(m, tok, tgt, 2, 4, NAN, &loss, NULL) != DN_ERR_ARG) fails++;
    float z[8 * 11];
    if (dn_model_logits(m, z, NULL, 2, 4) != DN_ERR_NULL) fails++;
    dn_model_free(m);
    return fails;
}

/* The same batch twice: the loss and every gradient bitwise equal. */
static int test_model_reproducible(void) {
    int fails = 0;
    for (int w = 0; w < N_TINY; w++) {
        dn_model_config c = tiny(w);
        dn_model *m = make_model(&c, 9);
        if (!m) return 1;
        const int64_t B = 2, T = 40, N = B * T, np = dn_model_num_params(m);
        rng r = {77};
        int32_t tok[80], tgt[80];
        random_tokens(&r, tok, tgt, N, c.vocab_size);
        float *g1 = falloc(np);
        double l1 = 0, l2 = 0;
        dn_model_zero_grad(m);
        dn_model_forward_backward(m, tok, tgt, B, T, 1.0f, &l1, NULL);
        memcpy(g1, dn_model_grads(m), sizeof(float) * (size_t)np);
        dn_model_zero_grad(m);
        dn_model_forward_backward(m, tok, tgt, B, T, 1.0f, &l2, NULL);
        if (l1 != l2 || memcmp(g1, dn_model_grads(m), sizeof(float) * (size_t)np)) {
            printf("    FAIL %s: two identical steps differ\n", c.layer_pattern);
            fails++;
        }
        free(g1);
        dn_model_free(m);
    }
    return fails;
}

/* The arena switches between its training layout (activations kept per layer) and its inference
 * layout (one region shared by the layers): the logits of an inference forward are the same
 * before and after a training step's forward and backward, and the loss the same before and
 * after an inference call, bit for bit. */
static int test_model_arena_modes(void) {
    int fails = 0;
    for (int w = 0; w < N_TINY; w++) {
        dn_model_config c = tiny(w);
        dn_model *m = make_model(&c, 4);
        if (!m) return 1;
        const int64_t B = 2, T = 19, N = B * T, V = c.vocab_size;
        rng r = {31};
        int32_t tok[38], tgt[38];
        random_tokens(&r, tok, tgt, N, V);
        float *z1 = falloc(N * V), *z2 = falloc(N * V);
        double l1 = 0, l2 = 0;
        CHECK(dn_model_logits(m, z1, tok, B, T) == DN_OK, "%s", dn_last_error());
        CHECK(dn_model_forward_backward(m, tok, tgt, B, T, 1.0f, &l1, NULL) == DN_OK, "%s",
              dn_last_error());
        CHECK(dn_model_logits(m, z2, tok, B, T) == DN_OK, "%s", dn_last_error());
        CHECK(dn_model_forward_backward(m, tok, tgt, B, T, 1.0f, &l2, NULL) == DN_OK, "%s",
              dn_last_error());
        CHECK(!memcmp(z1, z2, sizeof(float) * (size_t)(N * V)), "%s: logits changed",
              c.layer_pattern);
        CHECK(l1 == l2, "%s: loss %.17g then %.17g", c.layer_pattern, l1, l2);
        /* and the training forward's loss is the inference logits' cross-entropy */
        double ref = 0;
        for (int64_t n = 0; n < N; n++) {
            if (tgt[n] < 0) continue;
            double mx = z1[n * V], sum = 0;
            for (int64_t j = 1; j < V; j++)
                mx = z1[n * V + j] > mx ? z1[n * V + j] : mx;
            for (int64_t j = 0; j < V; j++)
                sum += exp(z1[n * V + j] - mx);
            ref += mx + log(sum) - z1[n * V + tgt[n]];
        }
        CHECK(fabs(ref - l1) < 1e-4 * fabs(ref), "%s: loss %.9g, from the logits %.9g",
              c.layer_pattern, l1, ref);
        free(z1), free(z2);
        dn_model_free(m);
    }
    return fails;
}

/* dn_model_init_decay: every gated head's initial decay exp(-exp(A_log) softplus(dt_bias)) lies
 * in the range asked for; other tensors are untouched; bad ranges change nothing. */
static int test_model_init_decay(void) {
    int fails = 0;
    dn_model_config c = tiny(2); /* GGA */
    strcpy(c.layer_pattern, "GMA"), c.linear_num_key_heads = 2;
    dn_model *m = NULL;
    if (dn_model_create(&m, &c, 5) != DN_OK) return printf("    FAIL create\n"), 1;
    const int64_t np = dn_model_num_params(m);
    float *before = falloc(np);
    memcpy(before, dn_model_params(m), sizeof(float) * (size_t)np);
    const double bad[][2] = {{0, 0.5}, {0.5, 1}, {0.9, 0.8}, {-0.1, 0.5}, {NAN, 0.5}};
    for (int i = 0; i < 5; i++)
        CHECK(dn_model_init_decay(m, bad[i][0], bad[i][1], 1) == DN_ERR_ARG, "range %g, %g",
              bad[i][0], bad[i][1]);
    CHECK(dn_model_init_decay(NULL, 0.9, 0.99, 1) == DN_ERR_NULL, "NULL model");
    CHECK(!memcmp(before, dn_model_params(m), sizeof(float) * (size_t)np), "rejected call wrote");
    CHECK(dn_model_init_decay(m, 0.99, 0.999, 1) == DN_OK, "%s", dn_last_error());
    const float *p = dn_model_params(m);
    int gated = 0;
    for (int64_t t = 0; t < dn_model_num_tensors(m); t++) {
        dn_param_info a, d;
        dn_model_param_info(m, t, &a);
        const char *suffix = strrchr(a.name, '.');
        if (strcmp(suffix, ".A_log") || t + 1 >= dn_model_num_tensors(m)) {
            if (!strstr(a.name, "dt_bias"))
                CHECK(!memcmp(before + a.offset, p + a.offset, sizeof(float) * (size_t)a.numel),
                      "%s changed", a.name);
            continue;
        }
        /* the dt_bias of the same layer sits beside A_log in either mixer */
        int64_t u = -1;
        for (int64_t v = 0; v < dn_model_num_tensors(m); v++) {
            dn_model_param_info(m, v, &d);
            if (strstr(d.name, "dt_bias") && !strncmp(d.name, a.name, (size_t)(suffix - a.name)))
                u = v;
        }
        CHECK(u >= 0, "no dt_bias beside %s", a.name);
        if (u < 0) continue;
        dn_model_param_info(m, u, &d);
        for (int64_t h = 0; h < a.numel; h++) {
            const double x = p[d.offset + h], sp = x > 20 ? x : log1p(exp(x));
            const double decay = exp(-exp((double)p[a.offset + h]) * sp);
            CHECK(decay >= 0.99 - 1e-6 && decay <= 0.999 + 1e-6, "%s head %lld: decay %g", a.name,
                  (long long)h, decay);
            gated++;
        }
    }
    CHECK(gated == 4 + 4, "%d gated heads re-initialised, expected 8", gated);
    free(before);
    dn_model_free(m);
    return fails;
}

/* Prefill then token-by-token decode from the state gives the logits of one forward over the
 * whole sequence, for every mixer and the hybrids; in pieces of any size. */
static int test_model_generation(void) {
    int fails = 0;
    for (int w = 0; w < N_TINY; w++) {
        dn_model_config c = tiny(w);
        dn_model *m = make_model(&c, 31 + (uint64_t)w);
        if (!m) return 1;
        const int64_t B = 2, T = 37, V = c.vocab_size;
        rng r = {41};
        int32_t tok[2 * 37], tgt[2 * 37];
        random_tokens(&r, tok, tgt, B * T, V);
        float *full = falloc(B * T * V), *got = falloc(B * T * V), *step = falloc(B * T * V);
        poison(got, B * T * V);
        if (dn_model_logits(m, full, tok, B, T) != DN_OK) return fails + 1;
        dn_model_state *st = NULL;
        if (dn_model_state_create(&st, m, B, 64) != DN_OK) return fails + 1;
        /* pieces: 13 and 7 tokens of prefill, then one token at a time */
        const int64_t pieces[] = {13, 7};
        int64_t pos = 0;
        int32_t chunk[2 * 37];
        for (int64_t k = 0; pos < T; k++) {
            const int64_t n = k < 2 ? pieces[k] : 1;
            for (int64_t b = 0; b < B; b++)
                memcpy(chunk + b * n, tok + b * T + pos, sizeof(int32_t) * (size_t)n);
            if (dn_model_step(m, st, step, chunk, n, 1) != DN_OK) {
                printf("    FAIL step: %s\n", dn_last_error());
                return fails + 1;
            }
            for (int64_t b = 0; b < B; b++)
                memcpy(got + (b * T + pos) * V, step + b * n * V, sizeof(float) * (size_t)(n * V));
            pos += n;
        }
        char what[300];
        snprintf(what, sizeof what, "%s prefill + decode", c.layer_pattern);
        fails += check_close(what, got, full, B * T * V, 2e-5);
        if (dn_model_state_len(st) != T) fails++;
        size_t fixed = 0, kv = 0;
        dn_model_state_bytes(st, &fixed, &kv);
        const int n_attn = (int)(strchr(c.layer_pattern, 'A') != NULL);
        const int n_fixed = strpbrk(c.layer_pattern, "GDLMRS") != NULL || c.attn_conv_kernel_dim;
        if ((kv > 0) != n_attn || (fixed > 0) != n_fixed) fails++;
        /* past max_len, a bad token: rejected, the state unchanged (the next step still right) */
        if (dn_model_step(m, st, step, tok, 64 - T + 1, 0) != DN_ERR_SHAPE) fails++;
        dn_model_state_reset(st);
        int32_t bad[2] = {0, (int32_t)V};
        if (dn_model_step(m, st, step, bad, 1, 0) != DN_ERR_ARG || dn_model_state_len(st) != 0)
            fails++;
        for (int64_t b = 0; b < B; b++)
            memcpy(chunk + b * T, tok + b * T, sizeof(int32_t) * (size_t)T);
        if (dn_model_step(m, st, step, chunk, T, 0) != DN_OK) fails++;
        float last[2 * 64];
        for (int64_t b = 0; b < B; b++)
            memcpy(last + b * V, full + (b * T + T - 1) * V, sizeof(float) * (size_t)V);
        fails += check_close("last-position logits after reset", step, last, B * V, 2e-5);
        dn_model_state_free(st);
        free(full), free(got), free(step);
        dn_model_free(m);
    }
    return fails;
}

/* A 16-bit KV cache (dn_model_state_create_ex): prefill and decode logits against the fp32
 * cache's. Keys and values rounded to bf16 carry 2^-9 relative error (fp16: 2^-12); through the
 * scores, the softmax and a few layers the logits move by about that relative to their size
 * (relative RMS 1.8e-3 and 2.2e-4 measured on this case), so 1e-2 (bf16) and 2e-3 (fp16) hold
 * with margin, while a cache read in the wrong type or at the wrong rows moves them by O(1). A
 * dtype out of range is DN_ERR_ARG with *out unchanged. */
static int test_model_kv_dtype(void) {
    int fails = 0;
    dn_model_config c = tiny(2);
    c.vocab_size = 64, c.hidden_size = 32, c.head_dim = 16;
    dn_model *m = make_model(&c, 5);
    if (!m) return 1;
    const int64_t B = 2, T = 40, V = c.vocab_size;
    rng r = {77};
    int32_t tok[2 * 40], tgt[2 * 40], chunk[2];
    random_tokens(&r, tok, tgt, B * T, V);
    float *want = falloc(B * T * V), *got = falloc(B * T * V), *step = falloc(B * V);
    dn_model_state *bad = (dn_model_state *)&r;
    if (dn_model_state_create_ex(&bad, m, B, T, (dn_dtype)DN_DTYPE_COUNT) != DN_ERR_ARG ||
        bad != (dn_model_state *)&r)
        fails++;
    const dn_dtype types[] = {DN_F32, DN_BF16, DN_F16};
    const double tol[] = {0, 1e-2, 2e-3};
    for (int t = 0; t < 3; t++) {
        dn_model_state *st = NULL;
        if (dn_model_state_create_ex(&st, m, B, T, types[t]) != DN_OK) {
            printf("    FAIL state_create_ex(%s): %s\n", dn_dtype_name(types[t]), dn_last_error());
            fails++;
            continue;
        }
        float *out = t ? got : want;
        /* 24 tokens of prefill, then one at a time: every position's logits */
        int32_t pre[2 * 24];
        for (int64_t b = 0; b < B; b++)
            memcpy(pre + b * 24, tok + b * T, sizeof(int32_t) * 24);
        float *pl = falloc(B * 24 * V);
        int ok = dn_model_step(m, st, pl, pre, 24, 1) == DN_OK;
        for (int64_t b = 0; b < B; b++)
            memcpy(out + b * T * V, pl + b * 24 * V, sizeof(float) * (size_t)(24 * V));
        free(pl);
        for (int64_t i = 24; i < T && ok; i++) {
            for (int64_t b = 0; b < B; b++)
                chunk[b] = tok[b * T + i];
            ok = dn_model_step(m, st, step, chunk, 1, 0) == DN_OK;
            for (int64_t b = 0; b < B; b++)
                memcpy(out + (b * T + i) * V, step + b * V, sizeof(float) * (size_t)V);
        }
        size_t kv = 0;
        dn_model_state_bytes(st, NULL, &kv);
        /* one attention layer, HKV 2, D 16, keys and values: T tokens of 2 sequences */
        const size_t expect = (size_t)(2 * B * T * 2 * 16) * (types[t] == DN_F32 ? 4 : 2);
        if (!ok || kv != expect) {
            printf("    FAIL kv %s: %s, %zu bytes of cache (expected %zu)\n",
                   dn_dtype_name(types[t]), ok ? "ran" : dn_last_error(), kv, expect);
            fails++;
        }
        if (t) {
            char what[64];
            snprintf(what, sizeof what, "logits with a %s KV cache", dn_dtype_name(types[t]));
            fails += check_close(what, got, want, B * T * V, tol[t]);
            /* and not equal to fp32's: the cache really is 16-bit */
            if (!memcmp(got, want, sizeof(float) * (size_t)(B * T * V))) {
                printf("    FAIL %s: identical to the fp32 cache's logits\n", what);
                fails++;
            }
        }
        dn_model_state_free(st);
    }
    free(want), free(got), free(step);
    dn_model_free(m);
    return fails;
}

/* Profiling (dn_model_set_profiling / dn_model_profile): off by default and an error to read;
 * on, every layer's mixer and MLP parts and the rest gain time from a step and a forward; on
 * again restarts from zero; off releases it. */
static int test_model_profile(void) {
    int fails = 0;
    dn_model_config c = tiny(4);
    dn_model *m = make_model(&c, 9);
    if (!m) return 1;
    const int64_t L = c.num_hidden_layers, B = 1, T = 33;
    double mix[8], mlp[8], other = -1;
    if (dn_model_profile(m, mix, mlp, &other) != DN_ERR_ARG || other != -1) fails++;
    if (dn_model_set_profiling(NULL, 1) != DN_ERR_NULL ||
        dn_model_profile(NULL, mix, mlp, &other) != DN_ERR_NULL)
        fails++;
    int32_t tok[33], tgt[33];
    rng r = {3};
    random_tokens(&r, tok, tgt, B * T, c.vocab_size);
    float *logits = falloc(B * T * c.vocab_size);
    dn_model_state *st = NULL;
    for (int round = 0; round < 2; round++) {
        if (dn_model_set_profiling(m, 1) != DN_OK) return fails + 1;
        if (dn_model_profile(m, mix, mlp, &other) != DN_OK) return fails + 1;
        for (int64_t l = 0; l < L; l++)
            if (mix[l] != 0 || mlp[l] != 0) fails++;
        if (other != 0) fails++;
        if (dn_model_state_create(&st, m, B, T + 1) != DN_OK ||
            dn_model_step(m, st, logits, tok, T, 0) != DN_OK ||
            dn_model_step(m, st, logits, tok, 1, 0) != DN_OK ||
            dn_model_logits(m, logits, tok, B, T) != DN_OK)
            fails++;
        dn_model_state_free(st), st = NULL;
        if (dn_model_profile(m, mix, NULL, NULL) != DN_OK ||
            dn_model_profile(m, NULL, mlp, &other) != DN_OK)
            fails++;
        for (int64_t l = 0; l < L; l++)
            if (!(mix[l] > 0) || !(mlp[l] > 0)) {
                printf("    FAIL layer %lld: mixer %g s, MLP %g s\n", (long long)l, mix[l], mlp[l]);
                fails++;
            }
        if (!(other > 0)) fails++;
    }
    if (dn_model_set_profiling(m, 0) != DN_OK ||
        dn_model_profile(m, mix, mlp, &other) != DN_ERR_ARG)
        fails++;
    free(logits);
    dn_model_free(m);
    return fails;
}

const test_case dn_tests_model[] = {
    {"model_logits_vs_reference", test_model_logits},
    {"model_grad_vs_finite_differences", test_model_grad},
    {"model_config_errors", test_model_config_errors},
    {"model_bad_input", test_model_bad_input},
    {"model_reproducible", test_model_reproducible},
    {"model_generation_matches_forward", test_model_generation},
    {"model_init_decay", test_model_init_decay},
    {"model_arena_modes", test_model_arena_modes},
    {"model_kv_cache_dtype", test_model_kv_dtype},
    {"model_profile", test_model_profile},
    {NULL, NULL},
};
