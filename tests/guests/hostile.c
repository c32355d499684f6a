/* A deliberately hostile guest: each mode tries to reach something the sandbox must keep out. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int f_ok(const char *path) { FILE *f = fopen(path, "w"); return f && fputs("abc", f) >= 0 && !fclose(f); }
static int depth(int n) { volatile char pad[256]; pad[0] = (char)n; return depth(n + 1) + pad[0]; }

int main(int argc, char **argv) {
    if (argc < 2) return 64;
    const char *mode = argv[1], *arg = argc > 2 ? argv[2] : "";
    if (!strcmp(mode, "read")) {
        FILE *f = fopen(arg, "r");
        if (!f) { printf("denied: %s\n", strerror(errno)); return 1; }
        char buf[256]; size_t n = fread(buf, 1, sizeof buf - 1, f); buf[n] = 0;
        printf("read: %s\n", buf); return 0;
    }
    if (!strcmp(mode, "write")) {
        FILE *f = fopen(arg, "w");
        if (!f || fputs("pwned\n", f) < 0 || fclose(f) != 0) { printf("denied: %s\n", strerror(errno)); return 1; }
        printf("wrote %s\n", arg); return 0;
    }
    if (!strcmp(mode, "ls")) {
        DIR *d = opendir(arg);
        if (!d) { printf("denied: %s\n", strerror(errno)); return 1; }
        struct dirent *e; while ((e = readdir(d))) printf("%s\n", e->d_name);
        closedir(d); return 0;
    }
    if (!strcmp(mode, "env")) { const char *v = getenv(arg); printf("%s=%s\n", arg, v ? v : "(unset)"); return v ? 0 : 1; }
    if (!strcmp(mode, "environ")) { extern char **environ; for (char **e = environ; *e; e++) puts(*e); return 0; }
    if (!strcmp(mode, "bomb")) {
        long mib = 0;
        static char *volatile keep;  /* keeps the allocations observable, so the loop is not optimised away */
        for (;;) { char *p = malloc(1 << 20); if (!p) break; memset(p, 1, 1 << 20); keep = p; mib++; }
        printf("allocated %ld MiB before malloc failed\n", mib);
        if (!strcmp(arg, "abort")) abort();  /* as most programs do when out of memory */
        return 2;
    }
    if (!strcmp(mode, "spin")) { volatile unsigned long i = 0; for (;;) i++; }
    if (!strcmp(mode, "recurse")) return depth(0);
    if (!strcmp(mode, "flood")) {
        static char block[1 << 16]; memset(block, 'x', sizeof block);
        long total = atol(arg) << 20;
        for (long sent = 0; sent < total; sent += sizeof block) fwrite(block, 1, sizeof block, stdout);
        return 0;
    }
    if (!strcmp(mode, "cat")) { int c; long n = 0; while ((c = getchar()) != EOF) { putchar(c); n++; } fprintf(stderr, "%ld bytes\n", n); return 0; }
    if (!strcmp(mode, "cwd")) { char b[256]; printf("cwd=%s\n", getcwd(b, sizeof b) ? b : "?"); return 0; }
    if (!strcmp(mode, "exit")) return atoi(arg);
    if (!strcmp(mode, "sleep")) { sleep((unsigned)atoi(arg)); return 0; }
    if (!strcmp(mode, "prompt")) {  /* a partial line, a pause, the rest: as a progress message or a prompt */
        fputs("Working... ", stdout); fflush(stdout); sleep((unsigned)atoi(arg)); puts("done"); return 0;
    }
    if (!strcmp(mode, "abort")) abort();
    if (!strcmp(mode, "fs")) {  /* every kind of change a granted writable directory allows, in `arg` */
        char a[512], b[512], c[512];
        snprintf(a, sizeof a, "%s/d", arg); snprintf(b, sizeof b, "%s/d/f", arg); snprintf(c, sizeof c, "%s/d/g", arg);
        if (mkdir(a, 0755) || !(f_ok(b))) { printf("denied: %s\n", strerror(errno)); return 1; }
        int fd = open(b, O_RDWR);
        if (fd < 0 || ftruncate(fd, 3) || fsync(fd) || fdatasync(fd) || pwrite(fd, "x", 1, 1) != 1 || close(fd)
            || rename(b, c) || symlink("g", b) || unlink(b) || link(c, b) || unlink(b) || unlink(c) || rmdir(a)) {
            printf("denied: %s\n", strerror(errno)); return 1;
        }
        printf("fs ok\n"); return 0;
    }
    return 64;
}
