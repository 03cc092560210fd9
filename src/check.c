/*
 * check.c - argument checks shared by every op: checked size products, strided views, output
 * rows that must not share elements, and buffers that must not overlap.
 */
#include "internal.h"

#include <string.h>

#include <stdint.h>

int dn_prod(int64_t *out, int n, const int64_t *d) {
    int64_t r = 1;
    for (int i = 0; i < n; i++) {
        if (d[i] < 0 || __builtin_mul_overflow(r, d[i], &r)) {
            *out = 0;
            return 0;
        }
    }
    *out = r;
    return 1;
}

int dn_view_extent(dn_strides s, int64_t n0, int64_t n1, int64_t n2, int64_t D, int64_t *extent) {
    *extent = 0;
    if (s.b < 0 || s.t < 0 || s.h < 0 || n0 < 0 || n1 < 0 || n2 < 0 || D < 0) return 0;
    if (n0 == 0 || n1 == 0 || n2 == 0 || D == 0) return 1;
    int64_t a, b, c, e;
    if (__builtin_mul_overflow(n0 - 1, s.b, &a) || __builtin_mul_overflow(n1 - 1, s.t, &b) ||
        __builtin_mul_overflow(n2 - 1, s.h, &c) || __builtin_add_overflow(a, b, &e) ||
        __builtin_add_overflow(e, c, &e) || __builtin_add_overflow(e, D, &e))
        return 0;
    /* the view must fit in an address space: no machine maps 2^56 bytes (64 PiB), so a larger
     * span can only come from a bogus stride, never from a real buffer */
    if (e > ((int64_t)1 << 56) / (int64_t)sizeof(float)) return 0;
    *extent = e;
    return 1;
}

int dn_ranges_overlap(const void *a, int64_t na, const void *b, int64_t nb) {
    if (!a || !b || na <= 0 || nb <= 0) return 0;
    uintptr_t a0 = (uintptr_t)a, b0 = (uintptr_t)b;
    uintptr_t a1 = a0 + (uintptr_t)na * sizeof(float), b1 = b0 + (uintptr_t)nb * sizeof(float);
    return a0 < b1 && b0 < a1;
}

int dn_strides_ok(dn_strides s) { return s.b >= 0 && s.t >= 0 && s.h >= 0; }

int dn_rows_disjoint(dn_strides s, int64_t n0, int64_t n1, int64_t n2, int64_t D) {
    if (n0 <= 0 || n1 <= 0 || n2 <= 0 || D <= 0) return 1; /* an empty view has no rows */
    int64_t st[3] = {s.b, s.t, s.h}, ext[3] = {n0, n1, n2};
    for (int i = 0; i < 3; i++) /* insertion sort by stride */
        for (int j = i; j > 0 && st[j] < st[j - 1]; j--) {
            int64_t a = st[j], e = ext[j];
            st[j] = st[j - 1], ext[j] = ext[j - 1];
            st[j - 1] = a, ext[j - 1] = e;
        }
    /* rows are disjoint when each stride clears everything the smaller strides span; the spans
     * are computed with overflow checks (a wrapped span must not pass for a disjoint one) */
    int64_t span = D;
    for (int i = 0; i < 3; i++) {
        if (ext[i] <= 1) continue;
        if (st[i] < span) return 0;
        int64_t m;
        if (__builtin_mul_overflow(st[i], ext[i] - 1, &m) || __builtin_add_overflow(m, span, &span))
            return 0;
    }
    return 1;
}

dn_status dn_check_view(const char *op, const char *name, const void *ptr, dn_strides s, int64_t n0,
                        int64_t n1, int64_t n2, int64_t D, int output, int64_t *extent) {
    if (!ptr) return dn_fail(DN_ERR_NULL, "%s: %s is required", op, name);
    if (!dn_strides_ok(s))
        return dn_fail(DN_ERR_STRIDE, "%s: %s strides (%lld, %lld, %lld) must be non-negative", op,
                       name, (long long)s.b, (long long)s.t, (long long)s.h);
    if (!dn_view_extent(s, n0, n1, n2, D, extent) ||
        (uintptr_t)ptr > UINTPTR_MAX - (uintptr_t)*extent * sizeof(float))
        return dn_fail(DN_ERR_SHAPE,
                       "%s: %s strides (%lld, %lld, %lld) span more memory than an "
                       "address space holds",
                       op, name, (long long)s.b, (long long)s.t, (long long)s.h);
    if (output && !dn_rows_disjoint(s, n0, n1, n2, D))
        return dn_fail(DN_ERR_STRIDE, "%s: %s strides (%lld, %lld, %lld) make its rows overlap", op,
                       name, (long long)s.b, (long long)s.t, (long long)s.h);
    return DN_OK;
}

dn_status dn_check_output(const char *op, const char *name, const float *ptr, dn_strides s,
                          int64_t n0, int64_t n1, int64_t n2, int64_t D) {
    int64_t e;
    return dn_check_view(op, name, ptr, s, n0, n1, n2, D, 1, &e);
}

dn_status dn_check_input(const char *op, const char *name, const float *ptr, dn_strides s) {
    if (!ptr) return dn_fail(DN_ERR_NULL, "%s: %s is required", op, name);
    if (!dn_strides_ok(s)) return dn_fail(DN_ERR_STRIDE, "%s: %s strides are negative", op, name);
    return DN_OK;
}

dn_status dn_check_overlaps(const char *op, const dn_buf *bufs, int n) {
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++) {
            const dn_buf *a = &bufs[i], *b = &bufs[j];
            if (!a->output && !b->output) continue;
            if (!dn_ranges_overlap(a->p, a->n, b->p, b->n)) continue;
            if (a->inplace && a->inplace == b->inplace && a->p == b->p && a->n == b->n) continue;
            return dn_fail(DN_ERR_ARG, "%s: %s and %s share memory (%s)", op, a->name, b->name,
                           a->inplace && a->inplace == b->inplace
                               ? "in-place use needs the very same buffer"
                               : "an output may not overlap another argument");
        }
    return DN_OK;
}

dn_status dn_check_args(const char *op, dn_arg *a, int n) {
    return dn_check_args_mixed(op, a, n, 0);
}

dn_status dn_check_args_mixed(const char *op, dn_arg *a, int n, unsigned half) {
    dn_buf bufs[DN_MAX_ARGS];
    int nb = 0;
    DN_ASSERT(n <= DN_MAX_ARGS);
    for (int i = 0; i < n; i++) {
        int64_t elems;
        if (!DN_PROD(&elems, a[i].n0, a[i].n1, a[i].n2, a[i].D, (int64_t)sizeof(float)))
            return dn_fail(DN_ERR_SHAPE, "%s: %s [%lld,%lld,%lld,%lld] overflows 64-bit sizes", op,
                           a[i].name, (long long)a[i].n0, (long long)a[i].n1, (long long)a[i].n2,
                           (long long)a[i].D);
        if (!a[i].p && a[i].optional) continue;
        int64_t extent;
        dn_status st = dn_check_view(op, a[i].name, a[i].p, a[i].s, a[i].n0, a[i].n1, a[i].n2,
                                     a[i].D, a[i].output, &extent);
        if (st != DN_OK) return st;
        if (half >> i & 1) extent = (extent + 1) / 2; /* in floats, as dn_buf counts */
        bufs[nb++] = (dn_buf){a[i].name, a[i].p, extent, a[i].output, a[i].inplace};
    }
    return dn_check_overlaps(op, bufs, nb);
}

dn_strides dn_contiguous(int64_t n1, int64_t n2, int64_t D) {
    int64_t t, b;
    if (!DN_PROD(&t, n2, D) || !DN_PROD(&b, n1, n2, D)) return (dn_strides){-1, -1, -1};
    return (dn_strides){b, t, D};
}

void dn_pass_state(float *out, const float *in, int64_t n) {
    if (!out || out == in) return;
    if (in)
        memmove(out, in, (size_t)n * sizeof(float));
    else
        memset(out, 0, (size_t)n * sizeof(float));
}
