/*
 * hf.c - the text model of a Hugging Face Qwen3.5, Qwen3.5-MoE or Qwen3-Next checkpoint
 * directory, loaded into a dn_model (dn_model_load_hf, include/deltanet.h).
 *
 * What is read, and every convention that differs from the ops' defaults:
 *   config.json        model_type "qwen3_5" (vision-language: the text model's settings under
 *                      "text_config", its weights under "model.language_model.", the vision tower
 *                      under "model.visual." skipped) or "qwen3_5_text" (a causal LM:
 *                      "model.layers.*"); "qwen3_5_moe" / "qwen3_5_moe_text" the same with
                      experts in every layer; "qwen3_next" (experts where decoder_sparse_step
                      and mlp_only_layers say, fused projections, below). tie_word_embeddings from
 the text config, else the top
 *                      level. layer_types ("linear_attention" -> G, "full_attention" -> A), else
 *                      full_attention_interval. RoPE from rope_parameters (or the older top-level
 *                      rope_theta / partial_rotary_factor): type "default"; Qwen3.5's multimodal
 *                      sections (mrope_section, interleaved) give every section the same position
 *                      for text, so they reduce to ordinary rotary positions and are not read.
 *   weights            model.safetensors, or the shards named by model.safetensors.index.json;
 *                      F32, F16 or BF16 (see below for what stays 16-bit).
 *                      Tensors "mtp.*" (the multi-token-prediction head, which transformers also
 *                      drops) and the vision tower are skipped; any other tensor the model does
 *                      not have is an error naming it, as is a missing or mis-shaped one.
 * The layers then run as the model layer defines them, which is Qwen3.5's layout: zero-centred
 * RMSNorm weights ((1 + w) x / rms) for the block norms, the final norm and the attention q/k
 * norms, a plain weight in the Gated DeltaNet output norm (RMSNorm(o) w SiLU(z)); partial rotary on
 * the first rotary_dim dims of each head, pairs (i, i + rotary_dim/2); the attention q_proj rows
 * per head [query | output gate]; Gated DeltaNet in_proj_qkv rows [q | k | v], q and k
 * L2-normalised in the op, value head j reading key head j / (HV/H), beta = sigmoid(b), g =
 * -exp(A_log) softplus(a + dt_bias), all in fp32.
 *
 * Qwen3-Next fuses the Gated DeltaNet projections and orders their rows per key head
 * (in_proj_qkvz: [q_h | k_h | v of its value heads | z of its value heads] for each key head h,
 * in_proj_ba: [b | a] per key head); they are scattered into the model's [q | k | v | z | b | a]
 * rows (fused_layer). Experts: router softmax, top k, weights renormalised when norm_topk_prob
 * (always for Qwen3.5-MoE), SwiGLU experts stored one tensor per projection
 * (mlp.experts.E.gate_proj ...), a shared expert scaled by sigmoid(shared_expert_gate).
 * Weights: when every matrix (2-D tensor) is stored in one 16-bit type, the matrices are kept
 * in it, byte for byte, in the model's 16-bit store (put_rows); vectors and the convolution are
 * widened to fp32. A mix of types widens everything to fp32.
 */
#include "../half.h"
#include "../internal.h"
#include "json.h"
#include "model.h"
#include "safetensors.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#define HF_MAX_CONFIG ((size_t)4 << 20)
#define HF_MAX_SHARDS 4096

/* ---- config.json ---- */

static dn_status read_rope(const dn_json *tc, const char *file, dn_model_config *c) {
    const dn_json *rp = NULL;
    dn_status st = dn_json_get_typed(tc, "rope_parameters", DN_JSON_OBJECT, &rp, 0);
    if (st == DN_OK && !rp) st = dn_json_get_typed(tc, "rope_scaling", DN_JSON_OBJECT, &rp, 0);
    if (st != DN_OK) return st;
    /* the older layout keeps theta and the factor at the top of the text config */
    if ((st = dn_json_get_num(tc, "rope_theta", &c->rope_theta, 0)) != DN_OK ||
        (st = dn_json_get_num(tc, "partial_rotary_factor", &c->partial_rotary_factor, 0)) != DN_OK)
        return st;
    if (!rp) return DN_OK;
    const char *type = NULL;
    if ((st = dn_json_get_str(rp, "rope_type", &type, NULL, 0)) != DN_OK) return st;
    if (!type && (st = dn_json_get_str(rp, "type", &type, NULL, 0)) != DN_OK) return st;
    if (type && strcmp(type, "default") && strcmp(type, "mrope"))
        return dn_fail(DN_ERR_UNSUPPORTED, "%s: rope type \"%s\" is not supported (default only)",
                       file, type);
    if ((st = dn_json_get_num(rp, "rope_theta", &c->rope_theta, 0)) != DN_OK ||
        (st = dn_json_get_num(rp, "partial_rotary_factor", &c->partial_rotary_factor, 0)) != DN_OK)
        return st;
    if (!(c->rope_theta > 1) || !(c->partial_rotary_factor > 0 && c->partial_rotary_factor <= 1))
        return dn_fail(DN_ERR_FORMAT, "%s: rope_theta %g or partial_rotary_factor %g out of range",
                       file, c->rope_theta, c->partial_rotary_factor);
    return DN_OK;
}

static dn_status read_layer_types(const dn_json *tc, const char *file, dn_model_config *c) {
    const dn_json *lt = NULL;
    dn_status st = dn_json_get_typed(tc, "layer_types", DN_JSON_ARRAY, &lt, 0);
    if (st != DN_OK) return st;
    const int64_t L = c->num_hidden_layers;
    if (L < 1 || L > DN_MODEL_MAX_LAYERS)
        return dn_fail(DN_ERR_FORMAT, "%s: num_hidden_layers %lld is outside [1, %d]", file,
                       (long long)L, DN_MODEL_MAX_LAYERS);
    if (lt) {
        if ((int64_t)dn_json_len(lt) != L)
            return dn_fail(DN_ERR_FORMAT, "%s: layer_types has %zu entries for %lld layers", file,
                           dn_json_len(lt), (long long)L);
        for (int64_t i = 0; i < L; i++) {
            const dn_json *v = dn_json_at(lt, (size_t)i);
            const char *s = v->type == DN_JSON_STRING ? v->u.str : "";
            if (!strcmp(s, "linear_attention"))
                c->layer_pattern[i] = 'G';
            else if (!strcmp(s, "full_attention"))
                c->layer_pattern[i] = 'A';
            else
                return dn_fail(DN_ERR_FORMAT,
                               "%s: layer_types[%lld] is not \"linear_attention\" or "
                               "\"full_attention\"",
                               file, (long long)i);
        }
    } else {
        int64_t every = 4;
        if ((st = dn_json_get_int(tc, "full_attention_interval", &every, 0)) != DN_OK) return st;
        if (every < 1)
            return dn_fail(DN_ERR_FORMAT, "%s: full_attention_interval %lld", file,
                           (long long)every);
        for (int64_t i = 0; i < L; i++)
            c->layer_pattern[i] = (i + 1) % every == 0 ? 'A' : 'G';
    }
    c->layer_pattern[L] = 0;
    return DN_OK;
}

/* The mixture-of-experts settings: Qwen3.5-MoE (moe 1) has experts in every layer and always
 * renormalises the top-k weights; Qwen3-Next (moe 2) has them in layer i when i is not in
 * mlp_only_layers, num_experts > 0 and (i + 1) % decoder_sparse_step == 0, and reads
 * norm_topk_prob (default true). */
static dn_status read_moe(const dn_json *tc, const char *file, int moe, dn_model_config *c) {
    dn_status st;
    if ((st = dn_json_get_int(tc, "num_experts", &c->num_experts, 1)) != DN_OK ||
        (st = dn_json_get_int(tc, "num_experts_per_tok", &c->num_experts_per_tok, 1)) != DN_OK ||
        (st = dn_json_get_int(tc, "moe_intermediate_size", &c->moe_intermediate_size, 1)) !=
            DN_OK ||
        (st = dn_json_get_int(tc, "shared_expert_intermediate_size",
                              &c->shared_expert_intermediate_size, 0)) != DN_OK)
        return st;
    c->norm_topk_prob = 1;
    const int64_t L = c->num_hidden_layers;
    if (moe == 1) {
        memset(c->mlp_pattern, 'E', (size_t)L);
        c->mlp_pattern[L] = 0;
        if (!c->intermediate_size) c->intermediate_size = c->moe_intermediate_size; /* unused */
        return DN_OK;
    }
    int64_t step = 1;
    const dn_json *only = NULL;
    if ((st = dn_json_get_bool(tc, "norm_topk_prob", &c->norm_topk_prob, 0)) != DN_OK ||
        (st = dn_json_get_int(tc, "decoder_sparse_step", &step, 0)) != DN_OK ||
        (st = dn_json_get_typed(tc, "mlp_only_layers", DN_JSON_ARRAY, &only, 0)) != DN_OK)
        return st;
    if (step < 1)
        return dn_fail(DN_ERR_FORMAT, "%s: decoder_sparse_step %lld", file, (long long)step);
    for (int64_t i = 0; i < L; i++)
        c->mlp_pattern[i] = c->num_experts > 0 && (i + 1) % step == 0 ? 'E' : 'D';
    c->mlp_pattern[L] = 0;
    for (size_t j = 0; j < dn_json_len(only); j++) {
        const dn_json *v = dn_json_at(only, j);
        if (v->type != DN_JSON_NUMBER || !v->is_int || v->u.i < 0 || v->u.i >= L)
            return dn_fail(DN_ERR_FORMAT, "%s: mlp_only_layers[%zu] is not a layer index", file, j);
        c->mlp_pattern[v->u.i] = 'D';
    }
    if (!strchr(c->mlp_pattern, 'E')) c->mlp_pattern[0] = 0;
    return DN_OK;
}

/* The model config, the prefix of the text model's tensor names, and whether the Gated DeltaNet
 * projections are Qwen3-Next's fused ones. */
static dn_status read_config(const char *dir, dn_model_config *c, const char **prefix, int *fused) {
    char path[4096];
    if (snprintf(path, sizeof path, "%s/config.json", dir) >= (int)sizeof path)
        return dn_fail(DN_ERR_ARG, "load_hf: directory name too long");
    dn_json *doc = NULL;
    dn_status st = dn_json_load(path, HF_MAX_CONFIG, &doc);
    if (st != DN_OK) return st;
    const char *type = NULL;
    const dn_json *tc = doc;
    if ((st = dn_json_get_str(doc, "model_type", &type, NULL, 1)) != DN_OK) goto done;
    int moe = 0;
    *fused = 0;
    if (!strcmp(type, "qwen3_5") || !strcmp(type, "qwen3_5_moe")) {
        if ((st = dn_json_get_typed(doc, "text_config", DN_JSON_OBJECT, &tc, 1)) != DN_OK)
            goto done;
        *prefix = "model.language_model.";
        moe = strstr(type, "_moe") != NULL;
    } else if (!strcmp(type, "qwen3_5_text") || !strcmp(type, "qwen3_5_moe_text")) {
        *prefix = "model.";
        moe = strstr(type, "_moe") != NULL;
    } else if (!strcmp(type, "qwen3_next")) {
        *prefix = "model.";
        moe = 2, *fused = 1;
    } else {
        st = dn_fail(DN_ERR_UNSUPPORTED,
                     "%s: model_type \"%s\" is not a Gated DeltaNet hybrid this version reads "
                     "(qwen3_5, qwen3_5_text, qwen3_5_moe, qwen3_5_moe_text, qwen3_next)",
                     path, type);
        goto done;
    }
    dn_model_config r = dn_model_config_default();
    r.attn_qk_norm = 1, r.attn_output_gate = 1, r.tie_word_embeddings = 0;
    r.head_dim = 0, r.intermediate_size = 0;
    if ((st = dn_json_get_bool(doc, "tie_word_embeddings", &r.tie_word_embeddings, 0)) != DN_OK ||
        (st = dn_json_get_bool(tc, "tie_word_embeddings", &r.tie_word_embeddings, 0)) != DN_OK)
        goto done;
    static const struct {
        const char *key;
        size_t off;
        int required;
    } ints[] = {
        {"vocab_size", offsetof(dn_model_config, vocab_size), 1},
        {"hidden_size", offsetof(dn_model_config, hidden_size), 1},
        {"intermediate_size", offsetof(dn_model_config, intermediate_size), 0},
        {"num_hidden_layers", offsetof(dn_model_config, num_hidden_layers), 1},
        {"num_attention_heads", offsetof(dn_model_config, num_attention_heads), 1},
        {"num_key_value_heads", offsetof(dn_model_config, num_key_value_heads), 1},
        {"head_dim", offsetof(dn_model_config, head_dim), 0},
        {"linear_num_key_heads", offsetof(dn_model_config, linear_num_key_heads), 1},
        {"linear_num_value_heads", offsetof(dn_model_config, linear_num_value_heads), 1},
        {"linear_key_head_dim", offsetof(dn_model_config, linear_key_head_dim), 1},
        {"linear_value_head_dim", offsetof(dn_model_config, linear_value_head_dim), 1},
        {"linear_conv_kernel_dim", offsetof(dn_model_config, linear_conv_kernel_dim), 1},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        if ((st = dn_json_get_int(tc, ints[i].key, (int64_t *)(void *)((char *)&r + ints[i].off),
                                  ints[i].required)) != DN_OK)
            goto done;
    if (r.intermediate_size == 0 && !moe) {
        st = dn_fail(DN_ERR_FORMAT, "%s: intermediate_size is missing", path);
        goto done;
    }
    if (r.head_dim == 0 && r.num_attention_heads > 0)
        r.head_dim = r.hidden_size / r.num_attention_heads;
    if ((st = dn_json_get_num(tc, "rms_norm_eps", &r.rms_norm_eps, 1)) != DN_OK ||
        (st = dn_json_get_bool(tc, "attn_output_gate", &r.attn_output_gate, 0)) != DN_OK)
        goto done;
    const char *act = NULL;
    if ((st = dn_json_get_str(tc, "hidden_act", &act, NULL, 0)) != DN_OK) goto done;
    if (act && strcmp(act, "silu")) {
        st = dn_fail(DN_ERR_UNSUPPORTED, "%s: hidden_act \"%s\" (silu only)", path, act);
        goto done;
    }
    if ((st = read_rope(tc, path, &r)) != DN_OK || (st = read_layer_types(tc, path, &r)) != DN_OK ||
        (moe && (st = read_moe(tc, path, moe, &r)) != DN_OK))
        goto done;
    if ((st = dn_model_config_check(&r)) != DN_OK) {
        char why[512]; /* dn_fail writes the buffer dn_last_error reads */
        snprintf(why, sizeof why, "%s", dn_last_error());
        st = dn_fail(st, "%s: %s", path, why);
        goto done;
    }
    *c = r;
done:
    dn_json_free(doc);
    return st;
}

/* ---- the weights ---- */

typedef struct {
    int n;
    dn_st *files[HF_MAX_SHARDS];
    char *used[HF_MAX_SHARDS]; /* per tensor of each file: taken by the model */
} shards;

static void shards_close(shards *s) {
    for (int i = 0; i < s->n; i++)
        dn_st_close(s->files[i]), dn_free(s->used[i]);
    s->n = 0;
}

static dn_status shards_add(shards *s, const char *path) {
    if (s->n == HF_MAX_SHARDS)
        return dn_fail(DN_ERR_FORMAT, "load_hf: more than %d shard files", HF_MAX_SHARDS);
    dn_st *f = NULL;
    dn_status st = dn_st_open(path, &f);
    if (st != DN_OK) return st;
    char *used = dn_calloc(f->n_tensors ? f->n_tensors : 1);
    if (!used) {
        dn_st_close(f);
        return dn_fail(DN_ERR_ALLOC, "load_hf: cannot allocate");
    }
    s->files[s->n] = f, s->used[s->n++] = used;
    return DN_OK;
}

static dn_status shards_open(shards *s, const char *dir) {
    char path[4096];
    struct stat sb;
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    if (stat(path, &sb) != 0) {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        return shards_add(s, path);
    }
    dn_st_index *idx = NULL;
    dn_status st = dn_st_index_open(path, &idx);
    if (st != DN_OK) return st;
    for (size_t i = 0; i < idx->n_files && st == DN_OK; i++) {
        if (snprintf(path, sizeof path, "%s/%s", dir, idx->files[i]) >= (int)sizeof path)
            st = dn_fail(DN_ERR_ARG, "load_hf: shard path too long");
        else
            st = shards_add(s, path);
    }
    /* every tensor the index names must be in the shard it names */
    for (size_t i = 0; i < idx->n && st == DN_OK; i++) {
        const dn_st_index_entry *e = &idx->entries[i];
        int found = 0;
        for (int f = 0; f < s->n && !found; f++) {
            const char *base = strrchr(s->files[f]->name, '/');
            if (!strcmp(base ? base + 1 : s->files[f]->name, e->file))
                found = dn_st_find(s->files[f], e->name) != NULL;
        }
        if (!found)
            st = dn_fail(DN_ERR_FORMAT, "%s: the index puts %s in %s, which does not hold it", path,
                         e->name, e->file);
    }
    dn_st_index_free(idx);
    return st;
}

/* The tensor named name in any shard (marked used), or NULL. */
static const dn_st_tensor *shards_find(shards *s, const char *name, const char **file) {
    for (int f = 0; f < s->n; f++) {
        const dn_st_tensor *t = dn_st_find(s->files[f], name);
        if (t) {
            s->used[f][t - s->files[f]->tensors] = 1;
            *file = s->files[f]->name;
            return t;
        }
    }
    return NULL;
}

static int skipped(const char *name) {
    return !strncmp(name, "mtp.", 4) || !strncmp(name, "model.visual.", 13) ||
           !strncmp(name, "visual.", 7);
}

/* Widens n elements of t (F32, F16 or BF16, possibly unaligned) into dst. */
static void widen(float *dst, const dn_st_tensor *t) {
    const uint8_t *p = t->data;
    const int64_t n = t->numel;
    if (t->dtype == DN_ST_F32)
        memcpy(dst, p, (size_t)n * sizeof(float));
    else
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = t->dtype == DN_ST_BF16 ? dn_bf16_to_f32(h) : dn_f16_to_f32(h);
        }
}

/* Rows [r0, r0 + n) of the 2-D tensor t (or all of a tensor of another rank, r0 = 0, n = 1) to
 * the parameter at offset off: bytes as they are into the model's 16-bit weights when it keeps
 * them (t is then of that type), else widened into the fp32 parameters. */
static void put_rows(dn_model *m, int64_t off, const dn_st_tensor *t, int64_t r0, int64_t n) {
    const int64_t cols = t->ndim == 2 ? t->shape[1] : t->numel, esz = t->dtype == DN_ST_F32 ? 4 : 2;
    dn_st_tensor part = *t;
    part.data = t->data + r0 * cols * esz, part.numel = n * cols;
    if (m->w16 && t->ndim == 2)
        memcpy(m->w16 + off, part.data, (size_t)(part.numel * 2));
    else
        widen(dn_model_params(m) + off, &part);
}

static int is_fused_part(const char *name) {
    static const char *const parts[4] = {"in_proj_qkv.weight", "in_proj_z.weight",
                                         "in_proj_b.weight", "in_proj_a.weight"};
    const char *at = strstr(name, ".linear_attn.");
    for (int i = 0; at && i < 4; i++)
        if (!strcmp(at + 13, parts[i])) return 1;
    return 0;
}

/* Qwen3-Next's in_proj_qkvz rows hold, per key head h, [q_h (K) | k_h (K) | v (r V) | z (r V)]
 * for its r = HV/H value heads, and in_proj_ba [b (r) | a (r)]; the model's projection rows are
 * [q (H K) | k (H K) | v (HV V) | z (HV V) | b (HV) | a (HV)]. check: the shapes only. */
static dn_status fused_layer(dn_model *m, shards *s, const char *prefix, int64_t i, int check) {
    const dn_layer *l = &m->layers[i];
    const dn_la_layer_dims *g = &l->ld;
    const int64_t H = g->H, K = g->K, V = g->V, r = g->HV / g->H, d = m->d;
    char qkvz[512], ba[512];
    snprintf(qkvz, sizeof qkvz, "%slayers.%lld.linear_attn.in_proj_qkvz.weight", prefix,
             (long long)i);
    snprintf(ba, sizeof ba, "%slayers.%lld.linear_attn.in_proj_ba.weight", prefix, (long long)i);
    const char *file = NULL;
    const dn_st_tensor *a = shards_find(s, qkvz, &file), *b = shards_find(s, ba, &file);
    if (!a || !b) return dn_fail(DN_ERR_FORMAT, "load_hf: tensor %s is missing", !a ? qkvz : ba);
    const int64_t rows_a = H * (2 * K + 2 * r * V), rows_b = H * 2 * r;
    if (a->ndim != 2 || a->shape[0] != rows_a || a->shape[1] != d || b->ndim != 2 ||
        b->shape[0] != rows_b || b->shape[1] != d)
        return dn_fail(DN_ERR_FORMAT,
                       "load_hf: %s must be [%lld, %lld] and %s [%lld, %lld] for this config", qkvz,
                       (long long)rows_a, (long long)d, ba, (long long)rows_b, (long long)d);
    if ((a->dtype != DN_ST_F32 && a->dtype != DN_ST_F16 && a->dtype != DN_ST_BF16) ||
        (b->dtype != DN_ST_F32 && b->dtype != DN_ST_F16 && b->dtype != DN_ST_BF16))
        return dn_fail(DN_ERR_UNSUPPORTED, "load_hf: %s or %s is not F32, F16 or BF16", qkvz, ba);
    if (check) return DN_OK;
    const int64_t P = l->lin.proj;
    for (int64_t h = 0; h < H; h++) {
        const int64_t base = h * (2 * K + 2 * r * V);
        put_rows(m, P + (h * K) * d, a, base, K);
        put_rows(m, P + (H * K + h * K) * d, a, base + K, K);
        put_rows(m, P + (2 * H * K + h * r * V) * d, a, base + 2 * K, r * V);
        put_rows(m, P + (g->z0 + h * r * V) * d, a, base + 2 * K + r * V, r * V);
        put_rows(m, P + (g->b0 + h * r) * d, b, h * 2 * r, r);
        put_rows(m, P + (g->a0 + h * r) * d, b, h * 2 * r + r, r);
    }
    return DN_OK;
}

/* The file's name of a model tensor: the model's names are the causal LM's, and "model.X"
 * becomes prefix + "X". */
static void file_name(char *dst, size_t cap, const char *prefix, const char *name) {
    if (!strncmp(name, "model.", 6))
        snprintf(dst, cap, "%s%s", prefix, name + 6);
    else
        snprintf(dst, cap, "%s", name);
}

/* Records the first dtype seen in *first; 1 when t differs from it. */
static int t_16_first(dn_st_dtype *first, dn_st_dtype t) {
    if (*first == DN_ST_DTYPE_COUNT) *first = t;
    return *first != t;
}

static dn_status load_weights(dn_model *m, shards *s, const char *prefix, int fused) {
    char name[512];
    for (int64_t i = 0; fused && i < m->L; i++) {
        dn_status st = m->layers[i].kind == 'G' ? fused_layer(m, s, prefix, i, 1) : DN_OK;
        if (st != DN_OK) return st;
    }
    for (int64_t i = 0; i < dn_model_num_tensors(m); i++) {
        dn_param_info ti;
        dn_model_param_info(m, i, &ti);
        if (fused && is_fused_part(ti.name)) continue;
        file_name(name, sizeof name, prefix, ti.name);
        const char *file = NULL;
        const dn_st_tensor *t = shards_find(s, name, &file);
        if (!t)
            return dn_fail(
                DN_ERR_FORMAT, "load_hf: tensor %s is missing%s", name,
                !strcmp(ti.name, "lm_head.weight") ? " (and tie_word_embeddings is false)" : "");
        int same = t->ndim == ti.ndim;
        for (int d = 0; d < ti.ndim && same; d++)
            same = t->shape[d] == ti.shape[d];
        if (!same) {
            char want[96], have[96];
            int w = snprintf(want, sizeof want, "["), h = snprintf(have, sizeof have, "[");
            for (int d = 0; d < ti.ndim; d++)
                w += snprintf(want + w, sizeof want - (size_t)w, "%s%lld", d ? ", " : "",
                              (long long)ti.shape[d]);
            for (int d = 0; d < t->ndim && d < 8; d++)
                h += snprintf(have + h, sizeof have - (size_t)h, "%s%lld", d ? ", " : "",
                              (long long)t->shape[d]);
            snprintf(want + w, sizeof want - (size_t)w, "]");
            snprintf(have + h, sizeof have - (size_t)h, "]");
            return dn_fail(DN_ERR_FORMAT, "%s: tensor %s has shape %s, the config needs %s", file,
                           name, have, want);
        }
        if (t->dtype != DN_ST_F32 && t->dtype != DN_ST_F16 && t->dtype != DN_ST_BF16)
            return dn_fail(DN_ERR_UNSUPPORTED, "%s: tensor %s is %s (F32, F16 or BF16 only)", file,
                           name, dn_st_dtype_name(t->dtype));
    }
    /* nothing left over but what is skipped on purpose */
    for (int f = 0; f < s->n; f++)
        for (size_t j = 0; j < s->files[f]->n_tensors; j++)
            if (!s->used[f][j] && !skipped(s->files[f]->tensors[j].name))
                return dn_fail(DN_ERR_FORMAT,
                               "%s: tensor %s is not part of the model the config "
                               "describes",
                               s->files[f]->name, s->files[f]->tensors[j].name);
    /* all checked. The matrices stay 16-bit when every one of them is stored in the same 16-bit
     * type (a bf16 or fp16 checkpoint); otherwise everything is widened to fp32. */
    dn_st_dtype t16 = DN_ST_DTYPE_COUNT;
    int same = 1;
    for (int64_t i = 0; i < dn_model_num_tensors(m) && same; i++) {
        dn_param_info ti;
        dn_model_param_info(m, i, &ti);
        const char *file = NULL;
        const dn_st_tensor *t = NULL;
        if (fused && is_fused_part(ti.name)) {
            const char *at = strstr(ti.name, ".linear_attn.");
            snprintf(name, sizeof name, "%s%.*s.linear_attn.in_proj_%s.weight", prefix,
                     (int)(at - ti.name - 6), ti.name + 6,
                     strstr(at, "qkv") || strstr(at, "_z.") ? "qkvz" : "ba");
        } else if (ti.ndim == 2)
            file_name(name, sizeof name, prefix, ti.name);
        else
            continue;
        t = shards_find(s, name, &file);
        if (t_16_first(&t16, t->dtype)) same = 0;
    }
    if (same && (t16 == DN_ST_BF16 || t16 == DN_ST_F16)) {
        m->w16 = dn_alloc((size_t)dn_model_num_params(m) * sizeof(uint16_t));
        if (!m->w16) return dn_fail(DN_ERR_ALLOC, "load_hf: cannot allocate the weights");
        m->w16_type = t16 == DN_ST_BF16 ? DN_BF16 : DN_F16;
    }
    for (int64_t i = 0; fused && i < m->L; i++)
        if (m->layers[i].kind == 'G') fused_layer(m, s, prefix, i, 0);
    for (int64_t i = 0; i < dn_model_num_tensors(m); i++) {
        dn_param_info ti;
        dn_model_param_info(m, i, &ti);
        if (fused && is_fused_part(ti.name)) continue;
        file_name(name, sizeof name, prefix, ti.name);
        const char *file = NULL;
        put_rows(m, ti.offset, shards_find(s, name, &file), 0, ti.ndim == 2 ? ti.shape[0] : 1);
    }
    return DN_OK;
}

dn_status dn_model_load_hf(dn_model **out, const char *dir) {
    if (!out || !dir) return dn_fail(DN_ERR_NULL, "load_hf: NULL argument");
    dn_model_config c;
    const char *prefix = NULL;
    int fused = 0;
    dn_status st = read_config(dir, &c, &prefix, &fused);
    if (st != DN_OK) return st;
    shards *s = dn_calloc(sizeof *s);
    if (!s) return dn_fail(DN_ERR_ALLOC, "load_hf: cannot allocate");
    dn_model *m = NULL;
    if ((st = shards_open(s, dir)) == DN_OK && (st = dn_model_new(&m, &c, 0, 0)) == DN_OK)
        st = load_weights(m, s, prefix, fused);
    shards_close(s);
    dn_free(s);
    if (st != DN_OK) {
        dn_model_free(m);
        return st;
    }
    *out = m;
    return DN_OK;
}
