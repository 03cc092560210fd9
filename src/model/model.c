/*
 * model.c - the decoder-only LM: configuration, parameters, activation arena, forward, backward
 * and the cross-entropy loss (see the model section of include/deltanet.h).
 *
 * Block i (pre-norm):  a = RMSNorm(h);  h += mixer(a);  c = RMSNorm(h);
 *                      h += W_down (silu(W_gate c) * W_up c)
 * then hf = RMSNorm(h) and logits = hf W_head^T. The backward runs the blocks in reverse with
 * one running gradient of the residual stream (m->dh).
 */
#include "model.h"

#include <string.h>
#include <time.h>

/* ---- configuration ---------------------------------------------------------------------- */

dn_model_config dn_model_config_default(void) {
    dn_model_config c;
    memset(&c, 0, sizeof c);
    c.vocab_size = 256, c.hidden_size = 128, c.num_hidden_layers = 4, c.intermediate_size = 352;
    strcpy(c.layer_pattern, "G");
    c.rms_norm_eps = 1e-6, c.tie_word_embeddings = 1;
    c.num_attention_heads = 2, c.num_key_value_heads = 2, c.head_dim = 64;
    c.rope_theta = 10000.0, c.partial_rotary_factor = 1.0;
    c.attn_qk_norm = 1, c.attn_output_gate = 1;
    c.linear_num_key_heads = 2, c.linear_num_value_heads = 2;
    c.linear_key_head_dim = 64, c.linear_value_head_dim = 64, c.linear_conv_kernel_dim = 4;
    c.mamba_expand = 2, c.mamba_state_size = 16, c.mamba_dt_rank = 0;
    c.initializer_range = 0.02;
    return c;
}

static double clock_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int has_kind(const dn_model_config *c, char k) {
    return strchr(c->layer_pattern, k) != NULL;
}
/* the mixers configured by the linear_* fields: the linear family and Mamba-2 */
static int has_la(const dn_model_config *c) { return strpbrk(c->layer_pattern, "GDLM") != NULL; }

#define RANGE(field, lo, hi)                                                                       \
    if (!(c->field >= (lo) && c->field <= (hi)))                                                   \
        return dn_fail(DN_ERR_ARG, "model config: " #field " = %g is outside [%g, %g]",            \
                       (double)c->field, (double)(lo), (double)(hi));

dn_status dn_model_config_check(const dn_model_config *c) {
    if (!c) return dn_fail(DN_ERR_NULL, "model config is NULL");
    RANGE(vocab_size, 1, 1 << 24);
    RANGE(hidden_size, 1, 1 << 16);
    RANGE(num_hidden_layers, 1, DN_MODEL_MAX_LAYERS);
    RANGE(intermediate_size, 1, 1 << 18);
    RANGE(rms_norm_eps, 0.0, 1.0);
    RANGE(initializer_range, 0.0, 10.0);
    const size_t np = strnlen(c->layer_pattern, sizeof c->layer_pattern);
    if (np == 0 || np > DN_MODEL_MAX_LAYERS)
        return dn_fail(DN_ERR_ARG, "model config: layer_pattern is empty or not terminated");
    for (size_t i = 0; i < np; i++)
        if (!strchr("GDLMRSA", c->layer_pattern[i]))
            return dn_fail(DN_ERR_ARG,
                           "model config: layer_pattern letter '%c' is not a mixer this version "
                           "has (G: Gated DeltaNet, D: DeltaNet, L: linear attention, M: Mamba-2, "
                           "R: RWKV-4, S: Mamba-1, A: softmax attention)",
                           c->layer_pattern[i]);
    if (has_kind(c, 'A')) {
        RANGE(num_attention_heads, 1, 1024);
        RANGE(num_key_value_heads, 1, 1024);
        RANGE(head_dim, 2, 256);
        RANGE(rope_theta, 1.0, 1e12);
        RANGE(partial_rotary_factor, 0.0, 1.0);
        if (c->attn_conv_kernel_dim != 0) RANGE(attn_conv_kernel_dim, 2, 4);
        if (c->num_attention_heads % c->num_key_value_heads)
            return dn_fail(DN_ERR_SHAPE,
                           "model config: num_attention_heads (%lld) is not a multiple of "
                           "num_key_value_heads (%lld)",
                           (long long)c->num_attention_heads, (long long)c->num_key_value_heads);
    }
    if (has_kind(c, 'S')) {
        RANGE(mamba_expand, 1, 16);
        RANGE(mamba_state_size, 1, 256);
        RANGE(mamba_dt_rank, 0, 65536);
        RANGE(linear_conv_kernel_dim, 2, 4);
    }
    const size_t nm = strnlen(c->mlp_pattern, sizeof c->mlp_pattern);
    if (nm > DN_MODEL_MAX_LAYERS)
        return dn_fail(DN_ERR_ARG, "model config: mlp_pattern is not terminated");
    for (size_t i = 0; i < nm; i++)
        if (c->mlp_pattern[i] != 'D' && c->mlp_pattern[i] != 'E')
            return dn_fail(DN_ERR_ARG,
                           "model config: mlp_pattern letter '%c' is neither D (dense) nor E "
                           "(experts)",
                           c->mlp_pattern[i]);
    if (strchr(c->mlp_pattern, 'E')) {
        RANGE(num_experts, 1, 4096);
        RANGE(num_experts_per_tok, 1, c->num_experts);
        RANGE(moe_intermediate_size, 1, 1 << 18);
        RANGE(shared_expert_intermediate_size, 0, 1 << 18);
    }
    if (has_la(c)) {
        RANGE(linear_num_key_heads, 1, 1024);
        RANGE(linear_num_value_heads, 1, 1024);
        RANGE(linear_key_head_dim, 1, 1024);
        RANGE(linear_value_head_dim, 1, 1024);
        RANGE(linear_conv_kernel_dim, 2, 4);
        if (c->linear_num_value_heads % c->linear_num_key_heads)
            return dn_fail(DN_ERR_SHAPE,
                           "model config: linear_num_value_heads (%lld) is not a multiple of "
                           "linear_num_key_heads (%lld)",
                           (long long)c->linear_num_value_heads,
                           (long long)c->linear_num_key_heads);
    }
    return DN_OK;
}

/* ---- parameters -------------------------------------------------------------------------- */

typedef enum {
    INIT_NORMAL,
    INIT_ZERO,
    INIT_ONE,
    INIT_CONV,
    INIT_A_LOG,
    INIT_DT_BIAS,
    INIT_MIX,
    INIT_DECAY,
    INIT_FIRST,
    INIT_S4D,
    INIT_DT_PROJ
} init_kind;

typedef struct {
    dn_model *m;
    int64_t names_len;
    init_kind *init;
    int count_only;
} reg;

/* Registers a tensor (pass 1 counts sizes, pass 2 fills the table); returns its offset. */
static int64_t add(reg *r, const char *name, int ndim, int64_t s0, int64_t s1, int64_t s2,
                   init_kind init, int decay) {
    dn_model *m = r->m;
    const int64_t numel = s0 * (ndim > 1 ? s1 : 1) * (ndim > 2 ? s2 : 1);
    const int64_t off = m->n_params;
    if (!r->count_only) {
        dn_param_info *t = &m->tensors[m->n_tensors];
        char *dst = m->names + r->names_len;
        strcpy(dst, name);
        t->name = dst;
        t->ndim = ndim;
        t->shape[0] = s0, t->shape[1] = ndim > 1 ? s1 : 0, t->shape[2] = ndim > 2 ? s2 : 0;
        t->offset = off, t->numel = numel, t->decay = decay;
        r->init[m->n_tensors] = init;
    }
    r->names_len += (int64_t)strlen(name) + 1;
    m->n_tensors++;
    m->n_params += numel;
    return off;
}

static void register_params(reg *r) {
    dn_model *m = r->m;
    const int64_t d = m->d, I = m->I;
    char name[160];
    m->n_tensors = 0, m->n_params = 0, r->names_len = 0;
    m->embed = add(r, "model.embed_tokens.weight", 2, m->Vocab, d, 0, INIT_NORMAL, 1);
    for (int64_t i = 0; i < m->L; i++) {
        dn_layer *l = &m->layers[i];
#define P(fmt) (snprintf(name, sizeof name, "model.layers.%lld." fmt, (long long)i), name)
        l->norm1 = add(r, P("input_layernorm.weight"), 1, d, 0, 0, INIT_ZERO, 0);
        if (dn_is_la_kind(l->kind)) { /* the projections in the order of their columns */
            const dn_la_layer_dims *g = &l->ld;
            l->lin.proj =
                add(r, P("linear_attn.in_proj_qkv.weight"), 2, g->C, d, 0, INIT_NORMAL, 1);
            add(r, P("linear_attn.in_proj_z.weight"), 2, g->HV * g->V, d, 0, INIT_NORMAL, 1);
            if (g->beta) add(r, P("linear_attn.in_proj_b.weight"), 2, g->HV, d, 0, INIT_NORMAL, 1);
            if (g->gate) add(r, P("linear_attn.in_proj_a.weight"), 2, g->HV, d, 0, INIT_NORMAL, 1);
            l->lin.conv = add(r, P("linear_attn.conv1d.weight"), 3, g->C, 1, g->W, INIT_CONV, 1);
            if (g->gate) {
                l->lin.A_log = add(r, P("linear_attn.A_log"), 1, g->HV, 0, 0, INIT_A_LOG, 0);
                l->lin.dt_bias = add(r, P("linear_attn.dt_bias"), 1, g->HV, 0, 0, INIT_DT_BIAS, 0);
            }
            l->lin.norm = add(r, P("linear_attn.norm.weight"), 1, g->V, 0, 0, INIT_ONE, 0);
            l->lin.out =
                add(r, P("linear_attn.out_proj.weight"), 2, d, g->HV * g->V, 0, INIT_NORMAL, 1);
        } else if (l->kind == 'S') {
            const dn_mamba_layer_dims *g = &l->sd;
            const int64_t E = g->E;
            l->mamba1.in_proj = add(r, P("mamba1.in_proj.weight"), 2, 2 * E, d, 0, INIT_NORMAL, 1);
            l->mamba1.conv = add(r, P("mamba1.conv1d.weight"), 3, E, 1, g->W, INIT_CONV, 1);
            l->mamba1.conv_bias = add(r, P("mamba1.conv1d.bias"), 1, E, 0, 0, INIT_CONV, 0);
            l->mamba1.x_proj =
                add(r, P("mamba1.x_proj.weight"), 2, g->R + 2 * g->N, E, 0, INIT_NORMAL, 1);
            l->mamba1.dt_proj = add(r, P("mamba1.dt_proj.weight"), 2, E, g->R, 0, INIT_DT_PROJ, 1);
            l->mamba1.dt_bias = add(r, P("mamba1.dt_proj.bias"), 1, E, 0, 0, INIT_DT_BIAS, 0);
            l->mamba1.A_log = add(r, P("mamba1.A_log"), 2, E, g->N, 0, INIT_S4D, 0);
            l->mamba1.D = add(r, P("mamba1.D"), 1, E, 0, 0, INIT_ONE, 0);
            l->mamba1.out = add(r, P("mamba1.out_proj.weight"), 2, d, E, 0, INIT_NORMAL, 1);
        } else if (l->kind == 'R') {
            l->rwkv.time_decay = add(r, P("rwkv.time_decay"), 1, d, 0, 0, INIT_DECAY, 0);
            l->rwkv.time_first = add(r, P("rwkv.time_first"), 1, d, 0, 0, INIT_FIRST, 0);
            l->rwkv.mix_k = add(r, P("rwkv.time_mix_key"), 1, d, 0, 0, INIT_MIX, 0);
            l->rwkv.mix_v = add(r, P("rwkv.time_mix_value"), 1, d, 0, 0, INIT_MIX, 0);
            l->rwkv.mix_r = add(r, P("rwkv.time_mix_receptance"), 1, d, 0, 0, INIT_MIX, 0);
            l->rwkv.key = add(r, P("rwkv.key.weight"), 2, d, d, 0, INIT_NORMAL, 1);
            l->rwkv.value = add(r, P("rwkv.value.weight"), 2, d, d, 0, INIT_NORMAL, 1);
            l->rwkv.receptance = add(r, P("rwkv.receptance.weight"), 2, d, d, 0, INIT_NORMAL, 1);
            l->rwkv.output = add(r, P("rwkv.output.weight"), 2, d, d, 0, INIT_NORMAL, 1);
        } else if (l->kind == 'M') {
            const dn_mamba2_layer_dims *g = &l->md;
            l->mamba.in_proj = add(r, P("mamba.in_proj.weight"), 2, g->Pw, d, 0, INIT_NORMAL, 1);
            l->mamba.conv = add(r, P("mamba.conv1d.weight"), 3, g->C, 1, g->W, INIT_CONV, 1);
            l->mamba.conv_bias = add(r, P("mamba.conv1d.bias"), 1, g->C, 0, 0, INIT_CONV, 0);
            l->mamba.dt_bias = add(r, P("mamba.dt_bias"), 1, g->H, 0, 0, INIT_DT_BIAS, 0);
            l->mamba.A_log = add(r, P("mamba.A_log"), 1, g->H, 0, 0, INIT_A_LOG, 0);
            l->mamba.D = add(r, P("mamba.D"), 1, g->H, 0, 0, INIT_ONE, 0);
            l->mamba.norm = add(r, P("mamba.norm.weight"), 1, g->H * g->P, 0, 0, INIT_ONE, 0);
            l->mamba.out = add(r, P("mamba.out_proj.weight"), 2, d, g->H * g->P, 0, INIT_NORMAL, 1);
        } else {
            const dn_attn_layer_dims *ad = &m->ad;
            l->attn.proj = add(r, P("self_attn.q_proj.weight"), 2, ad->Pq, d, 0, INIT_NORMAL, 1);
            add(r, P("self_attn.k_proj.weight"), 2, ad->HKV * ad->D, d, 0, INIT_NORMAL, 1);
            add(r, P("self_attn.v_proj.weight"), 2, ad->HKV * ad->D, d, 0, INIT_NORMAL, 1);
            if (ad->W)
                l->attn.conv =
                    add(r, P("self_attn.conv1d.weight"), 3, ad->C, 1, ad->W, INIT_CONV, 1);
            if (ad->qk_norm) {
                l->attn.q_norm = add(r, P("self_attn.q_norm.weight"), 1, ad->D, 0, 0, INIT_ZERO, 0);
                l->attn.k_norm = add(r, P("self_attn.k_norm.weight"), 1, ad->D, 0, 0, INIT_ZERO, 0);
            }
            l->attn.out =
                add(r, P("self_attn.o_proj.weight"), 2, d, ad->H * ad->D, 0, INIT_NORMAL, 1);
        }
        l->norm2 = add(r, P("post_attention_layernorm.weight"), 1, d, 0, 0, INIT_ZERO, 0);
        if (l->moe) {
            const dn_model_config *c = &m->cfg;
            const int64_t E = c->num_experts, Im = c->moe_intermediate_size,
                          Is = c->shared_expert_intermediate_size;
            l->router = add(r, P("mlp.gate.weight"), 2, E, d, 0, INIT_NORMAL, 1);
            for (int64_t e = 0; e < E; e++) {
                static const char *const part[3] = {"gate_proj", "up_proj", "down_proj"};
                for (int k = 0; k < 3; k++) {
                    snprintf(name, sizeof name, "model.layers.%lld.mlp.experts.%lld.%s.weight",
                             (long long)i, (long long)e, part[k]);
                    const int64_t off =
                        add(r, name, 2, k < 2 ? Im : d, k < 2 ? d : Im, 0, INIT_NORMAL, 1);
                    if (e == 0 && k == 0) l->experts = off;
                }
            }
            if (Is > 0) {
                l->shared_gu =
                    add(r, P("mlp.shared_expert.gate_proj.weight"), 2, Is, d, 0, INIT_NORMAL, 1);
                add(r, P("mlp.shared_expert.up_proj.weight"), 2, Is, d, 0, INIT_NORMAL, 1);
                l->shared_down =
                    add(r, P("mlp.shared_expert.down_proj.weight"), 2, d, Is, 0, INIT_NORMAL, 1);
                l->shared_gate =
                    add(r, P("mlp.shared_expert_gate.weight"), 2, 1, d, 0, INIT_NORMAL, 1);
            }
        } else {
            l->gate_up = add(r, P("mlp.gate_proj.weight"), 2, I, d, 0, INIT_NORMAL, 1);
            add(r, P("mlp.up_proj.weight"), 2, I, d, 0, INIT_NORMAL, 1);
            l->down = add(r, P("mlp.down_proj.weight"), 2, d, I, 0, INIT_NORMAL, 1);
        }
#undef P
    }
    m->final_norm = add(r, "model.norm.weight", 1, d, 0, 0, INIT_ZERO, 0);
    m->head = m->cfg.tie_word_embeddings
                  ? m->embed
                  : add(r, "lm_head.weight", 2, m->Vocab, d, 0, INIT_NORMAL, 1);
}

/* Initial values. A_log = log(A), A ~ U(1, 16); dt_bias = softplus^-1(dt), dt log-uniform in
 * [1e-3, 1e-1] (Mamba-2's and Qwen3.5's choices); the convolution U(-1/sqrt(W), 1/sqrt(W))
 * (PyTorch's default for a depthwise Conv1d). */
static void init_params(dn_model *m, const init_kind *init, uint64_t seed) {
    for (int64_t t = 0; t < m->n_tensors; t++) {
        const dn_param_info *ti = &m->tensors[t];
        dn_rng r = {seed ^ (0xA5A5A5A5ull * (uint64_t)(t + 1))};
        float *p = m->params + ti->offset;
        for (int64_t i = 0; i < ti->numel; i++) {
            double v = 0;
            switch (init[t]) {
            case INIT_NORMAL: v = m->cfg.initializer_range * dn_rng_normal(&r); break;
            case INIT_ZERO: v = 0; break;
            case INIT_ONE: v = 1; break;
            case INIT_CONV: { /* a weight's width is its last dim; a bias's, the config's */
                const int64_t w = ti->ndim == 3 ? ti->shape[2] : m->cfg.linear_conv_kernel_dim;
                const double b = 1.0 / sqrt((double)w);
                v = (2.0 * dn_rng_uniform(&r) - 1.0) * b;
                break;
            }
            case INIT_A_LOG: v = log(1.0 + 15.0 * dn_rng_uniform(&r)); break;
            case INIT_MIX: v = 0.2 + 0.6 * dn_rng_uniform(&r); break;
            case INIT_DECAY: /* RWKV-4: channel decays from fast (-5) to slow (+3) */
                v = -5.0 + 8.0 * pow((double)i / (double)(ti->numel > 1 ? ti->numel - 1 : 1), 0.7);
                break;
            case INIT_FIRST: v = log(0.3); break;
            case INIT_S4D: v = log((double)(i % ti->shape[1] + 1)); break; /* A[e][n] = -(n+1) */
            case INIT_DT_PROJ: { /* U(-R^-1/2, R^-1/2), Mamba's dt_proj init */
                const double b = 1.0 / sqrt((double)ti->shape[1]);
                v = (2.0 * dn_rng_uniform(&r) - 1.0) * b;
                break;
            }
            case INIT_DT_BIAS: {
                const double dt = exp(log(1e-3) + (log(1e-1) - log(1e-3)) * dn_rng_uniform(&r));
                v = dt + log(-expm1(-dt));
                break;
            }
            }
            p[i] = (float)v;
        }
    }
}

dn_status dn_model_create(dn_model **out, const dn_model_config *c, uint64_t seed) {
    return dn_model_new(out, c, seed, 1);
}

dn_status dn_model_new(dn_model **out, const dn_model_config *c, uint64_t seed, int do_init) {
    if (!out) return dn_fail(DN_ERR_NULL, "model: out is NULL");
    dn_status st = dn_model_config_check(c);
    if (st != DN_OK) return st;
    dn_model *m = dn_calloc(sizeof *m);
    if (!m) return dn_fail(DN_ERR_ALLOC, "model: cannot allocate");
    m->cfg = *c;
    m->L = c->num_hidden_layers, m->d = c->hidden_size, m->I = c->intermediate_size;
    m->Vocab = c->vocab_size;
    dn_attn_layer_dims_init(&m->ad, c);
    m->layers = dn_calloc((size_t)m->L * sizeof *m->layers);
    init_kind *init = NULL;
    if (!m->layers) goto oom;
    const size_t np = strlen(c->layer_pattern);
    for (int64_t i = 0; i < m->L; i++) {
        dn_layer *l = &m->layers[i];
        l->kind = c->layer_pattern[(size_t)i % np];
        const size_t nm = strlen(c->mlp_pattern);
        l->moe = nm > 0 && c->mlp_pattern[(size_t)i % nm] == 'E';
        if (dn_is_la_kind(l->kind)) dn_la_layer_dims_init(&l->ld, c, l->kind);
        if (l->kind == 'M') dn_mamba2_layer_dims_init(&l->md, c);
        if (l->kind == 'S') dn_mamba_layer_dims_init(&l->sd, c);
    }

    reg r = {m, 0, NULL, 1};
    register_params(&r); /* sizes */
    int64_t bytes;
    if (!DN_PROD(&bytes, m->n_params, 2 * (int64_t)sizeof(float)))
        return dn_model_free(m), dn_fail(DN_ERR_SHAPE, "model: parameter count overflows");
    m->tensors = dn_calloc((size_t)m->n_tensors * sizeof *m->tensors);
    m->names = dn_alloc((size_t)r.names_len);
    init = dn_alloc((size_t)m->n_tensors * sizeof *init);
    m->params = dn_alloc((size_t)bytes / 2);
    m->grads = dn_calloc((size_t)bytes / 2);
    if (!m->tensors || !m->names || !init || !m->params || !m->grads) goto oom;
    r.count_only = 0, r.init = init;
    register_params(&r);
    if (do_init) init_params(m, init, seed);
    dn_free(init);
    *out = m;
    return DN_OK;
oom:
    dn_free(init);
    dn_model_free(m);
    return dn_fail(DN_ERR_ALLOC, "model: cannot allocate the parameters");
}

void dn_model_free(dn_model *m) {
    if (!m) return;
    dn_free(m->arena);
    dn_rope_table_free(&m->rope);
    dn_free(m->params);
    dn_free(m->grads);
    dn_free(m->w16);
    dn_free(m->prof_mixer);
    dn_free(m->tensors);
    dn_free(m->names);
    dn_free(m->layers);
    dn_free(m);
}

const dn_model_config *dn_model_get_config(const dn_model *m) { return m ? &m->cfg : NULL; }
int64_t dn_model_num_tensors(const dn_model *m) { return m ? m->n_tensors : 0; }
int64_t dn_model_num_params(const dn_model *m) { return m ? m->n_params : 0; }
float *dn_model_params(dn_model *m) { return m ? m->params : NULL; }
float *dn_model_grads(dn_model *m) { return m ? m->grads : NULL; }
void dn_model_zero_grad(dn_model *m) {
    if (m) memset(m->grads, 0, (size_t)m->n_params * sizeof(float));
}

dn_status dn_model_init_decay(dn_model *m, double lo, double hi, uint64_t seed) {
    if (!m) return dn_fail(DN_ERR_NULL, "model_init_decay: NULL model");
    if (!(lo > 0 && lo <= hi && hi < 1))
        return dn_fail(DN_ERR_ARG, "model_init_decay: need 0 < lo <= hi < 1 (lo=%g, hi=%g)", lo,
                       hi);
    for (int64_t i = 0; i < m->L; i++) {
        const dn_layer *l = &m->layers[i];
        int64_t A_log = -1, dt_bias = -1, n = 0;
        if (l->kind == 'G')
            A_log = l->lin.A_log, dt_bias = l->lin.dt_bias, n = l->ld.HV;
        else if (l->kind == 'M')
            A_log = l->mamba.A_log, dt_bias = l->mamba.dt_bias, n = l->md.H;
        if (A_log < 0) continue;
        dn_rng r = {seed ^ (0x9E3779B97F4A7C15ull * (uint64_t)(i + 1))};
        for (int64_t h = 0; h < n; h++) {
            /* -g = softplus(dt_bias) when A = 1: dt_bias = softplus^-1(-log decay) */
            const double glo = -log(hi), ghi = -log(lo);
            const double dt = exp(log(glo) + (log(ghi) - log(glo)) * dn_rng_uniform(&r));
            m->params[A_log + h] = 0.0f;
            m->params[dt_bias + h] = (float)(dt + log(-expm1(-dt)));
        }
    }
    return DN_OK;
}

dn_status dn_model_param_info(const dn_model *m, int64_t i, dn_param_info *out) {
    if (!m || !out) return dn_fail(DN_ERR_NULL, "model_param_info: NULL argument");
    if (i < 0 || i >= m->n_tensors)
        return dn_fail(DN_ERR_ARG, "model_param_info: index %lld outside [0, %lld)", (long long)i,
                       (long long)m->n_tensors);
    *out = m->tensors[i];
    return DN_OK;
}

dn_status dn_model_set_weight_dtype(dn_model *m, dn_dtype t) {
    if (!m) return dn_fail(DN_ERR_NULL, "model_set_weight_dtype: NULL model");
    if (t != DN_F32 && t != DN_BF16 && t != DN_F16)
        return dn_fail(DN_ERR_ARG, "model_set_weight_dtype: dtype %d is not F32, F16 or BF16",
                       (int)t);
    if (t == DN_F32 ? !m->w16 : m->w16 && m->w16_type == t) return DN_OK;
    uint16_t *w16 = NULL;
    if (t != DN_F32) {
        w16 = dn_alloc((size_t)m->n_params * sizeof(uint16_t));
        if (!w16) return dn_fail(DN_ERR_ALLOC, "model_set_weight_dtype: cannot allocate");
    }
    for (int64_t i = 0; i < m->n_tensors; i++) {
        const dn_param_info *ti = &m->tensors[i];
        if (ti->ndim != 2) continue;
        float *p = m->params + ti->offset;
        const uint16_t *src = m->w16 ? m->w16 + ti->offset : NULL;
        for (int64_t j = 0; j < ti->numel; j++) {
            const float x =
                src ? (m->w16_type == DN_BF16 ? dn_bf16_to_f32(src[j]) : dn_f16_to_f32(src[j]))
                    : p[j];
            if (w16)
                w16[ti->offset + j] = t == DN_BF16 ? dn_f32_to_bf16(x) : dn_f32_to_f16(x);
            else
                p[j] = x;
        }
    }
    dn_free(m->w16);
    m->w16 = w16, m->w16_type = t;
    return DN_OK;
}

dn_dtype dn_model_weight_dtype(const dn_model *m) { return m && m->w16 ? m->w16_type : DN_F32; }

dn_status dn_model_memory(const dn_model *m, size_t *param_bytes, size_t *act_bytes) {
    if (!m) return dn_fail(DN_ERR_NULL, "model_memory: model is NULL");
    if (param_bytes) {
        *param_bytes = (size_t)m->n_params * 2 * sizeof(float); /* parameters and gradients */
        if (m->w16) { /* the matrices in 16 bits; the rest in fp32; no gradients */
            *param_bytes = 0;
            for (int64_t i = 0; i < m->n_tensors; i++)
                *param_bytes += (size_t)m->tensors[i].numel * (m->tensors[i].ndim == 2 ? 2 : 4);
        }
    }
    if (act_bytes) *act_bytes = m->arena_bytes;
    return DN_OK;
}

/* ---- activation arena ---------------------------------------------------------------------- */

/* Bump allocation in 64-byte steps: a first pass with base NULL measures, the second assigns. */
typedef struct {
    char *base;
    size_t used;
    int overflow;
} bump;

static void *take(bump *b, int64_t n, size_t elt) {
    int64_t bytes;
    if (n < 0 || !DN_PROD(&bytes, n, (int64_t)elt) || bytes > ((int64_t)1 << 50)) {
        b->overflow = 1;
        return NULL;
    }
    void *p = b->base ? b->base + b->used : NULL;
    b->used += ((size_t)bytes + 63) & ~(size_t)63;
    return p;
}
#define TAKE(b, n) ((float *)take((b), (n), sizeof(float)))

static size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }

static void lay_out_moe(dn_model *m, bump *b, int64_t N) {
    const dn_model_config *c = &m->cfg;
    const int64_t E = c->num_experts, k = c->num_experts_per_tok, d = m->d,
                  Imax = c->moe_intermediate_size > c->shared_expert_intermediate_size
                             ? c->moe_intermediate_size
                             : c->shared_expert_intermediate_size;
    m->moe_p = TAKE(b, N * E);
    m->moe_w = TAKE(b, N * k);
    m->moe_idx = take(b, N * k, sizeof(int32_t));
    m->moe_rows = take(b, N, sizeof(int64_t));
    m->moe_x = TAKE(b, N * d);
    m->moe_gu = TAKE(b, N * 2 * Imax);
    m->moe_act = TAKE(b, N * Imax);
    m->moe_y = TAKE(b, N * d);
    m->moe_sg = TAKE(b, N);
}

/* Training (train 1): every layer keeps its activations for the backward. Inference: the
 * layers run one after another and keep nothing, so they share one region (the residual
 * stream alternates between two buffers), and nothing of the backward is laid out. */
static void lay_out(dn_model *m, bump *b, int64_t B, int64_t T, int train) {
    const int64_t N = B * T, d = m->d, I = m->I;
    const dn_attn_layer_dims *ad = &m->ad;
    int64_t wide = d; /* widest mixer-internal gradient the backward keeps per layer */
    int64_t P = 1, C = 1, HVV = 1, HV = 1, HQ = 1, HK = 1; /* the widest of each, for scratch */
    int64_t dA = 1;
    size_t la_ws = 0;
    int moe = 0;
    float *hbuf[2] = {NULL, NULL};
    if (!train) hbuf[0] = TAKE(b, N * d), hbuf[1] = TAKE(b, N * d);
    const size_t shared = b->used;
    size_t top = shared;
    for (int64_t i = 0; i < m->L; i++) {
        dn_layer *l = &m->layers[i];
        if (!train) b->used = shared;
        l->h_in = train ? TAKE(b, N * d) : hbuf[i % 2];
        l->a = TAKE(b, N * d);
        l->rstd1 = TAKE(b, N);
        l->h_mid = TAKE(b, N * d);
        l->c = TAKE(b, N * d);
        l->rstd2 = TAKE(b, N);
        l->gu = l->moe ? NULL : TAKE(b, N * 2 * I);
        l->act = l->moe ? NULL : TAKE(b, N * I);
        moe |= l->moe;
        if (dn_is_la_kind(l->kind)) {
            const dn_la_layer_dims *g = &l->ld;
            dn_la_layer_acts *s = &l->lin_acts;
            size_t la_saved = 0;
            dn_la_params p = dn_la_params_default(g->op, B, T, g->H, g->HV, g->K, g->V);
            if (train && dn_la_saved_size(&p, &la_saved) != DN_OK) b->overflow = 1;
            s->proj = TAKE(b, N * g->P);
            s->xc = TAKE(b, N * g->C);
            s->g = TAKE(b, N * g->HV);
            s->beta = TAKE(b, N * g->HV);
            s->o = TAKE(b, N * g->HV * g->V);
            s->rstd = TAKE(b, N * g->HV);
            s->on = TAKE(b, N * g->HV * g->V);
            s->saved = train ? take(b, (int64_t)la_saved, 1) : NULL;
            s->saved_bytes = la_saved;
            dn_la_bwd_params bp = dn_la_bwd_params_default(&p);
            size_t ws = 0;
            if (train && dn_la_backward_workspace_size(&bp, &ws) != DN_OK) b->overflow = 1;
            la_ws = max_sz(la_ws, ws);
            P = g->P > P ? g->P : P, C = g->C > C ? g->C : C;
            HVV = g->HV * g->V > HVV ? g->HV * g->V : HVV, HV = g->HV > HV ? g->HV : HV;
        } else if (l->kind == 'S') {
            const dn_mamba_layer_dims *g = &l->sd;
            dn_mamba_layer_acts *s = &l->mamba1_acts;
            const int64_t E = g->E, X = g->R + 2 * g->N;
            s->proj = TAKE(b, N * 2 * E);
            s->xc = TAKE(b, N * E);
            s->xdbl = TAKE(b, N * X);
            s->dt = TAKE(b, N * E);
            s->A = TAKE(b, E * g->N);
            s->y = TAKE(b, N * E);
            P = 2 * E > P ? 2 * E : P, C = E + 2 * g->N > C ? E + 2 * g->N : C;
            HVV = E > HVV ? E : HVV, wide = X > wide ? X : wide;
            dA = E * g->N > dA ? E * g->N : dA;
        } else if (l->kind == 'R') {
            dn_rwkv4_layer_acts *s = &l->rwkv_acts;
            s->xk = TAKE(b, N * d), s->xv = TAKE(b, N * d), s->xr = TAKE(b, N * d);
            s->k = TAKE(b, N * d), s->v = TAKE(b, N * d), s->r = TAKE(b, N * d);
            s->wkv = TAKE(b, N * d), s->rw = TAKE(b, N * d);
            s->zeros = TAKE(b, d);
            if (s->zeros) memset(s->zeros, 0, (size_t)d * sizeof(float));
            P = 3 * d > P ? 3 * d : P, C = 2 * d > C ? 2 * d : C, HVV = d > HVV ? d : HVV;
        } else if (l->kind == 'M') {
            const dn_mamba2_layer_dims *g = &l->md;
            dn_mamba2_layer_acts *s = &l->mamba_acts;
            s->proj = TAKE(b, N * g->Pw);
            s->xc = TAKE(b, N * g->C);
            s->A = TAKE(b, g->H);
            s->y = TAKE(b, N * g->H * g->P);
            s->u = TAKE(b, N * g->H * g->P);
            s->rstd = TAKE(b, N * g->G);
            s->on = TAKE(b, N * g->H * g->P);
            P = g->Pw > P ? g->Pw : P, C = g->C > C ? g->C : C;
            HVV = g->H * g->P > HVV ? g->H * g->P : HVV, HV = g->H > HV ? g->H : HV;
        } else {
            dn_attn_layer_acts *s = &l->attn_acts;
            s->proj = TAKE(b, N * ad->P);
            s->qraw = TAKE(b, N * ad->H * ad->D);
            s->kraw = TAKE(b, N * ad->HKV * ad->D);
            s->qc = ad->W ? TAKE(b, N * ad->H * ad->D) : s->qraw;
            s->kc = ad->W ? TAKE(b, N * ad->HKV * ad->D) : s->kraw;
            s->vc = ad->W ? TAKE(b, N * ad->HKV * ad->D) : NULL;
            s->qn = TAKE(b, N * ad->H * ad->D);
            s->kn = TAKE(b, N * ad->HKV * ad->D);
            s->rq = TAKE(b, N * ad->H);
            s->rk = TAKE(b, N * ad->HKV);
            s->o = TAKE(b, N * ad->H * ad->D);
            s->lse = TAKE(b, N * ad->H);
            s->og = ad->gate ? TAKE(b, N * ad->H * ad->D) : s->o;
            if ((ad->H + ad->HKV) * ad->D > wide) wide = (ad->H + ad->HKV) * ad->D;
        }
        top = max_sz(top, b->used);
    }
    b->used = top;
    m->h_out = train ? TAKE(b, N * d) : hbuf[m->L % 2];
    m->hf = TAKE(b, N * d);
    m->rstdf = TAKE(b, N);
    if (moe) lay_out_moe(m, b, N);
    if (!train) return;
    m->rows_h = TAKE(b, N * d);
    m->logits = TAKE(b, N * m->Vocab);
    m->rows = take(b, N, sizeof(int64_t));
    m->row_loss = take(b, N, sizeof(double));
    /* backward scratch */
    if (has_kind(&m->cfg, 'A')) {
        if (ad->P > P) P = ad->P;
        HQ = ad->H * ad->D, HK = ad->HKV * ad->D;
        if (HQ > HVV) HVV = HQ;
    }
    m->dh = TAKE(b, N * d);
    m->dx = TAKE(b, N * wide);
    m->dmix = TAKE(b, N * d);
    m->dgu = TAKE(b, N * 2 * I);
    m->dact = TAKE(b, N * I);
    m->dproj = TAKE(b, N * P);
    m->dconv = TAKE(b, N * C);
    m->dg = TAKE(b, N * HV);
    m->dbeta = TAKE(b, N * HV);
    m->do_ = TAKE(b, N * HVV);
    m->don = TAKE(b, N * HVV);
    m->dq = TAKE(b, N * HQ);
    m->dk = TAKE(b, N * HK);
    m->dA = TAKE(b, dA);
    m->la_ws = take(b, (int64_t)la_ws, 1);
    m->la_ws_bytes = la_ws;
}

/* Sizes the arena for (B,T), keeping it when it already fits. Nothing changes on failure. */
static dn_status ensure_arena(dn_model *m, int64_t B, int64_t T, int train) {
    if (m->arena && B == m->B && T == m->T && train == m->arena_train) return DN_OK;
    int64_t N;
    if (B < 1 || T < 1 || !DN_PROD(&N, B, T) || N > ((int64_t)1 << 40))
        return dn_fail(DN_ERR_SHAPE, "model: B=%lld, T=%lld out of range", (long long)B,
                       (long long)T);
    bump b = {NULL, 0, 0};
    lay_out(m, &b, B, T, train);
    if (b.overflow)
        return dn_fail(DN_ERR_SHAPE, "model: activations for B=%lld, T=%lld overflow", (long long)B,
                       (long long)T);
    /* the training forward's rotary table (positions 0..T-1) */
    dn_rope_table rope = {0};
    const int new_rope = has_kind(&m->cfg, 'A') && m->rope.T != T;
    if (new_rope) {
        dn_status st = dn_rope_table_init(&rope, 0, T, m->ad.rd, m->cfg.rope_theta);
        if (st != DN_OK) return st;
    }
    /* an arena large enough is laid out again in place; a larger one replaces it */
    void *arena = m->arena;
    if (b.used > m->arena_bytes) {
        arena = dn_alloc(b.used);
        if (!arena) {
            dn_rope_table_free(&rope);
            return dn_fail(DN_ERR_ALLOC, "model: cannot allocate %zu bytes of activations", b.used);
        }
        dn_free(m->arena);
        m->arena = arena, m->arena_bytes = b.used;
    }
    if (new_rope) {
        dn_rope_table_free(&m->rope);
        m->rope = rope;
    }
    m->B = B, m->T = T, m->arena_train = train;
    b = (bump){arena, 0, 0};
    lay_out(m, &b, B, T, train);
    return DN_OK;
}

/* ---- forward and backward ------------------------------------------------------------------- */

dn_status dn_model_linear(const dn_model *m, float *y, int64_t ldy, const float *x, int64_t ldx,
                          int64_t w, int64_t N, int64_t in, int64_t out, float beta) {
    if (m->w16)
        return dn_matmul_ex(DN_NO_TRANS, DN_TRANS, N, out, in, 1.0f, x, ldx, m->w16 + w,
                            m->w16_type, in, beta, y, ldy);
    return dn_linear_fwd(y, ldy, x, ldx, m->params + w, N, in, out, beta);
}

/* out = beta out + SwiGLU(x): gu = x W_gu^T [n,2I] (gate | up), act = silu(gate) up [n,I],
 * act W_down^T [n,d] added. */
static dn_status swiglu(const dn_model *m, float *out, float beta, float *gu, float *act,
                        const float *x, int64_t w_gu, int64_t w_down, int64_t n, int64_t d,
                        int64_t I) {
    dn_status st = dn_model_linear(m, gu, 2 * I, x, d, w_gu, n, d, 2 * I, 0.0f);
    if (st != DN_OK) return st;
    DN_PARALLEL_FOR(n * I * 3)
    for (int64_t r = 0; r < n; r++)
        for (int64_t j = 0; j < I; j++)
            act[r * I + j] = dn_siluf(gu[r * 2 * I + j]) * gu[r * 2 * I + I + j];
    return dn_model_linear(m, out, d, act, I, w_down, n, I, d, beta);
}

/* The mixture-of-experts MLP over l->c, added to h_out: router softmax, top k per token (the
 * first of equal probabilities), weights renormalised when norm_topk_prob; each expert runs
 * once over the rows routed to it (gathered), its outputs added in expert order; then the shared
 * expert scaled by sigmoid(c w_gate). Inference only (no saved activations). */
static dn_status moe_forward(dn_model *m, const dn_layer *l, float *h_out, int64_t N) {
    const dn_model_config *c = &m->cfg;
    const int64_t d = m->d, E = c->num_experts, k = c->num_experts_per_tok,
                  Im = c->moe_intermediate_size, Is = c->shared_expert_intermediate_size;
    dn_status st = dn_model_linear(m, m->moe_p, E, l->c, d, l->router, N, d, E, 0.0f);
    if (st != DN_OK) return st;
    DN_PARALLEL_FOR(N * E * 8)
    for (int64_t n = 0; n < N; n++) {
        float *p = m->moe_p + n * E, mx = p[0];
        for (int64_t e = 1; e < E; e++)
            mx = p[e] > mx ? p[e] : mx;
        double s = 0;
        for (int64_t e = 0; e < E; e++)
            s += (p[e] = expf(p[e] - mx));
        for (int64_t e = 0; e < E; e++)
            p[e] = (float)(p[e] / s);
        int32_t *idx = m->moe_idx + n * k;
        float *w = m->moe_w + n * k, sum = 0;
        for (int64_t j = 0; j < k; j++) { /* k is small: repeated scans */
            int64_t best = -1;
            for (int64_t e = 0; e < E; e++) {
                int taken = 0;
                for (int64_t q = 0; q < j; q++)
                    taken |= idx[q] == e;
                if (!taken && (best < 0 || p[e] > p[best])) best = e;
            }
            idx[j] = (int32_t)best, w[j] = p[best], sum += p[best];
        }
        if (c->norm_topk_prob)
            for (int64_t j = 0; j < k; j++)
                w[j] /= sum;
    }
    for (int64_t e = 0; e < E; e++) {
        int64_t cnt = 0;
        for (int64_t n = 0; n < N; n++)
            for (int64_t j = 0; j < k; j++)
                if (m->moe_idx[n * k + j] == e) m->moe_rows[cnt++] = n * k + j;
        if (!cnt) continue;
        DN_PARALLEL_FOR(cnt * d)
        for (int64_t r = 0; r < cnt; r++)
            memcpy(m->moe_x + r * d, l->c + m->moe_rows[r] / k * d, (size_t)d * sizeof(float));
        const int64_t We = l->experts + e * 3 * Im * d;
        if ((st = swiglu(m, m->moe_y, 0.0f, m->moe_gu, m->moe_act, m->moe_x, We, We + 2 * Im * d,
                         cnt, d, Im)) != DN_OK)
            return st;
        DN_PARALLEL_FOR(cnt * d) /* each token appears at most once per expert */
        for (int64_t r = 0; r < cnt; r++) {
            const int64_t n = m->moe_rows[r] / k;
            const float w = m->moe_w[m->moe_rows[r]];
            for (int64_t i = 0; i < d; i++)
                h_out[n * d + i] += w * m->moe_y[r * d + i];
        }
    }
    if (Is == 0) return DN_OK;
    if ((st = swiglu(m, m->moe_y, 0.0f, m->moe_gu, m->moe_act, l->c, l->shared_gu, l->shared_down,
                     N, d, Is)) != DN_OK ||
        (st = dn_model_linear(m, m->moe_sg, 1, l->c, d, l->shared_gate, N, d, 1, 0.0f)) != DN_OK)
        return st;
    DN_PARALLEL_FOR(N * d)
    for (int64_t n = 0; n < N; n++) {
        const float g = dn_sigmoidf(m->moe_sg[n]);
        for (int64_t i = 0; i < d; i++)
            h_out[n * d + i] += g * m->moe_y[n * d + i];
    }
    return DN_OK;
}

static dn_status block_forward(dn_model *m, dn_layer *l, float *h_out, int64_t B, int64_t T,
                               dn_layer_cache *cache, const dn_rope_table *rope) {
    const int64_t N = B * T, d = m->d, I = m->I;
    const float *W = m->params;
    const double eps = m->cfg.rms_norm_eps;
    const double t0 = m->prof_mixer ? clock_s() : 0.0;
    dn_rmsnorm_fwd(l->a, l->rstd1, l->h_in, W + l->norm1, 1.0f, N, d, eps);
    dn_status st;
    if (dn_is_la_kind(l->kind))
        st = dn_la_layer_forward(m, l, &l->lin_acts, l->h_mid, l->a, B, T, cache);
    else if (l->kind == 'M')
        st = dn_mamba2_layer_forward(m, l, &l->mamba_acts, l->h_mid, l->a, B, T, cache);
    else if (l->kind == 'R')
        st = dn_rwkv4_layer_forward(m, l, &l->rwkv_acts, l->h_mid, l->a, B, T, cache);
    else if (l->kind == 'S')
        st = dn_mamba_layer_forward(m, l, &l->mamba1_acts, l->h_mid, l->a, B, T, cache);
    else
        st = dn_attn_layer_forward(m, l, &l->attn_acts, l->h_mid, l->a, B, T, cache, rope);
    if (st != DN_OK) return st;
    DN_PARALLEL_FOR(N * d)
    for (int64_t i = 0; i < N * d; i++)
        l->h_mid[i] += l->h_in[i];
    const double t1 = m->prof_mixer ? clock_s() : 0.0;
    dn_rmsnorm_fwd(l->c, l->rstd2, l->h_mid, W + l->norm2, 1.0f, N, d, eps);
    memcpy(h_out, l->h_mid, (size_t)(N * d) * sizeof(float));
    st = l->moe ? moe_forward(m, l, h_out, N)
                : swiglu(m, h_out, 1.0f, l->gu, l->act, l->c, l->gate_up, l->down, N, d, I);
    if (m->prof_mixer) {
        const int64_t i = l - m->layers;
        m->prof_mixer[i] += t1 - t0, m->prof_mlp[i] += clock_s() - t1;
    }
    return st;
}

/* dh: in, the gradient of the block's output; out, the gradient of its input. */
static dn_status block_backward(dn_model *m, dn_layer *l, int64_t B, int64_t T) {
    const int64_t N = B * T, d = m->d, I = m->I;
    const float *W = m->params;
    float *G = m->grads, *dh = m->dh;
    dn_status st =
        dn_linear_bwd(m->dact, I, G + l->down, dh, d, l->act, I, W + l->down, N, I, d, 0.0f);
    if (st != DN_OK) return st;
    DN_PARALLEL_FOR(N * I * 4)
    for (int64_t n = 0; n < N; n++)
        for (int64_t j = 0; j < I; j++) {
            const float gt = l->gu[n * 2 * I + j], up = l->gu[n * 2 * I + I + j];
            const float sg = dn_sigmoidf(gt), da = m->dact[n * I + j];
            m->dgu[n * 2 * I + j] = da * up * sg * (1.0f + gt * (1.0f - sg));
            m->dgu[n * 2 * I + I + j] = da * gt * sg;
        }
    if ((st = dn_linear_bwd(m->dmix, d, G + l->gate_up, m->dgu, 2 * I, l->c, d, W + l->gate_up, N,
                            d, 2 * I, 0.0f)) != DN_OK ||
        (st = dn_rmsnorm_bwd(m->dx, G + l->norm2, m->dmix, l->h_mid, l->rstd2, W + l->norm2, 1.0f,
                             N, d)) != DN_OK)
        return st;
    DN_PARALLEL_FOR(N * d)
    for (int64_t i = 0; i < N * d; i++)
        dh[i] += m->dx[i];
    if (dn_is_la_kind(l->kind))
        st = dn_la_layer_backward(m, l, &l->lin_acts, m->dmix, dh, l->a, B, T);
    else if (l->kind == 'M')
        st = dn_mamba2_layer_backward(m, l, &l->mamba_acts, m->dmix, dh, l->a, B, T);
    else if (l->kind == 'R')
        st = dn_rwkv4_layer_backward(m, l, &l->rwkv_acts, m->dmix, dh, l->a, B, T);
    else if (l->kind == 'S')
        st = dn_mamba_layer_backward(m, l, &l->mamba1_acts, m->dmix, dh, l->a, B, T);
    else
        st = dn_attn_layer_backward(m, l, &l->attn_acts, m->dmix, dh, l->a, B, T);
    if (st != DN_OK) return st;
    if ((st = dn_rmsnorm_bwd(m->dx, G + l->norm1, m->dmix, l->h_in, l->rstd1, W + l->norm1, 1.0f, N,
                             d)) != DN_OK)
        return st;
    DN_PARALLEL_FOR(N * d)
    for (int64_t i = 0; i < N * d; i++)
        dh[i] += m->dx[i];
    return DN_OK;
}

static dn_status check_tokens(const dn_model *m, const int32_t *tokens, const int32_t *targets,
                              int64_t N) {
    for (int64_t n = 0; n < N; n++) {
        if (tokens[n] < 0 || tokens[n] >= m->Vocab)
            return dn_fail(DN_ERR_ARG, "model: token %lld = %d is outside [0, %lld)", (long long)n,
                           tokens[n], (long long)m->Vocab);
        if (targets && (targets[n] < -1 || targets[n] >= m->Vocab))
            return dn_fail(DN_ERR_ARG, "model: target %lld = %d is outside [-1, %lld)",
                           (long long)n, targets[n], (long long)m->Vocab);
    }
    return DN_OK;
}

/* Embedding and every block: m->h_out and the final norm m->hf. With a state: inference from
 * position state->len (the caller advances it). */
static dn_status forward(dn_model *m, const int32_t *tokens, int64_t B, int64_t T,
                         dn_model_state *state, const dn_rope_table *rope) {
    const int64_t N = B * T, d = m->d;
    const float *E = m->params + m->embed;
    float *h = m->L > 0 ? m->layers[0].h_in : m->h_out;
    double t0 = m->prof_mixer ? clock_s() : 0.0;
    if (m->w16) { /* 16-bit weights: rows widened */
        const uint16_t *E16 = m->w16 + m->embed;
        DN_PARALLEL_FOR(N * d)
        for (int64_t n = 0; n < N; n++)
            for (int64_t i = 0; i < d; i++) {
                const uint16_t x = E16[(int64_t)tokens[n] * d + i];
                h[n * d + i] = m->w16_type == DN_BF16 ? dn_bf16_to_f32(x) : dn_f16_to_f32(x);
            }
    } else {
        DN_PARALLEL_FOR(N * d)
        for (int64_t n = 0; n < N; n++)
            memcpy(h + n * d, E + (int64_t)tokens[n] * d, (size_t)d * sizeof(float));
    }
    if (m->prof_mixer) m->prof_other += clock_s() - t0;
    for (int64_t i = 0; i < m->L; i++) {
        float *next = i + 1 < m->L ? m->layers[i + 1].h_in : m->h_out;
        dn_status st = block_forward(m, &m->layers[i], next, B, T, state ? &state->layers[i] : NULL,
                                     rope ? rope : &m->rope);
        if (st != DN_OK) return st;
    }
    t0 = m->prof_mixer ? clock_s() : 0.0;
    dn_rmsnorm_fwd(m->hf, m->rstdf, m->h_out, m->params + m->final_norm, 1.0f, N, d,
                   m->cfg.rms_norm_eps);
    if (m->prof_mixer) m->prof_other += clock_s() - t0;
    return DN_OK;
}

dn_status dn_model_forward_backward(dn_model *m, const int32_t *tokens, const int32_t *targets,
                                    int64_t B, int64_t T, float grad_scale, double *loss_sum,
                                    int64_t *n_targets) {
    if (!m || !tokens || !targets)
        return dn_fail(DN_ERR_NULL, "model_forward_backward: NULL model, tokens or targets");
    if (!isfinite(grad_scale))
        return dn_fail(DN_ERR_ARG, "model_forward_backward: grad_scale is not finite");
    if (grad_scale != 0.0f && m->w16)
        return dn_fail(DN_ERR_UNSUPPORTED,
                       "model_forward_backward: the weights are kept in 16 bits (a loaded "
                       "checkpoint): forward and generation only");
    if (grad_scale != 0.0f && strchr(m->cfg.mlp_pattern, 'E'))
        return dn_fail(DN_ERR_UNSUPPORTED,
                       "model_forward_backward: training mixture-of-experts layers is not "
                       "supported (forward and generation only)");
    dn_status st = ensure_arena(m, B, T, 1);
    if (st != DN_OK) return st;
    const int64_t N = B * T, d = m->d, V = m->Vocab;
    if ((st = check_tokens(m, tokens, targets, N)) != DN_OK) return st;
    if ((st = forward(m, tokens, B, T, NULL, NULL)) != DN_OK) return st;

    /* the loss over the counted rows only: gather them, one product for their logits */
    int64_t nc = 0;
    for (int64_t n = 0; n < N; n++)
        if (targets[n] >= 0) m->rows[nc++] = n;
    DN_PARALLEL_FOR(nc * d)
    for (int64_t r = 0; r < nc; r++)
        memcpy(m->rows_h + r * d, m->hf + m->rows[r] * d, (size_t)d * sizeof(float));
    const float *Wh = m->params + m->head;
    if ((st = dn_linear_fwd(m->logits, V, m->rows_h, d, Wh, nc, d, V, 0.0f)) != DN_OK) return st;
    /* per row: loss_r = logsumexp(z) - z[target]; dz = grad_scale (softmax(z) - onehot) */
    DN_PARALLEL_FOR(nc * V * 3)
    for (int64_t r = 0; r < nc; r++) {
        float *z = m->logits + r * V;
        const int32_t tgt = targets[m->rows[r]];
        const float zt = z[tgt];
        float mx = z[0];
        for (int64_t j = 1; j < V; j++)
            mx = z[j] > mx ? z[j] : mx;
        /* one expf per logit (exp(z - max) <= 1, its sum in double), kept for the gradient */
        double s = 0;
        for (int64_t j = 0; j < V; j++) {
            const float e = expf(z[j] - mx);
            s += e;
            z[j] = e;
        }
        m->row_loss[r] = (double)mx + log(s) - (double)zt;
        if (grad_scale != 0.0f) {
            const float c = (float)((double)grad_scale / s);
            for (int64_t j = 0; j < V; j++)
                z[j] *= c;
            z[tgt] -= grad_scale;
        }
    }
    double loss = 0;
    for (int64_t r = 0; r < nc; r++) /* in order: the same sum at every thread count */
        loss += m->row_loss[r];
    if (loss_sum) *loss_sum = loss;
    if (n_targets) *n_targets = nc;
    if (grad_scale == 0.0f) return DN_OK;

    /* the head: dW_head += dz^T rows_h; d rows_h = dz W_head, scattered into dhf (m->dx) */
    float *G = m->grads, *dhf = m->dx;
    if ((st = dn_linear_bwd(m->dmix, d, G + m->head, m->logits, V, m->rows_h, d, Wh, nc, d, V,
                            0.0f)) != DN_OK)
        return st;
    memset(dhf, 0, (size_t)(N * d) * sizeof(float));
    DN_PARALLEL_FOR(nc * d)
    for (int64_t r = 0; r < nc; r++)
        memcpy(dhf + m->rows[r] * d, m->dmix + r * d, (size_t)d * sizeof(float));
    if ((st = dn_rmsnorm_bwd(m->dh, G + m->final_norm, dhf, m->h_out, m->rstdf,
                             m->params + m->final_norm, 1.0f, N, d)) != DN_OK)
        return st;
    for (int64_t i = m->L - 1; i >= 0; i--)
        if ((st = block_backward(m, &m->layers[i], B, T)) != DN_OK) return st;
    /* the embedding: rows added in token order, columns split across threads */
    float *dE = G + m->embed;
    const int64_t cb = 64, nblk = (d + cb - 1) / cb;
    DN_PARALLEL_FOR(N * d)
    for (int64_t blk = 0; blk < nblk; blk++) {
        const int64_t j0 = blk * cb, j1 = j0 + cb < d ? j0 + cb : d;
        for (int64_t n = 0; n < N; n++)
            for (int64_t j = j0; j < j1; j++)
                dE[(int64_t)tokens[n] * d + j] += m->dh[n * d + j];
    }
    return DN_OK;
}

dn_status dn_model_logits(dn_model *m, float *logits, const int32_t *tokens, int64_t B, int64_t T) {
    if (!m || !logits || !tokens)
        return dn_fail(DN_ERR_NULL, "model_logits: NULL model, logits or tokens");
    dn_status st = ensure_arena(m, B, T, 0);
    if (st != DN_OK) return st;
    if ((st = check_tokens(m, tokens, NULL, B * T)) != DN_OK) return st;
    if ((st = forward(m, tokens, B, T, NULL, NULL)) != DN_OK) return st;
    return dn_model_linear(m, logits, m->Vocab, m->hf, m->d, m->head, B * T, m->d, m->Vocab, 0.0f);
}

/* ---- generation ------------------------------------------------------------------------------ */

/* Floats of one layer's fixed-size state for B sequences: conv inputs and recurrent state. The
 * linear family and Mamba-2 of one config hold the same sizes (Mamba-2's H P + 2 G N channels
 * and H N P state are the linear family's 2 H K + HV V and HV K V). */
static void fixed_sizes(const dn_model *m, char kind, int64_t B, int64_t *conv, int64_t *S) {
    if (kind == 'A') { /* the optional convolution's inputs (the KV cache is apart) */
        *conv = m->ad.W ? B * m->ad.C * (m->ad.W - 1) : 0, *S = 0;
    } else if (kind == 'R') {
        *conv = B * m->d, *S = B * 3 * m->d;
    } else if (kind == 'S') {
        dn_mamba_layer_dims g;
        dn_mamba_layer_dims_init(&g, &m->cfg);
        *conv = B * g.E * (g.W - 1), *S = B * g.E * g.N;
    } else {
        dn_la_layer_dims g;
        dn_la_layer_dims_init(&g, &m->cfg, 'G');
        *conv = B * g.C * (g.W - 1), *S = B * g.HV * g.K * g.V;
    }
}

/* Zero states; RWKV-4's running maximum starts at -1e38 (the op's empty state). */
static void clear_fixed(dn_model_state *s) {
    memset(s->fixed, 0, s->fixed_bytes);
    for (int64_t i = 0; i < s->m->L; i++)
        if (s->m->layers[i].kind == 'R')
            for (int64_t b = 0; b < s->B; b++)
                for (int64_t j = 0; j < s->m->d; j++)
                    s->layers[i].S[(b * 3 + 2) * s->m->d + j] = -1e38f;
}

dn_status dn_model_state_create(dn_model_state **out, const dn_model *m, int64_t B,
                                int64_t max_len) {
    return dn_model_state_create_ex(out, m, B, max_len, DN_F32);
}

dn_status dn_model_state_create_ex(dn_model_state **out, const dn_model *m, int64_t B,
                                   int64_t max_len, dn_dtype kv_dtype) {
    if (!out || !m) return dn_fail(DN_ERR_NULL, "model_state_create: NULL argument");
    if ((unsigned)kv_dtype >= DN_DTYPE_COUNT)
        return dn_fail(DN_ERR_ARG, "model_state_create: unknown KV cache dtype %d", (int)kv_dtype);
    if (B < 1 || B > ((int64_t)1 << 24) || max_len < 1 || max_len > ((int64_t)1 << 40))
        return dn_fail(DN_ERR_SHAPE, "model_state_create: B=%lld, max_len=%lld out of range",
                       (long long)B, (long long)max_len);
    int64_t total = 0; /* floats of every layer's fixed states (each well below 2^40) */
    for (int64_t i = 0; i < m->L; i++) {
        int64_t nc, ns;
        fixed_sizes(m, m->layers[i].kind, B, &nc, &ns);
        total += nc + ns;
    }
    if (total > ((int64_t)1 << 40))
        return dn_fail(DN_ERR_SHAPE, "model_state_create: state size overflows");
    dn_model_state *s = dn_calloc(sizeof *s);
    if (!s) return dn_fail(DN_ERR_ALLOC, "model_state_create: cannot allocate");
    s->m = m, s->B = B, s->max_len = max_len;
    s->layers = dn_calloc((size_t)m->L * sizeof *s->layers);
    s->fixed = dn_calloc(total ? (size_t)total * sizeof(float) : 1);
    s->fixed_bytes = (size_t)total * sizeof(float);
    dn_status st = s->layers && s->fixed ? DN_OK : DN_ERR_ALLOC;
    float *next = s->fixed;
    for (int64_t i = 0; i < m->L && st == DN_OK; i++) {
        dn_layer_cache *c = &s->layers[i];
        int64_t nc, ns;
        fixed_sizes(m, m->layers[i].kind, B, &nc, &ns);
        c->conv = nc ? next : NULL, c->S = ns ? next + nc : NULL;
        next += nc + ns;
        if (m->layers[i].kind == 'A') {
            const int64_t cap = max_len < 256 ? max_len : 256;
            st = dn_kv_cache_create(&c->kv, B, m->ad.HKV, m->ad.D, cap, kv_dtype, DN_KV_GROW);
        }
    }
    if (st != DN_OK) {
        dn_model_state_free(s);
        return st == DN_ERR_ALLOC ? dn_fail(DN_ERR_ALLOC, "model_state_create: cannot allocate")
                                  : st;
    }
    clear_fixed(s);
    *out = s;
    return DN_OK;
}

void dn_model_state_free(dn_model_state *s) {
    if (!s) return;
    if (s->layers)
        for (int64_t i = 0; i < s->m->L; i++)
            dn_kv_cache_free(s->layers[i].kv);
    dn_free(s->layers);
    dn_free(s->fixed);
    dn_free(s);
}

dn_status dn_model_state_reset(dn_model_state *s) {
    if (!s) return dn_fail(DN_ERR_NULL, "model_state_reset: state is NULL");
    clear_fixed(s);
    for (int64_t i = 0; i < s->m->L; i++)
        if (s->layers[i].kv) dn_kv_cache_reset(s->layers[i].kv);
    s->len = 0, s->broken = 0;
    return DN_OK;
}

int64_t dn_model_state_len(const dn_model_state *s) { return s ? s->len : 0; }

dn_status dn_model_state_bytes(const dn_model_state *s, size_t *fixed, size_t *kv) {
    if (!s) return dn_fail(DN_ERR_NULL, "model_state_bytes: state is NULL");
    size_t k = 0;
    for (int64_t i = 0; i < s->m->L; i++)
        if (s->layers[i].kv) k += dn_kv_cache_used_bytes(s->layers[i].kv);
    if (fixed) *fixed = s->fixed_bytes;
    if (kv) *kv = k;
    return DN_OK;
}

dn_status dn_model_step(dn_model *m, dn_model_state *s, float *logits, const int32_t *tokens,
                        int64_t T, int all_positions) {
    if (!m || !s || !logits || !tokens) return dn_fail(DN_ERR_NULL, "model_step: NULL argument");
    if (s->m != m) return dn_fail(DN_ERR_ARG, "model_step: the state was made for another model");
    if (s->broken)
        return dn_fail(DN_ERR_ARG, "model_step: an earlier step failed; reset the state");
    const int64_t B = s->B;
    if (T < 1 || T > s->max_len - s->len)
        return dn_fail(DN_ERR_SHAPE, "model_step: %lld more tokens after %lld pass max_len %lld",
                       (long long)T, (long long)s->len, (long long)s->max_len);
    dn_status st = ensure_arena(m, B, T, 0);
    if (st == DN_OK) st = check_tokens(m, tokens, NULL, B * T);
    if (st != DN_OK) return st;
    dn_rope_table rope = {0};
    if (has_kind(&m->cfg, 'A') &&
        (st = dn_rope_table_init(&rope, s->len, T, m->ad.rd, m->cfg.rope_theta)) != DN_OK)
        return st;
    /* from here on the states change */
    st = forward(m, tokens, B, T, s, &rope);
    dn_rope_table_free(&rope);
    if (st != DN_OK) {
        s->broken = 1;
        return st;
    }
    s->len += T;
    const int64_t d = m->d, V = m->Vocab;
    const double t0 = m->prof_mixer ? clock_s() : 0.0;
    if (all_positions)
        st = dn_model_linear(m, logits, V, m->hf, d, m->head, B * T, d, V, 0.0f);
    else /* the last position of each sequence: rows T-1, 2T-1, ... (row stride T d) */
        st = dn_model_linear(m, logits, V, m->hf + (T - 1) * d, T * d, m->head, B, d, V, 0.0f);
    if (m->prof_mixer) m->prof_other += clock_s() - t0;
    return st;
}

dn_status dn_model_set_profiling(dn_model *m, int on) {
    if (!m) return dn_fail(DN_ERR_NULL, "model_set_profiling: model is NULL");
    dn_free(m->prof_mixer);
    m->prof_mixer = m->prof_mlp = NULL, m->prof_other = 0.0;
    if (!on) return DN_OK;
    m->prof_mixer = dn_calloc((size_t)(2 * m->L + 1) * sizeof(double));
    if (!m->prof_mixer) return dn_fail(DN_ERR_ALLOC, "model_set_profiling: cannot allocate");
    m->prof_mlp = m->prof_mixer + m->L;
    return DN_OK;
}

dn_status dn_model_profile(const dn_model *m, double *mixer_s, double *mlp_s, double *other_s) {
    if (!m) return dn_fail(DN_ERR_NULL, "model_profile: model is NULL");
    if (!m->prof_mixer) return dn_fail(DN_ERR_ARG, "model_profile: profiling is off");
    if (mixer_s) memcpy(mixer_s, m->prof_mixer, (size_t)m->L * sizeof(double));
    if (mlp_s) memcpy(mlp_s, m->prof_mlp, (size_t)m->L * sizeof(double));
    if (other_s) *other_s = m->prof_other;
    return DN_OK;
}
