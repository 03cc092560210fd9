/*
 * safetensors.h - reader and writer of the safetensors checkpoint format (Hugging Face), and of
 * the index of a sharded checkpoint (model.safetensors.index.json). Internal to the library.
 *
 * The format: 8 bytes N (unsigned 64-bit, little-endian); N bytes of a JSON object (UTF-8,
 * starting with '{' when written, whitespace-padded) mapping each tensor name to
 * {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, plus an optional
 * "__metadata__" object of string values; then the byte buffer, to the end of the file. The
 * offsets are relative to the buffer; each tensor is its elements in row-major order,
 * little-endian, packed. Scalars (shape []) and empty tensors (a 0 in the shape) are allowed.
 *
 * The reader trusts nothing: the header length must be at most DN_ST_MAX_HEADER and fit in the
 * file; the header must be strict JSON (json.h: no duplicate keys) holding an object; every
 * entry must have exactly the three fields, a known dtype, non-negative integer dims whose
 * product times the element size (checked, no overflow) equals end - begin; names must not be
 * "__metadata__" or hold a NUL byte; metadata values must be strings; and the tensors, sorted by
 * offset, must tile the buffer exactly: no hole, no overlap, nothing past the last one, so each
 * byte of the file belongs to exactly one tensor. A violation is DN_ERR_FORMAT naming the file
 * and what is wrong; no handle is returned.
 */
#ifndef DN_MODEL_SAFETENSORS_H
#define DN_MODEL_SAFETENSORS_H

#include "deltanet.h"
#include "json.h"

#include <stddef.h>
#include <stdint.h>

/* Largest header accepted (the reference implementation's limit). */
#define DN_ST_MAX_HEADER 100000000ull
/* Largest model.safetensors.index.json accepted by dn_st_index_open. */
#define DN_ST_INDEX_MAX_BYTES ((size_t)64 << 20)

/* Element types; the name table is the format's spelling ("F32", "BF16", "F8_E4M3", ...). */
typedef enum dn_st_dtype {
    DN_ST_F64 = 0,
    DN_ST_F32,
    DN_ST_F16,
    DN_ST_BF16,
    DN_ST_I64,
    DN_ST_I32,
    DN_ST_I16,
    DN_ST_I8,
    DN_ST_U64,
    DN_ST_U32,
    DN_ST_U16,
    DN_ST_U8,
    DN_ST_BOOL,
    DN_ST_C64,     /* complex, two F32 */
    DN_ST_F8_E5M2, /* 8-bit floats */
    DN_ST_F8_E4M3,
    DN_ST_F8_E8M0,
    DN_ST_F8_E4M3FNUZ,
    DN_ST_F8_E5M2FNUZ,
    DN_ST_F6_E2M3, /* 6-bit floats, packed: a tensor's bits must fill whole bytes */
    DN_ST_F6_E3M2,
    DN_ST_F4, /* 4-bit float, packed the same way */
    DN_ST_DTYPE_COUNT
} dn_st_dtype;

/* "F32", ...; NULL out of range. */
const char *dn_st_dtype_name(dn_st_dtype t);
/* Bits per element (32 for F32, 4 for F4); 0 out of range. */
int dn_st_dtype_bits(dn_st_dtype t);
/* DN_ERR_FORMAT for an unknown name. */
dn_status dn_st_dtype_from_name(const char *name, dn_st_dtype *t);

/* One tensor of a parsed file. data points into the file's bytes and is NOT necessarily aligned
 * to the element size (files from other writers need not pad their header): read it with memcpy
 * or a conversion loop, not through a float pointer. */
typedef struct dn_st_tensor {
    const char *name; /* NUL-terminated UTF-8 */
    dn_st_dtype dtype;
    int ndim;
    const int64_t *shape; /* ndim entries */
    int64_t numel;        /* product of the shape (1 for a scalar) */
    const uint8_t *data;  /* bytes bytes; never NULL, even for an empty tensor */
    uint64_t bytes;
    uint64_t offset; /* begin, relative to the byte buffer */
} dn_st_tensor;

/* A parsed file. Every field is read-only; the ones ending in _ belong to the implementation. */
typedef struct dn_st {
    const char *name; /* the path, or "safetensors" for a buffer: message prefix */
    size_t n_tensors;
    const dn_st_tensor *tensors; /* in header order */
    size_t n_meta;
    const char *const *meta_keys; /* __metadata__, in header order */
    const char *const *meta_values;
    uint64_t header_bytes; /* N */
    const uint8_t *data;   /* the byte buffer */
    uint64_t data_bytes;

    dn_json *doc_;
    const dn_st_tensor **by_name_; /* sorted by name, for dn_st_find */
    void *map_;                    /* the file's bytes when opened by dn_st_open */
    size_t map_bytes_;
    int map_kind_; /* 0 borrowed, 1 mmap, 2 dn_alloc */
} dn_st;

/* Parses the n bytes at buf (a whole file). The handle borrows buf, which must outlive it. */
dn_status dn_st_parse(const uint8_t *buf, size_t n, dn_st **out);
/* Opens and parses the file at path, mapped read-only (read into memory where mapping fails).
 * While the handle is open the file must not be truncated (a mapped page past the new end
 * faults). Missing or unreadable file: DN_ERR_IO. */
dn_status dn_st_open(const char *path, dn_st **out);
/* Frees the handle (and unmaps the file). NULL is a no-op. */
void dn_st_close(dn_st *st);

/* The tensor named name, or NULL (a binary search). */
const dn_st_tensor *dn_st_find(const dn_st *st, const char *name);
/* The metadata value of key, or NULL. */
const char *dn_st_meta(const dn_st *st, const char *key);
/* The tensor named name, checked: DN_ERR_FORMAT naming the file and the tensor when it is
 * missing, of another dtype, or (shape non-NULL) of another shape than [shape[0..ndim)]. */
dn_status dn_st_expect(const dn_st *st, const char *name, dn_st_dtype dtype, int ndim,
                       const int64_t *shape, const dn_st_tensor **out);

/* ---- writing ---- */
/* One tensor to write: ndim dims at shape (NULL allowed for ndim 0), the packed little-endian
 * bytes at data (NULL allowed when the tensor is empty). */
typedef struct dn_st_entry {
    const char *name;
    dn_st_dtype dtype;
    int ndim;
    const int64_t *shape;
    const void *data;
} dn_st_entry;

/* The first part of a file holding entries[0..n) in that order, back to back: the 8-byte length
 * and the header, padded with spaces to a multiple of 8 bytes so that the data starts 8-byte
 * aligned (then a tensor is aligned to its element size when the ones before it fill whole
 * multiples of that size: order tensors by decreasing element size to get that for all).
 * *out is a new dn_alloc buffer of *len bytes; *data_bytes (may be NULL) gets the size of the
 * data that follows. The metadata (n_meta keys and values, may be 0) goes first, as
 * "__metadata__". Checked: names non-NULL, unique, valid UTF-8 and not "__metadata__"; dtypes
 * known; dims non-negative with a size that fits 64 bits and fills whole bytes; data present
 * for a non-empty tensor; metadata keys unique. DN_ERR_ARG / DN_ERR_NULL / DN_ERR_SHAPE
 * otherwise. */
dn_status dn_st_make_header(const dn_st_entry *entries, size_t n, const char *const *meta_keys,
                            const char *const *meta_values, size_t n_meta, uint8_t **out,
                            size_t *len, uint64_t *data_bytes);
/* Writes the file to path atomically (fileio.h: a temporary beside it, fsync, rename; on
 * failure the target is unchanged and the temporary removed). Checks as dn_st_make_header;
 * DN_ERR_UNSUPPORTED on a big-endian host (the format is little-endian and the data is
 * written as it is in memory). */
dn_status dn_st_write(const char *path, const dn_st_entry *entries, size_t n,
                      const char *const *meta_keys, const char *const *meta_values, size_t n_meta);

/* ---- sharded checkpoints: model.safetensors.index.json ----
 * {"metadata": {...}, "weight_map": {"tensor name": "model-00001-of-00002.safetensors", ...}}
 * weight_map is required, its values strings naming files in the index's own directory: no
 * path separator ('/' or '\'), not empty, not "." or "..", no NUL. Other members are ignored. */
typedef struct dn_st_index_entry {
    const char *name; /* tensor */
    const char *file; /* shard file name */
} dn_st_index_entry;

typedef struct dn_st_index {
    size_t n;
    const dn_st_index_entry *entries; /* sorted by tensor name */
    size_t n_files;
    const char *const *files; /* the distinct shard files, sorted */

    dn_json *doc_;
} dn_st_index;

/* Parses the text of an index (what names it in messages; NULL: "safetensors index"). */
dn_status dn_st_index_parse(const char *text, size_t n, const char *what, dn_st_index **out);
/* Reads (at most DN_ST_INDEX_MAX_BYTES) and parses the index file at path. */
dn_status dn_st_index_open(const char *path, dn_st_index **out);
/* The shard file holding tensor name, or NULL. */
const char *dn_st_index_file(const dn_st_index *idx, const char *name);
void dn_st_index_free(dn_st_index *idx);

#endif
