/*
 * test_compare.c - `deltanet compare`: a smoke run on tiny sizes (the tables are printed, the
 * JSON has its fields, the SVG charts are well-formed) and the capacity experiment against its
 * closed forms. No timing is asserted.
 */
#include "compare.h"
#include "test.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) n = 0;
    if (s) s[n] = 0;
    fclose(f);
    return s;
}

/* Every opened tag is closed in order (self-closing tags and the XML declaration aside). */
static int xml_balanced(const char *s) {
    char stack[64][32];
    int depth = 0;
    for (const char *p = s; (p = strchr(p, '<')); p++) {
        if (p[1] == '?' || p[1] == '!') continue;
        const char *e = strchr(p, '>');
        if (!e) return 0;
        if (e[-1] == '/') continue;
        char name[32];
        int closing = p[1] == '/';
        size_t n = strcspn(p + 1 + closing, " >/\n");
        if (n == 0 || n >= sizeof name) return 0;
        memcpy(name, p + 1 + closing, n), name[n] = 0;
        if (closing) {
            if (depth == 0 || strcmp(stack[depth - 1], name)) return 0;
            depth--;
        } else {
            if (depth == 64) return 0;
            strcpy(stack[depth++], name);
        }
    }
    return depth == 0;
}

static int test_compare_smoke(void) {
    int fails = 0;
    char dir[] = "/tmp/dn_compare_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    char out[300], json[300], log[300];
    snprintf(out, sizeof out, "%s/out", dir);
    snprintf(json, sizeof json, "%s/out/compare.json", dir);
    snprintf(log, sizeof log, "%s/stdout.txt", dir);
    char *argv[] = {"compare", "--lengths", "32,64,128", "--contexts", "64,256", "--heads", "2",
                    "--dim",   "32",        "--quick",   "--out",      out,      NULL};
    fflush(stdout);
    int saved = dup(1), fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    close(fd);
    int rc = dn_compare_main(12, argv);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    CHECK(rc == 0, "compare returned %d", rc);
    char *text = slurp(log);
    CHECK(text && strstr(text, "== Summary") && strstr(text, "Point by point") &&
              strstr(text, "== Prefill time") && strstr(text, "== Decode time per token") &&
              strstr(text, "== Memory capacity"),
          "the terminal report misses a table");
    static const char *const names[] = {"softmax_attn", "linear_attn", "mamba2", "deltanet",
                                        "gdn",          "rwkv4",       "mamba1"};
    for (int i = 0; i < 7 && text; i++)
        CHECK(strstr(text, names[i]), "no row for %s", names[i]);
    char *js = slurp(json);
    CHECK(js != NULL, "no compare.json");
    if (js) {
        static const char *const keys[] = {"\"machine\"",
                                           "\"build\"",
                                           "\"records\"",
                                           "\"kind\": \"prefill\"",
                                           "\"kind\": \"decode\"",
                                           "\"kind\": \"fit\"",
                                           "\"kind\": \"capacity\"",
                                           "\"seconds\"",
                                           "\"gflops\"",
                                           "\"peak_bytes\"",
                                           "\"seconds_per_token\"",
                                           "\"state_bytes_computed\"",
                                           "\"prefill_exponent\"",
                                           "\"crossover_T\"",
                                           "\"rel_error\""};
        for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
            CHECK(strstr(js, keys[i]), "compare.json has no %s", keys[i]);
        int opens = 0, closes = 0;
        for (char *p = js; *p; p++)
            opens += *p == '{' || *p == '[', closes += *p == '}' || *p == ']';
        CHECK(opens == closes && opens > 10, "compare.json brackets unbalanced (%d vs %d)", opens,
              closes);
        CHECK(!strstr(js, "nan") && !strstr(js, "inf"), "compare.json holds a non-finite number");
    }
    static const char *const charts[] = {"prefill_time.svg", "decode_time.svg", "state_bytes.svg",
                                         "capacity.svg"};
    for (int i = 0; i < 4; i++) {
        char path[400];
        snprintf(path, sizeof path, "%s/%s", out, charts[i]);
        char *svg = slurp(path);
        CHECK(svg && !strncmp(svg, "<?xml", 5) && strstr(svg, "<svg") && strstr(svg, "</svg>") &&
                  strstr(svg, "<polyline") && xml_balanced(svg),
              "%s is missing or not well-formed", charts[i]);
        free(svg);
        remove(path);
    }
    free(text), free(js);
    remove(json), remove(log), rmdir(out), rmdir(dir);
    return fails;
}

/* Closed forms. One pair is recalled exactly by linear attention and by DeltaNet (beta = 1, unit
 * key: S = k v^T, S^T k = v). Linear attention's relative error is (N - 1) / K in expectation
 * (each other unit key adds (k_i.k_j) v_j, E[(k_i.k_j)^2] = 1/K), with D older pairs
 * (N - 1 + D) / K. DeltaNet recalls the last pair it wrote exactly, whatever came before (the
 * write sets S^T k to v). A gate closed at the boundary (decay e^-30) erases the older pairs:
 * the recall equals the run without them. */
static int test_capacity_closed_form(void) {
    int fails = 0;
    const int64_t K = 64;
    double e, a, last;
    CHECK(dn_compare_capacity(DN_OP_DELTANET, K, 1, 0, 0, 0, 1, &e, &a, NULL) == DN_OK, "run");
    CHECK(e < 1e-10 && a == 1.0, "deltanet, one pair: error %g", e);
    CHECK(dn_compare_capacity(DN_OP_LINEAR_ATTN, K, 1, 0, 0, 0, 1, &e, &a, NULL) == DN_OK, "run");
    CHECK(e < 1e-10, "linear attention, one pair: error %g", e);
    double prev = 0;
    static const int64_t Ns[] = {8, 16, 32, 64};
    for (int i = 0; i < 4; i++) {
        double mean = 0;
        for (int s = 0; s < 8; s++) {
            CHECK(dn_compare_capacity(DN_OP_LINEAR_ATTN, K, Ns[i], 0, 0, 0, 100 + s, &e, &a,
                                      NULL) == DN_OK,
                  "run");
            mean += e / 8;
        }
        const double expect = (double)(Ns[i] - 1) / K;
        CHECK(fabs(mean - expect) < 0.25 * expect,
              "linear attention N=%lld: error %.3f, closed "
              "form (N-1)/K = %.3f",
              (long long)Ns[i], mean, expect);
        CHECK(mean > prev, "linear attention's error does not grow with N");
        prev = mean;
    }
    double mean = 0;
    for (int s = 0; s < 8; s++) {
        CHECK(dn_compare_capacity(DN_OP_LINEAR_ATTN, K, 16, 256, 0, 0, 200 + s, &e, &a, NULL) ==
                  DN_OK,
              "run");
        mean += e / 8;
    }
    CHECK(fabs(mean - (15.0 + 256) / K) < 0.25 * (15.0 + 256) / K,
          "linear attention after 256 old pairs: error %.3f, closed form %.3f", mean,
          (15.0 + 256) / K);
    for (int64_t N = 8; N <= 256; N *= 4) {
        CHECK(dn_compare_capacity(DN_OP_DELTANET, K, N, 256, 0, 0, 7, &e, &a, &last) == DN_OK,
              "run");
        CHECK(last < 1e-9, "deltanet N=%lld after 256 pairs: last pair error %g", (long long)N,
              last);
    }
    double clean, dirty, gated;
    CHECK(dn_compare_capacity(DN_OP_DELTANET, K, 16, 0, 0, 0, 9, &clean, &a, NULL) == DN_OK, "run");
    CHECK(dn_compare_capacity(DN_OP_DELTANET, K, 16, 256, 0, 0, 9, &dirty, &a, NULL) == DN_OK,
          "run");
    CHECK(dn_compare_capacity(DN_OP_GDN, K, 16, 256, 0, 1, 9, &gated, &a, NULL) == DN_OK, "run");
    CHECK(fabs(gated - clean) < 1e-6 * (1 + clean) && dirty > 1.2 * clean,
          "distractors: clean %.4f, deltanet with them %.4f, gate closed %.4f", clean, dirty,
          gated);
    CHECK(dn_compare_capacity(DN_OP_GLA, 0, 4, 0, 0, 0, 1, &e, &a, NULL) != DN_OK,
          "K = 0 accepted");
    return fails;
}

const test_case dn_tests_compare[] = {
    {"compare_capacity_closed_form", test_capacity_closed_form},
    {"compare_smoke", test_compare_smoke},
    {NULL, NULL},
};
