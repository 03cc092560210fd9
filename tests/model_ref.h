/*
 * model_ref.h - double-precision reference forward of the language model (tests only).
 */
#ifndef DN_TEST_MODEL_REF_H
#define DN_TEST_MODEL_REF_H

#include "deltanet.h"

typedef struct {
    const dn_model *m; /* config and tensor names */
    const double *p;   /* parameters in double, laid out as dn_model_params */
} ref_model;

/* Summed cross-entropy over targets >= 0 (targets may be NULL: returns 0); logits [B,T,vocab]
 * written when not NULL. */
double ref_model_forward(const ref_model *r, double *logits, const int32_t *tokens,
                         const int32_t *targets, int64_t B, int64_t T);

#endif
