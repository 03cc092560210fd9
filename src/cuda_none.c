/*
 * cuda_none.c - the CUDA entry points of a build without nvcc: every one reports that this
 * build has no GPU kernels (DN_ERR_DEVICE), so callers can test for a GPU the same way
 * everywhere. A build with nvcc compiles src/cuda/ instead.
 */
#include "internal.h"

static dn_status no_cuda(const char *what) {
    return dn_fail(DN_ERR_DEVICE,
                   "%s: this build of deltanet has no CUDA kernels (built without "
                   "nvcc, or with CUDA=0)",
                   what);
}

int dn_cuda_device_count(void) { return 0; }
dn_status dn_cuda_malloc(void **ptr, size_t bytes) {
    (void)bytes;
    if (ptr) *ptr = NULL;
    return no_cuda("dn_cuda_malloc");
}
void dn_cuda_free(void *ptr) { (void)ptr; }
dn_status dn_cuda_memcpy(void *dst, const void *src, size_t bytes) {
    (void)dst, (void)src, (void)bytes;
    return no_cuda("dn_cuda_memcpy");
}
dn_status dn_cuda_synchronize(void) { return no_cuda("dn_cuda_synchronize"); }
dn_status dn_cuda_release_scratch(void) { return no_cuda("dn_cuda_release_scratch"); }
dn_status dn_cuda_la_forward(const dn_la_params *p) { return no_cuda(dn_op_name(p->op)); }
dn_status dn_cuda_la_backward(const dn_la_bwd_params *bp) {
    return no_cuda(dn_op_name(bp->fwd.op));
}
