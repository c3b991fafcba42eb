/* Reading tensors from a .safetensors file one at a time (8-byte little-endian header
 * length, JSON header, raw data). Tensors are converted to float32 on the way in, so a
 * checkpoint stored as F16 or BF16 loads the same way as F32. */
#ifndef EI_SAFETENSORS_H
#define EI_SAFETENSORS_H

#include <stdint.h>
#include <stdio.h>

#include "json.h"

#define ST_MAX_DIMS 8

typedef struct {
    const char *name;
    const char *dtype;          /* "F32", "F16", "BF16", "I64", ... */
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t begin, end;        /* byte range relative to the data section */
} st_tensor;

typedef struct {
    FILE *file;
    uint64_t data_start;
    uint64_t file_size;
    json_node *header;
    st_tensor *tensors;
    int count;
} st_file;

int st_open(st_file *st, const char *path);          /* 0 or -1 (ei_errbuf set) */
void st_close(st_file *st);
/* Finds `name`, also under the "bert." prefix BertFor* checkpoints use; NULL when absent. */
const st_tensor *st_find(const st_file *st, const char *name);
int64_t st_numel(const st_tensor *t);
/* Reads a tensor as float32 into dst (st_numel floats). Checks that the shape is the
 * expected one when `want` is given (ndim entries). 0 or -1 (ei_errbuf set). */
int st_read_f32(st_file *st, const st_tensor *t, float *dst);
/* st_find + shape check + st_read_f32 into a fresh aligned buffer; NULL on error. */
float *st_load(st_file *st, const char *name, int ndim, const int64_t *shape);

#endif
