/*
 * test_main.c - the test driver: runs every registered case (or those whose name contains one of
 * the command-line arguments), prints each result and its time, exits non-zero on any failure.
 */
#include "test.h"

#include <time.h>

extern const test_case dn_tests_la[];
extern const test_case dn_tests_attn[];
extern const test_case dn_tests_ssm[];
extern const test_case dn_tests_compare[];
extern const test_case dn_tests_la_bwd[];
extern const test_case dn_tests_bwd_ssm[];
extern const test_case dn_tests_faults[];
extern const test_case dn_tests_fuzz[];

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int selected(const char *name, int argc, char **argv) {
    if (argc < 2) return 1;
    for (int i = 1; i < argc; i++)
        if (strstr(name, argv[i])) return 1;
    return 0;
}

int main(int argc, char **argv) {
    const test_case *suites[] = {dn_tests_la, dn_tests_la_bwd, dn_tests_attn, dn_tests_ssm, dn_tests_bwd_ssm, dn_tests_compare, dn_tests_faults, dn_tests_fuzz};
    printf("%s\n", dn_build_info());
    int failed = 0, run = 0;
    double t_all = now();
    for (size_t s = 0; s < sizeof suites / sizeof suites[0]; s++)
        for (const test_case *c = suites[s]; c->name; c++) {
            if (!selected(c->name, argc, argv)) continue;
            double t0 = now();
            int f = c->fn();
            printf("%-4s %-40s %8.2f s\n", f ? "FAIL" : "ok", c->name, now() - t0);
            fflush(stdout);
            failed += f != 0;
            run++;
        }
    printf("%d of %d test cases passed (%.1f s)\n", run - failed, run, now() - t_all);
    return failed ? 1 : 0;
}
