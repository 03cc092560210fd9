/*
 * fuzz.c - contract fuzzer for every public call of libdeltanet.
 *
 * An input (a byte string) is decoded into an op family, an impl, shapes (small, zero, negative
 * or near INT64_MAX), strides per tensor (contiguous, padded, permuted, broadcast, overlapping,
 * negative, huge), options, aliasing between outputs and inputs, and a seed for the values
 * (normal, extreme but in contract, or out of contract: NaN/Inf, bad gates, huge keys). Every
 * buffer is allocated at its exact size so AddressSanitizer sees any access outside it.
 *
 * Properties, each an abort() naming the property and the call when violated:
 *   (a) no crash, no sanitizer report (the sanitizers and libFuzzer report these themselves);
 *   (b) a non-OK status leaves every buffer the call received byte-identical;
 *   (c) an OK status on finite in-contract inputs writes finite values to every output element,
 *       nothing outside the output views, nothing to the inputs, and (for the fast paths) matches
 *       DN_IMPL_REF to a relative RMS of 1e-3.
 * The file parsers of the model layer (JSON, safetensors) have their families in fuzz_files.c.
 * Two drivers share this code: LLVMFuzzerTestOneInput (make fuzz) and the test case
 * fuzz_bounded (a few thousand inputs from a fixed seed inside the normal test driver).
 */
#include "fuzz.h"
#include "test.h"

#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Largest buffer the harness allocates, in floats; views past it are only made "huge" (past
 * 2^61 elements or overflowing), which the library must reject before touching memory. */
#define FZ_LIMIT (1 << 17)
#define FZ_HUGE ((int64_t)1 << 61)
#define FZ_MAXBUF 40
#define FZ_TOL 1e-3

static const char *family_names[FZ_FAMILY_COUNT] = {
    [FZ_LA_FWD] = "la_fwd",
    [FZ_LA_STEP] = "la_step",
    [FZ_LA_BWD] = "la_bwd",
    [FZ_LA_TRAIN] = "la_train",
    [FZ_ATTN_FWD] = "attn_fwd",
    [FZ_ATTN_BWD] = "attn_bwd",
    [FZ_KV] = "kv",
    [FZ_MAMBA] = "mamba",
    [FZ_MAMBA_BWD] = "mamba_bwd",
    [FZ_MAMBA2] = "mamba2",
    [FZ_MAMBA2_BWD] = "mamba2_bwd",
    [FZ_RWKV4] = "rwkv4",
    [FZ_RWKV4_BWD] = "rwkv4_bwd",
    [FZ_CONV] = "conv",
    [FZ_CONV_BWD] = "conv_bwd",
    [FZ_NAMES] = "names",
    [FZ_JSON] = "json",
    [FZ_SAFETENSORS] = "safetensors",
    [FZ_CHECKPOINT] = "checkpoint",
    [FZ_TOKENIZER] = "tokenizer",
    [FZ_HF] = "hf",
};

const char *dn_fuzz_family_name(int f) {
    return f >= 0 && f < FZ_FAMILY_COUNT ? family_names[f] : "?";
}
int dn_fuzz_family_from_name(const char *name) {
    for (int f = 0; f < FZ_FAMILY_COUNT; f++)
        if (!strcmp(name, family_names[f])) return f;
    return -1;
}

static int has_gate(dn_op op) { return op == DN_OP_GLA || op == DN_OP_GDN; }
static int has_delta(dn_op op) { return op == DN_OP_DELTANET || op == DN_OP_GDN; }

/* ---- the input ---- */
typedef struct {
    const uint8_t *d;
    size_t n, i;
} fz;
static unsigned u8(fz *f) { return f->i < f->n ? f->d[f->i++] : 0; }
static unsigned pick(fz *f, unsigned n) { return u8(f) % n; }
static uint64_t u64(fz *f) {
    uint64_t x = 0;
    for (int i = 0; i < 8; i++)
        x = x << 8 | u8(f);
    return x;
}

static const int64_t special_dims[8] = {-1,
                                        INT64_MIN,
                                        INT64_MAX,
                                        INT64_MAX / 2 + 1,
                                        (int64_t)1 << 62,
                                        3037000500LL,
                                        ((int64_t)1 << 32) + 1,
                                        0};
/* A dimension in [lo, hi] most of the time, else one of the special values above. */
static int64_t dim(fz *f, int64_t lo, int64_t hi) {
    unsigned b = u8(f);
    if (b >= 248) return special_dims[b - 248];
    return lo + (int64_t)(b % (unsigned)(hi - lo + 1));
}

/* ---- buffers ---- */
typedef struct {
    float *p; /* exact-size allocation */
    size_t bytes;
    float *snap;   /* contents before the call */
    float *res;    /* results of the call under test (for the comparison with the reference) */
    uint8_t *mask; /* per float: 1 where an output view (written element) lies */
    int out;       /* an output view points here */
    int raw;       /* opaque bytes (workspace, saved, cu_seqlens): no float checks */
    int nocompare; /* an output that the reference does not produce identically */
    int neginf_ok; /* -inf is a documented value (lse of a row that sees no key) */
    int scale_of;  /* > 0: 1 + the buffer whose reference RMS floors this one's error scale */
} fbuf;

typedef struct {
    fz *f;
    rng r;
    const char *call; /* the call under test, for messages */
    fbuf b[FZ_MAXBUF];
    int nb;
    int ic;    /* in contract: finite values in range, valid options, no illegal aliasing */
    int vmode; /* 0 normal, 1 extreme in contract, 2 out of contract */
    int alias; /* an output shares memory with something other than its in-place twin */
    int skip;  /* a tensor too big to allocate yet addressable: the case is not run */
} ctx;

/* Under libFuzzer a violation aborts (the fuzzer reports and saves the input); in the bounded
 * loop of the test driver it is counted and the loop goes on to the next input. */
static jmp_buf *bounded_jmp;
static void fz_fail(ctx *c, const char *prop, const char *detail) {
    fprintf(stderr, "deltanet fuzz: property %s violated by %s: %s (last error: %s)\n", prop,
            c->call, detail, dn_last_error());
    if (bounded_jmp) longjmp(*bounded_jmp, 1);
    abort();
}

static int buf_new(ctx *c, size_t bytes, int raw) {
    if (c->nb == FZ_MAXBUF) {
        fprintf(stderr, "deltanet fuzz: too many buffers\n");
        abort();
    }
    fbuf *b = &c->b[c->nb];
    memset(b, 0, sizeof *b);
    b->bytes = bytes;
    b->p = malloc(bytes ? bytes : 1);
    b->snap = malloc(bytes ? bytes : 1);
    b->res = malloc(bytes ? bytes : 1);
    b->mask = calloc(bytes / sizeof(float) + 1, 1);
    b->raw = raw;
    if (!b->p || !b->snap || !b->res || !b->mask) {
        fprintf(stderr, "deltanet fuzz: out of memory\n");
        abort();
    }
    return c->nb++;
}

static void ctx_free(ctx *c) {
    for (int i = 0; i < c->nb; i++) {
        free(c->b[i].p);
        free(c->b[i].snap);
        free(c->b[i].res);
        free(c->b[i].mask);
    }
    c->nb = 0;
}

static const uint32_t CANARY = 0x7fc0deadu; /* a quiet NaN: unwritten output elements show */
static void fill_canary(fbuf *b) {
    uint8_t *p = (uint8_t *)b->p;
    for (size_t i = 0; i < b->bytes; i++)
        p[i] = (uint8_t)(CANARY >> (8 * (i & 3)));
}

/* Value kinds of an input tensor. */
enum { V_ANY = 0, V_KEY, V_GATE, V_BETA, V_NEG, V_DT, V_POS, V_STATE_RWKV, V_BIGKEY, V_RAWGATE };

static float value(ctx *c, int kind, int64_t i) {
    rng *r = &c->r;
    if (c->vmode == 2 && (rng_next(r) & 15) == 0) {
        static const float bad[] = {NAN, INFINITY, -INFINITY, 1e30f, -1e30f, 3e38f, 1e-40f, -0.f};
        return bad[rng_next(r) & 7];
    }
    float x = rng_uniform(r, -1, 1);
    switch (kind) {
    case V_KEY: return x; /* scaled by the caller for delta ops */
    case V_GATE:
        if (c->vmode == 2) return rng_uniform(r, -5, 20);
        if (c->vmode == 1) {
            uint64_t m = rng_next(r) & 7;
            if (m == 0) return -INFINITY;
            if (m == 1) return -1e4f;
            if (m == 2) return 0.f;
            if (m == 3) return -80.f;
        }
        return rng_uniform(r, -1, 0);
    case V_BETA:
        if (c->vmode == 2) return rng_uniform(r, -3, 5);
        if (c->vmode == 1) {
            uint64_t m = rng_next(r) & 3;
            return m == 0 ? 0.f : m == 1 ? 2.f : rng_uniform(r, 0, 2);
        }
        return rng_uniform(r, 0, 1);
    case V_NEG: /* Mamba's A: negative */
        if (c->vmode == 1 && (rng_next(r) & 3) == 0) return -1e3f;
        return rng_uniform(r, -2, -0.05f);
    case V_DT: return rng_uniform(r, 0, 0.5f);
    case V_POS: return rng_uniform(r, 0.1f, 2);
    case V_BIGKEY:
        if (c->vmode == 1) return rng_uniform(r, -500, 500);
        return x;
    case V_RAWGATE: /* gate_a, A_log, dt_bias, gate_b: softplus's 0 and linear ends, exp(80) */
        if (c->vmode == 1) {
            uint64_t m = rng_next(r) & 7;
            if (m == 0) return -1e4f;
            if (m == 1) return 30.f;
            if (m == 2) return 80.f;
        }
        return rng_uniform(r, -6, 6);
    case V_STATE_RWKV: { /* rows num, den, m of one [3,C] block: i is the flat index */
        return x;        /* fixed up by the caller */
    }
    default: (void)i; return x;
    }
}

static void fill_values(ctx *c, int bi, int kind) {
    fbuf *b = &c->b[bi];
    int64_t n = (int64_t)(b->bytes / sizeof(float));
    for (int64_t i = 0; i < n; i++)
        b->p[i] = value(c, kind, i);
}

/* ---- views ---- */
typedef struct {
    int64_t n0, n1, n2, D;
    dn_strides s;
    int64_t ext;  /* floats the view spans; -1: huge (tiny buffer, must be rejected) */
    int neg;      /* a negative stride */
    int legit;    /* a layout in contract for an input (contiguous, padded, permuted, broadcast) */
    int disjoint; /* rows do not share elements (required of outputs) */
} view;

/* Views spanning more than 2^61 floats (whose byte size overflows int64) yet fewer than 2^63:
 * the library accepts them today (finding 2 in the report), so by default they are skipped. */
static int byte_mode(void) {
    static int m = -1;
    if (m < 0) m = getenv("DN_FUZZ_BYTE_EXTENT") != NULL;
    return m;
}

static int64_t clamp0(int64_t x) { return x < 0 ? 0 : x; }

/* 128-bit product saturating at 2^100 (the harness only asks "past 2^63?") */
static __int128 smul(__int128 a, __int128 b) {
    const __int128 cap = (__int128)1 << 100;
    if (a > cap) a = cap;
    if (b > cap) b = cap;
    if (a != 0 && b > cap / a) return cap;
    return a * b;
}

/* Extent and element count with 128-bit arithmetic. */
static void view_measure(view *v) {
    int64_t n[4] = {v->n0, v->n1, v->n2, v->D};
    int64_t st[4] = {v->s.b, v->s.t, v->s.h, 1};
    __int128 ext = 1, count = 1;
    int empty = 0;
    for (int i = 0; i < 4; i++) {
        if (n[i] <= 0) empty = 1;
        count = smul(count, clamp0(n[i]));
    }
    v->neg = v->s.b < 0 || v->s.t < 0 || v->s.h < 0;
    if (empty) {
        v->ext = 0;
        return;
    }
    for (int i = 0; i < 4; i++) {
        __int128 s = st[i] < 0 ? -(__int128)st[i] : (__int128)st[i];
        ext += smul((__int128)(n[i] - 1), s);
    }
    if (ext > INT64_MAX || count > INT64_MAX ||
        ((ext > FZ_HUGE || count > FZ_HUGE) && byte_mode())) {
        v->ext = -1;
        return;
    }
    if (ext > FZ_HUGE || count > FZ_HUGE) {
        v->ext = -2; /* fits int64 elements but not bytes: DN_FUZZ_BYTE_EXTENT=1 tries those */
        return;
    }
    if (ext > FZ_LIMIT || count > (__int128)FZ_LIMIT * 4) {
        v->ext = -2; /* big but addressable: not generated (the harness cannot allocate it) */
        return;
    }
    v->ext = (int64_t)ext;
}

static int rows_disjoint(const view *v) {
    /* rows (n0 x n1 x n2 of D) disjoint: sort the three strides over axes of size > 1 and check
     * each exceeds the span of the smaller ones */
    int64_t st[3] = {v->s.b, v->s.t, v->s.h}, n[3] = {v->n0, v->n1, v->n2};
    int64_t ss[3], nn[3];
    int k = 0;
    for (int i = 0; i < 3; i++)
        if (n[i] > 1) ss[k] = st[i], nn[k] = n[i], k++;
    for (int i = 1; i < k; i++)
        for (int j = i; j > 0 && ss[j] < ss[j - 1]; j--) {
            int64_t t = ss[j];
            ss[j] = ss[j - 1], ss[j - 1] = t;
            t = nn[j], nn[j] = nn[j - 1], nn[j - 1] = t;
        }
    __int128 span = v->D;
    for (int i = 0; i < k; i++) {
        if (ss[i] < span) return 0;
        span = smul(ss[i], nn[i] - 1) + span;
    }
    return 1;
}

/* Picks a layout for an [n0,n1,n2,D] view. mode_max bounds the layouts tried: inputs take any,
 * contiguous-only tensors pass 1. */
static view pick_view(ctx *c, int64_t n0, int64_t n1, int64_t n2, int64_t D, int allow) {
    view v = {n0, n1, n2, D, {0, 0, 0}, 0, 0, 1, 1};
    int64_t a0 = clamp0(n0), a1 = clamp0(n1), a2 = clamp0(n2), d = clamp0(D);
    unsigned m = allow ? u8(c->f) : 0;
    /* contiguous (often), padded, permuted, broadcast, overlapping rows, negative, huge */
    unsigned mode = m < 128   ? 0
                    : m < 160 ? 1
                    : m < 184 ? 2
                    : m < 204 ? 3
                    : m < 220 ? 4
                    : m < 236 ? 5
                              : 6;
    /* saturating arithmetic for the strides of huge dims: they are rejected anyway */
    __int128 h = d, t = smul(a2, d), b = smul(smul(a1, a2), d);
    switch (mode) {
    case 1: {
        int64_t p1 = pick(c->f, 5), p2 = pick(c->f, 9), p3 = pick(c->f, 17);
        h = (__int128)d + p1;
        t = smul(a2, (__int128)d + p1) + p2;
        b = smul(a1, t) + p3;
        break;
    }
    case 2: /* t outermost: (T, B, H, D) in memory */
        h = d;
        b = smul(a2, d);
        t = smul(smul(a0, a2), d);
        break;
    case 3: {
        unsigned w = pick(c->f, 3);
        if (w == 0) h = 0;
        if (w == 1) t = 0;
        if (w == 2) b = 0;
        break;
    }
    case 4: /* rows overlapping partially */ h = d > 1 ? d / 2 : 0; break;
    case 5: {
        unsigned w = pick(c->f, 3);
        int64_t neg = pick(c->f, 2) ? -1 : -(int64_t)d;
        if (w == 0) h = neg;
        if (w == 1) t = neg;
        if (w == 2) b = neg;
        break;
    }
    case 6: {
        static const int64_t huge[4] = {INT64_MAX, INT64_MAX / 2, (int64_t)1 << 40, INT64_MAX / 3};
        int64_t s = huge[pick(c->f, 4)];
        unsigned w = pick(c->f, 3);
        if (w == 0) h = s;
        if (w == 1) t = s;
        if (w == 2) b = s;
        break;
    }
    }
    const __int128 cap = INT64_MAX;
    v.s.h = (int64_t)(h > cap ? cap : h);
    v.s.t = (int64_t)(t > cap ? cap : t);
    v.s.b = (int64_t)(b > cap ? cap : b);
    view_measure(&v);
    v.legit = mode <= 3 && !v.neg && v.ext >= 0;
    v.disjoint = !v.neg && rows_disjoint(&v);
    return v;
}

/* Marks the elements of view v at offset off of buffer bi as output elements. */
static void mark_out(ctx *c, int bi, int64_t off, const view *v) {
    fbuf *b = &c->b[bi];
    b->out = 1;
    if (v->ext <= 0 || v->neg) return;
    for (int64_t i0 = 0; i0 < v->n0; i0++)
        for (int64_t i1 = 0; i1 < v->n1; i1++)
            for (int64_t i2 = 0; i2 < v->n2; i2++)
                for (int64_t j = 0; j < v->D; j++) {
                    int64_t o = off + i0 * v->s.b + i1 * v->s.t + i2 * v->s.h + j;
                    if (o >= 0 && (size_t)o < b->bytes / sizeof(float)) b->mask[o] = 1;
                }
}

/* Allocates a buffer for a view (and extra floats), or a tiny one for a huge view. */
static int view_buf(ctx *c, const view *v, int64_t extra) {
    if (v->ext < 0) {
        c->ic = 0;
        return buf_new(c, 8 * sizeof(float), 0);
    }
    return buf_new(c, sizeof(float) * (size_t)(v->ext + extra), 0);
}

static int big_view(const view *v) { return v->ext == -2; }

/* An input view with values of the given kind. */
static const float *in_view(ctx *c, view *v, int kind, int *bi_out) {
    if (!v->legit) c->ic = 0;
    int bi = view_buf(c, v, 0);
    fill_values(c, bi, kind);
    if (bi_out) *bi_out = bi;
    return c->b[bi].p;
}

/* An output view: its own buffer, canary-filled. */
static float *out_view(ctx *c, view *v, int *bi_out) {
    if (!v->legit || !v->disjoint) c->ic = 0;
    int bi = view_buf(c, v, 0);
    fill_canary(&c->b[bi]);
    mark_out(c, bi, 0, v);
    if (bi_out) *bi_out = bi;
    return c->b[bi].p;
}

/* A contiguous tensor of n floats: input (kind), output (canary) or accumulated (finite). */
static float *flat(ctx *c, int64_t n, int kind, int output, int accumulate, int *bi_out) {
    int64_t nn = n < 0 ? 0 : n;
    int bi;
    if (nn > FZ_LIMIT) {
        c->ic = 0;
        if (nn != INT64_MAX) c->skip = 1;
        bi = buf_new(c, 8 * sizeof(float), 0);
    } else {
        bi = buf_new(c, sizeof(float) * (size_t)nn, 0);
    }
    fbuf *b = &c->b[bi];
    if (output && !accumulate) {
        fill_canary(b);
    } else {
        fill_values(c, bi, kind);
    }
    if (output) {
        b->out = 1;
        if (nn <= FZ_LIMIT) memset(b->mask, 1, (size_t)nn);
    }
    if (bi_out) *bi_out = bi;
    return b->p;
}

/* A contiguous [n] tensor whose product of dims may overflow: n from 128-bit dims. */
static int64_t prod(int k, const int64_t *d) {
    __int128 p = 1;
    for (int i = 0; i < k; i++) {
        if (d[i] <= 0) return 0;
        p *= d[i];
        if (p > INT64_MAX) return INT64_MAX;
    }
    if (p > FZ_HUGE) return byte_mode() ? INT64_MAX : FZ_HUGE + 1; /* skipped by flat() */
    return (int64_t)p;
}
#define PROD(...)                                                                                  \
    prod((int)(sizeof((const int64_t[]){__VA_ARGS__}) / sizeof(int64_t)),                          \
         (const int64_t[]){__VA_ARGS__})

/* The *_params_default functions compute contiguous strides as plain products, which overflow
 * (undefined behaviour) for huge dims: finding 4 in the report. Unless DN_FUZZ_DEFAULTS=1, the
 * harness calls them with small dims and sets the real ones after (every stride is set anyway). */
static int64_t sd(int64_t x) {
    static int m = -1;
    if (m < 0) m = getenv("DN_FUZZ_DEFAULTS") != NULL;
    return m || (x >= 0 && x <= (1 << 20)) ? x : 1;
}

/* ---- running a call and checking the contract ---- */
typedef dn_status (*call_fn)(ctx *c, void *params, int ref);

static void snapshot(ctx *c) {
    for (int i = 0; i < c->nb; i++)
        memcpy(c->b[i].snap, c->b[i].p, c->b[i].bytes);
}
static void restore(ctx *c) {
    for (int i = 0; i < c->nb; i++)
        memcpy(c->b[i].p, c->b[i].snap, c->b[i].bytes);
}

static int finite_f(float x) { return isfinite(x); }

/* Relative RMS of got against ref over the masked elements, with an absolute floor. */
static double masked_err(const fbuf *b, const float *got, const float *ref, int64_t *worst,
                         double floor_rms) {
    double num = 0, den = 0, wd = -1;
    int64_t n = (int64_t)(b->bytes / sizeof(float)), cnt = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!b->mask[i]) continue;
        cnt++;
        double d = (double)got[i] - (double)ref[i];
        if (!isfinite(ref[i]) || !isfinite(got[i])) {
            if (memcmp(&got[i], &ref[i], 4) && !(isnan(got[i]) && isnan(ref[i]))) {
                *worst = i;
                return INFINITY;
            }
            continue;
        }
        num += d * d;
        den += (double)ref[i] * ref[i];
        if (fabs(d) > wd) wd = fabs(d), *worst = i;
    }
    /* an output with no elements (T = 0: an empty view, a 0-byte buffer) has nothing to differ;
     * without this the ratio is 0/0 and the report reads [0] past the end of the buffer */
    if (cnt == 0) return 0;
    return sqrt(num / (den + (1e-10 + floor_rms * floor_rms) * (double)cnt));
}

/* Runs the call under test and checks properties (b) and (c). Returns its status. */
static dn_status exec(ctx *c, const char *name, call_fn fn, void *params, int is_ref) {
    char msg[256];
    c->call = name;
    if (c->skip) return DN_ERR_ARG;
    snapshot(c);
    dn_status st = fn(c, params, 0);
    if ((unsigned)st >= DN_STATUS_COUNT) fz_fail(c, "status-in-range", "unknown status code");
    if (st != DN_OK) {
        for (int i = 0; i < c->nb; i++)
            if (memcmp(c->b[i].p, c->b[i].snap, c->b[i].bytes)) {
                size_t j = 0;
                while (((uint8_t *)c->b[i].p)[j] == ((uint8_t *)c->b[i].snap)[j])
                    j++;
                snprintf(msg, sizeof msg, "status %s but buffer %d (%s) changed at byte %zu",
                         dn_status_str(st), i, c->b[i].out ? "output" : "input", j);
                fz_fail(c, "(b) error-writes-nothing", msg);
            }
        return st;
    }
    /* inputs that no output view shares are read only */
    for (int i = 0; i < c->nb; i++)
        if (!c->b[i].out && memcmp(c->b[i].p, c->b[i].snap, c->b[i].bytes)) {
            snprintf(msg, sizeof msg, "input buffer %d changed", i);
            fz_fail(c, "(c) inputs-read-only", msg);
        }
    if (!c->ic || c->alias) return st;
    for (int i = 0; i < c->nb; i++) {
        fbuf *b = &c->b[i];
        if (!b->out || b->raw) continue;
        int64_t n = (int64_t)(b->bytes / sizeof(float));
        for (int64_t j = 0; j < n; j++) {
            if (b->mask[j] && !finite_f(b->p[j]) && !(b->neginf_ok && b->p[j] == -INFINITY)) {
                snprintf(msg, sizeof msg, "output buffer %d element %lld is %g (%s)", i,
                         (long long)j, b->p[j],
                         memcmp(&b->p[j], &CANARY, 4) ? "computed" : "never written");
                fz_fail(c, "(c) ok-outputs-finite", msg);
            }
            if (!b->mask[j] && memcmp(&b->p[j], &b->snap[j], 4)) {
                snprintf(msg, sizeof msg, "output buffer %d element %lld outside the view written",
                         i, (long long)j);
                fz_fail(c, "(c) writes-inside-views", msg);
            }
        }
    }
    if (is_ref) return st;
    /* the same call through the reference */
    for (int i = 0; i < c->nb; i++)
        memcpy(c->b[i].res, c->b[i].p, c->b[i].bytes);
    restore(c);
    dn_status sr = fn(c, params, 1);
    if (sr != DN_OK) {
        snprintf(msg, sizeof msg, "fast path OK but the reference says %s", dn_status_str(sr));
        fz_fail(c, "(c) ref-agrees-on-status", msg);
    }
    for (int i = 0; i < c->nb; i++) {
        fbuf *b = &c->b[i];
        if (!b->out || b->raw || b->nocompare) continue;
        int64_t w = 0;
        double fl = 0;
        if (b->scale_of > 0) { /* the reference RMS of the buffer that sets the scale */
            const fbuf *s = &c->b[b->scale_of - 1];
            int64_t ns = (int64_t)(s->bytes / sizeof(float)), cnt = 0;
            for (int64_t j = 0; j < ns; j++)
                if (s->mask[j] && isfinite(s->p[j])) fl += (double)s->p[j] * s->p[j], cnt++;
            fl = cnt ? sqrt(fl / (double)cnt) : 0;
        }
        double e = masked_err(b, b->res, b->p, &w, fl);
        if (!(e <= FZ_TOL)) {
            snprintf(msg, sizeof msg,
                     "output buffer %d (%lld floats): rel RMS %.3g vs DN_IMPL_REF (worst "
                     "[%lld] got %.9g ref %.9g)",
                     i, (long long)(b->bytes / sizeof(float)), e, (long long)w, b->res[w], b->p[w]);
            fz_fail(c, "(c) matches-reference", msg);
        }
    }
    return st;
}

/* ---- common option decoders ---- */
static dn_impl pick_impl(ctx *c, int nvalid) {
    unsigned m = u8(c->f);
    if (m >= 250) {
        c->ic = 0;
        return m & 1 ? (dn_impl)-1 : (dn_impl)(DN_IMPL_COUNT + (m & 7));
    }
    return (dn_impl)(m % (unsigned)nvalid);
}
static int pick_threads(ctx *c) {
    unsigned m = u8(c->f);
    if (m >= 252) {
        c->ic = 0;
        return m == 252 ? -1 : m == 253 ? INT_MIN : m == 254 ? 64 : 1000;
    }
    return (int)(m % 4);
}
static float pick_scale(ctx *c, float dflt) {
    unsigned m = u8(c->f);
    if (m < 200) return dflt;
    static const float s[8] = {0.5f, 1.f, 0.f, -1.f, NAN, INFINITY, -INFINITY, 1e30f};
    m &= 7;
    if (m >= 2) c->ic = 0;
    return s[m];
}
static void maybe_set_isa(ctx *c) {
    unsigned m = u8(c->f);
    if (m >= 240)
        dn_set_isa((dn_isa)((int)(m % 5) - 1)); /* also -1 and DN_ISA_COUNT */
    else if (m >= 200)
        dn_set_isa(dn_isa_best());
}
static void pick_vmode(ctx *c) {
    unsigned m = u8(c->f);
    c->vmode = m < 150 ? 0 : m < 210 ? 1 : 2;
    if (c->vmode == 2) c->ic = 0;
    c->r.s = u64(c->f);
}

/* Scales a key buffer by 1/sqrt(K) so that the delta rule with beta <= 2 stays bounded. */
static void scale_keys(ctx *c, int bi, int64_t K) {
    if (K <= 0 || c->vmode == 2) return;
    float s = (float)(1.0 / sqrt((double)K));
    fbuf *b = &c->b[bi];
    for (size_t i = 0; i < b->bytes / sizeof(float); i++)
        b->p[i] *= s;
}

/* ======================================================================================== */
/* Linear-attention family                                                                    */
/* ======================================================================================== */

typedef struct {
    dn_la_params p;
    dn_la_bwd_params bp;
    int use_saved;
    void *saved;
    size_t saved_bytes;
} la_case;

static dn_la_params la_build(ctx *c, int fwd_outputs) {
    fz *f = c->f;
    unsigned opm = u8(f);
    dn_op op = (dn_op)(int)(opm % 4);
    if (opm >= 252) op = (dn_op)(opm == 252 ? -1 : 4 + (int)(opm & 3) * 2), c->ic = 0;
    int64_t B = dim(f, 1, 3), T = dim(f, 0, 40), H = dim(f, 1, 3), g = dim(f, 1, 2);
    int64_t HV = g >= 1 && g <= 2 && H > 0 && H < 4 ? H * g : g;
    if (pick(f, 16) == 0) HV = dim(f, 1, 5); /* maybe not a multiple */
    int64_t K = dim(f, 1, 20), V = dim(f, 1, 20);
    if (pick(f, 8) == 0) K = 64 + pick(f, 3) * 32, V = 16 + pick(f, 3) * 24;
    if (B < 1 || T < 0 || H < 1 || HV < 1 || K < 1 || V < 1 || HV % H) c->ic = 0;
    dn_la_params p = dn_la_params_default(op, sd(B), sd(T), sd(H), sd(HV), sd(K), sd(V));
    p.B = B, p.T = T, p.H = H, p.HV = HV, p.K = K, p.V = V;
    pick_vmode(c);
    p.impl = pick_impl(c, 4);
    p.n_threads = pick_threads(c);
    p.scale = pick_scale(c, p.scale);
    p.qk_l2norm = pick(f, 2);
    static const int chunks[8] = {64, 16, 32, 128, 64, 0, 7, 1 << 30};
    unsigned cm = pick(f, 8);
    p.chunk_size = chunks[cm];
    if (cm >= 5) c->ic = 0;

    /* variable-length batches */
    unsigned cu = pick(f, 8);
    int64_t NS = B;
    if (cu >= 6 && B == 1 && T >= 0 && T <= 40) {
        int64_t N = 1 + pick(f, 4);
        int bi = buf_new(c, sizeof(int64_t) * (size_t)(N + 1), 1);
        int64_t *cs = (int64_t *)c->b[bi].p;
        cs[0] = 0;
        for (int64_t i = 1; i < N; i++) {
            int64_t x = cs[i - 1] + pick(f, (unsigned)(T + 1));
            cs[i] = x > T ? T : x;
        }
        cs[N] = T;
        unsigned bad = pick(f, 8);
        if (bad == 1) cs[0] = 1, c->ic = 0;
        if (bad == 2 && N > 1) cs[1] = -5, c->ic = 0;
        if (bad == 3) cs[N] = T + 1, c->ic = 0;
        if (bad == 4) cs[N] = INT64_MAX, c->ic = 0;
        if (bad == 5 && N > 1) cs[N - 1] = T + 3, c->ic = 0;
        p.cu_seqlens = cs;
        p.n_seqs = N;
        if (bad == 6) p.n_seqs = pick(f, 2) ? 0 : -3, c->ic = 0;
        NS = p.n_seqs > 0 ? p.n_seqs : 0;
    } else if (cu == 7) {
        /* cu_seqlens with B != 1 (must be rejected) */
        int bi = buf_new(c, sizeof(int64_t) * 2, 1);
        int64_t *cs = (int64_t *)c->b[bi].p;
        cs[0] = 0, cs[1] = T;
        p.cu_seqlens = cs;
        p.n_seqs = 1;
        NS = 1;
        if (B != 1) c->ic = 0;
    }

    int dl = has_delta(op) || (opm >= 252);
    view vq = pick_view(c, B, T, H, K, 1), vk = pick_view(c, B, T, H, K, 1);
    view vv = pick_view(c, B, T, HV, V, 1), vg = pick_view(c, B, T, HV, 1, 1);
    view vb = pick_view(c, B, T, HV, 1, 1);
    /* a view too large to back with memory (valid, but no buffer can hold it): skip the input
     * (g and beta too: a valid 2^40-element g view once read past the harness's 8 floats) */
    if (big_view(&vq) || big_view(&vk) || big_view(&vv) || big_view(&vg) || big_view(&vb))
        return p; /* caller sees c->nb==skip */
    int bk;
    p.q = in_view(c, &vq, V_ANY, NULL), p.q_s = vq.s;
    p.k = in_view(c, &vk, V_KEY, &bk), p.k_s = vk.s;
    if (dl && !p.qk_l2norm) scale_keys(c, bk, K);
    p.v = in_view(c, &vv, V_ANY, NULL), p.v_s = vv.s;
    unsigned gm = pick(f, 16);
    int want_g = has_gate(op), want_b = has_delta(op);
    if (gm == 0) want_g = !want_g, c->ic = 0;
    if (gm == 1) want_b = !want_b, c->ic = 0;
    if (want_g) p.g = in_view(c, &vg, V_GATE, NULL), p.g_s = vg.s;
    if (want_b) p.beta = in_view(c, &vb, V_BETA, NULL), p.beta_s = vb.s;

    /* outputs and states, with aliasing */
    int64_t ns = PROD(NS, HV, K, V);
    unsigned am = u8(f);
    unsigned amode = am < 140 || !fwd_outputs ? 0 : 1 + am % 7;
    int has_init = pick(f, 3) != 0, has_final = pick(f, 3) != 0;
    view vo = pick_view(c, B, T, HV, V, 1);
    if (big_view(&vo) || (ns > FZ_LIMIT * 2 && ns != INT64_MAX)) {
        p.o = NULL; /* harness can't build it: skip */
        c->ic = -1;
        return p;
    }
    int bo = -1;
    if (amode == 1 && vo.ext >= 0 && vv.ext >= 0 && !memcmp(&vo.s, &vv.s, sizeof vo.s)) {
        /* o == v exactly */
        p.o = (float *)p.v;
        p.o_s = vv.s;
        mark_out(c, c->nb - 1 - (want_g ? 1 : 0) - (want_b ? 1 : 0), 0, &vo);
        c->alias = 1, c->ic = 0;
    } else {
        p.o = out_view(c, &vo, &bo);
        p.o_s = vo.s;
    }
    if (!fwd_outputs) {
        /* the backward ignores fwd.o and fwd.final_state: read-only to it */
        c->b[c->nb - 1].out = 0;
        memset(c->b[c->nb - 1].mask, 0, c->b[c->nb - 1].bytes / sizeof(float) + 1);
    }
    if (amode == 2 && fwd_outputs && has_final && bo >= 0 && vo.ext > 0) {
        /* final_state inside o's buffer (o's view not empty: with T = 0 the two would not
         * overlap, and a state of ns floats at o + 1 would lie outside the buffer) */
        float *st = flat(c, ns, V_ANY, 0, 0, NULL);
        if (has_init) p.initial_state = st;
        p.final_state = p.o + (c->b[bo].bytes / sizeof(float) > 1 ? 1 : 0);
        c->b[bo].out = 1;
        memset(c->b[bo].mask, 1, c->b[bo].bytes / sizeof(float));
        c->alias = 1, c->ic = 0;
        return p;
    }
    if (amode == 3 && has_init && has_final && ns > 1 && ns <= FZ_LIMIT) {
        /* initial and final overlapping partially */
        int64_t shift = 1 + (int64_t)pick(f, 255) % (ns - 1);
        int bi = buf_new(c, sizeof(float) * (size_t)(ns + shift), 0);
        fill_values(c, bi, V_ANY);
        c->b[bi].out = 1;
        memset(c->b[bi].mask, 1, (size_t)(ns + shift));
        p.initial_state = c->b[bi].p;
        p.final_state = c->b[bi].p + shift;
        c->alias = 1, c->ic = 0;
        return p;
    }
    if (amode == 4 && has_final) {
        /* final_state == q (an input) */
        if (vq.ext >= ns) {
            p.final_state = (float *)p.q;
            c->b[0 + (p.cu_seqlens ? 1 : 0)].out = 1;
            c->alias = 1, c->ic = 0;
            if (has_init) p.initial_state = flat(c, ns, V_ANY, 0, 0, NULL);
            return p;
        }
    }
    if (has_init) p.initial_state = flat(c, ns, V_ANY, 0, 0, NULL);
    if (has_final) {
        if (amode == 5 && has_init && fwd_outputs) {
            p.final_state = (float *)p.initial_state; /* in place: in contract */
            c->b[c->nb - 1].out = 1;
            memset(c->b[c->nb - 1].mask, 1, c->b[c->nb - 1].bytes / sizeof(float));
        } else {
            p.final_state = flat(c, ns, V_ANY, fwd_outputs, 0, NULL);
        }
    }
    unsigned nm = pick(f, 32);
    if (nm == 0) p.q = NULL, c->ic = 0;
    if (nm == 1) p.o = NULL, c->ic = 0;
    return p;
}

static dn_status la_fwd_call(ctx *c, void *v, int ref) {
    (void)c;
    la_case *lc = v;
    dn_la_params p = lc->p;
    if (ref) p.impl = DN_IMPL_REF, p.workspace = NULL;
    return dn_la_forward(&p);
}

static void la_workspace(ctx *c, dn_la_params *p, int bwd_ws, dn_la_bwd_params *bp) {
    unsigned wm = pick(c->f, 8);
    if (wm < 5) return;
    size_t need = 0;
    dn_status st =
        bwd_ws ? dn_la_backward_workspace_size(bp, &need) : dn_la_workspace_size(p, &need);
    if (st != DN_OK || need > (size_t)FZ_LIMIT * 16) return;
    size_t bytes = wm == 6 && need > 0 ? need - 1 : need;
    int bi = buf_new(c, bytes + 64, 1);
    c->b[bi].out = 1;
    memset(c->b[bi].p, 0x5a, bytes + 64);
    uint8_t *base = (uint8_t *)c->b[bi].p;
    uint8_t *al = (uint8_t *)(((uintptr_t)base + 63) & ~(uintptr_t)63);
    if (wm == 7) al += 4; /* misaligned */
    /* keep it inside the allocation */
    if (al + bytes > base + bytes + 64) al = base;
    if (bwd_ws)
        bp->workspace = al, bp->workspace_bytes = bytes;
    else
        p->workspace = al, p->workspace_bytes = bytes;
}

/* q, k, v (o; and the backward's dout, dq, dk, dv) as 16-bit elements now and then: the float
 * buffers then hold 2-byte bit patterns (any, NaN and infinity included) and the calls read half
 * their bytes; or an unknown dtype, which must be refused. Rounded results: no comparison. */
static void la_pick_dtype(ctx *c, dn_la_params *p) {
    const unsigned dm = pick(c->f, 16);
    if (dm == 0) p->dtype = DN_BF16, c->ic = 0;
    if (dm == 1) p->dtype = DN_F16, c->ic = 0;
    if (dm == 2) p->dtype = (dn_dtype)(3 + pick(c->f, 4)), c->ic = 0;
}

static void fam_la_fwd(ctx *c) {
    la_case lc;
    memset(&lc, 0, sizeof lc);
    lc.p = la_build(c, 1);
    if (c->ic < 0 || (c->nb == 0)) return;
    dn_la_params *p = &lc.p;
    /* the forward's own options: bf16 states (rounded: no reference comparison), an unknown
     * state dtype, the gates from raw projections (computed alike for the reference) */
    unsigned xm = pick(c->f, 16);
    if (xm == 0) p->state_dtype = DN_BF16, c->ic = 0;
    if (xm == 1) p->state_dtype = (dn_dtype)(3 + pick(c->f, 4)), c->ic = 0;
    la_pick_dtype(c, p);
    if ((xm == 2 || xm == 3) && p->g) {
        view va = pick_view(c, p->B, p->T, p->HV, 1, 1);
        if (!big_view(&va)) {
            p->g = NULL;
            p->gate_a = in_view(c, &va, V_RAWGATE, NULL), p->gate_a_s = va.s;
            if (pick(c->f, 16)) p->A_log = flat(c, p->HV, V_RAWGATE, 0, 0, NULL);
            if (pick(c->f, 16)) p->dt_bias = flat(c, p->HV, V_RAWGATE, 0, 0, NULL);
            if (!p->A_log || !p->dt_bias) c->ic = 0; /* must be refused */
        }
    }
    if ((xm == 3 || xm == 4) && p->beta) {
        view vb = pick_view(c, p->B, p->T, p->HV, 1, 1);
        if (!big_view(&vb)) {
            p->beta = NULL;
            p->gate_b = in_view(c, &vb, V_RAWGATE, NULL), p->gate_b_s = vb.s;
        }
    }
    /* the queries: check, workspace size; both write only *bytes */
    dn_status cs = dn_la_check(p);
    size_t ws = 12345;
    dn_status wst = dn_la_workspace_size(p, &ws);
    if (wst != DN_OK && ws != 12345) {
        c->call = "dn_la_workspace_size";
        fz_fail(c, "(b) error-writes-nothing", "*bytes written on error");
    }
    la_workspace(c, p, 0, NULL);
    dn_status st = exec(c, "dn_la_forward", la_fwd_call, &lc, p->impl == DN_IMPL_REF);
    if (cs != DN_OK && st == DN_OK && !c->skip)
        fz_fail(c, "check-agrees", "dn_la_check failed but forward OK");
}

static dn_status la_train_call(ctx *c, void *v, int ref) {
    (void)c;
    la_case *lc = v;
    if (ref) {
        dn_la_params p = lc->p;
        p.impl = DN_IMPL_REF, p.workspace = NULL;
        return dn_la_forward(&p);
    }
    return dn_la_forward_train(&lc->p, lc->saved, lc->saved_bytes);
}

static void add_saved(ctx *c, la_case *lc) {
    size_t need = 999;
    dn_status st = dn_la_saved_size(&lc->p, &need);
    unsigned m = pick(c->f, 8);
    if (st != DN_OK) {
        if (need != 999) {
            c->call = "dn_la_saved_size";
            fz_fail(c, "(b) error-writes-nothing", "*bytes written on error");
        }
        need = 64;
    }
    if (need > (size_t)FZ_LIMIT * 64) need = 64, c->ic = 0;
    size_t bytes = m == 6 && need > 0 ? need - 4 : need;
    int bi = buf_new(c, bytes + 64, 1);
    c->b[bi].out = 1;
    memset(c->b[bi].p, 0x5a, bytes + 64);
    uint8_t *base = (uint8_t *)c->b[bi].p;
    uint8_t *al = (uint8_t *)(((uintptr_t)base + 63) & ~(uintptr_t)63);
    if (m == 7) al += 4;
    if (al + bytes > base + bytes + 64) al = base;
    lc->saved = m == 5 ? NULL : al;
    lc->saved_bytes = bytes;
    c->b[bi].nocompare = 1;
}

static void fam_la_train(ctx *c) {
    la_case lc;
    memset(&lc, 0, sizeof lc);
    lc.p = la_build(c, 1);
    if (c->ic < 0 || c->nb == 0) return;
    add_saved(c, &lc);
    exec(c, "dn_la_forward_train", la_train_call, &lc, 0);
}

static dn_status la_bwd_call(ctx *c, void *v, int ref) {
    (void)c;
    la_case *lc = v;
    dn_la_bwd_params bp = lc->bp;
    if (ref) {
        bp.fwd.impl = DN_IMPL_REF;
        bp.workspace = NULL;
        bp.saved = NULL;
    }
    return dn_la_backward(&bp);
}

static void fam_la_bwd(ctx *c) {
    la_case lc;
    memset(&lc, 0, sizeof lc);
    lc.p = la_build(c, 0);
    if (c->ic < 0 || c->nb == 0) return;
    dn_la_params *p = &lc.p;
    dn_la_bwd_params *bp = &lc.bp;
    {
        dn_la_params t = *p;
        t.B = sd(t.B), t.T = sd(t.T), t.H = sd(t.H), t.HV = sd(t.HV), t.K = sd(t.K), t.V = sd(t.V);
        *bp = dn_la_bwd_params_default(&t);
        bp->fwd = *p;
    }
    int64_t B = p->B, T = p->T, H = p->H, HV = p->HV, K = p->K, V = p->V;
    int64_t NS = p->cu_seqlens ? (p->n_seqs > 0 ? p->n_seqs : 0) : B;
    int64_t ns = PROD(NS, HV, K, V);
    view vdo = pick_view(c, B, T, HV, V, 1), vdq = pick_view(c, B, T, H, K, 1);
    view vdk = pick_view(c, B, T, H, K, 1), vdv = pick_view(c, B, T, HV, V, 1);
    view vdg = pick_view(c, B, T, HV, 1, 1), vdb = pick_view(c, B, T, HV, 1, 1);
    if (big_view(&vdo) || big_view(&vdq) || big_view(&vdk) || big_view(&vdv)) return;
    bp->dout = in_view(c, &vdo, V_ANY, NULL), bp->dout_s = vdo.s;
    if (pick(c->f, 3) == 0) bp->dfinal_state = flat(c, ns, V_ANY, 0, 0, NULL);
    int bq;
    bp->dq = out_view(c, &vdq, &bq), bp->dq_s = vdq.s;
    unsigned am = pick(c->f, 16);
    if (am == 0 && vdk.ext >= 0 && vdq.ext >= 0 && !memcmp(&vdk.s, &vdq.s, sizeof vdk.s)) {
        bp->dk = bp->dq, bp->dk_s = vdq.s; /* two outputs aliased */
        c->alias = 1, c->ic = 0;
    } else if (am == 1) {
        bp->dk = (float *)bp->dout, bp->dk_s = vdo.s; /* output over an input */
        c->b[bq - 1 - (bp->dfinal_state ? 1 : 0)].out = 1;
        c->alias = 1, c->ic = 0;
    } else {
        bp->dk = out_view(c, &vdk, NULL), bp->dk_s = vdk.s;
    }
    bp->dv = out_view(c, &vdv, NULL), bp->dv_s = vdv.s;
    int want_g = p->g != NULL, want_b = p->beta != NULL;
    unsigned gm = pick(c->f, 16);
    if (gm == 0) want_g = !want_g, c->ic = 0;
    if (gm == 1) want_b = !want_b, c->ic = 0;
    if (want_g) bp->dg = out_view(c, &vdg, NULL), bp->dg_s = vdg.s;
    if (want_b) bp->dbeta = out_view(c, &vdb, NULL), bp->dbeta_s = vdb.s;
    if (pick(c->f, 3) == 0) bp->dinitial_state = flat(c, ns, V_ANY, 1, 0, NULL);
    la_pick_dtype(c, &bp->fwd);
    unsigned nm = pick(c->f, 32);
    if (nm == 0) bp->dout = NULL, c->ic = 0;
    if (nm == 1) bp->dv = NULL, c->ic = 0;
    la_workspace(c, p, 1, bp);
    if (pick(c->f, 4) == 0) {
        /* the saved buffer of a training forward (checked itself first) */
        la_case tc = lc;
        const int bs = c->nb; /* add_saved makes one buffer */
        int bo = -1;
        add_saved(c, &tc);
        int ic = c->ic, nb = c->nb;
        /* the training forward writes o/final_state: let it, they are not the backward's */
        if (p->o) c->ic = 0;
        for (int i = 0; i < nb; i++)
            c->b[i].mask[0] |= 0; /* no-op: keep buffers */
        dn_la_params tp = *p;
        float *o = NULL;
        if (tp.o) {
            view vo2 = pick_view(c, B, T, HV, V, 0);
            o = out_view(c, &vo2, &bo);
            tp.o = o;
            tp.o_s = vo2.s;
        }
        tp.final_state = NULL;
        tc.p = tp;
        dn_status st = exec(c, "dn_la_forward_train (for backward)", la_train_call, &tc, 0);
        c->ic = ic;
        /* the training forward's o is no output of the backward (read only to it): written or,
         * where the forward failed, still canary */
        if (bo >= 0) c->b[bo].out = 0, memset(c->b[bo].mask, 0, c->b[bo].bytes / sizeof(float) + 1);
        if (st == DN_OK) {
            bp->saved = tc.saved;
            bp->saved_bytes = tc.saved_bytes;
            c->b[bs].out = 0; /* the backward only reads saved */
        }
    }
    exec(c, "dn_la_backward", la_bwd_call, &lc, p->impl == DN_IMPL_REF);
}

/* dn_la_step against a one-token dn_la_forward through the reference */
typedef struct {
    dn_op op;
    float *o, *state;
    const float *q, *k, *v, *g, *beta;
    int64_t B, H, HV, K, V;
    float scale;
    int l2;
} step_case;

static dn_status la_step_call(ctx *c, void *v, int ref) {
    (void)c;
    step_case *s = v;
    if (!ref)
        return dn_la_step(s->op, s->o, s->state, s->q, s->k, s->v, s->g, s->beta, s->B, s->H, s->HV,
                          s->K, s->V, s->scale, s->l2);
    dn_la_params p = dn_la_params_default(s->op, s->B, 1, s->H, s->HV, s->K, s->V);
    p.q = s->q, p.k = s->k, p.v = s->v, p.g = s->g, p.beta = s->beta, p.o = s->o;
    p.initial_state = s->state, p.final_state = s->state;
    if (s->scale > 0) p.scale = s->scale;
    p.qk_l2norm = s->l2;
    p.impl = DN_IMPL_REF;
    return dn_la_forward(&p);
}

static void fam_la_step(ctx *c) {
    fz *f = c->f;
    step_case s;
    memset(&s, 0, sizeof s);
    unsigned opm = u8(f);
    s.op = (dn_op)(int)(opm % 4);
    if (opm >= 252) s.op = (dn_op)(opm == 252 ? -1 : 4 + (int)(opm & 3)), c->ic = 0;
    s.B = dim(f, 1, 3), s.H = dim(f, 1, 3);
    int64_t g = dim(f, 1, 2);
    s.HV = s.H > 0 && s.H < 4 && g > 0 && g < 3 ? s.H * g : g;
    s.K = dim(f, 1, 24), s.V = dim(f, 1, 24);
    if (s.B < 1 || s.H < 1 || s.HV < 1 || s.K < 1 || s.V < 1 || s.HV % s.H) c->ic = 0;
    pick_vmode(c);
    {
        static const float sc[8] = {0.f, 0.f, 0.5f, -1.f, NAN, INFINITY, -INFINITY, 1e30f};
        unsigned m = pick(f, 8);
        s.scale = sc[m]; /* <= 0 selects the default */
        if (m >= 4) c->ic = 0;
    }
    s.l2 = pick(f, 2);
    int64_t nq = PROD(s.B, s.H, s.K), nv = PROD(s.B, s.HV, s.V), ng = PROD(s.B, s.HV);
    int64_t ns = PROD(s.B, s.HV, s.K, s.V);
    if (ns > FZ_LIMIT * 2 && ns != INT64_MAX) return;
    int bk;
    s.q = flat(c, nq, V_ANY, 0, 0, NULL);
    s.k = flat(c, nq, V_KEY, 0, 0, &bk);
    if (has_delta(s.op) && !s.l2) scale_keys(c, bk, s.K);
    s.v = flat(c, nv, V_ANY, 0, 0, NULL);
    int want_g = has_gate(s.op), want_b = has_delta(s.op);
    unsigned gm = pick(f, 16);
    if (gm == 0) want_g = !want_g, c->ic = 0;
    if (gm == 1) want_b = !want_b, c->ic = 0;
    if (want_g) s.g = flat(c, ng, V_GATE, 0, 0, NULL);
    if (want_b) s.beta = flat(c, ng, V_BETA, 0, 0, NULL);
    unsigned am = pick(f, 10);
    int bs;
    s.state = flat(c, ns, V_ANY, 1, 1, &bs);
    if (am == 0 && ns >= nv && ns <= FZ_LIMIT) {
        s.o = s.state; /* o overlapping the state */
        c->alias = 1, c->ic = 0;
    } else if (am == 1 && ns > 1 && ns <= FZ_LIMIT && nv <= ns) {
        s.o = s.state + ns - nv; /* tail overlap */
        c->alias = 1, c->ic = 0;
    } else if (am == 2) {
        s.o = (float *)s.v, c->b[bs - (want_g + want_b) - 1].out = 1; /* o == v */
        c->alias = 1, c->ic = 0;
    } else {
        s.o = flat(c, nv, V_ANY, 1, 0, NULL);
    }
    unsigned nm = pick(f, 32);
    if (nm == 0) s.state = NULL, c->ic = 0;
    if (nm == 1) s.q = NULL, c->ic = 0;
    exec(c, "dn_la_step", la_step_call, &s, 0);
}

/* ======================================================================================== */
/* Softmax attention and the KV cache                                                         */
/* ======================================================================================== */

typedef struct {
    dn_attn_params p;
    dn_attn_bwd_params bp;
} attn_case;

static dn_attn_params attn_build(ctx *c, int outputs) {
    fz *f = c->f;
    int64_t B = dim(f, 1, 2), TK = dim(f, 0, 40), TQ = dim(f, 0, 40), H = dim(f, 1, 4);
    int64_t g = dim(f, 1, 2);
    int64_t HKV = H > 0 && H < 5 && g > 0 && g < 3 && H % g == 0 ? H / g : g;
    int64_t D = dim(f, 1, 40);
    unsigned dm = pick(f, 16);
    if (dm == 0) D = 64 + 64 * pick(f, 4); /* up to 256 */
    if (dm == 1) D = 257;
    if (pick(f, 2)) TQ = TK; /* the plain prefill, often */
    if (B < 1 || TQ < 1 || TK < 1 || H < 1 || HKV < 1 || D < 1 || D > 256 || H % HKV) c->ic = 0;
    dn_attn_params p = dn_attn_params_default(sd(B), sd(TK), sd(H), sd(HKV), sd(D));
    p.B = B, p.TK = TK, p.H = H, p.HKV = HKV, p.D = D;
    p.TQ = TQ;
    pick_vmode(c);
    p.impl = pick_impl(c, 4);
    if (p.impl == DN_IMPL_RECURRENT || p.impl == DN_IMPL_CHUNK) c->ic = 0; /* not attention impls */
    p.n_threads = pick_threads(c);
    p.scale = pick_scale(c, p.scale);
    static const int64_t win[8] = {0, 0, 0, 1, 3, 17, -1, INT64_MAX};
    unsigned wm = pick(f, 8);
    p.window = win[wm];
    if (wm == 6) c->ic = 0;
    view vq = pick_view(c, B, TQ, H, D, 1), vk = pick_view(c, B, TK, HKV, D, 1);
    view vv = pick_view(c, B, TK, HKV, D, 1), vo = pick_view(c, B, TQ, H, D, outputs);
    if (big_view(&vq) || big_view(&vk) || big_view(&vv) || big_view(&vo)) {
        c->ic = -1;
        return p;
    }
    int bq;
    p.q = in_view(c, &vq, V_ANY, &bq), p.q_s = vq.s;
    p.k = in_view(c, &vk, c->vmode == 1 ? V_BIGKEY : V_ANY, NULL), p.k_s = vk.s;
    p.v = in_view(c, &vv, V_ANY, NULL), p.v_s = vv.s;
    unsigned am = outputs ? pick(f, 12) : 99;
    int64_t nl = PROD(B, H, TQ);
    if (am == 0 && !memcmp(&vo.s, &vq.s, sizeof vo.s)) {
        p.o = (float *)p.q, p.o_s = vq.s; /* o == q */
        mark_out(c, bq, 0, &vo);
        c->alias = 1, c->ic = 0;
    } else {
        int bo;
        p.o = out_view(c, &vo, &bo), p.o_s = vo.s;
        if (am == 1 && vo.ext > 0) {
            p.lse = p.o + c->b[bo].bytes / sizeof(float) / 2; /* lse inside o */
            memset(c->b[bo].mask, 1, c->b[bo].bytes / sizeof(float));
            c->alias = 1, c->ic = 0;
            if (nl > (int64_t)(c->b[bo].bytes / sizeof(float) / 2)) p.lse = NULL;
        }
    }
    if (!p.lse && (pick(f, 2) || !outputs) && nl <= FZ_LIMIT) {
        int bl;
        p.lse = flat(c, nl, V_ANY, 1, 0, &bl);
        c->b[bl].neginf_ok = 1;
    }
    if (!outputs && !p.lse) c->ic = -1; /* backward needs lse */
    unsigned nm = pick(f, 32);
    if (nm == 0) p.q = NULL, c->ic = 0;
    if (nm == 1) p.v = NULL, c->ic = 0;
    return p;
}

static dn_status attn_fwd_call(ctx *c, void *v, int ref) {
    (void)c;
    attn_case *a = v;
    dn_attn_params p = a->p;
    if (ref) p.impl = DN_IMPL_REF;
    return dn_attn_forward(&p);
}

static void fam_attn_fwd(ctx *c) {
    attn_case a;
    memset(&a, 0, sizeof a);
    a.p = attn_build(c, 1);
    if (c->ic < 0) return;
    size_t ws = 777;
    if (dn_attn_workspace_size(&a.p, &ws) != DN_OK && ws != 777) {
        c->call = "dn_attn_workspace_size";
        fz_fail(c, "(b) error-writes-nothing", "*bytes written on error");
    }
    dn_status cs = dn_attn_check(&a.p);
    dn_status st = exec(c, "dn_attn_forward", attn_fwd_call, &a, a.p.impl == DN_IMPL_REF);
    if (cs != DN_OK && st == DN_OK && !c->skip)
        fz_fail(c, "check-agrees", "dn_attn_check failed but forward OK");
}

static dn_status attn_bwd_call(ctx *c, void *v, int ref) {
    (void)c;
    attn_case *a = v;
    dn_attn_bwd_params bp = a->bp;
    if (ref) bp.fwd.impl = DN_IMPL_REF;
    return dn_attn_backward(&bp);
}

static void fam_attn_bwd(ctx *c) {
    attn_case a;
    memset(&a, 0, sizeof a);
    a.p = attn_build(c, 0);
    if (c->ic < 0) return;
    dn_attn_params *p = &a.p;
    /* o and lse from a real forward (the reference, in contract) */
    if (p->o && p->lse) {
        dn_attn_params fp = *p;
        fp.impl = DN_IMPL_REF;
        if (dn_attn_forward(&fp) != DN_OK) c->ic = 0;
    }
    /* the forward wrote o and lse: they are the backward's inputs now */
    for (int i = 0; i < c->nb; i++)
        c->b[i].out = 0, memset(c->b[i].mask, 0, c->b[i].bytes / 4 + 1);
    int64_t B = p->B, TQ = p->TQ, TK = p->TK, H = p->H, HKV = p->HKV, D = p->D;
    attn_case *ac = &a;
    {
        dn_attn_params t = *p;
        t.B = sd(t.B), t.TQ = sd(t.TQ), t.TK = sd(t.TK), t.H = sd(t.H), t.HKV = sd(t.HKV),
        t.D = sd(t.D);
        ac->bp = dn_attn_bwd_params_default(&t);
        ac->bp.fwd = *p;
    }
    dn_attn_bwd_params *bp = &ac->bp;
    view vdo = pick_view(c, B, TQ, H, D, 1), vdq = pick_view(c, B, TQ, H, D, 1);
    view vdk = pick_view(c, B, TK, HKV, D, 1), vdv = pick_view(c, B, TK, HKV, D, 1);
    if (big_view(&vdo) || big_view(&vdq) || big_view(&vdk) || big_view(&vdv)) return;
    bp->dout = in_view(c, &vdo, V_ANY, NULL), bp->dout_s = vdo.s;
    int bq;
    bp->dq = out_view(c, &vdq, &bq), bp->dq_s = vdq.s;
    unsigned am = pick(c->f, 12);
    if (am == 0 && !memcmp(&vdk.s, &vdv.s, sizeof vdk.s)) {
        bp->dk = out_view(c, &vdk, NULL), bp->dk_s = vdk.s;
        bp->dv = bp->dk, bp->dv_s = vdk.s; /* dk == dv */
        c->alias = 1, c->ic = 0;
    } else if (am == 1 && TQ == TK && H == HKV) {
        /* dk over dout: only where dout's buffer holds dk's view (same shape), else the harness
         * itself would hand over a buffer smaller than the view (a caller's error the library
         * cannot see: an empty dout overlaps nothing) */
        bp->dk = (float *)bp->dout, bp->dk_s = vdo.s;
        c->b[bq - 1].out = 1;
        c->alias = 1, c->ic = 0;
        bp->dv = out_view(c, &vdv, NULL), bp->dv_s = vdv.s;
    } else {
        int bk, bv;
        bp->dk = out_view(c, &vdk, &bk), bp->dk_s = vdk.s;
        bp->dv = out_view(c, &vdv, &bv), bp->dv_s = vdv.s;
        /* dq and dk are sums of dS = P (dP - dO.o) times k or q: where a row's softmax is one
         * key (it sees one key, or the scores saturate), dS is 0 exactly and fp32 leaves
         * rounding noise of the terms' size, the size of dv = P^T dO, not of dq or dk. Their
         * errors are measured with dv's reference RMS as the floor (as tests/test_la_bwd.c) */
        c->b[bq].scale_of = 1 + bv, c->b[bk].scale_of = 1 + bv;
    }
    unsigned nm = pick(c->f, 32);
    if (nm == 0) bp->fwd.lse = NULL, c->ic = 0;
    if (nm == 1) bp->dq = NULL, c->ic = 0;
    exec(c, "dn_attn_backward", attn_bwd_call, ac, p->impl == DN_IMPL_REF);
}

/* The KV cache: create, a few appends (with and without DN_KV_GROW), attends compared with
 * dn_attn_forward over the keys appended so far, reset, free. */
typedef struct {
    dn_kv_cache *kv;
    float *o, *lse;
    dn_strides o_s, q_s;
    const float *q;
    int64_t TQ, H, window;
    float scale;
    int n_threads;
    /* the reference: keys and values appended so far, contiguous [B,len,HKV,D] */
    float *kall, *vall;
    int64_t B, HKV, D, len;
} kv_case;

#define KV_MAXLEN 48 /* rows per batch of the reference's copy of the cache */
static dn_status kv_attend_call(ctx *c, void *v, int ref) {
    (void)c;
    kv_case *k = v;
    if (!ref)
        return dn_kv_cache_attend(k->kv, k->o, k->o_s, k->lse, k->q, k->q_s, k->TQ, k->H, k->scale,
                                  k->window, k->n_threads);
    dn_attn_params p = dn_attn_params_default(k->B, k->len, k->H, k->HKV, k->D);
    p.TQ = k->TQ;
    p.q = k->q, p.q_s = k->q_s, p.k = k->kall, p.v = k->vall, p.o = k->o, p.o_s = k->o_s;
    /* the copy holds KV_MAXLEN rows per batch, of which len are used */
    p.k_s = p.v_s = (dn_strides){KV_MAXLEN * k->HKV * k->D, k->HKV * k->D, k->D};
    p.lse = k->lse;
    p.scale = k->scale; /* literal, 0 included: "exactly as dn_attn_forward" */
    p.window = k->window;
    p.impl = DN_IMPL_REF;
    return dn_attn_forward(&p);
}

static void fam_kv(ctx *c) {
    fz *f = c->f;
    int64_t B = dim(f, 1, 2), HKV = dim(f, 1, 2), D = dim(f, 1, 32), cap = dim(f, 1, 8);
    unsigned dt = u8(f);
    dn_dtype dtype = (dn_dtype)(dt % 3);
    if (dt >= 250) dtype = (dn_dtype)(dt == 250 ? -1 : 3 + (int)(dt & 3));
    int flags = pick(f, 2) ? (int)DN_KV_GROW : 0;
    if (pick(f, 32) == 0) flags = 2 + (int)pick(f, 8);
    /* A valid cache of 1 GiB to 2 TiB is a legitimate request the allocator may grant: the
       harness cannot afford it (libFuzzer's malloc limit), so such an input is skipped. Larger
       requests stay: they must fail with DN_ERR_SHAPE or DN_ERR_ALLOC. */
    if (B > 0 && HKV > 0 && D > 0 && cap > 0) {
        __int128 bytes = smul(smul(smul(B, HKV), smul(D, cap)), 8);
        if (bytes > ((__int128)1 << 30) && bytes < ((__int128)1 << 41)) return;
    }
    pick_vmode(c);
    dn_kv_cache *kv = (dn_kv_cache *)(uintptr_t)0x1234;
    c->call = "dn_kv_cache_create";
    dn_status st = dn_kv_cache_create(pick(f, 64) ? &kv : NULL, B, HKV, D, cap, dtype, flags);
    if (st != DN_OK) {
        if (kv != (dn_kv_cache *)(uintptr_t)0x1234)
            fz_fail(c, "(b) error-writes-nothing", "*out written");
        dn_kv_cache_free(NULL);
        c->call = "dn_kv_cache_reset(NULL)";
        if (dn_kv_cache_reset(NULL) == DN_OK) fz_fail(c, "null-rejected", "reset(NULL) OK");
        if (dn_kv_cache_len(NULL) != 0 || dn_kv_cache_capacity(NULL) != 0)
            fz_fail(c, "null", "len");
        return;
    }
    if (kv == NULL || kv == (dn_kv_cache *)(uintptr_t)0x1234) fz_fail(c, "ok-sets-out", "no cache");
    kv_case k;
    memset(&k, 0, sizeof k);
    k.kv = kv, k.B = B, k.HKV = HKV, k.D = D;
    int64_t maxlen = KV_MAXLEN;
    k.kall = calloc((size_t)(B * maxlen * HKV * D), sizeof(float));
    k.vall = calloc((size_t)(B * maxlen * HKV * D), sizeof(float));
    int nsteps = 1 + (int)pick(f, 6);
    for (int s = 0; s < nsteps; s++) {
        int nb0 = c->nb;
        int ic0 = c->ic;
        unsigned what = pick(f, 4);
        if (what <= 1) { /* append */
            int64_t T = dim(f, 0, 12);
            view vk = pick_view(c, B, T, HKV, D, 1), vv = pick_view(c, B, T, HKV, D, 1);
            if (big_view(&vk) || big_view(&vv)) continue;
            const float *kp = in_view(c, &vk, V_ANY, NULL), *vp = in_view(c, &vv, V_ANY, NULL);
            int64_t len0 = dn_kv_cache_len(kv), cap0 = dn_kv_cache_capacity(kv);
            size_t by0 = dn_kv_cache_bytes(kv);
            if (pick(f, 32) == 0) kp = NULL;
            snapshot(c);
            c->call = "dn_kv_cache_append";
            st = dn_kv_cache_append(kv, kp, vk.s, vp, vv.s, T);
            for (int i = 0; i < c->nb; i++)
                if (memcmp(c->b[i].p, c->b[i].snap, c->b[i].bytes))
                    fz_fail(c, "(c) inputs-read-only", "k/v");
            if (st != DN_OK) {
                if (dn_kv_cache_len(kv) != len0 || dn_kv_cache_capacity(kv) != cap0 ||
                    dn_kv_cache_bytes(kv) != by0)
                    fz_fail(c, "(b) error-writes-nothing", "cache len/capacity changed");
            } else {
                if (dn_kv_cache_len(kv) != len0 + T) fz_fail(c, "append-len", "len != len0 + T");
                if (dn_kv_cache_capacity(kv) < dn_kv_cache_len(kv))
                    fz_fail(c, "append-cap", "cap < len");
                if (!(flags & DN_KV_GROW) && dn_kv_cache_capacity(kv) != cap0)
                    fz_fail(c, "append-cap", "capacity changed without DN_KV_GROW");
                if (dn_kv_cache_used_bytes(kv) > dn_kv_cache_bytes(kv))
                    fz_fail(c, "bytes", "used > held");
                /* the reference copy */
                for (int64_t b = 0; b < B; b++)
                    for (int64_t t = 0; t < T; t++)
                        for (int64_t h = 0; h < HKV; h++)
                            for (int64_t d = 0; d < D; d++) {
                                int64_t tt = len0 + t;
                                if (tt >= maxlen) continue;
                                size_t o = (size_t)(((b * maxlen + tt) * HKV + h) * D + d);
                                k.kall[o] = kp[b * vk.s.b + t * vk.s.t + h * vk.s.h + d];
                                k.vall[o] = vp[b * vv.s.b + t * vv.s.t + h * vv.s.h + d];
                            }
                if (!vk.legit || !vv.legit) k.len = -1; /* values unknown to the reference */
            }
        } else if (what == 2) { /* attend */
            int64_t len = dn_kv_cache_len(kv);
            int64_t g = dim(f, 1, 2), H = HKV <= 256 && g >= 0 && g <= 2 ? HKV * g : g;
            if (pick(f, 16) == 0) H = dim(f, 0, 5);
            int64_t TQ = dim(f, 1, 6);
            if (pick(f, 2) && len >= 1) TQ = 1;
            k.H = H, k.TQ = TQ;
            k.scale = pick_scale(c, 1.f / sqrtf((float)(D > 0 ? D : 1)));
            static const int64_t win[6] = {0, 0, 1, 4, -1, INT64_MAX};
            unsigned wm = pick(f, 6);
            k.window = win[wm];
            if (wm == 4) c->ic = 0;
            k.n_threads = pick_threads(c);
            view vq = pick_view(c, B, TQ, H, D, 1), vo = pick_view(c, B, TQ, H, D, 1);
            if (big_view(&vq) || big_view(&vo)) continue;
            k.q = in_view(c, &vq, V_ANY, NULL), k.q_s = vq.s;
            k.o = out_view(c, &vo, NULL), k.o_s = vo.s;
            int64_t nl = PROD(B, H, TQ);
            int bl = -1;
            k.lse = pick(f, 2) && nl <= FZ_LIMIT ? flat(c, nl, V_ANY, 1, 0, &bl) : NULL;
            if (bl >= 0) c->b[bl].neginf_ok = 1;
            int64_t len_before = k.len;
            k.len = len;
            /* compare only f32 caches with in-contract appends and len within the copy */
            int cmp = dtype == DN_F32 && len_before >= 0 && len <= maxlen && len >= 1 && c->ic;
            exec(c, "dn_kv_cache_attend", kv_attend_call, &k, !cmp);
            k.len = len_before;
        } else if (what == 3 && pick(f, 4) == 0) {
            c->call = "dn_kv_cache_reset";
            if (dn_kv_cache_reset(kv) != DN_OK) fz_fail(c, "reset", "reset failed");
            if (dn_kv_cache_len(kv) != 0) fz_fail(c, "reset", "len != 0");
            k.len = 0;
        }
        /* release this step's buffers */
        for (int i = nb0; i < c->nb; i++) {
            free(c->b[i].p), free(c->b[i].snap), free(c->b[i].res), free(c->b[i].mask);
        }
        c->nb = nb0;
        c->ic = ic0;
        if (k.len >= 0) k.len = dn_kv_cache_len(kv);
        if (k.len > maxlen) k.len = -1;
    }
    free(k.kall), free(k.vall);
    dn_kv_cache_free(kv);
}

/* ======================================================================================== */
/* Mamba-1                                                                                    */
/* ======================================================================================== */

typedef struct {
    dn_mamba_params p;
    dn_mamba_bwd_params bp;
    dn_mamba2_params p2;
    dn_mamba2_bwd_params bp2;
    dn_rwkv4_params pr;
    dn_rwkv4_bwd_params bpr;
    dn_conv_params pc;
    dn_conv_bwd_params bpc;
} ssm_case;

/* A [B,T,D] tensor view: h stride ignored by the library (garbage sometimes). */
static view view3(ctx *c, int64_t B, int64_t T, int64_t D) {
    view v = pick_view(c, B, T, 1, D, 1);
    if (pick(c->f, 8) == 0) v.s.h = (int64_t)u8(c->f) - 128;
    return v;
}

static dn_mamba_params mamba_build(ctx *c, int outputs) {
    fz *f = c->f;
    int64_t B = dim(f, 1, 2), T = dim(f, 0, 24), G = dim(f, 1, 2), D = dim(f, 1, 6);
    if (D > 0 && D <= 6 && G > 0 && G < 3) D *= G;
    int64_t N = dim(f, 1, 16);
    if (pick(f, 16) == 0) D = dim(f, 1, 7);
    if (B < 1 || T < 0 || D < 1 || N < 1 || G < 1 || D % G) c->ic = 0;
    dn_mamba_params p = dn_mamba_params_default(sd(B), sd(T), sd(D), sd(N), sd(G));
    p.B = B, p.T = T, p.D = D, p.N = N, p.G = G;
    pick_vmode(c);
    p.impl = pick_impl(c, 2);
    p.n_threads = pick_threads(c);
    p.dt_softplus = pick(f, 2);
    view vx = view3(c, B, T, D), vdt = view3(c, B, T, D), vz = view3(c, B, T, D);
    view vB = pick_view(c, B, T, G, N, 1), vC = pick_view(c, B, T, G, N, 1);
    view vy = view3(c, B, T, D);
    if (big_view(&vx) || big_view(&vdt) || big_view(&vz) || big_view(&vB) || big_view(&vC) ||
        big_view(&vy)) {
        c->ic = -1;
        return p;
    }
    p.x = in_view(c, &vx, V_ANY, NULL), p.x_s = vx.s;
    p.dt = in_view(c, &vdt, p.dt_softplus ? V_ANY : V_DT, NULL), p.dt_s = vdt.s;
    p.A = flat(c, PROD(D, N), V_NEG, 0, 0, NULL);
    p.Bm = in_view(c, &vB, V_ANY, NULL), p.Bm_s = vB.s;
    p.Cm = in_view(c, &vC, V_ANY, NULL), p.Cm_s = vC.s;
    if (pick(f, 2)) p.Dskip = flat(c, D, V_ANY, 0, 0, NULL);
    if (pick(f, 2)) p.dt_bias = flat(c, D, p.dt_softplus ? V_ANY : V_DT, 0, 0, NULL);
    if (pick(f, 2)) p.z = in_view(c, &vz, V_ANY, NULL), p.z_s = vz.s;
    int64_t ns = PROD(B, D, N);
    if (outputs) {
        unsigned am = pick(f, 12);
        int by;
        if (am == 0 && !memcmp(&vy.s, &vx.s, sizeof vy.s)) {
            p.y = (float *)p.x, p.y_s = vx.s; /* y == x */
            c->b[0].out = 1;
            c->alias = 1, c->ic = 0;
        } else {
            p.y = out_view(c, &vy, &by), p.y_s = vy.s;
        }
        int hi = pick(f, 2), hf = pick(f, 2);
        if (hi) p.initial_state = flat(c, ns, V_ANY, 0, 0, NULL);
        if (hf) {
            if (am == 1 && hi) {
                p.final_state = (float *)p.initial_state; /* in place */
                c->b[c->nb - 1].out = 1;
                memset(c->b[c->nb - 1].mask, 1, c->b[c->nb - 1].bytes / 4);
            } else if (am == 2 && p.y != p.x && (int64_t)(c->b[by].bytes / 4) >= ns) {
                p.final_state = p.y; /* over y */
                memset(c->b[by].mask, 1, c->b[by].bytes / 4);
                c->alias = 1, c->ic = 0;
            } else {
                p.final_state = flat(c, ns, V_ANY, 1, 0, NULL);
            }
        }
    } else if (pick(f, 2)) {
        p.initial_state = flat(c, ns, V_ANY, 0, 0, NULL);
    }
    if (pick(f, 32) == 0) p.A = NULL, c->ic = 0;
    return p;
}

static dn_status mamba_fwd_call(ctx *c, void *v, int ref) {
    (void)c;
    dn_mamba_params p = ((ssm_case *)v)->p;
    if (ref) p.impl = DN_IMPL_REF;
    return dn_mamba_forward(&p);
}

static void fam_mamba(ctx *c) {
    ssm_case s;
    memset(&s, 0, sizeof s);
    s.p = mamba_build(c, 1);
    if (c->ic < 0) return;
    exec(c, "dn_mamba_forward", mamba_fwd_call, &s, s.p.impl == DN_IMPL_REF);
}

static dn_status mamba_bwd_call(ctx *c, void *v, int ref) {
    (void)c;
    dn_mamba_bwd_params bp = ((ssm_case *)v)->bp;
    if (ref) bp.fwd.impl = DN_IMPL_REF;
    return dn_mamba_backward(&bp);
}

/* Flips the presence of an optional gradient now and then (out of contract). */
static int present(ctx *c, int want) {
    if (pick(c->f, 16) == 0) {
        c->ic = 0;
        return !want;
    }
    return want;
}

static void fam_mamba_bwd(ctx *c) {
    ssm_case s;
    memset(&s, 0, sizeof s);
    s.p = mamba_build(c, 0);
    if (c->ic < 0) return;
    dn_mamba_params *p = &s.p;
    {
        dn_mamba_params t = *p;
        t.B = sd(t.B), t.T = sd(t.T), t.D = sd(t.D), t.N = sd(t.N), t.G = sd(t.G);
        s.bp = dn_mamba_bwd_params_default(&t);
        s.bp.fwd = *p;
    }
    dn_mamba_bwd_params *bp = &s.bp;
    int64_t B = p->B, T = p->T, D = p->D, N = p->N, G = p->G;
    view vdy = view3(c, B, T, D), vdx = view3(c, B, T, D), vddt = view3(c, B, T, D);
    view vdz = view3(c, B, T, D), vdB = pick_view(c, B, T, G, N, 1),
         vdC = pick_view(c, B, T, G, N, 1);
    if (big_view(&vdy) || big_view(&vdx) || big_view(&vddt) || big_view(&vdz) || big_view(&vdB) ||
        big_view(&vdC))
        return;
    int64_t ns = PROD(B, D, N);
    bp->dy = in_view(c, &vdy, V_ANY, NULL), bp->dy_s = vdy.s;
    if (pick(c->f, 2)) bp->dfinal_state = flat(c, ns, V_ANY, 0, 0, NULL);
    bp->dx = out_view(c, &vdx, NULL), bp->dx_s = vdx.s;
    bp->ddt = out_view(c, &vddt, NULL), bp->ddt_s = vddt.s;
    bp->dBm = out_view(c, &vdB, NULL), bp->dBm_s = vdB.s;
    bp->dCm = out_view(c, &vdC, NULL), bp->dCm_s = vdC.s;
    if (present(c, p->z != NULL)) bp->dz = out_view(c, &vdz, NULL), bp->dz_s = vdz.s;
    bp->dA = flat(c, PROD(D, N), V_ANY, 1, 1, NULL);
    if (present(c, p->Dskip != NULL)) bp->dDskip = flat(c, D, V_ANY, 1, 1, NULL);
    if (present(c, p->dt_bias != NULL)) bp->ddt_bias = flat(c, D, V_ANY, 1, 1, NULL);
    if (pick(c->f, 2)) bp->dinitial_state = flat(c, ns, V_ANY, 1, 0, NULL);
    unsigned am = pick(c->f, 16);
    if (am == 0) bp->ddt = bp->dx, bp->ddt_s = bp->dx_s, c->alias = 1, c->ic = 0;
    if (am == 1) bp->dx = NULL, c->ic = 0;
    exec(c, "dn_mamba_backward", mamba_bwd_call, &s, p->impl == DN_IMPL_REF);
}

/* ======================================================================================== */
/* Mamba-2                                                                                    */
/* ======================================================================================== */

static dn_mamba2_params mamba2_build(ctx *c, int outputs) {
    fz *f = c->f;
    int64_t B = dim(f, 1, 2), T = dim(f, 0, 40), G = dim(f, 1, 2);
    int64_t H = dim(f, 1, 2), P = dim(f, 1, 16), N = dim(f, 1, 16);
    if (H > 0 && H <= 2 && G > 0 && G < 3) H *= G;
    if (pick(f, 16) == 0) H = dim(f, 1, 5);
    if (B < 1 || T < 0 || H < 1 || P < 1 || N < 1 || G < 1 || H % G) c->ic = 0;
    dn_mamba2_params p = dn_mamba2_params_default(sd(B), sd(T), sd(H), sd(P), sd(N), sd(G));
    p.B = B, p.T = T, p.H = H, p.P = P, p.N = N, p.G = G;
    pick_vmode(c);
    p.impl = pick_impl(c, 4);
    p.n_threads = pick_threads(c);
    static const int chunks[8] = {64, 16, 32, 128, 64, 0, 7, -1};
    unsigned cm = pick(f, 8);
    p.chunk_size = chunks[cm];
    if (cm >= 5) c->ic = 0;
    p.dt_softplus = pick(f, 2);
    view vx = pick_view(c, B, T, H, P, 1), vdt = pick_view(c, B, T, H, 1, 1);
    view vB = pick_view(c, B, T, G, N, 1), vC = pick_view(c, B, T, G, N, 1);
    view vy = pick_view(c, B, T, H, P, 1);
    if (big_view(&vx) || big_view(&vdt) || big_view(&vB) || big_view(&vC) || big_view(&vy)) {
        c->ic = -1;
        return p;
    }
    p.x = in_view(c, &vx, V_ANY, NULL), p.x_s = vx.s;
    p.dt = in_view(c, &vdt, p.dt_softplus ? V_ANY : V_DT, NULL), p.dt_s = vdt.s;
    p.A = flat(c, H, V_NEG, 0, 0, NULL);
    p.Bm = in_view(c, &vB, V_ANY, NULL), p.Bm_s = vB.s;
    p.Cm = in_view(c, &vC, V_ANY, NULL), p.Cm_s = vC.s;
    if (pick(f, 2)) p.Dskip = flat(c, H, V_ANY, 0, 0, NULL);
    if (pick(f, 2)) p.dt_bias = flat(c, H, p.dt_softplus ? V_ANY : V_DT, 0, 0, NULL);
    int64_t ns = PROD(B, H, N, P);
    if (outputs) {
        unsigned am = pick(f, 12);
        if (am == 0 && !memcmp(&vy.s, &vx.s, sizeof vy.s)) {
            p.y = (float *)p.x, p.y_s = vx.s;
            c->b[0].out = 1;
            c->alias = 1, c->ic = 0;
        } else {
            p.y = out_view(c, &vy, NULL), p.y_s = vy.s;
        }
        int hi = pick(f, 2), hf = pick(f, 2);
        if (hi) p.initial_state = flat(c, ns, V_ANY, 0, 0, NULL);
        if (hf) {
            if (am == 1 && hi) {
                p.final_state = (float *)p.initial_state;
                c->b[c->nb - 1].out = 1;
                memset(c->b[c->nb - 1].mask, 1, c->b[c->nb - 1].bytes / 4);
            } else if (am == 2 && hi && ns > 1 && ns <= FZ_LIMIT) {
                /* final overlapping initial partially: a fresh buffer of ns + 1 */
                int bi = buf_new(c, sizeof(float) * (size_t)(ns + 1), 0);
                fill_values(c, bi, V_ANY);
                c->b[bi].out = 1;
                memset(c->b[bi].mask, 1, (size_t)ns + 1);
                p.initial_state = c->b[bi].p;
                p.final_state = c->b[bi].p + 1;
                c->alias = 1, c->ic = 0;
            } else {
                p.final_state = flat(c, ns, V_ANY, 1, 0, NULL);
            }
        }
    } else if (pick(f, 2)) {
        p.initial_state = flat(c, ns, V_ANY, 0, 0, NULL);
    }
    if (pick(f, 32) == 0) p.Cm = NULL, c->ic = 0;
    return p;
}

static dn_status mamba2_fwd_call(ctx *c, void *v, int ref) {
    (void)c;
    dn_mamba2_params p = ((ssm_case *)v)->p2;
    if (ref) p.impl = DN_IMPL_REF;
    return dn_mamba2_forward(&p);
}

static void fam_mamba2(ctx *c) {
    ssm_case s;
    memset(&s, 0, sizeof s);
    s.p2 = mamba2_build(c, 1);
    if (c->ic < 0) return;
    exec(c, "dn_mamba2_forward", mamba2_fwd_call, &s, s.p2.impl == DN_IMPL_REF);
}

static dn_status mamba2_bwd_call(ctx *c, void *v, int ref) {
    (void)c;
    dn_mamba2_bwd_params bp = ((ssm_case *)v)->bp2;
    if (ref) bp.fwd.impl = DN_IMPL_REF;
    return dn_mamba2_backward(&bp);
}

static void fam_mamba2_bwd(ctx *c) {
    ssm_case s;
    memset(&s, 0, sizeof s);
    s.p2 = mamba2_build(c, 0);
    if (c->ic < 0) return;
    dn_mamba2_params *p = &s.p2;
    {
        dn_mamba2_params t = *p;
        t.B = sd(t.B), t.T = sd(t.T), t.H = sd(t.H), t.P = sd(t.P), t.N = sd(t.N), t.G = sd(t.G);
        s.bp2 = dn_mamba2_bwd_params_default(&t);
        s.bp2.fwd = *p;
    }
    dn_mamba2_bwd_params *bp = &s.bp2;
    int64_t B = p->B, T = p->T, H = p->H, P = p->P, N = p->N, G = p->G;
    if (p->impl == DN_IMPL_RECURRENT) c->ic = 0; /* documented: AUTO / CHUNK / REF */
    view vdy = pick_view(c, B, T, H, P, 1), vdx = pick_view(c, B, T, H, P, 1);
    view vddt = pick_view(c, B, T, H, 1, 1), vdB = pick_view(c, B, T, G, N, 1);
    view vdC = pick_view(c, B, T, G, N, 1);
    if (big_view(&vdy) || big_view(&vdx) || big_view(&vddt) || big_view(&vdB) || big_view(&vdC))
        return;
    int64_t ns = PROD(B, H, N, P);
    bp->dy = in_view(c, &vdy, V_ANY, NULL), bp->dy_s = vdy.s;
    if (pick(c->f, 2)) bp->dfinal_state = flat(c, ns, V_ANY, 0, 0, NULL);
    bp->dx = out_view(c, &vdx, NULL), bp->dx_s = vdx.s;
    int bdt, bA, bdb = -1;
    bp->ddt = out_view(c, &vddt, &bdt), bp->ddt_s = vddt.s;
    bp->dBm = out_view(c, &vdB, NULL), bp->dBm_s = vdB.s;
    bp->dCm = out_view(c, &vdC, NULL), bp->dCm_s = vdC.s;
    bp->dA = flat(c, H, V_ANY, 1, 1, &bA);
    if (present(c, p->Dskip != NULL)) bp->dDskip = flat(c, H, V_ANY, 1, 1, NULL);
    if (present(c, p->dt_bias != NULL)) bp->ddt_bias = flat(c, H, V_ANY, 1, 1, &bdb);
    /* dA and ddt_bias sum a term per token of the size of ddt's elements; where they cancel
     * (a sum of 0.1-sized terms leaving 3e-4), fp32 leaves rounding noise of the terms' size:
     * their errors are measured with ddt's reference RMS as the floor */
    c->b[bA].scale_of = 1 + bdt;
    if (bdb >= 0) c->b[bdb].scale_of = 1 + bdt;
    if (pick(c->f, 2)) bp->dinitial_state = flat(c, ns, V_ANY, 1, 0, NULL);
    unsigned am = pick(c->f, 16);
    if (am == 0) bp->dBm = bp->dCm, bp->dBm_s = bp->dCm_s, c->alias = 1, c->ic = 0;
    if (am == 1) bp->dA = NULL, c->ic = 0;
    exec(c, "dn_mamba2_backward", mamba2_bwd_call, &s, p->impl == DN_IMPL_REF);
}

/* ======================================================================================== */
/* RWKV-4                                                                                     */
/* ======================================================================================== */

static void rwkv_state_values(ctx *c, int bi, int64_t C) {
    /* rows num, den (> 0), m of each [3,C] block */
    if (c->vmode == 2 || C <= 0) return;
    fbuf *b = &c->b[bi];
    int64_t n = (int64_t)(b->bytes / 4);
    for (int64_t i = 0; i < n; i++) {
        int64_t row = (i / C) % 3;
        if (row == 1) b->p[i] = rng_uniform(&c->r, 0.1f, 2.f);
        if (row == 2) b->p[i] = rng_uniform(&c->r, -5.f, 5.f);
    }
}

static dn_rwkv4_params rwkv_build(ctx *c, int outputs) {
    fz *f = c->f;
    int64_t B = dim(f, 1, 2), T = dim(f, 0, 40), C = dim(f, 1, 40);
    if (B < 1 || T < 0 || C < 1) c->ic = 0;
    dn_rwkv4_params p = dn_rwkv4_params_default(sd(B), sd(T), sd(C));
    p.B = B, p.T = T, p.C = C;
    pick_vmode(c);
    p.impl = pick_impl(c, 2);
    p.n_threads = pick_threads(c);
    view vk = view3(c, B, T, C), vv = view3(c, B, T, C), vy = view3(c, B, T, C);
    if (big_view(&vk) || big_view(&vv) || big_view(&vy)) {
        c->ic = -1;
        return p;
    }
    p.k = in_view(c, &vk, V_BIGKEY, NULL), p.k_s = vk.s;
    p.v = in_view(c, &vv, V_ANY, NULL), p.v_s = vv.s;
    p.time_decay = flat(c, C, V_ANY, 0, 0, NULL);
    p.time_first = flat(c, C, V_ANY, 0, 0, NULL);
    int64_t ns = PROD(B, 3, C);
    int bi;
    if (outputs) {
        unsigned am = pick(f, 12);
        if (am == 0 && !memcmp(&vy.s, &vk.s, sizeof vy.s)) {
            p.y = (float *)p.k, p.y_s = vk.s;
            c->b[0].out = 1;
            c->alias = 1, c->ic = 0;
        } else {
            p.y = out_view(c, &vy, NULL), p.y_s = vy.s;
        }
        int hi = pick(f, 2), hf = pick(f, 2);
        if (hi) p.initial_state = flat(c, ns, V_ANY, 0, 0, &bi), rwkv_state_values(c, bi, C);
        if (hf) {
            if (am == 1 && hi) {
                p.final_state = (float *)p.initial_state;
                c->b[c->nb - 1].out = 1;
                memset(c->b[c->nb - 1].mask, 1, c->b[c->nb - 1].bytes / 4);
            } else if (am == 2 && vk.ext >= ns && p.y != p.k) {
                p.final_state = (float *)p.k; /* over an input */
                c->b[0].out = 1;
                c->alias = 1, c->ic = 0;
            } else {
                p.final_state = flat(c, ns, V_ANY, 1, 0, NULL);
            }
        }
    } else if (pick(f, 2)) {
        p.initial_state = flat(c, ns, V_ANY, 0, 0, &bi);
        rwkv_state_values(c, bi, C);
    }
    if (pick(f, 32) == 0) p.time_decay = NULL, c->ic = 0;
    return p;
}

static dn_status rwkv_fwd_call(ctx *c, void *v, int ref) {
    (void)c;
    dn_rwkv4_params p = ((ssm_case *)v)->pr;
    if (ref) p.impl = DN_IMPL_REF;
    return dn_rwkv4_forward(&p);
}

static void fam_rwkv4(ctx *c) {
    ssm_case s;
    memset(&s, 0, sizeof s);
    s.pr = rwkv_build(c, 1);
    if (c->ic < 0) return;
    exec(c, "dn_rwkv4_forward", rwkv_fwd_call, &s, s.pr.impl == DN_IMPL_REF);
}

static dn_status rwkv_bwd_call(ctx *c, void *v, int ref) {
    (void)c;
    dn_rwkv4_bwd_params bp = ((ssm_case *)v)->bpr;
    if (ref) bp.fwd.impl = DN_IMPL_REF;
    return dn_rwkv4_backward(&bp);
}

static void fam_rwkv4_bwd(ctx *c) {
    ssm_case s;
    memset(&s, 0, sizeof s);
    s.pr = rwkv_build(c, 0);
    if (c->ic < 0) return;
    dn_rwkv4_params *p = &s.pr;
    {
        dn_rwkv4_params t = *p;
        t.B = sd(t.B), t.T = sd(t.T), t.C = sd(t.C);
        s.bpr = dn_rwkv4_bwd_params_default(&t);
        s.bpr.fwd = *p;
    }
    dn_rwkv4_bwd_params *bp = &s.bpr;
    int64_t B = p->B, T = p->T, C = p->C;
    view vdy = view3(c, B, T, C), vdk = view3(c, B, T, C), vdv = view3(c, B, T, C);
    if (big_view(&vdy) || big_view(&vdk) || big_view(&vdv)) return;
    int64_t ns = PROD(B, 3, C);
    bp->dy = in_view(c, &vdy, V_ANY, NULL), bp->dy_s = vdy.s;
    if (pick(c->f, 2)) bp->dfinal_state = flat(c, ns, V_ANY, 0, 0, NULL);
    int bk, bv;
    bp->dk = out_view(c, &vdk, &bk), bp->dk_s = vdk.s;
    bp->dv = out_view(c, &vdv, &bv), bp->dv_s = vdv.s;
    /* dk sums dy (v_t - wkv) terms, which cancel to 0 where the values a channel averages are
     * all alike (a v view with time stride 0 makes wkv = v and dk = 0 exactly); fp32 then leaves
     * rounding noise of the terms' size, the size of dv, not of dk: dk's error is measured with
     * dv's reference RMS as the floor, as attn_bwd's dq and dk */
    c->b[bk].scale_of = 1 + bv;
    bp->dtime_decay = flat(c, C, V_ANY, 1, 1, NULL);
    bp->dtime_first = flat(c, C, V_ANY, 1, 1, NULL);
    if (pick(c->f, 2)) bp->dinitial_state = flat(c, ns, V_ANY, 1, 0, NULL);
    unsigned am = pick(c->f, 16);
    if (am == 0) bp->dv = bp->dk, bp->dv_s = bp->dk_s, c->alias = 1, c->ic = 0;
    if (am == 1) bp->dtime_first = NULL, c->ic = 0;
    exec(c, "dn_rwkv4_backward", rwkv_bwd_call, &s, p->impl == DN_IMPL_REF);
}

/* ======================================================================================== */
/* Short convolution                                                                          */
/* ======================================================================================== */

static dn_conv_params conv_build(ctx *c, int outputs) {
    fz *f = c->f;
    int64_t B = dim(f, 1, 2), T = dim(f, 0, 40), D = dim(f, 1, 40), W = dim(f, 2, 4);
    if (pick(f, 16) == 0) W = dim(f, 0, 6);
    if (B < 1 || T < 0 || D < 1 || W < 2 || W > 4) c->ic = 0;
    dn_conv_params p = dn_conv_params_default(sd(B), sd(T), sd(D), sd(W));
    p.B = B, p.T = T, p.D = D, p.W = W;
    pick_vmode(c);
    p.impl = pick_impl(c, 2);
    p.n_threads = pick_threads(c);
    p.silu = pick(f, 2);
    view vx = view3(c, B, T, D), vy = view3(c, B, T, D);
    if (big_view(&vx) || big_view(&vy)) {
        c->ic = -1;
        return p;
    }
    p.x = in_view(c, &vx, V_ANY, NULL), p.x_s = vx.s;
    p.weight = flat(c, PROD(D, W), V_ANY, 0, 0, NULL);
    if (pick(f, 2)) p.bias = flat(c, D, V_ANY, 0, 0, NULL);
    int64_t ns = PROD(B, D, W > 0 ? W - 1 : 0);
    if (outputs) {
        unsigned am = pick(f, 12);
        if (am == 0 && !memcmp(&vy.s, &vx.s, sizeof vy.s)) {
            p.y = (float *)p.x, p.y_s = vx.s;
            c->b[0].out = 1;
            c->alias = 1, c->ic = 0;
        } else {
            p.y = out_view(c, &vy, NULL), p.y_s = vy.s;
        }
        int hi = pick(f, 2), hf = pick(f, 2);
        if (hi) p.initial_state = flat(c, ns, V_ANY, 0, 0, NULL);
        if (hf) {
            if (am == 1 && hi) {
                p.final_state = (float *)p.initial_state;
                c->b[c->nb - 1].out = 1;
                memset(c->b[c->nb - 1].mask, 1, c->b[c->nb - 1].bytes / 4);
            } else if (am == 2 && hi && ns > 1 && ns <= FZ_LIMIT) {
                int bi = buf_new(c, sizeof(float) * (size_t)(ns + 1), 0);
                fill_values(c, bi, V_ANY);
                c->b[bi].out = 1;
                memset(c->b[bi].mask, 1, (size_t)ns + 1);
                p.initial_state = c->b[bi].p;
                p.final_state = c->b[bi].p + 1;
                c->alias = 1, c->ic = 0;
            } else {
                p.final_state = flat(c, ns, V_ANY, 1, 0, NULL);
            }
        }
    } else if (pick(f, 2)) {
        p.initial_state = flat(c, ns, V_ANY, 0, 0, NULL);
    }
    if (pick(f, 32) == 0) p.weight = NULL, c->ic = 0;
    return p;
}

static dn_status conv_fwd_call(ctx *c, void *v, int ref) {
    (void)c;
    dn_conv_params p = ((ssm_case *)v)->pc;
    if (ref) p.impl = DN_IMPL_REF;
    return dn_conv_forward(&p);
}

static void fam_conv(ctx *c) {
    ssm_case s;
    memset(&s, 0, sizeof s);
    s.pc = conv_build(c, 1);
    if (c->ic < 0) return;
    exec(c, "dn_conv_forward", conv_fwd_call, &s, s.pc.impl == DN_IMPL_REF);
}

static dn_status conv_bwd_call(ctx *c, void *v, int ref) {
    (void)c;
    dn_conv_bwd_params bp = ((ssm_case *)v)->bpc;
    if (ref) bp.fwd.impl = DN_IMPL_REF;
    return dn_conv_backward(&bp);
}

static void fam_conv_bwd(ctx *c) {
    ssm_case s;
    memset(&s, 0, sizeof s);
    s.pc = conv_build(c, 0);
    if (c->ic < 0) return;
    dn_conv_params *p = &s.pc;
    {
        dn_conv_params t = *p;
        t.B = sd(t.B), t.T = sd(t.T), t.D = sd(t.D), t.W = sd(t.W);
        s.bpc = dn_conv_bwd_params_default(&t);
        s.bpc.fwd = *p;
    }
    dn_conv_bwd_params *bp = &s.bpc;
    int64_t B = p->B, T = p->T, D = p->D, W = p->W;
    view vdy = view3(c, B, T, D), vdx = view3(c, B, T, D);
    if (big_view(&vdy) || big_view(&vdx)) return;
    int64_t ns = PROD(B, D, W > 0 ? W - 1 : 0);
    int bdy;
    bp->dy = in_view(c, &vdy, V_ANY, &bdy), bp->dy_s = vdy.s;
    if (pick(c->f, 2)) bp->dfinal_state = flat(c, ns, V_ANY, 0, 0, NULL);
    bp->dx = out_view(c, &vdx, NULL), bp->dx_s = vdx.s;
    bp->dweight = flat(c, PROD(D, W), V_ANY, 1, 1, NULL);
    if (present(c, p->bias != NULL)) bp->dbias = flat(c, D, V_ANY, 1, 1, NULL);
    if (pick(c->f, 2)) bp->dinitial_state = flat(c, ns, V_ANY, 1, 0, NULL);
    unsigned am = pick(c->f, 16);
    if (am == 0)
        bp->dx = (float *)bp->dy, bp->dx_s = bp->dy_s, c->b[bdy].out = 1, c->alias = 1, c->ic = 0;
    if (am == 1) bp->dweight = NULL, c->ic = 0;
    exec(c, "dn_conv_backward", conv_bwd_call, &s, p->impl == DN_IMPL_REF);
}

/* ======================================================================================== */
/* Names and small queries                                                                    */
/* ======================================================================================== */

static void fam_names(ctx *c) {
    fz *f = c->f;
    char s[40];
    size_t n = pick(f, sizeof s);
    for (size_t i = 0; i < n; i++)
        s[i] = (char)u8(f);
    s[n] = 0;
    static const char *known[] = {"linear_attn",  "gla",     "deltanet", "gdn",
                                  "softmax_attn", "mamba1",  "mamba2",   "rwkv4",
                                  "short_conv",   "generic", "avx2",     "avx512"};
    if (pick(f, 4) == 0) snprintf(s, sizeof s, "%s", known[pick(f, 12)]);
    dn_op op = (dn_op)0x5a5a;
    dn_isa isa = (dn_isa)0x5a5a;
    c->call = "dn_op_from_name";
    dn_status st = dn_op_from_name(pick(f, 32) ? s : NULL, &op);
    if (st != DN_OK && op != (dn_op)0x5a5a) fz_fail(c, "(b) error-writes-nothing", "*op written");
    if (st == DN_OK && (strcmp(dn_op_name(op) ? dn_op_name(op) : "", s)))
        fz_fail(c, "name-roundtrip", s);
    if (dn_op_from_name(s, NULL) == DN_OK) fz_fail(c, "null-rejected", "op out NULL");
    c->call = "dn_isa_from_name";
    st = dn_isa_from_name(pick(f, 32) ? s : NULL, &isa);
    if (st != DN_OK && isa != (dn_isa)0x5a5a)
        fz_fail(c, "(b) error-writes-nothing", "*isa written");
    if (st == DN_OK && strcmp(dn_isa_name(isa) ? dn_isa_name(isa) : "", s))
        fz_fail(c, "name-roundtrip", s);
    if (dn_isa_from_name(s, NULL) == DN_OK) fz_fail(c, "null-rejected", "isa out NULL");
    int x = (int)(int8_t)u8(f);
    c->call = "name tables";
    if (!dn_status_str((dn_status)x)) fz_fail(c, "never-null", "dn_status_str");
    const char *nm = dn_op_name((dn_op)x);
    if ((x >= 0 && x < DN_OP_COUNT) != (nm != NULL)) fz_fail(c, "op-name", "NULL iff out of range");
    (void)dn_impl_name((dn_impl)x);
    (void)dn_isa_name((dn_isa)x);
    (void)dn_dtype_name((dn_dtype)x);
    if (!dn_last_error() || !dn_build_info()) fz_fail(c, "never-null", "last_error/build_info");
    dn_isa a = dn_isa_active();
    if ((unsigned)a >= DN_ISA_COUNT || a > dn_isa_best()) fz_fail(c, "isa", "active out of range");
    int nt = dn_get_num_threads();
    dn_set_num_threads(x);
    if (dn_get_num_threads() < 0) fz_fail(c, "threads", "negative thread count");
    dn_set_num_threads(nt);
}

/* ======================================================================================== */

void dn_fuzz_one(const uint8_t *data, size_t size, int family) {
    fz f = {data, size, 0};
    ctx c;
    memset(&c, 0, sizeof c);
    c.f = &f;
    c.ic = 1;
    c.call = "?";
    if (family < 0) family = (int)(u8(&f) % FZ_FAMILY_COUNT);
    if (family == FZ_JSON || family == FZ_SAFETENSORS || family == FZ_CHECKPOINT ||
        family == FZ_TOKENIZER || family == FZ_HF) {
        /* the rest of the input is the file */
        const int js = family == FZ_JSON, ck = family == FZ_CHECKPOINT, tk = family == FZ_TOKENIZER;
        const int hf = family == FZ_HF;
        c.call = js   ? "dn_json_parse"
                 : ck ? "dn_checkpoint_parse"
                 : tk ? "dn_tokenizer_parse"
                 : hf ? "dn_model_load_hf"
                      : "dn_st_parse";
        const char *bad = js   ? dn_fuzz_json(f.d + f.i, f.n - f.i)
                          : ck ? dn_fuzz_checkpoint(f.d + f.i, f.n - f.i)
                          : tk ? dn_fuzz_tokenizer(f.d + f.i, f.n - f.i)
                          : hf ? dn_fuzz_hf(f.d + f.i, f.n - f.i)
                               : dn_fuzz_safetensors(f.d + f.i, f.n - f.i);
        if (bad) fz_fail(&c, "file-parser", bad);
        return;
    }
    maybe_set_isa(&c);
    switch (family) {
    case FZ_LA_FWD: fam_la_fwd(&c); break;
    case FZ_LA_STEP: fam_la_step(&c); break;
    case FZ_LA_BWD: fam_la_bwd(&c); break;
    case FZ_LA_TRAIN: fam_la_train(&c); break;
    case FZ_ATTN_FWD: fam_attn_fwd(&c); break;
    case FZ_ATTN_BWD: fam_attn_bwd(&c); break;
    case FZ_KV: fam_kv(&c); break;
    case FZ_MAMBA: fam_mamba(&c); break;
    case FZ_MAMBA_BWD: fam_mamba_bwd(&c); break;
    case FZ_MAMBA2: fam_mamba2(&c); break;
    case FZ_MAMBA2_BWD: fam_mamba2_bwd(&c); break;
    case FZ_RWKV4: fam_rwkv4(&c); break;
    case FZ_RWKV4_BWD: fam_rwkv4_bwd(&c); break;
    case FZ_CONV: fam_conv(&c); break;
    case FZ_CONV_BWD: fam_conv_bwd(&c); break;
    default: fam_names(&c); break;
    }
    ctx_free(&c);
}

/* ---- libFuzzer entry: DN_FUZZ_FAMILY=<name> pins the family ---- */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int family = -2;
    if (family == -2) {
        const char *e = getenv("DN_FUZZ_FAMILY");
        family = e && *e ? dn_fuzz_family_from_name(e) : -1;
        if (e && *e && family < 0) {
            fprintf(stderr, "DN_FUZZ_FAMILY=%s: unknown family\n", e);
            abort();
        }
    }
    dn_fuzz_one(data, size, family);
    return 0;
}

/* ---- the bounded loop of the test driver ---- */
static int test_fuzz_bounded(void) {
    /* DN_FUZZ_ITERS overrides the count; every family gets the same share */
    const char *e = getenv("DN_FUZZ_ITERS");
    long iters = e ? atol(e) : 3200;
    rng r = {0x5eed0f2a7ull};
    uint8_t buf[160];
    volatile int fails = 0;
    jmp_buf env;
    for (volatile long i = 0; i < iters; i++) {
        size_t n = 16 + rng_next(&r) % (sizeof buf - 16);
        for (size_t j = 0; j < n; j++)
            buf[j] = (uint8_t)rng_next(&r);
        bounded_jmp = &env;
        if (setjmp(env) == 0) {
            dn_fuzz_one(buf, n, (int)(i % FZ_FAMILY_COUNT));
        } else { /* the violation is printed; this input's buffers are leaked, on purpose */
            printf("    FAIL fuzz input %ld (family %s)\n", i,
                   dn_fuzz_family_name((int)(i % FZ_FAMILY_COUNT)));
            if (++fails >= 20) break;
        }
        bounded_jmp = NULL;
    }
    dn_set_isa(dn_isa_best());
    return fails;
}

/* One input through dn_fuzz_one; 1 when it violates a property (printed). */
static int replay(const uint8_t *buf, size_t n, int family) {
    jmp_buf env;
    bounded_jmp = &env;
    int bad = 0;
    if (setjmp(env) == 0)
        dn_fuzz_one(buf, n, family);
    else
        bad = 1;
    bounded_jmp = NULL;
    return bad;
}

/* Inputs libFuzzer found, replayed (tests/fuzz/regressions/FAMILY-ID, README there): each
 * must now pass every property. Run from the repository root, as `make test` does. */
static int test_fuzz_regressions(void) {
    static const char *const files[] = {"attn_bwd-93926989", "attn_bwd-383adedd",
                                        "mamba2_bwd-0b6ea07d", "rwkv4_bwd-763e6539"};
    int fails = 0;
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char path[256], fam[32];
        snprintf(path, sizeof path, "tests/fuzz/regressions/%s", files[i]);
        snprintf(fam, sizeof fam, "%.*s", (int)(strchr(files[i], '-') - files[i]), files[i]);
        FILE *f = fopen(path, "rb");
        uint8_t buf[4096];
        const size_t n = f ? fread(buf, 1, sizeof buf, f) : 0;
        if (f) fclose(f);
        const int family = dn_fuzz_family_from_name(fam);
        if (!f || family < 0 || replay(buf, n, family)) {
            printf("    FAIL %s\n", path);
            fails++;
        }
    }
    dn_set_isa(dn_isa_best());
    return fails;
}

const test_case dn_tests_fuzz[] = {
    {"fuzz_bounded", test_fuzz_bounded},
    {"fuzz_regressions", test_fuzz_regressions},
    {NULL, NULL},
};
