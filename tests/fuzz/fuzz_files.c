/*
 * fuzz_files.c - the contract fuzzer's families for the model layer's file parsers
 * (src/model/json.c, src/model/safetensors.c, checkpoints, src/model/tokenizer.c), called from
 * fuzz.c's dispatch.
 *
 * The first byte of an input is a mode; the rest is the file:
 *   bit 7     the n-th allocation of the parse fails (n from bits 1..6): DN_ERR_ALLOC is then
 *             allowed, with nothing leaked (libFuzzer's LeakSanitizer checks every input);
 *   bit 0     (safetensors only) the rest is a header and data, assembled into a file with a
 *             correct length field: byte 1 gives the data length, then the header text, then
 *             the data, so mutations reach the header's meaning, not only its length.
 * Properties (a violation returns a sentence; fuzz.c aborts or counts it):
 *   json        an error leaves *out alone and is DN_ERR_FORMAT (or DN_ERR_ALLOC under
 *               injection); an accepted text, written back by dn_jw_value and parsed again, gives
 *               the same tree (types, numbers bit for bit, strings and keys byte for byte, order).
 *   safetensors an error leaves *out alone; an accepted file has every tensor inside its data,
 *               with a size matching its dtype and shape, together covering the data exactly,
 *               each found by its name; rebuilt from its tensors by dn_st_make_header it parses
 *               again to the same names, dtypes, shapes, bytes and metadata.
 */
#include "fuzz.h"
#include "test.h"

#include "../../src/model/json.h"
#include "../../src/model/safetensors.h"
#include "../../src/model/unicode.h"

#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

void dn_free(void *p);

static int same_tree(const dn_json *a, const dn_json *b) {
    if (a->type != b->type || a->key_len != b->key_len) return 0;
    if (a->key_len && memcmp(a->key, b->key, a->key_len)) return 0;
    switch (a->type) {
    case DN_JSON_BOOL: return a->boolean == b->boolean;
    case DN_JSON_NUMBER: {
        double x = dn_json_num(a), y = dn_json_num(b);
        if (memcmp(&x, &y, sizeof x)) return 0;
        return !(a->is_int && b->is_int) || a->u.i == b->u.i;
    }
    case DN_JSON_STRING:
        return a->len == b->len && !memcmp(a->u.str, b->u.str, a->len) && !a->u.str[a->len];
    case DN_JSON_ARRAY:
    case DN_JSON_OBJECT:
        if (a->len != b->len) return 0;
        for (size_t i = 0; i < a->len; i++)
            if (!same_tree(&a->u.items[i], &b->u.items[i])) return 0;
        return 1;
    default: return 1;
    }
}

static dn_json *const UNTOUCHED = (dn_json *)(uintptr_t)0x7a7a7a7a;

const char *dn_fuzz_json(const uint8_t *d, size_t n) {
    const unsigned mode = n ? d[0] : 0;
    const char *text = n ? (const char *)d + 1 : "";
    const size_t len = n ? n - 1 : 0;
    dn_json *v = UNTOUCHED;
    if (mode & 0x80) dn_fault_fail_alloc_after((long)((mode >> 1) & 0x3f));
    dn_status st = dn_json_parse(text, len, &v);
    dn_fault_fail_alloc_after(-1);
    if (st != DN_OK) {
        if (v != UNTOUCHED) return "a failed parse wrote *out";
        if (st == DN_ERR_ALLOC && (mode & 0x80)) return NULL;
        return st == DN_ERR_FORMAT ? NULL : "a parse failed with a status other than FORMAT";
    }
    const char *bad = NULL;
    dn_jw w;
    dn_jw_init(&w);
    dn_jw_value(&w, v);
    dn_json *again = UNTOUCHED;
    if (dn_jw_finish(&w) != DN_OK)
        bad = "dn_jw_value rejected a parsed tree";
    else if (dn_json_parse(w.buf, w.len, &again) != DN_OK)
        bad = "the written-back text does not parse";
    else if (!same_tree(v, again))
        bad = "written back and parsed again, the tree differs";
    /* lookups find each member of an object (keys are unique) */
    for (size_t i = 0; !bad && v->type == DN_JSON_OBJECT && i < v->len && i < 8; i++) {
        const dn_json *m = &v->u.items[i];
        if (strlen(m->key) == m->key_len && dn_json_get(v, m->key) != m)
            bad = "dn_json_get does not find a member";
    }
    if (again != UNTOUCHED) dn_json_free(again);
    dn_jw_free(&w);
    dn_json_free(v);
    return bad;
}

/* What an accepted file must satisfy; NULL when it does. */
static const char *check_file(const dn_st *st, const uint8_t *buf, size_t n) {
    if (8 + st->header_bytes + st->data_bytes != n || st->data != buf + 8 + st->header_bytes)
        return "sizes of the accepted file are inconsistent";
    uint64_t sum = 0;
    for (size_t i = 0; i < st->n_tensors; i++) {
        const dn_st_tensor *t = &st->tensors[i];
        if (!dn_st_dtype_name(t->dtype) || t->ndim < 0 || (t->ndim && !t->shape))
            return "a tensor has a bad dtype or ndim";
        int64_t numel = 1;
        for (int k = 0; k < t->ndim; k++)
            if (t->shape[k] < 0 || __builtin_mul_overflow(numel, t->shape[k], &numel))
                return "an accepted shape overflows";
        if (numel != t->numel || (unsigned __int128)numel * (unsigned)dn_st_dtype_bits(t->dtype) !=
                                     (unsigned __int128)t->bytes * 8)
            return "a tensor's bytes do not match its dtype and shape";
        if (t->offset > st->data_bytes || t->bytes > st->data_bytes - t->offset ||
            t->data != st->data + t->offset)
            return "a tensor lies outside the data";
        if (t->bytes) { /* ASan checks these reads */
            volatile uint8_t x = t->data[0];
            x = t->data[t->bytes - 1];
            (void)x;
        }
        if (dn_st_find(st, t->name) != t) return "dn_st_find does not find a tensor";
        sum += t->bytes;
    }
    if (sum != st->data_bytes) return "the tensors do not cover the data exactly";
    for (size_t i = 0; i < st->n_meta; i++)
        if (!dn_st_meta(st, st->meta_keys[i])) return "dn_st_meta does not find a key";
    return NULL;
}

/* Rebuilds the file from the parsed tensors, parses it again, compares. */
static const char *rebuild(const dn_st *st) {
    size_t nt = st->n_tensors ? st->n_tensors : 1;
    dn_st_entry *e = malloc(nt * sizeof *e);
    const char *bad = NULL;
    for (size_t i = 0; i < st->n_tensors; i++) {
        const dn_st_tensor *t = &st->tensors[i];
        e[i] = (dn_st_entry){t->name, t->dtype, t->ndim, t->shape, t->data};
    }
    uint8_t *hdr = NULL, *file = NULL;
    size_t hl = 0;
    uint64_t db = 0;
    dn_st *again = NULL;
    if (dn_st_make_header(e, st->n_tensors, st->meta_keys, st->meta_values, st->n_meta, &hdr, &hl,
                          &db) != DN_OK)
        bad = "dn_st_make_header rejected the tensors of an accepted file";
    else if (db != st->data_bytes)
        bad = "the rebuilt file's data size differs";
    if (!bad) {
        file = malloc(hl + db + 1);
        memcpy(file, hdr, hl);
        size_t o = hl;
        for (size_t i = 0; i < st->n_tensors; i++) {
            if (st->tensors[i].bytes) memcpy(file + o, st->tensors[i].data, st->tensors[i].bytes);
            o += st->tensors[i].bytes;
        }
        if (dn_st_parse(file, o, &again) != DN_OK) bad = "the rebuilt file does not parse";
    }
    if (!bad && (again->n_tensors != st->n_tensors || again->n_meta != st->n_meta))
        bad = "the rebuilt file has other counts";
    for (size_t i = 0; !bad && i < st->n_tensors; i++) {
        const dn_st_tensor *a = &st->tensors[i], *b = &again->tensors[i];
        if (strcmp(a->name, b->name) || a->dtype != b->dtype || a->ndim != b->ndim ||
            a->bytes != b->bytes || (a->ndim && memcmp(a->shape, b->shape, 8 * (size_t)a->ndim)) ||
            (a->bytes && memcmp(a->data, b->data, a->bytes)))
            bad = "a rebuilt tensor differs";
    }
    for (size_t i = 0; !bad && i < st->n_meta; i++)
        if (strcmp(st->meta_keys[i], again->meta_keys[i]) ||
            strcmp(st->meta_values[i], again->meta_values[i]))
            bad = "rebuilt metadata differs";
    dn_st_close(again);
    free(file);
    dn_free(hdr);
    free(e);
    return bad;
}

static dn_st *const NO_ST = (dn_st *)(uintptr_t)0x7a7a7a7a;

const char *dn_fuzz_safetensors(const uint8_t *d, size_t n) {
    const unsigned mode = n ? d[0] : 0;
    const uint8_t *buf = n ? d + 1 : d;
    size_t len = n ? n - 1 : 0;
    uint8_t *assembled = NULL;
    if ((mode & 1) && len >= 1) { /* [data length] [header ...] [data] */
        size_t dl = d[1], rest = len - 1;
        if (dl > rest) dl = rest;
        size_t hl = rest - dl;
        len = 8 + rest;
        assembled = malloc(len);
        for (int k = 0; k < 8; k++)
            assembled[k] = (uint8_t)((uint64_t)hl >> (8 * k));
        memcpy(assembled + 8, d + 2, rest);
        buf = assembled;
    }
    dn_st *st = NO_ST;
    if (mode & 0x80) dn_fault_fail_alloc_after((long)((mode >> 1) & 0x3f));
    dn_status s = dn_st_parse(buf, len, &st);
    dn_fault_fail_alloc_after(-1);
    const char *bad = NULL;
    if (s != DN_OK) {
        if (st != NO_ST)
            bad = "a failed parse wrote *out";
        else if (s != DN_ERR_FORMAT && !(s == DN_ERR_ALLOC && (mode & 0x80)))
            bad = "a parse failed with a status other than FORMAT";
    } else {
        bad = check_file(st, buf, len);
        if (!bad) bad = rebuild(st);
        dn_st_close(st);
    }
    free(assembled);
    return bad;
}

/* ---- checkpoints: a valid tiny checkpoint, mutated (or the raw input as the file) ---- */

static uint8_t *ckpt_base;
static size_t ckpt_len;

/* A checkpoint of a tiny hybrid model with its optimizer, made once per process. */
static void make_base(void) {
    if (ckpt_base) return;
    dn_model_config c = dn_model_config_default();
    c.vocab_size = 7, c.hidden_size = 8, c.intermediate_size = 8, c.num_hidden_layers = 2;
    strcpy(c.layer_pattern, "GA");
    c.num_attention_heads = c.num_key_value_heads = 1, c.head_dim = 4;
    c.linear_num_key_heads = c.linear_num_value_heads = 1;
    c.linear_key_head_dim = c.linear_value_head_dim = 4;
    dn_model *m = NULL;
    dn_adamw *o = NULL;
    dn_adamw_config oc = dn_adamw_config_default();
    char path[64];
    snprintf(path, sizeof path, "/tmp/dn_fuzz_ckpt_%ld.safetensors", (long)getpid());
    if (dn_model_create(&m, &c, 1) == DN_OK && dn_adamw_create(&o, m, &oc) == DN_OK &&
        dn_checkpoint_save(path, m, o, "{\"step\": 3}") == DN_OK) {
        FILE *f = fopen(path, "rb");
        if (f) {
            fseek(f, 0, SEEK_END);
            const long n = ftell(f);
            fseek(f, 0, SEEK_SET);
            ckpt_base = malloc((size_t)n);
            if (ckpt_base && fread(ckpt_base, 1, (size_t)n, f) == (size_t)n) ckpt_len = (size_t)n;
            fclose(f);
        }
        remove(path);
    }
    dn_adamw_free(o);
    dn_model_free(m);
}

static dn_model *const NO_MODEL = (dn_model *)(uintptr_t)0x7a7a7a7a;

const char *dn_fuzz_checkpoint(const uint8_t *d, size_t n) {
    make_base();
    if (!ckpt_len) return "could not make the base checkpoint";
    const unsigned mode = n ? d[0] : 0;
    uint8_t *buf;
    size_t len;
    if (mode & 1) { /* the input is the file */
        len = n - 1;
        buf = malloc(len ? len : 1);
        if (len) memcpy(buf, d + 1, len);
    } else { /* the base, with (offset, byte) edits and maybe a truncation */
        len = ckpt_len;
        buf = malloc(len);
        memcpy(buf, ckpt_base, len);
        for (size_t i = 1; i + 2 < n; i += 3) {
            const size_t off = ((size_t)d[i] << 8 | d[i + 1]) * 7 % len;
            buf[off] = d[i + 2];
        }
        if (mode & 2) len = n > 1 ? ((size_t)d[1] << 8 | d[n - 1]) % (len + 1) : len / 2;
    }
    dn_model *m = NO_MODEL;
    dn_adamw *o = NULL;
    char *extra = NULL;
    dn_adamw_config oc = dn_adamw_config_default();
    if (mode & 0x80) dn_fault_fail_alloc_after((long)((mode >> 2) & 0x1f));
    dn_status s = dn_checkpoint_parse(buf, len, &m, (mode & 4) ? &o : NULL, &oc, &extra);
    dn_fault_fail_alloc_after(-1);
    const char *bad = NULL;
    if (s != DN_OK) {
        if (m != NO_MODEL || o || extra) bad = "a failed load returned something";
    } else {
        const dn_model_config *c = dn_model_get_config(m);
        if (!c || dn_model_config_check(c) != DN_OK) bad = "a loaded model's config is invalid";
        if ((mode & 4) && !o) bad = "no optimizer returned";
        free(extra);
        dn_adamw_free(o);
        dn_model_free(m);
    }
    free(buf);
    return bad;
}

/* ---- tokenizer: a small valid tokenizer.json, mutated (or the raw input), and the input as
 * text. Mode byte: bits 0-1: 0 the rest is text for the base tokenizer (valid UTF-8 must round
 * trip: decode(encode(x)) = NFC(x); invalid UTF-8 must be DN_ERR_ARG with nothing written),
 * 1 the base file with (offset, byte) edits and maybe a truncation (bit 2), 2 the rest is the
 * file; a file accepted must encode a fixed text into valid ids that decode to valid UTF-8.
 * Bit 7: the n-th allocation fails (n from bits 2..6). ---- */

static char *tok_base;
static size_t tok_base_len;

/* appends s as a JSON string */
static size_t put_jstr(char *o, const char *s, size_t n) {
    size_t w = 0;
    o[w++] = '"';
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"' || s[i] == '\\') o[w++] = '\\';
        o[w++] = s[i];
    }
    o[w++] = '"';
    return w;
}

/* byte-level character of byte b (GPT-2's bytes_to_unicode), as UTF-8 */
static int bl_char(int b, char *o) {
    uint32_t c = b <= 0x20                  ? 0x100u + (uint32_t)b
                 : (b >= 0x7F && b <= 0xA0) ? 0x121u + (uint32_t)(b - 0x7F)
                 : b == 0xAD                ? 0x143u
                                            : (uint32_t)b;
    return dn_utf8_put((uint8_t *)o, c);
}

static void make_tok_base(void) {
    if (tok_base) return;
    static const char *const merges[][2] = {{"\xc4\xa0", "t"}, {"\xc4\xa0t", "h"},
                                            {"h", "e"},        {"\xc4\xa0th", "e"},
                                            {"a", "b"},        {"\xc4\xa0", "\xc4\xa0"},
                                            {"1", "2"},        {"\xc3\x83", "\xc2\xa9"},
                                            {"ab", "ab"},      {"'", "s"}};
    const size_t cap = 1 << 16;
    char *o = malloc(cap);
    size_t w = 0;
    w += (size_t)sprintf(
        o + w, "{\"version\":\"1.0\",\"added_tokens\":["
               "{\"id\":266,\"content\":\"<|im_start|>\",\"special\":true,\"normalized\":false},"
               "{\"id\":267,\"content\":\"<|im_end|>\",\"special\":true,\"normalized\":false},"
               "{\"id\":268,\"content\":\"<think>\",\"special\":false,\"normalized\":false},"
               "{\"id\":269,\"content\":\"\\u2126\",\"special\":false,\"normalized\":true}],"
               "\"normalizer\":{\"type\":\"NFC\"},\"pre_tokenizer\":{\"type\":\"Sequence\","
               "\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":"
               "\"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|"
               "\\\\p{N}| ?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|"
               "\\\\s+(?!\\\\S)|\\\\s+\"},\"behavior\":\"Isolated\",\"invert\":false},"
               "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":false}]},"
               "\"post_processor\":null,\"decoder\":{\"type\":\"ByteLevel\"},"
               "\"model\":{\"type\":\"BPE\",\"ignore_merges\":false,\"vocab\":{");
    for (int b = 0; b < 256; b++) {
        char ch[4];
        w += put_jstr(o + w, ch, (size_t)bl_char(b, ch));
        w += (size_t)sprintf(o + w, ":%d,", b);
    }
    int id = 256;
    for (size_t m = 0; m < sizeof merges / sizeof merges[0]; m++) {
        char cat[16];
        size_t la = strlen(merges[m][0]), lb = strlen(merges[m][1]);
        memcpy(cat, merges[m][0], la);
        memcpy(cat + la, merges[m][1], lb);
        w += put_jstr(o + w, cat, la + lb);
        w += (size_t)sprintf(o + w, ":%d%s", id++,
                             m + 1 < sizeof merges / sizeof merges[0] ? "," : "");
    }
    w += (size_t)sprintf(o + w, "},\"merges\":[");
    for (size_t m = 0; m < sizeof merges / sizeof merges[0]; m++) {
        char pair[16];
        size_t la = strlen(merges[m][0]), lb = strlen(merges[m][1]);
        memcpy(pair, merges[m][0], la);
        pair[la] = ' ';
        memcpy(pair + la + 1, merges[m][1], lb);
        if (m % 2) { /* both spellings of a merge */
            w += put_jstr(o + w, pair, la + 1 + lb);
        } else {
            o[w++] = '[';
            w += put_jstr(o + w, merges[m][0], la);
            o[w++] = ',';
            w += put_jstr(o + w, merges[m][1], lb);
            o[w++] = ']';
        }
        if (m + 1 < sizeof merges / sizeof merges[0]) o[w++] = ',';
    }
    w += (size_t)sprintf(o + w, "]}}");
    tok_base = o;
    tok_base_len = w;
}

static const char *tok_check_ids(const dn_tokenizer *t, const char *text, size_t n, int roundtrip) {
    int32_t *ids = NULL;
    int64_t ni = 0;
    dn_status s = dn_tokenizer_encode(t, text, n, 0, &ids, &ni);
    if (s == DN_ERR_ALLOC) return NULL;
    if (s != DN_OK) return "encode of valid UTF-8 failed";
    const char *bad = NULL;
    for (int64_t i = 0; i < ni && !bad; i++)
        if (ids[i] < 0 || ids[i] >= dn_tokenizer_vocab_size(t) ||
            !dn_tokenizer_token_str(t, ids[i]))
            bad = "encode gave an id that is not a token";
    char *back = NULL;
    size_t bl = 0;
    if (!bad && (s = dn_tokenizer_decode(t, ids, ni, 0, &back, &bl)) != DN_OK && s != DN_ERR_ALLOC)
        bad = "decode of encoded ids failed";
    if (!bad && back && dn_utf8_check((const uint8_t *)back, bl) != bl)
        bad = "decode gave invalid UTF-8";
    if (!bad && back && roundtrip) {
        uint8_t *norm = NULL;
        size_t nn = 0;
        if (dn_nfc((const uint8_t *)text, n, &norm, &nn) == DN_OK) {
            if (nn != bl || memcmp(norm, back, nn)) bad = "decode(encode(x)) is not NFC(x)";
            dn_free(norm);
        }
    }
    free(back);
    free(ids);
    return bad;
}

static dn_tokenizer *const NO_TOK = (dn_tokenizer *)(uintptr_t)0x7a7a7a7a;

const char *dn_fuzz_tokenizer(const uint8_t *d, size_t n) {
    make_tok_base();
    const unsigned mode = n ? d[0] : 0;
    const char *bad = NULL;
    if (mode & 0x80) dn_fault_fail_alloc_after((long)((mode >> 2) & 0x1f));
    if ((mode & 3) == 0 || (mode & 3) == 3) { /* text for the base tokenizer */
        dn_fault_fail_alloc_after(-1);
        dn_tokenizer *t = NULL;
        if (dn_tokenizer_parse(&t, tok_base, tok_base_len, NULL, 0) != DN_OK)
            return "the base tokenizer does not load";
        const char *text = n ? (const char *)d + 1 : "";
        size_t len = n ? n - 1 : 0;
        if (mode & 0x80) dn_fault_fail_alloc_after((long)((mode >> 2) & 0x1f));
        if (dn_utf8_check((const uint8_t *)text, len) == len) {
            bad = tok_check_ids(t, text, len, 1);
        } else {
            int32_t *ids = (int32_t *)(uintptr_t)0x5a5a;
            int64_t ni = -5;
            dn_status s = dn_tokenizer_encode(t, text, len, 0, &ids, &ni);
            if (s != DN_ERR_ARG || ids != (int32_t *)(uintptr_t)0x5a5a || ni != -5)
                bad = "invalid UTF-8 was not DN_ERR_ARG with nothing written";
        }
        dn_fault_fail_alloc_after(-1);
        dn_tokenizer_free(t);
        return bad;
    }
    char *buf;
    size_t len;
    if ((mode & 3) == 2) { /* the input is the file */
        len = n - 1;
        buf = malloc(len ? len : 1);
        if (len) memcpy(buf, d + 1, len);
    } else {
        len = tok_base_len;
        buf = malloc(len);
        memcpy(buf, tok_base, len);
        for (size_t i = 1; i + 2 < n; i += 3)
            buf[((size_t)d[i] << 8 | d[i + 1]) * 13 % len] = (char)d[i + 2];
        if (mode & 4) len = n > 1 ? ((size_t)d[1] << 8 | d[n - 1]) % (len + 1) : len / 2;
    }
    dn_tokenizer *t = NO_TOK;
    dn_status s = dn_tokenizer_parse(&t, buf, len, NULL, 0);
    dn_fault_fail_alloc_after(-1);
    if (s != DN_OK) {
        if (t != NO_TOK)
            bad = "a failed parse wrote *out";
        else if (s != DN_ERR_FORMAT && !(s == DN_ERR_ALLOC && (mode & 0x80)))
            bad = "a parse failed with a status other than FORMAT";
    } else {
        static const char text[] = "The cafe\xcc\x81 12345 <|im_start|>user\n'S it's \xe4\xb8\xad "
                                   "<think>\xf0\x9f\x98\x80  \r\n x";
        bad = tok_check_ids(t, text, sizeof text - 1, 0);
        dn_tokenizer_free(t);
    }
    free(buf);
    return bad;
}

/* ---- Hugging Face checkpoint directories (dn_model_load_hf): the committed fixtures
 * (tests/fixtures, or $DN_FUZZ_FIXTURES) copied to a directory of this process's, then one of
 * their files changed per input. Mode byte: bits 0-1: 0 config.json with values replaced, 1 the
 * shard index with values replaced (qwen3_5_text, sharded), 2 the rest of the input is
 * config.json, 3 one weight file with (offset, byte) edits and maybe a truncation (bit 3); bit 2
 * picks the fixture (qwen3_5_text, sharded, or qwen3_next, one file with fused projections and
 * experts). A value replacement is a pair of bytes: which "key": of the file (in order), and
 * which value of a table of edge cases it takes. Properties: a failed load leaves the output
 * untouched; a model that loads has a valid config, and a prefill and a decode step over it
 * return DN_OK or a clean error, with finite logits when only the config or the index changed
 * (the fixture's weights are finite and moderate; a weight file edited into NaN or 3e38 values
 * is a corrupt checkpoint whose logits may well be non-finite: the loader checks shapes and
 * bounds, not values). ---- */

typedef struct {
    char name[64];
    uint8_t *d;
    size_t n;
} hf_file;

#define HF_FILES 12
static hf_file hf_base[2][HF_FILES];
static int hf_nfiles[2];
static char hf_dir[2][96];

static uint8_t *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    const long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *d = len >= 0 ? malloc((size_t)len + 1) : NULL;
    if (d && fread(d, 1, (size_t)len, f) != (size_t)len) free(d), d = NULL;
    fclose(f);
    if (d) d[len] = 0, *n = (size_t)len;
    return d;
}

static int spill(const char *dir, const char *name, const uint8_t *d, size_t n) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    const int ok = fwrite(d, 1, n, f) == n;
    return fclose(f) == 0 && ok ? 0 : -1;
}

static void hf_cleanup(void) {
    char path[256];
    for (int x = 0; x < 2; x++) {
        for (int i = 0; i < hf_nfiles[x]; i++) {
            snprintf(path, sizeof path, "%s/%s", hf_dir[x], hf_base[x][i].name);
            remove(path);
            free(hf_base[x][i].d);
        }
        if (hf_dir[x][0]) rmdir(hf_dir[x]);
    }
}

static int hf_setup(void) {
    static int done;
    if (done) return hf_nfiles[0] > 0 && hf_nfiles[1] > 0;
    done = 1;
    atexit(hf_cleanup);
    const char *root = getenv("DN_FUZZ_FIXTURES");
    if (!root) root = "tests/fixtures";
    static const char *const fixture[2] = {"qwen3_5_text", "qwen3_next"};
    for (int x = 0; x < 2; x++) {
        char src[512], name[64];
        snprintf(hf_dir[x], sizeof hf_dir[x], "/tmp/dn_fuzz_hf_%ld_%d", (long)getpid(), x);
        if (mkdir(hf_dir[x], 0700) && errno != EEXIST) return 0;
        for (int i = 0; i <= 8 && hf_nfiles[x] < HF_FILES; i++) {
            if (i == 0)
                snprintf(name, sizeof name, "config.json");
            else if (x == 1 && i == 1)
                snprintf(name, sizeof name, "model.safetensors");
            else if (x == 0)
                snprintf(name, sizeof name, "model-%05d-of-00008.safetensors", i);
            else
                continue;
            snprintf(src, sizeof src, "%s/%s/%s", root, fixture[x], name);
            hf_file *f = &hf_base[x][hf_nfiles[x]];
            if (!(f->d = slurp(src, &f->n))) return 0;
            snprintf(f->name, sizeof f->name, "%s", name);
            if (spill(hf_dir[x], name, f->d, f->n)) return 0;
            hf_nfiles[x]++;
        }
        if (x == 0) {
            snprintf(src, sizeof src, "%s/%s/model.safetensors.index.json", root, fixture[x]);
            hf_file *f = &hf_base[x][hf_nfiles[x]];
            if (!(f->d = slurp(src, &f->n))) return 0;
            snprintf(f->name, sizeof f->name, "model.safetensors.index.json");
            if (spill(hf_dir[x], f->name, f->d, f->n)) return 0;
            hf_nfiles[x]++;
        }
    }
    return 1;
}

/* The k-th `"key":` of a JSON text and the span of its value (a string, a scalar, or a
 * bracketed array / object, strings inside skipped): 1 when found. */
static int json_value_span(const char *t, size_t n, unsigned k, size_t *v0, size_t *v1) {
    unsigned seen = 0;
    for (size_t i = 0; i < n; i++) {
        if (t[i] != '"') continue;
        size_t j = i + 1;
        while (j < n && t[j] != '"')
            j += t[j] == '\\' ? 2 : 1;
        if (j >= n) return 0;
        size_t c = j + 1;
        while (c < n && (t[c] == ' ' || t[c] == '\n'))
            c++;
        if (c >= n || t[c] != ':') {
            i = j;
            continue;
        }
        if (seen++ < k) {
            i = j;
            continue;
        }
        size_t a = c + 1;
        while (a < n && (t[a] == ' ' || t[a] == '\n'))
            a++;
        size_t e = a;
        if (a < n && t[a] == '"') {
            e = a + 1;
            while (e < n && t[e] != '"')
                e += t[e] == '\\' ? 2 : 1;
            e++;
        } else if (a < n && (t[a] == '[' || t[a] == '{')) {
            int depth = 0;
            for (e = a; e < n; e++) {
                if (t[e] == '"') {
                    e++;
                    while (e < n && t[e] != '"')
                        e += t[e] == '\\' ? 2 : 1;
                } else if (t[e] == '[' || t[e] == '{') {
                    depth++;
                } else if ((t[e] == ']' || t[e] == '}') && --depth == 0) {
                    e++;
                    break;
                }
            }
        } else {
            while (e < n && t[e] != ',' && t[e] != '}' && t[e] != '\n')
                e++;
        }
        *v0 = a, *v1 = e < n ? e : n;
        return 1;
    }
    return 0;
}

static const char *const hf_values[] = {
    "0",
    "1",
    "2",
    "3",
    "-1",
    "7",
    "64",
    "1024",
    "2147483648",
    "9223372036854775807",
    "-9223372036854775808",
    "1e308",
    "1e-320",
    "-0.0",
    "0.5",
    "1.5",
    "null",
    "true",
    "\"\"",
    "[]",
    "{}",
    "[1, 1, 1]",
    "[\"linear_attention\"]",
    "\"full_attention\"",
    "\"qwen3_5\"",
    "\"qwen3_next\"",
    "\"qwen3_5_moe_text\"",
    "\"yarn\"",
    "{\"rope_type\": \"default\"}",
    "\"model-00002-of-00008.safetensors\"",
    "\"missing.safetensors\"",
    "\"../config.json\"",
    "\"model.safetensors.index.json\"",
    "1e999",
    "[0, 0, 0, 0]",
    "\"silu\"",
};

const char *dn_fuzz_hf(const uint8_t *d, size_t n) {
    if (!hf_setup())
        return "could not copy the checkpoint fixtures (run from the repository root, "
               "or set DN_FUZZ_FIXTURES)";
    const unsigned mode = n ? d[0] : 0, kind = mode & 3;
    const int x = kind == 1 ? 0 : (int)((mode >> 2) & 1);
    /* the file to change: config (0), the index (last file of fixture 0), a weight file */
    int which = 0;
    if (kind == 1) which = hf_nfiles[0] - 1;
    if (kind == 3) {
        const int shards = x == 0 ? hf_nfiles[0] - 2 : 1;
        which = 1 + (n > 1 ? d[1] % shards : 0);
    }
    const hf_file *f = &hf_base[x][which];
    size_t cap = f->n + 64 * 1024 + n, len = f->n;
    uint8_t *buf = malloc(cap);
    memcpy(buf, f->d, f->n);
    if (kind == 2) { /* the input is config.json */
        len = n > 1 ? n - 1 : 0;
        if (len) memcpy(buf, d + 1, len);
    } else if (kind == 3) {
        for (size_t i = 2; i + 2 < n; i += 3) {
            const size_t off = ((size_t)d[i] << 8 | d[i + 1]) * 13 % len;
            buf[off] = d[i + 2];
        }
        if ((mode & 8) && n > 2) len = ((size_t)d[2] << 8 | d[n - 1]) * 7 % (len + 1);
    } else {
        for (size_t i = 1; i + 1 < n; i += 2) {
            size_t v0, v1;
            if (!json_value_span((const char *)buf, len, d[i], &v0, &v1)) continue;
            const char *v = hf_values[d[i + 1] % (sizeof hf_values / sizeof hf_values[0])];
            const size_t vl = strlen(v);
            if (len - (v1 - v0) + vl >= cap) break;
            memmove(buf + v0 + vl, buf + v1, len - v1);
            memcpy(buf + v0, v, vl);
            len = len - (v1 - v0) + vl;
        }
    }
    const char *bad = NULL;
    if (spill(hf_dir[x], f->name, buf, len)) bad = "could not write the changed file";
    dn_model *m = NO_MODEL;
    const dn_status s = bad ? DN_OK : dn_model_load_hf(&m, hf_dir[x]);
    if (!bad && s != DN_OK && m != NO_MODEL) bad = "a failed load wrote the output";
    if (!bad && s == DN_OK) {
        const dn_model_config *c = dn_model_get_config(m);
        if (!c || dn_model_config_check(c) != DN_OK) bad = "a loaded model's config is invalid";
        dn_model_state *st = NULL;
        float *logits = c ? malloc(sizeof(float) * (size_t)c->vocab_size * 3) : NULL;
        const int32_t tok[3] = {0, 1, 2};
        dn_status r = DN_OK;
        if (!bad && logits && c->vocab_size >= 3 && dn_model_state_create(&st, m, 1, 8) == DN_OK) {
            r = dn_model_step(m, st, logits, tok, 3, 0);
            if (r == DN_OK) r = dn_model_step(m, st, logits, tok, 1, 0);
            if (r == DN_OK && kind != 3)
                for (int64_t i = 0; i < c->vocab_size; i++)
                    if (!isfinite(logits[i])) {
                        bad = "a loaded model gave non-finite logits";
                        break;
                    }
            if (r != DN_OK && r != DN_ERR_ALLOC && r != DN_ERR_SHAPE && r != DN_ERR_ARG)
                bad = "a step over a loaded model failed with an unexpected status";
        }
        dn_model_state_free(st);
        free(logits);
        dn_model_free(m);
    }
    if (bad && kind != 3 && getenv("DN_FUZZ_HF_DUMP")) /* triage: the changed JSON file */
        fprintf(stderr, "%s (%s):\n%.*s\n", f->name, bad, (int)len, (const char *)buf);
    spill(hf_dir[x], f->name, f->d, f->n); /* the base again for the next input */
    free(buf);
    return bad;
}
