#include "safetensors.h"

#include <stdlib.h>
#include <string.h>

#include "common.h"

static uint32_t f16_to_f32_bits(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF;
    if (exp == 0) {
        if (man == 0) return sign;
        while (!(man & 0x400)) { man <<= 1; exp--; }  /* subnormal: normalise */
        exp++;
        man &= 0x3FF;
    } else if (exp == 31) {
        return sign | 0x7F800000 | (man << 13);
    }
    return sign | ((exp + 112) << 23) | (man << 13);
}

int st_open(st_file *st, const char *path) {
    memset(st, 0, sizeof *st);
    st->file = fopen(path, "rb");
    if (!st->file) return ei_fail("cannot open %s", path);
    fseek(st->file, 0, SEEK_END);
    st->file_size = (uint64_t)ftell(st->file);
    fseek(st->file, 0, SEEK_SET);
    uint8_t lenbuf[8];
    if (fread(lenbuf, 1, 8, st->file) != 8) { st_close(st); return ei_fail("%s: too short for safetensors", path); }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | lenbuf[i];
    if (hlen == 0 || hlen > 100u << 20 || 8 + hlen > st->file_size) {
        st_close(st);
        return ei_fail("%s: bad safetensors header length %llu", path, (unsigned long long)hlen);
    }
    char *text = malloc(hlen);
    if (!text || fread(text, 1, hlen, st->file) != hlen) {
        free(text); st_close(st);
        return ei_fail("%s: cannot read the safetensors header", path);
    }
    char err[160];
    st->header = json_parse(text, hlen, err, sizeof err);
    free(text);
    if (!st->header || st->header->type != JSON_OBJECT) {
        st_close(st);
        return ei_fail("%s: bad safetensors header: %s", path, st->header ? "not an object" : err);
    }
    st->data_start = 8 + hlen;
    st->tensors = calloc((size_t)st->header->count + 1, sizeof(st_tensor));
    for (json_node *m = st->header->child; m; m = m->next) {
        if (strcmp(m->key, "__metadata__") == 0) continue;
        st_tensor *t = &st->tensors[st->count];
        json_node *shape = json_get(m, "shape"), *offs = json_get(m, "data_offsets");
        t->name = m->key;
        t->dtype = json_str(m, "dtype", "");
        if (!shape || shape->type != JSON_ARRAY || shape->count > ST_MAX_DIMS || !offs || offs->count != 2) {
            st_close(st);
            return ei_fail("%s: tensor %s has a bad header entry", path, m->key);
        }
        t->ndim = shape->count;
        for (int d = 0; d < t->ndim; d++) t->shape[d] = (int64_t)json_at(shape, d)->num;
        t->begin = (uint64_t)json_at(offs, 0)->num;
        t->end = (uint64_t)json_at(offs, 1)->num;
        if (t->end < t->begin || st->data_start + t->end > st->file_size) {
            st_close(st);
            return ei_fail("%s: tensor %s lies outside the file", path, m->key);
        }
        st->count++;
    }
    return 0;
}

void st_close(st_file *st) {
    if (st->file) fclose(st->file);
    json_free(st->header);
    free(st->tensors);
    memset(st, 0, sizeof *st);
}

const st_tensor *st_find(const st_file *st, const char *name) {
    char prefixed[256];
    snprintf(prefixed, sizeof prefixed, "bert.%s", name);
    for (int i = 0; i < st->count; i++)
        if (strcmp(st->tensors[i].name, name) == 0 || strcmp(st->tensors[i].name, prefixed) == 0)
            return &st->tensors[i];
    return NULL;
}

int64_t st_numel(const st_tensor *t) {
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
    return n;
}

int st_read_f32(st_file *st, const st_tensor *t, float *dst) {
    int64_t n = st_numel(t);
    size_t width = strcmp(t->dtype, "F32") == 0 ? 4 : (strcmp(t->dtype, "F16") == 0 || strcmp(t->dtype, "BF16") == 0) ? 2 : 0;
    if (!width) return ei_fail("tensor %s has dtype %s; F32, F16 and BF16 are supported", t->name, t->dtype);
    if (t->end - t->begin != (uint64_t)n * width) return ei_fail("tensor %s: byte size does not match its shape", t->name);
    if (fseek(st->file, (long)(st->data_start + t->begin), SEEK_SET) != 0) return ei_fail("seek failed for %s", t->name);
    if (width == 4) {
        if (fread(dst, 4, (size_t)n, st->file) != (size_t)n) return ei_fail("short read for tensor %s", t->name);
        return 0;
    }
    /* Half widths: read into the upper half of dst, widen front to back (never overlaps). */
    uint16_t *half = (uint16_t *)(dst + n) - n;
    if (fread(half, 2, (size_t)n, st->file) != (size_t)n) return ei_fail("short read for tensor %s", t->name);
    int bf16 = t->dtype[0] == 'B';
    uint32_t *out = (uint32_t *)dst;
    for (int64_t i = 0; i < n; i++) out[i] = bf16 ? (uint32_t)half[i] << 16 : f16_to_f32_bits(half[i]);
    return 0;
}

float *st_load(st_file *st, const char *name, int ndim, const int64_t *shape) {
    const st_tensor *t = st_find(st, name);
    if (!t) { ei_fail("tensor %s is missing from the weights", name); return NULL; }
    if (shape) {
        int ok = t->ndim == ndim;
        for (int d = 0; ok && d < ndim; d++) ok = t->shape[d] == shape[d];
        if (!ok) { ei_fail("tensor %s has an unexpected shape", name); return NULL; }
    }
    float *dst = ei_alloc_floats((size_t)st_numel(t));
    if (!dst) return NULL;
    if (st_read_f32(st, t, dst) != 0) { ei_free(dst); return NULL; }
    return dst;
}
