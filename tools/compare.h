/*
 * compare.h - `deltanet compare` (tools/compare.c), reachable from the tests.
 */
#ifndef DN_COMPARE_H
#define DN_COMPARE_H

#include "deltanet.h"

int dn_compare_main(int argc, char **argv);

/* Memory-capacity experiment: N random unit key / unit value pairs of dimension K written into
 * the state of op (linear_attn, deltanet or gdn; beta = 1, scale 1), after `distractors` older
 * pairs; every queried key read back as S^T k. gate: log decay per token (GDN); close_gate: a
 * decay of exp(-30) on the first queried pair. Gives the mean relative squared error, the top-1
 * accuracy (the nearest stored value is the right one) and, if err_last is not NULL, the error
 * of the last pair written. The queried pairs depend only on seed, not on the distractors. */
dn_status dn_compare_capacity(dn_op op, int64_t K, int64_t N, int64_t distractors, float gate,
                              int close_gate, uint64_t seed, double *err, double *acc,
                              double *err_last);

#endif
