/*
 * test_attn.c - tests of causal softmax attention: the tiled prefill at every SIMD level against
 * the double-precision reference (grouped heads, windows, strided views, queries aligned to the
 * end of the keys), decode over the KV cache against prefill (fp32 exactly, fp16/bf16 within their
 * precision), extreme logits, rows without keys, the cache's capacity rules and bad input.
 */
#include "../src/half.h"
#include "test.h"

#define TOL 1e-5

typedef struct {
    dn_attn_params p;
    float *q, *k, *v, *obuf, *lse;
    int64_t nq, nk, nv, nobuf;
    unsigned char *omask;
} aproblem;

static int64_t vsize(dn_strides s, int64_t B, int64_t T, int64_t H, int64_t D) {
    if (B == 0 || T == 0) return 1;
    return (B - 1) * s.b + (T - 1) * s.t + (H - 1) * s.h + D;
}

static dn_strides pad_strides(int64_t T, int64_t H, int64_t D, int64_t pad) {
    dn_strides s = {0, 0, D + pad};
    s.t = H * s.h + pad + 1;
    s.b = T * s.t + 2 * pad;
    return s;
}

static void aproblem_init(aproblem *a, int64_t B, int64_t TQ, int64_t TK, int64_t H, int64_t HKV,
                          int64_t D, int64_t window, int strided, float qamp, uint64_t seed) {
    memset(a, 0, sizeof *a);
    rng r = {seed};
    dn_attn_params p = dn_attn_params_default(B, TK, H, HKV, D);
    p.TQ = TQ;
    p.q_s = (dn_strides){TQ * H * D, H * D, D};
    p.o_s = p.q_s;
    if (strided) {
        p.q_s = pad_strides(TQ, H, D, 3);
        p.o_s = pad_strides(TQ, H, D, 1);
        p.k_s = pad_strides(TK, HKV, D, 5);
        p.v_s = pad_strides(TK, HKV, D, 2);
    }
    p.window = window;
    a->nq = vsize(p.q_s, B, TQ, H, D);
    a->nk = vsize(p.k_s, B, TK, HKV, D);
    a->nv = vsize(p.v_s, B, TK, HKV, D);
    a->nobuf = vsize(p.o_s, B, TQ, H, D);
    a->q = falloc(a->nq), a->k = falloc(a->nk), a->v = falloc(a->nv);
    a->obuf = falloc(a->nobuf), a->lse = falloc(B * H * TQ);
    a->omask = calloc((size_t)a->nobuf, 1);
    fill_uniform(&r, a->q, a->nq, -qamp, qamp);
    fill_uniform(&r, a->k, a->nk, -1, 1);
    fill_uniform(&r, a->v, a->nv, -1, 1);
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < TQ; t++)
            for (int64_t h = 0; h < H; h++)
                memset(a->omask + b * p.o_s.b + t * p.o_s.t + h * p.o_s.h, 1, (size_t)D);
    p.q = a->q, p.k = a->k, p.v = a->v, p.o = a->obuf, p.lse = a->lse;
    a->p = p;
}

static void aproblem_free(aproblem *a) {
    free(a->q), free(a->k), free(a->v), free(a->obuf), free(a->lse), free(a->omask);
}

/* Runs with poisoned outputs, gathers o into [B,TQ,H,D] and lse into [B,H,TQ]. */
static int arun(aproblem *a, dn_impl impl, float *o_out, float *lse_out, const char *what) {
    int fails = 0;
    dn_attn_params p = a->p;
    p.impl = impl;
    poison(a->obuf, a->nobuf);
    poison(a->lse, p.B * p.H * p.TQ);
    dn_status st = dn_attn_forward(&p);
    CHECK(st == DN_OK, "%s: %s", what, dn_last_error());
    int64_t unwritten = 0, stray = 0;
    for (int64_t i = 0; i < a->nobuf; i++) {
        if (a->omask[i] && !isfinite(a->obuf[i])) unwritten++;
        if (!a->omask[i] && !isnan(a->obuf[i])) stray++;
    }
    for (int64_t i = 0; i < p.B * p.H * p.TQ; i++)
        unwritten += isnan(a->lse[i]);
    CHECK(unwritten == 0 && stray == 0, "%s: %lld unwritten, %lld stray writes", what,
          (long long)unwritten, (long long)stray);
    for (int64_t b = 0; b < p.B; b++)
        for (int64_t t = 0; t < p.TQ; t++)
            for (int64_t h = 0; h < p.H; h++)
                memcpy(o_out + ((b * p.TQ + t) * p.H + h) * p.D,
                       a->obuf + b * p.o_s.b + t * p.o_s.t + h * p.o_s.h, sizeof(float) * p.D);
    memcpy(lse_out, a->lse, sizeof(float) * p.B * p.H * p.TQ);
    return fails;
}

/* lse holds -inf for rows without keys: compare those exactly, the rest by relative RMS. */
static int check_lse(const char *what, const float *got, const float *ref, int64_t n) {
    int fails = 0;
    float *g2 = falloc(n), *r2 = falloc(n);
    for (int64_t i = 0; i < n; i++) {
        CHECK(isinf(got[i]) == isinf(ref[i]), "%s: lse[%lld] = %g, reference %g", what,
              (long long)i, got[i], ref[i]);
        g2[i] = isinf(ref[i]) ? 0 : got[i];
        r2[i] = isinf(ref[i]) ? 0 : ref[i];
    }
    fails += check_close(what, g2, r2, n, TOL);
    free(g2), free(r2);
    return fails;
}

static int check_prefill(aproblem *a, const char *label) {
    int fails = 0;
    const int64_t no = a->p.B * a->p.TQ * a->p.H * a->p.D, nl = a->p.B * a->p.H * a->p.TQ;
    float *o_ref = falloc(no), *l_ref = falloc(nl), *o = falloc(no), *l = falloc(nl);
    char what[200];
    snprintf(what, sizeof what, "%s ref", label);
    fails += arun(a, DN_IMPL_REF, o_ref, l_ref, what);
    dn_isa best = dn_isa_best();
    for (int isa = 0; isa <= (int)best; isa++) {
        if (!test_use_isa((dn_isa)isa)) continue;
        snprintf(what, sizeof what, "%s %s", label, dn_isa_name((dn_isa)isa));
        fails += arun(a, DN_IMPL_AUTO, o, l, what);
        fails += check_close(what, o, o_ref, no, TOL);
        fails += check_lse(what, l, l_ref, nl);
    }
    dn_set_isa(best);
    free(o_ref), free(l_ref), free(o), free(l);
    return fails;
}

static int test_prefill_grid(void) {
    static const int64_t Ts[] = {1, 5, 64, 65, 300, 2048};
    static const int64_t Ds[] = {32, 64, 100, 128};
    static const int64_t heads[][2] = {{1, 1}, {4, 4}, {8, 2}};
    int fails = 0, idx = 0;
    for (int ti = 0; ti < 6; ti++)
        for (int hi = 0; hi < 3; hi++)
            for (int win = 0; win < 2; win++, idx++) {
                const int64_t T = Ts[ti], H = heads[hi][0], HKV = heads[hi][1];
                int64_t D = Ds[idx % 4], B = T >= 300 ? 1 : 2;
                if (T == 2048 && H == 8 && D > 64) D = 64; /* keep the double reference quick */
                const int64_t W = win ? (T > 8 ? T / 3 + 1 : 2) : 0;
                aproblem a;
                aproblem_init(&a, B, T, T, H, HKV, D, W, idx % 2, 1.0f, 100 + idx);
                char label[160];
                snprintf(label, sizeof label,
                         "attn B=%lld T=%lld H=%lld HKV=%lld D=%lld W=%lld "
                         "strided=%d",
                         (long long)B, (long long)T, (long long)H, (long long)HKV, (long long)D,
                         (long long)W, idx % 2);
                int f = check_prefill(&a, label);
                if (f) printf("  case: %s\n", label);
                fails += f;
                aproblem_free(&a);
            }
    return fails;
}

/* New queries aligned to the end of longer keys (chunked prefill), and more queries than keys
 * (the first rows see no key: zeros and lse = -inf). */
static int test_prefill_offsets(void) {
    /* TQ, TK, window, D: head dims up to 256, and 72 (not a multiple of any vector width) */
    static const int64_t shapes[][4] = {{17, 300, 0, 64}, {64, 129, 50, 64}, {40, 25, 0, 64},
                                        {7, 3, 2, 64},    {90, 90, 0, 256},  {33, 200, 40, 256},
                                        {150, 150, 0, 72}};
    int fails = 0;
    for (int i = 0; i < 7; i++) {
        aproblem a;
        aproblem_init(&a, 2, shapes[i][0], shapes[i][1], 4, 2, shapes[i][3], shapes[i][2], i % 2,
                      1.0f, 7 + i);
        char label[80];
        snprintf(label, sizeof label, "attn TQ=%lld TK=%lld W=%lld D=%lld", (long long)shapes[i][0],
                 (long long)shapes[i][1], (long long)shapes[i][2], (long long)shapes[i][3]);
        fails += check_prefill(&a, label);
        if (shapes[i][0] > shapes[i][1]) { /* rows 0 .. TQ-TK-1 see nothing */
            float *o = falloc(2 * shapes[i][0] * 4 * shapes[i][3]),
                  *l = falloc(2 * 4 * shapes[i][0]);
            fails += arun(&a, DN_IMPL_AUTO, o, l, label);
            int64_t nz = 0;
            for (int64_t t = 0; t < shapes[i][0] - shapes[i][1]; t++)
                for (int64_t x = 0; x < 4 * shapes[i][3]; x++)
                    nz += o[t * 4 * shapes[i][3] + x] != 0.0f;
            CHECK(nz == 0 && isinf(l[0]) && l[0] < 0, "%s: rows with no key are not zero", label);
            free(o), free(l);
        }
        aproblem_free(&a);
    }
    return fails;
}

/* Scores of +-1e4 stay finite and follow the reference. A score of 1e4 carries an fp32
 * rounding of about 1e-3 (its ulp) plus the dot product's accumulated rounding, which moves the
 * weights of near-tied keys by that relative amount: the comparison allows 1e-2 there, and the
 * ordinary 1e-5 on a second run with the same inputs scaled to ordinary logits. */
static int test_extreme_logits(void) {
    int fails = 0;
    aproblem a;
    aproblem_init(&a, 1, 200, 200, 2, 1, 64, 0, 0, 30000.0f, 99); /* scores with std ~ 1e4 */
    const int64_t no = 200 * 2 * 64;
    float *o_ref = falloc(no), *l_ref = falloc(400), *o = falloc(no), *l = falloc(400);
    fails += arun(&a, DN_IMPL_REF, o_ref, l_ref, "extreme ref");
    float maxs = 0;
    for (int64_t i = 0; i < 400; i++)
        maxs = fabsf(l_ref[i]) > maxs ? fabsf(l_ref[i]) : maxs;
    CHECK(maxs > 5000, "the test's logits are not extreme (max lse %g)", maxs);
    fails += arun(&a, DN_IMPL_AUTO, o, l, "extreme logits");
    fails += check_close("extreme logits", o, o_ref, no, 1e-2);
    fails += check_close("extreme logits lse", l, l_ref, 400, 1e-5);
    free(o_ref), free(l_ref), free(o), free(l);
    aproblem_free(&a);
    return fails;
}

/* Decode token by token over an fp32 cache equals prefill; fp16 / bf16 caches equal the reference
 * on rounded keys and values, and stay within their precision of the unrounded result. */
static int decode_case(dn_dtype dt, int64_t window, int64_t TQstep, int grow, uint64_t seed,
                       int64_t H, int64_t HKV, int64_t D) {
    int fails = 0;
    const int64_t B = 2, T = 150;
    aproblem a;
    aproblem_init(&a, B, T, T, H, HKV, D, window, 0, 1.0f, seed);
    const int64_t no = B * T * H * D;
    float *o_ref = falloc(no), *l_ref = falloc(B * H * T);
    /* reference on the values the cache will hold */
    aproblem r = a;
    float *kr = falloc(a.nk), *vr = falloc(a.nv);
    for (int64_t i = 0; i < a.nk; i++)
        kr[i] = dt == DN_F32   ? a.k[i]
                : dt == DN_F16 ? dn_f16_to_f32(dn_f32_to_f16(a.k[i]))
                               : dn_bf16_to_f32(dn_f32_to_bf16(a.k[i]));
    for (int64_t i = 0; i < a.nv; i++)
        vr[i] = dt == DN_F32   ? a.v[i]
                : dt == DN_F16 ? dn_f16_to_f32(dn_f32_to_f16(a.v[i]))
                               : dn_bf16_to_f32(dn_f32_to_bf16(a.v[i]));
    r.p.k = kr, r.p.v = vr;
    fails += arun(&r, DN_IMPL_REF, o_ref, l_ref, "decode ref");
    float *o_exact = falloc(no), *l_exact = falloc(B * H * T);
    fails += arun(&a, DN_IMPL_REF, o_exact, l_exact, "decode unrounded ref");

    dn_kv_cache *c = NULL;
    dn_status st = dn_kv_cache_create(&c, B, HKV, D, grow ? 8 : T, dt, grow ? DN_KV_GROW : 0);
    CHECK(st == DN_OK, "create: %s", dn_last_error());
    if (st != DN_OK) return fails;
    float *o_dec = falloc(no), *lse = falloc(B * H * TQstep), *o = falloc(B * TQstep * H * D);
    for (int64_t t0 = 0; t0 < T; t0 += TQstep) {
        const int64_t n = T - t0 < TQstep ? T - t0 : TQstep;
        st = dn_kv_cache_append(c, a.k + t0 * a.p.k_s.t, a.p.k_s, a.v + t0 * a.p.v_s.t, a.p.v_s, n);
        CHECK(st == DN_OK, "append at %lld: %s", (long long)t0, dn_last_error());
        dn_strides os = {n * H * D, H * D, D};
        poison(o, B * n * H * D);
        st = dn_kv_cache_attend(c, o, os, lse, a.q + t0 * a.p.q_s.t, a.p.q_s, n, H, a.p.scale,
                                window, 0);
        CHECK(st == DN_OK, "attend at %lld: %s", (long long)t0, dn_last_error());
        for (int64_t b = 0; b < B; b++)
            for (int64_t i = 0; i < n; i++)
                memcpy(o_dec + (b * T + t0 + i) * H * D, o + (b * n + i) * H * D,
                       sizeof(float) * H * D);
    }
    CHECK(dn_kv_cache_len(c) == T, "cache length %lld, want %lld", (long long)dn_kv_cache_len(c),
          (long long)T);
    CHECK(dn_kv_cache_used_bytes(c) == (size_t)(2 * B * HKV * T * D * (dt == DN_F32 ? 4 : 2)),
          "used bytes %zu", dn_kv_cache_used_bytes(c));
    char what[120];
    snprintf(what, sizeof what, "decode %s W=%lld step=%lld grow=%d H=%lld HKV=%lld D=%lld",
             dn_dtype_name(dt), (long long)window, (long long)TQstep, grow, (long long)H,
             (long long)HKV, (long long)D);
    fails += check_close(what, o_dec, o_ref, no, TOL);
    /* Each 16-bit value carries a relative rounding error of at most 2^-9 (bf16) or 2^-12 (fp16);
     * outputs are weighted means of values with weights perturbed by the rounded keys, so their
     * relative RMS error stays within a small multiple of that unit roundoff. */
    const double prec = dt == DN_BF16 ? 8e-3 : dt == DN_F16 ? 1e-3 : TOL;
    snprintf(what, sizeof what, "decode %s against unrounded", dn_dtype_name(dt));
    fails += check_close(what, o_dec, o_exact, no, prec);
    dn_kv_cache_free(c);
    free(o_ref), free(l_ref), free(kr), free(vr), free(o_exact), free(l_exact);
    free(o_dec), free(lse), free(o);
    aproblem_free(&a);
    return fails;
}

static int test_decode(void) {
    int fails = 0;
    dn_isa best = dn_isa_best();
    for (int isa = 0; isa <= (int)best; isa++) {
        if (!test_use_isa((dn_isa)isa)) continue;
        for (int dt = 0; dt < DN_DTYPE_COUNT; dt++) {
            /* query rows per KV head 4, 8 (two groups of four) and 6 (a group and two rows
             * alone); head dims with an odd count of full vectors (the four-row loops' single
             * last vector: 72 and 40 at AVX2's 8 lanes, 36 at the baseline's 4) and with scalar
             * tails (100; 36 at 8 and 16 lanes); several query tokens per step: rows that see
             * different keys in one block */
            int f = decode_case((dn_dtype)dt, 0, 1, 0, 11 + dt, 8, 2, 100);
            f += decode_case((dn_dtype)dt, 33, 3, 1, 21 + dt, 8, 2, 100);
            f += decode_case((dn_dtype)dt, 0, 1, 0, 31 + dt, 16, 2, 72);
            f += decode_case((dn_dtype)dt, 17, 2, 1, 41 + dt, 12, 2, 40);
            f += decode_case((dn_dtype)dt, 0, 1, 1, 51 + dt, 6, 1, 36);
            if (f)
                printf("  isa %s dtype %s\n", dn_isa_name((dn_isa)isa),
                       dn_dtype_name((dn_dtype)dt));
            fails += f;
        }
    }
    dn_set_isa(best);
    return fails;
}

/* A long cache, so that the decode splits its keys across threads and merges them. */
static int test_decode_long(void) {
    int fails = 0;
    const int64_t T = 5000, H = 4, HKV = 1, D = 64;
    aproblem a;
    aproblem_init(&a, 1, 1, T, H, HKV, D, 0, 0, 3.0f, 5);
    float *o_ref = falloc(H * D), *l_ref = falloc(H), *o = falloc(H * D), *l = falloc(H);
    fails += arun(&a, DN_IMPL_REF, o_ref, l_ref, "long decode ref");
    dn_kv_cache *c;
    CHECK(dn_kv_cache_create(&c, 1, HKV, D, T, DN_F32, 0) == DN_OK, "create");
    CHECK(dn_kv_cache_append(c, a.k, a.p.k_s, a.v, a.p.v_s, T) == DN_OK, "append");
    for (int threads = 1; threads <= 3; threads++) {
        CHECK(dn_kv_cache_attend(c, o, a.p.o_s, l, a.q, a.p.q_s, 1, H, a.p.scale, 0, threads) ==
                  DN_OK,
              "attend: %s", dn_last_error());
        fails += check_close("long decode", o, o_ref, H * D, TOL);
        fails += check_lse("long decode lse", l, l_ref, H);
    }
    dn_kv_cache_free(c);
    free(o_ref), free(l_ref), free(o), free(l);
    aproblem_free(&a);
    return fails;
}

static int test_half_conversions(void) {
    int fails = 0;
    static const struct {
        float f;
        uint16_t h, bf;
    } cases[] = {
        {1.0f, 0x3c00, 0x3f80},           {-2.0f, 0xc000, 0xc000},
        {65504.0f, 0x7bff, 0x4780},       {65520.0f, 0x7c00, 0x4780},
        {5.9604645e-8f, 0x0001, 0x3380},  {0.0f, 0x0000, 0x0000},
        {1.00048828125f, 0x3c00, 0x3f80}, /* halfway between two halves: ties to even */
        {1.00146484375f, 0x3c02, 0x3f80}, /* halfway, rounds up to even */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        CHECK(dn_f32_to_f16(cases[i].f) == cases[i].h, "f16(%g) = 0x%04x, want 0x%04x", cases[i].f,
              dn_f32_to_f16(cases[i].f), cases[i].h);
        CHECK(dn_f32_to_bf16(cases[i].f) == cases[i].bf, "bf16(%g) = 0x%04x, want 0x%04x",
              cases[i].f, dn_f32_to_bf16(cases[i].f), cases[i].bf);
    }
    for (uint32_t h = 0; h < 0x7c00; h++) /* every finite positive half survives the round trip */
        if (dn_f32_to_f16(dn_f16_to_f32((uint16_t)h)) != h) {
            CHECK(0, "half 0x%04x does not round-trip", h);
            break;
        }
    return fails;
}

static int test_memory_bound(void) {
    int fails = 0;
    size_t small = 0, large = 0;
    dn_attn_params p = dn_attn_params_default(1, 64, 16, 16, 128);
    float dummy[1];
    p.q = p.k = p.v = dummy;
    p.o = dummy;
    CHECK(dn_attn_workspace_size(&p, &small) == DN_OK, "%s", dn_last_error());
    p = dn_attn_params_default(1, 1 << 20, 16, 16, 128);
    p.q = p.k = p.v = dummy;
    p.o = dummy;
    CHECK(dn_attn_workspace_size(&p, &large) == DN_OK, "%s", dn_last_error());
    CHECK(small == large && small > 0, "workspace grows with T: %zu at T=64, %zu at T=2^20", small,
          large);
    CHECK(small < (size_t)dn_get_num_threads() * 512 * 1024,
          "workspace %zu bytes is more than O(block * D) per thread", small);
    return fails;
}

static int test_attn_bad_input(void) {
    int fails = 0;
    aproblem a;
    aproblem_init(&a, 2, 20, 20, 4, 2, 32, 0, 0, 1.0f, 3);
    fill_uniform(&(rng){1}, a.obuf, a.nobuf, -1, 1);
    float *copy = falloc(a.nobuf);
    memcpy(copy, a.obuf, sizeof(float) * a.nobuf);
    struct {
        const char *name;
        dn_attn_params p;
        dn_status want;
    } cases[12];
    int n = 0;
    for (int i = 0; i < 12; i++)
        cases[i].p = a.p;
    cases[n].name = "H not a multiple of HKV", cases[n].p.H = 5, cases[n++].want = DN_ERR_SHAPE;
    cases[n].name = "D > 256", cases[n].p.D = 300, cases[n++].want = DN_ERR_SHAPE;
    cases[n].name = "B = 0", cases[n].p.B = 0, cases[n++].want = DN_ERR_SHAPE;
    cases[n].name = "q NULL", cases[n].p.q = NULL, cases[n++].want = DN_ERR_NULL;
    cases[n].name = "v NULL", cases[n].p.v = NULL, cases[n++].want = DN_ERR_NULL;
    cases[n].name = "negative window", cases[n].p.window = -1, cases[n++].want = DN_ERR_ARG;
    cases[n].name = "scale inf", cases[n].p.scale = INFINITY, cases[n++].want = DN_ERR_ARG;
    cases[n].name = "chunk impl", cases[n].p.impl = DN_IMPL_CHUNK,
    cases[n++].want = DN_ERR_UNSUPPORTED;
    cases[n].name = "overlapping o", cases[n].p.o_s.t = 1, cases[n++].want = DN_ERR_STRIDE;
    cases[n].name = "negative stride", cases[n].p.k_s.h = -3, cases[n++].want = DN_ERR_STRIDE;
    for (int i = 0; i < n; i++) {
        dn_status s = dn_attn_forward(&cases[i].p);
        CHECK(s == cases[i].want, "%s: got '%s' want '%s'", cases[i].name, dn_status_str(s),
              dn_status_str(cases[i].want));
        CHECK(memcmp(copy, a.obuf, sizeof(float) * a.nobuf) == 0, "%s: output changed",
              cases[i].name);
    }
    CHECK(dn_attn_forward(NULL) == DN_ERR_NULL, "NULL params");

    /* the cache: bad creation, overflow refused and the cache left as it was */
    dn_kv_cache *c = NULL;
    CHECK(dn_kv_cache_create(&c, 1, 2, 0, 10, DN_F32, 0) == DN_ERR_SHAPE && c == NULL, "D = 0");
    CHECK(dn_kv_cache_create(&c, 1, 2, 32, 10, (dn_dtype)9, 0) == DN_ERR_ARG, "bad dtype");
    CHECK(dn_kv_cache_create(NULL, 1, 2, 32, 10, DN_F32, 0) == DN_ERR_NULL, "NULL out");
    CHECK(dn_kv_cache_create(&c, 2, 2, 32, 25, DN_BF16, 0) == DN_OK, "create: %s", dn_last_error());
    CHECK(dn_kv_cache_append(c, a.k, a.p.k_s, a.v, a.p.v_s, 20) == DN_OK, "append 20");
    size_t bytes = dn_kv_cache_bytes(c);
    dn_status s = dn_kv_cache_append(c, a.k, a.p.k_s, a.v, a.p.v_s, 6);
    CHECK(s == DN_ERR_FULL, "overflow: got %s", dn_status_str(s));
    CHECK(dn_kv_cache_len(c) == 20 && dn_kv_cache_bytes(c) == bytes, "overflow changed the cache");
    CHECK(dn_kv_cache_append(c, NULL, a.p.k_s, a.v, a.p.v_s, 1) == DN_ERR_NULL, "NULL k");
    CHECK(dn_kv_cache_attend(c, a.obuf, a.p.o_s, NULL, a.q, a.p.q_s, 20, 3, 0, 0, 0) ==
              DN_ERR_SHAPE,
          "H = 3 with HKV = 2");
    CHECK(dn_kv_cache_attend(c, a.obuf, a.p.o_s, NULL, NULL, a.p.q_s, 20, 4, 0, 0, 0) ==
              DN_ERR_NULL,
          "NULL q");
    CHECK(memcmp(copy, a.obuf, sizeof(float) * a.nobuf) == 0, "rejected attend changed o");
    CHECK(dn_kv_cache_reset(c) == DN_OK && dn_kv_cache_len(c) == 0, "reset");
    CHECK(dn_kv_cache_reset(NULL) == DN_ERR_NULL, "reset NULL");
    dn_kv_cache_free(c);
    dn_kv_cache_free(NULL);
    free(copy);
    aproblem_free(&a);
    return fails;
}

/* ---------------------------------------------------------------------------------------------
 * Masked positions contribute nothing, whatever they hold: an inf or NaN (or a huge key) at a
 * position some queries cannot see (the future, outside the window, before the queries' first
 * key) leaves those queries' outputs and gradients finite and equal to the reference, in the tiled
 * prefill, the decode over fp32 / fp16 / bf16 caches and the backward; keys no query sees get
 * gradients of exactly 0.
 * ------------------------------------------------------------------------------------------- */

/* got against ref over the elements where ref is finite (there got must be finite too). */
static int check_where_finite(const char *what, const float *got, const float *ref, int64_t n,
                              double tol) {
    float *g = falloc(n), *r = falloc(n);
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++)
        if (isfinite(ref[i])) g[m] = got[i], r[m] = ref[i], m++;
    int fails = check_close(what, g, r, m, tol);
    free(g), free(r);
    return fails;
}

typedef struct {
    int64_t TQ, TK, W, pos; /* poisoned position: a key (k, v) or a query row (q, dout) */
    int what;               /* 0 v, 1 k, 2 q, 3 dout (backward only) */
    float val;
} poison_case;

/* Whether query i sees key j (the mask of include/deltanet.h, written out). */
static int sees(int64_t TQ, int64_t TK, int64_t W, int64_t i, int64_t j) {
    const int64_t pos = TK - TQ + i;
    return j <= pos && (W == 0 || j > pos - W);
}

static int masked_poison_case(const poison_case *pc, int idx) {
    int fails = 0;
    const int64_t B = 1, H = 4, HKV = 2, D = 32, TQ = pc->TQ, TK = pc->TK, W = pc->W;
    const int64_t nq = B * TQ * H * D, nk = B * TK * HKV * D;
    rng r = {2000 + (uint64_t)idx};
    float *q = falloc(nq), *k = falloc(nk), *v = falloc(nk), *dO = falloc(nq);
    fill_uniform(&r, q, nq, -1, 1), fill_uniform(&r, k, nk, -1, 1), fill_uniform(&r, v, nk, -1, 1);
    fill_uniform(&r, dO, nq, -1, 1);
    /* the poison: element 0 of every head of one position, or the whole key when huge */
    for (int64_t hh = 0; hh < (pc->what >= 2 ? H : HKV); hh++)
        for (int64_t d = 0; d < (isfinite(pc->val) ? D : 1); d++) {
            float *x = pc->what == 0 ? v : pc->what == 1 ? k : pc->what == 2 ? q : dO;
            x[(pc->pos * (pc->what >= 2 ? H : HKV) + hh) * D + d] = pc->val;
        }
    char label[160];
    static const char *const names[4] = {"v", "k", "q", "dout"};
    snprintf(label, sizeof label, "TQ=%lld TK=%lld W=%lld %s[%lld]=%g", (long long)TQ,
             (long long)TK, (long long)W, names[pc->what], (long long)pc->pos, pc->val);
    dn_attn_params p = dn_attn_params_default(B, TK, H, HKV, D);
    p.TQ = TQ, p.q_s = p.o_s = (dn_strides){TQ * H * D, H * D, D}, p.window = W;
    float *o_ref = falloc(nq), *l_ref = falloc(B * H * TQ), *o = falloc(nq),
          *l = falloc(B * H * TQ);
    p.q = q, p.k = k, p.v = v, p.o = o_ref, p.lse = l_ref, p.impl = DN_IMPL_REF;
    CHECK(dn_attn_forward(&p) == DN_OK, "%s", dn_last_error());
    char what[240];
    dn_isa best = dn_isa_best();
    for (int isa = 0; isa <= (int)best; isa++) {
        if (!test_use_isa((dn_isa)isa)) continue;
        /* tiled prefill */
        dn_attn_params f = p;
        f.o = o, f.lse = l, f.impl = DN_IMPL_AUTO;
        poison(o, nq);
        CHECK(dn_attn_forward(&f) == DN_OK, "%s", dn_last_error());
        snprintf(what, sizeof what, "%s %s prefill", label, dn_isa_name((dn_isa)isa));
        fails += check_where_finite(what, o, o_ref, nq, TOL);
        /* decode over a cache of every dtype, all queries in one call */
        for (int dt = 0; dt < DN_DTYPE_COUNT && pc->what < 2; dt++) {
            float *kr = falloc(nk), *vr = falloc(nk), *o_r = falloc(nq), *o_d = falloc(nq);
            for (int64_t i = 0; i < nk; i++) {
                kr[i] = dt == DN_F32   ? k[i]
                        : dt == DN_F16 ? dn_f16_to_f32(dn_f32_to_f16(k[i]))
                                       : dn_bf16_to_f32(dn_f32_to_bf16(k[i]));
                vr[i] = dt == DN_F32   ? v[i]
                        : dt == DN_F16 ? dn_f16_to_f32(dn_f32_to_f16(v[i]))
                                       : dn_bf16_to_f32(dn_f32_to_bf16(v[i]));
            }
            dn_attn_params rr = p;
            rr.k = kr, rr.v = vr, rr.o = o_r, rr.lse = NULL;
            CHECK(dn_attn_forward(&rr) == DN_OK, "%s", dn_last_error());
            dn_kv_cache *c = NULL;
            CHECK(dn_kv_cache_create(&c, B, HKV, D, TK, (dn_dtype)dt, 0) == DN_OK, "%s",
                  dn_last_error());
            CHECK(dn_kv_cache_append(c, k, p.k_s, v, p.v_s, TK) == DN_OK, "%s", dn_last_error());
            poison(o_d, nq);
            CHECK(dn_kv_cache_attend(c, o_d, p.o_s, NULL, q, p.q_s, TQ, H, p.scale, W, 0) == DN_OK,
                  "%s", dn_last_error());
            snprintf(what, sizeof what, "%s %s decode %s", label, dn_isa_name((dn_isa)isa),
                     dn_dtype_name((dn_dtype)dt));
            fails += check_where_finite(what, o_d, o_r, nq, TOL);
            dn_kv_cache_free(c);
            free(kr), free(vr), free(o_r), free(o_d);
        }
        /* backward, from the reference forward's o and lse */
        float *gr[2][3];
        for (int w = 0; w < 2; w++)
            gr[w][0] = falloc(nq), gr[w][1] = falloc(nk), gr[w][2] = falloc(nk);
        for (int w = 0; w < 2; w++) {
            dn_attn_bwd_params b = dn_attn_bwd_params_default(&p);
            b.fwd.impl = w == 0 ? DN_IMPL_REF : DN_IMPL_AUTO;
            b.dout = dO, b.dq = gr[w][0], b.dk = gr[w][1], b.dv = gr[w][2];
            poison(gr[w][0], nq), poison(gr[w][1], nk), poison(gr[w][2], nk);
            CHECK(dn_attn_backward(&b) == DN_OK, "%s", dn_last_error());
        }
        /* The rows the poison reaches (those that see the poisoned key, or the poisoned row) have
         * non-finite or ill-conditioned gradients (a huge key times rounding), and so do the keys
         * those rows see. Everything else must be finite and equal to the reference. */
        static const char *const gn[3] = {"dq", "dk", "dv"};
        float *cg[2][3];
        int64_t ncl[3] = {0, 0, 0};
        for (int w = 0; w < 2; w++)
            cg[w][0] = falloc(nq), cg[w][1] = falloc(nk), cg[w][2] = falloc(nk);
        for (int64_t i = 0; i < TQ; i++) {
            if (pc->what < 2 ? !sees(TQ, TK, W, i, pc->pos) : i != pc->pos) {
                for (int w = 0; w < 2; w++)
                    memcpy(cg[w][0] + ncl[0], gr[w][0] + i * H * D, sizeof(float) * H * D);
                ncl[0] += H * D;
            }
        }
        for (int64_t j = 0; j < TK; j++) {
            int dirty = 0;
            for (int64_t i = 0; i < TQ; i++)
                dirty |= (pc->what < 2 ? sees(TQ, TK, W, i, pc->pos) : i == pc->pos) &&
                         sees(TQ, TK, W, i, j);
            if (dirty) continue;
            for (int a = 1; a < 3; a++) {
                for (int w = 0; w < 2; w++)
                    memcpy(cg[w][a] + ncl[a], gr[w][a] + j * HKV * D, sizeof(float) * HKV * D);
                ncl[a] += HKV * D;
            }
        }
        for (int a = 0; a < 3; a++) {
            snprintf(what, sizeof what, "%s %s backward %s (%lld clean)", label,
                     dn_isa_name((dn_isa)isa), gn[a], (long long)ncl[a]);
            fails += check_close(what, cg[0][a], cg[0][a], ncl[a], 0); /* the reference: finite */
            fails += check_close(what, cg[1][a], cg[0][a], ncl[a], 1e-5);
        }
        for (int w = 0; w < 2; w++)
            free(cg[w][0]), free(cg[w][1]), free(cg[w][2]);
        /* keys no query sees: gradients exactly 0 in both */
        for (int64_t j = 0; j < TK; j++) {
            int seen = 0;
            for (int64_t i = 0; i < TQ; i++)
                seen |= sees(TQ, TK, W, i, j);
            if (seen) continue;
            for (int64_t x = 0; x < HKV * D; x++)
                for (int w = 0; w < 2; w++)
                    CHECK(gr[w][1][j * HKV * D + x] == 0 && gr[w][2][j * HKV * D + x] == 0,
                          "%s %s: key %lld seen by no query has dk %g dv %g (%s)", label,
                          dn_isa_name((dn_isa)isa), (long long)j, gr[w][1][j * HKV * D + x],
                          gr[w][2][j * HKV * D + x], w ? "fast" : "ref");
        }
        for (int w = 0; w < 2; w++)
            free(gr[w][0]), free(gr[w][1]), free(gr[w][2]);
    }
    dn_set_isa(best);
    free(q), free(k), free(v), free(dO), free(o_ref), free(l_ref), free(o), free(l);
    return fails;
}

static int test_masked_poison(void) {
    const float inf = INFINITY, nan = NAN, huge = 1e30f;
    const poison_case cases[] = {
        {64, 64, 0, 63, 0, inf}, /* the issue: v[63] inf, seen only by the last row */
        {64, 64, 8, 0, 0, inf},  /* the issue: v[0] inf, outside the window of rows 8.. */
        {64, 64, 0, 63, 0, nan},    {64, 64, 0, 63, 1, inf},     {64, 64, 0, 63, 1, nan},
        {64, 64, 0, 63, 1, huge},   {64, 64, 8, 0, 1, nan},      {64, 64, 8, 0, 1, huge},
        {200, 200, 0, 130, 0, nan}, {200, 200, 0, 130, 1, inf}, /* inside a middle block */
        {200, 200, 50, 70, 0, inf}, {200, 200, 50, 70, 1, nan},  {40, 150, 0, 149, 0, inf},
        {40, 150, 0, 149, 1, nan},                              /* TQ < TK: future keys */
        {40, 150, 30, 100, 0, nan}, {40, 150, 30, 100, 1, inf}, /* before every query's window */
        {70, 64, 0, 63, 0, inf},                                /* TQ > TK: rows that see no key */
        {64, 64, 0, 5, 2, inf},     {200, 200, 16, 20, 2, nan}, /* a query: keys it cannot see */
        {64, 64, 0, 5, 3, inf},     {200, 200, 16, 150, 3, nan},
    };
    int fails = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        fails += masked_poison_case(&cases[i], (int)i);
    return fails;
}

/* The backward at 2 threads, REPEATS times: dq, dk and dv bitwise the same every time. Shapes with
 * several key blocks, one KV head (dq summed over key-block segments) and several. */
static int test_attn_bwd_reproducible(void) {
    int fails = 0;
    static const struct {
        int64_t B, TQ, TK, H, HKV, D, W;
    } shapes[] = {{1, 320, 320, 4, 1, 40, 0},
                  {2, 200, 330, 4, 2, 32, 0},
                  {1, 300, 300, 2, 1, 64, 100},
                  {3, 150, 150, 3, 1, 16, 0}};
    for (int si = 0; si < 4; si++) {
        aproblem a;
        const int64_t B = shapes[si].B, TQ = shapes[si].TQ, TK = shapes[si].TK, H = shapes[si].H;
        const int64_t HKV = shapes[si].HKV, D = shapes[si].D;
        aproblem_init(&a, B, TQ, TK, H, HKV, D, shapes[si].W, 0, 2.0f, 4100 + (uint64_t)si);
        a.p.n_threads = 2;
        CHECK(dn_attn_forward(&a.p) == DN_OK, "%s", dn_last_error());
        rng r = {4200 + (uint64_t)si};
        const int64_t nq = B * TQ * H * D, nk = B * TK * HKV * D;
        float *dO = falloc(nq), *g[2][3];
        fill_uniform(&r, dO, nq, -1, 1);
        const int64_t sz[3] = {nq, nk, nk};
        for (int w = 0; w < 2; w++)
            for (int i = 0; i < 3; i++)
                g[w][i] = falloc(sz[i]);
        for (int rep = 0; rep < REPEATS; rep++) {
            const int w = rep > 0;
            for (int i = 0; i < 3; i++)
                poison(g[w][i], sz[i]);
            dn_attn_bwd_params b = dn_attn_bwd_params_default(&a.p);
            b.dout = dO, b.dq = g[w][0], b.dk = g[w][1], b.dv = g[w][2];
            CHECK(dn_attn_backward(&b) == DN_OK, "%s", dn_last_error());
            static const char *const nm[3] = {"dq", "dk", "dv"};
            for (int i = 0; w && i < 3; i++) {
                char what[120];
                snprintf(what, sizeof what,
                         "attn bwd B=%lld TQ=%lld TK=%lld H=%lld HKV=%lld run %d %s", (long long)B,
                         (long long)TQ, (long long)TK, (long long)H, (long long)HKV, rep, nm[i]);
                fails += check_same_bits(what, g[1][i], g[0][i], sz[i]);
            }
        }
        free(dO);
        for (int w = 0; w < 2; w++)
            for (int i = 0; i < 3; i++)
                free(g[w][i]);
        aproblem_free(&a);
        if (fails) break;
    }
    return fails;
}

static dn_status call_attn_fwd(void *c) { return dn_attn_forward(c); }
static dn_status call_attn_bwd(void *c) { return dn_attn_backward(c); }

/* Allocation failures in the forward and the backward (one KV head and two threads: the backward's
 * dq accumulators are in the shared workspace): DN_ERR_ALLOC, outputs untouched. */
static int test_attn_alloc_failures(void) {
    int fails = 0;
    long reached;
    aproblem a;
    const int64_t B = 1, TQ = 150, H = 2, D = 16, n = B * TQ * H * D;
    aproblem_init(&a, B, TQ, TQ, H, 1, D, 0, 0, 1.0f, 4300);
    a.p.n_threads = 2;
    float *o1[2] = {a.obuf, a.lse};
    const int64_t n1[2] = {a.nobuf, B * H * TQ};
    fails += check_alloc_failures("attn forward", call_attn_fwd, &a.p, o1, n1, 2, &reached);
    CHECK(dn_attn_forward(&a.p) == DN_OK, "%s", dn_last_error());
    float *dO = falloc(n), *g[3] = {falloc(n), falloc(n / H), falloc(n / H)};
    fill_uniform(&(rng){4301}, dO, n, -1, 1);
    dn_attn_bwd_params b = dn_attn_bwd_params_default(&a.p);
    b.dout = dO, b.dq = g[0], b.dk = g[1], b.dv = g[2];
    const int64_t ng[3] = {n, n / H, n / H};
    fails += check_alloc_failures("attn backward", call_attn_bwd, &b, g, ng, 3, &reached);
    CHECK(reached >= 1, "attn backward: no allocation to fail");
    free(dO), free(g[0]), free(g[1]), free(g[2]);
    aproblem_free(&a);
    return fails;
}

/* A window near INT64_MAX cuts nothing: the tiled forward, the backward and the cache's decode
 * plan computed the window's first key / last query as pos - W + 1 or j + W - 1, a signed
 * overflow (the backward's wrapped bound skipped every query row: dq = dk = dv = 0; found by
 * the contract fuzzer). Results must equal window = 0, bit for bit. */
static int test_huge_window(void) {
    int fails = 0;
    const int64_t B = 2, TQ = 33, TK = 33, H = 2, HKV = 1, D = 29, n = B * TQ * H * D,
                  nk = B * TK * HKV * D;
    float *q = falloc(n), *k = falloc(nk), *v = falloc(nk), *dO = falloc(n);
    float *o[2] = {falloc(n), falloc(n)}, *lse[2] = {falloc(B * H * TQ), falloc(B * H * TQ)};
    float *g[2][3];
    rng r = {8811};
    fill_uniform(&r, q, n, -1, 1), fill_uniform(&r, k, nk, -1, 1);
    fill_uniform(&r, v, nk, -1, 1), fill_uniform(&r, dO, n, -1, 1);
    for (int w = 0; w < 2; w++) {
        dn_attn_params p = dn_attn_params_default(B, TK, H, HKV, D);
        p.q = q, p.k = k, p.v = v, p.o = o[w], p.lse = lse[w];
        p.window = w ? INT64_MAX : 0;
        CHECK(dn_attn_forward(&p) == DN_OK, "%s", dn_last_error());
        g[w][0] = falloc(n), g[w][1] = falloc(nk), g[w][2] = falloc(nk);
        dn_attn_bwd_params b = dn_attn_bwd_params_default(&p);
        b.dout = dO, b.dq = g[w][0], b.dk = g[w][1], b.dv = g[w][2];
        CHECK(dn_attn_backward(&b) == DN_OK, "%s", dn_last_error());
    }
    CHECK(!memcmp(o[0], o[1], sizeof(float) * (size_t)n), "huge window: forward o differs");
    CHECK(!memcmp(lse[0], lse[1], sizeof(float) * (size_t)(B * H * TQ)),
          "huge window: lse differs");
    CHECK(!memcmp(g[0][0], g[1][0], sizeof(float) * (size_t)n), "huge window: dq differs");
    CHECK(!memcmp(g[0][1], g[1][1], sizeof(float) * (size_t)nk), "huge window: dk differs");
    CHECK(!memcmp(g[0][2], g[1][2], sizeof(float) * (size_t)nk), "huge window: dv differs");
    /* the cache: queries past its start (TQ > len) with the same window */
    dn_kv_cache *kv = NULL;
    CHECK(dn_kv_cache_create(&kv, B, HKV, D, TK, DN_F32, 0) == DN_OK, "%s", dn_last_error());
    if (kv) {
        const int64_t len = 4, tq = 6;
        const dn_strides ks = {TK * HKV * D, HKV * D, D};
        CHECK(dn_kv_cache_append(kv, k, ks, v, ks, len) == DN_OK, "%s", dn_last_error());
        const dn_strides qs = {tq * H * D, H * D, D};
        float *oc[2] = {falloc(B * tq * H * D), falloc(B * tq * H * D)};
        for (int w = 0; w < 2; w++)
            CHECK(dn_kv_cache_attend(kv, oc[w], qs, NULL, q, qs, tq, H, 0.2f, w ? INT64_MAX : 0,
                                     1) == DN_OK,
                  "%s", dn_last_error());
        CHECK(!memcmp(oc[0], oc[1], sizeof(float) * (size_t)(B * tq * H * D)),
              "huge window: cache attend differs");
        free(oc[0]), free(oc[1]);
        dn_kv_cache_free(kv);
    }
    free(q), free(k), free(v), free(dO);
    for (int w = 0; w < 2; w++)
        free(o[w]), free(lse[w]), free(g[w][0]), free(g[w][1]), free(g[w][2]);
    return fails;
}

const test_case dn_tests_attn[] = {
    {"attn_huge_window", test_huge_window},
    {"attn_bad_input", test_attn_bad_input},
    {"attn_half_conversions", test_half_conversions},
    {"attn_memory_bound", test_memory_bound},
    {"attn_extreme_logits", test_extreme_logits},
    {"attn_masked_poison", test_masked_poison},
    {"attn_prefill_offsets", test_prefill_offsets},
    {"attn_decode", test_decode},
    {"attn_decode_long", test_decode_long},
    {"attn_prefill_grid", test_prefill_grid},
    {"attn_bwd_reproducible", test_attn_bwd_reproducible},
    {"attn_alloc_failures", test_attn_alloc_failures},
    {NULL, NULL},
};
