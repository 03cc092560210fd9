/*
 * test_tokenizer.c - the byte-level BPE tokenizer (src/model/tokenizer.c) against Hugging Face's
 * tokenizers library, through the fixtures tools/make_tokenizer_fixture.py wrote under
 * tests/fixtures/tokenizer (three tokenizers trained like Qwen's, hundreds of strings with the
 * library's ids, pre-tokenizer pieces and decodings); malformed tokenizer files; round trips of
 * random text; allocation failures.
 */
#include "test.h"

#include "../src/model/fileio.h"
#include "../src/model/json.h"
#include "../src/model/tokenizer.h"
#include "../src/model/unicode.h"

#include <time.h>

void dn_free(void *p);

#define FIX "tests/fixtures/tokenizer"
static const char *const TOK_NAMES[] = {"qwen3", "qwen35", "gpt4"};
#define N_TOK 3

static dn_tokenizer *load_named(const char *name) {
    char path[256];
    snprintf(path, sizeof path, FIX "/%s", name);
    dn_tokenizer *t = NULL;
    if (dn_tokenizer_load(&t, path) != DN_OK) {
        printf("    cannot load %s: %s (run the tests from the repository root)\n", path,
               dn_last_error());
        return NULL;
    }
    return t;
}

static int tok_index(const dn_json *c) {
    const dn_json *n = dn_json_get(c, "tokenizer");
    for (int i = 0; i < N_TOK; i++)
        if (n && !strcmp(n->u.str, TOK_NAMES[i])) return i;
    return -1;
}

static dn_json *load_cases(void) {
    dn_json *j = NULL;
    if (dn_json_load(FIX "/cases.json", (size_t)16 << 20, &j) != DN_OK)
        printf("    cannot read " FIX "/cases.json: %s\n", dn_last_error());
    return j;
}

static void show_ids(const char *what, const int32_t *a, int64_t n) {
    printf("      %s:", what);
    for (int64_t i = 0; i < n && i < 40; i++)
        printf(" %d", a[i]);
    printf("%s\n", n > 40 ? " ..." : "");
}

static int same_ids(const dn_json *want, const int32_t *got, int64_t n) {
    if ((int64_t)dn_json_len(want) != n) return 0;
    for (int64_t i = 0; i < n; i++)
        if (dn_json_at(want, (size_t)i)->u.i != got[i]) return 0;
    return 1;
}

static int check_decode(const dn_tokenizer *t, const int32_t *ids, int64_t n, unsigned flags,
                        const dn_json *want, const char *what, size_t idx) {
    char *text = NULL;
    size_t len = 0;
    dn_status st = dn_tokenizer_decode(t, ids, n, flags, &text, &len);
    int bad = st != DN_OK || !want || len != want->len || memcmp(text, want->u.str, len) ||
              text[len] != 0;
    if (bad) {
        char a[64], b[64];
        printf("    FAIL %s case %zu: decode%s gave \"%s\" (%s), tokenizers \"%s\"\n", what, idx,
               flags ? " (skip special)" : "", st ? "error" : dn_json_shown(a, sizeof a, text, len),
               st ? dn_last_error() : "ok",
               want ? dn_json_shown(b, sizeof b, want->u.str, want->len) : "?");
    }
    free(text);
    return bad;
}

/* Every fixture string: the ids, both decodings, and the pre-tokenizer's pieces. */
static int test_tok_fixture(void) {
    int fails = 0;
    dn_json *cases = load_cases();
    dn_tokenizer *tk[N_TOK] = {0};
    for (int i = 0; i < N_TOK; i++)
        if (!(tk[i] = load_named(TOK_NAMES[i]))) fails++;
    if (!cases || fails) {
        dn_json_free(cases);
        for (int i = 0; i < N_TOK; i++)
            dn_tokenizer_free(tk[i]);
        return fails + 1;
    }
    const dn_json *enc = dn_json_get(cases, "encode");
    size_t n_pieces_checked = 0, n_ids = 0;
    for (size_t c = 0; c < dn_json_len(enc) && fails < 20; c++) {
        const dn_json *e = dn_json_at(enc, c), *text = dn_json_get(e, "text");
        const dn_tokenizer *t = tk[tok_index(e)];
        int32_t *ids = NULL;
        int64_t n = -1;
        dn_status st = dn_tokenizer_encode(t, text->u.str, text->len, 0, &ids, &n);
        char sh[64];
        if (st != DN_OK || !same_ids(dn_json_get(e, "ids"), ids, n)) {
            printf("    FAIL case %zu (%s) \"%s\": %s\n", c, dn_json_get(e, "tokenizer")->u.str,
                   dn_json_shown(sh, sizeof sh, text->u.str, text->len),
                   st ? dn_last_error() : "ids differ");
            if (!st) {
                show_ids("got ", ids, n);
                const dn_json *w = dn_json_get(e, "ids");
                int32_t tmp[40];
                for (size_t i = 0; i < w->len && i < 40; i++)
                    tmp[i] = (int32_t)dn_json_at(w, i)->u.i;
                show_ids("want", tmp, (int64_t)w->len);
            }
            fails++;
        }
        n_ids += (size_t)(n > 0 ? n : 0);
        if (!st) {
            fails += check_decode(t, ids, n, 0, dn_json_get(e, "decoded"), "encode", c);
            fails += check_decode(t, ids, n, DN_TOK_SKIP_SPECIAL, dn_json_get(e, "decoded_skip"),
                                  "encode", c);
        }
        free(ids);
        const dn_json *pieces = dn_json_get(e, "pieces");
        if (pieces) {
            /* the split runs on the normalized text: normalize as the tokenizer does */
            uint8_t *norm = NULL;
            size_t nn = 0, *ends = NULL, np = 0;
            if (t == tk[2]) { /* no normalizer */
                norm = malloc(text->len + 1);
                memcpy(norm, text->u.str, text->len + 1);
                nn = text->len;
            } else if (dn_nfc((const uint8_t *)text->u.str, text->len, &norm, &nn) != DN_OK) {
                norm = NULL;
            }
            if (!norm || dn_tokenizer_split(t, (const char *)norm, nn, &ends, &np) != DN_OK) {
                printf("    FAIL case %zu: split failed: %s\n", c, dn_last_error());
                fails++;
            } else {
                int bad = np != pieces->len;
                size_t at = 0;
                for (size_t i = 0; !bad && i < np; i++) {
                    const dn_json *p = dn_json_at(pieces, i);
                    bad = ends[i] - at != p->len || memcmp(norm + at, p->u.str, p->len);
                    at = ends[i];
                }
                if (bad) {
                    printf("    FAIL case %zu \"%s\": %zu pieces, tokenizers has %zu; first "
                           "difference:",
                           c, dn_json_shown(sh, sizeof sh, text->u.str, text->len), np,
                           pieces->len);
                    at = 0;
                    for (size_t i = 0; i < np && i < pieces->len; i++) {
                        const dn_json *p = dn_json_at(pieces, i);
                        if (ends[i] - at != p->len || memcmp(norm + at, p->u.str, p->len)) {
                            char g[64], w[64];
                            printf(
                                " piece %zu \"%s\" vs \"%s\"", i,
                                dn_json_shown(g, sizeof g, (const char *)norm + at, ends[i] - at),
                                dn_json_shown(w, sizeof w, p->u.str, p->len));
                            break;
                        }
                        at = ends[i];
                    }
                    printf("\n");
                    fails++;
                }
                n_pieces_checked++;
            }
            free(norm);
            dn_free(ends);
        }
    }
    const dn_json *dec = dn_json_get(cases, "decode");
    for (size_t c = 0; c < dn_json_len(dec); c++) {
        const dn_json *e = dn_json_at(dec, c), *w = dn_json_get(e, "ids");
        int32_t ids[64];
        int64_t n = (int64_t)w->len;
        for (int64_t i = 0; i < n && i < 64; i++)
            ids[i] = (int32_t)dn_json_at(w, (size_t)i)->u.i;
        fails += check_decode(tk[tok_index(e)], ids, n, 0, dn_json_get(e, "decoded"), "decode", c);
        fails += check_decode(tk[tok_index(e)], ids, n, DN_TOK_SKIP_SPECIAL,
                              dn_json_get(e, "decoded_skip"), "decode", c);
    }
    printf("    %zu strings (%zu ids, %zu piece lists), %zu decodings agree with tokenizers %s\n",
           dn_json_len(enc), n_ids, n_pieces_checked, dn_json_len(dec),
           dn_json_get(cases, "tokenizers_version")->u.str);
    dn_json_free(cases);
    for (int i = 0; i < N_TOK; i++)
        dn_tokenizer_free(tk[i]);
    return fails;
}

/* NFC of every code point with a canonical decomposition (both forms), marks out of order,
 * blocked pairs and Hangul, against tokenizers' NFC normalizer (tests/fixtures/tokenizer/nfc.json;
 * dn_nfc also leaves alone what tokenizers' older Unicode data does not know). */
static int test_tok_nfc(void) {
    int fails = 0;
    dn_json *j = NULL;
    if (dn_json_load(FIX "/nfc.json", (size_t)16 << 20, &j) != DN_OK) {
        printf("    cannot read " FIX "/nfc.json: %s\n", dn_last_error());
        return 1;
    }
    const dn_json *cases = dn_json_get(j, "cases");
    for (size_t c = 0; c < dn_json_len(cases) && fails < 10; c++) {
        const dn_json *in = dn_json_at(dn_json_at(cases, c), 0),
                      *want = dn_json_at(dn_json_at(cases, c), 1);
        uint8_t *out = NULL;
        size_t n = 0;
        dn_status st = dn_nfc((const uint8_t *)in->u.str, in->len, &out, &n);
        if (st || n != want->len || memcmp(out, want->u.str, n)) {
            char a[64], b[64], g[64];
            printf("    FAIL NFC of \"%s\": \"%s\", tokenizers \"%s\"\n",
                   dn_json_shown(a, sizeof a, in->u.str, in->len),
                   st ? "error" : dn_json_shown(g, sizeof g, (const char *)out, n),
                   dn_json_shown(b, sizeof b, want->u.str, want->len));
            fails++;
        }
        dn_free(out);
    }
    printf("    %zu texts normalized as tokenizers does (classes: Unicode %s, NFC: Unicode %s)\n",
           dn_json_len(cases), dn_uc_version(), dn_uc_nfc_version());
    dn_json_free(j);
    return fails;
}

/* The exhaustive class check, when DN_TOK_PROBE names the folder that
 * `tools/make_tokenizer_fixture.py --probe DIR` wrote (every code point, 2 x 60 MB). */
static int test_tok_probe(void) {
    const char *dir = getenv("DN_TOK_PROBE");
    if (!dir || !*dir) {
        printf("    (DN_TOK_PROBE unset: the exhaustive class check is skipped)\n");
        return 0;
    }
    int fails = 0;
    for (int k = 0; k < 2; k++) {
        char path[512];
        snprintf(path, sizeof path, "%s/probe_%s.json", dir, TOK_NAMES[k]);
        dn_json *j = NULL;
        dn_tokenizer *t = load_named(TOK_NAMES[k]);
        if (!t || dn_json_load(path, (size_t)1 << 30, &j) != DN_OK) {
            printf("    FAIL cannot read %s: %s\n", path, dn_last_error());
            dn_tokenizer_free(t);
            return fails + 1;
        }
        const dn_json *tx = dn_json_get(j, "texts"), *pc = dn_json_get(j, "piece_bytes");
        size_t bad = 0;
        for (size_t i = 0; i < dn_json_len(tx); i++) {
            const dn_json *s = dn_json_at(tx, i), *w = dn_json_at(pc, i);
            size_t *e = NULL, n = 0, at = 0, p = 0;
            if (dn_tokenizer_split(t, s->u.str, s->len, &e, &n) != DN_OK) n = 0;
            for (; p < n && p < w->len && e[p] - at == (size_t)dn_json_at(w, p)->u.i; p++)
                at = e[p];
            if (p < n || n != w->len) {
                if (bad++ < 5) {
                    uint32_t cp = 0;
                    dn_utf8_next((const uint8_t *)s->u.str + at + (at ? 1 : 0), 4, &cp);
                    printf("    FAIL %s: text %zu splits differently at byte %zu (near U+%04X)\n",
                           TOK_NAMES[k], i, at, (unsigned)cp);
                }
            }
            dn_free(e);
        }
        printf("    %s: %zu texts, %zu split differently from tokenizers\n", TOK_NAMES[k],
               dn_json_len(tx), bad);
        fails += bad > 0;
        dn_json_free(j);
        dn_tokenizer_free(t);
    }
    return fails;
}

/* ChatML prompts, the config's tokens and the lookups. */
static int test_tok_chat(void) {
    int fails = 0;
    dn_json *cases = load_cases();
    dn_tokenizer *t = load_named("qwen3"), *t2 = load_named("gpt4");
    if (!cases || !t || !t2) {
        dn_json_free(cases);
        dn_tokenizer_free(t);
        dn_tokenizer_free(t2);
        return 1;
    }
    const dn_json *chat = dn_json_get(cases, "chat");
    for (size_t c = 0; c < dn_json_len(chat); c++) {
        const dn_json *e = dn_json_at(chat, c), *ms = dn_json_get(e, "messages");
        dn_chat_message m[8];
        int64_t n = (int64_t)ms->len;
        for (int64_t i = 0; i < n; i++) {
            m[i].role = dn_json_get(dn_json_at(ms, (size_t)i), "role")->u.str;
            m[i].content = dn_json_get(dn_json_at(ms, (size_t)i), "content")->u.str;
        }
        int gen = dn_json_get(e, "add_generation_prompt")->boolean;
        char *text = NULL;
        size_t len = 0;
        const dn_json *want_text = dn_json_get(e, "text");
        CHECK(dn_chat_format(m, n, gen, &text, &len) == DN_OK && len == want_text->len &&
                  !memcmp(text, want_text->u.str, len),
              "chat case %zu: formatted text differs", c);
        free(text);
        int32_t *ids = NULL;
        int64_t ni = 0;
        dn_status st = dn_tokenizer_chat(t, m, n, gen, &ids, &ni);
        CHECK(st == DN_OK && same_ids(dn_json_get(e, "ids"), ids, ni),
              "chat case %zu: ids differ (%s)", c, st ? dn_last_error() : "");
        free(ids);
    }
    /* a special token's text inside a message stays text */
    dn_chat_message inj = {"user", "<|im_end|>"};
    int32_t *ids = NULL;
    int64_t ni = 0;
    CHECK(dn_tokenizer_chat(t, &inj, 1, 0, &ids, &ni) == DN_OK, "chat: %s", dn_last_error());
    int n_end = 0;
    for (int64_t i = 0; i < ni; i++)
        n_end += ids[i] == dn_tokenizer_token_id(t, "<|im_end|>");
    CHECK(n_end == 1, "chat: <|im_end|> in a message became the special token (%d of them)", n_end);
    free(ids);
    /* the config and the lookups */
    CHECK(dn_tokenizer_eos_id(t) == dn_tokenizer_token_id(t, "<|im_end|>") &&
              dn_tokenizer_eos_id(t) >= 0,
          "eos_token");
    CHECK(dn_tokenizer_bos_id(t) == -1, "bos_token is null");
    CHECK(dn_tokenizer_is_special(t, dn_tokenizer_token_id(t, "<|endoftext|>")), "special");
    CHECK(!dn_tokenizer_is_special(t, dn_tokenizer_token_id(t, "<think>")),
          "<think> is not special");
    int32_t sp = dn_tokenizer_token_id(t, "\xc4\xa0"); /* "Ġ", the space byte */
    const char *b = NULL;
    size_t bn = 0;
    CHECK(sp >= 0 && dn_tokenizer_token_bytes(t, sp, &b, &bn) == DN_OK && bn == 1 && b[0] == ' ',
          "token bytes of the space");
    CHECK(dn_tokenizer_token_str(t, sp) && !strcmp(dn_tokenizer_token_str(t, sp), "\xc4\xa0"),
          "token string");
    CHECK(dn_tokenizer_token_str(t, -1) == NULL && dn_tokenizer_token_str(t, 1 << 30) == NULL,
          "token_str out of range");
    CHECK(dn_tokenizer_token_bytes(t, (int32_t)dn_tokenizer_vocab_size(t), &b, &bn) == DN_ERR_ARG,
          "token_bytes out of range");
    /* no ChatML markers: chat is unsupported (gpt4 fixture has no config but has the tokens) */
    CHECK(dn_tokenizer_chat(t2, &inj, 1, 1, &ids, &ni) == DN_OK, "chat on gpt4: %s",
          dn_last_error());
    free(ids);
    dn_json_free(cases);
    dn_tokenizer_free(t);
    dn_tokenizer_free(t2);
    return fails;
}

/* ---- malformed files ---- */

static char *read_all(const char *path, size_t *n) {
    char *s = NULL;
    if (dn_file_read(path, (size_t)64 << 20, &s, n) != DN_OK) return NULL;
    return s;
}

/* text with the first occurrence of from replaced by to (a new malloc string), NULL if absent */
static char *replaced(const char *text, const char *from, const char *to) {
    const char *at = strstr(text, from);
    if (!at) return NULL;
    size_t n = strlen(text), lf = strlen(from), lt = strlen(to);
    char *o = malloc(n - lf + lt + 1);
    memcpy(o, text, (size_t)(at - text));
    memcpy(o + (at - text), to, lt);
    memcpy(o + (at - text) + lt, at + lf, n - (size_t)(at - text) - lf + 1);
    return o;
}

static int test_tok_malformed(void) {
    int fails = 0;
    size_t n = 0;
    char *base = read_all(FIX "/qwen3/tokenizer.json", &n);
    if (!base) {
        printf("    cannot read the fixture: %s\n", dn_last_error());
        return 1;
    }
    dn_tokenizer *t = NULL;
    /* the ids of <think> and </think> as the file writes them */
    char think[32], end_think[32];
    CHECK(dn_tokenizer_parse(&t, base, n, NULL, 0) == DN_OK, "base: %s", dn_last_error());
    snprintf(think, sizeof think, "\"id\":%d", dn_tokenizer_token_id(t, "<think>"));
    snprintf(end_think, sizeof end_think, "\"id\":%d", dn_tokenizer_token_id(t, "</think>"));
    dn_tokenizer_free(t);
    const struct {
        const char *from, *to, *what;
    } edits[] = {
        {"\"type\":\"NFC\"", "\"type\":\"NFKC\"", "normalizer"},
        {"\"type\":\"BPE\"", "\"type\":\"WordPiece\"", "model"},
        {"\"behavior\":\"Isolated\"", "\"behavior\":\"Removed\"", "behavior"},
        {"\"invert\":false", "\"invert\":true", "invert"},
        {"\\\\p{N}|", "\\\\p{N}+|", "pattern"},
        {"\"use_regex\":false", "\"use_regex\":true", "use_regex"},
        {"\"byte_fallback\":false", "\"byte_fallback\":true", "byte_fallback"},
        {"\"decoder\":{\"type\":\"ByteLevel\"", "\"decoder\":{\"type\":\"Metaspace\"", "decoder"},
        {"\"post_processor\":{\"type\":\"ByteLevel\"",
         "\"post_processor\":{\"type\":\"TemplateProcessing\"", "post_processor"},
        {"\"merges\":[[\"a\",\"a\"]", "\"merges\":[[\"a\",\"zzzzqqq\"]",
         "merge of an unknown token"},
        {"\"merges\":[[\"a\",\"a\"]", "\"merges\":[[\"a\",\"\xc4\x80\"]",
         "merge into an unknown token"},
        {"\"merges\":[[\"a\",\"a\"]", "\"merges\":[\"a a a\"", "merge of three"},
        {"\"merges\":[[\"a\",\"a\"]", "\"merges\":[\"aa\"", "merge without a space"},
        {"\"merges\":[[\"a\",\"a\"]", "\"merges\":[7", "merge that is a number"},
        {"\"merges\":[[\"a\",\"a\"]", "\"merges\":[[\"a\"]", "merge of one"},
        {"\"<|endoftext|>\":0", "\"<|endoftext|>\":-1", "negative id"},
        {"\"<|endoftext|>\":0", "\"<|endoftext|>\":99999999", "id out of range"},
        {"\"<|endoftext|>\":0", "\"<|endoftext|>\":0.5", "fractional id"},
        {"\"<|endoftext|>\":0", "\"<|endoftext|>\":\"0\"", "id as a string"},
        {"\"<|endoftext|>\":0", "\"<|endoftext|>\":1", "duplicate id"},
        {think, "\"id\":5", "added token on a vocabulary id"},
        {think, end_think, "added tokens sharing an id"},
        {"\"lstrip\":false", "\"lstrip\":true", "lstrip"},
        {"\"content\":\"<think>\"", "\"content\":\"\"", "empty added token"},
        {"\"content\":\"<think>\"", "\"content\":\"</think>\"", "added token twice"},
        {"\"!\":", "\"!!!!unused\":", "missing byte token"},
        {"\"vocab\":{", "\"vocab\":[", "vocab not an object"},
        {"\"model\":{", "\"model\":{\"x\":{},\"y\":[", "broken JSON"},
    };
    for (size_t i = 0; i < sizeof edits / sizeof edits[0]; i++) {
        char *m = replaced(base, edits[i].from, edits[i].to);
        if (!m) {
            printf("    FAIL edit \"%s\": the fixture has no %s\n", edits[i].what, edits[i].from);
            fails++;
            continue;
        }
        t = (dn_tokenizer *)(uintptr_t)0x5a5a;
        dn_status st = dn_tokenizer_parse(&t, m, strlen(m), NULL, 0);
        CHECK(st == DN_ERR_FORMAT && t == (dn_tokenizer *)(uintptr_t)0x5a5a,
              "%s: status %s, not a format error", edits[i].what, dn_status_str(st));
        if (st != DN_OK && getenv("DN_TEST_VERBOSE"))
            printf("      %s: %s\n", edits[i].what, dn_last_error());
        if (st == DN_OK) dn_tokenizer_free(t);
        free(m);
    }
    /* truncations: every cut is a JSON error */
    for (size_t cut = 0; cut < n; cut += n / 97 + 1) {
        t = NULL;
        CHECK(dn_tokenizer_parse(&t, base, cut, NULL, 0) == DN_ERR_FORMAT && !t, "truncated at %zu",
              cut);
    }
    /* configs */
    const char *bad_cfgs[] = {"[]", "{\"eos_token\": \"<|nope|>\"}", "{\"eos_token\": 3}",
                              "{\"bos_token\": {\"x\": 1}}", "{"};
    for (size_t i = 0; i < sizeof bad_cfgs / sizeof bad_cfgs[0]; i++) {
        t = NULL;
        CHECK(dn_tokenizer_parse(&t, base, n, bad_cfgs[i], strlen(bad_cfgs[i])) == DN_ERR_FORMAT &&
                  !t,
              "config %s accepted", bad_cfgs[i]);
    }
    const char *cfg =
        "{\"eos_token\": {\"content\": \"<|endoftext|>\"}, \"chat_template\": \"{{x}}\"}";
    CHECK(dn_tokenizer_parse(&t, base, n, cfg, strlen(cfg)) == DN_OK, "config object: %s",
          dn_last_error());
    if (t) {
        CHECK(dn_tokenizer_eos_id(t) == dn_tokenizer_token_id(t, "<|endoftext|>"),
              "eos from an object");
        dn_chat_message m = {"user", "x"};
        int32_t *ids = NULL;
        int64_t ni;
        CHECK(dn_tokenizer_chat(t, &m, 1, 1, &ids, &ni) == DN_ERR_UNSUPPORTED && !ids,
              "chat with a template that is not ChatML");
        dn_tokenizer_free(t);
    }
    /* arguments */
    CHECK(dn_tokenizer_load(&t, "/nonexistent/dir") == DN_ERR_IO, "missing file: %s",
          dn_last_error());
    CHECK(dn_tokenizer_load(NULL, FIX "/qwen3") == DN_ERR_NULL, "NULL out");
    dn_tokenizer_free(NULL);
    free(base);
    return fails;
}

/* ---- properties on random text ---- */

static size_t random_text(rng *r, char *buf, size_t cap) {
    static const uint32_t pool[] = {' ',    ' ',    ' ',    '\n',   '\r',    '\t',   '\'',   's',
                                    'S',    'l',    'L',    'e',    'a',     'Z',    '0',    '7',
                                    '!',    '.',    '-',    0xE9,   0x301,   0x308,  0x300,  0x4E2D,
                                    0xAC00, 0x1100, 0x1161, 0x11A8, 0x1F600, 0x200D, 0x3000, 0xA0,
                                    0x17F,  0x0915, 0x093C, 0x1E0A, 0x323,   0x212B};
    size_t n = 0, len = rng_next(r) % 60;
    for (size_t i = 0; i < len && n + 4 < cap; i++) {
        uint32_t c;
        uint64_t k = rng_next(r) % 10;
        if (k < 7)
            c = pool[rng_next(r) % (sizeof pool / sizeof pool[0])];
        else if (k < 9)
            c = 0x20 + (uint32_t)(rng_next(r) % 0x3000);
        else
            c = (uint32_t)(rng_next(r) % 0x110000);
        if (c >= 0xD800 && c <= 0xDFFF) c = 'x';
        n += (size_t)dn_utf8_put((uint8_t *)buf + n, c);
    }
    return n;
}

/* decode(encode(x)) is NFC(x) (x itself without a normalizer); invalid UTF-8 is an error; a long
 * word is linear, not quadratic. */
static int test_tok_roundtrip(void) {
    int fails = 0;
    dn_tokenizer *tk[N_TOK] = {0};
    for (int i = 0; i < N_TOK; i++)
        if (!(tk[i] = load_named(TOK_NAMES[i]))) fails++;
    if (fails) goto done;
    rng r = {0x70c};
    char buf[512];
    for (int it = 0; it < 3000 && fails < 10; it++) {
        const dn_tokenizer *t = tk[it % N_TOK];
        size_t n = random_text(&r, buf, sizeof buf);
        int32_t *ids = NULL;
        int64_t ni = 0;
        char *back = NULL;
        size_t bl = 0;
        uint8_t *want = NULL;
        size_t wn = 0;
        if (it % N_TOK == 2) {
            want = malloc(n + 1);
            memcpy(want, buf, n);
            wn = n;
        } else if (dn_nfc((const uint8_t *)buf, n, &want, &wn) != DN_OK) {
            fails++;
            continue;
        }
        dn_status st = dn_tokenizer_encode(t, buf, n, 0, &ids, &ni);
        if (!st) st = dn_tokenizer_decode(t, ids, ni, 0, &back, &bl);
        if (st || bl != wn || memcmp(back, want, wn)) {
            char a[64];
            printf("    FAIL round trip of \"%s\" (%s)\n", dn_json_shown(a, sizeof a, buf, n),
                   st ? dn_last_error() : "differs");
            fails++;
        }
        free(ids);
        free(back);
        free(want);
    }
    /* invalid UTF-8 */
    const char *bad[] = {"\xff", "a\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "abc\xe4\xb8"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int32_t *ids = (int32_t *)(uintptr_t)0x5a5a;
        int64_t ni = -7;
        CHECK(dn_tokenizer_encode(tk[0], bad[i], strlen(bad[i]), 0, &ids, &ni) == DN_ERR_ARG &&
                  ids == (int32_t *)(uintptr_t)0x5a5a && ni == -7,
              "invalid UTF-8 %zu accepted", i);
    }
    int32_t *ids = NULL;
    int64_t ni = 0;
    CHECK(dn_tokenizer_encode(tk[0], "", 0, 0, &ids, &ni) == DN_OK && ni == 0 && ids, "empty text");
    free(ids);
    CHECK(dn_tokenizer_encode(tk[0], "x", 1, 8, &ids, &ni) == DN_ERR_ARG, "unknown flag");
    int32_t badid = -1;
    char *txt = NULL;
    size_t tl;
    CHECK(dn_tokenizer_decode(tk[0], &badid, 1, 0, &txt, &tl) == DN_ERR_ARG && !txt,
          "decode of -1");
    /* NO_SPECIAL: the special token's text is encoded as text */
    const char *s = "<|endoftext|>";
    CHECK(dn_tokenizer_encode(tk[0], s, strlen(s), DN_TOK_NO_SPECIAL, &ids, &ni) == DN_OK && ni > 1,
          "NO_SPECIAL still matched the special token");
    free(ids);
    /* speed: a word of 200k letters and 200k spaces, merged through the heap */
    size_t big = 400000;
    char *w = malloc(big);
    for (size_t i = 0; i < big; i++)
        w[i] = i < big / 2 ? "ab"[rng_next(&r) % 2] : ' ';
    clock_t c0 = clock();
    dn_status st = dn_tokenizer_encode(tk[0], w, big, 0, &ids, &ni);
    double sec = (double)(clock() - c0) / CLOCKS_PER_SEC;
    CHECK(st == DN_OK && sec < 5, "a 400 kB word took %.2f s (%s)", sec, st ? dn_last_error() : "");
    if (!st) {
        char *back = NULL;
        size_t bl = 0;
        CHECK(dn_tokenizer_decode(tk[0], ids, ni, 0, &back, &bl) == DN_OK && bl == big &&
                  !memcmp(back, w, big),
              "long round trip");
        free(back);
        printf("    400 kB word + spaces: %lld ids in %.3f s\n", (long long)ni, sec);
    }
    free(ids);
    free(w);
done:
    for (int i = 0; i < N_TOK; i++)
        dn_tokenizer_free(tk[i]);
    return fails;
}

/* Every allocation of a load and of an encode failing in turn: DN_ERR_ALLOC, nothing returned
 * (the SAN build checks that nothing leaks). */
void dn_fault_fail_alloc_after(long n);
static int test_tok_alloc(void) {
    int fails = 0;
    size_t n = 0;
    char *base = read_all(FIX "/qwen3/tokenizer.json", &n);
    if (!base) return 1;
    long k;
    dn_tokenizer *t = NULL;
    for (k = 0; k < 200; k++) {
        t = NULL;
        dn_fault_fail_alloc_after(k);
        dn_status st = dn_tokenizer_parse(&t, base, n, "{}", 2);
        dn_fault_fail_alloc_after(-1);
        if (st == DN_OK) break;
        CHECK(st == DN_ERR_ALLOC && !t, "parse with allocation %ld failing: %s", k,
              dn_status_str(st));
    }
    CHECK(t != NULL, "parse never succeeded");
    const char *text = "Caf\xc3\xa9 cafe\xcc\x81 <|im_start|>x<think>\n  y 12345 \xf0\x9f\x98\x80";
    long e;
    for (e = 0; t && e < 100; e++) {
        int32_t *ids = (int32_t *)(uintptr_t)0x5a5a;
        int64_t ni = -3;
        dn_fault_fail_alloc_after(e);
        dn_status st = dn_tokenizer_encode(t, text, strlen(text), 0, &ids, &ni);
        dn_fault_fail_alloc_after(-1);
        if (st == DN_OK) {
            free(ids);
            break;
        }
        CHECK(st == DN_ERR_ALLOC && ids == (int32_t *)(uintptr_t)0x5a5a && ni == -3,
              "encode with allocation %ld failing", e);
    }
    printf("    load reached %ld allocations, encode %ld\n", k, e);
    dn_tokenizer_free(t);
    free(base);
    return fails;
}

const test_case dn_tests_tokenizer[] = {
    {"tok_fixture", test_tok_fixture},     {"tok_nfc", test_tok_nfc},
    {"tok_probe", test_tok_probe},         {"tok_chat", test_tok_chat},
    {"tok_malformed", test_tok_malformed}, {"tok_roundtrip", test_tok_roundtrip},
    {"tok_alloc", test_tok_alloc},         {NULL, NULL},
};
