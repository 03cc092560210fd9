/*
 * json.h - a strict JSON (RFC 8259) reader into a tree, and a writer, for the model layer's
 * configs, checkpoint metadata, tokenizer files and JSON logs. Internal to the library (not in
 * the public header).
 *
 * Reading: dn_json_parse turns text into a tree of dn_json values that lives in one allocation
 * arena, freed at once by dn_json_free. The text is untrusted: anything outside RFC 8259 is
 * DN_ERR_FORMAT with "json: line L col C: what is wrong" in dn_last_error() (a file loaded by
 * dn_json_load names the file instead of "json"), and nothing is returned. Rejected, among
 * others: trailing commas, leading zeros, NaN/Infinity, comments, single quotes, raw control
 * characters and invalid UTF-8 in strings (overlong forms, surrogates, past U+10FFFF), lone
 * \u surrogates, a byte-order mark, duplicate keys in one object, anything after the value,
 * nesting deeper than DN_JSON_MAX_DEPTH, numbers whose magnitude overflows a double.
 * Strings come out as UTF-8 (escapes decoded, \uD83D\uDE00 pairs joined), NUL-terminated, with
 * their length (a \u0000 escape puts a NUL byte inside). Object members keep file order.
 * Numbers keep their double value and, when written as an integer (no fraction, no exponent)
 * that fits int64, that exact integer. Every allocation goes through dn_alloc: a failure is
 * DN_ERR_ALLOC with nothing leaked.
 *
 * Writing: dn_jw builds JSON text in a growing buffer, with commas and escapes handled; errors
 * (allocation, a misplaced key, a non-finite number, invalid UTF-8) stick and are reported once
 * by dn_jw_status, so a sequence of calls needs one check at the end.
 */
#ifndef DN_MODEL_JSON_H
#define DN_MODEL_JSON_H

#include "deltanet.h"

#include <stddef.h>
#include <stdint.h>

/* Deepest nesting of arrays and objects dn_json_parse accepts. */
#define DN_JSON_MAX_DEPTH 128
/* Longest number literal accepted (characters): no double needs more, and a literal of a
 * million digits is an attack on strtod, not a value. */
#define DN_JSON_MAX_NUMBER 1024

typedef enum dn_json_type {
    DN_JSON_NULL = 0,
    DN_JSON_BOOL,
    DN_JSON_NUMBER,
    DN_JSON_STRING,
    DN_JSON_ARRAY,
    DN_JSON_OBJECT,
    DN_JSON_TYPE_COUNT
} dn_json_type;

/* One value; read-only for users (the fields are documented so that a loop over members can
 * read them directly). 32 bytes, so that a tokenizer's 10^6 values stay small. */
typedef struct dn_json dn_json;
struct dn_json {
    uint8_t type;     /* dn_json_type */
    uint8_t is_int;   /* NUMBER: written as an integer that fits int64 (the value is u.i) */
    uint8_t boolean;  /* BOOL: 0 or 1 */
    uint8_t neg_zero; /* NUMBER: written "-0" (is_int, u.i = 0; dn_json_num gives -0.0) */
    uint32_t key_len; /* a member of an object: bytes of its key */
    const char *key;  /* a member of an object: its key, NUL-terminated; NULL otherwise */
    size_t len;       /* STRING: bytes (without the NUL); ARRAY, OBJECT: number of members */
    union {
        double num;           /* NUMBER with !is_int (dn_json_num reads either form) */
        int64_t i;            /* NUMBER with is_int */
        const char *str;      /* STRING: UTF-8, NUL-terminated */
        const dn_json *items; /* ARRAY, OBJECT: the members, in file order */
    } u;
};

/* Parses text[0..n) (need not be NUL-terminated) into *out, which the caller frees with
 * dn_json_free. On error *out is unchanged. */
dn_status dn_json_parse(const char *text, size_t n, dn_json **out);
/* The same, with messages prefixed by what (a file name, "safetensors header", ...) instead of
 * "json", and a nesting limit of max_depth (at most DN_JSON_MAX_DEPTH). */
dn_status dn_json_parse_as(const char *text, size_t n, const char *what, int max_depth,
                           dn_json **out);
/* Reads the file at path (at most max_bytes; larger is DN_ERR_FORMAT) and parses it, messages
 * naming the path. */
dn_status dn_json_load(const char *path, size_t max_bytes, dn_json **out);
/* Frees a tree returned by dn_json_parse / dn_json_load (only its root). NULL is a no-op. */
void dn_json_free(dn_json *root);

/* "null", "bool", "number", "string", "array", "object" ("?" out of range). */
const char *dn_json_type_name(int type);

/* ---- access (NULL-safe: a NULL or wrongly typed argument gives NULL / 0) ---- */
/* The member of obj named key (the first byte-wise equal key; keys are unique anyway), or NULL
 * when obj is not an object or has no such key. A linear scan: objects in configs are small;
 * index large ones yourself. */
const dn_json *dn_json_get(const dn_json *obj, const char *key);
/* Members of an array or object (0 for any other value), and member i (NULL past the end). */
size_t dn_json_len(const dn_json *v);
const dn_json *dn_json_at(const dn_json *v, size_t i);
/* The number as a double (an integer converted, possibly rounded); 0 for a non-number. */
double dn_json_num(const dn_json *v);

/* Typed getters for a key of an object, each failing with a message naming the key (and what it
 * found): DN_ERR_FORMAT when the key holds another type (or, for _int, a number that is not an
 * exact int64), or when required and the key is absent or null. An optional key that is absent
 * or null returns DN_OK and leaves *out as it was (the caller's default). obj must be an object
 * (DN_ERR_FORMAT naming it otherwise). */
dn_status dn_json_get_int(const dn_json *obj, const char *key, int64_t *out, int required);
dn_status dn_json_get_num(const dn_json *obj, const char *key, double *out, int required);
dn_status dn_json_get_bool(const dn_json *obj, const char *key, int *out, int required);
/* *out points into the tree (valid until dn_json_free); *len (may be NULL) gets its length. */
dn_status dn_json_get_str(const dn_json *obj, const char *key, const char **out, size_t *len,
                          int required);
/* A member of the given type (DN_JSON_ARRAY, DN_JSON_OBJECT, ...); same rules. */
dn_status dn_json_get_typed(const dn_json *obj, const char *key, dn_json_type type,
                            const dn_json **out, int required);

/* A printable excerpt of s[0..n) for a message: the first 40 bytes, others than printable
 * ASCII as \xNN, "..." when cut; written into dst (cap bytes, at least 8), returned. */
const char *dn_json_shown(char *dst, size_t cap, const char *s, size_t n);

/* ---- writing ---- */
#define DN_JW_MAX_DEPTH DN_JSON_MAX_DEPTH
typedef struct dn_jw {
    char *buf;       /* the text so far, NUL-terminated (NULL before the first write) */
    size_t len, cap; /* bytes of text, bytes allocated */
    dn_status err;   /* first error, DN_OK while none */
    int depth;       /* open arrays and objects */
    uint8_t kind[DN_JW_MAX_DEPTH];  /* per level: 'a' array, 'o' object */
    uint8_t count[DN_JW_MAX_DEPTH]; /* per level: 0 no member yet, 1 at least one */
    int after_key;                  /* a key was written, its value is next */
    int done;                       /* a complete top-level value was written */
} dn_jw;

void dn_jw_init(dn_jw *w);
/* Empties the text (keeps the buffer) and clears the error, for the next document. */
void dn_jw_reset(dn_jw *w);
void dn_jw_free(dn_jw *w);
void dn_jw_begin_object(dn_jw *w);
void dn_jw_end_object(dn_jw *w);
void dn_jw_begin_array(dn_jw *w);
void dn_jw_end_array(dn_jw *w);
/* A key in the current object; its value is the next call. */
void dn_jw_key(dn_jw *w, const char *key);
void dn_jw_key_n(dn_jw *w, const char *key, size_t n); /* key may hold NUL bytes */
void dn_jw_string(dn_jw *w, const char *s);
void dn_jw_string_n(dn_jw *w, const char *s, size_t n); /* s may hold NUL bytes (\u0000) */
void dn_jw_int(dn_jw *w, int64_t x);
/* The shortest decimal that reads back as the same double; NaN and Inf are an error (JSON has
 * no spelling for them). */
void dn_jw_num(dn_jw *w, double x);
void dn_jw_bool(dn_jw *w, int b);
void dn_jw_null(dn_jw *w);
/* A parsed value, written back compactly (numbers written as integers stay integers, others
 * are written as their shortest round-trip double; keys in their order). */
void dn_jw_value(dn_jw *w, const dn_json *v);
/* Raw bytes appended as they are (padding, a newline between JSON lines); not checked. */
void dn_jw_raw(dn_jw *w, const char *s, size_t n);
/* DN_OK, or the first error (its message was recorded by dn_fail when it happened). When every
 * value is complete and ok, w->buf holds the text, w->len bytes. */
dn_status dn_jw_status(const dn_jw *w);
/* dn_jw_status plus a check that the document is complete (every array and object closed). */
dn_status dn_jw_finish(dn_jw *w);

#endif
