/*
 * opts.h - command-line values for the tools (train, recall, generate, compare): each parser
 * reads the whole string, checks the range, and on anything else prints
 * "TOOL: FLAG must be ... (got 'S')" to stderr and returns -1, leaving *out unchanged.
 */
#ifndef DN_TOOLS_OPTS_H
#define DN_TOOLS_OPTS_H

#include "deltanet.h"

#include <stdint.h>

/* An integer in [lo, hi]. */
int opt_i64(const char *tool, const char *flag, const char *s, int64_t lo, int64_t hi,
            int64_t *out);
/* A finite number in [lo, hi]. */
int opt_f64(const char *tool, const char *flag, const char *s, double lo, double hi, double *out);
/* A comma-separated list of 1 to max integers in [lo, hi]: the count, or -1. */
int opt_i64_list(const char *tool, const char *flag, const char *s, int64_t lo, int64_t hi,
                 int64_t *out, int max);
/* A dtype by its name (f32, bf16, f16). */
int opt_dtype(const char *tool, const char *flag, const char *s, dn_dtype *out);
/* Two numbers "A,B" with lo <= A <= B <= hi. */
int opt_f64_pair(const char *tool, const char *flag, const char *s, double lo, double hi,
                 double out[2]);

#endif
