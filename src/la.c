/*
 * la.c - public entry points of the linear-attention family: defaults, argument checks,
 * workspace queries and the dispatch to the reference or the fast CPU kernels.
 *
 * Every check happens here, before anything is written, so that a rejected call leaves all
 * outputs untouched.
 */
#include "half.h"
#include "internal.h"

#include <math.h>
#include <string.h>

dn_la_params dn_la_params_default(dn_op op, int64_t B, int64_t T, int64_t H, int64_t HV, int64_t K,
                                  int64_t V) {
    dn_la_params p;
    memset(&p, 0, sizeof p);
    p.op = op;
    p.B = B;
    p.T = T;
    p.H = H;
    p.HV = HV;
    p.K = K;
    p.V = V;
    p.q_s = p.k_s = dn_contiguous(T, H, K);
    p.v_s = p.o_s = dn_contiguous(T, HV, V);
    p.g_s = p.beta_s = dn_contiguous(T, HV, 1);
    p.scale = K > 0 ? (float)(1.0 / sqrt((double)K)) : 1.0f;
    p.chunk_size = 64;
    p.impl = DN_IMPL_AUTO;
    p.dtype = DN_F32;
    p.device = DN_DEVICE_CPU;
    p.state_dtype = DN_F32;
    return p;
}

/* Everything about a call except its tensors' memory: op, dims, options, cu_seqlens. */
static dn_status check_shape(const dn_la_params *p, const char *name) {
    if (p->B < 1 || p->T < 0 || p->H < 1 || p->HV < 1 || p->K < 1 || p->V < 1)
        return dn_fail(DN_ERR_SHAPE,
                       "%s: dims must be positive (B=%lld T=%lld H=%lld HV=%lld K=%lld V=%lld)",
                       name, (long long)p->B, (long long)p->T, (long long)p->H, (long long)p->HV,
                       (long long)p->K, (long long)p->V);
    if (p->HV % p->H != 0)
        return dn_fail(DN_ERR_SHAPE, "%s: HV (%lld) is not a multiple of H (%lld)", name,
                       (long long)p->HV, (long long)p->H);
    if (p->K > DN_LA_MAX_DIM || p->V > DN_LA_MAX_DIM)
        return dn_fail(DN_ERR_SHAPE, "%s: K (%lld) and V (%lld) must be at most %d", name,
                       (long long)p->K, (long long)p->V, DN_LA_MAX_DIM);
    if (!(isfinite(p->scale))) return dn_fail(DN_ERR_ARG, "%s: scale must be finite", name);
    if (p->chunk_size != 16 && p->chunk_size != 32 && p->chunk_size != 64 && p->chunk_size != 128)
        return dn_fail(DN_ERR_ARG, "%s: chunk_size %d is not one of 16, 32, 64, 128", name,
                       p->chunk_size);
    if ((unsigned)p->impl >= DN_IMPL_COUNT)
        return dn_fail(DN_ERR_ARG, "%s: impl %d is unknown", name, (int)p->impl);
    if (p->n_threads < 0)
        return dn_fail(DN_ERR_ARG, "%s: n_threads %d is negative", name, p->n_threads);
    if ((unsigned)p->dtype >= DN_DTYPE_COUNT)
        return dn_fail(DN_ERR_ARG, "%s: dtype %d is unknown", name, (int)p->dtype);
    if (p->state_dtype != DN_F32 && p->state_dtype != DN_BF16)
        return dn_fail(DN_ERR_ARG, "%s: state_dtype %d is neither DN_F32 nor DN_BF16", name,
                       (int)p->state_dtype);
    if (p->device < DN_DEVICE_CPU)
        return dn_fail(DN_ERR_ARG, "%s: device %d is neither DN_DEVICE_CPU (-1) nor a CUDA ordinal",
                       name, p->device);
    if (p->cu_seqlens) {
        if (p->B != 1)
            return dn_fail(DN_ERR_SHAPE, "%s: cu_seqlens needs B = 1 (got B=%lld)", name,
                           (long long)p->B);
        if (p->n_seqs < 1 || p->n_seqs > INT64_MAX / 16)
            return dn_fail(DN_ERR_ARG, "%s: n_seqs (%lld) must be at least 1 with cu_seqlens", name,
                           (long long)p->n_seqs);
        if (p->cu_seqlens[0] != 0)
            return dn_fail(DN_ERR_ARG, "%s: cu_seqlens[0] is %lld, must be 0", name,
                           (long long)p->cu_seqlens[0]);
        for (int64_t i = 0; i < p->n_seqs; i++)
            if (p->cu_seqlens[i + 1] < p->cu_seqlens[i] || p->cu_seqlens[i + 1] > p->T)
                return dn_fail(DN_ERR_ARG,
                               "%s: cu_seqlens[%lld] = %lld is below the previous "
                               "entry or above T = %lld",
                               name, (long long)(i + 1), (long long)p->cu_seqlens[i + 1],
                               (long long)p->T);
        if (p->cu_seqlens[p->n_seqs] != p->T)
            return dn_fail(DN_ERR_ARG, "%s: cu_seqlens[%lld] is %lld, must equal T = %lld", name,
                           (long long)p->n_seqs, (long long)p->cu_seqlens[p->n_seqs],
                           (long long)p->T);
    }
    /* the kernels index every (sequence, head) state and every token of every head in int64 */
    int64_t n, states; /* a state per chunk boundary per sequence, at most T/16 + NS + 1 */
    if (__builtin_add_overflow(p->T / 16, dn_la_nseq(p), &states) ||
        __builtin_add_overflow(states, 1, &states) ||
        !DN_PROD(&n, states, p->HV, p->K, p->V, (int64_t)(4 * sizeof(float))) ||
        !DN_PROD(&n, p->B, p->T, p->HV, p->K + p->V + 4, (int64_t)sizeof(float)))
        return dn_fail(DN_ERR_SHAPE, "%s: tensor sizes overflow 64-bit indexing", name);
    return DN_OK;
}

/* g exactly for the gated ops, beta exactly for the delta-rule ops (not part of the shape: the
 * size queries take params without tensors). */
static dn_status check_op_inputs(const dn_la_params *p, const char *name) {
    const int raw = p->gate_a || p->A_log || p->dt_bias;
    if (raw && !(p->gate_a && p->A_log && p->dt_bias))
        return dn_fail(DN_ERR_NULL, "%s: gate_a, A_log and dt_bias go together (one is NULL)",
                       name);
    if (dn_op_has_gate(p->op) && !p->g && !raw)
        return dn_fail(DN_ERR_NULL, "%s: g [B,T,HV] is required (or gate_a, A_log, dt_bias)", name);
    if (dn_op_has_gate(p->op) && p->g && raw)
        return dn_fail(DN_ERR_ARG, "%s: g and the raw gate (gate_a) were both given", name);
    if (!dn_op_has_gate(p->op) && (p->g || raw))
        return dn_fail(DN_ERR_ARG, "%s has no gate but %s was given (use gla or gdn)", name,
                       p->g ? "g" : "gate_a");
    if (dn_op_has_delta(p->op) && !p->beta && !p->gate_b)
        return dn_fail(DN_ERR_NULL, "%s: beta [B,T,HV] is required (or gate_b)", name);
    if (dn_op_has_delta(p->op) && p->beta && p->gate_b)
        return dn_fail(DN_ERR_ARG, "%s: beta and gate_b were both given", name);
    if (!dn_op_has_delta(p->op) && (p->beta || p->gate_b))
        return dn_fail(DN_ERR_ARG, "%s has no delta rule but %s was given (use deltanet or gdn)",
                       name, p->beta ? "beta" : "gate_b");
    return DN_OK;
}

/* The forward's inputs, in the order check_values and the backward's table expect. */
static int fwd_args(const dn_la_params *p, dn_arg *a) {
    const int64_t B = p->B, T = p->T, H = p->H, HV = p->HV, K = p->K, V = p->V;
    const int64_t NS = dn_la_nseq(p);
    int n = 0;
    a[n++] = (dn_arg){"q", p->q, p->q_s, B, T, H, K, 0, 0, 0}; /* q, k, v first: see half_args */
    a[n++] = (dn_arg){"k", p->k, p->k_s, B, T, H, K, 0, 0, 0};
    a[n++] = (dn_arg){"v", p->v, p->v_s, B, T, HV, V, 0, 0, 0};
    a[n++] = (dn_arg){"g", p->g, p->g_s, B, T, HV, 1, 0, 1, 0};
    a[n++] = (dn_arg){"beta", p->beta, p->beta_s, B, T, HV, 1, 0, 1, 0};
    a[n++] = dn_arg_flat("initial_state", p->initial_state, NS, HV, K, V, 0, 1, 1);
    a[n++] = dn_arg_flat("cu_seqlens", p->cu_seqlens, p->cu_seqlens ? p->n_seqs + 1 : 0, 1, 1, 2, 0,
                         1, 0);
    a[n++] = (dn_arg){"gate_a", p->gate_a, p->gate_a_s, B, T, HV, 1, 0, 1, 0};
    a[n++] = (dn_arg){"gate_b", p->gate_b, p->gate_b_s, B, T, HV, 1, 0, 1, 0};
    a[n++] = dn_arg_flat("A_log", p->A_log, 1, 1, 1, HV, 0, 1, 0);
    a[n++] = dn_arg_flat("dt_bias", p->dt_bias, 1, 1, 1, HV, 0, 1, 0);
    return n;
}

/* The values the contract bounds: g <= 0 (log decay; -inf allowed: a full reset) and
 * 0 <= beta <= 2. A cheap pass (B T HV values against B T HV K V of work). NaN is data, not a
 * contract violation: it propagates (see the header). */
static dn_status check_values(const dn_la_params *p, const char *name) {
    if (p->T == 0) return DN_OK; /* no values (and B may be huge) */
    for (int64_t b = 0; b < p->B; b++)
        for (int64_t t = 0; t < p->T; t++)
            for (int64_t h = 0; h < p->HV; h++) {
                if (p->g) {
                    const float g = p->g[b * p->g_s.b + t * p->g_s.t + h * p->g_s.h];
                    if (g > 0)
                        return dn_fail(DN_ERR_ARG,
                                       "%s: g[%lld,%lld,%lld] = %g is positive (g is a "
                                       "log decay, <= 0)",
                                       name, (long long)b, (long long)t, (long long)h, (double)g);
                }
                if (p->beta) {
                    const float x = p->beta[b * p->beta_s.b + t * p->beta_s.t + h * p->beta_s.h];
                    if (x < 0 || x > 2)
                        return dn_fail(DN_ERR_ARG,
                                       "%s: beta[%lld,%lld,%lld] = %g is outside [0, 2]", name,
                                       (long long)b, (long long)t, (long long)h, (double)x);
                }
            }
    return DN_OK;
}

/* What a size query needs: the op, dims, options and cu_seqlens, no tensor pointers. */
static dn_status shape_only(const dn_la_params *p) {
    if (!p) return dn_fail(DN_ERR_NULL, "params is NULL");
    if (!dn_op_is_la(p->op))
        return dn_fail(DN_ERR_ARG, "op %d is not a linear-attention family op", (int)p->op);
    return check_shape(p, dn_op_name(p->op));
}

/* The forward's checks; a training forward also writes `saved` (NULL otherwise). */
static dn_status check_fwd(const dn_la_params *p, const void *saved, size_t saved_bytes) {
    dn_status st = shape_only(p);
    if (st != DN_OK) return st;
    const char *name = dn_op_name(p->op);
    if ((st = check_op_inputs(p, name)) != DN_OK) return st;
    dn_arg a[DN_MAX_ARGS];
    int n = fwd_args(p, a);
    const int io = n;
    a[n++] = (dn_arg){"o", p->o, p->o_s, p->B, p->T, p->HV, p->V, 1, 0, 0};
    a[n++] = dn_arg_flat("final_state", p->final_state, dn_la_nseq(p), p->HV, p->K, p->V, 1, 1, 1);
    a[n++] = (dn_arg){
        "saved", saved, dn_contiguous(1, 1, 1), (int64_t)(saved_bytes / sizeof(float)), 1, 1, 1, 1,
        1,       0};
    /* 16-bit dtypes: q, k, v (the table's first three) and o hold 2-byte elements; a bf16
     * state: initial_state (fwd_args' sixth) and final_state */
    const unsigned half = (p->dtype != DN_F32 ? 7u | 1u << io : 0u) |
                          (p->state_dtype != DN_F32 ? 1u << 5 | 1u << (io + 1) : 0u);
    if ((st = dn_check_args_mixed(name, a, n, half)) != DN_OK) return st;
    /* device memory is not read on the host (see the header: the GPU kernels clamp g) */
    return p->device == DN_DEVICE_CPU ? check_values(p, name) : DN_OK;
}

dn_status dn_la_check(const dn_la_params *p) { return check_fwd(p, NULL, 0); }

/* Longest sequence in the call: the chunkwise form pays only once sequences span chunks. */
static int64_t longest_seq(const dn_la_params *p) {
    if (!p->cu_seqlens) return p->T;
    int64_t m = 0;
    for (int64_t n = 0; n < p->n_seqs; n++) {
        int64_t len = p->cu_seqlens[n + 1] - p->cu_seqlens[n];
        if (len > m) m = len;
    }
    return m;
}

/* The params the kernels run with: DN_IMPL_AUTO resolved to a form and, for the chunkwise form,
 * a chunk size. Measured by `deltanet bench` on Zen 3-5 class CPUs (docs/PERF.md): the
 * recurrence wins below 16 tokens per sequence; above, the chunkwise form with 16-token chunks
 * (on CPU the triangular per-chunk work grows with C while the state products do not shrink,
 * so small chunks win; C = 64 suits tensor-core GPUs). */
static dn_la_params resolved(const dn_la_params *p) {
    dn_la_params r = *p;
    if (p->impl != DN_IMPL_AUTO) return r;
    if (longest_seq(p) < 16) {
        r.impl = DN_IMPL_RECURRENT;
    } else {
        r.impl = DN_IMPL_CHUNK;
        r.chunk_size = 16;
    }
    return r;
}

dn_status dn_la_workspace_size(const dn_la_params *p, size_t *bytes) {
    dn_status st = shape_only(p);
    if (st != DN_OK) return st;
    if (!bytes) return dn_fail(DN_ERR_NULL, "dn_la_workspace_size: bytes is NULL");
    dn_la_params r = resolved(p);
    if (r.impl == DN_IMPL_REF || r.device != DN_DEVICE_CPU) {
        *bytes = 0;
        return DN_OK;
    }
    *bytes = dn_cpu()->la_workspace(&r, r.impl, dn_threads_for(r.n_threads));
    return DN_OK;
}

/* floats of one state tensor [NS,HV,K,V] (checked to fit by the shape checks) */
static int64_t state_floats(const dn_la_params *p) { return dn_la_nseq(p) * p->HV * p->K * p->V; }

/* A 16-bit strided view [n0,n1,n2,D] to a contiguous fp32 copy, and back. */
static void widen(float *dst, const float *src_, dn_strides s, dn_dtype t, int64_t n0, int64_t n1,
                  int64_t n2, int64_t D) {
    const uint16_t *src = (const uint16_t *)(const void *)src_;
    for (int64_t a = 0; a < n0; a++)
        for (int64_t b = 0; b < n1; b++)
            for (int64_t c = 0; c < n2; c++) {
                const uint16_t *x = src + a * s.b + b * s.t + c * s.h;
                float *y = dst + ((a * n1 + b) * n2 + c) * D;
                for (int64_t d = 0; d < D; d++)
                    y[d] = t == DN_BF16 ? dn_bf16_to_f32(x[d]) : dn_f16_to_f32(x[d]);
            }
}
static void narrow(float *dst_, dn_strides s, const float *src, dn_dtype t, int64_t n0, int64_t n1,
                   int64_t n2, int64_t D) {
    uint16_t *dst = (uint16_t *)(void *)dst_;
    for (int64_t a = 0; a < n0; a++)
        for (int64_t b = 0; b < n1; b++)
            for (int64_t c = 0; c < n2; c++) {
                uint16_t *y = dst + a * s.b + b * s.t + c * s.h;
                const float *x = src + ((a * n1 + b) * n2 + c) * D;
                for (int64_t d = 0; d < D; d++)
                    y[d] = t == DN_BF16 ? dn_f32_to_bf16(x[d]) : dn_f32_to_f16(x[d]);
            }
}

/* 16-bit inputs on the CPU: the fp32 kernels over converted copies (checked params). */
static dn_status forward_widened(const dn_la_params *p) {
    const int64_t B = p->B, T = p->T, H = p->H, HV = p->HV, K = p->K, V = p->V;
    const size_t nqk = (size_t)(B * T * H * K), nv = (size_t)(B * T * HV * V);
    float *buf = dn_alloc(sizeof(float) * (2 * nqk + 2 * nv));
    if (!buf)
        return dn_fail(DN_ERR_ALLOC, "%s: cannot allocate fp32 copies of the %s inputs",
                       dn_op_name(p->op), dn_dtype_name(p->dtype));
    dn_la_params w = *p;
    float *q = buf, *k = q + nqk, *v = k + nqk, *o = v + nv;
    widen(q, p->q, p->q_s, p->dtype, B, T, H, K);
    widen(k, p->k, p->k_s, p->dtype, B, T, H, K);
    widen(v, p->v, p->v_s, p->dtype, B, T, HV, V);
    w.q = q;
    w.k = k;
    w.v = v;
    w.o = o;
    w.q_s = w.k_s = dn_contiguous(T, H, K);
    w.v_s = w.o_s = dn_contiguous(T, HV, V);
    w.dtype = DN_F32; /* the caller's workspace, if any, was sized for the same shapes */
    dn_status st = dn_la_forward(&w);
    if (st == DN_OK) narrow(p->o, p->o_s, o, p->dtype, B, T, HV, V);
    dn_free(buf);
    return st;
}

/* Raw gates on the CPU: g and beta computed into a buffer, then the call with them (checked
 * params). */
static dn_status forward_raw_gates(const dn_la_params *p) {
    const int64_t B = p->B, T = p->T, HV = p->HV, n = B * T * HV;
    float *buf = dn_alloc(sizeof(float) * (size_t)(2 * n));
    if (!buf)
        return dn_fail(DN_ERR_ALLOC, "%s: cannot allocate the gates computed from gate_a / gate_b",
                       dn_op_name(p->op));
    dn_la_params w = *p;
    float *g = buf, *beta = buf + n;
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < HV; h++) {
                const int64_t i = (b * T + t) * HV + h;
                if (p->gate_a) {
                    const float x =
                        p->gate_a[b * p->gate_a_s.b + t * p->gate_a_s.t + h * p->gate_a_s.h] +
                        p->dt_bias[h];
                    g[i] = -expf(p->A_log[h]) * (x > 20.0f ? x : log1pf(expf(x)));
                }
                if (p->gate_b)
                    beta[i] = 1.0f / (1.0f + expf(-p->gate_b[b * p->gate_b_s.b + t * p->gate_b_s.t +
                                                             h * p->gate_b_s.h]));
            }
    if (p->gate_a) w.g = g, w.g_s = dn_contiguous(T, HV, 1);
    if (p->gate_b) w.beta = beta, w.beta_s = dn_contiguous(T, HV, 1);
    w.gate_a = w.gate_b = w.A_log = w.dt_bias = NULL;
    dn_status st = dn_la_forward(&w);
    dn_free(buf);
    return st;
}

/* A bf16 state on the CPU: the call over fp32 copies of the states (checked params). */
static dn_status forward_state_widened(const dn_la_params *p) {
    const int64_t n = state_floats(p);
    float *buf = dn_alloc(sizeof(float) * (size_t)(2 * n));
    if (!buf)
        return dn_fail(DN_ERR_ALLOC, "%s: cannot allocate fp32 copies of the bf16 states",
                       dn_op_name(p->op));
    const uint16_t *h0 = (const uint16_t *)(const void *)p->initial_state;
    uint16_t *ht = (uint16_t *)(void *)p->final_state;
    dn_la_params w = *p;
    w.state_dtype = DN_F32;
    w.initial_state = h0 ? buf : NULL;
    w.final_state = ht ? buf + n : NULL;
    for (int64_t i = 0; h0 && i < n; i++)
        buf[i] = dn_bf16_to_f32(h0[i]);
    dn_status st = dn_la_forward(&w);
    for (int64_t i = 0; st == DN_OK && ht && i < n; i++)
        ht[i] = dn_f32_to_bf16(buf[n + i]);
    dn_free(buf);
    return st;
}

dn_status dn_la_forward(const dn_la_params *p) {
    dn_status st = dn_la_check(p);
    if (st != DN_OK) return st;
    if (p->device != DN_DEVICE_CPU) {
        if (p->impl == DN_IMPL_REF)
            return dn_fail(DN_ERR_UNSUPPORTED,
                           "%s: the double reference runs on the CPU only (device %d asked)",
                           dn_op_name(p->op), p->device);
        return dn_cuda_la_forward(p); /* T = 0 and AUTO are resolved there */
    }
    if (p->gate_a || p->gate_b) return forward_raw_gates(p);
    if (p->state_dtype != DN_F32) return forward_state_widened(p);
    if (p->dtype != DN_F32 && p->T > 0) return forward_widened(p);
    if (p->T == 0) {
        dn_pass_state(p->final_state, p->initial_state, state_floats(p));
        return DN_OK;
    }
    const dn_la_params r = resolved(p);
    if (r.impl == DN_IMPL_REF) return dn_ref_la_forward(&r);

    const dn_cpu_kernels *kern = dn_cpu();
    int nt = dn_threads_for(r.n_threads);
    size_t need = kern->la_workspace(&r, r.impl, nt);
    void *ws = r.workspace, *owned = NULL;
    if (need > 0) {
        if (ws && r.workspace_bytes < need)
            return dn_fail(DN_ERR_ARG, "%s: workspace has %zu bytes, needs %zu", dn_op_name(r.op),
                           r.workspace_bytes, need);
        if (ws && ((uintptr_t)ws & 63))
            return dn_fail(DN_ERR_ARG, "%s: workspace must be 64-byte aligned", dn_op_name(r.op));
        if (!ws) {
            owned = dn_alloc(need);
            if (!owned)
                return dn_fail(DN_ERR_ALLOC, "%s: cannot allocate %zu bytes of workspace",
                               dn_op_name(r.op), need);
            ws = owned;
        }
    }
    kern->la_forward(&r, r.impl, nt, ws);
    dn_free(owned);
    return DN_OK;
}

dn_status dn_la_step(dn_op op, float *o, float *state, const float *q, const float *k,
                     const float *v, const float *g, const float *beta, int64_t B, int64_t H,
                     int64_t HV, int64_t K, int64_t V, float scale, int qk_l2norm) {
    dn_la_params p = dn_la_params_default(op, B, 1, H, HV, K, V);
    if (!state) return dn_fail(DN_ERR_NULL, "dn_la_step: state is NULL");
    if (!isfinite(scale))
        return dn_fail(DN_ERR_ARG, "dn_la_step: scale %g is not finite (pass 0 for 1/sqrt(K))",
                       (double)scale);
    p.q = q;
    p.k = k;
    p.v = v;
    p.g = g;
    p.beta = beta;
    p.o = o;
    p.initial_state = state;
    p.final_state = state;
    if (scale > 0) p.scale = scale;
    p.qk_l2norm = qk_l2norm;
    p.impl = DN_IMPL_RECURRENT;
    return dn_la_forward(&p);
}

/* ---------------------------------------------------------------------------------------------
 * Backward
 * ------------------------------------------------------------------------------------------- */

/* The params the training forward and the backward run with: DN_IMPL_AUTO takes 32-token
 * chunks, which measured fastest for the backward on CPU (bench/bwd.c; 16 and 64 were 10-30%
 * slower); DN_IMPL_CHUNK keeps chunk_size. Both calls resolve alike, so a saved buffer matches. */
static dn_la_params train_resolved(const dn_la_params *p) {
    dn_la_params r = *p;
    if (p->impl == DN_IMPL_AUTO) r.chunk_size = 32;
    return r;
}
dn_la_bwd_params dn_la_bwd_params_default(const dn_la_params *fwd) {
    dn_la_bwd_params b;
    memset(&b, 0, sizeof b);
    if (!fwd) return b;
    b.fwd = *fwd;
    const int64_t T = fwd->T, H = fwd->H, HV = fwd->HV, K = fwd->K, V = fwd->V;
    b.dq_s = b.dk_s = dn_contiguous(T, H, K);
    b.dv_s = b.dout_s = dn_contiguous(T, HV, V);
    b.dg_s = b.dbeta_s = dn_contiguous(T, HV, 1);
    return b;
}

/* Scratch of the fast backward (all threads): checkpoints (T/C + 1) K V, U and R 2 T V, and one
 * chunk's matrices, per thread. */
dn_status dn_la_backward_workspace_size(const dn_la_bwd_params *bp, size_t *bytes) {
    if (!bp || !bytes) return dn_fail(DN_ERR_NULL, "dn_la_backward_workspace_size: NULL argument");
    dn_status st = shape_only(&bp->fwd);
    if (st != DN_OK) return st;
    const dn_la_params r = train_resolved(&bp->fwd);
    *bytes = r.impl == DN_IMPL_REF || r.device != DN_DEVICE_CPU
                 ? 0
                 : dn_cpu()->la_bwd_workspace(&r, dn_threads_for(r.n_threads));
    return DN_OK;
}

/* The backward's tensors in one table: the forward's inputs, dout and dfinal_state read, the
 * gradients written. */
static dn_status bwd_check(const dn_la_bwd_params *bp) {
    const dn_la_params *p = &bp->fwd;
    if (!dn_op_is_la(p->op))
        return dn_fail(DN_ERR_ARG, "op %d is not a linear-attention family op", (int)p->op);
    const char *op = dn_op_name(p->op);
    dn_status st = check_shape(p, op);
    if (st == DN_OK) st = check_op_inputs(p, op);
    if (st != DN_OK) return st;
    if (p->gate_a || p->gate_b)
        return dn_fail(DN_ERR_UNSUPPORTED,
                       "%s backward: the raw gates (gate_a, gate_b) are for the forward; pass g "
                       "and beta",
                       op);
    if (dn_op_has_gate(p->op) != (bp->dg != NULL))
        return dn_fail(DN_ERR_ARG, "%s: dg must be given exactly for gated ops", op);
    if (dn_op_has_delta(p->op) != (bp->dbeta != NULL))
        return dn_fail(DN_ERR_ARG, "%s: dbeta must be given exactly for delta-rule ops", op);
    const int64_t B = p->B, T = p->T, H = p->H, HV = p->HV, K = p->K, V = p->V;
    const dn_strides cs = dn_contiguous(HV, K, V);
    const int64_t NS = dn_la_nseq(p);
    dn_arg a[DN_MAX_ARGS];
    int n = fwd_args(p, a);
    const int io = n;
    a[n++] = (dn_arg){"dout", bp->dout, bp->dout_s, B, T, HV, V, 0, 0, 0};
    a[n++] = (dn_arg){"dfinal_state", bp->dfinal_state, cs, NS, HV, K, V, 0, 1, 0};
    const int64_t nsaved = (int64_t)(bp->saved_bytes / sizeof(float));
    a[n++] = dn_arg_flat("saved", bp->saved, nsaved, 1, 1, 1, 0, 1, 0);
    a[n++] = (dn_arg){"dq", bp->dq, bp->dq_s, B, T, H, K, 1, 0, 0};
    a[n++] = (dn_arg){"dk", bp->dk, bp->dk_s, B, T, H, K, 1, 0, 0};
    a[n++] = (dn_arg){"dv", bp->dv, bp->dv_s, B, T, HV, V, 1, 0, 0};
    a[n++] = (dn_arg){"dg", bp->dg, bp->dg_s, B, T, HV, 1, 1, 1, 0};
    a[n++] = (dn_arg){"dbeta", bp->dbeta, bp->dbeta_s, B, T, HV, 1, 1, 1, 0};
    a[n++] = (dn_arg){"dinitial_state", bp->dinitial_state, cs, NS, HV, K, V, 1, 1, 0};
    /* 16-bit dtypes: q, k, v, dout and dq, dk, dv hold 2-byte elements */
    const unsigned half = p->dtype != DN_F32 ? 7u | 1u << io | 7u << (io + 3) : 0u;
    if ((st = dn_check_args_mixed(op, a, n, half)) != DN_OK) return st;
    /* device memory is not read on the host */
    return p->device == DN_DEVICE_CPU ? check_values(p, op) : DN_OK;
}

/* 16-bit inputs on the CPU: the fp32 backward over converted copies of q, k, v and dout, the
 * gradients of q, k and v rounded back to the dtype (checked params). */
static dn_status backward_widened(const dn_la_bwd_params *bp) {
    const dn_la_params *p = &bp->fwd;
    const int64_t B = p->B, T = p->T, H = p->H, HV = p->HV, K = p->K, V = p->V;
    const size_t nqk = (size_t)(B * T * H * K), nv = (size_t)(B * T * HV * V);
    float *buf = dn_alloc(sizeof(float) * (4 * nqk + 3 * nv));
    if (!buf)
        return dn_fail(DN_ERR_ALLOC, "%s backward: cannot allocate fp32 copies of the %s tensors",
                       dn_op_name(p->op), dn_dtype_name(p->dtype));
    float *q = buf, *k = q + nqk, *dq = k + nqk, *dk = dq + nqk, *v = dk + nqk, *dout = v + nv,
          *dv = dout + nv;
    widen(q, p->q, p->q_s, p->dtype, B, T, H, K);
    widen(k, p->k, p->k_s, p->dtype, B, T, H, K);
    widen(v, p->v, p->v_s, p->dtype, B, T, HV, V);
    widen(dout, bp->dout, bp->dout_s, p->dtype, B, T, HV, V);
    dn_la_bwd_params w = *bp;
    w.fwd.q = q, w.fwd.k = k, w.fwd.v = v, w.fwd.o = NULL;
    w.fwd.q_s = w.fwd.k_s = w.dq_s = w.dk_s = dn_contiguous(T, H, K);
    w.fwd.v_s = w.dout_s = w.dv_s = dn_contiguous(T, HV, V);
    w.fwd.dtype = DN_F32;
    w.dout = dout, w.dq = dq, w.dk = dk, w.dv = dv;
    dn_status st = dn_la_backward(&w);
    if (st == DN_OK) {
        narrow(bp->dq, bp->dq_s, dq, p->dtype, B, T, H, K);
        narrow(bp->dk, bp->dk_s, dk, p->dtype, B, T, H, K);
        narrow(bp->dv, bp->dv_s, dv, p->dtype, B, T, HV, V);
    }
    dn_free(buf);
    return st;
}

dn_status dn_la_backward(const dn_la_bwd_params *bp_in) {
    if (!bp_in) return dn_fail(DN_ERR_NULL, "backward params is NULL");
    dn_la_bwd_params resolved = *bp_in;
    resolved.fwd = train_resolved(&bp_in->fwd);
    const dn_la_bwd_params *bp = &resolved;
    const dn_la_params *p = &bp->fwd;
    dn_status st = bwd_check(bp);
    if (st != DN_OK) return st;
    const char *op = dn_op_name(p->op);
    if (p->state_dtype != DN_F32)
        return dn_fail(DN_ERR_UNSUPPORTED, "%s backward: fp32 states only (state_dtype)", op);
    if (p->impl == DN_IMPL_RECURRENT)
        return dn_fail(DN_ERR_UNSUPPORTED,
                       "%s backward: the fast backward is chunkwise; use "
                       "DN_IMPL_AUTO or DN_IMPL_CHUNK (or DN_IMPL_REF)",
                       op);
    if (p->device != DN_DEVICE_CPU) {
        if (p->impl == DN_IMPL_REF)
            return dn_fail(DN_ERR_UNSUPPORTED,
                           "%s backward: the double reference runs on the CPU only (device %d "
                           "asked)",
                           op, p->device);
        if (bp->saved)
            return dn_fail(DN_ERR_UNSUPPORTED,
                           "%s backward: saved is the CPU training forward's buffer; the GPU "
                           "backward recomputes what it needs",
                           op);
        return dn_cuda_la_backward(bp); /* T = 0 is handled there (device memory) */
    }
    if (p->dtype != DN_F32) {
        if (bp->saved)
            return dn_fail(DN_ERR_UNSUPPORTED,
                           "%s backward: saved (a training forward's buffer) is fp32 only", op);
        if (p->T > 0) return backward_widened(bp);
    }
    if (p->T == 0) {
        dn_pass_state(bp->dinitial_state, bp->dfinal_state, state_floats(p));
        return DN_OK;
    }
    if (bp->saved) {
        if (p->impl == DN_IMPL_REF)
            return dn_fail(DN_ERR_ARG, "%s backward: saved is for the fast backward", op);
        const size_t need_saved = sizeof(float) * dn_cpu()->la_saved_floats(p);
        if (bp->saved_bytes < need_saved || ((uintptr_t)bp->saved & 63))
            return dn_fail(DN_ERR_ARG,
                           "%s backward: saved has %zu bytes, needs %zu, 64-byte aligned", op,
                           bp->saved_bytes, need_saved);
    }
    if (p->impl == DN_IMPL_REF) return dn_ref_la_backward(bp);
    const dn_cpu_kernels *kern = dn_cpu();
    const int nt = dn_threads_for(p->n_threads);
    const size_t need = kern->la_bwd_workspace(p, nt);
    if (bp->workspace && (bp->workspace_bytes < need || ((uintptr_t)bp->workspace & 63)))
        return dn_fail(DN_ERR_ARG,
                       "%s backward: workspace of %zu bytes (alignment %d) is not %zu "
                       "bytes 64-byte aligned",
                       op, bp->workspace_bytes, (int)((uintptr_t)bp->workspace & 63), need);
    void *owned;
    void *ws = dn_scratch(bp->workspace, bp->workspace_bytes, need, &owned);
    if (!ws) return dn_fail(DN_ERR_ALLOC, "%s backward: cannot allocate the workspace", op);
    kern->la_backward(bp, nt, ws);
    dn_free(owned);
    return DN_OK;
}

dn_status dn_la_saved_size(const dn_la_params *p_in, size_t *bytes) {
    if (!p_in) return dn_fail(DN_ERR_NULL, "params is NULL");
    const dn_la_params r = train_resolved(p_in), *p = &r;
    dn_status st = shape_only(p);
    if (st != DN_OK) return st;
    if (!bytes) return dn_fail(DN_ERR_NULL, "dn_la_saved_size: bytes is NULL");
    *bytes = p->T == 0 ? 0 : sizeof(float) * dn_cpu()->la_saved_floats(p);
    return DN_OK;
}

dn_status dn_la_forward_train(const dn_la_params *p_in, void *saved, size_t saved_bytes) {
    if (!p_in) return dn_fail(DN_ERR_NULL, "params is NULL");
    const dn_la_params r = train_resolved(p_in), *p = &r;
    dn_status st = check_fwd(p, saved, saved_bytes);
    if (st != DN_OK) return st;
    const char *op = dn_op_name(p->op);
    if (p->device != DN_DEVICE_CPU || p->dtype != DN_F32 || p->state_dtype != DN_F32)
        return dn_fail(DN_ERR_UNSUPPORTED,
                       "%s training forward: fp32 (inputs and states) on the CPU only in this "
                       "version",
                       op);
    if (p->gate_a || p->gate_b)
        return dn_fail(DN_ERR_UNSUPPORTED,
                       "%s training forward: the raw gates (gate_a, gate_b) are for the forward; "
                       "pass g and beta",
                       op);
    if (p->impl != DN_IMPL_AUTO && p->impl != DN_IMPL_CHUNK)
        return dn_fail(DN_ERR_UNSUPPORTED,
                       "%s training forward: chunkwise only (impl auto or chunk)", op);
    if (p->T == 0) { /* nothing to save: saved is not read */
        dn_pass_state(p->final_state, p->initial_state, state_floats(p));
        return DN_OK;
    }
    const dn_cpu_kernels *kern = dn_cpu();
    const size_t need_saved = sizeof(float) * kern->la_saved_floats(p);
    if (!saved) return dn_fail(DN_ERR_NULL, "%s training forward: saved is NULL", op);
    if (saved_bytes < need_saved || ((uintptr_t)saved & 63))
        return dn_fail(DN_ERR_ARG,
                       "%s training forward: saved has %zu bytes, needs %zu, 64-byte aligned", op,
                       saved_bytes, need_saved);
    const int nt = dn_threads_for(p->n_threads);
    const size_t need_ws = kern->la_bwd_workspace(p, nt);
    if (p->workspace && (p->workspace_bytes < need_ws || ((uintptr_t)p->workspace & 63)))
        return dn_fail(DN_ERR_ARG,
                       "%s training forward: workspace of %zu bytes (alignment %d) is not %zu "
                       "bytes, 64-byte aligned",
                       op, p->workspace_bytes, (int)((uintptr_t)p->workspace & 63), need_ws);
    void *owned;
    void *ws = dn_scratch(p->workspace, p->workspace_bytes, need_ws, &owned);
    if (!ws) return dn_fail(DN_ERR_ALLOC, "%s training forward: cannot allocate the workspace", op);
    kern->la_forward_train(p, nt, ws, saved);
    dn_free(owned);
    return DN_OK;
}
