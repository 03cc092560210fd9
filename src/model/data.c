/*
 * data.c - training data: byte-level text windows and the MQAR recall task (see the training
 * section of include/deltanet.h). Every batch is a pure function of (seed, index), so a resumed
 * run sees exactly the batches an uninterrupted one would.
 */
#include "model.h"

#include <stdio.h>
#include <string.h>

struct dn_text_data {
    uint8_t *bytes;
    size_t n, n_train; /* [0, n_train) train, [n_train, n) validation */
};

/* A generator for (seed, index, stream): independent streams from one seed. */
static dn_rng stream(uint64_t seed, uint64_t index, uint64_t sub) {
    dn_rng r = {seed};
    r.s ^= dn_rng_next(&r) + index * 0xD1B54A32D192ED03ull;
    r.s ^= dn_rng_next(&r) + sub * 0x8CB92BA72F3D8DD7ull;
    dn_rng_next(&r);
    return r;
}

dn_status dn_text_data_from_memory(dn_text_data **out, const uint8_t *bytes, size_t n,
                                   double val_fraction) {
    if (!out || (!bytes && n)) return dn_fail(DN_ERR_NULL, "text_data: NULL argument");
    if (!(val_fraction >= 0 && val_fraction < 1))
        return dn_fail(DN_ERR_ARG, "text_data: val_fraction %g is outside [0, 1)", val_fraction);
    dn_text_data *d = dn_calloc(sizeof *d);
    if (d) d->bytes = dn_alloc(n ? n : 1);
    if (!d || !d->bytes) {
        if (d) dn_free(d->bytes);
        dn_free(d);
        return dn_fail(DN_ERR_ALLOC, "text_data: cannot allocate %zu bytes", n);
    }
    if (n) memcpy(d->bytes, bytes, n);
    d->n = n;
    d->n_train = n - (size_t)((double)n * val_fraction);
    *out = d;
    return DN_OK;
}

dn_status dn_text_data_load(dn_text_data **out, const char *path, double val_fraction) {
    if (!out || !path) return dn_fail(DN_ERR_NULL, "text_data_load: NULL argument");
    FILE *f = fopen(path, "rb");
    if (!f) return dn_fail(DN_ERR_ARG, "text_data_load: cannot open %s", path);
    size_t cap = 1 << 20, n = 0;
    uint8_t *buf = dn_alloc(cap);
    dn_status st = buf ? DN_OK : DN_ERR_ALLOC;
    while (st == DN_OK) {
        if (n == cap) {
            uint8_t *nb = cap <= (SIZE_MAX >> 2) ? dn_alloc(cap * 2) : NULL;
            if (!nb) {
                st = DN_ERR_ALLOC;
                break;
            }
            memcpy(nb, buf, n);
            dn_free(buf);
            buf = nb, cap *= 2;
        }
        const size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f)) st = DN_ERR_ARG;
            break;
        }
    }
    fclose(f);
    if (st == DN_OK)
        st = dn_text_data_from_memory(out, buf, n, val_fraction);
    else
        dn_fail(st, "text_data_load: cannot read %s", path);
    dn_free(buf);
    return st;
}

void dn_text_data_free(dn_text_data *d) {
    if (!d) return;
    dn_free(d->bytes);
    dn_free(d);
}

size_t dn_text_data_size(const dn_text_data *d, int validation) {
    if (!d) return 0;
    return validation ? d->n - d->n_train : d->n_train;
}

dn_status dn_text_data_batch(const dn_text_data *d, int validation, uint64_t seed, uint64_t index,
                             int32_t *tokens, int32_t *targets, int64_t B, int64_t T) {
    if (!d || !tokens || !targets) return dn_fail(DN_ERR_NULL, "text_data_batch: NULL argument");
    const size_t lo = validation ? d->n_train : 0, len = dn_text_data_size(d, validation);
    if (B < 1 || T < 1 || B > ((int64_t)1 << 32) || (uint64_t)T + 1 > len)
        return dn_fail(DN_ERR_SHAPE,
                       "text_data_batch: B=%lld, T=%lld needs %s text of at least T + 1 bytes "
                       "(has %zu)",
                       (long long)B, (long long)T, validation ? "validation" : "training", len);
    for (int64_t b = 0; b < B; b++) {
        dn_rng r = stream(seed, index, (uint64_t)b);
        const size_t start = lo + (size_t)(dn_rng_next(&r) % (uint64_t)(len - (size_t)T));
        for (int64_t t = 0; t < T; t++) {
            tokens[b * T + t] = d->bytes[start + (size_t)t];
            targets[b * T + t] = d->bytes[start + (size_t)t + 1];
        }
    }
    return DN_OK;
}

dn_status dn_mqar_batch(int32_t *tokens, int32_t *targets, int64_t B, int64_t T, int64_t vocab,
                        int64_t n_pairs, uint64_t seed, uint64_t index) {
    if (!tokens || !targets) return dn_fail(DN_ERR_NULL, "mqar_batch: NULL argument");
    if (B < 1 || T < 1 || B > ((int64_t)1 << 32) || T > ((int64_t)1 << 32))
        return dn_fail(DN_ERR_SHAPE, "mqar_batch: B=%lld, T=%lld", (long long)B, (long long)T);
    if (n_pairs < 1 || vocab > ((int64_t)1 << 30) || n_pairs >= vocab / 2 - 1 || T < 4 * n_pairs)
        return dn_fail(DN_ERR_ARG,
                       "mqar_batch: %lld pairs need T >= 4 x pairs (T=%lld) and vocab/2 - 1 > "
                       "pairs (vocab=%lld)",
                       (long long)n_pairs, (long long)T, (long long)vocab);
    const int64_t half = vocab / 2, nkeys = half - 1, slots = (T - 2 * n_pairs) / 2;
    int64_t *keys = dn_alloc((size_t)n_pairs * sizeof(int64_t));
    int64_t *slot = dn_alloc((size_t)slots * sizeof(int64_t));
    int64_t *val = dn_alloc((size_t)n_pairs * sizeof(int64_t));
    if (!keys || !slot || !val) {
        dn_free(keys), dn_free(slot), dn_free(val);
        return dn_fail(DN_ERR_ALLOC, "mqar_batch: cannot allocate");
    }
    for (int64_t b = 0; b < B; b++) {
        dn_rng r = stream(seed, index, (uint64_t)b);
        int32_t *tok = tokens + b * T, *tgt = targets + b * T;
        for (int64_t t = 0; t < T; t++)
            tok[t] = 0, tgt[t] = -1;
        /* distinct keys by rejection (n_pairs < nkeys / 2 in every setting of the benchmark;
         * a partial Fisher-Yates over [1, half) would cost O(vocab) per sequence) */
        for (int64_t i = 0; i < n_pairs; i++) {
            int64_t k;
            int dup;
            do {
                k = 1 + (int64_t)(dn_rng_next(&r) % (uint64_t)nkeys);
                dup = 0;
                for (int64_t j = 0; j < i; j++)
                    dup |= keys[j] == k;
            } while (dup);
            keys[i] = k;
            val[i] = half + (int64_t)(dn_rng_next(&r) % (uint64_t)(vocab - half));
            tok[2 * i] = (int32_t)k, tok[2 * i + 1] = (int32_t)val[i];
        }
        /* queries: the keys in random order at random distinct slots 2 n_pairs + 2 s */
        for (int64_t s = 0; s < slots; s++)
            slot[s] = s;
        for (int64_t i = 0; i < n_pairs; i++) { /* partial shuffle picks n_pairs slots */
            const int64_t j = i + (int64_t)(dn_rng_next(&r) % (uint64_t)(slots - i));
            const int64_t tmp = slot[i];
            slot[i] = slot[j], slot[j] = tmp;
        }
        for (int64_t i = 0; i < n_pairs; i++) {
            const int64_t p = 2 * n_pairs + 2 * slot[i];
            tok[p] = (int32_t)keys[i];
            tgt[p] = (int32_t)val[i];
            if (p + 1 < T) tok[p + 1] = (int32_t)val[i];
        }
    }
    dn_free(keys), dn_free(slot), dn_free(val);
    return DN_OK;
}
