#include "json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *p, *end;
    char *err;
    size_t errlen;
    int depth;
} parser;

static json_node *parse_value(parser *ps);

static int fail(parser *ps, const char *msg) {
    if (ps->err && ps->err[0] == 0) snprintf(ps->err, ps->errlen, "%s", msg);
    return 0;
}

static void skip_ws(parser *ps) {
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) ps->p++;
}

static json_node *new_node(json_type type) {
    json_node *n = calloc(1, sizeof *n);
    if (n) n->type = type;
    return n;
}

static void put_utf8(char **out, unsigned cp) {
    char *o = *out;
    if (cp < 0x80) { *o++ = (char)cp; }
    else if (cp < 0x800) { *o++ = (char)(0xC0 | (cp >> 6)); *o++ = (char)(0x80 | (cp & 0x3F)); }
    else if (cp < 0x10000) {
        *o++ = (char)(0xE0 | (cp >> 12)); *o++ = (char)(0x80 | ((cp >> 6) & 0x3F)); *o++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *o++ = (char)(0xF0 | (cp >> 18)); *o++ = (char)(0x80 | ((cp >> 12) & 0x3F));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3F)); *o++ = (char)(0x80 | (cp & 0x3F));
    }
    *out = o;
}

static int hex4(const char *s, unsigned *v) {
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        *v <<= 4;
        if (c >= '0' && c <= '9') *v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') *v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') *v |= (unsigned)(c - 'A' + 10);
        else return 0;
    }
    return 1;
}

/* Parses a string literal at ps->p (on the opening quote); returns a malloc'd UTF-8 copy. */
static char *parse_string(parser *ps) {
    ps->p++;
    const char *start = ps->p;
    while (ps->p < ps->end && *ps->p != '"') ps->p += (*ps->p == '\\') ? 2 : 1;
    if (ps->p >= ps->end) { fail(ps, "unterminated string"); return NULL; }
    /* Decoded text is never longer than the escaped text. */
    char *out = malloc((size_t)(ps->p - start) + 1), *o = out;
    if (!out) { fail(ps, "out of memory"); return NULL; }
    for (const char *s = start; s < ps->p; s++) {
        if (*s != '\\') { *o++ = *s; continue; }
        s++;
        switch (*s) {
            case 'n': *o++ = '\n'; break;
            case 't': *o++ = '\t'; break;
            case 'r': *o++ = '\r'; break;
            case 'b': *o++ = '\b'; break;
            case 'f': *o++ = '\f'; break;
            case 'u': {
                unsigned cp;
                if (ps->p - s < 5 || !hex4(s + 1, &cp)) { free(out); fail(ps, "bad \\u escape"); return NULL; }
                s += 4;
                if (cp >= 0xD800 && cp < 0xDC00 && ps->p - s >= 7 && s[1] == '\\' && s[2] == 'u') {
                    unsigned lo;
                    if (hex4(s + 3, &lo) && lo >= 0xDC00 && lo < 0xE000) {
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                        s += 6;
                    }
                }
                put_utf8(&o, cp);
                break;
            }
            default: *o++ = *s; break; /* \" \\ \/ */
        }
    }
    *o = 0;
    ps->p++;
    return out;
}

static json_node *parse_container(parser *ps, int is_object) {
    json_node *node = new_node(is_object ? JSON_OBJECT : JSON_ARRAY), **tail;
    if (!node) { fail(ps, "out of memory"); return NULL; }
    if (++ps->depth > 64) { fail(ps, "nesting too deep"); free(node); return NULL; }
    tail = &node->child;
    ps->p++;
    skip_ws(ps);
    char close = is_object ? '}' : ']';
    if (ps->p < ps->end && *ps->p == close) { ps->p++; ps->depth--; return node; }
    for (;;) {
        char *key = NULL;
        skip_ws(ps);
        if (is_object) {
            if (ps->p >= ps->end || *ps->p != '"') { fail(ps, "expected a member name"); goto bad; }
            if (!(key = parse_string(ps))) goto bad;
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':') { free(key); fail(ps, "expected ':'"); goto bad; }
            ps->p++;
        }
        json_node *child = parse_value(ps);
        if (!child) { free(key); goto bad; }
        child->key = key;
        *tail = child;
        tail = &child->next;
        node->count++;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') { ps->p++; continue; }
        if (ps->p < ps->end && *ps->p == close) { ps->p++; break; }
        fail(ps, is_object ? "expected ',' or '}'" : "expected ',' or ']'");
        goto bad;
    }
    ps->depth--;
    return node;
bad:
    json_free(node);
    return NULL;
}

static json_node *parse_value(parser *ps) {
    skip_ws(ps);
    if (ps->p >= ps->end) { fail(ps, "unexpected end of JSON"); return NULL; }
    char c = *ps->p;
    if (c == '{' || c == '[') return parse_container(ps, c == '{');
    if (c == '"') {
        char *s = parse_string(ps);
        if (!s) return NULL;
        json_node *n = new_node(JSON_STRING);
        if (!n) { free(s); fail(ps, "out of memory"); return NULL; }
        n->str = s;
        return n;
    }
    static const struct { const char *word; json_type type; } words[] = {
        {"true", JSON_TRUE}, {"false", JSON_FALSE}, {"null", JSON_NULL}};
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(words[i].word);
        if ((size_t)(ps->end - ps->p) >= n && memcmp(ps->p, words[i].word, n) == 0) {
            ps->p += n;
            return new_node(words[i].type);
        }
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        char buf[64];
        size_t n = 0;
        while (ps->p + n < ps->end && n < sizeof buf - 1 && strchr("+-.eE0123456789", ps->p[n])) n++;
        memcpy(buf, ps->p, n);
        buf[n] = 0;
        char *stop;
        double v = strtod(buf, &stop);
        if (stop == buf) { fail(ps, "bad number"); return NULL; }
        ps->p += stop - buf;
        json_node *node = new_node(JSON_NUMBER);
        if (node) node->num = v;
        return node;
    }
    fail(ps, "unexpected character");
    return NULL;
}

json_node *json_parse(const char *text, size_t len, char *err, size_t errlen) {
    parser ps = {text, text + len, err, errlen, 0};
    if (err && errlen) err[0] = 0;
    json_node *root = parse_value(&ps);
    if (!root) return NULL;
    skip_ws(&ps);
    if (ps.p != ps.end) {
        fail(&ps, "trailing characters after JSON");
        json_free(root);
        return NULL;
    }
    return root;
}

void json_free(json_node *node) {
    while (node) {
        json_node *next = node->next;
        json_free(node->child);
        free(node->key);
        free(node->str);
        free(node);
        node = next;
    }
}

json_node *json_get(const json_node *obj, const char *key) {
    if (!obj || obj->type != JSON_OBJECT) return NULL;
    for (json_node *c = obj->child; c; c = c->next)
        if (strcmp(c->key, key) == 0) return c;
    return NULL;
}

json_node *json_at(const json_node *arr, int index) {
    if (!arr || (arr->type != JSON_ARRAY && arr->type != JSON_OBJECT)) return NULL;
    json_node *c = arr->child;
    while (c && index-- > 0) c = c->next;
    return c;
}

double json_num(const json_node *obj, const char *key, double dflt) {
    json_node *n = json_get(obj, key);
    return n && n->type == JSON_NUMBER ? n->num : dflt;
}

const char *json_str(const json_node *obj, const char *key, const char *dflt) {
    json_node *n = json_get(obj, key);
    return n && n->type == JSON_STRING ? n->str : dflt;
}
