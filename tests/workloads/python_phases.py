"""Python workloads that measure themselves, for the profiler's end-to-end tests and
benchmarks.

usage: python_phases.py MODE SECONDS TRUTH_JSON [DEPTH]

Each mode runs for SECONDS, then writes to TRUTH_JSON what it measured of itself: the
thread CPU time (time.thread_time_ns) of each phase summed over all threads, the
process's CPU time, and what the mode adds (blocked time, leaked bytes, depth).
Standard library only.
"""

import gc
import hashlib
import json
import os
import random
import sys
import threading
import time

TRUTH = {}
TRUTH_LOCK = threading.Lock()


def add(key, value):
    with TRUTH_LOCK:
        TRUTH[key] = TRUTH.get(key, 0) + value


def timed(phase, function, *args):
    """Runs function(*args) and adds the thread CPU time it took to `phase`."""
    start = time.thread_time_ns()
    result = function(*args)
    add(phase, time.thread_time_ns() - start)
    return result


class Model:
    def __init__(self, size):
        self.weights = [[(i * j) % 7 - 3 for j in range(size)] for i in range(size)]

    def predict(self, features):
        return [sum(w * x for w, x in zip(row, features)) for row in self.weights]


def parse(payload):
    return [int(token) % 13 for token in payload.split(",")]


def respond(scores):
    return ",".join(str(score) for score in scores[:8])


def request_loop(deadline):
    """A request handler: predict holds about two thirds of the CPU.

    Requests vary in size around the same mean, so that a request's length cannot stay
    in step with the sampling period and put the samples in one phase more often than
    its time says."""
    model = Model(48)
    payload = ",".join(str(i) for i in range(48))
    while time.monotonic() < deadline:
        features = timed("parse", parse, payload * random.randint(4, 8))[:48]
        scores = timed("predict", model.predict, features)
        timed("respond", respond, scores * random.randint(30, 50))


def digest(data):
    """Hashes with the GIL released: sha256 of large buffers drops it."""
    return hashlib.sha256(data).digest()


def predict_digest(data):
    for _ in range(4):
        digest(data)


def prepare(count):
    return sum(i % 7 for i in range(count))


def released_worker(deadline):
    data = os.urandom(1 << 21)
    while time.monotonic() < deadline:
        timed("predict", predict_digest, data)
        timed("prepare", prepare, 20000)


def released(deadline):
    """Three threads whose predict spends its time in C with the GIL released."""
    threads = [threading.Thread(target=released_worker, args=(deadline,)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def handle_request(model, payload, predictions):
    start = time.thread_time_ns()
    features = timed("parse", parse, payload)[:64]
    for _ in range(predictions):
        timed("predict", model.predict, features)
    add("request_ns", time.thread_time_ns() - start)


def thread_per_request(deadline):
    """A new thread per request, each running for about 1 ms of CPU: less than a
    sampling period. Requests vary in size, as real ones do, so that they do
    not keep step with the sampling timers."""
    model = Model(64)
    tokens = [str(i) for i in range(1000)]
    sizes = random.Random(7)
    started = 0
    while time.monotonic() < deadline:
        payload = ",".join(tokens[: sizes.randint(500, len(tokens))])
        request = (model, payload, sizes.randint(1, 3))
        thread = threading.Thread(target=handle_request, args=request)
        thread.start()
        thread.join()
        started += 1
    TRUTH["threads_started"] = started


def wait_for_tick(deadline):
    while time.monotonic() < deadline:
        start = time.monotonic_ns()
        time.sleep(0.05)
        add("wait_for_tick_ns", time.monotonic_ns() - start)


def read_request(reader, deadline):
    while time.monotonic() < deadline:
        start = time.monotonic_ns()
        if not os.read(reader, 64):
            break
        add("read_request_ns", time.monotonic_ns() - start)


def blocked(deadline):
    """One thread sleeping, one reading a pipe written every 100 ms."""
    reader, writer = os.pipe()
    threads = [
        threading.Thread(target=wait_for_tick, args=(deadline,)),
        threading.Thread(target=read_request, args=(reader, deadline + 0.2)),
    ]
    for thread in threads:
        thread.start()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        os.write(writer, b"request")
    os.write(writer, b"last")
    os.close(writer)
    for thread in threads:
        thread.join()


MODEL_PARTS = []


def load_model():
    """Keeps every part it loads: the leak."""
    MODEL_PARTS.append(bytearray(1 << 20))
    add("leaked_bytes", 1 << 20)


def score():
    """Allocates as much, and frees it."""
    scratch = bytearray(1 << 20)
    return len(scratch)


def leak(deadline):
    while time.monotonic() < deadline:
        load_model()
        score()
        time.sleep(0.05)


def load_model_parts(numpy):
    """Keeps what it loads: a buffer of 192 KiB and a numpy array of 64 KiB."""
    MODEL_PARTS.append(bytearray(192 << 10))
    MODEL_PARTS.append(numpy.ones(8192))
    add("leaked_bytes", (192 << 10) + 8192 * 8)


def serve_request(numpy):
    """Allocates as much, and frees it."""
    scratch = [bytearray(192 << 10), numpy.ones(8192)]
    return sum(len(part) for part in scratch)


def model_leak(deadline):
    """Requests churn from the start; 2.5 s in, once a profiler had time to attach,
    load_model_parts leaks 20 times over about a second; then only the churn goes on.
    Needs numpy, unlike the other modes."""
    import numpy

    start = time.monotonic()
    leaks = 0
    while time.monotonic() < deadline:
        if leaks < 20 and time.monotonic() - start >= 2.5:
            load_model_parts(numpy)
            leaks += 1
        for _ in range(5):
            serve_request(numpy)
        time.sleep(0.05)


def key_score(item):
    return sum((item * k) % 11 for k in range(60))


def rank(items):
    return sorted(items, key=key_score)


def callback(deadline):
    """A builtin (sorted) calling back into Python (the key function)."""
    items = list(range(400))
    while time.monotonic() < deadline:
        timed("rank", rank, items)


def recurse(depth, deadline):
    if depth > 0:
        return recurse(depth - 1, deadline)
    while time.monotonic() < deadline:
        timed("leaf", prepare, 5000)
    return 0


def deep(deadline):
    """Python frames DEPTH deep (150 unless told), above a few frames of its own."""
    depth = int(sys.argv[4]) if len(sys.argv) > 4 else 150
    TRUTH["depth"] = depth
    recurse(depth, deadline)


def tally(count):
    total = 0
    for i in range(count):
        total += i % 7
    return total


def weigh(count):
    total = 0.0
    for i in range(count):
        total += (i * 0.5) ** 2
    return total


def plain(deadline):
    """Plain loops and calls, no comprehension: 3.12 inlines comprehensions into the
    function that holds them, 3.11 does not, and this mode's stacks are meant to be the
    same on both."""
    while time.monotonic() < deadline:
        timed("tally", tally, 20000)
        timed("weigh", weigh, 10000)


def two_loops(count):
    """Two loops, each on a line of its own, each timed."""
    total = 0
    start = time.thread_time_ns()
    for i in range(count): total += i * i  # the first loop
    middle = time.thread_time_ns()
    for i in range(count): total += (i % 7) * (i % 11) - i // 3  # the second loop
    add("first_loop", middle - start)
    add("second_loop", time.thread_time_ns() - middle)
    return total


def lines(deadline):
    """A function whose time is split between two lines."""
    while time.monotonic() < deadline:
        two_loops(200_000)


def churn(count):
    """Makes reference cycles, which only the collector frees."""
    for _ in range(count):
        node = []
        node.append(node)


def collecting(deadline):
    """Spends a measured share of its time in gc.collect() (automatic collection
    off), which walks a heap of live containers each time."""
    gc.disable()
    live = [[i] for i in range(300_000)]
    while time.monotonic() < deadline:
        timed("churn", churn, 20000)
        timed("gc", gc.collect)
    TRUTH["live_containers"] = len(live)


def interpret(count):
    total = 0
    for i in range(count):
        total += i % 13
    return total


def multiply(numpy, a, product):
    # Into a kept array: allocating and freeing the product would hold the GIL.
    numpy.dot(a, a, out=product)


def gil_section(phase, function, *args):
    """Runs function(*args) and adds its thread CPU time to `phase` and the rest of its
    wall time to gil_waiting_ns: with two threads on two CPUs, a thread off its CPU
    waits for the GIL."""
    wall, cpu = time.monotonic_ns(), time.thread_time_ns()
    function(*args)
    cpu = time.thread_time_ns() - cpu
    add(phase, cpu)
    add("gil_waiting_ns", time.monotonic_ns() - wall - cpu)


def matmul_and_python(numpy, deadline):
    a = numpy.random.default_rng(1).random((480, 480))
    product = numpy.empty_like(a)
    while time.monotonic() < deadline:
        gil_section("gil_released_ns", multiply, numpy, a, product)
        gil_section("gil_held_ns", interpret, 20000)


def pure_python(deadline):
    while time.monotonic() < deadline:
        gil_section("gil_held_ns", interpret, 20000)


def gil(deadline):
    """Two threads: one alternates a numpy matrix product, which runs without the GIL,
    and pure Python; the other runs pure Python. Needs numpy, run on one BLAS thread."""
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    import numpy

    threads = [
        threading.Thread(target=matmul_and_python, args=(numpy, deadline)),
        threading.Thread(target=pure_python, args=(deadline,)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def forked(deadline):
    """A worker process forked from this one, as multiprocessing and gunicorn make
    them: the child runs the request loop and writes the measurements."""
    child = os.fork()
    if child == 0:
        request_loop(deadline)
        return
    os.waitpid(child, 0)
    os._exit(0)


MODES = {
    "loop": request_loop,
    "fork": forked,
    "released": released,
    "threads": thread_per_request,
    "blocked": blocked,
    "leak": leak,
    "callback": callback,
    "deep": deep,
    "plain": plain,
    "model_leak": model_leak,
    "lines": lines,
    "gc": collecting,
    "gil": gil,
}


def main():
    mode, seconds, truth_path = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    TRUTH["seconds"] = seconds
    MODES[mode](time.monotonic() + seconds)
    TRUTH["process_ns"] = time.process_time_ns()
    TRUTH["main_thread_ns"] = time.thread_time_ns()
    with open(truth_path, "w") as out:
        json.dump(TRUTH, out)


main()
