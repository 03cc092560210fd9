/*
 * checkpoint.c - the model's configuration as JSON (Hugging Face key names where one exists) and
 * checkpoints as safetensors files: every parameter tensor under its name in fp32, optionally
 * the AdamW moments ("optimizer.exp_avg.<name>", "optimizer.exp_avg_sq.<name>"), and in the
 * metadata the format, the config, the optimizer's step and the caller's own JSON (a trainer's
 * options). Written atomically (safetensors.c); read back only after every check passed: the
 * container (safetensors.c), the config (dn_model_config_check), and every tensor's presence,
 * dtype and shape, with no tensor left over.
 */
#include "../internal.h"
#include "json.h"
#include "model.h"
#include "safetensors.h"

#include <string.h>

#define CKPT_FORMAT "deltanet-checkpoint"
#define CKPT_VERSION "1"

/* ---- the config as JSON ---- */

typedef struct {
    const char *key;
    size_t off;
    int kind; /* 'i' int64, 'd' double, 'b' int flag */
} cfg_field;

#define FI(k)                                                                                      \
    { #k, offsetof(dn_model_config, k), 'i' }
#define FD(k)                                                                                      \
    { #k, offsetof(dn_model_config, k), 'd' }
#define FB(k)                                                                                      \
    { #k, offsetof(dn_model_config, k), 'b' }
static const cfg_field cfg_fields[] = {
    FI(vocab_size),
    FI(hidden_size),
    FI(num_hidden_layers),
    FI(intermediate_size),
    FD(rms_norm_eps),
    FB(tie_word_embeddings),
    FI(num_attention_heads),
    FI(num_key_value_heads),
    FI(head_dim),
    FD(rope_theta),
    FD(partial_rotary_factor),
    FB(attn_qk_norm),
    FB(attn_output_gate),
    FI(attn_conv_kernel_dim),
    FI(linear_num_key_heads),
    FI(linear_num_value_heads),
    FI(linear_key_head_dim),
    FI(linear_value_head_dim),
    FI(linear_conv_kernel_dim),
    FI(mamba_expand),
    FI(mamba_state_size),
    FI(mamba_dt_rank),
    FD(initializer_range),
    FI(num_experts),
    FI(num_experts_per_tok),
    FI(moe_intermediate_size),
    FI(shared_expert_intermediate_size),
    FB(norm_topk_prob),
};
#undef FI
#undef FD
#undef FB
#define N_CFG_FIELDS (sizeof cfg_fields / sizeof cfg_fields[0])

static void write_config(dn_jw *w, const dn_model_config *c) {
    dn_jw_begin_object(w);
    dn_jw_key(w, "layer_pattern");
    dn_jw_string(w, c->layer_pattern);
    dn_jw_key(w, "mlp_pattern");
    dn_jw_string(w, c->mlp_pattern);
    for (size_t i = 0; i < N_CFG_FIELDS; i++) {
        const char *p = (const char *)c + cfg_fields[i].off;
        dn_jw_key(w, cfg_fields[i].key);
        if (cfg_fields[i].kind == 'i')
            dn_jw_int(w, *(const int64_t *)(const void *)p);
        else if (cfg_fields[i].kind == 'd')
            dn_jw_num(w, *(const double *)(const void *)p);
        else
            dn_jw_bool(w, *(const int *)(const void *)p);
    }
    dn_jw_end_object(w);
}

dn_status dn_model_config_to_json(const dn_model_config *c, char **out) {
    if (!c || !out) return dn_fail(DN_ERR_NULL, "model_config_to_json: NULL argument");
    dn_status st = dn_model_config_check(c);
    if (st != DN_OK) return st;
    dn_jw w;
    dn_jw_init(&w);
    write_config(&w, c);
    if ((st = dn_jw_finish(&w)) != DN_OK) {
        dn_jw_free(&w);
        return st;
    }
    *out = w.buf; /* dn_alloc'd: the caller frees it with free() */
    return DN_OK;
}

/* Reads the fields present in obj over the defaults; unknown keys are errors (a misspelt key
 * must not silently fall back to a default). */
static dn_status read_config(const dn_json *obj, dn_model_config *c, const char *what) {
    if (!obj || obj->type != DN_JSON_OBJECT)
        return dn_fail(DN_ERR_FORMAT, "%s: the config is not a JSON object", what);
    dn_model_config r = dn_model_config_default();
    for (size_t i = 0; i < dn_json_len(obj); i++) {
        const dn_json *v = dn_json_at(obj, i);
        int known = !strcmp(v->key, "layer_pattern") || !strcmp(v->key, "mlp_pattern");
        for (size_t f = 0; f < N_CFG_FIELDS && !known; f++)
            known = !strcmp(v->key, cfg_fields[f].key);
        if (!known) return dn_fail(DN_ERR_FORMAT, "%s: unknown config key \"%s\"", what, v->key);
    }
    const char *pat = NULL;
    size_t plen = 0;
    dn_status st = dn_json_get_str(obj, "layer_pattern", &pat, &plen, 0);
    if (st != DN_OK) return st;
    if (pat) {
        if (plen == 0 || plen > DN_MODEL_MAX_LAYERS || strlen(pat) != plen)
            return dn_fail(DN_ERR_FORMAT, "%s: layer_pattern must have 1 to %d letters", what,
                           DN_MODEL_MAX_LAYERS);
        memcpy(r.layer_pattern, pat, plen + 1);
    }
    pat = NULL;
    if ((st = dn_json_get_str(obj, "mlp_pattern", &pat, &plen, 0)) != DN_OK) return st;
    if (pat) {
        if (plen > DN_MODEL_MAX_LAYERS || strlen(pat) != plen)
            return dn_fail(DN_ERR_FORMAT, "%s: mlp_pattern must have at most %d letters", what,
                           DN_MODEL_MAX_LAYERS);
        memcpy(r.mlp_pattern, pat, plen + 1);
    }
    for (size_t i = 0; i < N_CFG_FIELDS && st == DN_OK; i++) {
        char *p = (char *)&r + cfg_fields[i].off;
        if (cfg_fields[i].kind == 'i')
            st = dn_json_get_int(obj, cfg_fields[i].key, (int64_t *)(void *)p, 0);
        else if (cfg_fields[i].kind == 'd')
            st = dn_json_get_num(obj, cfg_fields[i].key, (double *)(void *)p, 0);
        else
            st = dn_json_get_bool(obj, cfg_fields[i].key, (int *)(void *)p, 0);
    }
    if (st != DN_OK) return st;
    if ((st = dn_model_config_check(&r)) != DN_OK) return st;
    *c = r;
    return DN_OK;
}

dn_status dn_model_config_from_json(dn_model_config *out, const char *text, size_t n) {
    if (!out || (!text && n)) return dn_fail(DN_ERR_NULL, "model_config_from_json: NULL argument");
    dn_json *doc = NULL;
    dn_status st = dn_json_parse_as(text, n, "model config", 16, &doc);
    if (st != DN_OK) return st;
    st = read_config(doc, out, "model config");
    dn_json_free(doc);
    return st;
}

/* ---- checkpoints ---- */

static int64_t param_shape(const dn_param_info *t, int64_t shape[3]) {
    for (int i = 0; i < t->ndim; i++)
        shape[i] = t->shape[i];
    return t->ndim;
}

dn_status dn_checkpoint_save(const char *path, const dn_model *m, dn_adamw *opt,
                             const char *extra_json) {
    if (!path || !m) return dn_fail(DN_ERR_NULL, "checkpoint_save: NULL path or model");
    dn_status st = DN_OK;
    if (extra_json) { /* must be valid JSON: the loader hands it back */
        dn_json *chk = NULL;
        if ((st = dn_json_parse_as(extra_json, strlen(extra_json), "checkpoint extra", 64, &chk)) !=
            DN_OK)
            return st;
        dn_json_free(chk);
    }
    const int64_t nt = dn_model_num_tensors(m), parts = opt ? 3 : 1;
    float *m1 = NULL, *m2 = NULL;
    int64_t step = 0;
    if (opt && (st = dn_adamw_state(opt, &step, &m1, &m2)) != DN_OK) return st;
    dn_st_entry *e = dn_calloc((size_t)(nt * parts) * sizeof *e);
    int64_t(*shapes)[3] = dn_calloc((size_t)nt * sizeof *shapes);
    char *names = dn_alloc((size_t)(nt * parts) * 200);
    dn_jw w;
    dn_jw_init(&w);
    if (!e || !shapes || !names) {
        st = dn_fail(DN_ERR_ALLOC, "checkpoint_save: cannot allocate the tensor table");
        goto done;
    }
    const float *P = dn_model_params((dn_model *)m);
    for (int64_t t = 0; t < nt; t++) {
        dn_param_info ti;
        dn_model_param_info(m, t, &ti);
        const int nd = (int)param_shape(&ti, shapes[t]);
        e[t] = (dn_st_entry){ti.name, DN_ST_F32, nd, shapes[t], P + ti.offset};
        for (int64_t k = 1; k < parts; k++) {
            char *nm = names + (size_t)((k - 1) * nt + t) * 200;
            snprintf(nm, 200, "optimizer.%s.%s", k == 1 ? "exp_avg" : "exp_avg_sq", ti.name);
            e[k * nt + t] =
                (dn_st_entry){nm, DN_ST_F32, nd, shapes[t], (k == 1 ? m1 : m2) + ti.offset};
        }
    }
    write_config(&w, dn_model_get_config(m));
    if ((st = dn_jw_finish(&w)) != DN_OK) goto done;
    char step_s[32];
    snprintf(step_s, sizeof step_s, "%lld", (long long)step);
    const char *keys[5] = {"format", "format_version", "config", "optimizer_step", "extra"};
    const char *vals[5] = {CKPT_FORMAT, CKPT_VERSION, w.buf, step_s, extra_json};
    st = dn_st_write(path, e, (size_t)(nt * parts), keys, vals, extra_json ? 5 : 4);
done:
    dn_jw_free(&w);
    dn_free(e), dn_free(shapes), dn_free(names);
    return st;
}

/* Everything checked, then the model (and optimizer) made and filled; nothing is returned on
 * error. */
static dn_status load_from(dn_st *f, dn_model **model, dn_adamw **opt, const dn_adamw_config *oc,
                           char **extra) {
    const char *fmt = dn_st_meta(f, "format"), *ver = dn_st_meta(f, "format_version");
    if (!fmt || strcmp(fmt, CKPT_FORMAT) || !ver || strcmp(ver, CKPT_VERSION))
        return dn_fail(DN_ERR_FORMAT,
                       "%s: not a deltanet checkpoint (format \"%s\" version \"%s\")", f->name,
                       fmt ? fmt : "(none)", ver ? ver : "(none)");
    const char *cfg = dn_st_meta(f, "config"), *stp = dn_st_meta(f, "optimizer_step");
    if (!cfg || !stp) return dn_fail(DN_ERR_FORMAT, "%s: no config or optimizer_step", f->name);
    dn_model_config c;
    dn_status st = dn_model_config_from_json(&c, cfg, strlen(cfg));
    if (st != DN_OK) return st;
    char *end = NULL;
    const long long step = strtoll(stp, &end, 10);
    if (!*stp || *end || step < 0)
        return dn_fail(DN_ERR_FORMAT, "%s: optimizer_step \"%s\" is not a count", f->name, stp);
    dn_model *m = NULL;
    dn_adamw *o = NULL;
    char *x = NULL;
    if ((st = dn_model_create(&m, &c, 0)) != DN_OK) return st;
    const int64_t nt = dn_model_num_tensors(m);
    const int with_opt = opt != NULL;
    if ((size_t)nt * (with_opt ? 3 : 1) != f->n_tensors &&
        !(!with_opt && f->n_tensors == (size_t)nt * 3)) {
        st = dn_fail(DN_ERR_FORMAT, "%s: %zu tensors, the config's model has %lld%s", f->name,
                     f->n_tensors, (long long)nt,
                     with_opt ? " (x 3 with the optimizer's moments)" : "");
        goto fail;
    }
    if (with_opt && (st = dn_adamw_create(&o, m, oc)) != DN_OK) goto fail;
    float *m1 = NULL, *m2 = NULL;
    if (o) dn_adamw_state(o, NULL, &m1, &m2);
    /* every expected tensor present with its dtype and shape, before anything is copied */
    const dn_st_tensor **found = dn_calloc((size_t)(nt * 3) * sizeof *found);
    if (!found) {
        st = dn_fail(DN_ERR_ALLOC, "checkpoint: cannot allocate");
        goto fail;
    }
    const int parts = f->n_tensors == (size_t)nt * 3 ? 3 : 1;
    for (int64_t t = 0; t < nt && st == DN_OK; t++) {
        dn_param_info ti;
        dn_model_param_info(m, t, &ti);
        int64_t shape[3];
        const int nd = (int)param_shape(&ti, shape);
        for (int k = 0; k < parts && st == DN_OK; k++) {
            char nm[200];
            if (k == 0)
                snprintf(nm, sizeof nm, "%s", ti.name);
            else
                snprintf(nm, sizeof nm, "optimizer.%s.%s", k == 1 ? "exp_avg" : "exp_avg_sq",
                         ti.name);
            st = dn_st_expect(f, nm, DN_ST_F32, nd, shape, &found[k * nt + t]);
        }
    }
    if (st == DN_OK) {
        const char *xs = dn_st_meta(f, "extra");
        if (extra && xs) {
            x = dn_alloc(strlen(xs) + 1);
            if (!x)
                st = dn_fail(DN_ERR_ALLOC, "checkpoint: cannot allocate");
            else
                memcpy(x, xs, strlen(xs) + 1);
        }
    }
    if (st == DN_OK) { /* copy (the data may be unaligned: memcpy) */
        float *P = dn_model_params(m);
        for (int64_t t = 0; t < nt; t++) {
            dn_param_info ti;
            dn_model_param_info(m, t, &ti);
            memcpy(P + ti.offset, found[t]->data, (size_t)found[t]->bytes);
            if (o) {
                memcpy(m1 + ti.offset, found[nt + t]->data, (size_t)found[nt + t]->bytes);
                memcpy(m2 + ti.offset, found[2 * nt + t]->data, (size_t)found[2 * nt + t]->bytes);
            }
        }
        if (o) dn_adamw_set_step(o, step);
    }
    dn_free(found);
    if (st != DN_OK) goto fail;
    if (with_opt && parts != 3) {
        st = dn_fail(DN_ERR_FORMAT, "%s: no optimizer state to resume from", f->name);
        goto fail;
    }
    *model = m;
    if (opt) *opt = o;
    if (extra) *extra = x;
    return DN_OK;
fail:
    dn_free(x);
    dn_adamw_free(o);
    dn_model_free(m);
    return st;
}

dn_status dn_checkpoint_load(const char *path, dn_model **model, dn_adamw **opt,
                             const dn_adamw_config *oc, char **extra_json) {
    if (!path || !model || (opt && !oc))
        return dn_fail(DN_ERR_NULL, "checkpoint_load: NULL path, model or optimizer config");
    dn_st *f = NULL;
    dn_status st = dn_st_open(path, &f);
    if (st != DN_OK) return st;
    st = load_from(f, model, opt, oc, extra_json);
    dn_st_close(f);
    return st;
}

dn_status dn_checkpoint_parse(const uint8_t *buf, size_t n, dn_model **model, dn_adamw **opt,
                              const dn_adamw_config *oc, char **extra_json) {
    if (!buf || !model || (opt && !oc))
        return dn_fail(DN_ERR_NULL, "checkpoint_parse: NULL argument");
    dn_st *f = NULL;
    dn_status st = dn_st_parse(buf, n, &f);
    if (st != DN_OK) return st;
    st = load_from(f, model, opt, oc, extra_json);
    dn_st_close(f);
    return st;
}
