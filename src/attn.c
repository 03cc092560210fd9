/*
 * attn.c - public entry points of causal softmax attention: argument checks, the dispatch to the
 * reference or the tiled CPU kernel, and the KV cache used for decode.
 */
#include "half.h"
#include "internal.h"

#include <math.h>
#include <string.h>

dn_attn_params dn_attn_params_default(int64_t B, int64_t T, int64_t H, int64_t HKV, int64_t D) {
    dn_attn_params p;
    memset(&p, 0, sizeof p);
    p.B = B;
    p.TQ = p.TK = T;
    p.H = H;
    p.HKV = HKV;
    p.D = D;
    p.q_s = p.o_s = dn_contiguous(T, H, D);
    p.k_s = p.v_s = dn_contiguous(T, HKV, D);
    p.scale = D > 0 ? (float)(1.0 / sqrt((double)D)) : 1.0f;
    p.impl = DN_IMPL_AUTO;
    return p;
}

static dn_status check_heads(const char *who, int64_t H, int64_t HKV, int64_t D) {
    if (H < 1 || HKV < 1 || D < 1)
        return dn_fail(DN_ERR_SHAPE, "%s: H (%lld), HKV (%lld) and D (%lld) must be positive", who,
                       (long long)H, (long long)HKV, (long long)D);
    if (H % HKV)
        return dn_fail(DN_ERR_SHAPE, "%s: H (%lld) is not a multiple of HKV (%lld)", who,
                       (long long)H, (long long)HKV);
    if (D > 256)
        return dn_fail(DN_ERR_SHAPE, "%s: head dim D = %lld is above 256", who, (long long)D);
    return DN_OK;
}

/* Dims and options, no tensor memory. */
static dn_status check_shape(const dn_attn_params *p, const char *op) {
    if (!p) return dn_fail(DN_ERR_NULL, "attention params is NULL");
    dn_status st = check_heads(op, p->H, p->HKV, p->D);
    if (st != DN_OK) return st;
    if (p->B < 1 || p->TQ < 0 || p->TK < 0)
        return dn_fail(DN_ERR_SHAPE,
                       "%s: B (%lld) must be positive, TQ (%lld) and TK "
                       "(%lld) non-negative",
                       op, (long long)p->B, (long long)p->TQ, (long long)p->TK);
    if (!isfinite(p->scale)) return dn_fail(DN_ERR_ARG, "%s: scale must be finite", op);
    if (p->window < 0)
        return dn_fail(DN_ERR_ARG, "%s: window %lld is negative (0 means none)", op,
                       (long long)p->window);
    if (p->n_threads < 0) return dn_fail(DN_ERR_ARG, "%s: n_threads is negative", op);
    if (p->impl != DN_IMPL_AUTO && p->impl != DN_IMPL_REF)
        return dn_fail((unsigned)p->impl < DN_IMPL_COUNT ? DN_ERR_UNSUPPORTED : DN_ERR_ARG,
                       "%s: impl must be auto (tiled) or ref, not %d", op, (int)p->impl);
    return DN_OK;
}

/* The forward's tensors; the backward appends its own to the same table. */
static int fwd_args(const dn_attn_params *p, dn_arg *a, int o_is_input) {
    const int64_t B = p->B, TQ = p->TQ, TK = p->TK, H = p->H, HKV = p->HKV, D = p->D;
    int n = 0;
    a[n++] = (dn_arg){"q", p->q, p->q_s, B, TQ, H, D, 0, 0, 0};
    a[n++] = (dn_arg){"k", p->k, p->k_s, B, TK, HKV, D, 0, 0, 0};
    a[n++] = (dn_arg){"v", p->v, p->v_s, B, TK, HKV, D, 0, 0, 0};
    a[n++] = (dn_arg){"o", p->o, p->o_s, B, TQ, H, D, !o_is_input, 0, 0};
    a[n++] = (dn_arg){"lse", p->lse, dn_contiguous(H, TQ, 1), B, H, TQ, 1, !o_is_input, 1, 0};
    return n;
}

dn_status dn_attn_check(const dn_attn_params *p) {
    const char *op = "softmax_attn";
    dn_status st = check_shape(p, op);
    if (st != DN_OK) return st;
    dn_arg a[DN_MAX_ARGS];
    int n = fwd_args(p, a, 0);
    return dn_check_args(op, a, n);
}

/* The tiled path's scratch holds a tile of (H / HKV) x rows query rows per thread: above 2^32
 * query heads per key head its size would overflow (UB in the layout), so such a tile cannot be
 * allocated, reported as such. */
static dn_status check_tile(const dn_attn_params *p, const char *op) {
    if (p->H / p->HKV > ((int64_t)1 << 32))
        return dn_fail(DN_ERR_ALLOC,
                       "%s: H / HKV = %lld query heads per key head: the tile's "
                       "scratch would not fit in memory",
                       op, (long long)(p->H / p->HKV));
    return DN_OK;
}

dn_status dn_attn_workspace_size(const dn_attn_params *p, size_t *bytes) {
    dn_status st = check_shape(p, "softmax_attn");
    if (st != DN_OK) return st;
    if (!bytes) return dn_fail(DN_ERR_NULL, "dn_attn_workspace_size: bytes is NULL");
    if (p->impl != DN_IMPL_REF && (st = check_tile(p, "dn_attn_workspace_size")) != DN_OK)
        return st;
    *bytes = p->impl == DN_IMPL_REF ? 0 : dn_cpu()->attn_workspace(p, dn_threads_for(p->n_threads));
    return DN_OK;
}

dn_status dn_attn_forward(const dn_attn_params *p) {
    dn_status st = dn_attn_check(p);
    if (st != DN_OK) return st;
    if (p->TQ == 0) return DN_OK; /* no query: nothing to write, however large B is */
    if (p->impl == DN_IMPL_REF) return dn_ref_attn_forward(p);
    if ((st = check_tile(p, "softmax_attn")) != DN_OK) return st;
    const dn_cpu_kernels *kern = dn_cpu();
    int nt = dn_threads_for(p->n_threads);
    void *owned;
    void *ws = dn_scratch(NULL, 0, kern->attn_workspace(p, nt), &owned);
    if (!ws) return dn_fail(DN_ERR_ALLOC, "softmax_attn: cannot allocate the tile workspace");
    kern->attn_forward(p, nt, ws);
    dn_free(owned);
    return DN_OK;
}

dn_attn_bwd_params dn_attn_bwd_params_default(const dn_attn_params *fwd) {
    dn_attn_bwd_params b;
    memset(&b, 0, sizeof b);
    if (!fwd) return b;
    b.fwd = *fwd;
    b.dout_s = b.dq_s = dn_contiguous(fwd->TQ, fwd->H, fwd->D);
    b.dk_s = b.dv_s = dn_contiguous(fwd->TK, fwd->HKV, fwd->D);
    return b;
}

dn_status dn_attn_backward(const dn_attn_bwd_params *bp) {
    if (!bp) return dn_fail(DN_ERR_NULL, "attention backward params is NULL");
    const dn_attn_params *p = &bp->fwd;
    const char *op = "softmax_attn backward";
    dn_status st = check_shape(p, op);
    if (st != DN_OK) return st;
    if (!p->lse)
        return dn_fail(DN_ERR_NULL, "%s: fwd.lse (the forward's logsumexp) is required", op);
    const int64_t B = p->B, TQ = p->TQ, TK = p->TK, H = p->H, HKV = p->HKV, D = p->D;
    dn_arg a[DN_MAX_ARGS];
    int n = fwd_args(p, a, 1);
    a[n++] = (dn_arg){"dout", bp->dout, bp->dout_s, B, TQ, H, D, 0, 0, 0};
    a[n++] = (dn_arg){"dq", bp->dq, bp->dq_s, B, TQ, H, D, 1, 0, 0};
    a[n++] = (dn_arg){"dk", bp->dk, bp->dk_s, B, TK, HKV, D, 1, 0, 0};
    a[n++] = (dn_arg){"dv", bp->dv, bp->dv_s, B, TK, HKV, D, 1, 0, 0};
    if ((st = dn_check_args(op, a, n)) != DN_OK) return st;
    /* no token at all: nothing to write (and a batch of 2^62 empty rows is no work to spread) */
    if (p->TQ == 0 && p->TK == 0) return DN_OK;
    /* keys but no query: no key is attended to, so dk = dv = 0, written without a walk over
     * the (possibly 2^32) query heads that have nothing to do */
    if (p->TQ == 0) {
        for (int64_t b = 0; b < B; b++)
            for (int64_t t = 0; t < TK; t++)
                for (int64_t h = 0; h < HKV; h++) {
                    memset(bp->dk + b * bp->dk_s.b + t * bp->dk_s.t + h * bp->dk_s.h, 0,
                           (size_t)D * sizeof(float));
                    memset(bp->dv + b * bp->dv_s.b + t * bp->dv_s.t + h * bp->dv_s.h, 0,
                           (size_t)D * sizeof(float));
                }
        return DN_OK;
    }
    if (p->impl == DN_IMPL_REF) return dn_ref_attn_backward(bp);
    const dn_cpu_kernels *kern = dn_cpu();
    const int nt = dn_threads_for(p->n_threads);
    void *owned;
    void *ws = dn_scratch(NULL, 0, kern->attn_bwd_workspace(p, nt), &owned);
    if (!ws) return dn_fail(DN_ERR_ALLOC, "%s: cannot allocate the workspace", op);
    kern->attn_backward(bp, nt, ws);
    dn_free(owned);
    return DN_OK;
}

/* ---------------------------------------------------------------------------------------------
 * KV cache
 * ------------------------------------------------------------------------------------------- */
struct dn_kv_cache {
    int64_t B, HKV, D, cap, len;
    dn_dtype dtype;
    int flags;
    void *k, *v; /* [B,HKV,cap,D] */
};

static size_t dtype_size(dn_dtype t) { return t == DN_F32 ? 4 : 2; }

/* Bytes of one of the two stores at capacity cap; 0 when that passes 2^62 (so every byte
 * offset into the store, and twice the size, fits in int64). */
static size_t kv_bytes(int64_t B, int64_t HKV, int64_t D, int64_t cap, dn_dtype t) {
    int64_t n;
    if (!DN_PROD(&n, B, HKV, D, cap, (int64_t)dtype_size(t)) || n > ((int64_t)1 << 62)) return 0;
    return (size_t)n;
}

dn_status dn_kv_cache_create(dn_kv_cache **out, int64_t B, int64_t HKV, int64_t D, int64_t capacity,
                             dn_dtype dtype, int flags) {
    if (!out) return dn_fail(DN_ERR_NULL, "kv cache: out is NULL");
    if (B < 1 || HKV < 1 || D < 1 || D > 256 || capacity < 1)
        return dn_fail(DN_ERR_SHAPE,
                       "kv cache: need B, HKV, capacity >= 1 and 1 <= D <= 256 "
                       "(got B=%lld HKV=%lld D=%lld capacity=%lld)",
                       (long long)B, (long long)HKV, (long long)D, (long long)capacity);
    if ((unsigned)dtype >= DN_DTYPE_COUNT)
        return dn_fail(DN_ERR_ARG, "kv cache: unknown dtype %d", (int)dtype);
    if (flags & ~DN_KV_GROW) return dn_fail(DN_ERR_ARG, "kv cache: unknown flags 0x%x", flags);
    const size_t bytes = kv_bytes(B, HKV, D, capacity, dtype);
    if (!bytes)
        return dn_fail(DN_ERR_SHAPE,
                       "kv cache: B=%lld x HKV=%lld x D=%lld x capacity=%lld "
                       "overflows 64-bit sizes",
                       (long long)B, (long long)HKV, (long long)D, (long long)capacity);
    dn_kv_cache *c = dn_calloc(sizeof *c);
    if (c) {
        c->k = dn_alloc(bytes);
        c->v = dn_alloc(bytes);
    }
    if (!c || !c->k || !c->v) {
        if (c) dn_free(c->k), dn_free(c->v);
        dn_free(c);
        return dn_fail(DN_ERR_ALLOC, "kv cache: cannot allocate 2 x %zu bytes", bytes);
    }
    c->B = B, c->HKV = HKV, c->D = D, c->cap = capacity, c->len = 0;
    c->dtype = dtype, c->flags = flags;
    *out = c;
    return DN_OK;
}

void dn_kv_cache_free(dn_kv_cache *c) {
    if (!c) return;
    dn_free(c->k);
    dn_free(c->v);
    dn_free(c);
}

dn_status dn_kv_cache_reset(dn_kv_cache *c) {
    if (!c) return dn_fail(DN_ERR_NULL, "kv cache is NULL");
    c->len = 0;
    return DN_OK;
}

int64_t dn_kv_cache_len(const dn_kv_cache *c) { return c ? c->len : 0; }
int64_t dn_kv_cache_capacity(const dn_kv_cache *c) { return c ? c->cap : 0; }
size_t dn_kv_cache_bytes(const dn_kv_cache *c) {
    return c ? 2 * kv_bytes(c->B, c->HKV, c->D, c->cap, c->dtype) : 0;
}
size_t dn_kv_cache_used_bytes(const dn_kv_cache *c) {
    return c ? 2 * kv_bytes(c->B, c->HKV, c->D, c->len, c->dtype) : 0;
}

/* Moves the cache to a capacity of at least need tokens (doubling); the middle dimension
 * changes, so rows are re-laid. need > cap, and need passed kv_bytes' bound check. */
static dn_status kv_grow(dn_kv_cache *c, int64_t need) {
    int64_t cap = c->cap;
    while (cap < need)
        cap = cap > INT64_MAX / 2 ? need : 2 * cap;
    size_t bytes = kv_bytes(c->B, c->HKV, c->D, cap, c->dtype);
    if (!bytes) { /* doubling passed the bound: grow to exactly what is needed */
        cap = need;
        bytes = kv_bytes(c->B, c->HKV, c->D, cap, c->dtype);
    }
    char *k = dn_alloc(bytes), *v = dn_alloc(bytes);
    if (!k || !v) {
        dn_free(k);
        dn_free(v);
        return dn_fail(DN_ERR_ALLOC, "kv cache: cannot grow to %lld tokens", (long long)cap);
    }
    const size_t row = (size_t)c->D * dtype_size(c->dtype);
    for (int64_t bh = 0; bh < c->B * c->HKV; bh++) {
        memcpy(k + (size_t)bh * (size_t)cap * row, (char *)c->k + (size_t)bh * (size_t)c->cap * row,
               (size_t)c->len * row);
        memcpy(v + (size_t)bh * (size_t)cap * row, (char *)c->v + (size_t)bh * (size_t)c->cap * row,
               (size_t)c->len * row);
    }
    dn_free(c->k);
    dn_free(c->v);
    c->k = k, c->v = v, c->cap = cap;
    return DN_OK;
}

static void store_row(void *dst, const float *src, int64_t D, dn_dtype t) {
    if (t == DN_F32) {
        memcpy(dst, src, sizeof(float) * (size_t)D);
    } else if (t == DN_F16) {
        uint16_t *d = dst;
        for (int64_t i = 0; i < D; i++)
            d[i] = dn_f32_to_f16(src[i]);
    } else {
        uint16_t *d = dst;
        for (int64_t i = 0; i < D; i++)
            d[i] = dn_f32_to_bf16(src[i]);
    }
}

dn_status dn_kv_cache_append(dn_kv_cache *c, const float *k, dn_strides k_s, const float *v,
                             dn_strides v_s, int64_t T) {
    if (!c) return dn_fail(DN_ERR_NULL, "kv cache is NULL");
    if (T < 0) return dn_fail(DN_ERR_SHAPE, "kv cache append: T = %lld is negative", (long long)T);
    if (T == 0) return DN_OK;
    const char *op = "kv cache append";
    dn_arg a[2] = {{"k", k, k_s, c->B, T, c->HKV, c->D, 0, 0, 0},
                   {"v", v, v_s, c->B, T, c->HKV, c->D, 0, 0, 0}};
    dn_status st = dn_check_args(op, a, 2);
    if (st != DN_OK) return st;
    /* T > cap - len, not len + T > cap: the sum can pass INT64_MAX */
    if (T > c->cap - c->len) {
        if (!(c->flags & DN_KV_GROW))
            return dn_fail(DN_ERR_FULL,
                           "kv cache append: %lld + %lld tokens exceed the capacity %lld (create "
                           "the cache with DN_KV_GROW to let it grow)",
                           (long long)c->len, (long long)T, (long long)c->cap);
        if (T > INT64_MAX - c->len || !kv_bytes(c->B, c->HKV, c->D, c->len + T, c->dtype))
            return dn_fail(DN_ERR_FULL,
                           "kv cache append: %lld + %lld tokens overflow the cache's "
                           "64-bit size",
                           (long long)c->len, (long long)T);
        if ((st = kv_grow(c, c->len + T)) != DN_OK) return st;
    }
    const size_t row = (size_t)c->D * dtype_size(c->dtype);
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t h = 0; h < c->HKV; h++)
            for (int64_t t = 0; t < T; t++) {
                size_t off =
                    ((size_t)(b * c->HKV + h) * (size_t)c->cap + (size_t)(c->len + t)) * row;
                store_row((char *)c->k + off, k + b * k_s.b + t * k_s.t + h * k_s.h, c->D,
                          c->dtype);
                store_row((char *)c->v + off, v + b * v_s.b + t * v_s.t + h * v_s.h, c->D,
                          c->dtype);
            }
    c->len += T;
    return DN_OK;
}

dn_status dn_kv_cache_attend(const dn_kv_cache *c, float *o, dn_strides o_s, float *lse,
                             const float *q, dn_strides q_s, int64_t TQ, int64_t H, float scale,
                             int64_t window, int n_threads) {
    if (!c) return dn_fail(DN_ERR_NULL, "kv cache is NULL");
    const char *op = "kv cache attend";
    dn_status st = check_heads(op, H, c->HKV, c->D);
    if (st != DN_OK) return st;
    if (TQ < 1) return dn_fail(DN_ERR_SHAPE, "%s: TQ = %lld", op, (long long)TQ);
    if (!isfinite(scale)) return dn_fail(DN_ERR_ARG, "%s: scale must be finite", op);
    if (window < 0) return dn_fail(DN_ERR_ARG, "%s: window is negative", op);
    if (n_threads < 0) return dn_fail(DN_ERR_ARG, "%s: n_threads is negative", op);
    dn_arg a[3] = {{"q", q, q_s, c->B, TQ, H, c->D, 0, 0, 0},
                   {"o", o, o_s, c->B, TQ, H, c->D, 1, 0, 0},
                   {"lse", lse, dn_contiguous(H, TQ, 1), c->B, H, TQ, 1, 1, 1, 0}};
    if ((st = dn_check_args(op, a, 3)) != DN_OK) return st;
    dn_kv_view kv = {c->k, c->v, c->B, c->HKV, c->D, c->cap, c->len, c->dtype};
    const dn_cpu_kernels *kern = dn_cpu();
    int nt = dn_threads_for(n_threads);
    void *owned;
    void *ws = dn_scratch(NULL, 0, kern->decode_workspace(&kv, TQ, H, window, nt), &owned);
    if (!ws) return dn_fail(DN_ERR_ALLOC, "kv cache attend: cannot allocate the workspace");
    kern->decode(&kv, o, o_s, lse, q, q_s, TQ, H, scale, window, nt, ws);
    dn_free(owned);
    return DN_OK;
}
