/*
 * cpu/dispatch.c - the kernel table of each SIMD level, and the choice of the active one.
 */
#include "../internal.h"

#define DN_TABLE(isa)                                                                          \
    {                                                                                          \
        dn_cpu_la_workspace_##isa, dn_cpu_la_forward_##isa, dn_cpu_attn_workspace_##isa,       \
            dn_cpu_attn_forward_##isa, dn_cpu_decode_workspace_##isa, dn_cpu_decode_##isa,     \
            dn_cpu_fma_peak_##isa, dn_cpu_read_sum_##isa, dn_cpu_mamba_forward_##isa,          \
            dn_cpu_rwkv4_forward_##isa, dn_cpu_conv_forward_##isa,                             \
            dn_cpu_la_bwd_workspace_##isa, dn_cpu_la_backward_##isa,                           \
            dn_cpu_la_saved_floats_##isa, dn_cpu_la_forward_train_##isa,                       \
            dn_cpu_attn_bwd_workspace_##isa, dn_cpu_attn_backward_##isa,                       \
            dn_cpu_conv_backward_##isa, dn_cpu_mamba_backward_##isa,                           \
            dn_cpu_rwkv4_backward_##isa                                                        \
    }

static const dn_cpu_kernels table_generic = DN_TABLE(generic);
#if defined(DN_HAVE_X86_KERNELS)
static const dn_cpu_kernels table_avx2 = DN_TABLE(avx2);
static const dn_cpu_kernels table_avx512 = DN_TABLE(avx512);
#endif

const dn_cpu_kernels *dn_cpu(void) {
#if defined(DN_HAVE_X86_KERNELS)
    switch (dn_isa_active()) {
    case DN_ISA_AVX2: return &table_avx2;
    case DN_ISA_AVX512: return &table_avx512;
    default: break;
    }
#endif
    return &table_generic;
}
