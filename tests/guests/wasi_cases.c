/* WASI preview 1 behaviours the public WASI test suite checks (WebAssembly/wasi-testsuite, its C tests),
 * written here as one guest with a mode per case. Run with a directory granted at `/` holding
 * `data.txt` ("01234567"), `dir/` with `a` and `b`, and a writable `scratch/`. Prints "ok" and exits 0,
 * or prints what failed and exits 1. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int failed(const char *what) {
    printf("FAIL %s (errno %d: %s)\n", what, errno, strerror(errno));
    return 1;
}
#define CHECK(cond) do { if (!(cond)) return failed(#cond); } while (0)

static int clocks(void) {
    struct timespec res, a, b;
    CHECK(clock_getres(CLOCK_MONOTONIC, &res) == 0 && (res.tv_sec > 0 || res.tv_nsec > 0));
    CHECK(clock_getres(CLOCK_REALTIME, &res) == 0 && (res.tv_sec > 0 || res.tv_nsec > 0));
    CHECK(clock_gettime(CLOCK_MONOTONIC, &a) == 0 && clock_gettime(CLOCK_MONOTONIC, &b) == 0);
    CHECK(b.tv_sec > a.tv_sec || (b.tv_sec == a.tv_sec && b.tv_nsec >= a.tv_nsec));
    CHECK(clock_gettime(CLOCK_REALTIME, &a) == 0 && a.tv_sec > 1600000000);  /* after 2020 */
    return 0;
}

static int seek_and_read(void) {
    char buf[8];
    FILE *f = fopen("data.txt", "r");
    CHECK(f != NULL);
    int fd = fileno(f);
    CHECK(fread(buf, 1, 4, f) == 4);
    CHECK(fflush(f) == 0 && lseek(fd, 0, SEEK_CUR) == 4);  /* fflush gives stdio's read-ahead back */
    CHECK(fread(buf, 1, 1, f) == 1 && buf[0] == '4' && fflush(f) == 0 && lseek(fd, 0, SEEK_CUR) == 5);
    CHECK(lseek(fd, 0, SEEK_SET) == 0 && lseek(fd, 0, SEEK_END) == 8);
    CHECK(pread(fd, buf, 3, 2) == 3 && memcmp(buf, "234", 3) == 0 && lseek(fd, 0, SEEK_CUR) == 8);
    CHECK(fclose(f) == 0);
    return 0;
}

static int write_at(void) {
    char buf[8];
    int fd = open("scratch/written.txt", O_RDWR | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    CHECK(write(fd, "abcdef", 6) == 6);
    CHECK(pwrite(fd, "XY", 2, 1) == 2 && lseek(fd, 0, SEEK_CUR) == 6);  /* pwrite leaves the offset */
    CHECK(pread(fd, buf, 6, 0) == 6 && memcmp(buf, "aXYdef", 6) == 0);
    CHECK(close(fd) == 0 && unlink("scratch/written.txt") == 0);
    return 0;
}

static int access_bounds(void) {
    CHECK(fopen("data.txt", "r") != NULL);
    errno = 0;
    CHECK(fopen("/../outside.txt", "r") == NULL);  /* nothing above the granted root */
    CHECK(open("dir/../../data.txt", O_RDONLY) < 0);
    return 0;
}

static int directories(void) {
    int fd = open("dir", O_RDONLY | O_DIRECTORY);
    CHECK(fd >= 0);
    DIR *d = fdopendir(fd);
    CHECK(d != NULL);
    int seen = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        seen |= !strcmp(e->d_name, "a") ? 1 : !strcmp(e->d_name, "b") ? 2 : 0;
    CHECK(seen == 3);
    CHECK(closedir(d) == 0);
    return 0;
}

static int identities(void) {
    struct stat a1, a2, b;
    CHECK(stat("dir/a", &a1) == 0 && stat("dir/a", &a2) == 0 && stat("dir/b", &b) == 0);
    CHECK(a1.st_dev == a2.st_dev && a1.st_ino == a2.st_ino);
    CHECK(a1.st_dev == b.st_dev && a1.st_ino != b.st_ino);
    return 0;
}

static int sockets(void) {
    errno = 0;
    CHECK(shutdown(12345, SHUT_RDWR) == -1 && errno == EBADF);
    int fd = open("data.txt", O_RDONLY);
    CHECK(fd >= 0);
    errno = 0;
    CHECK(shutdown(fd, SHUT_RDWR) == -1 && errno == ENOTSOCK);
    return 0;
}

int main(int argc, char **argv) {
    static const struct { const char *name; int (*run)(void); } cases[] = {
        {"clocks", clocks}, {"seek-and-read", seek_and_read}, {"write-at", write_at},
        {"access-bounds", access_bounds}, {"directories", directories}, {"identities", identities},
        {"sockets", sockets},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (argc > 1 && !strcmp(argv[1], cases[i].name)) {
            if (cases[i].run()) return 1;
            puts("ok");
            return 0;
        }
    puts("usage: wasi_cases CASE");
    return 64;
}
