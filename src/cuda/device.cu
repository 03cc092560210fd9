/*
 * cuda/device.cu - the CUDA runtime behind the public device helpers (dn_cuda_device_count,
 * dn_cuda_malloc, ...) and the error reporting the GPU kernels share. A machine without a GPU
 * (or without a driver) is a normal case: the calls say so through DN_ERR_DEVICE.
 */
#include "cuda_common.h"

int dn_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError(); /* clear the sticky "no device" error */
        return 0;
    }
    return n;
}

dn_status dn_cuda_error(cudaError_t e, const char *what) {
    if (e == cudaSuccess) return DN_OK;
    (void)cudaGetLastError();
    return dn_fail(DN_ERR_DEVICE, "%s: CUDA error %s (%s)", what, cudaGetErrorName(e),
                   cudaGetErrorString(e));
}

dn_status dn_cuda_need_device(int device, const char *what) {
    int n = dn_cuda_device_count();
    if (n == 0) return dn_fail(DN_ERR_DEVICE, "%s: no CUDA device on this machine", what);
    if (device < 0 || device >= n)
        return dn_fail(DN_ERR_DEVICE, "%s: CUDA device %d does not exist (%d present)", what,
                       device, n);
    return DN_OK;
}

dn_status dn_cuda_malloc(void **ptr, size_t bytes) {
    if (!ptr) return dn_fail(DN_ERR_NULL, "dn_cuda_malloc: ptr is NULL");
    *ptr = NULL;
    int dev = 0;
    (void)cudaGetDevice(&dev);
    dn_status st = dn_cuda_need_device(dev, "dn_cuda_malloc");
    if (st != DN_OK) return st;
    cudaError_t e = cudaMalloc(ptr, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        *ptr = NULL;
        return dn_cuda_error(e, "dn_cuda_malloc");
    }
    return DN_OK;
}

void dn_cuda_free(void *ptr) {
    if (ptr) (void)cudaFree(ptr);
}

dn_status dn_cuda_memcpy(void *dst, const void *src, size_t bytes) {
    if ((!dst || !src) && bytes) return dn_fail(DN_ERR_NULL, "dn_cuda_memcpy: NULL buffer");
    if (dn_cuda_device_count() == 0)
        return dn_fail(DN_ERR_DEVICE, "dn_cuda_memcpy: no CUDA device on this machine");
    return dn_cuda_error(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault), "dn_cuda_memcpy");
}

dn_status dn_cuda_synchronize(void) {
    if (dn_cuda_device_count() == 0)
        return dn_fail(DN_ERR_DEVICE, "dn_cuda_synchronize: no CUDA device on this machine");
    return dn_cuda_error(cudaDeviceSynchronize(), "dn_cuda_synchronize");
}
