/* A pod's sandbox process, as the Kubernetes pause container does it: hold the pod's namespaces open,
 * reap whatever is re-parented to it, and exit 0 on SIGINT or SIGTERM. Built static with zig (musl). */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int signum) { (void)signum; _exit(0); }

static void reap(int signum) {
    (void)signum;
    while (waitpid(-1, 0, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction quit = {.sa_handler = stop}, child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
    sigaction(SIGINT, &quit, 0);
    sigaction(SIGTERM, &quit, 0);
    sigaction(SIGCHLD, &child, 0);
    for (;;)
        pause();
}
