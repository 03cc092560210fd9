/*
 * safetensors.c - the safetensors reader, writer and shard index (safetensors.h).
 *
 * Reading validates in this order, each step relying on the ones before: the length field
 * against the limit and the file; the header as strict JSON (json.c); every entry's fields,
 * dtype, shape and offsets, sizes in checked 64-bit arithmetic; then the tiling of the buffer,
 * the tensors sorted by offset. Only then is a data pointer formed. The handle's arrays (tensors,
 * their dims, the name index, the metadata) share one allocation; names and metadata strings
 * point into the parsed header, which the handle keeps.
 */
#include "safetensors.h"

#include "../internal.h"
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define COUNTOF(a) (sizeof(a) / sizeof((a)[0]))

static const struct {
    const char *name;
    int bits;
} dtypes[] = {
    [DN_ST_F64] = {"F64", 64},
    [DN_ST_F32] = {"F32", 32},
    [DN_ST_F16] = {"F16", 16},
    [DN_ST_BF16] = {"BF16", 16},
    [DN_ST_I64] = {"I64", 64},
    [DN_ST_I32] = {"I32", 32},
    [DN_ST_I16] = {"I16", 16},
    [DN_ST_I8] = {"I8", 8},
    [DN_ST_U64] = {"U64", 64},
    [DN_ST_U32] = {"U32", 32},
    [DN_ST_U16] = {"U16", 16},
    [DN_ST_U8] = {"U8", 8},
    [DN_ST_BOOL] = {"BOOL", 8},
    [DN_ST_C64] = {"C64", 64},
    [DN_ST_F8_E5M2] = {"F8_E5M2", 8},
    [DN_ST_F8_E4M3] = {"F8_E4M3", 8},
    [DN_ST_F8_E8M0] = {"F8_E8M0", 8},
    [DN_ST_F8_E4M3FNUZ] = {"F8_E4M3FNUZ", 8},
    [DN_ST_F8_E5M2FNUZ] = {"F8_E5M2FNUZ", 8},
    [DN_ST_F6_E2M3] = {"F6_E2M3", 6},
    [DN_ST_F6_E3M2] = {"F6_E3M2", 6},
    [DN_ST_F4] = {"F4", 4},
};
_Static_assert(COUNTOF(dtypes) == DN_ST_DTYPE_COUNT, "safetensors dtype table out of date");

const char *dn_st_dtype_name(dn_st_dtype t) {
    return (unsigned)t < DN_ST_DTYPE_COUNT ? dtypes[t].name : NULL;
}

int dn_st_dtype_bits(dn_st_dtype t) { return (unsigned)t < DN_ST_DTYPE_COUNT ? dtypes[t].bits : 0; }

static int dtype_lookup(const char *s, size_t len, dn_st_dtype *t) {
    for (int i = 0; i < DN_ST_DTYPE_COUNT; i++)
        if (strlen(dtypes[i].name) == len && !memcmp(dtypes[i].name, s, len)) {
            *t = (dn_st_dtype)i;
            return 1;
        }
    return 0;
}

dn_status dn_st_dtype_from_name(const char *name, dn_st_dtype *t) {
    if (!name || !t) return dn_fail(DN_ERR_NULL, "dn_st_dtype_from_name: NULL argument");
    if (dtype_lookup(name, strlen(name), t)) return DN_OK;
    char b[200];
    return dn_fail(DN_ERR_FORMAT, "unknown safetensors dtype '%s'",
                   dn_json_shown(b, sizeof b, name, strlen(name)));
}

/* Bytes of numel elements of t: 1 with *bytes set, 0 when it overflows 64 bits, -1 when the
 * bits do not fill whole bytes (packed 4- and 6-bit types). */
static int dtype_bytes(dn_st_dtype t, int64_t numel, uint64_t *bytes) {
    uint64_t bits;
    if (numel < 0 || __builtin_mul_overflow((uint64_t)numel, (uint64_t)dtypes[t].bits, &bits))
        return 0;
    if (bits % 8) return -1;
    *bytes = bits / 8;
    return 1;
}

/* "[2, 3]" (the first 8 dims) for messages */
static const char *shape_str(char *b, size_t cap, const int64_t *s, int nd) {
    size_t o = (size_t)snprintf(b, cap, "[");
    for (int i = 0; i < nd && o < cap; i++) {
        if (i == 8) {
            o += (size_t)snprintf(b + o, cap - o, ", ...");
            break;
        }
        o += (size_t)snprintf(b + o, cap - o, "%s%lld", i ? ", " : "", (long long)s[i]);
    }
    if (o < cap) snprintf(b + o, cap - o, "]");
    return b;
}

/* DN_ERR_FORMAT "<what>: <message>" */
static dn_status bad(const char *what, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static dn_status bad(const char *what, const char *fmt, ...) {
    char msg[224];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return dn_fail(DN_ERR_FORMAT, "%s: %s", what, msg);
}

static int is_key(const dn_json *m, const char *k) {
    size_t n = strlen(k);
    return m->key_len == n && !memcmp(m->key, k, n);
}

/* A non-negative integer of JSON (written as one, within int64). */
static int json_count(const dn_json *v, int64_t *x) {
    if (!v || v->type != DN_JSON_NUMBER || !v->is_int || v->u.i < 0) return 0;
    *x = v->u.i;
    return 1;
}

static int cmp_offset(const void *a, const void *b) {
    const dn_st_tensor *x = *(const dn_st_tensor *const *)a, *y = *(const dn_st_tensor *const *)b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    return x->bytes < y->bytes ? -1 : x->bytes > y->bytes;
}

static int cmp_name(const void *a, const void *b) {
    return strcmp((*(const dn_st_tensor *const *)a)->name, (*(const dn_st_tensor *const *)b)->name);
}

void dn_st_close(dn_st *st) {
    if (!st) return;
    dn_json_free(st->doc_);
    dn_free((void *)st->tensors);
    if (st->map_kind_ == 1) munmap(st->map_, st->map_bytes_);
    if (st->map_kind_ == 2) dn_free(st->map_);
    dn_free(st);
}

/* Checks one entry of the header and fills t (all but its data pointer); dims go to *dims. */
static dn_status parse_entry(const char *what, const dn_json *m, dn_st_tensor *t, int64_t *dims) {
    char nb[200], b2[200];
    const char *nm = dn_json_shown(nb, sizeof nb, m->key, m->key_len);
    if (strlen(m->key) != m->key_len) return bad(what, "tensor name \"%s\" holds a NUL byte", nm);
    if (m->type != DN_JSON_OBJECT)
        return bad(what, "tensor \"%s\": its entry is a %s, not an object", nm,
                   dn_json_type_name(m->type));
    const dn_json *dt = NULL, *sh = NULL, *off = NULL;
    for (size_t i = 0; i < m->len; i++) {
        const dn_json *f = &m->u.items[i];
        if (is_key(f, "dtype"))
            dt = f;
        else if (is_key(f, "shape"))
            sh = f;
        else if (is_key(f, "data_offsets"))
            off = f;
        else
            return bad(what,
                       "tensor \"%s\": unknown field \"%s\" (expected dtype, shape, "
                       "data_offsets)",
                       nm, dn_json_shown(b2, sizeof b2, f->key, f->key_len));
    }
    if (!dt || !sh || !off)
        return bad(what, "tensor \"%s\": no \"%s\"", nm,
                   !dt   ? "dtype"
                   : !sh ? "shape"
                         : "data_offsets");
    if (dt->type != DN_JSON_STRING || !dtype_lookup(dt->u.str, dt->len, &t->dtype))
        return bad(what, "tensor \"%s\": unknown dtype %s", nm,
                   dt->type == DN_JSON_STRING ? dn_json_shown(b2, sizeof b2, dt->u.str, dt->len)
                                              : dn_json_type_name(dt->type));
    if (sh->type != DN_JSON_ARRAY)
        return bad(what, "tensor \"%s\": shape is a %s, not an array", nm,
                   dn_json_type_name(sh->type));
    if (sh->len > INT_MAX) return bad(what, "tensor \"%s\": too many dims", nm);
    for (size_t i = 0; i < sh->len; i++)
        if (!json_count(&sh->u.items[i], &dims[i]))
            return bad(what, "tensor \"%s\": shape[%zu] is not a non-negative integer", nm, i);
    t->ndim = (int)sh->len;
    t->shape = dims;
    if (!dn_prod(&t->numel, t->ndim, dims))
        return bad(what, "tensor \"%s\": shape %s has more elements than 64 bits count", nm,
                   shape_str(b2, sizeof b2, dims, t->ndim));
    int64_t begin, end;
    if (off->type != DN_JSON_ARRAY || off->len != 2 || !json_count(&off->u.items[0], &begin) ||
        !json_count(&off->u.items[1], &end) || begin > end)
        return bad(what,
                   "tensor \"%s\": data_offsets must be [begin, end], integers with "
                   "0 <= begin <= end",
                   nm);
    uint64_t bytes;
    int r = dtype_bytes(t->dtype, t->numel, &bytes);
    if (r == 0)
        return bad(what, "tensor \"%s\": %s %s is more bytes than 64 bits count", nm,
                   dtypes[t->dtype].name, shape_str(b2, sizeof b2, dims, t->ndim));
    if (r < 0)
        return bad(what, "tensor \"%s\": %lld elements of %s do not fill whole bytes", nm,
                   (long long)t->numel, dtypes[t->dtype].name);
    if (bytes != (uint64_t)(end - begin))
        return bad(what,
                   "tensor \"%s\": %s %s is %llu bytes, but data_offsets [%lld, %lld] hold "
                   "%llu",
                   nm, dtypes[t->dtype].name, shape_str(b2, sizeof b2, dims, t->ndim),
                   (unsigned long long)bytes, (long long)begin, (long long)end,
                   (unsigned long long)(end - begin));
    t->name = m->key;
    t->offset = (uint64_t)begin;
    t->bytes = bytes;
    return DN_OK;
}

static dn_status parse_metadata(const char *what, const dn_json *m, const char **keys,
                                const char **values) {
    char b[200];
    if (m->type != DN_JSON_OBJECT)
        return bad(what, "__metadata__ is a %s, not an object of strings",
                   dn_json_type_name(m->type));
    for (size_t i = 0; i < m->len; i++) {
        const dn_json *v = &m->u.items[i];
        const char *k = dn_json_shown(b, sizeof b, v->key, v->key_len);
        if (v->type != DN_JSON_STRING)
            return bad(what, "__metadata__ \"%s\" is a %s, not a string", k,
                       dn_json_type_name(v->type));
        if (strlen(v->key) != v->key_len || strlen(v->u.str) != v->len)
            return bad(what, "__metadata__ \"%s\" holds a NUL byte", k);
        keys[i] = v->key;
        values[i] = v->u.str;
    }
    return DN_OK;
}

/* Sizes of the handle's arrays, laid out in one allocation. */
typedef struct {
    size_t tensors, by_name, dims, keys, values, total;
} layout;

static int plan(layout *l, size_t nt, size_t ndims, size_t nm) {
    size_t a, b, c, d, e;
    if (__builtin_mul_overflow(nt, sizeof(dn_st_tensor), &a) ||
        __builtin_mul_overflow(nt, sizeof(dn_st_tensor *), &b) ||
        __builtin_mul_overflow(ndims, sizeof(int64_t), &c) ||
        __builtin_mul_overflow(nm, sizeof(char *), &d) || __builtin_add_overflow(a, b, &e) ||
        __builtin_add_overflow(e, c, &e) || __builtin_add_overflow(e, 2 * d, &e))
        return 0;
    l->tensors = 0, l->by_name = a, l->dims = a + b, l->keys = a + b + c, l->values = l->keys + d;
    l->total = e;
    return 1;
}

static dn_status st_parse(const uint8_t *buf, size_t n, const char *what, dn_st **out) {
    if ((!buf && n) || !out) return dn_fail(DN_ERR_NULL, "%s: buffer or out is NULL", what);
    if (n < 8)
        return bad(what,
                   "%zu bytes, too short for the 8-byte header length (not a safetensors "
                   "file?)",
                   n);
    uint64_t hl = 0;
    for (int k = 0; k < 8; k++)
        hl |= (uint64_t)buf[k] << (8 * k);
    if (hl > DN_ST_MAX_HEADER)
        return bad(what,
                   "header length %llu is above the %llu-byte limit (not a safetensors "
                   "file, or a corrupt one)",
                   (unsigned long long)hl, DN_ST_MAX_HEADER);
    if (hl > n - 8)
        return bad(what,
                   "header length %llu runs past the end of the file (%zu bytes after "
                   "the length; truncated?)",
                   (unsigned long long)hl, n - 8);

    const size_t wl = strlen(what);
    dn_st *st = dn_calloc(sizeof *st + wl + 1);
    if (!st) return dn_fail(DN_ERR_ALLOC, "%s: out of memory", what);
    memcpy((char *)(st + 1), what, wl + 1);
    st->name = (const char *)(st + 1);
    char hname[300];
    snprintf(hname, sizeof hname, "%s: header", what);
    dn_status s = dn_json_parse_as((const char *)buf + 8, (size_t)hl, hname, 8, &st->doc_);
    if (s) {
        dn_st_close(st);
        return s;
    }
    const dn_json *root = st->doc_;
    if (root->type != DN_JSON_OBJECT) {
        s = bad(what, "the header is a JSON %s, not an object", dn_json_type_name(root->type));
        dn_st_close(st);
        return s;
    }
    /* counts, then one allocation for every array */
    const dn_json *meta = NULL;
    size_t nt = 0, ndims = 0;
    for (size_t i = 0; i < root->len; i++) {
        const dn_json *m = &root->u.items[i];
        if (is_key(m, "__metadata__"))
            meta = m;
        else
            nt++, ndims += dn_json_len(dn_json_get(m, "shape"));
    }
    const size_t nm = meta ? dn_json_len(meta) : 0;
    layout l;
    char *mem = plan(&l, nt, ndims, nm) ? dn_alloc(l.total) : NULL;
    if (!mem) {
        dn_st_close(st);
        return dn_fail(DN_ERR_ALLOC, "%s: out of memory for %zu tensors", what, nt);
    }
    dn_st_tensor *t = (dn_st_tensor *)(mem + l.tensors);
    const dn_st_tensor **by = (const dn_st_tensor **)(void *)(mem + l.by_name);
    int64_t *dims = (int64_t *)(void *)(mem + l.dims);
    const char **keys = (const char **)(void *)(mem + l.keys);
    const char **values = (const char **)(void *)(mem + l.values);
    st->tensors = t;
    st->by_name_ = by;
    if (meta) s = parse_metadata(what, meta, keys, values);
    size_t k = 0, d = 0;
    for (size_t i = 0; i < root->len && !s; i++) {
        const dn_json *m = &root->u.items[i];
        if (m == meta) continue;
        if ((s = parse_entry(what, m, &t[k], dims + d))) break;
        d += (size_t)t[k].ndim;
        by[k] = &t[k];
        k++;
    }
    if (s) {
        dn_st_close(st);
        return s;
    }
    /* the tiling: sorted by offset, each tensor starts where the previous one ended */
    const uint64_t data_bytes = (uint64_t)(n - 8) - hl;
    qsort(by, nt, sizeof *by, cmp_offset);
    uint64_t pos = 0;
    const dn_st_tensor *prev = NULL;
    char b1[200], b2[200];
    for (size_t i = 0; i < nt && !s; i++) {
        const dn_st_tensor *x = by[i];
        const char *xn = dn_json_shown(b1, sizeof b1, x->name, strlen(x->name));
        if (x->offset + x->bytes > data_bytes)
            s = bad(what,
                    "tensor \"%s\": bytes [%llu, %llu) run past the end of the data (%llu "
                    "bytes; truncated file?)",
                    xn, (unsigned long long)x->offset, (unsigned long long)(x->offset + x->bytes),
                    (unsigned long long)data_bytes);
        else if (x->offset < pos)
            s = bad(what,
                    "tensor \"%s\" at bytes [%llu, %llu) overlaps tensor \"%s\" (which ends "
                    "at %llu)",
                    xn, (unsigned long long)x->offset, (unsigned long long)(x->offset + x->bytes),
                    dn_json_shown(b2, sizeof b2, prev->name, strlen(prev->name)),
                    (unsigned long long)pos);
        else if (x->offset > pos)
            s = bad(what,
                    "bytes [%llu, %llu) of the data belong to no tensor (a hole before "
                    "\"%s\")",
                    (unsigned long long)pos, (unsigned long long)x->offset, xn);
        pos = x->offset + x->bytes;
        prev = x;
    }
    if (!s && pos != data_bytes)
        s = bad(what, "the last %llu bytes of the data belong to no tensor",
                (unsigned long long)(data_bytes - pos));
    if (s) {
        dn_st_close(st);
        return s;
    }
    const uint8_t *data = buf + 8 + hl;
    for (size_t i = 0; i < nt; i++)
        t[i].data = data + t[i].offset;
    qsort(by, nt, sizeof *by, cmp_name);
    st->n_tensors = nt;
    st->n_meta = nm;
    st->meta_keys = keys;
    st->meta_values = values;
    st->header_bytes = hl;
    st->data = data;
    st->data_bytes = data_bytes;
    *out = st;
    return DN_OK;
}

dn_status dn_st_parse(const uint8_t *buf, size_t n, dn_st **out) {
    return st_parse(buf, n, "safetensors", out);
}

dn_status dn_st_open(const char *path, dn_st **out) {
    if (!path || !out) return dn_fail(DN_ERR_NULL, "dn_st_open: path or out is NULL");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        const int err = errno;
        char r[128];
        if (strerror_r(err, r, sizeof r)) snprintf(r, sizeof r, "errno %d", err);
        return dn_fail(DN_ERR_IO, "%s: cannot open it: %s", path, r);
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return dn_fail(DN_ERR_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)sb.st_size > SIZE_MAX) {
        close(fd);
        return dn_fail(DN_ERR_IO, "%s: larger than this machine's address space", path);
    }
    size_t size = (size_t)sb.st_size;
    void *map = NULL;
    int kind = 0;
    if (size) {
        map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        kind = 1;
    }
    close(fd);
    if (map == MAP_FAILED) { /* a filesystem that cannot map: read it instead */
        char *buf;
        size_t got;
        dn_status s = dn_file_read(path, SIZE_MAX - 1, &buf, &got);
        if (s) return s;
        map = buf, size = got, kind = 2;
    }
    static const uint8_t empty[1];
    dn_st *st;
    dn_status s = st_parse(map ? map : empty, size, path, &st);
    if (s) {
        if (kind == 1) munmap(map, size);
        if (kind == 2) dn_free(map);
        return s;
    }
    st->map_ = map;
    st->map_bytes_ = size;
    st->map_kind_ = kind;
    *out = st;
    return DN_OK;
}

const dn_st_tensor *dn_st_find(const dn_st *st, const char *name) {
    if (!st || !name) return NULL;
    size_t lo = 0, hi = st->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, st->by_name_[mid]->name);
        if (c == 0) return st->by_name_[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

const char *dn_st_meta(const dn_st *st, const char *key) {
    if (!st || !key) return NULL;
    for (size_t i = 0; i < st->n_meta; i++)
        if (!strcmp(st->meta_keys[i], key)) return st->meta_values[i];
    return NULL;
}

dn_status dn_st_expect(const dn_st *st, const char *name, dn_st_dtype dtype, int ndim,
                       const int64_t *shape, const dn_st_tensor **out) {
    if (!st || !name || !out || (shape && ndim < 0))
        return dn_fail(DN_ERR_NULL, "dn_st_expect: NULL argument or negative ndim");
    char b[200], s1[120], s2[120];
    const char *nm = dn_json_shown(b, sizeof b, name, strlen(name));
    const dn_st_tensor *t = dn_st_find(st, name);
    if (!t) return bad(st->name, "no tensor \"%s\"", nm);
    if (t->dtype != dtype)
        return bad(st->name, "tensor \"%s\" is %s, expected %s", nm, dtypes[t->dtype].name,
                   dn_st_dtype_name(dtype) ? dn_st_dtype_name(dtype) : "?");
    if (shape && (t->ndim != ndim || (ndim && memcmp(t->shape, shape, sizeof *shape * ndim))))
        return bad(st->name, "tensor \"%s\" has shape %s, expected %s", nm,
                   shape_str(s1, sizeof s1, t->shape, t->ndim),
                   shape_str(s2, sizeof s2, shape, ndim));
    *out = t;
    return DN_OK;
}

/* ---- writing ---- */
static int cmp_str_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The first name appearing twice among names[0..n), or NULL; DN_ERR_ALLOC in *st if the sort
 * cannot allocate. */
static const char *duplicate(const char *const *names, size_t n, dn_status *st) {
    *st = DN_OK;
    if (n < 2) return NULL;
    const char **s = dn_alloc(n * sizeof *s);
    if (!s) {
        *st = DN_ERR_ALLOC;
        return NULL;
    }
    memcpy(s, names, n * sizeof *s);
    qsort(s, n, sizeof *s, cmp_str_ptr);
    const char *dup = NULL;
    for (size_t i = 1; i < n && !dup; i++)
        if (!strcmp(s[i], s[i - 1])) dup = s[i];
    dn_free(s);
    return dup;
}

/* Checks entry e and gives its size in bytes. */
static dn_status check_entry(const dn_st_entry *e, size_t i, uint64_t *bytes) {
    char b[200];
    if (!e->name) return dn_fail(DN_ERR_NULL, "safetensors write: entry %zu has no name", i);
    const char *nm = dn_json_shown(b, sizeof b, e->name, strlen(e->name));
    if (!strcmp(e->name, "__metadata__"))
        return dn_fail(DN_ERR_ARG, "safetensors write: \"__metadata__\" cannot name a tensor");
    if (!dn_st_dtype_name(e->dtype))
        return dn_fail(DN_ERR_ARG, "safetensors write: tensor \"%s\": unknown dtype %d", nm,
                       (int)e->dtype);
    if (e->ndim < 0 || (e->ndim > 0 && !e->shape))
        return dn_fail(e->ndim < 0 ? DN_ERR_SHAPE : DN_ERR_NULL,
                       "safetensors write: tensor \"%s\": ndim %d without its shape", nm, e->ndim);
    int64_t numel;
    if (!dn_prod(&numel, e->ndim, e->shape))
        return dn_fail(DN_ERR_SHAPE,
                       "safetensors write: tensor \"%s\": a dim is negative or the size overflows",
                       nm);
    int r = dtype_bytes(e->dtype, numel, bytes);
    if (r == 0 || (r > 0 && *bytes > INT64_MAX))
        return dn_fail(DN_ERR_SHAPE, "safetensors write: tensor \"%s\": size overflows", nm);
    if (r < 0)
        return dn_fail(DN_ERR_ARG,
                       "safetensors write: tensor \"%s\": %lld elements of %s do not fill whole "
                       "bytes",
                       nm, (long long)numel, dtypes[e->dtype].name);
    if (*bytes && !e->data)
        return dn_fail(DN_ERR_NULL, "safetensors write: tensor \"%s\": data is NULL", nm);
    return DN_OK;
}

/* The writer's error, prefixed by what it was writing. */
static dn_status jw_error(dn_status st, const char *ctx) {
    char msg[256];
    snprintf(msg, sizeof msg, "%s", dn_last_error());
    return dn_fail(st, "safetensors write: %s: %s", ctx, msg);
}

dn_status dn_st_make_header(const dn_st_entry *entries, size_t n, const char *const *meta_keys,
                            const char *const *meta_values, size_t n_meta, uint8_t **out,
                            size_t *len, uint64_t *data_bytes) {
    if ((!entries && n) || (n_meta && (!meta_keys || !meta_values)) || !out || !len)
        return dn_fail(DN_ERR_NULL, "safetensors write: NULL argument");
    uint64_t total = 0, bytes;
    for (size_t i = 0; i < n; i++) {
        dn_status s = check_entry(&entries[i], i, &bytes);
        if (s) return s;
        if (__builtin_add_overflow(total, bytes, &total) || total > INT64_MAX)
            return dn_fail(DN_ERR_SHAPE, "safetensors write: the data passes 2^63 bytes");
    }
    for (size_t i = 0; i < n_meta; i++)
        if (!meta_keys[i] || !meta_values[i])
            return dn_fail(DN_ERR_NULL, "safetensors write: metadata %zu is NULL", i);
    dn_status s;
    char b[200];
    const char *dup = duplicate(meta_keys, n_meta, &s);
    if (!s && dup)
        return dn_fail(DN_ERR_ARG, "safetensors write: metadata key \"%s\" appears twice",
                       dn_json_shown(b, sizeof b, dup, strlen(dup)));
    if (!s && n > 1) {
        const char **names = dn_alloc(n * sizeof *names);
        if (!names) {
            s = DN_ERR_ALLOC;
        } else {
            for (size_t i = 0; i < n; i++)
                names[i] = entries[i].name;
            dup = duplicate(names, n, &s);
            dn_free(names);
            if (!s && dup)
                return dn_fail(DN_ERR_ARG, "safetensors write: two tensors are named \"%s\"",
                               dn_json_shown(b, sizeof b, dup, strlen(dup)));
        }
    }
    if (s) return dn_fail(DN_ERR_ALLOC, "safetensors write: out of memory");

    dn_jw w;
    dn_jw_init(&w);
    dn_jw_raw(&w, "\0\0\0\0\0\0\0\0", 8); /* the length, filled in below */
    dn_jw_begin_object(&w);
    if (n_meta) {
        dn_jw_key(&w, "__metadata__");
        dn_jw_begin_object(&w);
        for (size_t i = 0; i < n_meta; i++) {
            dn_jw_key(&w, meta_keys[i]);
            dn_jw_string(&w, meta_values[i]);
        }
        dn_jw_end_object(&w);
        if ((s = dn_jw_status(&w))) {
            dn_jw_free(&w);
            return jw_error(s, "metadata");
        }
    }
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const dn_st_entry *e = &entries[i];
        check_entry(e, i, &bytes); /* checked above */
        dn_jw_key(&w, e->name);
        dn_jw_begin_object(&w);
        dn_jw_key(&w, "dtype");
        dn_jw_string(&w, dtypes[e->dtype].name);
        dn_jw_key(&w, "shape");
        dn_jw_begin_array(&w);
        for (int k = 0; k < e->ndim; k++)
            dn_jw_int(&w, e->shape[k]);
        dn_jw_end_array(&w);
        dn_jw_key(&w, "data_offsets");
        dn_jw_begin_array(&w);
        dn_jw_int(&w, (int64_t)off);
        dn_jw_int(&w, (int64_t)(off + bytes));
        dn_jw_end_array(&w);
        dn_jw_end_object(&w);
        off += bytes;
        if ((s = dn_jw_status(&w))) {
            dn_jw_free(&w);
            snprintf(b, sizeof b, "tensor %zu", i);
            return jw_error(s, b);
        }
    }
    dn_jw_end_object(&w);
    static const char spaces[8] = "        ";
    const size_t hl = w.len - 8;
    dn_jw_raw(&w, spaces, (8 - hl % 8) % 8);
    if ((s = dn_jw_finish(&w))) {
        dn_jw_free(&w);
        return jw_error(s, "header");
    }
    const uint64_t padded = w.len - 8;
    for (int k = 0; k < 8; k++)
        w.buf[k] = (char)(uint8_t)(padded >> (8 * k));
    *out = (uint8_t *)w.buf;
    *len = w.len;
    if (data_bytes) *data_bytes = total;
    return DN_OK;
}

static int host_little_endian(void) {
    const uint16_t one = 1;
    uint8_t first;
    memcpy(&first, &one, 1);
    return first == 1;
}

dn_status dn_st_write(const char *path, const dn_st_entry *entries, size_t n,
                      const char *const *meta_keys, const char *const *meta_values, size_t n_meta) {
    if (!path) return dn_fail(DN_ERR_NULL, "safetensors write: path is NULL");
    if (!host_little_endian())
        return dn_fail(DN_ERR_UNSUPPORTED, "safetensors write: big-endian host");
    uint8_t *hdr;
    size_t hlen;
    dn_status s = dn_st_make_header(entries, n, meta_keys, meta_values, n_meta, &hdr, &hlen, NULL);
    if (s) return s;
    dn_file_part *parts =
        n < SIZE_MAX / sizeof *parts - 1 ? dn_alloc((n + 1) * sizeof *parts) : NULL;
    if (!parts) {
        dn_free(hdr);
        return dn_fail(DN_ERR_ALLOC, "%s: out of memory", path);
    }
    size_t np = 0;
    parts[np++] = (dn_file_part){hdr, hlen};
    for (size_t i = 0; i < n; i++) {
        uint64_t bytes;
        check_entry(&entries[i], i, &bytes);
        if (bytes) parts[np++] = (dn_file_part){entries[i].data, (size_t)bytes};
    }
    s = dn_file_write_atomic(path, parts, np);
    dn_free(parts);
    dn_free(hdr);
    return s;
}

/* ---- the shard index ---- */
static int cmp_index_entry(const void *a, const void *b) {
    return strcmp(((const dn_st_index_entry *)a)->name, ((const dn_st_index_entry *)b)->name);
}

static int plain_file_name(const char *s, size_t n) {
    if (n == 0 || strlen(s) != n || !strcmp(s, ".") || !strcmp(s, "..")) return 0;
    return !strchr(s, '/') && !strchr(s, '\\');
}

void dn_st_index_free(dn_st_index *idx) {
    if (!idx) return;
    dn_json_free(idx->doc_);
    dn_free(idx);
}

dn_status dn_st_index_parse(const char *text, size_t n, const char *what, dn_st_index **out) {
    if (!what) what = "safetensors index";
    if ((!text && n) || !out) return dn_fail(DN_ERR_NULL, "%s: text or out is NULL", what);
    dn_json *doc;
    dn_status s = dn_json_parse_as(text, n, what, DN_JSON_MAX_DEPTH, &doc);
    if (s) return s;
    const dn_json *wm = dn_json_get(doc, "weight_map");
    if (doc->type != DN_JSON_OBJECT || !wm || wm->type != DN_JSON_OBJECT) {
        s = bad(what, "%s",
                doc->type != DN_JSON_OBJECT ? "the index is not a JSON object"
                : !wm                       ? "no \"weight_map\""
                                            : "\"weight_map\" is not an object");
        dn_json_free(doc);
        return s;
    }
    const size_t count = wm->len;
    size_t sz = sizeof(dn_st_index);
    dn_st_index *idx = NULL;
    if (count <= (SIZE_MAX - sz) / (sizeof(dn_st_index_entry) + sizeof(char *)))
        idx = dn_calloc(sz + count * (sizeof(dn_st_index_entry) + sizeof(char *)));
    if (!idx) {
        dn_json_free(doc);
        return dn_fail(DN_ERR_ALLOC, "%s: out of memory for %zu tensors", what, count);
    }
    idx->doc_ = doc;
    dn_st_index_entry *e = (dn_st_index_entry *)(idx + 1);
    const char **files = (const char **)(void *)(e + count);
    char b1[200], b2[200];
    for (size_t i = 0; i < count && !s; i++) {
        const dn_json *m = &wm->u.items[i];
        const char *nm = dn_json_shown(b1, sizeof b1, m->key, m->key_len);
        if (strlen(m->key) != m->key_len)
            s = bad(what, "tensor name \"%s\" holds a NUL byte", nm);
        else if (m->type != DN_JSON_STRING)
            s = bad(what, "weight_map[\"%s\"] is a %s, not a file name", nm,
                    dn_json_type_name(m->type));
        else if (!plain_file_name(m->u.str, m->len))
            s = bad(what,
                    "weight_map[\"%s\"] = \"%s\" is not a plain file name (no directory, "
                    "not . or ..)",
                    nm, dn_json_shown(b2, sizeof b2, m->u.str, m->len));
        else
            e[i].name = m->key, e[i].file = m->u.str, files[i] = m->u.str;
    }
    if (s) {
        dn_st_index_free(idx);
        return s;
    }
    qsort(e, count, sizeof *e, cmp_index_entry);
    qsort(files, count, sizeof *files, cmp_str_ptr);
    size_t nf = 0;
    for (size_t i = 0; i < count; i++)
        if (!nf || strcmp(files[i], files[nf - 1])) files[nf++] = files[i];
    idx->n = count;
    idx->entries = e;
    idx->n_files = nf;
    idx->files = files;
    *out = idx;
    return DN_OK;
}

dn_status dn_st_index_open(const char *path, dn_st_index **out) {
    if (!path || !out) return dn_fail(DN_ERR_NULL, "dn_st_index_open: path or out is NULL");
    char *text;
    size_t n;
    dn_status s = dn_file_read(path, DN_ST_INDEX_MAX_BYTES, &text, &n);
    if (s) return s;
    s = dn_st_index_parse(text, n, path, out);
    dn_free(text);
    return s;
}

const char *dn_st_index_file(const dn_st_index *idx, const char *name) {
    if (!idx || !name) return NULL;
    dn_st_index_entry key = {name, NULL};
    const dn_st_index_entry *e = bsearch(&key, idx->entries, idx->n, sizeof key, cmp_index_entry);
    return e ? e->file : NULL;
}
