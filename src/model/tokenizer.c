/*
 * tokenizer.c - byte-level BPE from a Hugging Face tokenizer.json (the public API is in
 * deltanet.h, "Tokenizer"). Encoding follows the tokenizers library's pipeline:
 *   1. added tokens that are not normalized are found in the raw text (leftmost, then longest);
 *   2. each stretch between them is normalized (NFC), and the normalized added tokens are found;
 *   3. each remaining stretch is split by the pre-tokenizer's pattern (a hand-written matcher of
 *      the few patterns Qwen-like tokenizers ship, below) into pieces;
 *   4. each piece's bytes start as one symbol per byte and merge by rank: a min-heap of candidate
 *      pairs keyed (rank, position), a pair hash map from the merges, linked symbols.
 * Tokens are kept per id both as written in the file (byte-level characters) and as the bytes
 * they stand for, so that encoding works on bytes and decoding is a concatenation.
 */
#include "tokenizer.h"
#include "../internal.h"
#include "fileio.h"
#include "json.h"
#include "unicode.h"

#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* Largest tokenizer.json read (real ones are 10-30 MB) and largest tokenizer_config.json. */
#define TOK_MAX_FILE ((size_t)1 << 30)
#define TOK_MAX_CONFIG ((size_t)64 << 20)
/* Ids are dense in real files; at most this many, and no more than 4x the tokens (+1024) so
 * that a file cannot make us allocate for ids it does not use. */
#define TOK_MAX_IDS (1 << 24)
#define TOK_MAX_ADDED 65536

/* what an id is (bits): in the model's vocabulary, an added token, a special added token */
enum { KIND_NONE = 0, KIND_VOCAB = 1, KIND_ADDED = 2, KIND_SPECIAL = 4 };

typedef struct added_tok {
    int32_t id;
    uint32_t off, len; /* the text matched, in the blob: the content, or its NFC when the token
                          is matched after normalization (the tokenizers library does so) */
    int special, normalized;
} added_tok;

/* open-addressing hash of ids keyed by a string each id owns (table of id + 1, 0 empty) */
typedef struct str_map {
    int32_t *slot;
    size_t mask;
} str_map;

struct dn_tokenizer {
    int32_t n_ids;
    uint64_t seed;                 /* of the hashes */
    uint8_t *kind;                 /* [n_ids] KIND_* */
    uint32_t *str_off, *str_len;   /* [n_ids] the token as in the file, in blob */
    uint32_t *byte_off, *byte_len; /* [n_ids] the bytes it decodes to, in blob */
    char *blob;                    /* NUL after each string */
    size_t blob_len, blob_cap;
    str_map by_str;   /* token string -> id (vocab and added tokens) */
    str_map by_bytes; /* bytes -> id, vocab tokens written in byte-level characters only */
    int32_t byte_id[256];
    /* merges: (left id, right id) -> rank, merged id; open addressing, key 0 empty */
    uint64_t *mkey;
    int32_t *mrank, *mnew;
    size_t mmask;
    added_tok *added; /* sorted by first byte: by_first[b] .. by_first[b + 1] start with b */
    int n_added;
    int by_first[257];
    int nfc, ignore_merges, marks, digits3;
    int32_t eos, bos, im_start, im_end;
    int chat_ok;
};

/* ======================================================================================== */
/* byte-level alphabet (GPT-2's bytes_to_unicode): printable Latin-1 bytes stand for themselves,
 * the other 68 bytes for U+0100 + their rank among them */

static uint32_t byte_char(int b) {
    if (b <= 0x20) return 0x100u + (uint32_t)b;                       /* ranks 0..32 */
    if (b >= 0x7F && b <= 0xA0) return 0x121u + (uint32_t)(b - 0x7F); /* 33..66 */
    if (b == 0xAD) return 0x143u;                                     /* 67 */
    return (uint32_t)b;
}
static int char_byte(uint32_t c) {
    if ((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF))
        return (int)c;
    if (c >= 0x100 && c <= 0x120) return (int)(c - 0x100);
    if (c >= 0x121 && c <= 0x142) return (int)(c - 0x121 + 0x7F);
    return c == 0x143 ? 0xAD : -1;
}

/* The bytes a token string stands for: each character mapped back through the alphabet; when
 * one is not in it, the string's own UTF-8 (what the ByteLevel decoder does). Writes into out
 * (room for n bytes); returns the length. */
static size_t token_bytes(const char *s, size_t n, uint8_t *out, int *byte_level) {
    size_t i = 0, m = 0;
    uint32_t cp;
    while (i < n) {
        int l = dn_utf8_next((const uint8_t *)s + i, n - i, &cp);
        int b = l > 0 ? char_byte(cp) : -1;
        if (b < 0) {
            memcpy(out, s, n);
            *byte_level = 0;
            return n;
        }
        out[m++] = (uint8_t)b;
        i += (size_t)l;
    }
    *byte_level = 1;
    return m;
}

/* ======================================================================================== */
/* hashing */

/* Both hashes start from a per-tokenizer seed (its address and the clock), so that a file
 * cannot be built to make every key land in one bucket; nothing observable depends on it. */
static uint64_t hash_bytes(uint64_t seed, const void *p, size_t n) {
    const uint8_t *s = p;
    uint64_t h = 0xcbf29ce484222325ull ^ seed;
    for (size_t i = 0; i < n; i++)
        h = (h ^ s[i]) * 0x100000001b3ull;
    return h ^ (h >> 29);
}
static uint64_t hash_pair(uint64_t seed, uint64_t k) {
    k ^= seed;
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return k;
}

static size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n)
        c <<= 1;
    return c;
}

static dn_status map_init(str_map *m, size_t n) {
    size_t cap = pow2_at_least(2 * n + 1);
    m->slot = dn_calloc(cap * sizeof(int32_t));
    if (!m->slot) return dn_fail(DN_ERR_ALLOC, "tokenizer: out of memory (hash of %zu)", n);
    m->mask = cap - 1;
    return DN_OK;
}

/* Finds key in m, where each id's key is got(t, id); returns the id, or -1 with *at the empty
 * slot where it would go. */
typedef const char *(*key_fn)(const dn_tokenizer *t, int32_t id, size_t *len);
static int32_t map_find(const dn_tokenizer *t, const str_map *m, key_fn got, const void *key,
                        size_t n, size_t *at) {
    size_t i = (size_t)hash_bytes(t->seed, key, n) & m->mask;
    for (;; i = (i + 1) & m->mask) {
        int32_t v = m->slot[i];
        if (!v) {
            if (at) *at = i;
            return -1;
        }
        size_t l;
        const char *k = got(t, v - 1, &l);
        if (l == n && !memcmp(k, key, n)) return v - 1;
    }
}
static const char *key_str(const dn_tokenizer *t, int32_t id, size_t *len) {
    *len = t->str_len[id];
    return t->blob + t->str_off[id];
}
static const char *key_bytes(const dn_tokenizer *t, int32_t id, size_t *len) {
    *len = t->byte_len[id];
    return t->blob + t->byte_off[id];
}

static int merge_find(const dn_tokenizer *t, int32_t a, int32_t b, size_t *at) {
    uint64_t k = ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1; /* never 0 */
    size_t i = (size_t)hash_pair(t->seed, k) & t->mmask;
    for (;; i = (i + 1) & t->mmask) {
        if (t->mkey[i] == k) {
            *at = i;
            return 1;
        }
        if (!t->mkey[i]) {
            *at = i;
            return 0;
        }
    }
}

/* ======================================================================================== */
/* loading */

static dn_status blob_add(dn_tokenizer *t, const void *s, size_t n, uint32_t *off) {
    if (t->blob_len + n + 1 > t->blob_cap) {
        size_t cap = t->blob_cap ? t->blob_cap : 4096;
        while (cap < t->blob_len + n + 1)
            cap *= 2;
        if (cap > UINT32_MAX) return dn_fail(DN_ERR_FORMAT, "tokenizer: tokens take over 4 GiB");
        char *b = dn_alloc(cap);
        if (!b) return dn_fail(DN_ERR_ALLOC, "tokenizer: out of memory (%zu bytes)", cap);
        if (t->blob_len) memcpy(b, t->blob, t->blob_len);
        dn_free(t->blob);
        t->blob = b;
        t->blob_cap = cap;
    }
    *off = (uint32_t)t->blob_len;
    memcpy(t->blob + t->blob_len, s, n);
    t->blob[t->blob_len + n] = 0;
    t->blob_len += n + 1;
    return DN_OK;
}

/* Records token s (as in the file) for id, with its bytes. */
static dn_status set_token(dn_tokenizer *t, int32_t id, const char *s, size_t n, int kind,
                           uint8_t *scratch) {
    int bl;
    size_t m = token_bytes(s, n, scratch, &bl);
    dn_status st;
    if ((st = blob_add(t, s, n, &t->str_off[id])) ||
        (st = blob_add(t, scratch, m, &t->byte_off[id])))
        return st;
    t->str_len[id] = (uint32_t)n;
    t->byte_len[id] = (uint32_t)m;
    t->kind[id] = (uint8_t)kind;
    size_t at = 0;
    if (kind == KIND_VOCAB && bl) {
        /* distinct byte-level strings stand for distinct bytes */
        DN_ASSERT(map_find(t, &t->by_bytes, key_bytes, scratch, m, &at) < 0);
        t->by_bytes.slot[at] = id + 1;
        if (m == 1) t->byte_id[scratch[0]] = id;
    }
    return DN_OK;
}

static const char *shown(char *buf, size_t cap, const char *s, size_t n) {
    return dn_json_shown(buf, cap, s, n);
}

static int str_is(const dn_json *v, const char *s) {
    return v && v->type == DN_JSON_STRING && v->len == strlen(s) && !memcmp(v->u.str, s, v->len);
}

/* The split patterns understood: Qwen2/Qwen3's, GPT-4's (numbers in runs of up to three) and
 * Qwen3.5's (letters and marks), written out by parts so that the variants share them. */
static int known_pattern(const char *p, size_t n, int *marks, int *digits3) {
    static const char *const letters[2] = {"\\p{L}+", "[\\p{L}\\p{M}]+"};
    static const char *const digits[2] = {"\\p{N}", "\\p{N}{1,3}"};
    static const char *const punct[2] = {"[^\\s\\p{L}\\p{N}]+", "[^\\s\\p{L}\\p{M}\\p{N}]+"};
    char buf[512];
    for (int m = 0; m < 2; m++)
        for (int d = 0; d < 2; d++) {
            int k =
                snprintf(buf, sizeof buf,
                         "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?%s|%s| ?%s[\\r\\n]*|"
                         "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
                         letters[m], digits[d], punct[m]);
            if ((size_t)k == n && !memcmp(buf, p, n)) {
                *marks = m;
                *digits3 = d;
                return 1;
            }
        }
    return 0;
}

/* Checks a bool member: absent/null gives def; must equal want unless want < 0. */
static dn_status want_bool(const dn_json *o, const char *what, const char *key, int want,
                           int *out) {
    int v = 0;
    const dn_json *m = dn_json_get(o, key);
    if (m && m->type != DN_JSON_NULL) {
        if (m->type != DN_JSON_BOOL)
            return dn_fail(DN_ERR_FORMAT, "tokenizer.json: %s.%s is a %s, not a bool", what, key,
                           dn_json_type_name(m->type));
        v = m->boolean;
    }
    if (want >= 0 && v != want)
        return dn_fail(DN_ERR_FORMAT, "tokenizer.json: %s.%s = %s is not supported", what, key,
                       v ? "true" : "false");
    if (out) *out = v;
    return DN_OK;
}

static dn_status parse_normalizer(dn_tokenizer *t, const dn_json *v) {
    if (!v || v->type == DN_JSON_NULL) return DN_OK;
    if (v->type == DN_JSON_OBJECT && str_is(dn_json_get(v, "type"), "NFC") && dn_json_len(v) == 1) {
        t->nfc = 1;
        return DN_OK;
    }
    const dn_json *ty = dn_json_get(v, "type");
    char b[64];
    return dn_fail(DN_ERR_FORMAT,
                   "tokenizer.json: normalizer %s is not supported (only null or NFC)",
                   ty && ty->type == DN_JSON_STRING ? shown(b, sizeof b, ty->u.str, ty->len)
                                                    : "of unknown type");
}

static dn_status parse_pre_tokenizer(dn_tokenizer *t, const dn_json *v) {
    const char *need = "pre_tokenizer must be a Sequence of Split (a known pattern, Isolated, "
                       "not inverted) and ByteLevel (no prefix space, use_regex false)";
    const dn_json *seq = dn_json_get(v, "pretokenizers");
    if (!v || !str_is(dn_json_get(v, "type"), "Sequence") || !seq || seq->type != DN_JSON_ARRAY ||
        seq->len != 2)
        return dn_fail(DN_ERR_FORMAT, "tokenizer.json: %s", need);
    const dn_json *sp = dn_json_at(seq, 0), *bl = dn_json_at(seq, 1);
    if (!str_is(dn_json_get(sp, "type"), "Split") || !str_is(dn_json_get(bl, "type"), "ByteLevel"))
        return dn_fail(DN_ERR_FORMAT, "tokenizer.json: %s", need);
    const dn_json *pat = dn_json_get(sp, "pattern");
    const dn_json *re = dn_json_get(pat, "Regex");
    if (!re || re->type != DN_JSON_STRING || dn_json_len(pat) != 1)
        return dn_fail(DN_ERR_FORMAT, "tokenizer.json: the Split pre-tokenizer's pattern must be "
                                      "{\"Regex\": ...}");
    if (!known_pattern(re->u.str, re->len, &t->marks, &t->digits3)) {
        char b[64];
        return dn_fail(DN_ERR_FORMAT,
                       "tokenizer.json: the split pattern \"%s\" is not one this tokenizer "
                       "implements (Qwen2/Qwen3, GPT-4 digits, Qwen3.5)",
                       shown(b, sizeof b, re->u.str, re->len));
    }
    if (!str_is(dn_json_get(sp, "behavior"), "Isolated"))
        return dn_fail(DN_ERR_FORMAT, "tokenizer.json: Split behavior must be Isolated");
    dn_status st;
    if ((st = want_bool(sp, "Split", "invert", 0, NULL)) ||
        (st = want_bool(bl, "ByteLevel", "add_prefix_space", 0, NULL)) ||
        (st = want_bool(bl, "ByteLevel", "use_regex", 0, NULL)))
        return st;
    return DN_OK;
}

static dn_status parse_model_opts(dn_tokenizer *t, const dn_json *m) {
    if (!str_is(dn_json_get(m, "type"), "BPE"))
        return dn_fail(DN_ERR_FORMAT, "tokenizer.json: model.type must be BPE");
    dn_status st;
    if ((st = want_bool(m, "model", "byte_fallback", 0, NULL)) ||
        (st = want_bool(m, "model", "ignore_merges", -1, &t->ignore_merges)))
        return st;
    const dn_json *d = dn_json_get(m, "dropout");
    if (d && d->type != DN_JSON_NULL && !(d->type == DN_JSON_NUMBER && dn_json_num(d) == 0))
        return dn_fail(DN_ERR_FORMAT, "tokenizer.json: model.dropout is not supported");
    const char *keys[2] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        const dn_json *x = dn_json_get(m, keys[i]);
        if (x && x->type != DN_JSON_NULL && !(x->type == DN_JSON_STRING && x->len == 0))
            return dn_fail(DN_ERR_FORMAT, "tokenizer.json: model.%s is not supported", keys[i]);
    }
    return DN_OK;
}

static dn_status check_id(const dn_json *v, const char *what, size_t i, int64_t *id) {
    if (!v || v->type != DN_JSON_NUMBER || !v->is_int || v->u.i < 0 || v->u.i >= TOK_MAX_IDS)
        return dn_fail(DN_ERR_FORMAT,
                       "tokenizer.json: %s %zu: the id must be an integer in [0, %d)", what, i,
                       TOK_MAX_IDS);
    *id = v->u.i;
    return DN_OK;
}

static dn_status parse_merges(dn_tokenizer *t, const dn_json *merges) {
    size_t n = merges->len, cap = pow2_at_least(2 * n + 1);
    t->mkey = dn_calloc(cap * sizeof(uint64_t));
    t->mrank = dn_alloc(cap * sizeof(int32_t));
    t->mnew = dn_alloc(cap * sizeof(int32_t));
    if (!t->mkey || !t->mrank || !t->mnew)
        return dn_fail(DN_ERR_ALLOC, "tokenizer: out of memory (%zu merges)", n);
    t->mmask = cap - 1;
    if (n > INT32_MAX) return dn_fail(DN_ERR_FORMAT, "tokenizer.json: too many merges");
    char b1[64], b2[64];
    for (size_t r = 0; r < n; r++) {
        const dn_json *e = &merges->u.items[r];
        const char *a, *b;
        size_t la, lb;
        if (e->type == DN_JSON_STRING) {
            const char *sp = memchr(e->u.str, ' ', e->len);
            if (!sp || memchr(sp + 1, ' ', e->len - (size_t)(sp + 1 - e->u.str)))
                return dn_fail(DN_ERR_FORMAT,
                               "tokenizer.json: merge %zu \"%s\" is not two tokens separated by "
                               "one space",
                               r, shown(b1, sizeof b1, e->u.str, e->len));
            a = e->u.str, la = (size_t)(sp - e->u.str), b = sp + 1, lb = e->len - la - 1;
        } else if (e->type == DN_JSON_ARRAY && e->len == 2 &&
                   e->u.items[0].type == DN_JSON_STRING && e->u.items[1].type == DN_JSON_STRING) {
            a = e->u.items[0].u.str, la = e->u.items[0].len;
            b = e->u.items[1].u.str, lb = e->u.items[1].len;
        } else {
            return dn_fail(DN_ERR_FORMAT,
                           "tokenizer.json: merge %zu is not \"a b\" or [\"a\", \"b\"] (found %s)",
                           r, dn_json_type_name(e->type));
        }
        int32_t ia = map_find(t, &t->by_str, key_str, a, la, NULL);
        int32_t ib = map_find(t, &t->by_str, key_str, b, lb, NULL);
        if (ia < 0 || ib < 0 || !(t->kind[ia] & KIND_VOCAB) || !(t->kind[ib] & KIND_VOCAB))
            return dn_fail(DN_ERR_FORMAT,
                           "tokenizer.json: merge %zu (\"%s\" \"%s\") names a token that is not in "
                           "the vocabulary",
                           r, shown(b1, sizeof b1, a, la), shown(b2, sizeof b2, b, lb));
        /* the merged token: look its string up (the concatenation of the two) */
        if (la + lb > ((size_t)1 << 20))
            return dn_fail(DN_ERR_FORMAT, "tokenizer.json: merge %zu is too long", r);
        char stack[256], *cat = la + lb <= sizeof stack ? stack : dn_alloc(la + lb);
        if (!cat) return dn_fail(DN_ERR_ALLOC, "tokenizer: out of memory");
        memcpy(cat, a, la);
        memcpy(cat + la, b, lb);
        int32_t in = map_find(t, &t->by_str, key_str, cat, la + lb, NULL);
        if (cat != stack) dn_free(cat);
        if (in < 0 || !(t->kind[in] & KIND_VOCAB))
            return dn_fail(DN_ERR_FORMAT,
                           "tokenizer.json: merge %zu (\"%s\" \"%s\") makes a token that is not in "
                           "the vocabulary",
                           r, shown(b1, sizeof b1, a, la), shown(b2, sizeof b2, b, lb));
        size_t at = 0;
        merge_find(t, ia, ib, &at);
        /* a repeated pair keeps its last rank, as the tokenizers library's map does */
        t->mkey[at] = ((uint64_t)(uint32_t)ia << 32 | (uint32_t)ib) + 1;
        t->mrank[at] = (int32_t)r;
        t->mnew[at] = in;
    }
    return DN_OK;
}

static dn_status parse_added(dn_tokenizer *t, const dn_json *arr, uint8_t *scratch) {
    char b[64];
    for (size_t i = 0; i < dn_json_len(arr); i++) {
        const dn_json *o = dn_json_at(arr, i);
        const dn_json *c = dn_json_get(o, "content");
        int64_t id = 0;
        dn_status st = check_id(dn_json_get(o, "id"), "added token", i, &id);
        if (st) return st;
        if (!c || c->type != DN_JSON_STRING || c->len == 0 || c->len > 4096)
            return dn_fail(DN_ERR_FORMAT,
                           "tokenizer.json: added token %zu: content must be a non-empty string "
                           "(at most 4096 bytes)",
                           i);
        int special, normalized;
        if ((st = want_bool(o, "added token", "single_word", 0, NULL)) ||
            (st = want_bool(o, "added token", "lstrip", 0, NULL)) ||
            (st = want_bool(o, "added token", "rstrip", 0, NULL)) ||
            (st = want_bool(o, "added token", "special", -1, &special)) ||
            (st = want_bool(o, "added token", "normalized", -1, &normalized)))
            return st;
        int32_t at_id = (int32_t)id;
        int32_t same = map_find(t, &t->by_str, key_str, c->u.str, c->len, NULL);
        if (t->kind[at_id] == KIND_VOCAB) { /* (not yet added: a repeat is caught below) */
            /* a token of the vocabulary made special (trained tokenizers list them in both) */
            if (same != at_id)
                return dn_fail(DN_ERR_FORMAT,
                               "tokenizer.json: added token \"%s\" has id %d, which the vocabulary "
                               "gives to \"%s\"",
                               shown(b, sizeof b, c->u.str, c->len), at_id,
                               t->blob + t->str_off[at_id]);
        } else if (t->kind[at_id] != KIND_NONE || same >= 0) {
            return dn_fail(DN_ERR_FORMAT,
                           "tokenizer.json: added token \"%s\" (id %d) repeats an id or a token",
                           shown(b, sizeof b, c->u.str, c->len), at_id);
        } else {
            if ((st = set_token(t, at_id, c->u.str, c->len, KIND_ADDED, scratch))) return st;
            size_t at = 0;
            map_find(t, &t->by_str, key_str, c->u.str, c->len, &at);
            t->by_str.slot[at] = at_id + 1;
        }
        t->kind[at_id] |= KIND_ADDED | (special ? KIND_SPECIAL : 0);
        added_tok *a = &t->added[t->n_added++];
        a->id = at_id;
        a->off = t->str_off[at_id];
        a->len = (uint32_t)c->len;
        a->special = special;
        a->normalized = normalized;
        if (normalized && t->nfc) {
            /* matched in normalized text as its NFC, and decoded as that too (what the
             * tokenizers library does; its token -> id lookup keeps the content as written) */
            uint8_t *norm;
            size_t nn;
            if ((st = dn_nfc((const uint8_t *)c->u.str, c->len, &norm, &nn))) return st;
            st = blob_add(t, norm, nn, &a->off);
            a->len = (uint32_t)nn;
            if (!st && !(t->kind[at_id] & KIND_VOCAB)) { /* (a vocabulary token keeps its bytes) */
                int bl;
                size_t m = token_bytes((const char *)norm, nn, scratch, &bl);
                st = blob_add(t, scratch, m, &t->byte_off[at_id]);
                t->byte_len[at_id] = (uint32_t)m;
            }
            dn_free(norm);
            if (st) return st;
        }
    }
    /* index by first byte (a counting sort) */
    int count[257] = {0};
    for (int k = 0; k < t->n_added; k++)
        count[(uint8_t)t->blob[t->added[k].off] + 1]++;
    for (int c0 = 0; c0 < 256; c0++)
        count[c0 + 1] += count[c0];
    memcpy(t->by_first, count, sizeof count);
    added_tok *sorted = dn_alloc(((size_t)t->n_added + 1) * sizeof(added_tok));
    if (!sorted) return dn_fail(DN_ERR_ALLOC, "tokenizer: out of memory");
    for (int k = 0; k < t->n_added; k++)
        sorted[count[(uint8_t)t->blob[t->added[k].off]]++] = t->added[k];
    dn_free(t->added);
    t->added = sorted;
    return DN_OK;
}

/* A token named in tokenizer_config.json: a string, or an object with "content"; -1 when
 * absent or null. */
static dn_status config_token(const dn_tokenizer *t, const dn_json *cfg, const char *key,
                              int32_t *out) {
    const dn_json *v = dn_json_get(cfg, key);
    *out = -1;
    if (!v || v->type == DN_JSON_NULL) return DN_OK;
    if (v->type == DN_JSON_OBJECT) v = dn_json_get(v, "content");
    if (!v || v->type != DN_JSON_STRING)
        return dn_fail(DN_ERR_FORMAT,
                       "tokenizer_config.json: %s must be a string or an object with content", key);
    *out = map_find(t, &t->by_str, key_str, v->u.str, v->len, NULL);
    if (*out < 0) {
        char b[64];
        return dn_fail(DN_ERR_FORMAT, "tokenizer_config.json: %s \"%s\" is not a token", key,
                       dn_json_shown(b, sizeof b, v->u.str, v->len));
    }
    return DN_OK;
}

static dn_status build(dn_tokenizer *t, const dn_json *root, const dn_json *cfg) {
    if (!root || root->type != DN_JSON_OBJECT)
        return dn_fail(DN_ERR_FORMAT, "tokenizer.json: the top level must be an object");
    const dn_json *model = dn_json_get(root, "model");
    if (!model || model->type != DN_JSON_OBJECT)
        return dn_fail(DN_ERR_FORMAT, "tokenizer.json: no model object");
    dn_status st;
    const dn_json *vocab, *merges, *added = dn_json_get(root, "added_tokens");
    if ((st = parse_model_opts(t, model)) ||
        (st = dn_json_get_typed(model, "vocab", DN_JSON_OBJECT, &vocab, 1)) ||
        (st = dn_json_get_typed(model, "merges", DN_JSON_ARRAY, &merges, 1)) ||
        (st = parse_normalizer(t, dn_json_get(root, "normalizer"))) ||
        (st = parse_pre_tokenizer(t, dn_json_get(root, "pre_tokenizer"))))
        return st;
    if (added && added->type != DN_JSON_NULL && added->type != DN_JSON_ARRAY)
        return dn_fail(DN_ERR_FORMAT, "tokenizer.json: added_tokens must be an array");
    const dn_json *pp = dn_json_get(root, "post_processor"), *dec = dn_json_get(root, "decoder");
    if (pp && pp->type != DN_JSON_NULL && !str_is(dn_json_get(pp, "type"), "ByteLevel"))
        return dn_fail(DN_ERR_FORMAT,
                       "tokenizer.json: post_processor must be null or ByteLevel (one that adds "
                       "tokens is not supported)");
    if (!str_is(dn_json_get(dec, "type"), "ByteLevel"))
        return dn_fail(DN_ERR_FORMAT, "tokenizer.json: decoder must be ByteLevel");
    size_t n_added = dn_json_len(added);
    if (n_added > TOK_MAX_ADDED)
        return dn_fail(DN_ERR_FORMAT, "tokenizer.json: more than %d added tokens", TOK_MAX_ADDED);

    /* ids: the largest id + 1, bounded by the number of tokens */
    int64_t max_id = -1, id = 0;
    for (size_t i = 0; i < vocab->len; i++) {
        if ((st = check_id(&vocab->u.items[i], "vocabulary entry", i, &id))) return st;
        if (id > max_id) max_id = id;
    }
    for (size_t i = 0; i < n_added; i++) {
        if ((st = check_id(dn_json_get(dn_json_at(added, i), "id"), "added token", i, &id)))
            return st;
        if (id > max_id) max_id = id;
    }
    size_t total = vocab->len + n_added;
    if (max_id + 1 > (int64_t)(4 * total + 1024))
        return dn_fail(DN_ERR_FORMAT,
                       "tokenizer.json: ids reach %lld for %zu tokens (gaps that large are not "
                       "accepted)",
                       (long long)max_id, total);
    t->n_ids = (int32_t)(max_id + 1);
    size_t N = (size_t)t->n_ids + 1;
    t->kind = dn_calloc(N);
    t->str_off = dn_calloc(N * 4), t->str_len = dn_calloc(N * 4);
    t->byte_off = dn_calloc(N * 4), t->byte_len = dn_calloc(N * 4);
    t->added = dn_calloc((n_added + 1) * sizeof(added_tok));
    if (!t->kind || !t->str_off || !t->str_len || !t->byte_off || !t->byte_len || !t->added)
        return dn_fail(DN_ERR_ALLOC, "tokenizer: out of memory (%d ids)", t->n_ids);
    if ((st = map_init(&t->by_str, total)) || (st = map_init(&t->by_bytes, vocab->len))) return st;
    for (int b = 0; b < 256; b++)
        t->byte_id[b] = -1;

    size_t longest = 3 * 4096; /* an added token's content, NFC (which at most triples it) */
    for (size_t i = 0; i < vocab->len; i++)
        if (vocab->u.items[i].key_len > longest) longest = vocab->u.items[i].key_len;
    uint8_t *scratch = dn_alloc(longest);
    if (!scratch) return dn_fail(DN_ERR_ALLOC, "tokenizer: out of memory");
    char b[64];
    for (size_t i = 0; i < vocab->len && !st; i++) {
        const dn_json *e = &vocab->u.items[i];
        int32_t eid = (int32_t)e->u.i;
        if (t->kind[eid] != KIND_NONE) {
            st = dn_fail(DN_ERR_FORMAT,
                         "tokenizer.json: vocabulary id %d is given to \"%s\" and \"%s\"", eid,
                         t->blob + t->str_off[eid], shown(b, sizeof b, e->key, e->key_len));
            break;
        }
        size_t at = 0;
        map_find(t, &t->by_str, key_str, e->key, e->key_len, &at); /* keys are unique (JSON) */
        if ((st = set_token(t, eid, e->key, e->key_len, KIND_VOCAB, scratch))) break;
        t->by_str.slot[at] = eid + 1;
    }
    if (!st) st = parse_added(t, added, scratch);
    dn_free(scratch);
    if (st) return st;
    for (int c = 0; c < 256; c++)
        if (t->byte_id[c] < 0)
            return dn_fail(
                DN_ERR_FORMAT,
                "tokenizer.json: the vocabulary lacks the byte-level token of byte 0x%02X "
                "(U+%04X): byte-level BPE needs all 256",
                c, (unsigned)byte_char(c));
    if ((st = parse_merges(t, merges))) return st;

    /* tokenizer_config.json */
    t->im_start = map_find(t, &t->by_str, key_str, "<|im_start|>", 12, NULL);
    t->im_end = map_find(t, &t->by_str, key_str, "<|im_end|>", 10, NULL);
    t->chat_ok = t->im_start >= 0 && t->im_end >= 0 && (t->kind[t->im_start] & KIND_SPECIAL) &&
                 (t->kind[t->im_end] & KIND_SPECIAL);
    t->eos = t->bos = -1;
    if (cfg) {
        if (cfg->type != DN_JSON_OBJECT)
            return dn_fail(DN_ERR_FORMAT, "tokenizer_config.json: the top level must be an object");
        if ((st = config_token(t, cfg, "eos_token", &t->eos)) ||
            (st = config_token(t, cfg, "bos_token", &t->bos)))
            return st;
        const dn_json *tpl = dn_json_get(cfg, "chat_template");
        if (tpl && tpl->type == DN_JSON_STRING && !strstr(tpl->u.str, "<|im_start|>"))
            t->chat_ok = 0;
    }
    return DN_OK;
}

void dn_tokenizer_free(dn_tokenizer *t) {
    if (!t) return;
    dn_free(t->kind);
    dn_free(t->str_off);
    dn_free(t->str_len);
    dn_free(t->byte_off);
    dn_free(t->byte_len);
    dn_free(t->blob);
    dn_free(t->by_str.slot);
    dn_free(t->by_bytes.slot);
    dn_free(t->mkey);
    dn_free(t->mrank);
    dn_free(t->mnew);
    dn_free(t->added);
    dn_free(t);
}

static dn_status parse_trees(dn_tokenizer **out, const dn_json *root, const dn_json *cfg) {
    dn_tokenizer *t = dn_calloc(sizeof *t);
    if (!t) return dn_fail(DN_ERR_ALLOC, "tokenizer: out of memory");
    t->seed = ((uint64_t)(uintptr_t)t ^ (uint64_t)clock() << 20) * 0x9e3779b97f4a7c15ull;
    dn_status st = build(t, root, cfg);
    if (st) {
        dn_tokenizer_free(t);
        return st;
    }
    *out = t;
    return DN_OK;
}

dn_status dn_tokenizer_parse(dn_tokenizer **out, const char *json, size_t n, const char *config,
                             size_t config_n) {
    if (!out || !json)
        return dn_fail(DN_ERR_NULL, "dn_tokenizer_parse: out and json must not be NULL");
    dn_json *root = NULL, *cfg = NULL;
    dn_status st = dn_json_parse_as(json, n, "tokenizer.json", DN_JSON_MAX_DEPTH, &root);
    if (!st && config)
        st = dn_json_parse_as(config, config_n, "tokenizer_config.json", DN_JSON_MAX_DEPTH, &cfg);
    if (!st) st = parse_trees(out, root, cfg);
    dn_json_free(root);
    dn_json_free(cfg);
    return st;
}

dn_status dn_tokenizer_load(dn_tokenizer **out, const char *path) {
    if (!out || !path)
        return dn_fail(DN_ERR_NULL, "dn_tokenizer_load: out and path must not be NULL");
    struct stat sb;
    size_t pl = strlen(path);
    char *file = dn_alloc(pl + 32), *cfgp = dn_alloc(pl + 32);
    if (!file || !cfgp) {
        dn_free(file);
        dn_free(cfgp);
        return dn_fail(DN_ERR_ALLOC, "tokenizer: out of memory");
    }
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        snprintf(file, pl + 32, "%s/tokenizer.json", path);
        snprintf(cfgp, pl + 32, "%s/tokenizer_config.json", path);
    } else {
        memcpy(file, path, pl + 1);
        const char *slash = strrchr(path, '/');
        size_t dl = slash ? (size_t)(slash - path + 1) : 0;
        memcpy(cfgp, path, dl);
        memcpy(cfgp + dl, "tokenizer_config.json", 22);
    }
    dn_json *root = NULL, *cfg = NULL;
    dn_status st = dn_json_load(file, TOK_MAX_FILE, &root);
    if (!st && stat(cfgp, &sb) == 0) st = dn_json_load(cfgp, TOK_MAX_CONFIG, &cfg);
    if (!st) st = parse_trees(out, root, cfg);
    dn_json_free(root);
    dn_json_free(cfg);
    dn_free(file);
    dn_free(cfgp);
    return st;
}

/* ======================================================================================== */
/* lookups */

static int valid_id(const dn_tokenizer *t, int32_t id) {
    return t && id >= 0 && id < t->n_ids && t->kind[id] != KIND_NONE;
}
int64_t dn_tokenizer_vocab_size(const dn_tokenizer *t) { return t ? t->n_ids : 0; }
int32_t dn_tokenizer_token_id(const dn_tokenizer *t, const char *token) {
    if (!t || !token) return -1;
    return map_find(t, &t->by_str, key_str, token, strlen(token), NULL);
}
const char *dn_tokenizer_token_str(const dn_tokenizer *t, int32_t id) {
    return valid_id(t, id) ? t->blob + t->str_off[id] : NULL;
}
dn_status dn_tokenizer_token_bytes(const dn_tokenizer *t, int32_t id, const char **bytes,
                                   size_t *n) {
    if (!t || !bytes || !n) return dn_fail(DN_ERR_NULL, "dn_tokenizer_token_bytes: NULL argument");
    if (!valid_id(t, id))
        return dn_fail(DN_ERR_ARG, "dn_tokenizer_token_bytes: no token has id %d", id);
    *bytes = t->blob + t->byte_off[id];
    *n = t->byte_len[id];
    return DN_OK;
}
int dn_tokenizer_is_special(const dn_tokenizer *t, int32_t id) {
    return valid_id(t, id) && (t->kind[id] & KIND_SPECIAL);
}
int32_t dn_tokenizer_eos_id(const dn_tokenizer *t) { return t ? t->eos : -1; }
int32_t dn_tokenizer_bos_id(const dn_tokenizer *t) { return t ? t->bos : -1; }

/* ======================================================================================== */
/* encoding */

/* A growing array of ids and the scratch of one encode call. */
typedef struct enc {
    const dn_tokenizer *t;
    int32_t *ids;
    size_t n, cap;
    /* split: code points, their classes, their byte offsets (one more) */
    uint32_t *cp;
    uint8_t *cls;
    size_t *off, scap;
    /* BPE: symbols and the heap */
    int32_t *sym, *next, *prev;
    uint64_t *heap; /* (rank << 32 | left position); the pair is re-read when popped */
    size_t bcap;
} enc;

static dn_status push_id(enc *e, int32_t id) {
    if (e->n == e->cap) {
        size_t cap = e->cap ? 2 * e->cap : 64;
        int32_t *p = dn_alloc(cap * sizeof(int32_t));
        if (!p) return dn_fail(DN_ERR_ALLOC, "tokenizer: out of memory (%zu ids)", cap);
        if (e->n) memcpy(p, e->ids, e->n * sizeof(int32_t));
        dn_free(e->ids);
        e->ids = p;
        e->cap = cap;
    }
    e->ids[e->n++] = id;
    return DN_OK;
}

static void heap_push(uint64_t *h, size_t *n, uint64_t v) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p] <= v) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}
static uint64_t heap_pop(uint64_t *h, size_t *n) {
    uint64_t top = h[0], v = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && h[c + 1] < h[c]) c++;
        if (h[c] >= v) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = v;
    return top;
}

/* Pushes the merge of the symbols at l and next[l], if the merges have it. */
static void cand(enc *e, size_t *hn, int32_t l, int32_t m) {
    int32_t r = e->next[l];
    if (r >= m) return;
    size_t at = 0;
    if (merge_find(e->t, e->sym[l], e->sym[r], &at))
        heap_push(e->heap, hn, (uint64_t)(uint32_t)e->t->mrank[at] << 32 | (uint32_t)l);
}

/* BPE of one piece's bytes. */
static dn_status bpe(enc *e, const uint8_t *p, size_t m) {
    const dn_tokenizer *t = e->t;
    if (m == 1) return push_id(e, t->byte_id[p[0]]);
    if (t->ignore_merges) {
        int32_t id = map_find(t, &t->by_bytes, key_bytes, p, m, NULL);
        if (id >= 0) return push_id(e, id);
    }
    if (m > INT32_MAX / 4)
        return dn_fail(DN_ERR_ARG, "tokenizer: a piece of %zu bytes is too long", m);
    if (m > e->bcap) {
        size_t c = m < 256 ? 256 : m;
        dn_free(e->sym);
        dn_free(e->heap);
        e->sym = dn_alloc(3 * c * sizeof(int32_t));
        e->heap = dn_alloc(3 * c * sizeof(uint64_t));
        e->bcap = 0;
        if (!e->sym || !e->heap) return dn_fail(DN_ERR_ALLOC, "tokenizer: out of memory");
        e->next = e->sym + c;
        e->prev = e->sym + 2 * c;
        e->bcap = c;
    }
    int32_t n = (int32_t)m;
    for (int32_t i = 0; i < n; i++) {
        e->sym[i] = t->byte_id[p[i]];
        e->next[i] = i + 1;
        e->prev[i] = i - 1;
    }
    /* a heap entry per merge candidate: at most n at the start and two per merge after */
    size_t hn = 0;
    for (int32_t i = 0; i + 1 < n; i++)
        cand(e, &hn, i, n);
    while (hn) {
        uint64_t top = heap_pop(e->heap, &hn);
        int32_t l = (int32_t)(uint32_t)top, rank = (int32_t)(top >> 32);
        if (e->sym[l] < 0) continue; /* merged into its left neighbour */
        int32_t r = e->next[l];
        if (r >= n) continue;
        size_t at = 0;
        /* stale when the pair at l changed since it was pushed: the text a symbol covers only
         * grows, so the same rank means the same pair */
        if (!merge_find(t, e->sym[l], e->sym[r], &at) || t->mrank[at] != rank) continue;
        e->sym[l] = t->mnew[at];
        e->sym[r] = -1;
        e->next[l] = e->next[r];
        if (e->next[r] < n) e->prev[e->next[r]] = l;
        if (e->prev[l] >= 0) cand(e, &hn, e->prev[l], n);
        cand(e, &hn, l, n);
    }
    dn_status st = DN_OK;
    for (int32_t i = 0; i < n && !st; i = e->next[i])
        st = push_id(e, e->sym[i]);
    return st;
}

/* The end (code point index) of the split pattern's match at i. The alternatives are tried in
 * the pattern's order, each as the backtracking regex engine would settle it:
 *   (?i:'s|'t|'re|'ve|'m|'ll|'d)       contractions, any case (U+017F long s folds to s)
 *   [^\r\n\p{L}\p{N}]?\p{L}+            a word with one leading non-letter ([\p{L}\p{M}]+: 3.5)
 *   \p{N} or \p{N}{1,3}                 digits
 *    ?[^\s\p{L}\p{N}]+[\r\n]*           punctuation (also without \p{M}: 3.5), then newlines
 *   \s*[\r\n]+                          white space up to its last newline
 *   \s+(?!\S)                           white space but the last before a non-space
 *   \s+                                 the rest of the white space */
static size_t split_match(const enc *e, size_t i, size_t n) {
    const uint32_t *cp = e->cp;
    const uint8_t *k = e->cls;
    const int marks = e->t->marks;
#define IS_WORD(j) (k[j] == DN_UC_LETTER || (marks && k[j] == DN_UC_MARK))
#define IS_PUNCT(j) (k[j] == DN_UC_OTHER || (!marks && k[j] == DN_UC_MARK))
#define IS_NL(j) (cp[j] == '\r' || cp[j] == '\n')
    if (cp[i] == '\'' && i + 1 < n) {
        uint32_t a = cp[i + 1] == 0x17F ? 's' : cp[i + 1] < 0x80 ? (cp[i + 1] | 0x20) : 0;
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
        uint32_t b = i + 2 < n && cp[i + 2] < 0x80 ? (cp[i + 2] | 0x20) : 0;
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
            return i + 3;
    }
    size_t j;
    if (IS_WORD(i) || (!IS_NL(i) && k[i] != DN_UC_LETTER && k[i] != DN_UC_NUMBER && i + 1 < n &&
                       IS_WORD(i + 1))) {
        for (j = i + 1; j < n && IS_WORD(j); j++) {
        }
        return j;
    }
    if (k[i] == DN_UC_NUMBER) {
        size_t lim = e->t->digits3 ? i + 3 : i + 1;
        for (j = i + 1; j < n && j < lim && k[j] == DN_UC_NUMBER; j++) {
        }
        return j;
    }
    j = cp[i] == ' ' && i + 1 < n && IS_PUNCT(i + 1) ? i + 1 : i;
    if (IS_PUNCT(j)) {
        for (j++; j < n && IS_PUNCT(j); j++) {
        }
        while (j < n && IS_NL(j))
            j++;
        return j;
    }
    /* white space (every code point is a word, mark, number, punctuation or space) */
    size_t last_nl = SIZE_MAX;
    for (j = i; j < n && k[j] == DN_UC_SPACE; j++)
        if (IS_NL(j)) last_nl = j;
    if (last_nl != SIZE_MAX) return last_nl + 1;
    if (j < n && j - i >= 2) return j - 1;
    return j > i ? j : i + 1;
#undef IS_WORD
#undef IS_PUNCT
#undef IS_NL
}

/* Pre-tokenizes and encodes s[0..n) (valid UTF-8, normalized, no added token in it). */
static dn_status encode_plain(enc *e, const uint8_t *s, size_t n) {
    if (!n) return DN_OK;
    if (n + 1 > e->scap) {
        size_t c = n + 1 < 1024 ? 1024 : n + 1;
        dn_free(e->cp);
        dn_free(e->cls);
        dn_free(e->off);
        e->cp = dn_alloc(c * sizeof(uint32_t));
        e->cls = dn_alloc(c);
        e->off = dn_alloc(c * sizeof(size_t));
        e->scap = 0;
        if (!e->cp || !e->cls || !e->off) return dn_fail(DN_ERR_ALLOC, "tokenizer: out of memory");
        e->scap = c;
    }
    size_t m = 0;
    for (size_t i = 0; i < n;) {
        int l = dn_utf8_next(s + i, n - i, &e->cp[m]);
        DN_ASSERT(l > 0);
        e->off[m] = i;
        e->cls[m] = (uint8_t)dn_uc_class(e->cp[m]);
        m++;
        i += (size_t)l;
    }
    e->off[m] = n;
    dn_status st = DN_OK;
    for (size_t i = 0; i < m && !st;) {
        size_t j = split_match(e, i, m);
        st = bpe(e, s + e->off[i], e->off[j] - e->off[i]);
        i = j;
    }
    return st;
}

/* The longest added token of the given normalization class starting at s[i..n), or NULL. */
static const added_tok *added_at(const dn_tokenizer *t, const uint8_t *s, size_t i, size_t n,
                                 int normalized, int no_special) {
    const added_tok *best = NULL;
    for (int k = t->by_first[s[i]]; k < t->by_first[s[i] + 1]; k++) {
        const added_tok *a = &t->added[k];
        if (a->normalized != normalized || (no_special && a->special) || a->len > n - i ||
            (best && a->len <= best->len))
            continue;
        if (!memcmp(s + i, t->blob + a->off, a->len)) best = a;
    }
    return best;
}

/* Splits s[0..n) at the added tokens of one class; the stretches between go to the next step. */
static dn_status encode_normalized(enc *e, const uint8_t *s, size_t n, unsigned flags) {
    size_t start = 0;
    dn_status st = DN_OK;
    for (size_t i = 0; i < n && !st;) {
        const added_tok *a =
            e->t->n_added ? added_at(e->t, s, i, n, 1, flags & DN_TOK_NO_SPECIAL) : NULL;
        if (!a) {
            i++;
            continue;
        }
        if (!(st = encode_plain(e, s + start, i - start))) st = push_id(e, a->id);
        i += a->len;
        start = i;
    }
    if (!st) st = encode_plain(e, s + start, n - start);
    return st;
}

static dn_status encode_stretch(enc *e, const uint8_t *s, size_t n, unsigned flags) {
    if (!n) return DN_OK;
    if (!e->t->nfc) return encode_normalized(e, s, n, flags);
    uint8_t *norm;
    size_t nn;
    dn_status st = dn_nfc(s, n, &norm, &nn);
    if (st) return st;
    st = encode_normalized(e, norm, nn, flags);
    dn_free(norm);
    return st;
}

static dn_status encode_into(enc *e, const uint8_t *s, size_t n, unsigned flags) {
    size_t start = 0;
    dn_status st = DN_OK;
    for (size_t i = 0; i < n && !st;) {
        const added_tok *a =
            e->t->n_added ? added_at(e->t, s, i, n, 0, flags & DN_TOK_NO_SPECIAL) : NULL;
        if (!a) {
            i++;
            continue;
        }
        if (!(st = encode_stretch(e, s + start, i - start, flags))) st = push_id(e, a->id);
        i += a->len;
        start = i;
    }
    if (!st) st = encode_stretch(e, s + start, n - start, flags);
    return st;
}

static void enc_free_scratch(enc *e) {
    dn_free(e->cp);
    dn_free(e->cls);
    dn_free(e->off);
    dn_free(e->sym);
    dn_free(e->heap);
}

static dn_status enc_finish(enc *e, dn_status st, int32_t **ids, int64_t *n_ids) {
    enc_free_scratch(e);
    if (!st && !e->ids) {
        e->ids = dn_alloc(sizeof(int32_t));
        if (!e->ids) st = dn_fail(DN_ERR_ALLOC, "tokenizer: out of memory");
    }
    if (st) {
        dn_free(e->ids);
        return st;
    }
    *ids = e->ids;
    *n_ids = (int64_t)e->n;
    return DN_OK;
}

dn_status dn_tokenizer_encode(const dn_tokenizer *t, const char *text, size_t n, unsigned flags,
                              int32_t **ids, int64_t *n_ids) {
    if (!t || (!text && n) || !ids || !n_ids)
        return dn_fail(DN_ERR_NULL, "dn_tokenizer_encode: NULL argument");
    if (flags & ~DN_TOK_NO_SPECIAL)
        return dn_fail(DN_ERR_ARG, "dn_tokenizer_encode: unknown flags 0x%x", flags);
    size_t bad = n ? dn_utf8_check((const uint8_t *)text, n) : 0;
    if (bad < n)
        return dn_fail(DN_ERR_ARG, "dn_tokenizer_encode: the text is not valid UTF-8 at byte %zu",
                       bad);
    enc e;
    memset(&e, 0, sizeof e);
    e.t = t;
    dn_status st = n ? encode_into(&e, (const uint8_t *)text, n, flags) : DN_OK;
    return enc_finish(&e, st, ids, n_ids);
}

/* ======================================================================================== */
/* decoding */

/* Length of the maximal prefix of s[0..n) that could start a valid UTF-8 character (at least
 * 1): what one U+FFFD replaces. */
static size_t invalid_run(const uint8_t *s, size_t n) {
    uint8_t b = s[0];
    int need;
    uint8_t lo = 0x80, hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF)
        need = 1;
    else if (b >= 0xE0 && b <= 0xEF) {
        need = 2;
        if (b == 0xE0) lo = 0xA0;
        if (b == 0xED) hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
        need = 3;
        if (b == 0xF0) lo = 0x90;
        if (b == 0xF4) hi = 0x8F;
    } else {
        return 1;
    }
    size_t i = 1;
    for (int k = 0; k < need && i < n; k++, i++) {
        uint8_t lo_k = k == 0 ? lo : 0x80, hi_k = k == 0 ? hi : 0xBF;
        if (s[i] < lo_k || s[i] > hi_k) break;
    }
    return i;
}

dn_status dn_tokenizer_decode(const dn_tokenizer *t, const int32_t *ids, int64_t n, unsigned flags,
                              char **text, size_t *len) {
    if (!t || (!ids && n) || !text || !len)
        return dn_fail(DN_ERR_NULL, "dn_tokenizer_decode: NULL argument");
    if (n < 0) return dn_fail(DN_ERR_ARG, "dn_tokenizer_decode: n = %lld", (long long)n);
    if (flags & ~DN_TOK_SKIP_SPECIAL)
        return dn_fail(DN_ERR_ARG, "dn_tokenizer_decode: unknown flags 0x%x", flags);
    size_t raw = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!valid_id(t, ids[i]))
            return dn_fail(DN_ERR_ARG, "dn_tokenizer_decode: ids[%lld] = %d is not a token",
                           (long long)i, ids[i]);
        raw += t->byte_len[ids[i]];
    }
    /* each invalid byte becomes at most 3 bytes (U+FFFD) */
    if (raw > (SIZE_MAX - 1) / 3) return dn_fail(DN_ERR_ALLOC, "dn_tokenizer_decode: too long");
    uint8_t *b = dn_alloc(raw + 1), *o = dn_alloc(3 * raw + 1);
    if (!b || !o) {
        dn_free(b);
        dn_free(o);
        return dn_fail(DN_ERR_ALLOC, "dn_tokenizer_decode: out of memory");
    }
    size_t m = 0;
    for (int64_t i = 0; i < n; i++) {
        if ((flags & DN_TOK_SKIP_SPECIAL) && (t->kind[ids[i]] & KIND_SPECIAL)) continue;
        memcpy(b + m, t->blob + t->byte_off[ids[i]], t->byte_len[ids[i]]);
        m += t->byte_len[ids[i]];
    }
    size_t w = 0;
    for (size_t i = 0; i < m;) {
        uint32_t cp;
        int l = dn_utf8_next(b + i, m - i, &cp);
        if (l > 0) {
            memcpy(o + w, b + i, (size_t)l);
            w += (size_t)l, i += (size_t)l;
        } else {
            w += (size_t)dn_utf8_put(o + w, 0xFFFD);
            i += invalid_run(b + i, m - i);
        }
    }
    o[w] = 0;
    dn_free(b);
    *text = (char *)o;
    *len = w;
    return DN_OK;
}

/* ======================================================================================== */
/* chat */

static const char *role_of(const dn_chat_message *m) { return m->role ? m->role : ""; }

dn_status dn_chat_format(const dn_chat_message *msgs, int64_t n, int add_generation_prompt,
                         char **text, size_t *len) {
    if ((!msgs && n) || !text || !len) return dn_fail(DN_ERR_NULL, "dn_chat_format: NULL argument");
    if (n < 0) return dn_fail(DN_ERR_ARG, "dn_chat_format: n = %lld", (long long)n);
    size_t total = 1;
    for (int64_t i = 0; i < n; i++) {
        if (!msgs[i].role || !msgs[i].content)
            return dn_fail(DN_ERR_NULL, "dn_chat_format: message %lld has a NULL role or content",
                           (long long)i);
        total += strlen(msgs[i].role) + strlen(msgs[i].content) + 32;
    }
    if (add_generation_prompt) total += 32;
    char *o = dn_alloc(total);
    if (!o) return dn_fail(DN_ERR_ALLOC, "dn_chat_format: out of memory");
    size_t w = 0;
    for (int64_t i = 0; i < n; i++)
        w += (size_t)snprintf(o + w, total - w, "<|im_start|>%s\n%s<|im_end|>\n", role_of(&msgs[i]),
                              msgs[i].content);
    if (add_generation_prompt) w += (size_t)snprintf(o + w, total - w, "<|im_start|>assistant\n");
    *text = o;
    *len = w;
    return DN_OK;
}

dn_status dn_tokenizer_chat(const dn_tokenizer *t, const dn_chat_message *msgs, int64_t n,
                            int add_generation_prompt, int32_t **ids, int64_t *n_ids) {
    if (!t || (!msgs && n) || !ids || !n_ids)
        return dn_fail(DN_ERR_NULL, "dn_tokenizer_chat: NULL argument");
    if (n < 0) return dn_fail(DN_ERR_ARG, "dn_tokenizer_chat: n = %lld", (long long)n);
    if (!t->chat_ok)
        return dn_fail(DN_ERR_UNSUPPORTED,
                       "dn_tokenizer_chat: this tokenizer has no ChatML format (<|im_start|> and "
                       "<|im_end|> special tokens, a ChatML chat_template)");
    for (int64_t i = 0; i < n; i++) {
        if (!msgs[i].role || !msgs[i].content)
            return dn_fail(DN_ERR_NULL,
                           "dn_tokenizer_chat: message %lld has a NULL role or content",
                           (long long)i);
        size_t lr = strlen(msgs[i].role), lc = strlen(msgs[i].content);
        if (dn_utf8_check((const uint8_t *)msgs[i].role, lr) < lr ||
            dn_utf8_check((const uint8_t *)msgs[i].content, lc) < lc)
            return dn_fail(DN_ERR_ARG, "dn_tokenizer_chat: message %lld is not valid UTF-8",
                           (long long)i);
    }
    enc e;
    memset(&e, 0, sizeof e);
    e.t = t;
    dn_status st = DN_OK;
    for (int64_t i = 0; i < n && !st; i++) {
        /* "role\ncontent" is one stretch between the markers, as in the formatted text */
        size_t lr = strlen(msgs[i].role), lc = strlen(msgs[i].content);
        char *s = dn_alloc(lr + lc + 2);
        if (!s) {
            st = dn_fail(DN_ERR_ALLOC, "dn_tokenizer_chat: out of memory");
            break;
        }
        memcpy(s, msgs[i].role, lr);
        s[lr] = '\n';
        memcpy(s + lr + 1, msgs[i].content, lc);
        if (!(st = push_id(&e, t->im_start)) &&
            !(st = encode_into(&e, (const uint8_t *)s, lr + 1 + lc, DN_TOK_NO_SPECIAL)) &&
            !(st = push_id(&e, t->im_end)))
            st = encode_into(&e, (const uint8_t *)"\n", 1, 0);
        dn_free(s);
    }
    if (!st && add_generation_prompt && !(st = push_id(&e, t->im_start)))
        st = encode_into(&e, (const uint8_t *)"assistant\n", 10, 0);
    return enc_finish(&e, st, ids, n_ids);
}

/* ======================================================================================== */
/* test hook (tokenizer.h) */

dn_status dn_tokenizer_split(const dn_tokenizer *t, const char *s, size_t n, size_t **ends,
                             size_t *n_pieces) {
    if (!t || (!s && n) || !ends || !n_pieces)
        return dn_fail(DN_ERR_NULL, "dn_tokenizer_split: NULL argument");
    if (dn_utf8_check((const uint8_t *)s, n) < n)
        return dn_fail(DN_ERR_ARG, "dn_tokenizer_split: the text is not valid UTF-8");
    enc e;
    memset(&e, 0, sizeof e);
    e.t = t;
    size_t *out = dn_alloc((n + 1) * sizeof(size_t)), m = 0, k = 0;
    e.cp = dn_alloc((n + 1) * sizeof(uint32_t));
    e.cls = dn_alloc(n + 1);
    if (!out || !e.cp || !e.cls) {
        dn_free(out);
        enc_free_scratch(&e);
        return dn_fail(DN_ERR_ALLOC, "dn_tokenizer_split: out of memory");
    }
    size_t *off = out; /* byte offsets of the code points, overwritten by the ends below */
    for (size_t i = 0; i < n;) {
        int l = dn_utf8_next((const uint8_t *)s + i, n - i, &e.cp[m]);
        e.cls[m] = (uint8_t)dn_uc_class(e.cp[m]);
        off[m++] = i;
        i += (size_t)l;
    }
    off[m] = n;
    for (size_t i = 0; i < m;) {
        size_t j = split_match(&e, i, m);
        out[k++] = off[j]; /* k <= i < j: the offsets still needed are not overwritten */
        i = j;
    }
    enc_free_scratch(&e);
    *ends = out;
    *n_pieces = k;
    return DN_OK;
}
