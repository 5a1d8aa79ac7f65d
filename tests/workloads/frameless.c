// A workload built without frame pointers that measures its own ground truth, for the
// kernel's DWARF unwinder. Its phases are the cases frame-pointer walking gets wrong:
//
// - predict_phase: predict() recursing through frames of 1 KiB;
// - sort_phase: qsort() calling compare_scores(), whose callers run through glibc;
// - format_phase: time spent inside glibc's snprintf();
// - interrupted_phase: a frameless loop that SIGALRM interrupts every 10 ms, whose
//   handler spins in in_handler() for about 4 ms on the signal frame;
// - library_phase: a function of a library loaded with dlopen() after START_DELAY_MS
//   (so after the profiler attached), calling back into library_callback();
// - loader_phase: symbol lookups with dlsym(), which run in the dynamic loader, the
//   highest executable mapping below the kernel's [vsyscall] page.
//
// Usage: frameless SECONDS START_DELAY_MS LIBRARY TRUTH_FILE
//
// The main thread runs the phases in turn and measures the thread CPU time of each
// with CLOCK_THREAD_CPUTIME_ID; the handler's time is measured inside the handler and
// is also part of interrupted_phase's. At the end it writes TRUTH_FILE, as JSON: each
// phase's CPU time, the handler's, and the whole process's.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define RECURSION_DEPTH 100
#define SCORES 4096

static volatile uint64_t sink;
static volatile sig_atomic_t in_interrupted_phase;
static uint64_t handler_ns;

static uint64_t clock_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

static uint64_t thread_cpu_ns(void) { return clock_ns(CLOCK_THREAD_CPUTIME_ID); }

__attribute__((noinline)) static uint64_t spin(uint64_t iterations, uint64_t seed) {
    uint64_t x = seed;
    for (uint64_t i = 0; i < iterations; i++) {
        x = x * 6364136223846793005u + 1442695040888963407u;
        __asm__ volatile("" : "+r"(x));
    }
    return x;
}

// Each level keeps a 1 KiB buffer live across the call, so the frame is 1 KiB: a
// 256-byte stack copy or a frame-pointer walk from the bottom finds no caller.
__attribute__((noinline)) uint64_t predict(int depth, uint64_t seed) {
    volatile char layer[1024];
    layer[depth % sizeof layer] = (char)seed;
    uint64_t result = depth == 0 ? spin(1500000, seed) : predict(depth - 1, seed + 1);
    return result + layer[depth % sizeof layer];
}

__attribute__((noinline)) void predict_phase(void) {
    for (int i = 0; i < 10; i++) sink += predict(RECURSION_DEPTH, sink);
}

static uint64_t scores[SCORES];

__attribute__((noinline)) int compare_scores(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

__attribute__((noinline)) void sort_phase(void) {
    for (int round = 0; round < 48; round++) {
        uint64_t x = sink + round;
        for (int i = 0; i < SCORES; i++) {
            x = x * 6364136223846793005u + 1442695040888963407u;
            scores[i] = x >> 11;
        }
        qsort(scores, SCORES, sizeof scores[0], compare_scores);
        sink += scores[SCORES / 2];
    }
}

__attribute__((noinline)) void format_phase(void) {
    char line[256];
    for (int i = 0; i < 50000; i++) {
        snprintf(line, sizeof line, "request %d took %.3f ms for model %s at %p", i,
                 i * 0.37, "deepseek-v3", (void *)line);
        sink += (unsigned char)line[i % 40];
    }
}

__attribute__((noinline)) void in_handler(void) {
    uint64_t start = thread_cpu_ns();
    // About 4 ms, whatever the machine's speed, measured rather than counted.
    while (thread_cpu_ns() - start < 4000000) sink += spin(20000, sink);
    handler_ns += thread_cpu_ns() - start;
}

static void on_alarm(int signal) {
    (void)signal;
    if (in_interrupted_phase) in_handler();
}

// A frameless loop: the signal lands on any of its instructions.
__attribute__((noinline)) static uint64_t interrupted_loop(uint64_t iterations) {
    uint64_t x = sink;
    for (uint64_t i = 0; i < iterations; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        __asm__ volatile("" : "+r"(x));
    }
    return x;
}

__attribute__((noinline)) void interrupted_phase(void) {
    in_interrupted_phase = 1;
    sink += interrupted_loop(8000000);
    in_interrupted_phase = 0;
}

__attribute__((noinline)) uint64_t library_callback(uint64_t seed) {
    // Not a tail call: this frame stays on the stack while spin() runs.
    return spin(1500000, seed) + 1;
}

static uint64_t (*library_work)(uint64_t (*)(uint64_t), uint64_t);

__attribute__((noinline)) void loader_phase(void) {
    for (int i = 0; i < 80000; i++) sink += (uintptr_t)dlsym(RTLD_DEFAULT, "library_phase");
}

__attribute__((noinline)) void library_phase(void) {
    for (int i = 0; i < 10; i++) sink += library_work(library_callback, sink);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s SECONDS START_DELAY_MS LIBRARY TRUTH_FILE\n", argv[0]);
        return 2;
    }
    double seconds = atof(argv[1]);
    usleep((useconds_t)atoi(argv[2]) * 1000);
    void *library = dlopen(argv[3], RTLD_NOW);
    if (!library || !(library_work = dlsym(library, "library_work"))) {
        fprintf(stderr, "loading %s: %s\n", argv[3], dlerror());
        return 1;
    }
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_alarm;
    sigaction(SIGALRM, &action, NULL);
    struct itimerval every_10ms = {{0, 10000}, {0, 10000}};
    setitimer(ITIMER_REAL, &every_10ms, NULL);

    void (*phases[])(void) = {predict_phase,     sort_phase,    format_phase,
                              interrupted_phase, library_phase, loader_phase};
    const char *names[] = {"predict_phase",     "sort_phase",    "format_phase",
                           "interrupted_phase", "library_phase", "loader_phase"};
    enum { PHASES = sizeof phases / sizeof phases[0] };
    uint64_t phase_ns[PHASES] = {0};
    uint64_t start = clock_ns(CLOCK_MONOTONIC);
    uint64_t process_start = clock_ns(CLOCK_PROCESS_CPUTIME_ID);
    while (clock_ns(CLOCK_MONOTONIC) - start < seconds * 1e9) {
        for (int i = 0; i < PHASES; i++) {
            uint64_t t0 = thread_cpu_ns();
            phases[i]();
            phase_ns[i] += thread_cpu_ns() - t0;
        }
    }
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    uint64_t process_ns = clock_ns(CLOCK_PROCESS_CPUTIME_ID) - process_start;

    FILE *truth = fopen(argv[4], "w");
    if (!truth) return 1;
    fprintf(truth, "{");
    for (int i = 0; i < PHASES; i++) fprintf(truth, "\"%s\": %llu, ", names[i],
                                             (unsigned long long)phase_ns[i]);
    fprintf(truth, "\"in_handler\": %llu, \"process_ns\": %llu}\n",
            (unsigned long long)handler_ns, (unsigned long long)process_ns);
    fclose(truth);
    return 0;
}
