/*
 * unicode.c - UTF-8, character classes and NFC for the tokenizer (see unicode.h). The data
 * comes from Python's unicodedata through tools/gen_unicode_tables.py; the algorithms are those
 * of the Unicode standard: canonical decomposition (recursive, Hangul by arithmetic), canonical
 * ordering by combining class, then canonical composition of unblocked pairs.
 */
#include "unicode.h"

#include "../internal.h"
#include "unicode_tables.h"

#include <string.h>

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

/* binary search in sorted {lo, hi, value} ranges; 0 when cp is in none */
static uint32_t range_lookup(const uint32_t (*r)[3], size_t n, uint32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < r[mid][0])
            hi = mid;
        else if (cp > r[mid][1])
            lo = mid + 1;
        else
            return r[mid][2];
    }
    return 0;
}

const char *dn_uc_version(void) { return DN_UNICODE_VERSION; }
const char *dn_uc_nfc_version(void) { return DN_UNICODE_NFC_VERSION; }

int dn_uc_class(uint32_t cp) {
    if (cp < 0x80) { /* the common case without a search */
        if ((cp | 0x20) - 'a' < 26) return DN_UC_LETTER;
        if (cp - '0' < 10) return DN_UC_NUMBER;
        if (cp == ' ' || (cp >= 9 && cp <= 13)) return DN_UC_SPACE;
        return DN_UC_OTHER;
    }
    return (int)range_lookup(dn_uc_class_ranges, N_OF(dn_uc_class_ranges), cp);
}

static int ccc(uint32_t cp) {
    return cp < 0x300 ? 0 : (int)range_lookup(dn_uc_ccc_ranges, N_OF(dn_uc_ccc_ranges), cp);
}

int dn_utf8_next(const uint8_t *s, size_t n, uint32_t *cp) {
    uint8_t b = s[0];
    if (b < 0x80) {
        *cp = b;
        return 1;
    }
    int len;
    uint32_t c, min;
    if (b >= 0xC2 && b <= 0xDF) {
        len = 2, c = b & 0x1F, min = 0x80;
    } else if (b >= 0xE0 && b <= 0xEF) {
        len = 3, c = b & 0x0F, min = 0x800;
    } else if (b >= 0xF0 && b <= 0xF4) {
        len = 4, c = b & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (n < (size_t)len) return 0;
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        c = c << 6 | (s[i] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return 0;
    *cp = c;
    return len;
}

int dn_utf8_put(uint8_t *o, uint32_t c) {
    if (c < 0x80) {
        o[0] = (uint8_t)c;
        return 1;
    }
    if (c < 0x800) {
        o[0] = (uint8_t)(0xC0 | c >> 6), o[1] = (uint8_t)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        o[0] = (uint8_t)(0xE0 | c >> 12), o[1] = (uint8_t)(0x80 | (c >> 6 & 0x3F));
        o[2] = (uint8_t)(0x80 | (c & 0x3F));
        return 3;
    }
    o[0] = (uint8_t)(0xF0 | c >> 18), o[1] = (uint8_t)(0x80 | (c >> 12 & 0x3F));
    o[2] = (uint8_t)(0x80 | (c >> 6 & 0x3F)), o[3] = (uint8_t)(0x80 | (c & 0x3F));
    return 4;
}

size_t dn_utf8_check(const uint8_t *s, size_t n) {
    size_t i = 0;
    uint32_t cp;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        int l = dn_utf8_next(s + i, n - i, &cp);
        if (!l) return i;
        i += (size_t)l;
    }
    return n;
}

/* ---- NFC ---- */

enum { SBASE = 0xAC00, LBASE = 0x1100, VBASE = 0x1161, TBASE = 0x11A7 };
enum { LCOUNT = 19, VCOUNT = 21, TCOUNT = 28, NCOUNT = VCOUNT * TCOUNT, SCOUNT = LCOUNT * NCOUNT };

/* Appends the full canonical decomposition of cp to d (room for 4 more: no code point
 * decomposes canonically into more than 4); returns the new length. */
static size_t decompose(uint32_t cp, uint32_t *d, size_t m, int depth) {
    if (cp - SBASE < SCOUNT) {
        uint32_t s = cp - SBASE;
        d[m++] = LBASE + s / NCOUNT;
        d[m++] = VBASE + s % NCOUNT / TCOUNT;
        if (s % TCOUNT) d[m++] = TBASE + s % TCOUNT;
        return m;
    }
    if (cp >= 0xC0 && depth < 4) {
        size_t lo = 0, hi = N_OF(dn_uc_decomp);
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (dn_uc_decomp[mid][0] < cp)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo < N_OF(dn_uc_decomp) && dn_uc_decomp[lo][0] == cp) {
            m = decompose(dn_uc_decomp[lo][1], d, m, depth + 1);
            if (dn_uc_decomp[lo][2]) m = decompose(dn_uc_decomp[lo][2], d, m, depth + 1);
            return m;
        }
    }
    d[m++] = cp;
    return m;
}

/* The primary composite of (a, b), or 0 when they do not compose. */
static uint32_t compose(uint32_t a, uint32_t b) {
    if (a - LBASE < LCOUNT && b - VBASE < VCOUNT)
        return SBASE + ((a - LBASE) * VCOUNT + (b - VBASE)) * TCOUNT;
    if (a - SBASE < SCOUNT && (a - SBASE) % TCOUNT == 0 && b - TBASE - 1 < TCOUNT - 1)
        return a + (b - TBASE);
    size_t lo = 0, hi = N_OF(dn_uc_comp);
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const uint32_t *e = dn_uc_comp[mid];
        if (e[0] < a || (e[0] == a && e[1] < b))
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < N_OF(dn_uc_comp) && dn_uc_comp[lo][0] == a && dn_uc_comp[lo][1] == b
               ? dn_uc_comp[lo][2]
               : 0;
}

dn_status dn_nfc(const uint8_t *s, size_t n, uint8_t **out, size_t *out_n) {
    /* code points below U+0300 are their own NFC and combine with nothing before them, so text
     * made of them alone is copied as it is (the usual case: ASCII) */
    int simple = 1;
    for (size_t i = 0; i < n && simple; i++)
        if (s[i] >= 0xCC) simple = 0;
    if (simple) {
        uint8_t *o = dn_alloc(n + 1);
        if (!o) return dn_fail(DN_ERR_ALLOC, "nfc: out of memory (%zu bytes)", n + 1);
        memcpy(o, s, n);
        o[n] = 0;
        *out = o;
        *out_n = n;
        return DN_OK;
    }
    /* n code points at most, each decomposing into at most 4; the output is at most 4 bytes a
     * code point of the decomposition */
    if (n > SIZE_MAX / 32) return dn_fail(DN_ERR_ALLOC, "nfc: text too long (%zu bytes)", n);
    uint32_t *d = dn_alloc(sizeof(uint32_t) * (4 * n + 4));
    uint8_t *o = dn_alloc(16 * n + 1);
    if (!d || !o) {
        dn_free(d);
        dn_free(o);
        return dn_fail(DN_ERR_ALLOC, "nfc: out of memory (text of %zu bytes)", n);
    }
    size_t m = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int l = dn_utf8_next(s + i, n - i, &cp);
        DN_ASSERT(l > 0); /* the caller checked the text */
        i += (size_t)l;
        m = decompose(cp, d, m, 0);
    }
    /* canonical ordering: a stable sort of each run of non-starters by combining class */
    for (size_t i = 1; i < m; i++) {
        int c = ccc(d[i]);
        if (!c) continue;
        for (size_t j = i; j > 0; j--) {
            int p = ccc(d[j - 1]);
            if (p <= c) break;
            uint32_t t = d[j];
            d[j] = d[j - 1];
            d[j - 1] = t;
        }
    }
    /* composition: each character joins the last starter unless a character between them has
     * class 0 or a class at least its own (it is "blocked") */
    size_t w = 0, sp = SIZE_MAX;
    for (size_t i = 0; i < m; i++) {
        uint32_t c = d[i];
        int cc = ccc(c);
        if (sp != SIZE_MAX) {
            int last = ccc(d[w - 1]);
            if (w == sp + 1 || (last != 0 && last < cc)) {
                uint32_t k = compose(d[sp], c);
                if (k) {
                    d[sp] = k;
                    continue;
                }
            }
        }
        if (cc == 0) sp = w;
        d[w++] = c;
    }
    size_t on = 0;
    for (size_t i = 0; i < w; i++)
        on += (size_t)dn_utf8_put(o + on, d[i]);
    o[on] = 0;
    dn_free(d);
    *out = o;
    *out_n = on;
    return DN_OK;
}
