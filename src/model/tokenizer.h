/*
 * tokenizer.h - the tokenizer's internals the tests reach (the API is in deltanet.h).
 */
#ifndef DN_MODEL_TOKENIZER_H
#define DN_MODEL_TOKENIZER_H

#include "deltanet.h"

#include <stddef.h>

/* The pre-tokenizer's split of the valid UTF-8 text s[0..n) alone (no normalization, no added
 * tokens): a new dn_alloc array *ends of *n_pieces byte offsets, where each piece ends. */
dn_status dn_tokenizer_split(const dn_tokenizer *t, const char *s, size_t n, size_t **ends,
                             size_t *n_pieces);

#endif
