/* hello: the smallest useful WASI program.
 *
 * Prints a greeting built from its arguments and environment, and exits with a chosen code, so that
 * one module shows how a wasm container receives argv, env and reports its exit status.
 *
 *   hello [NAME] [EXIT_CODE]      GREETING=Hi hello wasm 3   ->  "Hi, wasm!" and exit status 3
 */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    const char *greeting = getenv("GREETING");
    const char *name = argc > 1 ? argv[1] : "world";
    printf("%s, %s!\n", greeting ? greeting : "Hello", name);
    printf("argc=%d\n", argc);
    return argc > 2 ? atoi(argv[2]) : 0;
}
