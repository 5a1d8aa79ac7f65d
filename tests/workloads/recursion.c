// A workload whose threads spin at a known stack depth, for the per-frame cost of
// unwinding: recursion THREADS DEPTH
//
// Each thread calls descend() DEPTH times over, then spins in the innermost call until
// killed; every frame between the thread's start and the spin is in this program, so a
// frame-pointer walk and a DWARF unwind see the same frames down to start_thread.
#include <pthread.h>
#include <stdlib.h>

static volatile unsigned long spins;
// Never set: the spin could end, so the compiler keeps every level's return.
static volatile int stop;

// Not inlined, and not a tail call: each level keeps a frame of its own.
__attribute__((noinline)) static unsigned long descend(int depth) {
    if (depth == 0) {
        while (!stop) spins++;
        return spins;
    }
    unsigned long below = descend(depth - 1);
    // Work after the call keeps it out of tail position.
    __asm__ volatile("" ::: "memory");
    return below + (unsigned long)depth;
}

static void *spin_at_depth(void *depth) {
    descend((int)(long)depth);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    int threads = atoi(argv[1]);
    long depth = atol(argv[2]);
    pthread_t thread;
    for (int i = 1; i < threads; i++) pthread_create(&thread, NULL, spin_at_depth, (void *)depth);
    spin_at_depth((void *)depth);
    return 0;
}
