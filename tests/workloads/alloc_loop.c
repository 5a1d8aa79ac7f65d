// The allocation benchmark's workload: alloc_loop PAIRS [HOLD [LINGER_MS]]
//
// Makes PAIRS malloc(64)+free pairs in a tight loop and prints the nanoseconds per pair
// it measured (CLOCK_MONOTONIC); then allocates HOLD 64-byte blocks that it keeps, and
// lingers LINGER_MS before exiting, so that a tracer holds HOLD live allocations.
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: alloc_loop PAIRS [HOLD [LINGER_MS]]\n");
        return 2;
    }
    long pairs = atol(argv[1]);
    long hold = argc > 2 ? atol(argv[2]) : 0;
    long linger_ms = argc > 3 ? atol(argv[3]) : 0;
    long long start = now_ns();
    for (long i = 0; i < pairs; i++) {
        char *block = malloc(64);
        // Keeps the compiler from pairing the malloc with the free and removing both.
        __asm__ volatile("" : : "r"(block) : "memory");
        free(block);
    }
    long long elapsed = now_ns() - start;
    if (pairs > 0) printf("%.2f ns per pair\n", (double)elapsed / pairs);
    fflush(stdout);
    void **held = malloc(sizeof(void *) * (hold > 0 ? hold : 1));
    for (long i = 0; i < hold; i++) held[i] = malloc(64);
    usleep(linger_ms * 1000);
    return held == NULL;
}
