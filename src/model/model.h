/*
 * model.h - the model layer's internal structures: parameter offsets and saved activations of
 * each block and mixer (not installed).
 *
 * Shapes: N = B*T token rows, d = hidden_size, I = intermediate_size. Every activation is a
 * contiguous row-major [N, width] matrix in one arena sized for the largest (B,T) seen so far.
 * Parameter "pointers" are offsets into the model's parameter buffer, so the same offsets index
 * the gradient buffer.
 */
#ifndef DN_MODEL_MODEL_H
#define DN_MODEL_MODEL_H

#include "nn.h"

/* Linear-attention family mixer ('G' Gated DeltaNet, 'D' DeltaNet, 'L' linear attention): the
 * op, dimensions and the fused input projection's column layout [q | k | v | z | b | a] (the
 * first C = 2 H K + HV V columns go through the convolution; b only with the delta rule, a only
 * with the gate). */
typedef struct {
    dn_op op;
    int beta, gate;         /* whether the op takes beta (delta rule), g (gate) */
    int64_t H, HV, K, V, W; /* key heads, value heads, head dims, conv width */
    int64_t C, P;           /* conv channels, projection width */
    int64_t z0, b0, a0;     /* first column of z, b, a in the projection */
} dn_la_layer_dims;
typedef struct {
    int64_t proj, conv, A_log, dt_bias, norm, out; /* proj [P,d] = in_proj_qkv, _z, _b, _a */
} dn_la_layer_w;
typedef struct {
    float *proj; /* [N,P] projection output */
    float *xc;   /* [N,C] SiLU(conv(q,k,v)) */
    float *g;    /* [N,HV] log decay */
    float *beta; /* [N,HV] */
    float *o;    /* [N,HV*V] delta-rule output */
    float *rstd; /* [N*HV] output norm */
    float *on;   /* [N,HV*V] gated, normed output (input of out_proj) */
    void *saved; /* the op's training buffer */
    size_t saved_bytes;
} dn_la_layer_acts;

/* Mamba-2 mixer ('M'): projection layout [x | B | C | z | dt] (the first C columns go through
 * the convolution). */
typedef struct {
    int64_t H, P, N, G, W; /* heads, head dim, state size, groups, conv width */
    int64_t C, Pw;         /* conv channels, projection width */
    int64_t z0, dt0;       /* first column of z and dt */
} dn_mamba2_layer_dims;
typedef struct {
    int64_t in_proj, conv, conv_bias, dt_bias, A_log, D, norm, out;
} dn_mamba2_layer_w;
typedef struct {
    float *proj; /* [N,Pw] */
    float *xc;   /* [N,C] SiLU(conv(x B C)) */
    float *A;    /* [H] -exp(A_log) */
    float *y;    /* [N,H*P] SSD output (with D x) */
    float *u;    /* [N,H*P] y * silu(z) */
    float *rstd; /* [N*G] */
    float *on;   /* [N,H*P] normed (input of out_proj) */
} dn_mamba2_layer_acts;

/* Mamba-1 mixer ('S') */
typedef struct {
    int64_t E, N, R, W; /* channels, state size, dt rank, conv width */
} dn_mamba_layer_dims;
typedef struct {
    int64_t in_proj, conv, conv_bias, x_proj, dt_proj, dt_bias, A_log, D, out;
} dn_mamba_layer_w;
typedef struct {
    float *proj; /* [N,2E] x | z */
    float *xc;   /* [N,E] SiLU(conv(x)) */
    float *xdbl; /* [N,R+2N] dt_r | B | C */
    float *dt;   /* [N,E] before softplus and bias */
    float *A;    /* [E,N] -exp(A_log) */
    float *y;    /* [N,E] gated scan output */
} dn_mamba_layer_acts;

/* RWKV-4 time mixing ('R'), C = d channels */
typedef struct {
    int64_t time_decay, time_first, mix_k, mix_v, mix_r, key, value, receptance, output;
} dn_rwkv4_layer_w;
typedef struct {
    float *xk, *xv, *xr; /* [N,d] token-shifted mixes */
    float *k, *v, *r;    /* [N,d] projections */
    float *wkv, *rw;     /* [N,d] WKV output, sigmoid(r) * wkv (input of output) */
    float *zeros;        /* [d] the input before a sequence's first token */
} dn_rwkv4_layer_acts;

/* Softmax attention mixer ('A'): projection layout [q (and gate, per head [q_h | gate_h]) | k | v]
 */
typedef struct {
    int64_t H, HKV, D, rd; /* heads, key/value heads, head dim, rotary dims */
    int64_t Pq, P;         /* q(+gate) width, projection width */
    int64_t W, C;          /* the optional convolution: width (0: none), channels (q, k, v) */
    int gate, qk_norm;
} dn_attn_layer_dims;
typedef struct {
    int64_t proj, conv, q_norm, k_norm, out; /* proj [P,d] = q_proj, k_proj, v_proj */
} dn_attn_layer_w;
typedef struct {
    float *proj;         /* [N,P] */
    float *qraw, *kraw;  /* [N,H*D], [N,HKV*D] contiguous copies of the projections */
    float *qc, *kc, *vc; /* after the convolution (qc, kc == qraw, kraw and vc NULL without) */
    float *qn, *kn;      /* after q/k norm and RoPE (the op's q and k) */
    float *rq, *rk;      /* [N*H], [N*HKV] norm rstd */
    float *o, *lse;      /* [N,H*D], [B,H,T] */
    float *og;           /* [N,H*D] gated output (input of o_proj); == o without a gate */
} dn_attn_layer_acts;

/* The inference state of one block: what generation carries from token to token. */
typedef struct {
    float *conv;     /* linear family, Mamba-2 and attention with a convolution: [B,C,W-1]
                        the convolution's last inputs; RWKV-4: [B,d] the last input */
    float *S;        /* linear family: [B,HV,K,V] the state; Mamba-2: [B,H,N,P]; RWKV-4:
                        [B,3,d] (num, den, running max) */
    dn_kv_cache *kv; /* attention: keys and values so far */
} dn_layer_cache;

typedef struct {
    char kind;
    dn_la_layer_dims ld; /* kind G, D or L */
    dn_mamba2_layer_dims md;
    dn_mamba_layer_dims sd;              /* kind M */
    int64_t norm1, norm2, gate_up, down; /* gate_up [2I,d] = gate_proj, up_proj; down [d,I] */
    /* a mixture-of-experts MLP (cfg.mlp_pattern 'E'): router [E,d]; expert e's gate_proj,
     * up_proj [Im,d] and down_proj [d,Im] back to back from experts + 3 e Im d; the shared
     * expert's gate|up [2Is,d], down [d,Is] and its gate [1,d] */
    int moe;
    int64_t router, experts, shared_gu, shared_down, shared_gate;
    dn_la_layer_w lin;
    dn_attn_layer_w attn;
    dn_mamba2_layer_w mamba;
    dn_rwkv4_layer_w rwkv;
    dn_mamba_layer_w mamba1;
    /* saved activations */
    float *h_in;      /* [N,d] residual stream entering the block */
    float *a, *rstd1; /* [N,d] input norm output, [N] */
    float *h_mid;     /* [N,d] after the mixer's residual add */
    float *c, *rstd2; /* [N,d] post-attention norm output, [N] */
    float *gu, *act;  /* [N,2I] gate|up pre-activations, [N,I] silu(gate)*up */
    dn_la_layer_acts lin_acts;
    dn_attn_layer_acts attn_acts;
    dn_mamba2_layer_acts mamba_acts;
    dn_rwkv4_layer_acts rwkv_acts;
    dn_mamba_layer_acts mamba1_acts;
} dn_layer;

struct dn_model_state {
    const dn_model *m;
    int64_t B, len, max_len;
    int broken; /* a step failed half way: reset before use */
    dn_layer_cache *layers;
    float *fixed; /* every layer's conv and delta-rule states, one block */
    size_t fixed_bytes;
};

struct dn_model {
    dn_model_config cfg;
    int64_t L, d, I, Vocab;
    dn_attn_layer_dims ad;
    float *params, *grads;
    int64_t n_params;
    dn_param_info *tensors;
    int64_t n_tensors;
    char *names;                     /* storage of the tensor names */
    int64_t embed, final_norm, head; /* head == embed when tied */
    dn_layer *layers;

    /* activations, for the (B,T) the arena was sized for */
    int64_t B, T;
    void *arena;
    size_t arena_bytes;
    float *h_out, *hf, *rstdf; /* [N,d] last residual stream, final norm output, [N] */
    float *rows_h, *logits;    /* [N,d] gathered rows of counted targets, [N,Vocab] */
    int64_t *rows;             /* [N] which rows count */
    double *row_loss;          /* [N] loss of each counted row */
    /* backward scratch, shared by every layer */
    float *dh, *dx, *dmix, *dgu, *dact, *dproj, *dconv, *dg, *dbeta, *do_, *don, *dq, *dk;
    float *dA; /* [E,N] Mamba-1's dA before the chain rule to A_log */
    /* the linear family's training forward and backward scratch, shared by the layers (sized
     * at the thread count of the arena's layout; a call at more threads allocates its own) */
    void *la_ws;
    size_t la_ws_bytes;
    int arena_train; /* the arena's layout: 1 training (activations kept per layer), 0 inference */
    /* 16-bit weights (a checkpoint loaded in its stored type): every 2-D tensor lives here, at
     * its parameter offset, in w16_type (DN_BF16 / DN_F16), and its fp32 place in params is never
     * touched (so never resident); the 1-D and 3-D tensors stay in params. NULL: all fp32. */
    uint16_t *w16;
    dn_dtype w16_type;
    /* mixture-of-experts scratch: router logits then probabilities [N,E], the chosen experts
     * and their weights [N,k], one expert's rows [N] and inputs [N,d], gate|up [N,2Imax],
     * activations [N,Imax], outputs [N,d], the shared expert's gate [N] */
    float *moe_p, *moe_w, *moe_x, *moe_gu, *moe_act, *moe_y, *moe_sg;
    int32_t *moe_idx;
    int64_t *moe_rows;
    dn_rope_table rope;
    /* dn_model_set_profiling: wall seconds per layer, mixer part (norm, mixer, residual) and MLP
     * part (norm, MLP or experts), and of the rest (embedding, final norm, LM head); NULL: off */
    double *prof_mixer, *prof_mlp, prof_other;
};

/* src/model/model.c: y [N,out] = x [N,in] W^T (+ beta y) for the weight at parameter offset w,
 * from the 16-bit copy when the model has one. */
dn_status dn_model_linear(const dn_model *m, float *y, int64_t ldy, const float *x, int64_t ldx,
                          int64_t w, int64_t N, int64_t in, int64_t out, float beta);
/* dn_model_create without the random init when do_init is 0 (a loader fills every tensor). */
dn_status dn_model_new(dn_model **out, const dn_model_config *c, uint64_t seed, int do_init);

/* src/model/la.c: the Gated DeltaNet mixer, out [N,d] from a [N,d]. cache NULL: training (the
 * op's training buffer is filled); else inference from and into the cache's states. */
void dn_la_layer_dims_init(dn_la_layer_dims *g, const dn_model_config *c, char kind);
static inline int dn_is_la_kind(char k) { return k == 'G' || k == 'D' || k == 'L'; }
dn_status dn_la_layer_forward(const dn_model *m, const dn_layer *l, const dn_la_layer_acts *s,
                              float *out, const float *a, int64_t B, int64_t T,
                              dn_layer_cache *cache);
/* da [N,d] written from dout [N,d]; parameter gradients added to m->grads */
dn_status dn_la_layer_backward(dn_model *m, const dn_layer *l, const dn_la_layer_acts *s, float *da,
                               const float *dout, const float *a, int64_t B, int64_t T);

/* src/model/attn.c: the softmax attention mixer. cache NULL: training over positions 0..T-1;
 * else the new keys and values are appended to the cache and the queries attend over it, at
 * the positions rope was made for. */
void dn_attn_layer_dims_init(dn_attn_layer_dims *d, const dn_model_config *c);
dn_status dn_attn_layer_forward(const dn_model *m, const dn_layer *l, const dn_attn_layer_acts *s,
                                float *out, const float *a, int64_t B, int64_t T,
                                dn_layer_cache *cache, const dn_rope_table *rope);
dn_status dn_attn_layer_backward(dn_model *m, const dn_layer *l, const dn_attn_layer_acts *s,
                                 float *da, const float *dout, const float *a, int64_t B,
                                 int64_t T);

/* src/model/mamba2.c: the Mamba-2 mixer (cache as for the linear family) */
void dn_mamba2_layer_dims_init(dn_mamba2_layer_dims *g, const dn_model_config *c);
dn_status dn_mamba2_layer_forward(const dn_model *m, const dn_layer *l,
                                  const dn_mamba2_layer_acts *s, float *out, const float *a,
                                  int64_t B, int64_t T, dn_layer_cache *cache);
dn_status dn_mamba2_layer_backward(dn_model *m, const dn_layer *l, const dn_mamba2_layer_acts *s,
                                   float *da, const float *dout, const float *a, int64_t B,
                                   int64_t T);

/* src/model/mamba.c: Mamba-1 */
void dn_mamba_layer_dims_init(dn_mamba_layer_dims *g, const dn_model_config *c);
dn_status dn_mamba_layer_forward(const dn_model *m, const dn_layer *l, const dn_mamba_layer_acts *s,
                                 float *out, const float *a, int64_t B, int64_t T,
                                 dn_layer_cache *cache);
dn_status dn_mamba_layer_backward(dn_model *m, const dn_layer *l, const dn_mamba_layer_acts *s,
                                  float *da, const float *dout, const float *a, int64_t B,
                                  int64_t T);

/* src/model/rwkv4.c: RWKV-4 time mixing */
dn_status dn_rwkv4_layer_forward(const dn_model *m, const dn_layer *l, const dn_rwkv4_layer_acts *s,
                                 float *out, const float *a, int64_t B, int64_t T,
                                 dn_layer_cache *cache);
dn_status dn_rwkv4_layer_backward(dn_model *m, const dn_layer *l, const dn_rwkv4_layer_acts *s,
                                  float *da, const float *dout, const float *a, int64_t B,
                                  int64_t T);

#endif /* DN_MODEL_MODEL_H */
