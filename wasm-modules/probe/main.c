/* probe: a WASI command for the sandbox tests and the cold-start benchmark.
 *
 *   probe echo ARGS...     print args, $PROBE_ENV and stdin; exit with $PROBE_EXIT (0)
 *   probe loop             spin forever (the host's deadline must end it)
 *   probe membomb          allocate 1 MiB blocks until malloc fails, touching each
 *   probe trap             execute `unreachable`
 *   probe read PATH        print the file's first line
 *   probe write PATH       try to create PATH and write to it
 *   probe ls PATH          list a directory
 *   probe stdin            read "MODE [ARG]" from stdin and do that (for packages
 *                          served by the worker, whose request arrives on stdin)
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int echo(int argc, char **argv) {
    for (int i = 2; i < argc; i++) printf("arg[%d]=%s\n", i - 2, argv[i]);
    const char *env = getenv("PROBE_ENV");
    printf("env=%s\n", env ? env : "(unset)");
    const char *home = getenv("HOME");
    printf("home=%s\n", home ? home : "(unset)");
    char buf[4096];
    size_t n, total = 0;
    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) {
        if (total == 0) fputs("stdin=", stdout);
        fwrite(buf, 1, n, stdout);
        total += n;
    }
    if (total) fputc('\n', stdout);
    fprintf(stderr, "probe: echo done\n");
    const char *code = getenv("PROBE_EXIT");
    return code ? atoi(code) : 0;
}

static int spin(void) {
    volatile unsigned long long x = 0;
    for (;;) x++;
    return (int)x;
}

/* Each block links to the previous one, so the allocations escape and the compiler
 * cannot remove them. */
static void *volatile last_block;

static int membomb(void) {
    size_t total = 0;
    for (;;) {
        char *p = malloc(1 << 20);
        if (!p) {
            fprintf(stderr, "probe: malloc failed after %zu MiB\n", total >> 20);
            abort(); /* a guest that cannot cope with OOM: it traps */
        }
        memset(p, 1, 1 << 20);
        *(void **)p = last_block;
        last_block = p;
        total += 1 << 20;
    }
}

static int read_file(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) {
        printf("read %s: %s\n", path, strerror(errno));
        return 1;
    }
    char line[512];
    if (fgets(line, sizeof line, f)) printf("read %s: %s", path, line);
    fclose(f);
    return 0;
}

static int write_file(const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) {
        printf("write %s: %s\n", path, strerror(errno));
        return 1;
    }
    int ok = fputs("written by probe\n", f) >= 0;
    ok = (fclose(f) == 0) && ok;
    printf("write %s: %s\n", path, ok ? "ok" : strerror(errno));
    return ok ? 0 : 1;
}

static int list_dir(const char *path) {
    DIR *d = opendir(path);
    if (!d) {
        printf("ls %s: %s\n", path, strerror(errno));
        return 1;
    }
    struct dirent *e;
    while ((e = readdir(d))) printf("%s\n", e->d_name);
    closedir(d);
    return 0;
}

int main(int argc, char **argv);

static int from_stdin(void) {
    static char line[1024];
    size_t n = fread(line, 1, sizeof line - 1, stdin);
    line[n] = 0;
    char *words[4] = {"probe", NULL, NULL, NULL};
    int count = 1;
    for (char *w = strtok(line, " \t\r\n"); w && count < 3; w = strtok(NULL, " \t\r\n"))
        words[count++] = w;
    if (count == 1) return 2;
    if (!strcmp(words[1], "stdin")) return 2;
    return main(count, words);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "echo";
    if (!strcmp(mode, "echo")) return echo(argc, argv);
    if (!strcmp(mode, "loop")) return spin();
    if (!strcmp(mode, "membomb")) return membomb();
    if (!strcmp(mode, "trap")) __builtin_trap();
    if (!strcmp(mode, "read") && argc > 2) return read_file(argv[2]);
    if (!strcmp(mode, "write") && argc > 2) return write_file(argv[2]);
    if (!strcmp(mode, "ls") && argc > 2) return list_dir(argv[2]);
    if (!strcmp(mode, "stdin")) return from_stdin();
    fprintf(stderr, "probe: unknown mode %s\n", mode);
    return 2;
}
