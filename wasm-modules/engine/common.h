/* Shared by every part of the engine: error reporting, aligned allocation, reading a file. */
#ifndef EI_COMMON_H
#define EI_COMMON_H

#include <stddef.h>
#include <stdint.h>

/* The last error, NUL-terminated; the host reads it through ei_error(). */
extern char ei_errbuf[512];
/* Formats a message into ei_errbuf and returns -1 (so `return ei_fail(...)` reads well). */
int ei_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* 64-byte aligned, zeroed; NULL (with ei_errbuf set) when memory is exhausted. */
float *ei_alloc_floats(size_t count);
void *ei_alloc_bytes(size_t bytes);
void ei_free(void *p);

/* A whole file into a malloc'd, NUL-terminated buffer (*len bytes before the NUL; the
 * caller frees it); -1 with ei_errbuf set when it cannot be opened or read. */
int ei_read_file(const char *path, char **text, size_t *len);

#endif
