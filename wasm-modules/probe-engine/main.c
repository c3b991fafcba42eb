/* probe-engine: the engine's ABI (wasm-modules/engine/README.md) around state a test can
 * see, for snapshots and per-request isolation (runtime/wasm/snapshot.py,
 * runtime/wasm/request_pool.py).
 *
 * ei_init reads the file named by EI_WEIGHTS into a heap buffer (so a snapshot carries
 * it) and sums its bytes; it reports a graph (kind 2) of 4 int32 inputs and 4 float
 * outputs per row. ei_run takes each row as [mode, arg, 0, 0]:
 *
 *   0 state   output [calls so far in this instance, arg of the previous state call,
 *             byte sum of the file, 1 if the heap buffer still holds it]; remembers arg
 *   1 loop    spin forever (the host's deadline must end it)
 *   2 membomb allocate 1 MiB blocks until malloc fails, then trap
 *   3 trap    execute `unreachable`
 *   4 write   try to create /model/written-by-probe; output [1 if it could, 0, 0, 0]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT(name) __attribute__((export_name(#name)))
#define WIDTH 4

static char errbuf[256];
static int initialised, cap_rows;
static int *input;
static float *output;
static unsigned char *file_data;
static long file_len;
static unsigned long file_sum;
static int calls, previous_arg;
static void *volatile last_block;

static int fail(const char *msg) {
    snprintf(errbuf, sizeof errbuf, "%s", msg);
    return -1;
}

EXPORT(ei_init) int ei_init(int max_rows, int max_seq) {
    (void)max_seq;
    if (initialised) return fail("already initialised");
    if (max_rows <= 0) return fail("max_rows must be positive");
    const char *path = getenv("EI_WEIGHTS");
    FILE *f = fopen(path ? path : "/model/weights.bin", "rb");
    if (!f) return fail("cannot open the weights");
    fseek(f, 0, SEEK_END);
    file_len = ftell(f);
    fseek(f, 0, SEEK_SET);
    file_data = malloc((size_t)file_len + 1);
    if (!file_data || fread(file_data, 1, (size_t)file_len, f) != (size_t)file_len) {
        fclose(f);
        return fail("cannot read the weights");
    }
    fclose(f);
    for (long i = 0; i < file_len; i++) file_sum += file_data[i];
    cap_rows = max_rows;
    input = calloc((size_t)max_rows * WIDTH, sizeof(int));
    output = calloc((size_t)max_rows * WIDTH, sizeof(float));
    if (!input || !output) return fail("out of memory");
    initialised = 1;
    return 0;
}

EXPORT(ei_info) int ei_info(int what) {
    switch (what) {
        case 0: return initialised ? 2 : 0; /* kind: graph */
        case 1: return WIDTH;               /* output width */
        case 2: return cap_rows;            /* max rows */
        case 3: return 0;                   /* max sequence */
        case 4: return WIDTH;               /* input width */
        case 5: return 1;                   /* ABI version */
        default: return -1;
    }
}

EXPORT(ei_input) void *ei_input(void) { return input; }
EXPORT(ei_input_bytes) int ei_input_bytes(void) { return cap_rows * WIDTH * (int)sizeof(int); }
EXPORT(ei_output) float *ei_output(void) { return output; }
EXPORT(ei_error) const char *ei_error(void) { return errbuf; }
EXPORT(ei_profile) double ei_profile(int slot) { return slot < 0 ? 0.0 : 0.0; }

static int spin(void) {
    volatile unsigned long long x = 0;
    for (;;) x++;
    return (int)x;
}

static void membomb(void) {
    for (;;) {
        char *p = malloc(1 << 20);
        if (!p) __builtin_trap();
        memset(p, 1, 1 << 20);
        *(void **)p = last_block;
        last_block = p;
    }
}

static int try_write(void) {
    FILE *f = fopen("/model/written-by-probe", "w");
    if (!f) return 0;
    int ok = fputs("written\n", f) >= 0;
    return (fclose(f) == 0) && ok;
}

EXPORT(ei_run) int ei_run(int batch, int seq) {
    (void)seq;
    if (!initialised) return fail("ei_init has not succeeded");
    if (batch <= 0 || batch > cap_rows) return fail("bad batch");
    for (int r = 0; r < batch; r++) {
        const int *row = input + r * WIDTH;
        float *out = output + r * WIDTH;
        memset(out, 0, WIDTH * sizeof(float));
        switch (row[0]) {
            case 0:
                out[0] = (float)++calls;
                out[1] = (float)previous_arg;
                out[2] = (float)file_sum;
                out[3] = file_len > 0 && file_data != NULL;
                previous_arg = row[1];
                break;
            case 1: return spin();
            case 2: membomb(); break;
            case 3: __builtin_trap();
            case 4: out[0] = (float)try_write(); break;
            default: return fail("unknown mode");
        }
    }
    return 0;
}
