/* A small JSON reader: parses a whole document into a tree of nodes (for safetensors
 * headers, config.json and graph.json). Not a general-purpose library: numbers are
 * doubles, strings are decoded to UTF-8, nothing is ever written back. */
#ifndef EI_JSON_H
#define EI_JSON_H

#include <stddef.h>

typedef enum { JSON_NULL, JSON_FALSE, JSON_TRUE, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_type;

typedef struct json_node {
    json_type type;
    char *key;               /* member name when the parent is an object */
    char *str;               /* JSON_STRING */
    double num;              /* JSON_NUMBER */
    struct json_node *child; /* first element / member */
    struct json_node *next;  /* next sibling */
    int count;               /* number of children */
} json_node;

/* Parses text[0..len). Returns NULL and writes a message to err (size errlen) on failure. */
json_node *json_parse(const char *text, size_t len, char *err, size_t errlen);
void json_free(json_node *node);

json_node *json_get(const json_node *obj, const char *key);  /* NULL when absent */
json_node *json_at(const json_node *arr, int index);
/* Typed lookups with a default when the member is absent or of another type. */
double json_num(const json_node *obj, const char *key, double dflt);
const char *json_str(const json_node *obj, const char *key, const char *dflt);

#endif
