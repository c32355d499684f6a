/* What a guest that got past wasmtime could do, as native code under a real container process's
 * confinement: `escape PID VICTIM DIR` takes the confinement of container process PID (its seccomp
 * filters, read back with PTRACE_SECCOMP_GET_FILTER; its pid, ipc, uts, network and mount namespaces;
 * its ids, capabilities and no_new_privs, from /proc/PID/status), then tries what a container must
 * not do: make namespaces (clone, clone3, unshare), signal or trace VICTIM (a process outside), kill
 * pid 1, mount on DIR, load BPF, set up io_uring, join a keyring. It prints one JSON object: each
 * attempt's errno, 0 where the call succeeded. Built static by the tests (zig cc, musl). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/filter.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define PTRACE_SEIZE_ 0x4206
#define PTRACE_INTERRUPT_ 0x4207
#define PTRACE_SECCOMP_GET_FILTER_ 0x420c
#define SECCOMP_SET_MODE_FILTER_ 1
#define MAX_FILTERS 8
#define NR_CLONE3 435
#define NR_IO_URING_SETUP 425
#define NR_BPF 321
#define NR_KEYCTL 250
#define KEYCTL_JOIN_SESSION_KEYRING 1

static struct sock_filter *filters[MAX_FILTERS];
static unsigned short lengths[MAX_FILTERS];
static int filter_count;

static void die(const char *what) {
    fprintf(stderr, "escape: %s: %s\n", what, strerror(errno));
    exit(2);
}

/* Stop the container process, copy each of its filters (index 0 is the oldest), let it go on. */
static void read_filters(pid_t pid) {
    int status;
    if (ptrace(PTRACE_SEIZE_, pid, 0, 0) != 0) die("PTRACE_SEIZE");
    if (ptrace(PTRACE_INTERRUPT_, pid, 0, 0) != 0) die("PTRACE_INTERRUPT");
    if (waitpid(pid, &status, __WALL) != pid) die("waitpid");
    for (filter_count = 0; filter_count < MAX_FILTERS; filter_count++) {
        long n = ptrace(PTRACE_SECCOMP_GET_FILTER_, pid, (void *)(long)filter_count, 0);
        if (n < 0 && errno == ENOENT) break;
        if (n <= 0) die("PTRACE_SECCOMP_GET_FILTER");
        filters[filter_count] = calloc(n, sizeof(struct sock_filter));
        lengths[filter_count] = n;
        if (ptrace(PTRACE_SECCOMP_GET_FILTER_, pid, (void *)(long)filter_count, filters[filter_count]) != n)
            die("PTRACE_SECCOMP_GET_FILTER");
    }
    if (ptrace(PTRACE_DETACH, pid, 0, 0) != 0) die("PTRACE_DETACH");
}

struct creds {
    uid_t uid;
    gid_t gid;
    gid_t groups[64];
    int ngroups;
    uint64_t bounding, effective, permitted, inheritable, ambient;
};

static void read_creds(pid_t pid, struct creds *c) {
    char path[64], line[1024];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f) die(path);
    memset(c, 0, sizeof *c);
    while (fgets(line, sizeof line, f)) {
        unsigned long long v;
        if (sscanf(line, "Uid: %u", &c->uid) == 1 || sscanf(line, "Gid: %u", &c->gid) == 1) continue;
        if (strncmp(line, "Groups:", 7) == 0) {
            char *p = line + 7, *end;
            for (unsigned long g; c->ngroups < 64 && (g = strtoul(p, &end, 10), end != p); p = end)
                c->groups[c->ngroups++] = g;
        }
        if (sscanf(line, "CapBnd: %llx", &v) == 1) c->bounding = v;
        if (sscanf(line, "CapEff: %llx", &v) == 1) c->effective = v;
        if (sscanf(line, "CapPrm: %llx", &v) == 1) c->permitted = v;
        if (sscanf(line, "CapInh: %llx", &v) == 1) c->inheritable = v;
        if (sscanf(line, "CapAmb: %llx", &v) == 1) c->ambient = v;
    }
    fclose(f);
}

static void join_namespaces(pid_t pid) {
    static const char *kinds[] = {"pid", "ipc", "uts", "net", "mnt"};  /* mnt last: /proc is read by then */
    int fds[5];
    char path[64];
    for (int i = 0; i < 5; i++) {
        snprintf(path, sizeof path, "/proc/%d/ns/%s", pid, kinds[i]);
        if ((fds[i] = open(path, O_RDONLY)) < 0) die(path);
    }
    for (int i = 0; i < 5; i++)
        if (setns(fds[i], 0) != 0) die(kinds[i]);
}

struct cap_header { uint32_t version; int pid; };
struct cap_data { uint32_t effective, permitted, inheritable; };

static void become(const struct creds *c) {
    for (int cap = 0; cap < 64; cap++)
        if (!(c->bounding & (1ULL << cap)) && prctl(PR_CAPBSET_READ, cap, 0, 0, 0) >= 0)
            if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) die("PR_CAPBSET_DROP");
    if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0) die("PR_SET_KEEPCAPS");
    if (setgroups(c->ngroups, c->groups) != 0) die("setgroups");
    if (setresgid(c->gid, c->gid, c->gid) != 0) die("setresgid");
    if (setresuid(c->uid, c->uid, c->uid) != 0) die("setresuid");
    struct cap_header header = {0x20080522, 0};
    struct cap_data data[2] = {
        {c->effective, c->permitted, c->inheritable},
        {c->effective >> 32, c->permitted >> 32, c->inheritable >> 32}};
    if (syscall(SYS_capset, &header, data) != 0) die("capset");
    for (int cap = 0; cap < 64; cap++)
        if (c->ambient & (1ULL << cap)) prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) die("PR_SET_NO_NEW_PRIVS");
    for (int i = 0; i < filter_count; i++) {
        struct sock_fprog prog = {lengths[i], filters[i]};
        /* seccomp(2), as libseccomp loads them: the first filter allows prctl for four options only */
        if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER_, 0, &prog) != 0) die("seccomp");
    }
}

static int outcome(long result) {
    return result < 0 ? errno : 0;
}

/* A call that makes a process: the child leaves at once; 0 if it was made. */
static int forked(long result) {
    if (result == 0) _exit(0);
    int error = outcome(result);
    if (result > 0) waitpid(result, NULL, __WALL);
    return error;
}

struct clone_args_ { uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls; };

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: escape PID VICTIM DIR\n");
        return 2;
    }
    pid_t pid = atoi(argv[1]), victim = atoi(argv[2]);
    struct creds creds;
    read_creds(pid, &creds);
    read_filters(pid);
    join_namespaces(pid);
    pid_t child = fork();  /* in the container's pid namespace */
    if (child < 0) die("fork");
    if (child > 0) {
        int status;
        waitpid(child, &status, 0);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 3;
    }
    become(&creds);
    struct clone_args_ args = {.flags = CLONE_NEWUSER, .exit_signal = SIGCHLD};
    unsigned params[30] = {0};
    char attr[128] = {0};
    int r[13];  /* one statement each: errno is read right after its call */
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) die("pipe2");  /* musl makes pipe2(fds, 0) a pipe(2), which the allowlist lacks */
    r[0] = forked(syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0));
    r[1] = forked(syscall(NR_CLONE3, &args, sizeof args));
    r[2] = outcome(unshare(CLONE_NEWUSER));
    r[3] = outcome(unshare(CLONE_NEWNS));
    r[4] = outcome(syscall(SYS_tgkill, victim, victim, SIGKILL));
    r[5] = outcome(kill(victim, SIGKILL));
    r[6] = outcome(kill(1, SIGKILL));
    r[7] = outcome(ptrace(PTRACE_ATTACH, victim, 0, 0));
    r[8] = outcome(mount("none", argv[3], "tmpfs", 0, NULL));
    r[9] = outcome(syscall(NR_BPF, 0 /* BPF_MAP_CREATE */, attr, sizeof attr));
    r[10] = outcome(syscall(NR_IO_URING_SETUP, 1, params));
    r[11] = outcome(syscall(NR_KEYCTL, KEYCTL_JOIN_SESSION_KEYRING, 0));
    r[12] = outcome(fcntl(fds[1], F_SETOWN, victim));  /* then O_ASYNC: the kernel signals the owner */
    char out[1024];
    int n = snprintf(out, sizeof out,
        "{\"filters\": %d, \"clone CLONE_NEWUSER\": %d, \"clone3\": %d, \"unshare CLONE_NEWUSER\": %d, "
        "\"unshare CLONE_NEWNS\": %d, \"tgkill victim\": %d, \"kill victim\": %d, \"kill 1\": %d, "
        "\"ptrace victim\": %d, \"mount\": %d, \"bpf\": %d, \"io_uring_setup\": %d, \"keyctl\": %d, "
        "\"fcntl F_SETOWN victim\": %d}\n",
        filter_count, r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12]);
    write(1, out, n);
    _exit(0);
}
