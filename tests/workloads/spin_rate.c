// The 999 Hz slowdown benchmark's workload: spin_rate SECONDS DEPTH
//
// Spins DEPTH frames deep on its one thread for SECONDS of wall time and prints the
// wall nanoseconds it took per million iterations. Pinned to a CPU of its own, every
// nanosecond a sampler spends interrupting it (its timer, its program, its unwinding)
// makes the loop slower, and nothing else does.
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define BATCH 1000000UL

static double seconds;
static unsigned long iterations;
static double elapsed_ns;
// Never set: keeps each level's return, so that every frame stays on the stack.
static volatile int stop;

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

__attribute__((noinline)) static void spin(void) {
    double start = now_ns();
    while (!stop) {
        for (unsigned long i = 0; i < BATCH; i++) __asm__ volatile("" ::: "memory");
        iterations += BATCH;
        elapsed_ns = now_ns() - start;
        if (elapsed_ns >= seconds * 1e9) break;
    }
}

// Not inlined, and not a tail call: each level keeps a frame of its own.
__attribute__((noinline)) static void descend(int depth) {
    if (depth == 0) {
        spin();
        return;
    }
    descend(depth - 1);
    __asm__ volatile("" ::: "memory");
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: spin_rate SECONDS DEPTH\n");
        return 2;
    }
    seconds = atof(argv[1]);
    descend(atoi(argv[2]));
    printf("%.1f\n", elapsed_ns / (iterations / (double)BATCH));
    return 0;
}
