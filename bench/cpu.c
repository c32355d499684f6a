/* A CPU-bound kernel for bench/run.py: the same source is built natively and as wasm. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    long rounds = argc > 1 ? atol(argv[1]) : 60;
    static uint32_t table[1 << 16];
    uint64_t x = 88172645463325252ull, sum = 0;
    for (long r = 0; r < rounds; r++) {
        for (int i = 0; i < (1 << 16); i++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            table[i] = (uint32_t)x ^ table[(i * 7919) & 0xffff];
        }
        for (int i = 0; i < (1 << 16); i++) sum += table[i] % 1009;
    }
    printf("%llu\n", (unsigned long long)sum);
    return 0;
}
