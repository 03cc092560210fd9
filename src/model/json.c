/*
 * json.c - the strict JSON reader (text to a dn_json tree) and the JSON writer (dn_jw) declared
 * in json.h.
 *
 * The reader is a recursive descent over the text, bounded by the nesting limit. Values live in
 * an arena of a few large blocks (one allocation per 64 KiB or per large string, not one per
 * value), so a tree is freed at once and an allocation failure anywhere frees everything. The
 * members of an open array or object wait on one growing stack and are copied into the arena
 * when the container closes, where the object's keys are also checked for duplicates (sorted,
 * so a 10^5-key vocabulary is not quadratic).
 */
#include "json.h"

#include "../internal.h"
#include "fileio.h"

#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>

/* ---- arena ---- */
typedef struct block {
    struct block *next;
    size_t used, cap;
} block;
#define BLOCK_HDR ((sizeof(block) + 15) & ~(size_t)15)
#define BLOCK_MIN ((size_t)64 << 10)

/* The root value first, so that dn_json_free can get from the root to the arena. */
typedef struct {
    dn_json root;
    block *blocks;
} doc;

static void blocks_free(block *b) {
    while (b) {
        block *next = b->next;
        dn_free(b);
        b = next;
    }
}

/* 16-byte aligned memory from the arena; NULL when out of memory or the size overflows. */
static void *arena_alloc(block **head, size_t bytes) {
    if (bytes > SIZE_MAX / 2) return NULL;
    bytes = (bytes + 15) & ~(size_t)15;
    block *b = *head;
    if (!b || b->cap - b->used < bytes) {
        size_t cap = bytes > BLOCK_MIN ? bytes : BLOCK_MIN;
        b = dn_alloc(BLOCK_HDR + cap);
        if (!b) return NULL;
        b->next = *head, b->used = 0, b->cap = cap;
        *head = b;
    }
    void *p = (char *)b + BLOCK_HDR + b->used;
    b->used += bytes;
    return p;
}

/* ---- UTF-8 (shared with the writer) ---- */
/* Length of the valid UTF-8 sequence at s (n bytes available), 0 if invalid: no overlong
 * forms, no surrogates (U+D800..DFFF), nothing past U+10FFFF (RFC 3629). */
static size_t utf8_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    size_t len;
    unsigned lo = 0x80, hi = 0xBF; /* range of the second byte */
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else
        return 0;
    if (n < len || s[1] < lo || s[1] > hi) return 0;
    for (size_t k = 2; k < len; k++)
        if ((s[k] & 0xC0) != 0x80) return 0;
    return len;
}

static size_t utf8_put(char *d, uint32_t cp) {
    if (cp < 0x80) {
        d[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        d[0] = (char)(0xC0 | cp >> 6);
        d[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        d[0] = (char)(0xE0 | cp >> 12);
        d[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        d[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    d[0] = (char)(0xF0 | cp >> 18);
    d[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    d[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    d[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

const char *dn_json_shown(char *dst, size_t cap, const char *s, size_t n) {
    size_t o = 0;
    for (size_t i = 0; i < n && o + 5 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (i == 40) {
            o += (size_t)snprintf(dst + o, cap - o, "...");
            break;
        }
        if (c >= 0x20 && c < 0x7F)
            dst[o++] = (char)c;
        else
            o += (size_t)snprintf(dst + o, cap - o, "\\x%02X", c);
    }
    dst[o < cap ? o : cap - 1] = 0;
    return dst;
}

/* ---- the reader ---- */
typedef struct {
    const char *s;
    size_t n, i;
    const char *what;
    int max_depth, depth;
    block *arena;
    dn_json *stk; /* members of the open containers */
    size_t *pos;  /* where each member's key starts, for duplicate-key messages */
    size_t sp, cap;
} parser;

static dn_status perr(parser *p, size_t at, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
static dn_status perr(parser *p, size_t at, const char *fmt, ...) {
    size_t line = 1, col = 1;
    for (size_t k = 0; k < at && k < p->n; k++) {
        if (p->s[k] == '\n')
            line++, col = 1;
        else
            col++;
    }
    char msg[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return dn_fail(DN_ERR_FORMAT, "%s: line %zu col %zu: %s", p->what, line, col, msg);
}

static dn_status oom(parser *p) {
    return dn_fail(DN_ERR_ALLOC, "%s: out of memory after %zu of %zu bytes", p->what, p->i, p->n);
}

static void skip_ws(parser *p) {
    while (p->i < p->n) {
        char c = p->s[p->i];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->i++;
    }
}

/* A message naming the byte at i: "'x'", "byte 0xNN", or "the end of the input". */
static const char *what_is(parser *p, size_t i, char *buf, size_t cap) {
    if (i >= p->n) return "the end of the input";
    unsigned char c = (unsigned char)p->s[i];
    if (c >= 0x20 && c < 0x7F)
        snprintf(buf, cap, "'%c'", c);
    else
        snprintf(buf, cap, "byte 0x%02X", c);
    return buf;
}

static dn_status push(parser *p, const dn_json *v, size_t at) {
    if (p->sp == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 64;
        if (cap > SIZE_MAX / sizeof(dn_json)) return oom(p);
        dn_json *s = dn_alloc(cap * sizeof *s);
        size_t *q = s ? dn_alloc(cap * sizeof *q) : NULL;
        if (!q) {
            dn_free(s);
            return oom(p);
        }
        if (p->sp) {
            memcpy(s, p->stk, p->sp * sizeof *s);
            memcpy(q, p->pos, p->sp * sizeof *q);
        }
        dn_free(p->stk);
        dn_free(p->pos);
        p->stk = s, p->pos = q, p->cap = cap;
    }
    p->stk[p->sp] = *v;
    p->pos[p->sp] = at;
    p->sp++;
    return DN_OK;
}

/* Moves the members from stack position base on into the arena as v's items. */
static dn_status pop_members(parser *p, size_t base, dn_json *v) {
    size_t count = p->sp - base;
    v->len = count;
    v->u.items = NULL;
    if (count) {
        dn_json *items = arena_alloc(&p->arena, count * sizeof *items);
        if (!items) return oom(p);
        memcpy(items, p->stk + base, count * sizeof *items);
        v->u.items = items;
    }
    p->sp = base;
    return DN_OK;
}

static int key_cmp(const dn_json *a, const dn_json *b) {
    if (a->key_len != b->key_len) return a->key_len < b->key_len ? -1 : 1;
    return memcmp(a->key, b->key, a->key_len);
}
static int key_cmp_ptr(const void *a, const void *b) {
    const dn_json *x = *(const dn_json *const *)a, *y = *(const dn_json *const *)b;
    int c = key_cmp(x, y);
    return c ? c : (x < y ? -1 : x > y); /* equal keys: file order, so the later one is named */
}

/* Duplicate keys among the members at [base, sp): an error at the second occurrence. */
static dn_status check_duplicates(parser *p, size_t base) {
    const size_t count = p->sp - base;
    if (count < 2) return DN_OK; /* (and the stack may not exist yet) */
    const dn_json *m = p->stk + base;
    const dn_json *dup = NULL;
    if (count <= 16) {
        for (size_t a = 1; a < count && !dup; a++)
            for (size_t b = 0; b < a; b++)
                if (!key_cmp(&m[a], &m[b])) {
                    dup = &m[a];
                    break;
                }
    } else {
        const dn_json **idx = dn_alloc(count * sizeof *idx);
        if (!idx) return oom(p);
        for (size_t k = 0; k < count; k++)
            idx[k] = &m[k];
        qsort(idx, count, sizeof *idx, key_cmp_ptr);
        for (size_t k = 1; k < count; k++)
            if (!key_cmp(idx[k], idx[k - 1]) && (!dup || idx[k] < dup)) dup = idx[k];
        dn_free(idx);
    }
    if (!dup) return DN_OK;
    char b[200];
    return perr(p, p->pos[base + (size_t)(dup - m)], "duplicate key \"%s\" in an object",
                dn_json_shown(b, sizeof b, dup->key, dup->key_len));
}

static int hex4(const char *s, uint32_t *out) {
    uint32_t v = 0;
    for (int k = 0; k < 4; k++) {
        char c = s[k];
        unsigned d;
        if (c >= '0' && c <= '9')
            d = (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            d = (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            d = (unsigned)(c - 'A' + 10);
        else
            return 0;
        v = v << 4 | d;
    }
    *out = v;
    return 1;
}

/* The string at p->i (its opening quote) into v (type STRING), decoded into the arena. */
static dn_status parse_string(parser *p, dn_json *v) {
    const size_t open = p->i;
    /* first pass: the closing quote, so the decoded string (never longer) fits one allocation */
    size_t end = open + 1;
    while (end < p->n && p->s[end] != '"')
        end += p->s[end] == '\\' ? 2 : 1;
    if (end >= p->n) return perr(p, open, "unterminated string");
    char *d = arena_alloc(&p->arena, end - open);
    if (!d) return oom(p);
    size_t o = 0, i = open + 1;
    while (i < end) {
        unsigned char c = (unsigned char)p->s[i];
        if (c < 0x20)
            return perr(p, i, "raw control character 0x%02X in a string (write it as an escape)",
                        c);
        if (c >= 0x80) {
            size_t len = utf8_len((const unsigned char *)p->s + i, end - i);
            if (!len) return perr(p, i, "invalid UTF-8 byte 0x%02X in a string", c);
            memcpy(d + o, p->s + i, len);
            o += len, i += len;
            continue;
        }
        if (c != '\\') {
            d[o++] = (char)c, i++;
            continue;
        }
        /* an escape; the first pass guarantees a byte after the backslash */
        char e = p->s[i + 1];
        static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
        const char *f = e ? strchr(from, e) : NULL;
        if (f) {
            d[o++] = to[f - from], i += 2;
            continue;
        }
        if (e != 'u') {
            char b[24];
            return perr(p, i, "invalid escape \\%s in a string",
                        dn_json_shown(b, sizeof b, p->s + i + 1, 1));
        }
        uint32_t cp, lo;
        if (end - i < 6 || !hex4(p->s + i + 2, &cp))
            return perr(p, i, "\\u must be followed by four hex digits");
        if (cp >= 0xDC00 && cp <= 0xDFFF)
            return perr(p, i, "lone low surrogate \\u%04X (no high surrogate before it)",
                        (unsigned)cp);
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (end - i < 12 || p->s[i + 6] != '\\' || p->s[i + 7] != 'u' ||
                !hex4(p->s + i + 8, &lo) || lo < 0xDC00 || lo > 0xDFFF)
                return perr(p, i, "lone high surrogate \\u%04X (no \\uDC00-\\uDFFF after it)",
                            (unsigned)cp);
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            i += 6;
        }
        o += utf8_put(d + o, cp);
        i += 6;
    }
    d[o] = 0;
    v->type = DN_JSON_STRING;
    v->u.str = d;
    v->len = o;
    p->i = end + 1;
    return DN_OK;
}

static dn_status parse_number(parser *p, dn_json *v) {
    const size_t start = p->i;
    size_t i = start;
    const char *s = p->s;
    int neg = 0, integral = 1;
    if (s[i] == '-') neg = 1, i++;
    if (i >= p->n || s[i] < '0' || s[i] > '9')
        return perr(p, start, "'-' must be followed by a digit");
    if (s[i] == '0') {
        i++;
        if (i < p->n && s[i] >= '0' && s[i] <= '9')
            return perr(p, start, "leading zeros are not allowed in numbers");
    } else {
        while (i < p->n && s[i] >= '0' && s[i] <= '9')
            i++;
    }
    if (i < p->n && s[i] == '.') {
        integral = 0, i++;
        if (i >= p->n || s[i] < '0' || s[i] > '9')
            return perr(p, i, "a '.' in a number must be followed by a digit");
        while (i < p->n && s[i] >= '0' && s[i] <= '9')
            i++;
    }
    if (i < p->n && (s[i] == 'e' || s[i] == 'E')) {
        integral = 0, i++;
        if (i < p->n && (s[i] == '+' || s[i] == '-')) i++;
        if (i >= p->n || s[i] < '0' || s[i] > '9')
            return perr(p, i, "an exponent must have digits");
        while (i < p->n && s[i] >= '0' && s[i] <= '9')
            i++;
    }
    const size_t len = i - start;
    if (len > DN_JSON_MAX_NUMBER)
        return perr(p, start, "number of %zu characters (longer than %d)", len, DN_JSON_MAX_NUMBER);
    v->type = DN_JSON_NUMBER;
    p->i = i;
    if (integral) { /* exact, accumulated negatively so that INT64_MIN fits */
        int64_t r = 0;
        int fits = 1;
        for (size_t k = start + (size_t)neg; k < i && fits; k++)
            fits = !__builtin_mul_overflow(r, 10, &r) && !__builtin_sub_overflow(r, s[k] - '0', &r);
        if (fits && !neg) {
            if (r == INT64_MIN)
                fits = 0;
            else
                r = -r;
        }
        if (fits) {
            v->is_int = 1;
            v->u.i = r;
            v->neg_zero = neg && r == 0;
            return DN_OK;
        }
    }
    /* strtod reads the locale's decimal point: write it in place of the '.' */
    char buf[DN_JSON_MAX_NUMBER + 16];
    const char *dp = localeconv()->decimal_point;
    size_t dpl = dp && *dp ? strlen(dp) : 1, o = 0;
    if (dpl > 8) dp = ".", dpl = 1;
    for (size_t k = start; k < i; k++) {
        if (s[k] == '.') {
            memcpy(buf + o, dp && *dp ? dp : ".", dpl);
            o += dpl;
        } else {
            buf[o++] = s[k];
        }
    }
    buf[o] = 0;
    char *e;
    double x = strtod(buf, &e);
    if (e != buf + o) return perr(p, start, "cannot read the number");
    if (isinf(x)) return perr(p, start, "number out of the range of a double");
    v->is_int = 0;
    v->u.num = x;
    return DN_OK;
}

static dn_status parse_value(parser *p, dn_json *v);

static dn_status enter(parser *p) {
    if (++p->depth > p->max_depth)
        return perr(p, p->i, "nesting deeper than %d arrays and objects", p->max_depth);
    return DN_OK;
}

static dn_status parse_array(parser *p, dn_json *v) {
    dn_status st = enter(p);
    if (st) return st;
    const size_t open = p->i++, base = p->sp;
    char b[24];
    skip_ws(p);
    if (p->i < p->n && p->s[p->i] == ']') {
        p->i++;
    } else {
        for (;;) {
            dn_json m;
            size_t at = p->i;
            if ((st = parse_value(p, &m)) || (st = push(p, &m, at))) return st;
            skip_ws(p);
            if (p->i >= p->n) return perr(p, open, "unterminated array (no ']')");
            char c = p->s[p->i];
            if (c == ']') {
                p->i++;
                break;
            }
            if (c != ',')
                return perr(p, p->i, "expected ',' or ']' in an array, found %s",
                            what_is(p, p->i, b, sizeof b));
            p->i++;
            skip_ws(p);
            if (p->i < p->n && p->s[p->i] == ']') return perr(p, p->i, "trailing comma");
        }
    }
    p->depth--;
    v->type = DN_JSON_ARRAY;
    return pop_members(p, base, v);
}

static dn_status parse_object(parser *p, dn_json *v) {
    dn_status st = enter(p);
    if (st) return st;
    const size_t open = p->i++, base = p->sp;
    char b[24];
    skip_ws(p);
    if (p->i < p->n && p->s[p->i] == '}') {
        p->i++;
    } else {
        for (;;) {
            if (p->i >= p->n) return perr(p, open, "unterminated object (no '}')");
            if (p->s[p->i] != '"')
                return perr(p, p->i, "expected a string key in an object, found %s",
                            what_is(p, p->i, b, sizeof b));
            dn_json k, m;
            const size_t at = p->i;
            if ((st = parse_string(p, &k))) return st;
            if (k.len > UINT32_MAX) return perr(p, at, "key longer than 4 GiB");
            skip_ws(p);
            if (p->i >= p->n || p->s[p->i] != ':')
                return perr(p, p->i, "expected ':' after a key, found %s",
                            what_is(p, p->i, b, sizeof b));
            p->i++;
            if ((st = parse_value(p, &m))) return st;
            m.key = k.u.str;
            m.key_len = (uint32_t)k.len;
            if ((st = push(p, &m, at))) return st;
            skip_ws(p);
            if (p->i >= p->n) return perr(p, open, "unterminated object (no '}')");
            char c = p->s[p->i];
            if (c == '}') {
                p->i++;
                break;
            }
            if (c != ',')
                return perr(p, p->i, "expected ',' or '}' in an object, found %s",
                            what_is(p, p->i, b, sizeof b));
            p->i++;
            skip_ws(p);
            if (p->i < p->n && p->s[p->i] == '}') return perr(p, p->i, "trailing comma");
        }
    }
    p->depth--;
    if ((st = check_duplicates(p, base))) return st;
    v->type = DN_JSON_OBJECT;
    return pop_members(p, base, v);
}

static dn_status parse_value(parser *p, dn_json *v) {
    memset(v, 0, sizeof *v);
    skip_ws(p);
    if (p->i >= p->n) return perr(p, p->i, "unexpected end of the input, expected a value");
    const char *s = p->s + p->i;
    const size_t left = p->n - p->i;
    char b[24];
    switch (*s) {
    case '{': return parse_object(p, v);
    case '[': return parse_array(p, v);
    case '"': return parse_string(p, v);
    case 't':
    case 'f':
    case 'n': {
        static const char *const lit[] = {"true", "false", "null"};
        int k = *s == 't' ? 0 : *s == 'f' ? 1 : 2;
        size_t len = strlen(lit[k]);
        if (left < len || memcmp(s, lit[k], len))
            return perr(p, p->i, "invalid literal (expected %s)", lit[k]);
        v->type = k == 2 ? DN_JSON_NULL : DN_JSON_BOOL;
        v->boolean = k == 0;
        p->i += len;
        return DN_OK;
    }
    case 'N':
    case 'I': return perr(p, p->i, "NaN and Infinity are not JSON");
    case '\'': return perr(p, p->i, "strings take double quotes, not single");
    case '/': return perr(p, p->i, "comments are not JSON");
    default:
        if (*s == '-' || (*s >= '0' && *s <= '9')) {
            if (*s == '-' && left > 1 && s[1] == 'I')
                return perr(p, p->i, "NaN and Infinity are not JSON");
            return parse_number(p, v);
        }
        return perr(p, p->i, "unexpected %s, expected a value", what_is(p, p->i, b, sizeof b));
    }
}

dn_status dn_json_parse_as(const char *text, size_t n, const char *what, int max_depth,
                           dn_json **out) {
    if (!what) what = "json";
    if ((!text && n) || !out) return dn_fail(DN_ERR_NULL, "%s: text or out is NULL", what);
    if (max_depth < 0 || max_depth > DN_JSON_MAX_DEPTH)
        return dn_fail(DN_ERR_ARG, "%s: nesting limit %d outside [0, %d]", what, max_depth,
                       DN_JSON_MAX_DEPTH);
    parser p = {.s = text ? text : "", .n = n, .what = what, .max_depth = max_depth};
    dn_status st;
    if (n >= 3 && !memcmp(text, "\xEF\xBB\xBF", 3)) {
        st = perr(&p, 0, "byte-order mark at the start (JSON text must not have one)");
    } else {
        doc *d = arena_alloc(&p.arena, sizeof *d);
        st = d ? parse_value(&p, &d->root) : oom(&p);
        if (!st) {
            skip_ws(&p);
            char b[24];
            if (p.i < p.n)
                st = perr(&p, p.i, "unexpected %s after the JSON value",
                          what_is(&p, p.i, b, sizeof b));
        }
        if (!st) {
            d->blocks = p.arena;
            *out = &d->root;
        }
    }
    dn_free(p.stk);
    dn_free(p.pos);
    if (st) blocks_free(p.arena);
    return st;
}

dn_status dn_json_parse(const char *text, size_t n, dn_json **out) {
    return dn_json_parse_as(text, n, "json", DN_JSON_MAX_DEPTH, out);
}

dn_status dn_json_load(const char *path, size_t max_bytes, dn_json **out) {
    if (!path || !out) return dn_fail(DN_ERR_NULL, "dn_json_load: path or out is NULL");
    char *text;
    size_t n;
    dn_status st = dn_file_read(path, max_bytes, &text, &n);
    if (st) return st;
    st = dn_json_parse_as(text, n, path, DN_JSON_MAX_DEPTH, out);
    dn_free(text);
    return st;
}

void dn_json_free(dn_json *root) {
    if (!root) return;
    blocks_free(((doc *)root)->blocks);
}

/* ---- access ---- */
const char *dn_json_type_name(int type) {
    static const char *const names[DN_JSON_TYPE_COUNT] = {
        [DN_JSON_NULL] = "null",     [DN_JSON_BOOL] = "bool",   [DN_JSON_NUMBER] = "number",
        [DN_JSON_STRING] = "string", [DN_JSON_ARRAY] = "array", [DN_JSON_OBJECT] = "object"};
    return type >= 0 && type < DN_JSON_TYPE_COUNT ? names[type] : "?";
}

const dn_json *dn_json_get(const dn_json *obj, const char *key) {
    if (!obj || obj->type != DN_JSON_OBJECT || !key) return NULL;
    size_t kl = strlen(key);
    for (size_t i = 0; i < obj->len; i++) {
        const dn_json *m = &obj->u.items[i];
        if (m->key_len == kl && !memcmp(m->key, key, kl)) return m;
    }
    return NULL;
}

size_t dn_json_len(const dn_json *v) {
    return v && (v->type == DN_JSON_ARRAY || v->type == DN_JSON_OBJECT) ? v->len : 0;
}

const dn_json *dn_json_at(const dn_json *v, size_t i) {
    return i < dn_json_len(v) ? &v->u.items[i] : NULL;
}

double dn_json_num(const dn_json *v) {
    if (!v || v->type != DN_JSON_NUMBER) return 0;
    if (!v->is_int) return v->u.num;
    return v->neg_zero ? -0.0 : (double)v->u.i;
}

/* "a string", "an integer", "the number 2.5", ... for messages */
static const char *describe(const dn_json *v, char *buf, size_t cap) {
    switch (v->type) {
    case DN_JSON_NULL: return "null";
    case DN_JSON_BOOL: return v->boolean ? "true" : "false";
    case DN_JSON_NUMBER:
        if (v->is_int)
            snprintf(buf, cap, "the integer %lld", (long long)v->u.i);
        else
            snprintf(buf, cap, "the number %.17g", v->u.num);
        return buf;
    case DN_JSON_STRING: return "a string";
    case DN_JSON_ARRAY: return "an array";
    default: return "an object";
    }
}

dn_status dn_json_get_typed(const dn_json *obj, const char *key, dn_json_type type,
                            const dn_json **out, int required) {
    if (!key || !out) return dn_fail(DN_ERR_NULL, "json: key or out is NULL");
    char b[64];
    if (!obj || obj->type != DN_JSON_OBJECT)
        return dn_fail(DN_ERR_FORMAT, "json: looking up \"%s\" in %s, not an object", key,
                       obj ? describe(obj, b, sizeof b) : "nothing");
    const dn_json *v = dn_json_get(obj, key);
    if (!v || (v->type == DN_JSON_NULL && type != DN_JSON_NULL)) {
        if (!required) return DN_OK;
        return dn_fail(DN_ERR_FORMAT, "json: key \"%s\" is required but %s", key,
                       v ? "is null" : "missing");
    }
    if (v->type != (uint8_t)type)
        return dn_fail(
            DN_ERR_FORMAT, "json: key \"%s\" is %s, expected a%s %s", key, describe(v, b, sizeof b),
            type == DN_JSON_ARRAY || type == DN_JSON_OBJECT ? "n" : "", dn_json_type_name(type));
    *out = v;
    return DN_OK;
}

dn_status dn_json_get_int(const dn_json *obj, const char *key, int64_t *out, int required) {
    const dn_json *v = NULL;
    dn_status st = out ? dn_json_get_typed(obj, key, DN_JSON_NUMBER, &v, required)
                       : dn_fail(DN_ERR_NULL, "json: out is NULL");
    if (st || !v) return st;
    char b[64];
    if (!v->is_int)
        return dn_fail(DN_ERR_FORMAT,
                       "json: key \"%s\" is %s, expected an integer (no fraction or exponent, "
                       "within 64 bits)",
                       key, describe(v, b, sizeof b));
    *out = v->u.i;
    return DN_OK;
}

dn_status dn_json_get_num(const dn_json *obj, const char *key, double *out, int required) {
    const dn_json *v = NULL;
    dn_status st = out ? dn_json_get_typed(obj, key, DN_JSON_NUMBER, &v, required)
                       : dn_fail(DN_ERR_NULL, "json: out is NULL");
    if (!st && v) *out = dn_json_num(v);
    return st;
}

dn_status dn_json_get_bool(const dn_json *obj, const char *key, int *out, int required) {
    const dn_json *v = NULL;
    dn_status st = out ? dn_json_get_typed(obj, key, DN_JSON_BOOL, &v, required)
                       : dn_fail(DN_ERR_NULL, "json: out is NULL");
    if (!st && v) *out = v->boolean;
    return st;
}

dn_status dn_json_get_str(const dn_json *obj, const char *key, const char **out, size_t *len,
                          int required) {
    const dn_json *v = NULL;
    dn_status st = out ? dn_json_get_typed(obj, key, DN_JSON_STRING, &v, required)
                       : dn_fail(DN_ERR_NULL, "json: out is NULL");
    if (!st && v) {
        *out = v->u.str;
        if (len) *len = v->len;
    }
    return st;
}

/* ---- the writer ---- */
void dn_jw_init(dn_jw *w) { memset(w, 0, sizeof *w); }

void dn_jw_reset(dn_jw *w) {
    char *buf = w->buf;
    size_t cap = w->cap;
    memset(w, 0, sizeof *w);
    w->buf = buf, w->cap = cap;
    if (buf) buf[0] = 0;
}

void dn_jw_free(dn_jw *w) {
    dn_free(w->buf);
    memset(w, 0, sizeof *w);
}

static void jw_fail(dn_jw *w, dn_status st, const char *msg) {
    if (!w->err) w->err = dn_fail(st, "dn_jw: %s", msg);
}

void dn_jw_raw(dn_jw *w, const char *s, size_t n) {
    if (w->err) return;
    if (n > SIZE_MAX / 4 - w->len) {
        jw_fail(w, DN_ERR_ALLOC, "text too large");
        return;
    }
    if (w->len + n + 1 > w->cap) {
        size_t cap = w->cap ? w->cap : 256;
        while (cap < w->len + n + 1)
            cap *= 2;
        char *b = dn_alloc(cap);
        if (!b) {
            jw_fail(w, DN_ERR_ALLOC, "out of memory");
            return;
        }
        if (w->len) memcpy(b, w->buf, w->len);
        dn_free(w->buf);
        w->buf = b, w->cap = cap;
    }
    if (n) memcpy(w->buf + w->len, s, n);
    w->len += n;
    w->buf[w->len] = 0;
}

/* Before a value: the comma, and the check that a value may come here. */
static int jw_value(dn_jw *w) {
    if (w->err) return 0;
    if (w->depth > 0) {
        int d = w->depth - 1;
        if (w->kind[d] == 'o') {
            if (!w->after_key) {
                jw_fail(w, DN_ERR_ARG, "a value inside an object needs a key first");
                return 0;
            }
            w->after_key = 0;
        } else {
            if (w->count[d]) dn_jw_raw(w, ",", 1);
            w->count[d] = 1;
        }
    }
    return !w->err;
}

static void jw_scalar_done(dn_jw *w) {
    if (w->depth == 0 && !w->err) w->done = 1;
}

static void jw_quoted(dn_jw *w, const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    dn_jw_raw(w, "\"", 1);
    size_t run = 0; /* bytes copied as they are, flushed before an escape */
    for (size_t i = 0; i < n && !w->err;) {
        unsigned char c = u[i];
        const char *esc = NULL;
        char ub[8];
        if (c == '"')
            esc = "\\\"";
        else if (c == '\\')
            esc = "\\\\";
        else if (c < 0x20) {
            static const char *const named[32] = {
                ['\b'] = "\\b", ['\f'] = "\\f", ['\n'] = "\\n", ['\r'] = "\\r", ['\t'] = "\\t"};
            esc = named[c];
            if (!esc) {
                snprintf(ub, sizeof ub, "\\u%04x", c);
                esc = ub;
            }
        }
        if (esc) {
            dn_jw_raw(w, s + i - run, run);
            dn_jw_raw(w, esc, strlen(esc));
            run = 0, i++;
            continue;
        }
        size_t len = utf8_len(u + i, n - i);
        if (!len) {
            char m[80];
            snprintf(m, sizeof m, "string is not valid UTF-8 (byte 0x%02X at %zu)", c, i);
            {
                jw_fail(w, DN_ERR_ARG, m);
                return;
            }
        }
        run += len, i += len;
    }
    dn_jw_raw(w, s + n - run, run);
    dn_jw_raw(w, "\"", 1);
}

void dn_jw_key_n(dn_jw *w, const char *key, size_t n) {
    if (w->err) return;
    if (!key && n) {
        jw_fail(w, DN_ERR_NULL, "key is NULL");
        return;
    }
    if (w->depth == 0 || w->kind[w->depth - 1] != 'o' || w->after_key) {
        jw_fail(w, DN_ERR_ARG, "a key outside an object, or two keys in a row");
        return;
    }
    int d = w->depth - 1;
    if (w->count[d]) dn_jw_raw(w, ",", 1);
    w->count[d] = 1;
    jw_quoted(w, key ? key : "", n);
    dn_jw_raw(w, ":", 1);
    w->after_key = 1;
}

void dn_jw_key(dn_jw *w, const char *key) {
    if (!w->err && !key) {
        jw_fail(w, DN_ERR_NULL, "key is NULL");
        return;
    }
    dn_jw_key_n(w, key, key ? strlen(key) : 0);
}

static void jw_open(dn_jw *w, char kind) {
    if (!jw_value(w)) return;
    if (w->depth == DN_JW_MAX_DEPTH) {
        jw_fail(w, DN_ERR_ARG, "nesting too deep");
        return;
    }
    w->kind[w->depth] = (uint8_t)kind;
    w->count[w->depth] = 0;
    w->depth++;
    dn_jw_raw(w, kind == 'o' ? "{" : "[", 1);
}

static void jw_close(dn_jw *w, char kind) {
    if (w->err) return;
    if (w->depth == 0 || w->kind[w->depth - 1] != kind || w->after_key) {
        jw_fail(w, DN_ERR_ARG,
                kind == 'o' ? "end_object without a matching begin_object (or after a key)"
                            : "end_array without a matching begin_array");
        return;
    }
    w->depth--;
    dn_jw_raw(w, kind == 'o' ? "}" : "]", 1);
    jw_scalar_done(w);
}

void dn_jw_begin_object(dn_jw *w) { jw_open(w, 'o'); }
void dn_jw_end_object(dn_jw *w) { jw_close(w, 'o'); }
void dn_jw_begin_array(dn_jw *w) { jw_open(w, 'a'); }
void dn_jw_end_array(dn_jw *w) { jw_close(w, 'a'); }

void dn_jw_string_n(dn_jw *w, const char *s, size_t n) {
    if (!w->err && !s && n) {
        jw_fail(w, DN_ERR_NULL, "string is NULL");
        return;
    }
    if (!jw_value(w)) return;
    jw_quoted(w, s ? s : "", n);
    jw_scalar_done(w);
}

void dn_jw_string(dn_jw *w, const char *s) {
    if (!w->err && !s) {
        jw_fail(w, DN_ERR_NULL, "string is NULL");
        return;
    }
    dn_jw_string_n(w, s, s ? strlen(s) : 0);
}

void dn_jw_int(dn_jw *w, int64_t x) {
    if (!jw_value(w)) return;
    char b[24];
    int n = snprintf(b, sizeof b, "%lld", (long long)x);
    dn_jw_raw(w, b, (size_t)n);
    jw_scalar_done(w);
}

void dn_jw_num(dn_jw *w, double x) {
    if (w->err) return;
    if (!isfinite(x)) {
        jw_fail(w, DN_ERR_ARG, "NaN or Inf has no JSON spelling");
        return;
    }
    if (!jw_value(w)) return;
    char b[40], o[40];
    /* the shortest of 15..17 significant digits that reads back exactly (17 always does) */
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(b, sizeof b, "%.*g", prec, x);
        if (strtod(b, NULL) == x) break;
    }
    /* the locale may have written its own decimal point: JSON's is '.' */
    const char *dp = localeconv()->decimal_point;
    size_t dpl = dp ? strlen(dp) : 0, k = 0, n = 0;
    while (b[k] && n + 1 < sizeof o) {
        if (dpl && !strncmp(b + k, dp, dpl) && !(dpl == 1 && dp[0] == '.')) {
            o[n++] = '.', k += dpl;
        } else {
            o[n++] = b[k++];
        }
    }
    dn_jw_raw(w, o, n);
    jw_scalar_done(w);
}

void dn_jw_bool(dn_jw *w, int v) {
    if (!jw_value(w)) return;
    dn_jw_raw(w, v ? "true" : "false", v ? 4 : 5);
    jw_scalar_done(w);
}

void dn_jw_null(dn_jw *w) {
    if (!jw_value(w)) return;
    dn_jw_raw(w, "null", 4);
    jw_scalar_done(w);
}

void dn_jw_value(dn_jw *w, const dn_json *v) {
    if (w->err) return;
    if (!v) {
        jw_fail(w, DN_ERR_NULL, "value is NULL");
        return;
    }
    switch (v->type) {
    case DN_JSON_NULL: dn_jw_null(w); break;
    case DN_JSON_BOOL: dn_jw_bool(w, v->boolean); break;
    case DN_JSON_NUMBER:
        if (v->is_int && !v->neg_zero)
            dn_jw_int(w, v->u.i);
        else
            dn_jw_num(w, dn_json_num(v));
        break;
    case DN_JSON_STRING: dn_jw_string_n(w, v->u.str, v->len); break;
    case DN_JSON_ARRAY:
        dn_jw_begin_array(w);
        for (size_t i = 0; i < v->len; i++)
            dn_jw_value(w, &v->u.items[i]);
        dn_jw_end_array(w);
        break;
    case DN_JSON_OBJECT:
        dn_jw_begin_object(w);
        for (size_t i = 0; i < v->len; i++) {
            dn_jw_key_n(w, v->u.items[i].key, v->u.items[i].key_len);
            dn_jw_value(w, &v->u.items[i]);
        }
        dn_jw_end_object(w);
        break;
    default: jw_fail(w, DN_ERR_ARG, "value of unknown type");
    }
}

dn_status dn_jw_status(const dn_jw *w) { return w->err; }

dn_status dn_jw_finish(dn_jw *w) {
    if (w->err) return w->err;
    if (w->depth || w->after_key)
        return w->err = dn_fail(DN_ERR_ARG, "dn_jw: an array or object is still open");
    if (!w->done) return w->err = dn_fail(DN_ERR_ARG, "dn_jw: nothing was written");
    return DN_OK;
}
