/*
 * cpu/parallel.c - the one parallel loop of the CPU kernels: tasks over (sequence, head, block),
 * each thread with its own slice of a workspace the caller allocated before the loop.
 *
 * Every kernel that runs threads goes through dn_parallel_tasks, so that
 *   - no allocation happens inside a parallel region (an allocation failure can only be a
 *     DN_ERR_ALLOC returned before any output is written);
 *   - the schedule is chosen in one place: static (task i always on the same thread for a given
 *     thread count: a decode state stays in the cache of the core that updated it, and per-thread
 *     sums are reproducible run to run) or dynamic (ragged work such as varlen batches);
 *   - builds without OpenMP run the same code serially.
 * Reductions stay deterministic when each task writes its own slot and the slots are summed in
 * task order afterwards (or, under the static schedule, per-thread slots summed in thread order).
 */
#include "../internal.h"

#ifdef _OPENMP
#include <omp.h>
#endif

size_t dn_parallel_ws_bytes(int nthreads, size_t per_thread_bytes) {
    const size_t n = (size_t)(nthreads > 0 ? nthreads : 1);
    if (per_thread_bytes > (SIZE_MAX - 63) / n) return SIZE_MAX; /* the allocation then fails */
    return ((per_thread_bytes + 63) & ~(size_t)63) * n;
}

int dn_parallel_threads(int nthreads, int64_t ntasks) {
    if (nthreads < 1) nthreads = 1;
    return ntasks < nthreads ? (ntasks > 0 ? (int)ntasks : 1) : nthreads;
}

void dn_parallel_tasks(int nthreads, int64_t ntasks, dn_schedule sched, dn_task_fn fn, void *ctx,
                       void *ws, size_t per_thread_bytes) {
    const size_t per = (per_thread_bytes + 63) & ~(size_t)63;
    const int nt = dn_parallel_threads(nthreads, ntasks);
#ifdef _OPENMP
    if (nt > 1) {
#pragma omp parallel num_threads(nt)
        {
            const int me = omp_get_thread_num();
            void *mine = ws ? (char *)ws + per * (size_t)me : NULL;
            if (sched == DN_SCHED_DYNAMIC) {
#pragma omp for schedule(dynamic, 1)
                for (int64_t t = 0; t < ntasks; t++)
                    fn(ctx, t, me, mine);
            } else {
#pragma omp for schedule(static)
                for (int64_t t = 0; t < ntasks; t++)
                    fn(ctx, t, me, mine);
            }
        }
        return;
    }
#endif
    (void)sched, (void)per, (void)nt;
    for (int64_t t = 0; t < ntasks; t++)
        fn(ctx, t, 0, ws);
}
