/*
 * cpu/dispatch.c - the kernel table of each SIMD level, and the choice of the active one.
 */
#include "../internal.h"

/* Every field by name, so that grepping a kernel's name finds its table entry. */
#define DN_TABLE(isa)                                                                              \
    {                                                                                              \
        .la_workspace = dn_cpu_la_workspace_##isa, .la_forward = dn_cpu_la_forward_##isa,          \
        .attn_workspace = dn_cpu_attn_workspace_##isa, .attn_forward = dn_cpu_attn_forward_##isa,  \
        .decode_workspace = dn_cpu_decode_workspace_##isa, .decode = dn_cpu_decode_##isa,          \
        .fma_peak = dn_cpu_fma_peak_##isa, .read_sum = dn_cpu_read_sum_##isa,                      \
        .mamba_workspace = dn_cpu_mamba_workspace_##isa,                                           \
        .mamba_forward = dn_cpu_mamba_forward_##isa,                                               \
        .mamba2_prepare = dn_cpu_mamba2_prepare_##isa,                                             \
        .mamba2_finish = dn_cpu_mamba2_finish_##isa,                                               \
        .rwkv4_workspace = dn_cpu_rwkv4_workspace_##isa,                                           \
        .rwkv4_forward = dn_cpu_rwkv4_forward_##isa, .conv_forward = dn_cpu_conv_forward_##isa,    \
        .la_bwd_workspace = dn_cpu_la_bwd_workspace_##isa,                                         \
        .la_backward = dn_cpu_la_backward_##isa, .la_saved_floats = dn_cpu_la_saved_floats_##isa,  \
        .la_forward_train = dn_cpu_la_forward_train_##isa,                                         \
        .attn_bwd_workspace = dn_cpu_attn_bwd_workspace_##isa,                                     \
        .attn_backward = dn_cpu_attn_backward_##isa,                                               \
        .conv_bwd_workspace = dn_cpu_conv_bwd_workspace_##isa,                                     \
        .conv_backward = dn_cpu_conv_backward_##isa,                                               \
        .mamba_bwd_workspace = dn_cpu_mamba_bwd_workspace_##isa,                                   \
        .mamba_backward = dn_cpu_mamba_backward_##isa,                                             \
        .rwkv4_bwd_workspace = dn_cpu_rwkv4_bwd_workspace_##isa,                                   \
        .rwkv4_backward = dn_cpu_rwkv4_backward_##isa,                                             \
        .matmul_workspace = dn_cpu_matmul_workspace_##isa, .matmul = dn_cpu_matmul_##isa,          \
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
