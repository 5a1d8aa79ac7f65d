// A workload that leaks a known number of blocks of a known size from one function
// while churning balanced allocations elsewhere, for the allocation tracking tests:
//
//   leaks TRUTH_FILE OUTPUT_FILE [EARLY_BLOCKS [PAUSE_MS [LINGER_MS]]]
//
// In order:
//   1. early_load() leaks EARLY_BLOCKS blocks (default 0), then the workload writes
//      TRUTH_FILE.ready and pauses PAUSE_MS (default 0), so that a profiler can attach
//      to it after these allocations;
//   2. LEAK_BLOCKS calls of load_model(), each leaking one BLOCK_SIZE block, spread over
//      LEAK_MS; between them churn() allocates and frees with malloc, calloc, realloc,
//      posix_memalign and aligned_alloc, and a helper thread allocates blocks that the
//      main thread frees;
//   3. it writes the truth (JSON) and a checksum of everything it computed to
//      OUTPUT_FILE, which must not depend on whether it is profiled;
//   4. it lingers LINGER_MS (default 1500) and exits.
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LEAK_BLOCKS 400
#define BLOCK_SIZE 3000
#define EARLY_BLOCK_SIZE 5000
#define LEAK_MS 1200
#define CHURN_ROUNDS 40
#define HANDOFFS 2000

static void *leaked[LEAK_BLOCKS];
static void *early[10000];
static uint64_t checksum;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

static void mix(const unsigned char *bytes, size_t size) {
    for (size_t i = 0; i < size; i += 64) checksum = checksum * 31 + bytes[i];
}

__attribute__((noinline)) void *early_load(int index) {
    unsigned char *block = malloc(EARLY_BLOCK_SIZE);
    memset(block, index & 0xff, EARLY_BLOCK_SIZE);
    return block;
}

__attribute__((noinline)) void *load_model(int index) {
    unsigned char *block = malloc(BLOCK_SIZE);
    memset(block, (index * 7) & 0xff, BLOCK_SIZE);
    mix(block, BLOCK_SIZE);
    return block;
}

// Every block it allocates is freed before it returns.
__attribute__((noinline)) void churn(int round) {
    size_t size = 64 + (size_t)(round * 37 % 4000);
    unsigned char *a = malloc(size);
    memset(a, round & 0xff, size);
    unsigned int *b = calloc(16 + round % 50, sizeof(unsigned int));
    b[round % 16] = (unsigned int)round;
    a = realloc(a, size * 2);
    memset(a + size, (round + 1) & 0xff, size);
    void *c = NULL;
    if (posix_memalign(&c, 64, 256 + (size_t)round % 512) != 0) abort();
    memset(c, 3, 256);
    void *d = aligned_alloc(64, 128);
    memset(d, 5, 128);
    mix(a, size * 2);
    mix((unsigned char *)b, 16 * sizeof(unsigned int));
    mix(c, 256);
    mix(d, 128);
    free(d);
    free(c);
    free(b);
    free(a);
}

// Blocks allocated by the helper thread and freed by main: frees come from any thread.
static void *handoff[HANDOFFS];
static pthread_mutex_t handoff_lock = PTHREAD_MUTEX_INITIALIZER;
static int handed;

__attribute__((noinline)) void *produce(void *arg) {
    (void)arg;
    for (int i = 0; i < HANDOFFS; i++) {
        void *block = malloc(200);
        memset(block, i & 0xff, 200);
        pthread_mutex_lock(&handoff_lock);
        handoff[handed++] = block;
        pthread_mutex_unlock(&handoff_lock);
        if (i % 100 == 0) sleep_ms(5);
    }
    return NULL;
}

static int freed;

static void free_handed(void) {
    pthread_mutex_lock(&handoff_lock);
    while (freed < handed) free(handoff[freed++]);
    pthread_mutex_unlock(&handoff_lock);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: leaks TRUTH_FILE OUTPUT_FILE [EARLY_BLOCKS [PAUSE_MS [LINGER_MS]]]\n");
        return 2;
    }
    int early_blocks = argc > 3 ? atoi(argv[3]) : 0;
    long pause_ms = argc > 4 ? atol(argv[4]) : 0;
    long linger_ms = argc > 5 ? atol(argv[5]) : 1500;
    if (early_blocks > 10000) early_blocks = 10000;

    for (int i = 0; i < early_blocks; i++) early[i] = early_load(i);
    char ready[4096];
    snprintf(ready, sizeof ready, "%s.ready", argv[1]);
    FILE *marker = fopen(ready, "w");
    if (!marker) return 1;
    fclose(marker);
    sleep_ms(pause_ms);

    pthread_t producer;
    pthread_create(&producer, NULL, produce, NULL);
    int64_t first_leak_ns = now_ns();
    int round = 0;
    for (int i = 0; i < LEAK_BLOCKS; i++) {
        leaked[i] = load_model(i);
        for (int j = 0; j < CHURN_ROUNDS; j++) churn(round++);
        free_handed();
        sleep_ms(LEAK_MS / LEAK_BLOCKS);
    }
    int64_t last_leak_ns = now_ns();
    pthread_join(producer, NULL);
    free_handed();

    FILE *truth = fopen(argv[1], "w");
    if (!truth) return 1;
    fprintf(truth,
            "{\"leaked_blocks\": %d, \"block_size\": %d, \"leaked_bytes\": %d, "
            "\"early_blocks\": %d, \"early_bytes\": %d, \"churn_rounds\": %d, "
            "\"handoffs\": %d, \"first_leak_ns\": %lld, \"last_leak_ns\": %lld}\n",
            LEAK_BLOCKS, BLOCK_SIZE, LEAK_BLOCKS * BLOCK_SIZE, early_blocks,
            early_blocks * EARLY_BLOCK_SIZE, round, HANDOFFS, (long long)first_leak_ns,
            (long long)last_leak_ns);
    fclose(truth);
    FILE *output = fopen(argv[2], "w");
    if (!output) return 1;
    fprintf(output, "checksum %llu after %d rounds\n", (unsigned long long)checksum, round);
    fclose(output);
    sleep_ms(linger_ms);
    return 0;
}
