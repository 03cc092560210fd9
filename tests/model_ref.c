/*
 * model_ref.c - an independent double-precision forward of the whole language model, written
 * from the math (loops over tokens and heads, no ops, no matrix library), reading the weights by
 * their public names. The model tests compare the library's logits with it and its central
 * finite differences with the library's gradients.
 */
#include "model_ref.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const double *W(const ref_model *r, const char *fmt, long long layer) {
    char name[160];
    snprintf(name, sizeof name, fmt, layer);
    for (int64_t i = 0; i < dn_model_num_tensors(r->m); i++) {
        dn_param_info t;
        dn_model_param_info(r->m, i, &t);
        if (!strcmp(t.name, name)) return r->p + t.offset;
    }
    fprintf(stderr, "model_ref: no tensor %s\n", name);
    exit(2);
}

static double *dalloc(int64_t n) {
    double *p = calloc((size_t)(n > 0 ? n : 1), sizeof(double));
    if (!p) exit(2);
    return p;
}

/* y [N,out] = x [N,in] W^T */
static void linear(double *y, const double *x, const double *w, int64_t N, int64_t in,
                   int64_t out) {
    for (int64_t n = 0; n < N; n++)
        for (int64_t o = 0; o < out; o++) {
            double s = 0;
            for (int64_t i = 0; i < in; i++)
                s += x[n * in + i] * w[o * in + i];
            y[n * out + o] = s;
        }
}

static void rmsnorm(double *y, const double *x, const double *w, double offset, int64_t rows,
                    int64_t n, double eps) {
    for (int64_t r = 0; r < rows; r++) {
        double ss = 0;
        for (int64_t j = 0; j < n; j++)
            ss += x[r * n + j] * x[r * n + j];
        const double rs = 1.0 / sqrt(ss / (double)n + eps);
        for (int64_t j = 0; j < n; j++)
            y[r * n + j] = x[r * n + j] * rs * (w[j] + offset);
    }
}

static double sigm(double x) { return 1.0 / (1.0 + exp(-x)); }
static double silu(double x) { return x * sigm(x); }
static double softplus(double x) { return x > 30 ? x : log1p(exp(x)); }

/* 'G' Gated DeltaNet, 'D' DeltaNet (no gate), 'L' linear attention (no gate, no delta rule) */
static void la_mixer(const ref_model *r, long long li, char kind, double *out, const double *a,
                     int64_t B, int64_t T) {
    const dn_model_config *c = dn_model_get_config(r->m);
    const int64_t d = c->hidden_size, H = c->linear_num_key_heads, HV = c->linear_num_value_heads;
    const int64_t K = c->linear_key_head_dim, V = c->linear_value_head_dim;
    const int64_t Wd = c->linear_conv_kernel_dim, C = 2 * H * K + HV * V, N = B * T;
    double *qkv = dalloc(N * C), *z = dalloc(N * HV * V), *bb = dalloc(N * HV),
           *aa = dalloc(N * HV);
    linear(qkv, a, W(r, "model.layers.%lld.linear_attn.in_proj_qkv.weight", li), N, d, C);
    linear(z, a, W(r, "model.layers.%lld.linear_attn.in_proj_z.weight", li), N, d, HV * V);
    const double *A_log = NULL, *dt_bias = NULL;
    if (kind != 'L')
        linear(bb, a, W(r, "model.layers.%lld.linear_attn.in_proj_b.weight", li), N, d, HV);
    if (kind == 'G') {
        linear(aa, a, W(r, "model.layers.%lld.linear_attn.in_proj_a.weight", li), N, d, HV);
        A_log = W(r, "model.layers.%lld.linear_attn.A_log", li);
        dt_bias = W(r, "model.layers.%lld.linear_attn.dt_bias", li);
    }
    const double *cw = W(r, "model.layers.%lld.linear_attn.conv1d.weight", li);
    const double *nw = W(r, "model.layers.%lld.linear_attn.norm.weight", li);
    double *xc = dalloc(N * C), *o = dalloc(N * HV * V), *on = dalloc(N * HV * V);
    for (int64_t b = 0; b < B; b++) /* causal depthwise conv + SiLU, zeros before the start */
        for (int64_t t = 0; t < T; t++)
            for (int64_t ch = 0; ch < C; ch++) {
                double s = 0;
                for (int64_t j = 0; j < Wd; j++) {
                    const int64_t ts = t - Wd + 1 + j;
                    if (ts >= 0) s += cw[ch * Wd + j] * qkv[(b * T + ts) * C + ch];
                }
                xc[(b * T + t) * C + ch] = silu(s);
            }
    double *S = dalloc(K * V), *q = dalloc(K), *k = dalloc(K), *u = dalloc(V);
    for (int64_t b = 0; b < B; b++)
        for (int64_t j = 0; j < HV; j++) {
            const int64_t h = j / (HV / H);
            memset(S, 0, sizeof(double) * (size_t)(K * V));
            for (int64_t t = 0; t < T; t++) {
                const int64_t n = b * T + t;
                const double *row = xc + n * C;
                double nq = 0, nk = 0;
                for (int64_t i = 0; i < K; i++) {
                    q[i] = row[h * K + i], k[i] = row[H * K + h * K + i];
                    nq += q[i] * q[i], nk += k[i] * k[i];
                }
                nq = 1.0 / sqrt(nq + 1e-6), nk = 1.0 / sqrt(nk + 1e-6);
                for (int64_t i = 0; i < K; i++)
                    q[i] *= nq / sqrt((double)K), k[i] *= nk;
                const double *v = row + 2 * H * K + j * V;
                if (kind == 'G') {
                    const double g = -exp(A_log[j]) * softplus(aa[n * HV + j] + dt_bias[j]);
                    for (int64_t e = 0; e < K * V; e++)
                        S[e] *= exp(g);
                }
                const double beta = kind == 'L' ? 1.0 : sigm(bb[n * HV + j]);
                for (int64_t vv = 0; vv < V; vv++) {
                    double pred = 0; /* what the memory returns for k: the delta rule's error */
                    for (int64_t i = 0; kind != 'L' && i < K; i++)
                        pred += S[i * V + vv] * k[i];
                    u[vv] = beta * (v[vv] - pred);
                }
                for (int64_t i = 0; i < K; i++)
                    for (int64_t vv = 0; vv < V; vv++)
                        S[i * V + vv] += k[i] * u[vv];
                for (int64_t vv = 0; vv < V; vv++) {
                    double s = 0;
                    for (int64_t i = 0; i < K; i++)
                        s += S[i * V + vv] * q[i];
                    o[n * HV * V + j * V + vv] = s;
                }
            }
        }
    rmsnorm(on, o, nw, 0.0, N * HV, V, c->rms_norm_eps);
    for (int64_t i = 0; i < N * HV * V; i++)
        on[i] *= silu(z[i]);
    linear(out, on, W(r, "model.layers.%lld.linear_attn.out_proj.weight", li), N, HV * V, d);
    free(qkv), free(z), free(bb), free(aa), free(xc), free(o), free(on);
    free(S), free(q), free(k), free(u);
}

static void attn_mixer(const ref_model *r, long long li, double *out, const double *a, int64_t B,
                       int64_t T) {
    const dn_model_config *c = dn_model_get_config(r->m);
    const int64_t d = c->hidden_size, H = c->num_attention_heads, HKV = c->num_key_value_heads;
    const int64_t D = c->head_dim, N = B * T, gate = c->attn_output_gate != 0;
    const int64_t rd = (int64_t)((double)D * c->partial_rotary_factor) / 2 * 2;
    const int64_t Pq = H * D * (gate ? 2 : 1);
    double *qp = dalloc(N * Pq), *q = dalloc(N * H * D), *k = dalloc(N * HKV * D);
    double *v = dalloc(N * HKV * D), *o = dalloc(N * H * D);
    linear(qp, a, W(r, "model.layers.%lld.self_attn.q_proj.weight", li), N, d, Pq);
    linear(k, a, W(r, "model.layers.%lld.self_attn.k_proj.weight", li), N, d, HKV * D);
    linear(v, a, W(r, "model.layers.%lld.self_attn.v_proj.weight", li), N, d, HKV * D);
    for (int64_t n = 0; n < N; n++) /* per head [q | gate] when gated */
        for (int64_t h = 0; h < H; h++)
            memcpy(q + (n * H + h) * D, qp + n * Pq + h * D * (gate ? 2 : 1), sizeof(double) * D);
    if (c->attn_conv_kernel_dim) { /* causal depthwise conv over q, k, v channels, no bias */
        const int64_t Wd = c->attn_conv_kernel_dim;
        const double *cw = W(r, "model.layers.%lld.self_attn.conv1d.weight", li);
        const int64_t widths[3] = {H * D, HKV * D, HKV * D};
        double *xs[3] = {q, k, v};
        for (int part = 0, ch0 = 0; part < 3; ch0 += (int)widths[part], part++) {
            const int64_t Cp = widths[part];
            double *x = xs[part], *y = dalloc(N * Cp);
            for (int64_t b = 0; b < B; b++)
                for (int64_t t = 0; t < T; t++)
                    for (int64_t ch = 0; ch < Cp; ch++) {
                        double acc = 0;
                        for (int64_t j = 0; j < Wd; j++) {
                            const int64_t ts = t - Wd + 1 + j;
                            if (ts >= 0) acc += cw[(ch0 + ch) * Wd + j] * x[(b * T + ts) * Cp + ch];
                        }
                        y[(b * T + t) * Cp + ch] = acc;
                    }
            memcpy(x, y, sizeof(double) * (size_t)(N * Cp));
            free(y);
        }
    }
    if (c->attn_qk_norm) {
        rmsnorm(q, q, W(r, "model.layers.%lld.self_attn.q_norm.weight", li), 1.0, N * H, D,
                c->rms_norm_eps);
        rmsnorm(k, k, W(r, "model.layers.%lld.self_attn.k_norm.weight", li), 1.0, N * HKV, D,
                c->rms_norm_eps);
    }
    for (int64_t n = 0; n < N; n++) { /* rotate-half RoPE on the first rd dims */
        const double pos = (double)(n % T);
        for (int64_t i = 0; i < rd / 2; i++) {
            const double ang = pos * pow(c->rope_theta, -2.0 * (double)i / (double)rd);
            for (int64_t h = 0; h < H + HKV; h++) {
                double *x = h < H ? q + (n * H + h) * D : k + (n * HKV + h - H) * D;
                const double x1 = x[i], x2 = x[i + rd / 2];
                x[i] = x1 * cos(ang) - x2 * sin(ang);
                x[i + rd / 2] = x2 * cos(ang) + x1 * sin(ang);
            }
        }
    }
    double *sc = dalloc(T);
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++) {
            const int64_t kh = h / (H / HKV);
            for (int64_t i = 0; i < T; i++) {
                const double *qi = q + ((b * T + i) * H + h) * D;
                double mx = -INFINITY, s = 0;
                for (int64_t j = 0; j <= i; j++) {
                    const double *kj = k + ((b * T + j) * HKV + kh) * D;
                    double dot = 0;
                    for (int64_t e = 0; e < D; e++)
                        dot += qi[e] * kj[e];
                    sc[j] = dot / sqrt((double)D);
                    if (sc[j] > mx) mx = sc[j];
                }
                for (int64_t j = 0; j <= i; j++)
                    s += (sc[j] = exp(sc[j] - mx));
                double *oi = o + ((b * T + i) * H + h) * D;
                for (int64_t e = 0; e < D; e++) {
                    double acc = 0;
                    for (int64_t j = 0; j <= i; j++)
                        acc += sc[j] * v[((b * T + j) * HKV + kh) * D + e];
                    oi[e] = acc / s;
                }
                if (gate)
                    for (int64_t e = 0; e < D; e++)
                        oi[e] *= sigm(qp[(b * T + i) * Pq + h * 2 * D + D + e]);
            }
        }
    linear(out, o, W(r, "model.layers.%lld.self_attn.o_proj.weight", li), N, H * D, d);
    free(qp), free(q), free(k), free(v), free(o), free(sc);
}

/* Mamba-2's block (the SSD recurrence written directly) */
static void mamba2_mixer(const ref_model *r, long long li, double *out, const double *a, int64_t B,
                         int64_t T) {
    const dn_model_config *c = dn_model_get_config(r->m);
    const int64_t d = c->hidden_size, H = c->linear_num_value_heads, Pd = c->linear_value_head_dim;
    const int64_t Ns = c->linear_key_head_dim, G = c->linear_num_key_heads;
    const int64_t Wd = c->linear_conv_kernel_dim, HP = H * Pd, GN = G * Ns, C = HP + 2 * GN;
    const int64_t Pw = C + HP + H, N = B * T;
    double *proj = dalloc(N * Pw), *xc = dalloc(N * C), *y = dalloc(N * HP), *S = dalloc(Ns * Pd);
    linear(proj, a, W(r, "model.layers.%lld.mamba.in_proj.weight", li), N, d, Pw);
    const double *cw = W(r, "model.layers.%lld.mamba.conv1d.weight", li);
    const double *cb = W(r, "model.layers.%lld.mamba.conv1d.bias", li);
    const double *dt_bias = W(r, "model.layers.%lld.mamba.dt_bias", li);
    const double *A_log = W(r, "model.layers.%lld.mamba.A_log", li);
    const double *Dk = W(r, "model.layers.%lld.mamba.D", li);
    const double *nw = W(r, "model.layers.%lld.mamba.norm.weight", li);
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t ch = 0; ch < C; ch++) {
                double s = cb[ch];
                for (int64_t j = 0; j < Wd; j++) {
                    const int64_t ts = t - Wd + 1 + j;
                    if (ts >= 0) s += cw[ch * Wd + j] * proj[(b * T + ts) * Pw + ch];
                }
                xc[(b * T + t) * C + ch] = silu(s);
            }
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++) {
            const int64_t gi = h / (H / G);
            memset(S, 0, sizeof(double) * (size_t)(Ns * Pd));
            for (int64_t t = 0; t < T; t++) {
                const int64_t n = b * T + t;
                const double *x = xc + n * C + h * Pd, *Bm = xc + n * C + HP + gi * Ns;
                const double *Cm = xc + n * C + HP + GN + gi * Ns;
                const double dt = softplus(proj[n * Pw + C + HP + h] + dt_bias[h]);
                const double decay = exp(-exp(A_log[h]) * dt);
                for (int64_t i = 0; i < Ns; i++)
                    for (int64_t p = 0; p < Pd; p++)
                        S[i * Pd + p] = decay * S[i * Pd + p] + Bm[i] * dt * x[p];
                for (int64_t p = 0; p < Pd; p++) {
                    double acc = Dk[h] * x[p];
                    for (int64_t i = 0; i < Ns; i++)
                        acc += S[i * Pd + p] * Cm[i];
                    y[n * HP + h * Pd + p] = acc;
                }
            }
        }
    for (int64_t n = 0; n < N; n++) /* gate, then RMSNorm per group of HP / G channels */
        for (int64_t g = 0; g < G; g++) {
            const int64_t ng = HP / G;
            double *u = y + n * HP + g * ng, ss = 0;
            for (int64_t j = 0; j < ng; j++) {
                u[j] *= silu(proj[n * Pw + C + g * ng + j]);
                ss += u[j] * u[j];
            }
            const double rs = 1.0 / sqrt(ss / (double)ng + c->rms_norm_eps);
            for (int64_t j = 0; j < ng; j++)
                u[j] *= rs * nw[g * ng + j];
        }
    linear(out, y, W(r, "model.layers.%lld.mamba.out_proj.weight", li), N, HP, d);
    free(proj), free(xc), free(y), free(S);
}

/* RWKV-4 time mixing, the WKV recurrence written directly (no running maximum: small k here) */
static void rwkv4_mixer(const ref_model *r, long long li, double *out, const double *a, int64_t B,
                        int64_t T) {
    const dn_model_config *c = dn_model_get_config(r->m);
    const int64_t d = c->hidden_size, N = B * T;
    const double *mk = W(r, "model.layers.%lld.rwkv.time_mix_key", li);
    const double *mv = W(r, "model.layers.%lld.rwkv.time_mix_value", li);
    const double *mr = W(r, "model.layers.%lld.rwkv.time_mix_receptance", li);
    const double *td = W(r, "model.layers.%lld.rwkv.time_decay", li);
    const double *tf = W(r, "model.layers.%lld.rwkv.time_first", li);
    double *xk = dalloc(N * d), *xv = dalloc(N * d), *xr = dalloc(N * d), *k = dalloc(N * d);
    double *v = dalloc(N * d), *rr = dalloc(N * d), *y = dalloc(N * d);
    for (int64_t n = 0; n < N; n++)
        for (int64_t j = 0; j < d; j++) {
            const double x = a[n * d + j], xx = n % T ? a[(n - 1) * d + j] : 0.0;
            xk[n * d + j] = xx + mk[j] * (x - xx);
            xv[n * d + j] = xx + mv[j] * (x - xx);
            xr[n * d + j] = xx + mr[j] * (x - xx);
        }
    linear(k, xk, W(r, "model.layers.%lld.rwkv.key.weight", li), N, d, d);
    linear(v, xv, W(r, "model.layers.%lld.rwkv.value.weight", li), N, d, d);
    linear(rr, xr, W(r, "model.layers.%lld.rwkv.receptance.weight", li), N, d, d);
    for (int64_t b = 0; b < B; b++)
        for (int64_t j = 0; j < d; j++) {
            double num = 0, den = 0;
            const double w = exp(-exp(td[j])), u = tf[j];
            for (int64_t t = 0; t < T; t++) {
                const int64_t n = (b * T + t) * d + j;
                const double e = exp(u + k[n]);
                y[n] = sigm(rr[n]) * (num + e * v[n]) / (den + e);
                num = w * num + exp(k[n]) * v[n];
                den = w * den + exp(k[n]);
            }
        }
    linear(out, y, W(r, "model.layers.%lld.rwkv.output.weight", li), N, d, d);
    free(xk), free(xv), free(xr), free(k), free(v), free(rr), free(y);
}

/* Mamba-1's block, the selective scan written directly */
static void mamba_mixer(const ref_model *r, long long li, double *out, const double *a, int64_t B,
                        int64_t T) {
    const dn_model_config *c = dn_model_get_config(r->m);
    const int64_t d = c->hidden_size, E = c->mamba_expand * d, Ns = c->mamba_state_size;
    const int64_t R = c->mamba_dt_rank > 0 ? c->mamba_dt_rank : (d + 15) / 16;
    const int64_t Wd = c->linear_conv_kernel_dim, X = R + 2 * Ns, N = B * T;
    double *proj = dalloc(N * 2 * E), *xc = dalloc(N * E), *xdbl = dalloc(N * X);
    double *dt = dalloc(N * E), *y = dalloc(N * E), *h = dalloc(Ns);
    linear(proj, a, W(r, "model.layers.%lld.mamba1.in_proj.weight", li), N, d, 2 * E);
    const double *cw = W(r, "model.layers.%lld.mamba1.conv1d.weight", li);
    const double *cb = W(r, "model.layers.%lld.mamba1.conv1d.bias", li);
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t ch = 0; ch < E; ch++) {
                double s = cb[ch];
                for (int64_t j = 0; j < Wd; j++) {
                    const int64_t ts = t - Wd + 1 + j;
                    if (ts >= 0) s += cw[ch * Wd + j] * proj[(b * T + ts) * 2 * E + ch];
                }
                xc[(b * T + t) * E + ch] = silu(s);
            }
    linear(xdbl, xc, W(r, "model.layers.%lld.mamba1.x_proj.weight", li), N, E, X);
    const double *wdt = W(r, "model.layers.%lld.mamba1.dt_proj.weight", li);
    const double *dt_bias = W(r, "model.layers.%lld.mamba1.dt_proj.bias", li);
    for (int64_t n = 0; n < N; n++)
        for (int64_t e = 0; e < E; e++) {
            double s = dt_bias[e];
            for (int64_t q = 0; q < R; q++)
                s += xdbl[n * X + q] * wdt[e * R + q];
            dt[n * E + e] = softplus(s);
        }
    const double *A_log = W(r, "model.layers.%lld.mamba1.A_log", li);
    const double *Dk = W(r, "model.layers.%lld.mamba1.D", li);
    for (int64_t b = 0; b < B; b++)
        for (int64_t e = 0; e < E; e++) {
            memset(h, 0, sizeof(double) * (size_t)Ns);
            for (int64_t t = 0; t < T; t++) {
                const int64_t n = b * T + t;
                const double x = xc[n * E + e], dtv = dt[n * E + e];
                double acc = Dk[e] * x;
                for (int64_t i = 0; i < Ns; i++) {
                    h[i] =
                        exp(-exp(A_log[e * Ns + i]) * dtv) * h[i] + dtv * xdbl[n * X + R + i] * x;
                    acc += xdbl[n * X + R + Ns + i] * h[i];
                }
                y[n * E + e] = acc * silu(proj[n * 2 * E + E + e]);
            }
        }
    linear(out, y, W(r, "model.layers.%lld.mamba1.out_proj.weight", li), N, E, d);
    free(proj), free(xc), free(xdbl), free(dt), free(y), free(h);
}

double ref_model_forward(const ref_model *r, double *logits, const int32_t *tokens,
                         const int32_t *targets, int64_t B, int64_t T) {
    const dn_model_config *c = dn_model_get_config(r->m);
    const int64_t d = c->hidden_size, I = c->intermediate_size, Vo = c->vocab_size, N = B * T;
    const double eps = c->rms_norm_eps;
    double *h = dalloc(N * d), *a = dalloc(N * d), *mix = dalloc(N * d), *gu = dalloc(N * 2 * I);
    double *act = dalloc(N * I);
    const double *E = W(r, "model.embed_tokens.weight", 0);
    for (int64_t n = 0; n < N; n++)
        memcpy(h + n * d, E + (int64_t)tokens[n] * d, sizeof(double) * (size_t)d);
    const size_t np = strlen(c->layer_pattern);
    for (long long li = 0; li < c->num_hidden_layers; li++) {
        rmsnorm(a, h, W(r, "model.layers.%lld.input_layernorm.weight", li), 1.0, N, d, eps);
        const char kind = c->layer_pattern[(size_t)li % np];
        if (kind == 'A')
            attn_mixer(r, li, mix, a, B, T);
        else if (kind == 'M')
            mamba2_mixer(r, li, mix, a, B, T);
        else if (kind == 'R')
            rwkv4_mixer(r, li, mix, a, B, T);
        else if (kind == 'S')
            mamba_mixer(r, li, mix, a, B, T);
        else
            la_mixer(r, li, kind, mix, a, B, T);
        for (int64_t i = 0; i < N * d; i++)
            h[i] += mix[i];
        rmsnorm(a, h, W(r, "model.layers.%lld.post_attention_layernorm.weight", li), 1.0, N, d,
                eps);
        linear(gu, a, W(r, "model.layers.%lld.mlp.gate_proj.weight", li), N, d, I);
        linear(act, a, W(r, "model.layers.%lld.mlp.up_proj.weight", li), N, d, I);
        for (int64_t i = 0; i < N * I; i++)
            act[i] *= silu(gu[i]);
        linear(mix, act, W(r, "model.layers.%lld.mlp.down_proj.weight", li), N, I, d);
        for (int64_t i = 0; i < N * d; i++)
            h[i] += mix[i];
    }
    rmsnorm(a, h, W(r, "model.norm.weight", 0), 1.0, N, d, eps);
    const double *Wh = c->tie_word_embeddings ? E : W(r, "lm_head.weight", 0);
    double *z = logits ? logits : dalloc(N * Vo), loss = 0;
    linear(z, a, Wh, N, d, Vo);
    for (int64_t n = 0; n < N; n++) {
        if (!targets || targets[n] < 0) continue;
        double mx = -INFINITY, s = 0;
        for (int64_t j = 0; j < Vo; j++)
            mx = z[n * Vo + j] > mx ? z[n * Vo + j] : mx;
        for (int64_t j = 0; j < Vo; j++)
            s += exp(z[n * Vo + j] - mx);
        loss += mx + log(s) - z[n * Vo + targets[n]];
    }
    if (!logits) free(z);
    free(h), free(a), free(mix), free(gu), free(act);
    return loss;
}
