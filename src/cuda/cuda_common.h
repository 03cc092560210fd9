/*
 * cuda/cuda_common.h - what the CUDA sources share: the public header, the library's error
 * reporting (src/core.c, C linkage) and the runtime's error translated to a dn_status.
 */
#ifndef DN_CUDA_COMMON_H
#define DN_CUDA_COMMON_H

#include "deltanet.h"

#include <cuda_runtime.h>

extern "C" {
dn_status dn_fail(dn_status st, const char *fmt, ...);
dn_status dn_cuda_la_forward(const dn_la_params *p);
dn_status dn_cuda_la_backward(const dn_la_bwd_params *bp);
}

/* DN_OK for cudaSuccess, else DN_ERR_DEVICE naming the call and the runtime's error. */
dn_status dn_cuda_error(cudaError_t e, const char *what);
/* Stream-ordered scratch on the current device from the library's pool, which keeps its memory
 * between calls (src/cuda/device.cu); freed with cudaFreeAsync on a stream. */
cudaError_t dn_cuda_scratch(void **ptr, size_t bytes, cudaStream_t s);
/* DN_OK when CUDA device `device` exists, else DN_ERR_DEVICE saying why not. */
dn_status dn_cuda_need_device(int device, const char *what);

#endif
