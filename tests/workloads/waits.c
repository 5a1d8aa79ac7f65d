// A workload that waits in known ways and measures itself, for the syscall, block IO
// and off-CPU tests: waits TRUTH_FILE DIR
//
// Phases, in order, all timed with CLOCK_MONOTONIC:
//   1. getppid() GETPPID_CALLS times;
//   2. PIPE_READS blocking reads of a pipe whose writer thread writes every 20 ms
//      (the writer waits with poll(), so its waits are not reads or sleeps);
//   3. SLEEPS nanosleep()s of 30 ms;
//   4. SYNCS pwrite()s of 64 KiB to a new file in DIR, each followed by fdatasync(),
//      whose longest call is kept: every block request it waits for ends within it;
//   5. a thread blocked in wait_for_lock() on a mutex that main holds for 300 ms;
//   6. two threads pinned to one CPU, each spinning in share_a_cpu() for SHARE_MS:
//      each waits, runnable, while the other runs, and measures that wait as its wall
//      time less its own CPU time.
// Main has left the CPU many times before phase 3, so its sleeps' user stacks are
// taken on its way back to user space; phase 6's waits are preemptions, whose kernel
// stacks are read as the threads are switched back in.
// The truth file gets the counts and the measured means and waits, as JSON.
//
// waits --noise SECONDS [TRUTH_FILE] calls getppid() for that long instead, as a
// process that must not be counted, or as one that runs half in the kernel; it prints
// the calls it made, and writes them to TRUTH_FILE with its user and system CPU time.
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>
#include <unistd.h>

#define GETPPID_CALLS 100000
#define PIPE_READS 50
#define SLEEPS 20
#define SYNCS 20
#define SYNC_BYTES (64 * 1024)
#define SHARE_MS 500

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t thread_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int pipe_fds[2];

static void *pipe_writer(void *arg) {
    (void)arg;
    for (int i = 0; i < PIPE_READS; i++) {
        poll(NULL, 0, 20);
        if (write(pipe_fds[1], "x", 1) != 1) abort();
    }
    return NULL;
}

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int64_t lock_wait_ns;

__attribute__((noinline)) static void wait_for_lock(void) {
    int64_t start = now_ns();
    pthread_mutex_lock(&lock);
    lock_wait_ns = now_ns() - start;
    pthread_mutex_unlock(&lock);
}

static void *lock_waiter(void *arg) {
    (void)arg;
    wait_for_lock();
    return NULL;
}

__attribute__((noinline)) static int64_t sleep_in_turns(void) {
    int64_t total = 0;
    for (int i = 0; i < SLEEPS; i++) {
        struct timespec thirty_ms = {0, 30 * 1000 * 1000};
        int64_t start = now_ns();
        nanosleep(&thirty_ms, NULL);
        total += now_ns() - start;
    }
    return total;
}

static volatile uint64_t spins;

/// Spins for SHARE_MS of wall time; returns the time it spent runnable but not running.
__attribute__((noinline)) static int64_t share_a_cpu(void) {
    int64_t start = now_ns(), start_cpu = thread_cpu_ns();
    while (now_ns() - start < SHARE_MS * 1000000LL) spins++;
    return (now_ns() - start) - (thread_cpu_ns() - start_cpu);
}

static int shared_cpu;

static void *cpu_sharer(void *wait_ns) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(shared_cpu, &one);
    if (sched_setaffinity(0, sizeof one, &one) != 0) abort();
    *(int64_t *)wait_ns = share_a_cpu();
    return NULL;
}

static int noise(double seconds, const char *truth_path) {
    int64_t end = now_ns() + (int64_t)(seconds * 1e9);
    long calls = 0;
    while (now_ns() < end) {
        for (int i = 0; i < 1000; i++) getppid();
        calls += 1000;
    }
    printf("%ld\n", calls);
    if (truth_path == NULL) return 0;
    struct rusage usage;
    if (getrusage(RUSAGE_SELF, &usage) != 0) abort();
    FILE *truth = fopen(truth_path, "w");
    if (truth == NULL) abort();
    fprintf(truth, "{\"calls\": %ld, \"user_ns\": %lld, \"system_ns\": %lld}\n", calls,
            (long long)usage.ru_utime.tv_sec * 1000000000LL + usage.ru_utime.tv_usec * 1000LL,
            (long long)usage.ru_stime.tv_sec * 1000000000LL + usage.ru_stime.tv_usec * 1000LL);
    fclose(truth);
    return 0;
}

int main(int argc, char **argv) {
    if ((argc == 3 || argc == 4) && strcmp(argv[1], "--noise") == 0)
        return noise(atof(argv[2]), argc == 4 ? argv[3] : NULL);
    if (argc != 3) {
        fprintf(stderr, "usage: waits TRUTH_FILE DIR | waits --noise SECONDS [TRUTH_FILE]\n");
        return 2;
    }

    for (int i = 0; i < GETPPID_CALLS; i++) getppid();

    if (pipe(pipe_fds) != 0) abort();
    pthread_t writer;
    pthread_create(&writer, NULL, pipe_writer, NULL);
    int64_t read_total = 0;
    for (int i = 0; i < PIPE_READS; i++) {
        char byte;
        int64_t start = now_ns();
        if (read(pipe_fds[0], &byte, 1) != 1) abort();
        read_total += now_ns() - start;
    }
    pthread_join(writer, NULL);

    int64_t sleep_total = sleep_in_turns();

    char path[4096];
    snprintf(path, sizeof path, "%s/waits-sync.dat", argv[2]);
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
    if (fd < 0) abort();
    static char block[SYNC_BYTES];
    memset(block, 'y', sizeof block);
    int64_t sync_max_ns = 0;
    for (int i = 0; i < SYNCS; i++) {
        if (pwrite(fd, block, sizeof block, (off_t)i * SYNC_BYTES) != SYNC_BYTES) abort();
        int64_t start = now_ns();
        if (fdatasync(fd) != 0) abort();
        int64_t took = now_ns() - start;
        if (took > sync_max_ns) sync_max_ns = took;
    }
    close(fd);
    unlink(path);

    pthread_mutex_lock(&lock);
    pthread_t waiter;
    pthread_create(&waiter, NULL, lock_waiter, NULL);
    poll(NULL, 0, 300);
    pthread_mutex_unlock(&lock);
    pthread_join(waiter, NULL);

    shared_cpu = sched_getcpu();
    pthread_t sharers[2];
    int64_t share_waits[2];
    for (int i = 0; i < 2; i++) pthread_create(&sharers[i], NULL, cpu_sharer, &share_waits[i]);
    for (int i = 0; i < 2; i++) pthread_join(sharers[i], NULL);

    FILE *truth = fopen(argv[1], "w");
    if (!truth) abort();
    fprintf(truth,
            "{\"getppid_calls\": %d, \"pipe_reads\": %d, \"read_mean_ns\": %lld, "
            "\"sleeps\": %d, \"sleep_mean_ns\": %lld, \"syncs\": %d, \"sync_bytes\": %d, "
            "\"sync_max_ns\": %lld, "
            "\"lock_wait_ns\": %lld, \"sleep_total_ns\": %lld, \"share_wait_ns\": %lld}\n",
            GETPPID_CALLS, PIPE_READS, (long long)(read_total / PIPE_READS), SLEEPS,
            (long long)(sleep_total / SLEEPS), SYNCS, SYNCS * SYNC_BYTES, (long long)sync_max_ns,
            (long long)lock_wait_ns, (long long)sleep_total,
            (long long)(share_waits[0] + share_waits[1]));
    fclose(truth);
    return 0;
}
