/*
 * fuzz.h - the contract fuzzer's entry point, shared by the libFuzzer target
 * (LLVMFuzzerTestOneInput in fuzz.c, built by `make fuzz`) and the bounded random loop that runs
 * inside the test driver (case fuzz_bounded).
 *
 * One input is a byte string: its first byte picks the family (unless DN_FUZZ_FAMILY names one),
 * the following bytes the impl, shapes, strides, options, aliasing and a seed for the values.
 * A contract violation aborts with a line naming the property and the call.
 */
#ifndef DN_FUZZ_H
#define DN_FUZZ_H

#include <stddef.h>
#include <stdint.h>

enum {
    FZ_LA_FWD = 0, FZ_LA_STEP, FZ_LA_BWD, FZ_LA_TRAIN, FZ_ATTN_FWD, FZ_ATTN_BWD, FZ_KV,
    FZ_MAMBA, FZ_MAMBA_BWD, FZ_MAMBA2, FZ_MAMBA2_BWD, FZ_RWKV4, FZ_RWKV4_BWD, FZ_CONV,
    FZ_CONV_BWD, FZ_NAMES, FZ_JSON, FZ_SAFETENSORS, FZ_CHECKPOINT, FZ_TOKENIZER, FZ_HF,
    FZ_FAMILY_COUNT
};

/* Runs one input through the harness. family < 0: the first byte picks it. */
void dn_fuzz_one(const uint8_t *data, size_t size, int family);
/* Family index for a name ("la_fwd", "kv", ...), -1 if unknown. */
int dn_fuzz_family_from_name(const char *name);
const char *dn_fuzz_family_name(int family);

/* The file-parser families (fuzz_files.c): the input is the file (after a mode byte); they
 * return NULL, or the property an input violated. */
const char *dn_fuzz_json(const uint8_t *data, size_t size);
const char *dn_fuzz_safetensors(const uint8_t *data, size_t size);
/* dn_checkpoint_parse on mutations of a valid checkpoint (or on the raw input) */
const char *dn_fuzz_checkpoint(const uint8_t *data, size_t size);
/* dn_tokenizer_parse on a valid tokenizer.json mutated (or the raw input), and encode/decode of
 * the input as text */
const char *dn_fuzz_tokenizer(const uint8_t *data, size_t size);
/* dn_model_load_hf on the checkpoint fixtures with one file changed (or the input as config.json),
 * and a prefill and a decode step over what loads */
const char *dn_fuzz_hf(const uint8_t *data, size_t size);

#endif
