// A CPU-bound workload that measures its own ground truth.
//
// Usage: [PHASES_HOT_WEIGHT=N] phases THREADS SECONDS START_DELAY_MS TRUTH_FILE
//
// After START_DELAY_MS, starts THREADS worker threads. Each alternates between
// hot_phase() (N times cold_phase's work, 3 unless PHASES_HOT_WEIGHT says otherwise:
// about three quarters of its work) and cold_phase(), and measures the
// thread CPU time spent in each with CLOCK_THREAD_CPUTIME_ID. After SECONDS it writes
// to TRUTH_FILE, as JSON: the CPU time of each phase summed over threads, the whole
// process's CPU time, the worker thread ids and each worker's whole CPU time.
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

#define MAX_THREADS 64

static volatile int stop;
static double seconds;
static uint64_t hot_ns[MAX_THREADS], cold_ns[MAX_THREADS], thread_ns[MAX_THREADS];
static pid_t tids[MAX_THREADS];
static volatile uint64_t sink;

static uint64_t thread_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

// The work itself is a leaf function, which gcc compiles without a frame: a plain
// frame-pointer walk from inside it skips its caller, so the phases' shares are only
// right if the profiler recovers that caller.
__attribute__((noinline)) static uint64_t spin(uint64_t iterations, uint64_t seed) {
    uint64_t x = seed;
    for (uint64_t i = 0; i < iterations; i++) {
        x = x * 6364136223846793005u + 1442695040888963407u;
        __asm__ volatile("" : "+r"(x));
    }
    return x;
}

static uint64_t hot_weight = 3;

// Each phase's length varies from round to round, 0.5 to 1.5 times its mean: rounds of
// one fixed length near a multiple of the sampling period would be sampled at the same
// point every time, and the split would depend on where that point fell (see the
// README's limits), as the host's speed moves the length about.
static __thread uint64_t jitter;

static uint64_t jittered(uint64_t iterations) {
    jitter = jitter * 6364136223846793005u + 1442695040888963407u;
    return iterations / 2 + (jitter >> 33) % iterations;
}

__attribute__((noinline)) void hot_phase(void) {
    sink += spin(jittered(hot_weight * 1000000), sink);
}
__attribute__((noinline)) void cold_phase(void) { sink += spin(jittered(1000000), sink); }

static void *worker(void *arg) {
    long index = (long)arg;
    tids[index] = (pid_t)syscall(SYS_gettid);
    jitter = (uint64_t)index + 1;
    while (!stop) {
        uint64_t t0 = thread_cpu_ns();
        hot_phase();
        uint64_t t1 = thread_cpu_ns();
        cold_phase();
        uint64_t t2 = thread_cpu_ns();
        hot_ns[index] += t1 - t0;
        cold_ns[index] += t2 - t1;
    }
    thread_ns[index] = thread_cpu_ns();
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s THREADS SECONDS START_DELAY_MS TRUTH_FILE\n", argv[0]);
        return 2;
    }
    long threads = atol(argv[1]);
    seconds = atof(argv[2]);
    long delay_ms = atol(argv[3]);
    if (threads < 1 || threads > MAX_THREADS) return 2;
    const char *weight = getenv("PHASES_HOT_WEIGHT");
    if (weight && atoll(weight) > 0) hot_weight = (uint64_t)atoll(weight);
    usleep(delay_ms * 1000);
    pthread_t handles[MAX_THREADS];
    for (long i = 0; i < threads; i++) pthread_create(&handles[i], NULL, worker, (void *)i);
    usleep((useconds_t)(seconds * 1e6));
    stop = 1;
    uint64_t hot = 0, cold = 0;
    for (long i = 0; i < threads; i++) {
        pthread_join(handles[i], NULL);
        hot += hot_ns[i];
        cold += cold_ns[i];
    }
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    FILE *truth = fopen(argv[4], "w");
    if (!truth) return 1;
    fprintf(truth, "{\"hot_ns\": %llu, \"cold_ns\": %llu, \"process_ns\": %llu, \"tids\": [",
            (unsigned long long)hot, (unsigned long long)cold,
            (unsigned long long)ts.tv_sec * 1000000000ull + ts.tv_nsec);
    for (long i = 0; i < threads; i++) fprintf(truth, "%s%d", i ? ", " : "", tids[i]);
    fprintf(truth, "], \"thread_ns\": [");
    for (long i = 0; i < threads; i++)
        fprintf(truth, "%s%llu", i ? ", " : "", (unsigned long long)thread_ns[i]);
    fprintf(truth, "]}\n");
    return fclose(truth) == 0 ? 0 : 1;
}
