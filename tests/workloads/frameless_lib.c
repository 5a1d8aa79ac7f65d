// The library the `frameless` workload loads with dlopen(): it calls back into the
// program, so that stacks run program -> library -> program. The tests corrupt a copy
// of it so that its names cannot be read; its frames must cost nothing else.
#include <stdint.h>

__attribute__((noinline)) uint64_t library_work(uint64_t (*callback)(uint64_t),
                                                uint64_t seed) {
    volatile uint64_t scratch[16];
    for (int i = 0; i < 16; i++) scratch[i] = seed + i;
    return callback(scratch[seed % 16]) + scratch[3];
}
