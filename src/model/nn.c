/*
 * nn.c - linear layers, RMSNorm, rotary embedding and the RNG of the model layer (see nn.h).
 *
 * Every loop here is either over independent rows or, for the parameter gradients of a norm,
 * over independent columns with the rows summed in order: results do not depend on the thread
 * count.
 */
#include "nn.h"

#include <string.h>

dn_status dn_linear_fwd(float *y, int64_t ldy, const float *x, int64_t ldx, const float *W,
                        int64_t N, int64_t in, int64_t out, float beta) {
    return dn_matmul(DN_NO_TRANS, DN_TRANS, N, out, in, 1.0f, x, ldx, W, in, beta, y, ldy);
}

dn_status dn_linear_bwd(float *dx, int64_t lddx, float *dW, const float *dy, int64_t lddy,
                        const float *x, int64_t ldx, const float *W, int64_t N, int64_t in,
                        int64_t out, float beta) {
    dn_status st = DN_OK;
    if (dx)
        st = dn_matmul(DN_NO_TRANS, DN_NO_TRANS, N, in, out, 1.0f, dy, lddy, W, in, beta, dx, lddx);
    if (st == DN_OK && dW)
        st = dn_matmul(DN_TRANS, DN_NO_TRANS, out, in, N, 1.0f, dy, lddy, x, ldx, 1.0f, dW, in);
    return st;
}

void dn_rmsnorm_fwd(float *y, float *rstd, const float *x, const float *w, float offset,
                    int64_t rows, int64_t n, double eps) {
    dn_rmsnorm_groups_fwd(y, rstd, x, w, offset, rows, n, 1, eps);
}

dn_status dn_rmsnorm_bwd(float *dx, float *dw, const float *dy, const float *x, const float *rstd,
                         const float *w, float offset, int64_t rows, int64_t n) {
    return dn_rmsnorm_groups_bwd(dx, dw, dy, x, rstd, w, offset, rows, n, 1);
}

void dn_rmsnorm_groups_fwd(float *y, float *rstd, const float *x, const float *w, float offset,
                           int64_t rows, int64_t n, int64_t groups, double eps) {
    DN_PARALLEL_FOR(rows * n)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * n, *wr = w + (r % groups) * n;
        float *yr = y + r * n;
        double ss = 0;
        for (int64_t j = 0; j < n; j++)
            ss += (double)xr[j] * xr[j];
        const float rs = (float)(1.0 / sqrt(ss / (double)n + eps));
        rstd[r] = rs;
        for (int64_t j = 0; j < n; j++)
            yr[j] = xr[j] * rs * (wr[j] + offset);
    }
}

/* y = x r (w + o) with r = (mean x^2 + eps)^(-1/2):
 *   dx_j = r (w_j + o) dy_j - x_j r^3 / n * sum_i dy_i (w_i + o) x_i,   dw_j += sum_rows dy_j x_j r
 * dw: one column block per task, the rows of its group summed in order. */
dn_status dn_rmsnorm_groups_bwd(float *dx, float *dw, const float *dy, const float *x,
                                const float *rstd, const float *w, float offset, int64_t rows,
                                int64_t n, int64_t groups) {
    if (dw) {
        const int64_t cb = 64, nblk = (n + cb - 1) / cb;
        DN_PARALLEL_FOR(rows * n)
        for (int64_t b = 0; b < nblk * groups; b++) {
            const int64_t g = b / nblk, j0 = (b % nblk) * cb, j1 = j0 + cb < n ? j0 + cb : n;
            double acc[64] = {0};
            for (int64_t r = g; r < rows; r += groups) {
                const float *xr = x + r * n, *dyr = dy + r * n;
                const double rs = rstd[r];
                for (int64_t j = j0; j < j1; j++)
                    acc[j - j0] += (double)dyr[j] * xr[j] * rs;
            }
            for (int64_t j = j0; j < j1; j++)
                dw[g * n + j] += (float)acc[j - j0];
        }
    }
    if (dx) {
        DN_PARALLEL_FOR(rows * n)
        for (int64_t r = 0; r < rows; r++) {
            const float *xr = x + r * n, *dyr = dy + r * n, *wr = w + (r % groups) * n;
            float *dxr = dx + r * n;
            const double rs = rstd[r];
            double dot = 0;
            for (int64_t j = 0; j < n; j++)
                dot += (double)dyr[j] * (wr[j] + offset) * xr[j];
            const double c = dot * rs * rs * rs / (double)n;
            for (int64_t j = 0; j < n; j++)
                dxr[j] = (float)(rs * (wr[j] + offset) * dyr[j] - c * xr[j]);
        }
    }
    return DN_OK;
}

dn_status dn_rope_table_init(dn_rope_table *t, int64_t pos0, int64_t T, int64_t rd, double theta) {
    memset(t, 0, sizeof *t);
    int64_t n;
    if (!DN_PROD(&n, T, rd / 2, (int64_t)sizeof(float)))
        return dn_fail(DN_ERR_SHAPE, "rope: table of %lld x %lld overflows", (long long)T,
                       (long long)rd);
    t->cos = dn_alloc((size_t)n + 1);
    t->sin = dn_alloc((size_t)n + 1);
    if (!t->cos || !t->sin) {
        dn_rope_table_free(t);
        return dn_fail(DN_ERR_ALLOC, "rope: cannot allocate the table");
    }
    t->T = T, t->rd = rd;
    const int64_t h = rd / 2;
    for (int64_t p = 0; p < T; p++)
        for (int64_t i = 0; i < h; i++) {
            const double ang = (double)(pos0 + p) * pow(theta, -2.0 * (double)i / (double)rd);
            t->cos[p * h + i] = (float)cos(ang);
            t->sin[p * h + i] = (float)sin(ang);
        }
    return DN_OK;
}

void dn_rope_table_free(dn_rope_table *t) {
    dn_free(t->cos);
    dn_free(t->sin);
    t->cos = t->sin = NULL;
}

void dn_rope_apply(float *x, int64_t ld, const dn_rope_table *t, int64_t N, int64_t H, int64_t D,
                   int inverse) {
    const int64_t h = t->rd / 2;
    if (h == 0) return;
    const float sgn = inverse ? -1.0f : 1.0f;
    DN_PARALLEL_FOR(N * H * t->rd)
    for (int64_t r = 0; r < N; r++) {
        const int64_t p = r % t->T;
        const float *c = t->cos + p * h, *s = t->sin + p * h;
        for (int64_t hd = 0; hd < H; hd++) {
            float *v = x + r * ld + hd * D;
            for (int64_t i = 0; i < h; i++) {
                const float a = v[i], b = v[i + h], si = sgn * s[i];
                v[i] = a * c[i] - b * si;
                v[i + h] = b * c[i] + a * si;
            }
        }
    }
}

double dn_rng_normal(dn_rng *r) {
    /* Box-Muller; u1 in (0, 1] so the log is finite */
    const double u1 = 1.0 - dn_rng_uniform(r), u2 = dn_rng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

dn_status dn_conv_bwd_ranges(const dn_conv_params *cp0, int n, const int64_t *c0, const int64_t *cn,
                             const float *const *dy, float *dx, float *dweight, float *dbias) {
    for (int i = 0; i < n; i++) {
        dn_conv_params cp = *cp0;
        cp.D = cn[i];
        cp.x += c0[i];
        cp.weight += c0[i] * cp.W;
        if (cp.bias) cp.bias += c0[i];
        cp.y = NULL; /* not read by the backward */
        dn_conv_bwd_params cb = dn_conv_bwd_params_default(&cp);
        cb.dy = dy[i], cb.dy_s = (dn_strides){cp.T * cn[i], cn[i], 0};
        cb.dx = dx + c0[i], cb.dx_s = cp.x_s;
        cb.dweight = dweight + c0[i] * cp.W;
        cb.dbias = dbias ? dbias + c0[i] : NULL;
        dn_status st = dn_conv_backward(&cb);
        if (st != DN_OK) return st;
    }
    return DN_OK;
}
