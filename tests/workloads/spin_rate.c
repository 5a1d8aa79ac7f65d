// The 999 Hz slowdown benchmark's workload: spin_rate SECONDS DEPTH
//
// Spins DEPTH frames deep on its one thread for SECONDS of wall time and prints the
// wall nanoseconds it took per million iterations over the whole run, then over each
// 100 ms window ("window NS"). Pinned to a CPU of its own, every nanosecond a sampler
// spends interrupting it (its timer, its program, its unwinding) makes the loop
// slower, and nothing else on the VM does. The host does: on this VM the loop runs at
// one of two speeds, a factor of two apart, switching from one 100 ms to the next, so
// the bench compares the windows of the fast speed.
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define BATCH 1000000UL
#define WINDOW_NS 1e8

static double seconds;
static unsigned long iterations;
static double elapsed_ns;
// Each 100 ms window's rate, in order: SECONDS is at most a minute.
static double windows[600];
static int window_count;
// Never set: keeps each level's return, so that every frame stays on the stack.
static volatile int stop;

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

__attribute__((noinline)) static void spin(void) {
    double start = now_ns();
    double window_start = start;
    unsigned long window_iterations = 0;
    while (!stop) {
        for (unsigned long i = 0; i < BATCH; i++) __asm__ volatile("" ::: "memory");
        iterations += BATCH;
        window_iterations += BATCH;
        double now = now_ns();
        if (now - window_start >= WINDOW_NS) {
            double rate = (now - window_start) / (window_iterations / (double)BATCH);
            if (window_count < 600) windows[window_count++] = rate;
            window_start = now;
            window_iterations = 0;
        }
        elapsed_ns = now - start;
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
    for (int i = 0; i < window_count; i++) printf("window %.1f\n", windows[i]);
    return 0;
}
