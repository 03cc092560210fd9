/*
 * opts.c - command-line value parsers shared by the tools (opts.h).
 */
#include "opts.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A number at the start of s, in range; end set past it (the caller checks what follows). */
static int read_i64(const char *s, int64_t lo, int64_t hi, int64_t *v, const char **end) {
    char *e;
    errno = 0;
    const long long x = strtoll(s, &e, 10);
    if (errno || e == s || x < lo || x > hi) return -1;
    *v = x, *end = e;
    return 0;
}

static int read_f64(const char *s, double lo, double hi, double *v, const char **end) {
    char *e;
    errno = 0;
    const double x = strtod(s, &e);
    if (errno || e == s || !isfinite(x) || !(x >= lo && x <= hi)) return -1;
    *v = x, *end = e;
    return 0;
}

int opt_i64(const char *tool, const char *flag, const char *s, int64_t lo, int64_t hi,
            int64_t *out) {
    int64_t v;
    const char *end;
    if (read_i64(s, lo, hi, &v, &end) || *end) {
        fprintf(stderr, "%s: %s must be an integer in [%lld, %lld] (got '%s')\n", tool, flag,
                (long long)lo, (long long)hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

int opt_f64(const char *tool, const char *flag, const char *s, double lo, double hi, double *out) {
    double v;
    const char *end;
    if (read_f64(s, lo, hi, &v, &end) || *end) {
        fprintf(stderr, "%s: %s must be a number in [%g, %g] (got '%s')\n", tool, flag, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

int opt_i64_list(const char *tool, const char *flag, const char *s, int64_t lo, int64_t hi,
                 int64_t *out, int max) {
    int n = 0;
    const char *p = s;
    for (;;) {
        int64_t v;
        const char *end;
        if (n == max || read_i64(p, lo, hi, &v, &end) || (*end && *end != ',')) {
            fprintf(stderr,
                    "%s: %s must be 1 to %d comma-separated integers in [%lld, %lld] (got "
                    "'%s')\n",
                    tool, flag, max, (long long)lo, (long long)hi, s);
            return -1;
        }
        out[n++] = v;
        if (!*end) return n;
        p = end + 1;
    }
}

int opt_f64_pair(const char *tool, const char *flag, const char *s, double lo, double hi,
                 double out[2]) {
    double a, b;
    const char *end;
    if (read_f64(s, lo, hi, &a, &end) || *end != ',' || read_f64(end + 1, lo, hi, &b, &end) ||
        *end || a > b) {
        fprintf(stderr, "%s: %s must be two numbers A,B with %g <= A <= B <= %g (got '%s')\n", tool,
                flag, lo, hi, s);
        return -1;
    }
    out[0] = a, out[1] = b;
    return 0;
}

int opt_dtype(const char *tool, const char *flag, const char *s, dn_dtype *out) {
    for (int t = 0; t < DN_DTYPE_COUNT; t++)
        if (!strcmp(s, dn_dtype_name((dn_dtype)t))) {
            *out = (dn_dtype)t;
            return 0;
        }
    fprintf(stderr, "%s: %s takes f32, bf16 or f16, not '%s'\n", tool, flag, s);
    return 1;
}
