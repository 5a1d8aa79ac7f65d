// A small stand-in for a model-serving API, bundled so that `cargo xtask demo` shows what
// the profiler is for: worker threads handle requests in four stages, and predict()
// dominates the CPU, as inference does in a real service.
//
// Usage: model-server [WORKERS]
//
// It serves until SIGINT or SIGTERM, then prints how much of its CPU time each stage
// took, measured with the thread CPU clock, so that the profile can be checked against it.
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_WORKERS 16
#define DIM 48

enum stage { TOKENIZE, PREPROCESS, PREDICT, POSTPROCESS, STAGES };
static const char *stage_names[STAGES] = {"tokenize", "preprocess", "predict", "postprocess"};

static volatile sig_atomic_t stopping;
static uint64_t stage_ns[MAX_WORKERS][STAGES];
static uint64_t requests[MAX_WORKERS];

static uint64_t thread_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

// Each stage ends by accounting for its own time, so no stage is a leaf function: gcc
// keeps frame pointers in non-leaf functions, and the profile shows every caller.
__attribute__((noinline)) static void account(int worker, enum stage stage, uint64_t start) {
    stage_ns[worker][stage] += thread_cpu_ns() - start;
}

struct request {
    char text[512];
    int tokens[128];
    float features[DIM];
    float weights[DIM][DIM];
    float scores[DIM];
    char reply[64];
};

__attribute__((noinline)) static void tokenize(int worker, struct request *r) {
    uint64_t start = thread_cpu_ns();
    for (int round = 0; round < 40; round++)
        for (int i = 0; i < 128; i++) {
            uint32_t h = 2166136261u;
            for (int j = 0; j < 4; j++) h = (h ^ (uint8_t)r->text[(i * 4 + j + round) % 512]) * 16777619u;
            r->tokens[i] = (int)(h % 50000);
        }
    account(worker, TOKENIZE, start);
}

__attribute__((noinline)) static void preprocess(int worker, struct request *r) {
    uint64_t start = thread_cpu_ns();
    for (int round = 0; round < 11; round++)
        for (int i = 0; i < DIM; i++) {
            float sum = 0;
            for (int j = 0; j < 128; j += 4) sum += (float)(r->tokens[j] % 97) * (float)(i + 1);
            r->features[i] = sum / (float)(round + 1);
        }
    account(worker, PREPROCESS, start);
}

static inline float dot(const float *a, const float *b) {
    float sum = 0;
    for (int i = 0; i < DIM; i++) sum += a[i] * b[i];
    return sum;
}

// The model: a few dense layers. This is where a real service spends its time.
__attribute__((noinline)) static void predict(int worker, struct request *r) {
    uint64_t start = thread_cpu_ns();
    for (int layer = 0; layer < 110; layer++) {
        for (int i = 0; i < DIM; i++) r->scores[i] = dot(r->weights[i], r->features);
        for (int i = 0; i < DIM; i++) r->features[i] = r->scores[i] > 0 ? r->scores[i] * 0.5f : 0.01f;
    }
    account(worker, PREDICT, start);
}

__attribute__((noinline)) static void postprocess(int worker, struct request *r) {
    uint64_t start = thread_cpu_ns();
    for (int round = 0; round < 30; round++) {
        int best = 0;
        for (int i = 1; i < DIM; i++)
            if (r->scores[i] > r->scores[best]) best = i;
        snprintf(r->reply, sizeof r->reply, "{\"label\": %d, \"score\": %.3f}", best, r->scores[best]);
    }
    account(worker, POSTPROCESS, start);
}

__attribute__((noinline)) static void handle_request(int worker, struct request *r) {
    tokenize(worker, r);
    preprocess(worker, r);
    predict(worker, r);
    postprocess(worker, r);
    requests[worker]++;
}

static void *serve(void *arg) {
    int worker = (int)(intptr_t)arg;
    struct request *r = calloc(1, sizeof *r);
    for (int i = 0; i < DIM; i++)
        for (int j = 0; j < DIM; j++) r->weights[i][j] = (float)((i * 31 + j * 17) % 13 - 6) / 13.0f;
    for (unsigned n = 0; !stopping; n++) {
        snprintf(r->text, sizeof r->text, "request %u from worker %d: classify this text please", n, worker);
        handle_request(worker, r);
    }
    free(r);
    return NULL;
}

static void on_signal(int signal) {
    (void)signal;
    stopping = 1;
}

int main(int argc, char **argv) {
    int workers = argc > 1 ? atoi(argv[1]) : 2;
    if (workers < 1 || workers > MAX_WORKERS) {
        fprintf(stderr, "usage: %s [WORKERS (1-%d)]\n", argv[0], MAX_WORKERS);
        return 2;
    }
    struct sigaction action = {.sa_handler = on_signal};
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);
    printf("model-server: pid %d, %d workers\n", getpid(), workers);
    fflush(stdout);

    pthread_t threads[MAX_WORKERS];
    for (int i = 0; i < workers; i++) pthread_create(&threads[i], NULL, serve, (void *)(intptr_t)i);
    while (!stopping) pause();
    uint64_t total = 0, per_stage[STAGES] = {0}, served = 0;
    for (int i = 0; i < workers; i++) {
        pthread_join(threads[i], NULL);
        served += requests[i];
        for (int s = 0; s < STAGES; s++) per_stage[s] += stage_ns[i][s];
    }
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    total = (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
    printf("model-server: served %llu requests; its own measure of where its CPU time went:\n",
           (unsigned long long)served);
    for (int s = 0; s < STAGES; s++)
        printf("  %-12s %5.1f%%\n", stage_names[s], 100.0 * (double)per_stage[s] / (double)total);
    return 0;
}
