/*
 * ref/la.h - the linear-attention family on one (sequence, value head) in double: forward and
 * reverse-mode backward of the token recurrence. The float reference entry points (ref/la.c)
 * gather into these; the tests call them directly to check gradients against finite differences
 * in double.
 */
#ifndef DN_REF_LA_H
#define DN_REF_LA_H

#include "deltanet.h"

#include <stddef.h>

typedef struct {
    dn_op op;
    int64_t T, K, V;
    double scale;
    int l2norm;
    /* inputs: q, k [T,K]; v [T,V]; g, beta [T] (unused entries ignored); h0 [K,V] or NULL */
    const double *q, *k, *v, *g, *beta, *h0;
} dn_la_core;

/* Scratch (in doubles) the two functions below need for T, K, V; the caller allocates it, so
 * that a caller can allocate everything before it writes anything. */
size_t dn_la_core_forward_doubles(int64_t T, int64_t K, int64_t V);
size_t dn_la_core_backward_doubles(int64_t T, int64_t K, int64_t V);

/* o [T,V] and hT [K,V] (either may be NULL). */
void dn_la_core_forward(const dn_la_core *c, double *o, double *hT, double *work);

/* Given do [T,V] and dhT [K,V] (NULL: zero), writes dq, dk [T,K], dv [T,V], dg, dbeta [T] and
 * dh0 [K,V] (any output may be NULL). */
void dn_la_core_backward(const dn_la_core *c, const double *dout, const double *dhT, double *dq,
                         double *dk, double *dv, double *dg, double *dbeta, double *dh0,
                         double *work);

#endif
