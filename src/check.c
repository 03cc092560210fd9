/*
 * check.c - argument checks shared by every op: strides and output views.
 */
#include "internal.h"

int dn_strides_ok(dn_strides s) { return s.b >= 0 && s.t >= 0 && s.h >= 0; }

int dn_rows_disjoint(dn_strides s, int64_t n0, int64_t n1, int64_t n2, int64_t D) {
    int64_t st[3] = {s.b, s.t, s.h}, ext[3] = {n0, n1, n2};
    for (int i = 0; i < 3; i++) /* insertion sort by stride */
        for (int j = i; j > 0 && st[j] < st[j - 1]; j--) {
            int64_t a = st[j], e = ext[j];
            st[j] = st[j - 1], ext[j] = ext[j - 1];
            st[j - 1] = a, ext[j - 1] = e;
        }
    int64_t span = D;
    for (int i = 0; i < 3; i++) {
        if (ext[i] <= 1) continue;
        if (st[i] < span) return 0;
        span = st[i] * (ext[i] - 1) + span;
    }
    return 1;
}

dn_status dn_check_output(const char *op, const char *name, const float *ptr, dn_strides s,
                          int64_t n0, int64_t n1, int64_t n2, int64_t D) {
    if (!ptr) return dn_fail(DN_ERR_NULL, "%s: %s is required", op, name);
    if (!dn_strides_ok(s)) return dn_fail(DN_ERR_STRIDE, "%s: %s strides are negative", op, name);
    if (!dn_rows_disjoint(s, n0, n1, n2, D))
        return dn_fail(DN_ERR_STRIDE, "%s: %s strides (%lld, %lld, %lld) make its rows overlap", op,
                       name, (long long)s.b, (long long)s.t, (long long)s.h);
    return DN_OK;
}

dn_status dn_check_input(const char *op, const char *name, const float *ptr, dn_strides s) {
    if (!ptr) return dn_fail(DN_ERR_NULL, "%s: %s is required", op, name);
    if (!dn_strides_ok(s)) return dn_fail(DN_ERR_STRIDE, "%s: %s strides are negative", op, name);
    return DN_OK;
}
