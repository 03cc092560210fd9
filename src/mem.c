/*
 * mem.c - the library's one allocation point, with a fault-injection hook for the tests.
 *
 * Every buffer the library allocates comes from dn_alloc, always before a kernel starts and
 * before any output is written, so an allocation failure can only surface as DN_ERR_ALLOC from
 * a call that has changed nothing. The tests make the n-th allocation fail
 * (dn_fault_fail_alloc_after) and check that promise for every n a call reaches.
 */
#include "internal.h"

#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

/* Allocations left before the injected failure; negative: injection off. */
static _Atomic long fail_countdown = -1;
static _Atomic long alloc_count = 0;

void dn_fault_fail_alloc_after(long n) { atomic_store(&fail_countdown, n); }
long dn_fault_alloc_count(void) { return atomic_load(&alloc_count); }

void *dn_alloc(size_t bytes) {
    atomic_fetch_add(&alloc_count, 1);
    if (atomic_load_explicit(&fail_countdown, memory_order_relaxed) >= 0 &&
        atomic_fetch_sub(&fail_countdown, 1) == 0)
        return NULL;
    if (bytes > SIZE_MAX - 63) return NULL;
    /* aligned_alloc wants a multiple of the alignment; 0 bytes still gives a valid pointer */
    size_t n = (bytes + 63) & ~(size_t)63;
    return aligned_alloc(64, n ? n : 64);
}

void *dn_calloc(size_t bytes) {
    void *p = dn_alloc(bytes);
    if (p) memset(p, 0, bytes);
    return p;
}

void dn_free(void *p) { free(p); }

void *dn_scratch(void *given, size_t given_bytes, size_t need, void **owned) {
    *owned = NULL;
    static _Alignas(64) char none[64]; /* a valid pointer for a kernel that needs no scratch */
    if (need == 0) return given ? given : none;
    if (given && given_bytes >= need && ((uintptr_t)given & 63) == 0) return given;
    *owned = dn_alloc(need);
    return *owned;
}
