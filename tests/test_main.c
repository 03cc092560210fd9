/*
 * test_main.c - the test driver: runs every registered case (or those whose name contains one of
 * the command-line arguments), prints each result, its time and what it skipped (SIMD levels this
 * machine lacks), and ends with the line "N passed, N failed[, N skipped]". Exits non-zero on
 * any failure, and when a name filter selects no case (a typo must not pass).
 */
#include "test.h"

#include <time.h>

extern const test_case dn_tests_la[];
extern const test_case dn_tests_attn[];
extern const test_case dn_tests_ssm[];
extern const test_case dn_tests_compare[];
extern const test_case dn_tests_contract[];
extern const test_case dn_tests_la_bwd[];
extern const test_case dn_tests_bwd_ssm[];
extern const test_case dn_tests_faults[];
extern const test_case dn_tests_fuzz[];
extern const test_case dn_tests_model[];
extern const test_case dn_tests_train[];
extern const test_case dn_tests_files[];
extern const test_case dn_tests_matmul[];
extern const test_case dn_tests_hf[];
extern const test_case dn_tests_tokenizer[];
extern const test_case dn_tests_cuda[];

unsigned test_isa_skipped;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int selected(const char *name, int argc, char **argv) {
    /* no filter: every case, the contract fuzzer's bounded loop (fuzz_bounded) included */
    if (argc < 2) return 1;
    for (int i = 1; i < argc; i++)
        if (strstr(name, argv[i])) return 1;
    return 0;
}

int main(int argc, char **argv) {
    const test_case *suites[] = {
        dn_tests_la,      dn_tests_la_bwd,    dn_tests_attn,    dn_tests_ssm,
        dn_tests_bwd_ssm, dn_tests_matmul,    dn_tests_compare, dn_tests_contract,
        dn_tests_faults,  dn_tests_fuzz,      dn_tests_files,   dn_tests_model,
        dn_tests_train,   dn_tests_tokenizer, dn_tests_hf,      dn_tests_cuda};
    printf("%s\n", dn_build_info());
    const dn_isa start_isa = dn_isa_active();
    int failed = 0, passed = 0, skipped = 0;
    double t_all = now();
    for (size_t s = 0; s < sizeof suites / sizeof suites[0]; s++)
        for (const test_case *c = suites[s]; c->name; c++) {
            if (!selected(c->name, argc, argv)) continue;
            test_isa_skipped = 0;
            double t0 = now();
            int f = c->fn();
            dn_set_isa(start_isa); /* a case that changed the level must not leak it */
            printf("%-4s %-44s %8.2f s\n", f ? "FAIL" : "ok", c->name, now() - t0);
            for (int isa = 0; isa < DN_ISA_COUNT; isa++)
                if (test_isa_skipped & (1u << isa)) {
                    printf(
                        "     skipped: the %s kernels (not supported by this processor or build)\n",
                        dn_isa_name((dn_isa)isa));
                    skipped++;
                }
            fflush(stdout);
            if (f)
                failed++;
            else
                passed++;
        }
    if (passed + failed == 0) {
        printf("no test case matches the filter\n0 passed, 1 failed\n");
        return 1;
    }
    printf("(%.1f s)\n", now() - t_all);
    if (skipped)
        printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    else
        printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
