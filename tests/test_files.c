/*
 * test_files.c - the model layer's file formats: the strict JSON reader and writer
 * (src/model/json.c), safetensors files and shard indexes (src/model/safetensors.c), atomic
 * writes (src/model/fileio.c).
 *
 * Every malformed input must be DN_ERR_FORMAT with a message and no result; every allocation
 * failure DN_ERR_ALLOC with nothing leaked (the SAN build's LeakSanitizer checks that part);
 * every failed write must leave the target byte-identical and no temporary behind. A seeded
 * random mutation loop over valid safetensors files checks that whatever the parser accepts
 * lies inside the buffer.
 */
#include "test.h"

#include "../src/model/fileio.h"
#include "../src/model/json.h"
#include "../src/model/safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <locale.h>
#include <sys/stat.h>
#include <unistd.h>

/* src/mem.c (internal.h is not the tests' header) */
void dn_free(void *p);
long dn_fault_alloc_count(void);

/* ======================================================================================== */
/* helpers                                                                                    */
/* ======================================================================================== */

static dn_json *const SENTINEL = (dn_json *)(uintptr_t)0x5a5a5a5a;

static char tmp_root[256];
static void rm_tree(const char *path);
static void tmp_cleanup(void) { rm_tree(tmp_root); }

/* A fresh directory under $TMPDIR (or /tmp) for this run's files, removed at exit. */
static const char *tmpdir(void) {
    if (!tmp_root[0]) {
        const char *t = getenv("TMPDIR");
        snprintf(tmp_root, sizeof tmp_root, "%s/dn_test_files.XXXXXX", t && *t ? t : "/tmp");
        if (!mkdtemp(tmp_root)) {
            printf("    cannot create a temporary directory: %s\n", strerror(errno));
            exit(2);
        }
        atexit(tmp_cleanup);
    }
    return tmp_root;
}

static void rm_tree(const char *path) {
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        char p[512];
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
                snprintf(p, sizeof p, "%s/%s", path, e->d_name);
                rm_tree(p);
            }
        closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

/* The names in dir, sorted and joined by '|', into buf. */
static const char *listing(const char *dir, char *buf, size_t cap) {
    char names[32][128];
    int n = 0;
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && n < 32)
            snprintf(names[n++], sizeof names[0], "%.127s", e->d_name);
    if (d) closedir(d);
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && strcmp(names[j], names[j - 1]) < 0; j--) {
            char t[128];
            memcpy(t, names[j], sizeof t);
            memcpy(names[j], names[j - 1], sizeof t);
            memcpy(names[j - 1], t, sizeof t);
        }
    size_t o = 0;
    buf[0] = 0;
    for (int i = 0; i < n && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%s", i ? "|" : "", names[i]);
    return buf;
}

static int write_file(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    int ok = fwrite(p, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

/* Whether the file at path holds exactly p[0..n). */
static int file_is(const char *path, const void *p, size_t n) {
    char *got;
    size_t len;
    if (dn_file_read(path, (size_t)1 << 30, &got, &len) != DN_OK) return 0;
    int same = len == n && !memcmp(got, p, n);
    dn_free(got);
    return same;
}

/* ======================================================================================== */
/* JSON                                                                                       */
/* ======================================================================================== */

static const struct {
    const char *in, *canon; /* canon: the tree written back by dn_jw */
} json_valid[] = {
    {"null", "null"},
    {" true ", "true"},
    {"false", "false"},
    {"0", "0"},
    {"-0", "-0"},
    {"-0.0", "-0"},
    {"1.5", "1.5"},
    {"1E2", "100"},
    {"1e-2", "0.01"},
    {"0.1", "0.1"},
    {"-12.5e+3", "-12500"},
    {"9223372036854775807", "9223372036854775807"},
    {"-9223372036854775808", "-9223372036854775808"},
    {"9223372036854775808", "9.223372036854776e+18"},
    {"1e308", "1e+308"},
    {"1e-400", "0"},
    {"\"\"", "\"\""},
    {"\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\"", "\"a\\\"b\\\\c/d\\b\\f\\n\\r\\t\""},
    {"\"\\u00e9\\u20AC\\ud83d\\ude00\"", "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\""},
    {"\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf\"",
     "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf\""},
    {"\"\\u0000x\"", "\"\\u0000x\""},
    {"\"\\u001F\\u007f\"", "\"\\u001f\x7f\""},
    {"[]", "[]"},
    {"{}", "{}"},
    {" [ 1 , [ ] , { } ] ", "[1,[],{}]"},
    {"{\"b\":1,\"a\":{\"c\":[true,false,null]}}", "{\"b\":1,\"a\":{\"c\":[true,false,null]}}"},
    {"{\"\":0,\"\\u0000\":1}", "{\"\":0,\"\\u0000\":1}"},
    {"\t\r\n 1 \n", "1"},
    {"[[[[[[[[[[1]]]]]]]]]]", "[[[[[[[[[[1]]]]]]]]]]"},
};

static const struct {
    const char *in, *why;
    int line, col; /* where the message must point (0: not checked) */
} json_invalid[] = {
    {"", "empty", 1, 1},
    {"   ", "only whitespace", 0, 0},
    {"[1,]", "trailing comma in an array", 1, 4},
    {"{\"a\":1,}", "trailing comma in an object", 1, 8},
    {"[1,\n 2,\n]", "trailing comma, third line", 3, 1},
    {"[01]", "leading zero", 1, 2},
    {"-01", "leading zero after -", 0, 0},
    {"00", "two zeros", 0, 0},
    {"1.", "no digit after .", 0, 0},
    {".5", "no digit before .", 0, 0},
    {"1e", "no exponent digits", 0, 0},
    {"1e+", "no exponent digits after the sign", 0, 0},
    {"+1", "plus sign", 0, 0},
    {"-", "a lone minus", 0, 0},
    {"0x10", "hex", 0, 0},
    {"1_000", "digit separator", 0, 0},
    {"[1 2]", "missing comma", 0, 0},
    {"[1,,2]", "double comma", 0, 0},
    {"[,1]", "leading comma", 0, 0},
    {"{,}", "comma in an empty object", 0, 0},
    {"{\"a\" 1}", "missing colon", 0, 0},
    {"{a:1}", "unquoted key", 0, 0},
    {"{'a':1}", "single quotes", 0, 0},
    {"{1:1}", "number key", 0, 0},
    {"\"abc", "unterminated string", 1, 1},
    {"[\"abc]", "unterminated string in an array", 0, 0},
    {"\"ab\\\"", "escaped closing quote", 0, 0},
    {"[1,2", "unterminated array", 0, 0},
    {"{\"a\":1", "unterminated object", 0, 0},
    {"{\"a\"", "unterminated object after a key", 0, 0},
    {"{\"a\":", "no value after the colon", 0, 0},
    {"[\"a\\x\"]", "invalid escape", 1, 4},
    {"\"\\U0041\"", "capital U escape", 0, 0},
    {"\"\\u12\"", "short \\u escape", 0, 0},
    {"\"\\u12G4\"", "non-hex \\u escape", 0, 0},
    {"\"\\uD800\"", "lone high surrogate", 0, 0},
    {"\"\\uDC00\"", "lone low surrogate", 0, 0},
    {"\"\\uD800\\u0041\"", "high surrogate before a non-surrogate", 0, 0},
    {"\"\\uD800\\uD800\"", "two high surrogates", 0, 0},
    {"\"\x01\"", "raw control character", 1, 2},
    {"\"\t\"", "raw tab", 0, 0},
    {"\"a\nb\"", "raw newline", 0, 0},
    {"\"\xff\"", "byte 0xFF", 0, 0},
    {"\"\x80\"", "lone continuation byte", 0, 0},
    {"\"\xc0\xaf\"", "overlong encoding", 0, 0},
    {"\"\xe0\x80\xaf\"", "overlong 3-byte encoding", 0, 0},
    {"\"\xed\xa0\x80\"", "encoded surrogate", 0, 0},
    {"\"\xf4\x90\x80\x80\"", "past U+10FFFF", 0, 0},
    {"\"\xe2\x82\"", "truncated sequence", 0, 0},
    {"\"\xc3\"", "truncated 2-byte sequence before the quote", 0, 0},
    {"NaN", "NaN", 0, 0},
    {"Infinity", "Infinity", 0, 0},
    {"-Infinity", "-Infinity", 0, 0},
    {"[nan]", "nan", 0, 0},
    {"nul", "short null", 0, 0},
    {"tru", "short true", 0, 0},
    {"True", "capital True", 0, 0},
    {"[1]x", "garbage after the value", 1, 4},
    {"{} {}", "two values", 0, 0},
    {"1 2", "two numbers", 0, 0},
    {"{\"a\":1,\"a\":2}", "duplicate key", 1, 8},
    {"{\"a\":{\"b\":1,\"b\":1}}", "nested duplicate key", 0, 0},
    {"//c\n1", "line comment", 0, 0},
    {"/*c*/1", "block comment", 0, 0},
    {"\xef\xbb\xbf{}", "byte-order mark", 0, 0},
    {"1e400", "overflow to +inf", 0, 0},
    {"-1e400", "overflow to -inf", 0, 0},
    {"[1]\x01", "control byte after the value", 0, 0},
    {"\xc3\xa9", "UTF-8 outside a string", 0, 0},
};

static int test_json_valid(void) {
    int fails = 0;
    for (size_t c = 0; c < sizeof json_valid / sizeof json_valid[0]; c++) {
        const char *in = json_valid[c].in;
        dn_json *v = NULL;
        dn_status st = dn_json_parse(in, strlen(in), &v);
        CHECK(st == DN_OK, "valid %s: %s", in, dn_last_error());
        if (st) continue;
        dn_jw w;
        dn_jw_init(&w);
        dn_jw_value(&w, v);
        CHECK(dn_jw_finish(&w) == DN_OK && !strcmp(w.buf, json_valid[c].canon),
              "%s written back as %s, expected %s", in, w.buf ? w.buf : "(null)",
              json_valid[c].canon);
        dn_jw_free(&w);
        dn_json_free(v);
    }
    /* an input that is not NUL-terminated: only n bytes are read */
    char raw[4] = {'[', '7', ']', '!'};
    dn_json *v = NULL;
    CHECK(dn_json_parse(raw, 3, &v) == DN_OK && v->len == 1 && v->u.items[0].u.i == 7,
          "parse of 3 bytes of a longer buffer");
    dn_json_free(v);
    /* 128 levels pass, 129 fail */
    char deep[2 * DN_JSON_MAX_DEPTH + 4];
    for (int d = DN_JSON_MAX_DEPTH; d <= DN_JSON_MAX_DEPTH + 1; d++) {
        int n = 0;
        for (int i = 0; i < d; i++)
            deep[n++] = '[';
        for (int i = 0; i < d; i++)
            deep[n++] = ']';
        v = SENTINEL;
        dn_status st = dn_json_parse(deep, (size_t)n, &v);
        if (d == DN_JSON_MAX_DEPTH)
            CHECK(st == DN_OK, "nesting %d: %s", d, dn_last_error());
        else
            CHECK(st == DN_ERR_FORMAT && v == SENTINEL && strstr(dn_last_error(), "nesting"),
                  "nesting %d accepted (%s)", d, dn_last_error());
        if (st == DN_OK) dn_json_free(v);
    }
    /* deep nesting far past the limit fails fast, without exhausting the stack */
    size_t big = 1 << 20;
    char *b = malloc(big);
    memset(b, '[', big);
    v = SENTINEL;
    CHECK(dn_json_parse(b, big, &v) == DN_ERR_FORMAT && v == SENTINEL, "a million '['");
    memset(b, '{', big);
    CHECK(dn_json_parse(b, big, &v) == DN_ERR_FORMAT && v == SENTINEL, "a million '{'");
    free(b);
    return fails;
}

static int test_json_invalid(void) {
    int fails = 0;
    for (size_t c = 0; c < sizeof json_invalid / sizeof json_invalid[0]; c++) {
        const char *in = json_invalid[c].in;
        dn_json *v = SENTINEL;
        dn_status st = dn_json_parse(in, strlen(in), &v);
        const char *msg = dn_last_error();
        CHECK(st == DN_ERR_FORMAT && v == SENTINEL, "%s accepted (%s)", json_invalid[c].why,
              dn_status_str(st));
        CHECK(!strncmp(msg, "json: line ", 11), "%s: message '%s'", json_invalid[c].why, msg);
        if (json_invalid[c].line) {
            char where[40];
            snprintf(where, sizeof where, "line %d col %d:", json_invalid[c].line,
                     json_invalid[c].col);
            CHECK(strstr(msg, where), "%s: message '%s' does not say %s", json_invalid[c].why, msg,
                  where);
        }
        if (st == DN_OK) dn_json_free(v);
    }
    /* a duplicate among many keys (the sorted check) is named */
    char text[4096];
    size_t o = (size_t)snprintf(text, sizeof text, "{");
    for (int i = 0; i < 200; i++)
        o += (size_t)snprintf(text + o, sizeof text - o, "\"k%d\":%d,", i, i);
    snprintf(text + o, sizeof text - o, "\"k137\":0}");
    dn_json *v = SENTINEL;
    CHECK(dn_json_parse(text, strlen(text), &v) == DN_ERR_FORMAT && v == SENTINEL &&
              strstr(dn_last_error(), "\"k137\""),
          "duplicate among 201 keys: %s", dn_last_error());
    /* a NUL byte inside the input (outside a string, inside one) */
    CHECK(dn_json_parse("[1]\0", 4, &v) == DN_ERR_FORMAT, "NUL after the value");
    CHECK(dn_json_parse("\"a\0b\"", 5, &v) == DN_ERR_FORMAT, "raw NUL in a string");
    /* a number longer than the limit ("0.111...") */
    char *num = malloc(DN_JSON_MAX_NUMBER + 2);
    memset(num, '1', DN_JSON_MAX_NUMBER + 1);
    num[0] = '0', num[1] = '.';
    CHECK(dn_json_parse(num, DN_JSON_MAX_NUMBER + 1, &v) == DN_ERR_FORMAT && v == SENTINEL,
          "a number of %d characters", DN_JSON_MAX_NUMBER + 1);
    CHECK(dn_json_parse(num, DN_JSON_MAX_NUMBER, &v) == DN_OK && !v->is_int &&
              fabs(dn_json_num(v) - 1.0 / 9) < 1e-15,
          "%d characters: %s", DN_JSON_MAX_NUMBER, dn_last_error());
    if (v != SENTINEL) dn_json_free(v);
    free(num);
    /* bad arguments */
    CHECK(dn_json_parse(NULL, 1, &v) == DN_ERR_NULL, "NULL text");
    CHECK(dn_json_parse("1", 1, NULL) == DN_ERR_NULL, "NULL out");
    return fails;
}

static int test_json_numbers(void) {
    int fails = 0;
    static const struct {
        const char *in;
        int is_int;
        int64_t i;
        double d;
    } cases[] = {
        {"0", 1, 0, 0.0},
        {"42", 1, 42, 42.0},
        {"-7", 1, -7, -7.0},
        {"9223372036854775807", 1, INT64_MAX, 9223372036854775807.0},
        {"-9223372036854775808", 1, INT64_MIN, -9223372036854775808.0},
        {"9223372036854775808", 0, 0, 9223372036854775808.0},
        {"-9223372036854775809", 0, 0, -9223372036854775809.0},
        {"123456789012345678901234567890", 0, 0, 123456789012345678901234567890.0},
        {"1e308", 0, 0, 1e308},
        {"1.7976931348623157e308", 0, 0, DBL_MAX},
        {"-1.7976931348623157E+308", 0, 0, -DBL_MAX},
        {"2.2250738585072014e-308", 0, 0, DBL_MIN},
        {"4.9e-324", 0, 0, 4.9e-324},
        {"1e-400", 0, 0, 0.0},
        {"1E0", 0, 0, 1.0},
        {"1.0", 0, 0, 1.0},
        {"0.1", 0, 0, 0.1},
        {"100000000000000000000000e-5", 0, 0, 1e18},
        {"0e99999999999", 0, 0, 0.0},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        dn_json *v = NULL;
        dn_status st = dn_json_parse(cases[c].in, strlen(cases[c].in), &v);
        CHECK(st == DN_OK, "%s: %s", cases[c].in, dn_last_error());
        if (st) continue;
        CHECK(v->type == DN_JSON_NUMBER && v->is_int == cases[c].is_int, "%s: is_int %d",
              cases[c].in, v->is_int);
        if (cases[c].is_int)
            CHECK(v->u.i == cases[c].i, "%s: i = %lld", cases[c].in, (long long)v->u.i);
        CHECK(dn_json_num(v) == cases[c].d, "%s: %.17g, expected %.17g", cases[c].in,
              dn_json_num(v), cases[c].d);
        dn_json_free(v);
    }
    /* -0: an integer 0 that keeps its sign as a double */
    dn_json *v = NULL;
    CHECK(dn_json_parse("-0", 2, &v) == DN_OK && v->is_int && v->u.i == 0 &&
              signbit(dn_json_num(v)),
          "-0");
    dn_json_free(v);
    CHECK(dn_json_parse("-0.0", 4, &v) == DN_OK && !v->is_int && signbit(dn_json_num(v)), "-0.0");
    dn_json_free(v);
    CHECK(dn_json_parse("0", 1, &v) == DN_OK && !signbit(dn_json_num(v)), "0");
    dn_json_free(v);
    return fails;
}

static int test_json_getters(void) {
    int fails = 0;
    const char *text = "{\"i\":42,\"big\":1e3,\"f\":2.5,\"s\":\"hi\",\"b\":true,\"n\":null,"
                       "\"a\":[1,2],\"o\":{\"x\":1}}";
    dn_json *d;
    if (dn_json_parse(text, strlen(text), &d)) {
        printf("    FAIL parse: %s\n", dn_last_error());
        return 1;
    }
    int64_t i = -1;
    double x = -1;
    int b = -1;
    const char *s = NULL;
    size_t len = 0;
    const dn_json *v = NULL;
    CHECK(dn_json_get_int(d, "i", &i, 1) == DN_OK && i == 42, "get_int i");
    i = -1;
    CHECK(dn_json_get_int(d, "big", &i, 1) == DN_ERR_FORMAT && i == -1 &&
              strstr(dn_last_error(), "\"big\"") && strstr(dn_last_error(), "integer"),
          "get_int of 1e3: %s", dn_last_error());
    CHECK(dn_json_get_int(d, "f", &i, 0) == DN_ERR_FORMAT && i == -1, "get_int of 2.5");
    CHECK(dn_json_get_int(d, "s", &i, 0) == DN_ERR_FORMAT && i == -1 &&
              strstr(dn_last_error(), "\"s\"") && strstr(dn_last_error(), "string"),
          "get_int of a string: %s", dn_last_error());
    CHECK(dn_json_get_int(d, "missing", &i, 0) == DN_OK && i == -1, "optional missing");
    CHECK(dn_json_get_int(d, "missing", &i, 1) == DN_ERR_FORMAT && i == -1 &&
              strstr(dn_last_error(), "\"missing\"") && strstr(dn_last_error(), "required"),
          "required missing: %s", dn_last_error());
    CHECK(dn_json_get_int(d, "n", &i, 0) == DN_OK && i == -1, "optional null");
    CHECK(dn_json_get_int(d, "n", &i, 1) == DN_ERR_FORMAT && strstr(dn_last_error(), "null"),
          "required null: %s", dn_last_error());
    CHECK(dn_json_get_num(d, "i", &x, 1) == DN_OK && x == 42.0, "get_num of an integer");
    CHECK(dn_json_get_num(d, "big", &x, 1) == DN_OK && x == 1000.0, "get_num 1e3");
    CHECK(dn_json_get_num(d, "f", &x, 1) == DN_OK && x == 2.5, "get_num 2.5");
    x = -1;
    CHECK(dn_json_get_num(d, "b", &x, 1) == DN_ERR_FORMAT && x == -1, "get_num of a bool");
    CHECK(dn_json_get_bool(d, "b", &b, 1) == DN_OK && b == 1, "get_bool");
    b = -1;
    CHECK(dn_json_get_bool(d, "i", &b, 1) == DN_ERR_FORMAT && b == -1, "get_bool of a number");
    CHECK(dn_json_get_str(d, "s", &s, &len, 1) == DN_OK && !strcmp(s, "hi") && len == 2, "get_str");
    s = NULL;
    CHECK(dn_json_get_str(d, "a", &s, NULL, 1) == DN_ERR_FORMAT && !s &&
              strstr(dn_last_error(), "array"),
          "get_str of an array: %s", dn_last_error());
    CHECK(dn_json_get_typed(d, "a", DN_JSON_ARRAY, &v, 1) == DN_OK && dn_json_len(v) == 2 &&
              dn_json_at(v, 1)->u.i == 2 && !dn_json_at(v, 2),
          "get_typed array");
    CHECK(dn_json_get_typed(d, "o", DN_JSON_OBJECT, &v, 1) == DN_OK &&
              dn_json_get(v, "x")->u.i == 1 && !dn_json_get(v, "y"),
          "get_typed object");
    CHECK(dn_json_get_int(dn_json_get(d, "a"), "x", &i, 0) == DN_ERR_FORMAT &&
              strstr(dn_last_error(), "not an object"),
          "get_int in an array: %s", dn_last_error());
    CHECK(!dn_json_get(dn_json_get(d, "a"), "x") && !dn_json_get(NULL, "x") &&
              !dn_json_get(d, NULL),
          "dn_json_get of non-objects");
    CHECK(dn_json_len(d) == 8 && dn_json_len(dn_json_get(d, "s")) == 0 && !dn_json_at(NULL, 0),
          "dn_json_len");
    CHECK(dn_json_get_int(d, "i", NULL, 1) == DN_ERR_NULL, "NULL out");
    dn_json_free(d);
    dn_json_free(NULL);
    return fails;
}

static int test_json_writer(void) {
    int fails = 0;
    dn_jw w;
    dn_jw_init(&w);
    dn_jw_begin_object(&w);
    dn_jw_key(&w, "name");
    dn_jw_string(&w, "x\"\\\n\x01\x1f\xc3\xa9/");
    dn_jw_key(&w, "n");
    dn_jw_begin_array(&w);
    dn_jw_int(&w, 1);
    dn_jw_int(&w, INT64_MIN);
    dn_jw_num(&w, 0.5);
    dn_jw_num(&w, -0.0);
    dn_jw_num(&w, 1e300);
    dn_jw_num(&w, 0.1);
    dn_jw_num(&w, 1.0 / 3);
    dn_jw_bool(&w, 1);
    dn_jw_bool(&w, 0);
    dn_jw_null(&w);
    dn_jw_end_array(&w);
    dn_jw_key(&w, "o");
    dn_jw_begin_object(&w);
    dn_jw_end_object(&w);
    dn_jw_key_n(&w, "k\0", 2);
    dn_jw_string_n(&w, "\0", 1);
    dn_jw_end_object(&w);
    const char *want = "{\"name\":\"x\\\"\\\\\\n\\u0001\\u001f\xc3\xa9/\",\"n\":[1,"
                       "-9223372036854775808,0.5,-0,1e+300,0.1,0.3333333333333333,true,false,"
                       "null],\"o\":{},\"k\\u0000\":\"\\u0000\"}";
    CHECK(dn_jw_finish(&w) == DN_OK && !strcmp(w.buf, want), "writer gave %s", w.buf);
    /* what it wrote reads back */
    dn_json *v = NULL;
    CHECK(dn_json_parse(w.buf, w.len, &v) == DN_OK && dn_json_len(v) == 4, "read back: %s",
          dn_last_error());
    dn_json_free(v);

    /* misuse: the first error sticks, later calls change nothing */
    static const char *const misuse[] = {"key at the top level",
                                         "value without a key",
                                         "end_array closing an object",
                                         "two keys",
                                         "NaN",
                                         "Inf",
                                         "invalid UTF-8",
                                         "unclosed",
                                         "nothing",
                                         "end at depth 0"};
    for (int m = 0; m < 10; m++) {
        dn_jw_reset(&w);
        dn_status want_st = DN_ERR_ARG;
        switch (m) {
        case 0: dn_jw_key(&w, "a"); break;
        case 1: dn_jw_begin_object(&w), dn_jw_int(&w, 1); break;
        case 2: dn_jw_begin_object(&w), dn_jw_end_array(&w); break;
        case 3: dn_jw_begin_object(&w), dn_jw_key(&w, "a"), dn_jw_key(&w, "b"); break;
        case 4: dn_jw_num(&w, NAN); break;
        case 5: dn_jw_begin_array(&w), dn_jw_num(&w, -INFINITY); break;
        case 6: dn_jw_string(&w, "\xc0\xaf"); break;
        case 7: dn_jw_begin_array(&w); break;
        case 8: break;
        default: dn_jw_end_object(&w); break;
        }
        size_t len = w.len;
        if (m != 7 && m != 8) { /* after an error, nothing more is written */
            dn_jw_int(&w, 5);
            dn_jw_end_array(&w);
            dn_jw_end_object(&w);
            CHECK(w.len == len, "misuse '%s': written after the error", misuse[m]);
        }
        dn_status st = dn_jw_finish(&w);
        CHECK(st == want_st, "misuse '%s' gave %s", misuse[m], dn_status_str(st));
    }
    dn_jw_reset(&w);
    dn_jw_string(&w, NULL);
    CHECK(dn_jw_status(&w) == DN_ERR_NULL, "NULL string");
    /* several top-level values, separated by the caller: JSON lines */
    dn_jw_reset(&w);
    dn_jw_begin_object(&w), dn_jw_key(&w, "step"), dn_jw_int(&w, 1), dn_jw_end_object(&w);
    dn_jw_raw(&w, "\n", 1);
    dn_jw_begin_object(&w), dn_jw_key(&w, "step"), dn_jw_int(&w, 2), dn_jw_end_object(&w);
    CHECK(dn_jw_finish(&w) == DN_OK && !strcmp(w.buf, "{\"step\":1}\n{\"step\":2}"), "lines: %s",
          w.buf);

    /* every finite double reads back bit for bit */
    rng r = {0x150ull};
    int bad = 0;
    for (int k = 0; k < 20000 && bad < 5; k++) {
        uint64_t bits = rng_next(&r);
        if (k % 4 == 1) bits &= 0x800fffffffffffffull;                         /* denormals */
        if (k % 4 == 2) bits = (bits & 0xfff0000000000000ull) | (bits & 0xff); /* short */
        double x;
        memcpy(&x, &bits, 8);
        if (k == 0) x = -0.0;
        if (!isfinite(x)) continue;
        dn_jw_reset(&w);
        dn_jw_num(&w, x);
        v = NULL;
        dn_status st = dn_jw_finish(&w);
        if (!st) st = dn_json_parse(w.buf, w.len, &v);
        double y = st ? NAN : dn_json_num(v);
        if (st || memcmp(&x, &y, 8)) {
            printf("    FAIL double %.17g written as %s read back as %.17g\n", x, w.buf, y);
            bad++;
        }
        if (!st) dn_json_free(v);
    }
    fails += bad;
    /* under a locale whose decimal point is ',' (when this machine has one) */
    static const char *const comma_locales[] = {"de_DE.UTF-8", "fr_FR.UTF-8", "de_DE", "fr_FR"};
    int tried = 0;
    for (int k = 0; k < 4 && !tried; k++)
        if (setlocale(LC_NUMERIC, comma_locales[k])) {
            tried = 1;
            dn_jw_reset(&w);
            dn_jw_num(&w, 2.5);
            CHECK(dn_jw_finish(&w) == DN_OK && !strcmp(w.buf, "2.5"), "2.5 under %s: %s",
                  comma_locales[k], w.buf);
            CHECK(dn_json_parse("[2.5]", 5, &v) == DN_OK && dn_json_num(dn_json_at(v, 0)) == 2.5,
                  "reading 2.5 under %s", comma_locales[k]);
            if (v) dn_json_free(v);
            setlocale(LC_NUMERIC, "C");
        }
    if (!tried) printf("     (no locale with a decimal comma here: that check is skipped)\n");
    dn_jw_free(&w);
    dn_jw_free(&w); /* twice is fine */
    return fails;
}

/* A document that needs several arena blocks, stack growth and the sorted duplicate check. */
static char *big_json(size_t *n) {
    size_t cap = 1 << 20, o = 0;
    char *t = malloc(cap);
    o += (size_t)snprintf(t + o, cap - o, "{\"list\":[");
    for (int i = 0; i < 300; i++)
        o += (size_t)snprintf(t + o, cap - o, "%s{\"a\":%d,\"b\":\"s%d\"}", i ? "," : "", i, i);
    o += (size_t)snprintf(t + o, cap - o, "],\"long\":\"");
    for (int i = 0; i < 70000; i++)
        t[o++] = (char)('a' + i % 26);
    o += (size_t)snprintf(t + o, cap - o, "\"");
    for (int i = 0; i < 40; i++)
        o += (size_t)snprintf(t + o, cap - o, ",\"k%d\":[%d.5,true,null]", i, i);
    o += (size_t)snprintf(t + o, cap - o, "}");
    *n = o;
    return t;
}

static int test_json_alloc_failures(void) {
    int fails = 0;
    size_t n;
    char *text = big_json(&n);
    long k = 0;
    for (; k < 1000; k++) {
        dn_json *v = SENTINEL;
        dn_fault_fail_alloc_after(k);
        dn_status st = dn_json_parse(text, n, &v);
        dn_fault_fail_alloc_after(-1);
        if (st == DN_OK) {
            CHECK(dn_json_len(dn_json_get(v, "list")) == 300, "parse after %ld", k);
            dn_json_free(v);
            break;
        }
        CHECK(st == DN_ERR_ALLOC && v == SENTINEL, "allocation %ld failing gave %s (%s)", k,
              dn_status_str(st), dn_last_error());
        if (fails) break;
    }
    CHECK(k >= 5, "only %ld allocations reached", k);
    /* the writer: each failure is DN_ERR_ALLOC, reported once at the end */
    long reached = 0;
    for (k = 0; k < 100; k++) {
        dn_jw w;
        dn_jw_init(&w);
        dn_fault_fail_alloc_after(k);
        dn_jw_begin_array(&w);
        for (int i = 0; i < 2000; i++)
            dn_jw_string(&w, "some text to fill the buffer");
        dn_jw_end_array(&w);
        dn_fault_fail_alloc_after(-1);
        dn_status st = dn_jw_finish(&w);
        dn_jw_free(&w);
        reached = k;
        if (st == DN_OK) break;
        CHECK(st == DN_ERR_ALLOC, "writer: allocation %ld failing gave %s", k, dn_status_str(st));
    }
    CHECK(reached >= 5, "writer: only %ld allocations reached", reached);
    free(text);
    return fails;
}

static int test_json_load(void) {
    int fails = 0;
    char path[400], dir[400];
    snprintf(path, sizeof path, "%s/config.json", tmpdir());
    const char *cfg = "{\n  \"hidden_size\": 64,\n  \"rms_norm_eps\": 1e-06,\n  \"x\": [1,]\n}";
    write_file(path, cfg, strlen(cfg));
    dn_json *v = SENTINEL;
    CHECK(dn_json_load(path, 1 << 20, &v) == DN_ERR_FORMAT && v == SENTINEL &&
              !strncmp(dn_last_error(), path, strlen(path)) && strstr(dn_last_error(), "line 4"),
          "a malformed file is named with its line: %s", dn_last_error());
    cfg = "{\"hidden_size\": 64, \"rms_norm_eps\": 1e-06}";
    write_file(path, cfg, strlen(cfg));
    int64_t h = 0;
    double eps = 0;
    CHECK(dn_json_load(path, 1 << 20, &v) == DN_OK && !dn_json_get_int(v, "hidden_size", &h, 1) &&
              h == 64 && !dn_json_get_num(v, "rms_norm_eps", &eps, 1) && eps == 1e-06,
          "load: %s", dn_last_error());
    if (v != SENTINEL) dn_json_free(v);
    v = SENTINEL;
    CHECK(dn_json_load(path, 10, &v) == DN_ERR_FORMAT && v == SENTINEL, "over max_bytes");
    snprintf(dir, sizeof dir, "%s/no_such_file.json", tmpdir());
    CHECK(dn_json_load(dir, 1 << 20, &v) == DN_ERR_IO && v == SENTINEL &&
              strstr(dn_last_error(), "no_such_file"),
          "missing file: %s", dn_last_error());
    CHECK(dn_json_load(tmpdir(), 1 << 20, &v) == DN_ERR_IO && v == SENTINEL, "a directory");
    /* an empty file */
    write_file(path, "", 0);
    CHECK(dn_json_load(path, 1 << 20, &v) == DN_ERR_FORMAT && v == SENTINEL, "empty file");
    unlink(path);
    return fails;
}

/* ======================================================================================== */
/* safetensors                                                                                */
/* ======================================================================================== */

/* A file of header text hdr (its length in the 8-byte field) then data_len bytes. */
static uint8_t *mk(const char *hdr, size_t data_len, size_t *n) {
    size_t hl = strlen(hdr);
    *n = 8 + hl + data_len;
    uint8_t *b = malloc(*n);
    for (int k = 0; k < 8; k++)
        b[k] = (uint8_t)((uint64_t)hl >> (8 * k));
    memcpy(b + 8, hdr, hl);
    for (size_t i = 0; i < data_len; i++)
        b[8 + hl + i] = (uint8_t)(i * 7 + 1);
    return b;
}

/* The parse must fail with DN_ERR_FORMAT, give no handle, and (need non-NULL) say need. */
static int expect_bad(const char *why, const uint8_t *buf, size_t n, const char *need) {
    int fails = 0;
    dn_st *st = (dn_st *)SENTINEL;
    dn_status s = dn_st_parse(buf, n, &st);
    CHECK(s == DN_ERR_FORMAT && st == (dn_st *)SENTINEL, "%s: accepted (%s)", why,
          dn_status_str(s));
    if (need)
        CHECK(strstr(dn_last_error(), need), "%s: message '%s' lacks '%s'", why, dn_last_error(),
              need);
    if (s == DN_OK) dn_st_close(st);
    return fails;
}

static int expect_bad_hdr(const char *why, const char *hdr, size_t data_len, const char *need) {
    size_t n;
    uint8_t *b = mk(hdr, data_len, &n);
    int f = expect_bad(why, b, n, need);
    free(b);
    return f;
}

/* The test tensors: every family of dtypes, a scalar, an empty tensor, a packed 4-bit one. */
typedef struct {
    dn_st_entry e[8];
    int64_t shapes[8][3];
    uint8_t data[8][64];
    size_t n;
} entries;

static void make_entries(entries *E, uint8_t seed) {
    memset(E, 0, sizeof *E);
    static const struct {
        const char *name;
        dn_st_dtype dt;
        int nd;
        int64_t s[3];
    } spec[8] = {
        {"model.embed.weight", DN_ST_F32, 2, {2, 3}},
        {"model.norm.weight", DN_ST_BF16, 1, {5}},
        {"model.bias", DN_ST_I8, 1, {3}},
        {"empty", DN_ST_F32, 2, {0, 4}},
        {"scalar", DN_ST_F64, 0, {0}},
        {"mask", DN_ST_BOOL, 1, {2}},
        {"packed", DN_ST_F4, 1, {2}},
        {"\xc3\xa9t\xc3\xa9 \"quoted\"", DN_ST_U16, 3, {1, 1, 3}},
    };
    E->n = 8;
    for (size_t i = 0; i < 8; i++) {
        memcpy(E->shapes[i], spec[i].s, sizeof spec[i].s);
        for (size_t k = 0; k < 64; k++)
            E->data[i][k] = (uint8_t)(seed + 31 * i + 7 * k);
        E->e[i] = (dn_st_entry){spec[i].name, spec[i].dt, spec[i].nd, E->shapes[i], E->data[i]};
    }
}

static const char *meta_k[] = {"format", "note"};
static const char *meta_v[] = {"pt", "quote\" backslash\\ newline\n \xc3\xa9"};

/* A file in memory (header, then the data of the entries in order). */
static uint8_t *serialize(const dn_st_entry *e, size_t n, const char *const *mk_,
                          const char *const *mv, size_t nm, size_t *len) {
    uint8_t *hdr;
    size_t hl;
    uint64_t db;
    if (dn_st_make_header(e, n, mk_, mv, nm, &hdr, &hl, &db) != DN_OK) return NULL;
    uint8_t *b = malloc(hl + db + 1);
    memcpy(b, hdr, hl);
    size_t o = hl;
    for (size_t i = 0; i < n; i++) {
        int64_t numel = 1;
        for (int k = 0; k < e[i].ndim; k++)
            numel *= e[i].shape[k];
        size_t bytes = (size_t)numel * (size_t)dn_st_dtype_bits(e[i].dtype) / 8;
        if (bytes) memcpy(b + o, e[i].data, bytes);
        o += bytes;
    }
    dn_free(hdr);
    *len = o;
    return b;
}

/* The handle holds exactly the entries (in order) and the metadata. */
static int same_as(const char *what, const dn_st *st, const entries *E, size_t nm) {
    int fails = 0;
    CHECK(st->n_tensors == E->n && st->n_meta == nm, "%s: %zu tensors, %zu metadata", what,
          st->n_tensors, st->n_meta);
    for (size_t i = 0; i < E->n && i < st->n_tensors; i++) {
        const dn_st_tensor *t = &st->tensors[i];
        const dn_st_entry *e = &E->e[i];
        int64_t numel = 1;
        for (int k = 0; k < e->ndim; k++)
            numel *= e->shape[k];
        uint64_t bytes = (uint64_t)numel * (uint64_t)dn_st_dtype_bits(e->dtype) / 8;
        CHECK(!strcmp(t->name, e->name) && t->dtype == e->dtype && t->ndim == e->ndim &&
                  (!e->ndim || !memcmp(t->shape, e->shape, sizeof(int64_t) * e->ndim)) &&
                  t->numel == numel && t->bytes == bytes,
              "%s: tensor %zu (%s) differs", what, i, e->name);
        CHECK(t->bytes == 0 || !memcmp(t->data, e->data, t->bytes), "%s: data of %s differs", what,
              e->name);
        CHECK(dn_st_find(st, e->name) == t, "%s: dn_st_find(%s)", what, e->name);
    }
    for (size_t i = 0; i < nm; i++)
        CHECK(st->meta_values && dn_st_meta(st, meta_k[i]) &&
                  !strcmp(dn_st_meta(st, meta_k[i]), meta_v[i]),
              "%s: metadata %s", what, meta_k[i]);
    CHECK(!dn_st_find(st, "nope") && !dn_st_meta(st, "nope") && !dn_st_find(st, NULL),
          "%s: lookups of absent names", what);
    CHECK((8 + st->header_bytes) % 8 == 0, "%s: data at byte %llu, not 8-aligned", what,
          (unsigned long long)(8 + st->header_bytes));
    return fails;
}

static int test_st_roundtrip(void) {
    int fails = 0;
    entries E;
    make_entries(&E, 3);
    char path[400];
    snprintf(path, sizeof path, "%s/model.safetensors", tmpdir());
    dn_status s = dn_st_write(path, E.e, E.n, meta_k, meta_v, 2);
    CHECK(s == DN_OK, "write: %s", dn_last_error());
    dn_st *st = NULL;
    s = dn_st_open(path, &st);
    CHECK(s == DN_OK, "open: %s", dn_last_error());
    if (s == DN_OK) {
        fails += same_as("written file", st, &E, 2);
        CHECK(!strcmp(st->name, path), "name %s", st->name);
        const dn_st_tensor *t = NULL;
        int64_t shp[2] = {2, 3}, wrong[2] = {3, 2};
        CHECK(dn_st_expect(st, "model.embed.weight", DN_ST_F32, 2, shp, &t) == DN_OK &&
                  t == dn_st_find(st, "model.embed.weight"),
              "expect ok: %s", dn_last_error());
        t = NULL;
        CHECK(dn_st_expect(st, "model.embed.weight", DN_ST_F32, 2, wrong, &t) == DN_ERR_FORMAT &&
                  !t && strstr(dn_last_error(), "[2, 3]") && strstr(dn_last_error(), "[3, 2]") &&
                  strstr(dn_last_error(), path),
              "expect shape: %s", dn_last_error());
        CHECK(dn_st_expect(st, "model.embed.weight", DN_ST_BF16, 2, shp, &t) == DN_ERR_FORMAT &&
                  !t && strstr(dn_last_error(), "BF16"),
              "expect dtype: %s", dn_last_error());
        CHECK(dn_st_expect(st, "lm_head.weight", DN_ST_F32, 0, NULL, &t) == DN_ERR_FORMAT && !t &&
                  strstr(dn_last_error(), "lm_head.weight"),
              "expect missing: %s", dn_last_error());
        CHECK(dn_st_expect(st, "scalar", DN_ST_F64, 0, NULL, &t) == DN_OK && t->numel == 1,
              "expect scalar");
        /* the same bytes parsed from memory */
        char *buf;
        size_t n;
        if (dn_file_read(path, 1 << 20, &buf, &n) == DN_OK) {
            dn_st *m = NULL;
            CHECK(dn_st_parse((const uint8_t *)buf, n, &m) == DN_OK, "parse: %s", dn_last_error());
            if (m) {
                fails += same_as("parsed from memory", m, &E, 2);
                CHECK(m->data == (const uint8_t *)buf + 8 + m->header_bytes &&
                          m->data_bytes == n - 8 - m->header_bytes,
                      "data pointer");
                dn_st_close(m);
            }
            dn_free(buf);
        }
        dn_st_close(st);
    }
    /* replacing the file with other content */
    make_entries(&E, 99);
    E.n = 5;
    CHECK(dn_st_write(path, E.e, E.n, NULL, NULL, 0) == DN_OK, "rewrite: %s", dn_last_error());
    st = NULL;
    CHECK(dn_st_open(path, &st) == DN_OK, "reopen: %s", dn_last_error());
    if (st) fails += same_as("rewritten file", st, &E, 0), dn_st_close(st);
    dn_st_close(NULL);
    unlink(path);

    /* the exact bytes: the reference implementation's layout (padding with spaces to 8) */
    int64_t s22[2] = {2, 2};
    uint8_t zeros[16] = {0};
    dn_st_entry one = {"test", DN_ST_I32, 2, s22, zeros};
    uint8_t *hdr = NULL;
    size_t hl;
    CHECK(dn_st_make_header(&one, 1, NULL, NULL, 0, &hdr, &hl, NULL) == DN_OK && hl == 72 &&
              !memcmp(hdr, "\x40\0\0\0\0\0\0\0", 8) &&
              !memcmp(hdr + 8,
                      "{\"test\":{\"dtype\":\"I32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}    ",
                      64),
          "header of one I32 tensor");
    dn_free(hdr);
    hdr = NULL;
    const char *fw_k[] = {"framework"}, *fw_v[] = {"pt"};
    CHECK(dn_st_make_header(NULL, 0, fw_k, fw_v, 1, &hdr, &hl, NULL) == DN_OK && hl == 48 &&
              !memcmp(hdr, "\x28\0\0\0\0\0\0\0{\"__metadata__\":{\"framework\":\"pt\"}}     ", 48),
          "header of metadata only");
    dn_free(hdr);
    hdr = NULL;
    CHECK(dn_st_make_header(NULL, 0, NULL, NULL, 0, &hdr, &hl, NULL) == DN_OK && hl == 16 &&
              !memcmp(hdr, "\x08\0\0\0\0\0\0\0{}      ", 16),
          "empty header");
    if (hdr) {
        dn_st *e = NULL;
        CHECK(dn_st_parse(hdr, hl, &e) == DN_OK && e->n_tensors == 0 && e->data_bytes == 0,
              "empty file: %s", dn_last_error());
        dn_st_close(e);
        dn_free(hdr);
    }
    /* files from other writers: unpadded, entries out of offset order, whitespace around */
    static const char *const others[] = {
        "{\"test\":{\"dtype\":\"I32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}",
        "{\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]},\"a\":{\"shape\":[2],"
        "\"dtype\":\"F32\",\"data_offsets\":[0,8]}}",
        "\n\t {\"a\":{\"dtype\":\"U8\",\"shape\":[16],\"data_offsets\":[0,16]}} \r\n",
        "{\"z\":{\"dtype\":\"F16\",\"shape\":[0],\"data_offsets\":[0,0]},\"a\":{\"dtype\":\"I64\","
        "\"shape\":[2],\"data_offsets\":[0,16]},\"e\":{\"dtype\":\"F32\",\"shape\":[3,0],"
        "\"data_offsets\":[16,16]}}",
        "{\"__metadata__\":{},\"a\":{\"dtype\":\"C64\",\"shape\":[1,2],\"data_offsets\":[0,16]}}",
    };
    for (size_t c = 0; c < sizeof others / sizeof others[0]; c++) {
        size_t n;
        uint8_t *b = mk(others[c], 16, &n);
        dn_st *p = NULL;
        CHECK(dn_st_parse(b, n, &p) == DN_OK, "other writer %zu: %s", c, dn_last_error());
        if (p) {
            uint64_t sum = 0;
            for (size_t i = 0; i < p->n_tensors; i++)
                sum += p->tensors[i].bytes;
            CHECK(sum == 16 && p->data_bytes == 16, "other writer %zu: coverage", c);
            dn_st_close(p);
        }
        free(b);
    }
    return fails;
}

static int test_st_malformed(void) {
    int fails = 0;
    /* every truncation of a valid file */
    entries E;
    make_entries(&E, 5);
    size_t n;
    uint8_t *good = serialize(E.e, E.n, meta_k, meta_v, 2, &n);
    dn_st *st = NULL;
    CHECK(good && dn_st_parse(good, n, &st) == DN_OK, "base file: %s", dn_last_error());
    dn_st_close(st);
    for (size_t len = 0; good && len < n; len++) {
        uint8_t *cut = malloc(len ? len : 1); /* exact size: ASan sees a read past it */
        memcpy(cut, good, len);
        char why[80];
        snprintf(why, sizeof why, "truncated to %zu of %zu bytes", len, n);
        fails += expect_bad(why, cut, len, NULL);
        free(cut);
        if (fails > 5) break;
    }
    /* the length field */
    static const uint64_t lens[] = {UINT64_MAX, 1ull << 63, DN_ST_MAX_HEADER + 1, 1000000};
    for (size_t c = 0; c < 4; c++) {
        uint8_t *b = malloc(n);
        memcpy(b, good, n);
        for (int k = 0; k < 8; k++)
            b[k] = (uint8_t)(lens[c] >> (8 * k));
        fails += expect_bad(c < 3 ? "huge header length" : "header length past the end", b, n,
                            c < 3 ? "limit" : "past the end");
        uint64_t hl = n - 8 + 1; /* one past the end */
        for (int k = 0; k < 8; k++)
            b[k] = (uint8_t)(hl >> (8 * k));
        fails += expect_bad("header length one past the end", b, n, "past the end");
        free(b);
    }
    free(good);

    static const struct {
        const char *why, *hdr;
        size_t data;
        const char *need;
    } cases[] = {
        {"offsets outside the buffer",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[250],\"data_offsets\":[0,1000]}}", 16,
         "past the end"},
        {"second tensor outside",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\","
         "\"shape\":[2],\"data_offsets\":[8,16]}}",
         12, "past the end"},
        {"overlap",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\","
         "\"shape\":[2],\"data_offsets\":[4,12]}}",
         12, "overlaps"},
        {"same range twice",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\","
         "\"shape\":[2],\"data_offsets\":[0,8]}}",
         8, "overlaps"},
        {"hole",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\","
         "\"shape\":[2],\"data_offsets\":[12,20]}}",
         20, "hole"},
        {"hole at the start", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
         12, "hole"},
        {"bytes after the last tensor",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12, "no tensor"},
        {"data but no tensor", "{}", 4, "no tensor"},
        {"empty tensor past the end",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"e\":{\"dtype\":\"F32\","
         "\"shape\":[0],\"data_offsets\":[9,9]}}",
         8, "past the end"},
        {"unknown dtype", "{\"a\":{\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
         "dtype"},
        {"lower-case dtype", "{\"a\":{\"dtype\":\"f32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
         "dtype"},
        {"numeric dtype", "{\"a\":{\"dtype\":5,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "dtype"},
        {"shape product overflow",
         "{\"a\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296,8],\"data_offsets\":[0,8]}}", 8,
         "64 bits"},
        {"shape times element size overflow",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[2305843009213693952],\"data_offsets\":[0,8]}}", 8,
         "64 bits"},
        {"size mismatch", "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
         "12 bytes"},
        {"packed bits not filling bytes",
         "{\"a\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,1]}}", 1, "whole bytes"},
        {"duplicate names",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"a\":{\"dtype\":\"F32\","
         "\"shape\":[1],\"data_offsets\":[4,8]}}",
         8, "duplicate"},
        {"non-string metadata",
         "{\"__metadata__\":{\"a\":1},\"t\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}"
         "}",
         1, "not a string"},
        {"metadata an array", "{\"__metadata__\":[]}", 0, "__metadata__"},
        {"metadata holding NUL", "{\"__metadata__\":{\"a\":\"x\\u0000y\"}}", 0, "NUL"},
        {"tensor named __metadata__",
         "{\"__metadata__\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
         "not a string"},
        {"header an array", "[]", 0, "not an object"},
        {"header a number", "1", 0, "not an object"},
        {"header a string", "\"x\"", 0, "not an object"},
        {"header null", "null", 0, "not an object"},
        {"header not JSON", "{", 0, "header: line 1"},
        {"header JSON error", "{\"a\":}", 0, "header: line 1 col 6"},
        {"header empty", "", 0, "header"},
        {"header padded with NUL", "{}\0\0", 0, "header"},
        {"invalid UTF-8 in a name",
         "{\"\xff\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "UTF-8"},
        {"NUL in a name", "{\"a\\u0000b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
         1, "NUL"},
        {"missing dtype", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "dtype"},
        {"missing shape", "{\"a\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", 1, "shape"},
        {"missing offsets", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1, "data_offsets"},
        {"unknown field",
         "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"offsets\":[0,1]}}", 1,
         "unknown field"},
        {"entry not an object", "{\"a\":1}", 0, "not an object"},
        {"one offset", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0]}}", 1,
         "data_offsets"},
        {"three offsets", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,1]}}", 1,
         "data_offsets"},
        {"begin after end", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,0]}}", 1,
         "data_offsets"},
        {"negative offset", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[-1,0]}}", 1,
         "data_offsets"},
        {"fractional offset", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0.0,1]}}",
         1, "data_offsets"},
        {"offset past int64",
         "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,18446744073709551615]}}", 1,
         "data_offsets"},
        {"offsets an object", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":{}}}", 1,
         "data_offsets"},
        {"negative dim", "{\"a\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,1]}}", 1,
         "shape[0]"},
        {"fractional dim", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1.0],\"data_offsets\":[0,1]}}", 1,
         "shape[0]"},
        {"exponent dim", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1e0],\"data_offsets\":[0,1]}}", 1,
         "shape[0]"},
        {"string dim", "{\"a\":{\"dtype\":\"U8\",\"shape\":[\"1\"],\"data_offsets\":[0,1]}}", 1,
         "shape[0]"},
        {"shape a number", "{\"a\":{\"dtype\":\"U8\",\"shape\":1,\"data_offsets\":[0,1]}}", 1,
         "shape"},
        {"shape null", "{\"a\":{\"dtype\":\"U8\",\"shape\":null,\"data_offsets\":[0,1]}}", 1,
         "shape"},
        {"deep header", "{\"a\":[[[[[[[[[[]]]]]]]]]]}", 0, "nesting"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        if (!strcmp(cases[c].why, "header padded with NUL")) {
            size_t m;
            uint8_t *b = mk("{}xx", 0, &m);
            b[10] = b[11] = 0;
            fails += expect_bad(cases[c].why, b, m, cases[c].need);
            free(b);
            continue;
        }
        fails += expect_bad_hdr(cases[c].why, cases[c].hdr, cases[c].data, cases[c].need);
    }
    /* the message names the file and the tensor */
    expect_bad_hdr("naming",
                   "{\"layers.3.w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
                   NULL);
    CHECK(!strncmp(dn_last_error(), "safetensors: ", 13) &&
              strstr(dn_last_error(), "tensor \"layers.3.w\""),
          "message: %s", dn_last_error());
    CHECK(dn_st_parse(NULL, 0, &st) == DN_ERR_FORMAT, "empty buffer");
    CHECK(dn_st_parse(NULL, 8, &st) == DN_ERR_NULL, "NULL buffer");
    return fails;
}

/* Whatever the parser accepts lies inside the buffer and tiles it. */
static int check_accepted(const dn_st *st, const uint8_t *buf, size_t n) {
    int fails = 0;
    CHECK(8 + st->header_bytes + st->data_bytes == n && st->data == buf + 8 + st->header_bytes,
          "mutation accepted with inconsistent sizes");
    uint64_t sum = 0;
    for (size_t i = 0; i < st->n_tensors; i++) {
        const dn_st_tensor *t = &st->tensors[i];
        int64_t numel;
        CHECK(dn_st_dtype_name(t->dtype) && t->ndim >= 0 && !(t->ndim && !t->shape),
              "tensor %zu: dtype or ndim", i);
        int ok = 1;
        numel = 1;
        for (int k = 0; k < t->ndim && ok; k++)
            ok = t->shape[k] >= 0 && !__builtin_mul_overflow(numel, t->shape[k], &numel);
        CHECK(ok && numel == t->numel &&
                  (unsigned __int128)numel * (unsigned)dn_st_dtype_bits(t->dtype) ==
                      (unsigned __int128)t->bytes * 8,
              "tensor %zu: size", i);
        CHECK(t->data >= st->data && t->offset <= st->data_bytes &&
                  t->bytes <= st->data_bytes - t->offset && t->data == st->data + t->offset,
              "tensor %zu: [%llu, +%llu) outside the data (%llu bytes)", i,
              (unsigned long long)t->offset, (unsigned long long)t->bytes,
              (unsigned long long)st->data_bytes);
        if (t->bytes) { /* touch the first and last byte (ASan checks the read) */
            volatile uint8_t x = t->data[0];
            x = t->data[t->bytes - 1];
            (void)x;
        }
        CHECK(dn_st_find(st, t->name) == t, "tensor %zu: lookup", i);
        sum += t->bytes;
    }
    CHECK(sum == st->data_bytes, "tensors cover %llu of %llu bytes", (unsigned long long)sum,
          (unsigned long long)st->data_bytes);
    for (size_t i = 0; i < st->n_meta; i++)
        CHECK(dn_st_meta(st, st->meta_keys[i]) != NULL, "metadata %zu lookup", i);
    return fails;
}

static int test_st_mutations(void) {
    int fails = 0;
    /* valid bases: the test tensors with metadata, no tensor, only empty tensors, many small */
    uint8_t *base[4];
    size_t blen[4];
    entries E;
    make_entries(&E, 11);
    base[0] = serialize(E.e, E.n, meta_k, meta_v, 2, &blen[0]);
    base[1] = serialize(NULL, 0, NULL, NULL, 0, &blen[1]);
    int64_t zero[2] = {0, 3}, one[1] = {1};
    uint8_t bytes[64];
    for (int i = 0; i < 64; i++)
        bytes[i] = (uint8_t)i;
    dn_st_entry z[3] = {{"a", DN_ST_F32, 2, zero, NULL},
                        {"b", DN_ST_U8, 1, one, bytes},
                        {"c", DN_ST_BF16, 1, zero, NULL}};
    base[2] = serialize(z, 3, NULL, NULL, 0, &blen[2]);
    dn_st_entry many[20];
    char names[20][8];
    for (int i = 0; i < 20; i++) {
        snprintf(names[i], sizeof names[i], "t%d", i);
        many[i] = (dn_st_entry){names[i], i % 2 ? DN_ST_U8 : DN_ST_I16, 1, one, bytes + i};
    }
    base[3] = serialize(many, 20, meta_k, meta_v, 1, &blen[3]);
    static const char interesting[] = "\"{}[],:0123456789 \\-eE.u";
    const char *e = getenv("DN_FUZZ_ITERS");
    long iters = e ? atol(e) : 4000;
    rng r = {0x5afe7e5ull};
    long accepted = 0;
    for (long it = 0; it < iters && fails < 5; it++) {
        int bi = (int)(rng_next(&r) % 4);
        size_t n = blen[bi];
        uint8_t *b = malloc(n + 64);
        memcpy(b, base[bi], n);
        int muts = 1 + (int)(rng_next(&r) % 3);
        for (int m = 0; m < muts && n > 0; m++) {
            size_t at = (size_t)(rng_next(&r) % n);
            uint64_t hl = 0;
            switch (rng_next(&r) % 9) {
            case 7: /* a digit of the header to another digit: dims and offsets change */
                for (size_t k = 0; k < n; k++) {
                    size_t j = (at + k) % n;
                    if (j >= 8 && b[j] >= '0' && b[j] <= '9') {
                        b[j] = (uint8_t)('0' + rng_next(&r) % 10);
                        break;
                    }
                }
                break;
            case 8: /* a byte of the data (the file stays valid when it lies there) */
                b[n - 1 - at % (n < 16 ? n : 16)] ^= 0x5a;
                break;
            case 0: b[at] ^= (uint8_t)(1u << (rng_next(&r) % 8)); break;
            case 1: b[at] = (uint8_t)rng_next(&r); break;
            case 2: b[at] = (uint8_t)interesting[rng_next(&r) % (sizeof interesting - 1)]; break;
            case 3: n = (size_t)(rng_next(&r) % (n + 1)); break;
            case 4: /* the length field: near its value, or anything */
                for (int k = 0; k < 8; k++)
                    hl |= (uint64_t)b[k] << (8 * k);
                hl = rng_next(&r) % 4 ? hl + (rng_next(&r) % 33) - 16 : rng_next(&r);
                for (int k = 0; k < 8 && n >= 8; k++)
                    b[k] = (uint8_t)(hl >> (8 * k));
                break;
            case 5: /* insert a byte (the buffer has room) */
                if (n < blen[bi] + 60) {
                    memmove(b + at + 1, b + at, n - at);
                    b[at] = (uint8_t)interesting[rng_next(&r) % (sizeof interesting - 1)];
                    n++;
                }
                break;
            default: /* delete a byte */
                memmove(b + at, b + at + 1, n - at - 1);
                n--;
                break;
            }
        }
        uint8_t *exact = malloc(n ? n : 1); /* exact size, so ASan sees any read past the end */
        memcpy(exact, b, n);
        free(b);
        dn_st *st = NULL;
        dn_status s = dn_st_parse(exact, n, &st);
        if (s == DN_OK) {
            accepted++;
            fails += check_accepted(st, exact, n);
            dn_st_close(st);
        } else {
            CHECK(s == DN_ERR_FORMAT && !st, "mutation %ld: %s", it, dn_status_str(s));
        }
        free(exact);
    }
    printf("     %ld mutated files, %ld accepted (each checked inside its buffer)\n", iters,
           accepted);
    CHECK(accepted > 0, "no mutation was accepted: the loop checks nothing");
    for (int i = 0; i < 4; i++)
        free(base[i]);
    return fails;
}

static int test_st_write_failures(void) {
    int fails = 0;
    char dir[400], path[440], sub[440], buf[1024], before[1024];
    snprintf(dir, sizeof dir, "%s/w", tmpdir());
    mkdir(dir, 0777);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    snprintf(sub, sizeof sub, "%s/sub", dir);
    mkdir(sub, 0777);
    entries E1, E2;
    make_entries(&E1, 1);
    make_entries(&E2, 2);
    CHECK(dn_st_write(path, E1.e, E1.n, meta_k, meta_v, 2) == DN_OK, "v1: %s", dn_last_error());
    size_t n1;
    uint8_t *v1 = serialize(E1.e, E1.n, meta_k, meta_v, 2, &n1);
    CHECK(file_is(path, v1, n1), "v1 on disk is the serialized bytes");
    listing(dir, before, sizeof before);

    /* a real failure: the target is a directory (rename fails; works as root too) */
    CHECK(dn_st_write(sub, E2.e, E2.n, NULL, NULL, 0) == DN_ERR_IO &&
              strstr(dn_last_error(), "sub"),
          "writing over a directory: %s", dn_last_error());
    struct stat sb;
    CHECK(stat(sub, &sb) == 0 && S_ISDIR(sb.st_mode), "the directory is still one");
    CHECK(!strcmp(listing(dir, buf, sizeof buf), before), "left behind: %s", buf);
    /* a directory that does not exist */
    char nodir[480];
    snprintf(nodir, sizeof nodir, "%s/nope/x.safetensors", dir);
    CHECK(dn_st_write(nodir, E2.e, E2.n, NULL, NULL, 0) == DN_ERR_IO, "missing directory");
    /* a directory without write permission (root ignores permissions: skipped then) */
    if (geteuid() != 0) {
        chmod(dir, 0555);
        CHECK(dn_st_write(path, E2.e, E2.n, NULL, NULL, 0) == DN_ERR_IO, "read-only directory");
        chmod(dir, 0755);
        CHECK(file_is(path, v1, n1), "read-only directory: target changed");
    } else {
        printf("     (running as root: the read-only directory check is skipped)\n");
    }

    /* each file-system step failing in turn */
    long k = 0;
    for (; k < 100; k++) {
        dn_fault_fail_io_after(k);
        dn_status s = dn_st_write(path, E2.e, E2.n, NULL, NULL, 0);
        dn_fault_fail_io_after(-1);
        if (s == DN_OK) break;
        CHECK(s == DN_ERR_IO, "I/O step %ld failing gave %s", k, dn_status_str(s));
        CHECK(file_is(path, v1, n1), "I/O step %ld failed, yet the target changed", k);
        CHECK(!strcmp(listing(dir, buf, sizeof buf), before), "I/O step %ld left %s", k, buf);
        if (fails) break;
    }
    CHECK(k >= 5, "only %ld I/O steps reached", k);
    size_t n2;
    uint8_t *v2 = serialize(E2.e, E2.n, NULL, NULL, 0, &n2);
    CHECK(file_is(path, v2, n2), "after the sweep the target holds the new file");

    /* each allocation failing in turn */
    for (k = 0; k < 100; k++) {
        dn_fault_fail_alloc_after(k);
        dn_status s = dn_st_write(path, E1.e, E1.n, meta_k, meta_v, 2);
        dn_fault_fail_alloc_after(-1);
        if (s == DN_OK) break;
        CHECK(s == DN_ERR_ALLOC, "allocation %ld failing gave %s", k, dn_status_str(s));
        CHECK(file_is(path, v2, n2), "allocation %ld failed, yet the target changed", k);
        CHECK(!strcmp(listing(dir, buf, sizeof buf), before), "allocation %ld left %s", k, buf);
        if (fails) break;
    }
    CHECK(k >= 3, "only %ld allocations reached", k);
    CHECK(file_is(path, v1, n1), "after the allocation sweep the target holds v1");

    /* bad entries: rejected before anything is written */
    int64_t neg[1] = {-1}, three[1] = {3};
    static const uint8_t d[16];
    struct {
        const char *why;
        dn_st_entry e[2];
        size_t n;
        dn_status want;
    } bad[] = {
        {"duplicate names",
         {{"a", DN_ST_U8, 1, three, d}, {"a", DN_ST_U8, 1, three, d}},
         2,
         DN_ERR_ARG},
        {"__metadata__ as a name", {{"__metadata__", DN_ST_U8, 1, three, d}}, 1, DN_ERR_ARG},
        {"negative dim", {{"a", DN_ST_U8, 1, neg, d}}, 1, DN_ERR_SHAPE},
        {"negative ndim", {{"a", DN_ST_U8, -1, three, d}}, 1, DN_ERR_SHAPE},
        {"no shape", {{"a", DN_ST_U8, 1, NULL, d}}, 1, DN_ERR_NULL},
        {"no data", {{"a", DN_ST_U8, 1, three, NULL}}, 1, DN_ERR_NULL},
        {"no name", {{NULL, DN_ST_U8, 1, three, d}}, 1, DN_ERR_NULL},
        {"unknown dtype", {{"a", (dn_st_dtype)99, 1, three, d}}, 1, DN_ERR_ARG},
        {"3 x F4", {{"a", DN_ST_F4, 1, three, d}}, 1, DN_ERR_ARG},
        {"invalid UTF-8 name", {{"\xc0\xaf", DN_ST_U8, 1, three, d}}, 1, DN_ERR_ARG},
    };
    for (size_t c = 0; c < sizeof bad / sizeof bad[0]; c++) {
        dn_status s = dn_st_write(path, bad[c].e, bad[c].n, NULL, NULL, 0);
        CHECK(s == bad[c].want, "%s: %s (%s)", bad[c].why, dn_status_str(s), dn_last_error());
        CHECK(file_is(path, v1, n1) && !strcmp(listing(dir, buf, sizeof buf), before),
              "%s: something changed", bad[c].why);
    }
    const char *dk[] = {"k", "k"}, *dv[] = {"1", "2"}, *nv[] = {"1", NULL};
    CHECK(dn_st_write(path, E2.e, 1, dk, dv, 2) == DN_ERR_ARG, "duplicate metadata keys");
    CHECK(dn_st_write(path, E2.e, 1, dk, nv, 2) == DN_ERR_NULL, "NULL metadata value");
    CHECK(dn_st_write(path, E2.e, 1, dk, NULL, 1) == DN_ERR_NULL, "NULL metadata array");
    CHECK(dn_st_write(NULL, E2.e, 1, NULL, NULL, 0) == DN_ERR_NULL, "NULL path");
    CHECK(dn_st_write(path, NULL, 1, NULL, NULL, 0) == DN_ERR_NULL, "NULL entries");
    CHECK(file_is(path, v1, n1), "argument errors changed the target");

    /* opening what is not a safetensors file */
    dn_st *st = (dn_st *)SENTINEL;
    CHECK(dn_st_open(nodir, &st) == DN_ERR_IO && st == (dn_st *)SENTINEL, "open missing: %s",
          dn_last_error());
    CHECK(dn_st_open(sub, &st) == DN_ERR_IO && st == (dn_st *)SENTINEL, "open a directory");
    char f[480];
    snprintf(f, sizeof f, "%s/empty", sub);
    write_file(f, "", 0);
    CHECK(dn_st_open(f, &st) == DN_ERR_FORMAT && st == (dn_st *)SENTINEL &&
              strstr(dn_last_error(), f),
          "open an empty file: %s", dn_last_error());
    write_file(f, "hello world, not a tensor file", 30);
    CHECK(dn_st_open(f, &st) == DN_ERR_FORMAT && st == (dn_st *)SENTINEL, "open text: %s",
          dn_last_error());
    write_file(f, v1, n1 - 1);
    CHECK(dn_st_open(f, &st) == DN_ERR_FORMAT && st == (dn_st *)SENTINEL &&
              strstr(dn_last_error(), "truncated"),
          "open a truncated file: %s", dn_last_error());
    free(v1);
    free(v2);
    return fails;
}

static int test_st_alloc_failures(void) {
    int fails = 0;
    entries E;
    make_entries(&E, 4);
    size_t n;
    uint8_t *b = serialize(E.e, E.n, meta_k, meta_v, 2, &n);
    long k = 0;
    for (; k < 200; k++) {
        dn_st *st = (dn_st *)SENTINEL;
        dn_fault_fail_alloc_after(k);
        dn_status s = dn_st_parse(b, n, &st);
        dn_fault_fail_alloc_after(-1);
        if (s == DN_OK) {
            fails += same_as("parse after the sweep", st, &E, 2);
            dn_st_close(st);
            break;
        }
        CHECK(s == DN_ERR_ALLOC && st == (dn_st *)SENTINEL, "allocation %ld failing gave %s", k,
              dn_status_str(s));
        if (fails) break;
    }
    CHECK(k >= 3, "parse: only %ld allocations reached", k);
    for (k = 0; k < 200; k++) {
        uint8_t *h = (uint8_t *)SENTINEL;
        size_t hl = 0;
        dn_fault_fail_alloc_after(k);
        dn_status s = dn_st_make_header(E.e, E.n, meta_k, meta_v, 2, &h, &hl, NULL);
        dn_fault_fail_alloc_after(-1);
        if (s == DN_OK) {
            dn_free(h);
            break;
        }
        CHECK(s == DN_ERR_ALLOC && h == (uint8_t *)SENTINEL, "header: allocation %ld gave %s", k,
              dn_status_str(s));
        if (fails) break;
    }
    CHECK(k >= 3, "header: only %ld allocations reached", k);
    const char *text =
        "{\"metadata\":{\"total_size\":96},\"weight_map\":{\"a\":\"m-1.safetensors\","
        "\"b\":\"m-2.safetensors\"}}";
    for (k = 0; k < 200; k++) {
        dn_st_index *idx = (dn_st_index *)SENTINEL;
        dn_fault_fail_alloc_after(k);
        dn_status s = dn_st_index_parse(text, strlen(text), NULL, &idx);
        dn_fault_fail_alloc_after(-1);
        if (s == DN_OK) {
            dn_st_index_free(idx);
            break;
        }
        CHECK(s == DN_ERR_ALLOC && idx == (dn_st_index *)SENTINEL, "index: allocation %ld gave %s",
              k, dn_status_str(s));
        if (fails) break;
    }
    CHECK(k >= 2, "index: only %ld allocations reached", k);
    free(b);
    return fails;
}

static int test_st_index(void) {
    int fails = 0;
    const char *text = "{\"metadata\": {\"total_size\": 1234},\n \"weight_map\": {\n"
                       "  \"model.layers.1.w\": \"model-00002-of-00002.safetensors\",\n"
                       "  \"model.embed\": \"model-00001-of-00002.safetensors\",\n"
                       "  \"lm_head.weight\": \"model-00002-of-00002.safetensors\"}}";
    dn_st_index *idx = NULL;
    CHECK(dn_st_index_parse(text, strlen(text), NULL, &idx) == DN_OK, "index: %s", dn_last_error());
    if (idx) {
        CHECK(idx->n == 3 && idx->n_files == 2 &&
                  !strcmp(idx->files[0], "model-00001-of-00002.safetensors") &&
                  !strcmp(idx->files[1], "model-00002-of-00002.safetensors"),
              "index: %zu tensors, %zu files", idx->n, idx->n_files);
        CHECK(!strcmp(idx->entries[0].name, "lm_head.weight"), "sorted by name");
        const char *f = dn_st_index_file(idx, "model.embed");
        CHECK(f && !strcmp(f, "model-00001-of-00002.safetensors"), "lookup");
        CHECK(!dn_st_index_file(idx, "nope") && !dn_st_index_file(idx, NULL), "absent lookup");
        dn_st_index_free(idx);
    }
    dn_st_index_free(NULL);
    static const struct {
        const char *why, *text, *need;
    } bad[] = {
        {"no weight_map", "{\"metadata\":{}}", "weight_map"},
        {"weight_map an array", "{\"weight_map\":[]}", "weight_map"},
        {"not an object", "[]", "not a JSON object"},
        {"not JSON", "{\"weight_map\":{\"a\":\"b\",}}", "trailing comma"},
        {"file a number", "{\"weight_map\":{\"a\":1}}", "not a file name"},
        {"parent directory", "{\"weight_map\":{\"a\":\"../x.safetensors\"}}", "plain file name"},
        {"absolute path", "{\"weight_map\":{\"a\":\"/etc/passwd\"}}", "plain file name"},
        {"subdirectory", "{\"weight_map\":{\"a\":\"sub/x.safetensors\"}}", "plain file name"},
        {"backslash", "{\"weight_map\":{\"a\":\"..\\\\x\"}}", "plain file name"},
        {"dot dot", "{\"weight_map\":{\"a\":\"..\"}}", "plain file name"},
        {"dot", "{\"weight_map\":{\"a\":\".\"}}", "plain file name"},
        {"empty name", "{\"weight_map\":{\"a\":\"\"}}", "plain file name"},
        {"NUL in the file name", "{\"weight_map\":{\"a\":\"x\\u0000/y\"}}", "plain file name"},
        {"NUL in the tensor name", "{\"weight_map\":{\"a\\u0000\":\"x\"}}", "NUL"},
        {"duplicate tensor", "{\"weight_map\":{\"a\":\"x\",\"a\":\"y\"}}", "duplicate"},
    };
    for (size_t c = 0; c < sizeof bad / sizeof bad[0]; c++) {
        idx = (dn_st_index *)SENTINEL;
        dn_status s = dn_st_index_parse(bad[c].text, strlen(bad[c].text), "idx.json", &idx);
        CHECK(s == DN_ERR_FORMAT && idx == (dn_st_index *)SENTINEL &&
                  strstr(dn_last_error(), bad[c].need) && !strncmp(dn_last_error(), "idx.json", 8),
              "%s: %s (%s)", bad[c].why, dn_status_str(s), dn_last_error());
        if (s == DN_OK) dn_st_index_free(idx);
    }
    /* from a file */
    char path[400];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", tmpdir());
    write_file(path, text, strlen(text));
    idx = NULL;
    CHECK(dn_st_index_open(path, &idx) == DN_OK && idx->n == 3, "index file: %s", dn_last_error());
    dn_st_index_free(idx);
    unlink(path);
    idx = (dn_st_index *)SENTINEL;
    CHECK(dn_st_index_open(path, &idx) == DN_ERR_IO && idx == (dn_st_index *)SENTINEL,
          "missing index file");
    return fails;
}

static int test_st_dtypes(void) {
    int fails = 0;
    for (int t = 0; t < DN_ST_DTYPE_COUNT; t++) {
        const char *nm = dn_st_dtype_name((dn_st_dtype)t);
        dn_st_dtype back = DN_ST_DTYPE_COUNT;
        CHECK(nm && dn_st_dtype_from_name(nm, &back) == DN_OK && back == (dn_st_dtype)t &&
                  dn_st_dtype_bits((dn_st_dtype)t) > 0,
              "dtype %d", t);
    }
    dn_st_dtype x = DN_ST_F32;
    CHECK(!dn_st_dtype_name(DN_ST_DTYPE_COUNT) && !dn_st_dtype_bits((dn_st_dtype)-1) &&
              dn_st_dtype_from_name("F33", &x) == DN_ERR_FORMAT && x == DN_ST_F32,
          "out of range dtypes");
    CHECK(dn_st_dtype_bits(DN_ST_F32) == 32 && dn_st_dtype_bits(DN_ST_BF16) == 16 &&
              dn_st_dtype_bits(DN_ST_F4) == 4 && !strcmp(dn_st_dtype_name(DN_ST_BF16), "BF16"),
          "dtype table");
    CHECK(!strcmp(dn_status_str(DN_ERR_FORMAT), "malformed input") &&
              !strcmp(dn_status_str(DN_ERR_IO), "i/o error"),
          "status names");
    return fails;
}

const test_case dn_tests_files[] = {
    {"files_json_valid", test_json_valid},
    {"files_json_invalid", test_json_invalid},
    {"files_json_numbers", test_json_numbers},
    {"files_json_getters", test_json_getters},
    {"files_json_writer", test_json_writer},
    {"files_json_alloc_failures", test_json_alloc_failures},
    {"files_json_load", test_json_load},
    {"files_st_dtypes", test_st_dtypes},
    {"files_st_roundtrip", test_st_roundtrip},
    {"files_st_malformed", test_st_malformed},
    {"files_st_mutations", test_st_mutations},
    {"files_st_write_failures", test_st_write_failures},
    {"files_st_alloc_failures", test_st_alloc_failures},
    {"files_st_index", test_st_index},
    {NULL, NULL},
};
